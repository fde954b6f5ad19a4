"""The ``ovs_vport`` family: one record per vport, from ``OVS_VPORT_CMD_GET`` dumps.

Layouts from ``include/uapi/linux/openvswitch.h`` (``enum ovs_vport_attr``, ``struct
ovs_vport_stats``, ``enum ovs_tunnel_attr``, ``enum ovs_vport_upcall_attr``), the same numbers
as the kernel's ``Documentation/netlink/specs/ovs_vport.yaml``; declared below as data
(``VPORT``), which ``tests/unit/test_families.py`` decodes with the generic decoder to check
this module's against.

This is the hot path: a scrape decodes every vport of every datapath. ``decode_vport`` is a
single pass over each message with ``struct.unpack_from``, and ``VportDecoder`` reuses what
it decoded of a message whose bytes, counters aside, did not change since the last scrape.
A generic attribute-class decoder costs 6-30x more per vport.
"""

from __future__ import annotations

import functools
import operator
import struct
from collections.abc import Callable
from itertools import repeat
from operator import add
from typing import Any, NamedTuple

from exporter.kernel.netlink import (
    NLA_HDR,
    NLA_TYPE_MASK,
    NLMSGHDR,
    OVS_HEADERS_LEN,
    S32,
    U16,
    U32,
    U64,
    AttributeSet,
    DecodeError,
    Message,
    StructLayout,
    attr_error,
    c_string,
    iter_attrs,
    new_tuple,
    ovs_start,
    u32_array,
)

OVS_VPORT_FAMILY = "ovs_vport"
OVS_VPORT_MCGROUP = "ovs_vport"
OVS_VPORT_VERSION = 1

VPORT_STATS = StructLayout(
    "ovs_vport_stats",
    (
        ("rx_packets", "u64"),
        ("tx_packets", "u64"),
        ("rx_bytes", "u64"),
        ("tx_bytes", "u64"),
        ("rx_errors", "u64"),
        ("tx_errors", "u64"),
        ("rx_dropped", "u64"),
        ("tx_dropped", "u64"),
    ),
)
# enum ovs_vxlan_ext, inside OVS_TUNNEL_ATTR_EXTENSION: flags. One missing here is shown as its number.
VXLAN_EXT = AttributeSet("vport OPTIONS EXTENSION", {1: ("GBP", "flag")})
# enum ovs_tunnel_attr, inside OVS_VPORT_ATTR_OPTIONS. DST_PORT: the kernel sends a u16 in host
# order (nla_put_u16) although the YNL spec says u32; decode_vport accepts both widths.
TUNNEL = AttributeSet("vport OPTIONS", {1: ("DST_PORT", "binary"), 2: ("EXTENSION", VXLAN_EXT)})
# enum ovs_vport_upcall_attr: numbering starts at 0, unlike every other OVS enum.
UPCALL_STATS = AttributeSet("vport UPCALL_STATS", {0: ("SUCCESS", "u64"), 1: ("FAIL", "u64")})
# enum ovs_vport_attr
VPORT = AttributeSet(
    "vport",
    {
        1: ("PORT_NO", "u32"),
        2: ("TYPE", "u32"),  # enum ovs_vport_type
        3: ("NAME", "string"),
        4: ("OPTIONS", TUNNEL),
        5: ("UPCALL_PID", "u32-array"),
        6: ("STATS", VPORT_STATS),
        7: ("PAD", "pad"),
        8: ("IFINDEX", "u32"),  # 4.16+
        9: ("NETNSID", "s32"),  # 4.16+, only for a netdev in another namespace
        10: ("UPCALL_STATS", UPCALL_STATS),  # 6.2+
    },
)

OVS_VPORT_ATTR_PORT_NO = VPORT["PORT_NO"]
OVS_VPORT_ATTR_TYPE = VPORT["TYPE"]
OVS_VPORT_ATTR_NAME = VPORT["NAME"]
OVS_VPORT_ATTR_OPTIONS = VPORT["OPTIONS"]
OVS_VPORT_ATTR_UPCALL_PID = VPORT["UPCALL_PID"]
OVS_VPORT_ATTR_STATS = VPORT["STATS"]
OVS_VPORT_ATTR_IFINDEX = VPORT["IFINDEX"]
OVS_VPORT_ATTR_NETNSID = VPORT["NETNSID"]
OVS_VPORT_ATTR_UPCALL_STATS = VPORT["UPCALL_STATS"]
OVS_TUNNEL_ATTR_DST_PORT = TUNNEL["DST_PORT"]
OVS_TUNNEL_ATTR_EXTENSION = TUNNEL["EXTENSION"]
OVS_VPORT_UPCALL_ATTR_SUCCESS = UPCALL_STATS["SUCCESS"]
OVS_VPORT_UPCALL_ATTR_FAIL = UPCALL_STATS["FAIL"]

#: OVS_VXLAN_EXT_* types as the ``extension`` label names them.
VXLAN_EXT_NAMES = {number: name.lower() for number, (name, _kind) in VXLAN_EXT.attrs.items()}
#: enum ovs_vport_type. A type missing here is still exported, as its number.
VPORT_TYPE_NAMES = {1: "netdev", 2: "internal", 3: "gre", 4: "vxlan", 5: "geneve"}

_VPORT_STATS = VPORT_STATS.unpack
# How ovs_vport_cmd_fill_info starts every vport message since 4.16: PORT_NO, TYPE and NAME's
# header; after the name, IFINDEX and STATS (unless NETNSID comes between them), then on 6.2+
# UPCALL_STATS with its SUCCESS and FAIL. Each attribute header is read as one u32 and compared
# with the u32 the expected (length, type) makes. See _decode_usual_vport_prefix.
_VPORT_HEAD = struct.Struct("=IIIIHH")  # PORT_NO header and value, TYPE header and value, NAME header
_VPORT_IFINDEX_STATS = struct.Struct("=III8Q")  # IFINDEX header and value, STATS header and value
_VPORT_UPCALL_STATS = struct.Struct("=IIQIQ")  # UPCALL_STATS header, SUCCESS, FAIL (headers, values)


def _nla_header_u32(length: int, atype: int) -> int:
    return int(U32.unpack(NLA_HDR.pack(length, atype))[0])


_HDR_PORT_NO = _nla_header_u32(8, OVS_VPORT_ATTR_PORT_NO)
_HDR_TYPE = _nla_header_u32(8, OVS_VPORT_ATTR_TYPE)
_HDR_IFINDEX = _nla_header_u32(8, OVS_VPORT_ATTR_IFINDEX)
_HDR_STATS = _nla_header_u32(4 + _VPORT_STATS.size, OVS_VPORT_ATTR_STATS)
_HDR_UPCALL_STATS = _nla_header_u32(_VPORT_UPCALL_STATS.size, OVS_VPORT_ATTR_UPCALL_STATS)
_HDR_UPCALL_SUCCESS = _nla_header_u32(12, OVS_VPORT_UPCALL_ATTR_SUCCESS)
_HDR_UPCALL_FAIL = _nla_header_u32(12, OVS_VPORT_UPCALL_ATTR_FAIL)
_HDR_WITHOUT_FLAGS = _nla_header_u32(0xFFFF, NLA_TYPE_MASK)  # clears NLA_F_NESTED and NET_BYTEORDER


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


def _count_handlers(buf: bytes, start: int, size: int) -> int:
    """Distinct non-zero PIDs of a vport's OVS_VPORT_ATTR_UPCALL_PID (usually exactly one)."""
    if size == 4:
        return 1 if U32.unpack_from(buf, start)[0] else 0
    return len(set(u32_array(buf, start, size, "vport UPCALL_PID", OVS_VPORT_ATTR_UPCALL_PID)) - {0})


def _decode_upcall_stats(buf: bytes, pos: int, end: int) -> UpcallStats:
    success: int | None = None
    fail: int | None = None
    for atype, start, aend in iter_attrs(buf, pos, end, "vport UPCALL_STATS"):
        if atype in (OVS_VPORT_UPCALL_ATTR_SUCCESS, OVS_VPORT_UPCALL_ATTR_FAIL):
            if aend - start != 8:
                raise attr_error("vport UPCALL_STATS", atype, 8, aend - start, start - 4)
            value = U64.unpack_from(buf, start)[0]
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
    for atype, start, aend in iter_attrs(buf, pos, end, "vport OPTIONS"):
        if atype == OVS_TUNNEL_ATTR_DST_PORT:
            # The kernel sends a u16 in host order (nla_put_u16) although the YNL
            # spec says u32; accept both widths.
            if aend - start == 2:
                dst_port = int(U16.unpack_from(buf, start)[0])
            elif aend - start == 4:
                dst_port = int(U32.unpack_from(buf, start)[0])
            else:
                raise attr_error("vport OPTIONS DST_PORT", atype, 2, aend - start, start - 4)
        elif atype == OVS_TUNNEL_ATTR_EXTENSION:
            # vxlan_get_options: a nest of flags (GBP is an NLA_FLAG, "Flag or __u32" in the
            # header). Only the attribute types matter; an unknown one is kept as its number.
            extension = tuple(t for t, _s, _e in iter_attrs(buf, start, aend, "vport OPTIONS EXTENSION"))
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
    name = c_string(buf, pos + 20, pos + 16 + name_len)
    stats: VportStats = new_tuple(VportStats, tail[3:])
    pos = after_name + _VPORT_IFINDEX_STATS.size
    upcall: UpcallStats | None = None
    if pos + _VPORT_UPCALL_STATS.size <= end:
        outer_hdr, success_hdr, success, fail_hdr, fail = _VPORT_UPCALL_STATS.unpack_from(buf, pos)
        if (
            outer_hdr & _HDR_WITHOUT_FLAGS == _HDR_UPCALL_STATS
            and success_hdr & _HDR_WITHOUT_FLAGS == _HDR_UPCALL_SUCCESS
            and fail_hdr & _HDR_WITHOUT_FLAGS == _HDR_UPCALL_FAIL
        ):
            upcall = new_tuple(UpcallStats, (success, fail))
            pos += _VPORT_UPCALL_STATS.size
    return pos, port_no, vtype, name, tail[1], stats, upcall


def decode_vport(buf: bytes, message: Message) -> Vport:
    """Decode one ``ovs_vport`` message (OVS_VPORT_CMD_NEW as a dump reply)."""
    dp_ifindex, pos = ovs_start(buf, message, "vport")
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

    unpack_hdr = NLA_HDR.unpack_from
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
                raise attr_error("vport STATS", atype, 64, size, pos)
            stats = new_tuple(VportStats, _VPORT_STATS.unpack_from(buf, start))
        elif atype == OVS_VPORT_ATTR_PORT_NO:
            if size != 4:
                raise attr_error("vport PORT_NO", atype, 4, size, pos)
            port_no = U32.unpack_from(buf, start)[0]
        elif atype == OVS_VPORT_ATTR_TYPE:
            if size != 4:
                raise attr_error("vport TYPE", atype, 4, size, pos)
            vtype = U32.unpack_from(buf, start)[0]
        elif atype == OVS_VPORT_ATTR_NAME:
            name = c_string(buf, start, pos + alen)
        elif atype == OVS_VPORT_ATTR_IFINDEX:
            if size != 4:
                raise attr_error("vport IFINDEX", atype, 4, size, pos)
            ifindex = U32.unpack_from(buf, start)[0]
        elif atype == OVS_VPORT_ATTR_NETNSID:
            if size != 4:
                raise attr_error("vport NETNSID", atype, 4, size, pos)
            netnsid = S32.unpack_from(buf, start)[0]
        # PAD and attributes newer kernels add are skipped.
        pos += (alen + 3) & ~3
    if pos < end:
        raise DecodeError(f"vport: {end - pos} trailing bytes at offset {pos}")
    if port_no is None or vtype is None or name is None:
        missing = [n for n, v in (("PORT_NO", port_no), ("TYPE", vtype), ("NAME", name)) if v is None]
        raise DecodeError(f"vport message at offset {message.start} lacks {', '.join(missing)}")
    return new_tuple(
        Vport,
        (dp_ifindex, port_no, vtype, name, ifindex, netnsid, stats, upcall, dst_port, extension, handlers),
    )


# --- Dumps of many vports: a cache keyed on the bytes the kernel sent ------------------------------

# Where a vport message's cache key starts and ends: from the genetlink header (past the nlmsghdr,
# whose sequence number changes every dump) through dp_ifindex, PORT_NO, TYPE and NAME's header
# (length and type) in the kernel's usual order. Fixed-size, so the key is one slice.
_KEY_START = NLMSGHDR.size
_KEY_END = OVS_HEADERS_LEN + 8 + 8 + 4
# The counters a vport message carries, as a layout entry records where they are.
_STATS_COUNTERS = "8Q"
_UPCALL_COUNTER = "Q"


@functools.lru_cache(maxsize=512)
def _layout(
    fmt: str, fixed: tuple[int, ...]
) -> tuple[Callable[[bytes, int], tuple[Any, ...]], Callable[[tuple[Any, ...]], object]]:
    """The unpack and the fixed runs' getter of a layout, shared by every message of that layout
    (few: layouts differ by name length and the attributes present)."""
    return struct.Struct("=" + fmt).unpack_from, operator.itemgetter(*fixed)


def _counter_offsets(buf: bytes, start: int, end: int) -> tuple[int, int, int] | None:
    """Where decode_vport took this message's counters from: STATS, upcall SUCCESS and FAIL payloads.

    Offsets from the message start, 0 for a counter the message does not carry. The last
    attribute of a type wins, as in decode_vport. None when a counter lies in the key (an
    order no kernel writes): such a message is decoded afresh every time. Only called on a
    message decode_vport has just accepted, so every length is already checked.
    """
    stats = success = fail = 0
    for atype, astart, aend in iter_attrs(buf, start + OVS_HEADERS_LEN, end, "vport"):
        if atype == OVS_VPORT_ATTR_STATS:
            stats = astart - start
        elif atype == OVS_VPORT_ATTR_UPCALL_STATS:
            success = fail = 0
            for utype, ustart, _uend in iter_attrs(buf, astart, aend, "vport UPCALL_STATS"):
                if utype == OVS_VPORT_UPCALL_ATTR_SUCCESS:
                    success = ustart - start
                elif utype == OVS_VPORT_UPCALL_ATTR_FAIL:
                    fail = ustart - start
    if any(0 < offset < _KEY_END for offset in (stats, success, fail)):
        return None
    return stats, success, fail


# A cache entry: the message length; the unpack of the message from _KEY_END to its end as its
# fixed byte runs and its counters, alternately; the getter of the fixed runs in that unpack and
# their bytes; where the STATS and upcall SUCCESS and FAIL counters are in it (0: not in this
# message); the record's fields before and after its two counter fields; and, for a datagram's
# run (_make_run), the lengths of the fixed runs and which counters follow each.
_Entry = tuple[
    int,
    Callable[[bytes, int], tuple[Any, ...]],
    Callable[[tuple[Any, ...]], object],
    object,
    int,
    int,
    int,
    tuple[Any, ...],
    tuple[Any, ...],
    tuple[int, ...],
]
# The counters of a usual message, in the kernel's order: what a datagram's run is made of.
_USUAL_SHAPES = ((_STATS_COUNTERS, _UPCALL_COUNTER, _UPCALL_COUNTER), (_STATS_COUNTERS,))


def _make_entry(buf: bytes, start: int, end: int, record: Vport) -> _Entry | None:
    """What a later message with the same bytes but its counters needs to be decoded from."""
    offsets = _counter_offsets(buf, start, end)
    if offsets is None:
        return None
    stats, success, fail = offsets
    present = ((stats, 64, _STATS_COUNTERS), (success, 8, _UPCALL_COUNTER), (fail, 8, _UPCALL_COUNTER))
    counters = sorted(counter for counter in present if counter[0])
    fmt = ""
    fixed: list[int] = []  # indexes of the fixed runs in the unpacked tuple
    runs: list[int] = []  # their lengths
    where: dict[int, int] = {}  # counter offset -> its index in the unpacked tuple
    pos = _KEY_END
    index = 0
    for offset, width, counter_fmt in counters:
        fmt += f"{offset - pos}s{counter_fmt}"
        fixed.append(index)
        runs.append(offset - pos)
        where[offset] = index + 1
        index += 1 + (8 if counter_fmt == _STATS_COUNTERS else 1)
        pos = offset + width
    fmt += f"{end - start - pos}s"
    fixed.append(index)
    runs.append(end - start - pos)
    unpack, fixed_of = _layout(fmt, tuple(fixed))
    # A shape a datagram's run can hold, else no lengths: (STATS, SUCCESS, FAIL) or (STATS,).
    shape = tuple(counter_fmt for _offset, _width, counter_fmt in counters)
    usual = (shape == _USUAL_SHAPES[0] and stats < success < fail) or shape == _USUAL_SHAPES[1]
    return (
        end - start,
        unpack,
        fixed_of,
        fixed_of(unpack(buf, start + _KEY_END)),
        where.get(stats, 0),
        where.get(success, 0),
        where.get(fail, 0),
        record[:_RECORD_STATS],
        record[_RECORD_UPCALL_STATS + 1 :],
        tuple(runs) if usual else (),
    )


# A datagram's run: its length; where its run of vport messages ends; one unpack of the whole run;
# how many fields each message has in it; where the fixed runs, the sequence number and the
# counters of the first message are (the others follow every block of fields: strided slices
# read them all in C); how many messages; the fixed bytes, joined; the records' heads and tails;
# and the messages' keys and entries, for the next scrape's per-message cache.
_Run = tuple[
    int,
    int,
    Callable[[bytes, int], tuple[Any, ...]],
    int,
    tuple[int, ...],
    int,
    int,
    int,
    int,
    bytes,
    list[tuple[Any, ...]],
    list[tuple[Any, ...]],
    list[bytes],
    list[_Entry],
]
# Before each message's first fixed run: its sequence number. Its first fixed run starts at the
# pid (the key and the bytes up to STATS follow); its last one ends with the next message's
# length, type and flags. The first message's length, type and flags lead the unpack.
_LEAD = 8


def _make_run(buf: bytes, covered: int, made: list[tuple[int, bytes, _Entry]]) -> _Run | None:
    """A datagram's run of vport messages, each with its entry, as one unpack (see decode_run)."""
    # Fixed runs per message: 4 around STATS, SUCCESS and FAIL; 2 around STATS alone (before 6.2).
    shape = len(made[0][2][9])
    if not shape or any(len(entry[9]) != shape for _pos, _key, entry in made):
        return None  # a message of another shape (no STATS; upcall statistics in some only)
    fmt = f"={_LEAD}s"
    for i, (pos, _key, entry) in enumerate(made):
        runs = entry[9]
        following = made[i + 1][0] + _LEAD if i + 1 < len(made) else covered
        first = NLMSGHDR.size - 12 + (_KEY_END - _KEY_START) + runs[0]  # pid, key, up to STATS
        last = runs[-1] + following - (pos + entry[0])
        if shape == 4:
            fmt += f"I{first}s8Q{runs[1]}sQ{runs[2]}sQ{last}s"
        else:
            fmt += f"I{first}s8Q{last}s"
    block = 15 if shape == 4 else 11
    # In each block: seq, fixed, 8 stats, [fixed, success, fixed, fail,] fixed.
    fixed = (2, 11, 13, 15) if shape == 4 else (2, 11)
    unpack = struct.Struct(fmt).unpack_from
    values = unpack(buf, 0)
    return (
        len(buf),
        covered,
        unpack,
        block,
        fixed,
        1,
        3,
        12 if shape == 4 else 0,
        14 if shape == 4 else 0,
        _joined_fixed(values, block, fixed),
        [entry[7] for _pos, _key, entry in made],
        [entry[8] for _pos, _key, entry in made],
        [key for _pos, key, _entry in made],
        [entry for _pos, _key, entry in made],
    )


def _joined_fixed(values: tuple[Any, ...], block: int, fixed: tuple[int, ...]) -> bytes:
    """Every fixed run of a datagram's unpack, joined (each run's length is in the format)."""
    return values[0] + b"".join(b"".join(values[start::block]) for start in fixed)  # type: ignore[no-any-return]


_RECORD_STATS = Vport._fields.index("stats")
_RECORD_UPCALL_STATS = Vport._fields.index("upcall_stats")
assert _RECORD_UPCALL_STATS == _RECORD_STATS + 1  # the hit path rebuilds a record as head, 2, tail


class VportDecoder:
    """``decode_vport`` over whole dumps, reusing what it decoded of each port that did not change.

    Between two scrapes most of a vport message is the same bytes: its dp_ifindex, port
    number, type, name, ifindex, netnsid, options and upcall PIDs. Only its counters (the
    STATS payload and upcall SUCCESS and FAIL values) move. A message whose every byte but
    those counters (and the nlmsghdr's sequence number, flags and pid, which decode_vport
    does not read) equals a message of the last scrape is given the record decoded from that
    message, with the counters read from this message's own bytes at the offsets decode_vport
    read them from. Everything else is decoded by decode_vport itself. The key and the check
    are the kernel's bytes, never a time or a sequence number: a change of any attribute is a
    miss, and no counter value is ever taken from an earlier dump.

    Bounded: a scrape keeps only the entries of the messages it saw (``new_scrape``), so
    ports that went away are let go. Not thread-safe: one source reads at a time.
    """

    __slots__ = ("_current", "_previous", "_runs_current", "_runs_previous", "decoded", "whole_datagrams")

    def __init__(self) -> None:
        self._previous: dict[bytes, _Entry] = {}
        self._current: dict[bytes, _Entry] = {}
        # Whole datagrams of vport messages, by the key of their first message.
        self._runs_previous: dict[bytes, _Run] = {}
        self._runs_current: dict[bytes, _Run] = {}
        self.whole_datagrams = 0  # datagrams decoded as one run so far (for the tests)
        # Messages decoded afresh by decode_vport so far, none of them served from the cache: when
        # a dump leaves it unchanged, each of its messages equals one of the last scrape's.
        self.decoded = 0

    def new_scrape(self) -> None:
        """Start a scrape: what the last one saw can be reused, anything older is dropped."""
        self._previous, self._current = self._current, {}
        self._runs_previous, self._runs_current = self._runs_current, {}

    def __len__(self) -> int:
        return len(self._current)

    def decode_run(self, buf: bytes, pos: int, seq: int, family: int, records: list[Vport]) -> int:
        """Decode the messages of ``family`` and ``seq`` from ``pos`` on into ``records``.

        Messages of another sequence number (late replies to an earlier request) are
        skipped. Returns the offset of the first message of this ``seq`` that is of
        another type (NLMSG_DONE, an error: for the caller), or the datagram's length.
        Raises DecodeError as iter_messages and decode_vport do.
        """
        total = len(buf)
        if pos == 0:
            # The whole datagram the same as one of the last scrape, counters aside: one unpack.
            run = self._runs_previous.get(buf[_KEY_START:_KEY_END])
            if run is not None and run[0] == total:
                pos = self._decode_whole_run(run, buf, seq, records)
        # What this datagram's run would be made of, when it starts here and every message has
        # an entry: (offset, key, entry) of each message.
        made: list[tuple[int, bytes, _Entry]] | None = [] if pos == 0 else None
        unpack_header = NLMSGHDR.unpack_from
        previous = self._previous
        current = self._current
        while pos < total:
            if total - pos < NLMSGHDR.size:
                raise DecodeError(f"truncated netlink header at offset {pos}: {total - pos} bytes left")
            length, mtype, _flags, mseq, _pid = unpack_header(buf, pos)
            if length < NLMSGHDR.size or pos + length > total:
                raise DecodeError(
                    f"netlink message at offset {pos} claims {length} bytes, {total - pos} available"
                )
            if mseq != seq:
                made = None
            else:
                if mtype != family:
                    break
                key = buf[pos + _KEY_START : pos + _KEY_END]
                entry = previous.get(key)
                if entry is not None and entry[0] == length:
                    _length, unpack, fixed_of, fixed, at_stats, at_success, at_fail, head, tail, _runs = entry
                    values = unpack(buf, pos + _KEY_END)
                    if fixed_of(values) == fixed:
                        stats = new_tuple(VportStats, values[at_stats : at_stats + 8]) if at_stats else None
                        upcall = None
                        if at_success:
                            upcall = new_tuple(UpcallStats, (values[at_success], values[at_fail]))
                        records.append(new_tuple(Vport, (*head, stats, upcall, *tail)))
                        current[key] = entry
                        if made is not None:
                            made.append((pos, key, entry))
                        pos += (length + 3) & ~3
                        continue
                end = pos + length
                record = decode_vport(buf, new_tuple(Message, (mtype, _flags, mseq, pos, end)))
                records.append(record)
                self.decoded += 1
                entry = _make_entry(buf, pos, end, record) if length >= _KEY_END else None
                if entry is None:
                    made = None
                else:
                    current[key] = entry
                    if made is not None:
                        made.append((pos, key, entry))
            pos += (length + 3) & ~3
        if made is not None and len(made) > 1:
            run = _make_run(buf, min(pos, total), made)
            if run is not None:
                self._runs_current[made[0][1]] = run
        return min(pos, total)

    def _decode_whole_run(self, run: _Run, buf: bytes, seq: int, records: list[Vport]) -> int:
        """The records of a datagram's run, if only its counters changed: where the run ends, else 0."""
        (_total, covered, unpack, block, fixed, at_seq, at_stats, at_success, at_fail, joined, heads, tails,
         keys, entries) = run  # fmt: skip
        values = unpack(buf, 0)
        if values[at_seq::block].count(seq) != len(heads) or _joined_fixed(values, block, fixed) != joined:
            return 0
        # C loops only: no Python code runs per vport.
        all_stats = map(
            new_tuple,
            repeat(VportStats),
            zip(*(values[at_stats + i :: block] for i in range(8)), strict=True),
        )
        upcalls = (
            map(
                new_tuple,
                repeat(UpcallStats),
                zip(values[at_success::block], values[at_fail::block], strict=True),
            )
            if at_success
            else repeat(None)
        )
        heads_and_counters = map(add, heads, zip(all_stats, upcalls, strict=False))  # upcalls may be endless
        records.extend(map(new_tuple, repeat(Vport), map(add, heads_and_counters, tails)))
        self._current.update(zip(keys, entries, strict=True))
        self._runs_current[keys[0]] = run
        self.whole_datagrams += 1
        return covered
