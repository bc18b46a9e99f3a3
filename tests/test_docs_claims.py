"""What the docs cite and quote, checked against the code: every test they name as proof exists under
that name, docs/MONITORING.md's settings table names exactly the variables configure() reads, the
errors docs/BUDGETS.md and docs/ANOMALIES.md quote are what those mistakes print, every record field
they name exists, docs/MONITORING.md's field tables name every field of the call and lens records,
both lists of the price file's keys name every key, every link between them lands on a section (and
every link to another file finds it), and docs/FAKE_SERVER.md's header tables name what the fake
server takes."""

from __future__ import annotations

import ast
import base64
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import llm_ledger
from llm_ledger import AnomalyConfig, ConfigError
from llm_ledger._config import _VARIABLES, resolve
from llm_ledger._extract import OPERATIONS
from llm_ledger._fake_realtime import _STEERING
from llm_ledger._fake_server import _HEADERS
from llm_ledger._price_file import _MODEL_KEYS
from llm_ledger._records import (
    CallRecord,
    CostShape,
    ErrorShape,
    LensRecord,
    LensSummary,
    RequestShape,
    ResponseShape,
    ServerShape,
    Timing,
    Usage,
)
from llm_ledger.testing import FakeOpenAI
from tests.conftest import socket_client

pytestmark = pytest.mark.sdk_independent

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# test files the docs name as examples of a user's project, not as proof
EXAMPLES = {"tests/test_x.py", "tests/test_app.py"}


def cited_tests() -> list[tuple[str, str, str | None, str | None]]:
    """(doc, file, test, parameter id) of each test a doc names in code spans: ``tests/f.py::test[id]``,
    then, in the same line, ``::other[id]`` and ``[id]`` (or ``…[id]``) continuing it."""
    cited = []
    for doc in DOCS:
        for line in doc.read_text().splitlines():
            path = test = None
            for span in re.findall(r"`([^`]+)`", line):
                if found := re.fullmatch(r"(tests/[\w/]+\.py)(?:::(\w+))?(\[.+\])?", span):
                    path, test, param = found.groups()
                elif path and (found := re.fullmatch(r"::(\w+)(\[.+\])?", span)):
                    test, param = found.groups()
                elif path and test and (found := re.fullmatch(r"…?(\[.+\])", span)):
                    param = found.group(1)
                else:
                    continue
                if path not in EXAMPLES:
                    cited.append((doc.name, path, test, param and param[1:-1]))
    return cited


def test_every_test_the_docs_cite_exists() -> None:
    """Each test file, test function and parameter id a doc names as proof is in the suite, so a renamed
    or deleted test fails here rather than leaving a guarantee with no proof."""
    cited = cited_tests()
    assert len(cited) > 150  # RELIABILITY.md's tables alone name more
    missing = []
    read: dict[str, tuple[str, set[str]]] = {}  # each file parsed once: the docs cite hundreds of tests
    for doc, path, test, param in cited:
        file = REPO / path
        if not file.is_file():
            missing.append(f"{doc}: {path}")
            continue
        if path not in read:
            text = file.read_text()
            read[path] = (
                text,
                {
                    node.name
                    for node in ast.walk(ast.parse(text))
                    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                },
            )
        source, names = read[path]
        if test is not None and test not in names:
            missing.append(f"{doc}: {path}::{test}")
        elif param is not None and param not in source:  # every id the docs cite is written in its test
            missing.append(f"{doc}: {path}::{test}[{param}]")
    assert missing == []


def test_the_settings_table_names_every_variable_configure_reads() -> None:
    """docs/MONITORING.md's configuration table lists the variables configure() reads, no more, no less;
    and no doc names an LLM_LEDGER_ variable that does not exist."""
    text = (REPO / "docs" / "MONITORING.md").read_text()
    table = text[text.index("| argument | environment variable |") :].split("\n\n", 1)[0]
    in_table = set(re.findall(r"`(LLM_LEDGER_\w+)`", table))
    read = set(_VARIABLES)
    assert in_table == read
    named = {name for doc in DOCS for name in re.findall(r"\bLLM_LEDGER_[A-Z_]+\b", doc.read_text())}
    assert named <= read


def _budgets(mapping: dict[str, Any]) -> Callable[[], object]:
    return lambda: resolve(log_dir=None, budgets=mapping, env={})


def _mode(mode: str) -> Callable[[], object]:
    return lambda: resolve(log_dir=None, budgets={"lenses": {}}, budget_mode=mode, env={})


@pytest.mark.parametrize(
    ("quoted", "mistake"),
    [
        ("lenses.digest.max_calls: unknown key", _budgets({"lenses": {"digest": {"max_calls": 3}}})),
        ("lense: unknown key", _budgets({"lense": {}})),
        ("budget_mode must be one of", _mode("hard")),
        ("budget_mode='raise' acts on", lambda: resolve(log_dir=None, budget_mode="raise", env={})),
    ],
)
def test_the_budget_errors_the_guide_quotes_are_what_the_mistakes_print(
    quoted: str, mistake: Callable[[], object]
) -> None:
    """docs/BUDGETS.md's "Bad input" lines for a mapping or an option are, whole, what configure() raises."""
    text = (REPO / "docs" / "BUDGETS.md").read_text()
    block = text[text.index("## Bad input") :].split("```")[1]
    [line] = [line for line in block.splitlines() if quoted in line]
    with pytest.raises(ConfigError) as raised:
        mistake()
    assert str(raised.value) == line


@pytest.mark.parametrize(
    ("line", "path", "text"),
    [
        ("budgets.yaml:3:", "budgets.yaml", "lenses:\n  digest:\n    max_api_calls: -1\n"),
        (
            "budgets.yaml:4:",
            "budgets.yaml",
            "lenses:\n  digest:\n    max_api_calls: 1\n    max_total_tokens: 1:30\n",
        ),
        ("ci/limits.yaml:", "ci/limits.yaml", None),
    ],
)
def test_the_budget_file_errors_the_guide_quotes_are_what_the_mistakes_print(
    line: str, path: str, text: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/BUDGETS.md's "Bad input" lines for a file are, whole, what loading that file raises."""
    doc = (REPO / "docs" / "BUDGETS.md").read_text()
    [quoted] = [
        shown
        for shown in doc[doc.index("## Bad input") :].split("```")[1].splitlines()
        if shown.startswith(line)
    ]
    monkeypatch.chdir(tmp_path)
    if text is not None:
        Path(path).write_text(text)
    with pytest.raises(ConfigError) as raised:
        resolve(log_dir=None, budgets=path, env={})
    assert str(raised.value) == quoted


@pytest.mark.parametrize(
    ("quoted", "config"),
    [
        ("anomalies: k must be", lambda: AnomalyConfig(k=0)),
        ("anomalies: unknown metric", lambda: AnomalyConfig(metrics=("tokens",))),
    ],
)
def test_the_anomaly_errors_the_guide_quotes_are_what_the_mistakes_print(
    quoted: str, config: Callable[[], AnomalyConfig]
) -> None:
    """docs/ANOMALIES.md's example errors are what a bad AnomalyConfig raises."""
    text = (REPO / "docs" / "ANOMALIES.md").read_text()
    [shown] = re.findall(rf"`({re.escape(quoted)}[^`]*)`", text)
    with pytest.raises(ConfigError) as raised:
        resolve(log_dir=None, anomalies=config(), env={})
    assert str(raised.value) == shown


def test_the_errors_section_names_every_exception_of_the_tree() -> None:
    """docs/MONITORING.md's "Errors" names every exception llm-ledger exports under LedgerError."""
    text = (REPO / "docs" / "MONITORING.md").read_text()
    section = text[text.index("## Errors") :].split("\n## ", 1)[0]
    exported = {
        name
        for name in llm_ledger.__all__
        if isinstance(obj := getattr(llm_ledger, name), type) and issubclass(obj, llm_ledger.LedgerError)
    }
    assert exported == set(re.findall(r"`(\w+Error)`", section))


# the record's sections and the shape each has in _records.py
SHAPES: dict[str, Any] = {
    "request": RequestShape, "response": ResponseShape, "usage": Usage, "timing": Timing,
    "cost": CostShape, "server": ServerShape, "error": ErrorShape, "summary": LensSummary,
}  # fmt: skip
# dotted names the docs give that are the API's or the SDK's, not the record's: stream and Realtime
# event types, the usage fields a provider reports its cost in, an exception's attribute, an OTel one
NOT_RECORD_FIELDS = {
    "response.cancel", "response.completed", "response.create", "response.created", "response.done",
    "response.event", "response.failed", "response.in_progress", "response.incomplete", "usage.cost",
    "usage.cost_in_usd_ticks", "usage.type", "error.record", "server.server_port",
}  # fmt: skip


def test_every_record_field_the_docs_name_is_one_the_record_has() -> None:
    """A record field a doc names as ``cost.left_out`` or ``response.tool_uses`` is a field of that
    section's shape in _records.py (docs/FAKE_SERVER.md, which names the API's side, aside), so a field
    renamed or never added fails here rather than sending a reader to a key no record has."""
    named = set()
    for doc in DOCS:
        if doc.name == "FAKE_SERVER.md":
            continue
        for span in re.findall(r"`([^`]+)`", doc.read_text().replace("```", "")):
            named |= {
                (found[0], found[1], found[2], doc.name)
                for found in re.finditer(rf"(?<![\w.])({'|'.join(SHAPES)})\.([a-z_]+)(?![\w.(])", span)
            }
    assert len(named) > 40
    unknown = sorted(
        f"{doc}: {name}"
        for name, section, field, doc in named
        if field not in SHAPES[section].__annotations__ and name not in NOT_RECORD_FIELDS
    )
    assert unknown == []


def _table_fields(section: str) -> set[str]:
    """The fields the first table of a docs/MONITORING.md section names in its rows' first cells, each
    ``.name`` continuing the section of the span before it (``request.top_p``, ``.seed``)."""
    text = (REPO / "docs" / "MONITORING.md").read_text()
    start = text.index("\n|", text.index(section))
    rows = text[start + 1 :].split("\n\n", 1)[0].splitlines()[2:]
    named, parent = set(), ""
    for row in rows:
        for span in re.findall(r"`([^`]+)`", row.split(" | ")[0]):
            name = parent + span if span.startswith(".") else span
            parent = name.rpartition(".")[0]
            named.add(name)
    return named


@pytest.mark.parametrize(
    ("section", "record"),
    [("### Per call: `llm_api_call`", CallRecord), ("### Per lens: `lens_summary`", LensRecord)],
)
def test_the_field_tables_name_every_field_of_the_records(section: str, record: Any) -> None:
    """docs/MONITORING.md's tables of the call and lens records name each field of their shapes in
    _records.py, nested ones as ``usage.cached_audio_tokens``, and no other: a field added to a record
    without a meaning in the docs, or one removed, fails here."""
    fields = set()
    for key in record.__annotations__:
        if key in SHAPES:
            fields |= {f"{key}.{field}" for field in SHAPES[key].__annotations__}
        else:
            fields.add(key)
    assert _table_fields(section) == fields


def test_the_records_notes_name_every_operation() -> None:
    """docs/MONITORING.md's list of a record's ``operation`` values is what the ledger records: each
    endpoint's (a new one watched and left out of the list fails here), ``realtime`` and ``live``."""
    text = (REPO / "docs" / "MONITORING.md").read_text()
    note = re.split(r";\s+`content` appears", text[text.index("* `operation` is `") :], maxsplit=1)[0]
    assert set(re.findall(r"`(\w+)`", note)) - {"operation"} == {*OPERATIONS.values(), "realtime", "live"}


@pytest.mark.parametrize(
    ("doc", "section"), [("MONITORING.md", "## Prices"), ("PRICING.md", "## Mapping hosts in the price file")]
)
def test_the_price_file_keys_are_listed_wherever_the_docs_list_them(doc: str, section: str) -> None:
    """Both places that list what a price file's model or host entry may give name each key the loader
    takes (``cached_input_image``, ``service_tiers``...), as a code span or a YAML key, so a rate added
    to the loader is not left out of one list."""
    text = (REPO / "docs" / doc).read_text()
    part = text[text.index(section) :].split("\n## ", 1)[0]
    named = set(re.findall(r"`(\w+)`", part)) | set(re.findall(r"(?:^\s*|[{,] *)(\w+):", part, re.MULTILINE))
    assert set(_MODEL_KEYS) - named == set()


def test_the_rates_signature_the_pricing_guide_gives_is_the_classs() -> None:
    """docs/PRICING.md's ``Rates(model, input, ...)`` names the dataclass's parameters, in order."""
    text = (REPO / "docs" / "PRICING.md").read_text()
    [shown] = re.findall(r"`Rates\(([^`]*)\)`", text.replace("\n", " "))
    assert [param.split("=")[0] for param in shown.split(", ")] == list(
        inspect.signature(llm_ledger.Rates).parameters
    )


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation but ``-`` and ``_`` dropped."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_between_the_docs_reaches_its_section() -> None:
    """Each link from one doc to another (``MONITORING.md#the-records``, ``#realtime``) names a file
    that exists and, after ``#``, a heading of it: a section renamed leaves no link landing at the top."""
    broken, links = [], 0
    for doc in DOCS:
        for target, anchor in re.findall(r"\]\(([\w./-]*\.md|)(?:#([\w-]+))?\)", doc.read_text()):
            file = (doc.parent / target).resolve() if target else doc
            links += 1
            if not file.is_file():
                broken.append(f"{doc.name}: ({target})")
            elif anchor and anchor not in {
                _slug(line.lstrip("#")) for line in file.read_text().splitlines() if re.match(r"#+ ", line)
            }:
                broken.append(f"{doc.name}: ({target}#{anchor})")
        # links to other files (an image, bench/RESULTS.md's siblings, the licence): the file exists
        for target in re.findall(r"\]\((?![a-z]+:)([^)#\s]+)[^)]*\)", doc.read_text()):
            links += 1
            if not (doc.parent / target).exists():
                broken.append(f"{doc.name}: ({target})")
    assert links > 80
    assert broken == []


def test_the_fake_server_s_header_tables_name_every_header_it_takes() -> None:
    """docs/FAKE_SERVER.md's tables of ``x-fake-*`` request headers (with each value a header takes from
    a list, and each fault) and of Realtime ``metadata`` keys name exactly what the server accepts: it
    refuses any other, so a header missing from the table is one no reader can find."""
    text = (REPO / "docs" / "FAKE_SERVER.md").read_text()

    def table(after: str) -> list[list[str]]:
        """The code spans of the first cell of each row of the first table from ``after`` on."""
        start = text.index(after)
        start = text.index("\n|", start - 1) + 1
        rows = text[start:].split("\n\n", 1)[0].splitlines()[2:]
        return [re.findall(r"`([^`]+)`", row.split(" | ")[0]) for row in rows]

    shown: dict[str, set[str]] = {}
    for spans in table("## Request headers that steer it"):
        name = ""
        for span in spans:
            if span.startswith("x-fake-"):
                name, _, value = span.removeprefix("x-fake-").partition(": ")
            else:
                value = span
            shown.setdefault(name, set()).add(value)
    assert set(shown) == set(_HEADERS)
    for name, kind in _HEADERS.items():
        if isinstance(kind, tuple) and name != "fault":
            assert shown[name] == set(kind), name
    faults = {spans[0] for spans in table("Faults (`x-fake-fault`)")}
    assert faults == set(_HEADERS["fault"])
    realtime = {s.split(":")[0] for spans in table("| metadata key | effect |") for s in spans if ":" in s}
    assert realtime == set(_STEERING)


def test_the_lens_span_s_audio_input_is_the_sum_of_its_call_spans(fake_openai: FakeOpenAI) -> None:
    """docs/exporters.md: each token count of a lens span is the sum of its calls' attribute of the same
    suffix; a Realtime response's audio input, cached or not, is ``audio.input_tokens`` on both."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from llm_ledger.exporters import OTelSink

    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    monitor = llm_ledger.LLMCallMonitor(logger=None, sinks=[OTelSink(tracer_provider, MeterProvider())])
    with (
        socket_client(fake_openai) as raw,
        monitor.lens("voice_agent"),
        monitor.instrument(raw).realtime.connect(model="gpt-realtime") as connection,
    ):
        connection.input_audio_buffer.append(audio=base64.b64encode(bytes(4000)).decode())
        connection.input_audio_buffer.commit()
        connection.response.create(response={"metadata": {"x-fake-cached-audio-tokens": "30"}})
        for event in connection:
            if event.type == "response.done":
                break
    call, lens = (dict(span.attributes or {}) for span in spans.get_finished_spans())
    assert call["gen_ai.usage.audio.input_tokens"] == 40  # 10 heard afresh, 30 from the cache
    assert lens["llm_ledger.lens.audio.input_tokens"] == call["gen_ai.usage.audio.input_tokens"]
