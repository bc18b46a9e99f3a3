"""The application's two LLM call sites, monitored through llm-ledger.

The monitoring is two lines of difference from the unmonitored code: ``RunnerService.run_lens``
opens ``llm_ledger.lens(...)`` around the work, and ``GeneratorService._call_llm`` runs inside
``llm_ledger.track_llm_call(...)``. The client they share was passed through
``llm_ledger.instrument()`` once, where it was built (see ``app.py``). Everything else here is the
business logic as it was: build messages, call ``chat.completions.create``, store the result, and
now also store the lens summary on ``source_logs.extra_data`` and the usage on ``artifacts.usage``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import openai
from openai.types.chat import ChatCompletionContentPartParam, ChatCompletionMessageParam

import llm_ledger

from .lenses import LENSES, Lens, Prompt
from .sources import Source
from .store import Artifact, Store

__all__ = ["GeneratorService", "RunnerService", "artifact_usage", "messages_for"]

logger = logging.getLogger("examples.lens_app")


def messages_for(
    prompt: Prompt, images: Sequence[str] = (), **fields: str
) -> list[ChatCompletionMessageParam]:
    """The system and user messages of ``prompt``; images become ``image_url`` parts of the user message."""
    text = prompt.user.format(**fields)
    if not images:
        return [{"role": "system", "content": prompt.system}, {"role": "user", "content": text}]
    parts: list[ChatCompletionContentPartParam] = [{"type": "text", "text": text}]
    parts.extend({"type": "image_url", "image_url": {"url": url, "detail": "low"}} for url in images)
    return [{"role": "system", "content": prompt.system}, {"role": "user", "content": parts}]


async def _complete(
    client: openai.AsyncOpenAI, prompt: Prompt, images: Sequence[str] = (), **fields: str
) -> str:
    started = time.perf_counter()
    response = await client.chat.completions.create(
        model=prompt.model,
        messages=messages_for(prompt, images, **fields),
        temperature=prompt.temperature,
        max_tokens=openai.omit if prompt.max_tokens is None else prompt.max_tokens,
    )
    content = response.choices[0].message.content or ""
    logger.info(
        "model=%s duration_ms=%.0f response=%r",
        response.model,
        (time.perf_counter() - started) * 1000,
        content[:200],
    )
    return content


def artifact_usage(summary: Mapping[str, Any]) -> dict[str, Any]:
    """What ``artifacts.usage`` keeps of a lens summary: tokens, cost, calls, models and duration."""
    return {
        "duration_ms": summary["duration_ms"],
        "api_calls": summary["total_api_calls"],
        "prompt_tokens": summary["prompt_tokens"],
        "completion_tokens": summary["completion_tokens"],
        "total_tokens": summary["total_tokens"],
        "cached_tokens": summary["cached_tokens"],
        "reasoning_tokens": summary["reasoning_tokens"],
        "total_cost_usd": summary["total_cost_usd"],
        "cost_complete": summary["cost_complete"],
        "models": summary["models_used"],
    }


class GeneratorService:
    """Drafts text and improves it with a second call (the application's other LLM call site)."""

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self.client = client

    async def _call_llm(self, prompt: Prompt, *, source_id: str, **fields: str) -> str:
        with llm_ledger.track_llm_call(service="GeneratorService", source_id=source_id):  # monitoring
            return await _complete(self.client, prompt, **fields)

    async def draft_and_refine(self, lens: Lens, source: Source) -> str:
        """Draft with ``lens.prompt``, then improve the draft with ``lens.refine_prompt``."""
        draft = await self._call_llm(lens.prompt, source_id=source.id, title=source.title, text=source.text)
        if lens.refine_prompt is None:
            return draft
        return await self._call_llm(
            lens.refine_prompt, source_id=source.id, draft=draft.strip(), title=source.title, text=source.text
        )


class RunnerService:
    """Runs lenses over sources and stores each result and each run's log."""

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        store: Store,
        *,
        generator: GeneratorService | None = None,
        lenses: Mapping[str, Lens] = LENSES,
    ) -> None:
        self.client = client
        self.store = store
        self.generator = generator or GeneratorService(client)
        self.lenses = lenses

    def applies(self, lens_key: str, source: Source) -> bool:
        """Whether the lens can run on the source (image lenses need a source with images)."""
        return not self.lenses[lens_key].with_images or bool(source.images)

    async def run_lens(self, source: Source, lens_key: str, *, user_id: str | None = None) -> Artifact:
        """Run one lens over one source for a user; store the artifact and a source log carrying the
        lens summary. ``user_id`` goes on every call record of the run (``--by user_id`` in reports).

        A failed run is logged with level ``ERROR`` (its summary included) and the exception re-raised.
        """
        lens = self.lenses.get(lens_key)
        if lens is None:
            raise ValueError(f"unknown lens {lens_key!r}; choose one of {sorted(self.lenses)}")
        if not self.applies(lens_key, source):
            raise ValueError(f"lens {lens_key!r} needs a source with images; {source.slug!r} has none")
        who = {} if user_id is None else {"user_id": user_id}
        run = llm_ledger.lens(lens_key, source_id=source.id, service="RunnerService", **who)  # monitoring
        try:
            with run:
                content = await self._execute(lens, source)
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            self.store.add_source_log(source.id, lens_key, "ERROR", message, self._extra_data(run), user_id)
            raise
        extra = self._extra_data(run)
        artifact = self.store.add_artifact(source.id, lens_key, content, artifact_usage(extra))
        self.store.add_source_log(source.id, lens_key, "INFO", f"lens {lens_key} completed", extra, user_id)
        return artifact

    @staticmethod
    def _extra_data(run: llm_ledger.LensRun) -> dict[str, Any]:
        # the lens summary, plus the run id that joins it to the per-call lines in llm_calls.jsonl
        return {**(run.summary or {}), "lens_run_id": run.run_id}

    async def _execute(self, lens: Lens, source: Source) -> str:
        if lens.refine_prompt is not None:
            return await self.generator.draft_and_refine(lens, source)
        if lens.section_prompt is not None:
            sections = source.sections or (("Article", source.text),)
            notes = await asyncio.gather(
                *(
                    _complete(
                        self.client, lens.section_prompt, title=source.title, heading=heading, section=body
                    )
                    for heading, body in sections
                )
            )
            joined = "\n\n".join(
                f"## {heading}\n{note.strip()}" for (heading, _), note in zip(sections, notes, strict=True)
            )
            return await _complete(self.client, lens.prompt, title=source.title, notes=joined)
        images = source.images if lens.with_images else ()
        return await _complete(self.client, lens.prompt, images, title=source.title, text=source.text)
