"""Ports and datapaths added and removed between and during scrapes."""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from .churn import Churn
from .conftest import consistent
from .ovsnl import VPORT_INTERNAL, VPORT_VXLAN, OvsNetlink
from .procs import Exporter, tool
from .promtext import Scrape, diff, expected_series, fetch_text
from .topology import Topology


def ports_of(scrape: Scrape, datapath: str) -> set[str]:
    return {
        dict(lbls)["port"]
        for name, lbls, _ in scrape.samples
        if name.startswith("ovs_vport_") and dict(lbls).get("datapath") == datapath
    }


def datapaths_of(scrape: Scrape) -> set[str]:
    return {dict(lbls)["datapath"] for name, lbls, _ in scrape.samples if "datapath" in dict(lbls)}


def test_ports_and_datapaths_appear_and_vanish(
    nl: OvsNetlink, topology: Topology, exporter: Exporter
) -> None:
    extra = Topology(nl)
    try:
        ifindex = extra.add_datapath("ovs-c")
        extra.add_veth("ovs-c", "vc0")
        nl.new_vport(ifindex, "ic1", VPORT_INTERNAL)
        snap, scrape = consistent(nl, exporter.scrape)
        assert scrape.value("ovs_up") == 1
        assert ports_of(scrape, "ovs-c") == {"ovs-c", "vc0", "ic1"}
        assert not diff(expected_series(snap), scrape.only())

        nl.del_vport("ic1")
        nl.new_vport(ifindex, "vxc", VPORT_VXLAN, dst_port=4791)
        scrape = exporter.scrape()
        assert ports_of(scrape, "ovs-c") == {"ovs-c", "vc0", "vxc"}
        assert scrape.value("ovs_datapath_vports", datapath="ovs-c") == 3

        extra.remove_datapath("ovs-c")
        scrape = exporter.scrape()
        assert scrape.value("ovs_up") == 1
        assert "ovs-c" not in datapaths_of(scrape)
        assert set(topology.datapaths) <= datapaths_of(scrape)
        assert not scrape.duplicates()
    finally:
        extra.teardown()


def promtool_check(body: str) -> str:
    result = subprocess.run(
        [tool("promtool"), "check", "metrics"], input=body, capture_output=True, text=True, timeout=120
    )
    return "" if result.returncode == 0 else result.stdout + result.stderr


#: Scrapes taken while ports churn: enough for the dumps to overlap many churn rounds (each
#: round adds and removes every churned port), few enough to keep the TCG suite short.
CHURN_SCRAPES = 30


def test_churn_during_scrapes_never_duplicates_or_fails(
    nl: OvsNetlink, topology: Topology, exporter: Exporter
) -> None:
    """Vports and a datapath come and go while the exporter dumps (the dump may see a port
    twice): every body is valid exposition by promtool, with no duplicate series."""
    bodies: list[str] = []
    with Churn(topology.datapaths["ovs-b"], "chn", ports=4) as churn:
        deadline = time.monotonic() + 60
        while len(bodies) < CHURN_SCRAPES and time.monotonic() < deadline:
            # The text format: the one `promtool check metrics` reads (Prometheus itself scrapes
            # OpenMetrics in test_prometheus).
            bodies.append(fetch_text(exporter.url))
    assert not churn.errors, churn.errors
    assert churn.rounds > 0, "the churn thread never completed a round"
    assert len(bodies) >= 15, f"only {len(bodies)} scrapes in 60 s"
    for body in bodies:
        scrape = Scrape.parse(body)
        assert not scrape.duplicates(), scrape.duplicates()
        assert scrape.value("ovs_up") == 1
        assert {"ovs-a", "ovs-b"} <= datapaths_of(scrape)
        assert {"va0", "vxa", "gna", "grea", "ia1", "ovs-a"} == ports_of(scrape, "ovs-a")
    # Every response through promtool, two at a time (the guest has two CPUs).
    with ThreadPoolExecutor(max_workers=2) as pool:
        problems = [p for p in pool.map(promtool_check, bodies) if p]
    assert not problems, problems[:3]
    print(f"churn: {len(bodies)} scrapes, {churn.rounds} churn rounds, all valid by promtool")
