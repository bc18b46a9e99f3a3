"""Watching streams and bodies the caller reads itself: counters only, never the chunks.

One state machine (``_StreamState``) reads each chunk or Responses event as a field dict, driven
by thin sync and async shells over an SDK stream's chunk iterator (the stream keeps its identity)
or over the HTTP byte stream of a body the caller reads itself (``with_streaming_response``). Each
item reaches the caller as it arrives, as the bare SDK gives it. The record is written once: when
the answer is complete, when the body ends, fails or is closed, or when it is collected.
"""

from __future__ import annotations

import functools
import json
import sys
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

import orjson

from . import _background, _jsonl
from ._background import LATER
from ._context import recorded_apart
from ._extract import JsonView, output_text, response_shape, speech_usage
from ._records import MEDIA, interrupted

if TYPE_CHECKING:
    from ._monitor import LLMCallMonitor, _Call
    from ._records import ResponseShape, Status

__all__ = ["finish_body", "tap_body", "watch_helper", "watch_stream"]


def _fields(obj: Any) -> Any:
    """The field dict of a JSON object or of an SDK model (its ``__dict__``); None otherwise."""
    return obj if type(obj) is dict else getattr(obj, "__dict__", None)


# Responses events before the answer: a background response's say it runs on if the stream stops
_BEGUN = frozenset({"response.created", "response.queued", "response.in_progress"})
# Responses events whose first is the answer's first token when it has no text (as a chat stream's
# tool-call or refusal delta is)
_FIRST_TOKENS = frozenset({"response.function_call_arguments.delta", "response.refusal.delta"})
# operations whose event stream, ended cleanly without its last event (the one with the usage), was
# answered all the same: a speech (create() records the same body ok) and a transcription
_ANSWERED_WITHOUT_END = frozenset({"speech", "transcription"})


class _StreamState:
    """What one stream has shown so far, and its record, written once."""

    running: str | None = None  # a background response's last status while it runs (set on it only)
    stopped = False  # closed by the caller while another thread or task read it: its failure is no error
    keyed = False  # a chunk had a usage field (null or not): the server answers the ledger's include_usage
    tap: _Body | None = None  # with_raw_response's tap on the body: it records the call unless this reads

    def __init__(self, monitor: LLMCallMonitor, call: _Call) -> None:
        call.let_go()  # the call outlives its request: what its record takes from the response is kept
        self.monitor = monitor
        self.call = call
        self.hide_usage = call.hide_usage
        self.chars = self.tool_calls = 0
        self.finish_reason: str | None = None
        self.usage: Any = None
        self.model: str | None = None
        self.id: str | None = None
        self.tier: str | None = None
        # a speech's answer is audio: no text output (a tapped body's too)
        self.text: list[str] | None = [] if call.content is not None and call.operation != "speech" else None
        self.warm = False  # a chat stream whose id and first token are known: chat()'s short path
        _open.add(self)

    # -- chat completions ---------------------------------------------------------------------------

    def chat(self, chunk: Any) -> bool:
        """Count one chunk of an SDK stream; False for the usage chunk the caller did not ask for."""
        if self.warm:
            # the short path of nearly every chunk (one choice, no finish, tool call or usage), read
            # from the models' __dict__ (a pydantic attribute read costs several dict lookups); any
            # other shape raises before anything is counted, and goes to chat_fields()
            try:
                fields = chunk.__dict__
                if fields["usage"] is None:
                    (choice,) = fields["choices"]
                    choice = choice.__dict__
                    delta = choice["delta"].__dict__
                    if not (choice["finish_reason"] or delta["tool_calls"]):
                        content = delta["content"]
                        if self.hide_usage:  # as below: "usage": null was sent, the bare SDK's chunk has none
                            chunk.__pydantic_fields_set__.discard("usage")
                        if content:
                            self.chars += len(content)  # the last step that can raise: nothing counted twice
                            if self.text is not None:
                                self.text.append(content)
                        return True
            except (AttributeError, KeyError, TypeError, ValueError):
                pass  # read by chat_fields() below
        fields = _fields(chunk)
        if type(fields) is not dict:
            return True  # not one of the SDK's models: handed on unread
        shown = self.chat_fields(fields)
        if shown and self.hide_usage and fields is not chunk:
            self._hide_usage(chunk, fields)
        return shown

    def _hide_usage(self, chunk: Any, fields: dict[str, Any]) -> None:
        """Take the usage the ledger asked for off an SDK chunk the caller gets: it comes as null (or
        counts so far) on every chunk from the first, and the bare SDK's chunk has no usage set
        (to_dict() shows it). Usage first seen on a chunk that finishes is the server's own (Mistral
        sends it there unasked): the caller gets it, as from the bare SDK."""
        given = chunk.__pydantic_fields_set__
        if not self.keyed and fields.get("usage") is not None:
            choices = [_fields(choice) or {} for choice in fields.get("choices") or ()]
            if any(choice.get("finish_reason") for choice in choices):
                return
        self.keyed = self.keyed or "usage" in given
        fields["usage"] = None
        given.discard("usage")

    def chat_fields(self, fields: dict[str, Any]) -> bool:
        """Count one chunk given as its field dict (a model's ``__dict__``, or the JSON object);
        False for the usage chunk the caller did not ask for."""
        call = self.call
        if not self.id:  # Azure's first chunk, its prompt filter's verdict, has an empty id and model
            self.model = fields.get("model")
            self.id = fields.get("id")
            tier = fields.get("service_tier")
            self.tier = tier if type(tier) is str else None
        usage = fields.get("usage")
        if type(usage) is dict:
            usage = JsonView(usage)
        choices = fields.get("choices")
        if not choices:
            if usage is None:
                return True
            # the usage chunk closes the answer: recorded now, before the caller decides to stop
            self.usage = usage
            self._finish("ok")
            return not self.hide_usage
        for item in choices:
            choice = _fields(item) or {}
            delta = _fields(choice.get("delta"))
            if delta is None:  # a text completion's choice: its text in place of a delta
                delta = {"content": choice.get("text")}
            if delta:
                text, tool_calls = delta.get("content"), delta.get("tool_calls")
                # a refusal streams in place of content: its first piece is the first token too
                if text or tool_calls or delta.get("refusal"):
                    call.first_token()
                if text:
                    self.chars += len(text)
                    if self.text is not None:
                        self.text.append(text)
                if tool_calls:
                    self.tool_calls += sum(1 for t in tool_calls if (_fields(t) or {}).get("id"))
            # the first choice's, as create() records choices[0]'s: with n > 1 another may end first
            if choice.get("finish_reason") and self.finish_reason is None and not choice.get("index"):
                self.finish_reason = choice["finish_reason"]
                if usage is None:  # Moonshot's, without include_usage: in the choice that finishes
                    # (an SDK model keeps the undeclared field apart)
                    extra = choice if choice is item else getattr(item, "__pydantic_extra__", None) or {}
                    usage = extra.get("usage")
                    if type(usage) is dict:
                        usage = JsonView(usage)
        if usage is not None:  # some compatible servers send usage on content chunks
            self.usage = usage
        # a text completion's chunks have no delta: the short path is for chat chunks
        self.warm = call.ttft is not None and bool(self.id) and call.operation == "chat"
        return True

    def fault(self, chunk: Any, exc: Exception) -> bool:
        """Report the ledger's failure to read ``chunk``; whether the caller gets it: yes, unless it
        is the usage chunk the ledger asked for on the caller's behalf (a caller reading
        ``choices[0]`` of every chunk would fail on it)."""
        self.monitor._report("watching a stream", exc)
        try:
            if self.hide_usage:
                if not chunk.choices and chunk.usage is not None:
                    return False
                self._hide_usage(chunk, chunk.__dict__)  # as chat() hands it on
        except Exception:
            pass  # not an SDK chunk: handed on
        return True

    # -- responses ------------------------------------------------------------------------------------

    def event(self, event: Any) -> bool:
        """Count one Responses event (an SDK model or the JSON object); the caller gets every one."""
        fields = _fields(event)
        if type(fields) is not dict:
            return True  # not one of the SDK's models: handed on unread
        kind = fields.get("type")
        if kind == "response.output_text.delta":
            delta = fields.get("delta") or ""
            self.call.first_token()
            self.chars += len(delta)
            if self.text is not None:
                self.text.append(delta)
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            response = fields.get("response")
            if type(response) is dict:
                response = JsonView(response)
            try:
                shape, usage = response_shape("responses", response)
                call = self.call
                if call.owner is LATER:
                    call.answer = response  # what its end is read from (see LLMCallMonitor._later)
                elif getattr(response, "background", None) is True:  # begun and ended here
                    _background.ended_here(call, shape["id"])
                error = ResponseError(getattr(response, "error", None)) if kind == "response.failed" else None
            except Exception as exc:  # recorded with what the stream showed
                self.monitor._report("recording a stream", exc)
                self._finish("ok")
            else:
                self._finish("error" if error else "ok", error, shape, usage)
        elif kind == "error":  # the server gave up mid-stream (the SDK hands the event on)
            self._finish("error", ResponseError(fields))
        elif kind in _BEGUN:  # what a stream stopped before its end is recorded as
            response = _fields(fields.get("response")) or {}
            self.model, self.id = response.get("model"), response.get("id")
            if response.get("background") is True:  # it runs on: its end is recorded once retrieved
                self.running = response.get("status")
        elif kind in _FIRST_TOKENS:
            self.call.first_token()
        return True

    # -- images and transcriptions ---------------------------------------------------------------------

    def media(self, event: Any) -> bool:
        """Count one event of a streamed image or transcription: the first (a partial image, a piece of
        text) is the first token; the last (``*.completed``, ``transcript.text.done``, with the usage)
        ends the answer, recorded as ``create()`` records it. The caller gets every event."""
        fields = _fields(event)
        if type(fields) is not dict:
            return True  # not one of the SDK's models: handed on unread
        self.call.first_token()
        kind = fields.get("type")
        if kind == "transcript.text.delta" and self.text is not None:
            delta = fields.get("delta")
            if type(delta) is str:
                self.text.append(delta)
        elif type(kind) is str and kind.endswith((".completed", ".done")):
            shape, usage = response_shape(self.call.operation, JsonView({"usage": fields.get("usage")}))
            self._finish("ok", None, shape, usage)
        return True

    # -- the end ----------------------------------------------------------------------------------------

    def end(self, exc: BaseException | None = None) -> None:
        """The stream ended or the caller stopped reading it: ``ok`` once the answer finished (with
        the usage seen so far), else ``interrupted``; ``error`` when it raised ``exc``."""
        if self.stopped:
            exc = None  # what the caller's close made the reader raise: the close ended it
        if exc is not None and not interrupted(exc):
            self._finish("error", exc)
        elif self.finish_reason is not None:
            self._finish("ok")
        else:
            self._finish("interrupted", exc)

    stop = end  # the caller closed the stream: as its end

    def ended(self) -> None:
        """The stream was read to its end, which the server ended cleanly: as :meth:`end`, but a speech
        or a transcription without its last event (a compatible server that sends none; else recorded
        already) was answered: ``ok``, with no usage."""
        operation = self.call.operation
        if operation in _ANSWERED_WITHOUT_END:
            self._finish("ok", None, *response_shape(operation, JsonView({"usage": None})))
        self.end()

    def _finish(
        self,
        status: Status,
        error: BaseException | None = None,
        response: ResponseShape | None = None,
        usage: Any = None,
    ) -> None:
        """Record the call once: from the answer's ``response`` and ``usage``, else from the stream's."""
        _open.discard(self)
        call = self.call
        if call.owner is None or recorded_apart(self._finish, status, error, response, usage):
            return  # recorded already, or by a thread of its own
        try:
            if response is None:
                response = {
                    "model": self.model,
                    "id": self.id,
                    "request_id": None,
                    "content_length": self.chars,
                    "finish_reason": self.finish_reason or self.running,
                    # null for a text completion, which has no tools: as create() records it
                    "tool_calls_count": None if call.operation == "text_completion" else self.tool_calls,
                    "service_tier": self.tier,
                    "tool_uses": None,  # a Responses stream's come with its end (response_shape)
                }
                usage = self.usage
            response["request_id"] = call.request_id
            text = "".join(self.text) if self.text is not None else None
            self.monitor._finish(call, status, response, usage, error=error, output_text=text)
        except Exception as exc:
            self.monitor._report("recording a stream", exc)


# every stream not yet recorded (not the streams themselves: an abandoned one is still collected)
_open: set[_StreamState] = set()


def _end_open_streams() -> None:
    """Record every stream still open, as exit does (SIGTERM's death skips it)."""
    for state in list(_open):
        state.end()


_jsonl.before_sigterm_death.append(_end_open_streams)


class ResponseError(Exception):
    """Stands, in the record's ``error``, for a Responses stream's ``response.failed`` or ``error``
    event: the server gave up on the answer, and the SDK hands such events on instead of raising."""

    def __init__(self, detail: Any) -> None:
        fields = _fields(detail) or {}
        super().__init__(fields.get("message") or "the response failed")
        self.code = fields.get("code")


# -- the shells: each item handed on as it arrives, after the watcher saw it ---------------------------


def _watch_sync(
    watcher: _StreamState | _Body, items: Iterator[Any], see: Callable[[Any], bool]
) -> Iterator[Any]:
    try:
        for item in items:
            try:
                show = see(item)
            except Exception as exc:  # a fault in the ledger: the caller still gets the item
                show = watcher.fault(item, exc)
            if show:
                yield item
    except GeneratorExit:
        watcher.stop()
        raise
    except BaseException as exc:
        watcher.end(exc)
        raise
    watcher.ended()


async def _watch_async(
    watcher: _StreamState | _Body, items: AsyncIterator[Any], see: Callable[[Any], bool]
) -> AsyncIterator[Any]:
    try:
        async for item in items:
            try:
                show = see(item)
            except Exception as exc:  # a fault in the ledger: the caller still gets the item
                show = watcher.fault(item, exc)
            if show:
                yield item
    except GeneratorExit:
        watcher.stop()
        raise
    except BaseException as exc:
        watcher.end(exc)
        raise
    watcher.ended()


# -- SDK streams: the chunk iterator wrapped in place ------------------------------------------------


def watch_stream(monitor: LLMCallMonitor, call: _Call, stream: Any, *, is_async: bool) -> None:
    """Wrap ``stream``'s chunk iterator in place and record the call when the stream ends."""
    state = _StreamState(monitor, call)
    see: Callable[[Any], bool] = state.chat  # a text completion's chunks too
    if (operation := call.operation) != "chat":
        see = state.event if operation == "responses" else state.media if operation in MEDIA else see
    shell: Any = (_watch_async if is_async else _watch_sync)(state, stream._iterator, see)
    stream._iterator = shell
    stream._llm_ledger_state = state  # found there by watch_helper(), if a stream helper reads it
    # a caller stops reading by closing the HTTP response: Stream.close() does, and so do the SDK's
    # stream helpers (chat.completions.stream(), responses.stream()), which never close the stream.
    # A close while the shell runs is the SDK closing a body it ended or failed on, inside the shell,
    # which records that; or, from another thread or task, the caller's ("stop generating"): the
    # reader fails then, and records its failure as the caller's stop. Weak references: an abandoned
    # stream must stay free of new cycles, to be collected promptly
    response = stream.response
    shell_ref, response_ref = weakref.ref(shell), weakref.ref(response)
    running, frame = ("ag_running", "ag_frame") if is_async else ("gi_running", "gi_frame")

    def closed() -> None:
        live = shell_ref()
        if live is None or not getattr(live, running):
            state.end()
        elif not _on_this_stack(getattr(live, frame)):
            state.stopped = True

    if is_async:
        class_aclose = type(response).aclose

        async def aclose() -> None:
            try:
                if (target := response_ref()) is not None:
                    await class_aclose(target)
            finally:
                closed()

        response.aclose = aclose
    else:
        class_close = type(response).close

        def close() -> None:
            try:
                if (target := response_ref()) is not None:
                    class_close(target)
            finally:
                closed()

        response.close = close
    # an abandoned stream: record it when the SDK object is collected. The finalizer holds the response
    # till then: else, collected in one cycle with the stream (the SDK's generator holds it), its weak
    # reference above would be cleared before the SDK's close on collection, which could then not
    # close it, and the SDK's pool would keep its connection for good (and scan it at every request)
    weakref.finalize(stream, _collected, state, response)


def _on_this_stack(frame: FrameType | None) -> bool:
    """Whether ``frame`` (a running shell's) is on this thread's stack, under the close() calling
    ``closed()`` (walked only when a stream is closed while read)."""
    current: FrameType | None = sys._getframe(2)
    while current is not None:
        if current is frame:
            return True
        current = current.f_back
    return False


def _collected(state: _StreamState, response: Any) -> None:
    if state.tap is None or state.tap.set_aside:
        state.end()
    else:  # never read: the caller may still read the body it taps (recorded when that is collected)
        _open.discard(state)


# -- the SDK's stream helpers: what they raise above the stream ---------------------------------------


def watch_helper(helper: Any, *, is_async: bool) -> None:
    """Record what a stream helper (``chat.completions.stream()``, ``responses.stream()``) raises
    above the stream watched below it (a structured answer cut short or not parsing), as ``parse()``
    records it: ``error``; what ends the stream below is recorded there (a second end is a no-op).
    Its events all pass through ``_iterator``; the usage chunk after that point is not read (the
    caller would wait on the network for an exception it already has)."""
    try:
        state = helper._raw_stream._llm_ledger_state
        # its events are the stream's, seen below it: each handed on unread
        shell: Any = (_watch_async if is_async else _watch_sync)(state, helper._iterator, lambda _: True)
        helper._iterator = shell
    except AttributeError:
        pass  # not a helper over a watched stream (or an SDK that built it otherwise): as it is


# -- bodies the caller reads itself: the HTTP byte stream tapped -------------------------------------


def finish_body(monitor: LLMCallMonitor, call: _Call, content: bytes, content_type: str) -> None:
    """Record a call from its whole JSON body, as ``create()`` records the SDK's reading of it."""
    try:
        if call.operation == "speech":  # audio bytes (not read), or the events of stream_format="sse"
            data: Any = {"usage": speech_usage(content, content_type)}
        else:
            try:
                data = orjson.loads(content)
            except orjson.JSONDecodeError:
                try:
                    data = json.loads(content)  # what the SDK's parse() uses: its exception, if it fails
                except ValueError as exc:
                    if content_type.split(";")[0].strip().endswith("json"):
                        monitor._finish(call, "error", None, None, error=exc)
                        return
                    data = None  # the SDK hands such a body over as text
        if type(data) is dict:
            view = JsonView(data)
            shape, usage = response_shape(call.operation, view)
            text = output_text(call.operation, view) if call.content is not None else None
            monitor._finish(call, "ok", shape, usage, output_text=text)
        elif call.content is not None:  # a transcription's text answer is its output, as the SDK's str
            text = output_text(call.operation, content.decode(errors="replace"))
            monitor._finish(call, "ok", None, None, output_text=text)
    except Exception as exc:
        monitor._report("recording a call", exc)
    monitor._finish(call, "ok", None, None)  # what is known for sure (a no-op once recorded)


def _bytes(decoded: Any) -> bytes:
    """A decoder's output: bytes from httpx, an iterator of bytes from httpx2."""
    return decoded if type(decoded) is bytes else b"".join(decoded)


class _Body:
    """Reads a body as its bytes pass to the caller: SSE events into the state, or JSON at its end."""

    def __init__(self, state: _StreamState, headers: Any, sse: bool, library: str, request: Any) -> None:
        self.state = state
        operation = state.call.operation
        self.see = state.event if operation == "responses" else state.chat_fields  # an event's reader
        if operation in MEDIA:
            self.see = state.media
        self.request = request
        self.sse = sse
        self.beside: weakref.ref[Any] | None = None  # the shell of an SDK stream reading the body too
        self.set_aside = False
        self.content_type = headers.get("content-type") or ""
        self.buffer = bytearray()
        self.after_cr = False  # the last piece ended with CR: an LF starting the next ends that line
        self.data: list[bytes | bytearray] = []
        self.parts: list[bytes] | None = []
        self.decoders: list[Any] = []
        encodings = [e.strip().lower() for e in (headers.get("content-encoding") or "").split(",")]
        encodings = [e for e in encodings if e not in ("", "identity")]
        if encodings:
            # the decoders of the HTTP library the caller reads it with (its own, private as they are:
            # they decode exactly what the caller's read decodes), in the order to apply them
            try:
                supported = sys.modules[f"{library}._decoders"].SUPPORTED_DECODERS
                if all(encoding in supported for encoding in encodings):
                    self.decoders = [supported[encoding]() for encoding in reversed(encodings)]
            except Exception as exc:
                state.monitor._report("reading a streamed body", exc)
            if not self.decoders:
                self.parts = None  # an encoding the ledger does not read: only the body's end is seen

    def feed(self, raw: bytes) -> bool:
        if self.parts is not None:
            data = raw
            for decoder in self.decoders:
                data = _bytes(decoder.decode(data))
            if self.sse:
                self._lines(data)
            else:
                self.parts.append(data)
        return True

    def fault(self, raw: bytes, exc: Exception) -> bool:
        """The ledger failed to read the body: it reads no more of it; the caller gets every byte."""
        self.parts = None
        self.state.monitor._report("reading a streamed body", exc)
        return True

    def _lines(self, data: bytes) -> None:
        if self.after_cr or b"\r" in data:  # SSE lines end with CR, LF or CRLF: all read as LF
            if self.after_cr and data.startswith(b"\n"):
                data = data[1:]  # the LF of a CRLF split between two pieces
            self.after_cr = data.endswith(b"\r")
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer = self.buffer
        buffer += data  # in place: a long event read in many pieces is copied once, not at each piece
        if b"\n" not in data:
            return
        lines = buffer.split(b"\n")
        self.buffer = lines.pop()
        for line in lines:
            self._line(line)

    def _line(self, line: bytes | bytearray) -> None:
        if line.startswith(b"data:"):
            value = line[5:]
            self.data.append(value[1:] if value.startswith(b" ") else value)
        elif not line and self.data:
            payload = b"\n".join(self.data)
            self.data = []
            if payload.startswith(b"[DONE]"):
                return
            try:
                fields = orjson.loads(payload)
            except orjson.JSONDecodeError as exc:  # the SDK's parse() fails here too: as create() records it
                self.state.end(exc)
                return
            if type(fields) is dict:
                if fields.get("error"):  # what the SDK raises as APIError, reading this stream
                    self.state.end(self._api_error(fields["error"]))
                else:
                    self.see(fields)

    def _api_error(self, error: Any) -> BaseException:
        """The ``openai.APIError`` the SDK raises for an error object in a stream."""
        import openai

        message = error.get("message") if type(error) is dict else None
        if not isinstance(message, str) or not message:
            message = "An error occurred during streaming"
        return openai.APIError(message, self.request, body=error)

    def end(self, exc: BaseException | None = None) -> None:
        """The whole body was read, or reading it raised ``exc``."""
        state = self.state
        if exc is not None:
            state.end(exc)
            return
        if self.parts is not None:
            try:
                rest = b""
                for decoder in self.decoders:  # what each decoder held back, through the ones after it
                    rest = (_bytes(decoder.decode(rest)) if rest else b"") + _bytes(decoder.flush())
                if self.sse:
                    self._lines(rest + b"\n\n")  # an event not closed by a blank line ends with the body
                    state.ended()
                else:
                    finish_body(state.monitor, state.call, b"".join(self.parts) + rest, self.content_type)
            except Exception as fault:
                state.monitor._report("reading a streamed body", fault)
        self.stop("ok")  # a no-op once recorded; a body the ledger could not read ended: complete

    ended = end  # read to its end (the shells' word for it)

    def aside(self) -> bool:
        """Whether the tap stands aside: the SDK stream watched beside it (``with_raw_response``'s
        ``parse()``) reads the body, and records the call; the tap neither reads nor records it."""
        shell = self.beside and self.beside()  # weak: the body must hold no cycle through the response
        if shell is not None and (getattr(shell, "gi_running", False) or getattr(shell, "ag_running", False)):
            self.beside = None
            self.set_aside = True
            _open.discard(self.state)  # never recorded here
        return self.set_aside

    def stop(self, status: Status = "interrupted") -> None:
        """The body was closed before its end: an event stream the ledger reads ends as its events
        say; any other body is ``status``."""
        if self.set_aside:
            return
        if self.sse and self.parts is not None:
            self.state.end()
        else:
            self.state._finish(status)


class _Tap:
    """Mixed with the HTTP library's ``SyncByteStream`` or ``AsyncByteStream`` (see :func:`_tap_class`)."""

    def __init__(self, body: _Body, stream: Any) -> None:
        self._body = body
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        if self._body.aside():
            return iter(self._stream)
        return _watch_sync(self._body, self._stream, self._body.feed)

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._body.aside():
            return aiter(self._stream)
        return _watch_async(self._body, self._stream, self._body.feed)

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._body.stop()

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            self._body.stop()


@functools.cache
def _tap_class(library: str, is_async: bool) -> type:
    """The tap for one HTTP library (openai 1.x and 2.x send through httpx, 3.x through httpx2), a
    subclass of its ``SyncByteStream`` / ``AsyncByteStream``, as it checks a response's stream is."""
    base = getattr(sys.modules[library], "AsyncByteStream" if is_async else "SyncByteStream")
    return type("_Tap", (_Tap, base), {"__module__": __name__})


def tap_body(
    monitor: LLMCallMonitor, call: _Call, http_response: Any, *, is_async: bool, beside: Any = None
) -> None:
    """Read ``http_response``'s body as the caller reads it, and record the call when it ends; unless
    the SDK stream ``beside`` (over the same body, watched) reads it."""
    state = _StreamState(monitor, call)
    try:
        request = http_response.request  # named by the APIError of an error in the stream
    except Exception:
        request = None
    library = type(http_response).__module__.partition(".")[0]
    headers = http_response.headers
    sse = call.request["stream"]
    if call.operation == "speech":  # the events of stream_format="sse", else audio bytes (not read)
        sse = (headers.get("content-type") or "").lower().startswith("text/event-stream")
    body = _Body(state, headers, sse, library, request)
    if call.operation == "speech" and not sse:
        body.parts = None  # only the body's end is seen
    if http_response.is_stream_consumed:  # read already, decoded (a mock transport's, a cassette's)
        body.decoders = []
        body.feed(http_response.content)
        body.end()
        return
    if beside is not None:
        body.beside = weakref.ref(beside._iterator)
        beside._llm_ledger_state.tap = body
    http_response.stream = _tap_class(library, is_async)(body, http_response.stream)
    # a body never read nor closed: record it when the response is collected (by the body, apart from
    # the tap: the tap holds the library's stream, which holds the response, never collected then)
    weakref.finalize(http_response, body.stop)
