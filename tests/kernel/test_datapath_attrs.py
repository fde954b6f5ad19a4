"""Datapath attributes on a real kernel: upcall dispatch mode, handler PIDs, mask cache size, and
the vxlan Group Based Policy extension."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .conftest import UpcallDatapath, consistent
from .ovsnl import DP_F_DISPATCH_UPCALL_PER_CPU, DP_F_UNALIGNED, OvsNetlink
from .procs import Exporter
from .promtext import diff, expected_series
from .topology import Topology

PER_CPU = DP_F_UNALIGNED | DP_F_DISPATCH_UPCALL_PER_CPU


@pytest.fixture
def per_cpu_datapaths(nl: OvsNetlink) -> Iterator[tuple[int, int]]:
    """ovs-pc: per-CPU dispatch with two handler sockets' PIDs (the guest has 2 CPUs: the kernel lists
    at most one PID per CPU); ovs-p0: per-CPU dispatch and no PID array, as OVS 3.1.0 leaves it."""
    handlers = (OvsNetlink(), OvsNetlink())
    topo = Topology(nl)
    try:
        pids = (handlers[0].portid, handlers[1].portid)
        topo.add_datapath("ovs-pc", per_cpu_pids=pids)
        topo.datapaths["ovs-p0"] = nl.new_datapath("ovs-p0", user_features=PER_CPU)
        yield pids
    finally:
        topo.teardown()
        for sock in handlers:
            sock.close()


def test_dispatch_mode_and_upcall_handlers(
    nl: OvsNetlink, upcall_dp: UpcallDatapath, per_cpu_datapaths: tuple[int, int], exporter: Exporter
) -> None:
    snap, scrape = consistent(nl, exporter.scrape)
    assert snap.datapaths["ovs-pc"].per_cpu_pids == per_cpu_datapaths
    assert snap.datapaths["ovs-p0"].per_cpu_pids is None  # the kernel sends no array until one is set

    assert scrape.value("ovs_datapath_upcall_handlers", datapath="ovs-pc") == 2
    assert scrape.value("ovs_datapath_upcall_handlers", datapath="ovs-p0") == 0
    assert scrape.value("ovs_datapath_upcall_handlers", datapath=upcall_dp.name) is None  # per-vport
    info = {
        dict(lbls)["datapath"]: dict(lbls) for name, lbls, _ in scrape.samples if name == "ovs_datapath_info"
    }
    assert info["ovs-pc"]["upcall_dispatch"] == "per-cpu"
    assert info["ovs-pc"]["user_features"] == "unaligned,dispatch_upcall_per_cpu"
    assert info[upcall_dp.name]["upcall_dispatch"] == "per-vport"
    assert info[upcall_dp.name]["user_features"] == "unaligned"

    # Per-vport dispatch: vu0 and vu1 have a PID (live, dead), vu2 none: its misses are all lost.
    def handlers(port: str) -> float | None:
        return scrape.value("ovs_vport_upcall_handlers", datapath=upcall_dp.name, port=port)

    assert (handlers(upcall_dp.delivered), handlers(upcall_dp.refused), handlers(upcall_dp.unset)) == (
        1,
        1,
        0,
    )
    assert scrape.value("ovs_vport_upcall_handlers", datapath="ovs-pc", port="ovs-pc") is None

    masks_cache = snap.datapaths["ovs-pc"].masks_cache_size
    assert (
        masks_cache is not None
        and scrape.value("ovs_datapath_masks_cache_size", datapath="ovs-pc") == masks_cache
    )
    assert not diff(expected_series(snap), scrape.only())


def test_handler_pids_set_later_are_served(
    nl: OvsNetlink, per_cpu_datapaths: tuple[int, int], exporter: Exporter
) -> None:
    """vswitchd sets the PIDs once its handler threads run (OVS_DP_CMD_SET); one PID for both CPUs."""
    assert exporter.scrape().value("ovs_datapath_upcall_handlers", datapath="ovs-p0") == 0
    nl.set_per_cpu_pids("ovs-p0", (per_cpu_datapaths[0],) * 2, PER_CPU)
    snap, scrape = consistent(nl, exporter.scrape)
    assert snap.datapaths["ovs-p0"].per_cpu_pids == (per_cpu_datapaths[0],) * 2
    assert scrape.value("ovs_datapath_upcall_handlers", datapath="ovs-p0") == 1


def test_vxlan_group_based_policy_extension(nl: OvsNetlink, topology: Topology, exporter: Exporter) -> None:
    snap, scrape = consistent(nl, exporter.scrape)
    assert snap.vports["ovs-b"]["vxgb"].extension == (1,), "the kernel did not keep GBP on vxgb"
    info = {dict(lbls)["port"]: dict(lbls) for name, lbls, _ in scrape.samples if name == "ovs_vport_info"}
    assert info["vxgb"]["extension"] == "gbp"
    assert info["vxgb"]["dst_port"] == "4792"
    assert "extension" not in info["vxb"] and "extension" not in info["vxa"]
