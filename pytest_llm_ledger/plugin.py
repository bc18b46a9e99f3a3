"""The pytest plugin: options, hooks and fixtures (docs/CI.md says what each does).

The entry point loads it in every pytest run of an environment with llm-ledger installed: vcrpy, the
cassette engine and the report diff are imported only by the first test or option that needs them.
"""

from __future__ import annotations

import copy
import gc
import importlib.metadata
import importlib.util
import itertools
import json
import logging
import os
import shlex
import threading
from collections.abc import Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import pytest

from llm_ledger import (
    BlockedRequestError,
    BudgetError,
    Budgets,
    CassetteError,
    CassetteMissError,
    ConfigError,
    load_budgets,
)
from llm_ledger import __all__ as _MODULE_NAMES  # the module's names, which the fixture's name hides
from llm_ledger.loading import BOOLEAN_WORDS, did_you_mean, listed, looks_like_credential, no_controls, shown
from llm_ledger.testing import Captured, add_global_sink, price_time_of_day, remove_global_sink

from ._attribution import Starts
from ._format import shown_path, write_atomic
from ._naming import (
    RECORD_MODES,
    TO_RECORD,
    cassette_folder,
    cassette_params,
    cassette_path,
    has_cassette,
    mark_case_twins,
    move_command,
    moved_hint,
    orphan_cassettes,
    project_dir,
    renamed_cassettes,
    rerecord_command,
    secret_params,
    selected_folders,
)
from ._network import WEBSOCKET, Guard
from ._report import (
    SESSION_BUCKET,
    Breach,
    SessionLedger,
    Totals,
    applied,
    budget_report,
    notices,
    paired,
    priced_at_fixed_time,
    render_breaches,
    render_lens_table,
    sets_limits,
)

if TYPE_CHECKING:
    from ._cassette import LedgerCassette

__all__ = ["LedgerRecords"]

PLACEHOLDER_API_KEY: Final = "sk-llm-ledger-replay-placeholder"
_CONFLICTING_DISTS: Final = frozenset({"pytest-llm-cost"})
_EVENTS: Final = ("llm_api_call", "lens_summary")  # the records the plugin keeps
_STATE = pytest.StashKey["_LedgerState"]()
_CASSETTE: pytest.StashKey[LedgerCassette] = pytest.StashKey()  # its module loads with the first one
_PASSED = pytest.StashKey[bool]()
_VERDICT = pytest.StashKey[tuple[bool, str | None]]()  # of the phase being reported: see _verdict
_FLAG_OWNER = pytest.StashKey[str]()
_ENVIRON = pytest.StashKey[pytest.MonkeyPatch]()
_PLACEHOLDER = pytest.StashKey[bool]()  # this session set OPENAI_API_KEY to PLACEHOLDER_API_KEY
_BLOCKED = pytest.StashKey[list[str]]()
_REPORTED = pytest.StashKey[tuple[int, ...]]()  # how many of each list of failures the test's reports showed
# the node id and cassette of an earlier test whose cassette path is the same, or the same but for case
_SHARES_WITH = pytest.StashKey[tuple[str, Path]]()
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


# Every setting once: its flag (None: ini only), its ini twin (None: flag only), the ini default and the
# help. A flag given wins over its twin. --llm-budget, whose flag another plugin may own, is added in
# pytest_load_initial_conftests.
_RELATIVE: Final = " (the flag's relative to the current directory, the ini value's to the ini file)"
_SETTINGS: Final[tuple[tuple[str | None, str | None, str | list[str] | None, str], ...]] = (
    ("--llm-record-mode", "llm_record_mode", "none",
     "record mode of tests marked llm: none (replay only, the default), once (record missing cassettes), "
     "new_episodes (record unmatched requests), all (re-record every request, keep the rest), rewrite "
     "(replace each cassette)"),
    ("--llm-cassette-dir", "llm_cassette_dir", "cassettes", "cassette directory" + _RELATIVE),
    ("--llm-budget-file", "llm_budget_file", "budgets.yaml", "budgets file" + _RELATIVE),
    (None, "llm_budget", "false", "enforce the budgets file without --llm-budget (true/false)"),
    ("--llm-strict", "llm_strict", "false",
     "fail the run on any llm-ledger notice: budgets that checked nothing, stale cassettes, calls with no "
     "known cost"),
    ("--llm-block-network", "llm_block_network", "false",
     "refuse the requests of tests marked llm that their cassette does not record (hosts in ini "
     "llm_allowed_hosts excepted); by default they are sent, unrecorded"),
    ("--llm-time-of-day", "llm_time_of_day", "dearest",
     "the time of day calls whose price depends on it (DeepSeek's peak hours) are priced at, on the day they "
     "ran, so costs and budgets do not change with the hour: dearest (the day's dearest rate, the default), "
     "HH:MM (UTC) or now (when each call ran)"),
    ("--llm-report", None, None, "write per-lens totals as JSON"),
    ("--llm-list-cassettes", None, None,
     "write the cassette paths of the collected tests as JSON (used by `llm-ledger cassettes`)"),
    ("--llm-baseline", None, None, "show the cost diff against an --llm-report file"),
    (None, "llm_cassette_keep", [],
     "cassettes no test owns that are not orphans (globs relative to the cassette directory, e.g. a demo's "
     "own cassettes)"),
    (None, "llm_allowed_hosts", [],
     "hosts (glob patterns) that tests not marked llm may send OpenAI API requests to in record mode none, "
     "e.g. 127.0.0.1 for a local server, and that network blocking lets through (default: none)"),
    (None, "llm_log_dir", "",
     "directory of the llm_calls.jsonl the application's llm_ledger.configure() writes during the run, "
     "relative to the ini file (default: none, keeping test runs out of the application's own log)"),
    (None, "llm_match_host", "false",
     "match cassette requests on the host too (true/false; default: method, API path and body only); "
     "@pytest.mark.llm(match_host=...) overrides it"),
)  # fmt: skip


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup(
        "llm-ledger", "llm-ledger: replay LLM calls from cassettes, budgets, cost reports"
    )
    for flag, ini, default, text in _SETTINGS:
        if flag is not None:
            # the record mode is checked as its ini twin is (whatever its case), not by argparse's choices
            metavar = {"llm_time_of_day": "HH:MM", "llm_record_mode": "MODE"}.get(str(ini), "PATH")
            kind: dict[str, Any] = {"metavar": metavar}
            if default == "false":
                kind = {"action": "store_true"}
            group.addoption(flag, help=f"{text}; ini {ini}" if ini else text, **kind)
        if isinstance(default, list):
            parser.addini(str(ini), text, type="args", default=default)
        elif ini is not None and default == "false" and pytest.version_tuple >= (9, 2):
            # pytest 9's own [tool.pytest] table types its values: `llm_strict = true` is a TOML bool
            # there (pytest 9.2 takes a union; the text is checked by _switch either way)
            parser.addini(ini, text, type=str | bool, default=default)
        elif ini is not None:
            parser.addini(ini, text, default=default)


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
        "dest": "llm_ledger_budget",
        "help": "fail the run when a limit in the budgets file is exceeded.",
    }
    # pytest 9 refuses a flag already added; pytest 8 takes it and crashes parsing the command line
    groups = [parser._anonymous, *parser._groups]  # the anonymous group is among the others since pytest 9
    if any("--llm-budget" in option.names() for g in groups for option in g.options):
        owner = _llm_cost_installed(early_config.pluginmanager) or "another plugin"
        group.addoption("--llm-ledger-budget", **attrs)
    else:
        owner = "llm-ledger"
        group.addoption("--llm-budget", "--llm-ledger-budget", **attrs)
    early_config.stash[_FLAG_OWNER] = owner
    # before conftest files import the application (which may call llm_ledger.configure()): test
    # runs stay out of its own log unless ini llm_log_dir asks for one
    wanted = str(early_config.getini("llm_log_dir")).strip()
    log_dir = str(_ini_path(early_config, "llm_log_dir")) if wanted else "off"
    if wanted and os.path.exists(log_dir) and not os.path.isdir(log_dir):  # not blamed on the variable
        raise pytest.UsageError(
            f"llm-ledger: llm_log_dir = {wanted}: {log_dir} is a file, not a directory; give the directory "
            "the application's llm_calls.jsonl is written to during the run (relative to the ini file)"
        )
    early_config.stash[_ENVIRON] = pytest.MonkeyPatch()
    early_config.stash[_ENVIRON].setenv("LLM_LEDGER_LOG_DIR", log_dir)
    # also when the run stops before pytest_configure (a conftest.py that fails to import, a misspelt
    # flag), which calls no pytest_unconfigure: a later session of the process must not inherit them
    early_config.add_cleanup(lambda: _restore_environ(early_config))
    # and a client the application builds at import needs a key (an unknown mode is refused later)
    mode = getattr(early_config.known_args_namespace, "llm_record_mode", None) or early_config.getini(
        "llm_record_mode"
    )
    _set_placeholder_key(early_config, str(mode).strip().lower())


# -- session state ------------------------------------------------------------------------------


def _socket_api(path: str) -> str:
    """The API of a WebSocket to the OpenAI API, by its path."""
    path = path.rstrip("/")
    if path.endswith("/responses"):
        return "the Responses API"
    return "the Live API" if path.endswith("/live/sessions") else "the Realtime API"


class LedgerRecords(Captured):
    """What the ``llm_ledger`` fixture returns: the llm-ledger records of the running test.

    Records of every monitor in the process emitted during the test's setup, call and teardown (less
    those of calls an earlier test started: a stream it left open), as
    :class:`llm_ledger.testing.Captured` holds them, and:

    * ``nodeid``: the test's node id;
    * ``calls``: the ``llm_api_call`` records (dicts, as in docs/MONITORING.md's "The records");
    * ``lenses``: the ``lens_summary`` records; ``lens(lens_key)`` those of one lens;
    * ``api_calls``, ``prompt_tokens``, ``completion_tokens``, ``total_tokens``, ``cost_usd``:
      sums over ``calls`` (``totals()`` gives them all at once);
    * ``cost_complete``: false when ``cost_usd`` leaves something out: a call with no known cost
      (docs/MONITORING.md), or a background response begun whose end no record of the test shows.
    """

    def __init__(self, nodeid: str) -> None:
        super().__init__()
        self.nodeid = nodeid

    def lens(self, lens_key: str) -> list[dict[str, Any]]:
        """The ``lens_summary`` records of ``lens_key``, in the order the runs ended."""
        return _LensRecords(r for r in self.lenses if (r.get("context") or {}).get("lens_key") == lens_key)

    if not TYPE_CHECKING:  # a type checker still refuses an attribute the fixture lacks

        def __getattr__(self, name: str) -> Any:
            # a test that imports llm_ledger and takes this fixture reaches the fixture by that name
            if name in _MODULE_NAMES:
                raise AttributeError(
                    f"{name!r}: llm_ledger here is the pytest fixture (the test's records), {_HIDDEN}"
                )
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def totals(self) -> Totals:
        """Calls, tokens, errors and cost of ``calls``, summed."""
        begun: dict[str, str] = {}
        return Totals.sum_of(paired(record, begun) for record in self.calls)

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

    @property
    def cost_complete(self) -> bool:
        return self.totals().cost_complete


_HIDDEN: Final = (
    "which hides the llm_ledger module inside this test; import the module under another name "
    "(import llm_ledger as ledger)"
)


class _LensRecords(list[dict[str, Any]]):
    """``llm_ledger.lens(key)``'s list, which says what went wrong when taken for the module's ``lens()``."""

    def __enter__(self) -> None:
        raise TypeError(f"llm_ledger.lens(...) here is the pytest fixture's list of lens records, {_HIDDEN}")

    def __exit__(self, *exc: object) -> None:
        pass


class _LedgerState:
    def __init__(self, config: pytest.Config) -> None:
        modes = {mode: mode for mode in RECORD_MODES}
        self.mode = str(
            _choice(config, "llm_record_mode", modes, f"a record mode; use one of {', '.join(modes)}")
        )
        self.cassette_dir = _path_option(config, "llm_cassette_dir")
        self.location = _location_options(config)
        self.budget_file = _path_option(config, "llm_budget_file")
        self.enforce = _switch(config, "llm_budget", dest="llm_ledger_budget")
        self.strict = _switch(config, "llm_strict")
        self.block_network = _switch(config, "llm_block_network")
        self.match_host = _switch(config, "llm_match_host")  # no flag: the marker overrides it
        self.allowed_hosts = _allowed_hosts(config)
        self.inipath = config.inipath
        when, source = _setting(config, "llm_time_of_day")
        self.given_time_of_day = str(when)  # as written: an error quotes it so
        self.time_of_day = self.given_time_of_day.strip().lower()
        self.where_time_of_day = source or f"ini {_where(config, 'llm_time_of_day')}"
        self.previous_time_of_day: str | None = None  # the setting to restore (an outer session's)
        self.flag_owner = config.stash.get(_FLAG_OWNER, "llm-ledger")
        self.is_worker = hasattr(config, "workerinput")
        self.budgets: Budgets | None = None  # enforced (--llm-budget)
        self.unenforced: Budgets | None = None  # read without --llm-budget, to say what it would fail
        self.ledger = SessionLedger()
        self.breaches: list[Breach] = []
        self.notices: list[str] = []
        self.unchecked_budgets = False  # a budget whose test or lens never ran
        self.lost_workers: list[str] = []  # xdist workers whose records never came: the run fails
        self.report_path: Path | None = None  # where --llm-report writes (not on an xdist worker)
        self.baseline: tuple[str, dict[str, Any]] | None = None  # --llm-baseline's name and report
        self.report_written = False
        self._lock = threading.Lock()
        self.current: LedgerRecords | None = None
        self._starts = Starts(SESSION_BUCKET)  # which test each record counts in
        self._placeholder_key = False
        # without the pytest extra the plugin changes nothing but failing tests marked llm (docs/CI.md):
        # a production install's own test suite keeps its OpenAI requests and OPENAI_API_KEY
        self.has_extra = importlib.util.find_spec("vcr") is not None
        # refuses what no cassette replays: an unmarked test's OpenAI request (in none mode), a marked
        # test's from a fixture set up before its cassette (in every mode)
        self.guard = Guard(self._refuse)
        self._guarded: str | None = None  # the running test's node id while its OpenAI requests are refused
        self._attempted = False  # the running test's setup began: another one is a rerun
        self._marked = False  # the running test is marked llm: the guard refuses outside its cassette
        self.in_cassette = False  # the running test's cassette is active: it replays or refuses
        self._blocked: list[str] = []
        self._config = config
        self._renamed: dict[Path, Path] | None = None  # see moved_from

    def here(self, nodeid: str) -> str:
        """How a command run where pytest was started names a test, as pytest's own summary does (from
        ``tests/``: ``test_x.py::test_y``)."""
        root, here = self._config.rootpath, self._config.invocation_params.dir
        if here == root:
            return nodeid
        path, sep, rest = nodeid.partition("::")
        try:
            path = Path(os.path.relpath(root / path, here)).as_posix()
        except ValueError:  # another drive (Windows): absolute
            path = (root / path).as_posix()
        return f"{path}{sep}{rest}"

    def moved_from(self, path: Path) -> Path | None:
        """The orphan cassette that ``path``, not recorded yet, plausibly was before its test was renamed
        or moved (:func:`renamed_cassettes`), found at the first miss of such a cassette."""
        with self._lock:
            if self._renamed is None:
                self._renamed = _renamed(self, self._config)
            return self._renamed.get(path)

    def sink(self, record: Mapping[str, Any]) -> None:
        """The session's global sink: records of every monitor, on the emitting thread."""
        event = record.get("event")
        if event not in _EVENTS or (_active and _active[-1] is not self):
            return
        with self._lock:
            current = self.current
            nodeid = self._starts.owner(record)
            if nodeid is None:
                return  # started in an attempt of a test that ran again: its last attempt counts
            if event == "llm_api_call":
                self.ledger.add_call(nodeid, record)
            else:
                self.ledger.add_lens(nodeid, record)
            if current is not None and current.nodeid == nodeid:
                current(record)

    @contextmanager
    def test(self, item: pytest.Item) -> Iterator[LedgerRecords]:
        records = LedgerRecords(item.nodeid)
        marker = item.get_closest_marker("llm")
        # an OpenAI request reaches the guard outside a cassette: an unmarked test's, or one from a
        # fixture of a marked test set up before its cassette (a wider scope); a deliberate live test,
        # and a test marked vcr alone (pytest-recording's cassette), are not guarded
        guarded = has_cassette(item) or (marker is None and item.get_closest_marker("vcr") is None)
        with self._lock:
            self.current = records
            self._starts.begin(item.nodeid)
            self._attempted = False
            self._marked = marker is not None
            self._guarded = item.nodeid if guarded else None
            self._blocked = item.stash[_BLOCKED] = []
            self.ledger.tests.setdefault(item.nodeid, Totals())
        try:
            yield records
        finally:
            with self._lock:
                self.current = None
                self._starts.begin(None)
                self._guarded = None
                self._blocked = []

    def attempt(self, item: pytest.Item) -> None:
        """The running test's setup begins. Again (pytest-rerunfailures' --reruns): its records so far
        are dropped, so the fixture and the totals hold its last attempt."""
        with self._lock:
            if self.current is None or self.current.nodeid != item.nodeid or not self._attempted:
                self._attempted = True
                return
            self.current = LedgerRecords(item.nodeid)
            self._starts.again()
            self.ledger.forget(item.nodeid)

    def allowed_hosts_setting(self, host: str) -> str:
        """The ini line that lets ``host`` through, as the project's ini file is written."""
        if self.inipath is not None and self.inipath.suffix == ".toml":  # a list, in TOML
            return f'llm_allowed_hosts = ["{host}"] in {self.inipath.name}'
        return f"ini llm_allowed_hosts = {host}"

    def _refuse_websocket(self, host: str, path: str) -> str | None:
        """The failure message for a WebSocket to the OpenAI API (Realtime or Responses) of a guarded test,
        marked llm or not, in none mode: no cassette records or replays one."""
        nodeid = self._guarded
        if self.mode != "none" or nodeid is None:
            return None  # recording (it goes out live, unrecorded), a live test, or a test marked vcr alone
        return self._block([
            f"llm-ledger: {nodeid} opened a WebSocket to the OpenAI API ({_socket_api(path)}), which "
            "cassettes do not record or replay, so it was not opened",
            f"  request: {WEBSOCKET} {host}{path}",
            "  in record mode 'none' nothing leaves the machine: point the client's websocket_base_url at a "
            "local server listed in llm_allowed_hosts (llm_ledger.testing.FakeOpenAI().websocket_base_url "
            "serves the Realtime, Responses and Live APIs), or mark the test @pytest.mark.llm(live=True) "
            "to let it go live",
        ])  # fmt: skip

    def _block(self, lines: list[str]) -> str:
        """The failure message of a request refused in the running test, kept to fail it."""
        message = "\n".join(lines)
        with self._lock:
            self._blocked.append(message)
        return message

    def _refuse(self, method: str, host: str, path: str) -> str | None:
        """The failure message for an OpenAI request of the running test, or None to send it."""
        if not _active or _active[-1] is not self:
            return None  # an outer session's guard
        if any(fnmatchcase(host, pattern) for pattern in self.allowed_hosts):
            return None
        if method == WEBSOCKET:
            return self._refuse_websocket(host, path)
        if self.in_cassette:
            return None  # the cassette replays it, or refuses it
        nodeid = self._guarded
        recording = self.mode != "none"
        if recording and not (self.current is not None and self._marked):
            if self.current is not None and nodeid is not None:  # sent live, and no cassette keeps it
                with self._lock:
                    self.ledger.unmarked_live.add(nodeid)
            return None  # while recording only a marked test's fixture of a wider scope is refused
        if self.current is None:  # no test running: a test module's import, a thread left running
            message = (
                "llm-ledger: an OpenAI API request was made while no test was running (at import or "
                f"collection), so it was not sent: {method} {host}{path}; in record mode {self.mode!r} "
                "nothing leaves the machine: make the call in a test marked llm, or in a function-scoped "
                "fixture of one"
            )
            with self._lock:
                self.ledger.refused.add(message)
            return message
        if nodeid is None:
            return None  # a live test, or a test marked vcr alone
        if self._marked:
            sent = "it would not be recorded, and the replay would refuse it"
            why = sent if recording else "nothing leaves the machine"
            lines = [
                f"llm-ledger: {nodeid} sent an OpenAI API request outside its cassette (a fixture of a "
                "wider scope than the test's, set up before it), so it was not sent",
                f"  request: {method} {host}{path}",
                f"  in record mode {self.mode!r} {why}; a cassette records the requests "
                "of its test's function-scoped fixtures and body: make that fixture function-scoped, or "
                "move the call into the test",
            ]
        else:
            hint = "  for a deliberate live test: @pytest.mark.llm(live=True)"
            if host != "api.openai.com":  # OpenAI itself is never a local server: letting it through bills CI
                hint += f"; for a local server: {self.allowed_hosts_setting(host)}"
            lines = [
                f"llm-ledger: {nodeid} is not marked llm, so its OpenAI API request was not sent",
                f"  request: {method} {host}{path}",
                f"  in record mode {self.mode!r} nothing leaves the machine unless a test records it.",
                "  to replay it from a cassette, mark it @pytest.mark.llm and record its cassette once;",
                f"  {TO_RECORD}:",
                f"    {rerecord_command(self.here(nodeid), 'once', self.location)}",
                hint,
            ]
        return self._block(lines)


def _setting(config: pytest.Config, ini: str, dest: str = "") -> tuple[Any, str | None]:
    """A setting's value and where it came from: its flag when given (it wins), ``-o ini=VALUE``, or None
    for the ini file (its value or the default)."""
    if flag := config.getoption(dest or ini, None):
        return flag, "--" + ini.replace("_", "-")
    override = _override(config, ini)
    if override is None:
        return config.getini(ini), None
    # as typed, but a key pasted there (the message quotes the value as shown() does)
    return config.getini(ini), f"-o {ini}=..." if looks_like_credential(override) else shlex.join(
        ["-o", f"{ini}={override}"]
    )


def _where(config: pytest.Config, ini: str) -> str:
    """Where a setting came from, for messages: its flag, ``-o``, or the ini file."""
    return _setting(config, ini)[1] or f"{ini} in {config.inipath or 'the ini file'}"


def _choice(config: pytest.Config, ini: str, choices: Mapping[str, Any], what: str, dest: str = "") -> Any:
    """A setting's value in ``choices``; a usage error saying ``what`` it should be when it is none."""
    raw, source = _setting(config, ini, dest)
    if (value := choices.get(str(raw).strip().lower())) is not None:
        return value
    got = shown(raw)  # a key pasted into the wrong setting is not printed
    if source is None:
        raise pytest.UsageError(f"{ini} = {got} in {config.inipath or 'the ini file'} is not {what}")
    raise pytest.UsageError(f"{source}: {got} is not {what}")


def _switch(config: pytest.Config, ini: str, dest: str = "") -> bool:
    return bool(_choice(config, ini, BOOLEAN_WORDS, "a boolean; use true or false", dest))


def _refuse_empty_values(config: pytest.Config) -> None:
    """A flag given an empty value (``--llm-report=$REPORT`` with the variable unset) is a usage error, not
    the flag left out; so is an empty cassette directory or budgets file in the ini file or ``-o``, which
    would be the project directory itself."""
    for flag, ini, default, _ in _SETTINGS:
        if flag is not None and default != "false":
            value = config.getoption(flag[2:].replace("-", "_"), None)
            if isinstance(value, str) and not value.strip():
                instead = f" (for ini {ini}'s value)" if ini else ""
                raise pytest.UsageError(
                    f"llm-ledger: {flag} is given an empty value (an unset variable in {flag}=$VAR?); "
                    f"give it a value, or leave the flag out{instead}"
                )
    for ini in ("llm_cassette_dir", "llm_budget_file"):
        if not config.getoption(ini) and not str(config.getini(ini)).strip():
            raise pytest.UsageError(
                f"llm-ledger: {_where(config, ini)} is empty; give a path relative to the ini file, or "
                "remove the setting for its default"
            )


def _allowed_hosts(config: pytest.Config) -> tuple[str, ...]:
    """ini llm_allowed_hosts, in lower case; a usage error for a pattern that lets OpenAI itself through."""
    patterns = [str(pattern) for pattern in config.getini("llm_allowed_hosts")]
    for pattern in patterns:
        if fnmatchcase("api.openai.com", pattern.lower()):
            raise pytest.UsageError(
                f"llm-ledger: {_where(config, 'llm_allowed_hosts')}: {shown(pattern)} lets requests to "
                "api.openai.com through, which no cassette records (a live, billed call); list the hosts of "
                "local servers only (127.0.0.1), and mark a deliberate live test @pytest.mark.llm(live=True)"
            )
    return tuple(pattern.lower() for pattern in patterns)


def _override(config: pytest.Config, ini: str) -> str | None:
    """The value ``-o ini=VALUE`` gave on the command line (the last one, as pytest takes), or None."""
    found = None
    for item in config.option.override_ini or ():
        name, equals, value = item.partition("=")
        if equals and name == ini:
            found = value
    return found


def _location_options(config: pytest.Config) -> tuple[str, ...]:
    """The command-line options that chose where the cassettes are, kept in every re-record command (an
    ini setting needs none: the command reads the ini file again)."""
    options = []
    if config.option.inifilename:  # -c: another ini file, another project folder and cassette directory
        options.append(f"--config-file={config.option.inifilename}")
    if (value := _override(config, "llm_cassette_dir")) is not None:
        options += ["-o", f"llm_cassette_dir={value}"]
    if value := config.getoption("llm_cassette_dir"):
        options.append(f"--llm-cassette-dir={value}")
    return tuple(options)


def _set_placeholder_key(config: pytest.Config, mode: str) -> bool:
    """Set OPENAI_API_KEY to the placeholder when it is unset and no real key is needed: replay needs
    none, nor does recording against a compatible server, but the SDK refuses to build a client
    without one (recording against OpenAI itself keeps the SDK's error). Whether the session set it."""
    if not config.stash.get(_PLACEHOLDER, False):
        config.stash[_PLACEHOLDER] = (
            importlib.util.find_spec("vcr") is not None  # the pytest extra (docs/CI.md)
            and not os.environ.get("OPENAI_API_KEY")
            and (mode == "none" or _compatible_server() is not None)
        )
        if config.stash[_PLACEHOLDER]:
            os.environ["OPENAI_API_KEY"] = PLACEHOLDER_API_KEY
    return config.stash[_PLACEHOLDER]


def _compatible_server() -> str | None:
    """``OPENAI_BASE_URL`` when it names a server other than OpenAI's (a loopback or compatible one)."""
    url = os.environ.get("OPENAI_BASE_URL", "").strip()
    host = (urlsplit(url).hostname or "").lower()
    return url if host and host != "api.openai.com" else None


def _path_option(config: pytest.Config, name: str) -> Path:
    value = config.getoption(name)
    if value:  # command line: relative to where pytest was started
        return Path(config.invocation_params.dir, value).resolve()
    return _ini_path(config, name)


def _ini_path(config: pytest.Config, name: str) -> Path:
    """An ini setting's path, relative to the ini file."""
    return Path(project_dir(config), str(config.getini(name)).strip()).resolve()


# -- hooks --------------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "llm: run the test inside its cassette (cassettes/<test file>/<test name>.yaml); replay only "
        "unless --llm-record-mode says otherwise; 401/403 answers are not recorded unless "
        "llm(record_auth_errors=True). llm(live=True): a deliberate live test, no cassette",
    )
    _refuse_empty_values(config)
    state = _LedgerState(config)
    if os.path.exists(state.cassette_dir) and not os.path.isdir(state.cassette_dir):  # every test a miss
        raise pytest.UsageError(
            f"llm-ledger: {_where(config, 'llm_cassette_dir')}: {shown_path(state.cassette_dir)} is a file, "
            "not a directory; give the directory the cassettes are kept in"
        )
    # read when enforced, and also when not, to say what enforcing would fail: a file with an error, or
    # named and not there, is the same usage error either way (the default budgets.yaml may be absent)
    named = (
        config.getoption("llm_budget_file") or str(config.getini("llm_budget_file")).strip() != "budgets.yaml"
    )
    if not state.is_worker and (state.enforce or named or os.path.lexists(state.budget_file)):
        try:
            budgets = load_budgets(
                state.budget_file,
                shown_path(state.budget_file),
                hint=", point --llm-budget-file / ini llm_budget_file at it"
                + (", or drop --llm-budget" if state.enforce else ""),
            )
        except BudgetError as exc:
            raise pytest.UsageError(f"llm-ledger: {exc}") from None
        if state.enforce:
            state.budgets = budgets
        else:
            state.unenforced = budgets
    if not state.is_worker:
        _refuse_paths_taken_for_tests(config)
        state.report_path = _report_path(config)  # a path that cannot be written fails now, not after the run
        state.baseline = _baseline(config)  # read before the run: --llm-report may replace it
    try:  # replayed calls priced by the time of day cost the same at any hour (docs/CI.md)
        state.previous_time_of_day = price_time_of_day(state.given_time_of_day)
    except ConfigError as exc:
        raise pytest.UsageError(f"llm-ledger: {state.where_time_of_day}: {exc}") from None
    state._placeholder_key = _set_placeholder_key(config, state.mode)
    config.stash[_STATE] = state
    _active.append(state)
    add_global_sink(state.sink)
    # now, not at the first test, and with --collect-only too: a test module that imports openai and
    # calls it at collection, and a test that imports it in its body, are guarded
    if state.has_extra:
        state.guard.install(load=True)
    if not state.is_worker:
        config.pluginmanager.register(_ControllerHooks(state), "llm_ledger_controller")


def _restore_environ(config: pytest.Config) -> None:
    """Take back LLM_LEDGER_LOG_DIR and the placeholder key, as the session found them (once)."""
    if _ENVIRON in config.stash:
        config.stash[_ENVIRON].undo()
        del config.stash[_ENVIRON]
    if config.stash.get(_PLACEHOLDER, False) and os.environ.get("OPENAI_API_KEY") == PLACEHOLDER_API_KEY:
        del os.environ["OPENAI_API_KEY"]
    config.stash[_PLACEHOLDER] = False


def pytest_unconfigure(config: pytest.Config) -> None:
    _restore_environ(config)  # also after a usage error, which leaves no state
    state = config.stash.get(_STATE, None)
    if state is None:
        return
    state.guard.uninstall()
    if state.previous_time_of_day is not None:
        price_time_of_day(state.previous_time_of_day)
    remove_global_sink(state.sink)
    _active.remove(state)
    del config.stash[_STATE]


def _not_a_ledger_record(record: logging.LogRecord) -> bool:
    msg = record.msg
    return not (isinstance(msg, dict) and msg.get("event") in _EVENTS)


def pytest_sessionstart(session: pytest.Session) -> None:
    # The plugin keeps the records to itself (the llm_ledger fixture, the report): pytest's captured
    # and live logs would otherwise show every call and lens summary of a failing test, kilobytes each.
    logging_plugin = session.config.pluginmanager.get_plugin("logging-plugin")
    for name in ("caplog_handler", "report_handler", "log_cli_handler"):
        handler = getattr(logging_plugin, name, None)
        if isinstance(handler, logging.Handler):
            handler.addFilter(_not_a_ledger_record)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report() -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    # every test of a module or class, before a node id picks some: names that differ only in case
    # are told apart whichever tests a run selects
    if report.passed:
        mark_case_twins(report.result)
    return report


@pytest.hookimpl(tryfirst=True)  # before -k / -m / --deselect: a deselected test still owns its cassette
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    state = config.stash[_STATE]
    owners: dict[Path, tuple[dict[str, Any], str]] = {}  # cassette -> the first test's parameters, node id
    folded: dict[str, tuple[Path, str]] = {}  # cassette path in lower case -> the first's path, node id
    for first in {item.path: item for item in items}.values():  # one item of each test file
        state.ledger.tested.add(str(cassette_folder(first, state.cassette_dir)))
    for item in items:
        marker = item.get_closest_marker("llm")
        if marker is None:
            continue
        if has_cassette(item):
            cassette = cassette_path(item, state.cassette_dir)
            state.ledger.cassettes.setdefault(str(cassette), item.nodeid)
            if marker.kwargs.get("record_auth_errors") is True:
                state.ledger.expect_auth_errors.add(str(cassette))
            params, owner = owners.setdefault(cassette, (cassette_params(item), item.nodeid))
            if not _equal(params, cassette_params(item)):  # not one test run again (equal values)
                item.stash[_SHARES_WITH] = (owner, cassette)
            # the same file on macOS and Windows: tests of other classes or files (one class's or
            # module's own are told apart when collected, see mark_case_twins)
            twin, owner = folded.setdefault(str(cassette).lower(), (cassette, item.nodeid))
            if twin != cassette:
                item.stash[_SHARES_WITH] = (owner, twin)
        unknown = [key for key in marker.kwargs if key not in _MARKER_KEYS]
        path, line, _ = item.location
        where = f"{path}:{(line or 0) + 1}: {item.nodeid}"
        if marker.args or unknown or not all(isinstance(value, bool) for value in marker.kwargs.values()):
            # each value shortened, and a credential (api_key=...) described, never quoted
            given = ", ".join(
                [*map(shown, marker.args), *(f"{k}={shown(v)}" for k, v in marker.kwargs.items())]
            )
            hint = did_you_mean(unknown[0], _MARKER_KEYS) if unknown else ""
            raise pytest.UsageError(
                f"{where}: @pytest.mark.llm({given}) is not a valid llm marker{hint}; use @pytest.mark.llm "
                "(replay from a cassette), @pytest.mark.llm(match_host=True) (match the host too), "
                "@pytest.mark.llm(record_auth_errors=True) (keep the 401/403 answers the test expects) or "
                "@pytest.mark.llm(live=True) (a deliberate live test)"
            )
        if marker.kwargs.get("live") and (idle := [k for k in _MARKER_KEYS[1:] if marker.kwargs.get(k)]):
            raise pytest.UsageError(
                f"{where}: @pytest.mark.llm(live=True, {idle[0]}=True): a live test has no cassette, so "
                f"{idle[0]} does nothing; drop it, or drop live=True to replay the test from its cassette"
            )


_MARKER_KEYS: Final = ("live", "match_host", "record_auth_errors")


def _equal(first: dict[str, Any], second: dict[str, Any]) -> bool:
    try:
        return bool(first == second)
    except Exception:  # a value whose == is not a truth value (an array): take them as different
        return False


def pytest_report_header(config: pytest.Config) -> list[str]:
    state = config.stash[_STATE]
    budget = shown_path(state.budget_file)
    enforced = "enforced" if state.enforce else f"not enforced (add {_budget_flag(state)})"
    if not state.enforce and not os.path.lexists(state.budget_file):  # not there to enforce
        enforced = f"not found (create it, then add {_budget_flag(state)})"
    strict = ", strict" if state.strict else ""
    strict += ", network blocked" if state.block_network else ""
    lines = [
        f"llm-ledger: record mode {state.mode!r}, cassettes {shown_path(state.cassette_dir)}, "
        f"budgets {budget} {enforced}{strict}"
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


def _budget_flag(state: _LedgerState) -> str:
    return "--llm-ledger-budget" if state.flag_owner != "llm-ledger" else "--llm-budget"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    state = item.config.stash[_STATE]
    if state.has_extra:
        state.guard.install()  # the transports of an HTTP library imported since
    with state.test(item):
        return (yield)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.config.stash[_STATE].attempt(item)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report: pytest.TestReport = yield
    if call.when == "call":
        item.stash[_PASSED] = report.passed
    if _VERDICT in item.stash:  # decided before pytest's report: pytest_runtest_makereport_without_traceback
        fails, message = item.stash[_VERDICT]
        del item.stash[_VERDICT]
    else:  # another plugin made the report
        fails, message = _verdict(item, call)
    if fails:  # whatever the hooks in between made of the report (an xfail marker's "skipped")
        report.outcome = "failed"
    if message is not None:
        report.longrepr = message
    return report


# not tryfirst: after the hooks that adjust the call first (unittest's sets its exception), before pytest's
@pytest.hookimpl(specname="pytest_runtest_makereport")
def pytest_runtest_makereport_without_traceback(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> pytest.TestReport | None:
    """The report of a phase that fails with the plugin's message, made in place of pytest's, which
    would format a traceback for the plugin to throw away, reading the source of every frame (openai's
    and httpx's included): slow, per failing test."""
    _, message = item.stash[_VERDICT] = _verdict(item, call)
    if message is None or call.excinfo is None or _skips(call.excinfo.value):
        return None  # pytest's report: nothing to format, or a skip (reported by its reason alone)
    unraised = copy.copy(call)
    unraised.excinfo = None  # the report of the phase as if it had passed: timing, sections, keywords
    report = pytest.TestReport.from_item_and_call(item, unraised)
    report.outcome = "failed"
    report.longrepr = message
    return report


def _skips(exc: BaseException) -> bool:
    """Whether pytest reports ``exc`` as a skip (its report's rule), not as a failure."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(pytest.skip.Exception)[1] is None
    return isinstance(exc, pytest.skip.Exception)


def _verdict(item: pytest.Item, call: pytest.CallInfo[None]) -> tuple[bool, str | None]:
    """Whether the plugin fails the phase, and its message in place of pytest's traceback (None: the
    report is pytest's). Refusals, then misses, that no report of the test has shown fail it, whether
    the exception propagated, was wrapped or was swallowed, with one message (concurrent calls miss
    together); one raised again (shown in an earlier phase, or another test's that a library kept)
    only gets the plugin's wording."""
    cassette = item.stash.get(_CASSETTE, None)
    lists = [
        item.stash.get(_BLOCKED, []),
        *((cassette.blocked, cassette.misses) if cassette is not None else ([], [])),
    ]
    done = item.stash.get(_REPORTED, (0, 0, 0))
    failures = [message for seen, each in zip(done, lists, strict=True) for message in each[seen:]]
    item.stash[_REPORTED] = tuple(map(len, lists))
    if failures:
        more = len(failures) - 1
        return True, failures[0] + (
            f"\n\nllm-ledger: {more} more request(s) of this test failed the same way; the first is shown"
            if more
            else ""
        )
    if call.excinfo is not None and (error := _ledger_error(call.excinfo.value)) is not None:
        origin = getattr(error, "nodeid", None)
        if origin is not None and origin != item.nodeid:
            # a library kept the error of an earlier test's request (a failed start-up) and raised it again
            return False, (
                f"llm-ledger: {item.nodeid} raised an error that a request of another test, {origin}, "
                "raised first (some library kept it and raised it again here); that test's error:\n"
                + str(error)
            )
        return False, str(error)
    return False, None


def _ledger_error(exc: BaseException) -> BaseException | None:
    """The miss or refusal behind ``exc``: itself, or its cause (the SDK wraps transport errors in
    APIConnectionError)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, (CassetteMissError, BlockedRequestError)):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


@pytest.fixture(autouse=True)
def _llm_ledger_cassette(request: pytest.FixtureRequest) -> Iterator[None]:
    """Run a test marked ``llm`` inside its cassette (autouse: unmarked tests pass straight through)."""
    item: pytest.Item = request.node  # a function-scoped fixture's node is always the test item
    marker = item.get_closest_marker("llm")
    if marker is None or not has_cassette(item):
        yield
        return
    # the cassette engine loads with the first test that needs it: a run that marks no test llm,
    # or only collects, never imports it (nor vcrpy)
    from ._cassette import LedgerCassette, activate, vcrpy_problem

    state = request.config.stash[_STATE]
    if (problem := vcrpy_problem()) is not None:
        pytest.fail(
            f"llm-ledger: {problem}; tests marked llm replay from cassettes, which needs the plugin's "
            "extra: pip install 'llm-ledger[pytest]'",
            pytrace=False,
        )
    path = cassette_path(item, state.cassette_dir)
    owner, theirs = item.stash.get(_SHARES_WITH, (None, path))
    if owner is not None:  # each recording would overwrite the other's
        shared = f"llm-ledger: {item.nodeid} would share its cassette {shown_path(path)} with {owner}"
        if theirs != path:
            pytest.fail(
                f"{shared} on a case-insensitive file system (macOS, Windows), where it is the same file "
                f"as {shown_path(theirs)}; rename one of the tests, classes or files so "
                "that their names differ in more than case",
                pytrace=False,
            )
        pytest.fail(
            f"{shared}: cassettes are named from the parameter values (an object by its repr, without "
            "its memory address), and these name the same file. Give the parameters values that "
            "differ, or their class a __repr__ that tells them apart (a named function, not a lambda)",
            pytrace=False,
        )
    # pytest-recording's cassette of a test marked vcr too: set up first, so ours is the innermost
    # interception and hands it every request it does not own
    vcr_marked = item.get_closest_marker("vcr") is not None and "vcr" in request.fixturenames
    fallback = request.getfixturevalue("vcr") if vcr_marked else None
    if fallback is not None and Path(str(getattr(fallback, "_path", ""))).resolve() == path.resolve():
        pytest.fail(
            f"llm-ledger: {item.nodeid} is marked vcr and llm, and both cassettes would be "
            f"{shown_path(path)}; give llm-ledger another directory (ini llm_cassette_dir, or "
            "--llm-cassette-dir)",
            pytrace=False,
        )
    error = None
    try:
        cassette = LedgerCassette(
            path,
            state.mode,
            item.nodeid,
            match_host=marker.kwargs.get("match_host", state.match_host),
            record_auth_errors=marker.kwargs.get("record_auth_errors", False),
            block_network=state.block_network,
            allowed_hosts=state.allowed_hosts,
            fallback=fallback,
            rerecord_options=state.location,
            directory=state.cassette_dir,
            command_nodeid=state.here(item.nodeid),
            secrets=secret_params(item),
            moved_from=state.moved_from,
        )
    except CassetteError as exc:
        error = str(exc)
    if error is not None:  # raised outside the except block, so the message is not printed twice
        command = rerecord_command(state.here(item.nodeid), "rewrite", state.location)
        pytest.fail(f"{error}\n  to replace it with a fresh recording: {command}", pytrace=False)
    item.stash[_CASSETTE] = cassette
    with activate(cassette):
        state.in_cassette = True
        try:
            yield
        finally:
            state.in_cassette = False
    passed = item.stash.get(_PASSED, False) and not cassette.misses
    cassette.save(test_passed=passed)
    unplayed = len(cassette.loaded) - cassette.played
    with state._lock:
        if cassette.recorded:
            state.ledger.recorded.add(item.nodeid)
        if cassette.auth_errors:
            state.ledger.auth_errors[item.nodeid] = cassette.auth_errors
        if cassette.replayed_auth_errors:
            answers = ", ".join(sorted(set(cassette.replayed_auth_errors)))
            state.ledger.replayed_auth_errors[item.nodeid] = f"{shown_path(path)}: {answers}"
        if passed and cassette.write_protected and unplayed > 0:
            # the code now makes fewer calls than were recorded: the cassette (and its cost) is stale
            state.ledger.unplayed[item.nodeid] = unplayed


@pytest.fixture
def llm_ledger(request: pytest.FixtureRequest) -> LedgerRecords:
    """The llm-ledger records (calls and lens summaries) emitted so far during this test."""
    current = request.config.stash[_STATE].current
    assert current is not None, "the llm_ledger fixture works only inside a running test"
    return current


def pytest_sessionfinish(session: pytest.Session, exitstatus: int | pytest.ExitCode) -> None:
    state = session.config.stash.get(_STATE, None)
    if state is None or _runs_no_test(session.config):  # nothing ran: nothing to check
        return
    # a stream left unread ends (and its lens with it) when it is collected: before the checks, not
    # after them, so its lens is neither passed unchecked nor left out of the report
    gc.collect()
    if state.is_worker:
        session.config.workeroutput["llm_ledger"] = state.ledger.to_wire()  # type: ignore[attr-defined]
        return
    if state.budgets is not None:
        state.breaches = state.ledger.check(state.budgets)
    cassettes = [*_orphan_cassette_notices(state, session.config), *_recording_notices(state)]
    selection = _narrowed(session.config) or bool(state.ledger.deselected)
    state.notices, state.unchecked_budgets = notices(
        state.ledger, state.budgets, cassettes, state.location, state.here, selection=selection
    )
    failed = state.breaches or state.ledger.refused or state.lost_workers or (state.strict and state.notices)
    if failed and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if (path := state.report_path) is not None:
        # the status the run ends with: a breach or a strict notice fails a run whose tests passed
        document = state.ledger.report(exit_status=int(session.exitstatus))
        if state.budgets is not None:  # what --llm-budget found, for the pull request's diff
            document["budgets"] = budget_report(state.ledger, state.budgets, state.breaches)
        report = json.dumps(document, indent=2) + "\n"
        try:
            write_atomic(path, report)  # a killed or failed write leaves the previous report, not half of one
            state.report_written = True
        except OSError as exc:  # a read-only directory, a full disk: the diff after would have no report
            state.notices.append(
                f"llm-ledger: could not write the report {shown_path(path)}: "
                f"{exc.strerror or exc}; give --llm-report a path in a writable directory"
            )
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _runs_no_test(config: pytest.Config) -> bool:
    """--collect-only, --setup-only, --setup-plan, --fixtures: pytest inspects the tests, runs none."""
    options = ("collectonly", "setuponly", "setupplan", "showfixtures", "show_fixtures_per_test")
    return any(getattr(config.option, name, False) for name in options)


def _recording_notices(state: _LedgerState) -> list[str]:
    """Tests that called the API live while recording: on CI (a record mode committed by mistake), which
    keeps no cassette; and tests not marked llm, whose requests the replay will refuse."""
    out = []
    recorded = sorted(state.ledger.recorded)
    if recorded and any(name in os.environ for name in ("CI", "BUILD_NUMBER")):  # as pytest tells CI
        out.append(
            f"llm-ledger: {len(recorded)} test(s) recorded their cassette in this CI run (record mode "
            f"{state.mode!r}), so they called the API and CI keeps nothing: {listed(recorded)}; record them "
            "locally, commit the cassettes, and run CI in record mode none"
        )
    if tests := sorted(state.ledger.unmarked_live):
        out.append(
            f"llm-ledger: {len(tests)} test(s) not marked llm sent OpenAI API requests live in record mode "
            f"{state.mode!r}, so no cassette recorded them and the replay (record mode none) will refuse "
            f"them: {listed(tests)}; mark them @pytest.mark.llm and record again "
            "(@pytest.mark.llm(live=True) for a deliberate live test)"
        )
    return out


def _report_path(config: pytest.Config) -> Path | None:
    """Where --llm-report writes; a usage error for a directory, a device or FIFO, or a path under a file."""
    given = config.getoption("llm_report")
    if not given:
        return None
    path = Path(config.invocation_params.dir, given)
    existing = next(parent for parent in path.parents if parent.exists())  # "/" at worst
    problem = None
    if path.is_dir():
        problem = "is a directory"
    elif path.exists() and not path.is_file():  # /dev/stdout: the report's rename would replace it
        problem = "is not a regular file (a device, FIFO or socket), which the written report would replace"
    elif not existing.is_dir():
        problem = f"{shown_path(existing)} is a file"
    if problem is not None:
        raise pytest.UsageError(
            f"llm-ledger: --llm-report {given}: {problem}; give the path of a JSON file to write, e.g. "
            "--llm-report=llm-report.json"
        )
    return path


# the options that take a path: pytest picks the rootdir and ini file before it knows any plugin's
# option, counting an existing path given after one (not after "=") among the test paths
_PATH_OPTIONS: Final = ("--llm-report", "--llm-baseline", "--llm-budget-file", "--llm-cassette-dir")


def _refuse_paths_taken_for_tests(config: pytest.Config) -> None:
    """A usage error for ``--llm-baseline ../base.json`` (a space, not ``=``) naming an existing path
    outside the project: pytest chose the rootdir and ini file from it (every cassette a miss)."""
    if config.option.rootdir:  # given: no path chooses it
        return
    here = config.invocation_params.dir.resolve()
    project = config.inipath.parent.resolve() if config.inipath else here
    args = [str(arg) for arg in config.invocation_params.args]
    for flag, value in itertools.pairwise(args):
        path = Path(here, value).resolve()
        if flag not in _PATH_OPTIONS or not path.exists() or path.is_relative_to(here):
            continue
        if here.is_relative_to(project) and path.is_relative_to(project):
            continue  # in the project whose ini was found: it chose that ini, as the tests' paths do
        raise pytest.UsageError(
            f"llm-ledger: {flag} {value}: pytest also took {value} for a test path when it chose the "
            f"rootdir ({config.rootpath}) and the ini file, before it knew {flag}, so this run would take "
            f"that directory's settings, test ids and cassette names; write {flag}={value}"
        )


def _orphan_cassette_notices(state: _LedgerState, config: pytest.Config) -> list[str]:
    """Cassettes no collected test owns (renamed or deleted), named only by a run of the whole suite;
    ``llm-ledger cassettes`` finds them for any selection."""
    if _narrowed(config):
        return []
    orphans = _orphans(state, config)
    if not orphans:
        return []
    fix = "delete them with `llm-ledger cassettes --prune`"
    if moved := _renamed(state, config, orphans):
        commands = listed([f"`{move_command(old, new)}`" for new, old in sorted(moved.items())])
        rest = "the rest" if len(moved) < len(orphans) else "any that are not theirs"
        fix = "tests renamed or moved since, never recorded under their new names, keep theirs with "
        fix += f"{commands}; delete {rest} with `llm-ledger cassettes --prune`"
    return [
        f"llm-ledger: {len(orphans)} cassette(s) belong to no collected test (renamed or deleted): "
        f"{listed([shown_path(path) for path in orphans])}; {fix}"
    ]


def _narrowed(config: pytest.Config) -> bool:
    """Whether the run was given a selection of the tests: paths or node ids, -k, -m, --deselect, --lf."""
    option = config.option  # -k, -m and --deselect are pytest's own options; --lf comes with cacheprovider
    narrowed = option.keyword or option.markexpr or option.deselect or getattr(option, "lf", False)
    return bool(narrowed) or config.args_source == pytest.Config.ArgsSource.ARGS


def pytest_deselected(items: Sequence[pytest.Item]) -> None:
    # -k and -m, and plugins that split a suite into shards (pytest-split), deselect through this hook
    if items and (state := items[0].config.stash.get(_STATE, None)) is not None:
        state.ledger.deselected.update(item.nodeid for item in items)  # on an xdist worker: sent on


def _orphans(state: _LedgerState, config: pytest.Config) -> list[Path]:
    return orphan_cassettes(
        state.cassette_dir,
        state.ledger.cassettes,
        config.getini("llm_cassette_keep"),
        selected_folders(config, state.cassette_dir),
        project_dir(config),
        state.ledger.tested,
    )


def _renamed(
    state: _LedgerState, config: pytest.Config, orphans: list[Path] | None = None
) -> dict[Path, Path]:
    """The cassettes of the collected tests never recorded, each with the orphan (of ``orphans``, else
    found now) that plausibly was it before its test was renamed or moved."""
    never = [Path(path) for path in state.ledger.cassettes if not Path(path).exists()]
    if not never:
        return {}
    return renamed_cassettes(never, _orphans(state, config) if orphans is None else orphans)


def pytest_collection_finish(session: pytest.Session) -> None:
    path = session.config.getoption("llm_list_cassettes", None)
    state = session.config.stash.get(_STATE, None)
    if path and state is not None:  # for `llm-ledger cassettes`
        orphans = _orphans(state, session.config)
        moved = _renamed(state, session.config, orphans)
        listing = {
            "cassette_dir": str(state.cassette_dir),
            "location": list(state.location),
            "cassettes": sorted(state.ledger.cassettes),
            "record": {  # the cassettes never recorded
                path: rerecord_command(state.here(nodeid), "once", state.location)
                for path, nodeid in state.ledger.cassettes.items()
                if not Path(path).exists()
            },
            "moved": {str(new): f"{moved_hint(old)}: {move_command(old, new)}" for new, old in moved.items()},
            "expect_auth_errors": sorted(state.ledger.expect_auth_errors),
            "orphans": [str(orphan) for orphan in orphans],
        }
        Path(path).write_text(json.dumps(listing), encoding="utf-8")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is None or state.is_worker or _runs_no_test(config):
        return
    tr = terminalreporter

    def say(line: str, **markup: bool) -> None:  # lens keys and test ids are the application's text
        tr.write_line(no_controls(line), **markup)

    ledger = state.ledger
    if ledger.lens_runs or ledger.total().api_calls:
        tr.write_sep("-", "llm-ledger: per-lens totals")
        for line in render_lens_table(ledger):
            say(line)
        if fixed := priced_at_fixed_time(ledger, state.time_of_day):
            say(fixed)
    if state.baseline is not None:
        _write_baseline_diff(tr, *state.baseline, ledger)
    for refused in [*sorted(ledger.refused), *state.lost_workers]:
        say(refused, red=True)
    budget_file = shown_path(state.budget_file)
    if state.breaches:
        tr.write_sep("=", f"llm-ledger: {len(state.breaches)} budget limit(s) exceeded", red=True, bold=True)
        for line in render_breaches(state.breaches):
            say(line)
        fix = "bring each back within its limit, or raise the limit there if the increase is intended"
        say(f"limits from {budget_file}: {fix}")
    elif state.budgets is not None and sets_limits(state.budgets):
        if not applied(ledger, state.budgets):  # not "every budget was met": none was checked
            say(
                f"llm-ledger: no limit in {budget_file} applied to this run (no lens, test or total it "
                "limits ran), so --llm-budget checked nothing"
            )
        else:
            checked = " that could be checked" if state.unchecked_budgets else ""
            met = f"llm-ledger: every budget in {budget_file}{checked} was met"
            if failed := ledger.total().errors:  # a call that missed its cassette counts nothing
                met += f" ({failed} call(s) failed: one that got no answer counts no tokens or cost)"
            say(met)
    elif state.unenforced is not None and (would := ledger.check(state.unenforced)):
        # a CI that forgot the flag passes: say what it let by
        over = listed([f"{b.where} {b.limit_key}" for b in would])
        say(
            f"llm-ledger: {budget_file} is not enforced (add {_budget_flag(state)}); enforced, this run "
            f"would exceed {len(would)} of its limit(s): {over}",
            yellow=True,
        )
    for notice in state.notices:
        say(notice, red=state.strict)
    if state.strict and state.notices:
        say(
            f"llm-ledger: strict mode (--llm-strict / ini llm_strict): {len(state.notices)} notice(s) "
            "above fail the run",
            red=True,
            bold=True,
        )
    if state.report_written:
        say(f"llm-ledger: report written to {config.getoption('llm_report')}")


def _baseline(config: pytest.Config) -> tuple[str, dict[str, Any]] | None:
    """--llm-baseline's report, read before any test runs: one that cannot be read is a usage error, as
    in `llm-ledger diff`."""
    given = config.getoption("llm_baseline")
    if not given:
        return None
    from llm_ledger.report import load_report

    name = shown_path(Path(config.invocation_params.dir, given))
    name = os.path.join(".", name) if name == "-" else name  # a file, as --llm-report=- writes (not stdin)
    try:
        return name, load_report(name)
    except ConfigError as exc:
        raise pytest.UsageError(f"llm-ledger: --llm-baseline: {exc}") from None


def _write_baseline_diff(tr: Any, name: str, base: dict[str, Any], ledger: SessionLedger) -> None:
    from llm_ledger.report import diff_reports, render_diff

    tr.write_sep("-", f"llm-ledger: cost diff against {name}")
    diff = diff_reports(base, ledger.report(), base_path=name, head_path="this run")
    for line in render_diff(diff, "text").splitlines():
        tr.write_line(line)


class _ControllerHooks:
    """Failed tests for the report, and the workers' totals under xdist (on the controller only)."""

    def __init__(self, state: _LedgerState) -> None:
        self.state = state

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed:
            self.state.ledger.failed.add(report.nodeid)

    @pytest.hookimpl(optionalhook=True)  # an xdist hook, unknown without pytest-xdist
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        if wire := getattr(node, "workeroutput", {}).get("llm_ledger"):
            self.state.ledger.merge_wire(wire)
        elif not _runs_no_test(self.state._config):  # a crash: xdist may still say every test passed
            worker = getattr(getattr(node, "gateway", None), "id", "?")
            self.state.lost_workers.append(
                f"llm-ledger: xdist worker {worker} went down before it sent its llm-ledger records "
                f"({error or 'no records'}), so the totals, budgets and report leave out every call of the "
                "tests it ran; see above why it went down (a test or plugin ending the process, a worker "
                "killed for its memory)"
            )
