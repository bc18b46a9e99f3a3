"""The replay-only guard: an OpenAI API request of a test not marked ``llm`` is refused unsent.

Tests marked ``llm`` run inside their cassette (vcrpy's transport patches). Any other test would
reach the network silently, wherever its client points and with whatever key CI has. For the
session, :class:`Guard` wraps httpx2's two network transports (``HTTPTransport`` and
``AsyncHTTPTransport``: what every OpenAI client sends through, instrumented or not, unless it was
given a custom transport that does not touch the network). A request that carries the OpenAI SDK's
headers is handed to the plugin's ``refuse`` callback, which returns a message to raise
:class:`BlockedRequestError` with before anything is sent, or ``None`` to let it through. Other
httpx2 traffic, mock transports and the requests of marked tests are not touched.

Wrappers stay harmless once uninstalled: an HTTP library patch that saved one (vcrpy keeps the
transport method it found at import) calls straight through it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from llm_ledger._errors import BlockedRequestError

__all__ = ["BlockedRequestError", "Guard", "is_openai_request"]

Refuse = Callable[[str, str, str], "str | None"]  # (method, host, path) -> message, or None to send


def is_openai_request(request: Any) -> bool:
    """True for a request built by the OpenAI SDK (its ``x-stainless-*`` or user-agent headers)."""
    headers = request.headers
    return headers.get("x-stainless-lang") is not None or "openai/" in headers.get("user-agent", "").lower()


class Guard:
    """Wraps httpx2's network transports while installed; ``refuse`` decides per request."""

    def __init__(self, refuse: Refuse) -> None:
        self._refuse = refuse
        self._saved: list[tuple[type, str, Any, Any]] = []  # (class, attribute, original, wrapper)

    @property
    def installed(self) -> bool:
        return bool(self._saved)

    def install(self, *, load: bool = False) -> None:
        """Wrap the transports; with ``load``, import httpx2 first (else wait until someone has)."""
        if self._saved or ("httpx2" not in sys.modules and not load):
            return
        try:
            import httpx2
        except ImportError:  # no httpx2, no OpenAI SDK: nothing to guard
            return

        send = httpx2.HTTPTransport.handle_request
        asend = httpx2.AsyncHTTPTransport.handle_async_request

        def handle_request(transport: Any, request: Any) -> Any:
            self.check(request)
            return send(transport, request)

        async def handle_async_request(transport: Any, request: Any) -> Any:
            self.check(request)
            return await asend(transport, request)

        for cls, name, original, wrapper in (
            (httpx2.HTTPTransport, "handle_request", send, handle_request),
            (httpx2.AsyncHTTPTransport, "handle_async_request", asend, handle_async_request),
        ):
            setattr(cls, name, wrapper)
            self._saved.append((cls, name, original, wrapper))

    def uninstall(self) -> None:
        """Put back what was wrapped (unless something patched over the wrapper since)."""
        for cls, name, original, wrapper in reversed(self._saved):
            if cls.__dict__.get(name) is wrapper:
                setattr(cls, name, original)
        self._saved.clear()

    def check(self, request: Any) -> None:
        if not self._saved or not is_openai_request(request):
            return
        url = request.url
        message = self._refuse(str(request.method), str(url.host).lower(), str(url.path) or "/")
        if message is not None:
            raise BlockedRequestError(message)
