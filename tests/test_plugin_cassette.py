"""The cassette engine without pytest sessions: replay cost, play order, file format round trips."""

from __future__ import annotations

import gzip
import json
import os
import stat
import subprocess
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from llm_ledger import CassetteError
from pytest_llm_ledger import _cassette, _format
from pytest_llm_ledger._cassette import CassetteMissError, LedgerCassette

URL = "https://api.openai.com/v1/chat/completions"


def body(i: int) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"question {i}"}]}


def write(path: Path, n: int) -> None:
    interactions = [
        _format.interaction_to_yaml(
            "POST", URL, {"content-type": "application/json"}, ("json", body(i)),
            200, {"content-type": "application/json"}, ("json", {"answer": i}),
        )
        for i in range(n)
    ]  # fmt: skip
    _format.write_atomic(path, _format.dump_cassette(interactions, "test"))


def request(payload: Any, *, compact: bool = False) -> SimpleNamespace:
    """What vcrpy's httpx stub hands the cassette."""
    separators = (",", ":") if compact else (", ", ": ")
    return SimpleNamespace(
        method="POST", uri=URL, body=json.dumps(payload, separators=separators).encode(), headers={}
    )


def test_replay_computes_one_key_per_request_whatever_the_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replayed call is one canonical key and a dict lookup: no scan of the recorded interactions."""
    path = tmp_path / "big.yaml"
    write(path, 200)  # a scan would compute up to 200 keys; writing and parsing more proves nothing more
    cassette = LedgerCassette(path, "none", "t.py::t")
    calls = 0
    real = _cassette.canonical_key

    def counting(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        return real(*args)

    monkeypatch.setattr(_cassette, "canonical_key", counting)
    req = request(body(199))
    assert cassette.can_play_response_for(req)
    assert json.loads(cassette.play_response(req)["body"]["string"]) == {"answer": 199}
    assert calls == 1


_COUNT_OPENS = """
import sys
from pathlib import Path

opened = []
sys.addaudithook(lambda event, args: event == "open" and args[0] == sys.argv[1] and opened.append(args))
from pytest_llm_ledger._cassette import LedgerCassette

assert len(LedgerCassette(Path(sys.argv[1]), "none", "t.py::t").loaded) == 50
print(len(opened))
"""


def test_a_cassette_is_read_and_parsed_once_for_replay_and_the_credential_check(tmp_path: Path) -> None:
    """Loading a test's cassette reads the file once: the credential check (llm-ledger scrub --check)
    looks at what the replay parsed, not at a second parse of the file, which doubled the cost of a
    large suite's setups."""
    path = tmp_path / "big.yaml"
    write(path, 50)
    opened = subprocess.run(
        [sys.executable, "-c", _COUNT_OPENS, str(path)], capture_output=True, text=True, check=True
    )
    assert opened.stdout == "1\n"


def test_an_ampersand_in_a_prompt_costs_no_second_parse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prompt's "Q&A" or a URL's "?a=1&b=2" is no YAML anchor: the cassette loads without the parse
    that looks for aliases (half the cost of a load again), which an anchor still gets, and is refused."""
    path = tmp_path / "c.yaml"
    question = {"model": "m", "messages": [{"role": "user", "content": "Q&A"}]}
    interaction = _format.interaction_to_yaml(
        "POST",
        URL + "?a=1&b=2",
        {},
        ("json", question),
        200,
        {},
        ("json", {"answer": "salt & pepper, R&amp;D"}),
    )
    _format.write_atomic(path, _format.dump_cassette([interaction], "test"))
    parses = []
    real = yaml.parse

    def counting(*args: Any, **kwargs: Any) -> Any:
        parses.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(yaml, "parse", counting)

    assert len(LedgerCassette(path, "none", "t.py::t").loaded) == 1
    assert parses == []
    path.write_text(path.read_text().replace("    json:\n", "    json: &shared\n", 1) + "- *shared\n")
    with pytest.raises(CassetteError, match=r"YAML alias \*shared is not allowed"):
        LedgerCassette(path, "none", "t.py::t")
    assert parses == [1]


def test_json_bodies_match_whatever_their_key_order_and_spacing(tmp_path: Path) -> None:
    """Key order and whitespace in the JSON body do not matter; values do."""
    path = tmp_path / "c.yaml"
    write(path, 1)
    cassette = LedgerCassette(path, "none", "t.py::t")
    reordered = {"messages": body(0)["messages"], "model": "gpt-4o-mini"}
    assert cassette.can_play_response_for(request(reordered, compact=True))
    with pytest.raises(CassetteMissError, match="all already played"):
        cassette.can_play_response_for(request(body(0)))


def test_identical_requests_play_in_recorded_order(tmp_path: Path) -> None:
    """Two recorded answers to the same request come back first, then second."""
    path = tmp_path / "c.yaml"
    same = ("json", body(0))
    interactions = [
        _format.interaction_to_yaml("POST", URL, {}, same, 200, {}, ("json", {"answer": n})) for n in (1, 2)
    ]
    _format.write_atomic(path, _format.dump_cassette(interactions, "test"))
    cassette = LedgerCassette(path, "none", "t.py::t")
    answers = []
    for _ in range(2):
        req = request(body(0))
        assert cassette.can_play_response_for(req)
        answers.append(json.loads(cassette.play_response(req)["body"]["string"])["answer"])
    assert answers == [1, 2]


def test_compressed_responses_are_stored_decoded() -> None:
    """A gzip body is stored as readable JSON and the content-encoding header is dropped."""
    raw = gzip.compress(b'{"ok": true}')
    stored, headers = _format.response_body(
        raw, {"Content-Type": ["application/json"], "Content-Encoding": ["gzip"], "Set-Cookie": ["s=1"]}
    )
    assert stored == ("json", {"ok": True})
    assert headers == {"content-type": "application/json"}


@pytest.mark.parametrize("wbits", [zlib.MAX_WBITS, -zlib.MAX_WBITS], ids=["zlib", "raw"])
def test_deflate_responses_are_stored_decoded_with_or_without_the_zlib_wrapper(wbits: int) -> None:
    """``Content-Encoding: deflate`` is sent both as zlib data (the standard) and as a bare deflate
    stream (servers that misread it); either is stored as readable JSON, the header dropped."""
    deflate = zlib.compressobj(wbits=wbits)
    raw = deflate.compress(b'{"ok": true}') + deflate.flush()
    stored, headers = _format.response_body(
        raw, {"Content-Type": ["application/json"], "Content-Encoding": ["deflate"]}
    )
    assert stored == ("json", {"ok": True})
    assert headers == {"content-type": "application/json"}


def test_unusual_event_streams_are_kept_verbatim() -> None:
    """A stream with comments or multi-line data is stored as text, so replay gives the same bytes."""
    raw = ': keep-alive\ndata: {"a": 1}\n\n'
    assert _format.decode_body(raw.encode(), "text/event-stream") == ("text", raw)
    assert _format.body_bytes(("text", raw)) == raw.encode()


def test_cassettes_are_written_with_the_ordinary_file_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A written cassette gets 0666 less the umask (so 0644 under 022), not mkstemp's private 0600,
    without changing the process's umask even for a moment (another thread may be creating a file)."""
    old = os.umask(0o022)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(os, "umask", lambda mask: pytest.fail(f"write_atomic set the umask to {mask:o}"))
            _format.write_atomic(tmp_path / "c.yaml", "version: 1\ninteractions: []\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "c.yaml").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["c.yaml"]  # no temporary file left


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://api.openai.com/v1/chat/completions", "/chat/completions"),
        ("http://127.0.0.1:8123/v1/chat/completions", "/chat/completions"),
        ("https://proxy.corp/api/v2/openai/v1/embeddings", "/embeddings"),
        ("http://0.0.0.0:4000/chat/completions", "/chat/completions"),  # a proxy served without /v1
        ("https://g.googleapis.com/v1beta/openai/chat/completions", "/openai/chat/completions"),
        ("https://r.azure.com/openai/deployments/d/embeddings?v=1", "/openai/deployments/d/embeddings"),
    ],
)  # fmt: skip
def test_requests_match_on_the_path_after_the_clients_base(url: str, expected: str) -> None:
    """The API path is what follows the last version segment: host, port and proxy prefix do not count."""
    method, _, path, _, _ = _cassette.canonical_key("post", url, b"{}")
    assert (method, path) == ("POST", expected)


def test_a_miss_on_another_endpoint_says_the_path_differs(tmp_path: Path) -> None:
    """A request to an endpoint the cassette never saw names it and what the cassette holds instead."""
    path = tmp_path / "c.yaml"
    write(path, 2)
    cassette = LedgerCassette(path, "none", "t.py::t")
    req = SimpleNamespace(
        method="POST",
        uri="http://localhost:1/v1/embeddings?key=sk-" + "k" * 20,
        body=b"{}",
        headers={"x-stainless-lang": "python"},  # the OpenAI SDK's: a request the cassette owns
    )
    with pytest.raises(CassetteMissError) as excinfo:
        cassette.can_play_response_for(req)
    message = str(excinfo.value)
    assert (
        "  request: POST /embeddings  (API path of http://localhost:1/v1/embeddings?key=REDACTED;" in message
    )
    assert (
        "  the method or API path differs: nothing was recorded for POST /embeddings; the cassette holds "
        "POST /chat/completions"
    ) in message
    assert "pytest t.py::t --llm-record-mode=rewrite" in message
    assert "kkkk" not in message


def test_an_unknown_record_mode_names_the_value_the_modes_and_the_cassette(tmp_path: Path) -> None:
    """LedgerCassette refuses a record mode it does not know with llm-ledger's ConfigError (still a
    ValueError), naming the bad value, where it was given and every valid mode."""
    from llm_ledger import ConfigError

    path = tmp_path / "c.yaml"
    with pytest.raises(ConfigError) as raised:
        LedgerCassette(path, "replay", "t.py::t")
    assert isinstance(raised.value, ValueError)
    assert str(raised.value) == (
        f"LedgerCassette({str(path)!r}, mode='replay'): 'replay' is not a record mode; use one of "
        "none, once, new_episodes, all, rewrite"
    )
