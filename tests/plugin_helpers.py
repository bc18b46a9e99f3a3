"""Shared pieces of the pytest plugin's tests: a running fake server and inner test projects.

The plugin tests run real pytest sessions with ``pytester`` against a loopback OpenAI-compatible
server (``llm_ledger.testing.FakeOpenAI``), then again with the server stopped to prove replay is offline.
Inner test files read the server's URL from ``LEDGER_TEST_BASE_URL``. Test modules import the
fixtures by their function names (``server_fixture``...); pytest knows them by ``name=``.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from llm_ledger._cli import main as cli_main
from llm_ledger.exporters._prometheus import shutdown_now
from llm_ledger.testing import FakeOpenAI
from pytest_llm_ledger import _cassettes_cli

# When the package is installed its pytest11 entry point loads the plugin; loading it a second
# time with -p would be an error, so pass -p only when it is not installed (the scratch venv).
_INSTALLED = any(
    ep.value == "pytest_llm_ledger.plugin" for ep in importlib.metadata.entry_points(group="pytest11")
)
PLUGIN_ARGS: list[str] = [] if _INSTALLED else ["-p", "pytest_llm_ledger.plugin"]

INI = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
filterwarnings = error
"""

# An inner test module: sync, async and streaming calls through an instrumented client.
CHAT_TESTS = """
import os

import openai
import pytest

import llm_ledger as ledger


def client():
    return ledger.instrument(openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0))


def aclient():
    return ledger.instrument(openai.AsyncOpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0))


PROMPT = os.environ.get("LEDGER_TEST_PROMPT", "Summarise the quarterly report in one line")


@pytest.mark.llm
def test_chat(llm_ledger):
    with client() as c, ledger.lens("summary", source_id="doc-1"):
        reply = c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}])
    assert reply.choices[0].message.content.startswith("Summary:")
    assert llm_ledger.api_calls == 1
    assert llm_ledger.total_tokens == reply.usage.total_tokens > 0
    assert llm_ledger.lens("summary")[0]["summary"]["total_api_calls"] == 1


@pytest.mark.llm
def test_stream(llm_ledger):
    with client() as c, ledger.lens("digest"):
        stream = c.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Stream the weekly digest please"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.startswith("Summary:")
    assert llm_ledger.total_tokens > 0


@pytest.mark.llm
@pytest.mark.asyncio
async def test_async(llm_ledger):
    async with aclient() as c, ledger.lens("summary", source_id="doc-2"):
        reply = await c.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Async hello there"}]
        )
    assert reply.usage.total_tokens > 0
    assert llm_ledger.lens("summary")[0]["summary"]["total_tokens"] == reply.usage.total_tokens
"""


# The start of an inner test module whose leak_a_stream() opens a stream in a lens, reads one chunk and
# leaves it open: only the garbage collector ends it (the stream sits in a reference cycle). The client
# is closed (its connections with it): a client left to the collector would close its socket in
# whichever test of this suite collects it, and warn there.
LEAK_A_STREAM = """
import gc
import os

import openai
import pytest

import llm_ledger as ledger


def leak_a_stream(lens_key):
    raw = openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0)
    with raw, ledger.lens(lens_key):
        stream = ledger.instrument(raw).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Stream it"}], stream=True
        )
        next(iter(stream))
"""


def write_project(pytester: pytest.Pytester, tests: str = CHAT_TESTS, name: str = "test_app") -> Path:
    """An inner project: the ini and one test module at ``tests/<name>.py``."""
    pytester.makefile(".ini", pytest=INI)
    path = pytester.path / "tests" / f"{name}.py"
    path.parent.mkdir(exist_ok=True)
    path.write_text(textwrap.dedent(tests))
    return path


# plugins inner projects do not use: hypothesis' costs ~0.8 s per in-process session; anyio's imports
# trio (~0.15 CPU-s in each new process: a subprocess session, an xdist worker)
FAST_ARGS = ["-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:anyio"]


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """An in-process pytest session with the plugin loaded, its output as on a developer's machine:
    under CI=true pytest prints each failure's whole message in the short summary too, and the tests
    count how often a message is printed."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("CI", raising=False)
        patch.delenv("BUILD_NUMBER", raising=False)
        return pytester.runpytest(*PLUGIN_ARGS, *FAST_ARGS, *args)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """``llm-ledger ARGS`` in the current directory, run in this process (``python -m llm_ledger`` would
    only add a start-up): its exit status and output."""
    capsys.readouterr()
    status = cli_main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["llm-ledger", *args], status, out, err)


@pytest.fixture(name="collect_in_process")
def collect_in_process_fixture(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """``llm-ledger cassettes`` asks pytest which cassettes the tests own through a ``python -m pytest
    --collect-only`` child; here that collection runs as an in-process session in the same directory,
    with the same arguments and environment, its exit status and output handed back as the child's
    (a new Python costs about 0.6 CPU-s a listing). test_plugin_orphans runs the command once as a
    shell does, child and all."""

    def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert command[:3] == [sys.executable, "-m", "pytest"], command
        assert kwargs == {"capture_output": True, "text": True, "check": False}, kwargs
        result = pytester.runpytest_inprocess(*PLUGIN_ARGS, *command[3:])
        return subprocess.CompletedProcess(command, int(result.ret), result.stdout.str(), result.stderr.str())

    monkeypatch.setattr(_cassettes_cli, "subprocess", SimpleNamespace(run=run))


def notice_fails_strict(
    pytester: pytest.Pytester, *args: str, notice: list[str]
) -> tuple[pytest.RunResult, pytest.RunResult]:
    """Run the session as is and with --llm-strict: both print the ``notice`` lines (fnmatch patterns),
    only the strict one fails; the two runs' results (as is, strict)."""
    lenient = run(pytester, *args)
    strict = run(pytester, *args, "--llm-strict")
    assert lenient.ret == pytest.ExitCode.OK, lenient.stdout.str()
    assert strict.ret == pytest.ExitCode.TESTS_FAILED, strict.stdout.str()
    for result in (lenient, strict):
        result.stdout.fnmatch_lines(notice)
    return lenient, strict


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(name="server")
def server_fixture(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    """A running fake OpenAI server; inner tests find it through LEDGER_TEST_BASE_URL."""
    with FakeOpenAI() as srv:
        monkeypatch.setenv("LEDGER_TEST_BASE_URL", srv.base_url)
        yield srv


@pytest.fixture(name="no_key")
def no_key_fixture(monkeypatch: pytest.MonkeyPatch) -> None:
    """No OPENAI_API_KEY, as in CI."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


@pytest.fixture(name="with_key")
def with_key_fixture(monkeypatch: pytest.MonkeyPatch) -> None:
    """A (fake) OPENAI_API_KEY, as when recording."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-SECRET-key-1234")


# the projects made once in this process (by once_per_process), by key
_MADE: dict[object, Path] = {}


def once_per_process(
    key: object, pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory, make: Callable[[], None]
) -> None:
    """``make()`` the project in ``pytester`` the first time ``key`` is asked for in this process; the
    next times, copy the project as ``make`` left it. For projects made by whole pytest sessions
    (recordings, reports) that would come out the same every time: the fake server answers alike on
    every port, and cassettes do not store the port."""
    if key in _MADE:
        shutil.copytree(_MADE[key], pytester.path, dirs_exist_ok=True)
        return
    make()
    _MADE[key] = tmp_path_factory.mktemp("made") / "project"
    # bytecode names the file it was compiled from: a copy's tracebacks would name this project
    shutil.copytree(pytester.path, _MADE[key], ignore=shutil.ignore_patterns("__pycache__"))


@pytest.fixture(name="recorded")
def recorded_fixture(
    pytester: pytest.Pytester, server: FakeOpenAI, with_key: None, tmp_path_factory: pytest.TempPathFactory
) -> pytest.Pytester:
    """An inner project whose three tests are recorded, with the server then stopped (recorded once
    per process: see once_per_process)."""

    def record() -> None:
        write_project(pytester)
        assert run(pytester, "--llm-record-mode=once").ret == 0

    once_per_process(("recorded", os.environ.get("LEDGER_TEST_PROMPT")), pytester, tmp_path_factory, record)
    server.stop()
    return pytester


class LoopbackServer:
    """A plain HTTP server on 127.0.0.1 serving ``handler`` from a daemon thread, for what the fake
    OpenAI server cannot play: a library's data download, a body compressed a particular way."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.address = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._stopped = False
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            shutdown_now(self._server)
            self._server.server_close()


class DataServer(LoopbackServer):
    """A plain HTTP server that is not OpenAI: what a library downloads its data from on first import."""

    def __init__(self) -> None:
        hits: list[str] = []
        self.hits = hits  # paths requested, in order

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                body = b"tokenizer data"
                self.send_response(200)
                self.send_header("content-type", "text/plain")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        super().__init__(Handler)
        self.url = f"{self.address}/nltk_data/punkt.zip"


@pytest.fixture(name="data_server")
def data_server_fixture(monkeypatch: pytest.MonkeyPatch) -> Iterator[DataServer]:
    """A non-OpenAI HTTP server; inner tests find its URL in LEDGER_TEST_DATA_URL."""
    server = DataServer()
    monkeypatch.setenv("LEDGER_TEST_DATA_URL", server.url)
    yield server
    server.stop()
