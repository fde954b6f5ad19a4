"""A soak on loopback: thousands of scrapes through the real server, flat memory and descriptors.
(The same property against a real kernel with ports churning runs in the VM suite.)"""

from __future__ import annotations

import http.client
import os
import threading
from pathlib import Path

from exporter.collector import Collector
from exporter.config import Filters
from exporter.http.server import MetricsServer
from exporter.kernel.dumps import KernelSource
from tests.ovs_messages import FakeDatapath, FakeKernelSocket, FakeVport

SCRAPES = 3000


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_memory_and_fds_stay_flat_over_thousands_of_scrapes() -> None:
    vports = [FakeVport(i, f"tap{i:04d}", ifindex=100 + i, upcall=(i, 0)) for i in range(200)]
    sock = FakeKernelSocket([FakeDatapath("dp0", 3, vports=vports)])
    collector = Collector(KernelSource(lambda: sock), Filters(), "soak")
    server = MetricsServer("127.0.0.1", 0, "/metrics", collector, "soak")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    samples: dict[int, tuple[int, int]] = {}
    try:
        for i in range(1, SCRAPES + 1):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
            response = conn.getresponse()
            response.read()
            conn.close()
            assert response.status == 200
            if i in (300, SCRAPES):
                samples[i] = (rss_kib(), open_fds())
    finally:
        server.shutdown()
        server.server_close()
    (rss_early, fds_early), (rss_late, fds_late) = samples[300], samples[SCRAPES]
    print(f"soak: {SCRAPES} scrapes; RSS {rss_early} -> {rss_late} KiB; fds {fds_early} -> {fds_late}")
    assert fds_late <= fds_early + 2
    assert rss_late - rss_early < 4096, "RSS grew by more than 4 MiB between scrape 300 and the last"
