"""budgets.yaml: the limits a test session must stay within.

.. code-block:: yaml

    lenses:                 # each run of the lens (each lens_summary record) must stay within
      default_summary: {max_cost_usd: 0.002, max_api_calls: 3}
    default:                # limits for every lens not listed under lenses
      max_total_tokens: 4000
    tests:                  # the calls made during one test (by node id)
      "tests/test_app.py::test_digest": {max_api_calls: 5}
    total:                  # the whole session
      max_cost_usd: 0.05

Limits: ``max_cost_usd`` (a number), ``max_total_tokens``, ``max_prompt_tokens``,
``max_completion_tokens`` and ``max_api_calls`` (whole numbers); none may be negative.

:func:`parse_budgets` works without pytest and turns any input into a :class:`Budgets` or a
:class:`BudgetError` naming the file, the line, the key path and the valid keys.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from llm_ledger._errors import BudgetError

__all__ = ["LIMIT_KEYS", "METRIC_OF", "BudgetError", "Budgets", "Limits", "load_budgets", "parse_budgets"]

# limit key -> the aggregate metric it caps
METRIC_OF: Final = {
    "max_cost_usd": "cost_usd",
    "max_total_tokens": "total_tokens",
    "max_prompt_tokens": "prompt_tokens",
    "max_completion_tokens": "completion_tokens",
    "max_api_calls": "api_calls",
}
LIMIT_KEYS: Final = tuple(sorted(METRIC_OF))
_SECTIONS: Final = ("default", "lenses", "tests", "total")
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_STR_TAG = "tag:yaml.org,2002:str"
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class Limits:
    """The caps one lens run, test or session must stay within; ``None`` means no cap."""

    max_cost_usd: float | None = None
    max_total_tokens: int | None = None
    max_prompt_tokens: int | None = None
    max_completion_tokens: int | None = None
    max_api_calls: int | None = None

    def items(self) -> list[tuple[str, float]]:
        """``(limit key, value)`` for each cap that is set, in :data:`LIMIT_KEYS` order."""
        return [(key, value) for key in LIMIT_KEYS if (value := getattr(self, key)) is not None]


@dataclass(frozen=True)
class Budgets:
    """A parsed budgets file."""

    source: str = "budgets.yaml"
    lenses: Mapping[str, Limits] = field(default_factory=dict)
    default: Limits | None = None
    tests: Mapping[str, Limits] = field(default_factory=dict)
    total: Limits | None = None

    def for_lens(self, lens_key: str) -> Limits | None:
        """The limits for each run of ``lens_key``: its own entry, else ``default``."""
        return self.lenses.get(lens_key, self.default)


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.constructor = yaml.constructor.SafeConstructor()

    def error(self, node: yaml.Node | None, path: str, problem: str) -> BudgetError:
        line = f", line {node.start_mark.line + 1}" if node is not None and node.start_mark else ""
        where = f" ({path})" if path else ""
        return BudgetError(f"{self.source}{line}{where}: {problem}")

    def mapping(self, node: yaml.Node, path: str, what: str) -> list[tuple[str, yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            kind = "an empty value" if _is_null(node) else f"a {_kind(node)}"
            raise self.error(node, path, f"{what} must be a mapping, not {kind}")
        seen: set[str] = set()
        out: list[tuple[str, yaml.Node, yaml.Node]] = []
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise self.error(key_node, path, f"keys must be plain names, not a {_kind(key_node)}")
            key = str(key_node.value)
            if key in seen:
                raise self.error(key_node, _join(path, key), f"duplicate key {key!r}")
            seen.add(key)
            out.append((key, key_node, value_node))
        return out

    def limits(self, node: yaml.Node, path: str) -> Limits:
        values: dict[str, float | int] = {}
        for key, key_node, value_node in self.mapping(node, path, "limits"):
            here = _join(path, key)
            if key not in METRIC_OF:
                raise self.error(key_node, here, f"unknown key {key!r}; valid keys: {', '.join(LIMIT_KEYS)}")
            values[key] = self.number(value_node, here, whole=key != "max_cost_usd")
        return Limits(**values)  # type: ignore[arg-type]

    def number(self, node: yaml.Node, path: str, *, whole: bool) -> float | int:
        wanted = "a whole number" if whole else "a number"
        value: Any = None
        if isinstance(node, yaml.ScalarNode) and node.tag in (_INT_TAG, _FLOAT_TAG):
            try:
                if node.tag == _INT_TAG:
                    value = self.constructor.construct_yaml_int(node)
                else:
                    value = self.constructor.construct_yaml_float(node)
            except (ValueError, OverflowError):
                value = None
        if isinstance(value, float) and whole and value.is_integer():
            value = int(value)
        if value is None or (whole and not isinstance(value, int)):
            shown = _short(node.value) if isinstance(node, yaml.ScalarNode) else f"a {_kind(node)}"
            raise self.error(node, path, f"must be {wanted}, not {shown}")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error(node, path, f"must be a finite number, not {_short(node.value)}")
        if value < 0:
            raise self.error(node, path, f"must not be negative, got {value!r}")
        return value  # type: ignore[no-any-return]

    def parse(self, text: str | bytes) -> Budgets:
        try:
            root = yaml.compose(text, Loader=_Loader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = f", line {mark.line + 1}" if mark is not None else ""
            problem = " ".join(str(p) for p in (exc.context, exc.problem) if p) or str(exc)
            raise BudgetError(f"{self.source}{line}: not valid YAML: {problem}") from None
        except yaml.YAMLError as exc:
            raise BudgetError(f"{self.source}: not valid YAML: {exc}") from None
        if root is None or _is_null(root):
            return Budgets(source=self.source)
        sections: dict[str, Any] = {}
        for key, key_node, value_node in self.mapping(root, "", "the top level"):
            if key not in _SECTIONS:
                raise self.error(
                    key_node, key, f"unknown section {key!r}; valid sections: {', '.join(_SECTIONS)}"
                )
            if key in ("default", "total"):
                sections[key] = self.limits(value_node, key)
            else:
                what = "lens keys" if key == "lenses" else "test node ids"
                sections[key] = {
                    name: self.limits(limits_node, _join(key, name))
                    for name, _, limits_node in self.mapping(value_node, key, f"{key!r} ({what} -> limits)")
                }
        return Budgets(source=self.source, **sections)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.SequenceNode):
        return "list"
    if isinstance(node, yaml.MappingNode):
        return "mapping"
    if node.tag == _STR_TAG:
        return f"string {_short(node.value)}"
    return f"value {_short(node.value)}"


def parse_budgets(text: str | bytes, source: str = "budgets.yaml") -> Budgets:
    """Parse budgets YAML; raises :class:`BudgetError` (never anything else) for bad input."""
    try:
        return _Parser(source).parse(text)
    except BudgetError:
        raise
    except RecursionError:
        raise BudgetError(f"{source}: nested too deeply to be a budgets file") from None
    except Exception as exc:  # the last line of defence: any input must end in a clear error
        raise BudgetError(
            f"{source}: cannot be read as a budgets file ({type(exc).__name__}: {exc})"
        ) from None


def load_budgets(path: Path, name: str | None = None) -> Budgets:
    """Read and parse ``path`` (called ``name`` in messages); a missing file is a :class:`BudgetError` too."""
    name = name or str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BudgetError(
            f"{name}: budgets file not found; create it (sections: {', '.join(_SECTIONS)}), "
            "point --llm-budget-file / ini llm_budget_file at it, or drop --llm-budget"
        ) from None
    except OSError as exc:
        raise BudgetError(f"{name}: cannot read the budgets file: {exc.strerror or exc}") from None
    return parse_budgets(data, name)
