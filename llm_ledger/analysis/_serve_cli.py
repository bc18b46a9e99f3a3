"""``llm-ledger serve LOG_DIR``: the read-only cost API (``GET /costs``) over HTTP."""

from __future__ import annotations

import argparse
from typing import Any

from ._http import ENDPOINT, PARAMETERS, make_server

__all__ = ["register"]


def register(subparsers: Any, summary: str) -> None:
    """Add the ``serve`` subcommand to the ``llm-ledger`` parser."""
    parameters = "\n".join(f"  {name}: {text}" for name, text in PARAMETERS.items())
    parser = subparsers.add_parser(
        "serve",
        help=summary,
        description=(
            f"Answer GET {ENDPOINT}?by=user_id&since=...&until=...&where=key=value with the JSON of\n"
            "`llm-ledger report --format json` over the logs in LOG_DIR, read afresh on each request.\n"
            "Read-only; it listens on 127.0.0.1 unless --host says otherwise."
        ),
        epilog=f"parameters of {ENDPOINT}:\n{parameters}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("log_dir", metavar="LOG_DIR", help="the ledger's log directory (e.g. logs)")
    parser.add_argument(
        "--port", type=int, default=8000, help="port (default: %(default)s; 0 picks a free one)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; returns the exit status."""
    server = make_server(args.log_dir, args.host, args.port)
    host, port = str(server.server_address[0]), server.server_address[1]
    url = f"http://{host}:{port}{ENDPOINT}"
    print(f"llm-ledger serve: GET {url} over {args.log_dir} (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
