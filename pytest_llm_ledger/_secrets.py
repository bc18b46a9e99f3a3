"""What counts as a credential in a recorded HTTP exchange, and how it is redacted (docs/CI.md).

One list, shared by the plugin's recorder and matcher and by ``llm-ledger scrub``, so a fresh
recording passes ``scrub --check`` and a scrubbed cassette still replays; credential names are
:mod:`llm_ledger.testing`'s, the monitor's rule. A value a request carried is redacted wherever it
reappears (a key echoed in a 401 body) once it has :data:`MIN_KNOWN_SECRET` characters: ``EMPTY`` or
``ollama`` is a placeholder, and replacing it would rewrite prompts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from llm_ledger.testing import credential_field, credential_name, request_credentials

__all__ = ["REDACTED", "CredentialRedactor", "known_secrets"]

REDACTED: Final = "REDACTED"
KEY_REPLACEMENT: Final = "sk-" + REDACTED
KEY_SHAPE: Final = re.compile(r"\bsk-[A-Za-z0-9_-]{16,}")
MIN_KNOWN_SECRET: Final = 12


def known_secrets(headers: Mapping[str, Any] | None = None, url: str = "", body: Any = None) -> set[str]:
    """The credential values one request carries: in its headers, its query, its URL's user information
    (:func:`llm_ledger.testing.request_credentials`) and its JSON body."""
    found = request_credentials(headers, url)
    stack = [body]
    seen: set[int] = set()  # YAML aliases share objects: visit each once (no alias bombs)
    while stack:
        node = stack.pop()
        if isinstance(node, dict | list):
            if id(node) in seen:
                continue
            seen.add(id(node))
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(key, str) and credential_field(key) and isinstance(value, str):
                    found.add(value)
                else:
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)
    return {s for s in found if len(s) >= MIN_KNOWN_SECRET and s not in (REDACTED, KEY_REPLACEMENT)}


class CredentialRedactor:
    """Replaces credentials in strings, JSON documents and URLs; notes what it replaced (never values).

    ``known`` are credential values seen elsewhere in the same exchange, replaced wherever they occur.
    Redaction is idempotent: redacting redacted data changes nothing.
    """

    def __init__(self, known: Iterable[str] = ()) -> None:
        self.findings: list[str] = []
        self.known = known
        self._seen: set[int] = set()  # YAML aliases share objects: visit each once (no alias bombs)

    @property
    def known(self) -> list[str]:
        """The credential values replaced wherever they occur, longest first: a secret that starts
        another never leaves the longer one's tail behind."""
        return self._known

    @known.setter
    def known(self, values: Iterable[str]) -> None:
        self._known = sorted({k for k in values if len(k) >= MIN_KNOWN_SECRET}, key=len, reverse=True)

    def note(self, place: str, what: str) -> None:
        self.findings.append(f"{place}: {what}")

    def first_visit(self, value: Any) -> bool:
        if id(value) in self._seen:
            return False
        self._seen.add(id(value))
        return True

    def text(self, value: str, place: str) -> str:
        scrubbed, count = KEY_SHAPE.subn(KEY_REPLACEMENT, value)
        if count:
            self.note(place, f"{count} secret key(s) shaped sk-... redacted")
        for secret in self.known:
            if secret in scrubbed:
                scrubbed = scrubbed.replace(secret, REDACTED)
                self.note(place, "a credential sent with this request redacted")
        return scrubbed

    def json(self, value: Any, place: str, path: str = "$") -> Any:
        if isinstance(value, dict):
            if self.first_visit(value):
                for key in list(value):
                    sub = f"{path}.{key}"
                    secret = isinstance(key, str) and credential_field(key)
                    if secret and value[key] not in (REDACTED, None):
                        value[key] = REDACTED
                        self.note(place, f"JSON field {sub} redacted")
                    else:
                        value[key] = self.json(value[key], place, sub)
            return value
        if isinstance(value, list):
            if self.first_visit(value):
                for index, item in enumerate(value):
                    value[index] = self.json(item, place, f"{path}[{index}]")
            return value
        if isinstance(value, str):
            return self.text(value, place)
        return value

    def url(self, value: str, place: str) -> str:
        parts = urlsplit(value)
        if parts.query:
            pairs = parse_qsl(parts.query, keep_blank_values=True)
            secret = [name for name, v in pairs if credential_name(name) and v != REDACTED]
            if secret:
                for name in secret:
                    self.note(place, f"query parameter {name!r} redacted")
                query = urlencode([(n, REDACTED if n in secret else v) for n, v in pairs])
                value = urlunsplit(parts._replace(query=query))
        userinfo, at, host = parts.netloc.rpartition("@")
        if at and userinfo != REDACTED:  # https://user:password@host
            self.note(place, "user information redacted")
            value = urlunsplit(urlsplit(value)._replace(netloc=f"{REDACTED}@{host}"))
        return self.text(value, place)
