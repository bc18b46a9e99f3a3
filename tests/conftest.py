"""Shared fixtures: a loopback OpenAI-compatible server and real SDK clients pointed at it."""

from __future__ import annotations

import atexit
import gc
import importlib
import importlib.metadata
import logging
import os
import shutil
import signal
import socket
import sys
import sysconfig
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

import openai
import pytest
import pytest_asyncio

import llm_ledger
from llm_ledger import _config, _monitor
from llm_ledger.testing import Captured, FakeOpenAI, capture, price_time_of_day

if TYPE_CHECKING:
    from tests.exporter_helpers import SharedPrometheus

pytest_plugins = ["pytester"]

# A contributor's shell may export the settings of their own application (LLM_LEDGER_PRICE_FILE,
# LLM_LEDGER_LOG_DIR...) or the SDK's (OPENAI_BASE_URL, OPENAI_LOG): the suite and every process it
# starts run as on a clean machine. OPENAI_API_KEY is left to the tests that unset it themselves.
for _name in [n for n in os.environ if n.startswith(("LLM_LEDGER_", "OPENAI_")) and n != "OPENAI_API_KEY"]:
    del os.environ[_name]

FAKE_KEY = "sk-test-LEAKCHECK-0123456789abcdef"

# Among the last things this process does at exit, after every pytest cleanup (the last collection of
# its unraisable-exception check among them): freeze what is left, so that the interpreter's shutdown
# does not walk every object the session imported and made (over half a CPU-second a pytest process)
atexit.register(gc.freeze)

# pytester's in-process runs drop the modules first imported inside them, and a client imports its
# HTTP stack (httpcore2, h11, anyio) lazily: a test's client made after such a run would import it
# anew, while the HTTP library still maps the old module's exceptions, so a connection error would
# escape unmapped. Imported here, the stack outlives every in-process run.
openai.OpenAI(api_key=FAKE_KEY).close()
# So is what instrument() imports: it reaches the client's chat, responses and beta resources, whose
# modules (most of the SDK's types) a run would otherwise import anew, about a CPU-second each time.
with openai.OpenAI(api_key=FAKE_KEY) as _client:
    llm_ledger.LLMCallMonitor(logger=None).instrument(_client)
# And genai-prices' bundled data and vcrpy, which a run's first priced call and first cassette would
# import again (0.2 CPU-s each).
importlib.import_module("genai_prices.data")
importlib.import_module("vcr")


def _parsed_once(prop: property, copy: Callable[[Any], Any]) -> property:
    """``prop`` of an installed distribution, parsed once per state of its directory (a file written,
    renamed or removed there changes the directory's mtime, and it is parsed again)."""
    parsed: dict[tuple[str, int], Any] = {}
    read: Callable[[importlib.metadata.Distribution], Any] = prop.__get__

    def get(dist: importlib.metadata.Distribution) -> Any:
        path = getattr(dist, "_path", None)
        if type(dist) is not importlib.metadata.PathDistribution or path is None:
            return read(dist)
        try:
            key = (str(path), os.stat(path).st_mtime_ns)
        except OSError:
            return read(dist)
        if key not in parsed:
            parsed[key] = read(dist)
        return copy(parsed[key])

    return property(get, doc=prop.__doc__)


# Each in-process pytest session (pytester) reads every installed distribution's metadata again:
# pluggy's entry-point loading, pytest's rewrite marking and report header, the plugin's own check
# of the pytest11 entry points parse the same METADATA, RECORD and entry_points.txt (about 15 ms a
# session, hundreds of sessions). Parsed once here, they give the same answers.
for _name, _copy in (
    ("metadata", lambda value: value),  # read only (nobody sets a header of an installed package)
    ("entry_points", lambda value: value),  # immutable
    ("files", lambda files: None if files is None else list(files)),  # a list: each caller its own
):
    setattr(
        importlib.metadata.Distribution,
        _name,
        _parsed_once(getattr(importlib.metadata.Distribution, _name), _copy),
    )

# The modules whose tests take seconds each (real servers, interpreters, pip, fuzzing), slowest first:
# they run first, so that no xdist worker is left alone with one of them at the end of the run.
# `make test` runs --dist worksteal: a worker starts on a contiguous half of the tests (a module's
# tests, sharing its module-scoped server or recordings, stay on one worker) and an idle worker takes
# tests from the end of the other's. (xdist_group is no help: xdist 3.8 renames the node ids of a
# group through an attribute pytest 9.2 no longer reads, so the group is not kept together.)
SLOW_FIRST = (
    "test_bench_smoke.py",
    "test_exporters_dashboard.py",
    "test_exp_prometheus_multiprocess.py",
    "test_pr_recipe.py",
    "test_plugin_orphans.py",
    "test_reliability_fuzz.py",
    "test_reliability_memory.py",
    "test_reliability_load.py",
    "test_reliability_stopping.py",
    "test_plugin_report.py",
    "test_exporters_gunicorn.py",
    "test_exporters_logs.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(SLOW_FIRST)}
    items.sort(
        key=lambda item: rank.get(item.path.name, len(SLOW_FIRST))
    )  # stable: the rest keep their order


@pytest.fixture(scope="session", autouse=True)
def _empty_trust_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every SDK client made here talks plain HTTP to a loopback server, yet making one loads the whole
    system CA bundle into its TLS context (most of a small test's time): the clients of this session
    and of the processes it starts get an empty store (no test speaks TLS; none reaches the network)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("SSL_CERT_FILE", raising=False)  # read before SSL_CERT_DIR
        patch.setenv("SSL_CERT_DIR", str(tmp_path_factory.mktemp("no-certificates")))
        yield


@pytest.fixture(scope="session")
def _fake_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


# The SDK clients this suite made since the running test began, each with where. A client left open
# is closed by the garbage collector later, inside whichever test runs a full collection, whose
# socket then warns there ("unclosed socket": a ResourceWarning, an error under filterwarnings): a
# flake far from its cause. Noted when made, checked when the test ends: no collection per test.
_made_clients: weakref.WeakKeyDictionary[openai.OpenAI | openai.AsyncOpenAI, str] = (
    weakref.WeakKeyDictionary()
)
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OPENAI = os.path.dirname(os.path.abspath(openai.__file__)) + os.sep
_LIBRARIES = tuple({sysconfig.get_path("purelib") + os.sep, sysconfig.get_path("platlib") + os.sep})


def _maker(frame: FrameType | None) -> str | None:
    """Where the code that made a client is (``file:line``; the SDK's own frames, a copy made by
    ``with_options()``, skipped), or None for a client a library made for itself (LangChain's,
    LiteLLM's cached ones): the library closes it, or keeps it on purpose."""
    while frame is not None and frame.f_code.co_filename.startswith(_OPENAI):
        frame = frame.f_back
    if frame is None or frame.f_code.co_filename.startswith(_LIBRARIES):
        return None
    path = frame.f_code.co_filename
    shown = os.path.relpath(path, _ROOT) if path.startswith(_ROOT + os.sep) else path
    return f"{shown}:{frame.f_lineno}"


@pytest.fixture(scope="session", autouse=True)
def _sdk_clients_noted() -> Iterator[None]:
    """Every OpenAI SDK client built from now on (sync or async, Azure's too: their ``__init__``
    runs ``OpenAI``'s or ``AsyncOpenAI``'s) is noted, weakly, for :func:`_sdk_clients_closed`."""
    with pytest.MonkeyPatch.context() as patch:
        for cls in (openai.OpenAI, openai.AsyncOpenAI):

            def noted(
                self: Any, *args: Any, _init: Callable[..., None] = cls.__init__, **kwargs: Any
            ) -> None:
                _init(self, *args, **kwargs)
                if (where := _maker(sys._getframe(1))) is not None:
                    _made_clients[self] = where

            patch.setattr(cls, "__init__", noted)
        yield


@pytest.fixture(autouse=True)
def _sdk_clients_closed(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test fails at teardown when an SDK client made during it (its fixtures' included: they are
    torn down first) is still open: close it with ``with`` or take it from the ``client``, ``aclient``
    or ``sdk`` fixture. A test that leaves clients to the garbage collector on purpose is marked
    ``unclosed_clients``."""
    _made_clients.clear()
    yield
    open_ones = [where for client, where in list(_made_clients.items()) if not client.is_closed()]
    _made_clients.clear()
    if open_ones and request.node.get_closest_marker("unclosed_clients") is None:
        pytest.fail(
            f"{len(open_ones)} OpenAI SDK client(s) made during this test are still open when it ends "
            f"(made at {', '.join(sorted(open_ones))}); the garbage collector would close them later, in "
            "another test, whose 'unclosed socket' warning then fails it: close each with `with` or use the "
            "client, aclient or sdk fixture (or mark a test that leaves them on purpose "
            "@pytest.mark.unclosed_clients)",
            pytrace=False,
        )


def sigint_default() -> None:
    """``preexec_fn`` of a child a test stops with Ctrl-C (SIGINT): a suite started in the background
    by a non-interactive shell has SIGINT ignored, which the child inherits, and it would never stop."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    """Debian's ``prometheus`` (the tests that evaluate PromQL run the real one): skipped without it,
    failed when CI is set (.ci/run installs it)."""
    path = shutil.which("prometheus")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(
                "CI is set but the prometheus binary is missing: .ci/run installs Debian's prometheus"
            )
        pytest.skip("no prometheus binary (apt-get install prometheus): PromQL is not evaluated")
    return path


@pytest.fixture(scope="session")
def prometheus(
    prometheus_binary: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SharedPrometheus]:
    """The session's real Prometheus (each xdist worker's), scraping a job per test that uses it."""
    from tests.exporter_helpers import SharedPrometheus

    with SharedPrometheus(prometheus_binary, tmp_path_factory.mktemp("prometheus")) as shared:
        yield shared


@pytest.fixture(scope="session", autouse=True)
def _prometheus_started_early(request: pytest.FixtureRequest) -> None:
    """Prometheus scrapes its first targets about five seconds after it starts: when the session has
    tests that need it, it starts with the first test, and that wait passes while other tests run."""
    if shutil.which("prometheus") and any(i.get_closest_marker("prometheus") for i in request.session.items):
        request.getfixturevalue("prometheus")


@pytest.fixture
def pytester(pytester: pytest.Pytester) -> Iterator[pytest.Pytester]:
    """pytester, its in-process runs collecting only their own garbage: the plugin collects it all at
    the end of each session (an abandoned stream ends when collected), and a full collection of this
    process (the SDK, hypothesis, every module imported so far) costs about half a CPU-second. Frozen
    objects stay alive; the run's own, and cycles holding them, are collected as in a fresh process."""
    gc.freeze()
    try:
        yield pytester
    finally:
        gc.unfreeze()


@pytest.fixture
def fake_openai(_fake_server: FakeOpenAI) -> FakeOpenAI:
    """The loopback server, with no recorded requests and no queued failures."""
    _fake_server.reset()
    return _fake_server


def socket_client(fake_openai: FakeOpenAI) -> openai.OpenAI:
    """A client (not instrumented) whose WebSockets, the Realtime and Responses APIs', reach the loopback
    server."""
    return openai.OpenAI(
        api_key=FAKE_KEY,
        base_url=fake_openai.base_url,
        websocket_base_url=fake_openai.websocket_base_url,
        max_retries=0,
    )


@pytest.fixture
def ws(fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor) -> Iterator[openai.OpenAI]:
    """A sync client whose WebSockets reach the loopback server, instrumented by the monitor."""
    with socket_client(fake_openai) as raw:
        yield monitor.instrument(raw)


@pytest_asyncio.fixture
async def aws(
    fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor
) -> AsyncIterator[openai.AsyncOpenAI]:
    """The async twin of ``ws``."""
    raw = openai.AsyncOpenAI(
        api_key=FAKE_KEY,
        base_url=fake_openai.base_url,
        websocket_base_url=fake_openai.websocket_base_url,
        max_retries=0,
    )
    async with raw:
        yield monitor.instrument(raw)


@pytest.fixture(autouse=True)
def _only_llm_tests_count_in_this_sessions_report(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This suite's own llm-ledger plugin hears every monitor: only the ``llm`` tests (the example
    app's lenses, replayed from cassettes) count toward its report and budgets.yaml; the others test
    the ledger itself, with monitors, lens keys and calls of their own."""
    if request.node.get_closest_marker("llm") is None:
        monkeypatch.setattr(_monitor, "_global_sinks", ())


@pytest.fixture
def monitor(monkeypatch: pytest.MonkeyPatch) -> llm_ledger.LLMCallMonitor:
    """A fresh monitor with no logger, so tests see only their own records."""
    return llm_ledger.LLMCallMonitor(logger=None)


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections for the whole test: bound, never listening. A port
    freed after binding it could be taken by another process before the test connects."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def priced_when_made() -> Iterator[None]:
    """Calls whose price depends on the time of day priced at the moment they started, as outside
    pytest: this suite runs in the plugin's session, which prices them at the day's dearest rate."""
    previous = price_time_of_day("now")
    yield
    price_time_of_day(previous)


@pytest.fixture
def records(monitor: llm_ledger.LLMCallMonitor) -> Iterator[Captured]:
    """Every record the test's monitor emits."""
    with capture(monitor) as captured:
        yield captured


@pytest.fixture
def client(fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor) -> Iterator[openai.OpenAI]:
    """A sync client on the loopback server, instrumented by the test's monitor."""
    raw = openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0)
    with raw:
        yield monitor.instrument(raw)


@pytest_asyncio.fixture
async def aclient(
    fake_openai: FakeOpenAI, monitor: llm_ledger.LLMCallMonitor
) -> AsyncIterator[openai.AsyncOpenAI]:
    """An async client on the loopback server, instrumented by the test's monitor."""
    raw = openai.AsyncOpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0)
    async with raw:
        yield monitor.instrument(raw)


Sdk = Callable[[llm_ledger.LLMCallMonitor], openai.OpenAI]


@pytest.fixture
def sdk(fake_openai: FakeOpenAI) -> Iterator[Sdk]:
    """``sdk(monitor)``: a sync client on the loopback server instrumented by ``monitor``, closed when
    the test ends (an unclosed one warns later, in whichever test the garbage collector runs)."""
    opened: list[openai.OpenAI] = []

    def client(monitor: llm_ledger.LLMCallMonitor) -> openai.OpenAI:
        opened.append(openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0))
        return monitor.instrument(opened[-1])

    yield client
    for raw in opened:
        raw.close()


@pytest.fixture
def internal_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Captures what the ledger reports about its own failures."""
    caplog.set_level(logging.WARNING, logger="llm_ledger.internal")
    return caplog


@pytest.fixture
def fresh_config(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A default monitor and llm_monitor logger as on a fresh import, restored afterwards."""
    logger = logging.getLogger("llm_monitor")
    saved = (logger.handlers[:], logger.propagate, logger.level)
    sigterm = signal.getsignal(signal.SIGTERM)  # configure() may install its handler
    for name in (
        "LLM_LEDGER_LOG_DIR",
        "LLM_LEDGER_PRICE_FILE",
        "LLM_LEDGER_CAPTURE_CONTENT",
        "LLM_LEDGER_STREAM_USAGE",
        "LLM_LEDGER_HANDLE_SIGTERM",
        "LLM_LEDGER_EXPORTERS",
        "LLM_LEDGER_BUDGETS",
        "LLM_LEDGER_BUDGET_MODE",
        "LLM_LEDGER_ANOMALIES",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(_config, "_monitor", None)
    monkeypatch.setattr(_config, "_settings", None)
    monkeypatch.setattr(_config, "_handler", None)
    monkeypatch.setattr(_config, "_given", {})
    yield
    handler = _config._handler
    if handler is not None:
        logger.removeHandler(handler)
        handler._kept_open = False  # as configure() closes a file it moves from
        handler.close()
    logger.handlers[:], logger.propagate = saved[0], saved[1]
    logger.setLevel(saved[2])
    signal.signal(signal.SIGTERM, sigterm)
