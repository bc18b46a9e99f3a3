"""The ``llm-ledger`` console script. Each subcommand lives in its own module, imported only when it runs,
whose ``register(subparsers, summary)`` adds its parser (:func:`add_command`) with ``func``: a callable
taking the parsed arguments and returning the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ._errors import LedgerError
from .loading import as_typed, shown

_Server = TypeVar("_Server")

# subcommand -> (module defining register(), its line in `llm-ledger --help`)
_COMMANDS = {
    "anomalies": (
        "llm_ledger.analysis._anomalies_cli",
        "list lens runs whose tokens, cost or duration went far above their lens's recent runs",
    ),
    "cassettes": ("pytest_llm_ledger._cassettes_cli", "list (and --prune) cassettes no collected test owns"),
    "diff": ("llm_ledger.analysis._diff", "compare two pytest --llm-report files lens by lens"),
    "fake-server": (
        "llm_ledger._fake_server",
        "serve a loopback OpenAI-compatible API (record cassettes without a key, test offline)",
    ),
    "report": (
        "llm_ledger.analysis._report_cli",
        "summarise llm-ledger logs: calls, errors, tokens, cost, latency by user, source, lens, model...",
    ),
    "reprice": (
        "llm_ledger.analysis._reprice",
        "what recorded usage (a log or a pytest report) costs with another model, provider or price file",
    ),
    "scrub": (
        "pytest_llm_ledger._scrub",
        "remove credentials, cookies and org/project ids from cassettes (vcrpy or llm-ledger)",
    ),
    "serve": (
        "llm_ledger.analysis._http",
        "serve a read-only HTTP cost API (GET /costs?by=user_id) over a log directory",
    ),
}


class _Version(argparse.Action):
    """``--version``, looked up only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        from importlib.metadata import version

        print(f"llm-ledger {version('llm-ledger')}")
        parser.exit()


class _Parser(argparse.ArgumentParser):
    """argparse's parser, quoting a value it refuses as the command's own errors do (:func:`shown`): a key
    pasted after ``--format`` is named by its length, not echoed into a CI log."""

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(map(repr, action.choices))
            raise argparse.ArgumentError(action, f"invalid choice: {shown(value)} (choose from {choices})")


def add_command(
    subparsers: Any,
    name: str,
    summary: str,
    run: Callable[[argparse.Namespace], int],
    *,
    formats: Sequence[str] = (),
    logs: bool = False,
    **kwargs: Any,
) -> argparse.ArgumentParser:
    """A subcommand's parser with the options every command spells the same way: ``LOG…`` inputs
    (``args.inputs``) when ``logs``, and ``--format`` (``args.fmt``; the first of ``formats`` is the
    default)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(name, help=summary, **kwargs)
    if logs:
        parser.add_argument(
            "inputs",
            nargs="+",
            metavar="LOG",
            help="a log file (.gz too), a directory of logs, a glob, or - for stdin",
        )
    if formats:
        parser.add_argument(
            "--format",
            choices=formats,
            default=formats[0],
            dest="fmt",
            help="output format (default: %(default)s)",
        )
    parser.set_defaults(func=run)
    return parser


def add_query_options(parser: argparse.ArgumentParser, what: str, *, tz: bool = False) -> None:
    """``--where``, ``--since`` and ``--until`` (and ``--tz``), as ``llm-ledger report`` takes them, keeping
    the ``what`` (calls, runs) they select."""
    parser.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"keep the {what} whose KEY is VALUE (repeatable: one key several times means any of them)",
    )
    clock = "without a zone: --tz's clock" if tz else "UTC"
    for bound, which in (
        ("--since", "from this ISO date or date-time, inclusive"),
        ("--until", "up to this ISO date or date-time, exclusive"),
    ):
        parser.add_argument(bound, metavar="WHEN", help=f"the {what} {which} ({clock})")
    if tz:
        parser.add_argument(
            "--tz",
            metavar="ZONE",
            help="read hour, day, week and month, and --since/--until without a zone, on this time zone's "
            "clock, e.g. America/New_York (default: UTC)",
        )


def add_listen_options(parser: argparse.ArgumentParser, default_port: int) -> None:
    """``--port`` and ``--host``, spelled and checked the same way by every command that serves."""
    parser.add_argument(
        "--port", type=_port, default=default_port, help="port (default: %(default)s; 0 picks a free one)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")


def _port(text: str) -> int:
    digits = text.strip()  # ASCII digits: int() also reads other scripts' digits
    port = int(digits) if digits.isascii() and digits.isdigit() else -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{shown(text)} is not a port: give 0 to 65535 (0 picks a free one)")
    return port


def listening(bind: Callable[[], _Server], args: argparse.Namespace) -> _Server:
    """The server ``bind()`` makes on ``args.host``:``args.port``; a port in use or an address this
    machine does not have is an error saying so, not a traceback."""
    try:
        return bind()
    except OSError as exc:
        raise LedgerError(
            f"cannot listen on {as_typed(args.host)}:{args.port} ({exc.strerror or exc}); choose another "
            "--port (0 picks a free one), or a --host this machine has"
        ) from exc


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only``, just that subcommand's module is imported (the others are stubs)."""
    parser = _Parser(
        prog="llm-ledger",
        description="Summarise, compare and clean llm-ledger records and cassettes; serve a fake OpenAI API.",
    )
    parser.add_argument("--version", action=_Version)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, summary) in _COMMANDS.items():
        if only is not None and name != only:
            subparsers.add_parser(name, help=summary, add_help=False)
            continue
        importlib.import_module(module_name).register(subparsers, summary)
        command = subparsers.choices[name]
        command.set_defaults(command_parser=command)
        if command.description:  # a module docstring's ``code`` reads as plain text in a terminal
            command.description = command.description.replace("``", "")
    return parser


def _refuse_empty(args: argparse.Namespace) -> None:
    """A usage error for an empty value (``--host "$HOST"``, ``--price-file "$PRICES"`` with the variable
    unset): never read as none given (``--host ""`` listens on every interface)."""
    sub: argparse.ArgumentParser = args.command_parser
    for action in sub._actions:
        given = getattr(args, action.dest, None)
        if action.dest == "pytest_args":  # pytest's own (-k "" selects every test)
            continue
        if any(isinstance(v, str) and not v.strip() for v in (given if isinstance(given, list) else [given])):
            name = "/".join(action.option_strings) or str(action.metavar or action.dest)
            sub.error(
                f"{name} is given an empty value (an unset variable?); give it a value"
                + (", or leave it out" if action.option_strings else "")
            )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((arg for arg in argv if not arg.startswith("-")), "")
    parser = build_parser(command if command in _COMMANDS else "")
    args, extra = parser.parse_known_args(argv)
    if extra:
        # options and positionals in any order (`report a.jsonl --by model b.jsonl`); what is left over
        # is the subcommand's error, shown with its usage
        sub: argparse.ArgumentParser = args.command_parser
        at = argv.index(args.command)
        if at:  # only --help and --version come before the command, and both exit
            parser.error(f"unrecognized arguments: {' '.join(map(as_typed, argv[:at]))}")
        rest = argv[at + 1 :]
        args, extra = sub.parse_known_intermixed_args(rest, argparse.Namespace(command=args.command))
        if extra:
            hint = getattr(args, "unknown_hint", None)
            sub.error(f"unrecognized arguments: {' '.join(map(as_typed, extra))}{hint(rest) if hint else ''}")
    _refuse_empty(args)
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
