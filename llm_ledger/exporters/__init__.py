"""Exporters: sinks that turn llm-ledger's records into metrics and traces for other systems
(``PrometheusSink``, ``start_metrics_server``, ``metrics_registry``, ``flush_metrics``, ``OTelSink``;
for the default monitor, ``configure(exporters=[...])``, whose /metrics ports ``metrics_ports`` gives).
How to turn them on, and every metric, span and attribute: docs/exporters.md.
"""

from __future__ import annotations

from ._otel import OTelSink
from ._prometheus import PrometheusSink, flush_metrics, metrics_registry, start_metrics_server
from ._setup import metrics_ports

__all__ = [
    "OTelSink", "PrometheusSink", "flush_metrics", "metrics_ports", "metrics_registry", "start_metrics_server"
]  # fmt: skip
