"""Where the ledger's work goes on one call: bytecodes run per ``llm_ledger`` function, in seconds.

``python -m bench.bytecodes [--stream] [--lens]`` traces the ledger's own frames (``sys.settrace``
with opcode events) over a few calls made as ``bench.instructions`` makes them (MockTransport, the
JSONL file on) and prints the functions that ran the most bytecodes per call. With ``--stream``:
per chunk, the slope between streams of 10 and of 110 content chunks (what each further chunk
costs, as ``--only instructions`` counts it), and per stream of 100 chunks. The counts are exact
and repeatable on a busy machine; a bytecode is not an instruction (calls, dict building and C
helpers weigh more), so confirm a change with ``--only instructions``.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from types import FrameType
from typing import Any

import httpx2
import openai

import llm_ledger

_Key = tuple[str, int, str]


def _client(body: bytes, content_type: str) -> openai.OpenAI:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=body, headers={"content-type": content_type})

    http = httpx2.Client(transport=httpx2.MockTransport(handler))
    client = openai.OpenAI(
        api_key="sk-bench-0000000000", base_url="http://bench.invalid/v1", http_client=http
    )
    return llm_ledger.instrument(client)


def _call(client: openai.OpenAI) -> None:
    messages: Any = [{"role": "system", "content": "s" * 500}, {"role": "user", "content": "u" * 3000}]
    client.chat.completions.create(model="gpt-4o-mini", messages=messages, temperature=0.2)


def _stream(client: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "u" * 300}]
    for _ in client.chat.completions.create(
        model="gpt-4o-mini", messages=messages, stream=True, stream_options={"include_usage": True}
    ):
        pass


def _stream_body(chunks: int) -> bytes:
    def event(choices: list[Any], **extra: Any) -> bytes:
        chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1}
        chunk |= {"model": "gpt-4o-mini-2024-07-18", "choices": choices, **extra}
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    def delta(content: dict[str, str], finish: str | None = None) -> list[Any]:
        return [{"index": 0, "delta": content, "finish_reason": finish}]

    usage = {"prompt_tokens": 1000, "completion_tokens": chunks, "total_tokens": 1000 + chunks}
    return b"".join(
        [
            event(delta({"role": "assistant", "content": ""})),
            *(event(delta({"content": "Hello "})) for _ in range(chunks)),
            event(delta({}, "stop")),
            event([], usage=usage),
            b"data: [DONE]\n\n",
        ]
    )


def count(run: Any, times: int) -> collections.Counter[_Key]:
    """Bytecodes run by each ``llm_ledger`` function over ``times`` runs of ``run()``."""
    counts: collections.Counter[_Key] = collections.Counter()

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode":
            code = frame.f_code
            counts[code.co_filename.rpartition("llm_ledger/")[2], code.co_firstlineno, code.co_name] += 1
        return local

    def calls(frame: FrameType, event: str, arg: Any) -> Any:
        if "llm_ledger/" not in frame.f_code.co_filename:
            return None
        frame.f_trace_opcodes = True
        return local

    sys.settrace(calls)
    try:
        for _ in range(times):
            run()
    finally:
        sys.settrace(None)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bytecodes", description=__doc__)
    parser.add_argument("--stream", action="store_true", help="streams (per chunk), not calls")
    parser.add_argument("--lens", action="store_true", help="each call in a lens run of its own")
    parser.add_argument("--top", type=int, default=25, help="how many functions to show")
    args = parser.parse_args()
    body = json.dumps(
        {
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello " * 100},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500},
        }
    ).encode()  # fmt: skip
    llm_ledger.configure(log_dir=tempfile.mkdtemp())
    times = 20
    if not args.stream:
        counts = _counts(_client(body, "application/json"), _call, args.lens, times)
        print(f"{sum(counts.values()) / times:,.0f} ledger bytecodes per call")
        for (path, line, name), n in counts.most_common(args.top):
            print(f"{n / times:9,.1f}  {path}:{line} {name}")
        return
    short, long = (
        _counts(_client(_stream_body(chunks), "text/event-stream"), _stream, args.lens, times)
        for chunks in (10, 110)
    )
    slope = {key: (long[key] - short[key]) / times / 100 for key in long | short}
    print(f"{sum(slope.values()):,.1f} ledger bytecodes per chunk (streams of 10 and 110 chunks)")
    for (path, line, name), per_chunk in sorted(slope.items(), key=lambda item: -item[1])[: args.top]:
        if per_chunk:
            print(f"{per_chunk:9,.2f}  {path}:{line} {name}")
    per_stream = {key: short[key] / times + 90 * slope[key] for key in slope}  # 90 chunks more than 10
    print(f"{sum(per_stream.values()):,.0f} ledger bytecodes per stream of 100 chunks")


def _counts(client: openai.OpenAI, once: Any, in_lens: bool, times: int) -> collections.Counter[_Key]:
    def run() -> None:
        if in_lens:
            with llm_ledger.lens("bench"):
                once(client)
        else:
            once(client)

    for _ in range(5):  # first-call imports and caches
        run()
    return count(run, times)


if __name__ == "__main__":
    main()
