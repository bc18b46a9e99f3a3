"""The credentials an HTTP request carries: one rule for the monitor (text it captures is scrubbed of
them) and the pytest plugin (so are cassettes and its messages; ``pytest_llm_ledger._secrets``).

Names are compared lower-case with ``-`` read as ``_``. A credential travels in:

* a header or query parameter named like one (:func:`credential_name`): any name holding ``key``,
  ``token``, ``secret``, ``auth``, ``passw``, ``pass`` ending a word, ``pwd``, ``signature`` or
  ``cookie`` (``Authorization``, Azure's
  ``api-key``, ``x-goog-api-key``, ``x-auth-token``, ``cf-aig-authorization``...), one of
  :data:`QUERY_NAMES` (``code``, ``sig``...), or the organisation and project ids
  (``OpenAI-Organization``, ``OpenAI-Project``); a header's ``Bearer``/``Basic`` scheme is left out;
* the user information of the URL (``https://user:password@host``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = [
    "FIELD_NAMES", "QUERY_NAMES", "credential_field", "credential_name", "looks_like_credential",
    "request_credentials",
]  # fmt: skip

# JSON fields (and so query parameters) named like credentials
FIELD_NAMES: Final = frozenset(
    {"api_key", "apikey", "openai_api_key", "x_api_key", "access_token", "refresh_token", "id_token",
     "client_secret", "secret", "password", "authorization", "api_token", "auth_token",
     "subscription_key", "ocp_apim_subscription_key"}
)  # fmt: skip
QUERY_NAMES: Final = FIELD_NAMES | frozenset({"key", "token", "code", "sig", "signature", "auth"})
_NAMED: Final = re.compile(r"key|token|secret|auth|passw|pass_|pass$|pwd|signature|cookie")
_ID_HEADERS: Final = frozenset({"openai_organization", "openai_project"})
# what a secret put in the wrong environment variable looks like: a known key's prefix (OpenAI's sk-,
# GitHub's, Slack's, Hugging Face's, AWS's, Google's), a JWT, an HTTP auth scheme, a password hash
# (crypt's $id$: /etc/shadow), a URL holding a password (scheme://user:password@host), a name=value
# pair named like a credential, or a long run of letters and digits (a random token)
_KEY_PREFIX: Final = re.compile(
    r"(?:^|[^A-Za-z0-9])(?:sk|rk|pk|ghp|gho|ghs|ghu|github_pat|glpat|xox[abprs]|hf)[-_][A-Za-z0-9]"
    r"|AKIA[0-9A-Z]{12}|AIza[\w-]{20}|eyJ[\w-]{10,}\.|(?:^|\s)(?:bearer|basic)\s+\S|\$[0-9a-z]{1,6}\$"
    r"|://[^/\s:@]*:[^/\s@]+@",
    re.IGNORECASE,
)
_PAIR: Final = re.compile(r"([A-Za-z][\w-]*)\s*[=:]\s*\S")
_TOKEN: Final = re.compile(r"[A-Za-z0-9+/=_-]{24,}")


def normal(name: str) -> str:
    """``name`` as the rules compare it: lower-case, ``-`` read as ``_``."""
    return name.strip().lower().replace("-", "_")


def credential_field(name: str) -> bool:
    """Whether a JSON field named ``name`` holds a credential (:data:`FIELD_NAMES`, at any depth of a
    body: never the short query names such as ``code``, an error body's, or ``token``, a logprob's)."""
    return normal(name) in FIELD_NAMES


def credential_name(name: str) -> bool:
    """Whether a header or query parameter named ``name`` carries a credential (or an organisation or
    project id)."""
    key = normal(name)
    return key in QUERY_NAMES or key in _ID_HEADERS or _NAMED.search(key) is not None


def looks_like_credential(value: str) -> bool:
    """Whether ``value`` (an environment variable's, say) looks like a key or token rather than a setting."""
    if _KEY_PREFIX.search(value) or any(credential_name(m.group(1)) for m in _PAIR.finditer(value)):
        return True
    return any(re.search("[0-9]", t) and re.search("[A-Za-z]", t) for t in _TOKEN.findall(value))


def _header_value(value: Any) -> str:
    if isinstance(value, list | tuple):
        value = value[0] if value else ""
    text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    scheme, _, rest = text.strip().partition(" ")
    return rest.strip() if rest and scheme.lower() in ("bearer", "basic", "token") else text.strip()


def request_credentials(headers: Mapping[Any, Any] | None, url: str) -> set[str]:
    """The credential values a request carries in its headers, its query and its URL's user information."""
    found: set[str] = set()
    for name, value in (headers or {}).items():
        if credential_name(name.decode("latin-1") if isinstance(name, bytes) else str(name)):
            found.add(_header_value(value))
    if "?" in url or "@" in url:
        parts = urlsplit(url)
        found.update(v for n, v in parse_qsl(parts.query) if credential_name(n))
        found.update(unquote(v) for v in (parts.username, parts.password) if v)
    found.discard("")
    return found
