"""The whole exporter on a datapath that the real ovs-vswitchd manages.

vswitchd (Debian's 3.1) owns ``ovs-system`` for bridges ``br-int`` and ``br-ex`` inside namespace
``ovs-host`` (see tests/kernel/vswitchd.py). Traffic between the guests goes through br-int with
the NORMAL action: vswitchd handles the upcalls of the first packets and installs kernel flows.
The exporter runs there as uid 65534, no capabilities, whose only extra right is the group that
may open db.sock, and reads OVSDB (--collector.ovsdb): its ``ovs_interface_info`` must say what
OVSDB (read again here with ovs-vsctl) holds, follow changes, and survive ovsdb-server dying.
A real Prometheus then runs every dashboard and alert query over it, the joins included.
"""

from __future__ import annotations

import errno
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from exporter.ovsdb.identity import DEFAULT_EXTERNAL_IDS
from tests import promql_inventory

from .conftest import HAS_UPCALL_STATS, NOBODY, consistent
from .kernel_reads import UdpReceiver, flood_udp, meters_agree, udp_flows_delivered, zones_agree
from .netns import write_sysctl
from .ovsnl import OvsNetlink
from .procs import Exporter, Prometheus, rules_and_scrapes, scrape_until
from .promtext import Scrape, broken_interfaces, diff, expected_series, identities, zone_infos
from .topology import DpctlDatapath, dpctl_diff, ip_batch, ip_link_kinds, sh
from .vswitchd import (
    DATAPATH,
    DB_GROUP,
    DB_SOCK,
    GENEVE_VPORT,
    GUESTS,
    HOST_NS,
    MGMT_NS_IP,
    PATCH_PORTS,
    RUNDIR,
    SUBNET,
    Guest,
    OvsHost,
    appctl,
    background_misses,
    background_ping,
    expected_broken,
    expected_identity,
    expected_system,
    ovsdb_tables,
    ping,
    vsctl,
    vswitchd_dpctl_show,
)

NOVA, OVNK, KUBEOVN, EXT = GUESTS


@pytest.fixture(scope="module")
def ovs_host(results_dir: Path) -> Iterator[OvsHost]:
    """The host that conftest's ``host_nl`` and ``host_exporter`` look at."""
    host = OvsHost(results_dir)
    try:
        host.start()
        yield host
    finally:
        host.stop()


def test_exporter_is_nobody_with_only_the_db_group(host_exporter: Exporter) -> None:
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{host_exporter.pid}/status").read_text().splitlines()
    )
    assert status["Uid"].split() == [str(NOBODY)] * 4
    assert status["Gid"].split() == [str(NOBODY)] * 4
    assert status["Groups"].split() == [str(DB_GROUP)]
    for caps in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(status[caps], 16) == 0, f"{caps} = {status[caps]}"


def test_vswitchd_datapath_and_ports_are_served(host_nl: OvsNetlink, host_exporter: Exporter) -> None:
    snap = host_nl.snapshot()
    assert set(snap.datapaths) == {DATAPATH}, "vswitchd's namespace holds its datapath only"
    kernel_ports = set(snap.vports[DATAPATH])
    # One internal port per bridge and the datapath's own; patch ports have no kernel vport.
    assert kernel_ports == {DATAPATH, "br-int", "br-ex", GENEVE_VPORT, *(g.port for g in GUESTS)}
    assert not kernel_ports & set(PATCH_PORTS)
    scrape = host_exporter.scrape()
    assert scrape.value("ovs_up") == 1
    assert scrape.label_values("ovs_vport_info", "port") == kernel_ports
    # vswitchd creates the tunnel device over rtnetlink and attaches it as a netdev vport: the
    # kernel reports no Geneve type and no destination port for it.
    tunnel = snap.vports[DATAPATH][GENEVE_VPORT]
    assert tunnel.type_name == "netdev" and tunnel.dst_port is None
    info = {
        "datapath": DATAPATH,
        "port": GENEVE_VPORT,
        "port_no": str(tunnel.port_no),
        "vport_type": "netdev",
        # What the device is, though, rtnetlink says.
        "device_kind": "geneve",
    }
    if tunnel.ifindex is not None:
        info["ifindex"] = str(tunnel.ifindex)
    assert scrape.value("ovs_vport_info", **info) == 1


def test_vswitchd_handles_upcalls_and_installs_flows(host_nl: OvsNetlink, host_exporter: Exporter) -> None:
    _, before = consistent(host_nl, host_exporter.scrape)
    ping(NOVA, OVNK, count=10)
    ping(KUBEOVN, EXT, count=5)  # br-int -> patch ports -> br-ex
    _, after = consistent(host_nl, host_exporter.scrape)

    def grew(metric: str, **labels: str) -> float:
        return (after.value(metric, **labels) or 0) - (before.value(metric, **labels) or 0)

    dp = {"datapath": DATAPATH}
    # The first packets of each flow miss and go up to vswitchd; the rest hit the flows it
    # installed. Nothing is lost: vswitchd's handler threads take every upcall.
    assert grew("ovs_datapath_lookup_misses_total", **dp) >= 2
    assert grew("ovs_datapath_lookup_hits_total", **dp) >= 20
    assert grew("ovs_datapath_lookup_lost_total", **dp) == 0
    assert (after.value("ovs_datapath_flows", **dp) or 0) >= 2
    assert (after.value("ovs_datapath_masks", **dp) or 0) >= 1
    for g in (NOVA, OVNK, KUBEOVN, EXT):
        port = {"datapath": DATAPATH, "port": g.port}
        assert grew("ovs_vport_receive_packets_total", **port) >= 5, g.port
        assert grew("ovs_vport_transmit_packets_total", **port) >= 5, g.port
    if HAS_UPCALL_STATS:
        # Per-vport upcall counters (6.2+): the first packets in from each guest went up.
        for g in (NOVA, OVNK, KUBEOVN):
            port = {"datapath": DATAPATH, "port": g.port}
            assert grew("ovs_vport_upcalls_total", **port) >= 1, g.port
            assert grew("ovs_vport_upcall_failures_total", **port) == 0, g.port
    else:
        assert not after.label_values("ovs_vport_upcalls_total", "port")


def test_every_counter_equals_kernel_dump_and_vswitchd_view(
    host_nl: OvsNetlink, host_exporter: Exporter
) -> None:
    ping(OVNK, KUBEOVN, count=4, size=300)
    ping(NOVA, EXT, count=3, size=700)

    def read() -> tuple[DpctlDatapath, Scrape]:
        return vswitchd_dpctl_show(), host_exporter.scrape()

    snap, (shown, scrape) = consistent(host_nl, read)
    assert scrape.value("ovs_up") == 1
    assert not scrape.duplicates()
    assert not diff(expected_series(snap), scrape.only())
    assert set(shown.ports) == set(snap.vports[DATAPATH]), "vswitchd and the kernel list other ports"
    assert set(shown.counters) == {"hits", "misses", "lost", "flows", "mask_hits", "masks", "mask_cache_hits"}
    assert not dpctl_diff(shown, scrape)
    assert scrape.value("ovs_vport_receive_bytes_total", datapath=DATAPATH, port=OVNK.port)


def test_dispatch_mode_and_handlers_equal_vswitchds(ovs_host: OvsHost, host_exporter: Exporter) -> None:
    """The exporter's upcall dispatch view equals vswitchd's own: ``ovs-appctl dpif-netlink/dispatch-mode``
    and its handler threads (one netlink socket each)."""
    said = appctl("dpif-netlink/dispatch-mode")
    mode = re.search(r"(per-cpu|per-vport) dispatch mode", said)
    assert mode, f"unexpected dpif-netlink/dispatch-mode output: {said!r}"
    pid = int((RUNDIR / "ovs-vswitchd.pid").read_text())
    handlers = [
        t for t in Path(f"/proc/{pid}/task").iterdir() if (t / "comm").read_text().startswith("handler")
    ]
    assert handlers, "vswitchd runs no handler thread"
    scrape = host_exporter.scrape()
    (info,) = [dict(lbls) for name, lbls, _ in scrape.samples if name == "ovs_datapath_info"]
    assert info["datapath"] == DATAPATH
    assert info["upcall_dispatch"] == mode[1]
    if mode[1] == "per-cpu":
        assert scrape.value("ovs_datapath_upcall_handlers", datapath=DATAPATH) == len(handlers)
    else:
        served = scrape.label_values("ovs_vport_upcall_handlers", "port")
        assert served and all(
            scrape.value("ovs_vport_upcall_handlers", datapath=DATAPATH, port=p) == len(handlers)
            for p in served
        )


# --- identity from OVSDB ------------------------------------------------------------------------

#: external_ids keys that are not on the default allow-list: they must never become labels.
UNLISTED_KEYS = ("sandbox", "ip_addresses", "vendor", "ip", "pod_netns")


def ovsdb_health(scrape: Scrape) -> float | None:
    return scrape.value("ovs_scrape_collector_success", collector="ovsdb")


def test_only_the_db_group_may_open_db_sock(ovs_host: OvsHost, host_exporter: Exporter) -> None:
    # The permission model the exporter relies on: connect() needs write permission on the socket.
    connect = f"import socket; socket.socket(socket.AF_UNIX).connect({str(DB_SOCK)!r})"

    def as_nobody(groups: list[int]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-S", "-c", connect],
            user=NOBODY, group=NOBODY, extra_groups=groups, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    refused = as_nobody([])
    assert refused.returncode != 0 and "PermissionError" in refused.stderr, refused.stderr
    allowed = as_nobody([DB_GROUP])
    assert allowed.returncode == 0, allowed.stderr


def test_identity_labels_equal_what_ovsdb_holds(host_nl: OvsNetlink, host_exporter: Exporter) -> None:
    tables = ovsdb_tables()
    want = expected_identity(tables, DEFAULT_EXTERNAL_IDS)
    scrape = scrape_until(host_exporter, lambda s: identities(s) == want, "with OVSDB's identities")
    assert ovsdb_health(scrape) == 1
    assert scrape.value("ovs_scrape_collector_success", collector="kernel") == 1
    assert scrape.value("ovs_system_info", **dict(expected_system(tables))) == 1

    by_port = {dict(lbls)["port"]: dict(lbls) for lbls in identities(scrape)}
    for g in GUESTS:
        labels = by_port[g.port]
        assert labels["bridge"] == g.bridge
        for key, value in g.external_ids.items():
            label = key.replace("-", "_")
            if key in UNLISTED_KEYS:
                assert label not in labels, f"{g.port}: {key} is not on the allow-list"
            else:
                assert labels[label] == value, (g.port, key)
        # The join key is exactly the counters' one.
        assert scrape.value("ovs_vport_receive_packets_total", datapath=DATAPATH, port=g.port) is not None
    assert by_port[GENEVE_VPORT]["interface_type"] == "geneve"
    assert by_port["br-int"]["interface_type"] == "internal"
    # Patch ports live in userspace: identity, no kernel counters. The datapath's own port: the reverse.
    for patch in PATCH_PORTS:
        assert by_port[patch]["interface_type"] == "patch"
        assert scrape.value("ovs_vport_receive_packets_total", datapath=DATAPATH, port=patch) is None
    assert DATAPATH not in by_port
    kernel = set(host_nl.snapshot().vports[DATAPATH])
    assert kernel - set(by_port) == {DATAPATH}
    assert not scrape.duplicates()


NEWCOMER = Guest(
    "vm-new", "tap77aa88bb-cc", "br-int", f"{SUBNET}.21", "fa:16:3e:77:88:99",
    {"iface-id": "77aa88bb-cc11-4d22-8e33-f44556677889", "iface-status": "active",
     "attached-mac": "fa:16:3e:77:88:99", "vm-uuid": "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"},
)  # fmt: skip


def test_ports_added_removed_and_relabelled_show_up_in_the_next_scrapes(
    ovs_host: OvsHost, host_exporter: Exporter
) -> None:
    ovs_host.add_guest(NEWCOMER)
    # A live migration's last step: Nova flips the old port inactive (os-vif's iface-status).
    vsctl("set", "Interface", NOVA.port, 'external_ids:"iface-status"="inactive"')
    want = expected_identity(ovsdb_tables(), DEFAULT_EXTERNAL_IDS)
    new_port = {"datapath": DATAPATH, "port": NEWCOMER.port}

    def added(s: Scrape) -> bool:
        return identities(s) == want and s.value("ovs_vport_receive_packets_total", **new_port) is not None

    scrape = scrape_until(host_exporter, added, "with the new port and the changed external_ids")
    by_port = {dict(lbls)["port"]: dict(lbls) for lbls in identities(scrape)}
    assert by_port[NEWCOMER.port]["vm_uuid"] == NEWCOMER.external_ids["vm-uuid"]
    assert by_port[NOVA.port]["iface_status"] == "inactive"
    ping(NEWCOMER, OVNK, count=3)

    ovs_host.remove_guest(NEWCOMER)
    want = expected_identity(ovsdb_tables(), DEFAULT_EXTERNAL_IDS)

    def removed(s: Scrape) -> bool:
        return identities(s) == want and s.value("ovs_vport_receive_packets_total", **new_port) is None

    scrape = scrape_until(host_exporter, removed, "without the deleted port")
    assert NEWCOMER.port not in {dict(lbls)["port"] for lbls in identities(scrape)}
    assert not scrape.duplicates()


def test_ovsdb_server_killed_and_restarted(
    ovs_host: OvsHost, host_nl: OvsNetlink, host_exporter: Exporter
) -> None:
    want = expected_identity(ovsdb_tables(), DEFAULT_EXTERNAL_IDS)
    scrape = scrape_until(host_exporter, lambda s: identities(s) == want, "with identities before the kill")
    assert ovsdb_health(scrape) == 1

    ovs_host.kill_ovsdb()
    try:
        # Nothing stale: the identity goes as soon as the reader sees the connection die.
        scrape = scrape_until(
            host_exporter,
            lambda s: not identities(s) and ovsdb_health(s) == 0,
            "without identity once OVSDB died",
        )
        assert scrape.value("ovs_system_info") is None
        # The kernel metrics are served unchanged all along, and vswitchd keeps forwarding.
        ping(NOVA, OVNK, count=5)
        snap, during = consistent(host_nl, host_exporter.scrape)
        assert during.value("ovs_up") == 1
        assert during.value("ovs_scrape_collector_success", collector="kernel") == 1
        assert ovsdb_health(during) == 0 and not identities(during)
        assert not diff(expected_series(snap), during.only())
    finally:
        ovs_host.start_ovsdb()

    scrape = scrape_until(
        host_exporter,
        lambda s: identities(s) == want and ovsdb_health(s) == 1,
        "with identities after the restart",
    )
    snap, after = consistent(host_nl, host_exporter.scrape)
    assert not diff(expected_series(snap), after.only())
    assert ovsdb_health(after) == 1 and identities(after) == want
    assert "ovsdb" in host_exporter.log.read_text()


# --- what each port is, a shared tunnel vport, a port vswitchd cannot open ------------------------

#: More ports, one of each kind the guests are not: a VM's tap (tun), a dummy device standing for a
#: physical NIC (the guest has none), and a VXLAN tunnel, whose device vswitchd creates.
TAP = "tapk1a2b3c4-d5"
DUMMY = "dummy-nic0"
VXLAN = "vx0"
VXLAN_VPORT = "vxlan_sys_4789"


def test_device_kind_of_every_port_is_what_ip_link_says(
    ovs_host: OvsHost, host_nl: OvsNetlink, host_exporter: Exporter
) -> None:
    """vswitchd attaches every port as a netdev vport, tunnels included: the kind of device
    behind each (rtnetlink's IFLA_INFO_KIND) is what tells them apart, as ``ip -d link`` does."""
    ip_batch(
        [
            f"tuntap add {TAP} mode tap",
            f"link set {TAP} up",
            f"link add {DUMMY} type dummy",
            f"link set {DUMMY} up",
        ],
        netns=HOST_NS,
    )
    vsctl(
        "--", "add-port", "br-int", TAP, "--", "set", "Interface", TAP, 'external_ids:"iface-id"="k1a2b3c4"',
        "--", "add-port", "br-ex", DUMMY,
        "--", "add-port", "br-int", VXLAN,
        "--", "set", "Interface", VXLAN, "type=vxlan", "options:remote_ip=198.18.99.3", "options:key=flow",
    )  # fmt: skip
    try:
        added = {TAP, DUMMY, VXLAN_VPORT}
        scrape = scrape_until(
            host_exporter,
            lambda s: added <= s.label_values("ovs_vport_info", "port"),
            "with the tap, the dummy and the VXLAN vport",
        )
        info = {
            dict(lbls)["port"]: dict(lbls) for name, lbls, _ in scrape.samples if name == "ovs_vport_info"
        }
        assert set(info) == set(host_nl.snapshot().vports[DATAPATH])
        shown = ip_link_kinds(HOST_NS)
        for port, labels in info.items():
            assert labels["device_kind"] == (shown[port] or "none"), (port, labels, shown.get(port))
        assert {
            port: info[port]["device_kind"]
            for port in (NOVA.port, TAP, GENEVE_VPORT, VXLAN_VPORT, "br-int", DATAPATH, DUMMY)
        } == {
            NOVA.port: "veth",
            TAP: "tun",
            GENEVE_VPORT: "geneve",
            VXLAN_VPORT: "vxlan",
            "br-int": "openvswitch",
            DATAPATH: "openvswitch",
            DUMMY: "dummy",
        }
        assert {
            labels["vport_type"] for port, labels in info.items() if port not in ("br-int", "br-ex", DATAPATH)
        } == {"netdev"}
    finally:
        vsctl("--", "del-port", "br-int", TAP, "--", "del-port", "br-ex", DUMMY,
              "--", "del-port", "br-int", VXLAN)  # fmt: skip
        ip_batch([f"link del {TAP}", f"link del {DUMMY}"], netns=HOST_NS)


def marked(exporter: Exporter, marker: str) -> Scrape:
    """Mark EXT's Interface (``iface-status``, on the allow-list) and scrape until the exporter shows
    it: OVSDB's updates arrive in order, so its copy then holds every change made before."""
    vsctl("set", "Interface", EXT.port, f'external_ids:"iface-status"="{marker}"')
    return scrape_until(
        exporter,
        lambda s: any(dict(lbls).get("iface_status") == marker for lbls in identities(s)),
        f"with marker {marker}",
    )


def tunnel_identity(scrape: Scrape) -> list[dict[str, str]]:
    return [dict(lbls) for lbls in identities(scrape) if dict(lbls)["port"] == GENEVE_VPORT]


def test_a_second_tunnel_leaves_the_tunnel_vports_series_as_it_was(
    ovs_host: OvsHost, host_exporter: Exporter
) -> None:
    """Tunnels to two remote hosts share genev_sys_6081: its one series keeps its labels, so a
    join on it is never broken and its history never split as tunnels come and go."""
    one = {"datapath": DATAPATH, "port": GENEVE_VPORT, "bridge": "br-int", "interface_type": "geneve"}
    assert tunnel_identity(marked(host_exporter, "one-tunnel")) == [one]
    vsctl("--", "add-port", "br-int", "gnv1", "--", "set", "Interface", "gnv1", "type=geneve",
          "options:remote_ip=198.18.99.3", "options:key=flow")  # fmt: skip
    try:
        geneve = [row for row in ovsdb_tables()["Interface"] if row["type"] == "geneve"]
        assert len(geneve) == 2 and all(
            isinstance(row["ofport"], int) and row["ofport"] > 0 for row in geneve
        )
        assert tunnel_identity(marked(host_exporter, "two-tunnels")) == [one]
    finally:
        vsctl("del-port", "br-int", "gnv1")
    assert tunnel_identity(marked(host_exporter, "one-tunnel-again")) == [one]
    vsctl("remove", "Interface", EXT.port, "external_ids", "iface-status")


#: A VM that crashes: its port's device is deleted (a veth here, a tap on a real host), its OVSDB
#: row is not (os-vif and libvirt unplug only on a clean shutdown).
CRASHED = Guest(
    "vm-crashed", "tapc4a5b6d7-e8", "br-int", f"{SUBNET}.31", "fa:16:3e:31:32:33",
    {"iface-id": "c4a5b6d7-e8f9-4a0b-9c1d-2e3f4a5b6c7d", "iface-status": "active",
     "attached-mac": "fa:16:3e:31:32:33", "vm-uuid": "3a4b5c6d-7e8f-4901-a2b3-c4d5e6f70819"},
)  # fmt: skip


@pytest.fixture(scope="module")
def crashed_vm(ovs_host: OvsHost, host_exporter: Exporter) -> str:
    """CRASHED plugged in and seen by the exporter, then its device deleted under its row; returns
    once vswitchd has said so in OVSDB (ofport -1 and the error, which it returns)."""
    ovs_host.add_guest(CRASHED)
    port = {"datapath": DATAPATH, "port": CRASHED.port}
    scrape_until(
        host_exporter,
        lambda s: (
            s.value("ovs_vport_receive_packets_total", **port) is not None
            and CRASHED.port in {dict(lbls)["port"] for lbls in identities(s)}
        ),
        "with the new VM's port",
    )
    ip_batch([f"link del {CRASHED.port}"], netns=HOST_NS)
    error = f"could not open network device {CRASHED.port} (No such device)"

    def row() -> dict[str, Any]:
        (found,) = [r for r in ovsdb_tables()["Interface"] if r["name"] == CRASHED.port]
        return found

    deadline = time.monotonic() + 60
    while (got := row())["ofport"] != -1 or got["error"] != error:
        assert time.monotonic() < deadline, f"vswitchd did not mark {CRASHED.port} broken: {got}"
        time.sleep(0.5)
    return error


def test_a_vm_port_whose_device_is_gone_is_reported_broken_with_its_identity(
    host_nl: OvsNetlink, host_exporter: Exporter, crashed_vm: str
) -> None:
    """The device deleted under its row: vswitchd sets ofport -1 and the error; the exporter
    serves no identity for the port (it has no kernel vport) but ovs_interface_broken_info with
    the VM's identity and vswitchd's error, and counts it on its bridge. The row stays broken
    for the Prometheus test below, as a crashed VM's would."""
    error = crashed_vm
    port = {"datapath": DATAPATH, "port": CRASHED.port}
    tables = ovsdb_tables()
    want = expected_broken(tables, DEFAULT_EXTERNAL_IDS)
    assert want == {
        frozenset({
            "bridge": "br-int", "interface": CRASHED.port, "interface_type": "system",
            "iface_id": CRASHED.iface_id, "iface_status": "active", "attached_mac": CRASHED.mac,
            "vm_uuid": CRASHED.external_ids["vm-uuid"], "error": error,
        }.items())
    }  # fmt: skip
    identity = expected_identity(tables, DEFAULT_EXTERNAL_IDS)
    scrape = scrape_until(
        host_exporter,
        lambda s: broken_interfaces(s) == want and identities(s) == identity,
        "with the broken port and without its identity",
    )
    assert CRASHED.port not in {dict(lbls)["port"] for lbls in identities(scrape)}
    assert scrape.value("ovs_bridge_broken_interfaces", bridge="br-int") == 1
    assert scrape.value("ovs_bridge_broken_interfaces", bridge="br-ex") == 0
    # No kernel vport, so no counters and no ovs_vport_info: nothing made up.
    assert CRASHED.port not in host_nl.snapshot().vports[DATAPATH]
    assert CRASHED.port not in scrape.label_values("ovs_vport_info", "port")
    assert scrape.value("ovs_vport_receive_packets_total", **port) is None


# --- meters and conntrack zone limits --------------------------------------------------------

#: OpenFlow meter 7 on br-int: UDP from NOVA to OVNK on METERED_PORT goes through it.
METER_RATE, METER_BURST = 10, 10  # packets per second, packets
METERED_PORT = 9999
#: The conntrack zones an OVN chassis would give NOVA's and KUBEOVN's logical ports, recorded on
#: br-int as ovn-controller does (external_ids:ct-zone-<iface-id>); KUBEOVN's is limited to
#: ZONE_LIMIT connections, committed by a ct(commit) flow for its UDP to EXT on ZONED_PORT.
ZONES = ((NOVA, 5), (KUBEOVN, 6))
NOVA_ZONE, KUBEOVN_ZONE = (zone for _, zone in ZONES)
ZONE_LIMIT = 4
ZONED_PORT = 7777


def ofctl(*args: str) -> str:
    """ovs-ofctl in OpenFlow 1.3 (meters need 1.3 or later)."""
    res = sh("ovs-ofctl", "-O", "OpenFlow13", *args, check=False, timeout=90)
    if res.returncode:
        raise RuntimeError(f"ovs-ofctl {' '.join(args)} failed: {res.stderr.strip()}")
    return res.stdout


def ofport(guest: Guest) -> str:
    return vsctl("get", "Interface", guest.port, "ofport", wait=False).strip()


def test_openflow_meters_become_datapath_meters_served_with_their_drops(
    host_nl: OvsNetlink, host_exporter: Exporter
) -> None:
    ofctl(
        "add-meter",
        "br-int",
        f"meter=7,pktps,burst,band=type=drop,rate={METER_RATE},burst_size={METER_BURST}",
    )
    ofctl("add-meter", "br-int", "meter=9,kbps,band=type=drop,rate=1000")  # in use by no flow
    ofctl("add-flow", "br-int", f"priority=200,udp,in_port={ofport(NOVA)},nw_dst={OVNK.ip},tp_dst={METERED_PORT},"
          "actions=meter:7,NORMAL")  # fmt: skip
    dp_ifindex = host_nl.snapshot().datapaths[DATAPATH].ifindex
    receiver = UdpReceiver(OVNK, METERED_PORT)
    try:
        flood_udp(NOVA, OVNK.ip, 1, port=METERED_PORT)  # neighbours resolved
        time.sleep(0.5)
        before, scrape = meters_agree(host_nl, dp_ifindex, host_exporter, DATAPATH)
        # vswitchd numbers datapath meters itself, from 0: not the OpenFlow ids 7 and 9.
        assert set(before) == {0, 1}
        assert scrape.value("ovs_datapath_meters", datapath=DATAPATH) == 2
        features = ofctl("meter-features", "br-int")
        assert scrape.value("ovs_datapath_meters_limit", datapath=DATAPATH) == int(
            re.search(r"max_meter:(\d+)", features)[1]  # type: ignore[index]
        )
        received = receiver.drain()
        n = 2000
        elapsed = flood_udp(NOVA, OVNK.ip, n, port=METERED_PORT)
        time.sleep(1)
        delivered = receiver.drain() - received
        after, scrape = meters_agree(host_nl, dp_ifindex, host_exporter, DATAPATH)
    finally:
        receiver.close()
    grown = {i: tuple(a - b for a, b in zip(after[i], before[i], strict=True)) for i in after}
    (metered,) = [i for i, counts in grown.items() if counts[0]]
    packets, nbytes, dropped, dropped_bytes = grown[metered]
    # Every datagram reached the meter, those vswitchd handled as upcalls too (it executes their
    # actions in the kernel); what the meter let through arrived, the rest it dropped.
    assert packets == n and nbytes == n * (14 + 20 + 8 + 32)
    assert dropped == n - delivered and dropped_bytes == dropped * (14 + 20 + 8 + 32)
    # Over its rate: a burst's worth and the rate for the time the flood took pass (6.1 starts the
    # bucket a second's rate fuller than 6.12).
    assert 1 <= delivered <= METER_BURST + METER_RATE * (elapsed + 1) + 1
    # vswitchd's own view of the OpenFlow meter is the kernel meter read through it: the way to tell
    # which OpenFlow meter a datapath meter is (the alert's runbook).
    stats = ofctl("meter-stats", "br-int", "meter=7")
    assert f"packet_in_count:{after[metered][0]} byte_in_count:{after[metered][1]}" in stats, stats
    assert f"packet_count:{after[metered][2]} byte_count:{after[metered][3]}" in stats, stats
    assert f"meter({metered})" in appctl("dpctl/dump-flows", f"system@{DATAPATH}")

    # ovs-ofctl mod-meter: vswitchd replaces the kernel meter under the same id, whose counters
    # start again from 0 (a counter reset for Prometheus).
    ofctl(
        "mod-meter",
        "br-int",
        f"meter=7,pktps,burst,band=type=drop,rate={2 * METER_RATE},burst_size={METER_BURST}",
    )
    replaced, scrape = meters_agree(host_nl, dp_ifindex, host_exporter, DATAPATH)
    assert set(replaced) == {0, 1} and replaced[metered] == (0, 0, 0, 0)
    assert scrape.value("ovs_scrape_collector_success", collector="meters") == 1
    # Below its new rate, the meter drops nothing (and the port dashboards have a meter to show).
    flood_udp(NOVA, OVNK.ip, 5, port=METERED_PORT)


def test_zone_limits_count_committed_connections_and_refuse_past_the_limit(
    ovs_host: OvsHost, host_nl: OvsNetlink, host_exporter: Exporter
) -> None:
    # Unanswered UDP connections live 30 s by default; long enough for the rest of the module here.
    write_sysctl(HOST_NS, {"net.netfilter.nf_conntrack_udp_timeout": "600"})
    vsctl("set", "Bridge", "br-int", *(f'external_ids:"ct-zone-{g.iface_id}"="{z}"' for g, z in ZONES))
    appctl("dpctl/ct-set-limits", f"zone={NOVA_ZONE},limit=100", f"zone={KUBEOVN_ZONE},limit={ZONE_LIMIT}")
    ofctl("add-flow", "br-int", f"priority=210,udp,in_port={ofport(KUBEOVN)},nw_dst={EXT.ip},tp_dst={ZONED_PORT},"
          f"actions=ct(commit,zone={KUBEOVN_ZONE}),NORMAL")  # fmt: skip
    # The kernel commits ZONE_LIMIT connections in the zone and refuses the others, whose packets it drops.
    assert udp_flows_delivered(KUBEOVN, EXT, ZONE_LIMIT + 3, ZONED_PORT) == ZONE_LIMIT
    (default, zones), scrape = zones_agree(host_nl, host_exporter)
    assert default == 0
    assert zones == {NOVA_ZONE: (100, 0), KUBEOVN_ZONE: (ZONE_LIMIT, ZONE_LIMIT)}
    zone = str(KUBEOVN_ZONE)
    full = (scrape.value("ovs_conntrack_zone_connections", zone=zone) or 0) / (
        scrape.value("ovs_conntrack_zone_limit", zone=zone) or 1
    )
    assert full == 1.0 and scrape.value("ovs_scrape_collector_success", collector="conntrack_zones") == 1

    # Who each zone is for: OVN's owner (the logical port, the Interface's iface-id) and its vport,
    # which joins the zone to ovs_interface_info (and so to the VM or pod).
    want = {
        str(z): {"zone": str(z), "bridge": "br-int", "owner": g.iface_id, "iface_id": g.iface_id,
                 "datapath": DATAPATH, "port": g.port}
        for g, z in ZONES
    }  # fmt: skip
    scrape = scrape_until(host_exporter, lambda s: zone_infos(s) == want, "with the zones' owners")
    (port_identity,) = [dict(lbls) for lbls in identities(scrape) if dict(lbls)["port"] == KUBEOVN.port]
    assert port_identity["iface_id"] == want[zone]["owner"] and port_identity["pod_name"] == "db-1"


def test_hundreds_of_limited_zones_are_read_in_chunks(host_nl: OvsNetlink, host_exporter: Exporter) -> None:
    """Past ~650 limited zones the kernel cannot list them in one reply (EMSGSIZE; ovs-appctl
    dpctl/ct-get-limits fails too): the exporter reads every zone id in chunks."""
    many = range(1000, 1700)
    appctl("dpctl/ct-set-limits", *(f"zone={z},limit={z}" for z in many))
    try:
        with pytest.raises(OSError) as listing:
            host_nl.ct_limits()
        assert listing.value.errno == errno.EMSGSIZE
        (default, zones), scrape = zones_agree(host_nl, host_exporter, timeout=180)
        assert default == 0 and len(zones) == len(many) + len(ZONES)
        assert all(zones[z] == (z, 0) for z in many)
        assert zones[KUBEOVN_ZONE] == (ZONE_LIMIT, ZONE_LIMIT)
        assert not scrape.duplicates()
    finally:
        appctl("dpctl/ct-del-limits", "zone=" + ",".join(map(str, many)))
    (_, zones), _ = zones_agree(host_nl, host_exporter)
    assert set(zones) == {NOVA_ZONE, KUBEOVN_ZONE}


# --- a real Prometheus over the vswitchd host -------------------------------------------------

PROMETHEUS_PORT = 19091
JOB = "ovs-vport-exporter"
HEALTHY_ALERTS = (
    "alert/OvsDatapathUnavailable",
    "alert/OvsVportExporterDown",
    "alert/OvsVportExporterScrapeSlow",
)
#: The lookup that alert annotations make to name the bridge and VM or pod (alerts/generate_rules.py).
_ANNOTATION_QUERY = re.compile(r'printf "(ovs_interface_info\{[^"]*\})"')
#: The lookup that the conntrack zone alert's annotations make to name the zone's owner.
_ZONE_QUERY = re.compile(r'printf "(ovs_conntrack_zone_info\{[^"]*\})"')


@pytest.fixture(scope="module")
def host_prometheus(host_exporter: Exporter, results_dir: Path) -> Iterator[Prometheus]:
    config = rules_and_scrapes({JOB: f"{MGMT_NS_IP}:{host_exporter.port}"})
    prom = Prometheus(PROMETHEUS_PORT, config, results_dir, workdir=Path("/tmp/prometheus-vswitchd"))
    yield prom
    prom.stop()


def test_every_dashboard_and_alert_query_returns_data_joins_included(
    host_prometheus: Prometheus, host_exporter: Exporter, host_nl: OvsNetlink, crashed_vm: str
) -> None:
    instance = f"{MGMT_NS_IP}:{host_exporter.port}"
    # Traffic through both bridges, and new flows (upcalls) all along, while Prometheus scrapes.
    traffic = [background_ping(NOVA, OVNK), background_ping(KUBEOVN, EXT), background_misses(NOVA, OVNK)]
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            ready = host_prometheus.query(f'count_over_time(ovs_interface_info{{job="{JOB}"}}[1m])')
            rated = host_prometheus.query("ovs:vport_receive_packets:rate5m > 0")
            # Before 6.2 the kernel reports no per-port upcalls: those queries must stay empty.
            upcalls = not HAS_UPCALL_STATS or host_prometheus.query("rate(ovs_vport_upcalls_total[1m]) > 0")
            if ready and min(float(r["value"][1]) for r in ready) >= 4 and rated and upcalls:
                break
            time.sleep(1)
        else:
            pytest.fail(f"Prometheus never scraped identities and traffic: {host_prometheus.targets_up()}")
        time.sleep(2)  # the rules evaluated over the last scrapes
        empty, unexpected, unjoined, firing = [], [], [], []
        # The flow collector's expressions need --collector.flows: test_flows.py runs them.
        exprs = [(n, e) for n, e in promql_inventory.all_exprs({}) if not promql_inventory.needs_flows(e)]
        started = time.monotonic()
        with host_prometheus.frozen() as now:
            with ThreadPoolExecutor(max_workers=4) as pool:
                answers = pool.map(lambda expr: host_prometheus.query(expr, at=now), [e for _, e in exprs])
                results = dict(zip([name for name, _ in exprs], answers, strict=True))
            # The port dashboard's identity panel, for one port as a Grafana user picks it, and
            # the lookup each port alert's annotations make to name the bridge and VM or pod.
            picked = {
                "ovs-port/instance": instance,
                "ovs-port/datapath": DATAPATH,
                "ovs-port/port": NOVA.port,
            }
            identity = {
                expr: host_prometheus.query(expr, at=now)
                for name, expr in promql_inventory.all_exprs(picked)
                if name.startswith("dashboard/ovs-port/") and promql_inventory.needs_ovsdb(expr)
            }
            lookups = {
                query
                for group in promql_inventory.rule_groups()
                for rule in group["rules"]
                for text in rule.get("annotations", {}).values()
                for query in _ANNOTATION_QUERY.findall(text)
            }
            looked_up = {
                (query, g.port): host_prometheus.query(
                    # Go's %q quotes as JSON does for these values; the query's own braces stay.
                    query.replace("%q", "%s")
                    % tuple(json.dumps(v) for v in (instance, "", DATAPATH, g.port)),
                    at=now,
                )
                for query in lookups
                for g in (NOVA, OVNK, KUBEOVN)
            }
            zone_lookups = {
                query
                for group in promql_inventory.rule_groups()
                for rule in group["rules"]
                for text in rule.get("annotations", {}).values()
                for query in _ZONE_QUERY.findall(text)
            }
            zones_looked_up = {
                (query, index): host_prometheus.query(
                    query.replace("%q", "%s") % tuple(json.dumps(v) for v in (instance, "", str(zone))),
                    at=now,
                )
                for query in zone_lookups
                for index, (_, zone) in enumerate(ZONES)
            }
        print(
            f"{len(exprs) + len(identity) + len(looked_up) + len(zones_looked_up)} expressions queried"
            f" in {time.monotonic() - started:.1f}s"
        )
        for name, expr in exprs:
            result = results[name]
            if promql_inventory.is_condition(name):
                if name in HEALTHY_ALERTS and result:
                    firing.append(name)
                continue
            if promql_inventory.only_with_trouble(name, expr):
                continue  # recorded only for ports that drop, err or fail upcalls: none here
            if not HAS_UPCALL_STATS and promql_inventory.needs_upcall_stats(expr):
                if result:
                    unexpected.append(f"{name}: {expr}")
                continue
            if not result:
                empty.append(f"{name}: {expr}")
            elif "ovs_interface_info" in expr and not any("bridge" in r["metric"] for r in result):
                unjoined.append(f"{name}: {expr}")
        assert not empty, "expressions without data:\n" + "\n".join(empty)
        # The crashed VM's port is what the broken-port panels and alert condition show.
        broken = [name for name, expr in exprs if "ovs_interface_broken_info" in expr]
        assert broken
        for name in broken:
            shown = {
                (r["metric"]["interface"], r["metric"].get("iface_id"), r["metric"]["error"])
                for r in results[name]
            }
            assert shown == {(CRASHED.port, CRASHED.iface_id, crashed_vm)}, (name, shown)
        assert not unexpected, "upcall expressions with data on a pre-6.2 kernel:\n" + "\n".join(unexpected)
        assert not unjoined, "joins that found no identity:\n" + "\n".join(unjoined)
        assert not firing, f"alerts firing on a healthy host: {firing}"

        # The top-port panels name who is on each port, and keep the ports OVSDB does not
        # describe: the datapath's own port ovs-system has no Interface and no identity. Every
        # kernel vport here is among the top 10, so each panel shows all of them.
        vports = set(host_nl.snapshot().vports[DATAPATH])
        assert DATAPATH in vports and len(vports) <= 10, vports
        joins = [
            name
            for name, expr in exprs
            if promql_inventory.joins_identity(expr)
            and not promql_inventory.only_with_trouble(name, expr)
            and (HAS_UPCALL_STATS or not promql_inventory.needs_upcall_stats(expr))
        ]
        assert joins
        for name in joins:
            shown = {r["metric"]["port"]: r["metric"] for r in results[name]}
            assert set(shown) == vports, (name, sorted(shown), sorted(vports))
            assert "bridge" not in shown[DATAPATH], (name, shown[DATAPATH])
            for g in GUESTS:
                ids = {k.replace("-", "_"): v for k, v in g.external_ids.items()}
                want = {"bridge": g.bridge} | {
                    k: ids[k] for k in ("iface_id", "vm_uuid", "pod_namespace", "pod_name") if k in ids
                }
                assert {k: shown[g.port].get(k) for k in want} == want, (name, shown[g.port])

        assert identity
        for expr, found in identity.items():
            assert len(found) == 1, (expr, found)
            if "ovs_interface_info" in expr:
                assert found[0]["metric"]["bridge"] == NOVA.bridge, (expr, found)
                assert found[0]["metric"]["vm_uuid"] == NOVA.external_ids["vm-uuid"], (expr, found)
            elif "ovs_conntrack_zone_info" in expr:
                # NOVA's zone: a limit of 100, no connection committed in it.
                assert found[0]["metric"]["zone"] == str(NOVA_ZONE), (expr, found)
                assert float(found[0]["value"][1]) == (0 if "zone_connections" in expr else 100), (
                    expr,
                    found,
                )
            else:
                assert float(found[0]["value"][1]) == 1, (expr, found)  # the OVSDB copy is current

        assert lookups
        for query in lookups:
            for g in (NOVA, OVNK, KUBEOVN):
                found = looked_up[query, g.port]
                assert len(found) == 1 and found[0]["metric"]["bridge"] == g.bridge, (query, g.port, found)
                assert found[0]["metric"]["iface_id"] == g.external_ids["iface-id"]
        assert zone_lookups
        for (query, index), found in zones_looked_up.items():
            guest, zone = ZONES[index]
            assert len(found) == 1 and found[0]["metric"]["owner"] == guest.iface_id, (query, zone, found)
            assert found[0]["metric"]["port"] == guest.port
    finally:
        for proc in traffic:
            proc.terminate()
            proc.wait()
