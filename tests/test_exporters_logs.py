"""The JSONL file as a log shipper (Vector, Fluent Bit, Promtail, Filebeat) reads and indexes it.

Elasticsearch and OpenSearch map a field by the first value they see: a field that is ``0`` in one
line and ``0.7`` in the next is mapped as an integer, and every later fraction is cut (or the line is
refused when the types cannot be reconciled). So every field of every record keeps one JSON type.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

import llm_ledger
from llm_ledger import _jsonl
from llm_ledger.testing import FakeOpenAI
from tests.conftest import Sdk
from tests.exporter_helpers import workload

pytestmark = pytest.mark.sdk_independent

REPO = Path(__file__).resolve().parents[1]


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    return type(value).__name__


def _field_types(lines: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Dotted field path (per event) -> the JSON types of its non-null values; context is the caller's."""
    found: dict[str, set[str]] = defaultdict(set)

    def walk(path: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{path}.{key}", item)
        elif isinstance(value, list):
            for item in value:
                walk(f"{path}[]", item)
        elif value is not None:
            found[path].add(_json_type(value))

    for line in lines:
        walk(line["event"], {k: v for k, v in line.items() if k != "context"})
    return found


def test_every_field_keeps_one_json_type_for_an_index_mapping(
    fresh_config: None, fake_openai: FakeOpenAI, sdk: Sdk, tmp_path: Path
) -> None:
    """Across chat (temperature 0, 1 and 0.7, max_tokens), streams, responses, embeddings, failed and
    unpriced calls, lens runs and budget breaches (of tokens, cost and calls), each field of the file
    is always the same JSON type (or null)."""
    budgets = {"lenses": {"settings": {"max_total_tokens": 10, "max_cost_usd": 0.000001, "max_api_calls": 2}}}
    llm_ledger.configure(log_dir=tmp_path, budgets=budgets)
    monitor = llm_ledger.get_monitor()
    workload(monitor, fake_openai)
    client = sdk(monitor)
    hi: Any = [{"role": "user", "content": "hi"}]
    with llm_ledger.lens("settings"):
        for temperature in (0, 1, 0.7):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=hi, temperature=temperature, max_tokens=9
            )
        client.responses.create(model="gpt-4o-mini", input="hi", temperature=1, max_output_tokens=16)
    llm_ledger.flush()
    lines = [json.loads(line) for line in (tmp_path / "llm_calls.jsonl").read_text().splitlines()]
    temperatures = [c["request"]["temperature"] for c in lines if c["event"] == "llm_api_call"]
    assert {0, 1, 0.7} <= set(temperatures)
    limits = {b["budget"]["limit"] for b in lines if b["event"] == "budget_exceeded"}
    assert limits == {"max_total_tokens", "max_cost_usd", "max_api_calls"}
    mixed = {path: types for path, types in _field_types(lines).items() if len(types) > 1}
    assert not mixed, f"fields with more than one JSON type: {mixed}"


@pytest.fixture
def logrotate_binary() -> str:
    path = shutil.which("logrotate") or shutil.which("logrotate", path="/usr/sbin:/sbin")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but the logrotate binary is missing: .ci/run installs Debian's logrotate")
        pytest.skip("no logrotate binary (apt-get install logrotate): rotation by logrotate is not run")
    return path


def _documented_logrotate_config() -> str:
    """The logrotate stanza docs/MONITORING.md gives operators."""
    text = (REPO / "docs" / "MONITORING.md").read_text()
    after = text[text.index("Rotate externally with logrotate") :]
    return after.split("```\n", 2)[1]


def test_the_documented_logrotate_config_loses_no_line(
    logrotate_binary: str,
    fresh_config: None,
    sdk: Sdk,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real logrotate, run (forced) with docs/MONITORING.md's stanza again and again while a service
    keeps calling: every call is one whole line in the live file or a rotated (gzipped) one."""
    logs = tmp_path / "logs"
    config = tmp_path / "logrotate.conf"
    config.write_text(_documented_logrotate_config().replace("/var/log/app", str(logs)))
    # the writer thread's batches every 0.2 s, not every second: each rotation below waits for one
    monkeypatch.setattr(_jsonl, "_INTERVAL_S", 0.2)
    llm_ledger.configure(log_dir=logs)
    client = sdk(llm_ledger.get_monitor())  # the configured monitor, which llm_ledger.instrument() uses
    calls = 0
    stop = threading.Event()

    def service() -> None:  # a hundred calls a second at most: a busy service, not a busy loop
        nonlocal calls
        while not stop.wait(0.01):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            calls += 1

    live = logs / "llm_calls.jsonl"
    worker = threading.Thread(target=service)
    worker.start()
    try:
        for _ in range(4):
            # rotate once the service's own next batch (512 lines, or an interval's worth) reached the
            # new file: never an empty file, which logrotate's notifempty would skip
            deadline = time.monotonic() + 30
            while not (live.exists() and live.stat().st_size) and time.monotonic() < deadline:
                time.sleep(0.02)
            subprocess.run(
                [logrotate_binary, "--force", "--state", str(tmp_path / "state"), str(config)],
                check=True,
                capture_output=True,
                timeout=60,
            )
    finally:
        stop.set()
        worker.join()
    llm_ledger.flush()
    files = sorted(logs.iterdir())
    assert len(files) >= 4, files  # the live file, the newest rotated one (delaycompress), gzipped ones
    lines = []
    for path in files:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        lines += [json.loads(line) for line in data.splitlines()]
    assert len(lines) == calls > 0
    assert len({line["call_id"] for line in lines}) == calls


def test_copytruncate_rotation_is_reported_once_with_the_fix(
    logrotate_binary: str,
    fresh_config: None,
    sdk: Sdk,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The stanza with copytruncate, which the docs advise against (lines written between logrotate's
    copy and its truncation are lost, and nothing says so): the ledger notices that the file it writes
    shrank under it and says once on llm_ledger.internal what happened and which mode to use."""
    logs = tmp_path / "logs"
    config = tmp_path / "logrotate.conf"
    stanza = _documented_logrotate_config().replace("/var/log/app", str(logs))
    config.write_text(stanza.replace("notifempty", "notifempty\n    copytruncate"))
    llm_ledger.configure(log_dir=logs)
    client = sdk(llm_ledger.get_monitor())  # the configured monitor, which llm_ledger.instrument() uses
    hi: Any = [{"role": "user", "content": "hi"}]
    with caplog.at_level("WARNING", logger="llm_ledger.internal"):
        for _ in range(3):  # rotated twice, with calls before, between and after
            client.chat.completions.create(model="gpt-4o-mini", messages=hi)
            llm_ledger.flush()
            subprocess.run(
                [logrotate_binary, "--force", "--state", str(tmp_path / "state"), str(config)],
                check=True, capture_output=True, timeout=60,
            )  # fmt: skip
        client.chat.completions.create(model="gpt-4o-mini", messages=hi)
        llm_ledger.flush()
    said = [r.getMessage() for r in caplog.records if r.name == "llm_ledger.internal"]
    assert len(said) == 1, said
    assert "copytruncate" in said[0] and "create" in said[0] and str(logs / "llm_calls.jsonl") in said[0]
    assert len((logs / "llm_calls.jsonl").read_text().splitlines()) == 1  # the call after the rotation
