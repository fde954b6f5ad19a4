"""The generic netlink controller (``nlctrl``): family names to ids and multicast groups.

``include/uapi/linux/genetlink.h``. Every family the exporter reads is resolved by name
with ``CTRL_CMD_GETFAMILY`` (a module reload changes the ids), and the event listener
follows families coming and going through nlctrl's own ``notify`` group.
"""

from __future__ import annotations

from typing import NamedTuple

from exporter.kernel.netlink import (
    GENLMSGHDR,
    NLM_F_REQUEST,
    NLMSGHDR,
    AttributeSet,
    DecodeError,
    Message,
    NestArray,
    encode_attr,
)

GENL_ID_CTRL = 0x10
CTRL_VERSION = 2
GENL_CTRL_NOTIFY_GROUP = "notify"

# enum ctrl_cmd
CTRL_CMD_NEWFAMILY = 1
CTRL_CMD_DELFAMILY = 2
CTRL_CMD_GETFAMILY = 3
CTRL_CMD_NEWMCAST_GRP = 7
CTRL_CMD_DELMCAST_GRP = 8

# enum ctrl_attr_mcast_grp, inside each nest of CTRL_ATTR_MCAST_GROUPS
MCAST_GROUP = AttributeSet("nlctrl MCAST_GROUP", {1: ("NAME", "string"), 2: ("ID", "u32")})
# enum ctrl_attr (only what the exporter reads)
CTRL = AttributeSet(
    "nlctrl",
    {
        1: ("FAMILY_ID", "u16"),
        2: ("FAMILY_NAME", "string"),
        7: ("MCAST_GROUPS", NestArray(MCAST_GROUP)),
    },
)
CTRL_ATTR_FAMILY_ID = CTRL["FAMILY_ID"]
CTRL_ATTR_FAMILY_NAME = CTRL["FAMILY_NAME"]


class CtrlFamily(NamedTuple):
    """A CTRL_CMD_GETFAMILY reply or an nlctrl notification about one family."""

    cmd: int
    name: str | None
    family_id: int | None
    groups: tuple[tuple[str, int], ...]  # multicast groups: (name, id)


def encode_get_family(seq: int, name: str) -> bytes:
    """CTRL_CMD_GETFAMILY for one family by name."""
    payload = GENLMSGHDR.pack(CTRL_CMD_GETFAMILY, CTRL_VERSION, 0) + encode_attr(
        CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0"
    )
    return NLMSGHDR.pack(NLMSGHDR.size + len(payload), GENL_ID_CTRL, NLM_F_REQUEST, seq, 0) + payload


def decode_ctrl_family(buf: bytes, message: Message) -> CtrlFamily:
    """Decode an nlctrl message (type GENL_ID_CTRL): its command, family name, id and groups."""
    start = message.start + NLMSGHDR.size
    if message.end - start < GENLMSGHDR.size:
        raise DecodeError(f"nlctrl message at offset {message.start} is shorter than its genetlink header")
    cmd = GENLMSGHDR.unpack_from(buf, start)[0]
    attrs = CTRL.decode(buf, start + GENLMSGHDR.size, message.end)
    groups = tuple(
        (group["NAME"], group["ID"])
        for group in attrs.get("MCAST_GROUPS", ())
        if "NAME" in group and "ID" in group
    )
    return CtrlFamily(cmd, attrs.get("FAMILY_NAME"), attrs.get("FAMILY_ID"), groups)
