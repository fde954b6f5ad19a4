"""A fake kernel behind the exporter's real ``GenlSocket``: datapaths, meters, conntrack zone limits.

Only the datagrams are made up: ``FakeGenlSocket`` is a ``GenlSocket`` whose ``send`` hands
each request to ``FakeKernel`` and whose ``recv`` returns the kernel-layout replies, so the
socket's own request/reply matching, error handling and the families' decoders run for
real. The kernel side answers as ``net/openvswitch/meter.c`` and ``conntrack.c`` do (their
errors included: ENOENT for an id without a meter, ENODEV for a datapath that is gone,
EMSGSIZE when the zone limits do not fit one reply) and records every request, so that
tests can check that only reads were sent. Shared by the unit tests and the golden scrape.
"""

from __future__ import annotations

import errno
import itertools
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from exporter.kernel.families.ct_limit import OVS_CT_LIMIT_FAMILY, OVS_CT_LIMIT_VERSION
from exporter.kernel.families.datapath import OVS_DATAPATH_FAMILY
from exporter.kernel.families.meter import OVS_METER_FAMILY, OVS_METER_VERSION
from exporter.kernel.families.nlctrl import CTRL_CMD_NEWFAMILY, CtrlFamily
from exporter.kernel.genl import FamilyNotFoundError, GenlSocket
from tests.ovs_messages import (
    NLA_F_NESTED,
    FakeDatapath,
    datapath_message,
    dump_reply,
    genl_ovs,
    nla,
    nlmsg,
    nlmsg_error,
)

FAMILY_IDS = {OVS_DATAPATH_FAMILY: 0x1A, OVS_METER_FAMILY: 0x1D, OVS_CT_LIMIT_FAMILY: 0x1E}
FAMILY_NAMES = {family_id: name for name, family_id in FAMILY_IDS.items()}

# include/uapi/linux/openvswitch.h, written out again here: the fake answers by these numbers.
METER_CMD_FEATURES, METER_CMD_SET, METER_CMD_DEL, METER_CMD_GET = 1, 2, 3, 4
CT_LIMIT_CMD_SET, CT_LIMIT_CMD_DEL, CT_LIMIT_CMD_GET = 1, 2, 3
DP_CMD_GET = 3
#: What the real kernel fits in one ct_limit reply (measured on 6.1 and 6.12: 650 zones fit, 660 did not).
CT_LIMIT_REPLY_ZONES = 654


@dataclass
class FakeMeter:
    meter_id: int
    packets: int = 0
    bytes: int = 0
    band_packets: int = 0
    band_bytes: int = 0
    bands: int = 1  # how many band nests the reply carries (the kernel allows one)


@dataclass
class FakeKernel:
    """The state one network namespace's kernel answers from."""

    datapaths: list[FakeDatapath] = field(default_factory=list)
    meters: dict[int, dict[int, FakeMeter]] = field(default_factory=dict)  # dp_ifindex -> id -> meter
    max_meters: int = 200_000
    default_limit: int = 0
    zone_limits: dict[int, tuple[int, int]] = field(default_factory=dict)  # zone -> (limit, count)
    families: set[str] = field(default_factory=lambda: set(FAMILY_IDS))
    requests: list[tuple[str, int, int, int]] = field(default_factory=list)  # family, cmd, flags, dp_ifindex
    #: A hook that may replace the reply to a request: (family, cmd, dp_ifindex, attrs) -> datagrams.
    override: Callable[[str, int, int, bytes, int], list[bytes] | None] | None = None

    def answer(self, request: bytes) -> list[bytes]:
        _length, family_id, flags, seq, _pid = struct.unpack_from("=IHHII", request)
        cmd, _version, _reserved, dp_ifindex = struct.unpack_from("=BBHi", request, 16)
        family = FAMILY_NAMES[family_id]
        self.requests.append((family, cmd, flags, dp_ifindex))
        attrs = request[24:]
        if self.override is not None:
            replaced = self.override(family, cmd, dp_ifindex, attrs, seq)
            if replaced is not None:
                return replaced
        if family == OVS_DATAPATH_FAMILY and cmd == DP_CMD_GET:
            return dump_reply(seq, [datapath_message(seq, dp) for dp in self.datapaths])
        if family == OVS_METER_FAMILY and cmd == METER_CMD_GET:
            return [self._meter(seq, dp_ifindex, attrs)]
        if family == OVS_METER_FAMILY and cmd == METER_CMD_FEATURES:
            if dp_ifindex not in self._dp_ifindexes():
                return [nlmsg_error(seq, errno.ENODEV, request)]
            return [meter_features_message(seq, dp_ifindex, self.max_meters)]
        if family == OVS_CT_LIMIT_FAMILY and cmd == CT_LIMIT_CMD_GET:
            return [self._ct_limits(seq, attrs, request)]
        raise AssertionError(f"the exporter sent {family} command {cmd}: not a read")

    def _dp_ifindexes(self) -> set[int]:
        return {dp.dp_ifindex for dp in self.datapaths}

    def _meter(self, seq: int, dp_ifindex: int, attrs: bytes) -> bytes:
        if dp_ifindex not in self._dp_ifindexes():
            return nlmsg_error(seq, errno.ENODEV)
        meter_id = _u32_attr(attrs, 1)  # OVS_METER_ATTR_ID
        if meter_id is None:
            return nlmsg_error(seq, errno.EINVAL)
        meter = self.meters.get(dp_ifindex, {}).get(meter_id)
        if meter is None:
            return nlmsg_error(seq, errno.ENOENT)
        return meter_message(seq, dp_ifindex, meter)

    def _ct_limits(self, seq: int, attrs: bytes, request: bytes) -> bytes:
        asked = _zone_ids(attrs)
        entries: list[tuple[int, int, int]] = []
        if asked is None:
            entries = [(-1, self.default_limit, 0)]
            entries += [(zone, limit, count) for zone, (limit, count) in self.zone_limits.items()]
        else:
            for zone in asked:
                if zone == -1:
                    entries.append((-1, self.default_limit, 0))
                elif 0 <= zone <= 65535:
                    limit, count = self.zone_limits.get(zone, (self.default_limit, 0))
                    entries.append((zone, limit, count))
        if len(entries) > CT_LIMIT_REPLY_ZONES + 1:
            return nlmsg_error(seq, errno.EMSGSIZE, request)
        return ct_limit_message(seq, entries)


def _u32_attr(attrs: bytes, wanted: int) -> int | None:
    pos = 0
    while pos + 4 <= len(attrs):
        length, atype = struct.unpack_from("=HH", attrs, pos)
        if atype & 0x3FFF == wanted:
            return int(struct.unpack_from("=I", attrs, pos + 4)[0])
        pos += (length + 3) & ~3
    return None


def _zone_ids(attrs: bytes) -> list[int] | None:
    if len(attrs) < 4:
        return None
    length, _atype = struct.unpack_from("=HH", attrs)
    payload = attrs[4:length]
    return [struct.unpack_from("=i", payload, off)[0] for off in range(0, len(payload) - 11, 12)]


def meter_message(seq: int, dp_ifindex: int, meter: FakeMeter) -> bytes:
    """An OVS_METER_CMD_GET reply as ovs_meter_cmd_reply_stats fills it: ID, STATS, USED, BANDS."""
    band = nla(4, struct.pack("=QQ", meter.band_packets, meter.band_bytes))  # OVS_BAND_ATTR_STATS
    bands = b"".join(nla(0 | NLA_F_NESTED, band) for _ in range(meter.bands))
    attrs = (
        nla(1, struct.pack("=I", meter.meter_id))
        + nla(3, struct.pack("=QQ", meter.packets, meter.bytes))
        + nla(5, struct.pack("=Q", 123456))
        + nla(4 | NLA_F_NESTED, bands)
    )
    return nlmsg(
        FAMILY_IDS[OVS_METER_FAMILY], 0, seq, genl_ovs(METER_CMD_GET, OVS_METER_VERSION, dp_ifindex, attrs)
    )


def meter_features_message(seq: int, dp_ifindex: int, max_meters: int) -> bytes:
    """OVS_METER_CMD_FEATURES' reply: MAX_METERS, MAX_BANDS, and the drop band type."""
    band_types = nla(4 | NLA_F_NESTED, nla(0 | NLA_F_NESTED, nla(1, struct.pack("=I", 1))))
    attrs = nla(7, struct.pack("=I", max_meters)) + nla(8, struct.pack("=I", 1)) + band_types
    payload = genl_ovs(METER_CMD_FEATURES, OVS_METER_VERSION, dp_ifindex, attrs)
    return nlmsg(FAMILY_IDS[OVS_METER_FAMILY], 0, seq, payload)


def ct_limit_message(seq: int, entries: list[tuple[int, int, int]]) -> bytes:
    """An OVS_CT_LIMIT_CMD_GET reply: one ZONE_LIMIT of struct ovs_zone_limit back to back."""
    structs = b"".join(struct.pack("=iII", *entry) for entry in entries)
    payload = genl_ovs(CT_LIMIT_CMD_GET, OVS_CT_LIMIT_VERSION, 0, nla(1, structs))
    return nlmsg(FAMILY_IDS[OVS_CT_LIMIT_FAMILY], 0, seq, payload)


class FakeGenlSocket(GenlSocket):
    """The real ``GenlSocket`` over a ``FakeKernel`` instead of a netlink socket."""

    def __init__(self, kernel: FakeKernel) -> None:  # no super().__init__: no real socket
        self.kernel = kernel
        self._seq = itertools.count(1)
        self._timeout = 1.0
        self._pending: list[bytes] = []
        self.closed = False

    def resolve(self, name: str) -> CtrlFamily:
        if name not in self.kernel.families:
            raise FamilyNotFoundError(name)
        return CtrlFamily(CTRL_CMD_NEWFAMILY, name, FAMILY_IDS[name], ())

    def send(self, data: bytes) -> None:
        self._pending.extend(self.kernel.answer(data))

    def recv(self) -> bytes:
        if not self._pending:
            raise TimeoutError("no reply pending")
        return self._pending.pop(0)

    def close(self) -> None:
        self.closed = True
