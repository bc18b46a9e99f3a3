"""Bad input (budgets.yaml, price files, configure() and its environment, cassettes) ends in a clear error."""

from __future__ import annotations

import string
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_ledger import (
    BudgetError,
    Budgets,
    CassetteError,
    ConfigError,
    Limits,
    PriceFileError,
    PriceTable,
    _config,
    parse_budgets,
)
from llm_ledger._cli import main as cli_main
from llm_ledger._config import UNSET, Settings, resolve
from pytest_llm_ledger._cassette import LedgerCassette
from pytest_llm_ledger._format import load_cassette
from tests.reliability_helpers import FAKE_KEY, child_env, examples, record_figures

pytestmark = [pytest.mark.reliability, pytest.mark.sdk_independent]

FUZZ = settings(
    max_examples=examples(),
    deadline=None,
    database=None,  # nothing written to .hypothesis/ in the work tree
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
_CATCH_ALL = "cannot be read as"
E = TypeVar("E", bound=Exception)


def _attempt(func: Callable[[], Any], error: type[E]) -> tuple[Any, str | None]:
    """``(result, None)``, or ``(None, message)`` when ``func`` raises ``error``; anything else propagates."""
    try:
        return func(), None
    except error as exc:
        return None, str(exc)  # the parsers' last-resort wording: reaching it means an unforeseen crash


# -- YAML-ish documents: valid shapes with wrong pieces, YAML syntax soup, and plain noise -------------------

_YAML_CHARS = string.ascii_letters + string.digits + " \t\n:-_.,#&*!|>'\"[]{}%@`?~=+\\/"
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(
        ["1e-3", "0x1f", "1_000", ".inf", "-.nan", "0o17", "1:30", "~", "null", "yes", "2024-01-01"]
    ),
)


def _documents(keys: list[str]) -> st.SearchStrategy[Any]:
    key = st.one_of(st.sampled_from(keys), st.text(max_size=12), st.integers(), st.none(), st.booleans())
    return st.recursive(
        _scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(key, inner, max_size=5)),
        max_leaves=25,
    )


@st.composite
def _mutated(draw: st.DrawFn, valid: str) -> str:
    """``valid`` with a few short stretches replaced by YAML-significant characters."""
    text = valid
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        cut = draw(st.integers(0, 10))
        text = text[:at] + draw(st.text(_YAML_CHARS, max_size=6)) + text[at + cut :]
    return text


def _texts(keys: list[str], valid: str) -> st.SearchStrategy[str]:
    return st.one_of(
        _documents(keys).map(lambda doc: yaml.safe_dump(doc, allow_unicode=True)),
        st.text(_YAML_CHARS, max_size=200),
        st.text(max_size=100),
        _mutated(valid),
        st.sampled_from(
            [
                "!!python/object/apply:os.system ['echo pwned']",
                "a: &a [*a]",
                "[" * 5000,
                "{a: 1, a: 2}",
                "\ufeff\x00\x85",
                "%YAML 9.9\n---\n",
                "--- !!binary AAAA",
                "? [1, 2]\n: 3",
            ]
        ),
    )


_BUDGET_KEYS = ["lenses", "default", "tests", "total", *Limits.KEYS, "default_summary"]
_VALID_BUDGETS = """\
lenses:
  default_summary: {max_cost_usd: 0.002, max_api_calls: 3}
default:
  max_total_tokens: 4000
tests:
  "tests/test_app.py::test_digest": {max_api_calls: 5}
total:
  max_cost_usd: 0.05
"""


@pytest.fixture
def tried(request: pytest.FixtureRequest) -> Iterator[Counter[str]]:
    """Counts the inputs a fuzz test tried (across all its examples) and records the figure."""
    counter: Counter[str] = Counter()
    yield counter
    record_figures(f"fuzz: {request.node.name}", **counter)


@FUZZ
@given(text=_texts(_BUDGET_KEYS, _VALID_BUDGETS))
def test_fuzzed_budgets_end_in_budgets_or_a_clear_error(tried: Counter[str], text: str) -> None:
    """Any budgets.yaml text gives Budgets or a BudgetError naming the file, never anything else."""
    tried["budgets"] += 1
    budgets, message = _attempt(lambda: parse_budgets(text, "fuzz/budgets.yaml"), BudgetError)
    if message is not None:
        assert message.startswith("fuzz/budgets.yaml"), message
        assert _CATCH_ALL not in message, message
        return
    assert isinstance(budgets, Budgets)
    for limits in [budgets.default, budgets.total, *budgets.lenses.values(), *budgets.tests.values()]:
        for key, value in limits.items() if limits is not None else ():
            assert value >= 0 and (key == "max_cost_usd" or type(value) is int), (key, value)


_PRICE_KEYS = ["version", "models", "input", "output", "cached_input", "gpt-4o", "my-model-*"]
_VALID_PRICES = """\
version: 1
models:
  gpt-4o:
    input: 2.50
    cached_input: 1.25
    output: 10.00
  "my-model-*": {input: 1, output: 2}
"""


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory for the files the fuzz tests write."""
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(text=_texts(_PRICE_KEYS, _VALID_PRICES), raw=st.one_of(st.none(), st.binary(max_size=64)))
def test_fuzzed_price_files_end_in_a_table_or_a_clear_error(
    tried: Counter[str], fuzz_dir: Path, text: str, raw: bytes | None
) -> None:
    """Any price file gives a PriceTable or a PriceFileError naming the file, never anything else."""
    tried["price files"] += 1
    path = fuzz_dir / "prices.yaml"
    path.write_bytes(raw if raw is not None else text.encode("utf-8", "surrogatepass"))
    table, message = _attempt(lambda: PriceTable.from_file(path, builtin=False), PriceFileError)
    if message is not None:
        assert message.startswith(str(path)), message
        return
    assert isinstance(table, PriceTable)
    rates = table.rates("gpt-4o")
    assert rates is None or (rates.input >= 0 and rates.output >= 0)


_ANY_VALUE = st.one_of(
    st.just(UNSET),
    _scalars,
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.text(max_size=10).map(Path),
    st.sampled_from([str.upper, print, object(), "\x00", "logs\x00", " ", "", 0, 1.0]),
)
_ARGUMENTS = ("log_dir", "price_file", "capture_content", "stream_usage", "redact", "handle_sigterm")
_ENV_NAMES = (
    "LLM_LEDGER_LOG_DIR",
    "LLM_LEDGER_PRICE_FILE",
    "LLM_LEDGER_CAPTURE_CONTENT",
    "LLM_LEDGER_STREAM_USAGE",
    "LLM_LEDGER_HANDLE_SIGTERM",
)


@FUZZ
@given(arguments=st.fixed_dictionaries({}, optional=dict.fromkeys(_ARGUMENTS, _ANY_VALUE)))
def test_fuzzed_configure_arguments_end_in_settings_or_a_clear_error(
    tried: Counter[str], arguments: dict[str, Any]
) -> None:
    """Any configure() arguments resolve to Settings or raise ConfigError naming the argument."""
    tried["configure() arguments"] += 1
    if arguments.get("redact") is UNSET:
        arguments["redact"] = None  # redact has no environment variable, so no UNSET
    resolved, message = _attempt(lambda: resolve(env={}, **arguments), ConfigError)
    if message is not None:
        assert any(message.startswith(name) for name in arguments), message
        return
    assert isinstance(resolved, Settings)


@FUZZ
@given(env=st.dictionaries(st.sampled_from(_ENV_NAMES), st.text(max_size=12), max_size=4))
def test_fuzzed_environment_ends_in_settings_or_a_clear_error(
    tried: Counter[str], env: dict[str, str]
) -> None:
    """Any LLM_LEDGER_* environment resolves to Settings or raises ConfigError naming the variable."""
    tried["environment"] += 1
    resolved, message = _attempt(lambda: resolve(env=env), ConfigError)
    assert isinstance(resolved, Settings) or any(name in (message or "") for name in env), message


@settings(max_examples=200, deadline=None, database=None)
@given(
    capture_content=_ANY_VALUE,
    stream_usage=_ANY_VALUE,
    name=st.text(string.ascii_letters + string.digits + "-_.", min_size=1, max_size=12),
)
def test_configure_refusing_bad_input_changes_nothing(
    fuzz_dir: Path, capture_content: Any, stream_usage: Any, name: str
) -> None:
    """configure() with a bad value or a missing price file raises and leaves the settings as they were."""
    before = _config._settings
    kwargs = {"capture_content": capture_content, "stream_usage": stream_usage}
    with pytest.raises(ConfigError) as raised:
        _config.configure(log_dir=None, price_file=fuzz_dir / "missing" / f"{name}.yaml", **kwargs)
    assert _config._settings is before
    assert "missing" in str(raised.value) or "must be" in str(raised.value)


# -- cassettes -----------------------------------------------------------------------------------------

_VALID_CASSETTE = """\
version: 1
interactions:
- request:
    method: POST
    url: https://api.openai.com/v1/chat/completions
    headers: {content-type: application/json}
    json: {model: gpt-4o-mini, messages: [{role: user, content: hi}]}
  response:
    status: 200
    headers: {content-type: application/json}
    json:
      id: chatcmpl-1
      choices: [{index: 0, message: {role: assistant, content: hello}, finish_reason: stop}]
      usage: {prompt_tokens: 3, completion_tokens: 1, total_tokens: 4}
"""
_CASSETTE_KEYS = [
    "version",
    "interactions",
    "request",
    "response",
    "method",
    "url",
    "status",
    "headers",
    "json",
    "sse",
]


@FUZZ
@given(text=_texts(_CASSETTE_KEYS, _VALID_CASSETTE), cut=st.integers(0, len(_VALID_CASSETTE)))
def test_fuzzed_and_truncated_cassettes_load_or_fail_clearly(
    tried: Counter[str], fuzz_dir: Path, text: str, cut: int
) -> None:
    """A malformed or truncated cassette loads or raises CassetteError naming the file, nothing else."""
    tried["cassettes"] += 2
    path = fuzz_dir / "cassette.yaml"
    for candidate in (text, _VALID_CASSETTE[:cut]):
        path.write_text(candidate, encoding="utf-8", errors="surrogatepass")
        loaded, message = _attempt(lambda: load_cassette(path), CassetteError)
        assert isinstance(loaded, list) or (message or "").startswith(str(path)), message


def _hostile(marker: Path) -> list[str]:
    """YAML that would create ``marker`` if a loader constructed Python objects from its tags."""
    target = str(marker)
    return [
        f"!!python/object/apply:os.system ['touch {target}']",
        "version: 1\ninteractions: !!python/object/apply:pathlib.Path.touch "
        f"[!!python/object/apply:pathlib.Path ['{target}']]",
        "version: 1\ninteractions:\n"
        f"- request: !!python/object/new:subprocess.Popen [['touch', '{target}']]\n",
        f'!!python/object/apply:builtins.exec [\'open("{target}", "w").close()\']',
        "version: !!python/name:os.system 1\ninteractions: []",
        f"version: 1\ninteractions: []\nx: !!python/object/apply:os.system ['touch {target}']",
    ]


def test_hostile_yaml_tags_execute_nothing(tmp_path: Path) -> None:
    """Cassettes carrying python/object tags raise CassetteError, and nothing they name runs."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    for payload in _hostile(marker):
        path.write_text(payload)
        with pytest.raises(CassetteError, match=r"invalid YAML|top level"):
            load_cassette(path)
        with pytest.raises(CassetteError):
            LedgerCassette(path, "none", "tests/test_x.py::test_y")
        with pytest.raises(CassetteError):
            LedgerCassette(path, "new_episodes", "tests/test_x.py::test_y")
    assert not marker.exists()
    record_figures("fuzz: hostile YAML tags", payloads=len(_hostile(marker)), executed=0)


def test_scrub_refuses_hostile_cassettes_and_executes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`llm-ledger scrub` on a cassette with python/object tags exits 2 with a clear error, runs nothing."""
    marker = tmp_path / "pwned"
    for number, payload in enumerate(_hostile(marker)):
        path = tmp_path / f"evil{number}.yaml"
        path.write_text(payload)
        for extra in ([], ["--check"]):
            if number == 0 and not extra:  # once as its own process: the command as users run it
                done = subprocess.run(
                    [sys.executable, "-m", "llm_ledger._cli", "scrub", *extra, str(path)],
                    env=child_env(),
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )
                status, stderr = done.returncode, done.stderr
            else:  # the rest in this process (a start-up each would add nothing): a crash raises here
                capsys.readouterr()
                status, stderr = cli_main(["scrub", *extra, str(path)]), capsys.readouterr().err
            assert status == 2, stderr
            assert str(path) in stderr and "Traceback" not in stderr, stderr
            assert len(stderr.splitlines()) == 1, stderr
        assert path.read_text() == payload
    assert not marker.exists()


def _laughs_cassette() -> str:
    """A cassette whose request body is nine levels of nine YAML aliases (9**9 strings once expanded)."""
    levels = [f"a0: &a0 [{', '.join([FAKE_KEY] * 9)}]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    body = "".join(f"      {level}\n" for level in levels)
    return (
        "version: 1\ninteractions:\n- request:\n    method: POST\n"
        "    url: https://api.openai.com/v1/chat/completions\n    json:\n"
        f"{body}  response: {{status: 200, json: {{}}}}\n"
    )


def test_billion_laughs_cassette_neither_hangs_nor_blows_up_scrub(tmp_path: Path) -> None:
    """Scrub walks a cassette of nested YAML aliases (a billion laughs) once per object, in seconds."""
    path = tmp_path / "laughs.yaml"
    path.write_text(_laughs_cassette())
    done = subprocess.run(
        [sys.executable, "-m", "llm_ledger._cli", "scrub", str(path)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert FAKE_KEY not in path.read_text()
    assert len(path.read_bytes()) < 10_000  # aliases kept as aliases, not expanded


def test_billion_laughs_cassette_is_refused_quickly_by_the_plugin(tmp_path: Path) -> None:
    """A cassette of nested YAML aliases is refused at once with a CassetteError naming the alias."""
    path = tmp_path / "laughs.yaml"
    path.write_text(_laughs_cassette())
    code = (
        "import sys; from pathlib import Path; from pytest_llm_ledger._cassette import LedgerCassette\n"
        "try:\n    LedgerCassette(Path(sys.argv[1]), 'none', 't')\n"
        "except Exception as e:\n    print(type(e).__name__, e)\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, str(path)],
            env=child_env(),
            timeout=60,  # expanding the aliases would take hours; starting Python on a loaded host, seconds
            check=True,
            capture_output=True,
            text=True,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("loading the cassette did not finish in 60 s")
    assert done.stdout.startswith("CassetteError") and "YAML alias" in done.stdout
