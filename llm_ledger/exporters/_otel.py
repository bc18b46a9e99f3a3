"""``OTelSink``: not yet built (the next commit)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._errors import ConfigError

__all__ = ["OTelSink"]


class OTelSink:
    """Not built yet: raises ``ConfigError``."""

    def __init__(self) -> None:
        raise ConfigError("the OpenTelemetry exporter is not built yet")

    def __call__(self, record: Mapping[str, Any]) -> None:  # pragma: no cover
        pass
