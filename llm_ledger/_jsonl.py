"""The JSON-lines file: whole lines appended in batches, losing nothing (docs/RELIABILITY.md).

``JsonlFileHandler`` takes records as a sink (``write_record``) or a logging handler (``emit``).
The caller's thread serialises each record and the call that fills a batch appends it: a timer
thread costs busy callers more than the writing (bench/RESULTS.md). The writer thread, asleep while
nothing is queued, writes what callers leave when they stop, and everything while writes are slow.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import errno
import fcntl
import gc
import json
import logging
import math
import os
import signal
import stat
import sys
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any

import orjson
from pythonjsonlogger.orjson import OrjsonFormatter

from ._context import wait_recorded_apart
from ._errors import internal_log
from ._records import LOGGER_NAME

__all__ = [
    "JsonlFileHandler",
    "LedgerJsonFormatter",
    "NotRegularFileError",
    "flush_all",
    "handle_sigterm_signal",
    "json_text",
    "once_a_minute",
]


_MAX_PENDING_LINES = 100_000  # lines kept for retry while the disk refuses writes, or queued while one hangs
_BATCH_LINES = 512  # a batch is written as soon as this many lines wait
_BATCH_BYTES = 1024 * 1024  # ... or this many bytes (large lines: content capture)
_INTERVAL_S = 1.0  # ... or, while lines come, once the oldest has waited this long
_SLOW_WRITE_S = 0.1  # a write this slow leaves all writing to the writer thread, until one is fast
_EXIT_TIMEOUT_S = 10.0  # what a file system that hangs writes may add to each step of an exit
_handlers: weakref.WeakSet[JsonlFileHandler] = weakref.WeakSet()
# what records the calls still open (streams) as exit would, before SIGTERM ends the process past
# every exit hook (``_streams`` adds its own)
before_sigterm_death: list[Callable[[], object]] = []
# what else holds records to send out before that death, once the files are written (the
# OpenTelemetry exporter's providers, which export what they hold at exit)
after_sigterm_flush: list[Callable[[], object]] = []
_ORJSON_OPTIONS = orjson.OPT_APPEND_NEWLINE


class NotRegularFileError(OSError):
    """The log path is not a regular file: a FIFO would block the call writing to it, a device or
    a socket would take records and keep none."""

    def __init__(self, path: Path, mode: int) -> None:
        kind = _KINDS.get(stat.S_IFMT(mode), "special file")
        super().__init__(
            f"{str(path)!r} is a {kind}, not a regular file; remove it so that llm-ledger can create "
            "the file there, or choose another log_dir (LLM_LEDGER_LOG_DIR=off writes no file)"
        )


_KINDS = {
    stat.S_IFIFO: "FIFO (named pipe)",
    stat.S_IFDIR: "directory",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFSOCK: "socket",
}


class LedgerJsonFormatter(OrjsonFormatter):
    """python-json-logger formatter that writes a record dict exactly as built, keys in order, with
    orjson (else the json module); plain-string messages keep python-json-logger's shape."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # built with python-json-logger's defaults, the line of a dict message is that dict as JSON
        self._plain = not args and not kwargs

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        if isinstance(record.msg, dict):
            log_data.update(message_dict)
        else:
            super().add_fields(log_data, record, message_dict)

    def jsonify_log_record(self, log_data: dict[str, Any]) -> str:
        try:
            return super().jsonify_log_record(log_data)
        except (TypeError, ValueError):  # orjson.JSONEncodeError is a TypeError
            return _json_module_text(log_data)

    def format_line(self, record: logging.LogRecord) -> bytes:
        """``format()``'s line, newline included; a ledger record's serialised in one step."""
        msg = record.msg
        if self._plain and type(msg) is dict and not record.exc_info and not record.stack_info:
            return self.record_line(msg)  # a plain formatter's line depends on the dict alone
        return (self.format(record) + "\n").encode("utf-8", "backslashreplace")

    def record_line(self, record: Mapping[str, Any]) -> bytes:
        """What ``format_line`` gives for a ledger record dict, without a ``LogRecord``."""
        if self._plain:
            try:
                return orjson.dumps(record, default=self.json_default, option=_ORJSON_OPTIONS)
            except (TypeError, ValueError):  # e.g. integer keys: format() falls back
                pass
        return (self.format(_log_record(dict(record))) + "\n").encode("utf-8", "backslashreplace")


def json_text(value: Mapping[str, Any]) -> str:
    """A record as one line of standard JSON text, whatever its values (``str()`` of what JSON
    cannot hold): for handlers that show records as text."""
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # e.g. a context integer beyond 64 bits, which orjson cannot write
        return _json_module_text(value)


def _json_module_text(value: Any) -> str:
    # standard JSON, as orjson writes it: NaN and infinities null (readers reject the bare words)
    try:
        return json.dumps(_finite(value), default=str, ensure_ascii=False, allow_nan=False)
    except Exception:
        context = value.get("context") if isinstance(value, Mapping) else None
        if not isinstance(context, Mapping):
            raise
        # a context value JSON cannot hold at all (tuple keys, a cycle): its text, not a lost record
        return _json_module_text({**value, "context": {k: _json_or_text(v) for k, v in context.items()}})


def _json_or_text(value: Any) -> Any:
    try:
        json.dumps(_finite(value), default=str, allow_nan=False)
        return value
    except Exception:
        try:
            return str(value)
        except Exception:
            return "__could_not_encode__"  # python-json-logger's word for it


def _finite(value: Any) -> Any:
    """``value`` with every float that is not finite replaced by None, as orjson writes it."""
    if type(value) is float:
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _log_record(record: Mapping[str, Any]) -> logging.LogRecord:
    return logging.LogRecord(LOGGER_NAME, logging.INFO, "", 0, record, None, None)


class JsonlFileHandler(logging.Handler):
    """Append each record as one JSON line to ``path``; a background thread does the writing."""

    def __init__(self, path: str | os.PathLike[str], *, formatter: logging.Formatter | None = None) -> None:
        super().__init__()
        # absolute: the file must not move when the process changes directory
        self.path: Path = Path(os.path.abspath(path))
        self.setFormatter(formatter or LedgerJsonFormatter())
        self._new_queue()
        self._callers_write = True  # not while writes are slow or failing, or locked elsewhere
        self._fd: int | None = None
        self._readable = False  # whether the descriptor can read the file (see _whole_lines_end)
        self._locks = True  # whether the file takes locks (see _lock)
        self._inode: tuple[int, int] | None = None
        self._end = 0  # the file's size after our last write: smaller later means truncated
        self._truncation_said = False
        self._closed = False
        self._kept_open = False  # configure()'s file: see close()
        self._lost = 0
        try:
            self._open()  # fail early, in configure(), on a path that can never work
        except BaseException:
            self._closed = True  # logging already holds the handler: its flush and close at exit are no-ops
            raise
        self._thread = self._start_writer()
        _handlers.add(self)

    def _start_writer(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name=f"llm-ledger-writer:{self.path}", daemon=True)
        thread.start()
        return thread

    def _new_queue(self) -> None:
        """An empty queue, its events and its lock: at start, and in a forked child."""
        # lines and flush() markers, in the order they came
        self._queue: collections.deque[bytes | threading.Event] = collections.deque()
        self._queued = threading.Event()  # cleared while the writer is idle (see _run)
        self._wake = threading.Event()  # a flush, close, or a caller writing a batch
        self._flushing = False
        self._draining = threading.Lock()  # held by whoever writes: lines leave in queue order
        self._main_writes = False  # the main thread holds, or is taking, _draining (see _on_sigterm)
        self._started: float | None = None  # when the first line now queued came (monotonic)
        self._bytes = 0  # about how many bytes of lines are queued (callers on several threads add)
        self._pending = bytearray()  # whole lines taken from the queue and not yet written
        # held by the caller dropping queued lines (see _drop_queued), and by the writer adding to _lost
        self._dropping = threading.Lock()
        self._writing_since: float | None = None  # when the write under way began (monotonic)
        self._hung_drops = 0  # queued lines dropped behind the write under way (see _hang_over)

    def _after_fork_in_child(self) -> None:
        self._new_queue()  # the writer thread did not survive the fork
        self._close_fd()  # a descriptor of its own: one shared with the parent would share its lock
        if not self._closed:
            self._thread = self._start_writer()

    # -- caller side ------------------------------------------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        # formatted now: bytes are cheap to keep, a dict held until the write burdens the collector
        formatter = self.formatter
        try:
            if isinstance(formatter, LedgerJsonFormatter):
                line = formatter.format_line(record)
            else:
                line = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
        except Exception as exc:
            _report_format_failure(self.path, exc)
            return
        self._put(line)

    def write_record(self, record: Mapping[str, Any]) -> None:
        """A sink (``monitor.add_sink(handler.write_record)``, as ``configure()`` adds it): queue a ledger
        record dict as one line, the line ``emit`` writes for it."""
        formatter = self.formatter
        if not isinstance(formatter, LedgerJsonFormatter):
            self.emit(_log_record(record))
            return
        try:
            line = formatter.record_line(record)
        except Exception as exc:
            _report_format_failure(self.path, exc)
            return
        self._put(line)

    def _put(self, item: bytes) -> None:
        queue = self._queue
        queue.append(item)
        self._bytes += len(item)
        started = self._started
        if started is None:  # the first line of a batch
            if _Sigterm.recheck and threading.current_thread() is threading.main_thread():
                _recheck_after_fork()
            # a record made after close(), at exit (a stream's finalizer): no writer is left; or after a
            # SIGTERM passed on to the application's handler, which may end the process past every hook
            if self._closed or _Sigterm.passed_on:
                self._flush_by_writer(_EXIT_TIMEOUT_S)
                return
            # a multiprocessing child: SIGTERM ends it at once (see _in_multiprocessing_child)
            if _Sigterm.default and self._callers_write and self._drain_taken(0, on_caller=True):
                return
            self._started = time.monotonic()
            if not self._queued.is_set():  # the writer thread had gone idle: start its timer
                self._queued.set()
        elif (
            self._bytes >= _BATCH_BYTES
            or len(queue) >= _BATCH_LINES
            or time.monotonic() - started >= _INTERVAL_S
        ):
            if self._callers_write:
                self._drain_taken(0, on_caller=True)
            elif not self._queued.is_set():
                # the writer thread writes it (see _write), awake: had it taken this batch's first line
                # between its caller queuing it and reading _started, it went idle on an empty queue
                self._queued.set()
            if len(queue) > _MAX_PENDING_LINES:  # not written: a write may hang (see _drop_queued)
                self._drop_queued()

    def _drain_taken(self, timeout: float, on_caller: bool = False) -> bool:
        """``_drain()`` on this thread once it has the write lock (``timeout`` s, -1: for good);
        False when it did not get it or left the lines to the writer thread."""
        # (not when a signal handler interrupted the main thread's own write: that write sets it)
        on_main = threading.current_thread() is threading.main_thread() and not self._main_writes
        if on_main:
            self._main_writes = True  # before the lock is taken: a signal may come at any bytecode
        try:
            if not self._draining.acquire(timeout=timeout):
                return False
            try:
                return self._drain(on_caller)
            finally:
                self._draining.release()
        finally:
            if on_main:
                self._main_writes = False
                if _Sigterm.pending:
                    _on_sigterm(signal.SIGTERM, None)

    def handle(self, record: logging.LogRecord) -> bool:
        # no handler lock: emit() only appends to a thread-safe deque (filters still apply)
        if self.filters and not self.filter(record):
            return False
        self.emit(record)
        return True

    def flush(self, timeout: float | None = 10.0) -> None:
        """Write every record emitted before this call: on this thread, else (another thread is
        writing, or writes are slow) by the writer thread, waiting at most ``timeout`` seconds."""
        if not (self._callers_write and self._drain_taken(0, on_caller=True)):
            self._flush_by_writer(timeout)

    def _flush_by_writer(self, timeout: float | None) -> None:
        """Have the writer thread write everything queued so far; wait at most ``timeout`` seconds."""
        if self._main_writes and threading.current_thread() is threading.main_thread():
            # a signal handler's flush() that interrupted the main thread's own write: the writer would
            # wait for the lock that write holds; the write goes on once the handler returns (or at exit)
            return
        if self._closed or not self._thread.is_alive():
            self._drain_taken(-1 if timeout is None else timeout)
            return
        done = threading.Event()
        self._queue.append(done)
        self._flushing = True
        self._queued.set()
        self._wake.set()
        done.wait(timeout)

    def close(self) -> None:
        if self._kept_open and not _Sigterm.passed_on:
            # configure()'s file, which it alone closes: logging.config's dictConfig() and fileConfig()
            # close every handler alive (Django's setup() runs one, often after a configure() in settings)
            self.flush()
            return
        # one bounded wait: at exit a hung file system may delay the exit, not stop it
        if not self._closed:
            deadline = time.monotonic() + _EXIT_TIMEOUT_S
            self._flush_by_writer(_EXIT_TIMEOUT_S)
            self._closed = True
            self._queued.set()
            self._wake.set()
            self._thread.join(timeout=max(0.0, deadline - time.monotonic()))
            # a write that hangs holding the lock closes the file itself once done (else its late
            # write could land in whatever reuses the descriptor's number)
            self._drain_taken(max(0.0, deadline - time.monotonic()))
            _handlers.discard(self)  # flush_all() and exit leave it alone from now on
        super().close()

    # -- writer side --------------------------------------------------------------------------------

    def _open(self) -> None:
        """Open the file to append (and read, where allowed); ``NotRegularFileError`` if it is not a
        regular file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # O_NONBLOCK: opening a FIFO to write would wait for a reader; it is refused below instead
        flags = os.O_APPEND | os.O_CREAT | os.O_NONBLOCK
        try:
            try:
                fd, readable = os.open(self.path, os.O_RDWR | flags, 0o644), True
            except PermissionError:  # a file others own that this process may only append to
                fd, readable = os.open(self.path, os.O_WRONLY | flags, 0o644), False
        except OSError as exc:
            if exc.errno not in (errno.EISDIR, errno.ENXIO):  # ENXIO: a FIFO with no reader, a socket
                raise
            raise NotRegularFileError(self.path, os.stat(self.path).st_mode) from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise NotRegularFileError(self.path, st.st_mode)
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        self._close_fd()
        self._fd, self._readable = fd, readable
        self._inode = (st.st_dev, st.st_ino)
        self._end = 0

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = self._inode = None

    def _reopen_if_moved(self) -> None:
        """Open the file again where it was closed or another file took its path (rotation)."""
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                return
        self._open()

    def _run(self) -> None:
        # A caller writing a batch wakes the writer during its write (cheap: the GIL is released),
        # so the writer writes only when callers stopped for two intervals, for a flush or close.
        queue = self._queue
        while not self._closed:
            woken = self._wake.wait(2 * _INTERVAL_S)
            self._wake.clear()
            if self._flushing or self._closed:
                self._flushing = False
            elif woken and self._callers_write:
                continue  # a caller is writing
            elif not queue and not self._pending:
                self._queued.clear()
                if not queue:  # else a line came before the clear, and its caller saw the flag set
                    self._queued.wait()
                continue
            with self._draining:
                self._drain()
            if self._pending and not self._closed:
                time.sleep(0.05)  # a write failed: not again at once
        with self._draining:
            self._drain()

    def _drain(self, on_caller: bool = False) -> bool:
        """Write the queued lines; False when they were left to the writer thread."""
        events: list[threading.Event] = []
        # one buffer, kept until written (an interrupt loses no line) and reused (cheaper on memory)
        pending = self._pending
        self._started = None
        self._bytes = 0
        queue = self._queue
        done = False  # stays so if an interrupt (Ctrl-C) on a caller's thread stops the write: next time
        try:
            while queue:
                item = queue.popleft()
                if isinstance(item, bytes):
                    pending += item
                else:
                    events.append(item)
            if pending and on_caller:
                self._wake.set()  # the writer sees callers writing (see _run)
            done = not pending or self._write(wait=not on_caller)
        finally:
            if not done:  # the flushes waiting on these lines wait for the writer thread
                queue.extendleft(reversed(events))
            self._writing_since = None
            if self._closed:  # the descriptor is closed under the write lock only (see close())
                self._close_fd()
        if done:
            for event in events:
                event.set()
        return done

    def _write(self, wait: bool) -> bool:
        """Append the pending lines, all or none (a failure is reported, the lines stay pending); False
        when ``wait`` is false and another process holds the lock. Under the ``flock`` every ledger
        writer takes, only this writer grows the file: it can take back a batch a full disk cut short,
        and cut a partial line a killed writer left."""
        pending = self._pending
        written = 0
        started = self._writing_since = time.monotonic()
        try:
            self._reopen_if_moved()
            fd = self._fd
            assert fd is not None
            locked = self._lock(fd, wait)
            if locked is None:  # a call never waits for another process
                self._callers_write = False
                self._wake.set()
                return False
            try:
                end = self._whole_lines_end(fd) if locked else None
                if end is not None and end < self._end:
                    self._say_truncated(end)
                try:
                    # a copy after a short write (rare): a view would pin the buffer's size
                    while written < len(pending):
                        written += os.write(fd, pending[written:] if written else pending)
                except BaseException:
                    if end is not None:
                        written = 0  # should even that fail: all kept, and the next write cuts the part
                        written = _take_back(fd, end, pending)
                    raise
                if end is not None:
                    self._end = end + written
            finally:
                if locked:
                    fcntl.flock(fd, fcntl.LOCK_UN)
        except Exception as exc:
            del pending[:written]  # (without the lock, the part of a batch a short write wrote)
            self._callers_write = False
            dropped = _drop_oldest(pending, _MAX_PENDING_LINES)
            lost = self._hang_over(time.monotonic() - started, dropped, failed=True)
            if once_a_minute(_last_failure, ("write", self.path)):
                internal_log.error(
                    "llm-ledger cannot write %s (%s: %s); %d records kept for retry, %d dropped so far",
                    self.path,
                    type(exc).__name__,
                    exc,
                    pending.count(b"\n"),
                    lost,
                )
            return True
        except BaseException:
            del pending[:written]  # an interrupt: what reached the file is not written again
            raise
        del pending[:]
        elapsed = time.monotonic() - started
        # slow: the writer thread writes until a write is fast again
        if elapsed > _SLOW_WRITE_S:
            if self._callers_write and once_a_minute(_last_failure, ("slow write", self.path)):
                internal_log.warning(
                    "llm-ledger: writing %s took %.1f s; the writer thread writes it until writes are "
                    "fast again, so that calls never wait for it",
                    self.path,
                    elapsed,
                )
            self._hang_over(elapsed)
        self._callers_write = elapsed <= _SLOW_WRITE_S
        return True

    def _hang_over(self, elapsed: float, dropped: int = 0, *, failed: bool = False) -> int:
        """A slow or ``failed`` write ended (``dropped``: the oldest lines it kept dropped): no caller
        drops lines behind it from now on, and ``dropped`` counts with theirs (both under the callers'
        lock: a count added on one thread is never lost to the other's). Say once what the callers
        dropped while it hung, if any. Returns the lines dropped so far."""
        with self._dropping:
            self._writing_since = None
            self._lost += dropped
            lost, hung, self._hung_drops = self._lost, self._hung_drops, 0
        if hung:
            internal_log.warning(
                "llm-ledger: %s after %.1f s; %d records queued behind it were dropped while it hung, %d "
                "dropped so far",
                f"the write to {self.path} that hung failed (its error is reported apart)"
                if failed
                else f"writing {self.path} resumed: the write that hung returned",
                elapsed,
                hung,
                lost,
            )
        return lost

    def _drop_queued(self) -> None:
        """While a write hangs (an NFS server that stopped answering: it may never return), drop the
        oldest queued lines beyond ``_MAX_PENDING_LINES``, as while the disk refuses writes: memory stays
        bounded. Never while writes work: only once the write under way is slower than a slow one."""
        since = self._writing_since
        if since is None or time.monotonic() - since <= _SLOW_WRITE_S:
            return
        if not self._dropping.acquire(blocking=False):
            return  # another caller is dropping them, or the write is ending (see _hang_over)
        queue = self._queue
        flushes: list[threading.Event] = []  # kept: a flush() waits for the lines after it instead
        dropped = 0
        try:
            if self._writing_since != since:  # the write ended meanwhile
                return
            while len(queue) > _MAX_PENDING_LINES:
                item = queue.popleft()
                if isinstance(item, bytes):
                    dropped += 1
                else:
                    flushes.append(item)
        except IndexError:  # the write returned meanwhile, and its writer took the queue
            pass
        finally:
            queue.extendleft(reversed(flushes))
            self._lost += dropped
            self._hung_drops += dropped
            lost = self._lost
            self._dropping.release()
        if once_a_minute(_last_failure, ("hung write", self.path)):
            internal_log.error(
                "llm-ledger cannot write %s (a write has not returned for %.1f s: a file system that "
                "stopped answering); %d records queued behind it, %d dropped so far",
                self.path,
                time.monotonic() - since,
                len(queue),
                lost,
            )

    def _say_truncated(self, size: int) -> None:
        """Once: the file shrank under this writer, which lost what was written since the copy."""
        if not self._truncation_said:
            self._truncation_said = True
            internal_log.warning(
                "llm-ledger: %s shrank from %d to %d bytes since this process last wrote it: something "
                "truncated it (logrotate's copytruncate), and the lines written between its copy and "
                "its truncation are lost; rotate it in logrotate's default create mode instead, without "
                "copytruncate (docs/MONITORING.md, Several processes, one file, rotation)",
                self.path,
                self._end,
                size,
            )

    def _lock(self, fd: int, wait: bool) -> bool | None:
        """Lock the file for a write: True when locked, None when another process holds the lock
        and ``wait`` is false, False when the file takes no locks (then writing goes on without)."""
        if not self._locks:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        except OSError as exc:  # ENOLCK, EOPNOTSUPP: some NFS and FUSE mounts
            self._locks = False
            internal_log.warning(
                "llm-ledger cannot lock %s (%s: %s), so it writes it without the lock from now on: "
                "lines stay whole, but a full disk or a writer killed while writing can leave part of "
                "a line in the file; put the log on a local file system to keep that from happening",
                self.path,
                type(exc).__name__,
                exc,
            )
            return False
        return True

    def _whole_lines_end(self, fd: int) -> int:
        """The size of the file (locked), once a partial last line a killed writer left is cut."""
        size = os.fstat(fd).st_size
        if not size or not self._readable or os.pread(fd, 1, size - 1) == b"\n":
            return size
        end = _last_line_end(fd, size)
        os.ftruncate(fd, end)
        internal_log.warning(
            "llm-ledger: %s ended with part of a line (%d bytes, left by a writer killed while "
            "writing); cut it, so that the next line starts whole",
            self.path,
            size - end,
        )
        return end


def _take_back(fd: int, end: int, batch: bytearray) -> int:
    """How much of ``batch``, written at ``end`` of the locked file, stays there: all of it once it
    all reached the file, else none (a part is cut off again); where the file cannot be cut (a failing
    disk), the whole lines that reached it (the next write cuts the rest, as a killed writer's)."""
    grown = os.fstat(fd).st_size - end
    if grown >= len(batch):
        return len(batch)
    if grown > 0:
        try:
            os.ftruncate(fd, end)
        except OSError:
            return batch.rfind(b"\n", 0, grown) + 1
    return 0


def _last_line_end(fd: int, size: int) -> int:
    """The offset just past the last newline in the first ``size`` bytes of ``fd`` (0 if none)."""
    end = size
    while end > 0:
        start = max(0, end - 65536)
        at = os.pread(fd, end - start, start).rfind(b"\n")
        if at >= 0:
            return start + at + 1
        end = start
    return 0


def _drop_oldest(lines: bytearray, keep: int) -> int:
    """Drop the oldest lines of ``lines`` beyond the newest ``keep``; return how many were dropped."""
    excess = lines.count(b"\n") - keep
    if excess <= 0:
        return 0
    cut = 0
    for _ in range(excess):
        cut = lines.index(b"\n", cut) + 1
    del lines[:cut]
    return excess


def once_a_minute(last: dict[Any, float], key: Hashable) -> bool:
    """Whether a failure is reported now: once a minute per ``key`` (its place and kind), the times
    kept in ``last``; a failure repeated on every call must not flood the log."""
    now = time.monotonic()
    if now - last.get(key, float("-inf")) < 60:
        return False
    last[key] = now
    return True


# when each kind of failure was last reported for each file: a file's reports are rate-limited, not
# another's
_last_failure: dict[tuple[str, Path], float] = {}


def _report_format_failure(path: Path, exc: BaseException) -> None:
    if once_a_minute(_last_failure, ("format", path)):
        internal_log.warning(
            "llm-ledger could not format a record for %s, so it was not written (%s: %s)",
            path,
            type(exc).__name__,
            exc,
        )


def _each_handler(flush: Callable[[JsonlFileHandler], object]) -> None:
    for handler in list(_handlers):
        with contextlib.suppress(Exception):  # flushing, exit or SIGTERM must not fail because of the ledger
            flush(handler)


def flush_all() -> None:
    """Write out every record queued in every JSONL handler of this process."""
    _each_handler(JsonlFileHandler.flush)


def _flush_at_exit() -> None:
    """``flush_all()`` by the writer threads, at exit and on SIGTERM: a file system that hangs a write
    delays them by at most each flush's timeout, never for good."""
    _each_handler(lambda handler: handler._flush_by_writer(_EXIT_TIMEOUT_S))


@atexit.register
def _exit() -> None:
    _Sigterm.passed_on = True  # what comes after this flush (later hooks, finalizers) is written at once
    # the records the collector's threads are still making first (not on SIGTERM: the signal may have
    # stopped the main thread holding a lock that they wait for)
    wait_recorded_apart(_EXIT_TIMEOUT_S)
    _flush_at_exit()


class _Sigterm:
    pending = False  # a SIGTERM came (while the main thread was writing: handled once it is done)
    stopping = False
    # a SIGTERM went to the application's handler, or exit began: lines are written at once
    passed_on = False
    # a process multiprocessing started, where SIGTERM keeps its default action: lines are written
    # at once by the call that makes them (unless another thread or process is writing the file)
    default = False
    wanted = False  # configure() asked for the ledger's handler (handle_sigterm)
    # a child forked then, whose first batch on the main thread puts it back (see _recheck_after_fork)
    recheck = False


class _PassOn:
    """The application's own SIGTERM handler, found installed by ``configure()``, wrapped: a server's
    (uvicorn's workers import the application after installing theirs) may end its graceful shutdown
    by restoring the default action and raising SIGTERM again, which skips every exit hook. So the
    lines queued are written first, and every line after is written at once; then it runs as written."""

    __slots__ = ("handler",)

    def __init__(self, handler: Callable[[int, Any], Any]) -> None:
        self.handler = handler

    def __call__(self, signum: int, frame: Any) -> Any:
        _Sigterm.passed_on = True
        _on_a_thread(gc.collect)  # streams abandoned before the signal, not yet collected, are recorded
        if not any(handler._main_writes for handler in list(_handlers)):  # else see _on_sigterm
            _flush_at_exit()
        return self.handler(signum, frame)


def _on_a_thread(work: Callable[[], object]) -> None:
    """``work`` on a thread, waited for as for each step of an exit: a signal may have stopped the
    main thread inside the ledger, holding a lock that recording a call takes."""
    thread = threading.Thread(target=work, name="llm-ledger-sigterm", daemon=True)
    thread.start()
    thread.join(_EXIT_TIMEOUT_S)


def handle_sigterm_signal(on: bool) -> None:
    """With ``on``, install ``_on_sigterm`` for SIGTERM where it has its default action, or wrap the
    application's handler in ``_PassOn``; else take either out again where it is still installed.
    Only the main thread can do either (a warning says so)."""
    _Sigterm.wanted = on
    child = on and _in_multiprocessing_child()
    if child:
        _Sigterm.default = True
    try:
        current = signal.getsignal(signal.SIGTERM)
        ours = current is _on_sigterm or type(current) is _PassOn
        if on and not child and current is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
        elif on and callable(current) and not ours:
            # also in a multiprocessing child whose own handler is there already: a `uvicorn --workers`
            # worker (spawned by multiprocessing) installs uvicorn's before it imports the application
            signal.signal(signal.SIGTERM, _PassOn(current))
        # (a multiprocessing child keeps a wrapper: configure() called again there must not take it off)
        elif ours and (not on or (child and current is _on_sigterm)):
            signal.signal(signal.SIGTERM, current.handler if type(current) is _PassOn else signal.SIG_DFL)
    except ValueError:  # not the main thread (or not the main interpreter), installing or taking out
        if on:
            internal_log.warning(
                "llm-ledger: configure() ran outside the main thread, so it could not install its "
                "SIGTERM handler: a SIGTERM may lose the last records queued (up to 2 s of calls); "
                "call configure() from the main thread, or llm_ledger.flush() in a SIGTERM handler "
                "of your own"
            )


def _in_multiprocessing_child() -> bool:
    """Whether multiprocessing started this process (a pool's worker, a ``Process``). Its
    ``terminate()`` relies on SIGTERM's default action: a handler written in Python runs on the main
    thread only, once that thread runs Python again, and a signal landing just before the main thread
    waits (an idle pool worker on its task queue's lock, whose holder is gone) never ends that wait,
    so the worker lives on and ``terminate()`` joins it for good. There SIGTERM keeps (or gets back)
    its default action, and the file's lines are written as they come instead."""
    multiprocessing = sys.modules.get("multiprocessing")
    return multiprocessing is not None and multiprocessing.parent_process() is not None


def _on_sigterm(signum: int, frame: object) -> None:
    """Write out every JSONL file, then die by SIGTERM, as the process would have without us."""
    _Sigterm.pending = True
    if _Sigterm.stopping or any(handler._main_writes for handler in list(_handlers)):
        # the signal stopped the main thread while it writes a batch, holding the write lock:
        # waiting for that lock here would wait for ever, so the signal waits for the write instead
        return
    _Sigterm.stopping = True
    for record_open_calls in before_sigterm_death:
        _on_a_thread(record_open_calls)
    _flush_at_exit()
    for send_out in after_sigterm_flush:
        _on_a_thread(send_out)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _after_fork_in_child() -> None:
    _Sigterm.pending = _Sigterm.stopping = _Sigterm.passed_on = False
    _Sigterm.recheck = _Sigterm.wanted
    for handler in list(_handlers):
        handler._after_fork_in_child()


def _recheck_after_fork() -> None:
    """A server's worker forked after ``configure()`` (gunicorn ``--preload``) has its master's SIGTERM
    handler, or sets one anew, without calling it again: uvicorn's worker class resets it to the
    default action, then its server installs its own and ends by raising SIGTERM with that default
    action, past every exit hook, so the lines queued then died with it. The ledger's handler goes
    back in (or wraps the server's), as ``configure()`` would have installed it in that worker."""
    _Sigterm.recheck = False
    if not _Sigterm.default:  # a multiprocessing child keeps what it has (see _in_multiprocessing_child)
        handle_sigterm_signal(True)


_fork_hook_registered = False


def _before_fork() -> None:
    # multiprocessing's forked children leave through os._exit(), past atexit: they flush through
    # one of its finalizers instead, registered in each child by its after-fork hook (whose weakly
    # held owner is the hook itself, a module function that lives as long as the process), which also
    # gives SIGTERM back its default action there (see _in_multiprocessing_child)
    global _fork_hook_registered
    util = sys.modules.get("multiprocessing.util")
    if util is not None and not _fork_hook_registered:
        _fork_hook_registered = True
        util.register_after_fork(_flush_at_multiprocessing_exit, _flush_at_multiprocessing_exit)


def _flush_at_multiprocessing_exit(_: object) -> None:
    sys.modules["multiprocessing.util"].Finalize(None, _flush_at_exit, exitpriority=0)
    _Sigterm.default = True  # (see _in_multiprocessing_child)
    handle_sigterm_signal(False)


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
