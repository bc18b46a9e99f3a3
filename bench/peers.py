"""Section 3: the same calls under peer monitors, each in its own subprocess (they patch globally).

Peers come from ``bench/requirements.txt``; one that is not installed, fails to install, or does not
work with this openai / httpx2 is reported as such instead of a number. Every exporter sends to a
loopback sink (``bench._server``), so nothing leaves the machine. In each worker the ``bare``
variant calls the SDK's own, unpatched ``Completions.create`` (the ``__wrapped__`` of the peer's
wrapt patch) on the same client, so bare and peer calls interleave in one process; LangSmith wraps
a client instance instead, so its bare variant is a second, plain client.

Worker: ``python -m bench.peers NAME --sink URL --calls N --streams N --rounds N --chunks A,B``
prints one ``RESULT {json}`` line.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx2

from . import _timing
from ._server import REPO, LoopbackServer, child_env
from ._table import Table

PEERS: dict[str, tuple[str, str]] = {
    # name: (distribution, module that must import)
    "otel-openai-v2": ("opentelemetry-instrumentation-openai-v2", "opentelemetry.instrumentation.openai_v2"),
    "langfuse": ("langfuse", "langfuse.openai"),
    "openllmetry": ("opentelemetry-instrumentation-openai", "opentelemetry.instrumentation.openai"),
    "langsmith": ("langsmith", "langsmith.wrappers"),
}


@dataclass
class Setup:
    """A peer made ready: the SDK client to call through it and how to wait for its exporter."""

    client: Any
    flush: Callable[[], None]
    bare_client: Any = None  # only for instance wrappers


def _otel_provider(sink: str) -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
        OTLPSpanExporter,
    )
    from opentelemetry.sdk.trace import TracerProvider  # type: ignore[import-not-found,unused-ignore]
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # type: ignore[import-not-found,unused-ignore]

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{sink}/v1/traces")))
    return provider


def setup_peer(name: str, sink: str, make_client: Callable[[], Any]) -> Setup:
    if name == "otel-openai-v2":
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor  # type: ignore[import-not-found,unused-ignore]

        provider = _otel_provider(sink)
        OpenAIInstrumentor().instrument(tracer_provider=provider)
        return Setup(make_client(), lambda: provider.force_flush())
    if name == "openllmetry":
        from opentelemetry.instrumentation.openai import (  # type: ignore[import-not-found,unused-ignore]
            OpenAIInstrumentor as TraceloopInstrumentor,
        )

        provider = _otel_provider(sink)
        TraceloopInstrumentor().instrument(tracer_provider=provider)
        return Setup(make_client(), lambda: provider.force_flush())
    if name == "langfuse":
        os.environ.update(
            LANGFUSE_PUBLIC_KEY="pk-lf-bench", LANGFUSE_SECRET_KEY="sk-lf-bench", LANGFUSE_HOST=sink,
            LANGFUSE_BASE_URL=sink,
        )  # fmt: skip
        importlib.import_module("langfuse.openai")  # patches openai's resources on import
        from langfuse import get_client  # type: ignore[import-not-found,unused-ignore]

        langfuse = get_client()
        return Setup(make_client(), lambda: langfuse.flush())
    if name == "langsmith":
        os.environ.update(
            LANGSMITH_TRACING="true", LANGSMITH_ENDPOINT=sink, LANGSMITH_API_KEY="lsv2-bench",
            LANGCHAIN_TRACING_V2="true",
        )  # fmt: skip
        from langsmith import Client  # type: ignore[import-not-found,unused-ignore]
        from langsmith.wrappers import wrap_openai  # type: ignore[import-not-found,unused-ignore]

        ls_client = Client(api_url=sink, api_key="lsv2-bench")
        wrapped = wrap_openai(make_client(), tracing_extra={"client": ls_client})
        return Setup(wrapped, lambda: ls_client.flush(), bare_client=make_client())
    raise ValueError(f"unknown peer {name!r}")


def _bare_create(setup: Setup) -> Callable[..., Any]:
    """The SDK's own create, bypassing the peer: the unpatched function, or a plain client."""
    if setup.bare_client is not None:
        return setup.bare_client.chat.completions.create  # type: ignore[no-any-return]
    resource = setup.client.chat.completions
    patched = type(resource).create
    original = getattr(patched, "__wrapped__", None)
    if original is None:
        raise RuntimeError("the peer did not patch Completions.create; cannot measure the bare SDK beside it")

    def create(**kwargs: Any) -> Any:
        return original(resource, **kwargs)

    return create


def worker(
    name: str, sink: str, calls: int, streams: int, rounds: int, chunks: tuple[int, int]
) -> dict[str, Any]:
    from . import _payloads
    from ._timing import Batch, interleave
    from .calls import client

    out: dict[str, Any] = {"peer": name}
    transports = {n: _payloads.mock_transport(n) for n in chunks}
    current: dict[str, Any] = {"transport": transports[chunks[0]]}

    def make_client() -> Any:
        return client(_Switch(current))

    setup = setup_peer(name, sink, make_client)
    peer_create = setup.client.chat.completions.create
    bare_create = _bare_create(setup)

    def batch(create: Callable[..., Any], kwargs: dict[str, Any], stream: bool, flush: bool) -> Batch:
        def run(n: int) -> None:
            for _ in range(n):
                result = create(**kwargs)
                if stream:
                    for _chunk in result:
                        pass
            if flush:
                setup.flush()

        return run

    kwargs = _payloads.chat_kwargs()
    t = interleave(
        {"bare": batch(bare_create, kwargs, False, False), "peer": batch(peer_create, kwargs, False, True)},
        calls=calls,
        rounds=rounds,
    )
    out["bare_us"] = t.median_us("bare")
    out["added_us"] = t.added_us("peer", "bare")
    out["ratio"] = t.ratio("peer", "bare")
    out["added_wall_us"] = t.added_us("peer", "bare", "wall")
    skwargs = _payloads.chat_kwargs(stream=True, stream_options={"include_usage": True})
    added: dict[int, float] = {}
    for n in chunks:
        current["transport"] = transports[n]
        ts = interleave(
            {
                "bare": batch(bare_create, skwargs, True, False),
                "peer": batch(peer_create, skwargs, True, True),
            },
            calls=streams,
            rounds=rounds,
        )
        added[n] = ts.added_us("peer", "bare")
        out[f"stream_bare_us_{n}"] = ts.median_us("bare")
        out[f"stream_added_us_{n}"] = added[n]
    short, long = chunks
    out["chunk_us"] = (added[long] - added[short]) / (long - short)
    setup.flush()
    return out


class _Switch(httpx2.BaseTransport):
    """A transport that forwards to whichever mock transport the worker currently uses."""

    def __init__(self, current: dict[str, Any]) -> None:
        self._current = current

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response: httpx2.Response = self._current["transport"].handle_request(request)
        return response


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def run_peers(
    calls: int,
    streams: int,
    rounds: int,
    chunks: tuple[int, int],
    ledger: dict[str, float] | None = None,
    quick: bool = False,
) -> Table:
    """Run every peer's worker in its own subprocess and tabulate them beside the ledger's figures
    (``quick``: the workers freeze their heap after each warm-up, as ``--quick`` does here)."""
    table = Table(
        "Peers: process CPU µs added per non-streamed call and per stream chunk (MockTransport)",
        ["monitor", "version", "bare µs/call", "added µs/call", "ratio", "added µs/chunk", "note"],
    )
    if ledger is not None:
        table.add("llm-ledger (JSONL on)", _version("llm-ledger") or "", ledger["bare_us"],
                  ledger["ledger_added_us"], f"{ledger['ledger_ratio']:.3f}", ledger.get("chunk_us_asks", ""),
                  "section 1 and 2 figures")  # fmt: skip
    with LoopbackServer() as sink:
        for name, (distribution, _module) in PEERS.items():
            version = _version(distribution)
            if version is None:
                table.add(
                    name,
                    "not installed",
                    "",
                    "",
                    "",
                    "",
                    f"pip install {distribution} (bench/requirements.txt)",
                )
                continue
            command = [sys.executable, "-m", "bench.peers", name, "--sink", sink.url, "--calls", str(calls),
                       "--streams", str(streams), "--rounds", str(rounds),
                       "--chunks", f"{chunks[0]},{chunks[1]}", *(["--quick"] if quick else [])]  # fmt: skip
            try:
                proc = subprocess.run(
                    command, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=1800
                )
            except subprocess.TimeoutExpired:
                table.add(name, version, "", "", "", "", "timed out")
                continue
            result = next((line[7:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")), None)
            if proc.returncode != 0 or result is None:
                reason = (proc.stderr.strip().splitlines() or ["no output"])[-1][:160]
                table.add(name, version, "", "", "", "", f"failed with openai/httpx2 here: {reason}")
                continue
            data = json.loads(result)
            table.add(name, version, data["bare_us"], data["added_us"], f"{data['ratio']:.3f}",
                      data["chunk_us"], f"wall added {data['added_wall_us']:.0f} µs")  # fmt: skip
    table.notes += [
        "each peer runs in its own process with its default settings and its exporter pointed at a "
        "loopback sink; its flush() ends every timed batch (as llm_ledger.flush() does for the ledger)",
        "per chunk: slope of the added time per stream between the two stream lengths",
    ]
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("peer", choices=sorted(PEERS))
    parser.add_argument("--sink", required=True)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--chunks", default="10,100")
    parser.add_argument("--quick", action="store_true", help="freeze the heap after each warm-up")
    args = parser.parse_args(argv)
    _timing.freeze_after_warmup = args.quick
    first, second = (int(x) for x in args.chunks.split(","))
    try:
        result = worker(args.peer, args.sink, args.calls, args.streams, args.rounds, (first, second))
    except Exception:
        traceback.print_exc()
        sys.exit(1)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
