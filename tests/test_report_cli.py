"""``llm-ledger report``: one streaming pass over a JSONL log, grouped sums, robust to bad lines."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_ledger import _report
from llm_ledger._cli import main
from llm_ledger._jsonl import LedgerJsonFormatter
from llm_ledger._records import USD_UNIT_DIGITS, LensTotals, call_record, lens_record

_FORMATTER = LedgerJsonFormatter()
EPOCH = 1_764_000_000.0  # 2025-11-24T16:00:00Z


def call(
    *,
    lens: Any = "default_summary",
    source: Any = "src-1",
    service: Any = "RunnerService",
    model: str | None = "gpt-4o-mini",
    status: str = "ok",
    prompt: int | None = 100,
    completion: int | None = 20,
    cost: str | None = "0.0001",
    duration_s: float = 0.5,
    epoch: float = EPOCH,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A call record built by the ledger's own record builder."""
    failed = status != "ok"
    total = None if prompt is None or completion is None else prompt + completion
    record = call_record(
        status=status,  # type: ignore[arg-type]
        operation="chat",
        context={"lens_key": lens, "source_id": source, "service": service, **(extra or {})},
        request={
            "model": model,
            "temperature": 0.2,
            "max_tokens": None,
            "messages_count": 2,
            "system_prompt_length": 10,
            "user_prompt_length": 100,
            "has_images": False,
            "image_count": 0,
            "stream": False,
            "tools_count": 0,
        },
        response={
            "model": None if failed else model,
            "id": None if failed else "chatcmpl-1",
            "request_id": None,
            "content_length": None if failed else 80,
            "finish_reason": None if failed else "stop",
            "tool_calls_count": None if failed else 0,
        },
        usage={
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": total,
            "cached_tokens": 0,
            "reasoning_tokens": 0,
        },
        start_epoch=epoch,
        duration_s=duration_s,
        ttft_s=None,
        prompt_cost_units=None if cost is None else _units(cost) // 2,
        completion_cost_units=None if cost is None else _units(cost) - _units(cost) // 2,
        retries=0,
        error={"type": "RateLimitError", "status_code": 429, "message": "HTTP 429"} if failed else None,
    )
    return dict(record)


def _units(usd: str) -> int:
    """USD as the ledger's integer units of 10**-24 USD."""
    return int(Decimal(usd).scaleb(USD_UNIT_DIGITS))


def lens_run(calls: list[dict[str, Any]], *, epoch: float = EPOCH) -> dict[str, Any]:
    """The lens_summary record of ``calls`` (their context is the lens context)."""
    totals = LensTotals()
    for record in calls:
        cost = record["cost"]["total_cost_usd"]
        totals.add(record, None if cost is None else _units(str(cost)))  # type: ignore[arg-type]
    return dict(lens_record(context=calls[0]["context"], summary=totals.summary(1.0), end_epoch=epoch))


def line(record: dict[str, Any]) -> str:
    """The JSONL line the ledger's writer produces for ``record``."""
    log = logging.LogRecord("llm_monitor", logging.INFO, __file__, 0, record, None, None)
    return _FORMATTER.format(log)


def write(path: Path, records: list[dict[str, Any]], *, extra_lines: tuple[str, ...] = ()) -> Path:
    path.write_text("".join(line(r) + "\n" for r in records) + "".join(x + "\n" for x in extra_lines))
    return path


def report_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["report", *args, "--format", "json"]) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def rows_by_key(report: dict[str, Any]) -> dict[Any, dict[str, Any]]:
    return {row["key"]: row for row in report["rows"]}


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    summary_calls = [call(), call(prompt=300, completion=50, cost="0.0003", duration_s=1.5)]
    deep_calls = [
        call(lens="deep_dive", model="gpt-4o", prompt=1000, completion=200, cost="0.0045", source="src-2"),
        call(lens="deep_dive", model="gpt-4o", status="error", prompt=None, completion=None, cost=None),
    ]
    loose = call(lens=None, source=None, service="GeneratorService", epoch=EPOCH + 86_400)
    records = [*summary_calls, lens_run(summary_calls), *deep_calls, lens_run(deep_calls), loose]
    return write(tmp_path / "llm_calls.jsonl", records)


def test_groups_by_lens_with_lens_runs_from_summaries(
    capsys: pytest.CaptureFixture[str], sample: Path
) -> None:
    """By lens: calls, errors, token sums, cost and average duration per lens_key; runs from lens_summary."""
    report = report_json(capsys, str(sample))
    rows = rows_by_key(report)
    assert set(rows) == {"default_summary", "deep_dive", None}
    summary = rows["default_summary"]
    assert summary["calls"] == 2
    assert summary["lens_runs"] == 1
    assert summary["errors"] == 0
    assert (summary["prompt_tokens"], summary["completion_tokens"], summary["total_tokens"]) == (400, 70, 470)
    assert summary["cost_usd"] == pytest.approx(0.0004)
    assert summary["avg_duration_ms"] == pytest.approx(1000.0)
    deep = rows["deep_dive"]
    assert (deep["calls"], deep["errors"], deep["total_tokens"]) == (2, 1, 1200)
    assert deep["cost_complete"] is True  # a failed call without usage is not "unpriced"
    assert report["total"]["calls"] == 5
    assert report["lens_runs"] == 2
    assert report["lines"] == 7


@pytest.mark.parametrize(
    ("by", "expected_calls"),
    [
        ("model", {"gpt-4o-mini": 3, "gpt-4o": 2}),
        ("source_id", {"src-1": 3, "src-2": 1, None: 1}),
        ("service", {"RunnerService": 4, "GeneratorService": 1}),
        ("day", {"2025-11-24": 4, "2025-11-25": 1}),
    ],
)
def test_groups_by_other_fields(
    capsys: pytest.CaptureFixture[str], sample: Path, by: str, expected_calls: dict[Any, int]
) -> None:
    """--by model|source_id|service|day groups the same calls by that field and keeps the totals."""
    report = report_json(capsys, str(sample), "--by", by)
    assert {key: row["calls"] for key, row in rows_by_key(report).items()} == expected_calls
    assert report["total"]["total_tokens"] == 470 + 1200 + 120


def test_lens_runs_by_model_count_once_per_model_used(
    capsys: pytest.CaptureFixture[str], sample: Path
) -> None:
    """By model, a lens run counts under every model it used."""
    rows = rows_by_key(report_json(capsys, str(sample), "--by", "model"))
    assert rows["gpt-4o-mini"]["lens_runs"] == 1
    assert rows["gpt-4o"]["lens_runs"] == 1


def test_malformed_lines_are_counted_and_the_rest_still_counts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Broken, truncated and non-object lines are counted with their numbers; other events are skipped."""
    good = line(call())
    path = write(
        tmp_path / "log.jsonl",
        [call()],
        extra_lines=("{not json", good[: len(good) // 2], "[1, 2]", "", '{"event": "other", "msg": "hi"}'),
    )
    with path.open("a") as file:
        file.write(good)  # a last line without a newline still counts
    assert main(["report", str(path), "--format", "json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["total"]["calls"] == 2
    assert report["malformed_lines"] == 3
    assert report["first_malformed_lines"] == [2, 3, 4]
    assert report["skipped_lines"] == 1
    assert "skipped 3 malformed line(s) (line 2, 3, 4)" in captured.err
    assert "Traceback" not in captured.err


def test_empty_file_gives_an_empty_table(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """An empty log is not an error: no rows, zero totals."""
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    report = report_json(capsys, str(path))
    assert report["rows"] == []
    assert report["total"]["calls"] == 0
    assert main(["report", str(path)]) == 0
    assert "0 lines, 0 calls" in capsys.readouterr().out


def test_missing_file_is_a_clear_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A missing file exits 2 with the path and where the ledger writes its log; no traceback."""
    missing = tmp_path / "nope.jsonl"
    assert main(["report", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"llm-ledger report: error: {str(missing)!r}: no such file" in err
    assert "llm_calls.jsonl" in err


def test_directory_is_a_clear_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A directory instead of a file exits 2 and says to pass the file inside it."""
    assert main(["report", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_json_output_shape(capsys: pytest.CaptureFixture[str], sample: Path) -> None:
    """--format json has the file, the grouping, line counts, one object per row and the total."""
    report = report_json(capsys, str(sample), "--by", "service")
    assert set(report) == {
        "file",
        "group_by",
        "lines",
        "calls",
        "lens_runs",
        "malformed_lines",
        "first_malformed_lines",
        "skipped_lines",
        "rows",
        "total",
    }
    assert report["group_by"] == "service"
    assert set(report["rows"][0]) == {
        "key",
        "lens_runs",
        "calls",
        "errors",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cost_usd",
        "cost_complete",
        "avg_duration_ms",
    }
    assert report["rows"][0]["key"] == "RunnerService"  # the costliest first


def test_text_and_markdown_tables(capsys: pytest.CaptureFixture[str], sample: Path) -> None:
    """The text table shows sub-cent costs and a total row; Markdown is a pipe table with a bold total."""
    assert main(["report", str(sample)]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].split() == [
        "lens", "lens", "runs", "calls", "errors", "prompt", "tokens", "completion", "tokens",
        "total", "tokens", "cost", "(USD)", "avg", "ms",
    ]  # fmt: skip
    assert "$0.000400" in text
    assert "(none)" in text
    assert any(row.startswith("total ") for row in text.splitlines())
    assert main(["report", str(sample), "--format", "markdown"]) == 0
    markdown = capsys.readouterr().out
    assert markdown.startswith("| lens | lens runs | calls |")
    assert "| **total** |" in markdown


def test_unpriced_calls_mark_the_cost_as_a_lower_bound(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A successful call without a cost makes cost_complete false and the text cost end with '+'."""
    path = write(tmp_path / "log.jsonl", [call(model="my-finetune", cost=None), call()])
    rows = rows_by_key(report_json(capsys, str(path), "--by", "model"))
    assert rows["my-finetune"]["cost_complete"] is False
    assert rows["gpt-4o-mini"]["cost_complete"] is True
    assert main(["report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "$0.000100+" in out
    assert "1 successful calls have no price" in out


def test_progress_goes_to_stderr_only_when_asked(
    capsys: pytest.CaptureFixture[str], sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--progress prints percent of bytes to stderr; without it (stderr not a TTY) nothing is printed."""
    monkeypatch.setattr(_report, "PROGRESS_INTERVAL_S", 0.0)
    monkeypatch.setattr(_report, "CHUNK_BYTES", 256)
    assert main(["report", str(sample), "--progress"]) == 0
    assert "% of" in capsys.readouterr().err
    assert main(["report", str(sample)]) == 0
    assert capsys.readouterr().err == ""


def test_lines_split_across_chunks_count_once(
    capsys: pytest.CaptureFixture[str], sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading in chunks smaller than a line gives the same report as reading it whole."""
    whole = report_json(capsys, str(sample))
    monkeypatch.setattr(_report, "CHUNK_BYTES", 97)
    assert report_json(capsys, str(sample))["rows"] == whole["rows"]


def test_foreign_key_order_takes_the_slow_path_with_the_same_result(tmp_path: Path) -> None:
    """Records re-serialised with sorted keys (no fast path) give the same rows as the ledger's own lines."""
    calls = [call(), call(lens="x", model="gpt-4o", status="error", prompt=None, completion=None, cost=None)]
    records = [*calls, lens_run(calls)]
    fast = write(tmp_path / "fast.jsonl", records)
    slow = tmp_path / "slow.jsonl"
    slow.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    for by in _report.GROUPS:
        a, b = _report.summarise(fast, by), _report.summarise(slow, by)
        assert [r.to_json() for r in a.sorted_rows()] == [r.to_json() for r in b.sorted_rows()], by


_key_values = st.one_of(
    st.none(),
    st.sampled_from(["default_summary", "deep_dive", 'quote"d', "ünï}{code", 'a, "b": {']),
    st.integers(-5, 5),
    st.dictionaries(st.sampled_from(["request", "usage", "x"]), st.integers(0, 3), max_size=2),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    specs=st.lists(
        st.tuples(
            _key_values,
            _key_values,
            st.sampled_from(["RunnerService", None, 'G"en']),
            st.sampled_from(["gpt-4o-mini", "gpt-4o", None]),
            st.sampled_from(["ok", "error", "interrupted"]),
            st.integers(0, 5000),
            st.sampled_from(["0.0001", None, "0"]),
            st.booleans(),
        ),
        max_size=12,
    )
)
def test_fast_path_agrees_with_full_json_parsing(tmp_path: Path, specs: list[tuple[Any, ...]]) -> None:
    """Whatever the context values (quotes, braces, nested objects), fast path == full JSON parsing."""
    records = []
    for lens, source, service, model, status, prompt, cost, with_extra in specs:
        ok = status == "ok"
        records.append(
            call(
                lens=lens,
                source=source,
                service=service,
                model=model,
                status=status,
                prompt=prompt if ok else None,
                completion=prompt // 7 if ok else None,
                cost=cost if ok else None,
                extra={"lens_run_id": "r", "note": {"a": [1, "}"]}} if with_extra else None,
            )
        )
    if records:
        records.append(lens_run(records))
    fast = write(tmp_path / "fast.jsonl", records)
    slow = tmp_path / "slow.jsonl"
    slow.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    for by in _report.GROUPS:
        a, b = _report.summarise(fast, by), _report.summarise(slow, by)
        assert [r.to_json() for r in a.sorted_rows()] == [r.to_json() for r in b.sorted_rows()], by
        assert (a.lines, a.malformed, a.skipped) == (b.lines, b.malformed, b.skipped)


def test_ledger_written_lines_take_the_fast_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Successful calls and lens summaries as the JSONL writer formats them are never parsed as JSON."""
    parsed: list[bytes] = []

    def loads(raw: bytes) -> Any:
        parsed.append(raw)
        return json.loads(raw)

    monkeypatch.setattr(_report, "_loads", loads)
    calls = [call(), call(lens="deep_dive", model="gpt-4o", extra={"lens_run_id": "r1", "user": 7})]
    records = [*calls, lens_run(calls), call(source=42, service=None)]
    path = write(tmp_path / "log.jsonl", records)
    for by in _report.GROUPS:
        report = _report.summarise(path, by)
        assert report.total().calls == 3
        # the numbers of a chunk's calls are parsed in bulk: one JSON array per column and group
        assert all(raw.startswith(b"[") for raw in parsed), by
        parsed.clear()


def test_parallel_jobs_give_the_same_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--jobs splits a large file at line boundaries; totals and absolute malformed line numbers match."""
    calls = [call(lens=f"lens-{i % 3}", prompt=100 + i, epoch=EPOCH + i * 3600) for i in range(60)]
    path = write(tmp_path / "log.jsonl", [*calls, lens_run(calls[:5])], extra_lines=("{oops",))
    with path.open("a") as file:
        file.write("".join(line(c) + "\n" for c in calls[:7]) + "not json\n" + line(calls[0]) + "\n")
    monkeypatch.setattr(_report, "PARALLEL_MIN_BYTES", 0)
    single = _report.summarise(path, "day")
    parallel = _report.summarise(path, "day", jobs=3)
    assert parallel.to_json() == single.to_json()
    assert single.malformed_lines == [62, 70]


def test_calls_read_in_batches_agree_with_full_json_parsing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Numbers converted a batch at a time across chunks and groups, with odd calls among them
    (another writer's usage key order, a fractional token count), give full JSON parsing's totals."""
    monkeypatch.setattr(_report, "CHUNK_BYTES", 3000)
    monkeypatch.setattr(_report, "FLUSH_LINES", 7)
    monkeypatch.setattr(_report, "_TAILS_PER_TEXT", 3)
    calls = [
        call(
            lens=f"lens-{i % 4}",
            source=i % 5,
            service=("RunnerService", "GeneratorService")[i % 2],
            model=("gpt-4o", "gpt-4o-mini", "o3-mini")[i % 3],
            status="error" if i % 9 == 0 else "ok",
            prompt=None if i % 9 == 0 else 100 + i,
            completion=None if i % 9 == 0 else 20 + i,
            cost=None if i % 9 == 0 or i % 6 == 0 else f"0.000{i % 7 + 1}",
            duration_s=0.25 * (i % 5 + 1),
            epoch=EPOCH + i * 7200,
        )
        for i in range(45)
    ]
    calls[11]["usage"] = {
        **{"prompt_tokens": 7, "total_tokens": 9, "completion_tokens": 2},
        **{"cached_tokens": 0, "reasoning_tokens": 0},
    }
    calls[23]["usage"] = {**calls[23]["usage"], "prompt_tokens": 1.5}
    records = [*calls[:20], lens_run(calls[:20]), *calls[20:], lens_run(calls[20:])]
    fast = write(tmp_path / "fast.jsonl", records)
    slow = tmp_path / "slow.jsonl"
    slow.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    for by in _report.GROUPS:
        a, b = _report.summarise(fast, by), _report.summarise(slow, by)
        assert a.to_json()["rows"] == b.to_json()["rows"], by
        assert (a.lines, a.total().calls, a.total().errors, a.malformed) == (47, 45, 5, 0)


def test_rows_of_equal_cost_sort_by_key_whatever_order_their_costs_were_added_in() -> None:
    """0.1 + 0.2 and 0.15 + 0.15 are the same cost as shown: the order does not hang on float rounding."""
    rows = {
        b'"b"': _report.Row("b", calls=2, cost_usd=0.1 + 0.2),
        b'"a"': _report.Row("a", calls=2, cost_usd=0.15 + 0.15),
    }
    assert [row.key for row in _report.Report("log", "lens", rows=rows).sorted_rows()] == ["a", "b"]


def test_lone_surrogates_in_context_values_are_counted_not_malformed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A context value with a lone surrogate, as the ledger writes it or as orjson spells it, is a call."""
    written = call(lens="a\ud800b", source="s\udc00")  # the ledger's own writer: a JSON escape
    log = logging.LogRecord("llm_monitor", logging.INFO, __file__, 0, written, None, None)
    spelled = line(call(lens="LENS")).replace("LENS", "x\\ud800y")  # the fast path's spelling
    path = tmp_path / "log.jsonl"
    path.write_bytes(_FORMATTER.format_line(log) + (spelled + "\n").encode())
    for by in ("lens", "source_id"):
        report = report_json(capsys, str(path), "--by", by)
        assert report["malformed_lines"] == 0 and report["total"]["calls"] == 2
    assert set(rows_by_key(report_json(capsys, str(path)))) == {"a\ud800b", "x\ud800y"}
    assert main(["report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "a\\ud800b " in out and "x\\ud800y " in out


def test_report_output_is_strict_json(capsys: pytest.CaptureFixture[str], sample: Path) -> None:
    """--format json never writes NaN or Infinity, which strict JSON readers refuse."""
    assert main(["report", str(sample), "--format", "json"]) == 0

    def refuse(text: str) -> None:
        raise AssertionError(f"non-standard JSON constant {text}")

    json.loads(capsys.readouterr().out, parse_constant=refuse)


def test_devices_and_pipes_are_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """/dev/zero or a FIFO (which have no size to read up to) exit 2 with a clear message."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in ("/dev/zero", str(fifo)):
        assert main(["report", path]) == 2
        assert f"{path!r} is not a regular file; save the log to a file first" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """`llm-ledger --version` prints the installed version and exits 0."""
    with pytest.raises(SystemExit) as excinfo:
        main(["--version"])
    assert excinfo.value.code == 0
    assert capsys.readouterr().out == f"llm-ledger {importlib.metadata.version('llm-ledger')}\n"


def test_help_imports_no_subcommand() -> None:
    """`llm-ledger --help` lists every subcommand without importing any; running one imports only it."""
    code = (
        "import sys\nfrom llm_ledger._cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[-1] in ('_diff', '_report', '_scrub')))"
    )
    for argv, imported in ((["--help"], "[]"), (["diff", "--help"], "['llm_ledger._diff']")):
        done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True)
        assert done.stdout.splitlines()[-1] == imported, done.stdout
    assert all(name in done.stdout for name in ("--only-changed", "--fail-on-increase"))
    done = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True, check=True)
    assert all(f"    {name} " in done.stdout for name in ("diff", "report", "scrub"))
