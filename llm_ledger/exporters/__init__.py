"""Exporters: sinks that turn llm-ledger's records into metrics and traces for other systems.

.. code-block:: python

    from llm_ledger.exporters import PrometheusSink, OTelSink, start_metrics_server

    monitor.add_sink(PrometheusSink())      # pip install 'llm-ledger[prometheus]'
    start_metrics_server(9464)              # /metrics, for a service without a web server
    monitor.add_sink(OTelSink())            # pip install 'llm-ledger[otel]'

or, for the default monitor, ``llm_ledger.configure(exporters=["prometheus:9464", "otel"])`` /
``LLM_LEDGER_EXPORTERS=prometheus:9464,otel``. Each exporter is a sink over the call and lens records
(``llm_ledger/_records.py``); see docs/exporters.md for every metric, span and attribute.
"""

from __future__ import annotations

from ._otel import OTelSink
from ._prometheus import PrometheusSink, start_metrics_server

__all__ = ["OTelSink", "PrometheusSink", "start_metrics_server"]
