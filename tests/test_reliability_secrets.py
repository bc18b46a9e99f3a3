"""Secrets and content: no key, cookie or org/project id in cassettes or log lines; no content by default."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

import llm_ledger
from llm_ledger._fake_server import error_body
from llm_ledger._jsonl import JsonlFileHandler
from llm_ledger.testing import FakeOpenAI, capture
from tests.plugin_helpers import run, write_project
from tests.reliability_helpers import FAKE_KEY, read_lines, record_figures

pytestmark = pytest.mark.reliability

ORG, PROJECT, COOKIE = "org-LEAKCHECK-org", "proj_LEAKCHECK", "session=LEAKCHECK-cookie"
# what may never be written: our credentials, the fake server's identifiers, and the headers carrying them
FORBIDDEN = (
    FAKE_KEY,
    "LEAKCHECK",
    "org-fake-secret",
    "proj_fake",
    "fake-secret-cookie",
    "authorization",
    "bearer",
    "cookie",
    "openai-organization",
    "openai-project",
    "x-stainless",
)

# an inner project recording every kind of call with a client that carries every kind of credential
LEAKY_TESTS = f"""
import os

import openai
import pytest

import llm_ledger as ledger


def client(**options):
    return ledger.instrument(
        openai.OpenAI(
            api_key={FAKE_KEY!r},
            organization={ORG!r},
            project={PROJECT!r},
            base_url=os.environ["LEDGER_TEST_BASE_URL"],
            default_headers={{"Cookie": {COOKIE!r}, "api-key": {FAKE_KEY!r}}},
            max_retries=0,
            **options,
        )
    )


@pytest.mark.llm
def test_every_kind_of_call():
    with client() as c, ledger.lens("leaks"):
        c.chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "hi"}}])
        for _ in c.chat.completions.create(
            model="gpt-4o-mini", messages=[{{"role": "user", "content": "stream"}}], stream=True
        ):
            pass
        c.responses.create(model="gpt-4o-mini", input="hello")
        for _ in c.responses.create(model="gpt-4o-mini", input="hello stream", stream=True):
            pass
        c.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        with pytest.raises(openai.BadRequestError):
            c.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{{"role": "user", "content": "fail"}}],
                extra_headers={{"x-fake-status": "400"}},
            )
"""


def _leaks(text: str) -> list[str]:
    lowered = text.lower()
    return [secret for secret in FORBIDDEN if secret.lower() in lowered]


def test_cassettes_the_plugin_records_hold_no_secret(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recording chat, streams, responses, embeddings and an error writes no credential or identifier."""
    with FakeOpenAI() as server:
        monkeypatch.setenv("LEDGER_TEST_BASE_URL", server.base_url)
        write_project(pytester, LEAKY_TESTS, "test_leaky")
        result = run(pytester, "--llm-record-mode=once")
        assert result.ret == 0, result.stdout.str()
        sent = [r.headers for r in server.requests]
    assert all(h["authorization"] == f"Bearer {FAKE_KEY}" and h["openai-organization"] == ORG for h in sent)
    cassettes = sorted(pytester.path.rglob("*.yaml"))
    assert cassettes, "nothing was recorded"
    for cassette in cassettes:
        assert _leaks(cassette.read_text()) == [], cassette
    record_figures("secrets: recorded cassettes", cassettes=len(cassettes), interactions=len(sent), leaks=0)


@pytest.fixture
def ledger_file(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A logger writing through the real JSONL handler; yields its name and the file."""
    name = "llm_monitor.reliability.secrets"
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = JsonlFileHandler(tmp_path / "llm_calls.jsonl")
    logger.addHandler(handler)
    try:
        yield name, handler.path
    finally:
        logger.removeHandler(handler)
        handler.close()


CANARIES = {
    "system": "CANARY-SYSTEM-7f3a",
    "user": "CANARY-USER-91bc",
    "tool": "CANARY-TOOLDEF-5d2e",
    "argument": "CANARY-TOOLARG-c0de",
    "output": "CANARY-OUTPUT-44aa",
    "instructions": "CANARY-INSTR-1b1b",
    "embedding": "CANARY-EMBED-e3e3",
    "error": "CANARY-ERROR-0e0e",
}
TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": CANARIES["tool"],
            "parameters": {
                "type": "object",
                "properties": {"topic": {"type": "string", "enum": [CANARIES["argument"]]}},
                "required": ["topic"],
            },
        },
    }
]
MESSAGES: Any = [
    {"role": "system", "content": CANARIES["system"]},
    {"role": "user", "content": f"{CANARIES['user']} please"},
]


def _every_kind_of_call(client: openai.OpenAI, server: FakeOpenAI) -> list[str]:
    """One call of each record kind, canaries wherever content can hide; returns what the caller saw."""
    output = {"x-fake-content": CANARIES["output"]}
    seen: list[str] = []
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, extra_headers=output)
    seen.append(reply.choices[0].message.content or "")
    tool_reply = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, tools=TOOLS, tool_choice="required"
    )
    seen.append((tool_reply.choices[0].message.tool_calls or [])[0].model_dump_json())
    for chunk in client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_headers=output
    ):
        seen.extend(c.delta.content or "" for c in chunk.choices)
    for chunk in client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, tools=TOOLS, tool_choice="required", stream=True
    ):
        seen.extend(str(c.delta.tool_calls) for c in chunk.choices)
    response = client.responses.create(
        model="gpt-4o-mini",
        instructions=CANARIES["instructions"],
        input=CANARIES["user"],
        extra_headers=output,
    )
    seen.append(response.output_text)
    for event in client.responses.create(
        model="gpt-4o-mini",
        instructions=CANARIES["instructions"],
        input=[{"role": "user", "content": CANARIES["user"]}],
        stream=True,
        extra_headers=output,
    ):
        seen.append(getattr(event, "delta", "") or "")
    client.embeddings.create(model="text-embedding-3-small", input=[CANARIES["embedding"]])
    server.fail_next(400, body=error_body(400, f"{CANARIES['error']}: bad request for {CANARIES['user']}"))
    try:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    except openai.BadRequestError as exc:
        seen.append(str(exc))
    return seen


@pytest.mark.parametrize("capture_content", [False, True])
def test_content_stays_out_of_records_and_log_lines_unless_asked(
    fake_openai: FakeOpenAI,
    ledger_file: tuple[str, Path],
    internal_log: pytest.LogCaptureFixture,
    capture_content: bool,
) -> None:
    """With capture off no record holds message, tool, output or error text; no log line holds the key."""
    logger_name, path = ledger_file
    monitor = llm_ledger.LLMCallMonitor(logger=logger_name, capture_content=capture_content)
    with openai.OpenAI(
        api_key=FAKE_KEY,
        organization=ORG,
        project=PROJECT,
        base_url=fake_openai.base_url,
        default_headers={"Cookie": COOKIE},
        max_retries=0,
    ) as client:
        monitor.instrument(client)
        with capture(monitor) as records, monitor.lens("canaries", source_id="doc-1"):
            seen = "".join(_every_kind_of_call(client, fake_openai))
    logging.getLogger(logger_name).handlers[0].flush()
    # the caller really got every canary back, so the records had every chance to hold them
    assert all(CANARIES[k] in seen for k in ("output", "argument", "error"))
    kinds = {(r["operation"], r["request"]["stream"], r["status"]) for r in records.calls}
    assert kinds == {
        ("chat", False, "ok"),
        ("chat", True, "ok"),
        ("responses", False, "ok"),
        ("responses", True, "ok"),
        ("embeddings", False, "ok"),
        ("chat", False, "error"),
    }
    lines = read_lines(path)
    assert len(lines) == len(records.records) == 9  # 8 calls and the lens summary
    written = path.read_text() + "\n".join(r.getMessage() for r in internal_log.records)
    assert _leaks(written) == []
    found = [name for name, canary in CANARIES.items() if canary in written]
    if capture_content:
        # the control: the same check does see content once it is asked for
        assert {"system", "user", "tool", "output", "instructions", "embedding", "error"} <= set(found)
    else:
        assert found == []
        assert all("content" not in line for line in lines)
        record_figures("secrets: content capture off", record_kinds=len(kinds) + 1, lines=len(lines), leaks=0)


def test_lens_summary_and_context_carry_only_what_the_caller_put_there(fake_openai: FakeOpenAI) -> None:
    """A lens summary holds counts, costs and the caller's own context keys, nothing from the calls."""
    monitor = llm_ledger.LLMCallMonitor(logger=None)
    with openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0) as client:
        monitor.instrument(client)
        with capture(monitor) as records, monitor.lens("summary-only", source_id="doc-9", service="svc"):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, tools=TOOLS, tool_choice="required"
            )
    (lens,) = records.lenses
    assert set(lens["context"]) == {"lens_key", "source_id", "service", "lens_run_id"}
    assert not any(canary in json.dumps(lens) for canary in CANARIES.values())
    assert FAKE_KEY not in json.dumps(records.records)
