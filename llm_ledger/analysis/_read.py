"""The one reader of llm-ledger logs: files, globs, directories, ``.gz`` files and stdin (inputs,
malformed and skipped lines: docs/REPORTING.md, "Inputs").
"""

from __future__ import annotations

import contextlib
import errno
import glob
import gzip
import io
import os
import stat
import sys
import zlib
from collections.abc import Collection, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from .._errors import ConfigError
from .._records import ANOMALY_EVENT, BUDGET_EVENT, CALL_EVENT, LENS_EVENT
from ..loading import listed, loads, shown

__all__ = [
    "COSTS_JSON", "MAX_LINE_BYTES", "PERIODS", "REPORT_SCHEMA", "InputStats", "LogReader", "iter_records",
    "missing", "report_kind", "resolve", "warn_unread",
]  # fmt: skip

# A call record is a few hundred bytes; one with captured content can be large, but not this large.
MAX_LINE_BYTES: Final = 16 << 20
_TOO_LONG: Final = f"over {MAX_LINE_BYTES:,} bytes"
REPORT_SCHEMA: Final = "llm-ledger-report"  # the "schema" of a pytest --llm-report file
# a cost report's JSON, given where a log or a pytest report was expected, and what compares periods
COSTS_JSON: Final = "the JSON of `llm-ledger report --format json` (a log's costs)"
PERIODS: Final = (
    "to compare periods of a log, group it by a time dimension: `llm-ledger report LOGS --by lens,week` "
    "(or day, month), or compare two sets of logs: `llm-ledger diff --logs BASE HEAD`"
)
_SKIP_BYTES: Final = 1 << 20  # read size while skipping the rest of an over-long line
_SHOWN_MALFORMED: Final = 5
GLOB_CHARS: Final = frozenset("*?[")
_GZIP_MAGIC: Final = b"\x1f\x8b"
STDIN: Final = "-"
_LISTINGS: Final = 10  # listings of the inputs before giving up on files that keep rotating
_HEAD_BYTES: Final = 4096  # of a file, to find a compressed copy of it
_LEDGER_EVENTS: Final = frozenset((CALL_EVENT, LENS_EVENT, BUDGET_EVENT, ANOMALY_EVENT))


@dataclass(slots=True)
class InputStats:
    """What reading one input found."""

    name: str
    lines: int = 0
    records: int = 0  # lines yielded as records
    malformed: int = 0
    first_malformed: list[int] = field(default_factory=list)  # 1-based line numbers, the first few
    too_long: int = 0  # of the malformed lines, those over MAX_LINE_BYTES (skipped unread)
    skipped: int = 0  # JSON objects of other events (plain log messages)
    copied: int = 0  # lines of a compressed copy that a plain file read has too (logrotate compressing it)
    error: str | None = None  # why the input ended early (a truncated .gz), if it did
    foreign: int = 0  # of the skipped lines, JSON objects of no event the ledger writes
    first_problem: str = ""  # why the first malformed or foreign line is no record
    given: bool = True  # named by the caller, not found by listing a directory or matching a glob

    def malformed_line(self, number: int, why: str) -> None:
        self.malformed += 1
        if len(self.first_malformed) < _SHOWN_MALFORMED:
            self.first_malformed.append(number)
        self.first_problem = self.first_problem or f"line {number}: {why}"

    @property
    def ledger_lines(self) -> int:
        """The lines the ledger wrote (records, the other events it logs, copies)."""
        return self.records + self.skipped - self.foreign + self.copied

    @property
    def wrong_input(self) -> bool:
        """Lines, and not one the ledger wrote: a binary file, a CSV, another program's JSONL."""
        return not self.ledger_lines and bool(self.malformed + self.foreign)

    def why_wrong(self) -> str:
        counts = [f"{self.malformed:,} malformed"] if self.malformed else []
        counts += [f"{self.foreign:,} JSON object(s) of other events"] if self.foreign else []
        return (
            f"none of its {self.lines:,} line(s) is an llm-ledger record ({', '.join(counts)}; "
            f"{self.first_problem})"
        )

    def to_json(self) -> dict[str, Any]:
        named = ("name", "lines", "records", "error")  # the other fields count lines: "malformed_lines"
        return {
            k if k in named else f"{k}_lines": v
            for k, v in asdict(self).items()
            if k not in ("foreign", "first_problem", "given")
        }


def report_kind(path: str) -> str | None:
    """ "costs" for the JSON ``llm-ledger report --format json`` writes (its first key ``by``), "pytest"
    for a pytest ``--llm-report`` file or other indented JSON (either would read as nothing but
    malformed log lines), None for anything else or a file that cannot be read (the reader says why)."""
    try:
        with open(path, "rb") as file:
            first = file.readline(1 << 16).strip()
            second = file.readline(1 << 16).strip() if first == b"{" else b""
    except OSError:
        return None
    if second.startswith(b'"by": ') or first.startswith(b'{"by":'):  # indented, or GET /costs' body
        return "costs"
    return "pytest" if first == b"{" or first.startswith(f'{{"schema": "{REPORT_SCHEMA}"'.encode()) else None


def _refuse_reports(names: Iterable[str]) -> None:
    """:class:`ConfigError` for a pytest ``--llm-report`` file, or the JSON of ``llm-ledger report``,
    among the log files ``names``, naming what reads it."""
    for name in filter(os.path.isfile, names):  # not a pipe: what is read here would be lost to the reader
        kind = report_kind(name)
        if kind == "pytest":
            raise ConfigError(
                f"{name}: a pytest --llm-report file, not a log of calls; compare two with "
                f"`llm-ledger diff BASE.json {name}`, or price it again with `llm-ledger reprice {name}`"
            )
        if kind == "costs":
            raise ConfigError(f"{name}: {COSTS_JSON}, not a log of calls; give the logs it sums ({PERIODS})")


def warn_unread(command: str, stats: Iterable[InputStats]) -> None:
    """Say on stderr, per input, which malformed lines ``command`` skipped and where an input ended
    early (a ``.gz`` cut short). Called before the answer is written: an input named with lines, none
    of them one the ledger wrote (the wrong file), is a :class:`ConfigError`; such a file a directory
    or a glob brought is skipped with a word, unless no input held a line the ledger wrote."""
    stats = list(stats)
    nothing = not any(one.ledger_lines for one in stats)
    if wrong := [one for one in stats if one.wrong_input and (one.given or nothing)]:
        one, others = wrong[0], [other.name for other in wrong[1:]]
        same = f"; the same for {listed(others)}" if others else ""
        raise ConfigError(
            f"{one.name}: {one.why_wrong()}{same}: is it an llm-ledger log? pass the ledger's "
            "<log_dir>/llm_calls.jsonl (its rotated and .gz files too)"
        )
    for one in stats:
        if one.wrong_input:
            sys.stderr.write(f"llm-ledger {command}: {one.name}: skipped: {one.why_wrong()}\n")
        elif one.malformed:
            where = ", ".join(map(str, one.first_malformed))
            more = ", ..." if one.malformed > len(one.first_malformed) else ""
            long = f"; {one.too_long:,} over {MAX_LINE_BYTES:,} bytes" if one.too_long else ""
            sys.stderr.write(
                f"llm-ledger {command}: {one.name}: skipped {one.malformed:,} malformed line(s) "
                f"(line {where}{more}{long}); the other lines are counted\n"
            )
        if one.error:
            sys.stderr.write(f"llm-ledger {command}: {one.name}: {one.error}; the lines before are counted\n")


def resolve(inputs: Iterable[str | os.PathLike[str]], *, empty_dirs: bool = False) -> list[str]:
    """The files ``inputs`` name, in order, each once (a directory and a glob over it would count
    every call twice): ``-``, a glob's matches, a directory's log files, a path; :class:`ConfigError`
    for one that names none (an empty directory is fine with ``empty_dirs``)."""
    out: list[str] = []
    for item in inputs:
        name = os.fspath(item)
        if name == STDIN:
            out.append(name)
        elif GLOB_CHARS & set(name) and not os.path.exists(name):
            matches = sorted(m for m in glob.glob(name, recursive=True) if not os.path.isdir(m))
            if not matches:
                raise ConfigError(
                    f"{name!r} matches no file; e.g. 'logs/llm_calls.jsonl*' (quote it so the shell "
                    "leaves it to llm-ledger)"
                )
            out += matches
        elif os.path.isdir(name):
            try:
                listing = sorted(Path(name).iterdir())
            except OSError as exc:  # a directory this user may not list
                raise ConfigError(f"{name!r}: cannot list the directory: {exc.strerror or exc}") from None
            found = [str(p) for p in listing if ".jsonl" in p.name and p.is_file()]
            if not found and not empty_dirs:
                raise ConfigError(
                    f"{name!r} holds no log file (a file whose name holds .jsonl, as llm_calls.jsonl, "
                    "llm_calls.jsonl.1 or llm_calls.jsonl.2.gz)"
                )
            out += found
        elif missing(name):
            raise ConfigError(
                f"{name!r}: no such file; the ledger writes <log_dir>/llm_calls.jsonl (log_dir is 'logs' "
                "unless configure(log_dir=...) or LLM_LEDGER_LOG_DIR says otherwise); pass a file, a "
                "directory, a glob or - for stdin"
            )
        else:
            out.append(name)
    unique: dict[str, str] = {}  # the file itself (links and "./" resolved) -> its name as given
    for name in out:
        unique.setdefault(name if name == STDIN else os.path.realpath(name), name)
    return list(unique.values())


def missing(name: str) -> bool:
    """Whether no file has ``name``; a file this user may not reach (a directory on its path it may not
    search) is not missing: opening it says why."""
    try:
        os.stat(name)
    except OSError as exc:
        return isinstance(exc, FileNotFoundError | NotADirectoryError)
    return False


_Stream = io.BufferedIOBase  # a file opened for reading bytes, or a GzipFile over one


def _open(name: str) -> tuple[object, _Stream, _Stream] | None:
    """What identifies ``name`` ((device, inode), or ``-``), and ``name`` opened for reading bytes,
    decompressed when it starts like gzip, with the raw file; None when no file has the name now."""
    raw: Any = None
    try:
        if name == STDIN:
            raw = sys.stdin.buffer
            if not hasattr(raw, "peek"):  # a replaced stdin (BytesIO)
                raw = io.BufferedReader(raw)
            key: object = STDIN
        else:
            info = os.stat(name)
            if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) or stat.S_ISSOCK(info.st_mode):
                raise ConfigError(
                    f"{name!r} is not a regular file (a device or socket); pass a log file, a directory, "
                    "or - to read stdin"
                )
            raw = open(name, "rb")  # noqa: SIM115 (closed by the caller)
            info = os.fstat(raw.fileno())
            key = (info.st_dev, info.st_ino)
        gzipped = raw.peek(2)[:2] == _GZIP_MAGIC
    except OSError as exc:
        if raw is not None:
            raw.close()
        if isinstance(exc, FileNotFoundError) and not os.path.lexists(name):
            return None  # renamed or deleted since it was listed
        fix = ""
        if exc.errno == errno.EMFILE:  # every input is held open while the reader reads
            fix = " (more files than this process may have open: raise `ulimit -n`, or pass fewer files)"
        raise ConfigError(f"{name!r}: cannot read: {exc.strerror or exc}{fix}") from None
    return key, (gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw), raw


def _head(raw: Any, gzipped: bool) -> bytes:
    """The first bytes of the regular file ``raw`` (decompressed; up to its first line's end when
    gzipped), read without moving it; b"" for a pipe."""
    try:
        head = os.pread(raw.fileno(), 1 << 16 if gzipped else _HEAD_BYTES, 0)
        if not gzipped:
            return head
        head = zlib.decompressobj(31).decompress(head, _HEAD_BYTES)  # a .gz cut short: what it holds
    except (OSError, zlib.error):
        return b""
    return head[: head.find(b"\n") + 1 or None]


def _copies(files: dict[object, tuple[str, _Stream, _Stream]]) -> dict[object, Any]:
    """The ``.gz`` files among ``files`` whose first line (or what it holds yet) starts a plain one of
    them: maybe its compressed copy (logrotate's compress step writes a new file, then deletes the
    plain one); each with that plain (raw) file, against which its lines are checked as they are read."""
    plain = [(_head(raw, False), raw) for _, stream, raw in files.values() if stream is raw]
    copies: dict[object, Any] = {}
    for key, (_, stream, raw) in files.items():
        if stream is not raw and (first := _head(raw, True)):
            copies.update((key, source) for head, source in plain if head.startswith(first))
    return copies


def _lines(stream: _Stream) -> Iterator[bytes | None]:
    """Each line of ``stream``; None for a line over :data:`MAX_LINE_BYTES`, skipped without keeping it."""
    readline = stream.readline
    limit = MAX_LINE_BYTES + 1
    while line := readline(limit):
        if len(line) == limit and line[-1] != 0x0A:
            while (rest := readline(_SKIP_BYTES)) and rest[-1] != 0x0A:
                pass
            yield None
        else:
            yield line


class LogReader:
    """Iterate over the records whose ``event`` is one of ``events`` in some logs, in file order, every
    file opened before the first line is read, so that a rotation meanwhile counts no line twice and
    loses none (docs/REPORTING.md, "Reading while logrotate rotates"); ``stats`` says, per input, what
    was read and rejected (:meth:`reject`). A pytest ``--llm-report`` file among the files the inputs
    name is a :class:`ConfigError`, unless ``whole_dirs`` (the cost API, which answers over whatever a
    log directory holds): then its lines count as malformed, and an empty directory is no error."""

    def __init__(
        self,
        inputs: Iterable[str | os.PathLike[str]],
        *,
        events: Collection[str] = (CALL_EVENT, LENS_EVENT),
        whole_dirs: bool = False,
    ) -> None:
        self._inputs = list(inputs)
        self._empty_dirs = whole_dirs
        self.names: list[str] = resolve(self._inputs, empty_dirs=whole_dirs)
        if not whole_dirs:
            _refuse_reports(self.names)
        self.events: frozenset[str] = frozenset(events)
        self.stats: list[InputStats] = []
        self._current: InputStats | None = None

    def reject(self, why: str = "not the record it claims to be") -> None:
        """Count the record just yielded as malformed: a consumer found it unusable."""
        stats = self._current
        if stats is not None and stats.records:
            stats.records -= 1
            stats.malformed_line(stats.lines, why)

    def _open_all(self, stack: contextlib.ExitStack) -> dict[object, tuple[str, _Stream, _Stream]]:
        """Every file the inputs name, opened (``stack`` closes them), each once: the inputs are listed
        again until a listing names only files open already (a rotation while they are listed renames
        files: a file is known by its (device, inode), whatever its name, and a name gone is found under
        its new one)."""
        opened: dict[object, tuple[str, _Stream, _Stream]] = {}
        for _ in range(_LISTINGS):
            settled = True
            for name in resolve(self._inputs, empty_dirs=self._empty_dirs):
                if (key := _identity(name)) in opened:
                    opened[key] = (name, *opened[key][1:])  # its name now
                    continue
                settled = False  # a file not open yet, or a name gone: list again once it is open
                if (found := _open(name)) is not None:
                    key, stream, raw = found
                    stack.callback(_close, name, stream, raw)
                    opened.setdefault(key, (name, stream, raw))  # or open already, under another name
            if settled:
                return opened
        raise ConfigError(
            f"{', '.join(repr(os.fspath(i)) for i in self._inputs)}: the files changed in each "
            f"of {_LISTINGS} listings (rotated again and again?); try again"
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        events = self.events
        with contextlib.ExitStack() as stack:
            opened = self._open_all(stack)
            copies = _copies(opened)
            self.names = [name for name, _, _ in opened.values()]
            given = {os.fspath(name) for name in self._inputs}
            for key, (name, stream, _) in opened.items():
                stats = self._current = InputStats(name, given=name in given)
                self.stats.append(stats)
                number = offset = 0
                source = copies.get(key)  # a plain file whose lines this .gz may copy
                try:
                    for number, line in enumerate(_lines(stream), 1):
                        stats.lines = number
                        if source is not None:  # a line the plain file has at the same offset: read there
                            if line is not None and os.pread(source.fileno(), len(line), offset) == line:
                                offset += len(line)
                                stats.copied += 1
                                continue
                            source = None
                        if line is None:
                            stats.too_long += 1
                            stats.malformed_line(number, _TOO_LONG)
                            continue
                        try:
                            record = loads(line)
                        except (ValueError, RecursionError) as exc:
                            if line.strip():  # a blank line is no record and no damage
                                stats.malformed_line(number, f"not JSON ({str(exc)[:80]})")
                            continue
                        if type(record) is not dict:
                            stats.malformed_line(number, "JSON, but not an object")
                            continue
                        event = record.get("event")
                        if event in events:
                            stats.records += 1
                            yield record
                        else:
                            stats.skipped += 1
                            if event not in _LEDGER_EVENTS:
                                stats.foreign += 1
                                if not stats.first_problem:
                                    named = shown(event) if isinstance(event, str) else "no"
                                    stats.first_problem = f"line {number}: a JSON object of {named} event"
                except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
                    if source is None:  # a copy still being written ends early, its lines all read
                        stats.error = f"ended early, after line {number}: {exc or 'truncated gzip'}"
                except OSError as exc:
                    stats.error = f"ended early, after line {number}: {exc.strerror or exc}"


def _identity(name: str) -> object:
    """What :func:`_open` says identifies the file ``name`` now; None when there is none."""
    if name == STDIN:
        return STDIN
    try:
        info = os.stat(name)
    except OSError:
        return None
    return (info.st_dev, info.st_ino)


def _close(name: str, stream: _Stream, raw: _Stream) -> None:
    stream.close()  # a GzipFile leaves its raw file open
    if name != STDIN:  # stdin stays open for the caller
        raw.close()


def iter_records(
    inputs: Iterable[str | os.PathLike[str]], *, events: Collection[str] = (CALL_EVENT, LENS_EVENT)
) -> Iterator[dict[str, Any]]:
    """The call and lens-summary records of ``inputs``; :class:`LogReader` also counts the lines left out."""
    return iter(LogReader(inputs, events=events))
