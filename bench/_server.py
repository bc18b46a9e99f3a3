"""A minimal loopback HTTP/1.1 server: OpenAI chat answers (``_payloads``) and a sink for exporters.

Run in its own process so its work does not compete with the benchmark for the GIL:
``python -m bench._server`` prints ``PORT <n>`` once listening, and serves until killed or until
its standard input closes. ``POST /v1/chat/completions`` answers like OpenAI; any other request
(OTLP traces, Langfuse or LangSmith ingestion) gets ``200 {}``, and its body is discarded.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from ._payloads import Answers

REPO = Path(__file__).resolve().parent.parent


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a ``python -m bench...`` subprocess: this checkout first on the path."""
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


_SINK_BODY = b"{}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    answers: Answers

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, body: bytes, headers: dict[str, str]) -> None:
        head = [f"HTTP/1.1 200 OK\r\ncontent-length: {len(body)}\r\n"]
        head.extend(f"{k}: {v}\r\n" for k, v in headers.items())
        head.append("\r\n")
        self.wfile.write("".join(head).encode() + body)  # one write: no Nagle / delayed-ACK stalls

    def do_GET(self) -> None:
        self._reply(_SINK_BODY, {"content-type": "application/json"})

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            body = self.rfile.read(length)
        elif self.headers.get("transfer-encoding", "").lower() == "chunked":
            body = self._read_chunked()
        else:
            body = b""
        if self.path.endswith("/chat/completions"):
            answer, headers = self.answers.body(body)
            self._reply(answer, headers)
        else:
            self._reply(_SINK_BODY, {"content-type": "application/json"})

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                self.rfile.readline()
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chunks", type=int, default=60, help="content chunks per streamed answer")
    args = parser.parse_args(argv)
    handler = type("Handler", (_Handler,), {"answers": Answers(args.chunks)})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"PORT {server.server_address[1]}", flush=True)
    sys.stdin.read()  # until the parent closes our stdin (or dies)
    # then exit, the daemon threads with it: shutdown() would wait for serve_forever's next poll (0.5 s)


class LoopbackServer:
    """Starts ``python -m bench._server`` in a subprocess; ``base_url`` for the SDK, ``url`` for sinks."""

    def __init__(self, chunks: int = 60) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench._server", "--chunks", str(chunks)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=child_env(),
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line.startswith("PORT "):
            self.close()
            raise RuntimeError(f"loopback server did not start: {line!r}")
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.url}/v1"

    def close(self) -> None:
        if self._process.poll() is None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def __enter__(self) -> LoopbackServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


if __name__ == "__main__":
    main()
