"""Replay gives each call the answer it got live: concurrent identical calls, and errors the test saw."""

from __future__ import annotations

# imported here so in-process inner sessions reuse them instead of importing them again each time
import openai  # noqa: F401
import pytest
import vcr  # noqa: F401

from llm_ledger.testing import FakeOpenAI
from tests.plugin_helpers import run, server_fixture, with_key_fixture, write_project

pytest_plugins = ["pytester"]
_FIXTURES = (server_fixture, with_key_fixture)  # used by name

GATHER_TESTS = """
import asyncio
import os

import openai
import pytest

import llm_ledger as ledger


@pytest.mark.llm
@pytest.mark.asyncio
async def test_samples():
    client = ledger.instrument(openai.AsyncOpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=0))

    async def sample(answer, delay_ms):
        # one request twice (a sampled answer differs each time); the fake's answer and delay are
        # steered by headers, which are not matched
        steer = {"x-fake-content": answer, "x-fake-fault": "slow", "x-fake-delay-ms": str(delay_ms)}
        reply = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Pick one"}], extra_headers=steer
        )
        return reply.choices[0].message.content

    async with client:
        # the client's first request reads the platform in a thread: the two would race to be sent first
        await sample("warm-up", 0)
        assert await asyncio.gather(sample("first", 300), sample("second", 0)) == ["first", "second"]
"""


@pytest.mark.usefixtures("with_key")
def test_concurrent_identical_calls_replay_the_answers_they_got_live(
    pytester: pytest.Pytester, server: FakeOpenAI
) -> None:
    """Two identical requests sent together, the first answered last: each gets its own answer on
    replay too (interactions are kept in the order the requests were sent, as they are replayed),
    not the other's because it finished first while recording."""
    write_project(pytester, GATHER_TESTS)
    recording = run(pytester, "--llm-record-mode=once")
    recording.assert_outcomes(passed=1)
    server.stop()

    run(pytester).assert_outcomes(passed=1)


GAVE_UP_TESTS = """
import os
import time

import openai
import pytest


@pytest.mark.llm
def test_falls_back():
    started = time.monotonic()
    with openai.OpenAI(base_url=os.environ["LEDGER_TEST_BASE_URL"], max_retries=1) as client:
        with pytest.raises(openai.InternalServerError):  # the code under test would fall back here
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert time.monotonic() - started < 0.3  # the retry waited what the server asked (1 ms), no more
"""


@pytest.mark.usefixtures("with_key")
def test_a_server_error_the_sdk_gave_up_on_replays_with_its_retries(
    pytester: pytest.Pytester, server: FakeOpenAI
) -> None:
    """A 5xx answered to every attempt reached the code under test live: it is recorded, each attempt,
    and replayed (waiting the retry-after the server sent), where it used to be left out, so the
    replay missed as a test "never recorded" that re-recording never fixed."""
    write_project(pytester, GAVE_UP_TESTS)
    server.fail_next(500, 2)
    run(pytester, "--llm-record-mode=once").assert_outcomes(passed=1)
    server.stop()

    run(pytester).assert_outcomes(passed=1)
