"""Record and replay HTTP interactions for one test, on top of vcrpy's transport patches.

vcrpy intercepts the HTTP libraries (httpx2 for the OpenAI SDK); this module supplies the
cassette object its stubs talk to. Matching is ours: method, host, path and the body compared as
canonical JSON, never headers, scheme, port or query. Recorded interactions sit in a dict keyed
by that canonical form, each key holding a queue of unplayed interactions, so a replayed call
costs one parse of its own body and a dict lookup whatever the cassette's size. Each interaction
plays once, in recorded order; an extra identical call is a miss.

A miss raises :class:`CassetteMissError` from inside the transport (the OpenAI SDK lets exceptions
it does not know propagate unchanged) and is also kept on the cassette, so the plugin fails the
test with the same message even when the code under test swallows the exception.
"""

from __future__ import annotations

import http
import json
import shlex
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from llm_ledger._errors import CassetteMissError

from . import _format
from ._format import Body

__all__ = ["RECORD_MODES", "CassetteMissError", "LedgerCassette", "activate", "canonical_key"]

RECORD_MODES: Final = ("none", "once", "new_episodes", "all", "rewrite")
_PLAY_ATTR = "_llm_ledger_play"
_MAX_DIFFS = 8
_MAX_VALUE = 120

Key = tuple[str, str, str, str | bytes]


def _canonical_body(raw: bytes | None) -> str | bytes:
    if not raw:
        return ""
    if raw.lstrip()[:1] in (b"{", b"["):
        try:
            value = json.loads(raw)
        except ValueError:
            return raw
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return raw


def canonical_key(method: str, url: str, body: bytes | None) -> Key:
    """What two requests must share to match: method, host, path and the body as canonical JSON."""
    parts = urlsplit(url)
    return (method.upper(), (parts.hostname or "").lower(), parts.path or "/", _canonical_body(body))


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


class LedgerCassette:
    """The cassette of one test, in one record mode; duck-types what vcrpy's stubs call."""

    def __init__(self, path: Path, mode: str, nodeid: str) -> None:
        if mode not in RECORD_MODES:
            raise ValueError(f"record mode {mode!r} is not one of {RECORD_MODES!r}")
        self.path = path
        self.mode = mode
        self.nodeid = nodeid
        # attributes vcrpy's patch builder and stubs read
        self._path = str(path)
        self.custom_patches: tuple[Any, ...] = ()
        self.skip_patchers: tuple[str, ...] = ()
        self.allow_playback_repeats = False

        self._lock = threading.Lock()
        self.existed = path.is_file()
        self.loaded: list[Interaction] = []
        self.recorded: list[Interaction] = []
        self.misses: list[str] = []
        self.played = 0
        if self.existed and mode != "rewrite":
            self.loaded = [_interaction(item) for item in _format.load_cassette(path)]
        self._unplayed: dict[Key, deque[int]] = {}
        for index, interaction in enumerate(self.loaded):
            self._unplayed.setdefault(interaction.key, deque()).append(index)
        # once: replay an existing cassette strictly, or record a new one from scratch
        self.write_protected = mode == "none" or (mode == "once" and self.existed)
        self._plays = mode in ("none", "new_episodes") or self.write_protected

    def __len__(self) -> int:
        return len(self.loaded) + len(self.recorded)

    # -- the interface vcrpy's stubs use ---------------------------------------------------------

    def can_play_response_for(self, request: Any) -> bool:
        if not self._plays:
            return False
        key = canonical_key(request.method, request.uri, request.body)
        with self._lock:
            queue = self._unplayed.get(key)
            if queue:
                # reserve now, so a concurrent identical call cannot take the same interaction
                setattr(request, _PLAY_ATTR, queue.popleft())
                self.played += 1
                return True
        if self.write_protected:
            self._miss(request, key)
        return False

    def play_response(self, request: Any) -> dict[str, Any]:
        index: int | None = request.__dict__.pop(_PLAY_ATTR, None)
        if index is None:
            if not self.can_play_response_for(request):
                self._miss(request, canonical_key(request.method, request.uri, request.body))
            index = request.__dict__.pop(_PLAY_ATTR)
            assert index is not None
        return self.loaded[index].replay

    def filter_request(self, request: Any) -> Any:
        return request

    def append(self, request: Any, response: dict[str, Any]) -> None:
        status = int(response["status"]["code"])
        if status == 429 or status >= 500:
            return  # throttling and server errors say nothing about the code under test
        req_headers = {
            k.lower(): v for k, v in request.headers.items() if k.lower() in _format.REQUEST_HEADERS
        }
        body, resp_headers = _format.response_body(response["body"]["string"] or b"", response["headers"])
        interaction = Interaction(
            method=request.method.upper(),
            url=request.uri,
            request_headers=req_headers,
            request_body=_format.decode_body(request.body or b"", req_headers.get("content-type", "")),
            status=status,
            response_headers=resp_headers,
            response_body=body,
        )
        with self._lock:
            self.recorded.append(interaction)

    def find_requests_with_most_matches(self, request: Any) -> list[Any]:
        return []

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
        header = (
            f"llm-ledger cassette for {self.nodeid}\n"
            f"re-record: {self.rerecord_command('rewrite')}\n"
            "bodies are stored decoded; headers are allow-listed (no credentials or ids)"
        )
        _format.write_atomic(self.path, _format.dump_cassette([i.to_yaml() for i in interactions], header))

    # -- misses ----------------------------------------------------------------------------------

    def rerecord_command(self, mode: str) -> str:
        return f"pytest {shlex.quote(self.nodeid)} --llm-record-mode={mode}"

    def _miss(self, request: Any, key: Key) -> None:
        message = self.describe_miss(request.method, request.uri, request.body)
        with self._lock:
            self.misses.append(message)
        raise CassetteMissError(message)

    def describe_miss(self, method: str, url: str, body: bytes | None) -> str:
        """The failure text for a request with no unplayed match: what, where, why, and the fix."""
        key = canonical_key(method, url, body)
        lines = [
            f"llm-ledger: request not found in cassette {self.path} (record mode {self.mode!r})",
            f"  request: {key[0]} {key[1]}{key[2]}",
        ]
        if not self.existed:
            lines.append("  the cassette file does not exist: this test has never been recorded")
            fix = [self.rerecord_command("once")]
        else:
            same = [i for i in self.loaded if i.key == key]
            if same:
                lines.append(
                    f"  the cassette holds {len(same)} identical request(s), all already played: each "
                    "recorded interaction plays once, so the test now makes more identical calls "
                    "than were recorded"
                )
            else:
                lines.extend(self._closest(method, url, body))
            fix = [
                self.rerecord_command("rewrite"),
                self.rerecord_command("new_episodes") + "  (keeps the rest)",
            ]
        lines.append("  to record it again (needs network and OPENAI_API_KEY):")
        lines.extend(f"    {cmd}" for cmd in fix)
        return "\n".join(lines)

    def _closest(self, method: str, url: str, body: bytes | None) -> list[str]:
        if not self.loaded:
            return ["  the cassette holds no interactions"]
        key = canonical_key(method, url, body)
        requested = _parsed(body)
        endpoint = [i for i in self.loaded if i.key[:3] == key[:3]]
        if not endpoint:
            first = self.loaded[0]
            return [
                f"  no recorded request goes to {key[0]} {key[1]}{key[2]}; the first recorded one is "
                f"{first.key[0]} {first.key[1]}{first.key[2]}"
            ]
        best: tuple[int, int, list[str]] | None = None
        for interaction in endpoint:
            diffs = list(_json_diff(_parsed(_format.body_bytes(interaction.request_body)), requested, "$"))
            index = self.loaded.index(interaction)
            if best is None or len(diffs) < len(best[2]):
                best = (index, len(diffs), diffs)
        assert best is not None
        index, count, diffs = best
        lines = [f"  closest recorded request: interactions[{index}], the body differs at {count} place(s):"]
        lines.extend(f"    {d}" for d in diffs[:_MAX_DIFFS])
        if count > _MAX_DIFFS:
            lines.append(f"    ... and {count - _MAX_DIFFS} more")
        return lines


def _interaction(item: dict[str, Any]) -> Interaction:
    req, resp = item["request"], item["response"]
    return Interaction(
        method=req["method"],
        url=req["url"],
        request_headers=req["headers"],
        request_body=req["body"],
        status=resp["status"],
        response_headers=resp["headers"],
        response_body=resp["body"],
    )


def _parsed(raw: bytes | None) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


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
        yield f"{path}: recorded {_short(recorded)}, requested {_short(requested)}"


@contextmanager
def activate(cassette: LedgerCassette) -> Iterator[LedgerCassette]:
    """Route every HTTP library vcrpy knows (httpx2 for the OpenAI SDK) through ``cassette``."""
    from vcr.patch import CassettePatcherBuilder  # lazy: only tests marked llm pay for vcrpy

    with ExitStack() as stack:
        for patcher in CassettePatcherBuilder(cassette).build():
            stack.enter_context(patcher)
        yield cassette
