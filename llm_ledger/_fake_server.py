"""A small OpenAI-compatible HTTP server for tests and for recording without a key (stdlib only;
br and zstd bodies, when asked for, need brotli and backports.zstd).

Public as :class:`llm_ledger.testing.FakeOpenAI` and as ``llm-ledger fake-server``. Its endpoints, token
accounting, response headers and the ``x-fake-*`` request headers that steer it (faults included) are
described in docs/FAKE_SERVER.md; keep that page true to this module.

A request goes: ``_Handler._dispatch`` (read, record, check the headers, the faults that come before
an answer) → ``_Handler._answer`` (queued failures, statuses, routing) → an endpoint, which returns a
:class:`_Reply` (JSON, or bytes: speech) or a :class:`_Stream` (server-sent events), or raises
:class:`_Refusal` for an error answer → ``_Handler._send`` (encoding, and the faults that break the
answer on the wire).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import email
import email.policy
import functools
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
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from ._cli import add_listen_options, listening
from .exporters._prometheus import shutdown_now

if TYPE_CHECKING:
    from ._fake_realtime import RealtimeServer

__all__ = ["FakeOpenAI", "RecordedAnswer", "RecordedRequest", "error_body"]

JSONDict = dict[str, Any]

CREATED = 1_700_000_000
SPEECH_HEAD = b"\xff\xf3\x44\xc4"  # how the fake's speech starts: an MPEG audio frame header
STREAM_ERROR = "The server had an error while processing your request."
# a 1x1 transparent PNG: every image the fake makes
_PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
).decode()
_LOREM = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et "
    "dolore magna aliqua ut enim ad minim veniam quis nostrud exercitation ullamco laboris nisi"
)
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
# a requested service tier -> the one the API answers (the SDK's ``service_tier`` docs)
_SERVED_TIERS = {"flex": "flex", "priority": "priority", "fast": "priority", "ultrafast": "ultrafast"}
MAX_BODY_BYTES = 64 * 2**20  # larger bodies answer 413 unread: a stray Content-Length must not eat the memory
# the x-fake-* request headers (docs/FAKE_SERVER.md), without the prefix: int for a whole number, str
# for any text, else the values it takes (x-fake-fault: a comma-separated list of them)
_HEADERS: dict[str, Any] = {
    **dict.fromkeys((
        "chunks", "completion-words", "cached-tokens", "cache-write-tokens", "prompt-audio-tokens",
        "completion-audio-tokens", "reasoning-tokens", "tool-calls", "tool-uses", "delay-ms", "polls",
        "fault-attempts",
    ), int),
    **dict.fromkeys(("content", "refusal", "served-model", "cost", "status"), str),
    "fault": (
        "cut-stream", "reset", "not-json", "no-usage", "slow", "stream-error", "stream-error-object",
        "response-failed", "no-done",
    ),
    "usage-style": (
        "openai", "deepseek", "xai", "gemini", "perplexity", "openrouter", "openrouter-byok", "moonshot",
        "every-chunk", "in-choice", "total-only", "mistral",
    ),
    "transfer": ("close",),
    "line-ending": ("crlf", "cr"),
    "finish": ("content_filter",),
    "encoding": ("gzip", "br", "zstd"),
}  # fmt: skip


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


@dataclass
class _Reply:
    body: Any  # the JSON answer; bytes are sent as they are
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


@dataclass
class _Stream:
    # each sent as ``data: {...}``, after ``event: <type>`` when it has a ``type`` (Responses' events do,
    # chunks do not)
    events: list[JSONDict]
    done: bool = True  # chunk streams end with ``data: [DONE]``, Responses streams do not


@dataclass
class _Job:
    """A Response kept for ``GET /v1/responses/{id}``: as it ends, its stream's events, and how many
    retrieves still find it running (a background one)."""

    final: JSONDict
    events: list[JSONDict]
    polls: int


def _running(final: JSONDict, status: str) -> JSONDict:
    """A background Response before its end (or cancelled): no output, no usage yet."""
    return {**final, "status": status, "output": [], "usage": None, "completed_at": None,
            "incomplete_details": None}  # fmt: skip


class _Refusal(Exception):
    """A request the fake refuses: an OpenAI error answer (``error`` fields beyond the message too)."""

    def __init__(
        self, status: int, message: str | None = None, headers: dict[str, str] | None = None, **error: Any
    ) -> None:
        super().__init__(message)
        body = error_body(status, message)
        body["error"].update(error)
        self.reply = _Reply(body, status, dict(headers or {}))


# --------------------------------------------------------------------------------------------------------
# Pure helpers: steering headers, text, tokens, schema samples


def _count(headers: dict[str, str], name: str, default: int = 0) -> int:
    """The whole number of ``x-fake-NAME`` (checked by :func:`_check_headers`)."""
    return int(headers.get("x-fake-" + name, default))


def _check_headers(headers: dict[str, str]) -> None:
    """Refuse a misspelt ``x-fake-*`` header name or value: ignored, it would leave a test asserting on
    the defaults without knowing it."""
    for name, value in headers.items():
        kind = _HEADERS.get(name.removeprefix("x-fake-")) if name.startswith("x-fake-") else str
        if kind is None:
            known = ", ".join(sorted("x-fake-" + k for k in _HEADERS))
            raise _Refusal(400, f"{name} is not a header the fake server knows; it knows {known}.")
        if kind is int and not value.strip().isdigit():
            raise _Refusal(400, f"{name}: {value!r} is not a whole number (0 or more).")
        if isinstance(kind, tuple):
            values = [v.strip() for v in (value.split(",") if name == "x-fake-fault" else [value])]
            wrong = [v for v in values if v and v not in kind]
            if wrong:
                raise _Refusal(400, f"{name}: {wrong[0]!r} is not one of {', '.join(kind)}.")
    status = headers.get("x-fake-status", "400")
    if not (status.strip().isdigit() and 400 <= int(status) <= 599):
        raise _Refusal(400, f"x-fake-status: {status!r} is not an error status (400 to 599).")
    cost = headers.get("x-fake-cost", "0")
    try:
        float(cost)
    except ValueError:
        raise _Refusal(400, f"x-fake-cost: {cost!r} is not a number of US dollars (e.g. 0.0012).") from None


def _parts(content: Any) -> tuple[list[str], int]:
    """The text parts of a message's content, and how many image parts it has."""
    if isinstance(content, str):
        return [content], 0
    parts = [p for p in content if isinstance(p, dict)] if isinstance(content, list) else []
    texts = [str(p.get("text", "")) for p in parts if p.get("type") in ("text", "input_text", "output_text")]
    return texts, sum(p.get("type") in ("image_url", "input_image") for p in parts)


def _tokens(text: str) -> int:
    """The fake's token count of ``text``: a token per four characters, rounded up."""
    return math.ceil(len(text) / 4)


def _truncate(text: str, limit: Any) -> tuple[str, str]:
    """``text`` cut to a ``max_tokens`` ``limit`` (when it is a number), and its finish reason."""
    if isinstance(limit, int) and _tokens(text) > limit:
        return text[: limit * 4], "length"
    return text, "stop"


def _counts(messages: list[Any], tools: Any, headers: dict[str, str]) -> tuple[int, int, int, int]:
    """(prompt tokens, cached tokens, cache write tokens, reasoning tokens) of a request."""
    parts = [_parts(m.get("content") if isinstance(m, dict) else m) for m in messages]
    prompt = _tokens("".join(t for texts, _ in parts for t in texts)) + 4 * len(messages)
    prompt += 85 * sum(images for _, images in parts) + (_tokens(json.dumps(tools)) if tools else 0)
    cached, written = _count(headers, "cached-tokens"), _count(headers, "cache-write-tokens")
    return max(prompt, cached + written), cached, written, _count(headers, "reasoning-tokens")


def _reply_text(user_text: str, headers: dict[str, str]) -> str:
    if "x-fake-content" in headers:
        return headers["x-fake-content"]
    words = _count(headers, "completion-words", -1)
    if words >= 0:
        text = " ".join(itertools.islice(itertools.cycle(_LOREM.split()), words))
        return text[:1].upper() + text[1:] + ("." if text else "")
    head = user_text.split()[:8]
    return "Summary: " + " ".join(head) if head else "Hello! How can I help you today?"


def _content(kind: Any, schema: Any, messages: list[Any], headers: dict[str, str]) -> str:
    """The answer's text for the response format ``kind`` (``json_schema`` with ``schema``,
    ``json_object``, else plain text); ``x-fake-content`` wins over any format."""
    if "x-fake-content" not in headers and kind == "json_schema":
        return json.dumps(_sample(schema, schema, "value"))
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    text = _reply_text(" ".join(_parts(users[-1].get("content"))[0]) if users else "", headers)
    if "x-fake-content" not in headers and kind == "json_object":
        return json.dumps({"summary": text})
    return text


def _sample(schema: Any, root: JSONDict, key: str, depth: int = 0) -> Any:
    """A value valid for a simple JSON schema (objects, arrays, scalars, enums, $ref, anyOf)."""
    if not isinstance(schema, dict) or depth > 8:
        return None

    def sample(sub: Any, name: str = key) -> Any:
        return _sample(sub, root, name, depth + 1)

    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return sample(target)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        options = schema.get(combinator)
        if isinstance(options, list) and options:
            non_null = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            return sample((non_null or options)[0])
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        return {name: sample(sub, name) for name, sub in (schema.get("properties") or {}).items()}
    if kind == "array":
        count = max(int(schema.get("minItems", 2)), 0)
        count = min(count, int(schema.get("maxItems", count)))
        return [sample(schema.get("items", {})) for _ in range(count)]
    if kind in ("integer", "number"):
        default = 42 if kind == "integer" else 0.5
        value = min(max(default, schema.get("minimum", default)), schema.get("maximum", default))
        return int(value) if kind == "integer" else float(value)
    if kind == "string":
        dates = {"date-time": "2024-01-01T00:00:00Z", "date": "2024-01-01"}
        return dates.get(str(schema.get("format")), f"fake {key}")
    return True if kind == "boolean" else None


def _split(text: str, headers: dict[str, str]) -> list[str]:
    """``text`` cut into at most ``x-fake-chunks`` non-empty pieces (one empty piece for empty text)."""
    parts = max(1, min(_count(headers, "chunks", 5), len(text)))
    size, extra = divmod(len(text), parts)
    starts = [i * size + min(i, extra) for i in range(parts + 1)]  # the first `extra` pieces one longer
    return [text[start:end] for start, end in itertools.pairwise(starts)]


def _served_model(body: JSONDict, headers: dict[str, str]) -> str:
    model, served = str(body["model"]), headers.get("x-fake-served-model")
    return (model + "-2024-07-18" if served == "dated" else served) if served else model


def _served_tier(body: JSONDict) -> str:
    """The ``service_tier`` of the answer, as the API names the tier that served the call: ``flex``,
    ``priority`` and ``ultrafast`` as asked, ``priority`` for Fast mode (``fast``), else ``default``."""
    tier = body.get("service_tier")
    return _SERVED_TIERS.get(tier, "default") if isinstance(tier, str) else "default"


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
    elif style == "moonshot" and "prompt_tokens_details" in usage:
        # Moonshot (Kimi) reports its cache hits beside prompt_tokens too: cached_tokens
        usage["cached_tokens"] = usage.pop("prompt_tokens_details")["cached_tokens"]
    elif style in ("xai", "gemini") and "completion_tokens" in usage:
        # reasoning left out of completion_tokens, still in total_tokens; Gemini leaves out the details too
        usage["completion_tokens"] -= usage["completion_tokens_details"]["reasoning_tokens"]
        if style == "gemini":
            del usage["completion_tokens_details"]
    elif style == "total-only" and "total_tokens" in usage:  # some compatible servers say no more
        for key in [key for key in usage if key != "total_tokens"]:
            del usage[key]


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


def _sse(event: JSONDict) -> bytes:
    data = b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"
    return b"event: " + event["type"].encode() + b"\n" + data if "type" in event else data


# --------------------------------------------------------------------------------------------------------
# Endpoints: (body, headers, request number, faults) -> the answer


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
    choice = body.get("tool_choice")
    forced = None  # {"type": "function", "function": {"name": ...}} (chat), {"type": "function", "name": ...}
    if isinstance(choice, dict) and choice.get("type") == "function":
        forced = (choice.get("function") or choice).get("name")
    function = next((f for f in functions if f.get("name") == forced), functions[0])
    params = function.get("parameters") or {"type": "object", "properties": {}}
    arguments = json.dumps(_sample(params, params, "arg"))
    call = {"name": str(function.get("name", "tool")), "arguments": arguments}
    count = _count(headers, "tool-calls", 1 if choice == "required" or forced else 0)
    return [{"id": f"call_fake{num}x{i}", "type": "function", "function": call} for i in range(count)]


# a built-in tool's type in a Responses request -> its output item's type and fields
_BUILT_IN_ITEMS: dict[str, tuple[str, JSONDict]] = {
    "web_search": ("web_search_call", {"action": {"type": "search", "query": "fake query"}}),
    "file_search": ("file_search_call", {"queries": ["fake query"], "results": None}),
    "code_interpreter": (
        "code_interpreter_call",
        {"code": "print(6 * 7)", "container_id": "cntr_fake", "outputs": [{"type": "logs", "logs": "42\n"}]},
    ),
    "image_generation": ("image_generation_call", {"result": _PNG}),
}
_BUILT_IN_ITEMS["web_search_preview"] = _BUILT_IN_ITEMS["web_search"]


def _built_in_calls(body: JSONDict, headers: dict[str, str], num: int) -> list[JSONDict]:
    """The output items of the built-in tools a Responses request sends (web search, file search, code
    interpreter, image generation): each used ``x-fake-tool-uses`` times (default 1), in order."""
    kinds = [t.get("type") for t in body.get("tools") or [] if isinstance(t, dict)]
    items: list[JSONDict] = []
    for kind, fields in [_BUILT_IN_ITEMS[k] for k in kinds if isinstance(k, str) and k in _BUILT_IN_ITEMS]:
        prefix = "".join(word[0] for word in kind.split("_")[:2])  # ws_, fs_, ci_, ig_
        for _ in range(_count(headers, "tool-uses", 1)):
            items.append(
                {"id": f"{prefix}_fake{num}x{len(items)}", "type": kind, "status": "completed", **fields}
            )
    return items


def _call_text(call: JSONDict) -> str:
    """What a tool call's tokens are counted on: the function's name and arguments."""
    return str(call["function"]["name"] + call["function"]["arguments"])


def _check_minimum(body: JSONDict, name: str, minimum: int) -> None:
    """The API's 400 for a token limit ``name`` below ``minimum``."""
    value = body.get(name)
    if isinstance(value, int) and value < minimum:
        expected = f"Expected a value >= {minimum}, but got {value} instead."
        message = f"Invalid '{name}': integer below minimum value. {expected}"
        raise _Refusal(400, message, param=name, code="integer_below_min_value")


def _with_usage(answer: JSONDict, usage: JSONDict, faults: set[str]) -> _Reply:
    """A non-streamed answer, its ``usage`` last (left out under the ``no-usage`` fault)."""
    return _Reply(answer if "no-usage" in faults else {**answer, "usage": usage})


def _chunk_usage(body: JSONDict, headers: dict[str, str], faults: set[str], usage: JSONDict) -> JSONDict:
    """The ``usage`` field of a stream's chunks: none without ``stream_options.include_usage``, else
    null (``x-fake-usage-style: every-chunk``: the usage itself, as some compatible servers send it)."""
    if not (body.get("stream_options") or {}).get("include_usage") or "no-usage" in faults:
        return {}
    return {"usage": usage if headers.get("x-fake-usage-style") == "every-chunk" else None}


def _chunks_end(events: list[JSONDict], head: JSONDict, extra: JSONDict, usage: JSONDict) -> _Stream:
    """A chunk stream's end: the usage chunk when the chunks carry a ``usage`` field, then ``[DONE]``."""
    return _Stream([*events, *([{**head, "choices": [], "usage": usage}] if extra else [])])


def _chat(body: JSONDict, headers: dict[str, str], num: int, faults: set[str]) -> _Reply | _Stream:
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise _Refusal(400, "Missing required parameter: 'messages'.")
    _check_minimum(body, "max_completion_tokens", 1)
    _check_minimum(body, "max_tokens", 1)
    searches = "-search-" in str(body["model"])  # gpt-4o-search-preview, gpt-5-search-api...
    if "web_search_options" in body and not searches:
        raise _Refusal(400, "Web search options not supported with this model.", param="web_search_options")
    prompt, cached, written, reasoning = _counts(messages, body.get("tools"), headers)
    # audio in the prompt and in the answer, as an audio model counts it
    heard, spoken = _count(headers, "prompt-audio-tokens"), _count(headers, "completion-audio-tokens")
    n = max(1, int(body.get("n") or 1))
    tool_calls = _tool_calls(body, headers, num)
    refusal = headers.get("x-fake-refusal")
    content: str | None = None
    if tool_calls:
        finish, produced = "tool_calls", [_call_text(c) for c in tool_calls]
    elif refusal is not None:  # a refusal in place of content, whatever the response format
        finish, produced = "stop", [refusal]
    else:
        fmt = body.get("response_format") or {}
        limit = body.get("max_completion_tokens")
        text = _content(fmt.get("type"), (fmt.get("json_schema") or {}).get("schema"), messages, headers)
        content, finish = _truncate(text, body.get("max_tokens") if limit is None else limit)
        if headers.get("x-fake-finish") == "content_filter":  # the filter stops the answer halfway
            content, finish = content[: len(content) // 2], "content_filter"
        produced = [content]
    prompt = max(prompt, heard)
    completion = n * sum(map(_tokens, produced)) + reasoning + spoken
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
    style = headers.get("x-fake-usage-style")
    base = {"id": f"chatcmpl-{num}", "created": CREATED, "model": _served_model(body, headers)}
    tier = {"service_tier": _served_tier(body), "system_fingerprint": "fp_fake0001"}
    cited: list[JSONDict] = []  # a search model's answer cites the page it found
    if content and searches:
        found = {"url": "https://example.com/fake", "title": "Fake source", "start_index": 0}
        cited = [{"type": "url_citation", "url_citation": {**found, "end_index": len(content)}}]

    def choices(key: str, value: JSONDict, finish_reason: str | None) -> list[JSONDict]:
        return [{"index": i, key: value, "logprobs": None, "finish_reason": finish_reason} for i in range(n)]

    if not body.get("stream"):
        message: JSONDict = {
            "role": "assistant",
            "content": content,
            "refusal": refusal,
            "annotations": cited,
        }
        if tool_calls:
            message["tool_calls"] = tool_calls
        answered = choices("message", message, finish)
        answer = {**base, "object": "chat.completion", "choices": answered, **tier}
        if style == "in-choice" and "no-usage" not in faults:  # in the first choice, none beside it
            answered[0]["usage"] = usage
            return _Reply(answer)
        return _with_usage(answer, usage, faults)

    # Mistral's stream ignores stream_options: its usage comes on the finishing chunk, asked for or not
    extra = {} if style == "mistral" else _chunk_usage(body, headers, faults, usage)
    head = {**base, "object": "chat.completion.chunk", **tier}

    def chunks(delta: JSONDict, finish_reason: str | None = None) -> list[JSONDict]:
        """This step of every choice: one choice per chunk, in turn, as OpenAI streams ``n`` > 1."""
        return [{**head, "choices": [choice], **extra} for choice in choices("delta", delta, finish_reason)]

    events: list[JSONDict] = []
    if "azure" in faults:  # Azure's streams open with its prompt filter's verdict: no choices, id or model
        filters = {"hate": {"filtered": False, "severity": "safe"}}
        verdict = [{"prompt_index": 0, "content_filter_results": filters}]
        nothing = {"choices": [], "created": 0, "id": "", "model": "", "object": ""}
        events.append({**nothing, "prompt_filter_results": verdict})
    opening = {"content": None if content is None else "", "refusal": None if refusal is None else ""}
    events += chunks({"role": "assistant", **opening})
    for index, call in enumerate(tool_calls):
        opened = {"index": index, "id": call["id"], "type": "function"}
        events += chunks({"tool_calls": [{**opened, "function": {**call["function"], "arguments": ""}}]})
        for piece in _split(call["function"]["arguments"], headers):
            events += chunks({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    for key, said in (("content", content), ("refusal", refusal)):
        if said is not None:
            events += [chunk for piece in _split(said, headers) if piece for chunk in chunks({key: piece})]
    if cited:
        events += chunks({"annotations": cited})
    if {"stream-error", "stream-error-object"} & faults:  # the API's way: an error object, then the end
        error = {"message": STREAM_ERROR, "type": "server_error", "param": None, "code": None}
        return _Stream([*events[: len(events) // 2 + 1], {"error": error}], done=False)
    ending = chunks({}, finish)
    if not extra and style in ("moonshot", "in-choice") and "no-usage" not in faults:
        # Moonshot's stream without include_usage: the usage in the choice that finishes
        ending[0]["choices"][0]["usage"] = usage
    elif style == "mistral" and "no-usage" not in faults:
        ending[-1]["usage"] = usage
    return _chunks_end(events + ending, head, extra, usage)


def _completions(body: JSONDict, headers: dict[str, str], num: int, faults: set[str]) -> _Reply | _Stream:
    """The legacy text completions endpoint (vLLM and other servers still serve it): one choice per
    prompt (times ``n``), each with the text chat would give for that prompt as its user message."""
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise _Refusal(400, "Missing required parameter: 'prompt' (a string or a list of strings).")
    n = max(1, int(body.get("n") or 1))
    texts = [_truncate(_reply_text(p, headers), body.get("max_tokens")) for p in prompts for _ in range(n)]
    asked, completion = sum(map(_tokens, prompts)), sum(_tokens(text) for text, _ in texts)
    usage = {"prompt_tokens": asked, "completion_tokens": completion, "total_tokens": asked + completion}
    _add_cost(usage, headers)
    model = _served_model(body, headers)
    base = {"id": f"cmpl-{num}", "object": "text_completion", "created": CREATED, "model": model}

    def choice(index: int, text: str, finish: str | None) -> JSONDict:
        return {"text": text, "index": index, "logprobs": None, "finish_reason": finish}

    if not body.get("stream"):
        answer = {**base, "choices": [choice(i, *pair) for i, pair in enumerate(texts)]}
        return _with_usage(answer, usage, faults)
    pieces: list[tuple[int, str, str | None]]
    pieces = [(i, piece, None) for i, (text, _) in enumerate(texts) for piece in _split(text, headers)]
    pieces += [(i, "", finish) for i, (_, finish) in enumerate(texts)]  # each choice's finish chunk
    extra = _chunk_usage(body, headers, faults, usage)
    events = [{**base, "choices": [choice(*piece)], **extra} for piece in pieces]
    return _chunks_end(events, base, extra, usage)


def _embedding(item: Any, dimensions: int) -> bytes:
    """A deterministic unit vector for ``item`` (from a hash of it), as little-endian float32."""
    seed = json.dumps(item).encode()
    raw = b"".join(
        hashlib.sha256(seed + i.to_bytes(4, "little")).digest() for i in range(-(-dimensions // 32))
    )
    vector = [(b - 127.5) / 127.5 for b in raw[:dimensions]]
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return struct.pack(f"<{dimensions}f", *(v / norm for v in vector))


def _embeddings(body: JSONDict, headers: dict[str, str], num: int, faults: set[str]) -> _Reply:
    given = body.get("input")
    one_token_list = isinstance(given, list) and given and all(isinstance(t, int) for t in given)
    inputs = [given] if isinstance(given, str) or one_token_list else given
    if not isinstance(inputs, list) or not inputs or not all(inputs):  # an empty text or token list too
        raise _Refusal(400, "'input' must be a non-empty string or array.")
    dimensions = int(body.get("dimensions") or 8)
    data, tokens = [], 0
    for index, item in enumerate(inputs):
        tokens += _tokens(item) if isinstance(item, str) else len(item)
        packed = _embedding(item, dimensions)  # "float" answers carry these float32 values too
        vector = list(struct.unpack(f"<{dimensions}f", packed))
        embedding = base64.b64encode(packed).decode() if body.get("encoding_format") == "base64" else vector
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    answer = {"object": "list", "data": data, "model": _served_model(body, headers)}
    return _with_usage(answer, {"prompt_tokens": tokens, "total_tokens": tokens}, faults)


def _responses(body: JSONDict, headers: dict[str, str], num: int, faults: set[str]) -> _Reply | _Stream:
    _check_minimum(body, "max_output_tokens", 16)
    given = body.get("input")
    items = [{"role": "user", "content": given}] if isinstance(given, str) else []
    items = [i for i in given if isinstance(i, dict)] if isinstance(given, list) else items
    instructions = body.get("instructions")
    counted = items + ([{"content": instructions}] if isinstance(instructions, str) else [])
    input_tokens, cached, written, reasoning = _counts(counted, body.get("tools"), headers)
    text_format = (body.get("text") or {}).get("format") or {"type": "text"}
    # only json_schema: a json_object format gets plain text here
    kind = "json_schema" if text_format.get("type") == "json_schema" else None
    refusal = headers.get("x-fake-refusal")
    text = _content(kind, text_format.get("schema"), items, headers) if refusal is None else refusal
    limit, finish = body.get("max_output_tokens"), "stop"
    calls = _tool_calls(body, headers, num)
    if isinstance(limit, int):  # the limit counts the reasoning too
        reasoning = min(reasoning, limit)
        if not calls:  # a function call's arguments are never cut
            text, finish = _truncate(text, limit - reasoning)
    done = "incomplete" if finish == "length" else "completed"
    # a function_call item per tool call, else one message whose content is the text, or the refusal
    output: list[JSONDict] = _built_in_calls(body, headers, num)
    for call in calls:
        item = {
            "id": "fc_" + call["id"].removeprefix("call_"),
            "type": "function_call",
            "status": "completed",
        }
        output.append({**item, "call_id": call["id"], **call["function"]})
    if not calls:
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        part = {"type": "refusal", "refusal": text} if refusal is not None else part
        message = {"id": f"msg_fake{num}", "type": "message", "status": done, "role": "assistant"}
        output.append({**message, "content": [part]})
    produced = [_call_text(c) for c in calls] if calls else [text]
    output_tokens = sum(map(_tokens, produced)) + reasoning
    usage = {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input_tokens + output_tokens,
    }
    _add_cost(usage, headers)
    # the request's parameters, as the Response echoes them: the default where the request gave none
    echoed = {key: default if body.get(key) is None else body[key] for key, default in _ECHOED.items()}
    effort = body.get("reasoning")
    echoed["reasoning"] = {**_ECHOED["reasoning"], **(effort if isinstance(effort, dict) else {})}
    echoed["text"] = {"verbosity": "medium", **(body.get("text") or {}), "format": text_format}

    def response(status: str) -> JSONDict:
        """The Response as it is at ``status``: no output before its end, nor when it failed."""
        answer: JSONDict = {
            "id": f"resp_{num}",
            "object": "response",
            "created_at": CREATED,
            **echoed,
            "status": status,
            "completed_at": CREATED + 1 if status == "completed" else None,
            "error": {"code": "server_error", "message": STREAM_ERROR} if status == "failed" else None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "model": _served_model(body, headers),
            "output": [] if status in ("in_progress", "failed") else output,
            "service_tier": _served_tier(body),
        }
        if status == "in_progress":
            answer["usage"] = None
        elif "no-usage" not in faults:
            answer["usage"] = usage
        return answer

    if not body.get("stream"):
        return _Reply(response(done))
    created = ("response.created", {"response": response("in_progress")})
    in_items = [e for index, item in enumerate(output) for e in _item_events(index, item, headers)]
    if {"stream-error", "stream-error-object"} & faults:  # an error event after the first delta, the end
        first = [e for e in in_items if e[0].endswith(".delta")][:1]
        error: JSONDict = {"code": "server_error", "message": STREAM_ERROR, "param": None}
        if "stream-error-object" in faults:  # its error in an object, which the SDK raises APIError for
            error = {"error": {**error, "type": "server_error"}}
        events = [created, *first, ("error", error)]
    else:
        final = response("failed" if "response-failed" in faults else done)
        in_progress = ("response.in_progress", {"response": response("in_progress")})
        events = [created, in_progress, *in_items, (f"response.{final['status']}", {"response": final})]
    return _Stream([{"type": t, "sequence_number": n, **e} for n, (t, e) in enumerate(events)], done=False)


def _compact(body: JSONDict, headers: dict[str, str], num: int, faults: set[str]) -> _Reply:
    """A CompactedResponse: the input's user messages, then one compaction item; its usage and tier
    those of a Response to the same input."""
    reply = _responses({**body, "stream": False, "tools": None}, headers, num, faults)
    answer = reply.body if isinstance(reply, _Reply) else {}
    given = body.get("input")
    items = [{"role": "user", "content": given}] if isinstance(given, str) else given
    output: list[JSONDict] = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and item.get("role") == "user":
            parts = [{"type": "input_text", "text": text} for text in _parts(item.get("content"))[0]]
            message = {"id": f"msg_user{num}_{len(output)}", "type": "message", "status": "completed"}
            output.append({**message, "role": "user", "content": parts})
    output.append({"id": f"cmp_{num}", "type": "compaction", "encrypted_content": "fake-compaction"})
    compacted = {
        "id": f"resp_{num}",
        "object": "response.compaction",
        "created_at": CREATED,
        "output": output,
    }
    return _Reply({**compacted, "usage": answer.get("usage"), "service_tier": answer.get("service_tier")})


def _item_events(index: int, item: JSONDict, headers: dict[str, str]) -> list[tuple[str, JSONDict]]:
    """The stream events (type, fields) of one output item: added; a built-in tool call's
    ``in_progress`` and ``completed``, or the text's deltas (in ``x-fake-chunks`` pieces) and done (a
    message's between its content part's added and done); done."""
    at: JSONDict = {"item_id": item["id"], "output_index": index}
    added: JSONDict = {**item, "status": "in_progress"}

    def said(kind: str, key: str, text: str, at: JSONDict, extra: JSONDict) -> list[tuple[str, JSONDict]]:
        deltas = [(f"response.{kind}.delta", {**at, "delta": p, **extra}) for p in _split(text, headers) if p]
        return [*deltas, (f"response.{kind}.done", {**at, key: text, **extra})]

    if item["type"] == "function_call":
        added["arguments"] = ""
        steps = said("function_call_arguments", "arguments", item["arguments"], at, {})
    elif item["type"] == "message":
        [part] = item["content"]  # output_text (its deltas carry logprobs) or refusal
        key = "refusal" if part["type"] == "refusal" else "text"
        extra: JSONDict = {"logprobs": []} if key == "text" else {}
        at, added["content"] = {**at, "content_index": 0}, []
        steps = [
            ("response.content_part.added", {**at, "part": {**part, key: ""}}),
            *said(part["type"], key, part[key], at, extra),
            ("response.content_part.done", {**at, "part": part}),
        ]
    else:  # a built-in tool's call
        steps = [(f"response.{item['type']}.{step}", at) for step in ("in_progress", "completed")]
    added_event = ("response.output_item.added", {"output_index": index, "item": added})
    return [added_event, *steps, ("response.output_item.done", {"output_index": index, "item": item})]


# Images and audio: their uploads come as multipart forms (a file field is {"filename", "size"})

# gpt-image-1's output tokens per image of 1024x1024, by quality (OpenAI's image pricing table)
_IMAGE_TOKENS = {"low": 272, "medium": 1056, "high": 4160, "auto": 1056}
_IMAGE_INPUT_TOKENS = 388  # the input image tokens of each uploaded image


def _files(body: JSONDict, name: str) -> list[JSONDict]:
    """The files uploaded as the form field ``name``, or ``name[]`` (sent more than once)."""
    return [f for f in [body.get(name), *(body.get(name + "[]") or [])] if isinstance(f, dict)]


def _streamed(body: JSONDict) -> bool:
    """Whether an images or audio request asks for a stream (a form sends ``stream`` as text)."""
    return body.get("stream") in (True, "true", "True")


def _images(
    body: JSONDict, headers: dict[str, str], num: int, faults: set[str], kind: str = "image_generation"
) -> _Reply | _Stream:
    """An images answer: GPT Image models report token usage, DALL·E's none. Streamed (GPT Image
    models), ``partial_images`` events ``{kind}.partial_image`` then one ``{kind}.completed``."""
    uploads = len(_files(body, "image")) if kind == "image_edit" else 0
    if kind == "image_edit" and not uploads:
        raise _Refusal(400, "'image' is required: upload it as a file field.", param="image")
    n = int(body.get("n") or 1)
    model = str(body["model"])
    if not model.startswith("gpt-image"):
        data = [{"url": f"https://images.example/fake-{i}.png"} for i in range(n)]
        return _Reply({"created": CREATED, "data": data})
    quality = str(body.get("quality") or "auto")
    text = _tokens(str(body.get("prompt") or ""))
    images = uploads * _IMAGE_INPUT_TOKENS
    output = n * _IMAGE_TOKENS.get(quality, _IMAGE_TOKENS["auto"])
    usage = {
        "input_tokens": text + images,
        "input_tokens_details": {"image_tokens": images, "text_tokens": text},
        "output_tokens": output,
        "total_tokens": text + images + output,
    }
    image = {
        "b64_json": _PNG, "background": "opaque", "output_format": "png",
        "quality": "medium" if quality == "auto" else quality, "size": "1024x1024",
    }  # fmt: skip
    if _streamed(body):
        partial = [
            {"type": f"{kind}.partial_image", "partial_image_index": i, "created_at": CREATED, **image}
            for i in range(int(body.get("partial_images") or 0))
        ]
        done = {"type": f"{kind}.completed", "created_at": CREATED, **image}
        return _Stream([*partial, done if "no-usage" in faults else {**done, "usage": usage}], done=False)
    answer = {"created": CREATED, "data": [{"b64_json": _PNG} for _ in range(n)], **image}
    del answer["b64_json"]  # in each image, not beside them
    return _with_usage(answer, usage, faults)


def _audio_text(
    body: JSONDict, headers: dict[str, str], num: int, faults: set[str], task: str = "transcribe"
) -> _Reply | _Stream:
    """A transcription or translation of the uploaded ``file``: gpt-4o models report tokens (the
    audio's, a token per 100 bytes), whisper-1 seconds (a second per 16,000 bytes). A streamed
    transcription: ``transcript.text.delta`` events, then ``transcript.text.done`` with the usage."""
    uploads = _files(body, "file")
    if not uploads:
        raise _Refusal(400, "'file' is required: upload the audio as a file field.", param="file")
    text = _reply_text(str(body.get("prompt") or "the recording"), headers)
    size = int(uploads[0]["size"])
    audio = max(1, size // 100)
    if str(body["model"]).startswith("whisper") or task == "translate":
        usage: JSONDict = {"type": "duration", "seconds": max(1, size // 16_000)}
    else:
        prompt = _tokens(str(body.get("prompt") or ""))
        output = _tokens(text)
        usage = {
            "type": "tokens", "input_tokens": audio + prompt,
            "input_token_details": {"audio_tokens": audio, "text_tokens": prompt},
            "output_tokens": output, "total_tokens": audio + prompt + output,
        }  # fmt: skip
    if _streamed(body) and task == "transcribe":
        deltas = [{"type": "transcript.text.delta", "delta": p} for p in _split(text, headers) if p]
        done = {
            "type": "transcript.text.done",
            "text": text,
            **({} if "no-usage" in faults else {"usage": usage}),
        }
        return _Stream(deltas if "no-done" in faults else [*deltas, done], done=False)
    kind = body.get("response_format") or "json"
    if kind == "text":
        return _Reply(text.encode(), content_type="text/plain; charset=utf-8")
    answer: JSONDict = {"text": text}
    if kind == "verbose_json":
        answer = {"task": task, "language": "english", "duration": usage.get("seconds", 1.0), **answer}
    return _with_usage(answer, usage, faults) if task == "transcribe" else _Reply(answer)


def _speech(body: JSONDict, headers: dict[str, str], num: int, faults: set[str]) -> _Reply | _Stream:
    """Speech of ``input``: audio bytes (an MP3 frame header, not UTF-8, and a byte per character), no
    usage. With ``stream_format: "sse"`` (not for tts-1): the audio in ``speech.audio.delta`` events
    (base64, in ``x-fake-chunks`` pieces), then ``speech.audio.done`` with the usage: the input's text
    tokens, and an audio token per character spoken."""
    text = body.get("input")
    if not isinstance(text, str) or not text:
        raise _Refusal(400, "'input' must be a non-empty string.", param="input")
    audio = SPEECH_HEAD + bytes(len(text))
    if body.get("stream_format") != "sse":
        return _Reply(audio, content_type="audio/mpeg")
    if str(body["model"]).startswith("tts-1"):
        message = "stream_format 'sse' is not supported for tts-1 or tts-1-hd."
        raise _Refusal(400, message, param="stream_format")
    pieces = [p.encode("latin-1") for p in _split(audio.decode("latin-1"), headers)]
    deltas = [{"type": "speech.audio.delta", "audio": base64.b64encode(p).decode()} for p in pieces]
    usage = {"input_tokens": _tokens(text), "output_tokens": len(text)}
    usage["total_tokens"] = usage["input_tokens"] + len(text)
    done = {"type": "speech.audio.done", **({} if "no-usage" in faults else {"usage": usage})}
    return _Stream(deltas if "no-done" in faults else [*deltas, done], done=False)


def _video(
    body: JSONDict, headers: dict[str, str], num: int, faults: set[str], remixed: str | None = None
) -> _Reply:
    """A video generation job (Sora), answered queued, as ``videos.create()`` is, and its edit,
    extension or remix (of the video ``remixed``): no usage (billed per second of video); ``model``
    ``sora-2`` when the request names none."""
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise _Refusal(400, "'prompt' must be a non-empty string.", param="prompt")
    return _Reply({
        "id": f"video_fake{num}", "object": "video", "created_at": CREATED, "completed_at": None,
        "expires_at": None, "error": None, "model": body.get("model") or "sora-2", "progress": 0,
        "prompt": prompt, "remixed_from_video_id": remixed, "seconds": str(body.get("seconds") or "4"),
        "size": str(body.get("size") or "720x1280"), "status": "queued",
    })  # fmt: skip


def _body(raw: bytes, content_type: str) -> Any:
    """The JSON body, or a multipart form's fields (an upload's: images, audio): text as str, a file as
    {"filename", "size"} (its bytes are not kept), a field sent more than once (``image[]``) as the list
    of them. None for a form that does not parse; ValueError for JSON that does not."""
    if not content_type.lower().startswith("multipart/form-data"):
        return json.loads(raw)
    message = email.message_from_bytes(
        b"content-type: " + content_type.encode() + b"\r\n\r\n" + raw, policy=email.policy.HTTP
    )
    if not message.is_multipart():
        return None
    form: JSONDict = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        data = part.get_payload(decode=True)
        data = data if isinstance(data, bytes) else b""
        filename = part.get_filename()
        value: Any = {"filename": filename, "size": len(data)} if filename is not None else data.decode()
        if name.endswith("[]"):
            form.setdefault(name, []).append(value)
        else:
            form[name] = value
    return form


# the request parameters every Response echoes, as OpenAI's do: each one's value when not given
_ECHOED: JSONDict = {
    "background": False, "instructions": None, "max_output_tokens": None, "max_tool_calls": None,
    "metadata": {}, "parallel_tool_calls": True, "previous_response_id": None, "prompt_cache_key": None,
    "reasoning": {"effort": None, "summary": None}, "safety_identifier": None, "store": True,
    "temperature": 1.0, "tool_choice": "auto", "tools": [], "top_logprobs": 0, "top_p": 1.0,
    "truncation": "disabled", "user": None,
}  # fmt: skip
_QUERY_VALUE = re.compile(r"([?&][^=&\s]*=)[^&\s]*")  # a query parameter's name, then its value
# Azure's deployment paths, and its paths of no deployment (``/openai/responses``, as the SDK's
# AzureOpenAI calls the Responses API), served as the plain ``/v1`` ones
_AZURE_DEPLOYMENT = re.compile(r"^(?:/openai)?(?:/v1)?/deployments/[^/]+(?=/)|^/openai(?=/(?!v1/))")
_ROUTES: dict[str, Callable[[JSONDict, dict[str, str], int, set[str]], _Reply | _Stream]] = {
    "/v1/chat/completions": _chat,
    "/v1/responses": _responses,
    "/v1/responses/compact": _compact,
    "/v1/embeddings": _embeddings,
    "/v1/completions": _completions,
    "/v1/images/generations": _images,
    "/v1/images/edits": functools.partial(_images, kind="image_edit"),
    "/v1/images/variations": functools.partial(_images, kind="image_edit"),
    "/v1/audio/transcriptions": _audio_text,
    "/v1/audio/translations": functools.partial(_audio_text, task="translate"),
    "/v1/audio/speech": _speech,
    "/v1/videos": _video,
    "/v1/videos/edits": _video,
    "/v1/videos/extensions": _video,
}
_REMIX = re.compile(r"^/v1/videos/([^/]+)/remix$")


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
    # per request (a handler serves every request of its connection): the answer's Content-Encoding
    # (x-fake-encoding, "" for none), the `slow` fault's delay, the request's number and arrival, and
    # the server's reset() count when its head was read (see _dispatch)
    _encoding, _delay, _num, _started, _generation = "", 0.0, 0, 0.0, 0

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
        if self.server.fake.verbose:  # a query's values may be credentials (Azure's ?api-key=): masked
            super().log_message("%s", _QUERY_VALUE.sub(r"\1***", format % args))

    def _read_body(self) -> bytes:
        """The body; :class:`_Refusal` for one whose length cannot be read or is over the limit."""
        limit = f"over the fake server's {MAX_BODY_BYTES} bytes."
        if "chunked" not in self.headers.get("transfer-encoding", "").lower():
            length = self.headers.get("content-length") or "0"
            if not length.strip().isdigit():
                raise _Refusal(400, f"Content-Length {length!r} is not a number of bytes.")
            if int(length) > MAX_BODY_BYTES:
                raise _Refusal(413, f"Content-Length {length} is {limit}")
            return self.rfile.read(int(length))
        data = bytearray()
        while True:
            size = self.rfile.readline(1024).split(b";")[0].strip() or b"0"
            if not re.fullmatch(rb"[0-9a-fA-F]+", size):
                raise _Refusal(400, f"chunk size {size.decode(errors='replace')!r} is not hexadecimal.")
            if len(data) + int(size, 16) > MAX_BODY_BYTES:
                raise _Refusal(413, f"the body is {limit}")
            if not int(size, 16):
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # the trailer
                    pass
                return bytes(data)
            data += self.rfile.read(int(size, 16))
            self.rfile.readline()

    def _dispatch(self) -> None:
        self._started, self._delay, self._encoding = time.monotonic(), 0.0, ""
        fake = self.server.fake
        # the request began once its head was read: one whose body still comes (an upload) at a reset()
        # belongs to the test before it, however late it arrives whole
        self._generation = fake._generation
        unreadable: _Refusal | None = None
        try:
            raw = self._read_body()
        except _Refusal as exc:  # where this body ends, and the next request starts, is unknown
            raw, unreadable = b"", exc
            self.close_connection = True
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            body = _body(raw, headers.get("content-type", ""))
        except ValueError:  # an empty or malformed body
            body = None
        url = urlsplit(self.path)
        route = _AZURE_DEPLOYMENT.sub("/v1", url.path)
        route = route[route.find("/v1/") :] if route.find("/v1/") > 0 else route  # a proxy's prefix
        retry = headers.get("x-stainless-retry-count", "")
        retries = int(retry) if retry.isdigit() else None
        # numbered, and given its queued failure, on arrival: not when a `slow` fault's delay ends
        self._num, failure = fake._arrived(
            RecordedRequest(self.command, url.path, headers, body, raw, retries, url.query), self._generation
        )
        faults = {f.strip() for f in headers.get("x-fake-fault", "").split(",") if f.strip()}
        attempts = headers.get("x-fake-fault-attempts", "").strip()
        if attempts.isdigit() and (retries or 0) >= int(attempts):  # a retry past them: answered whole
            faults.clear()
        if _AZURE_DEPLOYMENT.match(url.path):
            faults.add("azure")  # not a fault: how Azure's answers differ
        try:
            if unreadable is not None:
                raise unreadable
            _check_headers(headers)
            if "slow" in faults:
                self._delay = _count(headers, "delay-ms", 50) / 1000
                if self.server.stopping.wait(self._delay):
                    self.close_connection = True
                    return
            reply = self._answer(route, headers, body, faults, failure)
        except _Refusal as exc:
            reply = exc.reply
        except Exception as exc:  # a request the fake does not understand: answer like a server bug would
            reply = _Refusal(500, f"fake server error: {exc!r}").reply
        fake._answered(self._generation, route, reply)
        self._send(reply, faults, headers)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch  # the rest get http.server's 501

    def _answer(
        self, path: str, headers: dict[str, str], body: Any, faults: set[str], failure: _Reply | None
    ) -> _Reply | _Stream:
        # the body is compressed as x-fake-encoding asks when the request's Accept-Encoding offers it
        # (a server sends no encoding the client did not offer)
        wanted = headers.get("x-fake-encoding", "").strip()
        offered = {p.split(";")[0].strip().lower() for p in headers.get("accept-encoding", "").split(",")}
        if wanted and wanted in offered:
            try:
                _encoder(wanted)
            except ImportError as exc:
                raise _Refusal(400, f"x-fake-encoding: {wanted} needs {exc.name} in the server.") from None
            self._encoding = wanted
        if failure is not None:
            return failure
        status = _count(headers, "status")
        if status == 401:
            key = headers.get("api-key") or headers.get("authorization", "").removeprefix("Bearer ")
            raise _Refusal(401, f"Incorrect API key provided: {key}.", {"retry-after-ms": "1"})
        if status:
            raise _Refusal(status, headers={"retry-after-ms": "1"})
        if "not-json" in faults:
            return _Reply(b"<html>oops</html>")
        if path.startswith("/v1/responses/") and path not in _ROUTES:  # a stored Response's GET, cancel
            return self.server.fake._stored(self.command, path, urlsplit(self.path).query)
        remix = _REMIX.match(path)
        endpoint = functools.partial(_video, remixed=remix[1]) if remix else _ROUTES.get(path)
        if self.command != "POST" or endpoint is None:
            raise _Refusal(404, f"Invalid URL ({self.command} {path})")
        if not isinstance(body, dict):
            raise _Refusal(400, "We could not parse the JSON body of your request (fake).")
        if not isinstance(body.get("model"), str) and not path.startswith("/v1/videos"):  # a video's defaults
            raise _Refusal(400, "You must provide a model parameter.")
        reply = endpoint(body, headers, self._num, faults)
        if path != "/v1/responses":
            return reply
        # a background response answered whole is streamed too when retrieved with stream=true
        whole = isinstance(reply, _Reply) and body.get("background") is True
        streamed = _responses({**body, "stream": True}, headers, self._num, faults) if whole else reply
        return self.server.fake._store(body, headers, reply, streamed)

    def _send(self, reply: _Reply | _Stream, faults: set[str], headers: dict[str, str]) -> None:
        """Send ``reply``; under the ``cut-stream`` and ``reset`` faults, its first half then the end of the
        connection (FIN or RST)."""
        cut = bool({"cut-stream", "reset"} & faults)
        close_delimited = headers.get("x-fake-transfer") == "close"
        compress, end = _encoder(self._encoding)
        if isinstance(reply, _Reply):
            raw = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
            body = compress(raw) + end()
            self._send_head(
                reply.status, {**reply.headers, "content-length": str(len(body))}, reply.content_type
            )
            self.wfile.write(body[: len(body) // 2] if cut else body)
        else:
            framing = {"connection": "close"} if close_delimited else {"transfer-encoding": "chunked"}
            self._send_head(200, {"cache-control": "no-cache", **framing}, "text/event-stream; charset=utf-8")
            events = [*map(_sse, reply.events), *([b"data: [DONE]\n\n"] if reply.done else [])]
            ending = {"crlf": b"\r\n", "cr": b"\r"}.get(headers.get("x-fake-line-ending", ""))
            if ending:  # as some proxies send them
                events = [event.replace(b"\n", ending) for event in events]

            def write(data: bytes) -> None:
                self.wfile.write(data if close_delimited else b"%x\r\n%s\r\n" % (len(data), data))

            for index, event in enumerate(events[: len(events) // 2] if cut else events):
                if index and self._delay and self.server.stopping.wait(self._delay):
                    self.close_connection = True  # stopping: no more of it
                    return
                write(compress(event))
            if not cut:
                tail = end()
                if tail:  # an empty chunk would end a chunked body
                    write(tail)
                if not close_delimited:
                    self.wfile.write(b"0\r\n\r\n")
        if cut:
            self.close_connection = True
            if "reset" in faults:
                time.sleep(0.02)  # let the client read what was sent before the RST
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                # detach() leaves the socket object (still used by rfile/wfile/finish()) closed and inert
                os.close(self.connection.detach())

    def _send_head(self, status: int, extra: dict[str, str], content_type: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        if self._encoding:
            self.send_header("content-encoding", self._encoding)
        self.send_header("x-request-id", f"req_{self._num}")
        self.send_header("openai-processing-ms", str(int((time.monotonic() - self._started) * 1000)))
        for name, value in {**RESPONSE_HEADERS, **extra}.items():
            self.send_header(name, value)
        self.end_headers()


class FakeOpenAI:
    """A loopback OpenAI-compatible server with deterministic text and usage, to point the real SDK at:
    ``base_url`` for the client, ``requests`` and ``answers`` as received and sent, ``fail_next()`` to
    queue errors; ``start()`` (or ``with``) runs it in a daemon thread, ``websocket_base_url`` starts its
    WebSockets. ``x-fake-*`` request headers steer it (faults too): the reference is docs/FAKE_SERVER.md.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, verbose: bool = False, history: bool = True
    ) -> None:
        self.host = host
        self.port: int = port
        self.verbose = verbose
        self.history = history  # False: keep no requests, answers or events (a server left running)
        self.requests: list[RecordedRequest] = []
        self.answers: list[RecordedAnswer] = []
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        self._generation = 0  # how many reset()s so far: a request begun before one is forgotten
        self._failures: list[_Reply] = []  # queued by fail_next(), one per request
        self._responses: dict[str, _Job] = {}  # the last Responses answered, by id, for GET and cancel
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._realtime: RealtimeServer | None = None

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1``; with port 0, known only once ``start()`` has picked the port."""
        if self.port == 0:
            raise RuntimeError("FakeOpenAI(port=0) picks its port in start(): read base_url after start()")
        return f"http://{self.host}:{self.port}/v1"

    @property
    def websocket_base_url(self) -> str:
        """``ws://HOST:PORT2/v1``, the Realtime and Responses APIs' (a client's ``websocket_base_url``): a
        ``websockets`` server on a port of its own, started at the first read (docs/FAKE_SERVER.md)."""
        from ._fake_realtime import RealtimeServer  # it imports this module

        with self._lock:
            if self._realtime is None:
                self._realtime = RealtimeServer(self.host, self.history)
        return f"ws://{self.host}:{self._realtime.port}/v1"

    @property
    def realtime_events(self) -> list[JSONDict]:
        """Every client event the WebSocket server received (Realtime and Responses), in order."""
        return [] if self._realtime is None else self._realtime.received

    def start(self) -> FakeOpenAI:
        if self._server is None:
            self._server = _Server((self.host, self.port), self)
            self.port = int(self._server.server_address[1])
            self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        realtime, self._realtime = self._realtime, None
        if realtime is not None:
            realtime.stop()
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.stopping.set()
        shutdown_now(server)
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

    def __exit__(self, *exc_info: object) -> None:
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
        answer = _Reply(
            error_body(status) if body is None else body, status, {"retry-after-ms": "1", **(headers or {})}
        )
        with self._lock:
            self._failures += [answer] * times

    def reset(self) -> None:
        """Forget recorded requests and answers (Realtime events too), and queued failures; a request
        begun before, still on its way (a `slow` one its client gave up on, an upload still coming),
        too: neither it nor its answer is recorded, and it takes no failure queued after."""
        with self._lock:
            self._generation += 1
            self.requests.clear()
            self.answers.clear()
            self._failures.clear()
            self._responses.clear()
            if self._realtime is not None:
                self._realtime.received.clear()

    def _store(
        self, body: JSONDict, headers: dict[str, str], reply: _Reply | _Stream, streamed: _Reply | _Stream
    ) -> _Reply | _Stream:
        """Keep a Response answered (its stream's last event's) for ``GET /v1/responses/{id}``. One asked
        for with ``background: true`` runs on: answered ``queued`` (a stream: its ``response.created``
        says so), ``in_progress`` to the first ``x-fake-polls`` retrieves (1 unless given),
        then as it ended."""
        background = body.get("background") is True  # the Response echoes it
        events = streamed.events if isinstance(streamed, _Stream) else []
        last = events[-1].get("response") if events else None  # a stream's Response, as it ended
        final = reply.body if isinstance(reply, _Reply) else last
        if not isinstance(final, dict) or not isinstance(final.get("id"), str):
            return reply  # an error answer, a stream ending in an error event: nothing to keep
        if background and events:
            events[0]["response"]["status"] = "queued"
        polls = _count(headers, "polls", 1) if background else 0
        with self._lock:
            self._responses[final["id"]] = _Job(final, events, polls)
            while len(self._responses) > 1000:
                del self._responses[next(iter(self._responses))]
        if background and isinstance(reply, _Reply):
            return _Reply(_running(final, "queued"))
        return reply

    def _stored(self, method: str, path: str, query: str) -> _Reply | _Stream:
        """``GET /v1/responses/{id}`` (``?stream=true&starting_after=N``: its events after N) and
        ``POST /v1/responses/{id}/cancel``: a background Response running, ended, or cancelled."""
        response_id, _, action = path.removeprefix("/v1/responses/").partition("/")
        if (method, action) not in (("GET", ""), ("POST", "cancel")):
            raise _Refusal(404, f"Invalid URL ({method} {path})")
        params = dict(parse_qsl(query))
        with self._lock:
            job = self._responses.get(response_id)
            if job is None:
                raise _Refusal(404, f"No response found with id '{response_id}'.", param="response_id")
            if action == "cancel":
                if job.final["background"] is not True:
                    raise _Refusal(400, "Only responses created with background=true can be cancelled.")
                if job.polls > 0:  # still running: cancelled, with no usage (as OpenAI answers it)
                    job.final, job.events, job.polls = _running(job.final, "cancelled"), job.events[:1], 0
                return _Reply(job.final)
            if params.get("stream") == "true":
                after = params.get("starting_after", "-1")
                if not after.lstrip("-").isdigit():
                    raise _Refusal(400, f"starting_after: {after!r} is not a sequence number.")
                job.polls = 0  # a stream runs with it to its end
                return _Stream([e for e in job.events if e["sequence_number"] > int(after)], done=False)
            if job.polls > 0:
                job.polls -= 1
                return _Reply(_running(job.final, "in_progress"))
            return _Reply(job.final)

    def _arrived(self, request: RecordedRequest, generation: int) -> tuple[int, _Reply | None]:
        """Record ``request``, begun after ``generation`` resets: its number, and the failure queued
        for it (none for a request begun before the last reset)."""
        with self._lock:
            if generation != self._generation:
                return next(self._counter), None
            if self.history:
                self.requests.append(request)
            return next(self._counter), self._failures.pop(0) if self._failures else None

    def _answered(self, generation: int, path: str, reply: _Reply | _Stream) -> None:
        if not self.history:
            return
        status, body = (200, reply.events) if isinstance(reply, _Stream) else (reply.status, reply.body)
        answer = RecordedAnswer(path, status, None if isinstance(body, bytes) else body)
        with self._lock:
            if generation == self._generation:
                self.answers.append(answer)


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
    # history=False: it runs until Ctrl-C, and nobody reads what it received (it would grow without end)
    server = listening(FakeOpenAI(args.host, args.port, verbose=not args.quiet, history=False).start, args)
    print(f"fake OpenAI serving on {server.base_url} (Ctrl-C to stop)", flush=True)
    with contextlib.suppress(RuntimeError):  # the WebSockets, on a port of their own, need websockets
        print(f"Realtime and Responses APIs on {server.websocket_base_url} (websocket_base_url)", flush=True)
    try:
        while True:  # until Ctrl-C: the KeyboardInterrupt is main()'s exit status 130
            time.sleep(3600)
    finally:
        server.stop()
