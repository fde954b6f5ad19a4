"""Traffic moves the counters, and every counter equals the kernel's at the same moment."""

from __future__ import annotations

from .conftest import consistent
from .ovsnl import OvsNetlink
from .procs import Exporter
from .promtext import Scrape, diff, expected_series
from .topology import PING_OVERHEAD, STANDARD, DpctlDatapath, Topology, dpctl_diff, dpctl_show, ping

A, B = STANDARD


def test_ping_moves_port_and_datapath_counters(
    nl: OvsNetlink, topology: Topology, exporter: Exporter
) -> None:
    _, before = consistent(nl, exporter.scrape)
    ping(A, count=10, size=200)
    _, after = consistent(nl, exporter.scrape)

    def grew(metric: str, **labels: str) -> float:
        return (after.value(metric, **labels) or 0) - (before.value(metric, **labels) or 0)

    # Echo requests enter the datapath on the veth and leave through the local port; replies back.
    assert grew("ovs_vport_receive_packets_total", datapath="ovs-a", port="va0") >= 10
    assert grew("ovs_vport_receive_bytes_total", datapath="ovs-a", port="va0") >= 10 * (200 + PING_OVERHEAD)
    assert grew("ovs_vport_transmit_packets_total", datapath="ovs-a", port="va0") >= 10
    assert grew("ovs_vport_transmit_packets_total", datapath="ovs-a", port="ovs-a") >= 10
    assert grew("ovs_datapath_lookup_hits_total", datapath="ovs-a") >= 20
    # The other datapath saw none of it (at most a stray neighbour probe of its own).
    assert grew("ovs_vport_receive_packets_total", datapath="ovs-b", port="vb0") <= 2


def test_every_counter_equals_kernel_dump_and_ovs_dpctl(
    nl: OvsNetlink, topology: Topology, exporter: Exporter
) -> None:
    ping(A, count=5, size=500)
    ping(B, count=7, size=100)

    def read() -> tuple[list[DpctlDatapath], Scrape]:
        return [dpctl_show(spec.name) for spec in STANDARD], exporter.scrape()

    snap, (dpctl, scrape) = consistent(nl, read)

    assert scrape.value("ovs_up") == 1
    assert not scrape.duplicates()
    assert not diff(expected_series(snap), scrape.only())
    for dp in dpctl:
        assert set(dp.ports) == set(snap.vports[dp.name]), "ovs-dpctl and the kernel dump list other ports"
        assert not dpctl_diff(dp, scrape)
    assert scrape.value("ovs_vport_transmit_bytes_total", datapath="ovs-a", port="va0")
