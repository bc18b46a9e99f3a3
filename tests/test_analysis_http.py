"""The read-only cost API: `llm-ledger serve` and the ASGI app, each under a real server over 127.0.0.1."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
import uvicorn

from llm_ledger import ConfigError
from llm_ledger.report import asgi_app, summarise
from tests import warm_python
from tests.report_helpers import EPOCH, call, lens_run, write

pytestmark = pytest.mark.sdk_independent  # make test-compat leaves it to the newest SDK

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three calls of two users, one lens run (shared by the module's servers: tests only read it)."""
    logs = tmp_path_factory.mktemp("served") / "logs"
    logs.mkdir()
    alice = [call(extra={"user_id": "alice"}, cost="0.1"), call(extra={"user_id": "alice"}, cost="0.2")]
    bob = [call(extra={"user_id": "bob"}, cost="0.05", epoch=EPOCH + 86_400)]
    write(logs / "llm_calls.jsonl", [*alice, lens_run(alice), *bob])
    return logs


@contextmanager
def llm_ledger_serve(log_dir: Path) -> Iterator[str]:
    """`llm-ledger serve LOG_DIR --port 0` in a subprocess; its base URL."""
    errors = log_dir.parent / "serve.err"  # its access log, read only if it fails to start
    with errors.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "llm_ledger", "serve", str(log_dir), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=REPO,
        )
    assert process.stdout is not None
    try:
        first = process.stdout.readline()
        assert first.startswith("llm-ledger serve: GET http://127.0.0.1:"), first + errors.read_text()
        yield first.split()[3].removesuffix("/costs")
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()


@pytest.fixture(scope="module")
def served(log_dir: Path) -> Iterator[str]:
    with llm_ledger_serve(log_dir) as url:
        yield url


@contextmanager
def under_uvicorn(app: Any, root_path: str = "") -> Iterator[str]:
    """``app`` served by uvicorn on a free port of 127.0.0.1; its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", root_path=root_path)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def mounted(log_dir: Path) -> Iterator[str]:
    """asgi_app(LOG_DIR) under uvicorn; its base URL."""
    with under_uvicorn(asgi_app(log_dir)) as url:
        yield url


@pytest.fixture(params=["serve", "asgi"])
def base_url(request: pytest.FixtureRequest) -> str:
    """The same API served both ways: one request handler behind each server."""
    url: str = request.getfixturevalue("served" if request.param == "serve" else "mounted")
    return url


def get(base_url: str, query: str = "", method: str = "GET") -> httpx2.Response:
    with httpx2.Client(base_url=base_url, timeout=10) as client:
        return client.request(method, "/costs" + query)


def test_costs_by_user_are_json_rows(base_url: str, log_dir: Path) -> None:
    """GET /costs?by=user_id: the rows of summarise(), costs as JSON numbers; input names without the path."""
    response = get(base_url, "?by=user_id")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert body["rows"] == [row.to_json() for row in summarise(log_dir, by="user_id").rows]
    assert [(row["key"]["user_id"], row["calls"], row["cost_usd"]) for row in body["rows"]] == [
        ("alice", 2, 0.3),
        ("bob", 1, 0.05),
    ]
    assert [entry["name"] for entry in body["inputs"]] == ["llm_calls.jsonl"]


def test_filters_and_time_range_apply(base_url: str) -> None:
    """where (repeatable), since and until filter as on the command line."""
    body = get(base_url, "?by=lens,user_id&where=user_id=bob&since=2025-11-25&until=2025-11-26").json()
    assert [(row["key"], row["calls"]) for row in body["rows"]] == [
        ({"lens": "default_summary", "user_id": "bob"}, 1)
    ]
    assert body["where"] == {"user_id": ["bob"]} and body["since"] == "2025-11-25T00:00:00Z"
    assert get(base_url, "?by=user_id&by=lens").json()["by"] == ["user_id", "lens"]


def test_a_zone_offset_written_with_a_bare_plus_in_the_url_is_read_as_one(base_url: str) -> None:
    """since=2025-11-25T01:00+02:00 typed into a URL: the query string decodes its '+' as a space, which
    the API reads back as the offset it must be (as %2B), not a 400 about a date with a space in it."""
    encoded = get(
        base_url, "?by=user_id&since=2025-11-25T01:00%2B02:00&until=2025-11-26T12:00:00.000%2B05:30"
    )
    for query in (
        "?by=user_id&since=2025-11-25T01:00+02:00&until=2025-11-26T12:00:00.000+05:30",
        "?by=user_id&since=2025-11-25+01:00+02:00&until=2025-11-26+12:00:00.000+05:30",  # ' ' for 'T' too
    ):
        response = get(base_url, query)
        assert response.status_code == 200, response.text
        assert response.json() == encoded.json()
    body = encoded.json()
    assert (body["since"], body["until"]) == ("2025-11-24T23:00:00Z", "2025-11-26T06:30:00Z")
    assert [(row["key"]["user_id"], row["calls"]) for row in body["rows"]] == [("bob", 1)]


def test_tz_reads_days_on_that_zones_clock(base_url: str) -> None:
    """tz=Pacific/Kiritimati (UTC+14): calls at 16:00 UTC count on the next local day."""
    body = get(base_url, "?by=day&tz=Pacific/Kiritimati").json()
    assert body["tz"] == "Pacific/Kiritimati"
    assert [(row["key"]["day"], row["calls"]) for row in body["rows"]] == [
        ("2025-11-25", 2),
        ("2025-11-26", 1),
    ]


@pytest.mark.parametrize("how", ["serve", "asgi"])
def test_each_request_reads_the_logs_afresh(tmp_path: Path, how: str) -> None:
    """A call logged after the server started is in the next answer; an empty directory is no error."""
    with llm_ledger_serve(tmp_path) if how == "serve" else under_uvicorn(asgi_app(tmp_path)) as url:
        assert get(url).json()["rows"] == []  # a fresh application with no log yet
        write(tmp_path / "llm_calls.jsonl", [call(extra={"user_id": "carol"})])
        assert get(url, "?by=user_id").json()["rows"][0]["key"] == {"user_id": "carol"}


@pytest.mark.parametrize(
    ("query", "parameter", "error"),
    [
        ("?bye=user_id", "bye", "unknown parameter 'bye'"),
        ("?where=user_id", "where", "where: 'user_id' is not KEY=VALUE; e.g. user_id=alice"),
        ("?since=2025-13-01", "since", "since: '2025-13-01' is not an ISO date or date-time"),
        ("?until=soon", "until", "until: 'soon' is not an ISO date or date-time"),
        ("?since=2025-12-01&until=2025-11-01", "since", "since: 2025-12-01T00:00:00Z is not before until"),
        ("?since=2025-11-01&since=2025-11-02", "since", "since is given 2 times; give it once"),
        ("?by=", "by", "by: '' has an empty dimension name"),
        ("?tz=Mars/Olympus", "tz", "tz: 'Mars/Olympus' is not a time zone name"),
    ],
)
def test_bad_parameters_are_400_with_the_problem_and_the_valid_choices(
    base_url: str, query: str, parameter: str, error: str
) -> None:
    """A bad parameter: 400, JSON naming it, what is wrong, and what it takes."""
    response = get(base_url, query)
    assert response.status_code == 400
    body = response.json()
    assert body["parameter"] == parameter
    assert body["error"].startswith(error)
    assert body["valid"]
    if parameter == "bye":
        assert set(body["valid"]) == {"by", "where", "since", "until", "tz"}


def test_other_paths_and_methods_are_refused_in_json(base_url: str) -> None:
    """Another path is 404 and a write is 405, each with a JSON error naming the valid choice."""
    with httpx2.Client(base_url=base_url, timeout=10) as client:
        missing = client.get("/secrets")
        assert missing.status_code == 404
        assert missing.json()["valid"] == ["/costs"]
        posted = client.post("/costs", content=b"{}")
        assert posted.status_code == 405
        assert posted.json()["valid"] == ["GET", "HEAD"]
        head = client.head("/costs")
        assert head.status_code == 200 and head.content == b""


def test_a_log_dir_that_is_not_a_directory_is_refused(tmp_path: Path) -> None:
    """asgi_app refuses a regular file when it is built, and serve a directory that is not there when
    it starts (a path typed at a prompt), not on the first request."""
    (tmp_path / "llm_calls.jsonl").write_text("")
    with pytest.raises(ConfigError, match="is not a directory; pass the ledger's log directory"):
        asgi_app(tmp_path / "llm_calls.jsonl")
    done = subprocess.run(
        [sys.executable, "-m", "llm_ledger", "serve", str(tmp_path / "nope"), "--port", "0"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
    )
    assert done.returncode == 2
    assert "llm-ledger serve: error: " in done.stderr and "does not exist" in done.stderr


def test_an_app_mounted_before_its_log_directory_exists_answers_empty_until_then(tmp_path: Path) -> None:
    """asgi_app over a log directory not created yet (an application mounting it at import, before
    configure() makes logs/) answers an empty report, then the calls once logged; a file where the
    directory should be is a 500 naming the problem."""
    logs = tmp_path / "logs"
    with under_uvicorn(asgi_app(logs)) as url:
        empty = get(url, "?by=user_id")
        assert (empty.status_code, empty.json()["rows"], empty.json()["inputs"]) == (200, [], [])
        logs.mkdir()
        write(logs / "llm_calls.jsonl", [call(extra={"user_id": "carol"})])
        assert get(url, "?by=user_id").json()["rows"][0]["key"] == {"user_id": "carol"}
        (logs / "llm_calls.jsonl").unlink()
        logs.rmdir()
        logs.write_text("not a directory")
        broken = get(url)
    assert broken.status_code == 500
    assert broken.json()["error"] == "cannot read the logs: the log directory 'logs' is not a directory"


def test_the_asgi_app_answers_under_a_mount_prefix(log_dir: Path) -> None:
    """Mounted at /ledger (root_path, as a proxy or a framework's mount sets it): GET /ledger/costs."""
    with under_uvicorn(asgi_app(log_dir), root_path="/ledger") as url:
        response = get(url, "?by=user_id")  # uvicorn hands the app /ledger/costs
    assert response.status_code == 200
    assert response.json()["calls"] == 3


def test_ctrl_c_stops_llm_ledger_serve_with_130_and_frees_the_port(log_dir: Path) -> None:
    """SIGINT (Ctrl-C) stops a serving ``llm-ledger serve`` at once, even with a client connected and
    silent: exit 130, the shell's status for SIGINT, no traceback, and the port free for the next one."""
    child = warm_python.popen(
        [sys.executable, "-m", "llm_ledger", "serve", str(log_dir), "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        sigint_default=True,
    )
    try:
        assert child.stdout is not None
        url = child.stdout.readline().split()[3]
        assert httpx2.get(url).status_code == 200  # it serves
        port = int(url.split(":")[2].split("/")[0])
        with socket.create_connection(("127.0.0.1", port)):  # a client that sends nothing
            child.send_signal(signal.SIGINT)
            # a server that waited for the silent client would wait for good: the timeout only guards
            # against that, generous for a loaded host (load 30: over 5 s to exit)
            _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130, err
    assert "Traceback" not in err
    with socket.socket() as again:  # bound as a server binds (its closed connections wait in TIME_WAIT)
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen()
