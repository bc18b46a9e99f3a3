"""``llm-ledger report``: one streaming pass over JSONL logs, grouped sums, robust to bad lines."""

from __future__ import annotations

import ctypes
import gzip
import importlib.metadata
import json
import logging
import os
import shlex
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from llm_ledger._cli import main
from tests.conftest import Sdk
from tests.report_helpers import EPOCH, FORMATTER, call, lens_run, line, logging_to, write

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK


def report_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["report", *args, "--format", "json"]) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def rows_by_key(report: dict[str, Any]) -> dict[Any, dict[str, Any]]:
    """Rows by the value of their one dimension (several: by the tuple of values)."""
    keys = {row_key: row for row in report["rows"] for row_key in [tuple(row["key"].values())]}
    return {k[0] if len(k) == 1 else k: row for k, row in keys.items()}


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
    assert report["by"] == ["lens"]


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
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """By model, a lens run counts under every model it used; the total counts it once."""
    calls = [call(), call(model="gpt-4o")]
    report = report_json(
        capsys, str(write(tmp_path / "log.jsonl", [*calls, lens_run(calls)])), "--by", "model"
    )
    rows = rows_by_key(report)
    assert rows["gpt-4o-mini"]["lens_runs"] == rows["gpt-4o"]["lens_runs"] == 1
    assert report["total"]["lens_runs"] == 1


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
    assert report["inputs"][0]["first_malformed_lines"] == [2, 3, 4]
    assert report["skipped_lines"] == 1
    assert f"{path}: skipped 3 malformed line(s) (line 2, 3, 4)" in captured.err
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


def test_directory_without_logs_is_a_clear_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A directory holding no log file exits 2 and says which names count as logs."""
    (tmp_path / "notes.txt").write_text("hello\n")
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{str(tmp_path)!r} holds no log file" in err and "llm_calls.jsonl.2.gz" in err


def test_json_output_shape(capsys: pytest.CaptureFixture[str], sample: Path) -> None:
    """--format json has the query, line counts, each input, one object per row and the total."""
    report = report_json(capsys, str(sample), "--by", "service")
    assert set(report) == {
        "by",
        "where",
        "since",
        "until",
        "tz",
        "lines",
        "calls",
        "lens_runs",
        "malformed_lines",
        "skipped_lines",
        "filtered_out",
        "rejected_records",
        "inputs",
        "rows",
        "total",
        "unmatched_where",
    }
    assert report["by"] == ["service"]
    assert report["inputs"] == [
        {
            "name": str(sample),
            "lines": 7,
            "records": 7,
            "malformed_lines": 0,
            "first_malformed_lines": [],
            "too_long_lines": 0,
            "skipped_lines": 0,
            "copied_lines": 0,
            "error": None,
        }
    ]
    assert set(report["rows"][0]) == {
        "key",
        "lens_runs",
        "calls",
        "errors",
        "prompt_tokens",
        "cached_tokens",
        "completion_tokens",
        "total_tokens",
        "cost_usd",
        "unpriced_calls",
        "cut_short_runs",
        "over_budget",
        "anomalies",
        "cost_complete",
        "avg_duration_ms",
    }
    assert report["rows"][0]["key"] == {"service": "RunnerService"}  # the costliest first
    assert report["rows"][0]["cost_usd"] == 0.0049  # exact sums: 0.0001 + 0.0003 + 0.0045


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


def test_markdown_by_two_dimensions_leaves_empty_total_cells_empty(
    capsys: pytest.CaptureFixture[str], sample: Path
) -> None:
    """By two dimensions, the Markdown total row has no stray "****" (bold nothing shows as four
    stars) and both name columns are left-aligned, as in the text table."""
    assert main(["report", str(sample), "--by", "lens,model", "--format", "markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| lens | model | lens runs |")
    assert lines[1].startswith("|---|---|---:|")
    total = next(line for line in lines if line.startswith("| **total**"))
    assert "****" not in total
    assert total.startswith("| **total** |  | **")


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
    assert "$0.000100*" in out
    assert "1 billed call has no known cost" in out and "--by model shows which models" in out


def test_a_call_without_usage_is_not_blamed_on_an_unknown_model(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A successful call whose server reported no usage has no cost either: the footer gives both
    reasons instead of calling a known model unknown to the price table."""
    path = write(tmp_path / "log.jsonl", [call(prompt=None, completion=None, cost=None), call()])
    assert main(["report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "1 billed call has no known cost" in out
    assert (
        "(no usage reported, as by a stream stopped early; only a total of tokens reported (no prompt and "
        "completion tokens, so no price applied); an image or audio call billed in other units than "
        "tokens; a model the price table does not know; the fee of a built-in tool such as web search; or "
        "a background response whose end is in no log read)" in out
    )


def test_lone_surrogates_in_context_values_are_counted_not_malformed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A context value with a lone surrogate, as the ledger writes it or as orjson spells it, is a call."""
    written = call(lens="a\ud800b", source="s\udc00")  # the ledger's own writer: a JSON escape
    log = logging.LogRecord("llm_monitor", logging.INFO, __file__, 0, written, None, None)
    spelled = line(call(lens="LENS")).replace("LENS", "x\\ud800y")  # the fast path's spelling
    path = tmp_path / "log.jsonl"
    path.write_bytes(FORMATTER.format_line(log) + (spelled + "\n").encode())
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


def test_devices_are_refused_and_pipes_are_read(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """/dev/zero exits 2 with a clear message; a FIFO (`<(zcat log.gz)`) is read like a file."""
    assert main(["report", "/dev/zero"]) == 2
    assert "'/dev/zero' is not a regular file (a device or socket)" in capsys.readouterr().err
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def feed() -> None:
        with fifo.open("w") as pipe:
            pipe.write(line(call()) + "\n")

    writer = threading.Thread(target=feed)
    writer.start()
    report = report_json(capsys, str(fifo))
    writer.join()
    assert report["total"]["calls"] == 1


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """`llm-ledger --version` prints the installed version and exits 0."""
    with pytest.raises(SystemExit) as excinfo:
        main(["--version"])
    assert excinfo.value.code == 0
    assert capsys.readouterr().out == f"llm-ledger {importlib.metadata.version('llm-ledger')}\n"


def test_help_imports_no_subcommand() -> None:
    """`llm-ledger --help` lists every subcommand without importing any; running one imports only it."""
    from llm_ledger._cli import _COMMANDS

    modules = sorted(module for module, _ in _COMMANDS.values())
    code = (
        "import sys\nfrom llm_ledger._cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in sys.modules if m in {modules!r}))"
    )
    for argv, imported in (
        (["--help"], "[]"),
        (["diff", "--help"], "['llm_ledger.analysis._diff']"),
        (["report", "--help"], "['llm_ledger.analysis._report_cli']"),
    ):
        done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True)
        assert done.stdout.splitlines()[-1] == imported, done.stdout
    assert all(name in done.stdout for name in ("--where", "--since", "--until"))
    done = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True, check=True)
    assert all(f"    {name} " in done.stdout for name in ("diff", "report", "scrub", "serve"))


@pytest.mark.parametrize("command", [["fake-server"], ["serve", "."]])
def test_serving_commands_refuse_a_bad_port_or_address_with_an_error_not_a_traceback(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A port in use, an address the machine does not have and a port out of range each exit 2 with
    one line naming the problem and the fix (they raised OSError / OverflowError tracebacks)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main([*command, "--port", str(port)]) == 2
        assert capsys.readouterr().err == (
            f"llm-ledger {command[0]}: error: cannot listen on 127.0.0.1:{port} (Address already in "
            "use); choose another --port (0 picks a free one), or a --host this machine has\n"
        )
    assert main([*command, "--port", "0", "--host", "192.0.2.1"]) == 2  # TEST-NET-1: not this machine's
    assert "cannot listen on 192.0.2.1:0 (Cannot assign requested address)" in capsys.readouterr().err
    # a host a terminal would run, or one that looks like a key, is not printed as typed
    assert main([*command, "--port", "0", "--host", "\x1b]0;x\x07.invalid"]) == 2
    assert "cannot listen on '\\x1b]0;x\\x07.invalid':0 (" in capsys.readouterr().err
    assert main([*command, "--port", "0", "--host", f"sk-proj-{'A1b2' * 8}.invalid"]) == 2
    assert "cannot listen on <48 characters not shown: they look like a credential>:0 (" in (
        capsys.readouterr().err
    )
    for port_text in ("65536", "-1", "http", "\u0669\u0664\u0666\u0664"):
        with pytest.raises(SystemExit) as exited:
            main([*command, "--port", port_text])
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert f"argument --port: '{port_text}' is not a port: give 0 to 65535 (0 picks a free one)" in err


@pytest.mark.parametrize("command", ["report", "reprice"])
@pytest.mark.parametrize("fmt", ["text", "markdown"])
def test_a_value_with_a_line_break_stays_on_its_row(
    sdk: Sdk, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, fmt: str
) -> None:
    """A lens key or source id is the application's text, line breaks included: its row stays one line
    (written \\n, as `llm-ledger diff` writes it), so a table in a terminal or a PR comment stays whole."""
    path = tmp_path / "llm_calls.jsonl"
    with logging_to(path, sdk) as (monitor, client):
        for lens in ("title\nsubtitle", "crlf\r\nend", "plain"):
            with monitor.lens(lens):
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
                )
    assert main([command, str(path), "--format", fmt]) == 0
    out = capsys.readouterr().out
    assert "\r" not in out
    lines = out.splitlines()
    rule = next(line for line in lines if line.startswith(("---", "|---")))
    for key in ("title\\nsubtitle", "crlf\\r\\nend", "plain"):
        row = next((line for line in lines if key in line), None)
        assert row is not None, (key, lines)
        if fmt == "markdown":
            assert row.startswith(f"| `{key}` | ") and row.count(" | ") == rule.count("|") - 2, lines
        else:
            assert row.startswith(f"{key} ") and len(row) == len(rule), lines


def test_the_unpriced_note_does_not_call_a_stopped_stream_successful(
    sdk: Sdk, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stream the caller stopped after its first chunk was billed for what the server produced, but
    reported no usage: it is left out of the cost, and the note under the table names it a billed call,
    not a successful one (its status is `interrupted`)."""
    path = tmp_path / "llm_calls.jsonl"
    with logging_to(path, sdk) as (monitor, client), monitor.lens("stopped"):
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        next(iter(stream))
        stream.close()
    assert json.loads(path.read_text().splitlines()[0])["status"] == "interrupted"
    assert main(["report", str(path)]) == 0
    footer = capsys.readouterr().out.splitlines()[-1]
    assert footer.startswith("* 1 billed call has no known cost (no usage reported"), footer
    assert "successful" not in footer


def test_the_unpriced_note_names_a_call_that_reported_only_a_total(
    sdk: Sdk, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A call whose server gave only ``total_tokens`` reported usage, with no prompt and completion
    split for a price to apply to: its tokens are in the table, and the note under it names that among
    the reasons a cost is unknown."""
    path = tmp_path / "llm_calls.jsonl"
    with logging_to(path, sdk) as (monitor, client), monitor.lens("split"):
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-fake-usage-style": "total-only"},
        )
    assert main(["report", str(path), "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert (row["total_tokens"], row["unpriced_calls"]) == (8, 1)
    assert main(["report", str(path)]) == 0
    footer = capsys.readouterr().out.splitlines()[-1]
    assert footer.startswith("* 1 billed call has no known cost (")
    assert "only a total of tokens reported (no prompt and completion tokens, so no price applied)" in footer


def test_logs_named_after_an_option_are_read_too(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """`llm-ledger report a.jsonl --by model b.jsonl` reads both logs (argparse refused b.jsonl as an
    unrecognized argument once an option came between the logs)."""
    first = write(tmp_path / "a.jsonl", [call()])
    second = write(tmp_path / "b.jsonl", [call(model="gpt-4o")])
    report = report_json(capsys, str(first), "--by", "model", str(second))
    assert set(rows_by_key(report)) == {"gpt-4o-mini", "gpt-4o"}


@pytest.mark.parametrize("command", [["report", "LOG"], ["diff", "LOG", "LOG"], ["serve", "."]])
def test_an_unknown_option_is_the_subcommand_s_error(
    command: list[str], capsys: pytest.CaptureFixture[str], sample: Path
) -> None:
    """A misspelt option shows the subcommand's usage and names the subcommand, as a missing argument
    does (it showed `llm-ledger COMMAND ...` and `llm-ledger: error:`, leaving out which command)."""
    argv = [str(sample) if arg == "LOG" else arg for arg in command]
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--formt", "json"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: llm-ledger {command[0]} ")
    assert f"\nllm-ledger {command[0]}: error: unrecognized arguments: --formt" in err


def test_pytest_options_before_the_dashes_name_the_fix(capsys: pytest.CaptureFixture[str]) -> None:
    """`llm-ledger cassettes -k app` says pytest's options go after `--` (the docs' form), instead of
    `llm-ledger: error: unrecognized arguments: -k`."""
    with pytest.raises(SystemExit) as exited:
        main(["cassettes", "-k", "app"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: llm-ledger cassettes ")
    assert err.endswith(
        "llm-ledger cassettes: error: unrecognized arguments: -k; pytest's own options go after --: "
        "llm-ledger cassettes -- -k app\n"
    )


def test_help_shows_no_rst_markup(capsys: pytest.CaptureFixture[str]) -> None:
    """Each command's --help reads as plain text in a terminal: the descriptions taken from module
    docstrings showed their reStructuredText ``double backticks``."""
    from llm_ledger._cli import _COMMANDS

    for command in _COMMANDS:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert out.startswith(f"usage: llm-ledger {command} ") and "``" not in out, (command, out)


def test_a_where_written_with_spaces_around_the_equals_sign_still_filters(
    capsys: pytest.CaptureFixture[str], sample: Path
) -> None:
    """`--where "source_id = src-2"` keeps src-2's records, as `--by "lens, model"` takes its names
    with spaces: the key was stripped and the value was not, so ' src-2' matched nothing and the
    report was silently empty."""
    spaced = report_json(capsys, str(sample), "--by", "source_id", "--where", "source_id = src-2")
    plain = report_json(capsys, str(sample), "--by", "source_id", "--where", "source_id=src-2")
    assert set(rows_by_key(spaced)) == {"src-2"}
    assert spaced["rows"] == plain["rows"]


@pytest.mark.parametrize("fmt", ["text", "markdown"])
def test_a_number_and_the_same_digits_as_text_are_two_rows_that_read_apart(
    sdk: Sdk, tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    """An application that gives ``source_id=42`` in one place and ``"42"`` in another gets two rows
    (the JSON keeps both values); the table shows them as 42 and "42", not as two rows labelled 42."""
    path = tmp_path / "llm_calls.jsonl"
    with logging_to(path, sdk) as (monitor, client):
        for source in (42, "42", "doc-1"):
            with monitor.lens("summary", source_id=source):
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
                )
    assert main(["report", str(path), "--by", "source_id", "--format", fmt]) == 0
    lines = [line.split(" ") for line in capsys.readouterr().out.splitlines() if line]
    labels = [words[0 if fmt == "text" else 1] for words in lines if len(words) > 1]
    shown = ["42", '"42"', "doc-1"] if fmt == "text" else ["`42`", '`"42"`', "`doc-1`"]
    assert sorted(label for label in labels if label in shown) == sorted(shown), labels
    assert set(rows_by_key(report_json(capsys, str(path), "--by", "source_id"))) == {42, "42", "doc-1"}


@pytest.mark.parametrize(
    "args",
    [["--where", "KEY"], ["--where", "KEY=x"], ["--by", "KEY"], ["--since", "KEY"], ["--tz", "KEY"],
     ["--by", "KEY,"]],
)  # fmt: skip
def test_a_key_typed_into_a_query_option_is_never_echoed(
    args: list[str], sample: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key pasted into --where, --by, --since or --tz (the wrong shell variable): the error names the
    option and what it expects, and the key by its length only; it was quoted whole to stderr."""
    key = "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1w"
    args = [arg.replace("KEY", key) for arg in args]
    assert main(["report", str(sample), *args]) == 2
    err = capsys.readouterr().err
    assert key[:12] not in err and "characters not shown: they look like a credential>" in err


def test_process_substitution_is_read_by_every_command(
    sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`llm-ledger report <(zcat old.jsonl.gz)`, as a shell runs it: the pipe's writer is there when the
    command opens /dev/fd/N, so it is read as the file would be (a FIFO nothing writes to waits for a
    writer, as `cat` does: docs/REPORTING.md)."""
    packed = tmp_path / "old.jsonl.gz"
    packed.write_bytes(gzip.compress(sample.read_bytes()))
    outputs = {}
    for command in ("report", "anomalies", "reprice"):
        script = f"{shlex.quote(sys.executable)} -m llm_ledger {command} <(gzip -dc {packed}) --format json"
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
        assert (done.returncode, done.stderr) == (0, ""), command
        outputs[command] = json.loads(done.stdout)
    assert outputs["report"]["total"] == report_json(capsys, str(sample))["total"]
    assert outputs["report"]["total"]["calls"] == 5


def _no_root_reads() -> None:
    """In the child before exec: a root user (CI containers) loses the capabilities that read any file,
    so a mode-000 file or directory is unreadable, as for any other user."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            assert libc.prctl(24, capability, 0, 0, 0) == 0  # PR_CAPBSET_DROP: gone from what exec gives


@pytest.mark.parametrize(
    ("command", "given", "message"),
    [
        ("report", "locked", "'{locked}': cannot list the directory: Permission denied"),
        ("report", "locked/llm_calls.jsonl", "'{locked}/llm_calls.jsonl': cannot read: Permission denied"),
        ("anomalies", "locked", "'{locked}': cannot list the directory: Permission denied"),
        ("diff", "locked/base.json", "{locked}/base.json: cannot read the report: Permission denied"),
        # not "cannot listen on 127.0.0.1:0 (Permission denied)": the directory, not the port
        ("serve", "locked/logs", "'{locked}/logs': cannot read: Permission denied"),
    ],
)
def test_a_file_or_directory_the_user_may_not_read_is_a_clear_error(
    command: str, given: str, message: str, sample: Path, tmp_path: Path
) -> None:
    """A log directory of mode 000 was a PermissionError traceback (report, anomalies; diff's base report
    in one too), and a log in one "no such file". Each is an error naming the path and the reason, exit 2;
    a base report that cannot be read is never taken for no base."""
    locked = tmp_path / "locked"
    (locked / "logs").mkdir(parents=True)
    (locked / "llm_calls.jsonl").write_bytes(sample.read_bytes())
    locked.chmod(0)
    args = [given, given] if command == "diff" else [given, "--port", "0"] if command == "serve" else [given]
    done = subprocess.run(
        [sys.executable, "-m", "llm_ledger", command, *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, preexec_fn=_no_root_reads,
    )  # fmt: skip
    locked.chmod(0o700)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"llm-ledger {command}: error: {message.format(locked='locked')}\n"


@pytest.mark.parametrize(
    ("args", "echoed"),
    [
        (["diff", "a", "b", "--format", "{key}"], "argument --format: invalid choice: <42 characters"),
        (["{key}"], "argument COMMAND: invalid choice: <42 characters"),
        (["diff", "a.json", "b.json", "--formt={key}"], "unrecognized arguments: <50 characters"),
        (["report", "logs", "--format", "\x1b[31mred"], r"invalid choice: '\x1b[31mred' (choose from"),
    ],
)
def test_a_value_argparse_refuses_is_echoed_as_other_errors_quote_it(
    args: list[str], echoed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """argparse's own errors (a choice it does not know, an argument it does not take) echoed the value
    verbatim: a key pasted after --format reached the CI log, and a terminal escape ran. They quote it
    as every other error of the CLI does: a key by its length, an escape written escaped."""
    key = "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z5A"
    with pytest.raises(SystemExit) as exited:
        main([arg.format(key=key) for arg in args])

    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert echoed in err and key not in err and "\x1b" not in err  # ESC itself, not its escape


@pytest.mark.parametrize("command", ["report", "reprice"])
def test_a_where_value_is_echoed_as_typed_unless_a_key_or_a_terminal_escape(
    command: str, sample: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The --where a report names back (no record has the value; reprice's heading) is as typed, but a
    key pasted there is named by its length and a terminal escape is written escaped, never run."""
    key = "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1w"
    for value, echoed in (("digest", "lens=digest"), ("\x1b[31mred", r"'lens=\x1b[31mred'"), (key, "<41 ")):
        assert main([command, str(sample), "--where", f"lens={value}"]) == 0
        out = "".join(capsys.readouterr())
        assert echoed in out and (value == "digest" or value not in out)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["serve", "{logs}", "--host", ""], "--host"),  # "" listened on every interface
        (["reprice", "{logs}", "--price-file", " "], "--price-file"),  # priced at genai-prices' rates
        (["scrub", ""], "CASSETTE"),  # scrubbed every cassette under the current directory
        (["report", "{logs}", "--tz", ""], "--tz"),
    ],
)
def test_an_empty_value_on_the_command_line_is_a_usage_error(
    args: list[str],
    named: str,
    sample: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`llm-ledger serve logs --host "$HOST"` with HOST unset: an empty value is an error naming the
    option, never read as none given (the same rule as the LLM_LEDGER_* variables and the plugin's flags)."""
    monkeypatch.chdir(sample.parent)  # what an empty path would name
    with pytest.raises(SystemExit) as exited:
        main([arg.format(logs=sample.parent) for arg in args])
    assert exited.value.code == 2
    assert capsys.readouterr().err.endswith(
        f": error: {named} is given an empty value (an unset variable?); give it a value"
        + (", or leave it out\n" if named.startswith("--") else "\n")
    )
