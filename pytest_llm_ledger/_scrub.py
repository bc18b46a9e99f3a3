"""``llm-ledger scrub CASSETTE|DIR...``: remove credentials and identifiers from existing cassettes.

For teams moving from plain vcrpy, whose cassettes often hold ``Authorization`` headers, cookies and
organisation ids. Reads vcrpy cassettes (YAML or JSON) and llm-ledger's own with a safe loader, keeps
the plugin's header allow-lists, redacts as ``_secrets`` does, and rewrites each file atomically with
the plugin's YAML serializer, so a cassette the plugin recorded changes only where a secret was.
Exit status: 0 clean or scrubbed, 1 ``--check`` found something, 2 a file could not be read safely
or a path given holds no cassette (nothing was checked).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Final

import yaml

from llm_ledger import CassetteError
from llm_ledger.loading import SafeLoader, one_line

from ._format import (
    REQUEST_HEADERS,
    RESPONSE_HEADERS,
    decompress,
    dump_document,
    invalid_yaml,
    read_text,
    write_atomic,
)
from ._secrets import CredentialRedactor, known_secrets

__all__ = ["check_loaded", "register", "scrub_document", "scrub_file"]

# the plugin's allow-lists, so recording and scrubbing keep the same headers; content-encoding
# stays on responses so that a compressed body remains readable
_KEPT_HEADERS: Final = {"request": REQUEST_HEADERS, "response": RESPONSE_HEADERS | {"content-encoding"}}


class _Scrubber(CredentialRedactor):
    def headers(self, node: dict[str, Any], allowed: frozenset[str], place: str) -> None:
        headers = node.get("headers")
        if headers is None:
            return
        if not isinstance(headers, dict):
            raise ValueError(
                f"{place}.headers must be a mapping of header names, not {type(headers).__name__}"
            )
        dropped = sorted(str(name) for name in headers if str(name).lower() not in allowed)
        for name in dropped:
            del headers[name]
        if dropped:
            self.note(f"{place}.headers", f"dropped {', '.join(dropped)}")

    def raw_body(self, value: Any, place: str, node: dict[str, Any]) -> Any:
        """A vcrpy body: a string, bytes (``!!binary``), possibly compressed, possibly JSON."""
        if isinstance(value, bytes):
            encoding = _header(node, "content-encoding")
            plain = decompress(value, encoding) if encoding else value
            if plain is None:
                return value  # an encoding this interpreter cannot decode: nothing to scrub
            try:
                text = plain.decode("utf-8")
            except UnicodeDecodeError:
                return value  # binary we cannot read: nothing text-shaped to scrub
            scrubbed = self.raw_body(text, place, node)
            if scrubbed == text:
                return value
            if encoding:  # stored decoded from now on: the header would lie about it
                _drop_header(node, "content-encoding")
            return scrubbed
        if not isinstance(value, str):
            return value
        if value.lstrip()[:1] in ("{", "["):
            try:
                parsed = json.loads(value)
            except ValueError:
                parsed = None
            if isinstance(parsed, (dict, list)):
                before = len(self.findings)
                parsed = self.json(parsed, place)
                if len(self.findings) == before:
                    return value
                return json.dumps(parsed, separators=(",", ":"), ensure_ascii=False)
        if "data:" in value:  # an SSE body: scrub each JSON event
            lines = []
            for line in value.split("\n"):
                if line.startswith("data:") and line[5:].strip()[:1] in ("{", "["):
                    line = "data: " + self.raw_body(line[5:].strip(), place, node)
                lines.append(line)
            value = "\n".join(lines)
        return self.text(value, place)

    def message(self, node: Any, place: str, allowed: frozenset[str]) -> None:
        if not isinstance(node, dict):
            raise ValueError(f"{place} must be a mapping, not {type(node).__name__}")
        self.headers(node, allowed, place)
        for key in ("uri", "url"):
            if isinstance(node.get(key), str):
                node[key] = self.url(node[key], f"{place}.{key}")
        body = node.get("body")
        if isinstance(body, dict) and "string" in body:  # vcrpy response
            body["string"] = self.raw_body(body["string"], f"{place}.body", node)
        elif body is not None:  # vcrpy request
            node["body"] = self.raw_body(body, f"{place}.body", node)
        for kind in ("json", "sse", "text"):  # llm-ledger cassette bodies
            if kind in node:
                node[kind] = self.json(node[kind], f"{place}.{kind}")


def _header(node: dict[str, Any], name: str) -> str:
    for key, value in (node.get("headers") or {}).items():
        if str(key).lower() == name:
            return str(value[0] if isinstance(value, list) and value else value)
    return ""


def _drop_header(node: dict[str, Any], name: str) -> None:
    headers = node.get("headers") or {}
    for key in [k for k in headers if str(k).lower() == name]:
        del headers[key]


def _json_body(body: Any) -> Any:
    """A request's body as JSON (a vcrpy body is a string or bytes), for the credentials it names."""
    if isinstance(body, str | bytes):
        try:
            return json.loads(body)
        except ValueError:  # UnicodeDecodeError included
            return None
    return body


def scrub_document(doc: Any) -> list[str]:
    """Scrub a loaded cassette in place; returns what changed (places and names, never values).

    Raises ``ValueError`` naming the place when the document is not a cassette.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("interactions"), list):
        raise ValueError("the top level must be a mapping with an 'interactions' list")
    scrubber = _Scrubber()
    for index, interaction in enumerate(doc["interactions"]):
        place = f"interactions[{index}]"
        if not isinstance(interaction, dict):
            raise ValueError(f"{place} must be a mapping, not {type(interaction).__name__}")
        if not scrubber.first_visit(interaction):
            continue
        # a credential the request carried (its Authorization header...) is redacted wherever else
        # it appears in this interaction, e.g. echoed whole in a 401 body
        request = interaction.get("request")
        if isinstance(request, dict):
            headers = request.get("headers")
            url = request.get("uri") or request.get("url")
            scrubber.known = known_secrets(
                headers if isinstance(headers, dict) else None,
                url if isinstance(url, str) else "",
                _json_body(request.get("json", request.get("body"))),
            )
        for part, allowed in _KEPT_HEADERS.items():
            if part in interaction:
                scrubber.message(interaction[part], f"{place}.{part}", allowed)
    return scrubber.findings


def _load(path: Path) -> tuple[Any, str, bool]:
    """The cassette document, the comment lines heading the file, and whether it is JSON."""
    text = read_text(path)
    as_json = path.suffix.lower() == ".json"
    try:
        if as_json:
            return json.loads(text), "", True
        doc = yaml.load(text, Loader=SafeLoader)  # not JsonLoader: vcrpy writes compressed bodies as !!binary
    except ValueError as exc:  # json.JSONDecodeError
        raise CassetteError(f"{path}: not valid JSON ({exc})") from None
    except yaml.YAMLError as exc:
        raise invalid_yaml(path, exc, text) from None
    return doc, _heading(text), False


def _heading(text: str) -> str:
    """The comment block heading a YAML file (kept by a scrub)."""
    lines = text.splitlines(True)
    top = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    return "".join(lines[:top])


def _dump(doc: Any, header: str, as_json: bool) -> str:
    if as_json:
        return json.dumps(doc, indent=4, ensure_ascii=False) + "\n"
    # the plugin's serializer, whoever wrote the file: a scrubbed llm-ledger cassette differs from the
    # recording only where a secret was, and multi-line bodies diff by line in any cassette
    return header + dump_document(doc, keep_aliases=True)


def scrub_file(path: Path, *, check: bool = False) -> list[str]:
    """Scrub one cassette in place (or only report, with ``check``); returns what changed.

    Raises :class:`~llm_ledger.CassetteError` naming the file for anything that cannot be read safely.
    """
    doc, header, as_json = _load(path)
    findings, header = _scrub(path, doc, header)
    if findings and not check:
        write_atomic(path, _dump(doc, header, as_json))
    return findings


def check_loaded(path: Path, doc: Any, text: str) -> list[str]:
    """What ``llm-ledger scrub --check`` finds in the cassette ``path`` already read (its document and
    text, from :func:`~._format.read_cassette`). A scrub changes ``doc`` only where it finds something."""
    return _scrub(path, doc, _heading(text))[0]


def _scrub(path: Path, doc: Any, header: str) -> tuple[list[str], str]:
    """Scrub a cassette's document and heading in place: what changed, and the heading scrubbed."""
    try:
        heading = CredentialRedactor()  # older recordings named a key among a test's parameters there
        header = heading.text(header, "the comment heading the file")
        return heading.findings + scrub_document(doc), header
    except ValueError as exc:
        raise CassetteError(f"{path}: not a cassette: {exc}") from None
    except RecursionError:
        raise CassetteError(f"{path}: nested too deeply to be a cassette") from None


_SUFFIXES: Final = (".yaml", ".yml", ".json")


def _expand(names: list[str]) -> tuple[list[Path], list[str]]:
    """Files as given; a directory stands for every .yaml / .yml / .json file below it (in any case, as
    :func:`_load` reads them), sorted. And the errors of the names that stand for nothing: a CI job
    pointed at the wrong path fails, rather than passing on no cassette checked."""
    paths: list[Path] = []
    errors: list[str] = []
    for name in names:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in _SUFFIXES and p.is_file())
            if not found:
                errors.append(
                    f"{name}: no cassette (.yaml, .yml or .json file) in this directory or below it; give "
                    "the directory the cassettes are in"
                )
            paths.extend(found)
        elif path.suffix.lower() not in _SUFFIXES and not path.exists():
            errors.append(f"{name}: no such file or directory")
        else:
            paths.append(path)  # a missing cassette file: scrub_file says so
    return paths, errors


def _run(args: argparse.Namespace) -> int:
    changed = 0
    paths, errors = _expand(args.cassettes)
    for error in errors:
        print(f"llm-ledger scrub: error: {error}", file=sys.stderr)
    failed = len(errors)
    checked = len(paths)
    for path in paths:
        try:
            findings = scrub_file(path, check=args.check)
        except (CassetteError, OSError) as exc:
            problem = (
                exc if isinstance(exc, CassetteError) else f"{path}: cannot rewrite: {exc.strerror or exc}"
            )
            print(f"llm-ledger scrub: error: {problem}", file=sys.stderr)
            failed += 1
            continue
        if findings:
            changed += 1
            verb = "would scrub" if args.check else "scrubbed"
            print(f"{path}: {verb} {len(findings)} item(s)")
            for finding in findings:
                print(f"  {one_line(finding)}")  # JSON paths name the cassette's keys, whatever they hold
    if args.check and changed:
        files = " ".join(shlex.quote(n) for n in args.cassettes)
        print(f"{changed} cassette(s) hold credentials or identifiers; fix with: llm-ledger scrub {files}")
    elif not changed and not failed:
        print(f"llm-ledger scrub: {checked} cassette(s) checked, no credentials or identifiers found")
    if failed:
        return 2
    return 1 if args.check and changed else 0


def register(subparsers: Any, summary: str) -> None:
    """Add ``scrub`` to the ``llm-ledger`` console script."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "scrub",
        help=summary,
        description=(
            "Remove credentials, cookies and organisation/project ids from cassettes recorded by vcrpy "
            "(YAML or JSON) or by llm-ledger: keep only allow-listed headers, redact credential-named "
            "query parameters and JSON fields and anything shaped like an OpenAI key, and rewrite each "
            "file atomically. YAML is loaded safely; tags that would build Python objects are refused."
        ),
        epilog=(
            "exit status: 0 clean or scrubbed, 1 --check found something, 2 a file could not be used, "
            "or a path holds no cassette"
        ),
    )
    parser.add_argument(
        "cassettes",
        nargs="+",
        metavar="CASSETTE",
        help="cassette files (.yaml, .yml or .json), or directories to scrub every such file below",
    )
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 listing what would be scrubbed (for CI)"
    )
    parser.set_defaults(func=_run)
