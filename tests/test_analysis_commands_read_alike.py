"""Every command that reads logs (``report``, ``anomalies``, ``reprice``) says what it could not read, as
docs/REPORTING.md promises ("the same inputs and the same rules for bad lines"): a malformed line, a
``.gz`` cut short, a pytest ``--llm-report`` file given where a log was expected."""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from llm_ledger import ConfigError
from llm_ledger._cli import main
from llm_ledger._records import CALL_EVENT
from llm_ledger.analysis import iter_records
from llm_ledger.analysis._http import handle
from llm_ledger.report import summarise
from pytest_llm_ledger._report import SessionLedger
from tests.conftest import Sdk
from tests.report_helpers import logging_to

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

COMMANDS = ["report", "anomalies", "reprice"]
HI: Any = [{"role": "user", "content": "summarise the quarterly numbers for the board please"}]


@pytest.fixture
def log(sdk: Sdk, tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    """A log of real SDK calls in two lens runs, and its call records."""
    path = tmp_path / "llm_calls.jsonl"
    calls: list[dict[str, Any]] = []
    with logging_to(path, sdk) as (monitor, client):
        monitor.add_sink(lambda r: calls.append(dict(r)) if r["event"] == "llm_api_call" else None)
        for lens in ("summary", "tags"):
            with monitor.lens(lens):
                client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    return path, calls


@pytest.mark.parametrize("command", COMMANDS)
def test_a_torn_line_and_a_cut_gzip_are_named_on_stderr(
    command: str, log: tuple[Path, list[dict[str, Any]]], capsys: pytest.CaptureFixture[str]
) -> None:
    """A torn line (a writer killed mid-write) and a rotated .gz still being compressed: the command
    reads the rest and says which input lost what, as `report` does; never a silent partial answer."""
    path, _ = log
    with path.open("ab") as file:
        file.write(b'{"event": "llm_api_call", "status": "o\n')
    lines = path.read_bytes()
    compressed = gzip.compress(lines * 200)
    cut = path.with_name("llm_calls.jsonl.1.gz")
    cut.write_bytes(compressed[: len(compressed) // 2])
    assert main([command, str(path), str(cut)]) == 0
    err = capsys.readouterr().err
    torn_line = len(lines.splitlines())
    assert f"llm-ledger {command}: {path}: skipped 1 malformed line(s) (line {torn_line})" in err
    assert f"llm-ledger {command}: {cut}: ended early, after line" in err


WRONG = {  # what a user may point a command at by mistake -> why its first line is no record
    "costs.csv": (b"lens,calls\ndigest,3\n", "2 malformed; line 1: not JSON ("),
    "other.jsonl": (
        b'{"level": "info", "msg": "started"}\n{"level": "info"}\n',
        "2 JSON object(s) of other events; line 1: a JSON object of no event)",
    ),
    "backup.jsonl.gz": (gzip.compress(bytes(range(256)) * 40), "malformed; line 1: not JSON ("),
}


@pytest.mark.parametrize("wrong", sorted(WRONG))
@pytest.mark.parametrize("command", COMMANDS)
def test_a_file_with_no_ledger_record_is_an_error_naming_it(
    command: str,
    wrong: str,
    log: tuple[Path, list[dict[str, Any]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The wrong file (a CSV export, another program's JSONL, a gzip'd binary) given alone or beside the
    log: every line was skipped, and the command answered exit 0 with an empty (or partial) table. It
    is an error (exit 2, no answer, as for a pytest report among the logs) naming the file, how many
    lines it has, why its first line is no record, and what a log is."""
    path, _ = log
    data, why = WRONG[wrong]
    given = tmp_path / wrong
    given.write_bytes(data)
    for inputs in ([given], [path, given], [given, path]):
        assert main([command, *map(str, inputs)]) == 2, inputs
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith(f"llm-ledger {command}: error: {given}: none of its ")
        assert " line(s) is an llm-ledger record (" in captured.err and why in captured.err
        assert captured.err.endswith(
            "is it an llm-ledger log? pass the ledger's <log_dir>/llm_calls.jsonl (its rotated and .gz "
            "files too)\n"
        )


@pytest.mark.parametrize("command", COMMANDS)
def test_another_programs_jsonl_in_a_log_directory_is_skipped_with_a_word(
    command: str, log: tuple[Path, list[dict[str, Any]]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The application's own JSON logs beside the ledger's (logs/app.jsonl, found by listing logs/ or
    by a glob) are no mistake of the user's: skipped, named on stderr, the ledger's log answered; a
    directory holding no ledger line at all is still the wrong input."""
    path, _ = log
    own = path.with_name("app.jsonl")
    own.write_bytes(WRONG["other.jsonl"][0])
    for given in (str(path.parent), str(path.parent / "*.jsonl")):
        assert main([command, given]) == 0, given
        captured = capsys.readouterr()
        assert captured.out
        assert captured.err == (
            f"llm-ledger {command}: {own}: skipped: none of its 2 line(s) is an llm-ledger record "
            "(2 JSON object(s) of other events; line 1: a JSON object of no event)\n"
        )
    path.unlink()
    assert main([command, str(path.parent)]) == 2
    assert f"llm-ledger {command}: error: {own}: none of its 2 line(s)" in capsys.readouterr().err


@pytest.mark.parametrize("command", COMMANDS)
def test_an_empty_file_or_a_log_without_the_commands_records_is_no_error(
    command: str, sdk: Sdk, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty file (the live log just after logrotate) holds no wrong line, and a log of calls outside
    any lens holds no lens run for `anomalies` to judge: both are answered, exit 0."""
    path, empty = tmp_path / "llm_calls.jsonl", tmp_path / "llm_calls.jsonl.new"
    empty.write_bytes(b"")
    with logging_to(path, sdk) as (_, client):
        client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    for inputs in ([empty], [path], [path, empty]):
        assert main([command, *map(str, inputs)]) == 0, inputs
        captured = capsys.readouterr()
        assert captured.out and captured.err == ""


@pytest.fixture
def report(log: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> Path:
    """head.json: the pytest --llm-report of the log's calls and lens runs, as the plugin writes it."""
    ledger = SessionLedger()
    for record in iter_records([log[0]]):
        add = ledger.add_call if record["event"] == CALL_EVENT else ledger.add_lens
        add("tests/test_x.py::test_x", record)
    path = tmp_path / "head.json"
    path.write_text(json.dumps(ledger.report(exit_status=0), indent=2))
    return path


@pytest.mark.parametrize("command", COMMANDS)
def test_a_pytest_report_among_the_logs_is_refused_naming_the_commands_that_read_it(
    command: str,
    log: tuple[Path, list[dict[str, Any]]],
    report: Path,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """A --llm-report file (indented JSON) read as a log is nothing but malformed lines: given with a log,
    or matched by a glob, it is an error (exit 2) naming `diff` and `reprice`, not an empty answer."""
    path, _ = log
    for inputs in ([str(path), str(report)], [str(tmp_path / "*.json")]):
        assert main([command, *inputs]) == 2, inputs
        captured = capsys.readouterr()
        assert captured.out == ""
        assert f"llm-ledger {command}: error: {report}: a pytest --llm-report file, not a log" in captured.err
        assert "llm-ledger diff" in captured.err and "llm-ledger reprice" in captured.err


@pytest.mark.parametrize("command", ["report", "reprice"])
def test_a_file_named_twice_is_read_once(
    command: str, log: tuple[Path, list[dict[str, Any]]], capsys: pytest.CaptureFixture[str]
) -> None:
    """A directory and a glob over it, or one file given twice (a shell history edited in a hurry): the
    same log read twice would double every cost, so each file is read once."""
    path, _ = log
    assert main([command, str(path), "--format", "json"]) == 0
    once = json.loads(capsys.readouterr().out)
    for inputs in (
        [str(path.parent), str(path.parent / "llm_calls.jsonl*")],
        [str(path), str(path.parent / "." / path.name)],
    ):
        assert main([command, *inputs, "--format", "json"]) == 0
        twice = json.loads(capsys.readouterr().out)
        assert twice["total"] == once["total"], inputs
        if command == "report":
            assert len(twice["inputs"]) == 1


def test_summarise_refuses_a_pytest_report_wherever_the_cli_does(
    log: tuple[Path, list[dict[str, Any]]], report: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The Python API says what the CLI says: a --llm-report file given to summarise() or iter_records(),
    matched by a glob, or named *.jsonl in a log directory, is an error naming `diff` and `reprice`, as
    `llm-ledger report` refuses it (the glob and the directory read as a report of malformed lines). The
    cost API still answers over a directory holding one, counting its lines as malformed."""
    path, calls = log
    beside = tmp_path / "ci-report.jsonl"
    for paths in (report, str(report), [path, report], str(tmp_path / "*.json")):
        with pytest.raises(ConfigError, match="a pytest --llm-report file, not a log") as refused:
            summarise(paths)
        assert str(report) in str(refused.value) and "llm-ledger diff" in str(refused.value)
    beside.write_bytes(report.read_bytes())
    for paths in (tmp_path, str(tmp_path / "*.jsonl")):
        with pytest.raises(ConfigError, match=f"{beside}: a pytest --llm-report file, not a log"):
            summarise(paths)
        with pytest.raises(ConfigError, match=f"{beside}: a pytest --llm-report file, not a log"):
            list(iter_records([paths]))
        assert main(["report", str(paths)]) == 2
        assert f"{beside}: a pytest --llm-report file, not a log" in capsys.readouterr().err
    status, body = handle(tmp_path, "GET", "/costs", "")
    answer = json.loads(body)
    assert status == 200 and answer["calls"] == len(calls) and answer["malformed_lines"] > 0


@pytest.mark.parametrize(
    ("where", "field"),
    [(("lenses", "summary"), "cost_usd"), (("lenses", "tags"), "api_calls"), (("total",), "errors"),
     (("usage", 0), "uncosted_calls")],
)  # fmt: skip
@pytest.mark.parametrize("command", ["diff", "reprice"])
def test_a_report_missing_a_figure_its_version_always_has_is_refused_naming_it(
    command: str,
    where: tuple[str | int, ...],
    field: str,
    report: Path,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """A hand-edited --llm-report whose lens lost its cost_usd (or a count) read as $0 or 0 calls: a
    silent drop in the diff. A figure every report of its version has is an error naming the file,
    the place and the field (exit 2); fields added to reports later stay optional (an older report
    still reads)."""
    data = json.loads(report.read_text())
    older = tmp_path / "older.json"  # written before lenses and usage rows named failed tests
    for lens in data["lenses"].values():
        del lens["tests_with_failed_calls"]
    for row in data["usage"]:
        del row["failed_calls"], row["tests_with_failed_calls"], row["total_tokens"]
    older.write_text(json.dumps(data, indent=2))
    assert main([command, *[str(older)] * (2 if command == "diff" else 1)]) == 0
    capsys.readouterr()

    edit: Any = data
    for key in where:
        edit = edit[key]
    del edit[field]
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(data, indent=2))
    assert main([command, *([str(older), str(edited)] if command == "diff" else [str(edited)])]) == 2
    captured = capsys.readouterr()
    place = ".".join(map(str, where)).replace(".0", "[0]")
    assert captured.out == ""
    assert captured.err.startswith(f"llm-ledger {command}: error: {edited}: {place}.{field}: missing")
    assert len(captured.err.splitlines()) == 1


def test_a_log_given_to_diff_is_refused_naming_the_command_that_reads_it(
    log: tuple[Path, list[dict[str, Any]]], report: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The mirror of a report given to `report`: `llm-ledger diff logs/llm_calls.jsonl head.json` said
    "not JSON (Extra data: line 2 ...)" (a one-line log: "not an llm-ledger report"), naming neither
    what the file is nor what reads it. It names `llm-ledger diff --logs`, `llm-ledger report` and how to
    write a report."""
    path, _ = log
    one_line = tmp_path / "one.jsonl"
    one_line.write_text(path.read_text().splitlines()[0] + "\n")
    for given in (path, one_line):
        assert main(["diff", str(given), str(report)]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith(
            f"llm-ledger diff: error: {given}: a log of calls, not a pytest --llm-report file; compare "
            f"logs with `llm-ledger diff --logs BASE HEAD`, summarise it with `llm-ledger report {given}`; "
            "write a report with `pytest --llm-report=PATH`"
        )


def test_a_cost_report_given_where_a_log_or_a_pytest_report_is_read_is_named_with_what_compares_periods(
    log: tuple[Path, list[dict[str, Any]]], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`llm-ledger report --format json > november.json`, then that file given to `diff` (to compare two
    months) or back to `report`: `report` called it a pytest --llm-report file and sent the user to
    `diff`, which said it was no report and to write one with pytest. Each command names what it is and
    how a log's periods compare (a time dimension), exit 2; so for a body of GET /costs saved to a file
    (read as a log, one skipped line: an empty report)."""
    path, _ = log
    written, served = tmp_path / "november.json", tmp_path / "costs.json"
    assert main(["report", str(path), "--format", "json"]) == 0
    written.write_text(capsys.readouterr().out)
    status, body = handle(path.parent, "GET", "/costs", "")  # saved from the cost API (one line)
    assert status == 200
    served.write_bytes(body)
    for costs, command in itertools.product((written, served), (*COMMANDS, "diff")):
        args = ["diff", str(costs), str(costs)] if command == "diff" else [command, str(costs)]
        assert main(args) == 2, command
        captured = capsys.readouterr()
        assert captured.out == ""
        what = "a pytest --llm-report file, which this reads" if command == "diff" else "a log of calls"
        assert captured.err.startswith(
            f"llm-ledger {command}: error: {costs}: the JSON of `llm-ledger report --format json` (a log's "
            f"costs), not {what}; "
        ), captured.err
        assert "`llm-ledger report LOGS --by lens,week`" in captured.err, captured.err
