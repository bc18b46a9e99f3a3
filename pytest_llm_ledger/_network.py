"""The replay-only guard: an OpenAI API request of a test not marked ``llm`` is refused unsent.

:class:`Guard` wraps, for the session, what every OpenAI client sends through, instrumented or not:
the network transports of httpx (openai 1.x and 2.x) and httpx2 (3.x), the aiohttp transport of the
SDK's ``DefaultAioHttpClient``, and the opening handshakes of ``websockets`` client connections (the
Realtime and Responses WebSockets, which no cassette records). A request carrying the OpenAI SDK's
headers is handed to the plugin's ``refuse`` callback, which returns a message to raise
:class:`BlockedRequestError` with before anything (the key included) is sent, or ``None`` to let it
through. Wrappers stay harmless once uninstalled: a patch that saved one (vcrpy keeps the transport
method it found at import) calls straight through it.
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


def is_openai_request(headers: Any) -> bool:
    """True for the headers of a request built by the OpenAI SDK (``x-stainless-*``, its user-agent)."""
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
        check = self._check_handshake if method == "handshake" else self._check
        wrapper: Any
        # by name, not by inspecting what another patch may have put there: websockets' handshake
        # has a sync and an asyncio class
        if method == "handle_async_request" or (
            method == "handshake" and inspect.iscoroutinefunction(original)
        ):

            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                check(*args, **kwargs)
                return await original(*args, **kwargs)

        else:

            def wrapper(*args: Any, **kwargs: Any) -> Any:
                check(*args, **kwargs)
                return original(*args, **kwargs)

        setattr(cls, method, wrapper)
        self._saved.append((cls, method, original, wrapper))

    def uninstall(self) -> None:
        """Put back what was wrapped (unless something patched over the wrapper since)."""
        for cls, name, original, wrapper in reversed(self._saved):
            if cls.__dict__.get(name) is wrapper:
                setattr(cls, name, original)
        self._saved.clear()

    def _check_handshake(
        self,
        connection: Any,
        additional_headers: Any = None,
        user_agent_header: Any = None,
        *_: Any,
        **__: Any,
    ) -> None:
        if not self._saved:
            return
        pairs = (
            additional_headers.items() if hasattr(additional_headers, "items") else additional_headers or ()
        )
        headers = {str(name).lower(): str(value) for name, value in pairs}
        headers.setdefault("user-agent", str(user_agent_header or ""))
        if not is_openai_request(headers):
            return
        protocol = connection.protocol
        uri = getattr(protocol, "uri", None) or protocol.wsuri  # websockets 14 on / 13
        if (message := self._refuse(WEBSOCKET, str(uri.host).lower(), str(uri.path) or "/")) is not None:
            raise BlockedRequestError(message)

    def _check(self, transport: Any, request: Any) -> None:
        if not self._saved or not is_openai_request(request.headers):
            return
        url = request.url
        if (
            message := self._refuse(str(request.method), str(url.host).lower(), str(url.path) or "/")
        ) is not None:
            raise BlockedRequestError(message)


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None
