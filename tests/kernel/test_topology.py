"""Every vport type of a real kernel appears in the exporter's output, with the kernel's labels."""

from __future__ import annotations

from .conftest import HAS_UPCALL_STATS, consistent
from .ovsnl import OvsNetlink
from .procs import Exporter
from .promtext import UPCALL_METRICS, diff, expected_series
from .topology import Topology, ip_link_kinds


def test_every_vport_type_and_datapath_is_served(
    nl: OvsNetlink, topology: Topology, exporter: Exporter
) -> None:
    snap, scrape = consistent(nl, exporter.scrape)

    assert scrape.value("ovs_up") == 1
    assert {"netdev", "internal", "vxlan", "geneve", "gre"} <= scrape.label_values(
        "ovs_vport_info", "vport_type"
    )
    assert set(topology.datapaths) <= scrape.label_values("ovs_datapath_vports", "datapath")
    info = {k: v for k, v in expected_series(snap).items() if k[0] == "ovs_vport_info"}
    got = {k: v for k, v in scrape.series().items() if k[0] == "ovs_vport_info"}
    assert not diff(info, got)


def test_device_kind_is_what_ip_link_says(nl: OvsNetlink, topology: Topology, exporter: Exporter) -> None:
    """The vport types created over netlink are devices of a known kind: an internal port an
    OVS internal device, a geneve vport a geneve device, a vxlan one a vxlan device, the gre one
    the namespace's gretap; a veth a veth. ``ip -d link`` says the same. The internal port moved
    into another namespace has an ifindex of that namespace: no kind."""
    scrape = exporter.scrape()
    info = {dict(lbls)["port"]: dict(lbls) for name, lbls, _ in scrape.samples if name == "ovs_vport_info"}
    shown = ip_link_kinds()
    for port, labels in info.items():
        if port == "ia1":
            assert "device_kind" not in labels and "netnsid" in labels
        else:
            assert labels["device_kind"] == (shown[port] or "none"), (port, labels, shown.get(port))
    pairs = {
        (labels["vport_type"], labels.get("device_kind")) for port, labels in info.items() if port != "ia1"
    }
    assert pairs == {
        ("netdev", "veth"),
        ("internal", "openvswitch"),
        ("vxlan", "vxlan"),
        ("geneve", "geneve"),
        ("gre", "gretap"),
    }


def test_port_moved_to_another_namespace_reports_netnsid(
    nl: OvsNetlink, topology: Topology, exporter: Exporter
) -> None:
    snap, scrape = consistent(nl, exporter.scrape)

    moved = snap.vports["ovs-a"]["ia1"]
    assert moved.netnsid is not None, "the kernel reports no NETNSID for a port in another netns"
    info = [dict(lbls) for name, lbls, _ in scrape.samples if name == "ovs_vport_info"]
    ia1 = next(i for i in info if i["port"] == "ia1")
    assert ia1["netnsid"] == str(moved.netnsid)
    assert all("netnsid" not in i for i in info if i["port"] in ("va0", "vxa", "ovs-a"))


def test_upcall_metrics_follow_kernel_support(nl: OvsNetlink, topology: Topology, exporter: Exporter) -> None:
    snap, scrape = consistent(nl, exporter.scrape)

    names = {name for name, _, _ in scrape.samples}
    reported = any(vp.upcall_success is not None for vps in snap.vports.values() for vp in vps.values())
    assert reported == HAS_UPCALL_STATS
    if HAS_UPCALL_STATS:
        assert set(UPCALL_METRICS) <= names
    else:
        assert not set(UPCALL_METRICS) & names, "upcall metrics served although the kernel has none"
