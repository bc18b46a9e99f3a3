"""Record and replay the HTTP interactions of one test: the cassette object vcrpy's stubs talk to.

A cassette owns the OpenAI SDK's requests and any to ``api.openai.com``; anything else goes out
unrecorded (refused with network blocking on), or to the test's own vcrpy cassette
(``@pytest.mark.vcr``). Requests match on a canonical key, redacted as ``_secrets`` redacts what is
stored, so a scrubbed cassette still replays and a miss never shows a credential; each key holds a
queue of unplayed interactions. A miss raises :class:`CassetteMissError` inside the transport (the
SDK lets it propagate) and is kept on the cassette, so the plugin fails the test even when the code
under test swallows it.
"""

from __future__ import annotations

import bisect
import http
import itertools
import json
import re
import shlex
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import KW_ONLY, dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from llm_ledger import BlockedRequestError, CassetteError, CassetteMissError, ConfigError
from llm_ledger.testing import credential_name

from . import _format
from ._format import Body, shown_path
from ._naming import RECORD_MODES, TO_RECORD, move_command, moved_hint, rerecord_command
from ._network import is_openai_request
from ._scrub import check_loaded
from ._secrets import CredentialRedactor, known_secrets

__all__ = [
    "CassetteMissError",
    "LedgerCassette",
    "activate",
    "canonical_key",
    "vcrpy_problem",
]

_PLAY_ATTR = "_llm_ledger_play"
_SENT_ATTR = "_llm_ledger_sent"
_MAX_DIFFS = 8
_MAX_VALUE = 120

Query = tuple[tuple[str, str], ...]
Key = tuple[str, str, str, str | bytes, Query]  # method, host, API path, canonical body, query
_VERSION_SEGMENT = re.compile(r"v\d+(?:(?:alpha|beta|preview)\d*)?", re.IGNORECASE)


def api_path(path: str) -> str:
    """The path after the client's base URL: what follows the last version segment (``/v1``)."""
    segments = path.split("/")
    for index in range(len(segments) - 1, -1, -1):
        if _VERSION_SEGMENT.fullmatch(segments[index]):
            return "/" + "/".join(segments[index + 1 :])
    return path or "/"


_MULTIPART: Final = re.compile(rb"--([!-~]{1,70})\r\n.*\r\n--\1--\r?\n?", re.DOTALL)


def _canonical_body(raw: bytes | None, redactor: CredentialRedactor) -> str | bytes:
    if not raw:
        return ""
    if multipart := _MULTIPART.fullmatch(raw):  # an upload: the client draws a new boundary each time
        raw = raw.replace(multipart.group(1), b"llm-ledger-boundary")
    if raw.lstrip()[:1] in (b"{", b"["):
        try:
            value = json.loads(raw)
        except ValueError:
            return raw
        redactor.known = [*redactor.known, *known_secrets(body=value)]
        value = redactor.json(value, "body")
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    try:
        return redactor.text(raw.decode("utf-8"), "body").encode()
    except UnicodeDecodeError:
        return raw


def owns(request: Any) -> bool:
    """Whether a cassette records and replays ``request`` (a vcrpy request): the OpenAI SDK's
    requests, wherever they go, and any request to OpenAI's API host."""
    host = (urlsplit(request.uri).hostname or "").lower()
    return is_openai_request(request.headers) or host == "api.openai.com"


def canonical_key(method: str, url: str, body: bytes | None, headers: Any = None) -> Key:
    """What two requests share to match: method, host, API path, the body as canonical JSON and the
    query, credentials redacted (those named like credentials, and the values ``headers`` carry)."""
    parts = urlsplit(url)
    redactor = CredentialRedactor(known_secrets(headers, url))
    canonical_body = _canonical_body(body, redactor)  # first: the query is redacted of its secrets too
    return (
        method.upper(),
        (parts.hostname or "").lower(),
        api_path(parts.path),
        canonical_body,
        _canonical_query(parts.query, redactor),
    )


def _canonical_query(query: str, redactor: CredentialRedactor) -> Query:
    """The query's parameters sorted by name (a repeated name's values in the order sent), without
    credentials or Azure's ``api-version``, which differ between deployments, not requests."""
    pairs = parse_qsl(query, keep_blank_values=True)
    kept = [
        (n, redactor.text(v, "url"))
        for n, v in pairs
        if not credential_name(n) and n.lower() != "api-version"
    ]
    return tuple(sorted(kept, key=lambda pair: pair[0]))


AUTH_ERRORS: Final = (401, 403)
_RETRIED: Final = frozenset({408, 409, 429, *range(500, 600)})  # the statuses the OpenAI SDK retries


def auth_answers(interactions: list[dict[str, Any]]) -> list[str]:
    """The 401/403 answers of a loaded cassette's ``interactions``, as "401 POST /chat/completions"."""
    return [
        auth_answer(item["response"]["status"], item["request"]["method"], item["request"]["url"])
        for item in interactions
        if item["response"]["status"] in AUTH_ERRORS
    ]


def auth_answer(status: int, method: str, url: str) -> str:
    """How messages name a 401/403 answer: "401 POST /chat/completions"."""
    return f"{status} {method.upper()} {api_path(urlsplit(url).path)}"


def stored_url(url: str, redactor: CredentialRedactor) -> str:
    """The URL as written to a cassette: credentials redacted, the port dropped (a fake server's
    ephemeral port would rewrite every ``url:`` line on each recording)."""
    parts = urlsplit(redactor.url(url, "url"))
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    return urlunsplit(parts._replace(netloc=netloc))


def _shown_url(url: str, headers: Any) -> str:
    """``url`` as a message shows it: without the credentials it or ``headers`` carry."""
    return CredentialRedactor(known_secrets(headers, url)).url(url, "url")


def _redact_body(body: Body, redactor: CredentialRedactor) -> Body:
    kind, value = body
    if kind == "base64":  # bytes we cannot read, nothing text-shaped to find
        return body
    return (kind, redactor.json(value, kind))  # a string (text) is redacted as one in JSON is


@dataclass(slots=True)
class Interaction:
    """One request and its response, as stored and as replayed."""

    method: str
    url: str
    request_headers: dict[str, str]
    request_body: Body
    status: int
    response_headers: dict[str, str]
    response_body: Body
    key: Key = field(init=False)
    replay: dict[str, Any] = field(init=False)  # the response in the shape vcrpy's stubs replay

    def __post_init__(self) -> None:
        self.key = canonical_key(self.method, self.url, _format.body_bytes(self.request_body))
        try:
            reason = http.HTTPStatus(self.status).phrase
        except ValueError:
            reason = ""
        self.replay = {
            "status": {"code": self.status, "message": reason},
            "headers": {k: [v] for k, v in self.response_headers.items()},
            "body": {"string": _format.body_bytes(self.response_body)},
        }

    def to_yaml(self) -> dict[str, Any]:
        return _format.interaction_to_yaml(
            self.method, self.url, self.request_headers, self.request_body,
            self.status, self.response_headers, self.response_body,
        )  # fmt: skip


@dataclass(eq=False)
class LedgerCassette:
    """The cassette of one test, in one record mode; duck-types what vcrpy's stubs call."""

    path: Path
    mode: str
    nodeid: str
    _: KW_ONLY
    match_host: bool = False
    record_auth_errors: bool = False  # keep 401/403 answers: the test expects them
    block_network: bool = False  # refuse the requests this cassette does not own
    allowed_hosts: tuple[str, ...] = ()  # ... except to these hosts (glob patterns)
    fallback: Any = None  # the test's own vcrpy cassette (pytest-recording), for the rest
    rerecord_options: Sequence[str] = ()  # what chose the cassette's place, for commands
    directory: Path | None = None  # the cassette directory, named in a miss when it does not exist
    # the test as a command run where pytest was started names it (from a subdirectory:
    # ``test_x.py::test_y``; by default ``nodeid``, which the cassette's header keeps, the same
    # wherever it was recorded)
    command_nodeid: str = ""
    secrets: Sequence[str] = ()  # credentials among the test's parameters: its node id shows them
    # the orphan cassette a missing one plausibly was before its test was renamed, named in a miss
    moved_from: Callable[[Path], Path | None] | None = None

    def __post_init__(self) -> None:
        path, mode = self.path, self.mode
        if mode not in RECORD_MODES:
            raise ConfigError(
                f"LedgerCassette({str(path)!r}, mode={mode!r}): {mode!r} is not a record mode; use one of "
                f"{', '.join(RECORD_MODES)}"
            )
        self.command_nodeid = self.command_nodeid or self.nodeid
        # attributes vcrpy's patch builder and stubs read
        self._path = str(path)
        self.custom_patches: tuple[Any, ...] = ()
        self.skip_patchers: tuple[str, ...] = ()
        self.allow_playback_repeats = False

        self._lock = threading.Lock()
        self.existed = path.is_file()
        self.loaded: list[Interaction] = []
        self.recorded: list[Interaction] = []  # in the order the requests were sent, as they replay
        self._sent = itertools.count()
        self._recorded_sent: list[int] = []  # when each of ``recorded`` was sent
        self.misses: list[str] = []
        self.blocked: list[str] = []
        self.auth_errors: list[str] = []  # 401/403 answers left out: "401 POST /chat/completions"
        self.replayed_auth_errors: list[str] = []  # 401/403 answers replayed that the test does not expect
        self.played = 0
        if self.existed and mode != "rewrite":
            interactions, document, text = _format.read_cassette(path)
            if findings := check_loaded(path, document, text):  # a commit must not keep them: fail closed
                shown = shown_path(path)
                fix = f"llm-ledger scrub {shlex.quote(shown)}"
                if self.directory is not None:  # an upgrade meets this in every cassette: one command
                    every = shlex.quote(shown_path(self.directory))
                    fix += f" (from every cassette: llm-ledger scrub {every})"
                raise CassetteError(
                    f"{shown}: holds credentials or identifiers (llm-ledger scrub --check: "
                    f"{'; '.join(findings)}); remove them with: {fix}, and revoke any key they held"
                )
            self.loaded = [
                Interaction(
                    q["method"], q["url"], q["headers"], q["body"], a["status"], a["headers"], a["body"]
                )
                for q, a in ((item["request"], item["response"]) for item in interactions)
            ]
        self._unplayed: dict[Key, deque[int]] = {}
        for index, interaction in enumerate(self.loaded):
            self._unplayed.setdefault(self._lookup(interaction.key), deque()).append(index)
        # once: replay an existing cassette strictly, or record a new one from scratch
        self.write_protected = mode == "none" or (mode == "once" and self.existed)
        self._plays = mode in ("none", "new_episodes") or self.write_protected

    def _lookup(self, key: Key) -> Key:
        """The part of a key this cassette matches on: the host only with ``match_host``."""
        return key if self.match_host else (key[0], "", *key[2:])

    # -- the interface vcrpy's stubs use ---------------------------------------------------------

    def can_play_response_for(self, request: Any) -> bool:
        if not owns(request):
            return self._others(request)
        # answers are kept in sending order: concurrent calls can finish in another order
        request.__dict__.setdefault(_SENT_ATTR, next(self._sent))
        if not self._plays:
            return False
        key = canonical_key(request.method, request.uri, request.body, request.headers)
        with self._lock:
            queue = self._unplayed.get(self._lookup(key))
            if queue:
                # reserve now, so a concurrent identical call cannot take the same interaction
                setattr(request, _PLAY_ATTR, queue.popleft())
                self.played += 1
                return True
        if self.write_protected:
            self._miss(request)
        return False

    def play_response(self, request: Any) -> dict[str, Any]:
        if not owns(request):
            response: dict[str, Any] = self.fallback.play_response(request)
            return response
        # reserved by can_play_response_for; a stub that plays without asking first reserves it here
        if _PLAY_ATTR not in request.__dict__ and not self.can_play_response_for(request):
            self._miss(request)
        played: Interaction = self.loaded[request.__dict__.pop(_PLAY_ATTR)]
        if played.status in AUTH_ERRORS and not self.record_auth_errors:
            # recorded before 401/403 answers were left out: it replays a wrong key's error forever
            with self._lock:
                self.replayed_auth_errors.append(auth_answer(played.status, played.method, played.url))
        return played.replay

    def filter_request(self, request: Any) -> Any:
        # None tells vcrpy's stubs a request is not this cassette's to refuse: it is sent
        return request if owns(request) else None

    def append(self, request: Any, response: dict[str, Any]) -> None:
        if not owns(request):
            if self.fallback is not None:
                self.fallback.append(request, response)
            return
        status = int(response["status"]["code"])
        if status in AUTH_ERRORS and not self.record_auth_errors:
            # a wrong or expired key at record time: the test saw the error live, but a recording would
            # replay it in every later run, whatever key that run has
            answer = auth_answer(status, request.method, request.uri)
            with self._lock:
                self.auth_errors.append(answer)
            return
        req_headers = {
            k.lower(): v for k, v in request.headers.items() if k.lower() in _format.REQUEST_HEADERS
        }
        req_body = _format.decode_body(request.body or b"", req_headers.get("content-type", ""))
        # the credentials this request carried are looked for everywhere in the exchange (a key
        # echoed in a 401 body), besides everything named or shaped like a credential
        known = known_secrets(request.headers, request.uri, req_body[1] if req_body[0] == "json" else None)
        redactor = CredentialRedactor(known)
        body, resp_headers = _format.response_body(response["body"]["string"] or b"", response["headers"])
        interaction = Interaction(
            method=request.method.upper(),
            url=stored_url(request.uri, redactor),
            request_headers=req_headers,
            request_body=_redact_body(req_body, redactor),
            status=status,
            response_headers=resp_headers,
            response_body=_redact_body(body, redactor),
        )
        sent = request.__dict__.get(_SENT_ATTR)
        retry = next((v for k, v in request.headers.items() if k.lower() == "x-stainless-retry-count"), "0")
        with self._lock:
            if retry != "0" and status not in _RETRIED:  # the retries got an answer: the 429s or 5xx
                self._drop_retried(interaction.key)  # before it never reached the code under test
            if sent is None:  # sent without asking first: now is all we know
                sent = next(self._sent)
            at = bisect.bisect(self._recorded_sent, sent)
            self._recorded_sent.insert(at, sent)
            self.recorded.insert(at, interaction)

    def _drop_retried(self, key: Key) -> None:
        """Leave out the 429/5xx answers last recorded for ``key``, which a retry's answer replaces:
        replay answers at once what the retry got. Answers the SDK gave up on are kept, as the test
        saw them: its replay retries them as it did live."""
        for at in range(len(self.recorded) - 1, -1, -1):
            if self.recorded[at].key == key:
                if self.recorded[at].status not in _RETRIED:
                    return
                del self.recorded[at], self._recorded_sent[at]

    def _others(self, request: Any) -> bool:
        """A request this cassette does not own: the test's vcrpy cassette plays, refuses or records
        it as it would alone; without one it is sent (refused with network blocking on)."""
        fallback = self.fallback
        if fallback is not None:
            if fallback.can_play_response_for(request):
                return True
            if fallback.write_protected and fallback.filter_request(request):
                from vcr.errors import CannotOverwriteExistingCassetteException

                raise CannotOverwriteExistingCassetteException(cassette=fallback, failed_request=request)
            return False
        host = (urlsplit(request.uri).hostname or "").lower()
        if self.block_network and not any(fnmatchcase(host, p) for p in self.allowed_hosts):
            url = _shown_url(request.uri, request.headers)
            message = "\n".join(
                [
                    f"llm-ledger: {self.nodeid} sent a request its cassette does not record, refused "
                    "because network blocking is on (--llm-block-network / ini llm_block_network)",
                    f"  request: {request.method} {url}",
                    "  cassettes record the OpenAI SDK's requests; to let this host through: ini "
                    f"llm_allowed_hosts = {host}",
                ]
            )
            with self._lock:
                self.blocked.append(message)
            raise BlockedRequestError(message, self.nodeid)
        return False

    # -- saving ----------------------------------------------------------------------------------

    def save(self, *, test_passed: bool) -> None:
        """Write what this record mode keeps; ``none`` and a replayed ``once`` never write."""
        if self.mode == "rewrite":
            if self.recorded:
                self._write(self.recorded)
            elif test_passed and self.existed:
                self.path.unlink()  # the test makes no calls any more
            return
        if not self.recorded or self.write_protected:
            return
        if self.mode == "all":
            fresh = {i.key for i in self.recorded}
            self._write([i for i in self.loaded if i.key not in fresh] + self.recorded)
        else:
            self._write(self.loaded + self.recorded)

    def _write(self, interactions: list[Interaction]) -> None:
        command = (
            self.rerecord_command("rewrite")
            if self.command_nodeid == self.nodeid
            else rerecord_command(self.nodeid, "rewrite", self.rerecord_options)
        )
        nodeid = CredentialRedactor(self.secrets).text(self.nodeid, "header")
        if nodeid != self.nodeid:  # a credential among the parameters: the command names the function
            command = rerecord_command(self.nodeid.split("[", 1)[0], "rewrite", self.rerecord_options)
        header = (
            f"llm-ledger cassette for {nodeid}\n"
            f"re-record: {command}\n"
            "bodies are stored decoded; headers are allow-listed and credentials redacted"
        )
        _format.write_atomic(self.path, _format.dump_cassette([i.to_yaml() for i in interactions], header))

    # -- misses ----------------------------------------------------------------------------------

    def rerecord_command(self, mode: str) -> str:
        """The command that records this cassette in ``mode`` (the lens demo's cassettes override it)."""
        return rerecord_command(self.command_nodeid, mode, self.rerecord_options)

    def _miss(self, request: Any) -> None:
        message = self.describe_miss(request.method, request.uri, request.body, request.headers)
        with self._lock:
            self.misses.append(message)
        raise CassetteMissError(message, self.nodeid)

    def describe_miss(self, method: str, url: str, body: bytes | None, headers: Any = None) -> str:
        """The failure text for a request with no unplayed match: what, where, which part differed,
        and the fix. Values are shown redacted, as they are matched: never a credential."""
        key = canonical_key(method, url, body, headers)
        shown_url = _shown_url(url, headers)
        host_rule = (
            "method, host, API path, query and body"
            if self.match_host
            else "method, API path, query and body"
        )
        lines = [
            f"llm-ledger: request not found in cassette {shown_path(self.path)} (record mode {self.mode!r})",
            f"  request: {key[0]} {key[2]}  (API path of {shown_url}; matched on {host_rule})",
        ]
        fix = [self.rerecord_command("rewrite")]
        same = [i for i in self.loaded if self._lookup(i.key) == self._lookup(key)]
        if same or self.played == len(self.loaded):
            # one more call: a changed one would leave its recording unplayed, a stale cassette
            fix.append(self.rerecord_command("new_episodes") + "  (keeps the rest)")
        how = f"  {TO_RECORD}:"
        if not self.existed:
            lines.append("  the cassette file does not exist: this test has never been recorded")
            if self.directory is not None and not self.directory.is_dir():
                lines.append(f"  the cassette directory {shown_path(self.directory)} does not exist either")
            if self.moved_from is not None and (old := self.moved_from(self.path)) is not None:
                lines += [f"  {moved_hint(old)}:", f"    {move_command(old, self.path)}"]
            fix = [self.rerecord_command("once")]
        elif same:
            lines.append(
                f"  the cassette holds {len(same)} identical request(s), all already played: each "
                "recorded interaction plays once, so the test now makes more identical calls "
                "than were recorded"
            )
            if retried := sorted({i.status for i in same if i.status in _RETRIED}):
                # a hand-edited or converted cassette: the plugin never records these answers
                lines.append(
                    f"  the recorded answer is HTTP {', '.join(map(str, retried))}, which the OpenAI SDK "
                    "retries (max_retries), so each retry is one more call: llm-ledger records a 429 or "
                    "5xx answer only with the retries the SDK made after it; re-record the test, or give a "
                    "test of that error a client with max_retries=0"
                )
        elif self.match_host and (
            other := [i for i in self.loaded if i.key[:1] + i.key[2:] == key[:1] + key[2:]]
        ):
            lines.append(
                f"  only the host differs: interactions[{self.loaded.index(other[0])}] has this method, API "
                f"path, query and body, recorded against host {other[0].key[1]!r}; this request goes to "
                f"{key[1]!r}"
            )
            how = (
                "  host matching is on for this test (match_host=True on its llm marker, or llm_match_host "
                "in the ini file); remove it to replay this cassette against any host, or record it "
                "against this host:"
            )
        else:
            lines.extend(self._closest(key))
        lines.append(how)
        lines.extend(f"    {cmd}" for cmd in fix)
        return "\n".join(lines)

    def _closest(self, key: Key) -> list[str]:
        if not self.loaded:
            return ["  the cassette holds no interactions"]
        requested = _parsed(key[3])
        endpoint = [
            i for i, each in enumerate(self.loaded) if self._lookup(each.key)[:3] == self._lookup(key)[:3]
        ]
        if not endpoint:
            elsewhere = sorted({i.key[1] for i in self.loaded if (i.key[0], i.key[2]) == (key[0], key[2])})
            if self.match_host and elsewhere:
                return [
                    f"  the host differs (host matching is on): {key[0]} {key[2]} was recorded against "
                    f"{', '.join(map(repr, elsewhere))}, this request goes to {key[1]!r}, and the query "
                    "or body differs too"
                ]
            recorded = ", ".join(sorted({f"{i.key[0]} {i.key[2]}" for i in self.loaded}))
            return [
                f"  the method or API path differs: nothing was recorded for {key[0]} {key[2]}; the "
                f"cassette holds {recorded}"
            ]
        diffs_of = {
            i: [
                *_json_diff(_query_dict(self.loaded[i].key[4]), _query_dict(key[4]), "?"),
                *_json_diff(_parsed(self.loaded[i].key[3]), requested, "$"),
            ]
            for i in endpoint
        }
        index = min(diffs_of, key=lambda i: len(diffs_of[i]))  # the first with the fewest
        diffs = diffs_of[index]
        count = len(diffs)
        parts = {d[0] for d in diffs}  # ? the query, $ the body
        differs = " and ".join(name for mark, name in (("?", "query"), ("$", "body")) if mark in parts)
        lines = [
            f"  closest recorded request: interactions[{index}] (same method and API path), the {differs} "
            f"differ{'s' * (len(parts) == 1)} at {count} place(s):"
        ]
        lines.extend(f"    {d}" for d in diffs[:_MAX_DIFFS])
        if count > _MAX_DIFFS:
            lines.append(f"    ... and {count - _MAX_DIFFS} more")
        return lines


def _query_dict(query: Query) -> dict[str, str | list[str]]:
    """A query as its diff shows it: each name's value, or its values when it is repeated."""
    values: dict[str, list[str]] = {}
    for name, value in query:
        values.setdefault(name, []).append(value)
    return {name: each[0] if len(each) == 1 else each for name, each in values.items()}


def _parsed(raw: str | bytes | None) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw


_ABSENT = object()


def _short(value: Any) -> str:
    if value is _ABSENT:
        return "<absent>"
    text = repr(value)
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 3] + "..."


def _json_diff(recorded: Any, requested: Any, path: str) -> Iterator[str]:
    """Paths where two JSON documents differ, each with both values."""
    if isinstance(recorded, dict) and isinstance(requested, dict):
        for name in sorted(recorded.keys() | requested.keys()):
            sub = f"{path}.{name}" if name.isidentifier() else f"{path}[{name!r}]"
            yield from _json_diff(recorded.get(name, _ABSENT), requested.get(name, _ABSENT), sub)
    elif isinstance(recorded, list) and isinstance(requested, list):
        for index in range(max(len(recorded), len(requested))):
            yield from _json_diff(
                recorded[index] if index < len(recorded) else _ABSENT,
                requested[index] if index < len(requested) else _ABSENT,
                f"{path}[{index}]",
            )
    elif recorded != requested or type(recorded) is not type(requested):
        texts = (recorded, requested)
        if all(isinstance(t, str) for t in texts) and any(len(repr(t)) > _MAX_VALUE for t in texts):
            yield _text_diff(recorded, requested, path)
        else:
            yield f"{path}: recorded {_short(recorded)}, requested {_short(requested)}"


def _text_diff(recorded: str, requested: str, path: str) -> str:
    """Two long strings around where they first differ: their starts alone can read the same."""
    pairs = zip(recorded, requested, strict=False)
    at = next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(recorded), len(requested)))
    start = max(0, at - _MAX_VALUE // 3)

    def window(text: str) -> str:
        shown = repr(text[start : start + _MAX_VALUE])
        return "..." * (start > 0) + shown + "..." * (start + _MAX_VALUE < len(text))

    return (
        f"{path}: differs from character {at + 1} (of {len(recorded)} recorded, {len(requested)} requested): "
        f"recorded {window(recorded)}, requested {window(requested)}"
    )


# pyproject's bound, for an install that skipped it: 8.2.1 intercepts httpx2 (openai 3.x) and loads YAML
# safely, 8.5.0 replays the SDK's aiohttp backend
_VCRPY_FLOOR: Final = (8, 5, 0)


def vcrpy_problem() -> str | None:
    """Why cassettes cannot work in this environment (vcrpy missing or too old), or None."""
    try:
        import vcr  # lazy: only tests marked llm pay for vcrpy
        from vcr.patch import CassettePatcherBuilder  # noqa: F401
    except ImportError as exc:
        return f"vcrpy cannot be imported ({exc})"
    version = str(getattr(vcr, "__version__", "0"))
    numbers = tuple(int(part) for part in re.findall(r"\d+", version)[:3])
    if numbers < _VCRPY_FLOOR:
        return f"vcrpy {version} is installed; llm-ledger needs vcrpy >= {'.'.join(map(str, _VCRPY_FLOOR))}"
    return None


@contextmanager
def activate(cassette: LedgerCassette) -> Iterator[LedgerCassette]:
    """Route every HTTP library vcrpy knows (httpx or httpx2 for the OpenAI SDK) through ``cassette``."""
    from vcr.patch import CassettePatcherBuilder  # lazy: only tests marked llm pay for vcrpy

    with ExitStack() as stack:
        for patcher in CassettePatcherBuilder(cassette).build():
            stack.enter_context(patcher)
        yield cassette
