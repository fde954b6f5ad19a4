"""The ``ovs_flow`` family for the in-guest tests and benchmarks: make flows, dump and count them.

Independent from the exporter's decoder on purpose (as ``tests.kernel.ovsnl`` is for datapaths and
vports): the tests compare what the exporter serves with what this reads from the kernel just
before and just after. It also installs flows (OVS_FLOW_CMD_NEW, with or without a UFID, with
empty actions, an output or an explicit drop), which the read-only exporter never does.
Numbers from include/uapi/linux/openvswitch.h (enum ovs_flow_attr, ovs_key_attr,
ovs_action_attr, OVS_UFID_F_*).
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .ovsnl import (
    CMD_DEL,
    CMD_GET,
    CMD_NEW,
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    Dump,
    Message,
    OvsNetlink,
    nla,
    parse_attrs,
)

FLOW_FAMILY = "ovs_flow"
FLOW_VERSION = 1

# enum ovs_flow_attr
FLOW_ATTR_KEY = 1
FLOW_ATTR_ACTIONS = 2
FLOW_ATTR_STATS = 3
FLOW_ATTR_TCP_FLAGS = 4
FLOW_ATTR_USED = 5
FLOW_ATTR_MASK = 7
FLOW_ATTR_UFID = 9
FLOW_ATTR_UFID_FLAGS = 10
# OVS_UFID_F_*
UFID_F_OMIT_KEY = 1 << 0
UFID_F_OMIT_MASK = 1 << 1
UFID_F_OMIT_ACTIONS = 1 << 2
# enum ovs_key_attr
KEY_ATTR_IN_PORT = 3
KEY_ATTR_ETHERNET = 4
KEY_ATTR_ETHERTYPE = 6
KEY_ATTR_IPV4 = 7
KEY_ATTR_TUNNEL = 16
KEY_ATTR_RECIRC_ID = 20
# enum ovs_action_attr
ACTION_ATTR_OUTPUT = 1
ACTION_ATTR_DROP = 24  # u32 error code (OVS's enum xlate_error); kernels since 6.4 (6.12 has it, 6.1 not)

ETH_P_IP = 0x0800


def ipv4_match(
    in_port: int | None, dst: str, src: str = "0.0.0.0", match_src: bool = False, recirc_id: int | None = None
) -> tuple[bytes, bytes]:
    """Key and mask of a megaflow: every IPv4 packet from ``in_port`` (None: from any port) to
    ``dst`` (and from ``src`` when ``match_src``), in pass ``recirc_id`` when given; Ethernet
    addresses and the other IPv4 fields wildcarded."""
    ipv4 = ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed
    key = mask = b""
    if recirc_id is not None:
        key += nla(KEY_ATTR_RECIRC_ID, struct.pack("=I", recirc_id))
        mask += nla(KEY_ATTR_RECIRC_ID, struct.pack("=I", 0xFFFFFFFF))
    if in_port is not None:
        key += nla(KEY_ATTR_IN_PORT, struct.pack("=I", in_port))
        mask += nla(KEY_ATTR_IN_PORT, struct.pack("=I", 0xFFFFFFFF))
    key += (
        nla(KEY_ATTR_ETHERNET, b"\0" * 12)
        + nla(KEY_ATTR_ETHERTYPE, struct.pack("!H", ETH_P_IP))
        + nla(KEY_ATTR_IPV4, ipv4 + b"\0\0\0\0")  # proto, tos, ttl, frag
    )
    src_mask = b"\xff" * 4 if match_src else b"\0" * 4
    mask += (
        nla(KEY_ATTR_ETHERNET, b"\0" * 12)
        + nla(KEY_ATTR_ETHERTYPE, b"\xff\xff")
        + nla(KEY_ATTR_IPV4, src_mask + b"\xff" * 4 + b"\0\0\0\0")
    )
    return key, mask


def output(port: int) -> bytes:
    return nla(ACTION_ATTR_OUTPUT, struct.pack("=I", port))


def drop(reason: int) -> bytes:
    return nla(ACTION_ATTR_DROP, struct.pack("=I", reason))


@dataclass(frozen=True)
class FlowInfo:
    """One flow as a dump reply carries it."""

    dp_ifindex: int
    ufid: bytes | None
    key: dict[int, bytes]  # the key's attributes by type (empty when omitted)
    actions: tuple[tuple[int, bytes], ...] | None  # (type, payload) in order; None when omitted
    packets: int
    bytes: int

    @property
    def in_port(self) -> int | None:
        raw = self.key.get(KEY_ATTR_IN_PORT)
        return None if raw is None else int(struct.unpack("=I", raw)[0])

    @property
    def recirc_id(self) -> int:
        raw = self.key.get(KEY_ATTR_RECIRC_ID)
        return 0 if raw is None else int(struct.unpack("=I", raw)[0])

    @property
    def drop_reason(self) -> str | None:
        """``unspecified`` for empty actions, the code of a lone explicit drop, None otherwise."""
        if self.actions is None:
            return None
        if not self.actions:
            return "unspecified"
        if len(self.actions) == 1 and self.actions[0][0] == ACTION_ATTR_DROP:
            return str(struct.unpack("=I", self.actions[0][1])[0])
        return None

    @classmethod
    def decode(cls, msg: Message) -> FlowInfo:
        a = msg.attrs
        actions = None
        if FLOW_ATTR_ACTIONS in a:
            raw = a[FLOW_ATTR_ACTIONS]
            found = []
            off = 0
            while off + 4 <= len(raw):
                length, atype = struct.unpack_from("=HH", raw, off)
                found.append((atype & 0x3FFF, raw[off + 4 : off + length]))
                off += (length + 3) & ~3
            actions = tuple(found)
        packets = nbytes = 0
        if FLOW_ATTR_STATS in a:
            packets, nbytes = struct.unpack("=QQ", a[FLOW_ATTR_STATS])
        return cls(
            dp_ifindex=msg.dp_ifindex,
            ufid=a.get(FLOW_ATTR_UFID),
            key=parse_attrs(a[FLOW_ATTR_KEY]) if FLOW_ATTR_KEY in a else {},
            actions=actions,
            packets=packets,
            bytes=nbytes,
        )


class FlowTable:
    """The ``ovs_flow`` requests of the tests over an ``OvsNetlink`` socket."""

    def __init__(self, nl: OvsNetlink) -> None:
        self.nl = nl

    def _payload(self, cmd: int, dp_ifindex: int, attrs: bytes) -> bytes:
        return struct.pack("=BBHi", cmd, FLOW_VERSION, 0, dp_ifindex) + attrs

    def new(
        self,
        dp_ifindex: int,
        key: bytes,
        actions: bytes,
        mask: bytes | None = None,
        ufid: bytes | None = None,
    ) -> None:
        """OVS_FLOW_CMD_NEW (needs CAP_NET_ADMIN); raises OSError with the kernel's errno."""
        self.new_many(dp_ifindex, [(key, actions, mask, ufid)])

    def new_many(
        self,
        dp_ifindex: int,
        flows: Iterable[tuple[bytes, bytes, bytes | None, bytes | None]],
        batch: int = 256,
    ) -> int:
        """Install ``(key, actions, mask, ufid)`` flows, ``batch`` requests sent before their acks
        are read (what makes 200,000 of them possible under TCG). Returns how many were made."""
        family = self.nl.family(FLOW_FAMILY)
        made = 0
        pending: list[int] = []
        for key, actions, mask, ufid in flows:
            attrs = nla(FLOW_ATTR_KEY, key) + nla(FLOW_ATTR_ACTIONS, actions)
            if mask is not None:
                attrs += nla(FLOW_ATTR_MASK, mask)
            if ufid is not None:
                attrs += nla(FLOW_ATTR_UFID, ufid)
            pending.append(
                self.nl._send(family, NLM_F_REQUEST | NLM_F_ACK, self._payload(CMD_NEW, dp_ifindex, attrs))
            )
            if len(pending) >= batch:
                made += self._acks(pending)
        return made + self._acks(pending)

    def _acks(self, pending: list[int]) -> int:
        for seq in pending:
            self.nl._receive(seq)
        done = len(pending)
        pending.clear()
        return done

    def delete(self, dp_ifindex: int, ufid: bytes | None = None, key: bytes | None = None) -> None:
        """OVS_FLOW_CMD_DEL of one flow, by UFID or by its exact key."""
        attrs = b""
        if ufid is not None:
            attrs += nla(FLOW_ATTR_UFID, ufid)
        if key is not None:
            attrs += nla(FLOW_ATTR_KEY, key)
        if not attrs:
            raise ValueError("say which flow: a DEL without either flushes the table")
        family = self.nl.family(FLOW_FAMILY)
        self.nl._receive(
            self.nl._send(family, NLM_F_REQUEST | NLM_F_ACK, self._payload(CMD_DEL, dp_ifindex, attrs))
        )

    def flush(self, dp_ifindex: int) -> None:
        """OVS_FLOW_CMD_DEL without a key: every flow of the datapath."""
        family = self.nl.family(FLOW_FAMILY)
        self.nl._receive(
            self.nl._send(family, NLM_F_REQUEST | NLM_F_ACK, self._payload(CMD_DEL, dp_ifindex, b""))
        )

    def dump(self, dp_ifindex: int, ufid_flags: int = 0) -> Dump:
        """An OVS_FLOW_CMD_GET dump, datagrams as sent and messages parsed."""
        attrs = nla(FLOW_ATTR_UFID_FLAGS, struct.pack("=I", ufid_flags)) if ufid_flags else b""
        datagrams, msgs = self.nl._request(FLOW_FAMILY, FLOW_VERSION, CMD_GET, dp_ifindex, attrs, NLM_F_DUMP)
        return Dump(tuple(datagrams), tuple(msgs))

    def flows(self, dp_ifindex: int, ufid_flags: int = 0) -> list[FlowInfo]:
        return [FlowInfo.decode(m) for m in self.dump(dp_ifindex, ufid_flags).messages]


def per_port(flows: Sequence[FlowInfo]) -> Counter[int]:
    """Flows whose match starts at each port: IN_PORT, recirculation id 0, each flow once."""
    seen: set[bytes] = set()
    counts: Counter[int] = Counter()
    for flow in flows:
        ident = flow.ufid if flow.ufid is not None else repr(sorted(flow.key.items())).encode()
        if ident in seen or flow.in_port is None or flow.recirc_id != 0:
            continue
        seen.add(ident)
        counts[flow.in_port] += 1
    return counts
