"""Wiring: the monitored client for each mode, and running lenses over sources.

Three modes share all of the application code; only the client and the cassettes differ:

* ``replay`` (default): offline; every HTTP call is answered from ``cassettes/examples/lens_app``;
* ``live``: calls the OpenAI API (``OPENAI_API_KEY``; ``OPENAI_BASE_URL`` or ``--base-url``);
* ``record``: calls the API (or any OpenAI-compatible server at ``--base-url``) and rewrites the
  cassettes of the lenses it ran.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import openai

import llm_ledger

from .cassettes import LensCassette, activate
from .services import RunnerService
from .sources import Source
from .store import Artifact

__all__ = ["Mode", "RunResult", "make_client", "open_cassettes", "run_lenses"]

Mode = Literal["replay", "live", "record"]
REPLAY_API_KEY = "replay-sends-no-key"  # the SDK wants a key; replayed requests never leave the process
LOCAL_SERVER_API_KEY = "local-server-needs-no-key"


@dataclass(frozen=True, slots=True)
class RunResult:
    """One lens run over one source: its artifact, or the error it failed with."""

    lens_key: str
    source: Source
    artifact: Artifact | None
    error: Exception | None


def open_cassettes(mode: Mode, lens_keys: Sequence[str], directory: Path) -> dict[str, LensCassette]:
    """The cassette of each lens: read for replay, empty for record, none for live."""
    if mode == "live":
        return {}
    cassette_mode = "none" if mode == "replay" else "rewrite"
    return {key: LensCassette(directory, key, cassette_mode) for key in lens_keys}


def make_client(
    mode: Mode,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> openai.AsyncOpenAI:
    """The application's AsyncOpenAI client for ``mode``, instrumented by llm-ledger.

    For replay, ``base_url`` is the one the cassettes were recorded from (:func:`recorded_base_url`).
    """
    client: openai.AsyncOpenAI
    if mode == "replay":
        client = openai.AsyncOpenAI(api_key=REPLAY_API_KEY, base_url=base_url, max_retries=0)
    elif mode == "live":
        client = openai.AsyncOpenAI(api_key=api_key, base_url=base_url, default_headers=headers)
    else:
        key = api_key or (LOCAL_SERVER_API_KEY if base_url else None)
        client = openai.AsyncOpenAI(api_key=key, base_url=base_url, default_headers=headers)
    return llm_ledger.instrument(client)


async def run_lenses(
    runner: RunnerService,
    lens_keys: Sequence[str],
    sources: Sequence[Source],
    cassettes: Mapping[str, LensCassette],
    *,
    user_id: str | None = None,
) -> list[RunResult]:
    """Run each lens over every source it applies to (for ``user_id``), the sources of one lens concurrently.

    Lenses run one after another because each has its own cassette. A recording is saved only
    when every run of its lens succeeded, so a failed recording never replaces a good cassette.
    """
    results: list[RunResult] = []
    for key in lens_keys:
        targets = [source for source in sources if runner.applies(key, source)]
        cassette = cassettes.get(key)
        scope: AbstractContextManager[Any] = activate(cassette) if cassette is not None else nullcontext()
        with scope:
            outcomes = await asyncio.gather(
                *(runner.run_lens(source, key, user_id=user_id) for source in targets), return_exceptions=True
            )
        for source, outcome in zip(targets, outcomes, strict=True):
            if isinstance(outcome, Artifact):
                results.append(RunResult(key, source, outcome, None))
            elif isinstance(outcome, Exception):
                results.append(RunResult(key, source, None, outcome))
            else:
                raise outcome  # KeyboardInterrupt, CancelledError: stop everything
        failed = any(r.error is not None for r in results if r.lens_key == key)
        if cassette is not None and cassette.mode != "none" and not failed:
            cassette.save(test_passed=True)
    return results
