"""The read-only cost API, ``GET /costs`` over a log directory (docs/REPORTING.md): one request handler
(:func:`handle`) behind both ``llm-ledger serve LOG_DIR``'s stdlib server and :func:`asgi_app`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import stat
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

from .._cli import add_command, add_listen_options, listening
from .._errors import ConfigError
from ._aggregate import EVENTS, TIME_DIMENSIONS, QueryError, aggregate, make_query, parse_where
from ._read import LogReader
from ._render import strict_json

__all__ = ["PARAMETERS", "asgi_app", "handle", "log_directory", "make_server", "register"]

ENDPOINT: Final = "/costs"
# parameter -> what it takes (the "valid" of a 400 answer)
PARAMETERS: Final = {
    "by": "dimension names, comma-separated or repeated: a context key (user_id, source_id), a record "
    f"field (status), a dotted path (server.address), or one of lens, model, {', '.join(TIME_DIMENSIONS)}",
    "where": "KEY=VALUE, repeatable: e.g. where=user_id=alice",
    "since": "an ISO date or date-time, inclusive: e.g. 2025-11-24 or 2025-11-24T16:00:00Z",
    "until": "an ISO date or date-time, exclusive: e.g. 2025-12-01",
    "tz": "a time zone name whose clock hour, day, week, month, since and until read: e.g. America/New_York "
    "(default: UTC)",
}

# "since=2025-11-24T16:00+02:00" typed into a URL: the query string decodes its "+" as a space
_DECODED_PLUS: Final = re.compile(
    r"^(\d{4}-\d\d-\d\d[T ]\d\d(?::\d\d(?::\d\d(?:\.\d+)?)?)?) (\d\d(?::?\d\d)?)$"
)

Response = tuple[int, bytes]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def log_directory(path: str | os.PathLike[str], *, yet: bool = False) -> Path:
    """``path`` checked to be a directory (or, with ``yet``, not to exist yet); :class:`ConfigError`
    otherwise."""
    directory = Path(path)
    try:
        info: os.stat_result | None = os.stat(directory)
    except (FileNotFoundError, NotADirectoryError):
        info = None
    except OSError as exc:  # a directory on its path this user may not search: not "does not exist"
        raise ConfigError(f"{str(directory)!r}: cannot read: {exc.strerror or exc}") from None
    if (info is None and not yet) or (info is not None and not stat.S_ISDIR(info.st_mode)):
        what = "is not a directory" if info else "does not exist"
        raise ConfigError(
            f"{str(directory)!r} {what}; pass the ledger's log directory (log_dir, 'logs' by default), "
            "which holds llm_calls.jsonl"
        )
    return directory


def _json(status: int, body: Any) -> Response:
    return status, (strict_json(body, indent=None) + "\n").encode()


def _error(status: int, message: str, parameter: str | None = None, valid: Any = None) -> Response:
    return _json(status, {"error": message, "parameter": parameter, "valid": valid})


def _bound(params: dict[str, list[str]], name: str) -> str | None:
    """``since`` or ``until`` as given, a zone offset's "+" decoded as a space put back."""
    values = params.get(name)
    return None if values is None else _DECODED_PLUS.sub(r"\1+\2", values[0])


def handle(log_dir: Path, method: str, path: str, query_string: str) -> Response:
    """The status and JSON body answering one request."""
    if path.rstrip("/") != ENDPOINT:
        return _error(404, f"no endpoint {path[:100]!r}; the API has GET {ENDPOINT}", valid=[ENDPOINT])
    if method not in ("GET", "HEAD"):
        return _error(405, f"{method} is not allowed; {ENDPOINT} is read-only", valid=["GET", "HEAD"])
    params: dict[str, list[str]] = {}
    for name, value in parse_qsl(query_string, keep_blank_values=True):
        if name not in PARAMETERS:
            return _error(400, f"unknown parameter {name[:100]!r}", name[:100], PARAMETERS)
        params.setdefault(name, []).append(value)
    for name in ("since", "until", "tz"):
        if len(params.get(name, [])) > 1:
            message = f"{name} is given {len(params[name])} times; give it once"
            return _error(400, message, name, PARAMETERS[name])
    try:
        query = make_query(
            params.get("by", ["lens"]),
            parse_where(params.get("where", [])),
            _bound(params, "since"),
            _bound(params, "until"),
            params.get("tz", [None])[0],
        )
        if log_dir.exists() and not log_dir.is_dir():
            raise ConfigError(f"the log directory {log_dir.name!r} is not a directory")
        inputs = [log_dir] if log_dir.exists() else []  # not created yet: no call logged so far
        report = aggregate(LogReader(inputs, events=EVENTS, whole_dirs=True), query).to_json()
        for stats in report["inputs"]:
            stats["name"] = os.path.relpath(stats["name"], log_dir)  # no server paths in answers
        return _json(200, report)
    except QueryError as exc:  # a bad parameter, or a dimension no record has (it names those they have)
        return _error(400, str(exc), exc.parameter, PARAMETERS[exc.parameter])
    except ConfigError as exc:
        return _error(500, f"cannot read the logs: {exc}")


def asgi_app(log_dir: str | os.PathLike[str]) -> ASGIApp:
    """An ASGI app answering ``GET /costs`` over the logs in ``log_dir``; mount it anywhere. Logs are
    read in a worker thread, so a large log never blocks the event loop. A ``log_dir`` not created yet
    (an application mounting this at import, before ``configure()`` makes it) answers an empty report
    until it appears; a path that is a file is a :class:`ConfigError`."""
    directory = log_directory(log_dir, yet=True)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):  # mounted under a prefix, and the server kept it in the path
            path = path[len(root) :] or "/"
        query = scope.get("query_string", b"").decode("latin-1")
        status, body = await asyncio.to_thread(handle, directory, scope["method"], path, query)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    return app


def make_server(
    log_dir: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 8000
) -> ThreadingHTTPServer:
    """A stdlib HTTP server answering ``GET /costs`` over ``log_dir`` (``serve_forever()`` runs it)."""
    directory = log_directory(log_dir)

    class Handler(BaseHTTPRequestHandler):
        server_version = "llm-ledger"

        def _answer(self) -> None:
            url = urlsplit(self.path)
            status, body = handle(directory, self.command, url.path, url.query)
            self.send_response(status, HTTPStatus(status).phrase)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

    return ThreadingHTTPServer((host, port), Handler)


def register(subparsers: Any, summary: str) -> None:
    parameters = "\n".join(f"  {name}: {text}" for name, text in PARAMETERS.items())
    parser = add_command(
        subparsers,
        "serve",
        summary,
        _serve,
        description=(
            f"Answer GET {ENDPOINT}?by=user_id&since=...&until=...&where=key=value with the JSON of\n"
            "`llm-ledger report --format json` over the logs in LOG_DIR, read afresh on each request.\n"
            "Read-only; it listens on 127.0.0.1 unless --host says otherwise."
        ),
        epilog=f"parameters of {ENDPOINT}:\n{parameters}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("log_dir", metavar="LOG_DIR", help="the ledger's log directory (e.g. logs)")
    add_listen_options(parser, 8000)


def _serve(args: argparse.Namespace) -> int:
    server = listening(lambda: make_server(args.log_dir, args.host, args.port), args)
    host, port = str(server.server_address[0]), server.server_address[1]
    print(
        f"llm-ledger serve: GET http://{host}:{port}{ENDPOINT} over {args.log_dir} (Ctrl-C stops)", flush=True
    )
    try:
        server.serve_forever()  # until Ctrl-C: the KeyboardInterrupt is main()'s exit status 130
    finally:
        server.server_close()
    return 0
