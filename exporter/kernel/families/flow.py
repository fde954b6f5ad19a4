"""The ``ovs_flow`` family: the kernel's flow table, read with ``OVS_FLOW_CMD_GET`` dumps.

Layouts from ``include/uapi/linux/openvswitch.h`` (``enum ovs_flow_attr``, the parts of ``enum
ovs_key_attr`` and ``enum ovs_action_attr`` read here, ``OVS_UFID_F_*``, ``struct
ovs_flow_stats``), the same numbers as the kernel's ``Documentation/netlink/specs/ovs_flow.yaml``,
declared below as data (``FLOW``, ``KEY``, ``ACTIONS``), which ``tests/unit/test_flow.py`` decodes
with the generic decoder to check this module's against.

What the exporter needs of a flow, and nothing more: which port its match starts at
(``OVS_KEY_ATTR_IN_PORT``, the vport's ``OVS_VPORT_ATTR_PORT_NO``) and in which pass
(``OVS_KEY_ATTR_RECIRC_ID``, 0 for a packet as it arrived); whether it drops (its actions are
empty, or one ``OVS_ACTION_ATTR_DROP`` with OVS's error code); its packet and byte counts
(``OVS_FLOW_ATTR_STATS``, absent while zero); and what identifies it from one dump to the next
(its ``OVS_FLOW_ATTR_UFID``, or for a flow installed without one, its key). The dump request asks
the kernel to leave the masks out (``OVS_UFID_F_OMIT_MASK``): the key and the actions are
needed, the mask never is.

This is hot: vswitchd's default flow limit is 200,000 flows, a dump of 40 MB or more.
``scan_flows`` reads a datagram of flow messages into a ``FlowTally`` with a few
``struct.unpack_from`` per flow at the offsets the kernel writes them (``ovs_flow_cmd_fill_info``
in ``net/openvswitch/datapath.c``: UFID, KEY, then USED, STATS, TCP_FLAGS and ACTIONS; the key
starts RECIRC_ID, DP_HASH, PRIORITY, IN_PORT, ``__ovs_nla_put_key`` in ``flow_netlink.c``), every
header checked; a message laid out any other way (no UFID, tunnel metadata before the port,
another kernel's order) goes through ``decode_flow``, the plain attribute walk, which gives the
same answer. No I/O here.
"""

from __future__ import annotations

import struct
import sys
from collections import Counter
from typing import NamedTuple

from exporter.kernel.netlink import (
    NLA_HDR,
    NLA_TYPE_MASK,
    NLMSGHDR,
    OVS_HEADERS_LEN,
    U32,
    AttributeSet,
    DecodeError,
    Message,
    StructLayout,
    attr_error,
    encode_attr,
    encode_ovs_get,
    iter_attrs,
    new_tuple,
    ovs_start,
)

OVS_FLOW_FAMILY = "ovs_flow"
OVS_FLOW_VERSION = 1

# OVS_UFID_F_* bits of OVS_FLOW_ATTR_UFID_FLAGS: what a reply may leave out. The kernel honours
# them for flows installed with a UFID (vswitchd installs every flow with one); OMIT_KEY does not
# apply to a flow without one, whose key is its identifier.
OVS_UFID_F_OMIT_KEY = 1 << 0
OVS_UFID_F_OMIT_MASK = 1 << 1
OVS_UFID_F_OMIT_ACTIONS = 1 << 2

FLOW_STATS = StructLayout("ovs_flow_stats", (("n_packets", "u64"), ("n_bytes", "u64")))

# enum ovs_key_attr: the attributes a key starts with, and the two read here (IN_PORT, RECIRC_ID).
# The others (Ethernet, IP, conntrack, ...) are skipped, never interpreted.
KEY = AttributeSet(
    "flow KEY",
    {
        2: ("PRIORITY", "u32"),
        3: ("IN_PORT", "u32"),  # the vport's OVS_VPORT_ATTR_PORT_NO; absent: the flow matches any port
        16: ("TUNNEL", "binary"),  # a nest of enum ovs_tunnel_key_attr, not read
        19: ("DP_HASH", "u32"),
        20: ("RECIRC_ID", "u32"),  # 0: the packet as it arrived; else a pass after a recirculation
    },
)
# enum ovs_action_attr: only whether the list is empty or one DROP matters here.
ACTIONS = AttributeSet(
    "flow ACTIONS",
    {
        1: ("OUTPUT", "u32"),
        24: ("DROP", "u32"),  # OVS_ACTION_ATTR_DROP: an error code, OVS's enum xlate_error (kernel 6.4+)
    },
)
# enum ovs_flow_attr
FLOW = AttributeSet(
    "flow",
    {
        1: ("KEY", KEY),
        2: ("ACTIONS", "binary"),  # a list of enum ovs_action_attr, order significant: see decode_flow
        3: ("STATS", FLOW_STATS),  # absent while the flow has matched no packet
        4: ("TCP_FLAGS", "u8"),
        5: ("USED", "u64"),
        7: ("MASK", "binary"),  # never asked for (OVS_UFID_F_OMIT_MASK)
        9: ("UFID", "binary"),  # 1-16 bytes; vswitchd's are 16
        10: ("UFID_FLAGS", "u32"),
        11: ("PAD", "pad"),
    },
)

OVS_FLOW_ATTR_KEY = FLOW["KEY"]
OVS_FLOW_ATTR_ACTIONS = FLOW["ACTIONS"]
OVS_FLOW_ATTR_STATS = FLOW["STATS"]
OVS_FLOW_ATTR_UFID = FLOW["UFID"]
OVS_FLOW_ATTR_UFID_FLAGS = FLOW["UFID_FLAGS"]
OVS_KEY_ATTR_PRIORITY = KEY["PRIORITY"]
OVS_KEY_ATTR_IN_PORT = KEY["IN_PORT"]
OVS_KEY_ATTR_DP_HASH = KEY["DP_HASH"]
OVS_KEY_ATTR_RECIRC_ID = KEY["RECIRC_ID"]
OVS_KEY_ATTR_TUNNEL = KEY["TUNNEL"]
OVS_ACTION_ATTR_DROP = ACTIONS["DROP"]

#: What the exporter asks of every flow: everything but the mask.
DUMP_UFID_FLAGS = OVS_UFID_F_OMIT_MASK


def encode_flow_dump(family_id: int, seq: int, dp_ifindex: int, ufid_flags: int = DUMP_UFID_FLAGS) -> bytes:
    """An ``OVS_FLOW_CMD_GET`` dump of one datapath's flows, with ``OVS_FLOW_ATTR_UFID_FLAGS``."""
    attrs = encode_attr(OVS_FLOW_ATTR_UFID_FLAGS, U32.pack(ufid_flags))
    return encode_ovs_get(family_id, OVS_FLOW_VERSION, seq, dp_ifindex, attrs)


class Flow(NamedTuple):
    """One flow as a dump reports it, reduced to what the exporter reads. ``None``: not sent.

    ``identity`` tells the flow apart from every other flow of its datapath from one dump to the
    next: the first 8 bytes of a 16-byte UFID as an integer, or for any other flow a hash of its
    UFID or, without one, of its key's bytes.
    """

    identity: int
    in_port: int | None  # OVS_KEY_ATTR_IN_PORT; None: the key matches any port (or was omitted)
    recirc_id: int  # OVS_KEY_ATTR_RECIRC_ID; absent is 0
    drop: bool  # the actions are empty, or one OVS_ACTION_ATTR_DROP
    reason: int | None  # that DROP's error code; None for empty actions (or not a drop)
    packets: int
    bytes: int


def _drop_of(buf: bytes, start: int, end: int) -> tuple[bool, int | None]:
    """Whether an OVS_FLOW_ATTR_ACTIONS payload drops, and the code of its explicit DROP.

    A drop flow is one whose packets go nowhere: no action at all (what OVS before 3.4, or on a
    kernel before 6.4, installs), or exactly one OVS_ACTION_ATTR_DROP, which the kernel accepts
    only as the last action and OVS installs only in place of an empty list. A list that does
    anything before a DROP (a sample, a log to userspace) is not counted as a drop flow.
    """
    if start == end:
        return True, None
    if end - start < 4:
        raise DecodeError(f"flow ACTIONS at offset {start - 4}: {end - start} bytes, not an attribute")
    alen, atype = NLA_HDR.unpack_from(buf, start)
    if alen < 4 or start + alen > end:
        raise DecodeError(
            f"flow ACTIONS attribute at offset {start} claims {alen} bytes, {end - start} available"
        )
    if atype & NLA_TYPE_MASK != OVS_ACTION_ATTR_DROP or start + ((alen + 3) & ~3) < end:
        return False, None
    if alen != 8:
        raise attr_error("flow ACTIONS DROP", OVS_ACTION_ATTR_DROP, 4, alen - 4, start)
    return True, int(U32.unpack_from(buf, start + 4)[0])


_IDENTITY_MASK = (1 << 64) - 1


def decode_flow(buf: bytes, message: Message) -> Flow:
    """Decode one ``ovs_flow`` message (OVS_FLOW_CMD_NEW, as a dump replies), in any attribute order.

    Raises DecodeError for a message that does not have the uapi layout, or that carries neither
    a UFID nor a key (nothing to tell it apart by).
    """
    _dp_ifindex, pos = ovs_start(buf, message, "flow")
    ufid: bytes | None = None
    key: tuple[int, int] | None = None
    actions: tuple[int, int] | None = None
    packets = nbytes = 0
    for atype, start, end in iter_attrs(buf, pos, message.end, "flow"):
        if atype == OVS_FLOW_ATTR_UFID:
            if not 1 <= end - start <= 16:
                raise DecodeError(f"flow UFID attribute at offset {start - 4}: {end - start} bytes, not 1-16")
            ufid = buf[start:end]
        elif atype == OVS_FLOW_ATTR_KEY:
            key = (start, end)
        elif atype == OVS_FLOW_ATTR_ACTIONS:
            actions = (start, end)
        elif atype == OVS_FLOW_ATTR_STATS:
            if end - start != FLOW_STATS.size:
                raise attr_error("flow STATS", atype, FLOW_STATS.size, end - start, start - 4)
            packets, nbytes = FLOW_STATS.unpack.unpack_from(buf, start)
    in_port: int | None = None
    recirc_id = 0
    if key is not None:
        for ktype, kstart, kend in iter_attrs(buf, key[0], key[1], "flow KEY"):
            if ktype == OVS_KEY_ATTR_IN_PORT:
                in_port = _u32(buf, kstart, kend, "flow KEY IN_PORT", ktype)
            elif ktype == OVS_KEY_ATTR_RECIRC_ID:
                recirc_id = _u32(buf, kstart, kend, "flow KEY RECIRC_ID", ktype)
    if ufid is not None and len(ufid) == 16:
        identity = int.from_bytes(ufid[:8], sys.byteorder)
    elif ufid is not None:
        identity = hash(ufid) & _IDENTITY_MASK
    elif key is not None:
        identity = hash(buf[key[0] : key[1]]) & _IDENTITY_MASK
    else:
        raise DecodeError(f"flow message at offset {message.start} has neither UFID nor KEY")
    drop, reason = (False, None) if actions is None else _drop_of(buf, *actions)
    return Flow(identity, in_port, recirc_id, drop, reason, packets, nbytes)


def _u32(buf: bytes, start: int, end: int, what: str, atype: int) -> int:
    if end - start != 4:
        raise attr_error(what, atype, 4, end - start, start - 4)
    return int(U32.unpack_from(buf, start)[0])


class FlowTally:
    """What one dump of one datapath's flow table comes to, filled by ``scan_flows``.

    Each flow is taken once: the dump walks the table's hash buckets in batches while vswitchd
    adds and deletes flows, and can report a flow twice (``duplicates`` counts the repeats left
    out). ``first_pass_ports`` holds the input port of every flow in the first pass (recirculation
    id 0: a recirculating packet's later passes are not counted again), ``flows_by_port`` counts
    them; ``drops`` lists every drop flow, whatever its pass, as ``Flow`` records; ``identities``
    holds every flow's identity.
    """

    __slots__ = ("drops", "duplicates", "first_pass_ports", "identities")

    def __init__(self) -> None:
        self.identities: set[int] = set()
        self.first_pass_ports: list[int] = []
        self.drops: list[Flow] = []
        self.duplicates = 0

    @property
    def flows(self) -> int:
        """Distinct flows listed."""
        return len(self.identities)

    @property
    def flows_by_port(self) -> dict[int, int]:
        """Flows in the first pass per input port (counted in C: an append per flow is cheaper)."""
        return dict(Counter(self.first_pass_ports))

    def add(self, flow: Flow) -> None:
        """Count one decoded flow (the slow path: ``scan_flows`` counts the usual ones inline)."""
        if flow.identity in self.identities:
            self.duplicates += 1
            return
        self.identities.add(flow.identity)
        if flow.recirc_id == 0 and flow.in_port is not None:
            self.first_pass_ports.append(flow.in_port)
        if flow.drop:
            self.drops.append(flow)


def _nla_header_u32(length: int, atype: int) -> int:
    return int(U32.unpack(NLA_HDR.pack(length, atype))[0])


# How ovs_flow_cmd_fill_info starts a flow installed with a 16-byte UFID: the nlmsghdr (length,
# type, sequence number read), the genetlink and OVS headers, UFID (its first 8 bytes read as the
# identity), the KEY nest's header, then the key's RECIRC_ID, DP_HASH and PRIORITY, and the
# attribute after them: IN_PORT when the flow carries no tunnel metadata. Every attribute header
# is compared whole, as the u32 its expected (length, type) makes; KEY's is read as its length
# and type, since its length varies.
_FLOW_HEAD = struct.Struct("=IH2xI4x8xIQ8xHHIIIxxxxIxxxxII")
_HDR_UFID = _nla_header_u32(4 + 16, OVS_FLOW_ATTR_UFID)
_HDR_RECIRC_ID = _nla_header_u32(8, OVS_KEY_ATTR_RECIRC_ID)
_HDR_DP_HASH = _nla_header_u32(8, OVS_KEY_ATTR_DP_HASH)
_HDR_PRIORITY = _nla_header_u32(8, OVS_KEY_ATTR_PRIORITY)
_HDR_IN_PORT = _nla_header_u32(8, OVS_KEY_ATTR_IN_PORT)
# After the key the kernel writes USED, STATS and TCP_FLAGS, each when the flow has it, then ACTIONS.
_HDR_USED = _nla_header_u32(4 + 8, FLOW["USED"])
_HDR_STATS = _nla_header_u32(4 + FLOW_STATS.size, OVS_FLOW_ATTR_STATS)
_HDR_TCP_FLAGS = _nla_header_u32(4 + 1, FLOW["TCP_FLAGS"])
_HDR_DROP = _nla_header_u32(8, OVS_ACTION_ATTR_DROP)
_USUAL_HEAD = (_HDR_UFID, _HDR_RECIRC_ID, _HDR_DP_HASH, _HDR_PRIORITY)
_KEY_AT = OVS_HEADERS_LEN + 20  # where the KEY attribute starts after a 16-byte UFID
_TUNNEL_AT = _FLOW_HEAD.size - 8  # where IN_PORT, or the TUNNEL nest before it, starts
_STATS = FLOW_STATS.unpack
_U32_PAIR = struct.Struct("=II")
# Where an attribute header's length and type sit in it read as a native u32.
_LENGTH_SHIFT, _TYPE_SHIFT = (0, 16) if sys.byteorder == "little" else (16, 0)


def scan_flows(buf: bytes, pos: int, seq: int, family: int, tally: FlowTally) -> int:
    """Count the flow messages of ``family`` and ``seq`` in a datagram, from ``pos``, into ``tally``.

    Messages of another sequence number (late replies to an earlier request) are skipped. Returns
    the offset of the first message of this ``seq`` that is of another type (NLMSG_DONE, an error:
    for the caller), or the datagram's length. Raises DecodeError as ``decode_flow`` does.

    One loop, inlined: at 200,000 flows every call and unpack per flow shows.
    """
    total = len(buf)
    # Everything the loop uses, as locals: a global or attribute lookup per flow costs as much
    # as a comparison.
    head = _FLOW_HEAD.unpack_from
    head_size = _FLOW_HEAD.size
    nlmsghdr = NLMSGHDR.unpack_from
    nla_header = NLA_HDR.unpack_from
    u32_pair = _U32_PAIR.unpack_from
    stats_of = _STATS.unpack_from
    usual_head = _USUAL_HEAD
    hdr_in_port, hdr_used, hdr_stats, hdr_tcp_flags, hdr_drop = (
        _HDR_IN_PORT,
        _HDR_USED,
        _HDR_STATS,
        _HDR_TCP_FLAGS,
        _HDR_DROP,
    )
    type_mask, key_attr, actions_attr, drop_attr = (
        NLA_TYPE_MASK,
        OVS_FLOW_ATTR_KEY,
        OVS_FLOW_ATTR_ACTIONS,
        OVS_ACTION_ATTR_DROP,
    )
    key_at = _KEY_AT
    identities = tally.identities
    first_pass_ports = tally.first_pass_ports.append
    drops = tally.drops
    len_shift, type_shift = _LENGTH_SHIFT, _TYPE_SHIFT
    if total % 4:
        # Not whole u32 words (a truncated datagram): every message is read by the plain walk,
        # which says what is wrong.
        head_size = total + 1
        words = memoryview(b"").cast("I")
    else:
        words = memoryview(buf).cast("I")
    while pos < total:
        usual = total - pos >= head_size
        if usual:
            (length, mtype, mseq, ufid_hdr, identity, key_len, key_type, recirc_hdr, recirc_id, dp_hash_hdr,
             priority_hdr, port_hdr, in_port) = head(buf, pos)  # fmt: skip
        else:
            if total - pos < 16:
                raise DecodeError(f"truncated netlink header at offset {pos}: {total - pos} bytes left")
            length, mtype, _flags, mseq, _pid = nlmsghdr(buf, pos)
        end = pos + length
        if length < 16 or end > total:
            raise DecodeError(
                f"netlink message at offset {pos} claims {length} bytes, {total - pos} available"
            )
        following = (end + 3) & ~3
        if mseq != seq:
            pos = following
            continue
        if mtype != family:
            return pos
        if usual:
            at = pos + key_at + ((key_len + 3) & ~3)  # where the key ends
            usual = (
                (ufid_hdr, recirc_hdr, dp_hash_hdr, priority_hdr) == usual_head
                and key_type & type_mask == key_attr
                and key_len >= 36
                and at + 4 <= end
            )
        if usual and port_hdr != hdr_in_port:
            # Tunnel metadata (a packet that came in through a tunnel port) comes before IN_PORT.
            tunnel_len, tunnel_type = nla_header(buf, pos + _TUNNEL_AT)
            port_at = pos + _TUNNEL_AT + ((tunnel_len + 3) & ~3)
            usual = tunnel_type & type_mask == OVS_KEY_ATTR_TUNNEL and tunnel_len >= 4 and port_at + 8 <= at
            if usual:
                port_hdr, in_port = u32_pair(buf, port_at)
                usual = port_hdr == hdr_in_port
        if usual:
            # Read as native u32 words (attributes are 4-byte aligned): cheaper than an unpack each.
            stats_at = 0
            header = words[at >> 2]
            if header == hdr_used and at + 16 <= end:
                at += 12
                header = words[at >> 2]
            if header == hdr_stats and at + 24 <= end:
                stats_at = at + 4
                at += 20
                header = words[at >> 2]
            if header == hdr_tcp_flags and at + 12 <= end:
                at += 8
                header = words[at >> 2]
            # ACTIONS must be there, whole, and last; anything else is for the plain walk.
            actions_len = header >> len_shift & 0xFFFF
            usual = header >> type_shift & type_mask == actions_attr and at + ((actions_len + 3) & ~3) == end
        if not usual:
            tally.add(decode_flow(buf, new_tuple(Message, (mtype, 0, mseq, pos, end))))
            pos = following
            continue
        if identity in identities:
            tally.duplicates += 1
            pos = following
            continue
        identities.add(identity)
        if recirc_id == 0:
            first_pass_ports(in_port)
        if actions_len == 4:
            packets, nbytes = stats_of(buf, stats_at) if stats_at else (0, 0)
            drops.append(new_tuple(Flow, (identity, in_port, recirc_id, True, None, packets, nbytes)))
        elif actions_len == 12:
            # One action (an output, usually): a drop if it is OVS_ACTION_ATTR_DROP.
            first = words[(at >> 2) + 1]
            if first == hdr_drop:
                packets, nbytes = stats_of(buf, stats_at) if stats_at else (0, 0)
                reason = words[(at >> 2) + 2]
                drops.append(new_tuple(Flow, (identity, in_port, recirc_id, True, reason, packets, nbytes)))
            elif first >> type_shift & type_mask == drop_attr:
                _drop_of(buf, at + 4, at + 12)  # a DROP of another length: raises
        elif actions_len < 12:
            _drop_of(buf, at + 4, at + actions_len)  # no whole action in it: raises
        # More than one action: not a drop flow (the kernel takes a DROP only as the last one, and
        # OVS installs it only alone).
        pos = following
    return min(pos, total)
