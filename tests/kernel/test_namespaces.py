"""Collecting from another network namespace (--collector.netns) against the real kernel."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .procs import Exporter
from .promtext import fetch
from .test_events import events, scrape_until

NETNS = "ovs-tenant"
MISSING = "ovs-missing"
# Runs inside the namespace (ip netns exec): a datapath with one internal port, made by test code.
MAKE_DATAPATH = """
from tests.kernel.ovsnl import VPORT_INTERNAL, OvsNetlink
with OvsNetlink() as nl:
    ifindex = nl.new_datapath("dp-tenant")
    nl.new_vport(ifindex, "tenant-int", VPORT_INTERNAL)
"""


# Three ports added and one removed in the namespace, by test code.
CHURN_PORTS = """
from tests.kernel.ovsnl import VPORT_INTERNAL, OvsNetlink
with OvsNetlink() as nl:
    ifindex = nl.snapshot().datapaths["dp-tenant"].ifindex
    for name in ("tn0", "tn1", "tn2"):
        nl.new_vport(ifindex, name, VPORT_INTERNAL)
    nl.del_vport("tn0")
"""


def in_netns(*cmd: str) -> None:
    subprocess.run(["ip", "netns", "exec", NETNS, *cmd], check=True, timeout=120)


def test_named_namespace_is_collected_with_a_netns_label(results_dir: Path) -> None:
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    try:
        in_netns(sys.executable, "-c", MAKE_DATAPATH)
        exporter = Exporter(
            19312,
            results_dir,
            name="exporter-netns",
            args=("--collector.netns", NETNS, "--collector.netns", MISSING),
        )
        try:
            scrape = fetch(exporter.url)
            assert scrape.value("ovs_netns_up", netns=NETNS) == 1
            assert scrape.value("ovs_scrape_collector_success", collector="kernel", netns=NETNS) == 1
            assert scrape.value("ovs_datapath_vports", netns=NETNS, datapath="dp-tenant") == 2
            assert (
                scrape.value(
                    "ovs_vport_receive_packets_total", netns=NETNS, datapath="dp-tenant", port="tenant-int"
                )
                is not None
            )
            assert scrape.value("ovs_netns_up", netns=MISSING) == 0
            assert scrape.value("ovs_scrape_collector_success", collector="kernel", netns=MISSING) == 0
            assert not os.path.exists(f"/run/netns/{MISSING}"), "a missing namespace is never created"
            assert scrape.value("ovs_up") == 1, "the host's own datapaths are still served"
            assert not scrape.duplicates()

            # Port events are listened to inside the namespace too.
            assert scrape.value("ovs_scrape_collector_success", collector="events", netns=NETNS) == 1
            in_netns(sys.executable, "-c", CHURN_PORTS)
            want = {"added": 3, "removed": 1, "changed": 0}
            scrape = scrape_until(exporter, lambda s: events(s, "dp-tenant", netns=NETNS) == want)
            assert events(scrape, "dp-tenant", netns=NETNS) == want

            in_netns(
                sys.executable,
                "-c",
                "from tests.kernel.ovsnl import OvsNetlink\nwith OvsNetlink() as nl: nl.del_datapath('dp-tenant')",
            )
            subprocess.run(["ip", "netns", "del", NETNS], check=True)
            scrape = fetch(exporter.url)
            assert scrape.value("ovs_netns_up", netns=NETNS) == 0, "a vanished namespace is reported"
            assert "dp-tenant" not in {dict(k[1]).get("datapath") for k in scrape.series()}
            assert exporter.alive()
        finally:
            exporter.stop()
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
