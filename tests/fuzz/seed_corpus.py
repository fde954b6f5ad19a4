"""Writes the fuzzer's seed corpus: well-formed replies in the kernel's layout."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.ovs_messages import FakeDatapath, FakeVport, datapath_message, done, nlmsg_error, vport_message


def seeds() -> dict[str, bytes]:
    vports = [
        FakeVport(0, "dp0", type=2, ifindex=3, upcall=(1, 2)),
        FakeVport(1, "veth0", ifindex=4, netnsid=1, stats=(1, 2, 3, 4, 5, 6, 7, 8)),
        FakeVport(2, "vx", type=4, ifindex=5, dst_port=4789, upcall=(0, 0)),
        FakeVport(3, "odd", type=99, stats=None, extra_attrs=b"\x08\x00\x63\x00abcd"),
    ]
    return {
        "vports": b"".join(vport_message(1, 3, v) for v in vports) + done(1),
        "datapath": datapath_message(1, FakeDatapath("dp0", 3, stats=(1, 2, 3, 4), megaflow=(5, 6, 7))),
        "datapath-old": datapath_message(1, FakeDatapath("dp0", 3, megaflow=None)),
        "error": nlmsg_error(1, 19),
    }


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, data in seeds().items():
        (out / name).write_bytes(data)
