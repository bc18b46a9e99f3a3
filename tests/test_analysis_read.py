"""Reading logs: several files, globs, directories, .gz as logrotate leaves them, stdin, hostile lines."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from llm_ledger import ConfigError
from llm_ledger._cli import main
from llm_ledger.analysis import LogReader, _read, iter_records
from tests.report_helpers import call, lens_run, line, write

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

REPO = Path(__file__).resolve().parent.parent


def report(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["report", *args, "--format", "json"]) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


@pytest.fixture
def rotated(tmp_path: Path) -> Path:
    """A log directory as logrotate (compress, delaycompress) leaves it: 1 + 2 + 3 calls, one lens run."""
    logs = tmp_path / "logs"
    logs.mkdir()
    write(logs / "llm_calls.jsonl", [call(lens="now")])
    write(logs / "llm_calls.jsonl.1", [call(lens="yesterday"), call(lens="yesterday")])
    older = [call(lens="older")] * 3
    with gzip.open(logs / "llm_calls.jsonl.2.gz", "wt") as file:
        file.write("".join(line(r) + "\n" for r in [*older, lens_run(older)]))
    (logs / "README.txt").write_text("not a log\n")
    return logs


def test_a_directory_reads_the_log_and_its_rotated_and_gzipped_files(
    capsys: pytest.CaptureFixture[str], rotated: Path
) -> None:
    """A directory: every file whose name holds .jsonl, .gz decompressed; other files left alone."""
    result = report(capsys, str(rotated))
    calls = {row["key"]["lens"]: row["calls"] for row in result["rows"]}
    assert calls == {"older": 3, "yesterday": 2, "now": 1}
    assert result["lens_runs"] == 1
    assert [Path(i["name"]).name for i in result["inputs"]] == [
        "llm_calls.jsonl",
        "llm_calls.jsonl.1",
        "llm_calls.jsonl.2.gz",
    ]


def test_several_files_and_globs_add_up(capsys: pytest.CaptureFixture[str], rotated: Path) -> None:
    """Several arguments and a glob are read in turn; the same totals as the directory."""
    result = report(capsys, str(rotated / "llm_calls.jsonl"), str(rotated / "llm_calls.jsonl.[12]*"))
    assert result["calls"] == 6 and len(result["inputs"]) == 3


def test_gzip_is_recognised_by_its_bytes_whatever_the_name(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """logrotate's dateext or compressext may name a compressed log anything: its first bytes decide."""
    path = tmp_path / "llm_calls.jsonl-20251124"
    path.write_bytes(gzip.compress((line(call()) + "\n").encode()))
    assert report(capsys, str(path))["calls"] == 1


def test_a_truncated_gzip_counts_what_it_holds_and_says_it_ended_early(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A .gz cut short (compression still running) keeps the lines before the cut and warns on stderr."""
    whole = gzip.compress("".join(line(call(prompt=i)) + "\n" for i in range(400)).encode())
    path = tmp_path / "llm_calls.jsonl.2.gz"
    path.write_bytes(whole[: len(whole) * 2 // 3])
    assert main(["report", str(path), "--format", "json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert 0 < result["calls"] < 400
    assert result["inputs"][0]["error"].startswith("ended early, after line")
    assert f"{path}: ended early, after line" in captured.err


@pytest.mark.parametrize("compressed", [False, True])
def test_stdin_is_read_with_a_dash(tmp_path: Path, compressed: bool) -> None:
    """`zcat log | llm-ledger report -` and `llm-ledger report - < log.gz`: the same rows."""
    data = "".join(line(call(lens=lens)) + "\n" for lens in ("a", "b", "b")).encode()
    done = subprocess.run(
        [sys.executable, "-m", "llm_ledger", "report", "-", "--format", "json"],
        input=gzip.compress(data) if compressed else data,
        capture_output=True,
        cwd=REPO,
        check=True,
    )
    result = json.loads(done.stdout)
    assert {row["key"]["lens"]: row["calls"] for row in result["rows"]} == {"a": 1, "b": 2}
    assert result["inputs"][0]["name"] == "-"


class _CtrlC(io.BufferedIOBase):
    """A terminal's stdin whose read is interrupted by Ctrl-C (no ``peek()``, as a replaced stdin)."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        raise KeyboardInterrupt

    def read(self, size: int | None = -1) -> bytes:
        raise KeyboardInterrupt

    read1 = read


def test_ctrl_c_while_reading_stdin_exits_130_without_a_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`llm-ledger report -` stopped by Ctrl-C (waiting on a pipe or a terminal) exits 130, the
    shell's status for SIGINT, and prints no traceback."""
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=_CtrlC()))
    assert main(["report", "-"]) == 130
    assert capsys.readouterr() == ("", "")


def test_torn_and_concatenated_lines_are_malformed_never_calls(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A line cut by a killed writer, two records run together, or a torn line the next record was
    appended to: each is one malformed line; only whole records count."""
    good = line(call())
    path = tmp_path / "log.jsonl"
    path.write_text(
        "\n".join(
            [
                good,
                good[:-40],  # torn
                good + good,  # concatenated
                good[:300] + good,  # torn, then the next record on the same line
                good + " " + '{"event": "llm_api_call"}',  # a record and a fragment
                good,
            ]
        )
        + "\n"
    )
    result = report(capsys, str(path))
    assert result["calls"] == 2
    assert result["inputs"][0]["first_malformed_lines"] == [2, 3, 4, 5]


@pytest.mark.parametrize(
    "hostile",
    [
        '{"event": "llm_api_call", "usage": {"prompt_tokens": NaN}}',
        '{"event": "llm_api_call", "timing": {"duration_ms": 1e400}}',
        '{"event": "llm_api_call", "context": ' + "[" * 5000 + "]" * 5000 + "}",
        '{"event": "llm_api_call", "usage": {"prompt_tokens": "100"}}',
        '{"event": "llm_api_call", "cost": {"total_cost_usd": "0.1"}}',
        "\x00\xff\xfe garbage",
    ],
    ids=["nan", "1e400", "deep-nesting", "string-tokens", "string-cost", "binary"],
)
def test_hostile_lines_are_malformed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, hostile: str
) -> None:
    """NaN, numbers past a float, deep nesting, numbers as strings, binary: malformed, the rest counted."""
    path = tmp_path / "log.jsonl"
    path.write_bytes(f"{line(call())}\n{hostile}\n{line(call())}\n".encode("utf-8", "surrogateescape"))
    result = report(capsys, str(path))
    assert (result["calls"], result["malformed_lines"]) == (2, 1)
    assert result["inputs"][0]["first_malformed_lines"] == [2]


def test_a_line_over_the_cap_is_skipped_and_the_next_line_counts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line longer than MAX_LINE_BYTES is skipped unread, counted as malformed and too long."""
    monkeypatch.setattr(_read, "MAX_LINE_BYTES", 2000)
    monkeypatch.setattr(_read, "_SKIP_BYTES", 100)
    huge = line(call(extra={"note": "x" * 10_000}))
    path = tmp_path / "log.jsonl"
    path.write_text(f"{line(call())}\n{huge}\n{line(call())}\n" + "y" * 2001)  # and a long last line
    assert main(["report", str(path), "--format", "json"]) == 0
    captured = capsys.readouterr()
    stats = json.loads(captured.out)["inputs"][0]
    assert (stats["records"], stats["malformed_lines"], stats["too_long_lines"]) == (2, 2, 2)
    assert stats["first_malformed_lines"] == [2, 4]
    assert "(line 2, 4; 2 over 2,000 bytes)" in captured.err


def test_a_64_mb_line_costs_linear_time_and_bounded_memory(tmp_path: Path) -> None:
    """A 64 MB line (a context value gone wrong) is skipped quickly, its memory never held whole."""
    path = tmp_path / "log.jsonl"
    good = line(call())
    with path.open("w") as file:
        file.write(good + "\n" + line(call(extra={"note": "x" * (64 << 20)})) + "\n" + good + "\n")
    # the peak RSS of exactly the report's process: the only child of a small interpreter
    measure = (
        "import resource, subprocess, sys\n"
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    command = [sys.executable, "-m", "llm_ledger", "report", str(path), "--format", "json"]
    done = subprocess.run(
        [sys.executable, "-c", measure, *command], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert done.returncode == 0, done.stderr
    peak_mb = int(done.stdout) / 1024
    assert peak_mb < 100, peak_mb  # the line alone is 64 MB; the cap keeps at most 16 MiB of it
    assert "skipped 1 malformed line(s) (line 2; 1 over 16,777,216 bytes)" in done.stderr


def test_iter_records_yields_calls_and_lens_summaries_only(tmp_path: Path) -> None:
    """The reader's internal API: records in file order, other events and bad lines left out."""
    calls = [call(lens="a"), call(lens="b")]
    path = write(tmp_path / "log.jsonl", [*calls, lens_run(calls)], extra_lines=('{"event": "x"}', "{oops"))
    records = list(iter_records([path]))
    assert [r["event"] for r in records] == ["llm_api_call", "llm_api_call", "lens_summary"]
    assert [r["context"]["lens_key"] for r in records[:2]] == ["a", "b"]
    reader = LogReader([path], events=["lens_summary"])
    assert len(list(reader)) == 1
    assert (reader.stats[0].skipped, reader.stats[0].malformed) == (3, 1)


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("nothing/*.jsonl", "matches no file; e.g. 'logs/llm_calls.jsonl*'"),
        ("missing.jsonl", "no such file; the ledger writes <log_dir>/llm_calls.jsonl"),
    ],
)
def test_inputs_that_name_nothing_are_clear_errors(tmp_path: Path, argument: str, message: str) -> None:
    """A glob matching nothing or a missing file: ConfigError naming it and what to pass."""
    with pytest.raises(ConfigError, match="'.*" + argument.split("/")[-1].replace("*", r"\*") + "'"):
        LogReader([str(tmp_path / argument)])
    with pytest.raises(ConfigError) as excinfo:
        LogReader([str(tmp_path / argument)])
    assert message in str(excinfo.value)


def test_a_log_compressed_by_logrotate_after_the_listing_is_read_under_its_new_name(rotated: Path) -> None:
    """logrotate (delaycompress) renames .1 to .2, then writes .2.gz and deletes .2: a reader that
    listed the directory in between finds .2 gone. It lists the inputs again and reads the .gz
    with the files not read yet; every call counts once, not an error failing the whole report."""
    gz = rotated / "llm_calls.jsonl.2.gz"
    plain = rotated / "llm_calls.jsonl.2"
    plain.write_bytes(gzip.decompress(gz.read_bytes()))
    gz.unlink()
    write(rotated / "llm_calls.jsonl.3.gz", [])  # listed after .2: still read, once
    reader = LogReader([rotated])
    assert str(plain) in reader.names
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    plain.unlink()

    lenses = [r["context"]["lens_key"] for r in reader if r["event"] == "llm_api_call"]

    assert sorted(lenses) == ["now", "older", "older", "older", "yesterday", "yesterday"]
    assert [Path(s.name).name for s in reader.stats] == [
        "llm_calls.jsonl",
        "llm_calls.jsonl.1",
        "llm_calls.jsonl.2.gz",
        "llm_calls.jsonl.3.gz",
    ]


def test_a_named_log_gone_before_it_is_read_is_an_error_naming_it(rotated: Path) -> None:
    """A file named on the command line that vanished before it was read is no rotation to follow:
    listed again, it is still missing, and that is the error (not an answer without it)."""
    named = rotated / "llm_calls.jsonl.1"
    reader = LogReader([rotated / "llm_calls.jsonl", named])
    named.unlink()
    with pytest.raises(ConfigError, match=f"{named}'?: no such file"):
        list(reader)
