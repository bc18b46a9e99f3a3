"""``configure(exporters=[...])`` / ``LLM_LEDGER_EXPORTERS``: names checked by :func:`parse`, sinks
built and ports bound by :func:`prepare` before anything changes, and swapped in by :meth:`Plan.commit`.
"""

from __future__ import annotations

import ipaddress
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from .._errors import ConfigError
from .._errors import internal_log as _internal_log
from ..loading import shown
from ._otel import OTelSink
from ._prometheus import PrometheusSink, start_metrics_server

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from .._monitor import LLMCallMonitor, Sink

__all__ = ["EXPORTER_NAMES", "Plan", "metrics_ports", "parse", "prepare"]

EXPORTER_NAMES: Final = ("otel", "prometheus")
DEFAULT_ADDR: Final = "0.0.0.0"

_HOST_NAME: Final = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?")  # or an IPv4 address
_lock = threading.Lock()
_default_sinks: dict[str, Any] = {}  # name -> the one sink of the process's global registry/providers
_installed: list[Sink] = []  # the exporter sinks on the default monitor now
_servers: dict[tuple[str, int], WSGIServer] = {}  # (addr, port) -> /metrics server started by configure


def _is_host(host: str) -> bool:
    """Whether ``host`` is a host name, an IPv4 address or an IPv6 address (in brackets or not)."""
    if _HOST_NAME.fullmatch(host):
        return True
    try:
        ipaddress.IPv6Address(host[1:-1] if host[:1] + host[-1:] == "[]" else host)
    except ValueError:
        return False
    return True


def _one(item: Any, source: str) -> str:
    if not isinstance(item, str):
        raise ConfigError(f"exporters must be names (str), got {item!r} in {source}")
    named = shown(item.strip())  # quoted only through shown(): it may hold anything
    parts = re.sub(r"\s*:\s*", ":", item).replace(";", " ").split()
    if len(parts) > 1:  # "prometheus:9464 otel": names run together
        raise ConfigError(
            f"{named} in {source} is more than one exporter: separate them with commas, "
            f"{shown(','.join(parts))}"
        )
    name, colon, where = item.strip().partition(":")
    name = name.strip().lower()
    if name not in EXPORTER_NAMES:
        raise ConfigError(
            f"unknown exporter {named} in {source}; choose from {', '.join(EXPORTER_NAMES)} "
            "(prometheus:PORT also serves /metrics on PORT)"
        )
    if not colon:
        return name
    if name != "prometheus":
        raise ConfigError(f"exporter {named} in {source} takes no port; only prometheus:PORT does")
    # "[::1]": an IPv6 address with no port after it
    host, _, port_text = (where, "", "") if where.rstrip().endswith("]") else where.rpartition(":")
    host = host.strip()
    if host and not _is_host(host):  # before any lookup
        what = f"{shown(host)} is not a host name or IP address"
        if ":" in where.strip() and _is_host(where.strip()):  # prometheus:::1
            what = f"{shown(where.strip())} is an IPv6 address and no port"
        raise ConfigError(
            f"exporter {named} in {source}: {what}; write prometheus:PORT, prometheus:HOST:PORT or, for "
            "IPv6, prometheus:[ADDRESS]:PORT (e.g. prometheus:127.0.0.1:9464, prometheus:[::1]:9464)"
        )
    host = host.strip("[]") or DEFAULT_ADDR
    digits = port_text.strip()  # ASCII digits only: int() also reads "+1", "9_464" and other scripts' digits
    port = int(digits) if digits.isascii() and digits.isdigit() else -1
    if not 0 <= port <= 65535:
        # nothing after the colon: most likely prometheus:$PORT with the variable unset
        empty = " is empty (an unset variable in prometheus:$PORT?); it" if not port_text.strip() else ""
        raise ConfigError(
            f"exporter {named} in {source}: the port{empty} must be a number from 0 to 65535 "
            "(prometheus:9464 or prometheus:127.0.0.1:9464; 0 binds a free port: metrics_ports() says which)"
        )
    return f"prometheus:{host}:{port}"


def parse(value: Any, source: str, *, from_env: bool = False) -> tuple[str, ...]:
    """Validated exporter specs, normalised (``prometheus:HOST:PORT``), duplicates dropped, from a list
    of names (``None``: none) or, ``from_env``, a comma-separated string (empty items are ignored)."""
    if from_env:
        items: Iterable[Any] = [part for part in value.split(",") if part.strip()]
    elif isinstance(value, (list, tuple)):
        items = value
    elif value is None:  # none, as log_dir=None and budgets=None are
        items = ()
    else:
        raise ConfigError(
            f"exporters must be a list of names such as ['prometheus', 'otel'] (or None), got {value!r}"
        )
    specs: list[str] = []
    ports: dict[int, str] = {}
    for item in items:
        spec = _one(item, source)
        if spec not in specs:
            specs.append(spec)
            key = _address(spec)
            # one listener a port (0: each binds a free port of its own)
            if key is not None and key[1] and ports.setdefault(key[1], spec) != spec:
                raise ConfigError(
                    f"{ports[key[1]]} and {spec} in {source} serve /metrics twice on port {key[1]}; keep "
                    "one (0.0.0.0 serves every interface of this machine, 127.0.0.1 included)"
                )
    if sum(s.startswith("prometheus") for s in specs) > 1 and "prometheus" in specs:
        specs.remove("prometheus")  # prometheus:PORT includes the sink
    return tuple(specs)


@dataclass
class Plan:
    """Sinks built and servers bound for one ``configure()``; ``commit()`` or ``cancel()`` it."""

    sinks: list[Sink]
    wanted: set[tuple[str, int]]  # every (addr, port) the new settings serve /metrics on
    started: list[tuple[str, int]]  # those prepare() bound, to stop on cancel()
    # the servers of the old settings prepare() stopped to free their port for another address of it
    # (they would have been stopped at commit()), to start again on cancel(): (addr, port), the port bound
    replaced: list[tuple[tuple[str, int], int]]

    def commit(self, monitor: LLMCallMonitor) -> None:
        """Put the new exporter sinks on ``monitor`` in place of the old; stop servers no longer named."""
        with _lock:
            for sink in _installed:
                monitor.remove_sink(sink)
            for sink in self.sinks:
                monitor.add_sink(sink)
            _installed[:] = self.sinks
            for key in [k for k in _servers if k not in self.wanted]:
                _stop(_servers.pop(key))

    def cancel(self) -> None:
        """Undo ``prepare()``: stop the servers it started, start again those it replaced."""
        with _lock:
            for key in self.started:
                server = _servers.pop(key, None)
                if server is not None:
                    _stop(server)
            for key, port in self.replaced:
                try:
                    _servers[key] = start_metrics_server(port, key[0])
                except ConfigError as exc:  # taken meanwhile: the error that cancelled must still show
                    _internal_log.error("llm-ledger: the /metrics server could not be restored: %s", exc)


def _stop(server: WSGIServer) -> None:
    server.shutdown()  # at once (start_metrics_server's)
    server.server_close()


def metrics_ports() -> dict[str, int]:
    """The port each ``prometheus:HOST:PORT`` exporter of ``configure()`` serves ``/metrics`` on, by its
    spec as ``Settings.exporters`` has it: ``{"prometheus:127.0.0.1:0": 41873}`` (port 0 binds a free
    port, kept while a later ``configure()`` names the same spec)."""
    with _lock:
        return {f"prometheus:{addr}:{port}": server.server_port for (addr, port), server in _servers.items()}


def _address(spec: str) -> tuple[str, int] | None:
    """The (addr, port) a normalised spec serves /metrics on (``prometheus:HOST:PORT``), else None."""
    addr, _, port = spec.partition(":")[2].rpartition(":")
    return (addr, int(port)) if port else None


def prepare(specs: tuple[str, ...]) -> Plan:
    """Build the sinks and bind the ports of ``specs`` (``ConfigError`` naming the fix, nothing changed)."""
    sinks: list[Sink] = []
    wanted = {key for key in map(_address, specs) if key is not None}
    plan = Plan(sinks, wanted, [], [])
    try:
        for spec in specs:
            name = spec.partition(":")[0]
            if name not in _default_sinks:
                _default_sinks[name] = PrometheusSink() if name == "prometheus" else OTelSink()
            sink: Sink = _default_sinks[name]
            if sink not in sinks:
                sinks.append(sink)
            key = _address(spec)
            if key is not None:
                with _lock:
                    if key in _servers:
                        continue
                    # the ledger's own server on this port at another address (prometheus:9464, or
                    # prometheus:0 that bound it, now prometheus:127.0.0.1:9464) holds the port: commit()
                    # would stop it, so stop it first; a port another process holds stays
                    # start_metrics_server's error
                    mine = [k for k, server in _servers.items() if server.server_port == key[1] != 0]
                    for old in [k for k in mine if k not in wanted]:
                        _stop(_servers.pop(old))
                        plan.replaced.append((old, key[1]))
                    _servers[key] = start_metrics_server(key[1], key[0])
                    plan.started.append(key)
    except BaseException:
        plan.cancel()
        raise
    return plan
