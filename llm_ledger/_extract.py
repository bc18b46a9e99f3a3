"""Read the shape of a request body and of an SDK response, without copying content: responses are
read by attribute or ``__dict__``, never ``model_dump``-ed (that would cost more than the ledger).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import orjson

from ._records import IMAGES, RequestShape, ResponseShape, Usage

__all__ = [
    "EMPTY_REQUEST",
    "OPERATIONS",
    "TOOL_KINDS",
    "JsonView",
    "body_view",
    "no_usage",
    "output_text",
    "reasoning_in_completion",
    "request_shape",
    "response_shape",
    "speech_usage",
    "usage_of",
]

# SDK request path -> operation name (OpenTelemetry's gen_ai.operation.name where one exists)
OPERATIONS: dict[str, str] = {
    "/chat/completions": "chat",
    "/embeddings": "embeddings",
    "/responses": "responses",
    "/responses/compact": "responses",  # the model run over a conversation: billed its tokens as a Response
    "/completions": "text_completion",  # the legacy text completions (vLLM and others serve it)
    # billed, though not priced by tokens alone (docs/PRICING.md, "Images and audio"); uploads are
    # multipart: their form fields arrive here as the body, their files never do
    "/images/generations": "image_generation",
    "/images/edits": "image_edit",
    "/images/variations": "image_variation",
    "/audio/transcriptions": "transcription",
    "/audio/translations": "translation",
    "/audio/speech": "speech",
    "/videos": "video_generation",  # Sora, billed per second of video: no usage in its answer
    "/videos/edits": "video_generation",  # so are an edit and an extension (and a remix: _instrument)
    "/videos/extensions": "video_generation",
}

# Responses output items of the built-in tools billed per use, beside the tokens (docs/PRICING.md,
# "Built-in tools"): the item type -> the kind recorded in response.tool_uses
_BILLED_TOOLS = {
    "web_search_call": "web_search",
    "file_search_call": "file_search",
    "code_interpreter_call": "code_interpreter",
    "image_generation_call": "image_generation",
}
TOOL_KINDS = tuple(_BILLED_TOOLS.values())  # the kinds a price file's tool_fees may price

_IMAGE_PARTS = frozenset({"image_url", "input_image"})
_TEXT_PARTS = frozenset({"text", "input_text", "output_text"})
_SYSTEM_ROLES = frozenset({"system", "developer"})


def _text_and_images(content: Any) -> tuple[int, int]:
    if isinstance(content, str):
        return len(content), 0
    chars = images = 0
    if isinstance(content, (list, tuple)):
        for part in content:
            if type(part) is not dict and not isinstance(part, Mapping):  # an ABC check costs a call
                continue
            kind = part.get("type")
            if kind in _TEXT_PARTS:
                text = part.get("text")
                if isinstance(text, str):
                    chars += len(text)
            elif kind in _IMAGE_PARTS:
                images += 1
    return chars, images


# the sampling and output parameters kept beside the counts, each as one JSON type (a log index maps
# a field by its first value): read only when the body holds them, as most hold one or two
_FLOATS = frozenset({"temperature", "top_p", "frequency_penalty", "presence_penalty"})
_INTEGERS = frozenset({"seed", "n", "dimensions"})
_STRINGS = frozenset({"service_tier", "reasoning_effort", "encoding_format", "verbosity"})
_PARAMETERS = _FLOATS | _INTEGERS | _STRINGS | {"tools", "reasoning", "response_format", "text", "stop"}
_INT64 = 2**63  # integers outside a signed 64-bit one are null: what indexes and OpenTelemetry hold
# a request's shape before its body is read (nulls, counts 0, flags false), in the record's order
EMPTY_REQUEST = cast(
    RequestShape,
    dict.fromkeys(RequestShape.__annotations__)
    | dict.fromkeys(("system_prompt_length", "user_prompt_length", "image_count", "tools_count"), 0)
    | dict.fromkeys(("has_images", "stream"), False),
)


def request_shape(operation: str, body: Mapping[str, Any], *, stream: bool) -> RequestShape:
    """Counts and parameters of one request; text is measured in characters, never copied."""
    if operation == "chat":  # the common case first and compact: this runs cold on every call
        system = user = images = 0
        messages_count: int | None = None
        messages = body.get("messages")
        if isinstance(messages, (list, tuple)):
            messages_count = len(messages)
            for message in messages:
                if type(message) is not dict and not isinstance(message, Mapping):
                    continue
                content = message.get("content")
                if type(content) is str:
                    chars = len(content)
                else:
                    chars, found = _text_and_images(content)
                    images += found
                role = message.get("role")
                if role == "user":
                    user += chars
                elif role in _SYSTEM_ROLES:
                    system += chars
        max_tokens = body.get("max_completion_tokens")
        if max_tokens is None:
            max_tokens = body.get("max_tokens")
    else:
        messages_count, system, user, images, max_tokens = _input_shape(operation, body)
    model = body.get("model")
    shape: RequestShape = {
        **EMPTY_REQUEST,
        "model": model if type(model) is str else None,  # a number or dict is the server's to refuse
        "max_tokens": max_tokens if type(max_tokens) is int else None,
        "messages_count": messages_count,
        "system_prompt_length": system,
        "user_prompt_length": user,
        "has_images": images > 0,
        "image_count": images,
        "stream": stream,
    }
    for key in _PARAMETERS.intersection(body):
        _parameter(shape, key, body[key])
    return shape


def _parameter(shape: Any, key: str, value: Any) -> None:
    """Set the field of one parameter of the body in ``shape``; a value of another type (not a
    number, a string where a number goes, a bool where an integer goes) stays null."""
    kind = type(value)
    if key in _FLOATS:
        if kind is float:
            shape[key] = value
        elif kind is int and -_INT64 <= value < _INT64:
            shape[key] = float(value)  # an integer 0 or 1 first would make an index cut every later 0.7
    elif key in _INTEGERS:
        if kind is int and -_INT64 <= value < _INT64:
            shape[key] = value
    elif key in _STRINGS:
        if kind is str:
            shape[key] = value
    elif key == "tools":
        if isinstance(value, (list, tuple)):
            shape["tools_count"] = len(value)
    elif key == "stop":  # a string or a list of them (chat, text completions): always a list
        if kind is str:
            shape["stop_sequences"] = [value]
        elif isinstance(value, (list, tuple)) and all(type(v) is str for v in value):
            shape["stop_sequences"] = list(value)
    elif type(value) is dict or isinstance(value, Mapping):
        if key == "reasoning":  # the Responses API's {"effort": ...}; chat's reasoning_effort wins
            effort = value.get("effort")
            if type(effort) is str and shape["reasoning_effort"] is None:
                shape["reasoning_effort"] = effort
        else:  # chat's response_format {"type": ...}, the Responses API's text {"format": {"type": ...}}
            found = value.get("format") if key == "text" else value
            output = found.get("type") if type(found) is dict or isinstance(found, Mapping) else None
            if type(output) is str:
                shape["output_type"] = output
            verbosity = value.get("verbosity") if key == "text" else None  # the Responses API's
            if type(verbosity) is str and shape["verbosity"] is None:
                shape["verbosity"] = verbosity


def _input_shape(operation: str, body: Mapping[str, Any]) -> tuple[int | None, int, int, int, Any]:
    """(messages_count, system chars, user chars, images, max_tokens) of a responses / embeddings body."""
    system = user = images = 0
    messages_count: int | None = None
    if operation == "responses":
        instructions = body.get("instructions")
        if isinstance(instructions, str):
            system += len(instructions)
        items = body.get("input")
        if isinstance(items, str):
            messages_count, user = 1, len(items)
        elif isinstance(items, (list, tuple)):
            messages_count = 0
            for item in items:
                if (type(item) is not dict and not isinstance(item, Mapping)) or "role" not in item:
                    continue
                messages_count += 1
                chars, found = _text_and_images(item.get("content"))
                images += found
                if item["role"] in _SYSTEM_ROLES:
                    system += chars
                elif item["role"] == "user":
                    user += chars
        return messages_count, system, user, images, body.get("max_output_tokens")
    text = operation == "text_completion"
    # embeddings' and speech's text is its input, the others' (images, transcriptions) their prompt
    items = body.get("input" if operation in ("embeddings", "speech") else "prompt")
    if isinstance(items, str):
        user = len(items)
    elif isinstance(items, (list, tuple)):
        user = sum(len(item) for item in items if isinstance(item, str))
    return messages_count, system, user, images, body.get("max_tokens") if text else None


class JsonView:
    """A JSON object the ledger parsed itself, read by attribute as the SDK's models are (nested
    objects wrapped only when read), and by ``.get(name)`` as their ``__dict__`` is."""

    __slots__ = ("_data",)

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getattr__(self, name: str) -> Any:
        try:
            value = self._data[name]
        except KeyError:
            raise AttributeError(name) from None
        if type(value) is dict:
            return JsonView(value)
        if type(value) is list:
            return [JsonView(v) if type(v) is dict else v for v in value]
        return value

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name, default)


def body_view(response: Any) -> JsonView | None:
    """The JSON object an HTTP ``response``'s body holds, if the SDK read it (reading ``content``
    raises when it did not: the ledger never reads a body itself); None for any other body."""
    try:
        data = orjson.loads(response.content)
    except Exception:
        return None
    return JsonView(data) if type(data) is dict else None


_NO_FIELDS: dict[str, Any] = {}  # what the ledger reads of an object that is neither (a str...)


def _fields(obj: Any) -> Any:
    """An SDK object's fields, read by ``.get(name)``: a pydantic model's ``__dict__`` holds every
    declared field, and a name it lacks read by attribute goes through a slow ``__getattr__``."""
    fields = getattr(obj, "__dict__", None)
    if type(fields) is dict:
        return fields
    return obj if type(obj) is JsonView else _NO_FIELDS


def no_usage() -> Usage:
    """The usage of a call whose counts are unknown."""
    return cast(Usage, dict.fromkeys(Usage.__annotations__))


def usage_of(operation: str, usage: Any) -> Usage:
    """Normalise a chat / embeddings / responses ``usage`` object to the record's names."""
    if usage is None:
        return no_usage()
    try:
        fields = usage.__dict__
    except AttributeError:
        fields = usage if type(usage) is JsonView else _NO_FIELDS
    if operation == "responses":
        prompt = fields.get("input_tokens")
        completion = fields.get("output_tokens")
        details = fields.get("input_tokens_details")
        cached = getattr(details, "cached_tokens", None)
        written = getattr(details, "cache_write_tokens", None)
        heard = spoken = None  # the Responses API reports no audio
        reasoning = getattr(fields.get("output_tokens_details"), "reasoning_tokens", None)
        cached_heard = seen = cached_seen = 0
    elif operation == "realtime":  # a response.done's (docs/PRICING.md, "Realtime")
        prompt = fields.get("input_tokens")
        completion = fields.get("output_tokens")
        details = fields.get("input_token_details")
        cached = getattr(details, "cached_tokens", None)
        # its audio and image prompt tokens are those the cache did not serve: the others are cached_tokens'
        heard, image = getattr(details, "audio_tokens", None), getattr(details, "image_tokens", None)
        served = getattr(details, "cached_tokens_details", None)
        audio_served = getattr(served, "audio_tokens", None)
        image_served = getattr(served, "image_tokens", None)
        cached_heard = cached_seen = 0  # unless they are parts of the cached tokens (not a broken server's)
        if (
            type(audio_served) is int
            and type(image_served) is int
            and type(cached) is int
            and min(audio_served, image_served) >= 0
            and audio_served + image_served <= cached
        ):
            cached_heard, cached_seen = audio_served, image_served
        if type(heard) is int:
            heard -= min(heard, cached_heard)
        seen = image - min(image, cached_seen) if type(image) is int and image >= 0 else 0
        spoken = getattr(fields.get("output_token_details"), "audio_tokens", None)
        written = reasoning = None
    else:
        prompt = fields.get("prompt_tokens")
        completion = fields.get("completion_tokens")
        if completion is None and operation == "embeddings":
            completion = 0
        details = fields.get("prompt_tokens_details")
        cached = getattr(details, "cached_tokens", None)
        written = getattr(details, "cache_write_tokens", None)  # OpenAI's (gpt-5.6 on), OpenRouter's
        heard = getattr(details, "audio_tokens", None)
        if cached is None:  # beside prompt_tokens: the SDK's models keep undeclared fields apart
            extra = getattr(usage, "__pydantic_extra__", None)
            extra = extra if type(extra) is dict else fields
            cached = extra.get("prompt_cache_hit_tokens") or extra.get("cached_tokens")  # DeepSeek's, Kimi's
        details = fields.get("completion_tokens_details")
        reasoning = getattr(details, "reasoning_tokens", None)
        spoken = getattr(details, "audio_tokens", None)
        cached_heard = seen = cached_seen = 0
    total = fields.get("total_tokens")
    # a count that is not a whole number >= 0 (a broken compatible server) is unknown, not a crash later
    if not (type(prompt) is int and prompt >= 0):
        prompt = None
    if not (type(completion) is int and completion >= 0):
        completion = None
    if not (type(total) is int and total >= 0):
        total = None if prompt is None or completion is None else prompt + completion
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total,
        "cached_tokens": cached if type(cached) is int and cached >= 0 else 0,
        "reasoning_tokens": reasoning if type(reasoning) is int and reasoning >= 0 else 0,
        "cache_write_tokens": written if type(written) is int and written >= 0 else 0,
        "prompt_audio_tokens": heard if type(heard) is int and heard >= 0 else 0,
        "completion_audio_tokens": spoken if type(spoken) is int and spoken >= 0 else 0,
        "cached_audio_tokens": cached_heard,
        "prompt_image_tokens": seen,
        "cached_image_tokens": cached_seen,
    }


def reasoning_in_completion(usage: Usage) -> Usage:
    """``usage`` with the thinking tokens Google's and xAI's endpoints count only in ``total_tokens``
    put back in ``completion_tokens``, as OpenAI counts them (docs/PRICING.md); unchanged unless the
    total exceeds prompt plus completion, so none is billed twice."""
    prompt, completion, total = usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]
    if type(prompt) is not int or type(completion) is not int or type(total) is not int:
        return usage  # unknown counts (or a caller's dict of anything): nothing to add
    hidden = total - prompt - completion
    if hidden <= 0:
        return usage
    completion += hidden
    reasoning = usage["reasoning_tokens"]  # Gemini may report none: then the gap is its thinking
    reasoning = reasoning if type(reasoning) is int and reasoning > 0 else hidden
    return {**usage, "completion_tokens": completion, "reasoning_tokens": min(reasoning, completion)}


def response_shape(operation: str, response: Any) -> tuple[ResponseShape, Any]:
    """The response's shape and its raw ``usage`` object (``None`` when absent)."""
    try:  # the SDK's models: their __dict__ holds every declared field (see _fields)
        fields = response.__dict__
    except AttributeError:
        fields = response if type(response) is JsonView else _NO_FIELDS
    content_length: int | None
    tool_calls: int | None
    uses: dict[str, int] | None = None
    if operation == "chat":  # the common case first and compact: this runs cold on every call
        choices = fields.get("choices") or ()
        content_length = tool_calls = 0
        for choice in choices:
            try:
                message = choice.__dict__["message"].__dict__
            except (AttributeError, KeyError):  # not one of the SDK's models
                message = _fields(_fields(choice).get("message"))
            text = message.get("content")
            if text:
                content_length += len(text)
            calls = message.get("tool_calls")
            if calls:
                tool_calls += len(calls)
        finish_reason = getattr(choices[0], "finish_reason", None) if choices else None
    elif operation == "responses":
        content_length = tool_calls = 0
        for item in fields.get("output") or ():
            kind = getattr(item, "type", None)
            if kind == "message" and getattr(item, "role", None) != "user":  # a compaction's are the input's
                for part in item.content:
                    text = getattr(part, "text", None)
                    if isinstance(text, str):
                        content_length += len(text)
            elif kind == "function_call":
                tool_calls += 1
            elif type(kind) is str and kind in _BILLED_TOOLS:
                tool = _BILLED_TOOLS[kind]
                uses = uses or {}
                uses[tool] = uses.get(tool, 0) + 1
        finish_reason = getattr(fields.get("incomplete_details"), "reason", None) or fields.get("status")
    elif operation == "text_completion":
        choices = fields.get("choices") or ()
        content_length, tool_calls = sum(len(getattr(c, "text", None) or "") for c in choices), None
        finish_reason = getattr(choices[0], "finish_reason", None) if choices else None
    else:
        content_length = tool_calls = finish_reason = None
        usage = fields.get("usage")
        if usage is None and operation == "speech" and (http := fields.get("response")) is not None:
            # the SDK's HttpxBinaryResponseContent, its body read whole: audio, or the events of a
            # stream_format="sse" answer
            usage = speech_usage(http.content, http.headers.get("content-type") or "")
        if usage is not None and operation != "embeddings":  # an image or audio answer
            usage = _billed_usage(operation, usage)
            fields = {**(fields._data if type(fields) is JsonView else fields), "usage": usage}
    return (
        {
            "model": fields.get("model"),
            "id": fields.get("id"),
            "request_id": fields.get("_request_id"),
            "content_length": content_length,
            "finish_reason": finish_reason,
            "tool_calls_count": tool_calls,
            "service_tier": tier if type(tier := fields.get("service_tier")) is str else None,
            "tool_uses": uses,
        },
        fields.get("usage") or _choice_usage(operation, fields),
    )


def _choice_usage(operation: str, fields: Any) -> Any:
    """The usage a chat answer with none beside its choices has in its first choice (Moonshot's, in a
    stream without ``include_usage``; some servers' answers); None when it has none there either."""
    choices = fields.get("choices") if operation == "chat" else None
    if not choices:
        return None
    usage = getattr(choices[0], "usage", None)  # an SDK model keeps the undeclared field apart
    return JsonView(usage) if type(usage) is dict else usage


def _billed_usage(operation: str, usage: Any) -> JsonView:
    """An image or audio answer's ``usage`` in the record's terms, only where a count means what it
    means for chat (docs/PRICING.md, "Images and audio"): an image's total alone (image tokens no
    record field prices), none for a usage in seconds (whisper-1)."""
    fields = _fields(usage)
    counts: dict[str, Any] = {"total_tokens": fields.get("total_tokens")}
    if operation == "speech":
        spoken = fields.get("output_tokens")
        counts["prompt_tokens"] = fields.get("input_tokens")
        counts["completion_tokens"] = spoken
        counts["completion_tokens_details"] = {"audio_tokens": spoken}
    elif operation not in IMAGES and fields.get("type") == "tokens":
        audio = getattr(fields.get("input_token_details"), "audio_tokens", None)
        counts["prompt_tokens"] = fields.get("input_tokens")
        counts["completion_tokens"] = fields.get("output_tokens")
        counts["prompt_tokens_details"] = {"audio_tokens": audio}
    return JsonView(counts)


def speech_usage(content: bytes, content_type: str) -> JsonView | None:
    """The usage of a whole speech answer: none in audio bytes; in the events of a
    ``stream_format="sse"`` answer, that of its last (``speech.audio.done``)."""
    if not content_type.lower().startswith("text/event-stream"):
        return None
    for line in reversed(content.splitlines()):
        if line.startswith(b"data:"):
            event = orjson.loads(line[5:])
            if type(event) is dict and event.get("type") == "speech.audio.done":
                usage = event.get("usage")
                return JsonView(usage) if type(usage) is dict else None
            return None  # a stream cut before its end: no usage
    return None


def output_text(operation: str, response: Any) -> str | None:
    """The text of a chat / responses / transcription answer (captured only when content capture is on)."""
    if operation == "chat":
        return "".join(
            getattr(getattr(c, "message", None), "content", None) or "" for c in _list(response, "choices")
        )
    if operation == "responses":
        parts = [
            getattr(part, "text", None) or ""
            for item in _list(response, "output")
            if getattr(item, "type", None) == "message"
            for part in _list(item, "content")
            if getattr(part, "type", None) == "output_text"
        ]
        return "".join(parts)
    if operation == "text_completion":
        return "".join(getattr(c, "text", None) or "" for c in _list(response, "choices"))
    if operation in ("transcription", "translation"):  # response_format "text", "srt"...: the bare text
        text = response if type(response) is str else getattr(response, "text", None)
        return text if type(text) is str else None
    return None


def _list(obj: Any, name: str) -> Any:
    return getattr(obj, name, None) or ()
