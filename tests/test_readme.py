"""README.md and the docs' examples as a user copies them, read from the files (so an edit to a doc is
what is tested): the README's two "Five minutes" paths run exactly as written (a service's first
records; a CI project recorded once, replayed offline, then failed by its budget), and the other
examples run and show what the docs say they show."""

from __future__ import annotations

import ast
import io
import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

# imported here so in-process inner sessions reuse them instead of importing them again each time
import openai
import pytest
import vcr  # noqa: F401
import yaml
from openai.types.chat import ChatCompletionMessageParam

import llm_ledger
from examples.lens_app import cli
from examples.lens_app.lenses import LENSES
from examples.lens_app.sources import load_sources
from llm_ledger.report import usd
from llm_ledger.testing import FakeOpenAI
from tests import warm_python
from tests.plugin_helpers import no_key_fixture, run, write_project

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

pytest_plugins = ["pytester"]
_FIXTURES = (no_key_fixture,)  # used by name

REPO = Path(__file__).resolve().parents[1]
README, CI_GUIDE = REPO / "README.md", REPO / "docs" / "CI.md"
KEY = "sk-readme-LEAKCHECK-0123456789abcdef"
# The values of these keys are the server's and the clock's: the excerpt shows a real OpenAI answer,
# the loopback server counts its own tokens.
MEASURED = re.compile(r"_(tokens|usd|ms)$")


def blocks(language: str, heading: str, doc: Path = README) -> list[str]:
    """The ```language blocks of ``doc``'s section ``heading`` (up to the next heading as deep)."""
    text = doc.read_text()
    level = heading.split(" ")[0]
    start = text.index(f"\n{heading}\n")
    end = text.find(f"\n{level} ", start + 1)
    section = text[start : end if end != -1 else len(text)]
    return re.findall(rf"^```{language}\n(.*?)^```$", section, re.S | re.M)


def excerpt_records(excerpt: str) -> list[dict[str, Any]]:
    """The JSON lines of a doc's excerpt as dicts, each elided ``, …`` dropped ("…" in strings stays);
    an elision anywhere else is a JSON error."""
    text = re.sub(r",\s*…(?=\s*[}\]])", "", excerpt)
    decoder, records, at = json.JSONDecoder(), [], 0
    while (at := len(text) - len(text[at:].lstrip())) < len(text):
        record, at = decoder.raw_decode(text, at)
        records.append(record)
    return records


def assert_shown_as_written(shown: Any, real: Any, path: str) -> None:
    """Every key the excerpt shows exists at that place of the real record, with the same value, except
    placeholders ("…") and measured figures (same JSON type)."""
    if isinstance(shown, dict):
        assert isinstance(real, dict), f"{path}: the README shows an object, the record has {real!r}"
        for key, value in shown.items():
            assert key in real, f"{path}.{key}: shown in the README, absent from the record {real}"
            if value == "…":
                continue
            if MEASURED.search(key):
                assert type(real[key]) is type(value), f"{path}.{key}: {value!r} shown, {real[key]!r} written"
            else:
                assert_shown_as_written(value, real[key], f"{path}.{key}")
    else:
        assert real == shown, f"{path}: the README shows {shown!r}, the record has {real!r}"


def test_monitoring_a_service_writes_the_records_the_readme_shows(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """The "Five minutes: monitoring a service" block, run as a script with a key and OPENAI_BASE_URL
    at the loopback server, writes one call line and one lens line with the keys and values of the
    README's excerpt, prints the lens summary the file holds, and nothing else."""
    heading = "## Five minutes: monitoring a service"
    code, excerpt = blocks("python", heading)[0], blocks("json", heading)[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_LEDGER_", "OPENAI_"))}
    env |= {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": fake_openai.base_url}
    (tmp_path / "quickstart.py").write_text(code)

    done = warm_python.run(
        [sys.executable, "quickstart.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )

    assert (done.returncode, done.stderr) == (0, "")
    call, lens = (
        json.loads(line) for line in (tmp_path / "logs" / "llm_calls.jsonl").read_text().splitlines()
    )
    assert [call["event"], lens["event"]] == ["llm_api_call", "lens_summary"]
    assert (call["status"], call["operation"]) == ("ok", "chat")
    assert call["context"] == lens["context"]  # lens_run_id included: the call belongs to this run
    assert (call["context"]["lens_key"], call["context"]["source_id"]) == ("summary", "doc-1")
    request, usage, summary = call["request"], call["usage"], lens["summary"]
    shape = (request["model"], request["messages_count"], request["user_prompt_length"], request["stream"])
    assert shape == ("gpt-4o-mini", 1, len("Hi"), False)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    assert call["cost"]["total_cost_usd"] > 0
    assert summary["total_api_calls"] == 1
    assert summary["total_tokens"] == usage["total_tokens"]
    assert summary["total_cost_usd"] == call["cost"]["total_cost_usd"]
    assert (summary["models_used"], summary["cost_complete"]) == (["gpt-4o-mini"], True)
    assert ast.literal_eval(done.stdout) == summary  # print(run.summary): the file's summary, only it

    shown_call, shown_lens = excerpt_records(excerpt)
    assert_shown_as_written(shown_call, call, "llm_api_call")
    assert_shown_as_written(shown_lens, lens, "lens_summary")
    # the excerpt's own figures agree with each other and with the ledger's price of gpt-4o-mini
    shown_usage, shown_summary = shown_call["usage"], shown_lens["summary"]
    assert shown_usage["total_tokens"] == shown_usage["prompt_tokens"] + shown_usage["completion_tokens"]
    assert shown_summary["total_tokens"] == shown_usage["total_tokens"]
    assert shown_summary["total_cost_usd"] == shown_call["cost"]["total_cost_usd"]
    tokens = {k: shown_usage[k] for k in ("prompt_tokens", "completion_tokens")}
    cost = llm_ledger.price("gpt-4o-mini", **tokens)
    assert cost is not None and float(cost.total_cost_usd) == shown_call["cost"]["total_cost_usd"]


def test_without_configure_the_records_reach_only_the_logger_and_the_summary(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """The README's service without its configure() line: no logs/ directory is written, the records
    reach the `llm_monitor` logger (a handler of the application's own), and run.summary is printed."""
    code = blocks("python", "## Five minutes: monitoring a service")[0]
    without = "\n".join(line for line in code.splitlines() if not line.startswith("llm_ledger.configure("))
    assert len(without.splitlines()) == len(code.splitlines()) - 1
    handler = "import logging\nlogging.getLogger('llm_monitor').addHandler(logging.StreamHandler())\n"
    (tmp_path / "quickstart.py").write_text(handler + without)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_LEDGER_", "OPENAI_"))}
    env |= {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": fake_openai.base_url}

    done = warm_python.run(
        [sys.executable, "quickstart.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["event"] for line in done.stderr.splitlines()] == [
        "llm_api_call",
        "lens_summary",
    ]
    assert ast.literal_eval(done.stdout)["total_api_calls"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["quickstart.py"]


# What the README's CI test leaves to the application: something that runs a lens over a source.
MYAPP = """
import llm_ledger
from examples.lens_app import cli
from examples.lens_app.lenses import LENSES
from examples.lens_app.sources import load_sources
import openai

source = {"id": "doc-1", "text": "The bakery cut its food waste by half with a daily surplus market."}


class Runner:
    async def run_lens(self, lens_key, source):
        async with llm_ledger.instrument(openai.AsyncOpenAI(max_retries=0)) as client:
            with llm_ledger.lens(lens_key, source_id=source["id"]):
                messages = [{"role": "user", "content": "Summarise: " + source["text"]}]
                await client.chat.completions.create(model="gpt-4o-mini", messages=messages)


runner = Runner()
"""


CI_HEADING = "## Five minutes: budgets and replay in CI"


def pytest_commands() -> list[list[str]]:
    """The README's CI command lines that run pytest, as argument lists (comments dropped)."""
    (shell,) = blocks("sh", CI_HEADING)
    commands = [shlex.split(line, comments=True) for line in shell.splitlines()]
    return [command[1:] for command in commands if command[:1] == ["pytest"]]


def test_budgets_and_replay_in_ci_as_the_readme_writes_them(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, no_key: None, recwarn: pytest.WarningsRecorder
) -> None:
    """The "Five minutes: budgets and replay in CI" path: its test module and budgets.yaml, recorded
    once with the README's command against the loopback server (a key, OPENAI_BASE_URL), leave a
    cassette under cassettes/ with no key or auth header; replayed with the README's CI command, with
    no key and no server, the build passes; with the lens's cost limit below the recorded cost, the
    same replay fails the build naming the lens, the limit and the test. docs/CI.md's version of the
    test module runs beside it. The project's pytest settings are the README's pyproject.toml, and no
    run warns (pytest-asyncio's deprecation warning of an unset fixture loop scope)."""
    (test_code,) = blocks("python", CI_HEADING)
    (budgets,) = blocks("yaml", CI_HEADING)
    (settings,) = blocks("toml", CI_HEADING)
    guide_code = blocks("python", "## Cassettes, the guard and the settings", CI_GUIDE)[0]
    record, replay = pytest_commands()
    write_project(pytester, test_code, "test_summary")
    write_project(pytester, guide_code, "test_guide")
    pytester.path.joinpath("pytest.ini").unlink()  # the README's settings only
    pytester.path.joinpath("pyproject.toml").write_text(settings)
    pytester.path.joinpath("myapp.py").write_text(MYAPP)
    pytester.path.joinpath("budgets.yaml").write_text(budgets)
    pytester.syspathinsert()  # the application importable, as an installed package is

    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        recorded = run(pytester, *record)
        assert recorded.ret == 0, recorded.stdout.str()
        assert [(r.path, r.headers["authorization"]) for r in server.requests] == 2 * [
            ("/v1/chat/completions", f"Bearer {KEY}")
        ]
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("OPENAI_BASE_URL")

    cassettes = sorted((pytester.path / "cassettes").rglob("*.yaml"))
    assert [c.relative_to(pytester.path).as_posix() for c in cassettes] == [
        "cassettes/tests/test_guide/test_summary_lens.yaml",
        "cassettes/tests/test_summary/test_summary_lens.yaml",
    ]
    for text in map(Path.read_text, cassettes):
        assert KEY not in text and "Bearer" not in text
        assert not re.search(r"^\s*(authorization|api-key|openai-[a-z]+):", text, re.I | re.M)

    passed = run(pytester, *replay)
    assert passed.ret == 0, passed.stdout.str()
    passed.assert_outcomes(passed=2)
    passed.stdout.fnmatch_lines(["llm-ledger: every budget in budgets.yaml was met"])
    # in-process sessions: their configure-time warnings reach this test's recorder
    assert not [w for w in recwarn if issubclass(w.category, pytest.PytestDeprecationWarning)]

    (interaction,) = yaml.safe_load(cassettes[1].read_text())["interactions"]
    usage = interaction["response"]["json"]["usage"]
    cost = llm_ledger.price(
        "gpt-4o-mini", prompt_tokens=usage["prompt_tokens"], completion_tokens=usage["completion_tokens"]
    )
    assert cost is not None
    limits = yaml.safe_load(budgets)
    assert limits["lenses"]["default_summary"]["max_cost_usd"] > cost.total_cost_usd > 0
    limits["lenses"]["default_summary"]["max_cost_usd"] = limit = float(cost.total_cost_usd) / 2
    pytester.path.joinpath("budgets.yaml").write_text(yaml.safe_dump(limits))

    failed = run(pytester, *replay)
    assert failed.ret == pytest.ExitCode.TESTS_FAILED
    failed.assert_outcomes(passed=2)
    failed.stdout.fnmatch_lines(
        [
            "*llm-ledger: 1 budget limit(s) exceeded*",
            "lens / test / total *limit *max *actual *worst run (test id)",
            f"lens default_summary *max_cost_usd *{usd(limit)} *{usd(cost.total_cost_usd)}"
            " *tests/test_*.py::test_summary_lens (+1 more runs)",
            "limits from budgets.yaml: "
            "bring each back within its limit, or raise the limit there if the increase is intended",
        ]
    )


def test_the_hosts_example_prices_each_host_as_its_comment_says(tmp_path: Path) -> None:
    """The README's price file for self-hosted servers loads as it is written: Ollama's host is free for
    every model, the gateway costs OpenRouter's rates, and a host nobody maps keeps the model match."""
    path = tmp_path / "prices.yaml"
    path.write_text(blocks("yaml", "## Providers and price what-ifs")[0])
    table = llm_ledger.PriceTable.from_file(path)

    ollama = table.route("localhost", 11434)
    assert (ollama.provider, ollama.matched_by) == ("ollama", "host")
    free = ollama.cost("llama3.3", prompt_tokens=1_000, completion_tokens=1_000)
    assert free is not None and free.total_cost_usd == 0
    gateway = table.route("llm-gateway.internal", 443)
    assert (gateway.provider, gateway.matched_by) == ("openrouter", "host")
    assert table.route("gpu-1.internal", 8000).matched_by == "model"


def test_the_ci_budgets_guard_the_same_lens_in_production(
    fresh_config: None, fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The "Budgets and anomalies in production" configure() line, with the README's CI
    budgets.yaml, lets the call that takes a default_summary run over 4000 tokens return, emits one
    budget_exceeded record at WARNING to the callback and the file, and refuses the run's next call
    unsent with BudgetExceededError; the run still writes its lens summary."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "budgets.yaml").write_text(blocks("yaml", CI_HEADING)[0])
    alerts: list[dict[str, Any]] = []
    exec(
        blocks("python", "## Budgets and anomalies in production")[0],
        {"llm_ledger": llm_ledger, "alert": alerts.append},
    )
    # the loopback server counts a token per 4 characters: this prompt is 5,000 tokens
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "word " * 4_000}]
    with openai.OpenAI(api_key=KEY, base_url=fake_openai.base_url, max_retries=0) as raw:
        client = llm_ledger.instrument(raw)
        with llm_ledger.lens("default_summary", source_id="doc-1"):
            answer = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
            with pytest.raises(llm_ledger.BudgetExceededError) as refused:
                client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    llm_ledger.flush()

    assert answer.usage is not None and answer.usage.total_tokens > 4000
    assert len(fake_openai.requests) == 1
    (alert,) = alerts
    assert refused.value.record == alert
    assert (alert["event"], alert["level"], alert["context"]["lens_key"]) == (
        "budget_exceeded", "WARNING", "default_summary",
    )  # fmt: skip
    assert (alert["budget"]["limit"], alert["budget"]["max"], alert["budget"]["mode"]) == (
        "max_total_tokens", 4000, "raise",
    )  # fmt: skip
    lines = [json.loads(line) for line in (tmp_path / "logs" / "llm_calls.jsonl").read_text().splitlines()]
    assert [line["event"] for line in lines] == ["llm_api_call", "budget_exceeded", "lens_summary"]
    assert lines[2]["summary"]["total_api_calls"] == 1


@pytest.mark.parametrize("doc", [README, REPO / "docs" / "MONITORING.md"], ids=lambda doc: doc.name)
def test_the_demo_prints_the_table_the_docs_show(doc: Path, tmp_path: Path, fresh_config: None) -> None:
    """`make demo` (the committed cassettes, replayed) prints every row the doc's table shows, with the
    same calls, tokens and cost; only durations are the machine's."""
    shown = re.search(r"^```\n(lens +source +calls.*?)^```$", doc.read_text(), re.S | re.M)
    assert shown is not None
    out = io.StringIO()
    status = cli.main(["--db", str(tmp_path / "demo.sqlite3"), "--log-dir", str(tmp_path / "logs")], out=out)
    assert status == 0, out.getvalue()
    printed = out.getvalue().splitlines()
    rows = [line for line in shown.group(1).splitlines() if line != "..."]
    for row in rows:
        without_duration = re.sub(r"\s+\d+ ms$", "", row)
        assert any(line.startswith(without_duration) for line in printed), (row, out.getvalue())


def shown_records(doc: Path, heading: str) -> dict[str, Any]:
    """The one ```json record of ``doc``'s section ``heading`` ("…" elisions written as strings)."""
    (shown,) = excerpt_records(blocks("json", heading, doc)[0])
    return shown


def same_keys(shown: dict[str, Any], real: dict[str, Any], path: str) -> None:
    """``shown`` has exactly the keys of ``real``, and so has each object inside it."""
    assert sorted(shown) == sorted(real), (
        f"{path}: the doc shows {sorted(shown)}, the record has {sorted(real)}"
    )
    for key, value in shown.items():
        if isinstance(value, dict):
            same_keys(value, real[key], f"{path}.{key}")


def test_the_monitoring_guide_shows_both_records_field_by_field(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """docs/MONITORING.md's "The records" shows every field of a call record and of a lens summary, as
    the JSONL file writes them, and no field they do not have."""
    path = tmp_path / "llm_calls.jsonl"
    handler = llm_ledger.JsonlFileHandler(path)
    monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[handler.write_record])
    with openai.OpenAI(api_key=KEY, base_url=fake_openai.base_url, max_retries=0) as raw:
        client = monitor.instrument(raw)
        with monitor.lens("default_summary", source_id="a1b2", service="RunnerService"):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
    handler.close()

    call, lens = (json.loads(line) for line in path.read_text().splitlines())
    monitoring = REPO / "docs" / "MONITORING.md"
    same_keys(shown_records(monitoring, "### Per call: `llm_api_call`"), call, "llm_api_call")
    same_keys(shown_records(monitoring, "### Per lens: `lens_summary`"), lens, "lens_summary")


@pytest.mark.parametrize(
    ("doc", "heading"),
    [
        ("FAKE_SERVER.md", "## Running it"),
        ("LIBRARIES.md", "## A fake OpenAI server, for recording without a key and for your own tests"),
    ],
)
def test_the_fake_server_examples_run_as_written(doc: str, heading: str) -> None:
    """The FakeOpenAI examples of docs/FAKE_SERVER.md and docs/LIBRARIES.md run as written, with their
    own imports, and their asserts on what the server received and answered hold."""
    namespace: dict[str, Any] = {}
    exec(blocks("python", heading, REPO / "docs" / doc)[0], namespace)
    namespace["client"].close()


def test_the_readme_counts_the_demo_s_lenses_and_articles() -> None:
    """The README's "(N lenses over M articles" is the example application's own count of each."""
    found = re.search(r"\((\w+) lenses over (\w+) articles", README.read_text())
    assert found is not None
    numbers = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
    assert (numbers[found[1]], numbers[found[2]]) == (len(LENSES), len(load_sources()))


def test_the_fake_server_example_passes_as_a_test_of_a_project_with_the_plugin(
    pytester: pytest.Pytester,
) -> None:
    """docs/FAKE_SERVER.md's example, as the body of a test in a project whose pytest has the plugin
    (any project that installed llm-ledger[pytest]) with the ini lines the doc gives, passes: the doc
    showed the example alone, and the plugin refused its unmarked request to 127.0.0.1."""
    section = "## Running it"
    [ini] = blocks("ini", section, REPO / "docs" / "FAKE_SERVER.md")
    [example] = blocks("python", section, REPO / "docs" / "FAKE_SERVER.md")
    pytester.makefile(".ini", pytest=ini)
    body = "\n".join("    " + line if line.strip() else "" for line in example.splitlines())
    pytester.makepyfile(test_own_code=f"def test_my_code():\n{body}\n    client.close()\n")
    run(pytester, "-p", "no:asyncio").assert_outcomes(passed=1)  # the example needs no pytest-asyncio
