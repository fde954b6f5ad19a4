"""rtnetlink's links: what kind of device a vport's netdev is, from ``RTM_GETLINK``.

Not a generic netlink family but rtnetlink (``NETLINK_ROUTE``), read over the same
socket class (``exporter.kernel.genl``) with the same netlink framing. Layouts from
``include/uapi/linux/rtnetlink.h`` (``RTM_*``, ``struct ifinfomsg``, ``RTEXT_FILTER_*``)
and ``include/uapi/linux/if_link.h`` (``enum`` ``IFLA_*`` and ``IFLA_INFO_*``), the same
numbers as the kernel's ``Documentation/netlink/specs/rt-link.yaml``.

A GET of one link by its ifindex needs no privilege (``rtnetlink_rcv_msg`` asks for
CAP_NET_ADMIN only for NEW, DEL and SET). The kernel answers with an ``RTM_NEWLINK``
message; the exporter reads two of its attributes: the name, to check the ifindex
still names the device it asked about, and ``IFLA_LINKINFO``/``IFLA_INFO_KIND``, the
``rtnl_link_ops`` kind of the driver (``veth``, ``tun``, ``geneve``, ``vxlan``,
``openvswitch`` for an OVS internal port, ...). A device whose driver registers no
``rtnl_link_ops`` (a physical NIC, ``lo``) has no ``IFLA_LINKINFO`` at all: no kind.
A few links per scrape at most (only those not seen before): decoded by the generic
``AttributeSet.decode``.
"""

from __future__ import annotations

import struct
import sys
from typing import NamedTuple

from exporter.kernel.netlink import NLM_F_REQUEST, NLMSGHDR, AttributeSet, DecodeError, Message, encode_attr

# rtnetlink.h: enum of RTM_* message types. GET is the only one this exporter sends.
RTM_NEWLINK = 16
RTM_GETLINK = 18
# rtnetlink.h: bits of IFLA_EXT_MASK. The reply then leaves out the device's statistics, which
# the exporter does not read (a quarter of a link message); a kernel that does not know the bit
# ignores it.
RTEXT_FILTER_SKIP_STATS = 1 << 3

# struct ifinfomsg { u8 ifi_family; u8 pad; u16 ifi_type; s32 ifi_index; u32 ifi_flags; u32 ifi_change; }
IFINFOMSG = struct.Struct("=BxHiII")
AF_UNSPEC = 0

# enum IFLA_INFO_*, inside IFLA_LINKINFO
LINKINFO = AttributeSet("link LINKINFO", {1: ("KIND", "string"), 4: ("SLAVE_KIND", "string")})
# enum IFLA_* (only what the exporter sends or reads)
LINK = AttributeSet(
    "link",
    {
        3: ("IFNAME", "string"),
        18: ("LINKINFO", LINKINFO),
        29: ("EXT_MASK", "u32"),
    },
)
IFLA_EXT_MASK = LINK["EXT_MASK"]


class Link(NamedTuple):
    """One ``RTM_NEWLINK`` reply, as far as the exporter reads it."""

    ifindex: int
    name: str | None
    kind: str | None  # IFLA_INFO_KIND; None: the device has no kind (no rtnl_link_ops)


def encode_get_link(seq: int, ifindex: int) -> bytes:
    """``RTM_GETLINK`` for the one link ``ifindex`` (not a dump), without its statistics."""
    payload = IFINFOMSG.pack(AF_UNSPEC, 0, ifindex, 0, 0) + encode_attr(
        IFLA_EXT_MASK, struct.pack("=I", RTEXT_FILTER_SKIP_STATS)
    )
    return NLMSGHDR.pack(NLMSGHDR.size + len(payload), RTM_GETLINK, NLM_F_REQUEST, seq, 0) + payload


def decode_link(buf: bytes, message: Message) -> Link:
    """Decode one ``RTM_NEWLINK`` message: its ifindex, name and kind."""
    start = message.start + NLMSGHDR.size
    if message.end - start < IFINFOMSG.size:
        raise DecodeError(
            f"link message at offset {message.start} is {message.end - message.start} bytes,"
            f" shorter than its {NLMSGHDR.size + IFINFOMSG.size}-byte headers"
        )
    ifindex = IFINFOMSG.unpack_from(buf, start)[2]
    attrs = LINK.decode(buf, start + IFINFOMSG.size, message.end)
    kind = attrs.get("LINKINFO", {}).get("KIND")
    # A handful of kinds for thousands of links, each kept as long as its link: one string each.
    return Link(ifindex, attrs.get("IFNAME"), sys.intern(kind) if kind else None)
