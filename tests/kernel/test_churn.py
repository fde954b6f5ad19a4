"""Ports and datapaths added and removed between and during scrapes."""

from __future__ import annotations

import time

from .churn import Churn
from .conftest import consistent
from .ovsnl import VPORT_INTERNAL, VPORT_VXLAN, OvsNetlink
from .procs import Exporter
from .promtext import Scrape, diff, expected_series
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


def test_churn_during_scrapes_never_duplicates_or_fails(
    nl: OvsNetlink, topology: Topology, exporter: Exporter
) -> None:
    """Vports and a datapath come and go while the exporter dumps (the dump may see a port twice)."""
    scrapes: list[Scrape] = []
    with Churn(topology.datapaths["ovs-b"], "chn", ports=4) as churn:
        deadline = time.monotonic() + 20
        while len(scrapes) < 15 and time.monotonic() < deadline:
            scrapes.append(exporter.scrape())
    assert not churn.errors, churn.errors
    assert churn.rounds > 0, "the churn thread never completed a round"
    for scrape in scrapes:
        assert not scrape.duplicates(), scrape.duplicates()
        assert scrape.value("ovs_up") == 1
        assert {"ovs-a", "ovs-b"} <= datapaths_of(scrape)
        assert {"va0", "vxa", "gna", "grea", "ia1", "ovs-a"} == ports_of(scrape, "ovs-a")
