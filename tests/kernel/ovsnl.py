"""A small generic-netlink client for the OVS datapath, for the in-guest tests only.

Independent from the exporter's own decoder on purpose: the tests compare what the exporter
serves with what this reads from the kernel. It also builds topology (OVS_DP_CMD_NEW,
OVS_VPORT_CMD_NEW with tunnel options), which the read-only exporter never does.
Layouts follow include/uapi/linux/openvswitch.h and include/uapi/linux/genetlink.h; the links
(a dump of every one, where the exporter asks for one at a time) include/uapi/linux/rtnetlink.h
and if_link.h.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass, field

# include/uapi/linux/netlink.h
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_ECHO = 0x8
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLA_TYPE_MASK = 0x3FFF
NLA_F_NESTED = 0x8000
NETLINK_GENERIC = 16  # not exported by Python's socket module
NETLINK_ROUTE = 0

# include/uapi/linux/rtnetlink.h and if_link.h
RTM_NEWLINK, RTM_GETLINK = 16, 18
IFLA_IFNAME, IFLA_LINKINFO = 3, 18
IFLA_INFO_KIND = 1
IFINFOMSG_SIZE = 16  # struct ifinfomsg

# include/uapi/linux/genetlink.h
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2

# include/uapi/linux/openvswitch.h
DATAPATH_FAMILY = "ovs_datapath"
DATAPATH_VERSION = 2
VPORT_FAMILY = "ovs_vport"
VPORT_VERSION = 1
CMD_NEW, CMD_DEL, CMD_GET, CMD_SET = 1, 2, 3, 4

DP_ATTR_NAME = 1
DP_ATTR_UPCALL_PID = 2
DP_ATTR_STATS = 3
DP_ATTR_MEGAFLOW_STATS = 4
DP_ATTR_USER_FEATURES = 5
DP_ATTR_MASKS_CACHE_SIZE = 7
DP_ATTR_PER_CPU_PIDS = 8
DP_ATTR_IFINDEX = 9
DP_F_UNALIGNED = 1 << 0
DP_F_VPORT_PIDS = 1 << 1
DP_F_DISPATCH_UPCALL_PER_CPU = 1 << 3

VPORT_ATTR_PORT_NO = 1
VPORT_ATTR_TYPE = 2
VPORT_ATTR_NAME = 3
VPORT_ATTR_OPTIONS = 4
VPORT_ATTR_UPCALL_PID = 5
VPORT_ATTR_STATS = 6
VPORT_ATTR_IFINDEX = 8
VPORT_ATTR_NETNSID = 9
VPORT_ATTR_UPCALL_STATS = 10
VPORT_UPCALL_ATTR_SUCCESS = 0
VPORT_UPCALL_ATTR_FAIL = 1
TUNNEL_ATTR_DST_PORT = 1
TUNNEL_ATTR_EXTENSION = 2
VXLAN_EXT_GBP = 1

# enum ovs_meter_cmd: FEATURES 1, SET 2, DEL 3, GET 4 (not the other families' numbering).
METER_FAMILY = "ovs_meter"
METER_VERSION = 1
METER_CMD_FEATURES, METER_CMD_SET, METER_CMD_DEL, METER_CMD_GET = 1, 2, 3, 4
METER_ATTR_ID = 1
METER_ATTR_KBPS = 2
METER_ATTR_STATS = 3
METER_ATTR_BANDS = 4
METER_ATTR_USED = 5
METER_ATTR_MAX_METERS = 7
METER_ATTR_MAX_BANDS = 8
BAND_ATTR_TYPE = 1
BAND_ATTR_RATE = 2
BAND_ATTR_BURST = 3
BAND_ATTR_STATS = 4
METER_BAND_TYPE_DROP = 1

# enum ovs_flow_cmd, ovs_flow_attr, ovs_key_attr (only what a minimal exact-match flow needs)
FLOW_FAMILY = "ovs_flow"
FLOW_VERSION = 1
FLOW_ATTR_KEY = 1
FLOW_ATTR_ACTIONS = 2
KEY_ATTR_IN_PORT = 3
KEY_ATTR_ETHERNET = 4  # struct ovs_key_ethernet { u8 eth_src[6]; u8 eth_dst[6]; }
KEY_ATTR_ETHERTYPE = 6  # be16

# enum ovs_ct_limit_cmd: SET 1, DEL 2, GET 3; struct ovs_zone_limit { int zone_id; u32 limit; u32 count; }
CT_LIMIT_FAMILY = "ovs_ct_limit"
CT_LIMIT_VERSION = 1
CT_LIMIT_CMD_SET, CT_LIMIT_CMD_DEL, CT_LIMIT_CMD_GET = 1, 2, 3
CT_LIMIT_ATTR_ZONE_LIMIT = 1
ZONE_LIMIT_DEFAULT_ZONE = -1

VPORT_NETDEV, VPORT_INTERNAL, VPORT_GRE, VPORT_VXLAN, VPORT_GENEVE = 1, 2, 3, 4, 5
VPORT_TYPE_NAMES = {1: "netdev", 2: "internal", 3: "gre", 4: "vxlan", 5: "geneve"}

#: struct ovs_vport_stats, in order.
VPORT_STAT_FIELDS = (
    "rx_packets", "tx_packets", "rx_bytes", "tx_bytes",
    "rx_errors", "tx_errors", "rx_dropped", "tx_dropped",
)  # fmt: skip


def nla(atype: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, atype) + payload + b"\0" * (-length % 4)


def nla_u32(atype: int, value: int) -> bytes:
    return nla(atype, struct.pack("=I", value))


def nla_str(atype: int, value: str) -> bytes:
    return nla(atype, value.encode() + b"\0")


def parse_attrs(data: bytes) -> dict[int, bytes]:
    attrs: dict[int, bytes] = {}
    off = 0
    while off + 4 <= len(data):
        length, atype = struct.unpack_from("=HH", data, off)
        if length < 4:
            break
        attrs[atype & NLA_TYPE_MASK] = data[off + 4 : off + length]
        off += (length + 3) & ~3
    return attrs


@dataclass(frozen=True)
class Message:
    """One generic netlink message of an OVS family: header fields and raw attributes."""

    cmd: int
    dp_ifindex: int
    attrs: dict[int, bytes]


@dataclass(frozen=True)
class Dump:
    """A whole dump: its datagrams exactly as the kernel sent them, and the parsed messages."""

    datagrams: tuple[bytes, ...]
    messages: tuple[Message, ...]

    @property
    def raw(self) -> bytes:
        return b"".join(self.datagrams)


@dataclass(frozen=True)
class DatapathInfo:
    name: str
    ifindex: int
    hits: int
    misses: int
    lost: int
    flows: int
    mask_hits: int | None
    masks: int | None
    mask_cache_hits: int | None
    user_features: int | None
    masks_cache_size: int | None = None
    per_cpu_pids: tuple[int, ...] | None = None

    @classmethod
    def decode(cls, msg: Message) -> DatapathInfo:
        a = msg.attrs
        hits, misses, lost, flows = struct.unpack("=4Q", a[DP_ATTR_STATS][:32])
        mask_hits = masks = cache_hits = None
        if DP_ATTR_MEGAFLOW_STATS in a:
            mask_hits, masks, _pad, cache_hits = struct.unpack("=QIIQ", a[DP_ATTR_MEGAFLOW_STATS][:24])
        features = struct.unpack("=I", a[DP_ATTR_USER_FEATURES])[0] if DP_ATTR_USER_FEATURES in a else None
        cache = a.get(DP_ATTR_MASKS_CACHE_SIZE)
        pids = a.get(DP_ATTR_PER_CPU_PIDS)
        return cls(
            name=a[DP_ATTR_NAME].rstrip(b"\0").decode(),
            ifindex=msg.dp_ifindex,
            hits=hits,
            misses=misses,
            lost=lost,
            flows=flows,
            mask_hits=mask_hits,
            masks=masks,
            mask_cache_hits=cache_hits,
            user_features=features,
            masks_cache_size=None if cache is None else struct.unpack("=I", cache)[0],
            per_cpu_pids=None if pids is None else struct.unpack(f"={len(pids) // 4}I", pids),
        )


@dataclass(frozen=True)
class VportInfo:
    dp_ifindex: int
    port_no: int
    type: int
    name: str
    ifindex: int | None
    netnsid: int | None
    stats: dict[str, int]
    upcall_success: int | None
    upcall_fail: int | None
    upcall_pids: tuple[int, ...]
    dst_port: int | None
    extension: tuple[int, ...] | None = None  # attribute types inside OVS_TUNNEL_ATTR_EXTENSION

    @property
    def type_name(self) -> str:
        return VPORT_TYPE_NAMES.get(self.type, str(self.type))

    @classmethod
    def decode(cls, msg: Message) -> VportInfo:
        a = msg.attrs
        success = fail = None
        if VPORT_ATTR_UPCALL_STATS in a:
            up = parse_attrs(a[VPORT_ATTR_UPCALL_STATS])
            success = struct.unpack("=Q", up[VPORT_UPCALL_ATTR_SUCCESS])[0]
            fail = struct.unpack("=Q", up[VPORT_UPCALL_ATTR_FAIL])[0]
        dst_port = None
        extension = None
        if VPORT_ATTR_OPTIONS in a:
            opts = parse_attrs(a[VPORT_ATTR_OPTIONS])
            if TUNNEL_ATTR_EXTENSION in opts:
                extension = tuple(sorted(parse_attrs(opts[TUNNEL_ATTR_EXTENSION])))
            if TUNNEL_ATTR_DST_PORT in opts:
                raw = opts[TUNNEL_ATTR_DST_PORT]
                # The kernel sends a u16 in host order (the YNL spec says u32).
                dst_port = struct.unpack("=H" if len(raw) == 2 else "=I", raw)[0]
        pids_raw = a.get(VPORT_ATTR_UPCALL_PID, b"")
        return cls(
            dp_ifindex=msg.dp_ifindex,
            port_no=struct.unpack("=I", a[VPORT_ATTR_PORT_NO])[0],
            type=struct.unpack("=I", a[VPORT_ATTR_TYPE])[0],
            name=a[VPORT_ATTR_NAME].rstrip(b"\0").decode(),
            ifindex=struct.unpack("=I", a[VPORT_ATTR_IFINDEX])[0] if VPORT_ATTR_IFINDEX in a else None,
            netnsid=struct.unpack("=i", a[VPORT_ATTR_NETNSID])[0] if VPORT_ATTR_NETNSID in a else None,
            stats=dict(zip(VPORT_STAT_FIELDS, struct.unpack("=8Q", a[VPORT_ATTR_STATS][:64]), strict=True)),
            upcall_success=success,
            upcall_fail=fail,
            upcall_pids=struct.unpack(f"={len(pids_raw) // 4}I", pids_raw),
            dst_port=dst_port,
            extension=extension,
        )


@dataclass(frozen=True)
class Link:
    """One network device of the namespace, as rtnetlink lists it."""

    ifindex: int
    name: str
    kind: str | None  # IFLA_INFO_KIND; None: the device has none (a physical NIC, lo)


@dataclass(frozen=True)
class MeterInfo:
    """One meter as OVS_METER_CMD_GET reports it: what reached it, and what its bands took."""

    meter_id: int
    packets: int
    bytes: int
    band_packets: tuple[int, ...]
    band_bytes: tuple[int, ...]
    used_ms: int | None

    @classmethod
    def decode(cls, msg: Message) -> MeterInfo:
        a = msg.attrs
        packets, nbytes = struct.unpack("=QQ", a[METER_ATTR_STATS])
        bands = [parse_attrs(band) for band in _nested_list(a.get(METER_ATTR_BANDS, b""))]
        stats = [struct.unpack("=QQ", band[BAND_ATTR_STATS]) for band in bands]
        used = a.get(METER_ATTR_USED)
        return cls(
            meter_id=struct.unpack("=I", a[METER_ATTR_ID])[0],
            packets=packets,
            bytes=nbytes,
            band_packets=tuple(p for p, _ in stats),
            band_bytes=tuple(b for _, b in stats),
            used_ms=None if used is None else struct.unpack("=Q", used)[0],
        )


def _nested_list(data: bytes) -> list[bytes]:
    """The payloads of a nest whose attributes all share one type (the meter's bands are type 0)."""
    out = []
    off = 0
    while off + 4 <= len(data):
        length, _atype = struct.unpack_from("=HH", data, off)
        if length < 4:
            break
        out.append(data[off + 4 : off + length])
        off += (length + 3) & ~3
    return out


@dataclass(frozen=True)
class Snapshot:
    """Every datapath and vport of the namespace, read in one pass, and its network devices."""

    datapaths: dict[str, DatapathInfo]
    vports: dict[str, dict[str, VportInfo]] = field(default_factory=dict)
    datapath_dump: Dump | None = None
    vport_dumps: dict[str, Dump] = field(default_factory=dict)
    links: dict[int, Link] = field(default_factory=dict)  # by ifindex

    def counters(self) -> dict[tuple[str, ...], int | None]:
        """All counters keyed by (datapath, [port,] name), for comparing two snapshots."""
        out: dict[tuple[str, ...], int | None] = {}
        for dp in self.datapaths.values():
            for f in ("hits", "misses", "lost", "flows", "mask_hits", "masks", "mask_cache_hits"):
                out[(dp.name, f)] = getattr(dp, f)
            for vp in self.vports.get(dp.name, {}).values():
                for f, v in vp.stats.items():
                    out[(dp.name, vp.name, f)] = v
                out[(dp.name, vp.name, "upcall_success")] = vp.upcall_success
                out[(dp.name, vp.name, "upcall_fail")] = vp.upcall_fail
        return out


class OvsNetlink:
    """One generic netlink socket speaking the ovs_datapath and ovs_vport families."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, 0))
        # rtnetlink, opened now so that it is in the same namespace as the OVS socket.
        self.route = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self.route.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.route.bind((0, 0))
        self.seq = 0
        self._families: dict[str, int] = {}

    def close(self) -> None:
        self.sock.close()
        self.route.close()

    def __enter__(self) -> OvsNetlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def portid(self) -> int:
        return int(self.sock.getsockname()[0])

    def _send(self, mtype: int, flags: int, payload: bytes) -> int:
        self.seq += 1
        self.sock.send(struct.pack("=IHHII", 16 + len(payload), mtype, flags, self.seq, 0) + payload)
        return self.seq

    def _receive(self, seq: int) -> tuple[list[bytes], list[tuple[int, int, bytes]]]:
        """Datagrams and (type, flags, payload) messages until the reply to ``seq`` ends."""
        datagrams: list[bytes] = []
        msgs: list[tuple[int, int, bytes]] = []
        while True:
            data = self.sock.recv(1 << 20)
            datagrams.append(data)
            off = 0
            done = False
            while off + 16 <= len(data):
                length, mtype, flags, mseq, _pid = struct.unpack_from("=IHHII", data, off)
                payload = data[off + 16 : off + length]
                off += (length + 3) & ~3
                if mseq != seq:
                    continue
                if mtype == NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", payload)
                    if err:
                        raise OSError(-err, os.strerror(-err))
                    done = True
                elif mtype == NLMSG_DONE:
                    (err,) = struct.unpack_from("=i", payload) if len(payload) >= 4 else (0,)
                    if err:
                        raise OSError(-err, os.strerror(-err))
                    done = True
                else:
                    msgs.append((mtype, flags, payload))
                    if not flags & NLM_F_MULTI:
                        done = True
            if done:
                return datagrams, msgs

    def family(self, name: str, refresh: bool = False) -> int:
        """The family id; raises OSError(ENOENT) when the openvswitch module is not loaded."""
        if refresh or name not in self._families:
            seq = self._send(
                GENL_ID_CTRL, NLM_F_REQUEST, struct.pack("=BBH", CTRL_CMD_GETFAMILY, 1, 0)
                + nla_str(CTRL_ATTR_FAMILY_NAME, name),
            )  # fmt: skip
            _, msgs = self._receive(seq)
            attrs = parse_attrs(msgs[0][2][4:])
            self._families[name] = struct.unpack("=H", attrs[CTRL_ATTR_FAMILY_ID][:2])[0]
        return self._families[name]

    def _request(
        self, family: str, version: int, cmd: int, dp_ifindex: int, attrs: bytes, flags: int
    ) -> tuple[list[bytes], list[Message]]:
        payload = struct.pack("=BBHi", cmd, version, 0, dp_ifindex) + attrs
        seq = self._send(self.family(family), NLM_F_REQUEST | flags, payload)
        datagrams, raw = self._receive(seq)
        msgs = []
        for _type, _flags, p in raw:
            rcmd, _ver, _res, ifindex = struct.unpack_from("=BBHi", p)
            msgs.append(Message(rcmd, ifindex, parse_attrs(p[8:])))
        return datagrams, msgs

    # --- datapaths ---

    def dump_datapaths(self) -> Dump:
        datagrams, msgs = self._request(DATAPATH_FAMILY, DATAPATH_VERSION, CMD_GET, 0, b"", NLM_F_DUMP)
        return Dump(tuple(datagrams), tuple(msgs))

    def new_datapath(
        self,
        name: str,
        upcall_pid: int = 0,
        user_features: int = DP_F_UNALIGNED,
        per_cpu_pids: tuple[int, ...] | None = None,
    ) -> int:
        """Create a datapath; without DP_F_DISPATCH_UPCALL_PER_CPU, upcalls go to per-vport pids.

        ``per_cpu_pids`` (with that feature) sets the handler PIDs as vswitchd does.
        """
        attrs = (
            nla_str(DP_ATTR_NAME, name)
            + nla_u32(DP_ATTR_UPCALL_PID, upcall_pid)
            + nla_u32(DP_ATTR_USER_FEATURES, user_features)
        )
        if per_cpu_pids is not None:
            attrs += nla(DP_ATTR_PER_CPU_PIDS, struct.pack(f"={len(per_cpu_pids)}I", *per_cpu_pids))
        _, msgs = self._request(DATAPATH_FAMILY, DATAPATH_VERSION, CMD_NEW, 0, attrs, NLM_F_ECHO)
        return msgs[0].dp_ifindex

    def set_per_cpu_pids(self, name: str, pids: tuple[int, ...], user_features: int) -> None:
        """OVS_DP_CMD_SET the handler PIDs, as vswitchd does once its handler threads run.

        USER_FEATURES must be sent again: without it ovs_dp_change clears every feature bit.
        """
        attrs = (
            nla_str(DP_ATTR_NAME, name)
            + nla_u32(DP_ATTR_USER_FEATURES, user_features)
            + nla(DP_ATTR_PER_CPU_PIDS, struct.pack(f"={len(pids)}I", *pids))
        )
        self._request(DATAPATH_FAMILY, DATAPATH_VERSION, CMD_SET, 0, attrs, NLM_F_ACK)

    def del_datapath(self, name: str) -> None:
        attrs = nla_str(DP_ATTR_NAME, name)
        self._request(DATAPATH_FAMILY, DATAPATH_VERSION, CMD_DEL, 0, attrs, NLM_F_ACK)

    # --- vports ---

    def dump_vports(self, dp_ifindex: int) -> Dump:
        datagrams, msgs = self._request(VPORT_FAMILY, VPORT_VERSION, CMD_GET, dp_ifindex, b"", NLM_F_DUMP)
        return Dump(tuple(datagrams), tuple(msgs))

    def new_vport(
        self,
        dp_ifindex: int,
        name: str,
        vport_type: int,
        upcall_pid: int = 0,
        dst_port: int | None = None,
        gbp: bool = False,
    ) -> VportInfo:
        """Create a vport; ``gbp`` asks a vxlan one for Group Based Policy (vxlan_configure_exts)."""
        attrs = (
            nla_str(VPORT_ATTR_NAME, name)
            + nla_u32(VPORT_ATTR_TYPE, vport_type)
            + nla_u32(VPORT_ATTR_UPCALL_PID, upcall_pid)
        )
        if dst_port is not None:
            # The kernel wants a u16 in host order (vxlan_tnl_create, geneve_tnl_create).
            options = nla(TUNNEL_ATTR_DST_PORT, struct.pack("=H", dst_port))
            if gbp:
                options += nla(TUNNEL_ATTR_EXTENSION | NLA_F_NESTED, nla(VXLAN_EXT_GBP, b""))
            attrs += nla(VPORT_ATTR_OPTIONS | NLA_F_NESTED, options)
        _, msgs = self._request(VPORT_FAMILY, VPORT_VERSION, CMD_NEW, dp_ifindex, attrs, NLM_F_ECHO)
        return VportInfo.decode(msgs[0])

    def new_vports(self, dp_ifindex: int, names: list[str], vport_type: int, batch: int = 256) -> None:
        """Create many vports fast: ``batch`` requests sent back to back, then their acks read.

        The kernel handles each request as it is sent; batching only saves the round trips
        of Python waiting for each reply (what makes thousands of ports slow under TCG).
        """
        family = self.family(VPORT_FAMILY)
        for start in range(0, len(names), batch):
            seqs = []
            for name in names[start : start + batch]:
                attrs = nla_str(VPORT_ATTR_NAME, name) + nla_u32(VPORT_ATTR_TYPE, vport_type)
                attrs += nla_u32(VPORT_ATTR_UPCALL_PID, 0)
                payload = struct.pack("=BBHi", CMD_NEW, VPORT_VERSION, 0, dp_ifindex) + attrs
                seqs.append(self._send(family, NLM_F_REQUEST | NLM_F_ACK, payload))
            for seq in seqs:
                self._receive(seq)

    def set_vport_upcall_pid(self, name: str, upcall_pid: int) -> None:
        attrs = nla_str(VPORT_ATTR_NAME, name) + nla_u32(VPORT_ATTR_UPCALL_PID, upcall_pid)
        self._request(VPORT_FAMILY, VPORT_VERSION, CMD_SET, 0, attrs, NLM_F_ACK)

    def del_vport(self, name: str) -> None:
        attrs = nla_str(VPORT_ATTR_NAME, name)
        self._request(VPORT_FAMILY, VPORT_VERSION, CMD_DEL, 0, attrs, NLM_F_ACK)

    # --- network devices (rtnetlink) ---

    def dump_links(self) -> dict[int, Link]:
        """Every network device of the namespace: an RTM_GETLINK dump."""
        self.seq += 1
        payload = struct.pack("=BxHiII", 0, 0, 0, 0, 0)
        self.route.send(
            struct.pack("=IHHII", 16 + len(payload), RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, self.seq, 0)
            + payload
        )
        links: dict[int, Link] = {}
        while True:
            data = self.route.recv(1 << 20)
            off = 0
            while off + 16 <= len(data):
                length, mtype, _flags, mseq, _pid = struct.unpack_from("=IHHII", data, off)
                body = data[off + 16 : off + length]
                off += (length + 3) & ~3
                if mseq != self.seq:
                    continue
                if mtype == NLMSG_DONE:
                    return links
                if mtype == NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", body)
                    raise OSError(-err, os.strerror(-err))
                if mtype == RTM_NEWLINK:
                    ifindex = struct.unpack_from("=i", body, 4)[0]
                    attrs = parse_attrs(body[IFINFOMSG_SIZE:])
                    info = parse_attrs(attrs.get(IFLA_LINKINFO, b""))
                    kind = info[IFLA_INFO_KIND].rstrip(b"\0").decode() if IFLA_INFO_KIND in info else None
                    links[ifindex] = Link(ifindex, attrs[IFLA_IFNAME].rstrip(b"\0").decode(), kind)

    # --- meters (per datapath; there is no dump) ---

    def meter_features(self, dp_ifindex: int) -> tuple[int, int]:
        """OVS_METER_CMD_FEATURES: (max meters, max bands) of a datapath."""
        _, msgs = self._request(METER_FAMILY, METER_VERSION, METER_CMD_FEATURES, dp_ifindex, b"", 0)
        a = msgs[0].attrs
        return struct.unpack("=I", a[METER_ATTR_MAX_METERS])[0], struct.unpack("=I", a[METER_ATTR_MAX_BANDS])[
            0
        ]

    def meter_get(self, dp_ifindex: int, meter_id: int) -> MeterInfo | None:
        """One meter, None when the id has none (ENOENT)."""
        try:
            _, msgs = self._request(
                METER_FAMILY, METER_VERSION, METER_CMD_GET, dp_ifindex, nla_u32(METER_ATTR_ID, meter_id), 0
            )
        except OSError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        return MeterInfo.decode(msgs[0])

    def meters(self, dp_ifindex: int, ids: range | list[int]) -> dict[int, MeterInfo]:
        """Every meter among ``ids``, by id."""
        found = {}
        for meter_id in ids:
            meter = self.meter_get(dp_ifindex, meter_id)
            if meter is not None:
                found[meter_id] = meter
        return found

    def _meter_set_payload(self, dp_ifindex: int, meter_id: int, rate: int, burst: int, kbps: bool) -> bytes:
        band = nla_u32(BAND_ATTR_TYPE, METER_BAND_TYPE_DROP) + nla_u32(BAND_ATTR_RATE, rate)
        band += nla_u32(BAND_ATTR_BURST, burst)
        attrs = nla_u32(METER_ATTR_ID, meter_id) + nla(
            METER_ATTR_BANDS | NLA_F_NESTED, nla(0 | NLA_F_NESTED, band)
        )
        if kbps:
            attrs += nla(METER_ATTR_KBPS, b"")
        return struct.pack("=BBHi", METER_CMD_SET, METER_VERSION, 0, dp_ifindex) + attrs

    def meter_set(self, dp_ifindex: int, meter_id: int, rate: int, burst: int, kbps: bool = False) -> None:
        """Create or replace a meter with one drop band (as ovs-vswitchd does; needs CAP_NET_ADMIN)."""
        payload = self._meter_set_payload(dp_ifindex, meter_id, rate, burst, kbps)
        self._receive(self._send(self.family(METER_FAMILY), NLM_F_REQUEST | NLM_F_ACK, payload))

    def meter_set_many(self, dp_ifindex: int, ids: list[int], rate: int, burst: int, batch: int = 64) -> None:
        """Create many meters: ``batch`` requests back to back, then their replies (as new_vports).

        No ACK is asked: the kernel answers each SET with a message (or an error) anyway, and
        each reply takes a page of the socket's buffer, so a batch stays well under it.
        """
        family = self.family(METER_FAMILY)
        for start in range(0, len(ids), batch):
            seqs = [
                self._send(family, NLM_F_REQUEST, self._meter_set_payload(dp_ifindex, i, rate, burst, False))
                for i in ids[start : start + batch]
            ]
            for seq in seqs:
                self._receive(seq)

    def meter_del(self, dp_ifindex: int, meter_id: int) -> None:
        self._request(
            METER_FAMILY,
            METER_VERSION,
            METER_CMD_DEL,
            dp_ifindex,
            nla_u32(METER_ATTR_ID, meter_id),
            NLM_F_ACK,
        )

    # --- flows (benchmarks only: what ovs-vswitchd does under ovs_mutex for each flow it sets up) ---

    @staticmethod
    def _flow_key(in_port: int, src: bytes, dst: bytes, ethertype: int) -> bytes:
        key = nla_u32(KEY_ATTR_IN_PORT, in_port) + nla(KEY_ATTR_ETHERNET, src + dst)
        key += nla(KEY_ATTR_ETHERTYPE, struct.pack("!H", ethertype))
        return nla(FLOW_ATTR_KEY | NLA_F_NESTED, key)

    def flow_new(
        self, dp_ifindex: int, in_port: int, src: bytes, dst: bytes, ethertype: int = 0x88B5
    ) -> None:
        """OVS_FLOW_CMD_NEW of an exact-match drop flow (no actions), acknowledged; CAP_NET_ADMIN."""
        attrs = self._flow_key(in_port, src, dst, ethertype) + nla(FLOW_ATTR_ACTIONS | NLA_F_NESTED, b"")
        self._request(FLOW_FAMILY, FLOW_VERSION, CMD_NEW, dp_ifindex, attrs, NLM_F_ACK)

    def flow_del(
        self, dp_ifindex: int, in_port: int, src: bytes, dst: bytes, ethertype: int = 0x88B5
    ) -> None:
        attrs = self._flow_key(in_port, src, dst, ethertype)
        self._request(FLOW_FAMILY, FLOW_VERSION, CMD_DEL, dp_ifindex, attrs, NLM_F_ACK)

    # --- conntrack zone limits (per network namespace) ---

    @staticmethod
    def _zone_limits(entries: list[tuple[int, int, int]]) -> bytes:
        return nla(CT_LIMIT_ATTR_ZONE_LIMIT, b"".join(struct.pack("=iII", *e) for e in entries))

    def ct_limits(self, zones: list[int] | None = None) -> tuple[int | None, dict[int, tuple[int, int]]]:
        """OVS_CT_LIMIT_CMD_GET: (the default limit, {zone: (limit, count)}), of every limited
        zone or of ``zones``. Raises OSError(EMSGSIZE) when the reply does not fit."""
        attrs = b"" if zones is None else self._zone_limits([(z, 0, 0) for z in zones])
        _, msgs = self._request(CT_LIMIT_FAMILY, CT_LIMIT_VERSION, CT_LIMIT_CMD_GET, 0, attrs, 0)
        raw = msgs[0].attrs[CT_LIMIT_ATTR_ZONE_LIMIT]
        default = None
        out = {}
        for off in range(0, len(raw) - len(raw) % 12, 12):
            zone, limit, count = struct.unpack_from("=iII", raw, off)
            if zone == ZONE_LIMIT_DEFAULT_ZONE:
                default = limit
            else:
                out[zone] = (limit, count)
        return default, out

    def ct_set_limits(self, limits: dict[int, int]) -> None:
        """OVS_CT_LIMIT_CMD_SET (CAP_NET_ADMIN): {zone: limit}, zone -1 the default."""
        attrs = self._zone_limits([(z, limit, 0) for z, limit in limits.items()])
        self._request(CT_LIMIT_FAMILY, CT_LIMIT_VERSION, CT_LIMIT_CMD_SET, 0, attrs, NLM_F_ACK)

    def ct_del_limits(self, zones: list[int]) -> None:
        """OVS_CT_LIMIT_CMD_DEL (CAP_NET_ADMIN); zone -1 resets the default to unlimited."""
        attrs = self._zone_limits([(z, 0, 0) for z in zones])
        self._request(CT_LIMIT_FAMILY, CT_LIMIT_VERSION, CT_LIMIT_CMD_DEL, 0, attrs, NLM_F_ACK)

    # --- everything ---

    def snapshot(self) -> Snapshot:
        """Dump every datapath, then each one's vports (a datapath may vanish in between)."""
        dp_dump = self.dump_datapaths()
        datapaths = {d.name: d for d in map(DatapathInfo.decode, dp_dump.messages)}
        vports: dict[str, dict[str, VportInfo]] = {}
        vport_dumps: dict[str, Dump] = {}
        for dp in datapaths.values():
            try:
                dump = self.dump_vports(dp.ifindex)
            except OSError as e:
                if e.errno == errno.ENODEV:
                    continue
                raise
            vport_dumps[dp.name] = dump
            vports[dp.name] = {v.name: v for v in map(VportInfo.decode, dump.messages)}
        return Snapshot(datapaths, vports, dp_dump, vport_dumps, self.dump_links())
