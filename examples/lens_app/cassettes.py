"""Replaying and recording the demo's HTTP calls with the pytest plugin's cassette engine.

The demo and the test suite share one cassette format and one matcher (``pytest_llm_ledger``):
one file per lens, ``cassettes/examples/lens_app/<lens>.yaml``, holding that lens's calls over
every sample source. Requests match on method, host, path and JSON body, so replay needs the
same host the cassette was recorded from; :func:`recorded_base_url` reads it back.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from pytest_llm_ledger._cassette import CassetteMissError, LedgerCassette, activate

__all__ = ["CASSETTE_DIR", "CassetteMissError", "LensCassette", "activate", "recorded_base_url"]

CASSETTE_DIR: Final = Path(__file__).resolve().parents[2] / "cassettes" / "examples" / "lens_app"
_ENDPOINT: Final = "/chat/completions"


class LensCassette(LedgerCassette):
    """The cassette of one lens; its re-record hint names the demo's command, not pytest."""

    def __init__(self, directory: Path, lens_key: str, mode: str) -> None:
        self.lens_key = lens_key
        super().__init__(directory / f"{lens_key}.yaml", mode, f"examples.lens_app lens {lens_key}")

    def rerecord_command(self, mode: str) -> str:
        return f"python -m examples.lens_app --record --lens {self.lens_key} [--base-url URL]"


def recorded_base_url(cassettes: Iterable[LensCassette]) -> str:
    """The API base URL the cassettes were recorded from (they must agree on the host)."""
    bases = set()
    for cassette in cassettes:
        for interaction in cassette.loaded:
            parts = urlsplit(interaction.url)
            path = parts.path.removesuffix(_ENDPOINT)
            bases.add(f"{parts.scheme}://{parts.netloc}{path}")
    if len(bases) != 1:
        found = ", ".join(sorted(bases)) or "none"
        raise ValueError(f"the cassettes must be recorded from one API base URL; found: {found}")
    return bases.pop()
