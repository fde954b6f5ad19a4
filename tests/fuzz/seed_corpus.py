"""Writes the fuzzer's seed corpus: well-formed replies in the kernel's layout."""

from __future__ import annotations

import sys
from pathlib import Path

from exporter.kernel.families.nlctrl import CTRL_CMD_NEWFAMILY
from tests.ovs_messages import (
    FakeDatapath,
    FakeVport,
    ctrl_family_message,
    datapath_message,
    done,
    nlmsg_error,
    vport_message,
    vport_notification,
)


def seeds() -> dict[str, bytes]:
    vports = [
        FakeVport(0, "dp0", type=2, ifindex=3, upcall=(1, 2)),
        FakeVport(1, "veth0", ifindex=4, netnsid=1, stats=(1, 2, 3, 4, 5, 6, 7, 8)),
        FakeVport(2, "vx", type=4, ifindex=5, dst_port=4789, upcall=(0, 0)),
        FakeVport(3, "odd", type=99, stats=None, extra_attrs=b"\x08\x00\x63\x00abcd"),
        FakeVport(4, "vxgbp", type=4, ifindex=6, dst_port=4790, extension=(1, 7), upcall_pids=(9, 0, 9)),
    ]
    return {
        "vports": b"".join(vport_message(1, 3, v) for v in vports) + done(1),
        "datapath": datapath_message(1, FakeDatapath("dp0", 3, stats=(1, 2, 3, 4), megaflow=(5, 6, 7))),
        "datapath-old": datapath_message(1, FakeDatapath("dp0", 3, megaflow=None)),
        "datapath-per-cpu": datapath_message(
            1, FakeDatapath("dp0", 3, user_features=0b1011, per_cpu_pids=(11, 12, 11, 0))
        ),
        "error": nlmsg_error(1, 19),
        "ctrl-family": ctrl_family_message(
            CTRL_CMD_NEWFAMILY, "ovs_vport", 0x1B, [("ovs_vport", 5), ("other", 6)], seq=1
        ),
        "vport-notifications": b"".join(
            vport_notification(cmd, 3, FakeVport(7, "tap7", ifindex=9)) for cmd in (1, 4, 2)
        ),
    }


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, data in seeds().items():
        (out / name).write_bytes(data)
