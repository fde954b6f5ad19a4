"""The OVSDB reader against a real ovsdb-server: identity, changes, restarts, bad values, old schemas.

Every test runs its own ovsdb-server (Debian's openvswitch-common) on the schema
of Debian's openvswitch-switch, populated with the real ovs-vsctl or with raw
``ovsdb-client transact`` where ovs-vsctl would refuse a value. The read-only
guarantee is checked on the wire by a proxy that cuts the connection on any
method a read-only monitor does not need.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ovs
import pytest
import sortedcontainers
from prometheus_client.parser import text_string_to_metric_families

from exporter.exposition import Format, family_header
from exporter.ovsdb.identity import (
    DEFAULT_EXTERNAL_IDS,
    INTERFACE_INFO,
    MAX_LABEL_VALUE_LENGTH,
    IdentityBuilder,
    IdentitySource,
    IdentityView,
)
from exporter.ovsdb.reader import OvsdbReader
from tests.ovsdb_server import (
    READ_ONLY_METHODS,
    OvsdbServer,
    RecordingProxy,
    ovsdb_server,
    schema_path,
    vsctl_path,
    wait_for,
)
from tests.tools import promtool, require_tool

LOGGER = "exporter.ovsdb.reader"
ROOT = Path(__file__).resolve().parents[2]


def make_reader(remote: str, keys: tuple[str, ...] = DEFAULT_EXTERNAL_IDS) -> OvsdbReader[IdentityView]:
    # Short backoff and probe so that the restart tests take seconds, not the defaults' minutes.
    reader: OvsdbReader[IdentityView] = OvsdbReader(
        remote, IdentityBuilder(keys).build, timeout=2.0, probe_interval=1.0, min_backoff=0.2, max_backoff=1.0
    )
    reader.MIN_REBUILD_INTERVAL = 0.05
    reader.start()
    return reader


@pytest.fixture
def server() -> Iterator[OvsdbServer]:
    with ovsdb_server() as srv:
        yield srv


@pytest.fixture
def reader(server: OvsdbServer) -> Iterator[OvsdbReader[IdentityView]]:
    r = make_reader(server.remote)
    yield r
    r.close()


def samples(view: IdentityView | None) -> dict[str, dict[str, str]]:
    """ovs_interface_info by port, parsed by prometheus_client's own parser."""
    assert view is not None
    out: dict[str, dict[str, str]] = {}
    for family in text_string_to_metric_families(view.interfaces):
        for sample in family.samples:
            assert sample.name == "ovs_interface_info" and sample.value == 1
            assert sample.labels["port"] not in out, "one series per vport"
            out[sample.labels["port"]] = dict(sample.labels)
    return out


def wait_view(reader: OvsdbReader[IdentityView], check: Any, what: str) -> dict[str, dict[str, str]]:
    def ready() -> list[dict[str, dict[str, str]]]:
        view = reader.current()
        if view is None:
            return []
        got = samples(view)
        return [got] if check(got) else []

    return wait_for(ready, what=what)[0]  # type: ignore[no-any-return]


def topology(server: OvsdbServer) -> None:
    """Ports as os-vif, libvirt, ovn-kubernetes and kube-ovn write them, a tunnel, a patch, a netdev bridge."""
    server.vsctl(
        "--", "add-br", "br-int",
        "--", "add-port", "br-int", "tapa1b2c3d4-e5",
        "--", "set", "Interface", "tapa1b2c3d4-e5",
        "external-ids:iface-id=a1b2c3d4-e5f6", "external-ids:iface-status=active",
        "external-ids:attached-mac=fa:16:3e:00:00:01", "external-ids:vm-uuid=inst-1",
        "--", "add-port", "br-int", "vnet0",
        "--", "set", "Interface", "vnet0",
        "external-ids:iface-id=0d1e", "external-ids:attached-mac=52:54:00:00:00:02",
        "external-ids:vm-id=dom-uuid", "external-ids:iface-status=active",
        "--", "add-port", "br-int", "a8f3e2b1c0d9e8f",
        "--", "set", "Interface", "a8f3e2b1c0d9e8f",
        "external_ids:attached_mac=0a:58:0a:f4:00:05", "external_ids:iface-id=default_web-0",
        "external_ids:sandbox=8c1d", "external_ids:ip_addresses=10.244.0.5/24",
        "--", "add-port", "br-int", "d37da5ba_h",
        "--", "set", "Interface", "d37da5ba_h",
        "external_ids:iface-id=web-1.default", "external_ids:pod_name=web-1",
        "external_ids:pod_namespace=default", "external_ids:vendor=kube-ovn",
        "--", "add-port", "br-int", "ovn-remote-0",
        "--", "set", "Interface", "ovn-remote-0", "type=geneve", "options:remote_ip=192.0.2.1",
        "--", "add-port", "br-int", "ovn-remote-1",
        "--", "set", "Interface", "ovn-remote-1", "type=geneve", "options:remote_ip=192.0.2.2",
        "--", "add-port", "br-int", "vx0",
        "--", "set", "Interface", "vx0", "type=vxlan", "options:remote_ip=192.0.2.3", "options:dst_port=8472",
        "--", "add-port", "br-int", "patch-br-int-to-br-ex",
        "--", "set", "Interface", "patch-br-int-to-br-ex", "type=patch", "options:peer=patch-br-ex-to-br-int",
        "--", "add-br", "br-ex",
        "--", "set", "Bridge", "br-ex", "datapath_type=system",
        "--", "add-port", "br-ex", "patch-br-ex-to-br-int",
        "--", "set", "Interface", "patch-br-ex-to-br-int", "type=patch", "options:peer=patch-br-int-to-br-ex",
        "--", "add-br", "br-dpdk",
        "--", "set", "Bridge", "br-dpdk", "datapath_type=netdev",
        "--", "add-port", "br-dpdk", "dpdk0",
    )  # fmt: skip
    server.vsctl(
        "set", "Open_vSwitch", ".", "external-ids:system-id=chassis-1", "external-ids:hostname=compute-1",
        "ovs_version=3.1.0", "db_version=8.3.1",
    )  # fmt: skip


def test_identity_of_every_kernel_datapath_port(
    server: OvsdbServer, reader: OvsdbReader[IdentityView]
) -> None:
    topology(server)
    expected = {
        "br-int": {
            "datapath": "ovs-system",
            "port": "br-int",
            "bridge": "br-int",
            "interface_type": "internal",
        },
        "br-ex": {"datapath": "ovs-system", "port": "br-ex", "bridge": "br-ex", "interface_type": "internal"},
        "tapa1b2c3d4-e5": {
            "datapath": "ovs-system",
            "port": "tapa1b2c3d4-e5",
            "bridge": "br-int",
            "interface_type": "system",
            "iface_id": "a1b2c3d4-e5f6",
            "attached_mac": "fa:16:3e:00:00:01",
            "iface_status": "active",
            "vm_uuid": "inst-1",
        },
        "vnet0": {
            "datapath": "ovs-system",
            "port": "vnet0",
            "bridge": "br-int",
            "interface_type": "system",
            "iface_id": "0d1e",
            "attached_mac": "52:54:00:00:00:02",
            "iface_status": "active",
            "vm_id": "dom-uuid",
        },
        # ovn-kubernetes: attached_mac is the same label as attached-mac; sandbox and ip_addresses
        # are not on the allow-list.
        "a8f3e2b1c0d9e8f": {
            "datapath": "ovs-system",
            "port": "a8f3e2b1c0d9e8f",
            "bridge": "br-int",
            "interface_type": "system",
            "iface_id": "default_web-0",
            "attached_mac": "0a:58:0a:f4:00:05",
        },
        "d37da5ba_h": {
            "datapath": "ovs-system",
            "port": "d37da5ba_h",
            "bridge": "br-int",
            "interface_type": "system",
            "iface_id": "web-1.default",
            "pod_name": "web-1",
            "pod_namespace": "default",
        },
        # Two geneve Interfaces share the kernel's flow-based vport: one series, bridge and type only.
        "genev_sys_6081": {
            "datapath": "ovs-system",
            "port": "genev_sys_6081",
            "bridge": "br-int",
            "interface_type": "geneve",
        },
        "vxlan_sys_8472": {
            "datapath": "ovs-system",
            "port": "vxlan_sys_8472",
            "bridge": "br-int",
            "interface_type": "vxlan",
        },
        # Patch ports have no kernel vport: their series name them as OVSDB does and join nothing.
        "patch-br-int-to-br-ex": {
            "datapath": "ovs-system",
            "port": "patch-br-int-to-br-ex",
            "bridge": "br-int",
            "interface_type": "patch",
        },
        "patch-br-ex-to-br-int": {
            "datapath": "ovs-system",
            "port": "patch-br-ex-to-br-int",
            "bridge": "br-ex",
            "interface_type": "patch",
        },
        # br-dpdk is on the userspace datapath: neither it nor dpdk0 is a kernel vport.
    }
    got = wait_view(reader, lambda s: s.keys() == expected.keys(), "the topology")
    assert got == expected
    # The Open_vSwitch row was written by the second ovs-vsctl: wait for it too.
    view = wait_for(
        lambda: (v := reader.current()) is not None and "db_version" in v.system and v, what="system"
    )
    (system,) = [s for f in text_string_to_metric_families(view.system) for s in f.samples]
    assert system.name == "ovs_system_info" and system.labels == {
        "system_id": "chassis-1", "hostname": "compute-1", "ovs_version": "3.1.0", "db_version": "8.3.1",
    }  # fmt: skip


def test_ofport_when_set(server: OvsdbServer, reader: OvsdbReader[IdentityView]) -> None:
    # ofport is written by ovs-vswitchd; without one here, write it the way it does.
    server.vsctl(
        "add-br", "br0", "--", "add-port", "br0", "p1", "--", "set", "Interface", "p1", "ofport_request=7"
    )
    server.transact(
        {"op": "update", "table": "Interface", "where": [["name", "==", "p1"]], "row": {"ofport": 7}}
    )
    got = wait_view(reader, lambda s: "ofport" in s.get("p1", {}), "ofport")
    assert got["p1"]["ofport"] == "7" and "ofport" not in got["br0"]


def broken(view: IdentityView | None) -> dict[str, dict[str, object]]:
    """ovs_interface_broken_info by interface name, and ovs_bridge_broken_interfaces by bridge."""
    assert view is not None
    out: dict[str, dict[str, object]] = {}
    for family in text_string_to_metric_families(view.broken + view.bridges):
        for sample in family.samples:
            key = sample.labels.get("interface") or f"bridge {sample.labels['bridge']}"
            out[key] = {**sample.labels, "value": sample.value}
    return out


def test_interfaces_vswitchd_could_not_open(server: OvsdbServer, reader: OvsdbReader[IdentityView]) -> None:
    """What vswitchd writes when a VM's tap is gone under its row (iface_clear_db_record in
    vswitchd/bridge.c: ofport -1 and the error), and when a patch port has no peer (error only):
    followed as they change, as the rest of the row is."""
    server.vsctl(
        "add-br", "br-int", "--", "add-port", "br-int", "tap1", "--", "set", "Interface", "tap1",
        "external-ids:iface-id=port-1", "external-ids:vm-uuid=vm-1",
        "--", "add-port", "br-int", "patch-x", "--", "set", "Interface", "patch-x", "type=patch",
        "options:peer=nowhere",
    )  # fmt: skip
    gone = "could not open network device tap1 (No such device)"
    server.transact(
        {"op": "update", "table": "Interface", "where": [["name", "==", "tap1"]], "row": {"ofport": -1, "error": gone}},
        {"op": "update", "table": "Interface", "where": [["name", "==", "patch-x"]],
         "row": {"ofport": 3, "error": "No usable peer 'nowhere' exists in 'system' datapath."}},
    )  # fmt: skip
    got = wait_view(reader, lambda s: "tap1" not in s and "patch-x" in s, "tap1 without its identity")
    # The patch port is in ofproto (an ofport): its identity stays, and it is broken as well.
    assert got["patch-x"]["ofport"] == "3"
    assert broken(reader.current()) == {
        "tap1": {"bridge": "br-int", "interface": "tap1", "interface_type": "system", "iface_id": "port-1",
                 "vm_uuid": "vm-1", "error": gone, "value": 1},
        "patch-x": {"bridge": "br-int", "interface": "patch-x", "interface_type": "patch",
                    "error": "No usable peer 'nowhere' exists in 'system' datapath.", "value": 1},
        "bridge br-int": {"bridge": "br-int", "value": 2},
    }  # fmt: skip
    # The device comes back: vswitchd clears the error and gives an ofport.
    server.transact(
        {"op": "update", "table": "Interface", "where": [["name", "==", "tap1"]], "row": {"ofport": 5, "error": ["set", []]}}
    )  # fmt: skip
    got = wait_view(reader, lambda s: s.get("tap1", {}).get("ofport") == "5", "tap1 back")
    assert set(broken(reader.current())) == {"patch-x", "bridge br-int"}


def test_changes_show_up(server: OvsdbServer, reader: OvsdbReader[IdentityView]) -> None:
    server.vsctl("add-br", "br-int")
    wait_view(reader, lambda s: "br-int" in s, "the bridge")
    server.vsctl("add-port", "br-int", "tap1", "--", "set", "Interface", "tap1", "external-ids:iface-id=one")
    wait_view(reader, lambda s: s.get("tap1", {}).get("iface_id") == "one", "a new port")
    server.vsctl("set", "Interface", "tap1", "external-ids:iface-id=two", "external-ids:vm-uuid=vm2")
    got = wait_view(reader, lambda s: s.get("tap1", {}).get("iface_id") == "two", "changed external_ids")
    assert got["tap1"]["vm_uuid"] == "vm2"
    server.vsctl("remove", "Interface", "tap1", "external_ids", "vm-uuid")
    got = wait_view(reader, lambda s: "vm_uuid" not in s.get("tap1", {"vm_uuid": ""}), "a removed key")
    server.vsctl("del-port", "br-int", "tap1")
    wait_view(reader, lambda s: "tap1" not in s, "a deleted port")
    server.vsctl("del-br", "br-int")
    wait_view(reader, lambda s: s == {}, "a deleted bridge")


def zone_samples(view: IdentityView | None) -> dict[str, dict[str, str]]:
    """ovs_conntrack_zone_info by zone, parsed by prometheus_client's own parser."""
    assert view is not None
    return {
        sample.labels["zone"]: dict(sample.labels)
        for family in text_string_to_metric_families(view.zones)
        for sample in family.samples
    }


def test_conntrack_zones_as_ovn_records_them_on_br_int(
    server: OvsdbServer, reader: OvsdbReader[IdentityView]
) -> None:
    """ovn-controller writes external_ids:ct-zone-<logical port>=<zone> on br-int, and the Interface
    it binds the port to carries external_ids:iface-id=<logical port>: the reader follows both."""
    server.vsctl(
        "add-br", "br-int", "--", "add-port", "br-int", "tap1", "--", "set", "Interface", "tap1",
        "external-ids:iface-id=lsp1", "--", "set", "Bridge", "br-int", "external-ids:ct-zone-lsp1=1",
        "external-ids:ct-zone-lr0_dnat=2",
    )  # fmt: skip

    def zones(check: Any, what: str) -> dict[str, dict[str, str]]:
        def ready() -> list[dict[str, dict[str, str]]]:
            view = reader.current()
            got = zone_samples(view) if view is not None else {}
            return [got] if check(got) else []

        return wait_for(ready, what=what)[0]  # type: ignore[no-any-return]

    got = zones(lambda z: set(z) == {"1", "2"}, "both zones")
    assert got["1"] == {
        "zone": "1", "bridge": "br-int", "owner": "lsp1", "iface_id": "lsp1", "datapath": "ovs-system", "port": "tap1",
    }  # fmt: skip
    assert got["2"] == {"zone": "2", "bridge": "br-int", "owner": "lr0_dnat"}
    # ovn-controller moves a port to another zone, and forgets the router's when it goes.
    server.vsctl("set", "Bridge", "br-int", "external-ids:ct-zone-lsp1=5", "--", "remove", "Bridge", "br-int",
                 "external_ids", "ct-zone-lr0_dnat")  # fmt: skip
    got = zones(lambda z: set(z) == {"5"}, "the moved zone")
    assert got["5"]["port"] == "tap1"
    server.vsctl("del-port", "br-int", "tap1")
    got = zones(lambda z: "port" not in z.get("5", {"port": ""}), "the zone of an unbound port")
    assert got["5"] == {"zone": "5", "bridge": "br-int", "owner": "lsp1"}


def state_log(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage().split(": ", 1)[1] for r in caplog.records if r.name == LOGGER]


def test_restart_nothing_stale_one_log_line_per_change(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    with ovsdb_server() as server:
        server.vsctl("add-br", "br-int")
        reader = make_reader(server.remote)
        try:
            wait_view(reader, lambda s: "br-int" in s, "the first copy")
            server.kill()
            wait_for(lambda: reader.current() is None, what="the copy to be dropped")
            # Several reconnect attempts fail while it is down (backoff 0.2 s to 1 s) ...
            wait_for(lambda: len(state_log(caplog)) >= 3, what="the failures to be logged")
            before = len(caplog.records)
            wait_for(lambda: reader.current() is None and _sleep(2.5), what="a while down")
            assert reader.current() is None
            # ... and none of them logs again.
            assert len(caplog.records) == before
            server.restart()
            server.vsctl("add-port", "br-int", "tap9")
            wait_view(reader, lambda s: "tap9" in s, "the copy after the restart")
        finally:
            reader.close()
    assert state_log(caplog) == [
        "connected",
        "connection lost; reconnecting",
        "cannot connect: Connection refused (errno 111 ECONNREFUSED); retrying with backoff",
        "connected",
    ]


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return True


def test_starts_before_the_server(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    with ovsdb_server(start=False) as server:
        reader = make_reader(server.remote)
        try:
            wait_for(lambda: state_log(caplog), what="the failure to be logged")
            assert reader.current() is None
            server.start()
            server.vsctl("add-br", "br0")
            wait_view(reader, lambda s: "br0" in s, "the copy once the server is up")
        finally:
            reader.close()
    assert state_log(caplog) == [
        "cannot connect: No such file or directory (errno 2 ENOENT); retrying with backoff",
        "connected",
    ]


def test_bad_values_are_made_safe(
    server: OvsdbServer, reader: OvsdbReader[IdentityView], tmp_path: Path
) -> None:
    """Huge, control-character and quote-laden values; ovsdb-server itself refuses non-UTF-8 and NUL."""
    server.vsctl("add-br", "br0", "--", "add-port", "br0", "p0")
    huge = "x" * 100_000
    nasty = 'a"b\\c\nd\re\x1b[31m\u0085f \U0001f600 \u00e9'
    server.transact(
        {
            "op": "update",
            "table": "Interface",
            "where": [["name", "==", "p0"]],
            "row": {"external_ids": ["map", [["iface-id", huge], ["vm-uuid", nasty], ["pod_name", ""]]]},
        }
    )
    got = wait_view(reader, lambda s: "iface_id" in s.get("p0", {}), "the bad values")
    assert got["p0"]["iface_id"] == "x" * (MAX_LABEL_VALUE_LENGTH - 1) + "\u2026"
    assert got["p0"]["vm_uuid"] == 'a"b\\c\ufffdd\ufffde\ufffd[31m\ufffdf \U0001f600 \u00e9'
    assert got["p0"]["pod_name"] == ""
    view = reader.current()
    assert view is not None
    body = tmp_path / "metrics.txt"
    body.write_bytes(
        (
            family_header(*INTERFACE_INFO[:1], "info", INTERFACE_INFO[1], Format.TEXT) + view.interfaces
        ).encode()
    )
    res = subprocess.run(
        [str(promtool()), "check", "metrics"], stdin=body.open("rb"), capture_output=True, check=False
    )
    assert res.returncode == 0, res.stderr


def test_non_utf8_and_surrogates_from_a_broken_server(caplog: pytest.LogCaptureFixture) -> None:
    """What ovsdb-server never sends: a lone surrogate escape is replaced, invalid UTF-8 drops the connection."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    with ovsdb_server() as server:
        server.vsctl("add-br", "br0", "--", "add-port", "br0", "p0", "--", "set", "Interface", "p0",
                     "external-ids:iface-id=MARKER")  # fmt: skip
        proxy = RecordingProxy(server.socket, server.directory, rewrite=(b"MARKER", b"a\\udc00b"))
        reader = make_reader(proxy.remote)
        try:
            got = wait_view(reader, lambda s: "iface_id" in s.get("p0", {}), "the rewritten value")
            assert got["p0"]["iface_id"] == "a\ufffdb"
            view = reader.current()
            assert view is not None
            view.interfaces.encode("utf-8")  # would raise on a lone surrogate
        finally:
            reader.close()
            proxy.close()
        proxy = RecordingProxy(server.socket, server.directory, rewrite=(b"MARKER", b"\xff\xfe"))
        reader = make_reader(proxy.remote)
        try:
            wait_for(lambda: proxy.connections >= 3, what="reconnects after invalid UTF-8")
            assert reader.current() is None
            assert reader.state.startswith("connection lost") or reader.state.startswith("cannot connect")
        finally:
            reader.close()
            proxy.close()


def _schema_without(tmp_path: Path, drop: dict[str, list[str]]) -> Path:
    schema = json.loads(schema_path().read_text())
    for table, columns in drop.items():
        if not columns:
            del schema["tables"][table]
        for column in columns:
            del schema["tables"][table]["columns"][column]
    path = tmp_path / "old.ovsschema"
    path.write_text(json.dumps(schema))
    return path


def test_schema_without_optional_columns_degrades(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    schema = _schema_without(
        tmp_path, {"Interface": ["external_ids", "ofport", "options"], "Open_vSwitch": ["db_version"]}
    )
    with ovsdb_server(schema) as server:
        server.vsctl(
            "add-br", "br0", "--", "add-port", "br0", "g0", "--", "set", "Interface", "g0", "type=geneve"
        )
        server.vsctl("set", "Open_vSwitch", ".", "ovs_version=2.17.9")
        reader = make_reader(server.remote)
        try:
            got = wait_view(reader, lambda s: "genev_sys_6081" in s, "the copy")
            assert got["genev_sys_6081"] == {
                "datapath": "ovs-system", "port": "genev_sys_6081", "bridge": "br0", "interface_type": "geneve",
            }  # fmt: skip
            view = reader.current()
            assert view is not None and view.system == 'ovs_system_info{ovs_version="2.17.9"} 1\n'
        finally:
            reader.close()
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert warnings == [
        f"ovsdb {server.remote}: schema 8.3.1 has no Open_vSwitch.db_version, Interface.ofport,"
        " Interface.external_ids, Interface.options; those labels are left out"
    ]


def test_schema_without_a_required_column_serves_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    with ovsdb_server(_schema_without(tmp_path, {"Port": ["interfaces"]})) as server:
        reader = make_reader(server.remote)
        try:
            wait_for(lambda: state_log(caplog), what="the log line")
            _sleep(1.5)
            assert reader.current() is None
        finally:
            reader.close()
    assert state_log(caplog) == [
        "unusable schema: the server's schema has no Port.interfaces column; retrying"
    ]


def test_only_read_only_methods_on_the_wire() -> None:
    """Everything the reader sends, through connect, changes, a restart and close, is read-only."""
    with ovsdb_server() as server:
        proxy = RecordingProxy(server.socket, server.directory)
        reader = make_reader(proxy.remote)
        try:
            server.vsctl("add-br", "br0")
            wait_view(reader, lambda s: "br0" in s, "the first copy")
            server.vsctl("add-port", "br0", "p1")
            wait_view(reader, lambda s: "p1" in s, "a change")
            server.restart()
            server.vsctl("add-port", "br0", "p2")
            wait_view(reader, lambda s: "p2" in s, "the copy after a restart")
        finally:
            reader.close()
            proxy.close()
    assert proxy.violations == []
    seen = set(proxy.methods)
    assert seen <= READ_ONLY_METHODS
    # Not vacuous: the reader really fetched schemas and monitored, through this proxy, twice.
    # (No echo: the ovs library sends no inactivity probes on unix sockets.)
    assert {"get_schema", "monitor_cond", "monitor_cond_since", "set_db_change_aware"} <= seen, seen
    assert proxy.methods.count("monitor_cond_since") >= 2


def test_the_proxy_catches_a_write() -> None:
    """The proxy fails what a writer sends: ovs-vsctl through it is cut off and recorded."""
    with ovsdb_server() as server:
        proxy = RecordingProxy(server.socket, server.directory)
        try:
            res = subprocess.run(
                [str(vsctl_path()), f"--db={proxy.remote}", "--no-wait", "--timeout=1", "add-br", "br0"],
                capture_output=True, check=False,
            )  # fmt: skip
        finally:
            proxy.close()
        assert res.returncode != 0
        assert [m["method"] for m in proxy.violations] == ["transact"]
        assert "br0" not in server.vsctl("list-br")


def test_identity_source_renders_both_formats(server: OvsdbServer) -> None:
    server.vsctl("add-br", "br0", "--", "set", "Open_vSwitch", ".", "external-ids:system-id=s1")
    source = IdentitySource(server.remote, DEFAULT_EXTERNAL_IDS)
    try:
        wait_for(lambda: source.render(Format.TEXT)[1], what="the first copy")
        text, ok = source.render(Format.TEXT)
        om, _ = source.render(Format.OPENMETRICS)
    finally:
        source.close()
    assert ok
    assert "".join(text).splitlines() == [
        "# HELP ovs_interface_info A kernel vport as OVSDB describes it: bridge, ofport, interface type and"
        " the allowed Interface external_ids (value 1). Join on (instance, job, netns, datapath, port).",
        "# TYPE ovs_interface_info gauge",
        'ovs_interface_info{datapath="ovs-system",port="br0",bridge="br0",interface_type="internal"} 1',
        "# HELP ovs_bridge_broken_interfaces Interfaces of this kernel-datapath bridge that ovs-vswitchd could"
        " not open or configure (the ovs_interface_broken_info series of the bridge).",
        "# TYPE ovs_bridge_broken_interfaces gauge",
        'ovs_bridge_broken_interfaces{bridge="br0"} 0',
        "# HELP ovs_system_info The Open vSwitch instance, from OVSDB's Open_vSwitch table (value 1).",
        "# TYPE ovs_system_info gauge",
        'ovs_system_info{system_id="s1"} 1',
    ]
    assert "# TYPE ovs_interface info" in "".join(om) and "# TYPE ovs_system info" in "".join(om)


def test_exporter_serves_identity_and_survives_ovsdb_restarts() -> None:
    """The real CLI with --collector.ovsdb: identity joins the scrape, goes when OVSDB goes, comes back."""
    with ovsdb_server() as server:
        server.vsctl("add-br", "br0", "--", "add-port", "br0", "tap0", "--", "set", "Interface", "tap0",
                     "external-ids:iface-id=port-1", "external-ids:secret=never-a-label")  # fmt: skip
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--web.listen-address", "127.0.0.1:0", "--collector.ovsdb",
             "--collector.ovsdb.socket", server.remote],
            stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        log: list[str] = []
        try:
            assert proc.stderr is not None
            threading.Thread(target=lambda: log.extend(iter(proc.stderr.readline, "")), daemon=True).start()
            port = int(wait_for(lambda: _listening_port(log), what="the exporter to listen"))

            def scrape() -> str:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", "/metrics")
                return conn.getresponse().read().decode()

            def kernel_part(body: str) -> list[str]:
                return [
                    line for line in body.splitlines()
                    if line.startswith(("ovs_up", "ovs_scrape_errors", "ovs_datapath", "ovs_vport"))
                ]  # fmt: skip

            info = 'ovs_interface_info{datapath="ovs-system",port="tap0",bridge="br0",interface_type="system",iface_id="port-1"} 1'
            up, down = (
                'ovs_scrape_collector_success{collector="ovsdb"} 1',
                'ovs_scrape_collector_success{collector="ovsdb"} 0',
            )
            body = wait_for(lambda: b if info in (b := scrape()) else "", what="identity in the scrape")
            assert "never-a-label" not in body and "secret" not in body
            assert (
                up in body.splitlines()
                and 'ovs_scrape_collector_duration_seconds{collector="ovsdb"} ' in body
            )
            kernel_before = kernel_part(body)
            server.kill()
            body = wait_for(
                lambda: b if "ovs_interface_info" not in (b := scrape()) else "", what="identity gone"
            )
            assert "ovs_system_info" not in body and down in body.splitlines()
            # The kernel side is served as before (on this host: no module, so ovs_up 0 and
            # one more scrape error each time; compare what does not count scrapes).
            assert [x for x in kernel_part(body) if "errors" not in x] == [
                x for x in kernel_before if "errors" not in x
            ]
            server.restart()
            body = wait_for(
                lambda: b if info in (b := scrape()) else "", what="identity back after the restart"
            )
            assert up in body.splitlines()
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    messages = [line for line in log if "ovsdb" in line]
    assert len([m for m in messages if "connected" in m and "lost" not in m]) == 2, messages
    assert len([m for m in messages if "connection lost" in m]) == 1, messages


def _listening_port(log: list[str]) -> int | None:
    for line in log:
        match = re.search(r"listening on \S+:(\d+)", line)
        if match:
            return int(match.group(1))
    return None


_UNPRIVILEGED_READER = """
import sys, time
from exporter.ovsdb.reader import OvsdbReader
reader = OvsdbReader(sys.argv[1], lambda s: sorted(i.name for b in s.bridges for i in b.interfaces), timeout=2.0)
reader.start()
deadline = time.monotonic() + 10
while reader.state == "starting" and time.monotonic() < deadline:
    time.sleep(0.05)
print(reader.current(), reader.state)
reader.close()
"""


def test_unprivileged_reader_through_a_read_only_mount(tmp_path: Path) -> None:
    """As nobody, with only a supplementary group that may write db.sock, through a read-only bind mount."""
    if os.geteuid() != 0:
        pytest.skip("needs root to bind-mount and to change user")
    python = require_tool("python3", [Path("/usr/bin/python3")], "apt-get install python3")
    # The reader and the ovs library, copied where nobody can read them (the checkout may not be).
    lib = Path(tempfile.mkdtemp(prefix="ovsdb-lib-", dir="/tmp"))
    try:
        (lib / "exporter" / "ovsdb").mkdir(parents=True)
        for name in ("__init__.py", "ovsdb/__init__.py", "ovsdb/reader.py"):
            shutil.copy(ROOT / "exporter" / name, lib / "exporter" / name)
        for module in (ovs, sortedcontainers):
            shutil.copytree(Path(module.__file__).parent, lib / module.__name__)
        for path in [lib, *lib.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        with ovsdb_server() as server:
            server.vsctl("add-br", "br0", "--", "add-port", "br0", "tap0")
            os.chown(server.socket, 0, 4242)
            server.socket.chmod(0o770)
            server.directory.chmod(0o755)
            mount = Path(tempfile.mkdtemp(prefix="ovsdb-ro-", dir="/tmp"))
            mount.chmod(0o755)
            try:
                results = {}
                for group in (4242, 4343):
                    script = (
                        f"mount --bind -o ro {server.directory} {mount} && "
                        f"! touch {mount}/x 2>/dev/null && "
                        f"exec setpriv --reuid=65534 --regid=65534 --groups={group} "
                        f"env PYTHONPATH={lib} {python} -c '{_UNPRIVILEGED_READER}' unix:{mount}/db.sock"
                    )
                    res = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True,
                                         timeout=60, check=False)  # fmt: skip
                    assert res.returncode == 0, res.stderr
                    results[group] = res.stdout.strip()
            finally:
                mount.rmdir()
    finally:
        shutil.rmtree(lib, ignore_errors=True)
    assert results[4242] == "['br0', 'tap0'] connected"
    assert results[4343] == "None cannot connect: Permission denied (errno 13 EACCES); retrying with backoff"


def test_incremental_copy_equals_a_fresh_one(server: OvsdbServer, reader: OvsdbReader[IdentityView]) -> None:
    """After a run of changes of every kind, the copy kept up to date equals one read from scratch."""
    import random

    rng = random.Random(10)
    server.vsctl("add-br", "br-int", "--", "add-br", "br-ex", "--", "add-br", "br-u", "--", "set", "Bridge",
                 "br-u", "datapath_type=netdev")  # fmt: skip
    ports: set[str] = set()
    for step in range(40):
        action = rng.choice(["add", "add", "del", "ids", "type", "move", "bond"]) if ports else "add"
        if action == "add":
            name = f"p{step}"
            server.vsctl("add-port", rng.choice(["br-int", "br-ex", "br-u"]), name, "--", "set", "Interface", name,
                         f"external-ids:iface-id=id{step}", f"external_ids:pod_name=pod{step}")  # fmt: skip
            ports.add(name)
        elif action == "del":
            name = rng.choice(sorted(ports))
            server.vsctl("del-port", name)
            ports.discard(name)
        elif action == "ids":
            name = rng.choice(sorted(ports))
            server.vsctl(
                "set", "Interface", name, f"external-ids:vm-uuid=vm{step}", f"external-ids:iface-id=n{step}"
            )
        elif action == "type":
            name = rng.choice(sorted(ports))
            server.vsctl("set", "Interface", name, "type=vxlan", f"options:dst_port={4000 + step}")
        elif action == "move":
            name = rng.choice(sorted(ports))
            server.vsctl("del-port", name, "--", "add-port", rng.choice(["br-int", "br-ex"]), name)
        else:
            name = f"bond{step}"
            server.vsctl("add-bond", "br-int", name, f"{name}a", f"{name}b")
        if step % 8 == 0:
            time.sleep(0.1)  # let some changes arrive one by one, others together
    fresh = make_reader(server.remote)
    try:
        expected = wait_for(lambda: fresh.current(), what="a fresh copy")
        wait_for(lambda: (v := reader.current()) is not None and v.interfaces == expected.interfaces, timeout=5,
                 what="the kept copy to equal the fresh one")  # fmt: skip
        assert reader.rebuilds > 5, "the changes came in several updates"
    finally:
        fresh.close()


@pytest.mark.xfail(
    strict=True, reason="ovs.jsonrpc.Connection.recv drops a UTF-8 decoder holding a split character"
)
def test_library_reads_a_character_split_between_reads() -> None:
    """A known limitation of the ovs library (4.0.0), kept here so that a fix upstream is noticed.

    When one 4096-byte read completes a message and ends inside a multibyte character,
    the next read fails with EILSEQ and the connection drops; the reader then reconnects
    (docs/ovsdb.md, "Bad values"). Values of ASCII only (UUIDs, MACs, Kubernetes names)
    never meet it. Strict: the day it passes, this test fails and the docs need updating.
    """
    import errno
    import socket

    import ovs.jsonrpc

    writer, reader_sock = socket.socketpair()
    first = b'{"method":"echo","params":[],"id":"1"}'
    prefix = b'{"method":"update","params":["x","'
    second = prefix + b"a" * (4096 - len(first) - len(prefix) - 1) + "\u00e4".encode() * 8 + b'"],"id":null}'
    writer.sendall(first + second)
    reader_sock.setblocking(False)

    class Stream:
        name = "socketpair"

        def recv(self, n: int) -> tuple[int, bytes | None]:
            try:
                return 0, reader_sock.recv(n)
            except BlockingIOError:
                return errno.EAGAIN, None

        def close(self) -> None:
            reader_sock.close()

    conn = ovs.jsonrpc.Connection(Stream())
    methods = []
    for _ in range(2):
        error, message = conn.recv()
        assert error == 0, f"recv failed: {errno.errorcode.get(error, error)}"
        methods.append(message.method)
    writer.close()
    assert methods == ["echo", "update"]


def test_online_schema_conversion(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """ovsdb-client convert cancels the monitor: the copy is dropped, reloaded, and a lost column degrades."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    with ovsdb_server() as server:
        server.vsctl("add-br", "br0", "--", "add-port", "br0", "tap0", "--", "set", "Interface", "tap0",
                     "external-ids:iface-id=x")  # fmt: skip
        proxy = RecordingProxy(server.socket, server.directory)
        reader = make_reader(proxy.remote)
        reader.SETTLE_TIMEOUT = 1.0
        try:
            wait_view(reader, lambda s: s.get("tap0", {}).get("iface_id") == "x", "the first copy")
            older = _schema_without(tmp_path, {"Interface": ["external_ids"]})
            subprocess.run(
                ["ovsdb-client", "convert", server.remote, str(older)], check=True, capture_output=True
            )
            got = wait_view(
                reader, lambda s: "tap0" in s and "iface_id" not in s["tap0"], "the converted copy"
            )
            assert got["tap0"]["bridge"] == "br0"
        finally:
            reader.close()
            proxy.close()
    # What the Idl sends when the server cancels its monitor is read-only too.
    assert proxy.violations == [] and "monitor_cancel" in proxy.methods, proxy.methods
    # The new monitor asks for a column the converted schema lacks; the server refuses it, so
    # no complete copy comes (SETTLE_TIMEOUT, 30 s by default) and the reader starts over.
    assert state_log(caplog) == [
        "connected",
        "copy being reloaded",
        "no complete copy within 1 s; reconnecting",
        "schema 8.3.1 has no Interface.external_ids; those labels are left out",
        "connected",
    ]
