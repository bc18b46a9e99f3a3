"""Section 4: a completion replayed from a cassette, against the same call through MockTransport.

Cassettes of 10, 100 and 1,000 interactions (distinct realistic requests, one answer each). Each
round times the same calls through the in-process ``httpx2.MockTransport`` and through the plugin's
cassette engine (``pytest_llm_ledger._cassette``: ``LedgerCassette`` + ``activate``, what the
plugin's fixture does for a test), loading the cassette afresh since each interaction plays once.
Plain vcrpy (its own YAML cassette, ``match_on`` method/host/path plus a JSON body matcher) runs
the same requests; it scans the cassette for every request, so at large sizes only an evenly spread
sample of the requests is replayed per round.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

import yaml

from pytest_llm_ledger import _format
from pytest_llm_ledger._cassette import LedgerCassette, activate

from . import _payloads
from ._table import Table, verdict
from .calls import client

URL = "https://api.openai.com/v1/chat/completions"
TARGET_RATIO = 2.0


def _request_body(i: int) -> dict[str, Any]:
    return _payloads.chat_kwargs(i)


def write_ledger_cassette(path: Path, n: int) -> None:
    completion = _payloads.completion()
    interactions = [
        _format.interaction_to_yaml(
            "POST", URL, {"content-type": "application/json"}, ("json", _request_body(i)),
            200, {"content-type": "application/json"}, ("json", completion),
        )
        for i in range(n)
    ]  # fmt: skip
    _format.write_atomic(path, _format.dump_cassette(interactions, "llm-ledger bench cassette"))


def write_vcr_cassette(path: Path, n: int) -> None:
    body = _payloads.COMPLETION_BYTES.decode()
    interactions = [
        {
            "request": {
                "body": json.dumps(_request_body(i)),
                "headers": {"content-type": ["application/json"]},
                "method": "POST",
                "uri": URL,
            },
            "response": {
                "status": {"code": 200, "message": "OK"},
                "headers": {"content-type": ["application/json"]},
                "body": {"string": body},
            },
        }
        for i in range(n)
    ]
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    path.write_text(yaml.dump({"interactions": interactions, "version": 1}, Dumper=dumper))


def _json_body(r1: Any, r2: Any) -> None:
    assert json.loads(r1.body or b"null") == json.loads(r2.body or b"null")


def _time(fn: Callable[[], None]) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


@dataclass
class _Size:
    """Per-round figures of one cassette size (seconds)."""

    mock: list[float] = field(default_factory=list)
    ours: list[float] = field(default_factory=list)
    ours_load: list[float] = field(default_factory=list)
    vcr: list[float] = field(default_factory=list)
    vcr_load: list[float] = field(default_factory=list)
    vcr_mock: list[float] = field(default_factory=list)


def _calls(create: Callable[..., Any], bodies: list[dict[str, Any]]) -> Callable[[], None]:
    def run() -> None:
        for body in bodies:
            create(**body)

    return run


def _measure_size(n: int, tmp: Path, rounds: int, vcr_sample: int, vcr_config: Any) -> _Size:
    ours, theirs = tmp / f"ledger-{n}.yaml", tmp / f"vcrpy-{n}.yaml"
    write_ledger_cassette(ours, n)
    write_vcr_cassette(theirs, n)
    bodies = [_request_body(i) for i in range(n)]
    sample = bodies[:: max(1, n // vcr_sample)]
    mock = client(_payloads.mock_transport()).chat.completions.create
    live = client().chat.completions.create  # default transport: the cassette answers before any connection
    fig = _Size()

    def mock_all() -> None:
        fig.mock.append(_time(_calls(mock, bodies)) / n)

    def replay_ours() -> None:
        start = time.process_time()
        cassette = LedgerCassette(ours, "none", "bench")
        fig.ours_load.append(time.process_time() - start)
        with activate(cassette):
            fig.ours.append(_time(_calls(live, bodies)) / n)

    def replay_vcr() -> None:
        fig.vcr_mock.append(_time(_calls(mock, sample)) / len(sample))
        start = time.process_time()
        with vcr_config.use_cassette(str(theirs)) as cassette:
            fig.vcr_load.append(time.process_time() - start)
            assert len(cassette) == n
            fig.vcr.append(_time(_calls(live, sample)) / len(sample))

    steps = [mock_all, replay_ours, replay_vcr]
    for index in range(rounds):
        for step in steps if index % 2 == 0 else steps[::-1]:
            step()
    return fig


def measure(sizes: list[int], rounds: int, vcr_sample: int) -> tuple[Table, dict[str, float]]:
    import vcr

    table = Table(
        "Replay: CPU µs per replayed completion (median of rounds) and cassette load time",
        ["interactions", "MockTransport µs/call", "llm-ledger replay µs/call", "ratio", "load ms",
         "plain vcrpy µs/call", "vcrpy ratio", "vcrpy load ms"],
    )  # fmt: skip
    headline: dict[str, float] = {}
    tmp = Path(tempfile.mkdtemp(prefix="llm-ledger-bench-replay-"))
    vcr_config = vcr.VCR(record_mode="none", match_on=["method", "host", "path", "json_body"])
    vcr_config.register_matcher("json_body", _json_body)
    worst = 0.0
    try:
        for n in sizes:
            fig = _measure_size(n, tmp, rounds, vcr_sample, vcr_config)
            m, o, v = median(fig.mock), median(fig.ours), median(fig.vcr)
            ratio, vcr_ratio = o / m, v / median(fig.vcr_mock)
            worst = max(worst, ratio)
            headline[f"replay_ratio_{n}"] = ratio
            headline[f"replay_load_ms_{n}"] = median(fig.ours_load) * 1e3
            headline[f"vcrpy_ratio_{n}"] = vcr_ratio
            headline[f"vcrpy_load_ms_{n}"] = median(fig.vcr_load) * 1e3
            table.add(n, m * 1e6, o * 1e6, f"{ratio:.2f}", median(fig.ours_load) * 1e3, v * 1e6,
                      f"{vcr_ratio:.1f}", median(fig.vcr_load) * 1e3)  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    table.notes += [
        f"target: replay ≤ {TARGET_RATIO:.0f}x a MockTransport call at every size: worst {worst:.2f}x, "
        f"{verdict(worst <= TARGET_RATIO)}",
        "the bare SDK client in both (no ledger), so the figures are the replay machinery's own cost; "
        "load = parsing the YAML and indexing it (the plugin does this once per test)",
        f"plain vcrpy replays at most {vcr_sample} requests spread over the cassette per round (each of its "
        "requests scans the interactions); its ratio is to MockTransport calls of the same sample",
    ]
    return table, headline
