"""Child processes for ``tests/test_reliability_writing.py``: ``python -m tests.writing_children KIND ...``.

Each child is a real process writing the ledger's file through ``configure()``, as an application
would; the test in the parent kills it, fills its disk, or replaces its file.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llm_ledger._jsonl import JsonlFileHandler

PAD = "x" * 1000  # about 1 kB a line: a small disk fills in a few hundred lines
# a ``while-writing`` child's bound on each wait of its exit (the ledger's is 10 s): a wait for the lock
# the signal interrupted would take this long, far more than an exit on a loaded machine takes
WHILE_WRITING_EXIT_TIMEOUT_S = 60.0


def _line(**fields: Any) -> None:
    """One record through the default monitor's sinks (its JSONL file first), as a call's."""
    import llm_ledger

    record: Any = {"level": "INFO", "event": "llm_api_call", **fields}
    llm_ledger.get_monitor()._emit(record)


def _simulate_small_disk(quota: Path) -> None:
    """Where no tmpfs can be mounted: writes past the size in ``quota`` fail as on a full disk
    (a short write, then ENOSPC)."""
    real_write = os.write

    def write(fd: int, data: Any) -> int:
        room = int(quota.read_text()) - os.fstat(fd).st_size
        if room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data[:room])

    os.write = write


def fill(log_dir: str, proc: int, lines: int) -> None:
    """Write ``lines`` lines of about 1 kB to a disk too small for them, then, told that there is
    room again, flush and exit."""
    import llm_ledger

    quota = os.environ.get("LEDGER_TEST_QUOTA")
    if quota:
        _simulate_small_disk(Path(quota))
    llm_ledger.configure(log_dir=log_dir)
    for i in range(lines):
        _line(proc=proc, i=i, pad=PAD)
        if i % 20 == 19:
            llm_ledger.flush()
    llm_ledger.flush()
    print("emitted", flush=True)
    sys.stdin.readline()  # the parent made room
    llm_ledger.flush()


def killed_mid_write(log_dir: str, lines: int) -> None:
    """Write ``lines`` lines, then die by SIGKILL half-way through writing the next batch."""
    import llm_ledger
    from llm_ledger import _jsonl

    llm_ledger.configure(log_dir=log_dir)
    for i in range(lines):
        _line(proc="killed", i=i)
    llm_ledger.flush()
    real_write = os.write

    def write(fd: int, data: Any) -> int:
        real_write(fd, data[: len(data) // 2 + 10])  # ten bytes into a line
        os.kill(os.getpid(), signal.SIGKILL)  # the kernel ends the process within the write
        time.sleep(10)
        raise AssertionError("not killed")

    os.write = write
    for i in range(lines, lines + _jsonl._BATCH_LINES):
        _line(proc="killed", i=i)
    raise AssertionError("not killed")


def append(log_dir: str, proc: str, lines: int) -> None:
    """Write ``lines`` lines and exit."""
    import llm_ledger

    llm_ledger.configure(log_dir=log_dir)
    for i in range(lines):
        _line(proc=proc, i=i)


def _calls_in_lenses(lenses: int, calls: int, start: int = 0) -> None:
    """``lenses`` x ``calls`` chat calls through a real client (its HTTP answered in process)."""
    import llm_ledger
    from tests.reliability_helpers import mock_client

    client = llm_ledger.instrument(mock_client())
    messages: Any = [{"role": "user", "content": "count me"}]
    for lens in range(lenses):
        with llm_ledger.lens(f"lens-{lens}"):
            for i in range(start + lens * calls, start + (lens + 1) * calls):
                with llm_ledger.track_llm_call(i=i):
                    client.chat.completions.create(model="gpt-4o-mini", messages=messages)


def _app_handler(signum: int, frame: object) -> None:
    print("the application's handler ran", flush=True)
    sys.exit(0)


def _app_flushing_handler(signum: int, frame: object) -> None:
    import llm_ledger

    llm_ledger.flush()  # as docs/RELIABILITY.md asks of a handler set after configure()
    _app_handler(signum, frame)


def _server_handler(signum: int, frame: object) -> None:
    _SIGNALLED.append(signum)  # a server's: stop taking requests, finish those in flight, then exit


_SIGNALLED: list[int] = []


def stopped(log_dir: str, how: str) -> None:
    """Make 200 calls in 20 lenses, say so, then wait for work as a service does, until stopped.

    ``how``: ``default`` (configure() as it is), ``many`` (1,000 calls in 100 lenses), ``off``
    (handle_sigterm=False), ``app-before`` / ``app-after`` (the application's own SIGTERM handler,
    installed before / after configure()), ``thread-first`` (configure() ran in a worker thread
    before the main thread called it with the same settings), ``while-writing`` (the signal comes
    while the main thread writes a batch, holding its lock), ``forked`` (the calls are made in a
    child forked by multiprocessing, which is then terminated), ``hung`` (once the calls return,
    every write of the file hangs, as on an NFS mount whose server stopped answering), ``server``
    (as a uvicorn worker: its SIGTERM handler, installed before configure(), lets the calls in flight
    finish, then restores the default action and raises SIGTERM again).
    """
    import llm_ledger
    from llm_ledger import _jsonl

    writing = how.endswith("while-writing")
    if how.startswith("app-before"):
        signal.signal(signal.SIGTERM, _app_handler)
    if how == "server":
        signal.signal(signal.SIGTERM, _server_handler)
    if how == "hung":
        # nothing written before the signal: the lines wait for the writes that hang
        _jsonl._INTERVAL_S = _jsonl._SLOW_WRITE_S = 3600.0
        _jsonl._EXIT_TIMEOUT_S = 0.5
    if writing:
        # the main thread must write the batch: on a loaded machine a slow write would hand writing
        # to the writer thread, or the writer would take the lines queued when its first wait (two
        # intervals from configure()) ended, leaving fewer than a batch, and the signal would never
        # come (the test would wait for a process that was never signalled). Set before configure():
        # the writer thread's first wait starts there.
        _jsonl._INTERVAL_S = _jsonl._SLOW_WRITE_S = 3600.0
        _jsonl._EXIT_TIMEOUT_S = WHILE_WRITING_EXIT_TIMEOUT_S
    if how == "thread-first":  # configure() first ran in a worker thread, which cannot install a handler
        import threading

        worker = threading.Thread(target=llm_ledger.configure, kwargs={"log_dir": log_dir})
        worker.start()
        worker.join()
    if how == "off":
        llm_ledger.configure(log_dir=log_dir, handle_sigterm=False)
    else:
        llm_ledger.configure(log_dir=log_dir)
    if how.startswith("app-after"):
        signal.signal(signal.SIGTERM, _app_flushing_handler if "flush" in how else _app_handler)
    if writing:
        _signal_while_writing()
    if how.startswith("forked"):
        _forked_and_terminated(waiting=how == "forked-waiting")
        return
    print("ours" if signal.getsignal(signal.SIGTERM) is _jsonl._on_sigterm else "not ours", flush=True)
    if how == "many":
        writer_wrote = _watch_the_writer_thread()
    _calls_in_lenses(100 if how == "many" else 60 if writing else 20, 10)
    if how == "hung":
        import threading

        never = threading.Event()
        os.write = lambda fd, data: never.wait() and 0
    print("returned", flush=True)
    if how == "server":
        while not _SIGNALLED:
            time.sleep(0.01)
        _calls_in_lenses(1, 10, start=200)  # the requests in flight at the signal end after it
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)
    if how == "many":  # whose threads wrote: the calls' own throughout, or (a write was slow, or the
        # calls paused for two intervals on a loaded machine) the writer thread too
        callers = _config_handler()._callers_write and not writer_wrote
        print("callers write" if callers else "the writer thread writes", flush=True)
    while True:
        time.sleep(1)


def _watch_the_writer_thread() -> list[bool]:
    """A list that gains an item each time the writer thread (not a call) takes lines to write."""
    handler = _config_handler()
    drain, wrote = handler._drain, []

    def watched(on_caller: bool = False) -> bool:
        if not on_caller and (handler._queue or handler._pending):
            wrote.append(True)
        return drain(on_caller)

    handler._drain = watched  # type: ignore[method-assign]
    return wrote


def _config_handler() -> JsonlFileHandler:
    from llm_ledger import _config

    handler = _config._handler
    assert handler is not None
    return handler


def _signal_while_writing() -> None:
    """SIGTERM this process as its main thread starts writing a batch (with the lock held)."""
    handler = _config_handler()
    write = handler._write

    def signalled(wait: bool = True) -> bool:
        import threading

        if threading.current_thread() is threading.main_thread():
            handler._write = write  # type: ignore[method-assign]
            queued = handler.path.read_bytes().count(b"\n") + handler._pending.count(b"\n")
            print(f"queued {queued + len(handler._queue)}", flush=True)
            os.kill(os.getpid(), signal.SIGTERM)  # its Python handler runs at the next bytecode: here
        return write(wait)

    handler._write = signalled  # type: ignore[method-assign]


def _forked_and_terminated(waiting: bool) -> None:
    import multiprocessing

    context = multiprocessing.get_context("fork")
    returned, held = context.Event(), context.Lock()
    held.acquire()  # what an idle pool worker waits on: its task queue's lock, held by another process
    child = context.Process(target=_calls_then_wait, args=(returned, held if waiting else None))
    child.start()
    assert returned.wait(60)
    child.terminate()  # SIGTERM
    child.join(10 if waiting else 60)
    print(f"child exit code {child.exitcode}", flush=True)
    if child.exitcode is None:  # a child that cannot die holds this process's pipes open for good
        child.kill()
        child.join()


def _calls_then_wait(returned: Any, held: Any) -> None:
    _calls_in_lenses(20, 10)
    if held is None:
        returned.set()
        time.sleep(60)
        return
    # The signal lands before the main thread waits, and so cannot interrupt its wait: made certain
    # here by another thread taking it (a signal handler written in Python runs on the main thread
    # only, once that thread runs Python again), and met by chance when a loaded machine preempts a
    # pool worker between its last check for signals and its wait on the task queue's lock.
    import threading

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=threading.Event().wait, daemon=True).start()
    returned.set()
    held.acquire()


if __name__ == "__main__":
    kind, args = sys.argv[1], sys.argv[2:]
    if kind == "fill":
        fill(args[0], int(args[1]), int(args[2]))
    elif kind == "killed":
        killed_mid_write(args[0], int(args[1]))
    elif kind == "append":
        append(args[0], args[1], int(args[2]))
    elif kind == "stopped":
        stopped(args[0], args[1])
    else:
        raise SystemExit(f"unknown child {kind!r}")
