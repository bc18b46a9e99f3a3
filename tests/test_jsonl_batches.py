"""Who writes the JSONL file, and when: callers write full batches, the writer thread what they leave."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llm_ledger import _jsonl

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _wait_for(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return bool(condition())


@pytest.fixture
def interval(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Set the batch interval (a writer thread waiting already keeps its wait)."""

    def set_interval(seconds: float) -> None:
        monkeypatch.setattr(_jsonl, "_INTERVAL_S", seconds)

    return set_interval


@pytest.fixture
def handler(tmp_path: Path, interval: Any) -> Iterator[Callable[[], _jsonl.JsonlFileHandler]]:
    """Makes the handler (after ``interval``), closed at the end."""
    made: list[_jsonl.JsonlFileHandler] = []

    def make() -> _jsonl.JsonlFileHandler:
        made.append(_jsonl.JsonlFileHandler(tmp_path / "llm_calls.jsonl"))
        return made[-1]

    yield make
    for h in made:
        h.close()


def _emit(handler: _jsonl.JsonlFileHandler, n: int | str) -> None:
    message = {"event": "llm_api_call", "n": n}
    handler.handle(logging.LogRecord("llm_monitor", logging.INFO, "", 0, message, None, None))


def _count_writer_drains(h: _jsonl.JsonlFileHandler) -> Callable[[], int]:
    """Count the batches ``h``'s writer thread writes from now on; returns the count's reader."""
    drains = 0
    drain = h._drain

    def counted(on_caller: bool = False) -> bool:
        nonlocal drains
        if threading.current_thread() is h._thread:
            drains += 1
        return drain(on_caller)

    h._drain = counted  # type: ignore[method-assign]
    return lambda: drains


def test_the_call_that_fills_a_batch_writes_it_at_once(interval: Any, handler: Any, tmp_path: Path) -> None:
    interval(60.0)  # the writer thread would wait a minute
    h = handler()
    for n in range(_jsonl._BATCH_LINES - 1):
        _emit(h, n)
    assert (tmp_path / "llm_calls.jsonl").read_text() == ""
    _emit(h, _jsonl._BATCH_LINES - 1)
    assert [line["n"] for line in _lines(tmp_path / "llm_calls.jsonl")] == list(range(_jsonl._BATCH_LINES))


def test_the_call_that_queues_1_mib_writes_the_batch(interval: Any, handler: Any, tmp_path: Path) -> None:
    """Large records (content capture) make batches of fewer lines: what waits in memory is bounded."""
    interval(60.0)
    h = handler()
    messages = [{"event": "llm_api_call", "n": n, "pad": "x" * 4000} for n in range(_jsonl._BATCH_LINES)]
    sizes = [len(json.dumps(m, separators=(",", ":"))) + 1 for m in messages]
    due = next(n for n in range(len(sizes)) if sum(sizes[: n + 1]) >= _jsonl._BATCH_BYTES)  # its line
    for message in messages[:due]:
        h.handle(logging.LogRecord("llm_monitor", logging.INFO, "", 0, message, None, None))
    assert (tmp_path / "llm_calls.jsonl").read_text() == ""
    h.handle(logging.LogRecord("llm_monitor", logging.INFO, "", 0, messages[due], None, None))
    assert [line["n"] for line in _lines(tmp_path / "llm_calls.jsonl")] == list(range(due + 1))
    assert due < _jsonl._BATCH_LINES - 1


def test_a_line_that_waited_an_interval_is_written_by_the_next_call(
    interval: Any, handler: Any, tmp_path: Path
) -> None:
    interval(60.0)
    h = handler()
    # its writer thread is waiting (a minute) before the interval shrinks: on a loaded machine a thread
    # that had not started yet would wait the short interval and write the line itself
    assert _wait_for(lambda: h._wake._cond._waiters, 10)
    _emit(h, 0)
    interval(0.05)
    time.sleep(0.1)
    assert (tmp_path / "llm_calls.jsonl").read_text() == ""
    _emit(h, 1)
    assert [line["n"] for line in _lines(tmp_path / "llm_calls.jsonl")] == [0, 1]


def test_the_writer_thread_writes_what_callers_leave_when_they_stop(
    interval: Any, handler: Any, tmp_path: Path
) -> None:
    interval(0.05)
    h = handler()
    for n in range(100):  # calls for about four intervals, then none
        _emit(h, n)
        time.sleep(0.002)
    assert _wait_for(lambda: len(_lines(tmp_path / "llm_calls.jsonl")) == 100, timeout=2 * 0.05 + 1.0)
    assert [line["n"] for line in _lines(tmp_path / "llm_calls.jsonl")] == list(range(100))


def test_the_writer_thread_stays_asleep_while_callers_keep_up(
    interval: Any, handler: Any, tmp_path: Path
) -> None:
    """Each wake-up of the writer thread costs a busy application CPU (it waits for the GIL)."""
    interval(0.05)
    h = handler()
    writer_drains = _count_writer_drains(h)
    deadline = time.monotonic() + 1.0
    n = 0
    while time.monotonic() < deadline:
        _emit(h, n)
        n += 1
        time.sleep(0.0005)
    h.flush()  # the flush is the writer thread's one drain
    assert writer_drains() <= 3  # it would be 10 if it woke to write every other interval
    assert [line["n"] for line in _lines(tmp_path / "llm_calls.jsonl")] == list(range(n))


def test_an_idle_writer_thread_sleeps_without_a_timer_and_wakes_for_a_line(
    interval: Any, handler: Any, tmp_path: Path
) -> None:
    interval(0.02)
    h = handler()
    _emit(h, 0)
    assert _wait_for(lambda: len(_lines(tmp_path / "llm_calls.jsonl")) == 1, timeout=1.0)
    assert _wait_for(lambda: not h._queued.is_set(), timeout=1.0)  # nothing queued: no timer
    _emit(h, 1)
    assert _wait_for(lambda: len(_lines(tmp_path / "llm_calls.jsonl")) == 2, timeout=1.0)


def test_lines_queued_while_writes_are_slow_are_written_though_a_race_left_the_writer_idle(
    interval: Any, handler: Any, tmp_path: Path
) -> None:
    """While writes are slow the writer thread writes every batch. Had it taken a line between its
    caller queuing it and reading when the batch began, that caller began a batch on an empty queue
    and the writer went idle: the next lines waited for flush() or exit (past the SIGKILL bound).
    This sets up the state that race leaves; the lines are written within the interval."""
    interval(0.05)
    h = handler()
    _emit(h, 0)
    h.flush()
    assert _wait_for(lambda: not h._queued.is_set(), 5)  # the writer thread idle, the queue empty
    h._callers_write = False  # as a slow write leaves it
    h._started = time.monotonic()  # the batch the race began on the empty queue
    _emit(h, 1)
    time.sleep(0.06)
    _emit(h, 2)  # its batch is due
    assert _wait_for(lambda: len(_lines(tmp_path / "llm_calls.jsonl")) == 3, 5)


def test_a_slow_write_leaves_writing_to_the_writer_thread_until_writes_are_fast_again(
    interval: Any,
    handler: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    internal_log: pytest.LogCaptureFixture,
) -> None:
    """A slow file system (NFS, throttled dirty pages, a paused host) stalls the call that writes once;
    while writes stay slow the writer thread does them, and once one is fast calls write again."""
    interval(60.0)
    h = handler()
    real_write = os.write
    slow = [True]
    writers: list[threading.Thread] = []

    def write(fd: int, data: Any) -> int:
        writers.append(threading.current_thread())
        if slow[0]:
            time.sleep(_jsonl._SLOW_WRITE_S + 0.05)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    batch = _jsonl._BATCH_LINES

    def fill(batch_number: int) -> None:
        for n in range(batch_number * batch, (batch_number + 1) * batch):
            _emit(h, n)

    fill(0)  # the call that fills it writes it: slowly
    fill(1)  # calls leave it queued; flush() has the writer thread write it: slowly still
    h.flush()
    slow[0] = False
    fill(2)
    h.flush()  # the writer thread again: fast
    fill(3)  # the call that fills it writes it again
    me = threading.current_thread()
    assert writers == [me, h._thread, h._thread, me]
    assert any(
        "writer thread writes it until writes are fast again" in r.getMessage() for r in internal_log.records
    )
    written = [line["n"] for line in _lines(tmp_path / "llm_calls.jsonl")]
    assert written == list(range(4 * batch))


def test_lines_queued_behind_a_hung_write_are_bounded_the_oldest_dropped_and_reported(
    interval: Any,
    handler: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    internal_log: pytest.LogCaptureFixture,
) -> None:
    """Behind a write that hangs (an NFS server that stopped answering) the queue is bounded as while the
    disk refuses writes: past the cap the oldest lines are dropped, counted and reported, not kept until
    the process runs out of memory; once the write returns the newest lines are written whole, and the
    ledger says once that writing resumed and how many lines the hang cost."""
    interval(60.0)  # the writer thread stays out of it
    cap, slow_s = 1000, _jsonl._SLOW_WRITE_S
    monkeypatch.setattr(_jsonl, "_MAX_PENDING_LINES", cap)
    h = handler()
    answers, hung = threading.Event(), threading.Event()
    real_write = os.write

    def write(fd: int, data: Any) -> int:
        if not answers.is_set():
            hung.set()
            answers.wait(30)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    batch = _jsonl._BATCH_LINES

    def first_batch() -> None:  # one thread's call writes it, and hangs; the others' calls go on
        for n in range(batch):
            _emit(h, n)

    stuck = threading.Thread(target=first_batch)
    stuck.start()
    try:
        assert hung.wait(10)
        monkeypatch.setattr(_jsonl, "_SLOW_WRITE_S", 60.0)  # a write under way, not yet slow: all kept
        for n in range(batch, batch + 3 * cap):
            _emit(h, n)
        assert len(h._queue) == 3 * cap
        monkeypatch.setattr(_jsonl, "_SLOW_WRITE_S", slow_s)
        time.sleep(slow_s)  # the write has now hung longer than a slow write takes
        _emit(h, batch + 3 * cap)
        assert len(h._queue) == cap
    finally:
        answers.set()
        stuck.join(10)
    h.flush()
    reports = [r.getMessage() for r in internal_log.records if r.name == "llm_ledger.internal"]
    assert any(f"{cap} records queued behind it, {2 * cap + 1} dropped so far" in m for m in reports)
    resumed = [m for m in reports if "resumed" in m]
    assert len(resumed) == 1
    assert "the write that hung returned after" in resumed[0]
    assert f"{2 * cap + 1} records queued behind it were dropped while it hung" in resumed[0]
    text = (tmp_path / "llm_calls.jsonl").read_bytes()
    assert text.endswith(b"\n")
    written = [line["n"] for line in _lines(tmp_path / "llm_calls.jsonl")]
    assert written == [*range(batch), *range(batch + 2 * cap + 1, batch + 3 * cap + 1)]


def test_lines_dropped_behind_a_hung_write_that_fails_are_all_counted(
    interval: Any,
    handler: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    internal_log: pytest.LogCaptureFixture,
) -> None:
    """A write that hangs then fails (the NFS server answers: disk full) drops the oldest lines it kept
    while calls behind it drop the oldest queued ones: both counts reach the "dropped so far" reported,
    however the two threads interleave, so that what was written and what is reported dropped add up
    to every record; and the ledger says once what the hang cost."""
    interval(60.0)  # the writer thread stays out of it
    cap = 100
    monkeypatch.setattr(_jsonl, "_MAX_PENDING_LINES", cap)
    h = handler()
    answers, hung, dropping, dropped = (threading.Event() for _ in range(4))
    real_write, real_drop = os.write, _jsonl._drop_oldest

    def write(fd: int, data: Any) -> int:
        if not answers.is_set():
            hung.set()
            answers.wait(30)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    def drop_oldest(lines: bytearray, keep: int) -> int:  # the failed write's own drop, slow enough that
        dropping.set()  # calls behind it drop queued lines meanwhile
        dropped.wait(30)
        return real_drop(lines, keep)

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(_jsonl, "_drop_oldest", drop_oldest)
    batch, emitted = _jsonl._BATCH_LINES, 0

    def emit(n: int) -> None:
        nonlocal emitted
        for _ in range(n):
            _emit(h, emitted)
            emitted += 1

    stuck = threading.Thread(target=emit, args=(batch,))  # one call writes the first batch, and hangs
    stuck.start()
    try:
        assert hung.wait(10)
        time.sleep(_jsonl._SLOW_WRITE_S + 0.05)  # hung longer than a slow write takes
        emit(3 * batch)  # calls behind it drop the oldest queued lines
        answers.set()  # the write fails: the failed batch's oldest lines are dropped too...
        assert dropping.wait(10)
        lost = h._lost
        emit(batch)  # ... while calls behind it drop queued ones again
        assert h._lost > lost
    finally:
        answers.set()
        dropped.set()
        stuck.join(10)
    h.flush()
    written = [line["n"] for line in _lines(tmp_path / "llm_calls.jsonl")]
    reports = [r.getMessage() for r in internal_log.records if r.name == "llm_ledger.internal"]
    last = [m for m in reports if "dropped so far" in m][-1]
    assert last.endswith(f"{emitted - len(written)} dropped so far"), reports
    (said,) = [m for m in reports if "hung failed" in m]
    assert "records queued behind it were dropped while it hung" in said
    assert written == sorted(written)  # the newest, in order


def test_a_burst_beyond_the_cap_is_never_dropped_while_writes_work(
    interval: Any, handler: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cap applies only behind a write that hangs: a burst larger than it, queued for the writer
    thread (one write was slow, so calls leave writing to it) while writes work, is written whole."""
    interval(60.0)
    cap = 100
    monkeypatch.setattr(_jsonl, "_MAX_PENDING_LINES", cap)
    h = handler()
    real_write = os.write
    slow = [True]

    def write(fd: int, data: Any) -> int:
        if slow[0]:
            slow[0] = False
            time.sleep(_jsonl._SLOW_WRITE_S + 0.05)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    total = _jsonl._BATCH_LINES + 20 * cap
    for n in range(total):  # the first batch written slowly by its call, the rest queued
        _emit(h, n)
    assert len(h._queue) > cap
    h.flush()
    assert [line["n"] for line in _lines(tmp_path / "llm_calls.jsonl")] == list(range(total))


@pytest.mark.parametrize("when", ["before the write", "after the write"])
def test_an_interrupt_while_a_call_writes_its_batch_loses_nothing(
    interval: Any, handler: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """Ctrl-C reaches the caller as it would without the ledger; the batch it interrupted is written
    once, in order, whether the interrupt came before its write or once the write had returned."""
    interval(60.0)
    h = handler()
    real_write = os.write
    interrupted = False

    def write(fd: int, data: Any) -> int:
        nonlocal interrupted
        if interrupted:
            return real_write(fd, data)
        interrupted = True
        written = real_write(fd, data) if when == "after the write" else 0
        raise KeyboardInterrupt(written)  # as a signal handler raises between two bytecodes

    monkeypatch.setattr(os, "write", write)
    for n in range(_jsonl._BATCH_LINES - 1):
        _emit(h, n)
    with pytest.raises(KeyboardInterrupt):
        _emit(h, _jsonl._BATCH_LINES - 1)  # fills the batch: this call writes it
    _emit(h, "after")
    h.flush()
    written = [line["n"] for line in _lines(tmp_path / "llm_calls.jsonl")]
    assert written == [*range(_jsonl._BATCH_LINES), "after"]


def test_flush_writes_on_the_calling_thread(
    interval: Any, handler: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flushing thread waits anyway: it writes, and the writer thread is not woken."""
    interval(60.0)
    h = handler()
    real_write = os.write
    writers: list[threading.Thread] = []

    def write(fd: int, data: Any) -> int:
        writers.append(threading.current_thread())
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    for n in range(10):
        _emit(h, n)
    h.flush()
    assert writers == [threading.current_thread()]
    assert [line["n"] for line in _lines(tmp_path / "llm_calls.jsonl")] == list(range(10))


def test_a_flush_while_another_thread_writes_waits_for_its_own_lines(
    interval: Any, handler: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    interval(60.0)
    h = handler()
    real_write = os.write
    in_write, release = threading.Event(), threading.Event()

    def write(fd: int, data: Any) -> int:
        if threading.current_thread().name == "batch-writer":
            in_write.set()
            release.wait(5)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)

    def fill_a_batch() -> None:
        for n in range(_jsonl._BATCH_LINES):
            _emit(h, n)

    batch = threading.Thread(target=fill_a_batch, name="batch-writer")
    batch.start()
    assert in_write.wait(5)  # that thread is writing its batch
    _emit(h, "mine")
    flushed = threading.Thread(target=h.flush)
    flushed.start()
    flushed.join(0.2)
    assert flushed.is_alive()  # its line waits behind the batch being written
    release.set()
    flushed.join(5)
    batch.join(5)
    assert not flushed.is_alive()
    written = [line["n"] for line in _lines(tmp_path / "llm_calls.jsonl")]
    assert written == [*range(_jsonl._BATCH_LINES), "mine"]


def test_callers_that_flush_keep_the_writer_thread_asleep(
    interval: Any, handler: Any, tmp_path: Path
) -> None:
    """A flush is a caller writing: the writer thread leaves the lines queued after it to the callers."""
    interval(0.05)
    h = handler()
    writer_drains = _count_writer_drains(h)
    deadline = time.monotonic() + 1.0
    n = 0
    while time.monotonic() < deadline:
        _emit(h, n)
        n += 1
        time.sleep(0.001)
        if n % 10 == 0:
            h.flush()
    h.flush()
    assert writer_drains() <= 2  # about 10 if it took each flush's silence for callers that stopped
    assert [line["n"] for line in _lines(tmp_path / "llm_calls.jsonl")] == list(range(n))


def test_a_file_system_that_hangs_writes_delays_exit_but_never_stops_it(
    interval: Any, handler: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At exit (the ledger's flush, then logging's close), each wait on a hung write is bounded."""
    interval(60.0)
    monkeypatch.setattr(_jsonl, "_EXIT_TIMEOUT_S", 0.05)
    h = handler()
    answers = threading.Event()  # a hard-mounted NFS server that stopped answering
    real_write = os.write

    def write(fd: int, data: Any) -> int:
        answers.wait(10)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    _emit(h, 0)

    def exit_() -> None:
        _jsonl._flush_at_exit()
        h.close()

    exiting = threading.Thread(target=exit_)
    exiting.start()
    exiting.join(5)
    stuck = exiting.is_alive()
    answers.set()
    exiting.join(5)
    assert not stuck


def test_close_waits_for_a_hung_write_once_not_at_each_of_its_steps(
    interval: Any, handler: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() on a hung write (logging's, at exit) waits at most its one bounded wait, as
    docs/RELIABILITY.md says, not once for the flush, again for the writer thread, and again for
    the lock."""
    interval(0.05)
    monkeypatch.setattr(_jsonl, "_EXIT_TIMEOUT_S", 1.0)
    h = handler()
    answers = threading.Event()  # a hard-mounted NFS server that stopped answering
    real_write = os.write

    def write(fd: int, data: Any) -> int:
        answers.wait(30)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    _emit(h, 0)  # left to the writer thread (two intervals), whose write hangs
    assert _wait_for(lambda: not h._queue, timeout=5)
    started = time.monotonic()
    try:
        h.close()
        took = time.monotonic() - started
    finally:
        answers.set()
    assert took < 2 * _jsonl._EXIT_TIMEOUT_S


def test_a_write_that_outlasts_close_lands_in_the_log_never_in_what_reuses_its_descriptor(
    interval: Any, handler: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() gives up waiting on a hung write (see above), but leaves the file open to it: closed
    under it, the descriptor's number goes to the next file or socket the process opens, and the late
    write lands there (a record sent down another test's HTTP connection, read by the server as a
    request line: "Server disconnected without sending a response"). The writer closes it after."""
    interval(60.0)
    monkeypatch.setattr(_jsonl, "_EXIT_TIMEOUT_S", 0.05)
    h = handler()
    answers = threading.Event()
    real_write = os.write

    def write(fd: int, data: Any) -> int:
        if threading.current_thread() is h._thread:
            answers.wait(10)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    _emit(h, 0)
    number = h._fd
    assert number is not None
    h.close()  # its waits end, the writer thread's write still hung
    mine, theirs = socket.socketpair()  # another part of the application, e.g. an HTTP connection
    with mine, theirs:
        # the lowest free number from the log's: the log's own once it is closed
        taken = fcntl.fcntl(mine.fileno(), fcntl.F_DUPFD, number)
        try:
            answers.set()
            h._thread.join(10)
            assert not h._thread.is_alive()
            theirs.setblocking(False)
            with pytest.raises(BlockingIOError):  # nothing came down the socket
                theirs.recv(1024)
        finally:
            os.close(taken)
    assert [line["n"] for line in _lines(tmp_path / "llm_calls.jsonl")] == [0]
    assert h._fd is None  # closed by the writer once its write was done
