"""Collecting from another network namespace (--collector.netns) against the real kernel."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .procs import Exporter
from .promtext import fetch

NETNS = "ovs-tenant"
MISSING = "ovs-missing"
# Runs inside the namespace (ip netns exec): a datapath with one internal port, made by test code.
MAKE_DATAPATH = """
from tests.kernel.ovsnl import VPORT_INTERNAL, OvsNetlink
with OvsNetlink() as nl:
    ifindex = nl.new_datapath("dp-tenant")
    nl.new_vport(ifindex, "tenant-int", VPORT_INTERNAL)
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
