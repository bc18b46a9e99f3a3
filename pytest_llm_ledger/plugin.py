"""The pytest plugin: options, hooks and fixtures.

Settings come in two layers, the command line over the ini file:

=========================  ======================  ======================================
command line               ini                     default
=========================  ======================  ======================================
``--llm-record-mode``      ``llm_record_mode``     ``none`` (replay only, offline)
``--llm-cassette-dir``     ``llm_cassette_dir``    ``cassettes`` under the rootdir
``--llm-budget``           (none)                  off: totals are reported, never enforced
``--llm-budget-file``      ``llm_budget_file``     ``budgets.yaml`` under the rootdir
``--llm-report PATH``      (none)                  no file
``--llm-baseline PATH``    (none)                  no diff
(marker ``match_host``)    ``llm_match_host``      off: match method, API path and body
=========================  ======================  ======================================

``--llm-ledger-budget`` is an alias of ``--llm-budget`` that stays available when another plugin
(pytest-llm-cost) owns ``--llm-budget``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
import threading
from collections.abc import Generator, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import pytest

from llm_ledger._errors import CassetteError

from ._budgets import BudgetError, Budgets, load_budgets
from ._cassette import RECORD_MODES, CassetteMissError, LedgerCassette, activate
from ._naming import cassette_path
from ._report import SESSION_BUCKET, Breach, SessionLedger, Totals, render_breaches, render_lens_table

__all__ = ["LedgerRecords"]

PLACEHOLDER_API_KEY: Final = "sk-llm-ledger-replay-placeholder"
_BUDGET_FLAG: Final = "--llm-budget"
_CONFLICTING_DISTS: Final = frozenset({"pytest-llm-cost"})
_STATE = pytest.StashKey["_LedgerState"]()
_CASSETTE = pytest.StashKey[LedgerCassette]()
_REPORTED_MISSES = pytest.StashKey[int]()
_PASSED = pytest.StashKey[bool]()
_FLAG_OWNER = pytest.StashKey[str]()
# Sessions configured in this process, innermost last: a session run in-process by pytester
# inside another gets the records, not the outer session that happens to share the monitor.
_active: list[_LedgerState] = []


# -- options ------------------------------------------------------------------------------------


def _llm_cost_installed(pluginmanager: pytest.PytestPluginManager) -> str | None:
    """The name of an installed, enabled plugin known to define --llm-budget, to name it in messages."""
    try:
        entry_points = importlib.metadata.entry_points(group="pytest11")
    except Exception:  # a broken environment must not break every test run
        return None
    for ep in entry_points:
        dist = ep.dist.name.lower().replace("_", "-") if ep.dist is not None else ""
        if dist in _CONFLICTING_DISTS and not pluginmanager.is_blocked(ep.name):
            return dist
    return None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup(
        "llm-ledger", "llm-ledger: replay LLM calls from cassettes, budgets, cost reports"
    )
    group.addoption(
        "--llm-record-mode",
        choices=RECORD_MODES,
        default=None,
        help="cassettes of tests marked llm: none (replay only, the default), once (record missing "
        "cassettes), new_episodes (record unmatched requests), all (re-record every request, keep the "
        "rest), rewrite (replace each cassette).",
    )
    group.addoption(
        "--llm-cassette-dir", default=None, help="cassette directory (default: <rootdir>/cassettes)."
    )
    group.addoption("--llm-budget-file", default=None, help="budgets file (default: <rootdir>/budgets.yaml).")
    group.addoption("--llm-report", default=None, metavar="PATH", help="write per-lens totals as JSON.")
    group.addoption(
        "--llm-baseline",
        default=None,
        metavar="PATH",
        help="show the cost diff against an --llm-report file.",
    )
    parser.addini(
        "llm_record_mode", "record mode for tests marked llm (see --llm-record-mode)", default="none"
    )
    parser.addini("llm_cassette_dir", "cassette directory, relative to the rootdir", default="cassettes")
    parser.addini("llm_budget_file", "budgets file, relative to the rootdir", default="budgets.yaml")
    parser.addini(
        "llm_match_host",
        "match cassette requests on the host too (default: method, API path and body only)",
        type="bool",
        default=False,
    )


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> None:
    # The budget switch is added here rather than in pytest_addoption: every installed plugin has
    # registered its options by now, so a plugin that owns --llm-budget (pytest-llm-cost) keeps it
    # whichever loaded first, and llm-ledger falls back to --llm-ledger-budget and says so.
    group = parser.getgroup("llm-ledger")
    attrs: dict[str, Any] = {
        "action": "store_true",
        "default": False,
        "dest": "llm_ledger_budget",
        "help": "fail the run when a limit in the budgets file is exceeded.",
    }
    owner = "llm-ledger"
    try:
        group.addoption(_BUDGET_FLAG, "--llm-ledger-budget", **attrs)
    except (ValueError, argparse.ArgumentError):
        owner = _llm_cost_installed(early_config.pluginmanager) or "another plugin"
        group.addoption("--llm-ledger-budget", **attrs)
    early_config.stash[_FLAG_OWNER] = owner


# -- session state ------------------------------------------------------------------------------


class LedgerRecords:
    """The llm-ledger records emitted during the current test (the ``llm_ledger`` fixture)."""

    def __init__(self, nodeid: str) -> None:
        self.nodeid = nodeid
        self.calls: list[dict[str, Any]] = []
        self.lenses: list[dict[str, Any]] = []

    def lens(self, lens_key: str) -> list[dict[str, Any]]:
        """The ``lens_summary`` records of ``lens_key``, in the order the runs ended."""
        return [r for r in self.lenses if (r.get("context") or {}).get("lens_key") == lens_key]

    def totals(self) -> Totals:
        out = Totals()
        for record in self.calls:
            out.add(Totals.of_call(record))
        return out

    @property
    def api_calls(self) -> int:
        return len(self.calls)

    @property
    def prompt_tokens(self) -> int:
        return self.totals().prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return self.totals().completion_tokens

    @property
    def total_tokens(self) -> int:
        return self.totals().total_tokens

    @property
    def cost_usd(self) -> float:
        return self.totals().cost_usd


class _LedgerState:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.mode = _record_mode(config)
        self.cassette_dir = _path_option(config, "llm_cassette_dir")
        self.budget_file = _path_option(config, "llm_budget_file")
        self.enforce = bool(config.getoption("llm_ledger_budget", False))
        self.flag_owner = config.stash.get(_FLAG_OWNER, "llm-ledger")
        self.is_worker = hasattr(config, "workerinput")
        self.budgets: Budgets | None = None
        self.ledger = SessionLedger()
        self.breaches: list[Breach] = []
        self._lock = threading.Lock()
        self._current: LedgerRecords | None = None
        self._attached = False
        self._placeholder_key = False

    # records from llm_ledger's monitor, called synchronously on the emitting thread
    def sink(self, record: Mapping[str, Any]) -> None:
        event = record.get("event")
        if event not in ("llm_api_call", "lens_summary") or (_active and _active[-1] is not self):
            return
        with self._lock:
            current = self._current
            nodeid = current.nodeid if current is not None else SESSION_BUCKET
            if event == "llm_api_call":
                self.ledger.add_call(nodeid, record)
                if current is not None:
                    current.calls.append(dict(record))
            else:
                self.ledger.add_lens(nodeid, record)
                if current is not None:
                    current.lenses.append(dict(record))

    def attach(self) -> None:
        """Listen to every llm_ledger monitor (the default one and the application's own) once the
        code under test has imported llm_ledger."""
        if not self._attached and "llm_ledger" in sys.modules:
            from llm_ledger import _monitor

            _monitor.add_global_sink(self.sink)
            self._attached = True

    def detach(self) -> None:
        if self._attached:
            from llm_ledger import _monitor

            _monitor.remove_global_sink(self.sink)
            self._attached = False

    @contextmanager
    def test(self, nodeid: str) -> Iterator[LedgerRecords]:
        records = LedgerRecords(nodeid)
        with self._lock:
            self._current = records
            self.ledger.tests.setdefault(nodeid, Totals())
        try:
            yield records
        finally:
            with self._lock:
                self._current = None

    def current(self) -> LedgerRecords | None:
        return self._current


def _record_mode(config: pytest.Config) -> str:
    mode = config.getoption("llm_record_mode") or config.getini("llm_record_mode")
    if mode not in RECORD_MODES:
        raise pytest.UsageError(
            f"llm_record_mode = {mode!r} in {config.inipath or 'the ini file'} is not a record mode; "
            f"use one of {', '.join(RECORD_MODES)}"
        )
    return str(mode)


def _compatible_server() -> str | None:
    """``OPENAI_BASE_URL`` when it names a server other than OpenAI's (a loopback or compatible one)."""
    url = os.environ.get("OPENAI_BASE_URL", "").strip()
    host = (urlsplit(url).hostname or "").lower()
    return url if host and host != "api.openai.com" else None


def _path_option(config: pytest.Config, name: str) -> Path:
    value = config.getoption(name)
    if value:  # command line: relative to where pytest was started
        return Path(config.invocation_params.dir, value).resolve()
    base = config.inipath.parent if config.inipath is not None else config.rootpath
    return Path(base, str(config.getini(name))).resolve()


def _display(config: pytest.Config, path: Path) -> str:
    try:
        return str(path.relative_to(config.rootpath))
    except ValueError:
        return str(path)


# -- hooks --------------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "llm: run the test inside its cassette (cassettes/<test file>/<test name>.yaml); replay only "
        "unless --llm-record-mode says otherwise",
    )
    state = _LedgerState(config)
    if state.enforce and not state.is_worker:
        try:
            state.budgets = load_budgets(state.budget_file, _display(config, state.budget_file))
        except BudgetError as exc:
            raise pytest.UsageError(f"llm-ledger: {exc}") from None
    if not os.environ.get("OPENAI_API_KEY") and (state.mode == "none" or _compatible_server()):
        # replay needs no key, nor does recording against a compatible server, but the SDK refuses
        # to build a client without one; recording against OpenAI itself keeps the SDK's error
        os.environ["OPENAI_API_KEY"] = PLACEHOLDER_API_KEY
        state._placeholder_key = True
    config.stash[_STATE] = state
    _active.append(state)
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(state), "llm_ledger_xdist")
    if not state.is_worker:
        config.pluginmanager.register(_Outcomes(state), "llm_ledger_outcomes")
    state.attach()


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is None:
        return
    state.detach()
    if state in _active:
        _active.remove(state)
    if state._placeholder_key and os.environ.get("OPENAI_API_KEY") == PLACEHOLDER_API_KEY:
        del os.environ["OPENAI_API_KEY"]
    del config.stash[_STATE]


def pytest_report_header(config: pytest.Config) -> list[str]:
    state = config.stash[_STATE]
    budget = _display(config, state.budget_file)
    flag = "--llm-ledger-budget" if state.flag_owner != "llm-ledger" else "--llm-budget"
    enforced = "enforced" if state.enforce else f"not enforced (add {flag})"
    lines = [
        f"llm-ledger: record mode {state.mode!r}, cassettes {_display(config, state.cassette_dir)}, "
        f"budgets {budget} {enforced}"
    ]
    if state._placeholder_key and state.mode != "none":
        lines.append(
            f"llm-ledger: OPENAI_API_KEY is unset; recording against {_compatible_server()} with a "
            "placeholder key"
        )
    if state.flag_owner != "llm-ledger":
        lines.append(
            f"llm-ledger: --llm-budget is defined by {state.flag_owner}, so it is not llm-ledger's switch "
            "here; use --llm-ledger-budget to enforce the budgets file"
        )
    return lines


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    state = item.config.stash[_STATE]
    state.attach()
    with state.test(item.nodeid):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report: pytest.TestReport = yield
    cassette = item.stash.get(_CASSETTE, None)
    if call.when == "call":
        item.stash[_PASSED] = report.passed
    if cassette is None:
        return report
    done = item.stash.get(_REPORTED_MISSES, 0)
    misses = cassette.misses[done:]
    if misses:
        # one clear message, whether the exception propagated, was wrapped or was swallowed
        item.stash[_REPORTED_MISSES] = len(cassette.misses)
        report.outcome = "failed"
        report.longrepr = "\n\n".join(misses)
    elif call.excinfo is not None and call.excinfo.errisinstance(CassetteMissError):
        report.longrepr = str(call.excinfo.value)
    return report


@pytest.fixture(autouse=True)
def _llm_ledger_cassette(request: pytest.FixtureRequest) -> Iterator[None]:
    """Run a test marked ``llm`` inside its cassette (autouse: unmarked tests pass straight through)."""
    item = request.node
    marker = item.get_closest_marker("llm") if isinstance(item, pytest.Item) else None
    if marker is None:
        yield
        return
    state = request.config.stash[_STATE]
    path = cassette_path(item, state.cassette_dir)
    match_host = marker.kwargs.get("match_host", request.config.getini("llm_match_host"))
    if not isinstance(match_host, bool):
        pytest.fail(
            f"@pytest.mark.llm(match_host={match_host!r}): match_host must be True or False", pytrace=False
        )
    try:
        cassette = LedgerCassette(path, state.mode, item.nodeid, match_host=match_host)
    except CassetteError as exc:
        pytest.fail(str(exc), pytrace=False)
    item.stash[_CASSETTE] = cassette
    with activate(cassette):
        yield
    passed = item.stash.get(_PASSED, False) and not cassette.misses
    cassette.save(test_passed=passed)
    unplayed = len(cassette.loaded) - cassette.played
    if passed and cassette.write_protected and unplayed > 0:
        # the code now makes fewer calls than were recorded: the cassette (and its cost) is stale
        with state._lock:
            state.ledger.unplayed[item.nodeid] = unplayed


@pytest.fixture
def llm_ledger(request: pytest.FixtureRequest) -> LedgerRecords:
    """The llm-ledger records (calls and lens summaries) emitted so far during this test."""
    state = request.config.stash[_STATE]
    state.attach()
    current = state.current()
    assert current is not None, "the llm_ledger fixture works only inside a running test"
    return current


def pytest_sessionfinish(session: pytest.Session, exitstatus: int | pytest.ExitCode) -> None:
    state = session.config.stash.get(_STATE, None)
    if state is None:
        return
    if state.is_worker:
        session.config.workeroutput["llm_ledger"] = json.dumps(state.ledger.to_wire())  # type: ignore[attr-defined]
        return
    if state.budgets is not None:
        state.breaches = state.ledger.check(state.budgets)
        if state.breaches and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    report_path = session.config.getoption("llm_report")
    if report_path:
        path = Path(session.config.invocation_params.dir, report_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(state.ledger.report(), indent=2, sort_keys=False) + "\n", encoding="utf-8")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is None or state.is_worker:
        return
    tr = terminalreporter
    ledger = state.ledger
    if ledger.lens_runs or ledger.total().api_calls:
        tr.write_sep("-", "llm-ledger: per-lens totals")
        for line in render_lens_table(ledger):
            tr.write_line(line)
    baseline = config.getoption("llm_baseline")
    if baseline:
        _write_baseline_diff(tr, config, Path(config.invocation_params.dir, baseline), ledger)
    if state.breaches:
        tr.write_sep("=", f"llm-ledger: {len(state.breaches)} budget limit(s) exceeded", red=True, bold=True)
        for line in render_breaches(state.breaches):
            tr.write_line(line)
        tr.write_line(f"limits from {_display(config, state.budget_file)}")
    elif state.budgets is not None:
        tr.write_line(f"llm-ledger: every budget in {_display(config, state.budget_file)} was met")
    if ledger.unplayed:
        stale = sorted(ledger.unplayed.items())
        shown = ", ".join(f"{nodeid} ({count})" for nodeid, count in stale[:5])
        more = f" and {len(stale) - 5} more" if len(stale) > 5 else ""
        tr.write_line(
            f"llm-ledger: {len(stale)} cassette(s) hold interactions their test no longer makes: "
            f"{shown}{more}; re-record them with --llm-record-mode=rewrite"
        )
    if state.budgets is not None:
        # a budget for a test that did not run checks nothing: say so (a subset run, or a typo)
        idle = sorted(set(state.budgets.tests) - set(ledger.tests))
        if idle:
            shown = ", ".join(idle[:5]) + (f" and {len(idle) - 5} more" if len(idle) > 5 else "")
            tr.write_line(f"llm-ledger: no run of {len(idle)} test(s) with a budget, not checked: {shown}")
    report_path = config.getoption("llm_report")
    if report_path:
        tr.write_line(f"llm-ledger: report written to {report_path}")


def _write_baseline_diff(tr: Any, config: pytest.Config, path: Path, ledger: SessionLedger) -> None:
    from llm_ledger import _diff

    tr.write_sep("-", f"llm-ledger: cost diff against {_display(config, path)}")
    try:
        base = _diff.load_report(path)
    except Exception as exc:
        tr.write_line(f"cannot read the baseline: {exc}", red=True)
        return
    for line in _diff.render(_diff.diff_reports(base, ledger.report()), "text").splitlines():
        tr.write_line(line)


class _Outcomes:
    """Failed tests, for the report (on the controller, which hears every worker's reports)."""

    def __init__(self, state: _LedgerState) -> None:
        self.state = state

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed:
            self.state.ledger.failed.add(report.nodeid)


class _XdistHooks:
    """Registered only when pytest-xdist is present (its hooks are unknown otherwise)."""

    def __init__(self, state: _LedgerState) -> None:
        self.state = state

    @pytest.hookimpl
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        data = getattr(node, "workeroutput", {}).get("llm_ledger")
        if data:
            self.state.ledger.merge_wire(json.loads(data))
