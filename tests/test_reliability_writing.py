"""Writing the file: whole lines only, through a full disk, a killed writer, a lock that is taken."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import llm_ledger
from llm_ledger import _config, _jsonl
from tests import warm_python
from tests.reliability_helpers import child_env, mock_client, read_lines, record_figures

pytestmark = [pytest.mark.reliability, pytest.mark.sdk_independent]  # the writer, whatever the SDK


def _child(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "tests.writing_children", *args]
    return subprocess.Popen(
        command,
        env=env or child_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _emit(handler: _jsonl.JsonlFileHandler, start: int, count: int) -> None:
    for n in range(start, start + count):
        handler.handle(logging.LogRecord("llm_monitor", logging.INFO, "", 0, {"n": n}, None, None))


class SmallDisk:
    """A file system that is full at ``size`` bytes: a real tmpfs where this process may mount one
    (CI runs as root), else the children's ``os.write`` refuses to go past ``size`` as a full disk
    does (a short write, then ENOSPC)."""

    def __init__(self, root: Path, size: int) -> None:
        self.dir = root / "disk"
        self.dir.mkdir()
        mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(self.dir)]
        try:
            mounted = subprocess.run(mount, capture_output=True).returncode == 0
        except OSError:  # no mount command
            mounted = False
        self.quota = None if mounted else root / "quota"
        if self.quota is not None:
            self.quota.write_text(str(size))

    def env(self) -> dict[str, str]:
        return child_env() if self.quota is None else child_env(LEDGER_TEST_QUOTA=str(self.quota))

    def make_room(self) -> None:
        if self.quota is None:
            subprocess.run(["mount", "-o", "remount,size=16m", str(self.dir)], check=True)
        else:
            self.quota.write_text(str(1 << 40))

    def close(self) -> None:
        if self.quota is None:
            subprocess.run(["umount", "-l", str(self.dir)], check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    disk = SmallDisk(tmp_path, 64 * 1024)
    yield disk
    disk.close()


def test_processes_sharing_a_file_through_a_full_disk_leave_only_whole_lines(small_disk: SmallDisk) -> None:
    """Two processes filling one disk never leave part of a line (a short write is taken back, the
    batch kept whole for retry), and once there is room every line is written once."""
    lines = 150  # about 150 kB a process, on a 64 kB disk
    children = [_child("fill", str(small_disk.dir), str(p), str(lines), env=small_disk.env()) for p in (0, 1)]
    for child in children:
        assert child.stdout is not None
        assert child.stdout.readline() == b"emitted\n", child.stderr.read() if child.stderr else ""
    path = small_disk.dir / "llm_calls.jsonl"
    while_full = read_lines(path)  # every line whole, the last one ended
    assert 0 < len(while_full) < 2 * lines
    small_disk.make_room()
    errors = []
    for child in children:
        _, err = child.communicate(b"go\n", timeout=60)
        assert child.returncode == 0, err.decode(errors="replace")
        errors.append(err.decode(errors="replace"))
    assert any("No space left on device" in err for err in errors)
    written = read_lines(path)
    assert sorted((line["proc"], line["i"]) for line in written) == [
        (p, i) for p in (0, 1) for i in range(lines)
    ]
    for p in (0, 1):  # each process's lines in the order it wrote them
        assert [line["i"] for line in written if line["proc"] == p] == list(range(lines))
    record_figures(
        "writing: two processes through a full disk",
        lines=2 * lines,
        whole_lines_while_full=len(while_full),
        lines_lost=2 * lines - len(written),
    )


def test_a_partial_line_a_killed_writer_left_is_cut_before_the_next_append(tmp_path: Path) -> None:
    """A writer killed (SIGKILL) half-way through a batch leaves part of a line; the next writer cuts
    it and appends whole lines after the killed one's whole lines."""
    killed = _child("killed", str(tmp_path), "100")
    _, err = killed.communicate(timeout=60)
    assert killed.returncode == -9, err.decode(errors="replace")
    path = tmp_path / "llm_calls.jsonl"
    left = path.read_bytes()
    assert not left.endswith(b"\n")  # the partial line a kill leaves
    survivors = left.count(b"\n")
    assert survivors > 100
    after = _child("append", str(tmp_path), "after", "10")
    _, err = after.communicate(timeout=60)
    assert after.returncode == 0, err.decode(errors="replace")
    assert b"ended with part of a line" in err
    written = read_lines(path)
    assert [(line["proc"], line["i"]) for line in written] == [
        *(("killed", i) for i in range(survivors)),
        *(("after", i) for i in range(10)),
    ]


def test_a_call_never_waits_for_another_process_writing_the_file(tmp_path: Path) -> None:
    """While another writer holds the file's lock, the call that fills a batch returns at once and
    the writer thread writes the batch, in order, once the lock is free."""
    path = tmp_path / "llm_calls.jsonl"
    handler = _jsonl.JsonlFileHandler(path)
    other = os.open(path, os.O_RDWR)  # another writer's descriptor: its lock excludes this one's
    try:
        fcntl.flock(other, fcntl.LOCK_EX)
        started = time.monotonic()
        _emit(handler, 0, _jsonl._BATCH_LINES)  # the last line fills the batch
        assert time.monotonic() - started < 0.5
        assert path.read_bytes() == b""
        fcntl.flock(other, fcntl.LOCK_UN)
        handler.flush()
    finally:
        os.close(other)
        handler.close()
    assert [line["n"] for line in read_lines(path)] == list(range(_jsonl._BATCH_LINES))


def test_a_file_system_without_locks_is_written_without_and_reported_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, internal_log: pytest.LogCaptureFixture
) -> None:
    """Where flock fails (ENOLCK on some NFS mounts) lines are still written, and that is reported once."""

    def flock(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(_jsonl, "fcntl", types.SimpleNamespace(**{**vars(fcntl), "flock": flock}))
    path = tmp_path / "llm_calls.jsonl"
    handler = _jsonl.JsonlFileHandler(path)
    try:
        for batch in range(3):
            _emit(handler, batch * 10, 10)
            handler.flush()
    finally:
        handler.close()
    assert [line["n"] for line in read_lines(path)] == list(range(30))
    reports = [r.getMessage() for r in internal_log.records if "without the lock" in r.getMessage()]
    assert len(reports) == 1 and "No locks available" in reports[0]


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")  # 3.12+
def test_a_forked_child_takes_the_lock_apart_from_its_parent(tmp_path: Path) -> None:
    """A forked child opens the file anew: a descriptor shared with its parent would share the
    parent's lock, and the two could write, or cut back, at once."""
    path = tmp_path / "llm_calls.jsonl"
    handler = _jsonl.JsonlFileHandler(path)
    try:
        assert handler._fd is not None
        fcntl.flock(handler._fd, fcntl.LOCK_EX)  # the parent is writing
        pid = os.fork()
        if pid == 0:  # the child: its batch must wait for the parent's write
            try:
                _emit(handler, 0, _jsonl._BATCH_LINES)
                os._exit(0 if path.read_bytes() == b"" else 1)
            finally:
                os._exit(2)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        handler.close()


def _returns_within(seconds: float, function: Callable[[], object]) -> bool:
    """Whether ``function()`` returns within ``seconds`` (run on a thread, so a hang fails the test)."""
    thread = threading.Thread(target=function, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive()


def _read_until_ended(fifo: Path, thread: threading.Thread) -> None:
    """Read ``fifo`` until ``thread`` ends: a writer blocked opening it or writing to it goes on."""
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        while thread.is_alive():
            try:
                os.read(fd, 1 << 16)
            except BlockingIOError:
                pass
            thread.join(0.05)
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("kind", "named"),
    [("fifo", "FIFO (named pipe)"), ("directory", "directory"), ("device", "character device")],
    ids=["fifo", "directory", "device"],
)
def test_a_log_path_that_is_not_a_regular_file_is_refused_at_configure(
    tmp_path: Path, kind: str, named: str, fresh_config: None
) -> None:
    """configure() refuses a FIFO (which would block the call writing to it), a directory or a device
    (which would keep no record) at the log path, naming the path and the fix."""
    path = tmp_path / "llm_calls.jsonl"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        path.symlink_to("/dev/null")
    refused: list[BaseException] = []

    def configure() -> None:
        try:
            llm_ledger.configure(log_dir=tmp_path)
        except llm_ledger.ConfigError as exc:
            refused.append(exc)

    assert _returns_within(5, configure)
    [error] = refused
    assert f"{str(path)!r} is a {named}, not a regular file" in str(error)
    assert "remove it" in str(error) and "LLM_LEDGER_LOG_DIR=off" in str(error)
    assert _config._settings is None  # nothing changed


def test_a_log_file_replaced_by_a_fifo_never_blocks_a_call(
    tmp_path: Path,
    fresh_config: None,
    internal_log: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A FIFO put at the log path while calls run: calls and flush() return at once, the failure is
    reported, and every record is written once a regular file can be made there again."""
    monkeypatch.setattr(_jsonl, "_last_failure", {})  # write failures are reported once a minute
    llm_ledger.configure(log_dir=tmp_path)
    path, rotated = tmp_path / "llm_calls.jsonl", tmp_path / "llm_calls.jsonl.1"
    messages: Any = [{"role": "user", "content": "hi"}]
    calls = _jsonl._BATCH_LINES + 100  # the call that fills a batch writes it
    with mock_client() as raw:
        client = llm_ledger.instrument(raw)
        for _ in range(10):
            client.chat.completions.create(model="gpt-4o-mini", messages=messages)
        llm_ledger.flush()
        os.rename(path, rotated)
        os.mkfifo(path)

        stop = threading.Event()

        def call_and_flush() -> None:
            for _ in range(calls):
                if stop.is_set():
                    return
                client.chat.completions.create(model="gpt-4o-mini", messages=messages)
            llm_ledger.flush()

        thread = threading.Thread(target=call_and_flush, daemon=True)
        thread.start()
        thread.join(30)  # a blocked call waits for a reader forever: far longer than a slow machine takes
        blocked = thread.is_alive()
        if blocked:  # stop the calls before failing: a thread still calling while pytest reports the
            stop.set()  # failure can crash the worker (CPython 3.11.7, gh-106905)
            _read_until_ended(path, thread)
        assert not blocked, "a call or flush() blocked on the FIFO at the log path"
        reports = [r.getMessage() for r in internal_log.records if r.name == "llm_ledger.internal"]
        assert any("FIFO (named pipe), not a regular file" in m and "kept for retry" in m for m in reports)
        assert len(read_lines(rotated)) == 10
        os.remove(path)
        llm_ledger.flush()
    assert len(read_lines(path)) == calls


_LOGGING_CONFIGURED_AFTER = """
import json, logging.config, os, sys, threading, time
import openai, llm_ledger
from llm_ledger import _jsonl
# no batch comes due during the calls, on a loaded host neither: the call writing a due batch waits for
# that slow write once (docs/RELIABILITY.md), which is not what this test is about. Before configure():
# the writer thread's first wait starts there
_jsonl._INTERVAL_S = 3600.0
llm_ledger.configure(log_dir=sys.argv[1])
# as Django's setup() configures logging after a configure() in settings: it closes every handler alive
logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
real_write = os.write
calls_done, stalled_until = threading.Event(), time.monotonic() + float(sys.argv[3])

def stalled_write(fd, data):  # a stalled file system (an NFS mount) under the log, until the calls end
    if fd > 2:
        calls_done.wait(max(0.0, stalled_until - time.monotonic()))
    return real_write(fd, data)

os.write = stalled_write
took = []
with openai.OpenAI(api_key="sk-test", base_url=sys.argv[2], max_retries=0) as raw:
    client = llm_ledger.instrument(raw)
    for _ in range(4):
        started = time.monotonic()
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        took.append(time.monotonic() - started)
calls_done.set()
print(json.dumps(took))
"""


def test_logging_configured_after_configure_leaves_the_file_written_in_batches(
    tmp_path: Path, fake_openai: Any
) -> None:
    """logging.config.dictConfig() run after configure() (Django's setup() runs one) closes every
    logging handler alive, the ledger's file included: its calls must not then each write their own
    record (open, lock, write, close), waiting on a slow file system, but queue it as before; every
    record is still written at exit."""
    stall = 60  # a call that wrote its record would wait this long; a call on a loaded host takes seconds
    done = warm_python.run(
        [sys.executable, "-c", _LOGGING_CONFIGURED_AFTER, str(tmp_path), fake_openai.base_url, str(stall)],
        env=child_env(), capture_output=True, text=True, timeout=stall * 2,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    took = json.loads(done.stdout)
    assert max(took) < stall / 2, took  # no call waited for a write
    assert [line["event"] for line in read_lines(tmp_path / "llm_calls.jsonl")] == ["llm_api_call"] * 4
