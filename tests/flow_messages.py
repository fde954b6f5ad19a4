"""Test-side encoder of ``ovs_flow`` dump replies, byte for byte as the kernel lays them out.

Layouts follow include/uapi/linux/openvswitch.h and the fill order of net/openvswitch/datapath.c
(``ovs_flow_cmd_fill_info``: UFID or, for a flow without one, its key; the masked key when there
is a UFID; the mask unless omitted; USED, STATS, TCP_FLAGS; ACTIONS) and flow_netlink.c
(``__ovs_nla_put_key``: RECIRC_ID, DP_HASH, PRIORITY, TUNNEL when the packet came through a
tunnel, IN_PORT, SKB_MARK, the conntrack fields, then the packet's headers). The unit tests and
the benchmarks feed these bytes to the exporter's real decoder; only the kernel is replaced.
"""

from __future__ import annotations

import errno
import random
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from exporter.kernel.families.datapath import OVS_DATAPATH_FAMILY
from exporter.kernel.families.vport import OVS_VPORT_FAMILY
from exporter.kernel.netlink import NLM_F_DUMP, NLM_F_REQUEST, OVS_CMD_GET
from tests.ovs_messages import (
    DATAPATH_FAMILY_ID,
    NLA_F_NESTED,
    NLM_F_MULTI,
    VPORT_FAMILY_ID,
    FakeDatapath,
    FakeKernelSocket,
    done,
    genl_ovs,
    nla,
    nlmsg,
)

FLOW_FAMILY_ID = 0x1C  # arbitrary, as the kernel assigns ids at module load
DP_MAX_PORTS = 65535

# enum ovs_flow_attr, ovs_key_attr, ovs_action_attr (include/uapi/linux/openvswitch.h), written
# out again here rather than imported: the tests check the exporter's tables against these.
FLOW_KEY, FLOW_ACTIONS, FLOW_STATS, FLOW_TCP_FLAGS, FLOW_USED, FLOW_MASK, FLOW_UFID = 1, 2, 3, 4, 5, 7, 9
KEY_PRIORITY, KEY_IN_PORT, KEY_ETHERNET, KEY_ETHERTYPE, KEY_IPV4 = 2, 3, 4, 6, 7
KEY_TCP, KEY_SKB_MARK, KEY_TUNNEL, KEY_DP_HASH, KEY_RECIRC_ID = 9, 15, 16, 19, 20
KEY_CT_STATE, KEY_CT_ZONE, KEY_CT_MARK, KEY_CT_LABELS = 22, 23, 24, 25
ACTION_OUTPUT, ACTION_USERSPACE, ACTION_CT, ACTION_RECIRC, ACTION_DROP = 1, 2, 12, 7, 24


@dataclass
class FakeFlow:
    in_port: int | None = 1  # None: the key carries no IN_PORT (DP_MAX_PORTS in the kernel)
    recirc_id: int = 0
    ufid: bytes | None = None
    packets: int = 0
    nbytes: int = 0
    used: int | None = None
    tcp_flags: int | None = None
    actions: list[tuple[int, bytes]] = field(default_factory=lambda: [(ACTION_OUTPUT, struct.pack("=I", 2))])
    tunnel: bytes | None = None  # the TUNNEL nest's payload, for a flow from a tunnel port
    ipv4_dst: int = 0x0A000001
    mask: bool = False  # include the mask, as a dump without OVS_UFID_F_OMIT_MASK does
    extra_key: bytes = b""  # attributes a newer kernel might add at the key's end


def key_attrs(flow: FakeFlow) -> bytes:
    parts = [
        nla(KEY_RECIRC_ID, struct.pack("=I", flow.recirc_id)),
        nla(KEY_DP_HASH, struct.pack("=I", 0)),
        nla(KEY_PRIORITY, struct.pack("=I", 0)),
    ]
    if flow.tunnel is not None:
        parts.append(nla(KEY_TUNNEL | NLA_F_NESTED, flow.tunnel))
    if flow.in_port is not None:
        parts.append(nla(KEY_IN_PORT, struct.pack("=I", flow.in_port)))
    parts += [
        nla(KEY_SKB_MARK, struct.pack("=I", 0)),
        nla(KEY_CT_STATE, struct.pack("=I", 0)),
        nla(KEY_CT_ZONE, struct.pack("=H", 0)),
        nla(KEY_CT_MARK, struct.pack("=I", 0)),
        nla(KEY_CT_LABELS, b"\0" * 16),
        nla(KEY_ETHERNET, bytes.fromhex("020000000001020000000002")),
        nla(KEY_ETHERTYPE, struct.pack("!H", 0x0800)),
        nla(KEY_IPV4, struct.pack("!II", 0x0A000002, flow.ipv4_dst) + b"\x06\0\x40\0"),
        nla(KEY_TCP, struct.pack("!HH", 40000, 80)),
    ]
    return b"".join(parts) + flow.extra_key


def flow_attrs(flow: FakeFlow) -> bytes:
    key = key_attrs(flow)
    parts = []
    if flow.ufid is not None:
        parts.append(nla(FLOW_UFID, flow.ufid))
    parts.append(nla(FLOW_KEY, key))  # the identifier without a UFID, the masked key with one
    if flow.mask:
        parts.append(nla(FLOW_MASK, key))
    if flow.used is not None:
        parts.append(nla(FLOW_USED, struct.pack("=Q", flow.used)))
    if flow.packets:
        parts.append(nla(FLOW_STATS, struct.pack("=QQ", flow.packets, flow.nbytes)))
    if flow.tcp_flags:
        parts.append(nla(FLOW_TCP_FLAGS, struct.pack("=B", flow.tcp_flags)))
    parts.append(nla(FLOW_ACTIONS, b"".join(nla(atype, payload) for atype, payload in flow.actions)))
    return b"".join(parts)


def flow_message(seq: int, dp_ifindex: int, flow: FakeFlow, family: int = FLOW_FAMILY_ID) -> bytes:
    payload = genl_ovs(1, 1, dp_ifindex, flow_attrs(flow))  # OVS_FLOW_CMD_NEW
    return nlmsg(family, NLM_F_MULTI, seq, payload)


def flow_dump(
    seq: int, dp_ifindex: int, flows: list[FakeFlow], datagram_size: int = 32768, family: int = FLOW_FAMILY_ID
) -> list[bytes]:
    """A dump's datagrams as the kernel fills them: messages packed up to ``datagram_size``, DONE last."""
    datagrams: list[bytes] = []
    current = b""
    for flow in flows:
        message = flow_message(seq, dp_ifindex, flow, family)
        message += b"\0" * (-len(message) % 4)
        if current and len(current) + len(message) > datagram_size:
            datagrams.append(current)
            current = b""
        current += message
    return [*datagrams, current + done(seq)] if current else [*datagrams, done(seq)]


def drop_action(reason: int) -> list[tuple[int, bytes]]:
    return [(ACTION_DROP, struct.pack("=I", reason))]


def ufid(n: int) -> bytes:
    """A 16-byte UFID as vswitchd makes them: uniformly spread (here from a seed)."""
    return random.Random(n).randbytes(16)


def typical_flows(count: int, ports: int, seed: int = 20, drop_share: float = 0.05) -> list[FakeFlow]:
    """A table like a busy hypervisor's: most flows forward, some recirculate through conntrack
    (a pass 0 flow and a later one), a few come in through a tunnel, ``drop_share`` drop."""
    rng = random.Random(seed)
    flows = []
    for i in range(count):
        port = rng.randrange(1, ports + 1)
        kind = rng.random()
        flow = FakeFlow(in_port=port, ufid=ufid(seed * 1_000_003 + i), ipv4_dst=i)
        flow.packets = rng.randrange(0, 10_000)
        flow.nbytes = flow.packets * rng.randrange(60, 1500)
        flow.used = 1_000_000 + i if flow.packets else None
        flow.tcp_flags = 0x12 if flow.packets and kind < 0.5 else None
        if kind < drop_share:
            flow.actions = [] if kind < drop_share / 2 else drop_action(0)
        elif kind < 0.35:
            flow.recirc_id = rng.randrange(1, 1000)
        elif kind < 0.40:
            flow.tunnel = nla(0, struct.pack("!Q", 5)) + nla(1, b"\x0a\0\0\x01") + nla(2, b"\x0a\0\0\x02")
        elif kind < 0.60:
            flow.actions = [
                (ACTION_CT | NLA_F_NESTED, nla(2, struct.pack("=H", 7))),
                (ACTION_RECIRC, struct.pack("=I", 9)),
            ]
        flows.append(flow)
    return flows


class FakeFlowKernel(FakeKernelSocket):
    """A kernel socket that also answers ``ovs_flow`` dumps, from ``flows`` by dp_ifindex.

    Every request is recorded and must be a GET dump (``FakeKernelSocket.send`` asserts it);
    joining a multicast group fails the test. ``flow_datagram_size`` sets how many flows a
    datagram holds; ``before_each_datagram`` runs before each flow datagram is handed over.
    """

    def __init__(
        self,
        datapaths: Sequence[FakeDatapath] = (),
        flows: dict[int, list[FakeFlow]] | None = None,
        flow_datagram_size: int = 32768,
        families: dict[str, int] | None = None,
    ) -> None:
        every = {
            OVS_DATAPATH_FAMILY: DATAPATH_FAMILY_ID,
            OVS_VPORT_FAMILY: VPORT_FAMILY_ID,
            "ovs_flow": FLOW_FAMILY_ID,
        }
        super().__init__(
            datapaths,
            families=every if families is None else families,
        )
        self.flows = flows if flows is not None else {}
        self.flow_datagram_size = flow_datagram_size
        self.before_each_datagram: Callable[[], None] = lambda: None
        self.flow_requests: list[bytes] = []

    def send(self, data: bytes) -> None:
        _length, mtype, flags, seq, _pid = struct.unpack_from("=IHHII", data)
        if mtype != FLOW_FAMILY_ID:
            super().send(data)
            return
        self.requests.append(data)
        self.flow_requests.append(data)
        cmd, _version, _reserved, dp_ifindex = struct.unpack_from("=BBHi", data, 16)
        assert cmd == OVS_CMD_GET and flags == NLM_F_REQUEST | NLM_F_DUMP, "only GET dumps"
        if dp_ifindex not in self.flows:
            self.pending = [done(seq, errno.ENODEV)]
            return
        self.pending = flow_dump(seq, dp_ifindex, self.flows[dp_ifindex], self.flow_datagram_size)

    def recv(self) -> bytes:
        if (
            self.pending
            and self.requests
            and struct.unpack_from("=H", self.requests[-1], 4)[0] == FLOW_FAMILY_ID
        ):
            self.before_each_datagram()
        return super().recv()

    def join(self, group: int) -> None:
        raise AssertionError(f"joined multicast group {group}: the flow collector must never")
