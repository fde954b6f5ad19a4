"""A real ovsdb-server holding one Interface per benchmark vport, for the OVSDB side of ``make bench``.

The Interfaces are named after the vports of ``benchmarks.dataset`` (same seed),
so that the identity the exporter serves joins the vports it dumps: tap/qvo/veth
ports on ``br-int`` with the external_ids os-vif writes, the bridges' own
internal ports, one tunnel Interface per tunnel vport, and patch ports to make
up the count. It goes in with ``ovsdb-client transact``, 200 Interfaces at a time.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

from benchmarks.dataset import fake_datapaths
from tests.ovsdb_server import OvsdbServer, ovsdb_server

# Tunnel vports of the dataset -> the Interface type ovs-vswitchd would have made them from.
_TUNNELS = {"vxlan_sys_4789": "vxlan", "genev_sys_6081": "geneve", "gre_sys": "gre", "erspan_sys": "erspan"}


def interfaces(count: int, vports: int) -> list[tuple[str, str, str, dict[str, str]]]:
    """``count`` Interfaces (bridge, name, type, external_ids) over the dataset of ``vports`` vports."""
    rows: list[tuple[str, str, str, dict[str, str]]] = []
    for datapath, ports in fake_datapaths(vports):
        for vport in ports:
            if vport.name == datapath.name:
                continue  # the datapath's own port: vswitchd's, not in OVSDB
            if vport.name.startswith("br-"):
                rows.append((vport.name, vport.name, "internal", {}))
            elif vport.name in _TUNNELS:
                rows.append(("br-int", f"tun-{vport.name}", _TUNNELS[vport.name], {}))
            else:
                n = len(rows)
                ids = {
                    "iface-id": str(uuid.UUID(int=n)),
                    "iface-status": "active",
                    "attached-mac": f"fa:16:3e:{n >> 16 & 255:02x}:{n >> 8 & 255:02x}:{n & 255:02x}",
                    "vm-uuid": str(uuid.UUID(int=n // 2 + (1 << 64))),  # two ports per VM
                }
                rows.append(("br-int", vport.name, "", ids))
    patch = 0
    while len(rows) < count:
        rows.append(("br-int", f"patch-{patch}", "patch", {}))
        patch += 1
    return rows[:count]


def _transact(server: OvsdbServer, ops: list[dict[str, Any]]) -> None:
    res = subprocess.run(
        ["ovsdb-client", "--timeout=120", "transact", server.remote, json.dumps(["Open_vSwitch", *ops])],
        capture_output=True,
        text=True,
        check=True,
    )
    if '"error"' in res.stdout:
        raise RuntimeError(f"populating OVSDB failed: {res.stdout[:500]}")


def populate(server: OvsdbServer, rows: list[tuple[str, str, str, dict[str, str]]]) -> None:
    """The bridges first, then the Interfaces in transactions small enough for one argument (128 KiB)."""
    bridges = list(dict.fromkeys(bridge for bridge, _, _, _ in rows))
    ops: list[dict[str, Any]] = [
        {"op": "insert", "table": "Bridge", "uuid-name": f"b{j}", "row": {"name": bridge}}
        for j, bridge in enumerate(bridges)
    ]
    system = {
        "bridges": ["set", [["named-uuid", f"b{j}"] for j in range(len(bridges))]],
        "ovs_version": "3.1.0",
        "external_ids": ["map", [["system-id", "bench"], ["hostname", "bench"]]],
    }
    ops.append({"op": "insert", "table": "Open_vSwitch", "row": system})
    _transact(server, ops)
    for start in range(0, len(rows), 200):
        ops = []
        ports: dict[str, list[list[str]]] = {}
        for i, (bridge, name, type_, ids) in enumerate(rows[start : start + 200], start):
            row = {"name": name, "type": type_, "external_ids": ["map", sorted(ids.items())]}
            ops.append({"op": "insert", "table": "Interface", "uuid-name": f"i{i}", "row": row})
            port = {"name": name, "interfaces": ["named-uuid", f"i{i}"]}
            ops.append({"op": "insert", "table": "Port", "uuid-name": f"p{i}", "row": port})
            ports.setdefault(bridge, []).append(["named-uuid", f"p{i}"])
        for bridge, uuids in ports.items():
            ops.append({
                "op": "mutate", "table": "Bridge", "where": [["name", "==", bridge]],
                "mutations": [["ports", "insert", ["set", uuids]]],
            })  # fmt: skip
        _transact(server, ops)


@contextlib.contextmanager
def loaded_server(count: int, vports: int) -> Iterator[OvsdbServer]:
    with ovsdb_server() as server:
        populate(server, interfaces(count, vports))
        yield server
