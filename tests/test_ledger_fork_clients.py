"""docs/RELIABILITY.md's advice for forking servers (gunicorn ``--preload``): ``configure()`` before
the fork, clients after it."""

from __future__ import annotations

import json
import os
import traceback
from pathlib import Path
from typing import Any

import openai
import pytest

import llm_ledger
from llm_ledger.testing import FakeOpenAI
from tests.conftest import FAKE_KEY

pytestmark = pytest.mark.sdk_independent

CALLS = 40  # each side's; a client shared across the fork mixes up answers within a few dozen


def _ask(client: openai.OpenAI, side: str) -> list[str]:
    """``CALLS`` calls, each asking its own question: the questions whose answer was someone else's."""
    wrong = []
    for i in range(CALLS):
        question = f"{side} {i}"
        with llm_ledger.track_llm_call(side=side, i=i):
            answer = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": question}]
            )
        if answer.choices[0].message.content != f"Summary: {question}":  # the fake server's echo
            wrong.append(question)
    return wrong


def _client(fake_openai: FakeOpenAI) -> openai.OpenAI:
    raw = openai.OpenAI(api_key=FAKE_KEY, base_url=fake_openai.base_url, max_retries=0)
    return llm_ledger.instrument(raw)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")  # 3.12+
def test_clients_made_after_the_fork_get_their_own_answers_and_every_call_is_written(
    fake_openai: FakeOpenAI, fresh_config: None, tmp_path: Path
) -> None:
    """``configure()`` in the parent, then a fork (a ``--preload`` master and its worker), each side
    making its client after the fork and calling at the same time as the other: every call gets the
    answer to its own question, and each process writes each of its calls to the shared file once."""
    llm_ledger.configure(log_dir=tmp_path)
    warm = _client(fake_openai)  # the SDK's resources imported before the fork, as a preload does
    warm.close()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the forked worker
        status = 3
        try:
            with _client(fake_openai) as client:
                status = 1 if _ask(client, "child") else 0
            llm_ledger.flush()  # os._exit() runs no exit hook
        except BaseException:  # said on stderr, which the test shows: os._exit() would swallow it
            traceback.print_exc()
        finally:
            os._exit(status)
    with _client(fake_openai) as client:
        wrong = _ask(client, "parent")
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0, "the child got answers not its own"
    assert wrong == []
    llm_ledger.flush()
    lines = [json.loads(line) for line in (tmp_path / "llm_calls.jsonl").read_text().splitlines()]
    written: list[Any] = sorted((line["context"]["side"], line["context"]["i"]) for line in lines)
    assert written == sorted((side, i) for side in ("child", "parent") for i in range(CALLS))
    assert {line["status"] for line in lines} == {"ok"}
