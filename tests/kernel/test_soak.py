"""Under load against the real kernel: hundreds of scrapes while ports churn, each one valid
exposition by promtool with no duplicate series; a soak with flat memory and descriptors; and a
clean stop on SIGTERM within a second."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .churn import Churn
from .conftest import HAS_UPCALL_STATS
from .ovsnl import OvsNetlink
from .procs import Exporter, tool
from .promtext import Scrape
from .topology import Topology

CHURN_SCRAPES = 200
SOAK_SCRAPES = 1500
OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"


def get(url: str, accept: str | None = None) -> str:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=60) as response:
        return str(response.read().decode())


def promtool_check(body: str) -> str:
    result = subprocess.run(
        [tool("promtool"), "check", "metrics"], input=body, capture_output=True, text=True, timeout=120
    )
    return "" if result.returncode == 0 else result.stdout + result.stderr


@pytest.mark.skipif(not HAS_UPCALL_STATS, reason="runs on the 6.12 kernel only, to keep CI short")
def test_hundreds_of_scrapes_during_churn_are_all_valid(
    nl: OvsNetlink, topology: Topology, exporter: Exporter, results_dir: Path
) -> None:
    with Churn(topology.datapaths["ovs-b"], "sk", ports=3) as churn:
        # The text format: the one `promtool check metrics` reads (Prometheus itself scrapes
        # OpenMetrics in test_prometheus).
        bodies = [get(exporter.url) for _ in range(CHURN_SCRAPES)]
    assert not churn.errors, churn.errors
    assert churn.rounds > 0
    for body in bodies:
        scrape = Scrape.parse(body)
        assert not scrape.duplicates(), scrape.duplicates()
        assert scrape.value("ovs_up") == 1
    # Every response through promtool (two at a time: the guest has two CPUs).
    with ThreadPoolExecutor(max_workers=2) as pool:
        problems = [p for p in pool.map(promtool_check, bodies) if p]
    assert not problems, problems[:3]
    print(f"churn: {CHURN_SCRAPES} scrapes, {churn.rounds} churn rounds, all valid by promtool")


def proc_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not HAS_UPCALL_STATS, reason="runs on the 6.12 kernel only, to keep CI short")
def test_soak_keeps_memory_and_descriptors_flat(topology: Topology, exporter: Exporter) -> None:
    samples = {}
    for i in range(1, SOAK_SCRAPES + 1):
        get(exporter.url, OPENMETRICS)
        if i in (150, SOAK_SCRAPES):
            samples[i] = (proc_rss_kib(exporter.pid), len(os.listdir(f"/proc/{exporter.pid}/fd")))
    (rss0, fds0), (rss1, fds1) = samples[150], samples[SOAK_SCRAPES]
    print(f"soak: {SOAK_SCRAPES} scrapes; exporter RSS {rss0} -> {rss1} KiB, fds {fds0} -> {fds1}")
    assert fds1 <= fds0
    assert rss1 - rss0 < 4096, "RSS grew by more than 4 MiB"


def test_sigterm_stops_it_cleanly_within_a_second(topology: Topology, results_dir: Path) -> None:
    proc = Exporter(19311, results_dir, name="exporter-sigterm")
    get(proc.url)
    started = time.monotonic()
    proc.proc.send_signal(signal.SIGTERM)
    code = proc.proc.wait(timeout=10)
    elapsed = time.monotonic() - started
    print(f"sigterm: exited {code} after {elapsed:.3f}s")
    assert code == 0
    assert elapsed < 1.0
