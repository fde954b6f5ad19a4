"""The ``ovs_ct_limit`` family: conntrack zone limits and their connection counts.

Layouts from ``include/uapi/linux/openvswitch.h`` (``enum ovs_ct_limit_cmd``, ``enum
ovs_ct_limit_attr``, ``struct ovs_zone_limit``); what the kernel answers from
``net/openvswitch/conntrack.c`` (``ovs_ct_limit_cmd_get``). The family exists only when the
module was built with ``CONFIG_NETFILTER_CONNCOUNT``, and it is per network namespace, not
per datapath (``dp_ifindex`` is ignored).

* ``OVS_CT_LIMIT_CMD_GET`` without attributes: one ``OVS_CT_LIMIT_ATTR_ZONE_LIMIT`` holding
  ``struct ovs_zone_limit``s back to back: first the default limit (``zone_id`` -1,
  ``OVS_ZONE_LIMIT_DEFAULT_ZONE``, its ``count`` always 0), then every zone that has a limit
  of its own, in the kernel's hash order.
* With a ``ZONE_LIMIT`` of zone ids (the structs' ``limit`` and ``count`` unused), the same
  for each zone asked: its own limit or, for a zone without one, the default limit. A zone
  id out of 0-65535 is skipped (logged by the kernel), -1 is the default limit.
* The reply is one message in a buffer of about a page (``genlmsg_new(NLMSG_DEFAULT_SIZE)``):
  when the zones do not fit the kernel answers EMSGSIZE, nothing is truncated.
  ``exporter.kernel.ct_zones`` then asks in chunks (``ZONES_PER_REQUEST``).
* ``count`` is ``nf_conncount``'s count for the zone: connections committed through OVS
  (``ct(commit)``) in that zone while it had a non-zero limit, that still exist. 0 is
  "unlimited", and connections of an unlimited zone are not counted.

No lock besides RCU: a GET does not take ``ovs_mutex``. Decoded by the generic
``AttributeSet.decode``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from exporter.kernel.netlink import (
    AttributeSet,
    DecodeError,
    Message,
    StructArray,
    StructLayout,
    encode_attr,
    encode_ovs_get,
    ovs_start,
)

OVS_CT_LIMIT_FAMILY = "ovs_ct_limit"
OVS_CT_LIMIT_VERSION = 1

# struct ovs_zone_limit { int zone_id; __u32 limit; __u32 count; }
ZONE_LIMIT = StructLayout("ovs_zone_limit", (("zone_id", "s32"), ("limit", "u32"), ("count", "u32")))
# enum ovs_ct_limit_attr
CT_LIMIT = AttributeSet("ct_limit", {1: ("ZONE_LIMIT", StructArray(ZONE_LIMIT))})
OVS_CT_LIMIT_ATTR_ZONE_LIMIT = CT_LIMIT["ZONE_LIMIT"]
OVS_ZONE_LIMIT_DEFAULT_ZONE = -1
#: Conntrack zones are 16-bit (check_zone_id in conntrack.c).
MAX_ZONE = 65535

#: How many zones one GET may ask for so that the reply fits the smallest buffer the kernel
#: uses (NLMSG_GOODSIZE, a 4 KiB page): 24 bytes of headers, a 4-byte attribute header and
#: 12 bytes per zone; 300 zones make 3,644 bytes.
ZONES_PER_REQUEST = 300


class ZoneLimit(NamedTuple):
    """One ``struct ovs_zone_limit`` of a reply."""

    zone: int
    limit: int  # 0: unlimited
    connections: int  # struct ovs_zone_limit count: connections counted against the limit


class CtLimits(NamedTuple):
    """One GET's reply: the default limit (None when not asked for) and the zones."""

    default_limit: int | None
    zones: tuple[ZoneLimit, ...]


def encode_ct_limit_get(family_id: int, seq: int, zones: Sequence[int] | None = None) -> bytes:
    """``OVS_CT_LIMIT_CMD_GET``: every limited zone (``zones`` None), or these zone ids (-1: the default)."""
    attrs = b""
    if zones is not None:
        payload = b"".join(ZONE_LIMIT.unpack.pack(zone, 0, 0) for zone in zones)
        attrs = encode_attr(OVS_CT_LIMIT_ATTR_ZONE_LIMIT, payload)
    return encode_ovs_get(family_id, OVS_CT_LIMIT_VERSION, seq, 0, attrs, dump=False)


def decode_ct_limits(buf: bytes, message: Message, skip_limit: int | None = None) -> CtLimits:
    """Decode the reply to ``OVS_CT_LIMIT_CMD_GET``.

    ``skip_limit``: zones whose limit is this one are left out. A read of every zone id keeps
    only those whose limit is not the default, and a record is made only for them (the
    default's zones are most of 65,536).
    """
    _dp_ifindex, pos = ovs_start(buf, message, "ct_limit")
    attrs = CT_LIMIT.decode(buf, pos, message.end)
    entries = attrs.get("ZONE_LIMIT")
    if entries is None:
        raise DecodeError(f"ct_limit message at offset {message.start} has no ZONE_LIMIT attribute")
    default_limit = None
    zones = []
    for zone_id, limit, count in entries:
        if not 0 <= zone_id <= MAX_ZONE:
            if zone_id != OVS_ZONE_LIMIT_DEFAULT_ZONE:
                raise DecodeError(
                    f"ct_limit message at offset {message.start}: zone id {zone_id} out of range"
                )
            default_limit = limit
        elif limit != skip_limit:
            zones.append(ZoneLimit(zone_id, limit, count))
    return CtLimits(default_limit, tuple(zones))
