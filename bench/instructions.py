"""Instructions per call and per stream chunk under callgrind: what the ledger adds, repeatable on
a shared machine.

Wall and CPU time on these 2-core VMs move by ±10-20 % from round to round, more than the ledger
adds. valgrind's callgrind counts instructions, which do not depend on what else the machine is
doing. Each variant runs in a child process twice, with a small and a large number of calls (or
of chunks a stream); the difference divided by the difference in calls (or in chunks) is the cost
of one, start-up excluded. All threads are counted, so the JSONL writer thread's formatting and
writing are included.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from ._table import Table

VARIANTS = ("bare", "ledger, no file", "ledger", "ledger in a lens", "ledger, a lens per call")

_CHILD = textwrap.dedent(
    """
    import sys, tempfile
    import httpx2, openai, llm_ledger
    from llm_ledger import _jsonl
    # valgrind runs the calls many times slower: the file's time triggers (a batch's age, a slow
    # write) would fire where at full speed the batch fills first, and with the load of the host
    _jsonl._INTERVAL_S = _jsonl._SLOW_WRITE_S = 3600.0
    from bench import _payloads  # the request and answer the calls section times
    variant, n = sys.argv[1], int(sys.argv[2])
    client = openai.OpenAI(api_key="sk-bench-0000000000", base_url="http://bench.invalid/v1",
                           http_client=httpx2.Client(transport=_payloads.mock_transport()))
    if variant != "bare":
        llm_ledger.instrument(client)
    if variant not in ("bare", "ledger, no file"):
        llm_ledger.configure(log_dir=tempfile.mkdtemp())
    kwargs = _payloads.chat_kwargs()
    def call():
        client.chat.completions.create(**kwargs)
    # warm (first-call imports and caches) and collected, so both runs start from the same heap
    import gc
    for _ in range(5):
        call()
    llm_ledger.flush()
    gc.collect()
    if variant == "ledger in a lens":
        with llm_ledger.lens("bench"):
            for _ in range(n):
                call()
    elif variant == "ledger, a lens per call":
        for _ in range(n):
            with llm_ledger.lens("bench"):
                call()
    else:
        for _ in range(n):
            call()
    llm_ledger.flush()
    """
)


# streams of `chunks` content chunks, the caller asking for usage (both variants get the same bytes)
_STREAM_CHILD = textwrap.dedent(
    """
    import gc, json, sys, tempfile
    import httpx2, openai, llm_ledger
    from llm_ledger import _jsonl
    _jsonl._INTERVAL_S = _jsonl._SLOW_WRITE_S = 3600.0  # as above
    variant, streams, chunks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    def event(choices, **extra):
        chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                 "model": "gpt-4o-mini-2024-07-18", "choices": choices, **extra}
        return b"data: " + json.dumps(chunk).encode() + b"\\n\\n"
    def delta(content, finish=None):
        return [{"index": 0, "delta": content, "finish_reason": finish}]
    body = b"".join([
        event(delta({"role": "assistant", "content": ""})),
        *(event(delta({"content": "Hello "})) for _ in range(chunks)),
        event(delta({}, "stop")),
        event([], usage={"prompt_tokens": 1000, "completion_tokens": chunks, "total_tokens": 1000 + chunks}),
        b"data: [DONE]\\n\\n",
    ])
    def handler(request):
        return httpx2.Response(200, content=body, headers={"content-type": "text/event-stream"})
    client = openai.OpenAI(api_key="sk-bench-0000000000", base_url="http://bench.invalid/v1",
                           http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))
    if variant != "bare":
        llm_ledger.instrument(client)
        llm_ledger.configure(log_dir=tempfile.mkdtemp())
    messages = [{"role": "user", "content": "u" * 300}]
    def stream():
        for _ in client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, stream=True, stream_options={"include_usage": True}
        ):
            pass
    for _ in range(3):
        stream()
    llm_ledger.flush()
    gc.collect()
    # no collection while counting: where one falls differs between the two runs of a variant, and
    # moved a chunk's figure by thousands of instructions; the collections are the SDK's (the
    # ledger allocates no tracked object for a content chunk)
    gc.disable()
    for _ in range(streams):
        stream()
    llm_ledger.flush()
    """
)
STREAM_VARIANTS = ("bare", "ledger")


def _instructions(script: Path, variant: str, *args: int) -> int:
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    command += [sys.executable, str(script), variant, *map(str, args)]
    # a fixed hash seed: string hashes decide dict and set layouts, and so the instructions they take
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    for line in done.stderr.splitlines():
        if "Collected :" in line:
            return int(line.rsplit(":", 1)[1].strip())
    raise RuntimeError(f"callgrind printed no instruction count:\n{done.stderr[-2000:]}")


CALL_TABLE = (
    "Instructions per non-streamed call (callgrind, all threads): what the ledger adds",
    ["variant", "instructions per call", "added", "added, % of bare"],
)
CHUNK_TABLE = (
    "Instructions per stream chunk (callgrind, all threads): what the ledger adds",
    ["variant", "instructions per chunk", "added", "added, % of bare"],
)


def _per_unit(
    table: Table,
    source: str,
    variants: tuple[str, ...],
    args: tuple[tuple[int, ...], tuple[int, ...]],
    units: int,
) -> dict[str, float] | None:
    """Instructions per unit of each variant: its child run with the small and the large ``args``
    under callgrind, the difference divided by ``units``. None when nothing was counted, with a note
    saying why: without valgrind nothing runs."""
    if shutil.which("valgrind") is None:
        table.notes.append("valgrind is not installed (`apt-get install valgrind`): nothing counted")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "child.py"
        script.write_text(source)
        # two children at a time (instruction counts do not depend on what else runs)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            counts = {(v, a): pool.submit(_instructions, script, v, *a) for v in variants for a in args}
            small, large = args
            return {v: (counts[v, large].result() - counts[v, small].result()) / units for v in variants}


def quick() -> list[Table]:
    """``--quick``: the children of both tables, each variant's once at tiny sizes without valgrind,
    in one interpreter (a callgrind run takes ~20 s of interpreter start-up alone, and start-up, not
    the children, is most of a plain run's time): proves the children work, measures nothing."""
    runs = [(_CHILD, VARIANTS, (2,)), (_STREAM_CHILD, STREAM_VARIANTS, (1, 3))]  # the streams' last: gc off
    with tempfile.TemporaryDirectory() as tmp:
        children = []
        for index, (source, variants, args) in enumerate(runs):
            script = Path(tmp) / f"child{index}.py"
            script.write_text(source)
            children += [[str(script), variant, *map(str, args)] for variant in variants]
        run_all = (
            "import gc, runpy, sys\n"
            "import openai, llm_ledger\n"
            "gc.freeze()  # each child's full collection would walk the SDK's objects again\n"
            f"for sys.argv in {children!r}:\n"
            "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        )
        subprocess.run([sys.executable, "-c", run_all], check=True, capture_output=True)
    tables = [Table(*CALL_TABLE), Table(*CHUNK_TABLE)]
    for table in tables:
        table.notes.append("--quick: each variant's child ran once without valgrind; nothing measured")
    return tables


def _added_rows(table: Table, per_unit: dict[str, float]) -> dict[str, float]:
    """A row per variant, with what it adds to ``bare``; the added % of each variant but bare."""
    bare = per_unit["bare"]
    added_pct: dict[str, float] = {}
    for variant, count in per_unit.items():
        if variant == "bare":
            table.add(variant, count, "", "")
            continue
        added = count - bare
        table.add(variant, count, added, 100 * added / bare)
        added_pct[variant] = 100 * added / bare
    return added_pct


def measure(small: int = 30, large: int = 130) -> tuple[Table, dict[str, float]]:
    """Instructions per non-streamed call (MockTransport) for each variant, and what the ledger adds."""
    table = Table(*CALL_TABLE)
    per_call = _per_unit(table, _CHILD, VARIANTS, ((small,), (large,)), large - small)
    if per_call is None:
        return table, {}
    added_pct = _added_rows(table, per_call)
    table.notes.append(
        f"{small} and {large} calls per child after 5 warm-up calls and a full collection; the "
        f"difference over {large - small} calls cancels start-up (a garbage collection falling in "
        "one run and not the other still moves a figure by a few thousand instructions). In time: "
        "added % x the bare call's µs from the calls table."
    )
    return table, {f"instructions_added_pct_{v}": pct for v, pct in added_pct.items()}


def per_chunk(streams: int = 5, chunks: tuple[int, int] = (10, 200)) -> tuple[Table, dict[str, float]]:
    """Instructions per stream chunk, bare and instrumented: the slope between two stream lengths."""
    small, large = chunks
    table = Table(*CHUNK_TABLE)
    args = ((streams, small), (streams, large))
    units = (large - small) * streams
    per_chunk = _per_unit(table, _STREAM_CHILD, STREAM_VARIANTS, args, units)
    if per_chunk is None:
        return table, {}
    added_pct = _added_rows(table, per_chunk)
    table.notes.append(
        f"{streams} streams of {small} and of {large} content chunks per child (the caller asks for "
        f"usage), after 3 warm-up streams and a full collection, the collector off; the difference over "
        f"{large - small} chunks a stream is the cost of one chunk. In time: added % x the bare "
        "per-chunk µs from the streams table."
    )
    return table, {
        "instructions_added_per_chunk": per_chunk["ledger"] - per_chunk["bare"],
        "instructions_added_pct_per_chunk": added_pct["ledger"],
    }
