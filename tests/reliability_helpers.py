"""Shared pieces of the reliability suite (``tests/test_reliability_*.py``).

Sizes scale with ``LEDGER_RELIABILITY_SCALE`` (1 = the small default that ``make test`` runs,
10 = the full figures quoted in ``docs/RELIABILITY.md``). When ``LEDGER_RELIABILITY_REPORT``
names a file, tests append their figures to it as JSON lines; ``python -m tests.reliability_helpers
FILE`` prints them as the Markdown table the doc quotes.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import openai

from tests.sdk import sdk_http

__all__ = [
    "FAKE_KEY",
    "REPO",
    "SCALE",
    "chat_body",
    "chat_handler",
    "child_env",
    "examples",
    "mock_client",
    "read_lines",
    "record_figures",
    "sized",
    "sse_chunks",
]

FAKE_KEY: Final = "sk-test-LEAKCHECK-0123456789abcdef"  # the same key tests/conftest.py gives clients
REPO: Final = Path(__file__).resolve().parents[1]


def _scale() -> int:
    raw = os.environ.get("LEDGER_RELIABILITY_SCALE", "1")
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise RuntimeError(f"LEDGER_RELIABILITY_SCALE must be a whole number >= 1, got {raw!r}")
    return value


SCALE: Final = _scale()


def sized(small: int, full: int) -> int:
    """``small`` at the default scale 1, ``full`` at scale 10, linear in between and beyond."""
    if SCALE >= 10:
        return full * SCALE // 10
    return small + (full - small) * (SCALE - 1) // 9


def examples(default: int = 1000) -> int:
    """Hypothesis examples per fuzz test: at least ``default``, more at higher scales."""
    return default * max(1, SCALE // 2)


def record_figures(test: str, **figures: Any) -> None:
    """Append one test's figures to ``$LEDGER_RELIABILITY_REPORT`` (one JSON line, one write)."""
    target = os.environ.get("LEDGER_RELIABILITY_REPORT")
    if not target:
        return
    line = json.dumps({"test": test, "scale": SCALE, **figures}, sort_keys=False) + "\n"
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_lines(*paths: Path) -> list[dict[str, Any]]:
    """Every line of the given JSONL files, each parsed (a partial or broken line fails the caller)."""
    parsed: list[dict[str, Any]] = []
    for path in paths:
        data = path.read_bytes()
        assert not data or data.endswith(b"\n"), f"{path} ends with a partial line"
        for number, line in enumerate(data.splitlines(), 1):
            try:
                parsed.append(json.loads(line))
            except ValueError as exc:
                raise AssertionError(f"{path}:{number} is not a whole JSON line: {line[:200]!r}") from exc
    return parsed


# -- an in-process OpenAI endpoint (sdk_http.MockTransport): no sockets, so the ledger is the bottleneck --


def chat_body(model: str, text: str, prompt_tokens: int) -> dict[str, Any]:
    """A ChatCompletion JSON with deterministic usage."""
    completion = max(1, len(text) // 4)
    return {
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
        },
    }


def _chunk(model: str, delta: Mapping[str, Any], finish: str | None, usage: Any = None) -> bytes:
    choices = [{"index": 0, "delta": dict(delta), "finish_reason": finish}] if delta or finish else []
    payload = {
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": model,
        "choices": choices,
        "usage": usage,
    }
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def sse_chunks(model: str, count: int, *, usage: bool = True) -> Iterator[bytes]:
    """A chat completion stream of ``count`` one-word content chunks, generated lazily."""
    yield _chunk(model, {"role": "assistant", "content": ""}, None)
    for _ in range(count):
        yield _chunk(model, {"content": "word "}, None)
    yield _chunk(model, {}, "stop")
    if usage:
        yield _chunk(
            model, {}, None, {"prompt_tokens": 7, "completion_tokens": count, "total_tokens": count + 7}
        )
    yield b"data: [DONE]\n\n"


def chat_handler(request: sdk_http.Request) -> sdk_http.Response:
    """Answer chat completions: prompt tokens = characters of the messages; ``x-mock-chunks`` streams."""
    body = json.loads(request.content)
    model = str(body.get("model"))
    chars = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
    status = int(request.headers.get("x-mock-status", "200"))
    if status != 200:
        error = {"error": {"message": "mock failure", "type": "server_error", "param": None, "code": None}}
        return sdk_http.Response(status, json=error)
    if body.get("stream"):
        count = int(request.headers.get("x-mock-chunks", "5"))
        return sdk_http.Response(
            200, headers={"content-type": "text/event-stream"}, content=sse_chunks(model, count)
        )
    return sdk_http.Response(200, json=chat_body(model, "ok " * (chars % 7 + 1), chars + 4))


def mock_client(handler: Any = chat_handler) -> openai.OpenAI:
    """A sync client whose HTTP goes to ``handler`` in process (close it, or use ``with``)."""
    http = sdk_http.Client(transport=sdk_http.MockTransport(handler))
    return openai.OpenAI(api_key=FAKE_KEY, base_url="http://mock.invalid/v1", http_client=http, max_retries=0)


# -- child processes -------------------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    """The environment for ``python -m tests.reliability_helpers ...``: this checkout first on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_LEDGER_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.update(extra)
    return env


def _write_calls(log_dir: str, proc: int, threads: int, calls: int, ending: str) -> None:
    """Make ``threads`` x ``calls`` monitored calls from one shared client, then end as ``ending`` says."""
    import threading

    import llm_ledger

    llm_ledger.configure(log_dir=log_dir)
    client = llm_ledger.instrument(mock_client())
    messages = [{"role": "user", "content": "count me"}]

    def work(thread: int) -> None:
        for i in range(calls):
            with llm_ledger.track_llm_call(proc=proc, thread=thread, i=i):
                client.chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    client.close()
    if ending == "flush":
        llm_ledger.flush()
    elif ending == "sys.exit":
        sys.exit(3)
    elif ending == "raise":
        raise RuntimeError("the application crashed")
    # "return": the interpreter exits with records still queued; atexit must write them


def _write_in_processes(log_dir: str, procs: int, threads: int, calls: int) -> None:
    """``procs`` processes each make ``threads`` x ``calls`` calls (``_write_calls``, ending by flush)
    on one file, at once; exits 1 if any of them failed. The processes are forked once the SDK is
    imported (a second of start-up each, the most of a small run's time); each configures the ledger
    and opens the file itself, as a process started on its own does."""
    with mock_client() as client:
        client.chat.completions  # noqa: B018 (the SDK imports a resource's modules when it is first made)
    children = []
    for proc in range(procs):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the forked writer
            status = 1
            try:
                _write_calls(log_dir, proc, threads, calls, "flush")
                status = 0
            except BaseException:  # said on stderr, which the test shows: os._exit() would swallow it
                traceback.print_exc()
            finally:
                os._exit(status)
        children.append(pid)
    failed = [pid for pid in children if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0]
    sys.exit(1 if failed else 0)


def _render(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out = ["| test | scale | figures |", "|---|---|---|"]
    for row in rows:
        test, scale = row.pop("test"), row.pop("scale")
        figures = ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in row.items())
        out.append(f"| `{test}` | {scale} | {figures} |")
    return "\n".join(out)


if __name__ == "__main__":  # pragma: no cover - run as a child process, or to print the figures table
    if sys.argv[1] == "write":
        _write_calls(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    elif sys.argv[1] == "write-forked":
        _write_in_processes(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    else:
        print(_render(Path(sys.argv[1])))
