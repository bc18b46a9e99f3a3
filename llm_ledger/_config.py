"""``configure()``: one validated, frozen set of settings for the default monitor and its JSONL file,
each from its argument, else its environment variable, else its default (docs/MONITORING.md).
"""

from __future__ import annotations

import contextlib
import difflib
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ._anomalies import AnomalyConfig, AnomalyDetector
from ._budgets import BUDGET_MODES, BudgetGuard, Budgets, as_budgets, load_budgets
from ._errors import REDACT_FIX, REDACT_TAKES, ConfigError, check_hook, internal_log
from ._jsonl import JsonlFileHandler, NotRegularFileError, flush_all, handle_sigterm_signal
from ._monitor import LLMCallMonitor, Redactor
from ._price_file import load_price_file
from ._pricing import PriceTable
from ._rates import preload
from .exporters import _setup as _exporters
from .loading import BOOLEAN_WORDS, looks_like_credential, shown

__all__ = ["LOG_FILE_NAME", "Settings", "configure", "get_monitor"]

LOG_FILE_NAME: Final = "llm_calls.jsonl"
_BOOLEAN: Final = "1, 0, true or false"
# every variable configure() reads (another LLM_LEDGER_* name is a misspelt one, which would be ignored):
# what it takes, and what unset means, for the error an empty one is
_VARIABLES: Final = {
    "LLM_LEDGER_ANOMALIES": ("on, off or settings such as k=6,window=100", "off"),
    "LLM_LEDGER_BUDGETS": ("a budgets.yaml path, or off", "no production budgets"),
    "LLM_LEDGER_BUDGET_MODE": ("warn or raise", "warn"),
    "LLM_LEDGER_CAPTURE_CONTENT": (_BOOLEAN, "false"),
    "LLM_LEDGER_EXPORTERS": ("prometheus, otel or both (prometheus:9464,otel), or off", "none"),
    "LLM_LEDGER_HANDLE_SIGTERM": (_BOOLEAN, "true"),
    "LLM_LEDGER_LOG_DIR": (f"the directory of {LOG_FILE_NAME}, or off to write no file", "logs"),
    "LLM_LEDGER_PRICE_FILE": ("a price file (YAML), or off", "genai-prices alone"),
    "LLM_LEDGER_STREAM_USAGE": (_BOOLEAN, "true"),
}
_SUFFIXES: Final = tuple(name.removeprefix("LLM_LEDGER_") for name in _VARIABLES)
_OFF: Final = ("off", "none", "false", "no", "0")  # a path or exporters variable set to none


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


UNSET: Final = _Unset()


@dataclass(frozen=True, slots=True)
class Settings:
    """What ``configure()`` resolved; equal settings mean a repeated call changes nothing."""

    log_dir: Path | None
    price_file: Path | None
    capture_content: bool
    stream_usage: bool
    redact: Redactor | None
    handle_sigterm: bool = True
    exporters: tuple[str, ...] = ()
    budgets: Budgets | None = None
    budget_mode: str = "warn"
    on_budget_exceeded: Callable[[Any], object] | None = None
    anomalies: AnomalyConfig | None = None
    on_anomaly: Callable[[Any], object] | None = None


def _read(env: Mapping[str, str], variable: str, default: str = "") -> str:
    """``variable``'s value without the spaces a .env line may leave around it, ``default`` when unset.
    Set empty (``VAR=${UNSET}`` in a compose file) is an error: read as unset, an empty
    LLM_LEDGER_BUDGETS would turn budgets off without a word."""
    raw = env.get(variable)
    if raw is None:
        return default
    if not raw.strip():
        raise ConfigError(
            f"environment variable {variable}={raw!r} is empty (an unset variable in a template?); set it "
            "to {}; or unset it ({})".format(*_VARIABLES[variable])
        )
    return raw.strip()


def _bool(name: str, value: Any, variable: str, env: Mapping[str, str], default: bool) -> bool:
    """A boolean setting: the argument when given, else its environment variable, else ``default``."""
    if isinstance(value, bool):
        return value
    if value is not UNSET:
        raise ConfigError(f"{name} must be True or False, got {value!r}")
    raw = _read(env, variable)
    flag = BOOLEAN_WORDS.get(raw.lower()) if raw else default
    if flag is None:
        raise ConfigError(f"environment variable {variable}={shown(raw)} is not a boolean; use {_BOOLEAN}")
    return flag


def _path_setting(
    name: str, value: Any, variable: str, env: Mapping[str, str], default: str = "off"
) -> Path | None:
    """A path setting: the argument (None: off) when given, else its environment variable, without the
    spaces a .env line may leave around it (off, none, false, no or 0: off), else ``default``."""
    if value is not UNSET:
        return None if value is None else _path(name, value)
    raw = _read(env, variable, default)
    if looks_like_credential(raw) and os.sep not in raw:  # a key in the wrong variable: make no file of it
        raise ConfigError(
            f"environment variable {variable}={shown(raw)} is not a path; set it to a path, or unset it"
        )
    return None if raw.lower() in _OFF else _path(variable, raw)


def _path(name: str, value: Any) -> Path:
    if isinstance(value, (str, os.PathLike)) and str(value).strip():
        if "\x00" in str(value):
            raise ConfigError(f"{name} must not contain a NUL character, got {value!r}")
        # "~/logs" from a unit file or a .env, where no shell expands it (an unknown ~user stays as is)
        return Path(os.path.expanduser(value))
    raise ConfigError(f"{name} must be a non-empty path (str or os.PathLike), got {value!r}")


def resolve(
    *,
    log_dir: Any = UNSET,
    price_file: Any = UNSET,
    capture_content: Any = UNSET,
    stream_usage: Any = UNSET,
    redact: Any = None,
    handle_sigterm: Any = UNSET,
    exporters: Any = UNSET,
    budgets: Any = UNSET,
    budget_mode: Any = UNSET,
    on_budget_exceeded: Any = None,
    anomalies: Any = UNSET,
    on_anomaly: Any = None,
    env: Mapping[str, str] | None = None,
    inherited: frozenset[str] = frozenset(),
) -> Settings:
    """Validate arguments and environment into :class:`Settings` (raises ``ConfigError``); the
    arguments named in ``inherited`` (an earlier ``configure()``'s) wait unused when their feature is off."""
    env = os.environ if env is None else env
    resolved_dir = _path_setting("log_dir", log_dir, "LLM_LEDGER_LOG_DIR", env, default="logs")
    resolved_prices = _path_setting("price_file", price_file, "LLM_LEDGER_PRICE_FILE", env)
    capture = _bool("capture_content", capture_content, "LLM_LEDGER_CAPTURE_CONTENT", env, False)
    usage = _bool("stream_usage", stream_usage, "LLM_LEDGER_STREAM_USAGE", env, True)
    check_hook("redact", redact, REDACT_TAKES, REDACT_FIX)
    sigterm = _bool("handle_sigterm", handle_sigterm, "LLM_LEDGER_HANDLE_SIGTERM", env, True)
    if exporters is UNSET:
        raw = _read(env, "LLM_LEDGER_EXPORTERS", "off")
        specs = () if raw.lower() in _OFF else _exporters.parse(raw, "LLM_LEDGER_EXPORTERS", from_env=True)
    else:
        specs = _exporters.parse(exporters, "exporters")
    guard_budgets, mode = _budgets(budgets, budget_mode, env)
    for name, hook in (("on_budget_exceeded", on_budget_exceeded), ("on_anomaly", on_anomaly)):
        check_hook(name, hook)
    if anomalies is UNSET:
        anomaly_config = AnomalyConfig.parse(_read(env, "LLM_LEDGER_ANOMALIES", "off"))
    elif isinstance(anomalies, bool):
        anomaly_config = AnomalyConfig() if anomalies else None
    elif anomalies is None or isinstance(anomalies, AnomalyConfig):
        anomaly_config = anomalies
    else:
        raise ConfigError(f"anomalies must be True, False or an AnomalyConfig, got {anomalies!r}")
    if guard_budgets is None and (off := _why_off("budgets", budgets, "LLM_LEDGER_BUDGETS", env)):
        fix = "pass budgets= a budgets.yaml path or a mapping (or set LLM_LEDGER_BUDGETS)"
        if mode == "raise" and "budget_mode" not in inherited:
            source = "budget_mode" if budget_mode is not UNSET else "LLM_LEDGER_BUDGET_MODE"
            raise ConfigError(
                f"{source}='raise' acts on production budgets, and there are none ({off}): {fix}; "
                f"or set {source} to 'warn'"
            )
        if on_budget_exceeded is not None and "on_budget_exceeded" not in inherited:
            raise ConfigError(
                f"on_budget_exceeded acts on production budgets, and there are none ({off}): {fix}; "
                "or drop on_budget_exceeded"
            )
    if (
        anomaly_config is None
        and on_anomaly is not None
        and "on_anomaly" not in inherited
        and (off := _why_off("anomalies", anomalies, "LLM_LEDGER_ANOMALIES", env))
    ):
        raise ConfigError(
            f"on_anomaly acts on anomaly detection, which is off ({off}): pass anomalies=True or an "
            "AnomalyConfig (or set LLM_LEDGER_ANOMALIES=on); or drop on_anomaly"
        )
    return Settings(
        resolved_dir, resolved_prices, capture, usage, redact, sigterm, specs,
        guard_budgets, mode, on_budget_exceeded, anomaly_config, on_anomaly,
    )  # fmt: skip


def _warn_unknown_variables() -> None:
    """Name each LLM_LEDGER_* variable configure() does not read (a misspelt one), once per process."""
    prefix = "LLM_LEDGER_"
    for variable in sorted(os.environ):
        if variable.upper().startswith(prefix) and variable not in (*_VARIABLES, *_warned):
            _warned.add(variable)
            # the closest by what follows the prefix, which every name shares
            close = difflib.get_close_matches(variable[len(prefix) :].upper(), _SUFFIXES, n=1)
            internal_log.warning(
                "llm-ledger: environment variable %s is not one llm-ledger reads%s, so it changes nothing; "
                "it reads %s",
                variable,
                f" (did you mean '{prefix}{close[0]}'?)" if close else "",
                ", ".join(_VARIABLES),
            )


def _why_off(name: str, value: Any, variable: str, env: Mapping[str, str]) -> str | None:
    """Why a feature another setting acts on is off, for the error saying so; None when an operator
    turned it off on purpose (``variable=off``)."""
    if value is not UNSET:
        return f"{name}={value!r}"
    return None if variable in env else f"neither {name}= nor {variable} is set"


def _budgets(budgets: Any, mode: Any, env: Mapping[str, str]) -> tuple[Budgets | None, str]:
    """Production budgets: the argument (a path, a mapping, a Budgets, None), else LLM_LEDGER_BUDGETS."""
    if mode is UNSET:
        mode = _read(env, "LLM_LEDGER_BUDGET_MODE", "warn").lower()
        source = "LLM_LEDGER_BUDGET_MODE"
    else:
        source = "budget_mode"
        if isinstance(mode, str):
            mode = mode.strip().lower()  # as the environment variable is read: "RAISE" is "raise"
    if mode not in BUDGET_MODES:
        got = shown(mode) if source.startswith("LLM_") else repr(mode)
        raise ConfigError(f"{source} must be one of {', '.join(map(repr, BUDGET_MODES))}, got {got}")
    hint = "; or pass configure(budgets=None) / unset LLM_LEDGER_BUDGETS for no production budgets"
    if budgets is UNSET:
        path = _path_setting("budgets", budgets, "LLM_LEDGER_BUDGETS", env)
        return (None if path is None else load_budgets(path, hint=hint)), mode
    return None if budgets is None else as_budgets(budgets, hint=hint), mode


_warned: set[str] = set()  # the unknown variables named already
_lock = threading.RLock()  # re-entrant: configure() holds it while calling get_monitor()
_monitor: LLMCallMonitor | None = None
_settings: Settings | None = None
_handler: JsonlFileHandler | None = None
_prices_read: tuple[int, int, int] | None = None  # the price file as configure() last read it
_given: dict[str, Any] = {}  # the arguments configure() calls have passed, the latest of each


def _file_stamp(path: Path | None) -> tuple[int, int, int] | None:
    """Which version of ``path`` this is (inode, mtime, size): an edited price file is read again."""
    try:
        stat = path.stat() if path is not None else None
    except OSError:
        return None
    return None if stat is None else (stat.st_ino, stat.st_mtime_ns, stat.st_size)


def get_monitor() -> LLMCallMonitor:
    """The default monitor behind ``llm_ledger.instrument``, ``lens`` and ``track_llm_call``."""
    global _monitor
    if _monitor is None:
        with _lock:
            if _monitor is None:
                _monitor = LLMCallMonitor()
    return _monitor


def configure(
    *,
    log_dir: str | os.PathLike[str] | _Unset | None = UNSET,
    price_file: str | os.PathLike[str] | _Unset | None = UNSET,
    capture_content: bool | _Unset = UNSET,
    stream_usage: bool | _Unset = UNSET,
    redact: Redactor | _Unset | None = UNSET,
    handle_sigterm: bool | _Unset = UNSET,
    exporters: list[str] | tuple[str, ...] | _Unset | None = UNSET,
    budgets: str | os.PathLike[str] | Mapping[str, Any] | Budgets | _Unset | None = UNSET,
    budget_mode: str | _Unset = UNSET,
    on_budget_exceeded: Callable[[Any], object] | _Unset | None = UNSET,
    anomalies: bool | AnomalyConfig | _Unset | None = UNSET,
    on_anomaly: Callable[[Any], object] | _Unset | None = UNSET,
) -> Settings:
    """Configure the default monitor and its JSONL file ``<log_dir>/llm_calls.jsonl``.

    Each setting is its argument, else what an earlier call passed, else its environment variable,
    else its default: a later call changes only what it names (``exporters=[]``, ``redact=None``...
    turn one off). Calling it again with the same settings changes nothing (an edited price or budgets
    file is read again); a new ``log_dir`` switches file. Raises ``ConfigError`` naming the bad value,
    changing nothing.
    """
    global _settings, _handler, _prices_read, _given
    _warn_unknown_variables()
    named = {
        "log_dir": log_dir, "price_file": price_file, "capture_content": capture_content,
        "stream_usage": stream_usage, "redact": redact, "handle_sigterm": handle_sigterm,
        "exporters": exporters, "budgets": budgets, "budget_mode": budget_mode,
        "on_budget_exceeded": on_budget_exceeded, "anomalies": anomalies, "on_anomaly": on_anomaly,
    }  # fmt: skip
    with _lock:
        # as structlog.configure(): what an earlier call set stays unless named again (a later
        # configure(capture_content=True) must not stop the /metrics server configure(exporters=...) started)
        now = {name: value for name, value in named.items() if value is not UNSET}
        given = {**_given, **now}
        settings = resolve(**given, inherited=frozenset(_given.keys() - now.keys()))
        prices_read = _file_stamp(settings.price_file)  # before reading: an edit meanwhile is read next time
        if settings == _settings and prices_read == _prices_read:
            if (
                _handler is not None
                and settings.handle_sigterm
                and threading.current_thread() is threading.main_thread()
            ):
                handle_sigterm_signal(True)  # a first configure() in another thread could not install it
            _given = given
            return settings
        monitor = get_monitor()
        if settings.price_file is None:
            prices = PriceTable()
        else:
            unset = "pass price_file=None" if "price_file" in given else "unset LLM_LEDGER_PRICE_FILE"
            overrides, hosts, fees = load_price_file(settings.price_file, without=unset)
            prices = PriceTable(overrides, hosts=hosts, tool_fees=fees)
        plan = None
        if settings.exporters != (_settings.exporters if _settings is not None else ()):
            plan = _exporters.prepare(settings.exporters)  # sinks built, ports bound; nothing changed yet
        if _settings is None or settings.log_dir != _settings.log_dir:
            new_handler = None
            if settings.log_dir is not None:
                try:
                    new_handler = JsonlFileHandler(settings.log_dir / LOG_FILE_NAME)
                    new_handler._kept_open = True  # closed here alone (and at exit), not by logging.config
                except OSError as exc:
                    if plan is not None:
                        plan.cancel()
                    raise _log_dir_error(exc, settings.log_dir, "log_dir" in given) from exc
            old, _handler = _handler, new_handler
            # the file is the default monitor's first sink (the logger is the application's): while it
            # takes the records, they reach llm_monitor's own handlers only, not the root's
            monitor._replace_first_sink(
                None if old is None else old.write_record,
                None if new_handler is None else new_handler.write_record,
            )
            if old is not None:
                old._kept_open = False
                old.close()
        # (the OpenTelemetry exporter's providers, too, hold what SIGTERM's death would lose)
        if _handler is not None or "otel" in settings.exporters or not settings.handle_sigterm:
            handle_sigterm_signal(settings.handle_sigterm)
        monitor.prices = prices
        monitor.capture_content = settings.capture_content
        monitor.stream_usage = settings.stream_usage
        monitor.redact = settings.redact
        if plan is not None:
            plan.commit(monitor)
        _guard(monitor, settings, _settings)
        _settings, _prices_read, _given = settings, prices_read, given
        if settings.log_dir or settings.exporters or (settings.budgets, settings.anomalies) != (None, None):
            preload()  # something records costs: the first call need not load the prices itself
        return settings


def _log_dir_error(exc: OSError, log_dir: Path, argument: bool) -> ConfigError:
    """Why ``log_dir`` cannot hold the log file, naming where it came from: the argument, the variable,
    or the default (a relative ``logs`` in whatever directory the service was started in)."""
    if isinstance(exc, NotRegularFileError):
        return ConfigError(f"cannot write the log file: {exc}")
    source = "log_dir" if argument else "LLM_LEDGER_LOG_DIR" if "LLM_LEDGER_LOG_DIR" in os.environ else None
    named, fix = f"{source}={str(log_dir)!r}", f"{source} is the directory that holds {LOG_FILE_NAME}"
    choose = ""
    if source is None:
        named, choose = f"the default log_dir {str(log_dir)!r}", " with log_dir= or LLM_LEDGER_LOG_DIR"
        fix = f"set log_dir= or LLM_LEDGER_LOG_DIR to the directory that holds {LOG_FILE_NAME}"
        with contextlib.suppress(OSError):  # the current directory was deleted
            named += f" (in {os.getcwd()!r})"
    if log_dir.exists() and not log_dir.is_dir():  # a regular file, a FIFO, a device
        return ConfigError(f"cannot write the log file: {named} is a file, not a directory; {fix}")
    return ConfigError(
        f"cannot write the log file in {named}: {exc.strerror or exc}; choose a writable directory{choose} "
        "(or LLM_LEDGER_LOG_DIR=off to write no file)"
    )


def _guard(monitor: LLMCallMonitor, settings: Settings, old: Settings | None) -> None:
    """Production budgets and anomaly detection on the default monitor, changed only when asked."""
    budget = (settings.budgets, settings.budget_mode, settings.on_budget_exceeded)
    if old is None or budget != (old.budgets, old.budget_mode, old.on_budget_exceeded):
        limits, mode, on_exceeded = budget
        monitor.budgets = None if limits is None else BudgetGuard(limits, mode=mode, on_exceeded=on_exceeded)
    anomaly = (settings.anomalies, settings.on_anomaly, settings.log_dir)
    if old is None or anomaly != (old.anomalies, old.on_anomaly, old.log_dir):
        detector = None
        if settings.anomalies is not None:
            detector = AnomalyDetector(settings.anomalies, on_anomaly=settings.on_anomaly)
            if settings.log_dir is not None:  # the baseline survives restarts: rebuilt from the log
                flush_all()
                try:
                    detector.rebuild(settings.log_dir / LOG_FILE_NAME)
                except OSError as exc:
                    internal_log.warning(
                        "llm-ledger: cannot read %s to rebuild the anomaly baselines (they start empty): %s",
                        settings.log_dir / LOG_FILE_NAME,
                        exc.strerror or exc,
                    )
        monitor.anomalies = detector
