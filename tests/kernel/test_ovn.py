"""The exporter on a host that a real OVN control plane drives (tests/kernel/ovn.py).

OVN 23.03's ovn-controller programs br-int for three VMs on logical switch sw0, a logical
router, stateful ACLs, a Geneve tunnel to a second (fake) chassis and a localnet port to the
provider bridge br-phys. The tests prove the scenario itself (traffic flows where OVN sends it,
the ACL really drops), independently of the exporter, and what today's exporter serves on it,
looked at only through its HTTP output: the exporter runs as in test_vswitchd (conftest's
``host_exporter``: inside ``ovs-host``, uid 65534, only the db.sock group, reading OVSDB).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import consistent, nothing_runs_after
from .kernel_reads import FAST_READERS, kernel_meters, meters_agree, udp_flows_delivered, zones_agree
from .netns import write_sysctl
from .ovn import (
    ALLOWED_PORT,
    CHASSIS,
    DROPPED_PORT,
    PROVIDER,
    REMOTE,
    REMOTE_ENCAP_IP,
    ROUTER,
    ROUTER_IP,
    ROUTER_PUBLIC_IP,
    UNRESOLVED_IP,
    VM1,
    VM2,
    VM3,
    VMS,
    OvnHost,
    ct_zone,
    ct_zones,
    interfaces,
    nbctl,
    ofctl,
    sbctl,
    send_syns,
    send_udp,
    tcp_connect,
    tcp_segments_received,
    wait_for,
)
from .ovsnl import OvsNetlink
from .procs import Exporter, scrape_until
from .promtext import Scrape, diff, expected_series, identities, zone_infos
from .vswitchd import DATAPATH, GENEVE_VPORT, HOST_NS, appctl, expected_identity, ovsdb_tables, ping, vsctl

#: The Interface external_ids the exporter is told to turn into labels (os-vif writes these).
EXTERNAL_IDS = ("iface-id", "attached-mac", "iface-status", "vm-uuid")


@pytest.fixture(scope="module")
def ovs_host(results_dir: Path, request: pytest.FixtureRequest) -> Iterator[OvnHost]:
    """The OVN host that conftest's ``host_nl`` and ``host_exporter`` look at."""
    host = OvnHost(results_dir)
    try:
        host.start()
        line = f"ovn setup (guest seconds): {host.timings}"
        print(line)
        with (results_dir / "ovn-setup.txt").open("a", encoding="utf-8") as out:
            out.write(line + "\n")
        yield host
    finally:
        # Last in the session (a `-k ovn` run), the guest's power-off does it.
        if not nothing_runs_after(request):
            host.stop()


@pytest.fixture(scope="module")
def host_exporter_args() -> tuple[str, ...]:
    return ("--collector.ovsdb", "--collector.ovsdb.external-ids", ",".join(EXTERNAL_IDS), *FAST_READERS)


def grown(before: Scrape, after: Scrape, metric: str, port: str) -> float:
    labels = {"datapath": DATAPATH, "port": port}
    was, now = before.value(metric, **labels), after.value(metric, **labels)
    assert was is not None and now is not None, f"{metric} of {port} not served"
    return now - was


def rx(before: Scrape, after: Scrape, port: str) -> float:
    return grown(before, after, "ovs_vport_receive_packets_total", port)


def tx(before: Scrape, after: Scrape, port: str) -> float:
    return grown(before, after, "ovs_vport_transmit_packets_total", port)


# --- the scenario itself, without the exporter --------------------------------------------------


def test_ovn_bound_every_port_where_it_belongs(ovs_host: OvnHost, host_nl: OvsNetlink) -> None:
    # SB: the VMs are claimed by this chassis, REMOTE by the fake one.
    bindings = {
        row["logical_port"]: row["chassis"]
        for row in _sb_rows("Port_Binding", "logical_port,chassis")
        if row["chassis"]
    }
    chassis = {row["_uuid"]: row["name"] for row in _sb_rows("Chassis", "_uuid,name")}
    assert {lport: chassis[uuid] for lport, uuid in bindings.items()} == {
        **{vm.iface_id: CHASSIS for vm in VMS},
        REMOTE.lport: REMOTE.chassis,
    }
    # br-int: one tunnel Interface, to the fake chassis; each VM's port installed.
    (tunnel,) = interfaces(type="geneve")
    assert tunnel["name"] == ovs_host.tunnel
    assert isinstance(tunnel["options"], dict) and tunnel["options"]["remote_ip"] == REMOTE_ENCAP_IP
    for vm in VMS:
        (row,) = interfaces(name=vm.port)
        assert isinstance(row["external_ids"], dict) and row["external_ids"]["ovn-installed"] == "true"
    # A conntrack zone of its own for each VM's logical port.
    zones = ct_zones()
    assert len({zones[vm.iface_id] for vm in VMS}) == len(VMS), zones
    # The kernel: one datapath; per VM a netdev vport, the single Geneve vport for every tunnel,
    # the bridges' internal ports and the uplink. Patch ports exist only in vswitchd.
    snap = host_nl.snapshot()
    assert set(snap.datapaths) == {DATAPATH}
    vports = snap.vports[DATAPATH]
    assert set(vports) == {
        DATAPATH,
        "br-int",
        "br-phys",
        GENEVE_VPORT,
        PROVIDER.port,
        *(vm.port for vm in VMS),
    }
    assert not set(vports) & set(ovs_host.patch_ports)
    assert len(ovs_host.patch_ports) == 2


def _sb_rows(table: str, columns: str) -> list[dict[str, str]]:
    """SB rows as ovn-sbctl prints them (``--data=bare``), one dict per row."""
    out = sbctl("--format=csv", "--data=bare", "--no-headings", f"--columns={columns}", "list", table)
    names = columns.split(",")
    return [dict(zip(names, line.split(","), strict=True)) for line in out.splitlines() if line]


def test_traffic_goes_where_ovn_sends_it(ovs_host: OvnHost) -> None:
    ping(VM1, VM2, count=3)  # switched on sw0
    ping(VM2, ROUTER_IP, count=2)  # lr0 answers for its own address
    # Routed through lr0 to the provider network, out through the localnet port, the patch
    # ports and br-phys's uplink, and back.
    ping(PROVIDER, ROUTER_PUBLIC_IP, count=2)
    ping(PROVIDER, VM3, count=3)
    ping(VM1, PROVIDER, count=3)


def test_acl_drops_tcp_to_one_port_only(ovs_host: OvnHost) -> None:
    listener = ovs_host.listener
    assert listener is not None
    # VM3 listens on both ports: its own stack accepts on the dropped one.
    assert tcp_connect(VM3, "127.0.0.1", DROPPED_PORT) == "connected"
    _wait_for(lambda: listener.accepted[DROPPED_PORT] >= 1)
    accepted = dict(listener.accepted)
    assert tcp_connect(VM1, VM3.ip, ALLOWED_PORT) == "connected"
    assert tcp_connect(VM2, VM3.ip, ALLOWED_PORT) == "connected"
    # Dropped by the ACL: no RST, no answer at all (refused would mean the SYN got through).
    assert tcp_connect(VM1, VM3.ip, DROPPED_PORT, timeout=1.5) == "timeout"
    assert tcp_connect(VM2, VM3.ip, DROPPED_PORT, timeout=1.5) == "timeout"
    _wait_for(lambda: listener.accepted[ALLOWED_PORT] == accepted[ALLOWED_PORT] + 2)
    assert listener.accepted[DROPPED_PORT] == accepted[DROPPED_PORT]

    # Counted at VM3's own TCP stack: each SYN to the allowed port arrives and its SYN-ACK is
    # answered by a RST that arrives too; none to the dropped port arrives.
    n = 7
    before = tcp_segments_received(VM3)
    assert send_syns(VM1, VM3.ip, ALLOWED_PORT, n) == n
    _wait_for(lambda: tcp_segments_received(VM3) - before >= 2 * n)
    time.sleep(0.5)
    assert tcp_segments_received(VM3) - before == 2 * n
    before = tcp_segments_received(VM3)
    assert send_syns(VM1, VM3.ip, DROPPED_PORT, n) == n
    time.sleep(1.0)
    assert tcp_segments_received(VM3) == before


def _wait_for(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


# --- what the exporter serves on it -------------------------------------------------------------


def test_every_port_is_served_with_ovsdbs_identity(host_nl: OvsNetlink, host_exporter: Exporter) -> None:
    want = expected_identity(ovsdb_tables(), EXTERNAL_IDS)
    scrape_until(host_exporter, lambda s: identities(s) == want, "with OVSDB's identities")
    snap, scrape = consistent(host_nl, host_exporter.scrape)
    assert scrape.value("ovs_up") == 1
    assert scrape.value("ovs_scrape_collector_success", collector="ovsdb") == 1
    assert not scrape.duplicates()
    # Every kernel vport with every counter, exactly as the kernel dump says.
    assert not diff(expected_series(snap), scrape.only())
    vports = {dict(lbls)["port"]: dict(lbls) for name, lbls, _ in scrape.samples if name == "ovs_vport_info"}
    assert set(vports) == set(snap.vports[DATAPATH])
    assert identities(scrape) == want
    by_port = {dict(lbls)["port"]: dict(lbls) for lbls in identities(scrape)}
    for vm in VMS:
        assert vports[vm.port]["vport_type"] == "netdev"
        # The logical switch port: what OVN, Neutron and the dashboards know the VM's port by.
        assert by_port[vm.port] == {
            "datapath": DATAPATH,
            "port": vm.port,
            "bridge": "br-int",
            "ofport": by_port[vm.port]["ofport"],
            "interface_type": "system",
            "iface_id": vm.iface_id,
            "attached_mac": vm.mac,
            "iface_status": "active",
            "vm_uuid": vm.external_ids["vm-uuid"],
        }
    # The tunnel Interface ovn-controller made is served under its kernel vport, which vswitchd
    # attached as a plain netdev: no Geneve type, no destination port.
    assert vports[GENEVE_VPORT]["vport_type"] == "netdev" and "dst_port" not in vports[GENEVE_VPORT]
    assert by_port[GENEVE_VPORT]["interface_type"] == "geneve"
    assert by_port[GENEVE_VPORT]["bridge"] == "br-int"
    # Patch ports: identity only, no kernel vport and so no counters.
    patches = {p: by_port[p] for p in by_port if by_port[p]["interface_type"] == "patch"}
    assert {p: labels["bridge"] for p, labels in patches.items()} == {
        "patch-br-int-to-ln-public": "br-int",
        "patch-ln-public-to-br-int": "br-phys",
    }
    assert not set(patches) & set(vports)


def test_pings_between_vms_move_their_ports_counters(host_nl: OvsNetlink, host_exporter: Exporter) -> None:
    n = 20
    ping(VM1, VM2, count=1)  # neighbours resolved before the counted pings
    _, before = consistent(host_nl, host_exporter.scrape)
    ping(VM1, VM2, count=n, size=200)
    _, after = consistent(host_nl, host_exporter.scrape)
    # Receive is what the VM sent into the switch. A stale neighbour entry can add an ARP
    # probe each way (answered by OVN itself, in br-int).
    for port in (VM1.port, VM2.port):
        assert n <= rx(before, after, port) <= n + 1, port
        assert n <= tx(before, after, port) <= n + 1, port
        assert grown(before, after, "ovs_vport_receive_bytes_total", port) >= n * (14 + 20 + 8 + 200)
    for port in (VM3.port, GENEVE_VPORT, PROVIDER.port):
        assert rx(before, after, port) == tx(before, after, port) == 0, port


def test_traffic_to_the_remote_chassis_leaves_through_the_tunnel_vport(
    host_nl: OvsNetlink, host_exporter: Exporter
) -> None:
    n, size = 9, 100
    send_udp(VM1, REMOTE.ip, 1)  # REMOTE's address resolved (OVN answers the ARP)
    _, before = consistent(host_nl, host_exporter.scrape)
    assert send_udp(VM1, REMOTE.ip, n, size=size) == n
    _, after = consistent(host_nl, host_exporter.scrape)
    # VM1's neighbour entry may have gone stale: one ARP probe more (which OVN answers).
    assert n <= rx(before, after, VM1.port) <= n + 1
    assert tx(before, after, GENEVE_VPORT) == n
    # The Geneve device counts each packet from its inner IP header on (iptunnel_xmit_stats):
    # neither the inner Ethernet header nor the outer headers.
    assert grown(before, after, "ovs_vport_transmit_bytes_total", GENEVE_VPORT) == n * (20 + 8 + size)
    for vm in (VM2, VM3):
        assert tx(before, after, vm.port) == 0


def test_dropped_syns_enter_the_switch_and_never_leave_it(
    host_nl: OvsNetlink, host_exporter: Exporter
) -> None:
    n = 10
    send_syns(VM1, VM3.ip, ALLOWED_PORT, 1)  # VM3's address resolved
    _, before = consistent(host_nl, host_exporter.scrape)
    assert send_syns(VM1, VM3.ip, DROPPED_PORT, n) == n
    _, after = consistent(host_nl, host_exporter.scrape)
    # Today's exporter sees the ACL's drops only as packets received and never sent on:
    # the kernel drops them in a flow (no vport drop counter moves).
    assert n <= rx(before, after, VM1.port) <= n + 1  # and perhaps an ARP probe
    assert tx(before, after, VM3.port) == 0
    for port in (VM1.port, VM3.port):
        assert grown(before, after, "ovs_vport_receive_dropped_total", port) == 0
        assert grown(before, after, "ovs_vport_transmit_dropped_total", port) == 0


def test_router_arps_for_an_unresolved_next_hop(host_nl: OvsNetlink, host_exporter: Exporter) -> None:
    n = 3
    _, before = consistent(host_nl, host_exporter.scrape)
    assert send_udp(VM1, UNRESOLVED_IP, n) == n
    _, after = consistent(host_nl, host_exporter.scrape)
    assert n <= rx(before, after, VM1.port) <= n + 1  # and perhaps an ARP probe for lr0
    # lr0 sends ARP requests for it out of the localnet port, through br-phys's uplink.
    assert tx(before, after, PROVIDER.port) >= 1


#: A third chassis, registered in SB only while the test below runs.
EXTRA_CHASSIS = "chassis-3"
EXTRA_ENCAP_IP = "198.18.99.3"


def test_a_chassis_added_and_removed_leaves_the_tunnel_vports_series_as_it_was(
    ovs_host: OvnHost, host_exporter: Exporter
) -> None:
    """ovn-controller makes one tunnel Interface per remote chassis, all on genev_sys_6081: as a
    chassis joins and leaves, the vport's one ovs_interface_info keeps its labels (no ofport, no
    Interface's own), so a join on it never breaks and its series is never replaced."""
    one = {"datapath": DATAPATH, "port": GENEVE_VPORT, "bridge": "br-int", "interface_type": "geneve"}

    def tunnels() -> list[str]:
        return sorted(
            str(i["name"])
            for i in interfaces(type="geneve")
            if isinstance(i["ofport"], int) and i["ofport"] > 0
        )

    def served(marker: str) -> list[dict[str, str]]:
        # PROVIDER's Interface carries a marker (attached-mac, on this module's allow-list; nothing in
        # OVN reads it there): once the exporter shows it, its copy holds every earlier change.
        vsctl("set", "Interface", PROVIDER.port, f'external_ids:"attached-mac"="{marker}"')
        scrape = scrape_until(
            host_exporter,
            lambda s: any(dict(lbls).get("attached_mac") == marker for lbls in identities(s)),
            f"with marker {marker}",
        )
        return [dict(lbls) for lbls in identities(scrape) if dict(lbls)["port"] == GENEVE_VPORT]

    assert tunnels() == [ovs_host.tunnel]
    assert served("one-chassis") == [one]
    sbctl("chassis-add", EXTRA_CHASSIS, "geneve", EXTRA_ENCAP_IP)
    try:
        _wait_for(lambda: len(tunnels()) == 2, timeout=60)
        assert served("two-chassis") == [one]
    finally:
        sbctl("chassis-del", EXTRA_CHASSIS)
    _wait_for(lambda: tunnels() == [ovs_host.tunnel], timeout=60)
    assert served("one-chassis-again") == [one]
    vsctl("remove", "Interface", PROVIDER.port, "external_ids", "attached-mac")


# --- meters and conntrack zone limits on OVN's own objects ------------------------------------

#: OVN's control plane protection for lr0's ARP to unresolved next hops: a meter of RATE packets/s.
COPP_RATE, COPP_BURST = 2, 2


def test_copp_meter_for_arp_drops_what_is_over_its_rate(
    ovs_host: OvnHost, host_nl: OvsNetlink, host_exporter: Exporter
) -> None:
    """OVN's CoPP meter for arp-resolve, made into an OpenFlow meter by ovn-controller and into a
    datapath meter by vswitchd: packets routed to a next hop nobody answers for flood it."""
    dp_ifindex = host_nl.snapshot().datapaths[DATAPATH].ifindex
    before, _ = meters_agree(host_nl, dp_ifindex, host_exporter, DATAPATH)
    nbctl(
        "--", "meter-add", "arp-meter", "drop", str(COPP_RATE), "pktps", str(COPP_BURST),
        "--", "copp-add", "copp0", "arp-resolve", "arp-meter",
        "--", "lr-copp-add", "copp0", ROUTER,
    )  # fmt: skip
    wait_for(
        "ovn-controller's CoPP meter in the datapath",
        lambda: set(kernel_meters(host_nl, dp_ifindex)) > set(before),
    )
    before, scrape = meters_agree(host_nl, dp_ifindex, host_exporter, DATAPATH)
    n = 300
    started = time.monotonic()
    assert send_udp(VM1, UNRESOLVED_IP, n) == n
    elapsed = time.monotonic() - started
    after, scrape = meters_agree(host_nl, dp_ifindex, host_exporter, DATAPATH)
    grown = {i: tuple(a - b for a, b in zip(after[i], before[i], strict=True)) for i in after}
    (copp,) = [i for i, counts in grown.items() if counts[0]]
    packets, _, dropped, _ = grown[copp]
    # Each packet to the unresolved address is one for lr0's ARP: all reached the meter, which let
    # a burst and its rate through to ovn-controller and dropped the rest.
    assert packets == n
    passed = packets - dropped
    assert 1 <= passed <= COPP_BURST + COPP_RATE * (elapsed + 1) + 1, (passed, elapsed)
    assert (
        scrape.value("ovs_datapath_meter_dropped_packets_total", datapath=DATAPATH, meter=str(copp))
        == (after[copp][2])
    )
    # The runbook's way from the datapath meter to OVN's: the OpenFlow meter with the same counters
    # (ovn-controller numbers its own), named in NB's Meter table.
    stats = ofctl("meter-stats", "br-int")
    assert f"packet_in_count:{after[copp][0]} byte_in_count:{after[copp][1]}" in stats, stats
    assert f"packet_count:{after[copp][2]} byte_count:{after[copp][3]}" in stats, stats
    assert "arp-meter" in nbctl("meter-list")


def test_a_limit_on_the_zone_ovn_gave_a_vm_counts_and_refuses_its_connections(
    ovs_host: OvnHost, host_nl: OvsNetlink, host_exporter: Exporter
) -> None:
    """A limit set on VM3's zone (as OVS 3.3's CT_Zone or OVN 24.09's ct-zone-limit would): the
    to-lport ACL commits each new connection to VM3 in that zone, and past the limit the kernel
    refuses it. The exporter's zone info ties the zone to VM3's port and so to its identity."""
    limit, port = 5, 7001
    zone = ct_zone(VM3)
    # Unanswered UDP connections live 30 s by default: long enough for this test to read them here.
    write_sysctl(HOST_NS, {"net.netfilter.nf_conntrack_udp_timeout": "600"})
    appctl("dpctl/ct-set-limits", f"zone={zone},limit={limit}")
    assert udp_flows_delivered(VM1, VM3, limit + 3, port) == limit
    (default, zones), scrape = zones_agree(host_nl, host_exporter)
    assert default == 0 and zones == {zone: (limit, limit)}

    # Every zone ovn-controller recorded on br-int, VM ports with their vports.
    recorded = ct_zones()
    scrape = scrape_until(
        host_exporter, lambda s: set(zone_infos(s)) == {str(z) for z in recorded.values()}, "with OVN's zones"
    )
    infos = zone_infos(scrape)
    for vm in VMS:
        assert infos[str(ct_zone(vm))] == {
            "zone": str(ct_zone(vm)), "bridge": "br-int", "owner": vm.iface_id, "iface_id": vm.iface_id,
            "datapath": DATAPATH, "port": vm.port,
        }  # fmt: skip
    for owner, z in recorded.items():
        assert infos[str(z)]["owner"] == owner
    # The full zone, joined as the dashboards and the alert do: zone -> port -> VM.
    assert scrape.value("ovs_conntrack_zone_connections", zone=str(zone)) == scrape.value(
        "ovs_conntrack_zone_limit", zone=str(zone)
    )
    (vm3,) = [dict(lbls) for lbls in identities(scrape) if dict(lbls)["port"] == infos[str(zone)]["port"]]
    assert vm3["iface_id"] == VM3.iface_id and vm3["vm_uuid"] == VM3.external_ids["vm-uuid"]
