"""Watching streams: counters only, never the chunks.

The SDK's ``Stream`` / ``AsyncStream`` object the caller receives stays the same object; only
its chunk iterator is wrapped and its ``close`` extended, so the caller gets exactly the chunks
it would get without the ledger (minus the usage chunk the ledger asked for on its behalf).
The record is written when the stream ends, when it is closed early, or when it is abandoned
and collected (status ``interrupted``).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from ._extract import response_shape

if TYPE_CHECKING:
    from ._monitor import LLMCallMonitor, _Call

__all__ = ["watch_stream"]

# what one chat chunk is (_StreamState.chat_chunk)
ORDINARY, FINISHED, USAGE_ONLY = 0, 1, 2


class _StreamState:
    __slots__ = (
        "__weakref__",
        "call",
        "chars",
        "finish_reason",
        "id",
        "model",
        "monitor",
        "text",
        "tool_calls",
        "usage",
    )

    def __init__(self, monitor: LLMCallMonitor, call: _Call) -> None:
        self.monitor = monitor
        self.call = call
        self.chars = 0
        self.tool_calls = 0
        self.finish_reason: str | None = None
        self.usage: Any = None
        self.model: str | None = None
        self.id: str | None = None
        self.text: list[str] | None = [] if call.content is not None else None

    def finish(self, status: str, error: BaseException | None = None) -> None:
        call = self.call
        if call.done:
            return
        try:
            response = {
                "model": self.model,
                "id": self.id,
                "request_id": call.request_id,
                "content_length": self.chars,
                "finish_reason": self.finish_reason,
                "tool_calls_count": self.tool_calls,
            }
            self.monitor._finish(
                call,
                status,  # type: ignore[arg-type]
                response,  # type: ignore[arg-type]
                self.usage,
                error=error,
                output_text="".join(self.text) if self.text is not None else None,
            )
        except Exception as exc:
            self.monitor._report("recording a stream", exc)

    def abandon(self) -> None:
        self.finish("interrupted")

    # -- chat completions ---------------------------------------------------------------------------

    def chat_chunk(self, chunk: Any) -> int:
        """Count one chunk: ORDINARY, FINISHED (the last choice finished and usage is still to
        come) or USAGE_ONLY (the final chunk with no choices and the usage).

        Most chunks skip this: ``_chat_sync`` / ``_chat_async`` count a plain text chunk inline (the
        short path), which must stay what this method does with such a chunk."""
        if self.id is None:
            self.model = chunk.model
            self.id = chunk.id
        choices = chunk.choices
        if not choices:
            usage = getattr(chunk, "usage", None)
            if usage is None:
                return ORDINARY
            self.usage = usage
            return USAGE_ONLY
        call = self.call
        finished = False
        for choice in choices:
            delta = choice.delta
            if delta is not None:
                text = delta.content
                if text:
                    if call.ttft is None:
                        call.ttft = time.perf_counter() - call.start_perf
                    self.chars += len(text)
                    if self.text is not None:
                        self.text.append(text)
                if delta.tool_calls:
                    if call.ttft is None:
                        call.ttft = time.perf_counter() - call.start_perf
                    for tool_call in delta.tool_calls:
                        if tool_call.id:
                            self.tool_calls += 1
            if choice.finish_reason:
                self.finish_reason = self.finish_reason or choice.finish_reason
                finished = True
        usage = getattr(chunk, "usage", None)
        if usage is not None:  # some compatible servers send usage on the last content chunk
            self.usage = usage
        return FINISHED if finished and self.usage is None else ORDINARY

    # -- responses ------------------------------------------------------------------------------------

    def response_event(self, event: Any) -> None:
        kind = event.type
        call = self.call
        if kind == "response.output_text.delta":
            if call.ttft is None:
                call.ttft = time.perf_counter() - call.start_perf
            self.chars += len(event.delta)
            if self.text is not None:
                self.text.append(event.delta)
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            response = event.response
            shape, usage = response_shape("responses", response)
            shape["request_id"] = call.request_id
            if self.text is not None:
                self.text = ["".join(self.text)]
            error = _ResponseFailed(getattr(response, "error", None)) if kind == "response.failed" else None
            try:
                self.monitor._finish(call, "error" if error else "ok", shape, usage, error=error)
            except Exception as exc:
                self.monitor._report("recording a stream", exc)


class _ResponseFailed(Exception):
    """Stands for a ``response.failed`` event in the record's ``error``."""

    def __init__(self, detail: Any) -> None:
        super().__init__(getattr(detail, "message", None) or "response.failed")
        self.code = getattr(detail, "code", None)


def _warm(state: _StreamState, chunk: Any) -> bool:
    """Whether the chunks after ``chunk`` may take the short path: the first token and the id are
    known (chat_chunk has nothing more to set once), and the chunks have a ``usage`` field."""
    return state.call.ttft is not None and state.id is not None and hasattr(chunk, "usage")


def _chat_sync(state: _StreamState, chunks: Iterator[Any], hide_usage: bool) -> Iterator[Any]:
    count = state.chat_chunk
    text = state.text
    warm = False  # the id and the first token are known: plain text chunks take the short path
    try:
        for chunk in chunks:
            if warm:
                # the short path (nearly every chunk): one choice, not finished, no tool call, no
                # usage; what chat_chunk would do with it, without its call and its checks
                # fields read from the models' __dict__: an attribute read on them goes through
                # pydantic's __getattr__ hook, ~7x the cost of a dict lookup
                fields = getattr(chunk, "__dict__", None)
                choices = (
                    fields.get("choices") if type(fields) is dict and fields.get("usage") is None else None
                )
                if choices and len(choices) == 1:
                    choice = getattr(choices[0], "__dict__", None)
                    delta = getattr(choice.get("delta"), "__dict__", None) if type(choice) is dict else None
                    if (
                        type(delta) is dict
                        and choice.get("finish_reason") is None  # type: ignore[union-attr]
                        and not delta.get("tool_calls")
                    ):
                        content = delta.get("content")
                        if content:
                            state.chars += len(content)
                            if text is not None:
                                text.append(content)
                        yield chunk
                        continue
            kind = count(chunk)
            warm = _warm(state, chunk)
            if kind == ORDINARY:
                yield chunk
            elif kind == USAGE_ONLY:
                state.finish("ok")
                if not hide_usage:
                    yield chunk
            else:
                # FINISHED: read the usage chunk before handing over the last content chunk, so a
                # caller that stops reading there still gets its usage recorded
                following = next(chunks, None)
                following_kind = ORDINARY if following is None else count(following)
                if following_kind == USAGE_ONLY:
                    state.finish("ok")
                yield chunk
                if following is not None and not (hide_usage and following_kind == USAGE_ONLY):
                    yield following
    except GeneratorExit:
        state.finish("interrupted")
        raise
    except BaseException as exc:
        state.finish("error", exc)
        raise
    # no finish_reason: the connection closed mid-stream without an error (close-delimited body)
    state.finish("ok" if state.finish_reason is not None else "interrupted")


async def _chat_async(
    state: _StreamState, chunks: AsyncIterator[Any], hide_usage: bool
) -> AsyncIterator[Any]:
    count = state.chat_chunk
    text = state.text
    warm = False  # the id and the first token are known: plain text chunks take the short path
    try:
        async for chunk in chunks:
            if warm:
                # the short path (nearly every chunk): one choice, not finished, no tool call, no
                # usage; what chat_chunk would do with it, without its call and its checks
                # fields read from the models' __dict__: an attribute read on them goes through
                # pydantic's __getattr__ hook, ~7x the cost of a dict lookup
                fields = getattr(chunk, "__dict__", None)
                choices = (
                    fields.get("choices") if type(fields) is dict and fields.get("usage") is None else None
                )
                if choices and len(choices) == 1:
                    choice = getattr(choices[0], "__dict__", None)
                    delta = getattr(choice.get("delta"), "__dict__", None) if type(choice) is dict else None
                    if (
                        type(delta) is dict
                        and choice.get("finish_reason") is None  # type: ignore[union-attr]
                        and not delta.get("tool_calls")
                    ):
                        content = delta.get("content")
                        if content:
                            state.chars += len(content)
                            if text is not None:
                                text.append(content)
                        yield chunk
                        continue
            kind = count(chunk)
            warm = _warm(state, chunk)
            if kind == ORDINARY:
                yield chunk
            elif kind == USAGE_ONLY:
                state.finish("ok")
                if not hide_usage:
                    yield chunk
            else:
                # FINISHED: read the usage chunk before handing over the last content chunk, so a
                # caller that stops reading there still gets its usage recorded
                following = await anext(chunks, None)
                following_kind = ORDINARY if following is None else count(following)
                if following_kind == USAGE_ONLY:
                    state.finish("ok")
                yield chunk
                if following is not None and not (hide_usage and following_kind == USAGE_ONLY):
                    yield following
    except GeneratorExit:
        state.finish("interrupted")
        raise
    except BaseException as exc:
        state.finish("error", exc)
        raise
    # no finish_reason: the connection closed mid-stream without an error (close-delimited body)
    state.finish("ok" if state.finish_reason is not None else "interrupted")


def _events_sync(state: _StreamState, events: Iterator[Any]) -> Iterator[Any]:
    try:
        for event in events:
            state.response_event(event)
            yield event
    except GeneratorExit:
        state.finish("interrupted")
        raise
    except BaseException as exc:
        state.finish("error", exc)
        raise
    state.finish("interrupted")  # ended without response.completed


async def _events_async(state: _StreamState, events: AsyncIterator[Any]) -> AsyncIterator[Any]:
    try:
        async for event in events:
            state.response_event(event)
            yield event
    except GeneratorExit:
        state.finish("interrupted")
        raise
    except BaseException as exc:
        state.finish("error", exc)
        raise
    state.finish("interrupted")


def watch_stream(monitor: LLMCallMonitor, call: _Call, stream: Any, *, is_async: bool) -> None:
    """Wrap ``stream``'s chunk iterator in place and record the call when the stream ends."""
    state = _StreamState(monitor, call)
    iterator = stream._iterator
    if call.operation == "responses":
        stream._iterator = _events_async(state, iterator) if is_async else _events_sync(state, iterator)
    else:
        hide = call.hide_usage
        stream._iterator = (
            _chat_async(state, iterator, hide) if is_async else _chat_sync(state, iterator, hide)
        )
    # extend close() without a reference cycle, so an abandoned stream is collected promptly
    class_close = type(stream).close
    ref = weakref.ref(stream)
    if is_async:

        async def aclose() -> None:
            try:
                target = ref()
                if target is not None:
                    await class_close(target)
            finally:
                state.abandon()

        stream.close = aclose
    else:

        def close() -> None:
            try:
                target = ref()
                if target is not None:
                    class_close(target)
            finally:
                state.abandon()

        stream.close = close
    # an abandoned stream: record it when the SDK object is collected
    weakref.finalize(stream, state.abandon)
