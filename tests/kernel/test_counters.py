"""Traffic moves the counters, the way each kind of port points, and every counter equals the
kernel's at the same moment."""

from __future__ import annotations

from .conftest import consistent
from .netns import in_netns
from .ovsnl import OvsNetlink
from .procs import Exporter
from .promtext import Scrape, diff, expected_series
from .topology import (
    ETH_HLEN,
    ETH_P_ALL,
    EXPERIMENTAL_ETHERTYPE,
    FRAME_HEADER,
    PING_OVERHEAD,
    STANDARD,
    DpctlDatapath,
    FrameTap,
    Topology,
    dpctl_diff,
    dpctl_show,
    ethertype,
    ping,
    send_frames,
)

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


#: Attempts at a window in which no frame but the test's own crosses the two ports.
QUIET_ATTEMPTS = 3


def test_which_way_the_counters_point_on_a_veth_and_an_internal_port(
    nl: OvsNetlink, topology: Topology, exporter: Exporter
) -> None:
    """A vport counts as its device does (net/openvswitch/vport.c ``ovs_vport_get_stats``).

    The pod side of a veth (the peer in the namespace) sends into the switch: the host end,
    the vport, counts it as *receive* (drivers/net/veth.c adds the peer's transmit to its
    receive). The host sends into the switch through the datapath's own internal port: that
    vport counts it as *transmit* (net/openvswitch/vport-internal_dev.c ``internal_dev_xmit``).
    The flows of the standard topology forward each port's frames to the other, so each
    port's other counter shows what the switch delivered to its side. Distinct counts and
    sizes each way tell the four movements apart.
    """
    from_pod, pod_payload = 13, 100
    from_host, host_payload = 7, 200
    pod_frame, host_frame = FRAME_HEADER + pod_payload, FRAME_HEADER + host_payload
    veth, internal = A.veth, A.name  # port 1 and port 0 of ovs-a
    strays: list[list[str]] = []
    for _ in range(QUIET_ATTEMPTS):
        # Each side's own socket, taking what the switch delivers to it; and every frame either
        # port receives or sends, to see that nothing else crossed while the counts were made.
        with in_netns(A.netns):
            pod_side = FrameTap(A.peer)
        host_side = FrameTap(internal)
        watches = [FrameTap(veth, ETH_P_ALL), FrameTap(internal, ETH_P_ALL)]
        try:
            _, before = consistent(nl, exporter.scrape)
            with in_netns(A.netns):
                send_frames(A.peer, from_pod, payload_len=pod_payload)
            send_frames(internal, from_host, payload_len=host_payload)
            _, after = consistent(nl, exporter.scrape)
            delivered_to_pod, delivered_to_host = len(pod_side.take()), len(host_side.take())
            stray = [
                f"{len(frame)} bytes: {frame[:64].hex()}"
                for watch in watches
                for frame in watch.take()
                if ethertype(frame) != EXPERIMENTAL_ETHERTYPE
            ]
        finally:
            for tap in (pod_side, host_side, *watches):
                tap.close()
        if not stray:
            break
        strays.append(stray)
    else:
        raise AssertionError(f"other frames crossed {veth} or {internal} in every attempt: {strays}")

    def moved(port: str, metric: str) -> float:
        now = after.value(f"ovs_vport_{metric}_total", datapath=A.name, port=port)
        then = before.value(f"ovs_vport_{metric}_total", datapath=A.name, port=port)
        assert now is not None and then is not None, f"ovs_vport_{metric}_total missing for {port}"
        return now - then

    # What each side's own socket received: the switch forwarded every frame, each way.
    assert (delivered_to_pod, delivered_to_host) == (from_host, from_pod)
    # The veth's host end: receive is what the pod sent into the switch, transmit what the
    # switch delivered to the pod.
    assert moved(veth, "receive_packets") == from_pod
    assert moved(veth, "receive_bytes") == from_pod * pod_frame
    assert moved(veth, "transmit_packets") == from_host
    assert moved(veth, "transmit_bytes") == from_host * host_frame
    # The internal port, the other way round: transmit is what the host sent into the switch,
    # receive what the switch delivered to the host, counted once eth_type_trans has taken the
    # Ethernet header off (internal_dev_recv).
    assert moved(internal, "transmit_packets") == from_host
    assert moved(internal, "transmit_bytes") == from_host * host_frame
    assert moved(internal, "receive_packets") == from_pod
    assert moved(internal, "receive_bytes") == from_pod * (pod_frame - ETH_HLEN)
    for port in (veth, internal):
        for metric in ("receive_errors", "transmit_errors", "receive_dropped", "transmit_dropped"):
            assert moved(port, metric) == 0, f"{port} {metric}"
    # Every frame matched one of the two flows.
    assert after.value("ovs_datapath_lookup_hits_total", datapath=A.name) == (
        (before.value("ovs_datapath_lookup_hits_total", datapath=A.name) or 0) + from_pod + from_host
    )
