"""Child Pythons with the openai SDK already imported: ``python -c``, ``-m`` or a script without its cost.

Importing openai takes about a CPU-second, most of what a short child process costs. This module's
server (one per test process, started at first use) imports it once, then forks a child for each
``popen()`` or ``run()``: the child takes the caller's pipes as its stdin/stdout/stderr, its environment and
directory, builds ``sys.path`` as ``python`` would from them, and runs the code or module as
``__main__``. It is a real process making real SDK calls: it gets signals, runs its atexit hooks and
exits through the interpreter's own shutdown, and its exit status (``-SIGTERM`` included) is the
server's to collect and hand back. llm_ledger itself is never imported ahead: the child imports it
as a fresh process does, under its own environment.

A command the server cannot reproduce faithfully (interpreter options, other executables, a
``PYTHON*`` variable that acts at start-up other than ``PYTHONPATH``) runs as an ordinary
subprocess.
"""

from __future__ import annotations

import atexit
import gc
import io
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any

__all__ = ["Child", "Process", "popen", "run"]

_PRELOAD = ("openai",)  # what a child would import anyway: the costly part of its start
_server: tuple[subprocess.Popen[bytes], socket.socket] | None = None
_SERVER_ENV = dict(os.environ)  # the test process's, before any test changes it
_asking = threading.Lock()  # one question at a time on the server's socket


# -- the caller's side ---------------------------------------------------------------------------


class Child:
    """The part of ``subprocess.Popen`` the tests use, for a child forked by the server."""

    def __init__(self, pid: int, stdin: IO[Any] | None, stdout: IO[Any] | None, stderr: IO[Any] | None):
        self.pid, self.stdin, self.stdout, self.stderr = pid, stdin, stdout, stderr
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = _ask({"wait": self.pid})
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.001
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"warm python child {self.pid}", timeout or 0)
            time.sleep(pause)
            pause = min(pause * 2, 0.02)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, input: Any = None, timeout: float | None = None) -> tuple[Any, Any]:
        """Write ``input``, read stdout and stderr to their ends, then wait (as Popen.communicate)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.stdin is not None:
            if input:
                self.stdin.write(input)
            self.stdin.close()
        chunks: dict[IO[Any], list[bytes]] = {}
        with selectors.DefaultSelector() as selector:
            for pipe in (self.stdout, self.stderr):
                if pipe is not None:
                    chunks[pipe] = []
                    selector.register(pipe.fileno(), selectors.EVENT_READ, pipe)
            while selector.get_map():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(f"warm python child {self.pid}", timeout or 0)
                for key, _ in selector.select(left):
                    pipe = key.data
                    # what a readline() of the caller's left buffered first, then the pipe itself
                    data = pipe.buffer.read1() if hasattr(pipe, "buffer") else pipe.read1()
                    if data:
                        chunks[pipe].append(data)
                    else:
                        selector.unregister(key.fileobj)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        out: list[Any] = []
        for pipe in (self.stdout, self.stderr):
            if pipe is None:
                out.append(None)
                continue
            data = b"".join(chunks[pipe])
            text = hasattr(pipe, "buffer")  # universal newlines, as Popen's text mode reads
            out.append(data.decode().replace("\r\n", "\n").replace("\r", "\n") if text else data)
            pipe.close()
        return out[0], out[1]

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        for pipe in (self.stdin, self.stdout, self.stderr):
            if pipe is not None:
                pipe.close()
        self.wait()


Process = Child | subprocess.Popen[Any]  # what popen() returns


def popen(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    stdin: int | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
    text: bool = False,
    sigint_default: bool = False,
) -> Process:
    """``subprocess.Popen(args, ...)``, forked from the warm server when it can be faithful.
    ``sigint_default``: the child starts with SIGINT's default disposition, as with
    ``preexec_fn=sigint_default`` (a suite started in the background has SIGINT ignored), so that
    Ctrl-C raises KeyboardInterrupt in it."""
    env = dict(os.environ if env is None else env)
    if not _faithful(args, env):
        return subprocess.Popen(
            args,
            env=env,
            cwd=cwd,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            text=text,
            preexec_fn=_sigint_default if sigint_default else None,
        )
    ends: list[int] = []  # the child's 0, 1, 2
    mine: list[IO[Any] | None] = []
    for fd, wanted in enumerate((stdin, stdout, stderr)):
        if wanted == subprocess.PIPE:
            read, write = os.pipe()
            ours, theirs = (write, read) if fd == 0 else (read, write)
            ends.append(theirs)
            binary: Any = open(ours, "wb" if fd == 0 else "rb")  # noqa: SIM115 (the caller's to close)
            mine.append(io.TextIOWrapper(binary, write_through=True) if text else binary)
        elif wanted == subprocess.DEVNULL:
            ends.append(os.open(os.devnull, os.O_RDWR))
            mine.append(None)
        else:
            assert wanted is None, wanted
            ends.append(os.dup(fd))
            mine.append(None)
    argv = list(args[1:]) if args[1] in ("-c", "-m") else ["", *args[1:]]  # a script: no flag
    request = {
        "argv": argv,
        "env": env,
        "cwd": os.fspath(cwd or os.getcwd()),
        "sigint_default": sigint_default,
    }
    try:
        pid = _ask(request, ends)
    finally:
        for fd in ends:
            os.close(fd)
    assert isinstance(pid, int), pid
    return Child(pid, *mine)


def run(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    capture_output: bool = False,
    text: bool = False,
    timeout: float | None = None,
    check: bool = False,
) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run(args, ...)``, forked from the warm server when it can be faithful."""
    pipe = subprocess.PIPE if capture_output else None
    child = popen(args, env=env, cwd=cwd, stdout=pipe, stderr=pipe, text=text)
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        child.kill()
        try:  # bounded: a process the child started (a pool's worker) may hold its pipes open for good
            exc.output, exc.stderr = child.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            for end in (child.stdout, child.stderr):
                if end is not None:
                    end.close()
        raise
    done = subprocess.CompletedProcess(list(args), child.poll() or 0, out, err)
    if check:
        done.check_returncode()
    return done


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _faithful(args: Sequence[str], env: Mapping[str, str]) -> bool:
    """``python -c CODE ...``, ``python -m MODULE ...`` or ``python SCRIPT.py ...`` whose start-up
    settings match the server's."""
    if len(args) < 2 or args[0] != sys.executable:
        return False
    # pytest must import its plugins itself (it rewrites their asserts; anyio, which openai imports, is one)
    code_or_module = args[1] in ("-c", "-m") and len(args) > 2 and list(args[1:3]) != ["-m", "pytest"]
    if not (code_or_module or (args[1].endswith(".py") and not args[1].startswith("-"))):
        return False
    return _startup(env) == _startup(_SERVER_ENV)


def _startup(env: Mapping[str, str]) -> dict[str, str]:
    """The variables that act when Python starts or openai is imported (PYTHONPATH is rebuilt)."""
    return {
        k: v for k, v in env.items() if (k.startswith("PYTHON") and k != "PYTHONPATH") or k == "OPENAI_LOG"
    }


def _ask(request: dict[str, Any], fds: list[int] | None = None) -> Any:
    with _asking:
        return _answer(request, fds)


def _answer(request: dict[str, Any], fds: list[int] | None) -> Any:
    global _server
    if _server is None:
        ours, theirs = socket.socketpair()
        server = subprocess.Popen(
            [sys.executable, "-m", "tests.warm_python", str(theirs.fileno())],
            env=_SERVER_ENV,
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        theirs.close()
        _server = (server, ours)
        atexit.register(_stop)
    sock = _server[1]
    socket.send_fds(sock, [json.dumps(request).encode() + b"\n"], fds or [])
    reply = b""
    while not reply.endswith(b"\n"):
        data = sock.recv(65536)
        if not data:
            raise RuntimeError("the warm python server died (its stderr is the test's)")
        reply += data
    return json.loads(reply)


def _stop() -> None:
    """End the server (it reaps its children that have ended), so its CPU is counted as this process's."""
    global _server
    if _server is not None:
        server, sock = _server
        _server = None
        sock.close()
        server.wait()


# -- the server ----------------------------------------------------------------------------------


def _serve(sock: socket.socket) -> None:
    for name in _PRELOAD:
        __import__(name)
    # what the server imported is never collected in a child: without this, each child's collections
    # (and the last ones of its shutdown) walk and copy every object of openai (~0.11 CPU-s a child)
    gc.freeze()
    site = [p for p in sys.path[1:] if p not in _pythonpath(os.environ)]
    pending = b""
    while True:
        data, fds, _, _ = socket.recv_fds(sock, 1 << 20, 3)
        if not data:
            while _reap():
                pass
            return
        pending += data
        if not pending.endswith(b"\n"):
            continue
        request, pending = json.loads(pending), b""
        if "wait" in request:
            pid, status = os.waitpid(request["wait"], os.WNOHANG)
            sock.sendall(json.dumps(os.waitstatus_to_exitcode(status) if pid else None).encode() + b"\n")
            continue
        pid = os.fork()
        if pid == 0:
            sock.close()
            _child(request, fds, site)  # never returns: the child ends as its interpreter does
        for fd in fds:
            os.close(fd)
        sock.sendall(json.dumps(pid).encode() + b"\n")


def _reap() -> bool:
    try:
        return os.waitpid(-1, os.WNOHANG)[0] != 0
    except ChildProcessError:
        return False


def _pythonpath(env: Mapping[str, str]) -> list[str]:
    return [os.path.abspath(p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]


def _child(request: dict[str, Any], fds: list[int], site: list[str]) -> None:
    import importlib.machinery
    import linecache
    import runpy
    import types

    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    if request["sigint_default"]:  # what python installs when it starts with SIGINT's default disposition
        signal.signal(signal.SIGINT, signal.default_int_handler)
    flag, what, *rest = request["argv"]
    first = "" if flag == "-c" else os.getcwd() if flag == "-m" else os.path.dirname(os.path.abspath(what))
    sys.path[:] = [first, *_pythonpath(os.environ), *site]
    # a __main__ of its own that stays in sys.modules, as python's: its globals live until shutdown
    main = types.ModuleType("__main__")
    main.__annotations__ = {}
    sys.modules["__main__"] = main
    try:
        if flag == "-m":
            sys.argv = [what, *rest]
            runpy._run_module_as_main(what)  # type: ignore[attr-defined]  # what python -m runs
        elif flag == "-c":
            sys.argv, main.__loader__ = ["-c", *rest], importlib.machinery.BuiltinImporter
            code = compile(what, "<string>", "exec")
            if sys.version_info >= (3, 13):  # python -c keeps its source there: tracebacks show the line
                lines = [f"{line}\n" for line in what.splitlines()]
                linecache.cache["<string>"] = (len(what), None, lines, "<string>")
            exec(code, main.__dict__)
        else:
            sys.argv, name = [what, *rest], os.path.abspath(what)
            main.__dict__.update(__file__=name, __cached__=None)
            main.__loader__ = importlib.machinery.SourceFileLoader("__main__", name)
            with open(name, "rb") as script:
                exec(compile(script.read(), name, "exec"), main.__dict__)
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:  # printed as python prints it: without this module's frame
        exc.__traceback__ = exc.__traceback__.tb_next if exc.__traceback__ else None
        sys.excepthook(type(exc), exc, exc.__traceback__)
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":
    _serve(socket.socket(fileno=int(sys.argv[1])))
