"""Watching the Realtime API's connections (``client.realtime.connect()``, ``client.beta.realtime.connect()``,
sync and async), which go over a WebSocket, past the client's ``request`` seam; and the Responses API's
(``client.responses.connect()``, ``client.beta.responses.connect()``), watched alike (``_ResponsesSession``),
and openai 3.x's Live API's (``client.live.connect()``: ``_LiveSession``).

The connection an instrumented client's manager opens is watched in place: its ``recv_bytes`` (which
``recv()``, iteration and ``dispatch_events()`` go through) sees each server event after the SDK
received it, its ``send`` notes each ``response.create`` (and refuses one of a lens run stopped by its
budget in raise mode, unsent: docs/BUDGETS.md), its ``close`` ends the watch. Each response the
server ends (``response.done``) is one call record (operation ``realtime``), from its ``response.create``
sent (else its ``response.created``) to its ``response.done``, and each transcript of its input audio one
(operation ``transcription``), with the context and lens runs in effect
where the connection was opened: the connection holds those runs open until it ends, as a stream read
after its lens ended does (docs/MONITORING.md, "Realtime sessions").
"""

from __future__ import annotations

import contextvars
import functools
import threading
import time
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

import orjson

from . import _budgets, _jsonl
from ._context import counted_in, current_context, current_lenses
from ._errors import BudgetExceededError
from ._extract import EMPTY_REQUEST, JsonView, request_shape, response_shape
from ._monitor import _Call, stated_request
from ._records import interrupted
from ._servers import Endpoint, server_of
from ._streams import ResponseError, _StreamState

if TYPE_CHECKING:
    from ._monitor import LLMCallMonitor
    from ._records import RequestShape, ResponseShape, Status

__all__ = ["watch_connect"]

# response.status -> the record's: a response cancelled (response.cancel, or the user speaking over it)
# stopped on the caller's side; one cut by max_output_tokens or a filter ("incomplete") was answered
_STATUSES: dict[Any, Status] = {
    "completed": "ok",
    "incomplete": "ok",
    "cancelled": "interrupted",
    "failed": "error",
}


def _object(value: Any) -> dict[str, Any]:
    return value if type(value) is dict else {}


def _field(event: Any, key: str) -> Any:
    """A client event's field: a dict's, or one of the SDK's models'."""
    return event.get(key) if isinstance(event, dict) else getattr(event, key, None)


class _Session:
    """One watched connection: the context and lens runs where it was opened (held open until it ends)
    and its server; a subclass reads its API's events into calls (:class:`_RealtimeSession`,
    :class:`_ResponsesSession`)."""

    operation: str

    def __init__(self, monitor: LLMCallMonitor, client: Any, model: Any) -> None:
        self.monitor = monitor
        self.client = client
        self.endpoint = Endpoint(client)
        self.model = model if type(model) is str else None
        self.context, self.lenses = counted_in(current_context())
        self.ended = False
        self.closing: float | None = None  # when the caller called close(): what it cuts short ends then
        # from a drop to the next recv: what each response.create sent meanwhile noted (openai 3.x queues
        # it while it reconnects, written only if it reconnects, which the next recv follows)
        self.down: list[Any] | None = None
        # what one thread reads of the events and another's close() take turns: a response begun while
        # the connection is closed would hold its lens runs open for good. Reentrant: a sink recording a
        # response may close the connection
        self.lock = threading.RLock()
        try:
            url = client.websocket_base_url or client.base_url
            self.server = server_of(url if hasattr(url, "netloc") else type(client.base_url)(url))
        except Exception:  # not the SDK's client: an unknown server
            self.server = server_of(None)
        _open.add(self)

    # -- what passes through the connection ---------------------------------------------------------------

    def sent(self, event: Any) -> Any:
        """Note one client event the caller sends (a dict, or one of the SDK's models): what was noted of
        a ``response.create``, for :meth:`unsent`, else None."""
        raise NotImplementedError

    def unsent(self, noted: Any) -> None:
        """Forget a ``response.create`` noted by :meth:`sent` whose ``send()`` raised: it never went out."""
        raise NotImplementedError

    def seen(self, data: Any) -> None:
        """Read one server event (its JSON text): what it says of the calls."""
        try:
            event = orjson.loads(data)
            kind = event.get("type") if type(event) is dict else None
            if type(kind) is str:
                with self.lock:
                    if not self.ended:  # a connection closed records nothing more
                        self._seen(kind, event)
        except Exception as exc:  # never into the caller's recv()
            self.monitor._report(f"watching a {self.operation} connection", exc)

    def _seen(self, kind: str, event: dict[str, Any]) -> None:
        raise NotImplementedError

    def _begin(
        self,
        request: RequestShape,
        content: dict[str, Any] | None,
        when: tuple[float, float] | None,
        operation: str | None = None,
    ) -> _Call:
        """A response's call (or another ``operation``'s), begun ``when`` its create was sent (else now),
        in the connection's context and lens runs (which the connection holds open: each counts it, even
        once ended)."""
        # made in an empty context: it begins in none of the lens runs of the thread reading the events
        call = contextvars.Context().run(
            _Call, operation or self.operation, request, self.endpoint, None, False, None
        )
        call.context = self.context
        call.lenses = self.lenses
        for run in self.lenses:
            run._totals.hold()
        call.server = dict(self.server)  # type: ignore[assignment]
        if when is not None:
            call.start_epoch, call.start_perf = when
        if self.monitor.capture_content:
            call.client = self.client
            call.content = content
        return call

    def _cut(self, call: _Call) -> _Call:
        """A call the connection's end cut short, timed to when the caller called ``close()``, not to its
        return: the closing handshake can wait seconds behind the messages the caller left unread."""
        if self.closing is not None:
            call.start_perf += time.perf_counter() - self.closing
        return call

    # -- the end -------------------------------------------------------------------------------------------

    def lost(self, exc: BaseException) -> None:
        """A recv() raised ``exc``: when the connection dropped (websockets' ``ConnectionClosed``, not
        imported here; not a recv its caller cancelled, safe says the SDK), its calls in flight end
        (openai 3.x may reconnect)."""
        if not any(cls.__name__ == "ConnectionClosed" for cls in type(exc).__mro__):
            return
        with self.lock:
            if self.ended:  # close() ends them
                return
            for run in self.lenses:  # let go in _end(): a close() meanwhile leaves the runs open
                run._totals.hold()
            self.down = []
        self._end(exc)

    def close(self) -> None:
        """The connection was closed (or collected): its calls in flight end, its lens runs are let go."""
        with self.lock:
            if self.ended:
                return
            self.ended = True
            down, self.down = self.down or (), None
        _open.discard(self)
        for noted in down:  # queued while openai 3.x reconnected, in vain: never written
            self.unsent(noted)
        self._end(None)

    def _end(self, exc: BaseException | None) -> None:
        """End the calls in flight as the connection's end with ``exc`` leaves them (``interrupted`` when
        the caller closed it, or the server did cleanly; ``error`` when it broke), then let go of one hold
        of the lens runs: only once those calls are recorded, as a run's record follows its calls'."""
        clean = exc is None or interrupted(exc) or type(exc).__name__ == "ConnectionClosedOK"
        try:
            self._cut_short("interrupted" if clean else "error", exc)
        except Exception as error:  # never into the caller's close() or recv()
            self.monitor._report(f"ending a {self.operation} connection", error)
        finally:
            for run in self.lenses:
                run._totals.release()
                try:
                    run._settle_call()
                except Exception as error:
                    self.monitor._report("ending a lens", error)

    def _cut_short(self, status: Status, exc: BaseException | None) -> None:
        """Record the calls in flight (and the creates unanswered: maybe billed) with ``status``."""
        raise NotImplementedError


class _RealtimeSession(_Session):
    """One watched Realtime connection: each response the server ends (``response.done``) is one call,
    from its ``response.create`` sent (else its ``response.created``); each transcript of its input audio
    (``conversation.item.input_audio_transcription.completed``, billed apart) one ``transcription`` call,
    from its audio's ``input_audio_buffer.committed``."""

    operation = "realtime"

    def __init__(self, monitor: LLMCallMonitor, client: Any, model: Any) -> None:
        # each response.create sent, not yet created: its event_id and when
        self.asked: deque[tuple[Any, tuple[float, float]]] = deque()
        self.calls: dict[Any, _Call] = {}  # the responses in flight, by id
        self.transcriber: Any = None  # the model the session transcribes its input audio with
        # audio items committed, not yet transcribed: the model transcribing each, and when
        self.heard: dict[Any, tuple[Any, tuple[float, float] | None]] = {}
        super().__init__(monitor, client, model)

    def sent(self, event: Any) -> Any:
        if _field(event, "type") == "response.create":
            noted = (_field(event, "event_id"), (time.time(), time.perf_counter()))
            with self.lock:  # not into the deque _cut_short() is ending on another thread
                self.asked.append(noted)
            return noted
        return None

    def unsent(self, noted: Any) -> None:
        with self.lock:
            if noted in self.asked:  # not if an error read meanwhile cleared it
                self.asked.remove(noted)

    def _seen(self, kind: str, event: dict[str, Any]) -> None:
        if kind.endswith(".delta"):  # response.output_text.delta, response.output_audio.delta...
            call = self.calls.get(event.get("response_id"))
            if call is not None:
                call.first_token()
        elif kind == "response.created":
            self.calls[_object(event.get("response")).get("id")] = self._call()
        elif kind == "response.done":
            response = _object(event.get("response"))
            call = self.calls.pop(response.get("id"), None) or self._call()
            self._done(call, response)
        elif kind == "error" and self.asked:
            # a response.create refused makes no response: the one the error names (its error.event_id),
            # else the oldest not yet created (the server answers the events in order); one naming
            # another event (a response.cancel refused) is no create's
            named = _object(event.get("error")).get("event_id")
            refused = self.asked[0] if named is None else next((n for n in self.asked if n[0] == named), None)
            if refused is not None:
                self.asked.remove(refused)
        elif kind == "input_audio_buffer.committed":
            if self.transcriber is not None:
                self.heard[event.get("item_id")] = (self.transcriber, (time.time(), time.perf_counter()))
        elif kind in _TRANSCRIBED:  # its .completed, or its .failed (no usage: billed nothing)
            item, failed = event.get("item_id"), kind.endswith("failed")
            heard = self.heard.pop(item, (self.transcriber, None))
            error = ResponseError(_object(event.get("error"))) if failed else None
            self._transcribed(item, heard, "error" if failed else "ok", event, error)
        elif kind in ("session.created", "session.updated"):
            session = _object(event.get("session"))
            if self.model is None:
                model = session.get("model")
                self.model = model if type(model) is str else None
            self.transcriber = _transcriber(session)

    def _call(self, when: tuple[float, float] | None = None) -> _Call:
        """A response's call, begun when its ``response.create`` was sent (the oldest not yet created,
        else ``when``, else now)."""
        if when is None and self.asked:
            when = self.asked.popleft()[1]
        return self._begin({**EMPTY_REQUEST, "model": self.model, "stream": True}, {}, when)

    def _shape(self, response: dict[str, Any], chars: int | None, tools: int | None) -> ResponseShape:
        details = _object(response.get("status_details"))
        return {
            "model": self.model,
            "id": response.get("id"),
            "request_id": None,
            "content_length": chars,
            "finish_reason": details.get("reason") or response.get("status"),
            "tool_calls_count": tools,
            "service_tier": None,
            "tool_uses": None,
        }

    def _done(self, call: _Call, response: dict[str, Any]) -> None:
        status = _STATUSES.get(response.get("status"), "ok")
        texts: list[str] = []
        tools = 0
        for item in response.get("output") or ():
            item = _object(item)
            if item.get("type") == "function_call":
                tools += 1
            for part in item.get("content") or ():
                text = _object(part).get("text") or _object(part).get("transcript")
                if type(text) is str:
                    texts.append(text)
        error = None
        if status == "error":
            error = ResponseError(_object(_object(response.get("status_details")).get("error")))
        self.monitor._finish(
            call,
            status,
            self._shape(response, sum(map(len, texts)), tools),
            JsonView(usage) if type(usage := response.get("usage")) is dict else None,
            error=error,
            output_text="".join(texts) if call.content is not None else None,
        )

    def _transcribed(
        self,
        item: Any,
        heard: tuple[Any, tuple[float, float] | None],
        status: Status,
        event: dict[str, Any],
        error: BaseException | None,
    ) -> None:
        """The transcription of an input audio ``item`` ended (``event``: its ``.completed`` or ``.failed``;
        empty: cut short by the connection's end): one ``transcription`` call of the model transcribing
        it from its audio's commit (``heard``), its usage as an HTTP transcription's (tokens, or seconds:
        unpriced), none unless it completed."""
        model, when = heard
        model = model if type(model) is str else None
        call = self._begin({**EMPTY_REQUEST, "model": model}, {}, when, "transcription")
        usage = _object(event.get("usage")) or None
        shape, billed = response_shape(
            "transcription", JsonView({"model": model, "id": item, "usage": usage})
        )
        text = event.get("transcript")
        self.monitor._finish(
            call if event else self._cut(call),
            status,
            shape,
            billed,
            error=error,
            output_text=text if type(text) is str and call.content is not None else None,
        )

    def _cut_short(self, status: Status, exc: BaseException | None) -> None:
        with self.lock:
            calls, self.calls = self.calls, {}
            asked, self.asked = self.asked, deque()
            heard, self.heard = self.heard, {}
        for response_id, call in calls.items():
            shape = self._shape({"id": response_id}, None, None)
            self.monitor._finish(self._cut(call), status, shape, None, error=exc)
        for _, when in asked:  # a response.create whose answer was never read: it may have been billed
            unread = self._shape({"id": None}, None, None)
            self.monitor._finish(self._cut(self._call(when)), status, unread, None, error=exc)
        for item, by in heard.items():  # a transcription not ended: it may have been billed
            self._transcribed(item, by, status, {}, exc)


def _transcriber(session: dict[str, Any]) -> Any:
    """The model a Realtime session transcribes its input audio with (``audio.input.transcription``;
    the beta's ``input_audio_transcription``), None when it transcribes none."""
    chosen = _object(_object(_object(session.get("audio")).get("input")).get("transcription"))
    return (chosen or _object(session.get("input_audio_transcription"))).get("model")


class _ResponsesSession(_Session):
    """One watched Responses API connection (``responses.connect()``): each ``response.create`` sent is
    one call, whose events (from its ``response.created`` to its ``response.completed``, ``.failed``,
    ``.incomplete`` or ``error``) a Responses stream's state machine reads (``_streams``), as it reads
    them over HTTP. A connection runs one response at a time on each lane (``stream_id``, None the
    default lane), each event naming its lane."""

    operation = "responses"

    def __init__(self, monitor: LLMCallMonitor, client: Any, model: Any) -> None:
        # each lane's response.create sent, not yet created: its request, content and when
        self.pending: dict[Any, deque[tuple[RequestShape, dict[str, Any] | None, tuple[float, float]]]] = {}
        self.lanes: dict[Any, _StreamState] = {}  # each lane's response in flight
        super().__init__(monitor, client, model)

    def sent(self, event: Any) -> Any:
        body = event if isinstance(event, dict) else event.to_dict()  # a dict, or one of the SDK's models
        if body.get("type") != "response.create":
            return None
        # what the SDK leaves out of the JSON it sends: the resource's create() gives every parameter,
        # those not given as its omit (NotGiven on older SDKs)
        body = {k: v for k, v in body.items() if type(v).__name__ not in _OMITTED}
        request = request_shape("responses", body, stream=True)
        content = self.monitor._captured_request(body) if self.monitor.capture_content else None
        noted = (request, content, (time.time(), time.perf_counter()))
        with self.lock:
            self.pending.setdefault(body.get("stream_id"), deque()).append(noted)
        return body.get("stream_id"), noted

    def unsent(self, noted: Any) -> None:
        lane, asked = noted
        with self.lock:
            pending = self.pending.get(lane)
            if pending and asked in pending:
                pending.remove(asked)

    def _seen(self, kind: str, event: dict[str, Any]) -> None:
        lane = event.get("stream_id")
        state = self.lanes.get(lane)
        asked = self.pending.get(lane)
        if kind == "response.created":
            if state is not None:  # a response that never ended: cut short
                state.end()
            if asked:
                request, content, when = asked.popleft()
            else:  # begun by the server (a steered response's successor): as the Response states it
                request = stated_request(JsonView(_object(event.get("response"))), True)
                content, when = {}, None
            state = self.lanes[lane] = _StreamState(self.monitor, self._begin(request, content, when))
        elif kind == "error" and event.get("sequence_number") is None:
            # a request refused, not an error of the response stream (which numbers its events): a
            # response.create refused makes no response
            if asked:
                asked.popleft()
            return
        if state is None:
            return
        if kind in _ENDS:
            del self.lanes[lane]
        if kind == "error":  # its detail in "error" (openai 3.x's type), or beside it (2.x's, as over HTTP)
            state._finish("error", ResponseError(_object(event.get("error")) or event))
        else:
            state.event(event)

    def _cut_short(self, status: Status, exc: BaseException | None) -> None:
        with self.lock:
            states, self.lanes = self.lanes, {}
            pending, self.pending = self.pending, {}
        for state in states.values():
            self._cut(state.call)
            state._finish(status, exc)
        for asked in pending.values():  # a response.create whose answer was never read: maybe billed
            for request, content, when in asked:
                call = self._cut(self._begin(request, content, when))
                _StreamState(self.monitor, call)._finish(status, exc)


class _LiveSession(_ResponsesSession):
    """One watched Live API connection (``live.connect()``, openai 3.x): each response of its Responses
    delegation (its events wrapped in ``response.event``, its lane their ``delegation_id``) is one
    ``responses`` call, read as a Responses connection's response the server began; the session, billed
    by the second (its ``session.usage``: no tokens, so no price), one ``live`` call from its
    ``session.start`` sent to its ``session.closed``."""

    def __init__(self, monitor: LLMCallMonitor, client: Any, model: Any) -> None:
        self.starting: tuple[float, float] | None = None  # when session.start was sent
        self.session: _Call | None = None  # the session's call, from its session.started
        super().__init__(monitor, client, model)

    def sent(self, event: Any) -> Any:
        if _field(event, "type") == "session.start":
            self.starting = (time.time(), time.perf_counter())
        return None  # a response.create names no request: the delegation's config makes it

    def _seen(self, kind: str, event: dict[str, Any]) -> None:
        if kind == "response.event":
            nested = _object(event.get("event"))
            if type(nested.get("type")) is str:
                super()._seen(nested["type"], {**nested, "stream_id": event.get("delegation_id")})
        elif kind == "session.started" and self.session is None:
            model = _object(event.get("session")).get("model")
            request = {**EMPTY_REQUEST, "model": model if type(model) is str else None}
            self.session = self._begin(request, {}, self.starting, "live")  # type: ignore[arg-type]
        elif kind == "session.closed" and self.session is not None:
            call, self.session = self.session, None
            self._closed(call, "ok", event, None)

    def _closed(self, call: _Call, status: Status, event: dict[str, Any], exc: BaseException | None) -> None:
        """The session's call ended by its ``session.closed`` (``event``; empty: cut short)."""
        shape: ResponseShape = {
            "model": call.request["model"],
            "id": _object(event.get("session")).get("id"),
            "request_id": None,
            "content_length": None,
            "finish_reason": event.get("reason"),
            "tool_calls_count": None,
            "service_tier": None,
            "tool_uses": None,
        }
        self.monitor._finish(call if event else self._cut(call), status, shape, None, error=exc)

    def _cut_short(self, status: Status, exc: BaseException | None) -> None:
        with self.lock:
            call, self.session = self.session, None
        super()._cut_short(status, exc)
        if call is not None:
            self._closed(call, status, {}, exc)


_TRANSCRIBED = frozenset(
    f"conversation.item.input_audio_transcription.{end}" for end in ("completed", "failed")
)
_ENDS = frozenset({"response.completed", "response.failed", "response.incomplete", "error"})
_OMITTED = frozenset({"Omit", "NotGiven"})
_open: set[_Session] = set()


def _end_open_sessions() -> None:
    """Record the responses of every connection still open, as exit does (SIGTERM's death skips it)."""
    for session in list(_open):
        session.close()


_jsonl.before_sigterm_death.append(_end_open_sessions)


def _refuse(event: Any, lenses: tuple[Any, ...]) -> None:
    """Raise BudgetExceededError for a ``response.create`` of a lens run stopped by its budget."""
    if _budgets.checking and _field(event, "type") == "response.create":  # a run over budget: ours?
        _budgets.refuse_if_stopped(lenses)


def _watch(session: _Session, connection: Any, is_async: bool) -> None:
    """Wrap ``connection``'s ``recv_bytes``, ``send`` (and openai 3.x's ``send_raw``) and ``close`` in
    place (its identity kept)."""
    monitor = session.monitor
    what = f"watching a {session.operation} connection"
    recv_bytes, send, close = connection.recv_bytes, connection.send, connection.close
    send_raw = getattr(connection, "send_raw", None)
    # a connection never closed: its watch ends when it is collected, or at exit
    weakref.finalize(connection, session.close)

    def sent(event: Any) -> Any:
        try:
            _refuse(event, session.lenses)
            noted = session.sent(event)
            if noted is not None and session.down is not None:
                session.down.append(noted)
            return noted
        except BudgetExceededError:
            raise  # the one error on purpose: a response asked for in a run stopped by its budget, unsent
        except Exception as exc:
            monitor._report(what, exc)
            return None

    def sent_raw(data: Any) -> Any:
        """A message written as it is (``send_raw()``: text or bytes), parsed only when it may be a
        ``response.create``: the search costs about half a nanosecond a byte, half what the base64
        encoding of the caller's audio costs."""
        try:
            maybe = ("response.create" if type(data) is str else b"response.create") in data
            event = orjson.loads(data) if maybe else None
        except Exception:  # not JSON, or neither text nor bytes: the SDK's to send or refuse
            return None
        return sent(event) if type(event) is dict else None

    def unsent(noted: Any) -> None:
        """A send() that raised an error (not a cancellation, which may come once the event is out):
        the event did not go out (the SDK could not encode it, the socket was closed)."""
        if noted is not None:
            try:
                session.unsent(noted)
            except Exception as exc:
                monitor._report(what, exc)

    # ``send`` (or ``send_raw``) noting each event it sends with ``note``, forgotten if it raised
    if is_async:

        def sending(send: Any, note: Any) -> Any:
            async def asend(event: Any, *args: Any, **kwargs: Any) -> Any:
                noted = note(event)
                try:
                    return await send(event, *args, **kwargs)
                except Exception:
                    unsent(noted)
                    raise

            return asend

        async def arecv_bytes(*args: Any, **kwargs: Any) -> Any:
            # a recv after a drop: openai 3.x reconnected (its queue written), or never does
            session.down = None
            try:
                data = await recv_bytes(*args, **kwargs)
            except BaseException as exc:
                session.lost(exc)
                raise
            session.seen(data)
            return data

        async def aclose(*args: Any, **kwargs: Any) -> Any:
            session.closing = time.perf_counter()
            try:
                return await close(*args, **kwargs)
            finally:
                session.close()

        connection.recv_bytes, connection.close = arecv_bytes, aclose
    else:

        def sending(send: Any, note: Any) -> Any:
            def ssend(event: Any, *args: Any, **kwargs: Any) -> Any:
                noted = note(event)
                try:
                    return send(event, *args, **kwargs)
                except Exception:
                    unsent(noted)
                    raise

            return ssend

        def srecv_bytes(*args: Any, **kwargs: Any) -> Any:
            # a recv after a drop: openai 3.x reconnected (its queue written), or never does
            session.down = None
            try:
                data = recv_bytes(*args, **kwargs)
            except BaseException as exc:
                session.lost(exc)
                raise
            session.seen(data)
            return data

        def sclose(*args: Any, **kwargs: Any) -> Any:
            session.closing = time.perf_counter()
            try:
                return close(*args, **kwargs)
            finally:
                session.close()

        connection.recv_bytes, connection.close = srecv_bytes, sclose
    # openai 3.x's send() writes through WebSocketConnectionBase.send_raw, not the instance's: counted once
    if send_raw is not None:
        connection.send_raw = sending(send_raw, sent_raw)
    connection.send = sending(send, sent)


def _opened(manager: Any, connection: Any, is_async: bool) -> None:
    """Watch the connection ``manager`` just opened (best effort: a failure is reported, never raised)."""
    watch = getattr(manager, "_llm_ledger_watch", None)
    if watch is None:  # set by watch_connect() with the class: only a manager made otherwise lacks it
        return
    monitor, client, model, kind = watch
    session = None
    try:
        session = kind(monitor, client, model)
        _watch(session, connection, is_async)
        for event in manager.__dict__.pop("_llm_ledger_queued", ()):  # written as the connection opened
            session.sent(event)
    except Exception as exc:
        monitor._report(f"watching a {kind.operation} connection", exc)
        if session is not None:
            session.close()  # lets its lens runs go: nothing of the connection is watched


@functools.cache
def _watched_manager(cls: Any, is_async: bool) -> Any:
    """A subclass (``isinstance`` still holds) of a connection manager whose ``__enter__`` /
    ``__aenter__`` (and ``enter``, their alias) watch the connection they open."""
    if getattr(cls, "_llm_ledger_watched", False):
        return cls

    def __enter__(self: Any) -> Any:
        connection = cls.__enter__(self)
        _opened(self, connection, False)
        return connection

    async def __aenter__(self: Any) -> Any:
        connection = await cls.__aenter__(self)
        _opened(self, connection, True)
        return connection

    def send(self: Any, event: Any) -> Any:
        """openai 3.x's queue of events the connection writes as it opens: a ``response.create`` refused
        as the connection's ``send()`` refuses it, else noted as sent when the connection opens."""
        _refuse(event, current_lenses())
        cls.send(self, event)
        if _field(event, "type") == "response.create":
            self.__dict__.setdefault("_llm_ledger_queued", []).append(event)

    opens: Any = __aenter__ if is_async else __enter__
    body = {opens.__name__: opens, "enter": opens, "_llm_ledger_watched": True}
    if hasattr(cls, "send"):
        body["send"] = send
    return type(
        cls.__name__, (cls,), {**body, "__module__": cls.__module__, "__qualname__": cls.__qualname__}
    )


def watch_connect(original: Any, client: Any, monitor_of: Any, is_async: bool, api: str) -> Any:
    """A realtime or responses resource's (``api``) ``connect()`` whose manager watches the connection it
    opens for the monitor ``monitor_of()`` gives then (the client's)."""
    kind = {"responses": _ResponsesSession, "live": _LiveSession}.get(api, _RealtimeSession)

    @functools.wraps(original)
    def connect(*args: Any, **kwargs: Any) -> Any:
        manager = original(*args, **kwargs)
        try:
            monitor = monitor_of()
            if monitor is not None:
                manager.__class__ = _watched_manager(manager.__class__, is_async)
                manager._llm_ledger_watch = (monitor, client, kwargs.get("model"), kind)
        except Exception:
            pass  # a manager of another make (no __dict__, slots): handed over as it is
        return manager

    return connect
