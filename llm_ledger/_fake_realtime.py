"""The fake OpenAI server's WebSocket APIs: the Realtime API's ``/v1/realtime``, the Responses API's
``/v1/responses`` and the Live API's ``/v1/live/sessions`` (the ``websockets`` library's server, in a
thread of its own, on a port of its own), speaking the events the SDK's ``realtime.connect()``,
``responses.connect()`` and ``live.connect()`` expect, with deterministic text and usage. Started by
:attr:`FakeOpenAI.websocket_base_url`; described in docs/FAKE_SERVER.md ("Realtime", "Responses over a
WebSocket", "Live"), which must stay true to this module.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ._fake_server import (
    STREAM_ERROR,
    JSONDict,
    _check_headers,
    _Refusal,
    _reply_text,
    _responses,
    _tokens,
    _tool_calls,
)

__all__ = ["RealtimeServer"]

TRANSCRIPT = _reply_text("the recording", {})  # what the session's input transcription hears
IMAGE_TOKENS = 85  # the tokens of each input_image part of an item (a low-detail image's)
LIVE_ASK = "what is the weather like"  # what a Live session asks its Responses delegation
# the x-fake-* keys a response.create's metadata takes (strings, as metadata is): int, or the values taken
_STEERING: dict[str, Any] = {
    "x-fake-chunks": int,
    "x-fake-cached-tokens": int,
    "x-fake-cached-audio-tokens": int,
    "x-fake-cached-image-tokens": int,
    "x-fake-status": ("completed", "cancelled", "incomplete", "failed"),
    "x-fake-fault": ("close", "error"),
}
# the metadata keys of the input tokens served by the cache, by kind
_CACHED = {
    "text_tokens": "x-fake-cached-tokens",
    "audio_tokens": "x-fake-cached-audio-tokens",
    "image_tokens": "x-fake-cached-image-tokens",
}
_DETAILS: dict[str, JSONDict] = {
    "cancelled": {"type": "cancelled", "reason": "client_cancelled"},
    "incomplete": {"type": "incomplete", "reason": "max_output_tokens"},
    "failed": {
        "type": "failed",
        "error": {"type": "server_error", "code": "server_error", "message": STREAM_ERROR},
    },
}


def transcription(session: JSONDict) -> JSONDict:
    """How a session transcribes its input audio (``audio.input.transcription``, the beta's
    ``input_audio_transcription``: its ``model``...), empty when it transcribes none."""
    audio = session.get("audio")
    heard = audio.get("input") if isinstance(audio, dict) else None
    chosen = heard.get("transcription") if isinstance(heard, dict) else None
    if chosen is None:
        chosen = session.get("input_audio_transcription")
    return chosen if isinstance(chosen, dict) else {}


class _Session:
    """One connection's state: its session, conversation and input audio buffer."""

    def __init__(self, server: RealtimeServer, connection: Any, model: str | None) -> None:
        self.server = server
        self.connection = connection
        self.session: JSONDict = {
            "id": f"sess_{next(server.counter)}",
            "object": "realtime.session",
            "type": "realtime",
            "model": model,
            "output_modalities": ["audio"],
            "instructions": "",
        }
        self.ids = itertools.count(1)  # of its items and responses: a script replayed gets the same ids
        self.items: list[JSONDict] = []  # each: role, text, audio tokens (the conversation, in order)
        self.buffer = bytearray()
        self.events = (f"event_{n}" for n in itertools.count(1))

    def send(self, event: JSONDict) -> None:
        self.connection.send(json.dumps({"event_id": next(self.events), **event}))

    def run(self) -> None:
        self.send({"type": "session.created", "session": self.session})
        for event in self.server.events(self.connection):
            try:
                if event is None:
                    raise _Refusal(400, "The event must be a JSON object.")
                if self.handle(event) == "close":
                    return
            except _Refusal as refused:  # an error event naming the client event refused, as the API's
                error = {**refused.reply.body["error"], "event_id": (event or {}).get("event_id")}
                self.send({"type": "error", "error": error})

    def handle(self, event: JSONDict) -> str | None:
        kind = event.get("type")
        if kind == "session.update":
            self.session.update(event.get("session") or {})
            self.send({"type": "session.updated", "session": self.session})
        elif kind == "conversation.item.create":
            item = event.get("item") or {}
            parts = [part for part in item.get("content") or () if isinstance(part, dict)]
            text = "".join(part.get("text") or part.get("transcript") or "" for part in parts)
            images = IMAGE_TOKENS * sum(part.get("type") == "input_image" for part in parts)
            self.items.append({"role": item.get("role", "user"), "text": text, "audio": 0, "image": images})
            stored = {"id": f"item_{next(self.ids)}", "status": "completed", **item}
            self.send({"type": "conversation.item.created", "previous_item_id": None, "item": stored})
        elif kind == "input_audio_buffer.append":
            try:
                self.buffer += base64.b64decode(event.get("audio") or "", validate=True)
            except ValueError:
                raise _Refusal(400, "Invalid 'audio': not base64.", code="invalid_value") from None
        elif kind == "input_audio_buffer.commit":
            if not self.buffer:
                message = "Error committing input audio buffer: buffer is empty."
                raise _Refusal(400, message, code="input_audio_buffer_commit_empty")
            # a token of audio per 100 bytes, as the fake's transcriptions count it
            audio = math.ceil(len(self.buffer) / 100)
            self.items.append({"role": "user", "text": "", "audio": audio, "image": 0})
            item = f"item_{next(self.ids)}"
            self.send({"type": "input_audio_buffer.committed", "item_id": item})
            self.transcribe(item, audio)
            self.buffer.clear()
        elif kind == "input_audio_buffer.clear":
            self.buffer.clear()
            self.send({"type": "input_audio_buffer.cleared"})
        elif kind == "response.create":
            return self.respond(event)
        elif kind == "response.cancel":  # every response has ended by the time the next event is read
            message = "Cancellation failed: no active response found"
            raise _Refusal(400, message, code="response_cancel_not_active")
        else:
            raise _Refusal(400, f"Invalid value: {kind!r}. Supported values are the Realtime client events.")
        return None

    def transcribe(self, item: str, audio: int) -> None:
        """The committed audio's transcript, when the session transcribes its input: billed in tokens
        (gpt-4o models: the audio's in, the text's out) or seconds (whisper-1: 16,000 bytes a second); a
        failure in its place when its ``prompt`` says ``x-fake-fault: error``, none with ``hang``."""
        chosen = transcription(self.session)
        model = chosen.get("model")
        if model is None or chosen.get("prompt") == "x-fake-fault: hang":
            return
        if chosen.get("prompt") == "x-fake-fault: error":
            error = {"type": "server_error", "code": "server_error", "message": STREAM_ERROR, "param": None}
            self.send({"type": "conversation.item.input_audio_transcription.failed", "item_id": item,
                       "content_index": 0, "error": error})  # fmt: skip
            return
        if model == "whisper-1":
            usage: JSONDict = {"type": "duration", "seconds": len(self.buffer) / 16000}
        else:
            out = _tokens(TRANSCRIPT)
            usage = {"type": "tokens", "input_tokens": audio, "output_tokens": out,
                     "total_tokens": audio + out,
                     "input_token_details": {"text_tokens": 0, "audio_tokens": audio}}  # fmt: skip
        self.send({"type": "conversation.item.input_audio_transcription.completed", "item_id": item,
                   "content_index": 0, "transcript": TRANSCRIPT, "usage": usage})  # fmt: skip

    def respond(self, event: JSONDict) -> str | None:
        asked = event.get("response") or {}
        steering = asked.get("metadata") or {}
        for key, value in steering.items():
            kind = _STEERING.get(key)
            valid = str(value).isdigit() if kind is int else kind is not None and value in kind
            if key.startswith("x-fake-") and not valid:
                raise _Refusal(400, f"Unknown fake steering {key}: {value!r} (docs/FAKE_SERVER.md, Realtime)")
        if steering.get("x-fake-fault") == "error":
            message = "The fake refused this response.create (x-fake-fault: error)."
            raise _Refusal(400, message, code="fake_error")
        modalities = (
            asked.get("output_modalities") or asked.get("modalities") or self.session.get("output_modalities")
        )
        # a function the response (else the session) must call: its arguments, in place of an answer
        tools = {key: asked.get(key, self.session.get(key)) for key in ("tools", "tool_choice")}
        called = next((c["function"] for c in _tool_calls(tools, {}, next(self.server.counter))), None)
        audio = "audio" in (modalities or ()) and called is None
        status = steering.get("x-fake-status", "completed")
        user = next(
            (item["text"] for item in reversed(self.items) if item["role"] == "user" and item["text"]), ""
        )
        text = _reply_text(user, {}) if called is None else called["arguments"]
        chunks = max(1, int(steering.get("x-fake-chunks", 5)))
        size = math.ceil(len(text) / chunks)
        pieces = [text[i : i + size] for i in range(0, len(text), size)]
        if status in ("cancelled", "incomplete"):  # stopped halfway
            pieces = pieces[: max(1, len(pieces) // 2)]
        elif status == "failed":
            pieces = []
        said = "".join(pieces)
        rid, iid = f"resp_{next(self.ids)}", f"item_{next(self.ids)}"
        response: JSONDict = {"id": rid, "object": "realtime.response"}
        opened = {**response, "status": "in_progress", "output": [], "usage": None}
        self.send({"type": "response.created", "response": opened})
        at = {"response_id": rid, "item_id": iid, "output_index": 0}
        where = {**at, "content_index": 0}
        for piece in pieces:
            if called is not None:
                self.send({"type": "response.function_call_arguments.delta", **at, "call_id": f"call_{iid}",
                           "delta": piece})  # fmt: skip
            elif audio:
                self.send({"type": "response.output_audio_transcript.delta", **where, "delta": piece})
                self.send({"type": "response.output_audio.delta", **where,
                           "delta": base64.b64encode(bytes(len(piece))).decode()})  # fmt: skip
            else:
                self.send({"type": "response.output_text.delta", **where, "delta": piece})
        if steering.get("x-fake-fault") == "close":
            self.connection.close(1011, "fake fault: closed mid-response")
            return "close"
        # the input: every item of the conversation so far (text, 4 a message; audio apart), as the API
        # bills each response the whole conversation it reads
        text_in = sum(_tokens(item["text"]) + 4 for item in self.items) + _tokens(
            self.session.get("instructions") or ""
        )
        read = {
            "text_tokens": text_in,
            "audio_tokens": sum(item["audio"] for item in self.items),
            "image_tokens": sum(item["image"] for item in self.items),
        }
        cached = {kind: min(tokens, int(steering.get(_CACHED[kind], 0))) for kind, tokens in read.items()}
        text_out = _tokens(said)
        audio_out = len(said) if audio else 0  # an audio token a character, as the fake's speech
        output = []
        if status != "failed":  # the answer joins the conversation
            done = "completed" if status == "completed" else "incomplete"
            item = {"id": iid, "object": "realtime.item", "status": done}
            if called is not None:
                call = {"name": called["name"], "call_id": f"call_{iid}", "arguments": said}
                output.append({**item, "type": "function_call", **call})
            else:
                kind, key = ("output_audio", "transcript") if audio else ("output_text", "text")
                answer = {"type": "message", "role": "assistant", "content": [{"type": kind, key: said}]}
                output.append({**item, **answer})
            self.items.append({"role": "assistant", "text": said, "audio": audio_out, "image": 0})
        usage = {
            "total_tokens": sum(read.values()) + text_out + audio_out,
            "input_tokens": sum(read.values()),
            "output_tokens": text_out + audio_out,
            "input_token_details": {
                **read,
                "cached_tokens": sum(cached.values()),
                "cached_tokens_details": cached,
            },
            "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
        }
        response.update(status=status, status_details=_DETAILS.get(status), output=output)
        response.update(output_modalities=modalities, metadata=asked.get("metadata"), usage=usage)
        self.send({"type": "response.done", "response": response})
        return None


class _ResponsesSocket:
    """One Responses API connection: each ``response.create`` answered with the events the HTTP fake
    streams for the same request (its ``_responses``), steered by the handshake's ``x-fake-*`` headers
    and the create's ``x-fake-*`` metadata keys; each event names the create's lane (``stream_id``)."""

    def __init__(self, server: RealtimeServer, connection: Any) -> None:
        self.server = server
        self.connection = connection
        self.headers = {
            k.lower(): v for k, v in connection.request.headers.raw_items() if k.lower().startswith("x-fake-")
        }

    def run(self) -> None:
        for event in self.server.events(self.connection):
            if event is None:
                self.refuse({}, _Refusal(400, "The event must be a JSON object."))
            elif event.get("type") != "response.create":
                message = f"Invalid value: {event.get('type')!r}. Supported values are: 'response.create'."
                self.refuse(event, _Refusal(400, message))
            elif self.respond(event) == "close":
                return

    def emit(self, event: JSONDict) -> None:
        """Send one event of a response."""
        self.connection.send(json.dumps(event))

    def refuse(self, event: JSONDict, refused: _Refusal) -> None:
        lane = {"stream_id": event["stream_id"]} if "stream_id" in event else {}
        error = {"type": "error", "status": refused.reply.status, "error": refused.reply.body["error"]}
        self.connection.send(json.dumps({**error, **lane}))

    def respond(self, event: JSONDict) -> str | None:
        body = {k: v for k, v in event.items() if k not in ("type", "stream_id")}
        metadata = body.get("metadata")
        metadata = metadata if isinstance(metadata, dict) else {}
        headers = {**self.headers, **{k: str(v) for k, v in metadata.items() if k.startswith("x-fake-")}}
        faults = {f.strip() for f in headers.get("x-fake-fault", "").split(",") if f.strip()}
        try:
            _check_headers(headers)
            stream = _responses({**body, "stream": True}, headers, next(self.server.counter), faults)
        except _Refusal as refused:
            self.refuse(event, refused)
            return None
        except Exception as exc:  # a request the fake does not understand, as the HTTP fake answers it
            self.refuse(event, _Refusal(500, f"fake server error: {exc!r}"))
            return None
        lane = {"stream_id": event["stream_id"]} if "stream_id" in event else {}
        cut = bool(faults & {"cut-stream", "reset"})
        for sent in stream.events:  # type: ignore[union-attr]
            if sent["type"] == "error":  # over a WebSocket, its detail is in "error"
                sent = {"type": "error", "sequence_number": sent["sequence_number"],
                        "error": {k: sent[k] for k in ("code", "message", "param")}}  # fmt: skip
            self.emit({**sent, **lane})
            if cut and sent["type"].endswith(".delta"):
                self.connection.close(1011, "fake fault: closed mid-response")
                return "close"
        return None


class _LiveSocket(_ResponsesSocket):
    """One Live API connection (``live.connect()``, openai 3.x): ``session.start`` answered with
    ``session.started``; each ``response.create`` with a response of the session's Responses delegation
    (``session.delegation.responses``: its ``model``, else gpt-4.1-mini, and ``instructions``, to the
    input ``LIVE_ASK``), the events the HTTP fake streams for it each wrapped in a ``response.event``
    naming the delegation; ``session.close`` with ``session.closed``, its usage the seconds of input
    audio appended (24 kHz 16-bit: 48,000 bytes a second, rounded up), then the fake closes."""

    def run(self) -> None:
        config: JSONDict | None = None
        audio = 0
        events = (f"event_{n}" for n in itertools.count(1))
        for given in self.server.events(self.connection):
            event = given or {}
            kind, reply = event.get("type"), None
            if kind == "session.start":
                config = event.get("session") or {}
                session = {"id": f"live_{next(self.server.counter)}", "object": "live.session",
                           "model": config.get("model"), "status": "active", "expires_at": 0}  # fmt: skip
                reply = {"type": "session.started", "session": session}
            elif kind == "session.input_audio.append":
                audio += len(base64.b64decode(event.get("audio") or ""))
            elif kind == "response.create" and config is not None:
                delegated = _object(_object(config.get("delegation")).get("responses"))
                self.delegation = f"deleg_{next(self.server.counter)}"
                self.respond({"type": "response.create", "input": LIVE_ASK,
                              "model": delegated.get("model", "gpt-4.1-mini"),
                              "instructions": delegated.get("instructions")})  # fmt: skip
            elif kind == "session.close" and config is not None:
                reply = {"type": "session.closed", "reason": "close_requested", "session": session,
                         "usage": {"seconds": math.ceil(audio / 48000)}}  # fmt: skip
            else:
                reply = {"type": "error", "error": {"type": "invalid_request_error", "code": None,
                         "message": f"Unexpected event {kind!r}", "param": None}}  # fmt: skip
            if reply is not None:
                self.connection.send(json.dumps({"event_id": next(events), **reply}))
            if kind == "session.close" and config is not None:
                return

    def emit(self, event: JSONDict) -> None:
        wrapped = {"type": "response.event", "event_id": f"event_{next(self.server.counter)}",
                   "delegation_id": self.delegation, "event": event}  # fmt: skip
        self.connection.send(json.dumps(wrapped))


def _object(value: Any) -> JSONDict:
    return value if isinstance(value, dict) else {}


class RealtimeServer:
    """The WebSocket endpoints (Realtime, and Responses over a WebSocket): a ``websockets`` server on
    loopback, each connection served in a thread."""

    def __init__(self, host: str, history: bool = True) -> None:
        try:
            from websockets.sync.server import serve
        except ImportError as exc:
            raise RuntimeError(
                "FakeOpenAI's Realtime endpoint needs the websockets package: pip install 'openai[realtime]'"
            ) from exc
        self.counter = itertools.count(1)
        self.received: list[JSONDict] = []  # every client event, in order (none without history)
        self.history = history
        self._connections: set[Any] = set()
        self._lock = threading.Lock()
        self._server = serve(self._serve, host, 0, process_request=self._check)
        self.port = int(self._server.socket.getsockname()[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def events(self, connection: Any) -> Iterator[JSONDict | None]:
        """Each client event of ``connection``, recorded (with ``history``); None for one that is not a
        JSON object."""
        for message in connection:
            try:
                event = json.loads(message)
            except ValueError:
                event = None
            if type(event) is dict and self.history:
                self.received.append(event)
            yield event if type(event) is dict else None

    @staticmethod
    def _check(connection: Any, request: Any) -> Any:
        path = urlsplit(request.path).path
        if not path.endswith(("/realtime", "/responses", "/live/sessions")):
            return connection.respond(
                404,
                "The fake serves WebSockets at /v1/realtime, /v1/responses and /v1/live/sessions, "
                f"not {path}\n",
            )
        return None

    def _serve(self, connection: Any) -> None:
        with self._lock:
            self._connections.add(connection)
        try:
            url = urlsplit(connection.request.path)
            if url.path.endswith("/responses"):
                _ResponsesSocket(self, connection).run()
            elif url.path.endswith("/live/sessions"):
                _LiveSocket(self, connection).run()
            else:
                query = parse_qs(url.query)
                _Session(self, connection, (query.get("model") or [None])[0]).run()
        except Exception:  # the client went away: its connection is done
            pass
        finally:
            with self._lock:
                self._connections.discard(connection)

    def stop(self) -> None:
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.close(1001)
        self._server.shutdown()
        self._thread.join(timeout=5)
