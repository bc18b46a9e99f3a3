"""Child processes for ``tests/test_reliability_writing.py``: ``python -m tests.writing_children KIND ...``.

Each child is a real process writing the ledger's file through ``configure()``, as an application
would; the test in the parent kills it, fills its disk, or replaces its file.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

PAD = "x" * 1000  # about 1 kB a line: a small disk fills in a few hundred lines


def _line(**fields: Any) -> None:
    """One record through the ``llm_monitor`` logger, as the monitor emits it."""
    logging.getLogger("llm_monitor").info({"event": "llm_api_call", **fields})


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


if __name__ == "__main__":
    kind, args = sys.argv[1], sys.argv[2:]
    if kind == "fill":
        fill(args[0], int(args[1]), int(args[2]))
    elif kind == "killed":
        killed_mid_write(args[0], int(args[1]))
    elif kind == "append":
        append(args[0], args[1], int(args[2]))
    else:
        raise SystemExit(f"unknown child {kind!r}")
