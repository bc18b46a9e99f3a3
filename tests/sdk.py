"""The OpenAI SDK under test and the HTTP library it sends through.

openai 3.x sends through httpx2, 1.x and 2.x through httpx: tests that build an ``http_client``,
a mock transport or a byte stream take them from ``sdk_http`` so the suite runs on every SDK
major the package supports (``make test-compat``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

import openai

__all__ = ["OPENAI_MAJOR", "STREAM_BREAKS", "sdk_http"]

OPENAI_MAJOR = int(openai.__version__.split(".", 1)[0])

if TYPE_CHECKING:
    import httpx2 as sdk_http
else:
    sdk_http = importlib.import_module("httpx2" if OPENAI_MAJOR >= 3 else "httpx")

# a body that breaks mid-stream: openai 3.x raises APIConnectionError, 1.x and 2.x the HTTP
# library's own error (unchanged by the ledger either way)
STREAM_BREAKS: tuple[type[BaseException], ...] = (openai.APIConnectionError, sdk_http.TransportError)
