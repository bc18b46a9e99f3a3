"""The one loader for the YAML and JSON files llm-ledger reads (price files, budgets.yaml, cassettes,
reports, log lines), public so that the pytest plugin and your own tools read files with the same limits
and errors: :func:`read_file` reads at most :data:`MAX_BYTES` of a regular file; :func:`loads` reads
strict JSON; a :class:`Document` reads YAML node by node (no tag can run code) with one number parser
(:meth:`Document.number`); every error reads ``file:line: key.path: what is wrong; valid choices`` and
never quotes a value that looks like a credential (:func:`shown`: a price file pointed at a ``.env``
must not print the key it holds).
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar, Final

import orjson
import yaml

from ._credentials import looks_like_credential

__all__ = [
    "BOOLEAN_WORDS", "MAX_BYTES", "Document", "JsonLoader", "SafeLoader", "as_typed", "did_you_mean",
    "invalid_yaml", "join", "listed", "loads", "looks_like_credential", "no_controls", "one_line",
    "printable", "read_file", "shown", "strict_loads",
]  # fmt: skip

MAX_BYTES: Final = 1 << 20  # a price file or budgets.yaml of a megabyte is already absurd
# what an environment variable's or ini setting's on/off value may be spelled as (lower-cased, stripped);
# empty is neither (-o llm_strict=$STRICT with STRICT unset must not turn strict mode off unseen)
BOOLEAN_WORDS: Final = {
    **dict.fromkeys(("1", "true", "yes", "on"), True),
    **dict.fromkeys(("0", "false", "no", "off"), False),
}
_TAG_PREFIX: Final = "tag:yaml.org,2002:"
_STR: Final = _TAG_PREFIX + "str"
_INT: Final = _TAG_PREFIX + "int"
_FLOAT: Final = _TAG_PREFIX + "float"
_NULL: Final = _TAG_PREFIX + "null"
_BOOL: Final = _TAG_PREFIX + "bool"
# timestamp: an unquoted date resolves to it implicitly; it is then refused as a value, not as a tag
_SAFE_TAGS: Final = frozenset(
    _TAG_PREFIX + name for name in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp")
)
# Unquoted plain scalars YAML 1.1 reads as strings but everyone means as numbers (1e-3, 2E+1).
# A YAML 1.1 integer written in decimal (``1_000`` groups digits); ``010``, ``0x10``, ``1:30`` are not.
_DECIMAL_INT: Final = re.compile(r"[-+]?(?:0|[1-9][0-9_]*)")
_PLAIN_NUMBER: Final = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
# a key name that may be a credential: a secret key's shape, an assignment (.env), a password hash
# (/etc/shadow) or a long token-like run (a model name's 24 characters are no sign of one)
_SECRET_KEY: Final = re.compile(r"sk-[A-Za-z0-9_-]{8,}|[=$]|[A-Za-z0-9+/_-]{40,}")
# an unknown key is quoted only when it looks like a misspelt key (a first line of /etc/shadow can
# read as a key)
_KEY_LIKE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,39}")
_SHOWN_CHARS: Final = 40
_WORD_BREAK: Final = re.compile(r"[-_.\s]+")  # between the words of a key (cached_input_audio)


def shown(value: object, *, key: bool = False) -> str:
    """``repr(value)`` cut to 40 characters (a ``key`` name to 80), for an error quoting it; only its length
    when it is a string that looks like a credential (:func:`looks_like_credential`): a key pasted into
    the wrong setting or a price file pointed at a ``.env`` must not reach the logs."""
    if isinstance(value, str) and (_SECRET_KEY.search(value) if key else looks_like_credential(value)):
        return f"<{len(value)} characters not shown: they look like a credential>"
    text, limit = repr(value), _SHOWN_CHARS * 2 if key else _SHOWN_CHARS
    return text if len(text) <= limit else text[: limit - 1] + "…"


def as_typed(text: str) -> str:
    """``text`` (command-line input) as typed, for an error echoing it; as :func:`shown` quotes it when a
    terminal would run it or it looks like a credential (``--model gpt-4o=sk-proj-...``)."""
    return text if text.isprintable() and not looks_like_credential(text) else shown(text)


def printable(text: str) -> str:
    """``text`` with lone surrogates (valid in JSON escapes, not in UTF-8) written as ``\\udXXX``."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


# what a terminal runs or reorders rather than shows: control characters (C0 but the line break, DEL,
# C1) and the bidirectional overrides and isolates
_CONTROLS: Final = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def no_controls(text: str) -> str:
    """``text`` with its control characters, the line break aside, written as escapes (``\\x1b``,
    ``\\r``, ``\\u202e``): a name the application chose (a lens key) is shown in a terminal, never
    run there (colours, a link, a window title, the clipboard) or left to reorder what follows it."""
    return _CONTROLS.sub(lambda char: ascii(char.group())[1:-1], text) if _CONTROLS.search(text) else text


def one_line(text: str) -> str:
    """``text`` (the application's: a lens key, a source id) on one line, its line breaks written
    ``\\n`` and ``\\r`` and its other control characters escaped as by :func:`no_controls`: in a table
    row, a heading or a message a line break would end it (and a CI log would read what follows as a
    line of its own, such as a GitHub Actions ``::error::`` command)."""
    return no_controls(text).replace("\n", "\\n")


def listed(names: list[str]) -> str:
    """The first five names, then how many more: a message never grows with its input."""
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def join(key_path: str, key: str) -> str:
    """``key_path.key`` for messages; a key that looks like a credential is not shown, a long one is cut."""
    if _SECRET_KEY.search(key):
        key = shown(key, key=True)
    elif len(key) > _SHOWN_CHARS * 2:
        key = key[: _SHOWN_CHARS * 2 - 1] + "…"
    return f"{key_path}.{key}" if key_path else key


def did_you_mean(name: str, choices: Iterable[str], *, n: int = 1) -> str:
    """`` (did you mean 'x'?)`` naming the ``n`` of ``choices`` closest to ``name`` (``'x' or 'y'``),
    or "" if none is close: what follows the bad value in an error message. Long lists of similar
    names (models, providers) read better with a few. A choice of the same words in another order
    comes first (``image_input`` is ``input_image``, not the ``cached_input`` that spells closer)."""
    choices = list(choices)
    words = sorted(_WORD_BREAK.split(name.lower()))
    close = [choice for choice in choices if sorted(_WORD_BREAK.split(choice.lower())) == words]
    close += [choice for choice in difflib.get_close_matches(name, choices, n=n) if choice not in close]
    close = close[:n]
    return f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""


def read_file(
    path: str,
    error: type[Exception],
    what: str,
    *,
    name: str | None = None,
    hint: str = "",
    max_bytes: int = MAX_BYTES,
    streams: bool = False,
) -> bytes:
    """The bytes of ``path`` (``name`` in messages): at most ``max_bytes`` of a regular file.

    ``what`` ("price file") names the file in each ``error`` raised; ``hint`` follows "not found".
    Without ``streams`` only a regular file is read, opened non-blocking so a FIFO cannot hang us and
    checked with ``fstat`` on the open file. With ``streams`` a pipe (``<(command)``) is read too, still
    never past ``max_bytes`` (``/dev/zero`` ends in an error)."""
    name = name or path
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | (0 if streams else os.O_NONBLOCK)
    fd = None
    try:
        fd = os.open(path, flags)
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise error(f"{name}: is a directory, expected a {what}")
        regular = stat.S_ISREG(info.st_mode)
        if not (regular or streams):
            raise error(f"{name}: is not a regular file (a device, FIFO or socket), expected a {what}")
        data = b""
        if not regular or info.st_size <= max_bytes:
            with open(fd, "rb", closefd=False) as file:
                data = file.read(max_bytes + 1)
        if info.st_size > max_bytes or len(data) > max_bytes:
            raise error(f"{name}: is over {max_bytes:,} bytes, too big for a {what}")
        return data
    except FileNotFoundError:
        raise error(f"{name}: {what} not found{hint}") from None
    except OSError as exc:
        raise error(f"{name}: cannot read the {what}: {exc.strerror or exc}") from None
    finally:
        if fd is not None:
            os.close(fd)


def _not_finite(text: str) -> float:
    raise ValueError(f"{text} is not a number JSON allows")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is too large for a number")
    return value


def strict_loads(data: bytes | str) -> Any:
    """Standard JSON: NaN, Infinity and numbers past a float's range are refused, not read as inf."""
    return json.loads(data, parse_constant=_not_finite, parse_float=_finite)


def loads(line: bytes | str) -> Any:
    """One JSON value, as :func:`strict_loads` reads it, fast: orjson, falling back on json for what
    orjson refuses but JSON allows (a lone surrogate's escape, which the ledger writes for a context
    value holding one). A ``ValueError`` (or ``RecursionError``) for anything else."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit exceeded"):  # malformed on every Python: json's own limit
            raise  # is the recursion limit before 3.13, far deeper from 3.13 on
        return strict_loads(line)


_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TIMESTAMP: Final = _TAG_PREFIX + "timestamp"


class SafeLoader(_BaseLoader):  # type: ignore[valid-type,misc]
    """PyYAML's safe loader (libyaml's where installed) whose ``!!int``, ``!!float`` and ``!!bool``
    scalars that are not one (``!!int abc``) are YAML errors at their line, not a ``ValueError``."""


def _checked(tag: str) -> Any:
    construct = yaml.constructor.SafeConstructor.yaml_constructors[_TAG_PREFIX + tag]

    def build(loader: yaml.constructor.SafeConstructor, node: yaml.ScalarNode) -> Any:
        try:
            return construct(loader, node)
        except (ValueError, KeyError, OverflowError):
            raise yaml.constructor.ConstructorError(
                None, None, f"{shown(node.value)} is not a valid !!{tag}", node.start_mark
            ) from None

    return build


for _tag in ("int", "float", "bool"):
    SafeLoader.add_constructor(_TAG_PREFIX + _tag, _checked(_tag))


class JsonLoader(SafeLoader):
    """A safe YAML loader that builds only what JSON holds (cassettes are JSON bodies written as YAML): an
    unquoted date stays the string it reads as; ``!!set``, ``!!binary``, ``!!omap``, ``!!pairs`` and
    ``!!timestamp`` are errors at their line, not objects that fail later as a ``TypeError``; so is a key
    written twice in one mapping (a merge conflict resolved by keeping both sides), which YAML would
    settle by keeping the last value without a word."""

    # first character of a plain scalar (None: any) -> the (tag, pattern) pairs it may resolve to
    yaml_implicit_resolvers: ClassVar[dict[str | None, list[tuple[str, re.Pattern[str]]]]] = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP]
        for first, resolvers in _BaseLoader.yaml_implicit_resolvers.items()
    }

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[str, int] = {}
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in first_line:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key.value!r} (first on line {first_line[key.value]})",
                        key.start_mark,
                    )  # fmt: skip
                first_line[key.value] = key.start_mark.line + 1
        return dict(super().construct_mapping(node, deep))


def _not_json(loader: yaml.SafeLoader, node: yaml.Node) -> None:
    tag = node.tag.replace(_TAG_PREFIX, "!!")
    raise yaml.constructor.ConstructorError(
        None, None, f"tag {tag!r} is not allowed: a body holds only what JSON can", node.start_mark
    )


for _tag in ("set", "binary", "omap", "pairs", "timestamp"):
    JsonLoader.add_constructor(_TAG_PREFIX + _tag, _not_json)


_QUOTED: Final = re.compile(r"'([^']*)'")


def invalid_yaml(name: str, exc: yaml.YAMLError, text: str) -> str:
    """The one message for a file that is not YAML a safe loader reads: ``name:line: invalid YAML:
    what is wrong`` (``text`` is the file's, to find the line of an unreadable character)."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f"{name}:{mark.line + 1}" if mark is not None else name
        what = ", ".join(str(part) for part in (exc.context, exc.problem) if part).replace(_TAG_PREFIX, "!!")
        # PyYAML quotes what it read (a tag): never a credential (a key written as !sk-...)
        return f"{where}: invalid YAML: {_QUOTED.sub(lambda quoted: shown(quoted[1], key=True), what)}"
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        return f"{name}:{line}: invalid YAML: {exc.reason}"
    return f"{name}: invalid YAML"


class Document:
    """One YAML file being validated: its name, the error class to raise, and the node readers."""

    def __init__(
        self, name: str, error: type[Exception], what: str, *, loader: type[yaml.SafeLoader] | None = None
    ) -> None:
        self.name = name
        self.what = what  # "a price file": for messages
        self._error = error
        # SafeLoader, or JsonLoader to read as JSON does; both libyaml's where installed, which refuses
        # nesting past 1,000 levels where pure-Python PyYAML takes time quadratic in it
        self._loader = loader or SafeLoader
        self._constructor = (self._loader if issubclass(self._loader, SafeLoader) else SafeLoader)("")
        # mapping and list entries still to read: a file without aliases holds fewer than its characters,
        # one whose aliases (*name) repeat a long list inside many entries holds millions (set by compose)
        self._entries_left = MAX_BYTES

    def error(self, node: yaml.Node | None, key_path: str, message: str) -> Exception:
        where = self.name if node is None else f"{self.name}:{node.start_mark.line + 1}"
        return self._error(f"{where}: {key_path}: {message}" if key_path else f"{where}: {message}")

    def compose(self, data: str | bytes) -> yaml.Node | None:
        """The document's root node (``None`` for an empty file); nothing is constructed."""
        if isinstance(data, bytes):
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise self._error(f"{self.name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        self._entries_left = len(data)
        try:
            return yaml.compose(data, Loader=self._loader)
        except yaml.YAMLError as exc:
            raise self._error(invalid_yaml(self.name, exc, data)) from None
        except RecursionError:  # PyYAML composes nested collections recursively
            raise self._error(f"{self.name}: invalid YAML: nested too deeply to be {self.what}") from None

    def check_tag(self, node: yaml.Node, key_path: str) -> None:
        if node.tag not in _SAFE_TAGS:
            tag = shown(node.tag.replace(_TAG_PREFIX, "!!"), key=True)
            raise self.error(
                node,
                key_path,
                f"YAML tag {tag} is not allowed: {self.what} holds only plain numbers, names and mappings",
            )

    def describe(self, node: yaml.Node) -> str:
        """The node's value as the user wrote it, for "got ..." (tags are checked first)."""
        if isinstance(node, yaml.MappingNode):
            return "a mapping"
        if isinstance(node, yaml.SequenceNode):
            return "a list"
        if node.tag in (_INT, _FLOAT, _BOOL, _NULL):
            with contextlib.suppress(yaml.YAMLError, ValueError, TypeError, OverflowError):
                return shown(self._constructor.construct_object(node))
        return shown(node.value)

    def value(self, node: yaml.Node) -> Any:
        """The Python value of a node, built by the document's loader (``JsonLoader``: only what JSON
        holds, or the ``yaml.YAMLError`` naming the first tag or key that is not), e.g. a free-form body."""
        return self._constructor.construct_document(node)

    def is_null(self, node: yaml.Node) -> bool:
        return isinstance(node, yaml.ScalarNode) and node.tag == _NULL

    def mapping(
        self, node: yaml.Node, key_path: str, expected: str
    ) -> list[tuple[str, yaml.Node, yaml.Node]]:
        """A mapping node's (key, key node, value node) items; keys are non-empty strings seen once."""
        self.check_tag(node, key_path)
        if not isinstance(node, yaml.MappingNode):
            got = self.describe(node)
            if not key_path and node.tag == _STR:  # the whole file: never quoted
                got = f"a string of {len(node.value)} characters"
            raise self.error(node, key_path, f"expected {expected}, got {got}")
        self._count(node, key_path)
        items: list[tuple[str, yaml.Node, yaml.Node]] = []
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            self.check_tag(key_node, key_path)
            if not (
                isinstance(key_node, yaml.ScalarNode) and key_node.tag == _STR and key_node.value.strip()
            ):
                got = self.describe(key_node) if key_node.tag != _STR else shown(key_node.value, key=True)
                raise self.error(key_node, key_path, f"keys must be non-empty names (quote them), got {got}")
            key = key_node.value
            here = join(key_path, key)
            if key in first_line:
                raise self.error(key_node, here, f"duplicate key (first on line {first_line[key]})")
            first_line[key] = key_node.start_mark.line + 1
            items.append((key, key_node, value_node))
        return items

    def sequence(self, node: yaml.Node, key_path: str, expected: str) -> list[yaml.Node]:
        """A list node's items (``key_path[i]`` in messages about them)."""
        self.check_tag(node, key_path)
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, key_path, f"expected {expected}, got {self.describe(node)}")
        self._count(node, key_path)
        return list(node.value)

    def _count(self, node: yaml.MappingNode | yaml.SequenceNode, key_path: str) -> None:
        """Count a collection's entries read: past the file's size, aliases are repeating its parts."""
        self._entries_left -= len(node.value)
        if self._entries_left < 0:
            raise self.error(
                node,
                key_path,
                f"the file's YAML aliases (*name) repeat more entries than {self.what} of its size holds; "
                "write the repeated entries out, or alias fewer of them",
            )

    def string(self, node: yaml.Node, key_path: str, expected: str, *, empty: bool = False) -> str:
        """A string (quoted or not: a plain ``1`` or ``true`` is not one), not blank unless ``empty``."""
        self.check_tag(node, key_path)
        if not (isinstance(node, yaml.ScalarNode) and node.tag == _STR and (empty or node.value.strip())):
            raise self.error(node, key_path, f"expected {expected}, got {self.describe(node)}")
        return str(node.value)

    def fields(
        self,
        node: yaml.Node,
        key_path: str,
        expected: str,
        keys: Sequence[str],
        required: Mapping[str, str] | None = None,
    ) -> dict[str, yaml.Node]:
        """A mapping with only ``keys``; each of ``required`` (key -> what it is) must be present."""
        values: dict[str, yaml.Node] = {}
        for key, key_node, value_node in self.mapping(node, key_path, expected):
            if key not in keys:
                known = _KEY_LIKE.fullmatch(key) is not None and not _SECRET_KEY.search(key)
                where = join(key_path, key if known else f"<a key of {len(key)} characters>")
                hint = did_you_mean(key, keys) if known else ""
                raise self.error(key_node, where, f"unknown key{hint}; valid keys: {', '.join(keys)}")
            values[key] = value_node
        for key, meaning in (required or {}).items():
            if key not in values:
                raise self.error(node, key_path, f"missing required key {key!r} ({meaning})")
        return values

    def number(
        self,
        node: yaml.Node,
        key_path: str,
        expected: str,
        *,
        maximum: Decimal,
        minimum: Decimal = Decimal(0),
        whole: bool = False,
        examples: str = "90, 0.5, 1e-3",
    ) -> Decimal:
        """A finite number from ``minimum`` (0) to ``maximum`` (a whole one if ``whole``), read exactly:
        ``2.50``, ``1e-3``, ``1_000`` alike in every file; ``examples`` are the numbers the error for YAML
        1.1's other bases (``1:30``, ``0x10``, ``010``) suggests."""
        self.check_tag(node, key_path)
        value: Decimal | None = None
        if isinstance(node, yaml.ScalarNode):
            self._refuse_other_bases(node, key_path, examples)
            if node.tag == _INT:
                try:
                    value = Decimal(self._constructor.construct_yaml_int(node))
                except (ValueError, TypeError):
                    value = None
            elif node.tag == _FLOAT or (node.tag == _STR and not node.style):  # plain: None, or libyaml's ""
                text = node.value.replace("_", "")
                if node.tag == _FLOAT or _PLAIN_NUMBER.fullmatch(text):
                    value = _to_decimal(text)
                    if value is None:
                        value = _to_decimal(self._float_text(node))
        if (
            value is None
            or not value.is_finite()
            or value < 0
            or (whole and value != value.to_integral_value())
        ):
            text = node.value if isinstance(node, yaml.ScalarNode) and node.tag == _STR else ""
            if text.startswith("$") and _PLAIN_NUMBER.fullmatch(text[1:]):  # a price, not a secret: shown
                raise self.error(
                    node,
                    key_path,
                    f"expected {expected}, got {text!r}: write {text[1:]}, without the $ (the unit is USD)",
                )
            raise self.error(node, key_path, f"expected {expected}, got {self.describe(node)}")
        if not minimum <= value <= maximum:
            bound = f"at least {minimum}" if value < minimum else f"at most {maximum}"
            raise self.error(node, key_path, f"expected {expected} ({bound}), got {self.describe(node)}")
        return value

    def integer(
        self, node: yaml.Node, key_path: str, expected: str, *, minimum: int = 0, maximum: int | None = None
    ) -> int:
        """A number as :meth:`number` reads it, written as an integer (``200``, not ``200.0``, ``2e2`` or
        ``!!float 200``): for a code or a version, where another spelling is a hand edit gone wrong, not
        a count someone wrote as ``1e3``. From ``minimum`` (0) to ``maximum`` (unbounded if None)."""
        top = Decimal("Infinity") if maximum is None else Decimal(maximum)
        value = self.number(  # its examples are integers: 0.5 or 1e-3 is refused here
            node, key_path, expected, minimum=Decimal(minimum), maximum=top, whole=True, examples="1, 200"
        )
        if node.tag != _INT:
            raise self.error(
                node,
                key_path,
                f"expected {expected} written as an integer (digits, no decimal point or exponent), "
                f"got {self.describe(node)}",
            )
        return int(value)

    def _refuse_other_bases(self, node: yaml.ScalarNode, key_path: str, examples: str) -> None:
        """YAML 1.1 reads ``1:30`` as 90 (base 60), ``0x10`` as 16, ``010`` as 8 (octal), ``0b11`` as 3;
        YAML 1.2 tools read some of them otherwise, and a reader of the file none as that number: an
        error naming what YAML 1.1 makes of it, so that a limit or a price is only ever what it reads as."""
        text = node.value
        if node.tag == _INT and not _DECIMAL_INT.fullmatch(text):
            digits = text.lstrip("+-").lower()
            base = (
                "base 60" if ":" in text else
                "hexadecimal" if digits.startswith("0x") else
                "binary" if digits.startswith("0b") else
                "octal"
            )  # fmt: skip
        elif node.tag == _FLOAT and ":" in text:
            base = "base 60"
        else:
            return
        try:
            meant = self._constructor.construct_object(node)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError):
            return  # not a number at all: the caller's error says what is expected
        raise self.error(
            node,
            key_path,
            f"{text} is not a plain decimal number: YAML 1.1 reads it as {meant} ({base}); write the "
            f"number in decimal digits (e.g. {examples})",
        )

    def _float_text(self, node: yaml.ScalarNode) -> str:
        # YAML 1.1 spellings Decimal cannot read (".inf") go through PyYAML's float: refused as not finite
        try:
            return repr(self._constructor.construct_yaml_float(node))
        except (ValueError, TypeError):
            return ""


def _to_decimal(text: str) -> Decimal | None:
    try:
        return Decimal(text)
    except InvalidOperation:
        return None
