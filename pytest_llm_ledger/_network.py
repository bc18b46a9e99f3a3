"""The replay-only guard: an OpenAI API request of a test not marked ``llm`` is refused unsent.

Tests marked ``llm`` run inside their cassette (vcrpy's transport patches). Any other test would
reach the network silently, wherever its client points and with whatever key CI has. For the
session, :class:`Guard` wraps the two network transports (``HTTPTransport`` and
``AsyncHTTPTransport``) of httpx (openai 1.x and 2.x) and httpx2 (openai 3.x), and the aiohttp
transport of the SDK's ``DefaultAioHttpClient``: what every OpenAI client sends through,
instrumented or not, unless it was given a custom transport that does not touch the network. A
request that carries the OpenAI SDK's headers is handed to the plugin's ``refuse`` callback, which
returns a message to raise :class:`BlockedRequestError` with before anything is sent, or ``None`` to
let it through. Other traffic, mock transports and the requests of tests that have a cassette are
not touched.

The Realtime API's WebSocket (``realtime.connect()``) goes past those transports, through the
``websockets`` library, and no cassette records it: its connections' opening handshakes (sync and
asyncio) are wrapped too, and one carrying the SDK's headers is handed to ``refuse`` with the method
``WEBSOCKET``, before the handshake request (and the key it carries) is sent.

Wrappers stay harmless once uninstalled: an HTTP library patch that saved one (vcrpy keeps the
transport method it found at import) calls straight through it.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from typing import Any, Final

from llm_ledger import BlockedRequestError

__all__ = ["WEBSOCKET", "Guard", "is_openai_request"]

Refuse = Callable[[str, str, str], "str | None"]  # (method, host, path) -> message, or None to send
WEBSOCKET: Final = "WEBSOCKET"  # the method refuse() is given for a WebSocket's opening handshake


def is_openai_request(request: Any) -> bool:
    """True for a request built by the OpenAI SDK (its ``x-stainless-*`` or user-agent headers)."""
    headers = request.headers
    return headers.get("x-stainless-lang") is not None or "openai/" in headers.get("user-agent", "").lower()


HTTP_LIBRARIES: Final = ("httpx2", "httpx")  # openai 3.x sends through httpx2, 1.x and 2.x through httpx
# (module, class, method) of each network transport. The aiohttp ones (openai 3.x vendors it, 1.x
# and 2.x use the httpx-aiohttp package) are wrapped once imported, which importing openai does when
# aiohttp is installed: importing openai here would slow down every pytest run.
TRANSPORTS: Final = (
    *((library, "HTTPTransport", "handle_request") for library in HTTP_LIBRARIES),
    *((library, "AsyncHTTPTransport", "handle_async_request") for library in HTTP_LIBRARIES),
    ("openai._vendor.httpx_aiohttp", "AiohttpTransport", "handle_async_request"),
    ("httpx_aiohttp", "AiohttpTransport", "handle_async_request"),
    # websockets' client connections (the SDK imports them at its first connect: loaded with httpx)
    ("websockets.sync.client", "ClientConnection", "handshake"),
    ("websockets.asyncio.client", "ClientConnection", "handshake"),
)


class Guard:
    """Wraps the network transports of httpx, httpx2 and aiohttp while installed; ``refuse`` decides
    per request."""

    def __init__(self, refuse: Refuse) -> None:
        self._refuse = refuse
        self._saved: list[tuple[type, str, Any, Any]] = []  # (class, attribute, original, wrapper)

    def install(self, *, load: bool = False) -> None:
        """Wrap the transports of each HTTP library imported so far; with ``load``, import httpx and
        httpx2 first."""
        for module_name, class_name, method in TRANSPORTS:
            loads = module_name in HTTP_LIBRARIES or (method == "handshake" and _installed("websockets"))
            if module_name not in sys.modules and not (load and loads):
                continue
            try:
                cls = getattr(importlib.import_module(module_name), class_name)
            except (ImportError, AttributeError):  # not installed, or not this version: unused
                continue
            if not any(saved[:2] == (cls, method) for saved in self._saved):
                self._wrap(cls, method)

    def _wrap(self, cls: type, method: str) -> None:
        original = getattr(cls, method)
        wrapper: Any
        if method == "handshake" and inspect.iscoroutinefunction(original):

            async def wrapper(connection: Any, *args: Any, **kwargs: Any) -> Any:
                self.check_handshake(connection, *args, **kwargs)
                return await original(connection, *args, **kwargs)

        elif method == "handshake":

            def wrapper(connection: Any, *args: Any, **kwargs: Any) -> Any:
                self.check_handshake(connection, *args, **kwargs)
                return original(connection, *args, **kwargs)

        elif method == "handle_request":

            def wrapper(transport: Any, request: Any) -> Any:
                self.check(request)
                return original(transport, request)

        else:

            async def wrapper(transport: Any, request: Any) -> Any:
                self.check(request)
                return await original(transport, request)

        setattr(cls, method, wrapper)
        self._saved.append((cls, method, original, wrapper))

    def uninstall(self) -> None:
        """Put back what was wrapped (unless something patched over the wrapper since)."""
        for cls, name, original, wrapper in reversed(self._saved):
            if cls.__dict__.get(name) is wrapper:
                setattr(cls, name, original)
        self._saved.clear()

    def check_handshake(
        self,
        connection: Any,
        additional_headers: Any = None,
        user_agent_header: Any = None,
        *_: Any,
        **__: Any,
    ) -> None:
        """Refuse a WebSocket whose handshake would carry the OpenAI SDK's headers, as ``refuse`` says."""
        if not self._saved:
            return
        pairs = (
            additional_headers.items() if hasattr(additional_headers, "items") else additional_headers or ()
        )
        headers = {str(name).lower(): str(value) for name, value in pairs}
        headers.setdefault("user-agent", str(user_agent_header or ""))
        if not is_openai_request(_Handshake(headers)):
            return
        protocol = connection.protocol
        uri = getattr(protocol, "uri", None) or protocol.wsuri  # websockets 14 on / 13
        message = self._refuse(WEBSOCKET, str(uri.host).lower(), str(uri.path) or "/")
        if message is not None:
            raise BlockedRequestError(message)

    def check(self, request: Any) -> None:
        if not self._saved or not is_openai_request(request):
            return
        url = request.url
        message = self._refuse(str(request.method), str(url.host).lower(), str(url.path) or "/")
        if message is not None:
            raise BlockedRequestError(message)


class _Handshake:
    """A WebSocket handshake's headers, read as ``is_openai_request`` reads a request's."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None
