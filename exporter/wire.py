"""Netlink wire format of the OVS datapath families: bytes in, typed records out.

No I/O happens here. The source (``exporter.source``) hands this module the raw
bytes the kernel sent and gets back ``Datapath`` and ``Vport`` records, or a
``DecodeError`` that says what was wrong and where. Layouts follow the kernel's
``include/uapi/linux/openvswitch.h`` and ``include/uapi/linux/netlink.h``.

The decoder is a single table-free pass over each message with
``struct.unpack_from``: at thousands of vports per scrape it is the hot path, and
a generic attribute-class decoder costs 6-30x more per vport.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

# --- netlink.h -------------------------------------------------------------

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED and NLA_F_NET_BYTEORDER

# struct nlmsghdr { u32 len; u16 type; u16 flags; u32 seq; u32 pid; }
_NLMSGHDR = struct.Struct("=IHHII")
# struct genlmsghdr { u8 cmd; u8 version; u16 reserved; } + struct ovs_header { int dp_ifindex; }
_GENL_OVS_HDR = struct.Struct("=BBHi")
_NLA_HDR = struct.Struct("=HH")
_HEADERS_LEN = _NLMSGHDR.size + _GENL_OVS_HDR.size  # 24: where attributes start

# --- openvswitch.h ---------------------------------------------------------

OVS_DATAPATH_FAMILY = "ovs_datapath"
OVS_DATAPATH_VERSION = 2
OVS_VPORT_FAMILY = "ovs_vport"
OVS_VPORT_VERSION = 1
# OVS_DP_CMD_GET and OVS_VPORT_CMD_GET: the only command this exporter ever sends.
OVS_CMD_GET = 3

# enum ovs_datapath_attr
OVS_DP_ATTR_NAME = 1
OVS_DP_ATTR_STATS = 3
OVS_DP_ATTR_MEGAFLOW_STATS = 4
OVS_DP_ATTR_USER_FEATURES = 5  # u32, OVS_DP_F_* bits
OVS_DP_ATTR_MASKS_CACHE_SIZE = 7  # u32
OVS_DP_ATTR_PER_CPU_PIDS = 8  # array of u32, only sent in per-CPU dispatch mode once set

# OVS_DP_F_* bits of OVS_DP_ATTR_USER_FEATURES, by bit number, as the ``user_features``
# label names them. A set bit missing here is shown as ``bitN``, never dropped.
OVS_DP_F_DISPATCH_UPCALL_PER_CPU = 1 << 3
DP_FEATURE_NAMES = {
    0: "unaligned",  # OVS_DP_F_UNALIGNED
    1: "vport_pids",  # OVS_DP_F_VPORT_PIDS
    2: "tc_recirc_sharing",  # OVS_DP_F_TC_RECIRC_SHARING
    3: "dispatch_upcall_per_cpu",  # OVS_DP_F_DISPATCH_UPCALL_PER_CPU
}

# enum ovs_vport_attr
OVS_VPORT_ATTR_PORT_NO = 1
OVS_VPORT_ATTR_TYPE = 2
OVS_VPORT_ATTR_NAME = 3
OVS_VPORT_ATTR_OPTIONS = 4
OVS_VPORT_ATTR_UPCALL_PID = 5
OVS_VPORT_ATTR_STATS = 6
OVS_VPORT_ATTR_IFINDEX = 8
OVS_VPORT_ATTR_NETNSID = 9
OVS_VPORT_ATTR_UPCALL_STATS = 10

# enum ovs_tunnel_attr, inside OVS_VPORT_ATTR_OPTIONS
OVS_TUNNEL_ATTR_DST_PORT = 1
OVS_TUNNEL_ATTR_EXTENSION = 2  # nest of OVS_VXLAN_EXT_* flags
# enum ovs_vxlan_ext, inside OVS_TUNNEL_ATTR_EXTENSION. One missing here is shown as its number.
OVS_VXLAN_EXT_GBP = 1
VXLAN_EXT_NAMES = {OVS_VXLAN_EXT_GBP: "gbp"}

# enum ovs_vport_upcall_attr: numbering starts at 0, unlike every other OVS enum.
OVS_VPORT_UPCALL_ATTR_SUCCESS = 0
OVS_VPORT_UPCALL_ATTR_FAIL = 1

# enum ovs_vport_type. A type missing here is still exported, as its number.
VPORT_TYPE_NAMES = {1: "netdev", 2: "internal", 3: "gre", 4: "vxlan", 5: "geneve"}

# struct ovs_dp_stats { u64 n_hit, n_missed, n_lost, n_flows; }
_DP_STATS = struct.Struct("=QQQQ")
# struct ovs_dp_megaflow_stats { u64 n_mask_hit; u32 n_masks; u32 pad0; u64 n_cache_hit; u64 pad1; }
_DP_MEGAFLOW_STATS = struct.Struct("=QIIQQ")
# struct ovs_vport_stats: 8 x u64, rx/tx packets, bytes, errors, dropped.
_VPORT_STATS = struct.Struct("=QQQQQQQQ")
_U16 = struct.Struct("=H")
_U32 = struct.Struct("=I")
_S32 = struct.Struct("=i")
_U64 = struct.Struct("=Q")
# How ovs_vport_cmd_fill_info starts every vport message since 4.16: PORT_NO, TYPE and NAME's
# header; after the name, IFINDEX and STATS (unless NETNSID comes between them), then on 6.2+
# UPCALL_STATS with its SUCCESS and FAIL. Each attribute header is read as one u32 and compared
# with the u32 the expected (length, type) makes. See _decode_usual_vport_prefix.
_VPORT_HEAD = struct.Struct("=IIIIHH")  # PORT_NO header and value, TYPE header and value, NAME header
_VPORT_IFINDEX_STATS = struct.Struct("=III8Q")  # IFINDEX header and value, STATS header and value
_VPORT_UPCALL_STATS = struct.Struct("=IIQIQ")  # UPCALL_STATS header, SUCCESS, FAIL (headers, values)


def _nla_header_u32(length: int, atype: int) -> int:
    return int(_U32.unpack(_NLA_HDR.pack(length, atype))[0])


_HDR_PORT_NO = _nla_header_u32(8, 1)
_HDR_TYPE = _nla_header_u32(8, 2)
_HDR_IFINDEX = _nla_header_u32(8, 8)
_HDR_STATS = _nla_header_u32(4 + _VPORT_STATS.size, 6)
_HDR_UPCALL_STATS = _nla_header_u32(_VPORT_UPCALL_STATS.size, 10)
_HDR_UPCALL_SUCCESS = _nla_header_u32(12, 0)
_HDR_UPCALL_FAIL = _nla_header_u32(12, 1)
_HDR_WITHOUT_FLAGS = _nla_header_u32(0xFFFF, NLA_TYPE_MASK)  # clears NLA_F_NESTED and NET_BYTEORDER
# tuple.__new__ builds a NamedTuple from a tuple of the right length without the Python-level
# constructor's call: used where the hot path already knows the length.
_new_tuple = tuple.__new__


class DecodeError(ValueError):
    """The kernel's reply did not have the layout openvswitch.h promises."""


class NetlinkError(OSError):
    """The kernel answered a request with an error (NLMSG_ERROR or a failed NLMSG_DONE)."""


class VportStats(NamedTuple):
    """``struct ovs_vport_stats``, in the kernel's field order."""

    rx_packets: int
    tx_packets: int
    rx_bytes: int
    tx_bytes: int
    rx_errors: int
    tx_errors: int
    rx_dropped: int
    tx_dropped: int


class UpcallStats(NamedTuple):
    """``OVS_VPORT_ATTR_UPCALL_STATS`` (kernel 6.2+): upcalls sent to userspace."""

    success: int
    fail: int


class DatapathStats(NamedTuple):
    """``struct ovs_dp_stats``: flow table lookups and the flow count."""

    hits: int
    missed: int
    lost: int
    flows: int


class MegaflowStats(NamedTuple):
    """``struct ovs_dp_megaflow_stats`` without its padding."""

    mask_hits: int
    masks: int
    cache_hits: int


@dataclass(frozen=True, slots=True)
class Datapath:
    """One datapath as ``OVS_DP_CMD_GET`` reports it. ``None`` means "not reported"."""

    dp_ifindex: int
    name: str
    stats: DatapathStats | None
    megaflow_stats: MegaflowStats | None
    user_features: int | None = None  # OVS_DP_ATTR_USER_FEATURES
    masks_cache_size: int | None = None  # OVS_DP_ATTR_MASKS_CACHE_SIZE
    per_cpu_pids: tuple[int, ...] | None = None  # OVS_DP_ATTR_PER_CPU_PIDS, in the kernel's order

    @property
    def per_cpu_dispatch(self) -> bool | None:
        """Whether upcalls are dispatched per CPU (else per vport); None if features are not reported."""
        if self.user_features is None:
            return None
        return bool(self.user_features & OVS_DP_F_DISPATCH_UPCALL_PER_CPU)

    @property
    def upcall_handlers(self) -> int | None:
        """Distinct non-zero netlink PIDs of the per-CPU array; None unless in per-CPU mode.

        In per-CPU mode the kernel sends no array until userspace sets one: that is
        zero handlers (every miss is lost), not "not reported". vswitchd repeats a
        handler's PID for several CPUs when it has fewer handlers than CPUs, and a 0
        entry reaches no socket, so distinct non-zero PIDs are the handler sockets.
        """
        if not self.per_cpu_dispatch:
            return None
        return len(set(self.per_cpu_pids or ()) - {0})


class Vport(NamedTuple):
    """One vport as ``OVS_VPORT_CMD_GET`` reports it. ``None`` means "not reported".

    A NamedTuple rather than a frozen dataclass: a scrape builds one per vport, and
    a tuple of numbers and strings is both cheaper to build and dropped from the
    cyclic garbage collector's tracking. Tracked records were scanned again and again
    while they accumulated, so a vport cost more to decode the more vports there were.
    """

    dp_ifindex: int
    port_no: int
    type: int
    name: str
    ifindex: int | None
    netnsid: int | None
    stats: VportStats | None
    upcall_stats: UpcallStats | None
    dst_port: int | None
    # OVS_TUNNEL_ATTR_EXTENSION: the OVS_VXLAN_EXT_* attribute types it carries, in order.
    extension: tuple[int, ...] | None = None
    # Distinct non-zero PIDs of OVS_VPORT_ATTR_UPCALL_PID: the sockets this vport's misses
    # go to in per-vport dispatch mode (0: every miss is lost).
    upcall_handlers: int | None = None

    @property
    def type_name(self) -> str:
        """The vport type as the ``vport_type`` label shows it."""
        return VPORT_TYPE_NAMES.get(self.type) or str(self.type)


def encode_get_dump(family_id: int, version: int, seq: int, dp_ifindex: int = 0) -> bytes:
    """A ``*_CMD_GET`` dump request: the only message this exporter ever sends."""
    length = _HEADERS_LEN
    return _NLMSGHDR.pack(length, family_id, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + _GENL_OVS_HDR.pack(
        OVS_CMD_GET, version, 0, dp_ifindex
    )


class Message(NamedTuple):
    """One netlink message inside a datagram: where it is and what its header says."""

    type: int
    flags: int
    seq: int
    start: int  # offset of the nlmsghdr
    end: int  # offset just past the message (not padded)


def iter_messages(buf: bytes) -> Iterator[Message]:
    """Split one datagram into netlink messages, checking every length."""
    pos = 0
    total = len(buf)
    while pos < total:
        if total - pos < _NLMSGHDR.size:
            raise DecodeError(f"truncated netlink header at offset {pos}: {total - pos} bytes left")
        length, mtype, flags, seq, _pid = _NLMSGHDR.unpack_from(buf, pos)
        if length < _NLMSGHDR.size or pos + length > total:
            raise DecodeError(
                f"netlink message at offset {pos} claims {length} bytes, {total - pos} available"
            )
        yield _new_tuple(Message, (mtype, flags, seq, pos, pos + length))
        pos += (length + 3) & ~3


def error_code(buf: bytes, message: Message) -> int:
    """The positive errno carried by an NLMSG_ERROR or NLMSG_DONE message (0: none)."""
    start = message.start + _NLMSGHDR.size
    if message.end - start < 4:
        if message.type == NLMSG_DONE:
            return 0  # some kernels send DONE without the int
        raise DecodeError(f"netlink error message at offset {message.start} has no error code")
    code = int(_S32.unpack_from(buf, start)[0])
    return -code if code < 0 else code


def _attr_error(what: str, attr: int, want: int, got: int, offset: int) -> DecodeError:
    return DecodeError(f"{what} attribute {attr} at offset {offset}: want {want} bytes, got {got}")


def _c_string(buf: bytes, start: int, end: int) -> str:
    nul = buf.find(b"\0", start, end)
    return buf[start : end if nul < 0 else nul].decode("utf-8", "backslashreplace")


def _genl_start(buf: bytes, message: Message, what: str) -> tuple[int, int]:
    """The dp_ifindex of a family message and the offset where its attributes start."""
    if message.end - message.start < _HEADERS_LEN:
        raise DecodeError(
            f"{what} message at offset {message.start} is {message.end - message.start} bytes,"
            f" shorter than its {_HEADERS_LEN}-byte headers"
        )
    dp_ifindex = _GENL_OVS_HDR.unpack_from(buf, message.start + _NLMSGHDR.size)[3]
    return dp_ifindex, message.start + _HEADERS_LEN


def _iter_attrs(buf: bytes, pos: int, end: int, what: str) -> Iterator[tuple[int, int, int]]:
    """Yield (type, payload start, payload end) of each attribute in buf[pos:end]."""
    while pos + 4 <= end:
        alen, atype = _NLA_HDR.unpack_from(buf, pos)
        if alen < 4 or pos + alen > end:
            raise DecodeError(f"{what} attribute at offset {pos} claims {alen} bytes, {end - pos} available")
        yield atype & NLA_TYPE_MASK, pos + 4, pos + alen
        pos += (alen + 3) & ~3
    if pos < end:
        raise DecodeError(f"{what}: {end - pos} trailing bytes at offset {pos}")


def decode_datapath(buf: bytes, message: Message) -> Datapath:
    """Decode one ``ovs_datapath`` message (OVS_DP_CMD_NEW as a dump reply)."""
    dp_ifindex, pos = _genl_start(buf, message, "datapath")
    name: str | None = None
    stats: DatapathStats | None = None
    megaflow: MegaflowStats | None = None
    user_features: int | None = None
    masks_cache_size: int | None = None
    per_cpu_pids: tuple[int, ...] | None = None
    for atype, start, end in _iter_attrs(buf, pos, message.end, "datapath"):
        size = end - start
        if atype == OVS_DP_ATTR_NAME:
            name = _c_string(buf, start, end)
        elif atype == OVS_DP_ATTR_STATS:
            if size != _DP_STATS.size:
                raise _attr_error("datapath STATS", atype, _DP_STATS.size, size, start - 4)
            stats = DatapathStats._make(_DP_STATS.unpack_from(buf, start))
        elif atype == OVS_DP_ATTR_MEGAFLOW_STATS:
            if size != _DP_MEGAFLOW_STATS.size:
                raise _attr_error("datapath MEGAFLOW_STATS", atype, _DP_MEGAFLOW_STATS.size, size, start - 4)
            mask_hit, masks, _pad0, cache_hit, _pad1 = _DP_MEGAFLOW_STATS.unpack_from(buf, start)
            megaflow = MegaflowStats(mask_hit, masks, cache_hit)
        elif atype == OVS_DP_ATTR_USER_FEATURES:
            user_features = _u32_attr(buf, start, size, "datapath USER_FEATURES", atype)
        elif atype == OVS_DP_ATTR_MASKS_CACHE_SIZE:
            masks_cache_size = _u32_attr(buf, start, size, "datapath MASKS_CACHE_SIZE", atype)
        elif atype == OVS_DP_ATTR_PER_CPU_PIDS:
            per_cpu_pids = _u32_array(buf, start, size, "datapath PER_CPU_PIDS", atype)
        # Any other attribute (PAD, ones newer kernels add) is skipped.
    if name is None:
        raise DecodeError(f"datapath message at offset {message.start} has no NAME attribute")
    return Datapath(dp_ifindex, name, stats, megaflow, user_features, masks_cache_size, per_cpu_pids)


def _u32_attr(buf: bytes, start: int, size: int, what: str, atype: int) -> int:
    if size != 4:
        raise _attr_error(what, atype, 4, size, start - 4)
    return int(_U32.unpack_from(buf, start)[0])


def _u32_array(buf: bytes, start: int, size: int, what: str, atype: int) -> tuple[int, ...]:
    if size % 4:
        raise DecodeError(f"{what} attribute {atype} at offset {start - 4}: {size} bytes, not a u32 array")
    return struct.unpack_from(f"={size // 4}I", buf, start)


def _count_handlers(buf: bytes, start: int, size: int) -> int:
    """Distinct non-zero PIDs of a vport's OVS_VPORT_ATTR_UPCALL_PID (usually exactly one)."""
    if size == 4:
        return 1 if _U32.unpack_from(buf, start)[0] else 0
    return len(set(_u32_array(buf, start, size, "vport UPCALL_PID", OVS_VPORT_ATTR_UPCALL_PID)) - {0})


def _decode_upcall_stats(buf: bytes, pos: int, end: int) -> UpcallStats:
    success: int | None = None
    fail: int | None = None
    for atype, start, aend in _iter_attrs(buf, pos, end, "vport UPCALL_STATS"):
        if atype in (OVS_VPORT_UPCALL_ATTR_SUCCESS, OVS_VPORT_UPCALL_ATTR_FAIL):
            if aend - start != 8:
                raise _attr_error("vport UPCALL_STATS", atype, 8, aend - start, start - 4)
            value = _U64.unpack_from(buf, start)[0]
            if atype == OVS_VPORT_UPCALL_ATTR_SUCCESS:
                success = value
            else:
                fail = value
    if success is None or fail is None:
        raise DecodeError(f"vport UPCALL_STATS at offset {pos - 4} lacks its SUCCESS or FAIL counter")
    return UpcallStats(success, fail)


def _decode_tunnel_options(buf: bytes, pos: int, end: int) -> tuple[int | None, tuple[int, ...] | None]:
    """DST_PORT and the EXTENSION attribute types of a vport's OPTIONS."""
    dst_port: int | None = None
    extension: tuple[int, ...] | None = None
    for atype, start, aend in _iter_attrs(buf, pos, end, "vport OPTIONS"):
        if atype == OVS_TUNNEL_ATTR_DST_PORT:
            # The kernel sends a u16 in host order (nla_put_u16) although the YNL
            # spec says u32; accept both widths.
            if aend - start == 2:
                dst_port = int(_U16.unpack_from(buf, start)[0])
            elif aend - start == 4:
                dst_port = int(_U32.unpack_from(buf, start)[0])
            else:
                raise _attr_error("vport OPTIONS DST_PORT", atype, 2, aend - start, start - 4)
        elif atype == OVS_TUNNEL_ATTR_EXTENSION:
            # vxlan_get_options: a nest of flags (GBP is an NLA_FLAG, "Flag or __u32" in the
            # header). Only the attribute types matter; an unknown one is kept as its number.
            extension = tuple(t for t, _s, _e in _iter_attrs(buf, start, aend, "vport OPTIONS EXTENSION"))
    return dst_port, extension


_UsualPrefix = tuple[int, int, int, str, int, VportStats, "UpcallStats | None"]


def _decode_usual_vport_prefix(buf: bytes, pos: int, end: int) -> _UsualPrefix | None:
    """The attributes the kernel writes first, if the message starts the usual way.

    Reads PORT_NO, TYPE, NAME, IFINDEX, STATS and, when next, UPCALL_STATS with three
    unpacks instead of six turns of the attribute walk: this runs for every vport of
    every scrape. Every length and type is checked. Returns the offset after what it
    read, port_no, type, name, ifindex, stats and upcall stats (None when not next); or
    None when the message starts any other way (NETNSID before STATS, another
    kernel's order), and the caller walks every attribute instead: same record.
    """
    if pos + _VPORT_HEAD.size > end:
        return None
    port_hdr, port_no, type_hdr, vtype, name_len, name_type = _VPORT_HEAD.unpack_from(buf, pos)
    after_name = pos + 16 + ((name_len + 3) & ~3)
    if not (
        port_hdr == _HDR_PORT_NO
        and type_hdr == _HDR_TYPE
        and name_type == OVS_VPORT_ATTR_NAME
        and name_len >= 4
        and after_name + _VPORT_IFINDEX_STATS.size <= end
    ):
        return None
    tail = _VPORT_IFINDEX_STATS.unpack_from(buf, after_name)
    if tail[0] != _HDR_IFINDEX or tail[2] != _HDR_STATS:
        return None
    name = _c_string(buf, pos + 20, pos + 16 + name_len)
    stats: VportStats = _new_tuple(VportStats, tail[3:])
    pos = after_name + _VPORT_IFINDEX_STATS.size
    upcall: UpcallStats | None = None
    if pos + _VPORT_UPCALL_STATS.size <= end:
        outer_hdr, success_hdr, success, fail_hdr, fail = _VPORT_UPCALL_STATS.unpack_from(buf, pos)
        if (
            outer_hdr & _HDR_WITHOUT_FLAGS == _HDR_UPCALL_STATS
            and success_hdr & _HDR_WITHOUT_FLAGS == _HDR_UPCALL_SUCCESS
            and fail_hdr & _HDR_WITHOUT_FLAGS == _HDR_UPCALL_FAIL
        ):
            upcall = _new_tuple(UpcallStats, (success, fail))
            pos += _VPORT_UPCALL_STATS.size
    return pos, port_no, vtype, name, tail[1], stats, upcall


def decode_vport(buf: bytes, message: Message) -> Vport:
    """Decode one ``ovs_vport`` message (OVS_VPORT_CMD_NEW as a dump reply)."""
    dp_ifindex, pos = _genl_start(buf, message, "vport")
    end = message.end
    port_no: int | None = None
    vtype: int | None = None
    name: str | None = None
    ifindex: int | None = None
    netnsid: int | None = None
    stats: VportStats | None = None
    upcall: UpcallStats | None = None
    dst_port: int | None = None
    extension: tuple[int, ...] | None = None
    handlers: int | None = None
    usual = _decode_usual_vport_prefix(buf, pos, end)
    if usual is not None:
        pos, port_no, vtype, name, ifindex, stats, upcall = usual

    unpack_hdr = _NLA_HDR.unpack_from
    # Inlined attribute walk: this loop runs once per attribute of every vport. The
    # attributes the kernel writes after the usual prefix are tested first.
    while pos + 4 <= end:
        alen, atype = unpack_hdr(buf, pos)
        if alen < 4 or pos + alen > end:
            raise DecodeError(f"vport attribute at offset {pos} claims {alen} bytes, {end - pos} available")
        atype &= NLA_TYPE_MASK
        start = pos + 4
        size = alen - 4
        if atype == OVS_VPORT_ATTR_UPCALL_PID:
            handlers = _count_handlers(buf, start, size)
        elif atype == OVS_VPORT_ATTR_UPCALL_STATS:
            upcall = _decode_upcall_stats(buf, start, pos + alen)
        elif atype == OVS_VPORT_ATTR_OPTIONS:
            dst_port, extension = _decode_tunnel_options(buf, start, pos + alen)
        elif atype == OVS_VPORT_ATTR_STATS:
            if size != 64:
                raise _attr_error("vport STATS", atype, 64, size, pos)
            stats = _new_tuple(VportStats, _VPORT_STATS.unpack_from(buf, start))
        elif atype == OVS_VPORT_ATTR_PORT_NO:
            if size != 4:
                raise _attr_error("vport PORT_NO", atype, 4, size, pos)
            port_no = _U32.unpack_from(buf, start)[0]
        elif atype == OVS_VPORT_ATTR_TYPE:
            if size != 4:
                raise _attr_error("vport TYPE", atype, 4, size, pos)
            vtype = _U32.unpack_from(buf, start)[0]
        elif atype == OVS_VPORT_ATTR_NAME:
            name = _c_string(buf, start, pos + alen)
        elif atype == OVS_VPORT_ATTR_IFINDEX:
            if size != 4:
                raise _attr_error("vport IFINDEX", atype, 4, size, pos)
            ifindex = _U32.unpack_from(buf, start)[0]
        elif atype == OVS_VPORT_ATTR_NETNSID:
            if size != 4:
                raise _attr_error("vport NETNSID", atype, 4, size, pos)
            netnsid = _S32.unpack_from(buf, start)[0]
        # PAD and attributes newer kernels add are skipped.
        pos += (alen + 3) & ~3
    if pos < end:
        raise DecodeError(f"vport: {end - pos} trailing bytes at offset {pos}")
    if port_no is None or vtype is None or name is None:
        missing = [n for n, v in (("PORT_NO", port_no), ("TYPE", vtype), ("NAME", name)) if v is None]
        raise DecodeError(f"vport message at offset {message.start} lacks {', '.join(missing)}")
    return _new_tuple(
        Vport,
        (dp_ifindex, port_no, vtype, name, ifindex, netnsid, stats, upcall, dst_port, extension, handlers),
    )


# --- Notifications: generic netlink's controller (nlctrl) and the OVS multicast groups -------------
# include/uapi/linux/genetlink.h. The event listener (exporter.events) resolves a family's id
# and multicast groups with CTRL_CMD_GETFAMILY, and follows families coming and going through
# nlctrl's own "notify" group (a module reload changes both ids).

GENL_ID_CTRL = 0x10
CTRL_VERSION = 2
CTRL_CMD_NEWFAMILY = 1
CTRL_CMD_DELFAMILY = 2
CTRL_CMD_GETFAMILY = 3
CTRL_CMD_NEWMCAST_GRP = 7
CTRL_CMD_DELMCAST_GRP = 8
CTRL_ATTR_FAMILY_ID = 1  # u16
CTRL_ATTR_FAMILY_NAME = 2  # string
CTRL_ATTR_MCAST_GROUPS = 7  # nest of nests (numbered 1..n), each with:
CTRL_ATTR_MCAST_GRP_NAME = 1  # string
CTRL_ATTR_MCAST_GRP_ID = 2  # u32
GENL_CTRL_NOTIFY_GROUP = "notify"
# include/uapi/linux/openvswitch.h: OVS_DATAPATH_MCGROUP and OVS_VPORT_MCGROUP.
OVS_DATAPATH_MCGROUP = "ovs_datapath"
OVS_VPORT_MCGROUP = "ovs_vport"
# enum ovs_datapath_cmd and enum ovs_vport_cmd share these numbers.
OVS_CMD_NEW = 1
OVS_CMD_DEL = 2
OVS_CMD_SET = 4

_GENL_HDR = struct.Struct("=BBH")  # struct genlmsghdr, without the OVS header


class CtrlFamily(NamedTuple):
    """A CTRL_CMD_GETFAMILY reply or an nlctrl notification about one family."""

    cmd: int
    name: str | None
    family_id: int | None
    groups: tuple[tuple[str, int], ...]  # multicast groups: (name, id)


def encode_get_family(seq: int, name: str) -> bytes:
    """CTRL_CMD_GETFAMILY for one family by name."""
    raw = name.encode() + b"\0"
    attr = _NLA_HDR.pack(4 + len(raw), CTRL_ATTR_FAMILY_NAME) + raw + b"\0" * (-len(raw) % 4)
    payload = _GENL_HDR.pack(CTRL_CMD_GETFAMILY, CTRL_VERSION, 0) + attr
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(payload), GENL_ID_CTRL, NLM_F_REQUEST, seq, 0) + payload


def decode_ctrl_family(buf: bytes, message: Message) -> CtrlFamily:
    """Decode an nlctrl message (type GENL_ID_CTRL): its command, family name, id and groups."""
    start = message.start + _NLMSGHDR.size
    if message.end - start < _GENL_HDR.size:
        raise DecodeError(f"nlctrl message at offset {message.start} is shorter than its genetlink header")
    cmd = _GENL_HDR.unpack_from(buf, start)[0]
    name: str | None = None
    family_id: int | None = None
    groups: list[tuple[str, int]] = []
    for atype, astart, aend in _iter_attrs(buf, start + _GENL_HDR.size, message.end, "nlctrl"):
        if atype == CTRL_ATTR_FAMILY_NAME:
            name = _c_string(buf, astart, aend)
        elif atype == CTRL_ATTR_FAMILY_ID:
            if aend - astart != 2:
                raise _attr_error("nlctrl FAMILY_ID", atype, 2, aend - astart, astart - 4)
            family_id = int(_U16.unpack_from(buf, astart)[0])
        elif atype == CTRL_ATTR_MCAST_GROUPS:
            for _index, gstart, gend in _iter_attrs(buf, astart, aend, "nlctrl MCAST_GROUPS"):
                group_name: str | None = None
                group_id: int | None = None
                for gtype, vstart, vend in _iter_attrs(buf, gstart, gend, "nlctrl MCAST_GROUP"):
                    if gtype == CTRL_ATTR_MCAST_GRP_NAME:
                        group_name = _c_string(buf, vstart, vend)
                    elif gtype == CTRL_ATTR_MCAST_GRP_ID:
                        group_id = _u32_attr(buf, vstart, vend - vstart, "nlctrl MCAST_GRP_ID", gtype)
                if group_name is not None and group_id is not None:
                    groups.append((group_name, group_id))
    return CtrlFamily(cmd, name, family_id, tuple(groups))


def genl_command(buf: bytes, message: Message) -> tuple[int, int]:
    """The command and dp_ifindex of an OVS family message (a notification's whole meaning here)."""
    if message.end - message.start < _HEADERS_LEN:
        raise DecodeError(
            f"OVS message at offset {message.start} is {message.end - message.start} bytes,"
            f" shorter than its {_HEADERS_LEN}-byte headers"
        )
    cmd, _version, _reserved, dp_ifindex = _GENL_OVS_HDR.unpack_from(buf, message.start + _NLMSGHDR.size)
    return cmd, dp_ifindex
