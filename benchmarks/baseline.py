"""The baseline: the exporter as one would first write it with the usual libraries.

pyroute2 message classes decode the dump (``tests/reference_pyroute2.py``), a
prometheus_client custom collector builds ``CounterMetricFamily`` /
``GaugeMetricFamily`` / ``InfoMetricFamily`` objects, and prometheus_client's own
HTTP server (``start_http_server``) serves them: it negotiates the format
(OpenMetrics for Prometheus's Accept header, via
``prometheus_client.openmetrics.exposition.generate_latest``) and gzips the body
with ``gzip.compress`` at its default level, as prometheus_client does.
The registry also carries the process, platform and GC collectors, like the exporter's.
The kernel reads of concurrent scrapes take turns on the one socket (``LockedSource``).
"""

from __future__ import annotations

import threading

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

from benchmarks.dataset import Dataset, PrebuiltKernelSocket
from tests.reference_pyroute2 import ReferenceCollector, ReferenceDump, ReferenceSource


class LockedSource(ReferenceSource):
    """One kernel socket shared by every request thread, as such an exporter has: reads take
    turns (without it, concurrent scrapes would read each other's replies)."""

    def __init__(self, sock: PrebuiltKernelSocket) -> None:
        super().__init__(sock)
        self._lock = threading.Lock()

    def collect(self) -> list[ReferenceDump]:
        with self._lock:
            return super().collect()


def serve(dataset: Dataset) -> int:
    """Start the baseline server on a free loopback port, in a daemon thread; return the port."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(ReferenceCollector(LockedSource(PrebuiltKernelSocket(dataset))))
    server, _thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    return int(server.server_port)
