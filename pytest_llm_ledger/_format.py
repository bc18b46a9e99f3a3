"""The cassette file format: readable YAML that is safe to load and diffs well.

A cassette is ``{version: 1, interactions: [{request: ..., response: ...}, ...]}``. A request holds
``method``, ``url``, ``headers`` and at most one body key, a response ``status``, ``headers`` and at
most one body key: ``json`` (parsed), ``sse`` (a list of events, JSON ``data`` parsed), ``text`` (any
other UTF-8) or ``base64`` (bytes that are not UTF-8, or compressed in an encoding not undone here).
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import re
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from llm_ledger import CassetteError
from llm_ledger.loading import Document, JsonLoader, join, read_file
from llm_ledger.loading import invalid_yaml as loading_invalid_yaml

__all__ = [
    "REQUEST_HEADERS",
    "RESPONSE_HEADERS",
    "body_bytes",
    "decode_body",
    "dump_cassette",
    "dump_document",
    "invalid_yaml",
    "load_cassette",
    "read_cassette",
    "read_text",
    "shown_path",
    "write_atomic",
]

FORMAT_VERSION = 1
MAX_CASSETTE_BYTES = 64 << 20  # far past any recording; a bigger file is a mistake, not a cassette
# Allow-lists, not deny-lists: a header nobody thought of stays out of the file.
REQUEST_HEADERS = frozenset({"content-type"})
# what the OpenAI SDK reads of an answer to decide on a retry: a replayed error retries as it did live
RESPONSE_HEADERS = frozenset({"content-type", "retry-after", "retry-after-ms", "x-should-retry"})
_BODY_KEYS = ("json", "sse", "text", "base64")
_REQUEST_KEYS = ("method", "url", "headers", *_BODY_KEYS)
_RESPONSE_KEYS = ("status", "headers", *_BODY_KEYS)
_INTERACTION = "a mapping with keys 'request' and 'response'"
_TOP = "a mapping with keys 'version' and 'interactions'"
_METHOD_URL = {"method": "a non-empty string, e.g. POST", "url": "a non-empty string, the URL requested"}

Body = tuple[str, Any]  # (kind, value); kind is "" for an empty body

_SafeDumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _AliasDumper(_SafeDumper):  # type: ignore[valid-type,misc]
    """Writes multi-line strings as literal blocks, so prompts diff by line."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_AliasDumper.add_representer(str, _represent_str)


class _Dumper(_AliasDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # a cassette never uses anchors: they hurt review, and loading refuses them


# -- bodies -------------------------------------------------------------------------------------


def decompress(raw: bytes, encoding: str) -> bytes | None:
    """Undo a Content-Encoding as httpx does (br and zstd from whichever module is installed, every
    frame of a zstd body); None when this interpreter cannot, or the bytes are not valid in it."""
    encodings = [e.strip().lower() for e in encoding.split(",") if e.strip()]
    data = raw
    try:
        for enc in reversed(encodings):
            if enc == "identity":
                continue
            if enc in ("gzip", "x-gzip"):
                data = zlib.decompress(data, 16 + zlib.MAX_WBITS)
            elif enc == "deflate":
                try:
                    data = zlib.decompress(data)
                except zlib.error:
                    data = zlib.decompress(data, -zlib.MAX_WBITS)
            elif enc == "br" and (brotli := _module("brotli", "brotlicffi")) is not None:
                data = brotli.decompress(data)
            elif enc == "zstd" and (zstd := _module("compression.zstd", "backports.zstd", "zstandard")):
                data = _unzstd(zstd, data)
            else:
                return None
    except Exception:  # a body its own header misdescribes: the caller's read fails, not the recording
        return None
    return data


def _module(*names: str) -> Any:
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def _unzstd(zstd: Any, data: bytes) -> bytes:
    if zstd.__name__ != "zstandard":
        result: bytes = zstd.decompress(data)  # reads frame after frame; an incomplete one is an error
        return result
    out = []
    while data:  # zstandard's decompressobj stops at the end of a frame: start the next one
        frame = zstd.ZstdDecompressor().decompressobj()
        out.append(frame.decompress(data))
        if not frame.eof:
            raise ValueError("zstd data is incomplete")
        data = frame.unused_data
    return b"".join(out)


def _parse_sse(text: str) -> list[dict[str, Any]] | None:
    """Split an event stream into events; None when it holds anything the list form cannot keep."""
    events: list[dict[str, Any]] = []
    blocks = text.replace("\r\n", "\n").split("\n\n")
    if blocks.pop() != "":  # a stream that does not end with a blank line: keep it verbatim
        return None
    for block in blocks:
        event: dict[str, Any] = {}
        for line in block.split("\n"):
            field, sep, value = line.partition(":")
            if not sep or field not in ("event", "data", "id") or field in event:
                return None  # comments, retry:, multi-line data: not representable, keep as text
            value = value.removeprefix(" ")
            if field == "data":  # JSON data is stored parsed, replayed compact: clients parse it the same
                try:
                    parsed = _loads(value)
                except ValueError:
                    parsed = None
                event["data"] = parsed if isinstance(parsed, dict | list) else value
            else:
                event[field] = value
        if "data" not in event:
            return None
        events.append(event)
    return events


def _dump_json(value: Any) -> bytes:
    # ASCII: a line separator or NEL written raw would split the line for a line reader (iter_lines)
    return json.dumps(value, separators=(",", ":")).encode()


_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")  # an escaped UTF-16 surrogate


def _loads(text: str) -> Any:
    """``text`` parsed as JSON; ValueError also for a lone surrogate (half an emoji), which JSON escapes
    and UTF-8 and YAML cannot hold: the text is then kept as it came."""
    value = json.loads(text)
    if _SURROGATE.search(text):
        json.dumps(value, ensure_ascii=False).encode()  # UnicodeEncodeError is a ValueError
    return value


def decode_body(raw: bytes, content_type: str) -> Body:
    """The structured form of a (decompressed) body, chosen from its content type and content."""
    if not raw:
        return ("", None)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return ("base64", base64.b64encode(raw).decode("ascii"))
    ctype = content_type.lower()
    if ctype.startswith("text/event-stream"):
        events = _parse_sse(text)
        return ("sse", events) if events is not None else ("text", text)
    if "json" in ctype or (not ctype and text[:1] in "{["):
        try:
            return ("json", _loads(text))
        except ValueError:
            pass
    return ("text", text)


def body_bytes(body: Body) -> bytes:
    """The bytes a structured body is replayed as."""
    kind, value = body
    if kind == "json":
        return _dump_json(value)
    if kind == "sse":
        out: list[bytes] = []
        for event in value:
            for field in ("event", "id"):
                if field in event:
                    out.append(f"{field}: {event[field]}\n".encode())
            data = event["data"]
            out.append(b"data: " + (data.encode() if isinstance(data, str) else _dump_json(data)) + b"\n\n")
        return b"".join(out)
    if kind == "text":
        return str(value).encode()
    if kind == "base64":
        return base64.b64decode(value)
    return b""


def response_body(raw: bytes, headers: Mapping[str, list[str]]) -> tuple[Body, dict[str, str]]:
    """Decompress and structure a recorded response body; returns it with the headers to keep."""
    lowered = {k.lower(): v for k, v in headers.items()}
    kept = {k: lowered[k][0] for k in sorted(RESPONSE_HEADERS) if lowered.get(k)}
    encoding = (lowered.get("content-encoding") or [""])[0]
    if encoding and raw:
        decoded = decompress(raw, encoding)
        if decoded is None:  # cannot undo it here: keep the bytes and the header that explains them
            kept["content-encoding"] = encoding
            return ("base64", base64.b64encode(raw).decode("ascii")), kept
        raw = decoded
    return decode_body(raw, kept.get("content-type", "")), kept


# -- files --------------------------------------------------------------------------------------


def dump_cassette(interactions: list[dict[str, Any]], header: str) -> str:
    """The YAML text of a cassette; ``header`` becomes leading comment lines."""
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comment + dump_document({"version": FORMAT_VERSION, "interactions": interactions})


def dump_document(doc: dict[str, Any], *, keep_aliases: bool = False) -> str:
    """The YAML text of a cassette document: the one serializer of recordings and of ``llm-ledger
    scrub``, so a scrub's diff shows only what it removed. ``keep_aliases``: objects a loaded file
    shared through aliases are written once (scrub: a billion laughs stays small)."""
    dumper = _AliasDumper if keep_aliases else _Dumper
    text: str = yaml.dump(doc, Dumper=dumper, sort_keys=False, allow_unicode=True, width=100)
    return text


def shown_path(path: Path | str) -> str:
    """How every message shows a path: relative to the current directory when below it, else absolute."""
    absolute = Path(os.path.abspath(path))
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a crash or a parallel reader never sees half a file.

    A file keeps its mode; a new one gets 0666 less the umask (applied by the system: changing the
    process's umask would race other threads), not mkstemp's 0600: cassettes are committed, reports
    read by other CI steps. A symbolic link is written through: renamed over, it would become a copy
    and its target keep the old text (a scrub would leave the secrets there).
    """
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode: int | None = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = None
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_text(path: Path) -> str:
    """The text of a cassette file; :class:`CassetteError` when it cannot be read or is not UTF-8."""
    raw = read_file(str(path), CassetteError, "cassette", max_bytes=MAX_CASSETTE_BYTES)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CassetteError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def invalid_yaml(path: Path, exc: yaml.YAMLError, text: str) -> CassetteError:
    """:func:`llm_ledger.loading.invalid_yaml`'s error, saying why a Python tag is refused."""
    message = loading_invalid_yaml(str(path), exc, text)
    if "could not determine a constructor" in message:  # a tag naming a Python object
        message += "; cassettes hold plain YAML only: tags that would build Python objects are refused"
    return CassetteError(message)


def load_cassette(path: Path) -> list[dict[str, Any]]:
    """A cassette's interactions, ``{"request": .., "response": ..}`` with :data:`Body` bodies, loaded
    safely and validated; :class:`CassetteError` naming the file and place."""
    return read_cassette(path)[0]


def read_cassette(path: Path) -> tuple[list[dict[str, Any]], Any, str]:
    """:func:`load_cassette`'s interactions, the document they share bodies with and the file's text,
    for ``llm-ledger scrub``'s check without a second parse."""
    path = Path(shown_path(path))  # as every message shows it
    text = read_text(path)
    try:
        _refuse_aliases(path, text)
        doc = Document(str(path), CassetteError, "a cassette", loader=JsonLoader)
        root = doc.compose(text)
        data = doc.value(root) if root is not None else None
        return _interactions(doc, root, data), data, text
    except yaml.YAMLError as exc:
        problem = str(invalid_yaml(path, exc, text))
    except CassetteError as exc:
        problem = str(exc)
    raise CassetteError(
        f"{problem}. The file is not a valid llm-ledger cassette; fix it, "
        "or replace it with a fresh recording (--llm-record-mode=rewrite)"
    )


# where an anchor can start (after a line's indentation, "- ", ": ", "[", "{" or ","); a prompt's "Q&A"
# or a URL's "?a=1&b=2" is no anchor, and a parse of the whole file to make sure would cost half a load
_ANCHOR = re.compile(r"(?:^|[\s\[{,:])&[^\s\[\]{},]")


def _refuse_aliases(path: Path, text: str) -> None:
    if not _ANCHOR.search(text):  # an alias needs an anchor: only then look for one (an alias bomb)
        return
    for event in yaml.parse(text, Loader=JsonLoader):
        if isinstance(event, yaml.AliasEvent):
            mark = event.start_mark
            where = str(path) if mark is None else f"{path}:{mark.line + 1}"
            raise CassetteError(
                f"{where}: YAML alias *{event.anchor} is not allowed: llm-ledger cassettes never contain "
                "anchors or aliases (re-record it, or run `llm-ledger scrub` on a converted one)"
            )


def _interactions(doc: Document, root: yaml.Node | None, data: Any) -> list[dict[str, Any]]:
    # ``data`` is built first: what is not YAML a JSON loader reads (a tag, a key written twice) is named
    # before what is not a cassette, wherever it is
    if root is None:
        raise doc.error(None, "", f"the file is empty, expected {_TOP}")
    if _from_vcrpy(data):  # a team moving from pytest-recording copies its cassettes over
        raise doc.error(root, "", _VCRPY)
    required = {"version": f"the format, {FORMAT_VERSION}", "interactions": "the requests and responses"}
    top = doc.fields(root, "", _TOP, ("version", "interactions"), required)
    if doc.integer(top["version"], "version", str(FORMAT_VERSION)) != FORMAT_VERSION:
        raise doc.error(
            top["version"], "version", f"expected {FORMAT_VERSION}, got {doc.describe(top['version'])}"
        )
    expected = f"a list of interactions, each {_INTERACTION}"
    loaded: list[dict[str, Any]] = []
    for index, item in enumerate(doc.sequence(top["interactions"], "interactions", expected)):
        place, values = f"interactions[{index}]", data["interactions"][index]
        required = {"request": "what was sent", "response": "what came back"}
        parts = doc.fields(item, place, _INTERACTION, ("request", "response"), required)
        req = doc.fields(parts["request"], f"{place}.request", "a mapping", _REQUEST_KEYS, _METHOD_URL)
        required = {"status": "the HTTP status code"}
        resp = doc.fields(parts["response"], f"{place}.response", "a mapping", _RESPONSE_KEYS, required)
        request = {
            key: doc.string(req[key], f"{place}.request.{key}", meaning)
            for key, meaning in _METHOD_URL.items()
        }
        request["method"] = request["method"].upper()
        status = doc.integer(
            resp["status"], f"{place}.response.status", "an HTTP status code", minimum=100, maximum=599
        )
        request.update(_message(doc, req, f"{place}.request", values["request"]))
        response = {"status": status, **_message(doc, resp, f"{place}.response", values["response"])}
        loaded.append({"request": request, "response": response})
    return loaded


_VCRPY = (
    "a vcrpy (pytest-recording) cassette (requests with 'uri' and 'body'), not an llm-ledger one: llm-ledger "
    "reads only the cassettes it records; record this test's anew, or keep the test on pytest-recording "
    "(@pytest.mark.vcr without llm) and its cassette where that looks for it"
)


def _from_vcrpy(data: Any) -> bool:
    items = data.get("interactions") if isinstance(data, dict) else None
    first = items[0] if isinstance(items, list) and items else None
    request = first.get("request") if isinstance(first, dict) else None
    return isinstance(request, dict) and "uri" in request and "url" not in request


def _message(
    doc: Document, fields: dict[str, yaml.Node], place: str, values: dict[str, Any]
) -> dict[str, Any]:
    """The headers and body of a request or response (``values``: ``fields`` read)."""
    if "headers" in fields and not doc.is_null(fields["headers"]):
        where = f"{place}.headers"
        for name, _, node in doc.mapping(fields["headers"], where, "a mapping of header name to value"):
            doc.string(node, join(where, name), "a header value (a string)", empty=True)
    kinds = [kind for kind in _BODY_KEYS if kind in fields]
    if len(kinds) > 1:
        message = f"a second body (after {kinds[0]!r}); keep one of: {', '.join(_BODY_KEYS)}"
        raise doc.error(fields[kinds[1]], f"{place}.{kinds[1]}", message)
    for kind in kinds:
        _check_body(doc, kind, fields[kind], f"{place}.{kind}")
    return {
        "headers": values.get("headers") or {},
        "body": (kinds[0], values[kinds[0]]) if kinds else ("", None),
    }


def _check_body(doc: Document, kind: str, node: yaml.Node, where: str) -> None:
    if kind == "sse":
        for number, event in enumerate(doc.sequence(node, where, "a list of events, each a mapping")):
            expected = "an event: a mapping with 'data' and optional 'event' and 'id'"
            doc.fields(event, f"{where}[{number}]", expected, ("event", "id", "data"), {"data": "its data"})
    elif kind in ("text", "base64"):
        text = doc.string(node, where, "a string", empty=True)
        if kind == "base64":
            try:
                base64.b64decode(text, validate=True)
            except ValueError as exc:
                raise doc.error(node, where, f"not valid base64 ({exc})") from None


def interaction_to_yaml(
    method: str, url: str, req_headers: Mapping[str, str], req_body: Body, status: int,
    resp_headers: Mapping[str, str], resp_body: Body,
) -> dict[str, Any]:  # fmt: skip
    return {
        "request": _message_to_yaml({"method": method, "url": url}, req_headers, req_body),
        "response": _message_to_yaml({"status": status}, resp_headers, resp_body),
    }


def _message_to_yaml(start: dict[str, Any], headers: Mapping[str, str], body: Body) -> dict[str, Any]:
    kind, value = body
    return {**start, **({"headers": dict(headers)} if headers else {}), **({kind: value} if kind else {})}
