"""The join step: OVSDB Interfaces -> kernel vport names, shared vports, label safety (no server)."""

from __future__ import annotations

import pytest

from exporter.ovsdb.identity import (
    DEFAULT_EXTERNAL_IDS,
    MAX_LABEL_VALUE_LENGTH,
    IdentityBuilder,
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


def test_shared_tunnel_vport_keeps_what_all_agree_on() -> None:
    snap = OvsdbSnapshot(
        (
            OvsdbBridge(
                "br-int", "", (iface("t1", "geneve", 5, iface_id="x"), iface("t2", "geneve", 6, iface_id="x"))
            ),
            OvsdbBridge("br-tun", "system", (iface("t3", "geneve", 7, iface_id="x"),)),
        ),
        None,
    )
    (only,) = interface_identities(snap, ["iface-id"])
    assert (only.datapath, only.port, only.labels) == (
        "ovs-system", "genev_sys_6081", (("interface_type", "geneve"), ("iface_id", "x")),
    )  # fmt: skip


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
    for reserved in ("datapath", "port", "bridge", "ofport", "interface-type", "netns", "vport_type"):
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
