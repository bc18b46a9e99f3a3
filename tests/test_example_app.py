"""The example application end to end, replayed from cassettes by the pytest plugin.

Tests marked ``llm`` replay ``cassettes/tests/test_example_app/<test>.yaml``; re-record them from the
loopback fake server (no key, no network) with
``pytest tests/test_example_app.py --llm-record-mode=rewrite``.
"""

from __future__ import annotations

import gc
import io
import json
import os
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_asyncio

from examples.lens_app import cli
from examples.lens_app.app import run_lenses
from examples.lens_app.lenses import LENSES
from examples.lens_app.services import RunnerService, artifact_usage
from examples.lens_app.sources import Source, load_sources
from examples.lens_app.store import Store
from llm_ledger import instrument
from llm_ledger.report import render, summarise
from llm_ledger.testing import FakeOpenAI
from pytest_llm_ledger.plugin import LedgerRecords
from tests.conftest import FAKE_KEY

ROOT = Path(__file__).resolve().parents[1]
# what the fake server answers: 60 words of lorem ipsum, about as long as a real summary
RECORDING_HEADERS = {"x-fake-completion-words": "60"}


def _client(server: FakeOpenAI, **headers: str) -> openai.AsyncOpenAI:
    raw = openai.AsyncOpenAI(
        api_key=FAKE_KEY,
        base_url=server.base_url,
        max_retries=0,
        default_headers={**RECORDING_HEADERS, **headers},
    )
    return instrument(raw)


@pytest_asyncio.fixture
async def client(fake_openai: FakeOpenAI) -> AsyncIterator[openai.AsyncOpenAI]:
    """The application's instrumented AsyncOpenAI client, pointed at the fake server (replayed in tests)."""
    async with _client(fake_openai) as instrumented:
        yield instrumented


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "app.sqlite3") as db:
        yield db


@pytest.fixture
def sources() -> dict[str, Source]:
    return {source.slug: source for source in load_sources()}


def only_lens(records: LedgerRecords, lens_key: str) -> dict[str, Any]:
    (record,) = records.lens(lens_key)
    return record


@pytest.mark.llm
@pytest.mark.asyncio
async def test_default_summary_lands_in_source_logs_and_artifacts(
    client: openai.AsyncOpenAI, store: Store, sources: dict[str, Source], llm_ledger: LedgerRecords
) -> None:
    """One call; its lens summary is stored on source_logs.extra_data and its usage on artifacts.usage."""
    source = sources["heat-pumps-cold-climates"]
    artifact = await RunnerService(client, store).run_lens(source, "default_summary")

    record = only_lens(llm_ledger, "default_summary")
    summary = record["summary"]
    assert summary["total_api_calls"] == 1
    assert summary["models_used"] == ["gpt-4o-mini"]
    assert summary["prompt_tokens"] > 300  # the whole article went in
    assert summary["total_tokens"] == summary["prompt_tokens"] + summary["completion_tokens"]
    assert 0 < summary["total_cost_usd"] < 0.001
    assert summary["cost_complete"] is True
    assert record["context"]["source_id"] == source.id
    assert record["context"]["service"] == "RunnerService"

    (log,) = store.source_logs()
    assert (log.source_id, log.lens_key, log.level) == (source.id, "default_summary", "INFO")
    assert log.extra_data == {**summary, "lens_run_id": record["context"]["lens_run_id"]}
    assert store.artifacts() == [artifact]
    assert artifact.usage == artifact_usage(summary)
    assert artifact.usage["api_calls"] == 1
    assert artifact.content


@pytest.mark.llm
@pytest.mark.asyncio
async def test_deep_dive_fans_out_per_section_and_counts_every_call(
    client: openai.AsyncOpenAI, store: Store, sources: dict[str, Source], llm_ledger: LedgerRecords
) -> None:
    """deep_dive: one call per section via asyncio.gather plus a synthesis, all in one lens summary."""
    source = sources["bakery-food-waste"]
    artifact = await RunnerService(client, store).run_lens(source, "deep_dive")

    record = only_lens(llm_ledger, "deep_dive")
    summary = record["summary"]
    assert summary["total_api_calls"] == len(source.sections) + 1 == 5
    assert summary["models_used"] == ["gpt-4o", "gpt-4o-mini"]
    run_id = record["context"]["lens_run_id"]
    assert {c["context"]["lens_run_id"] for c in llm_ledger.calls} == {run_id}
    assert sum(c["usage"]["total_tokens"] for c in llm_ledger.calls) == summary["total_tokens"]
    assert sum(c["cost"]["total_cost_usd"] for c in llm_ledger.calls) == pytest.approx(
        summary["total_cost_usd"]
    )
    assert [c["request"]["model"] for c in llm_ledger.calls].count("gpt-4o") == 1  # the synthesis
    assert artifact.usage["api_calls"] == 5
    assert store.source_logs()[0].extra_data["total_api_calls"] == 5


@pytest.mark.llm
@pytest.mark.asyncio
async def test_image_lens_sends_the_chart_as_an_image_part(
    client: openai.AsyncOpenAI, store: Store, sources: dict[str, Source], llm_ledger: LedgerRecords
) -> None:
    """image_description sends a data: URL image part; the call record counts it without its bytes."""
    source = sources["bike-share-ridership"]
    await RunnerService(client, store).run_lens(source, "image_description")

    (call,) = llm_ledger.calls
    assert call["request"]["has_images"] is True
    assert call["request"]["image_count"] == 1
    assert call["request"]["model"] == "gpt-4o"
    assert "base64" not in str(call)
    summary = only_lens(llm_ledger, "image_description")["summary"]
    assert store.artifacts()[0].usage["total_cost_usd"] == summary["total_cost_usd"] > 0


@pytest.mark.llm
@pytest.mark.asyncio
async def test_generator_calls_count_toward_the_lens_with_their_own_service(
    client: openai.AsyncOpenAI, store: Store, sources: dict[str, Source], llm_ledger: LedgerRecords
) -> None:
    """headline: GeneratorService._call_llm drafts and refines; both calls say GeneratorService, one lens."""
    source = sources["heat-pumps-cold-climates"]
    await RunnerService(client, store).run_lens(source, "headline")

    assert [c["context"]["service"] for c in llm_ledger.calls] == ["GeneratorService", "GeneratorService"]
    assert {c["context"]["source_id"] for c in llm_ledger.calls} == {source.id}
    record = only_lens(llm_ledger, "headline")
    assert record["context"]["service"] == "RunnerService"
    assert record["summary"]["total_api_calls"] == 2
    assert record["summary"]["models_used"] == ["gpt-4.1-mini", "gpt-4o-mini"]


@pytest.mark.llm
@pytest.mark.asyncio
async def test_failed_lens_run_is_logged_with_its_summary(
    fake_openai: FakeOpenAI, store: Store, sources: dict[str, Source], llm_ledger: LedgerRecords
) -> None:
    """A call rejected by the API: the error propagates, source_logs gets an ERROR row, no artifact."""
    async with _client(fake_openai, **{"x-fake-status": "400"}) as failing:
        with pytest.raises(openai.BadRequestError):
            await RunnerService(failing, store).run_lens(sources["bakery-food-waste"], "key_points")

    (log,) = store.source_logs()
    assert log.level == "ERROR"
    assert log.message.startswith("BadRequestError:")
    assert log.extra_data["errors"] == 1
    assert log.extra_data["total_api_calls"] == 1
    assert log.extra_data["total_tokens"] == 0
    assert store.artifacts() == []
    assert llm_ledger.calls[0]["status"] == "error"


@pytest.mark.llm
@pytest.mark.asyncio
async def test_every_lens_over_every_source(
    client: openai.AsyncOpenAI, store: Store, llm_ledger: LedgerRecords
) -> None:
    """The demo's workload: 14 lens runs, each with a source log whose summary matches its calls."""
    results = await run_lenses(RunnerService(client, store), list(LENSES), load_sources(), {})

    assert [r.error for r in results] == [None] * 14
    logs = store.source_logs()
    assert len(logs) == len(store.artifacts()) == 14
    assert sum(log.extra_data["total_api_calls"] for log in logs) == llm_ledger.api_calls == 29
    for log in logs:
        calls = [c for c in llm_ledger.calls if c["context"]["lens_run_id"] == log.extra_data["lens_run_id"]]
        assert sum(c["usage"]["total_tokens"] for c in calls) == log.extra_data["total_tokens"]
        assert log.extra_data["cost_complete"] is True


def test_image_lens_refuses_a_source_without_images(store: Store, sources: dict[str, Source]) -> None:
    """A lens that needs images does not apply to an article without any (and makes no call)."""
    runner = RunnerService(openai.AsyncOpenAI(api_key=FAKE_KEY), store)
    assert runner.applies("image_description", sources["bakery-food-waste"]) is False
    assert runner.applies("image_description", sources["bike-share-ridership"]) is True


# -- the demo command ------------------------------------------------------------------------------


def test_demo_replays_the_committed_cassettes_offline(tmp_path: Path, fresh_config: None) -> None:
    """`make demo`: every lens replayed from cassettes/examples/lens_app; a table, the log, the database."""
    out = io.StringIO()
    status = cli.main(["--db", str(tmp_path / "demo.sqlite3"), "--log-dir", str(tmp_path / "logs")], out=out)
    text = out.getvalue()
    assert status == 0, text
    rows = [line for line in text.splitlines() if line.split()[:1] and line.split()[0] in LENSES]
    assert len(rows) == 14
    assert re.search(r"^total\s+14 lens runs\s+29\s+[\d,]+\s+\$0\.\d{6}\s*$", text, re.MULTILINE), text
    # the total cost reads as `llm-ledger report` gives it for the log
    (cost,) = re.findall(r"^total\s.*\s(\$\S+)\s*$", text, re.MULTILINE)
    report = render(summarise([str(tmp_path / "logs")])).splitlines()
    assert cost in next(line for line in report if line.startswith("total")).split()
    log = (tmp_path / "logs" / "llm_calls.jsonl").read_text().splitlines()
    events = [json.loads(line)["event"] for line in log]
    assert events.count("llm_api_call") == 29
    assert events.count("lens_summary") == 14
    with Store(tmp_path / "demo.sqlite3") as db:
        assert len(db.source_logs()) == 14
        assert all(log.extra_data["total_cost_usd"] > 0 for log in db.source_logs())


def test_record_then_replay_from_a_local_server(
    tmp_path: Path, fresh_config: None, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--record --base-url writes a clean cassette per lens; replaying it gives the same numbers offline."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    common = ["--lens", "headline", "--db", str(tmp_path / "db.sqlite3"), "--log-dir", str(tmp_path / "logs")]
    common += ["--cassette-dir", str(tmp_path / "cassettes")]
    recorded = io.StringIO()
    args = ["--record", "--base-url", fake_openai.base_url, "--header", "x-fake-completion-words: 30"]
    assert cli.main([*args, *common], out=recorded) == 0, recorded.getvalue()
    assert len(fake_openai.requests) == 6
    cassette = (tmp_path / "cassettes" / "headline.yaml").read_text()
    assert "re-record: python -m examples.lens_app --record --lens headline" in cassette
    assert not re.search(
        r"authorization|set-cookie|openai-organization|openai-project|x-stainless|x-fake", cassette, re.I
    )
    replayed = io.StringIO()
    assert cli.main(common, out=replayed) == 0, replayed.getvalue()
    assert len(fake_openai.requests) == 6  # nothing reached the server

    def totals(text: str) -> str:
        return next(line for line in text.splitlines() if line.startswith("total "))

    assert totals(replayed.getvalue()) == totals(recorded.getvalue())


def test_live_mode_refuses_to_start_without_a_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--live without OPENAI_API_KEY exits 2 with what to set, before anything runs."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(SystemExit) as exc:
        cli.main(["--live"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--live calls the OpenAI API and needs OPENAI_API_KEY" in err
    assert "drop --live to replay the committed cassettes offline" in err


def test_record_mode_needs_a_key_or_a_local_server(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--record without OPENAI_API_KEY or --base-url exits 2 and shows how to record from the fake server."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(SystemExit):
        cli.main(["--record"])
    assert "llm-ledger fake-server --port 8123" in capsys.readouterr().err


def test_a_base_url_without_a_scheme_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """--base-url localhost:8123 (no http://) exits 2 with an example, rather than every call failing."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["--record", "--base-url", "localhost:8123"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--base-url 'localhost:8123' is not an http(s) URL; e.g. http://127.0.0.1:8123/v1" in err


def test_recording_from_a_server_that_is_not_up_says_so(
    tmp_path: Path, fresh_config: None, monkeypatch: pytest.MonkeyPatch, refused_port: int
) -> None:
    """--record with no server at --base-url (fake-server not started): each failure names the cause and
    the URL, not the SDK's bare "Connection error."; no cassette is written."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    base_url = f"http://127.0.0.1:{refused_port}/v1"
    out = io.StringIO()
    args = ["--record", "--base-url", base_url, "--lens", "headline", "--source", "bakery-food-waste"]
    args += ["--db", str(tmp_path / "db.sqlite3"), "--log-dir", str(tmp_path / "logs")]
    assert cli.main([*args, "--cassette-dir", str(tmp_path / "cassettes")], out=out) == 1
    assert (
        f"Connection error. (ConnectError: All connection attempts failed): is {base_url} up?"
        in out.getvalue()
    )
    assert not (tmp_path / "cassettes" / "headline.yaml").exists()


def test_committed_cassettes_hold_no_credentials() -> None:
    """No key, auth header, cookie, organisation/project id or x-stainless header in the app's cassettes."""
    forbidden = re.compile(
        r"authorization|api-key|sk-[A-Za-z0-9_-]{16,}|set-cookie|openai-organization|openai-project|x-stainless",
        re.IGNORECASE,
    )
    files = [
        *(ROOT / "cassettes" / "examples" / "lens_app").glob("*.yaml"),
        *(ROOT / "cassettes" / "tests" / "test_example_app").glob("*.yaml"),
    ]
    assert len(files) >= 5
    for path in files:
        assert not forbidden.search(path.read_text()), path


def test_costs_by_user_and_by_source_from_source_logs_match_the_log(
    tmp_path: Path, fresh_config: None
) -> None:
    """--user tags the runs; --costs sums source_logs as `llm-ledger report` sums the log, to the digit."""
    common = ["--db", str(tmp_path / "app.sqlite3"), "--log-dir", str(tmp_path / "logs")]
    assert cli.main([*common, "--user", "alice"], out=io.StringIO()) == 0
    assert cli.main([*common, "--user", "bob", "--lens", "headline"], out=io.StringIO()) == 0

    with Store(tmp_path / "app.sqlite3") as store:
        for by in ("user_id", "source_id", "lens"):
            from_db = store.costs(by)
            from_log = summarise(tmp_path / "logs", by=by)
            figures = [(r.key, r.lens_runs, r.calls, r.total_tokens, r.cost_usd) for r in from_db.rows]
            assert figures == [
                (r.key, r.lens_runs, r.calls, r.total_tokens, r.cost_usd) for r in from_log.rows
            ]
        by_user = {row.key["user_id"]: row for row in store.costs("user_id").rows}
    assert (by_user["alice"].lens_runs, by_user["alice"].calls) == (14, 29)
    assert (by_user["bob"].lens_runs, by_user["bob"].calls) == (3, 6)  # headline over the three sources

    out = io.StringIO()
    assert cli.main([*common, "--costs", "user_id"], out=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].split()[:3] == ["user_id", "lens", "runs"]
    assert [line.split()[:3] for line in lines[2:4]] == [["alice", "14", "29"], ["bob", "3", "6"]]
    assert "35 calls, 17 lens runs" in out.getvalue()


def test_costs_of_a_missing_database_or_a_bad_dimension_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--costs before any run, or with an empty dimension name: exit 2 saying what to do."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["--db", str(tmp_path / "none.sqlite3"), "--costs", "user_id"])
    assert exc.value.code == 2
    assert "no database at" in capsys.readouterr().err
    Store(tmp_path / "app.sqlite3").close()
    with pytest.raises(SystemExit):
        cli.main(["--db", str(tmp_path / "app.sqlite3"), "--costs", "user_id,"])
    assert "--costs: by: 'user_id,' has an empty dimension name" in capsys.readouterr().err


@pytest.mark.parametrize("costs", [False, True], ids=["run", "costs"])
def test_a_db_that_is_no_sqlite_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fresh_config: None, costs: bool
) -> None:
    """--db naming a directory or another kind of file: exit 2 saying so, no traceback, nothing run."""
    (tmp_path / "notes.txt").write_text("not a database\n" * 20)
    for db, why in ((tmp_path, "unable to open database file"), (tmp_path / "notes.txt", "not a database")):
        args = ["--db", str(db), "--log-dir", str(tmp_path / "logs"), *(["--costs", "lens"] if costs else [])]
        with pytest.raises(SystemExit) as exc:
            cli.main(args, out=io.StringIO())
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"--db {db}: " in err and why in err and "give the path of a SQLite file" in err, err
    assert not (tmp_path / "logs").exists()
    del exc
    gc.collect()  # a connection left open warns when collected (from Python 3.13): none is


def _run_as_printed(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """A command the demo printed, run as a user pastes it into a new terminal: no venv on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "OPENAI_API_KEY")}
    env["PATH"] = os.defpath
    return subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def test_the_commands_the_demo_prints_run_as_printed(
    tmp_path: Path,
    fresh_config: None,
    fake_openai: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The re-record command of a missing cassette and the --costs command the demo prints work when
    pasted: they name the Python that ran the demo (`python` may be missing, or lack the packages)."""
    monkeypatch.chdir(ROOT)
    cassettes = tmp_path / "cassettes"
    common = ["--lens", "headline", "--db", str(tmp_path / "db.sqlite3"), "--log-dir", str(tmp_path / "logs")]
    common += ["--cassette-dir", str(cassettes)]
    with pytest.raises(SystemExit):
        cli.main(common)
    error = capsys.readouterr().err.strip().splitlines()[-1]
    record = error.split(" with: ")[1].replace("[--base-url URL]", f"--base-url {fake_openai.base_url}")
    recorded = _run_as_printed(f"{record} --db {tmp_path / 'rec.sqlite3'} --log-dir {tmp_path}/logs", ROOT)
    assert recorded.returncode == 0, recorded.stdout + recorded.stderr
    assert (cassettes / "headline.yaml").is_file()

    out = io.StringIO()
    assert cli.main(common, out=out) == 0, out.getvalue()
    costs = out.getvalue().split("cost per source from the database: ")[1].splitlines()[0]
    summed = _run_as_printed(costs, ROOT)
    assert summed.returncode == 0, summed.stdout + summed.stderr
    assert "6 calls, 3 lens runs" in summed.stdout  # headline over the three sources


def test_a_database_from_before_users_gains_the_column(tmp_path: Path) -> None:
    """A demo database made before source_logs had user_id opens, keeps its rows, and sums them."""
    import sqlite3

    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE source_logs (id INTEGER PRIMARY KEY AUTOINCREMENT, source_id TEXT NOT NULL, "
            "lens_key TEXT NOT NULL, level TEXT NOT NULL, message TEXT NOT NULL, "
            "extra_data TEXT NOT NULL DEFAULT '{}', created_at TEXT NOT NULL)"
        )
        summary = {"total_api_calls": 2, "total_tokens": 30, "total_cost_usd": 0.25, "avg_duration_ms": 5.0}
        db.execute(
            "INSERT INTO source_logs (source_id, lens_key, level, message, extra_data, created_at) "
            "VALUES ('s1', 'headline', 'INFO', 'done', ?, '2025-11-24T16:00:00.000Z')",
            (json.dumps(summary),),
        )
    db.close()  # the with block commits, and leaves closing to us
    with Store(path) as store:
        (log,) = store.source_logs()
        assert (log.source_id, log.user_id) == ("s1", None)
        (row,) = store.costs("user_id").rows
    assert (row.key, row.calls, row.total_tokens, str(row.cost_usd)) == ({"user_id": None}, 2, 30, "0.25")
