"""A small OpenAI-compatible HTTP server for tests and for recording without a key (stdlib only;
br and zstd bodies, when asked for, need brotli and backports.zstd).

Public as :class:`llm_ledger.testing.FakeOpenAI` and as ``llm-ledger fake-server``. Its endpoints, token
accounting, response headers and the ``x-fake-*`` request headers that steer it (faults included) are
described in docs/FAKE_SERVER.md; keep that page true to this module.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import importlib
import itertools
import json
import math
import os
import re
import socket
import socketserver
import struct
import sys
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from ._cli import add_listen_options, listening

__all__ = ["FakeOpenAI", "RecordedAnswer", "RecordedRequest", "error_body"]

JSONDict = dict[str, Any]

DEFAULT_CHUNKS = 5
DEFAULT_DELAY_MS = 50
DEFAULT_EMBEDDING_DIMENSIONS = 8
CREATED = 1_700_000_000
SYSTEM_FINGERPRINT = "fp_fake0001"
STREAM_ERROR = "The server had an error while processing your request."
SNAPSHOT_SUFFIX = "-2024-07-18"
_LOREM_TEXT = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et "
    "dolore magna aliqua ut enim ad minim veniam quis nostrud exercitation ullamco laboris nisi"
)
LOREM = _LOREM_TEXT.split()
RESPONSE_HEADERS = {
    "openai-organization": "org-fake-secret",
    "openai-project": "proj_fake",
    "openai-version": "2020-10-01",
    "set-cookie": "__cf_bm=fake-secret-cookie; path=/",
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-remaining-requests": "9999",
}
_ERROR_KINDS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Bad request (fake)."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided (fake)."),
    403: ("permission_error", "unsupported_country_region_territory", "Forbidden (fake)."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist (fake)."),
    409: ("invalid_request_error", None, "Conflict (fake)."),
    422: ("invalid_request_error", None, "Unprocessable entity (fake)."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached (fake)."),
}


def error_body(status: int, message: str | None = None) -> JSONDict:
    """The OpenAI error JSON for ``status``."""
    kind, code, default = _ERROR_KINDS.get(
        status, ("server_error", None, "The server had an error while processing your request (fake).")
    )
    return {"error": {"message": message or default, "type": kind, "param": None, "code": code}}


@dataclass(frozen=True)
class RecordedRequest:
    """One request as received: lower-case header names, the JSON body (None if absent or invalid)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    raw_body: bytes = b""
    retry_count: int | None = None  # from the SDK's x-stainless-retry-count header
    query: str = ""  # the raw query string

    @property
    def json(self) -> Any:
        return self.body


@dataclass(frozen=True)
class RecordedAnswer:
    """One answer as sent (``FakeOpenAI.answers``, in the order answers were built): the status and
    the JSON body, or for a stream the list of its events' JSON (``[DONE]`` left out)."""

    path: str
    status: int
    body: Any


_Failure = tuple[JSONDict, int, dict[str, str]]  # a fail_next() answer: its body, status, headers
MAX_BODY_BYTES = (
    64 * 2**20
)  # larger bodies answer 413 unread (a stray Content-Length must not eat the memory)
FAULTS = ("cut-stream", "reset", "not-json", "no-usage", "slow", "stream-error", "response-failed")
USAGE_STYLES = (
    "openai",
    "deepseek",
    "xai",
    "gemini",
    "perplexity",
    "openrouter",
    "openrouter-byok",
    "every-chunk",
)
# the x-fake-* request headers, by the values they take (docs/FAKE_SERVER.md); encoding checked where used
_COUNT_HEADERS = (
    "chunks",
    "completion-words",
    "cached-tokens",
    "cache-write-tokens",
    "prompt-audio-tokens",
    "completion-audio-tokens",
    "reasoning-tokens",
    "tool-calls",
    "delay-ms",
)
_CHOICE_HEADERS = {
    "fault": FAULTS,
    "usage-style": USAGE_STYLES,
    "transfer": ("close",),
    "finish": ("content_filter",),
}
_TEXT_HEADERS = ("content", "refusal", "served-model", "cost", "status", "encoding")


class _BadRequest(Exception):
    """A request the fake refuses, answered with ``status`` and the message (an OpenAI error body)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _StreamReply:
    events: list[bytes]


_Event = tuple[str, JSONDict]  # a Responses stream event: its type, its fields


# --------------------------------------------------------------------------------------------------------
# Pure helpers: text, tokens, schema samples


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:  # an empty or malformed body
        return None


def _int_header(headers: dict[str, str], name: str, default: int) -> int:
    return int(headers[name]) if name in headers else default  # checked by _check_headers()


def _check_headers(headers: dict[str, str]) -> None:
    """Refuse a misspelt ``x-fake-*`` header name or value: ignored, it would leave a test asserting on
    the defaults without knowing it."""
    for name, value in headers.items():
        if not name.startswith("x-fake-"):
            continue
        key = name.removeprefix("x-fake-")
        if key in _COUNT_HEADERS:
            if not value.strip().isdigit():
                raise _BadRequest(f"{name}: {value!r} is not a whole number (0 or more).")
        elif key in _CHOICE_HEADERS:
            choices = _CHOICE_HEADERS[key]
            wrong = [
                v
                for v in (value.split(",") if key == "fault" else [value])
                if v.strip() and v.strip() not in choices
            ]
            if wrong:
                raise _BadRequest(f"{name}: {wrong[0].strip()!r} is not one of {', '.join(choices)}.")
        elif key not in _TEXT_HEADERS:
            known = sorted(f"x-fake-{k}" for k in (*_COUNT_HEADERS, *_CHOICE_HEADERS, *_TEXT_HEADERS))
            raise _BadRequest(f"{name} is not a header the fake server knows; it knows {', '.join(known)}.")
    status = headers.get("x-fake-status", "400")
    if not (status.strip().isdigit() and 400 <= int(status) <= 599):
        raise _BadRequest(f"x-fake-status: {status!r} is not an error status (400 to 599).")
    cost = headers.get("x-fake-cost", "0")
    try:
        float(cost)
    except ValueError:
        raise _BadRequest(f"x-fake-cost: {cost!r} is not a number of US dollars (e.g. 0.0012).") from None


def _parts(content: Any) -> tuple[list[str], int]:
    """The text parts of a message's content, and how many image parts it has."""
    if isinstance(content, str):
        return [content], 0
    texts: list[str] = []
    images = 0
    for part in content if isinstance(content, list) else ():
        if isinstance(part, dict) and part.get("type") in ("text", "input_text", "output_text"):
            texts.append(str(part.get("text", "")))
        elif isinstance(part, dict) and part.get("type") in ("image_url", "input_image"):
            images += 1
    return texts, images


def _tokens(text: str) -> int:
    """The fake's token count of ``text``: a token per four characters, rounded up."""
    return math.ceil(len(text) / 4)


def _truncate(text: str, limit: Any) -> tuple[str, str]:
    """``text`` cut to a ``max_tokens`` ``limit`` (when it is a number), and its finish reason."""
    if isinstance(limit, int) and _tokens(text) > limit:
        return text[: limit * 4], "length"
    return text, "stop"


def _prompt_tokens(messages: list[Any], tools: Any) -> int:
    texts: list[str] = []
    images = 0
    for message in messages:
        parts, image_parts = _parts(message.get("content") if isinstance(message, dict) else message)
        texts += parts
        images += image_parts
    tokens = _tokens("".join(texts)) + 4 * len(messages) + 85 * images
    if tools:
        tokens += _tokens(json.dumps(tools))
    return tokens


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return " ".join(_parts(message.get("content"))[0])
    return ""


def _reply_text(user_text: str, headers: dict[str, str]) -> str:
    if "x-fake-content" in headers:
        return headers["x-fake-content"]
    words = _int_header(headers, "x-fake-completion-words", -1)
    if words >= 0:
        text = " ".join(itertools.islice(itertools.cycle(LOREM), words))
        return text[:1].upper() + text[1:] + ("." if text else "")
    head = user_text.split()[:8]
    return "Summary: " + " ".join(head) if head else "Hello! How can I help you today?"


def _sample(schema: Any, root: JSONDict, key: str, depth: int = 0) -> Any:
    """A value valid for a simple JSON schema (objects, arrays, scalars, enums, $ref, anyOf)."""
    if not isinstance(schema, dict) or depth > 8:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return _sample(target, root, key, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        options = schema.get(combinator)
        if isinstance(options, list) and options:
            non_null = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            return _sample((non_null or options)[0], root, key, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        props = schema.get("properties") or {}
        return {name: _sample(sub, root, name, depth + 1) for name, sub in props.items()}
    if kind == "array":
        count = max(int(schema.get("minItems", 2)), 0)
        count = min(count, int(schema.get("maxItems", count)))
        return [_sample(schema.get("items", {}), root, key, depth + 1) for _ in range(count)]
    if kind == "integer":
        return int(min(max(42, schema.get("minimum", 42)), schema.get("maximum", 42)))
    if kind == "number":
        return float(min(max(0.5, schema.get("minimum", 0.5)), schema.get("maximum", 0.5)))
    if kind == "boolean":
        return True
    if kind == "string":
        fmt = schema.get("format")
        if fmt == "date-time":
            return "2024-01-01T00:00:00Z"
        if fmt == "date":
            return "2024-01-01"
        return f"fake {key}"
    return None


def _split(text: str, headers: dict[str, str]) -> list[str]:
    """``text`` cut into at most ``x-fake-chunks`` non-empty pieces (one empty piece for empty text)."""
    parts = max(1, min(_int_header(headers, "x-fake-chunks", DEFAULT_CHUNKS), len(text)))
    size, extra = divmod(len(text), parts)
    pieces, pos = [], 0
    for i in range(parts):
        end = pos + size + (1 if i < extra else 0)
        pieces.append(text[pos:end])
        pos = end
    return pieces


def _served_model(model: str, headers: dict[str, str]) -> str:
    served = headers.get("x-fake-served-model")
    if not served:
        return model
    return model + SNAPSHOT_SUFFIX if served == "dated" else served


def _served_tier(body: JSONDict) -> str:
    """The ``service_tier`` of the answer: the one asked for (``flex``, ``priority``), else ``default``."""
    tier = body.get("service_tier")
    return tier if tier in ("flex", "priority") else "default"


def _add_cost(usage: JSONDict, headers: dict[str, str]) -> None:
    """The usage's cost (``x-fake-cost``) and shape (``x-fake-usage-style``) as a provider writes them."""
    style = headers.get("x-fake-usage-style")
    if "x-fake-cost" in headers:
        cost = float(headers["x-fake-cost"])
        if style == "xai":  # whole ticks of 10**-10 USD
            usage["cost_in_usd_ticks"] = round(cost * 10**10)
        elif style == "perplexity":  # an object: the token costs and the per-request fee
            usage["cost"] = {"input_tokens_cost": 0.0, "output_tokens_cost": 0.0, "request_cost": cost}
            usage["cost"]["total_cost"] = cost
        elif style in ("openrouter", "openrouter-byok"):
            # BYOK: the provider bills your own key (upstream); OpenRouter charges a 5% fee
            byok = style == "openrouter-byok"
            usage.update(cost=round(cost * 0.05, 12) if byok else cost, is_byok=byok)
            usage["cost_details"] = {"upstream_inference_cost": cost}
        else:
            usage["cost"] = cost
    if style == "deepseek" and "prompt_tokens_details" in usage:
        # DeepSeek reports its cache hits and misses beside prompt_tokens, with no details object
        cached = usage.pop("prompt_tokens_details")["cached_tokens"]
        usage["prompt_cache_hit_tokens"] = cached
        usage["prompt_cache_miss_tokens"] = usage["prompt_tokens"] - cached
    elif style in ("xai", "gemini") and "completion_tokens" in usage:
        # reasoning left out of completion_tokens, still in total_tokens; Gemini leaves out the details too
        usage["completion_tokens"] -= usage["completion_tokens_details"]["reasoning_tokens"]
        if style == "gemini":
            del usage["completion_tokens_details"]


def _encoder(encoding: str) -> tuple[Callable[[bytes], bytes], Callable[[], bytes]]:
    """(compress a piece of the body so the client can decode it at once, the body's last bytes);
    ``""``: the body as it is."""
    if not encoding:
        return lambda data: data, lambda: b""
    if encoding == "gzip":
        gz = zlib.compressobj(wbits=zlib.MAX_WBITS | 16)
        return lambda data: gz.compress(data) + gz.flush(zlib.Z_SYNC_FLUSH), gz.flush
    if encoding == "br":
        br = importlib.import_module("brotli").Compressor()
        return lambda data: br.process(data) + br.flush(), br.finish
    # what httpx2 decodes zstd with (httpx uses zstandard: the bytes are the same format)
    zstd = importlib.import_module("compression.zstd" if sys.version_info >= (3, 14) else "backports.zstd")
    zs = zstd.ZstdCompressor()
    return lambda data: zs.compress(data, zs.FLUSH_BLOCK), lambda: zs.flush(zs.FLUSH_FRAME)


_ENCODINGS = ("gzip", "br", "zstd")


def _sse(payload: JSONDict, event: str | None = None) -> bytes:
    data = b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
    return b"event: " + event.encode() + b"\n" + data if event else data


# --------------------------------------------------------------------------------------------------------
# Endpoints


def _counts(messages: list[Any], tools: Any, headers: dict[str, str]) -> tuple[int, int, int, int]:
    """(prompt tokens, cached tokens, cache write tokens, reasoning tokens) of a request."""
    cached = _int_header(headers, "x-fake-cached-tokens", 0)
    written = _int_header(headers, "x-fake-cache-write-tokens", 0)
    reasoning = _int_header(headers, "x-fake-reasoning-tokens", 0)
    return max(_prompt_tokens(messages, tools or None), cached + written), cached, written, reasoning


def _content(kind: Any, schema: Any, messages: list[Any], headers: dict[str, str]) -> str:
    """The answer's text for the response format ``kind`` (``json_schema`` with ``schema``,
    ``json_object``, else plain text); ``x-fake-content`` wins over any format."""
    if "x-fake-content" not in headers and kind == "json_schema":
        return json.dumps(_sample(schema, schema, "value"))
    text = _reply_text(_last_user_text(messages), headers)
    if "x-fake-content" not in headers and kind == "json_object":
        return json.dumps({"summary": text})
    return text


def _tool_calls(body: JSONDict, headers: dict[str, str], num: int) -> list[JSONDict]:
    """The tool calls to answer (chat's shape): with ``tool_choice`` "required" or a named function one
    by default, ``x-fake-tool-calls`` of them, each with arguments valid for the tool's parameters.
    Chat nests a tool's name and parameters under ``function``, Responses does not. A refusal
    (``x-fake-refusal``) calls no tool."""
    functions = [
        (t.get("function") or {}) if "function" in t else t
        for t in body.get("tools") or []
        if isinstance(t, dict) and t.get("type") == "function"
    ]
    if not functions or "x-fake-refusal" in headers:
        return []
    tool_choice = body.get("tool_choice")
    forced = None  # {"type": "function", "function": {"name": ...}} (chat), {"type": "function", "name": ...}
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        forced = (tool_choice.get("function") or tool_choice).get("name")
    count = _int_header(headers, "x-fake-tool-calls", 1 if tool_choice == "required" or forced else 0)
    if count <= 0:
        return []
    function = next((f for f in functions if f.get("name") == forced), functions[0])
    params = function.get("parameters") or {"type": "object", "properties": {}}
    arguments = json.dumps(_sample(params, params, "arg"))
    return [
        {
            "id": f"call_fake{num}x{i}",
            "type": "function",
            "function": {"name": str(function.get("name", "tool")), "arguments": arguments},
        }
        for i in range(count)
    ]


def _below_minimum(body: JSONDict, name: str, minimum: int) -> _Reply | None:
    """The API's 400 for a token limit ``name`` below ``minimum``; None when it is absent or fine."""
    value = body.get(name)
    if not isinstance(value, int) or value >= minimum:
        return None
    expected = f"Expected a value >= {minimum}, but got {value} instead."
    message = f"Invalid '{name}': integer below minimum value. {expected}"
    error = {
        "message": message,
        "type": "invalid_request_error",
        "param": name,
        "code": "integer_below_min_value",
    }
    return _json_reply({"error": error}, 400)


def _chat(body: JSONDict, headers: dict[str, str], num: int, faults: set[str]) -> _Reply | _StreamReply:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return _error(400, "Missing required parameter: 'messages'.")
    refused = _below_minimum(body, "max_completion_tokens", 1) or _below_minimum(body, "max_tokens", 1)
    if refused is not None:
        return refused
    prompt, cached, written, reasoning = _counts(messages, body.get("tools"), headers)
    heard = _int_header(
        headers, "x-fake-prompt-audio-tokens", 0
    )  # audio in the prompt, as an audio model counts it
    spoken = _int_header(headers, "x-fake-completion-audio-tokens", 0)
    prompt = max(prompt, heard)
    choices_n = max(1, int(body.get("n") or 1))
    tool_calls = _tool_calls(body, headers, num)
    content: str | None
    refusal = headers.get("x-fake-refusal")
    if tool_calls:
        content, finish = None, "tool_calls"
        completion_one = sum(_tokens(c["function"]["name"] + c["function"]["arguments"]) for c in tool_calls)
    elif refusal is not None:  # a refusal in place of content, whatever the response format
        content, finish = None, "stop"
        completion_one = _tokens(refusal)
    else:
        fmt = body.get("response_format") or {}
        kind = fmt.get("type")
        schema = (fmt.get("json_schema") or {}).get("schema") if kind == "json_schema" else None
        limit = body.get("max_completion_tokens")
        if limit is None:
            limit = body.get("max_tokens")
        content, finish = _truncate(_content(kind, schema, messages, headers), limit)
        if headers.get("x-fake-finish") == "content_filter":  # the filter stops the answer halfway
            content, finish = content[: len(content) // 2], "content_filter"
        completion_one = _tokens(content)
    completion = choices_n * completion_one + reasoning + spoken
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {
            "cached_tokens": cached,
            "audio_tokens": heard,
            "cache_write_tokens": written,
        },
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": spoken,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    _add_cost(usage, headers)
    base: JSONDict = {
        "id": f"chatcmpl-{num}",
        "created": CREATED,
        "model": _served_model(body["model"], headers),
    }
    tier = {"service_tier": _served_tier(body), "system_fingerprint": SYSTEM_FINGERPRINT}

    def choices(key: str, value: JSONDict, finish_reason: str | None) -> list[JSONDict]:
        return [
            {"index": i, key: value, "logprobs": None, "finish_reason": finish_reason}
            for i in range(choices_n)
        ]

    if not body.get("stream"):
        message: JSONDict = {"role": "assistant", "content": content, "refusal": refusal, "annotations": []}
        if tool_calls:
            message["tool_calls"] = tool_calls
        answer = {**base, "object": "chat.completion", "choices": choices("message", message, finish), **tier}
        return _answer_with_usage(answer, usage, faults)

    extra = _chunk_usage(body, headers, faults, usage)
    chunk_base: JSONDict = {**base, "object": "chat.completion.chunk", **tier}

    def chunk(delta: JSONDict, finish_reason: str | None = None) -> bytes:
        """This step of every choice: one choice per chunk, in turn, as OpenAI streams ``n`` > 1."""
        return b"".join(
            _sse({**chunk_base, "choices": [choice], **extra})
            for choice in choices("delta", delta, finish_reason)
        )

    opening = {"content": "", "refusal": None}
    if tool_calls or refusal is not None:
        opening = {"content": None, "refusal": None if tool_calls else ""}
    events = [chunk({"role": "assistant", **opening})]
    if "azure" in faults:  # Azure's streams open with its prompt filter's verdict: no choices, id or model
        filters = {"hate": {"filtered": False, "severity": "safe"}}
        verdict = [{"prompt_index": 0, "content_filter_results": filters}]
        head = {"choices": [], "created": 0, "id": "", "model": "", "object": ""}
        events.insert(0, _sse({**head, "prompt_filter_results": verdict}))
    for index, call in enumerate(tool_calls):
        head = {"index": index, "id": call["id"], "type": "function"}
        name = call["function"]["name"]
        events.append(chunk({"tool_calls": [{**head, "function": {"name": name, "arguments": ""}}]}))
        for piece in _split(call["function"]["arguments"], headers):
            events.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))
    if content is not None:
        events += [chunk({"content": piece}) for piece in _split(content, headers) if piece]
    if refusal is not None:
        events += [chunk({"refusal": piece}) for piece in _split(refusal, headers) if piece]
    if "stream-error" in faults:  # the API's way: an error object in place of a chunk, then the end
        error = {"message": STREAM_ERROR, "type": "server_error", "param": None, "code": None}
        return _StreamReply([*events[: len(events) // 2 + 1], _sse({"error": error})])
    events.append(chunk({}, finish))
    return _stream_end(events, chunk_base, extra, usage)


def _completions(
    body: JSONDict, headers: dict[str, str], num: int, faults: set[str]
) -> _Reply | _StreamReply:
    """The legacy text completions endpoint (vLLM and other servers still serve it): one choice per
    prompt (times ``n``), each with the text chat would give for that prompt as its user message."""
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        return _error(400, "Missing required parameter: 'prompt' (a string or a list of strings).")
    limit = body.get("max_tokens")
    n = max(1, int(body.get("n") or 1))
    texts: list[tuple[str, str]] = []  # (text, finish reason) of each choice
    for p in prompts:
        texts += [_truncate(_reply_text(p, headers), limit)] * n
    prompt_tokens = sum(map(_tokens, prompts))
    completion = sum(_tokens(text) for text, _ in texts)
    usage: JSONDict = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }
    _add_cost(usage, headers)
    model = _served_model(body["model"], headers)
    base = {"id": f"cmpl-{num}", "object": "text_completion", "created": CREATED, "model": model}

    def choice(index: int, text: str, finish: str | None) -> JSONDict:
        return {"text": text, "index": index, "logprobs": None, "finish_reason": finish}

    if not body.get("stream"):
        answer = {**base, "choices": [choice(i, *pair) for i, pair in enumerate(texts)]}
        return _answer_with_usage(answer, usage, faults)
    pieces: list[tuple[int, str, str | None]] = [
        (i, piece, None) for i, (text, _) in enumerate(texts) for piece in _split(text, headers)
    ]
    pieces += [(i, "", finish) for i, (_, finish) in enumerate(texts)]  # each choice's finish chunk
    extra = _chunk_usage(body, headers, faults, usage)
    events = [_sse({**base, "choices": [choice(*piece)], **extra}) for piece in pieces]
    return _stream_end(events, base, extra, usage)


def _answer_with_usage(answer: JSONDict, usage: JSONDict, faults: set[str]) -> _Reply:
    """A non-streamed answer, its ``usage`` last (left out under the ``no-usage`` fault)."""
    return _json_reply(answer if "no-usage" in faults else {**answer, "usage": usage})


def _stream_end(events: list[bytes], base: JSONDict, extra: JSONDict, usage: JSONDict) -> _StreamReply:
    """A chunk stream's end: the usage chunk when the chunks carry a ``usage`` field, then ``[DONE]``."""
    if extra:
        events.append(_sse({**base, "choices": [], "usage": usage}))
    return _StreamReply([*events, b"data: [DONE]\n\n"])


def _chunk_usage(body: JSONDict, headers: dict[str, str], faults: set[str], usage: JSONDict) -> JSONDict:
    """The ``usage`` field of a stream's chunks: none without ``stream_options.include_usage``, else
    null (``x-fake-usage-style: every-chunk``: the usage itself, as some compatible servers send it)."""
    if not (body.get("stream_options") or {}).get("include_usage") or "no-usage" in faults:
        return {}
    return {"usage": usage if headers.get("x-fake-usage-style") == "every-chunk" else None}


def _embedding_vector(item: Any, dimensions: int) -> list[float]:
    seed = json.dumps(item).encode()
    raw: list[float] = []
    counter = 0
    while len(raw) < dimensions:
        digest = hashlib.sha256(seed + counter.to_bytes(4, "little")).digest()
        raw += [(b - 127.5) / 127.5 for b in digest]
        counter += 1
    vector = raw[:dimensions]
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    # round-trip through float32 so that "float" and "base64" answers carry the same values
    return list(struct.unpack(f"<{dimensions}f", struct.pack(f"<{dimensions}f", *(v / norm for v in vector))))


def _embeddings(body: JSONDict, headers: dict[str, str], num: int, faults: set[str]) -> _Reply:
    raw_input = body.get("input")
    if isinstance(raw_input, str) or (
        isinstance(raw_input, list) and raw_input and all(isinstance(t, int) for t in raw_input)
    ):
        inputs: list[Any] = [raw_input]
    elif isinstance(raw_input, list) and raw_input:
        inputs = raw_input
    else:
        return _error(400, "'input' must be a non-empty string or array.")
    dimensions = int(body.get("dimensions") or DEFAULT_EMBEDDING_DIMENSIONS)
    b64 = body.get("encoding_format") == "base64"
    data: list[JSONDict] = []
    tokens = 0
    for index, item in enumerate(inputs):
        tokens += _tokens(item) if isinstance(item, str) else len(item)
        vector = _embedding_vector(item, dimensions)
        embedding: Any = (
            base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode("ascii") if b64 else vector
        )
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    answer: JSONDict = {"object": "list", "data": data, "model": _served_model(body["model"], headers)}
    return _answer_with_usage(answer, {"prompt_tokens": tokens, "total_tokens": tokens}, faults)


def _responses(body: JSONDict, headers: dict[str, str], num: int, faults: set[str]) -> _Reply | _StreamReply:
    refused = _below_minimum(body, "max_output_tokens", 16)
    if refused is not None:
        return refused
    raw_input = body.get("input")
    items: list[Any] = [{"role": "user", "content": raw_input}] if isinstance(raw_input, str) else []
    if isinstance(raw_input, list):
        items = [i for i in raw_input if isinstance(i, dict)]
    instructions = body.get("instructions")
    counted = items + ([{"content": instructions}] if isinstance(instructions, str) else [])
    tools = body.get("tools") or []
    input_tokens, cached, written, reasoning = _counts(counted, tools, headers)
    text_format = (body.get("text") or {}).get("format") or {"type": "text"}
    # only json_schema: a json_object format gets plain text here
    kind = "json_schema" if text_format.get("type") == "json_schema" else None
    refusal = headers.get("x-fake-refusal")
    text = _content(kind, text_format.get("schema"), items, headers) if refusal is None else refusal
    limit = body.get("max_output_tokens")
    finish = "stop"
    calls = _tool_calls(body, headers, num)
    if isinstance(limit, int):  # the limit counts the reasoning too
        reasoning = min(reasoning, limit)
        if not calls:  # a function call's arguments are never cut
            text, finish = _truncate(text, limit - reasoning)
    done = "incomplete" if finish == "length" else "completed"
    output = _response_output(calls, text, refusal is not None, f"msg_fake{num}", done)
    produced = [c["function"]["name"] + c["function"]["arguments"] for c in calls] if calls else [text]
    output_tokens = sum(map(_tokens, produced)) + reasoning
    usage = {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input_tokens + output_tokens,
    }
    _add_cost(usage, headers)

    def response(status: str, output: list[JSONDict], final: bool) -> JSONDict:
        answer: JSONDict = {
            "id": f"resp_{num}",
            "object": "response",
            "created_at": CREATED,
            "status": status,
            "background": False,
            "completed_at": CREATED + 1 if status == "completed" else None,
            "error": {"code": "server_error", "message": STREAM_ERROR} if status == "failed" else None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": instructions,
            "max_output_tokens": body.get("max_output_tokens"),
            "max_tool_calls": None,
            "model": _served_model(str(body["model"]), headers),
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": body.get("previous_response_id"),
            "prompt_cache_key": None,
            "reasoning": {"effort": None, "summary": None},
            "safety_identifier": None,
            "service_tier": _served_tier(body),
            "store": True,
            "temperature": 1.0,
            "text": {"format": text_format, "verbosity": "medium"},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": tools,
            "top_logprobs": 0,
            "top_p": 1.0,
            "truncation": "disabled",
            "user": None,
            "metadata": body.get("metadata") or {},
        }
        if final and "no-usage" not in faults:
            answer["usage"] = usage
        elif not final:
            answer["usage"] = None
        return answer

    if not body.get("stream"):
        return _json_reply(response(done, output, True))

    opening: list[_Event] = [("response.created", {"response": response("in_progress", [], False)})]
    items_events = [e for index, item in enumerate(output) for e in _item_events(index, item, headers)]
    if "stream-error" in faults:  # an error event after the first delta, then the end
        first = [e for e in items_events if e[0].endswith(".delta")][:1]
        error = {"code": "server_error", "message": STREAM_ERROR, "param": None}
        return _StreamReply(_numbered([*opening, *first, ("error", error)]))
    final = response("failed", [], True) if "response-failed" in faults else response(done, output, True)
    opening.append(("response.in_progress", {"response": response("in_progress", [], False)}))
    return _StreamReply(
        _numbered([*opening, *items_events, (f"response.{final['status']}", {"response": final})])
    )


def _response_output(
    calls: list[JSONDict], text: str, refused: bool, msg_id: str, status: str
) -> list[JSONDict]:
    """A Response's ``output``: a ``function_call`` item per tool call, else one message whose content
    is the text, or the refusal."""
    if calls:
        return [
            {
                "id": f"fc_{call['id'].removeprefix('call_')}",
                "type": "function_call",
                "status": "completed",
                "arguments": call["function"]["arguments"],
                "call_id": call["id"],
                "name": call["function"]["name"],
            }
            for call in calls
        ]
    part = (
        {"type": "refusal", "refusal": text}
        if refused
        else {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    )
    return [{"id": msg_id, "type": "message", "status": status, "role": "assistant", "content": [part]}]


def _item_events(index: int, item: JSONDict, headers: dict[str, str]) -> list[_Event]:
    """The stream events of one output item: added, its deltas (in ``x-fake-chunks`` pieces), done."""
    at = {"item_id": item["id"], "output_index": index}
    if item["type"] == "function_call":
        arguments = item["arguments"]
        return [
            (
                "response.output_item.added",
                {"output_index": index, "item": {**item, "status": "in_progress", "arguments": ""}},
            ),
            *(
                ("response.function_call_arguments.delta", {**at, "delta": p})
                for p in _split(arguments, headers)
                if p
            ),
            ("response.function_call_arguments.done", {**at, "arguments": arguments}),
            ("response.output_item.done", {"output_index": index, "item": item}),
        ]
    [part] = item["content"]
    where = {**at, "content_index": 0}
    # output_text: response.output_text.delta/done events with logprobs; refusal: response.refusal.*
    extra: JSONDict = {} if part["type"] == "refusal" else {"logprobs": []}
    key, kind = ("refusal", "refusal") if part["type"] == "refusal" else ("text", "output_text")
    return [
        (
            "response.output_item.added",
            {"output_index": index, "item": {**item, "status": "in_progress", "content": []}},
        ),
        ("response.content_part.added", {**where, "part": {**part, key: ""}}),
        *(
            (f"response.{kind}.delta", {**where, "delta": p, **extra})
            for p in _split(part[key], headers)
            if p
        ),
        (f"response.{kind}.done", {**where, key: part[key], **extra}),
        ("response.content_part.done", {**where, "part": part}),
        ("response.output_item.done", {"output_index": index, "item": item}),
    ]


def _numbered(events: list[_Event]) -> list[bytes]:
    """The events as SSE, each ``event: <type>`` with its ``sequence_number``."""
    return [
        _sse({"type": kind, "sequence_number": n, **payload}, kind)
        for n, (kind, payload) in enumerate(events)
    ]


def _json_reply(payload: JSONDict, status: int = 200, headers: dict[str, str] | None = None) -> _Reply:
    return _Reply(status, json.dumps(payload).encode(), headers=dict(headers or {}))


def _error(status: int, message: str | None = None, headers: dict[str, str] | None = None) -> _Reply:
    return _json_reply(error_body(status, message), status, headers)


# Azure's deployment paths, and its paths of no deployment (``/openai/responses``, as the SDK's
# AzureOpenAI calls the Responses API), served as the plain ``/v1`` ones
_AZURE_DEPLOYMENT = re.compile(r"^(?:/openai)?(?:/v1)?/deployments/[^/]+(?=/)|^/openai(?=/(?!v1/))")
_ROUTES = {
    "/v1/chat/completions": _chat,
    "/v1/responses": _responses,
    "/v1/embeddings": _embeddings,
    "/v1/completions": _completions,
}


# --------------------------------------------------------------------------------------------------------
# HTTP plumbing


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 2048

    def __init__(self, address: tuple[str, int], fake: FakeOpenAI) -> None:
        self.fake = fake
        self.connections: set[socket.socket] = set()
        self.connections_cv = threading.Condition()
        self.stopping = threading.Event()  # cuts short the `slow` fault's sleeps: stop() waits for no delay
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind() calls socket.getfqdn(), which can stall on a reverse DNS lookup.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):  # client went away, reset, server stopping: not news
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    _encoding = ""  # the answer's Content-Encoding (x-fake-encoding), "" for none

    def setup(self) -> None:
        super().setup()
        # small writes (headers, then body or SSE chunks) must not wait for delayed ACKs (Nagle)
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.connections_cv:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.connections_cv:
                self.server.connections.discard(self.connection)
                self.server.connections_cv.notify_all()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server answers a request line it cannot read as HTTP/0.9: a bare page with no status
        # line, which a client reports as "Server disconnected without sending a response"
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.1"
            explain = f"{self.requestline[:200]!r} is not an HTTP/1.1 request line."
        super().send_error(code, message, explain)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.fake.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _read_body(self) -> bytes:
        """The body, or :class:`_BadRequest` for one whose length cannot be read or is over the limit."""
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            data = bytearray()
            while True:
                line = self.rfile.readline(1024)
                size = line.split(b";")[0].strip() or b"0"
                if not re.fullmatch(rb"[0-9a-fA-F]+", size):
                    raise _BadRequest(f"chunk size {size.decode(errors='replace')!r} is not hexadecimal.")
                if len(data) + int(size, 16) > MAX_BODY_BYTES:
                    raise _BadRequest(f"the body is over the fake server's {MAX_BODY_BYTES} bytes.", 413)
                if int(size, 16) == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(data)
                data += self.rfile.read(int(size, 16))
                self.rfile.readline()
        length = self.headers.get("content-length") or "0"
        if not length.strip().isdigit():
            raise _BadRequest(f"Content-Length {length!r} is not a number of bytes.")
        if int(length) > MAX_BODY_BYTES:
            raise _BadRequest(
                f"Content-Length {length} is over the fake server's {MAX_BODY_BYTES} bytes.", 413
            )
        return self.rfile.read(int(length))

    def _dispatch(self) -> None:
        self._started = time.monotonic()
        self._delay, self._encoding = 0.0, ""  # the handler serves every request of its connection
        fake = self.server.fake
        unreadable: _BadRequest | None = None
        try:
            raw = self._read_body()
        except _BadRequest as exc:  # where this body ends, and the next request starts, is unknown
            raw, unreadable = b"", exc
            self.close_connection = True
        headers = {k.lower(): v for k, v in self.headers.items()}
        body = _json_or_none(raw)
        url = urlsplit(self.path)
        path = url.path
        route = _AZURE_DEPLOYMENT.sub("/v1", path)
        route = route[route.find("/v1/") :] if route.find("/v1/") > 0 else route  # a proxy's prefix
        retry = headers.get("x-stainless-retry-count", "")
        num = fake._record(
            RecordedRequest(
                method=self.command,
                path=path,
                headers=headers,
                body=body,
                raw_body=raw,
                retry_count=int(retry) if retry.isdigit() else None,
                query=url.query,
            )
        )
        self._num = num
        faults = {f.strip() for f in headers.get("x-fake-fault", "").split(",") if f.strip()}
        if _AZURE_DEPLOYMENT.match(path):
            faults.add("azure")  # not a fault: how Azure's answers differ
        # a queued failure goes to the request that arrives next, not to whichever finishes its delay
        # first (a slow request outliving its test's timeout took the next test's failure)
        failure = fake._take_failure()
        try:
            if unreadable is not None:
                raise unreadable
            _check_headers(headers)
            if "slow" in faults:
                self._delay = _int_header(headers, "x-fake-delay-ms", DEFAULT_DELAY_MS) / 1000
                if self.server.stopping.wait(self._delay):
                    self.close_connection = True
                    return
            reply = self._answer(route, headers, body, num, faults, failure)
        except _BadRequest as exc:
            reply = _error(exc.status, str(exc))
        except Exception as exc:  # a request the fake does not understand: answer like a server bug would
            reply = _error(500, f"fake server error: {exc!r}")
        fake._answered(route, reply)
        if isinstance(reply, _StreamReply):
            self._send_stream(reply, faults, headers.get("x-fake-transfer", "").lower() == "close")
        else:
            self._send(reply, faults)

    def _answer(
        self,
        path: str,
        headers: dict[str, str],
        body: Any,
        num: int,
        faults: set[str],
        failure: _Failure | None,
    ) -> _Reply | _StreamReply:
        wrong_encoding = self._pick_encoding(headers)
        if wrong_encoding is not None:
            return wrong_encoding
        if failure is not None:
            return _json_reply(*failure)
        status = _int_header(headers, "x-fake-status", 0)
        if status == 401:
            key = headers.get("api-key") or headers.get("authorization", "").removeprefix("Bearer ")
            return _error(401, f"Incorrect API key provided: {key}.", headers={"retry-after-ms": "1"})
        if status >= 400:
            return _error(status, headers={"retry-after-ms": "1"})
        if "not-json" in faults:
            return _Reply(200, b"<html>oops</html>")
        if self.command != "POST" or path not in _ROUTES:
            return _error(404, f"Invalid URL ({self.command} {path})")
        if not isinstance(body, dict):
            return _error(400, "We could not parse the JSON body of your request (fake).")
        if not isinstance(body.get("model"), str):
            return _error(400, "You must provide a model parameter.")
        return _ROUTES[path](body, headers, num, faults)

    def _pick_encoding(self, headers: dict[str, str]) -> _Reply | None:
        """Set the body's encoding from ``x-fake-encoding`` when the request's Accept-Encoding takes it
        (a server sends no encoding the client did not offer); an error answer for a bad value."""
        self._encoding = ""
        wanted = headers.get("x-fake-encoding", "").strip().lower()
        if not wanted:
            return None
        if wanted not in _ENCODINGS:
            return _error(400, f"x-fake-encoding: {wanted!r} is not one of {', '.join(_ENCODINGS)}.")
        offered = {
            part.split(";")[0].strip().lower() for part in headers.get("accept-encoding", "").split(",")
        }
        if wanted in offered:
            try:
                _encoder(wanted)
            except ImportError as exc:
                return _error(400, f"x-fake-encoding: {wanted} needs the {exc.name} package in the server.")
            self._encoding = wanted
        return None

    def _send_head(self, status: int, extra: dict[str, str], content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        if self._encoding:
            self.send_header("content-encoding", self._encoding)
        self.send_header("x-request-id", f"req_{self._num}")
        self.send_header("openai-processing-ms", str(int((time.monotonic() - self._started) * 1000)))
        for name, value in {**RESPONSE_HEADERS, **extra}.items():
            self.send_header(name, value)

    def _send(self, reply: _Reply, faults: set[str]) -> None:
        compress, end = _encoder(self._encoding)
        body = compress(reply.body) + end()
        self._send_head(reply.status, reply.headers)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if "cut-stream" in faults or "reset" in faults:
            self.wfile.write(body[: len(body) // 2])
            self._abort(reset="reset" in faults)
            return
        self.wfile.write(body)

    def _send_stream(self, reply: _StreamReply, faults: set[str], close_delimited: bool) -> None:
        extra = {"cache-control": "no-cache"}
        if close_delimited:
            extra["connection"] = "close"
        else:
            extra["transfer-encoding"] = "chunked"
        self._send_head(200, extra, "text/event-stream; charset=utf-8")
        self.end_headers()
        compress, end = _encoder(self._encoding)
        cut = len(reply.events) // 2 if {"cut-stream", "reset"} & faults else len(reply.events)

        def write(data: bytes) -> None:
            self.wfile.write(data if close_delimited else b"%x\r\n%s\r\n" % (len(data), data))

        for index, event in enumerate(reply.events[:cut]):
            if index and self._delay and self.server.stopping.wait(self._delay):
                self._abort(reset=False)
                return
            write(compress(event))
        if cut < len(reply.events):
            self._abort(reset="reset" in faults)
            return
        tail = end()
        if tail:  # an empty chunk would end a chunked body
            write(tail)
        if not close_delimited:
            self.wfile.write(b"0\r\n\r\n")

    def _abort(self, reset: bool) -> None:
        """Close the connection now: FIN (truncated body) or, with ``reset``, RST."""
        self.close_connection = True
        if reset:
            time.sleep(0.02)  # let the client read what was sent before the RST
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # detach() leaves the socket object (still used by rfile/wfile/finish()) closed and inert
            os.close(self.connection.detach())


class FakeOpenAI:
    """A loopback OpenAI-compatible server (chat completions, responses, embeddings, legacy completions;
    streamed or not) with deterministic text and usage, to point the real SDK at: ``base_url`` for the client,
    ``requests`` and ``answers`` as received and sent, ``fail_next()`` to queue errors. ``start()`` (or
    ``with``) runs it in a daemon thread.

    ``x-fake-*`` request headers steer it (tool calls, cached tokens, error statuses, cut or reset
    streams...): the reference is docs/FAKE_SERVER.md.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, verbose: bool = False) -> None:
        self.host = host
        self.port = port
        self.verbose = verbose
        self.requests: list[RecordedRequest] = []
        self.answers: list[RecordedAnswer] = []
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        self._failures: list[_Failure] = []  # queued by fail_next(), one per request
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1``; with port 0, known only once ``start()`` has picked the port."""
        if self.port == 0:
            raise RuntimeError("FakeOpenAI(port=0) picks its port in start(): read base_url after start()")
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> FakeOpenAI:
        if self._server is None:
            self._server = _Server((self.host, self.port), self)
            self.port = int(self._server.server_address[1])
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.stopping.set()
        server.shutdown()
        with server.connections_cv:
            for connection in list(server.connections):  # wake handlers idling on keep-alive connections
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            server.connections_cv.wait_for(lambda: not server.connections, timeout=5)
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def fail_next(
        self,
        status: int,
        times: int = 1,
        *,
        body: JSONDict | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """The next ``times`` requests (any endpoint) answer ``status`` with an OpenAI error body."""
        answer = (
            error_body(status) if body is None else body,
            status,
            {"retry-after-ms": "1", **(headers or {})},
        )
        with self._lock:
            self._failures += [answer] * times

    def reset(self) -> None:
        """Forget recorded requests and answers, and queued failures."""
        with self._lock:
            self.requests.clear()
            self.answers.clear()
            self._failures.clear()

    def _record(self, request: RecordedRequest) -> int:
        with self._lock:
            self.requests.append(request)
            return next(self._counter)

    def _answered(self, path: str, reply: _Reply | _StreamReply) -> None:
        if isinstance(reply, _StreamReply):
            events = [
                json.loads(line[6:])
                for event in reply.events
                for line in event.split(b"\n")
                if line.startswith(b"data: {")
            ]
            answer = RecordedAnswer(path, 200, events)
        else:
            answer = RecordedAnswer(path, reply.status, _json_or_none(reply.body))
        with self._lock:
            self.answers.append(answer)

    def _take_failure(self) -> _Failure | None:
        with self._lock:
            return self._failures.pop(0) if self._failures else None


def register(subparsers: Any, summary: str) -> None:
    """Add ``fake-server`` to the ``llm-ledger`` console script."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "fake-server",
        help=summary,
        description=(
            "Serve the OpenAI-compatible test server on HOST:PORT until Ctrl-C: chat completions, "
            "responses, embeddings and legacy completions, streamed or not, with deterministic text and "
            "usage. Point a client at it with OPENAI_BASE_URL=http://HOST:PORT/v1 and any OPENAI_API_KEY."
        ),
    )
    add_listen_options(parser, 8123)
    parser.add_argument("--quiet", action="store_true", help="do not log requests")
    parser.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    server = listening(FakeOpenAI(args.host, args.port, verbose=not args.quiet).start, args)
    print(f"fake OpenAI serving on {server.base_url} (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
