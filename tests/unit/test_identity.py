"""The join step: OVSDB Interfaces -> kernel vport names, shared vports, label safety (no server)."""

from __future__ import annotations

import pytest

from exporter.ovsdb.identity import (
    DEFAULT_EXTERNAL_IDS,
    MAX_LABEL_VALUE_LENGTH,
    IdentityBuilder,
    broken_interfaces,
    check_external_ids,
    interface_identities,
    kernel_vport_name,
    label_name,
    label_value,
    zone_identities,
)
from exporter.ovsdb.reader import OvsdbBridge, OvsdbInterface, OvsdbSnapshot


@pytest.mark.parametrize(
    ("name", "type_", "dst_port", "vport"),
    [
        ("tap0", "", None, "tap0"),
        ("tap0", "system", None, "tap0"),
        ("br-int", "internal", None, "br-int"),
        ("tap1", "tap", None, "tap1"),
        ("ovn-abc-0", "geneve", None, "genev_sys_6081"),
        ("ovn-abc-0", "geneve", "6082", "genev_sys_6082"),
        ("vx", "vxlan", None, "vxlan_sys_4789"),
        ("vx", "vxlan", "8472", "vxlan_sys_8472"),
        ("vx", "vxlan", "8472x", "vxlan_sys_8472"),  # atoi(): the leading digits
        ("vx", "vxlan", "x", "vxlan_sys_0"),
        ("l", "lisp", None, "lisp_sys_4341"),
        ("s", "stt", None, "stt_sys_7471"),
        ("g", "gtpu", None, "gtpu_sys_2152"),
        ("u", "bareudp", "6635", "udp_sys_6635"),
        ("gre0", "gre", "1234", "gre_sys"),  # no UDP port in the name
        ("e", "erspan", None, "erspan_sys"),
        ("e6", "ip6erspan", None, "ip6erspan_sys"),
        ("g6", "ip6gre", None, "ip6gre_sys"),
        ("patch-a", "patch", None, "patch-a"),
    ],
)
def test_kernel_vport_name(name: str, type_: str, dst_port: str | None, vport: str) -> None:
    assert kernel_vport_name(name, type_, dst_port) == vport


def iface(name: str, type_: str = "", ofport: int | None = None, **ids: str) -> OvsdbInterface:
    return OvsdbInterface(name, type_, ofport, {k.replace("_", "-"): v for k, v in ids.items()}, None)


def tunnels(count: int, bridges: tuple[str, ...] = ("br-int",)) -> OvsdbSnapshot:
    """``count`` geneve Interfaces per bridge, as ovn-controller makes one per remote chassis."""
    return OvsdbSnapshot(
        tuple(
            OvsdbBridge(
                bridge, "",
                (iface("br-x", "internal", 65534),
                 *(iface(f"ovn-{bridge}-{i}-0", "geneve", 10 + i, iface_id=f"x{i}") for i in range(count))),
            )
            for bridge in bridges
        ),
        None,
    )  # fmt: skip


def tunnel_series(snap: OvsdbSnapshot) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    (only,) = [i for i in interface_identities(snap, ["iface-id"]) if i.port == "genev_sys_6081"]
    return only.datapath, only.port, only.labels


def test_a_shared_tunnel_vport_has_the_same_labels_however_many_interfaces_share_it() -> None:
    """One chassis, two, five, back to one: the series of genev_sys_6081 is never replaced. It
    carries no ofport and no external_ids of any one Interface."""
    want = ("ovs-system", "genev_sys_6081", (("bridge", "br-int"), ("interface_type", "geneve")))
    for count in (1, 2, 5, 1):
        assert tunnel_series(tunnels(count)) == want, count
    assert interface_identities(tunnels(0), []) == interface_identities(tunnels(0), ["iface-id"])
    assert all(i.port != "genev_sys_6081" for i in interface_identities(tunnels(0), []))


def test_a_tunnel_vport_of_several_bridges_names_them_all() -> None:
    assert tunnel_series(tunnels(2, ("br-tun", "br-int"))) == (
        "ovs-system", "genev_sys_6081", (("bridge", "br-int,br-tun"), ("interface_type", "geneve")),
    )  # fmt: skip


def test_two_interfaces_of_one_name_give_one_series_the_first_bridges() -> None:
    """vswitchd refuses one of them (ofport -1, 'could not add network device ... (File exists)');
    before it has, the first bridge's in name order."""
    snap = OvsdbSnapshot(
        (OvsdbBridge("br-a", "", (iface("tap0", "", 3, iface_id="a"),)),
         OvsdbBridge("br-b", "", (iface("tap0", "", None, iface_id="b"),))),
        None,
    )  # fmt: skip
    (only,) = interface_identities(snap, ["iface-id"])
    assert dict(only.labels) == {"bridge": "br-a", "ofport": "3", "interface_type": "system", "iface_id": "a"}


def test_an_interface_vswitchd_could_not_create_has_no_identity_and_is_broken() -> None:
    gone = "could not open network device tap1 (No such device)"
    snap = OvsdbSnapshot(
        (OvsdbBridge("br-int", "", (
            iface("tap0", "", 3, iface_id="a"),
            OvsdbInterface("tap1", "", -1, {"iface-id": "b", "vm-uuid": "v", "other": "o"}, None, gone),
            # An old schema without the error column: ofport -1 alone.
            iface("tap2", "", -1),
            # In ofproto, but with an error: the patch port without a peer.
            OvsdbInterface("patch-x", "patch", 4, {}, None, "No usable peer 'y' exists in 'system' datapath."),
            # Not yet handled by vswitchd: no ofport, no error.
            iface("tap3", "", None),
        )),
         OvsdbBridge("br-dpdk", "netdev", (iface("dpdk0", "dpdk", -1),))),
        None,
    )  # fmt: skip
    assert [i.port for i in interface_identities(snap, [])] == ["patch-x", "tap0", "tap3"]
    assert [b.labels for b in broken_interfaces(snap, ["iface-id", "vm-uuid"])] == [
        (("bridge", "br-int"), ("interface", "tap1"), ("interface_type", "system"), ("iface_id", "b"),
         ("vm_uuid", "v"), ("error", gone)),
        (("bridge", "br-int"), ("interface", "tap2"), ("interface_type", "system")),
        (("bridge", "br-int"), ("interface", "patch-x"), ("interface_type", "patch"),
         ("error", "No usable peer 'y' exists in 'system' datapath.")),
    ]  # fmt: skip


def test_broken_series_and_counts_per_bridge_follow_the_filters() -> None:
    long_error = "could not add network device " + "x" * 500
    snap = OvsdbSnapshot(
        (OvsdbBridge("br-ex", "system", (iface("eth1", "", 1),)),
         OvsdbBridge("br-int", "", (
             OvsdbInterface("tap1", "", -1, {"iface-id": "b"}, None, long_error),
             OvsdbInterface("qvo1", "", -1, {}, None, "e\n"),
         ))),
        None,
    )  # fmt: skip
    view = IdentityBuilder(["iface-id"], lambda datapath, port: not port.startswith("qvo")).build(snap)
    assert (
        view.bridges
        == 'ovs_bridge_broken_interfaces{bridge="br-ex"} 0\novs_bridge_broken_interfaces{bridge="br-int"} 1\n'
    )
    (line,) = view.broken.splitlines()
    error = line.split('error="', 1)[1].rsplit('"', 1)[0]
    assert len(error) == MAX_LABEL_VALUE_LENGTH and error.endswith("\u2026")
    assert line.startswith(
        'ovs_interface_broken_info{bridge="br-int",interface="tap1",interface_type="system",iface_id="b",'
    )


def test_alternative_keys_first_present_wins_and_others_never_become_labels() -> None:
    snap = OvsdbSnapshot(
        (
            OvsdbBridge(
                "b",
                "",
                (OvsdbInterface("p", "", 1, {"attached_mac": "m2", "attached-mac": "m1", "x": "y"}, None),),
            ),
        ),
        None,
    )
    (only,) = interface_identities(snap, ["attached-mac", "attached_mac"])
    assert dict(only.labels) == {
        "bridge": "b",
        "ofport": "1",
        "interface_type": "system",
        "attached_mac": "m1",
    }
    (only,) = interface_identities(snap, ["attached_mac", "attached-mac"])
    assert dict(only.labels)["attached_mac"] == "m2"
    (only,) = interface_identities(snap, [])
    assert dict(only.labels) == {"bridge": "b", "ofport": "1", "interface_type": "system"}


def test_netdev_bridges_are_not_on_the_kernel_datapath() -> None:
    snap = OvsdbSnapshot((OvsdbBridge("br-dpdk", "netdev", (iface("dpdk0", "dpdk"),)),), None)
    assert interface_identities(snap, []) == []


def test_label_value() -> None:
    assert label_value("fa:16:3e:00:00:01") == "fa:16:3e:00:00:01"
    assert label_value("a\nb\x00c\x7fd\x85e\udc00f\tg") == "a\ufffdb\ufffdc\ufffdd\ufffde\ufffdf\ufffdg"
    assert label_value('é😀"\\') == 'é😀"\\'
    long = label_value("y" * 1000)
    assert len(long) == MAX_LABEL_VALUE_LENGTH and long.endswith("\u2026")
    assert label_value("z" * MAX_LABEL_VALUE_LENGTH) == "z" * MAX_LABEL_VALUE_LENGTH


def test_label_names_and_checks() -> None:
    assert label_name("iface-id") == "iface_id" and label_name("pod_name") == "pod_name"
    assert check_external_ids(["iface-id", "attached-mac", "attached_mac"]) is None
    assert check_external_ids(["vm-id", "vm-id"]) == "'vm-id' is listed twice"
    for reserved in (
        "datapath", "port", "bridge", "ofport", "interface-type", "netns", "vport_type", "interface", "error",
        "device_kind",
    ):  # fmt: skip
        problem = check_external_ids([reserved])
        assert problem is not None and "exporter's own labels" in problem
    for bad in ("", "1abc", "a.b", "a/b", "ä"):
        problem = check_external_ids([bad])
        assert problem is not None and "valid label name" in problem


def test_zones_ovn_recorded_on_the_integration_bridge_name_their_owner_and_vport() -> None:
    """ovn-controller writes external_ids:ct-zone-<owner>=<zone> on br-int: a logical port (the
    iface-id of the Interface it is bound to here), or a router's <name>_dnat / _snat."""
    vm = iface("tapa1b2c3d4-e5", ofport=3, iface_id="lsp-vm1")
    twin = [iface("tapx", iface_id="lsp-dup"), iface("tapy", iface_id="lsp-dup")]
    br_int = OvsdbBridge(
        "br-int",
        "",
        (vm, *twin),
        {
            "ct-zone-lsp-vm1": "5",
            "ct-zone-lr0_dnat": "2",
            "ct-zone-lr0_snat": "3",
            "ct-zone-lsp-dup": "7",
            "ct-zone-lsp-remote": "9",  # bound to another chassis: no Interface here
            "ct-zone-": "4",  # no owner: skipped, as ovn-controller does
            "ct-zone-junk": "x1",  # not a zone number
            "ct-zone-big": "65536",
            "ovn-nb-cfg": "12",
        },
    )
    userspace = OvsdbBridge("br-dpdk", "netdev", (), {"ct-zone-lsp-u": "11"})
    found = [dict(labels) for labels in zone_identities(OvsdbSnapshot((br_int, userspace), None))]
    assert found == [
        {"zone": "2", "bridge": "br-int", "owner": "lr0_dnat"},
        {"zone": "3", "bridge": "br-int", "owner": "lr0_snat"},
        {
            "zone": "5", "bridge": "br-int", "owner": "lsp-vm1", "iface_id": "lsp-vm1",
            "datapath": "ovs-system", "port": "tapa1b2c3d4-e5",
        },
        {"zone": "7", "bridge": "br-int", "owner": "lsp-dup", "iface_id": "lsp-dup"},  # two vports: neither
        {"zone": "9", "bridge": "br-int", "owner": "lsp-remote"},
    ]  # fmt: skip


def test_zone_owner_values_are_made_safe() -> None:
    bridge = OvsdbBridge("br-int", "", (), {"ct-zone-evil\n" + "x" * 300: "1"})
    ((_zone, _bridge, (_name, owner)),) = zone_identities(OvsdbSnapshot((bridge,), None))
    assert "\n" not in owner and len(owner) == MAX_LABEL_VALUE_LENGTH


def test_zone_info_is_served_with_the_identity() -> None:
    bridge = OvsdbBridge("br-int", "", (iface("tap0", iface_id="lsp0"),), {"ct-zone-lsp0": "1"})
    view = IdentityBuilder(DEFAULT_EXTERNAL_IDS).build(OvsdbSnapshot((bridge,), None))
    assert view.zones == (
        'ovs_conntrack_zone_info{zone="1",bridge="br-int",owner="lsp0",iface_id="lsp0",'
        'datapath="ovs-system",port="tap0"} 1\n'
    )
