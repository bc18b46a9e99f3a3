"""Realistic chat requests and the exact bytes OpenAI answers them with, for an in-process transport.

Sizes follow a typical summarisation call: a ~1.2k-character system prompt, a ~3.5k-character user
document, an 800-character answer; a streamed answer arrives as N content chunks, a finish chunk and
(when asked) a usage chunk, each in OpenAI's wire format.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2

MODEL = "gpt-4o-mini"
SERVED_MODEL = "gpt-4o-mini-2024-07-18"
CREATED = 1_732_000_000
_TEXT = (
    "the ledger records every call with its tokens latency and cost so that a team can see which feature "
    "spends what and where the time goes when a model answers slowly or fails outright"
)
_WORDS = _TEXT.split()


def words(n: int, offset: int = 0) -> str:
    return " ".join(_WORDS[(offset + i) % len(_WORDS)] for i in range(n))


SYSTEM_PROMPT = "You are a careful analyst. " + words(200)  # ~1.2k characters
USER_DOCUMENT = "Summarise the following report in five bullet points.\n\n" + words(560, 7)  # ~3.5k
ANSWER = words(130, 3)  # ~800 characters


def chat_kwargs(i: int = 0, **extra: Any) -> dict[str, Any]:
    """Keyword arguments of one ``chat.completions.create`` call; ``i`` varies the user text."""
    return {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"{USER_DOCUMENT}\n(report {i})"},
        ],
        "temperature": 0.2,
        "max_tokens": 400,
        **extra,
    }


USAGE = {
    "prompt_tokens": 1203,
    "completion_tokens": 187,
    "total_tokens": 1390,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}

HEADERS = {
    "content-type": "application/json",
    "x-request-id": "req_5f1c2b9a7d8e4f60a1b2c3d4e5f60718",
    "openai-processing-ms": "812",
    "openai-version": "2020-10-01",
    "openai-organization": "org-bench",
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-limit-tokens": "10000000",
    "x-ratelimit-remaining-tokens": "9998610",
}
STREAM_HEADERS = {**HEADERS, "content-type": "text/event-stream; charset=utf-8"}


def completion(content: str = ANSWER) -> dict[str, Any]:
    return {
        "id": "chatcmpl-AxBench0000000000000000000001",
        "object": "chat.completion",
        "created": CREATED,
        "model": SERVED_MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
        "service_tier": "default",
        "system_fingerprint": "fp_0ba0d124f1",
    }


COMPLETION_BYTES = json.dumps(completion()).encode()


def _chunk(delta: dict[str, Any], finish: str | None, with_usage_field: bool) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": "chatcmpl-AxBench0000000000000000000002",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": SERVED_MODEL,
        "service_tier": "default",
        "system_fingerprint": "fp_0ba0d124f1",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if with_usage_field:
        chunk["usage"] = None
    return chunk


def stream_bytes(chunks: int, include_usage: bool) -> bytes:
    """A streamed answer: a role chunk, ``chunks`` content chunks, a finish chunk, [usage], [DONE]."""
    events = [_chunk({"role": "assistant", "content": "", "refusal": None}, None, include_usage)]
    events += [_chunk({"content": f"{_WORDS[i % len(_WORDS)]} "}, None, include_usage) for i in range(chunks)]
    events.append(_chunk({}, "stop", include_usage))
    if include_usage:
        usage_chunk = _chunk({}, None, False)
        usage_chunk["choices"] = []
        usage_chunk["usage"] = USAGE
        events.append(usage_chunk)
    lines = [f"data: {json.dumps(event, separators=(',', ':'))}\n\n" for event in events]
    lines.append("data: [DONE]\n\n")
    return "".join(lines).encode()


class Answers:
    """Precomputed response bodies, so the transport costs the same for every variant."""

    def __init__(self, stream_chunks: int) -> None:
        self.stream_chunks = stream_chunks
        self.stream_with_usage = stream_bytes(stream_chunks, True)
        self.stream_without_usage = stream_bytes(stream_chunks, False)

    def body(self, request_body: bytes) -> tuple[bytes, dict[str, str]]:
        """The response body and headers for one request body (a cheap byte search, no JSON parse)."""
        if b'"stream":true' in request_body or b'"stream": true' in request_body:
            usage = b'"include_usage":true' in request_body or b'"include_usage": true' in request_body
            return (self.stream_with_usage if usage else self.stream_without_usage), STREAM_HEADERS
        return COMPLETION_BYTES, HEADERS


def mock_transport(stream_chunks: int = 60) -> httpx2.MockTransport:
    """An in-process transport answering every chat request like OpenAI would."""
    answers = Answers(stream_chunks)

    def handler(request: httpx2.Request) -> httpx2.Response:
        body, headers = answers.body(request.content)
        return httpx2.Response(200, headers=headers, content=body)

    return httpx2.MockTransport(handler)
