"""Reading a log directory while logrotate rotates it (create mode, compress, delaycompress): every
line the reader could read counts once, never twice, whatever moment the rotation comes at."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from llm_ledger import ConfigError
from llm_ledger._records import CALL_EVENT
from llm_ledger.analysis import LogReader, _read
from llm_ledger.report import summarise
from tests.conftest import Sdk
from tests.report_helpers import logging_to

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

HI: Any = [{"role": "user", "content": "summarise the quarterly numbers for the board please"}]


def calls(path: Path, sdk: Sdk, lens: str, n: int) -> list[str]:
    """``n`` real SDK calls in ``lens``, appended to ``path`` by the ledger's writer; their call_ids."""
    ids: list[str] = []
    with logging_to(path, sdk) as (monitor, client):
        monitor.add_sink(lambda r: ids.append(r["call_id"]) if r["event"] == CALL_EVENT else None)
        with monitor.lens(lens):
            for _ in range(n):
                client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    return ids


@pytest.fixture
def logs(tmp_path: Path, sdk: Sdk) -> tuple[Path, list[str]]:
    """A log directory as logrotate (compress, delaycompress) leaves it: the live file (1 call),
    llm_calls.jsonl.1 (2) and llm_calls.jsonl.2.gz (3); and every call_id in it."""
    logs = tmp_path / "logs"
    logs.mkdir()
    older = calls(logs / "llm_calls.jsonl.2", sdk, "older", 3)
    gz = logs / "llm_calls.jsonl.2.gz"
    gz.write_bytes(gzip.compress((logs / "llm_calls.jsonl.2").read_bytes()))
    (logs / "llm_calls.jsonl.2").unlink()
    ids = [*calls(logs / "llm_calls.jsonl.1", sdk, "yesterday", 2), *older]
    return logs, [*calls(logs / "llm_calls.jsonl", sdk, "now", 1), *ids]


def logrotate(logs: Path, *, delete_plain: bool = True) -> None:
    """One run of logrotate (create, compress, delaycompress) over ``logs``: .N.gz -> .N+1.gz,
    .1 -> .2 compressed to .2.gz (a new file) then deleted, the live file -> .1, a new live file."""
    name = "llm_calls.jsonl"
    for n in sorted((int(p.name.split(".")[2]) for p in logs.glob(f"{name}.*.gz")), reverse=True):
        os.rename(logs / f"{name}.{n}.gz", logs / f"{name}.{n + 1}.gz")
    os.rename(logs / f"{name}.1", logs / f"{name}.2")
    (logs / f"{name}.2.gz").write_bytes(gzip.compress((logs / f"{name}.2").read_bytes()))
    if delete_plain:
        (logs / f"{name}.2").unlink()
    os.rename(logs / name, logs / f"{name}.1")
    (logs / name).touch()


def call_ids(reader: LogReader) -> Counter[str]:
    return Counter(r["call_id"] for r in reader if r["event"] == CALL_EVENT)


def test_a_rotation_between_opening_two_files_counts_each_line_once(
    logs: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """logrotate runs just after the reader opened the live file: llm_calls.jsonl.1 is now the file it
    opened, and the .2.gz it listed holds yesterday's lines. The file opened twice is read once, and
    the older lines, now in .3.gz, are found by listing again: each call counts once."""
    path, ids = logs
    opened = _read._open

    def open_then_rotate(name: str) -> Any:
        result = opened(name)
        if not (path / "llm_calls.jsonl.3.gz").exists():
            logrotate(path)
        return result

    monkeypatch.setattr(_read, "_open", open_then_rotate)
    assert call_ids(LogReader([path])) == Counter(ids)


def test_a_rotation_while_reading_counts_each_line_once(logs: tuple[Path, list[str]], sdk: Sdk) -> None:
    """logrotate runs, and the service logs new calls to the new live file, while the reader is in
    the live file: the files it listed are read as they were listed, each line once."""
    path, ids = logs
    reader = iter(LogReader([path]))
    first = next(reader)
    logrotate(path)
    calls(path / "llm_calls.jsonl", sdk, "after", 2)
    read = Counter(r["call_id"] for r in [first, *reader] if r["event"] == CALL_EVENT)
    assert read == Counter(ids)


@pytest.mark.parametrize("cut", [False, True], ids=["compressed", "still-compressing"])
def test_a_log_and_its_compressed_copy_count_once(logs: tuple[Path, list[str]], cut: bool) -> None:
    """logrotate's compress step writes .2.gz (a new file) from .2 and then deletes .2: a reader that
    lists the directory in between finds both, holding the same lines (the .gz maybe cut short). The
    lines of the .gz that .2 holds too are counted once, as copied lines, and a copy cut short (still
    being written) is no warning: each call counts once."""
    path, ids = logs
    logrotate(path, delete_plain=False)
    gz = path / "llm_calls.jsonl.2.gz"
    if cut:
        gz.write_bytes(gz.read_bytes()[: len(gz.read_bytes()) * 3 // 4])
    report = summarise([path], by="lens")
    assert {row.key["lens"]: row.calls for row in report.rows} == {"now": 1, "yesterday": 2, "older": 3}
    reader = LogReader([path])
    assert call_ids(reader) == Counter(ids)
    assert all(s.error is None and not s.malformed for s in reader.stats)
    (copy,) = [s for s in reader.stats if Path(s.name) == gz]
    assert (copy.records, copy.copied) == (0, copy.lines)
    assert copy.lines == 3 or cut  # its 2 calls and its lens summary


def test_a_gz_that_starts_like_a_plain_file_and_goes_on_counts_the_rest(
    logs: tuple[Path, list[str]], sdk: Sdk
) -> None:
    """Only the lines a plain file holds at the same place are a copy: a .gz that starts with
    yesterday's lines and goes on with others counts those others."""
    path, ids = logs
    more = calls(path / "more", sdk, "more", 2)
    both = (path / "llm_calls.jsonl.1").read_bytes() + (path / "more").read_bytes()
    (path / "more").unlink()
    (path / "llm_calls.jsonl.1.gz").write_bytes(gzip.compress(both))
    reader = LogReader([path])
    assert call_ids(reader) == Counter(ids + more)
    (gz,) = [s for s in reader.stats if s.name.endswith(".1.gz")]
    assert (gz.copied, gz.records) == (3, 3)  # yesterday's 2 calls and lens summary; 2 calls, 1 summary


def test_one_file_under_two_names_is_read_once(logs: tuple[Path, list[str]]) -> None:
    """A hard link (logrotate's olddir on the same disk, an operator's backup link) is one file."""
    path, ids = logs
    os.link(path / "llm_calls.jsonl.1", path / "llm_calls.jsonl.backup")
    assert call_ids(LogReader([path])) == Counter(ids)


def test_a_directory_that_never_stops_changing_is_an_error(
    logs: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new file at every listing: the reader stops after 10 listings and says why, never loops."""
    path, _ = logs
    listed = _read.resolve

    def resolve_then_add(*args: Any, **kwargs: Any) -> list[str]:
        names = listed(*args, **kwargs)
        (path / f"llm_calls.jsonl-{len(names)}").touch()
        return names

    reader = LogReader([path])
    monkeypatch.setattr(_read, "resolve", resolve_then_add)
    with pytest.raises(ConfigError, match="changed in each of 10 listings"):
        list(reader)


def test_more_files_than_may_be_open_is_an_error_naming_the_fix(tmp_path: Path) -> None:
    """Every input is held open while the reader reads: past the open-file limit, the error says so
    and how to get past it, instead of a bare "Too many open files"."""
    for n in range(40):
        (tmp_path / f"llm_calls-{n}.jsonl").write_text("")
    script = (
        "import resource, sys\n"
        "from llm_ledger._cli import main\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (32, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
        "sys.exit(main(['report', sys.argv[1]]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert "Too many open files (more files than this process may have open: raise `ulimit -n`" in done.stderr
