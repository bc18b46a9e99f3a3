"""The replay-only guard: an OpenAI API request of a test not marked ``llm`` is refused unsent.

Tests marked ``llm`` run inside their cassette (vcrpy's transport patches). Any other test would
reach the network silently, wherever its client points and with whatever key CI has. For the
session, :class:`Guard` wraps the two network transports (``HTTPTransport`` and
``AsyncHTTPTransport``) of httpx (openai 1.x and 2.x) and httpx2 (openai 3.x): what every OpenAI
client sends through, instrumented or not, unless it was given a custom transport that does not
touch the network. A request that carries the OpenAI SDK's headers is handed to the plugin's
``refuse`` callback, which returns a message to raise :class:`BlockedRequestError` with before
anything is sent, or ``None`` to let it through. Other traffic, mock transports and the requests of
tests that have a cassette are not touched.

Wrappers stay harmless once uninstalled: an HTTP library patch that saved one (vcrpy keeps the
transport method it found at import) calls straight through it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any, Final

from llm_ledger import BlockedRequestError

__all__ = ["Guard", "is_openai_request"]

Refuse = Callable[[str, str, str], "str | None"]  # (method, host, path) -> message, or None to send


def is_openai_request(request: Any) -> bool:
    """True for a request built by the OpenAI SDK (its ``x-stainless-*`` or user-agent headers)."""
    headers = request.headers
    return headers.get("x-stainless-lang") is not None or "openai/" in headers.get("user-agent", "").lower()


HTTP_LIBRARIES: Final = ("httpx2", "httpx")  # openai 3.x sends through httpx2, 1.x and 2.x through httpx


class Guard:
    """Wraps the network transports of httpx and httpx2 while installed; ``refuse`` decides per request."""

    def __init__(self, refuse: Refuse) -> None:
        self._refuse = refuse
        self._libraries: set[str] = set()
        self._saved: list[tuple[type, str, Any, Any]] = []  # (class, attribute, original, wrapper)

    def install(self, *, load: bool = False) -> None:
        """Wrap the transports of each HTTP library imported so far; with ``load``, import them first."""
        for name in HTTP_LIBRARIES:
            if name in self._libraries or (name not in sys.modules and not load):
                continue
            try:
                library = importlib.import_module(name)
            except ImportError:  # not installed: nothing sends through it
                continue
            self._libraries.add(name)
            self._wrap(library)

    def _wrap(self, library: Any) -> None:
        send = library.HTTPTransport.handle_request
        asend = library.AsyncHTTPTransport.handle_async_request

        def handle_request(transport: Any, request: Any) -> Any:
            self.check(request)
            return send(transport, request)

        async def handle_async_request(transport: Any, request: Any) -> Any:
            self.check(request)
            return await asend(transport, request)

        for cls, name, original, wrapper in (
            (library.HTTPTransport, "handle_request", send, handle_request),
            (library.AsyncHTTPTransport, "handle_async_request", asend, handle_async_request),
        ):
            setattr(cls, name, wrapper)
            self._saved.append((cls, name, original, wrapper))

    def uninstall(self) -> None:
        """Put back what was wrapped (unless something patched over the wrapper since)."""
        for cls, name, original, wrapper in reversed(self._saved):
            if cls.__dict__.get(name) is wrapper:
                setattr(cls, name, original)
        self._saved.clear()
        self._libraries.clear()

    def check(self, request: Any) -> None:
        if not self._saved or not is_openai_request(request):
            return
        url = request.url
        message = self._refuse(str(request.method), str(url.host).lower(), str(url.path) or "/")
        if message is not None:
            raise BlockedRequestError(message)
