"""Instrumenting one OpenAI client instance (never the library as a whole).

The seam is the instance's own ``request``, which every resource and its ``with_raw_response`` /
``with_streaming_response`` variants go through; ``copy`` / ``with_options`` keep derived clients
instrumented. A narrow second seam: the ``stream()`` helpers, which may raise above that stream,
hooked when the client makes their resources, and the Realtime and Responses APIs' ``connect()``,
whose WebSocket connections pass that seam by (``_realtime``).
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Mapping
from contextvars import Context, ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

from . import _budgets
from ._background import LATER
from ._context import current_context, current_lenses
from ._errors import warn_internal
from ._extract import OPERATIONS, body_view, output_text, request_shape, response_shape
from ._monitor import _Call
from ._rates import settle_httpx2
from ._realtime import watch_connect
from ._records import interrupted
from ._servers import Endpoint
from ._streams import finish_body, tap_body, watch_helper, watch_stream

if TYPE_CHECKING:
    from ._monitor import LLMCallMonitor
    from ._records import Status

__all__ = ["instrument_client"]

C = TypeVar("C")

_MONITOR_ATTR = "_llm_ledger_monitor"
_HOOKED_ATTR = "_llm_ledger_hooked"
_MOVED_ATTR = "_llm_ledger_moved"  # set once instrument() moved the client to another monitor
_RAW_HEADER = "X-Stainless-Raw-Response"
_USAGE_CHUNKS = frozenset({"chat", "text_completion"})  # streams that send usage when asked to

# the call whose HTTP exchange is in flight in this context (read by the httpx response hook)
_active: ContextVar[_Call | None] = ContextVar("llm_ledger_active_call", default=None)


def _on_response(response: Any) -> None:
    # only kept: its headers are read when the result lacks them, its body when the SDK fails on a 2xx
    call = _active.get()
    if call is not None:
        call.http_response = response


async def _on_response_async(response: Any) -> None:
    _on_response(response)


def _hook_http_client(client: Any, is_async: bool) -> None:
    """See each HTTP response of a call, retries included (best effort; absent hooks cost nothing)."""
    http = getattr(client, "_client", None)
    hooks = getattr(http, "event_hooks", None)
    if http is None or not isinstance(hooks, Mapping) or getattr(http, _HOOKED_ATTR, False):
        return
    hook = _on_response_async if is_async else _on_response
    http.event_hooks = {**hooks, "response": [*hooks.get("response", ()), hook]}
    setattr(http, _HOOKED_ATTR, True)


def _begin(
    monitor: LLMCallMonitor,
    client: Any,
    options: Any,
    stream: bool,
    counts_retries: bool,
    endpoint: Endpoint,
) -> tuple[_Call | None, Any]:
    """Start watching a call; returns the call (None if not watched) and the options to send."""
    operation = OPERATIONS.get(options.url)
    if operation is None or options.method != "post":
        url = options.url
        if operation is None and url.startswith("/responses/"):
            return _begin_later(monitor, client, options, stream, counts_retries, endpoint), options
        # a video's remix, /videos/{id}/remix: a new video, billed as one
        remix = url.startswith("/videos/") and url.endswith("/remix") and url.count("/") == 3
        if operation is not None or options.method != "post" or not remix:
            return None, options
        operation = "video_generation"
    if _budgets.checking:  # a lens run in raise mode caps its calls or went over its budget: ours?
        _budgets.admit(current_lenses())
    try:
        body = options.json_data
        if type(body) is not dict and not isinstance(body, Mapping):  # the ABC check only when needed
            return None, options
        # extra_body: the SDK sends its fields over the body's; the record shows the request as sent
        extra = options.extra_json
        sent = {**body, **extra} if extra and isinstance(extra, Mapping) else body
        request = request_shape(operation, sent, stream=stream)
        headers = options.headers  # NotGiven, or with_raw_response's dict: an ABC check runs Python code
        raw = (
            headers.get(_RAW_HEADER)
            if hasattr(headers, "get") and (type(headers) is dict or isinstance(headers, Mapping))
            else None
        )
        # ask a stream for usage on the caller's behalf, unless the caller reads the HTTP body itself
        # (only the SDK's parsed chunks can hide the usage asked for) or said include_usage: False.
        # with_raw_response's is asked: its callers parse() it (LangChain, header readers), and one
        # reading its http_response's bytes instead sees the usage asked for (docs/RELIABILITY.md).
        # Not a server that streams it unasked (Moonshot's, in the choice that finishes)
        hide_usage = False
        if stream and operation in _USAGE_CHUNKS and monitor.stream_usage and raw in (None, "true"):
            given = body.get("stream_options")
            given = given if isinstance(given, Mapping) else {}
            # stream_options in extra_body would go over ours: theirs stand
            if (
                given.get("include_usage") is None
                and (sent is body or "stream_options" not in extra)
                and not endpoint.usage_unasked(monitor.prices)
            ):
                options = options.model_copy()
                options.json_data = {**body, "stream_options": {**given, "include_usage": True}}
                hide_usage = True
    except Exception as exc:
        monitor._report("reading the request", exc)
        return None, options
    # made last: a call counts in its lenses from here on, so it must reach _finish
    call = _Call(operation, request, endpoint, raw, hide_usage, 0 if counts_retries else None)
    if monitor.capture_content:
        call.client = client
        call.content = monitor._captured_request(sent)
    return call, options


def _begin_later(
    monitor: LLMCallMonitor, client: Any, options: Any, stream: bool, counts_retries: bool, endpoint: Endpoint
) -> _Call | None:
    """Watch ``responses.retrieve(id)`` (streamed or not) and ``responses.cancel(id)``: what a
    background response's end is recorded from (``LLMCallMonitor._later``); None for another call."""
    rest = options.url[len("/responses/") :]
    method = options.method
    cancel = method == "post" and rest.count("/") == 1 and rest.endswith("/cancel")
    if not (cancel or (method == "get" and "/" not in rest)):
        return None  # a delete, input items, an input token count...
    try:
        headers = options.headers
        raw = headers.get(_RAW_HEADER) if isinstance(headers, Mapping) else None
        shape = request_shape("responses", {}, stream=stream)
        # made in an empty context: counted in no lens run unless it sees the end (a poll counts nowhere)
        call = Context().run(_Call, "responses", shape, endpoint, raw, False, 0 if counts_retries else None)
    except Exception as exc:
        monitor._report("reading the request", exc)
        return None
    call.owner = LATER
    call.context = current_context()
    call.background_id = rest.partition("/")[0]
    call.answer = None
    call.around = current_lenses()
    if monitor.capture_content:
        call.client = client
        call.content = {}  # the request's, when the response began here; the output
    return call


def _fail(monitor: LLMCallMonitor, call: _Call, exc: BaseException) -> None:
    """Record a call whose request raised ``exc`` (``interrupted`` for a cancelled task or Ctrl-C)."""
    status: Status = "interrupted" if interrupted(exc) else "error"
    try:
        answer = call.http_response  # the last attempt's answer: a 2xx one was billed (its status is kept)
        if not _maybe_billed(answer, None) and _maybe_billed(None, exc.__cause__):  # from a ReadTimeout
            _lose_answer(call)
        # parse() errors such as LengthFinishReasonError carry the billed completion; others (a
        # pydantic ValidationError) come after a 2xx body the SDK has read: its usage was billed
        completion = getattr(exc, "completion", None)
        if completion is None:
            completion = _read_body(call)
        shape, usage = (None, None) if completion is None else response_shape(call.operation, completion)
        monitor._finish(call, status, shape, usage, error=exc)
    except Exception as inner:
        monitor._report("recording a failed call", inner)
        monitor._finish(call, status, None, None, error=exc)  # what is known for sure (never twice)


def _read_body(call: _Call) -> Any:
    """The 2xx JSON body of a failed call, if the SDK already read it (read by attribute)."""
    response = call.http_response
    if response is None or not 200 <= response.status_code < 300 or call.request["stream"]:
        return None
    return body_view(response)


def _succeed(monitor: LLMCallMonitor, call: _Call, result: Any, is_async: bool) -> None:
    try:
        raw = call.raw
        if raw is not None and hasattr(result, "http_response"):  # with_raw / with_streaming_response
            http_response = result.http_response
            if call.request["stream"] and raw == "true":
                # with_raw_response: parse() is cached by the SDK and not a coroutine, even on async
                # clients: the caller's parse() gets the stream watched here; a caller reading
                # http_response itself gets its bytes tapped (the tap stands aside when parse() reads)
                stream = result.parse()
                watch_stream(monitor, call, stream, is_async=is_async)
                tap_body(monitor, call, http_response, is_async=is_async, beside=stream)
            elif call.request["stream"] or raw == "stream":
                # the body is not read yet, and the caller may read it any way: watch its bytes
                tap_body(monitor, call, http_response, is_async=is_async)
            else:
                # the SDK read the body: read it as create() would, without the caller's parse()
                headers = http_response.headers
                finish_body(monitor, call, http_response.content, headers.get("content-type") or "")
            return
        if call.request["stream"] and hasattr(result, "_iterator"):
            watch_stream(monitor, call, result, is_async=is_async)
            return
        shape, usage = response_shape(call.operation, result)
        output = output_text(call.operation, result) if call.content is not None else None
        monitor._finish(call, "ok", shape, usage, output_text=output)
    except Exception as exc:
        monitor._report("recording a call", exc)
        monitor._finish(call, "ok", None, None)


# the resources whose helpers the ledger hooks, by the client attribute making them: the path to each,
# and stream() (beta's chat.completions is another instance of chat's) or the API whose connect() it is
_HELPER_RESOURCES = {
    "chat": ((("completions",), "stream"),),
    "responses": (((), "stream"), ((), "responses")),
    "beta": (
        (("chat", "completions"), "stream"),
        (("realtime",), "realtime"),
        (("responses",), "responses"),
    ),
    "realtime": (((), "realtime"),),
    "live": (((), "live"),),  # openai 3.x's Live API
}


@functools.cache
def _watched_manager(cls: Any, is_async: bool) -> Any:
    """A subclass (``isinstance`` still holds) of a stream helper's manager whose ``__enter__``
    hands the helper it makes to ``watch_helper``."""
    if getattr(cls, "_llm_ledger_watched", False):  # a client instrumented again: stream() wrapped twice
        return cls

    def __enter__(self: Any) -> Any:
        helper = cls.__enter__(self)
        watch_helper(helper, is_async=False)
        return helper

    async def __aenter__(self: Any) -> Any:
        helper = await cls.__aenter__(self)
        watch_helper(helper, is_async=True)
        return helper

    enter = {"__aenter__": __aenter__} if is_async else {"__enter__": __enter__}
    body = {**enter, "__module__": cls.__module__, "__qualname__": cls.__qualname__}
    return type(cls.__name__, (cls,), {**body, "_llm_ledger_watched": True})


def _watched_stream(original: Any, is_async: bool) -> Any:
    """A resource's ``stream()`` whose manager makes a helper the ledger watches."""

    @functools.wraps(original)
    def stream(*args: Any, **kwargs: Any) -> Any:
        manager = original(*args, **kwargs)
        try:
            manager.__class__ = _watched_manager(manager.__class__, is_async)
        except TypeError:
            pass  # a manager of another make (no __dict__, slots): handed over as it is
        return manager

    return stream


def _hook_helpers(client: Any, root: Any, hooks: Any, is_async: bool) -> None:
    """Give each resource a ``hooks`` path leads to from ``root`` a ``stream()`` whose helper the ledger
    watches, or a ``connect()`` whose WebSocket connection it watches (best effort)."""
    # no warnings.catch_warnings(): it changes the process's filters, and this may run on any thread
    for path, helper in hooks:
        try:
            resource = functools.reduce(getattr, path, root)
            if helper == "stream":
                resource.stream = _watched_stream(resource.stream, is_async)
            else:
                monitor_of = functools.partial(client.__dict__.get, _MONITOR_ATTR)
                resource.connect = watch_connect(resource.connect, client, monitor_of, is_async, helper)
        except Exception:  # not in this SDK's version
            pass


class _HookedResource:
    """A client class's resource attribute (the SDK's ``cached_property``) that hooks the stream
    helper of the resource an instrumented client makes, once per client (then it is in the client's
    ``__dict__``). Set on the class, as only a class attribute is found before the instance's: a
    client not instrumented gets the resource as the SDK makes it."""

    def __init__(self, make: Any, hooks: Any) -> None:
        self.make = make
        self.hooks = hooks
        self.__doc__ = make.__doc__

    def __get__(self, instance: Any, owner: type[Any] | None = None) -> Any:
        resource = self.make.__get__(instance, owner)
        if instance is not None and _MONITOR_ATTR in instance.__dict__:
            is_async = inspect.iscoroutinefunction(type(instance).request)
            _hook_helpers(instance, resource, self.hooks, is_async)
        return resource


def _hook_stream_helpers(instance: Any, is_async: bool) -> None:
    """Hook the helpers of the resources the client made already, and of the others when it makes
    them: never make one here, since that imports its part of the SDK (on openai 3.x beta's whole
    package, which costs a cold start more than the rest of the ledger)."""
    cls = type(instance)
    for name, hooks in _HELPER_RESOURCES.items():
        if name not in instance.__dict__:
            make = inspect.getattr_static(cls, name, None)
            if isinstance(make, _HookedResource):
                continue
            if isinstance(make, functools.cached_property):
                try:
                    setattr(cls, name, _HookedResource(make, hooks))
                    continue
                except Exception:  # a class of another make: hooked now, as below
                    pass
        _hook_helpers(instance, instance, [((name, *path), helper) for path, helper in hooks], is_async)


def _maybe_billed(answer: Any, exc: BaseException | None) -> bool:
    """Whether a failed attempt may have been billed, its usage unknown: answered 2xx and the body then
    broke, or a ``ReadTimeout`` (of httpx, httpx2 and httpcore alike: the server may be generating it).
    A connect, write or pool timeout or a connection refused sent nothing to bill."""
    if answer is not None and 200 <= answer.status_code < 300:
        return True
    return type(exc).__name__ == "ReadTimeout"


def _lose_answer(call: _Call) -> None:
    """Count an attempt of ``call`` that may have been billed in its record and its lens runs; never a
    retrieve's (reading a background response is not billed)."""
    if call.owner is LATER:
        return
    call.lost += 1
    for run in call.lenses:
        run._totals.lose_answer()


def _count_retries(instance: Any) -> bool:
    """Count the SDK's retries of a call by extending its retry sleep; False if it has none."""
    sleep = getattr(type(instance), "_sleep_for_retry", None)
    if not callable(sleep):
        return False
    original = sleep.__get__(instance)

    def sleep_for_retry(*args: Any, **kwargs: Any) -> Any:  # an async client awaits what it returns
        # the call in flight: an outer one (maybe of a client not counting) while one not watched retries
        call = _active.get()
        if call is not None and call.retries is not None:
            call.retries += 1
            # called while the SDK handles the attempt's error: an answer it drops may have been billed
            if _maybe_billed(call.http_response, sys.exc_info()[1]):
                _lose_answer(call)
            call.http_response = None  # the next attempt's answer, if any, is its own
        return original(*args, **kwargs)

    instance._sleep_for_retry = sleep_for_retry
    return True


def instrument_client(monitor: LLMCallMonitor, client: C) -> C:
    """Instrument ``client`` in place for ``monitor`` and return the same object."""
    instance: Any = client
    cls = type(instance)
    if isinstance(instance, type) and callable(getattr(instance, "request", None)):
        raise TypeError(
            f"instrument() expects an openai client, got the class {instance.__name__} itself; "
            f"pass a client: instrument({instance.__name__}(...))"
        )
    if not (callable(getattr(cls, "request", None)) and callable(getattr(cls, "copy", None))):
        raise TypeError(
            "instrument() expects an openai client (OpenAI, AsyncOpenAI, AzureOpenAI or AsyncAzureOpenAI), "
            f"got {cls.__module__}.{cls.__qualname__}"
        )
    previous = instance.__dict__.get(_MONITOR_ATTR)
    if previous is monitor:
        return client
    if previous is not None and not instance.__dict__.get(_MOVED_ATTR):
        # the last instrument() wins (the one the caller just asked for); the monitor that loses the
        # client (its log, sinks, budgets) must not do so silently; said once per client
        setattr(instance, _MOVED_ATTR, True)
        warn_internal(
            "llm-ledger: instrument(): this %s client was already instrumented by another monitor; it now "
            "reports to the monitor instrumenting it last, and the other monitor no longer sees its calls "
            "(instrument a separate client to watch calls with each)",
            cls.__name__,
        )
    settle_httpx2()
    original = cls.request.__get__(instance)
    is_async = inspect.iscoroutinefunction(original)
    counts_retries = _count_retries(instance)
    endpoint = Endpoint(instance)  # its provider and prices, resolved once (at its first priced call)

    # thin shells around _begin / _succeed / _fail: the one difference is the await
    if is_async:

        async def arequest(
            cast_to: Any, options: Any, *, stream: bool = False, stream_cls: Any = None
        ) -> Any:
            call, options = _begin(monitor, instance, options, stream, counts_retries, endpoint)
            if call is None:
                return await original(cast_to, options, stream=stream, stream_cls=stream_cls)
            token = _active.set(call)
            try:
                result = await original(cast_to, options, stream=stream, stream_cls=stream_cls)
            except BaseException as exc:
                _fail(monitor, call, exc)
                raise
            finally:
                _active.reset(token)
            _succeed(monitor, call, result, True)
            return result

        instance.request = arequest
    else:

        def request(cast_to: Any, options: Any, *, stream: bool = False, stream_cls: Any = None) -> Any:
            call, options = _begin(monitor, instance, options, stream, counts_retries, endpoint)
            if call is None:
                return original(cast_to, options, stream=stream, stream_cls=stream_cls)
            token = _active.set(call)
            try:
                result = original(cast_to, options, stream=stream, stream_cls=stream_cls)
            except BaseException as exc:
                _fail(monitor, call, exc)
                raise
            finally:
                _active.reset(token)
            _succeed(monitor, call, result, False)
            return result

        instance.request = request

    class_copy = cls.copy

    def copy(*args: Any, **kwargs: Any) -> Any:
        return instrument_client(monitor, class_copy(instance, *args, **kwargs))

    instance.copy = copy
    instance.with_options = copy
    setattr(instance, _MONITOR_ATTR, monitor)
    _hook_http_client(instance, is_async)
    _hook_stream_helpers(instance, is_async)
    return client
