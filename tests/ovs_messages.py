"""Test-side encoder: builds netlink replies byte for byte as the kernel lays them out,
and a fake kernel socket that answers dump requests with them.

Layouts follow include/uapi/linux/openvswitch.h and the fill order of
net/openvswitch/datapath.c (ovs_vport_cmd_fill_info: PORT_NO, TYPE, NAME,
IFINDEX, [NETNSID], STATS, UPCALL_STATS, UPCALL_PID, OPTIONS). The unit tests,
the fuzz tests and the benchmark all feed these bytes to the exporter's real
decoder and source: only the kernel socket is replaced.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from exporter.kernel.families.datapath import DATAPATH, OVS_DATAPATH_FAMILY, OVS_DATAPATH_VERSION
from exporter.kernel.families.link import IFINFOMSG, LINK, LINKINFO, RTM_GETLINK, RTM_NEWLINK
from exporter.kernel.families.nlctrl import (
    CTRL,
    CTRL_ATTR_FAMILY_ID,
    CTRL_ATTR_FAMILY_NAME,
    GENL_ID_CTRL,
    MCAST_GROUP,
)
from exporter.kernel.families.vport import (
    OVS_TUNNEL_ATTR_DST_PORT,
    OVS_TUNNEL_ATTR_EXTENSION,
    OVS_VPORT_ATTR_IFINDEX,
    OVS_VPORT_ATTR_NAME,
    OVS_VPORT_ATTR_NETNSID,
    OVS_VPORT_ATTR_OPTIONS,
    OVS_VPORT_ATTR_PORT_NO,
    OVS_VPORT_ATTR_STATS,
    OVS_VPORT_ATTR_TYPE,
    OVS_VPORT_ATTR_UPCALL_STATS,
    OVS_VPORT_FAMILY,
    OVS_VPORT_UPCALL_ATTR_FAIL,
    OVS_VPORT_UPCALL_ATTR_SUCCESS,
    OVS_VPORT_VERSION,
)
from exporter.kernel.netlink import NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, OVS_CMD_GET

NLA_F_NESTED = 0x8000
NLM_F_MULTI = 0x2
DATAPATH_FAMILY_ID = 0x1A  # arbitrary ids, as the kernel assigns them at module load
VPORT_FAMILY_ID = 0x1B
# A netlink dump fills datagrams of up to ~32 KiB (NLMSG_GOODSIZE and later growth).
DUMP_DATAGRAM_SIZE = 32768


def nla(atype: int, payload: bytes) -> bytes:
    """One attribute, padded to 4 bytes as nla_put does."""
    length = 4 + len(payload)
    return struct.pack("=HH", length, atype) + payload + b"\0" * (-length % 4)


def nlmsg(mtype: int, flags: int, seq: int, payload: bytes, pid: int = 0) -> bytes:
    return struct.pack("=IHHII", 16 + len(payload), mtype, flags, seq, pid) + payload


def genl_ovs(cmd: int, version: int, dp_ifindex: int, attrs: bytes) -> bytes:
    return struct.pack("=BBHi", cmd, version, 0, dp_ifindex) + attrs


def done(seq: int, error: int = 0) -> bytes:
    return nlmsg(NLMSG_DONE, NLM_F_MULTI, seq, struct.pack("=i", -error))


def nlmsg_error(seq: int, error: int, request: bytes = b"") -> bytes:
    return nlmsg(NLMSG_ERROR, 0, seq, struct.pack("=i", -error) + request[:16])


@dataclass
class FakeVport:
    port_no: int
    name: str
    type: int = 1
    ifindex: int | None = None
    netnsid: int | None = None
    stats: tuple[int, ...] | None = (0, 0, 0, 0, 0, 0, 0, 0)
    upcall: tuple[int, int] | None = None
    dst_port: int | None = None
    upcall_pids: tuple[int, ...] = (0,)
    extension: tuple[int, ...] | None = None  # OVS_VXLAN_EXT_* flag types in OVS_TUNNEL_ATTR_EXTENSION
    extra_attrs: bytes = b""  # e.g. unknown attributes a newer kernel sends


@dataclass
class FakeDatapath:
    name: str
    dp_ifindex: int
    stats: tuple[int, int, int, int] | None = (0, 0, 0, 0)
    megaflow: tuple[int, int, int] | None = (0, 0, 0)  # mask_hit, masks, cache_hit
    vports: list[FakeVport] = field(default_factory=list)
    user_features: int | None = 0
    masks_cache_size: int | None = 256
    per_cpu_pids: tuple[int, ...] | None = None


def vport_attrs(v: FakeVport) -> bytes:
    parts = [
        nla(OVS_VPORT_ATTR_PORT_NO, struct.pack("=I", v.port_no)),
        nla(OVS_VPORT_ATTR_TYPE, struct.pack("=I", v.type)),
        nla(OVS_VPORT_ATTR_NAME, v.name.encode() + b"\0"),
    ]
    if v.ifindex is not None:
        parts.append(nla(OVS_VPORT_ATTR_IFINDEX, struct.pack("=I", v.ifindex)))
    if v.netnsid is not None:
        parts.append(nla(OVS_VPORT_ATTR_NETNSID, struct.pack("=i", v.netnsid)))
    if v.stats is not None:
        parts.append(nla(OVS_VPORT_ATTR_STATS, struct.pack("=8Q", *v.stats)))
    if v.upcall is not None:
        inner = nla(OVS_VPORT_UPCALL_ATTR_SUCCESS, struct.pack("=Q", v.upcall[0])) + nla(
            OVS_VPORT_UPCALL_ATTR_FAIL, struct.pack("=Q", v.upcall[1])
        )
        parts.append(nla(OVS_VPORT_ATTR_UPCALL_STATS | NLA_F_NESTED, inner))
    parts.append(nla(5, struct.pack(f"={len(v.upcall_pids)}I", *v.upcall_pids)))  # UPCALL_PID
    if v.dst_port is not None or v.extension is not None:
        # vxlan_get_options: DST_PORT, then the EXTENSION nest of flags when the port has any.
        inner = b"" if v.dst_port is None else nla(OVS_TUNNEL_ATTR_DST_PORT, struct.pack("=H", v.dst_port))
        if v.extension is not None:
            flags = b"".join(nla(t, b"") for t in v.extension)
            inner += nla(OVS_TUNNEL_ATTR_EXTENSION | NLA_F_NESTED, flags)
        parts.append(nla(OVS_VPORT_ATTR_OPTIONS | NLA_F_NESTED, inner))
    elif v.type in (3, 4, 5):
        parts.append(nla(OVS_VPORT_ATTR_OPTIONS | NLA_F_NESTED, b""))
    return b"".join(parts) + v.extra_attrs


def vport_message(seq: int, dp_ifindex: int, v: FakeVport) -> bytes:
    payload = genl_ovs(1, OVS_VPORT_VERSION, dp_ifindex, vport_attrs(v))  # OVS_VPORT_CMD_NEW
    return nlmsg(VPORT_FAMILY_ID, NLM_F_MULTI, seq, payload)


def datapath_message(seq: int, dp: FakeDatapath) -> bytes:
    attrs = [nla(DATAPATH["NAME"], dp.name.encode() + b"\0"), nla(2, struct.pack("=I", 0))]
    if dp.stats is not None:
        attrs.append(nla(DATAPATH["STATS"], struct.pack("=4Q", *dp.stats)))
    if dp.megaflow is not None:
        mask_hit, masks, cache_hit = dp.megaflow
        attrs.append(nla(DATAPATH["MEGAFLOW_STATS"], struct.pack("=QIIQQ", mask_hit, masks, 0, cache_hit, 0)))
    if dp.user_features is not None:
        attrs.append(nla(5, struct.pack("=I", dp.user_features)))  # USER_FEATURES
    if dp.masks_cache_size is not None:
        attrs.append(nla(7, struct.pack("=I", dp.masks_cache_size)))  # MASKS_CACHE_SIZE
    if dp.per_cpu_pids is not None:
        attrs.append(nla(8, struct.pack(f"={len(dp.per_cpu_pids)}I", *dp.per_cpu_pids)))  # PER_CPU_PIDS
    payload = genl_ovs(1, OVS_DATAPATH_VERSION, dp.dp_ifindex, b"".join(attrs))
    return nlmsg(DATAPATH_FAMILY_ID, NLM_F_MULTI, seq, payload)


def pack_datagrams(messages: Iterable[bytes], size: int = DUMP_DATAGRAM_SIZE) -> list[bytes]:
    """Group messages into datagrams the way a dump fills its skbs."""
    datagrams: list[bytes] = []
    current: list[bytes] = []
    used = 0
    for message in messages:
        if current and used + len(message) > size:
            datagrams.append(b"".join(current))
            current, used = [], 0
        current.append(message)
        used += len(message)
    if current:
        datagrams.append(b"".join(current))
    return datagrams


def dump_reply(seq: int, messages: Sequence[bytes]) -> list[bytes]:
    """A complete dump: the messages, then NLMSG_DONE in a datagram of its own."""
    return [*pack_datagrams(messages), done(seq)]


class FakeKernelSocket:
    """A ``KernelSocket`` that answers GET dumps from a list of FakeDatapath.

    Records every request it receives, so tests can check that only GET dumps are sent.
    ``vport_dump_override`` maps a dp_ifindex to raw datagrams to return instead.
    """

    def __init__(
        self,
        datapaths: Sequence[FakeDatapath] = (),
        *,
        families: dict[str, int] | None = None,
        vport_dump_override: dict[int, list[bytes]] | None = None,
        datapath_dump_override: list[bytes] | None = None,
    ) -> None:
        self.datapaths = list(datapaths)
        self.families = (
            {OVS_DATAPATH_FAMILY: DATAPATH_FAMILY_ID, OVS_VPORT_FAMILY: VPORT_FAMILY_ID}
            if families is None
            else families
        )
        self.vport_dump_override = vport_dump_override or {}
        self.datapath_dump_override = datapath_dump_override
        self.requests: list[bytes] = []
        self.pending: list[bytes] = []
        self.closed = False

    def family_id(self, name: str) -> int:
        from exporter.kernel.genl import FamilyNotFoundError

        if name not in self.families:
            raise FamilyNotFoundError(name)
        return self.families[name]

    def send(self, data: bytes) -> None:
        self.requests.append(data)
        _length, mtype, flags, seq, _pid = struct.unpack_from("=IHHII", data)
        cmd, _version, _reserved, dp_ifindex = struct.unpack_from("=BBHi", data, 16)
        assert cmd == OVS_CMD_GET and flags == NLM_F_REQUEST | NLM_F_DUMP
        if mtype == DATAPATH_FAMILY_ID:
            if self.datapath_dump_override is not None:
                self.pending = _with_seq(self.datapath_dump_override, seq)
            else:
                self.pending = dump_reply(seq, [datapath_message(seq, dp) for dp in self.datapaths])
        elif mtype == VPORT_FAMILY_ID:
            if dp_ifindex in self.vport_dump_override:
                self.pending = _with_seq(self.vport_dump_override[dp_ifindex], seq)
                return
            for dp in self.datapaths:
                if dp.dp_ifindex == dp_ifindex:
                    self.pending = dump_reply(seq, [vport_message(seq, dp_ifindex, v) for v in dp.vports])
                    return
            self.pending = [done(seq, errno.ENODEV)]
        else:
            self.pending = [nlmsg_error(seq, errno.ENOENT, data)]

    def recv(self) -> bytes:
        if not self.pending:
            raise TimeoutError("no reply pending")
        return self.pending.pop(0)

    def close(self) -> None:
        self.closed = True


def _with_seq(datagrams: list[bytes], seq: int) -> list[bytes]:
    """Rewrite the seq of every message in pre-built datagrams (built with seq 0)."""
    out = []
    for datagram in datagrams:
        buf = bytearray(datagram)
        pos = 0
        while pos + 16 <= len(buf):
            length = struct.unpack_from("=I", buf, pos)[0]
            if length < 16:
                break
            struct.pack_into("=I", buf, pos + 8, seq)
            pos += (length + 3) & ~3
        out.append(bytes(buf))
    return out


# --- notifications: what the kernel multicasts, in the same layouts ------------------------------


def ctrl_family_message(
    cmd: int, name: str, family_id: int, groups: Sequence[tuple[str, int]] = (), seq: int = 0
) -> bytes:
    """An nlctrl message (CTRL_CMD_NEWFAMILY, DELFAMILY, a GETFAMILY reply), as ctrl_fill_info writes it."""
    attrs = nla(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0") + nla(
        CTRL_ATTR_FAMILY_ID, struct.pack("=H", family_id)
    )
    if groups:
        nests = b"".join(
            nla(
                index | NLA_F_NESTED,
                nla(MCAST_GROUP["NAME"], group.encode() + b"\0")
                + nla(MCAST_GROUP["ID"], struct.pack("=I", group_id)),
            )
            for index, (group, group_id) in enumerate(groups, 1)
        )
        attrs += nla(CTRL["MCAST_GROUPS"] | NLA_F_NESTED, nests)
    return nlmsg(GENL_ID_CTRL, 0, seq, struct.pack("=BBH", cmd, 2, 0) + attrs)


def vport_notification(cmd: int, dp_ifindex: int, v: FakeVport, family: int = VPORT_FAMILY_ID) -> bytes:
    """OVS_VPORT_CMD_NEW, _DEL or _SET as ovs_notify multicasts it."""
    return nlmsg(family, 0, 0, genl_ovs(cmd, OVS_VPORT_VERSION, dp_ifindex, vport_attrs(v)))


def datapath_notification(cmd: int, dp: FakeDatapath, family: int = DATAPATH_FAMILY_ID) -> bytes:
    """OVS_DP_CMD_NEW or _DEL as ovs_notify multicasts it."""
    message = bytearray(datapath_message(0, dp))
    struct.pack_into("=HH", message, 4, family, 0)
    message[16] = cmd
    return bytes(message)


# --- rtnetlink: links, as rtnl_fill_ifinfo lays them out ------------------------------------------

#: The attributes of a link message the exporter skips, as a 6.x kernel sends them before and
#: around the ones it reads (IFLA_TXQLEN, OPERSTATE, LINKMODE, MTU, GROUP, PROMISCUITY, ..., QDISC).
_LINK_FILLER = (
    nla(13, struct.pack("=I", 1000))
    + nla(16, b"\x06")
    + nla(17, b"\x00")
    + nla(4, struct.pack("=I", 1500))
    + nla(27, struct.pack("=I", 0))
    + nla(30, struct.pack("=I", 0))
    + nla(6, b"noqueue\0")
)
IFLA_INFO_DATA = 2


def link_message(seq: int, ifindex: int, name: str, kind: str | None, flags: int = 0) -> bytes:
    """An RTM_NEWLINK for one link: its name, filler, and IFLA_LINKINFO (kind and its data) when it has a kind."""
    attrs = nla(LINK["IFNAME"], name.encode() + b"\0") + _LINK_FILLER
    if kind is not None:
        info = nla(LINKINFO["KIND"], kind.encode() + b"\0") + nla(
            IFLA_INFO_DATA | NLA_F_NESTED, nla(1, b"\1\0\0\0")
        )
        attrs += nla(LINK["LINKINFO"] | NLA_F_NESTED, info)
    return nlmsg(RTM_NEWLINK, flags, seq, IFINFOMSG.pack(0, 1, ifindex, 0x1043, 0) + attrs)


class FakeLinkSocket:
    """A NETLINK_ROUTE socket answering RTM_GETLINK of one ifindex from ``links``: ifindex ->
    (name, kind or None); ENODEV for any other. Several requests in one send get one reply
    datagram each, as the kernel sends them. Records every request."""

    def __init__(self, links: dict[int, tuple[str, str | None]] | None = None) -> None:
        self.links = dict(links or {})
        self.requests: list[bytes] = []
        self.sends = 0
        self.pending: list[bytes] = []
        self.closed = False

    def send(self, data: bytes) -> None:
        self.sends += 1
        pos = 0
        while pos < len(data):
            length, mtype, flags, seq, _pid = struct.unpack_from("=IHHII", data, pos)
            request = data[pos : pos + length]
            self.requests.append(request)
            assert mtype == RTM_GETLINK and flags == NLM_F_REQUEST, "only a GET of one link"
            ifindex = IFINFOMSG.unpack_from(request, 16)[2]
            if ifindex in self.links:
                name, kind = self.links[ifindex]
                self.pending.append(link_message(seq, ifindex, name, kind))
            else:
                self.pending.append(nlmsg_error(seq, errno.ENODEV, request))
            pos += (length + 3) & ~3

    def recv(self) -> bytes:
        if not self.pending:
            raise TimeoutError("no reply pending")
        return self.pending.pop(0)

    def close(self) -> None:
        self.closed = True
