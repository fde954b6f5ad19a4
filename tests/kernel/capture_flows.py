"""Capture real flow dumps for the host's decoding tests (``python -m tests.vm capture-flows``).

Builds a datapath with a veth port (its peer in a namespace) and a VXLAN port, installs flows of
every shape the exporter reads (with and without a UFID, forwarding, empty actions, the explicit
drop action where the kernel has it, a later pass after a recirculation, tunnel metadata before
the input port, no input port), sends packets through the drop flows, then writes into OUTDIR:

* ``flows-omit-mask.bin``: the dump as the exporter asks for it (OVS_UFID_F_OMIT_MASK), every
  datagram exactly as the kernel sent it, concatenated;
* ``flows-full.bin``: the same table dumped with masks, as ``ovs-dpctl dump-flows`` reads it;
* ``expected.json``: the family id, and per file each flow as this package's independent client
  (``tests.kernel.ovsflow``) reads it: input port, recirculation id, whether it drops and its
  code, packets, bytes, and the UFID when it has one.

Usage: python -m tests.kernel.capture_flows OUTDIR
"""

from __future__ import annotations

import json
import platform
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

from .netns import in_netns
from .ovsflow import (
    FLOW_FAMILY,
    KEY_ATTR_TUNNEL,
    UFID_F_OMIT_MASK,
    FlowInfo,
    FlowTable,
    drop,
    ipv4_match,
    output,
)
from .ovsnl import VPORT_VXLAN, OvsNetlink, nla
from .topology import Topology, ip_batch

DP = "ovs-cap"
NETNS = "ovsns-cap"


def tunnel_match(in_port: int, dst: str) -> tuple[bytes, bytes]:
    """A flow from a tunnel port: OVS_KEY_ATTR_TUNNEL (id, IPv4 source and destination, TTL)."""
    key, mask = ipv4_match(in_port, dst)
    tunnel = (
        nla(0, struct.pack("!Q", 42))  # OVS_TUNNEL_KEY_ATTR_ID
        + nla(1, socket.inet_aton("198.18.50.1"))  # IPV4_SRC
        + nla(2, socket.inet_aton("198.18.50.2"))  # IPV4_DST
        + nla(4, b"\x40")  # TTL
    )
    tunnel_mask = nla(0, b"\xff" * 8) + nla(1, b"\xff" * 4) + nla(2, b"\xff" * 4) + nla(4, b"\xff")
    return nla(KEY_ATTR_TUNNEL | 0x8000, tunnel) + key, nla(KEY_ATTR_TUNNEL | 0x8000, tunnel_mask) + mask


def summary(flow: FlowInfo) -> dict[str, Any]:
    reason = flow.drop_reason
    return {
        "ufid": None if flow.ufid is None else flow.ufid.hex(),
        "in_port": flow.in_port,
        "recirc_id": flow.recirc_id,
        "drop": reason is not None,
        "reason": None if reason in (None, "unspecified") else int(reason),  # type: ignore[arg-type]
        "packets": flow.packets,
        "bytes": flow.bytes,
    }


def capture(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    nl = OvsNetlink()
    topo = Topology(nl)
    try:
        dp = topo.add_datapath(DP)
        topo.add_netns(NETNS)
        topo.add_veth(DP, "vc0")  # port 1
        vxlan = nl.new_vport(dp, "vxc", VPORT_VXLAN, dst_port=4799).port_no
        ip_batch(["link set vc0p netns " + NETNS])
        ip_batch(
            ["link set vc0p up", "addr add 198.18.50.2/24 dev vc0p"]
            + [f"neigh add 198.18.50.{h} lladdr 02:00:00:00:50:{h:02x} dev vc0p" for h in range(100, 110)],
            netns=NETNS,
        )
        table = FlowTable(nl)
        flows: list[tuple[tuple[bytes, bytes], bytes, bytes | None]] = [
            (ipv4_match(1, "198.18.50.100"), b"", bytes(range(16))),
            (ipv4_match(1, "198.18.50.101"), b"", None),
            (ipv4_match(1, "198.18.50.102"), output(0), bytes(range(16, 32))),
            (ipv4_match(1, "198.18.50.103"), output(0), None),
            (ipv4_match(1, "198.18.50.104", recirc_id=9), b"", bytes(range(32, 48))),
            (ipv4_match(None, "198.18.50.105"), b"", None),
            (tunnel_match(vxlan, "198.18.50.106"), output(1), bytes(range(48, 64))),
        ]
        explicit = [(ipv4_match(1, "198.18.50.107"), drop(0), bytes(range(64, 80))),
                    (ipv4_match(1, "198.18.50.108"), drop(3), None)]  # fmt: skip
        for (key, mask), actions, ufid in flows:
            table.new(dp, key, actions, mask, ufid=ufid)
        for (key, mask), actions, ufid in explicit:
            try:
                table.new(dp, key, actions, mask, ufid=ufid)
            except OSError as err:
                print(f"explicit drop refused by {platform.release()}: {err}")
        with in_netns(NETNS):
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for host, count in ((100, 3), (101, 2), (102, 4), (103, 1), (107, 5), (108, 6)):
            for _ in range(count):
                sender.sendto(b"x" * 64, (f"198.18.50.{host}", 9))
        sender.close()
        time.sleep(0.5)
        expected: dict[str, Any] = {
            "kernel": platform.release(),
            "family": nl.family(FLOW_FAMILY),
            "dumps": {},
        }
        for name, flags in (("flows-omit-mask.bin", UFID_F_OMIT_MASK), ("flows-full.bin", 0)):
            dump = table.dump(dp, flags)
            (out / name).write_bytes(dump.raw)
            expected["dumps"][name] = [summary(FlowInfo.decode(m)) for m in dump.messages]
        (out / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
        print(
            f"captured {len(expected['dumps']['flows-full.bin'])} flows from {platform.release()} into {out}"
        )
    finally:
        topo.teardown()
        nl.close()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    capture(Path(sys.argv[1]))
