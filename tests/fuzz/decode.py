"""What both fuzzers run on their input: split it into netlink messages and decode each one."""

from __future__ import annotations

from exporter.kernel.families.datapath import decode_datapath
from exporter.kernel.families.nlctrl import GENL_ID_CTRL, decode_ctrl_family
from exporter.kernel.families.vport import decode_vport
from exporter.kernel.netlink import (
    NLMSG_DONE,
    NLMSG_ERROR,
    error_code,
    genl_command,
    iter_messages,
)
from tests.ovs_messages import DATAPATH_FAMILY_ID


def decode_everything(data: bytes) -> None:
    """Decode every message in ``data``; raises only ``DecodeError`` on bad input."""
    for message in iter_messages(data):
        if message.type == DATAPATH_FAMILY_ID:
            genl_command(data, message)
            decode_datapath(data, message)
        elif message.type == GENL_ID_CTRL:
            decode_ctrl_family(data, message)
        elif message.type in (NLMSG_DONE, NLMSG_ERROR):
            error_code(data, message)
        else:
            genl_command(data, message)
            decode_vport(data, message)
