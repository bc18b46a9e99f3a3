"""The ``llm-ledger`` console script.

Each subcommand lives in its own module, imported only when it runs, and exposes
``register(subparsers)`` which adds its parser and sets ``func`` to a callable taking the
parsed arguments and returning the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ._errors import LedgerError

# subcommand -> module defining register(); kept lazy so `llm-ledger --help` stays fast
_COMMANDS = {
    "cassettes": "llm_ledger._cassettes_cli",
    "diff": "llm_ledger._diff",
    "fake-server": "llm_ledger._fake_server",
    "report": "llm_ledger._report",
    "scrub": "llm_ledger._scrub",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-ledger",
        description="Summarise, compare and clean llm-ledger records and cassettes; serve a fake OpenAI API.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in _COMMANDS.values():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
    except LedgerError as exc:
        print(f"llm-ledger {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
