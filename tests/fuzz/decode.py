"""What both fuzzers run on their input: split it into netlink messages and decode each one."""

from __future__ import annotations

from exporter import wire
from tests.ovs_messages import DATAPATH_FAMILY_ID


def decode_everything(data: bytes) -> None:
    """Decode every message in ``data``; raises only ``wire.DecodeError`` on bad input."""
    for message in wire.iter_messages(data):
        if message.type == DATAPATH_FAMILY_ID:
            wire.genl_command(data, message)
            wire.decode_datapath(data, message)
        elif message.type == wire.GENL_ID_CTRL:
            wire.decode_ctrl_family(data, message)
        elif message.type in (wire.NLMSG_DONE, wire.NLMSG_ERROR):
            wire.error_code(data, message)
        else:
            wire.genl_command(data, message)
            wire.decode_vport(data, message)
