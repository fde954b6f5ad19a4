"""Capture real dumps for the host's decoding tests (run in the guest by ``python -m tests.vm capture``).

Builds the standard topology plus a datapath without per-CPU upcall dispatch and one with it and
two handler PIDs, moves traffic and upcalls, waits until nothing moves, then writes into OUTDIR:

* ``datapaths.bin``: the ``ovs_datapath`` dump, every datagram exactly as the kernel sent it,
  concatenated (netlink messages, the final NLMSG_DONE included);
* ``vports-<datapath>.bin``: the ``ovs_vport`` dump of each datapath, the same way;
* ``expected.json``: the decoded values at that moment (from this package's own decoder, checked
  against ``ovs-dpctl show -s`` for every counter it prints).

Usage: python -m tests.kernel.capture OUTDIR
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
from pathlib import Path
from typing import Any

from .ovsnl import DATAPATH_FAMILY, VPORT_FAMILY, OvsNetlink, Snapshot
from .topology import STANDARD, Topology, dpctl_show, ping, send_frames, standard_topology, wait_quiet

UPCALL_DP = "ovs-u"
PER_CPU_DP = "ovs-p"


def _check_against_dpctl(snap: Snapshot) -> dict[str, Any]:
    shown: dict[str, Any] = {}
    for spec in STANDARD:
        dp = dpctl_show(spec.name)
        kernel = snap.datapaths[spec.name]
        for field, value in dp.counters.items():
            if getattr(kernel, field) != value:
                raise AssertionError(f"{spec.name} {field}: ovs-dpctl {value}, dump {getattr(kernel, field)}")
        for port, stats in dp.ports.items():
            vport = snap.vports[spec.name][port]
            for key, shown_value in stats.items():
                if shown_value is not None and vport.stats[key] != shown_value:
                    raise AssertionError(
                        f"{spec.name}/{port} {key}: ovs-dpctl {shown_value}, dump {vport.stats[key]}"
                    )
        shown[spec.name] = dataclasses.asdict(dp)
    return shown


def capture(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    nl = OvsNetlink()
    with standard_topology(nl):
        listener = OvsNetlink()
        gone = OvsNetlink()
        dead_pid = gone.portid
        gone.close()
        upcalls = Topology(nl)
        try:
            upcalls.add_datapath(UPCALL_DP)
            upcalls.add_veth(UPCALL_DP, "vu0", upcall_pid=listener.portid)
            upcalls.add_veth(UPCALL_DP, "vu1", upcall_pid=dead_pid)
            upcalls.add_datapath(PER_CPU_DP, per_cpu_pids=(listener.portid, nl.portid))
            ping(STANDARD[0], count=5, size=100)
            ping(STANDARD[1], count=3, size=300)
            send_frames("vu0p", 4)
            send_frames("vu1p", 3)
            wait_quiet(nl)
            for _ in range(5):
                before = nl.snapshot()
                shown = _check_against_dpctl(before)
                snap = nl.snapshot()
                if snap.counters() == before.counters():
                    break
            else:
                raise AssertionError("counters kept moving")
            write(out, nl, snap, shown)
        finally:
            upcalls.teardown()
            listener.close()


def write(out: Path, nl: OvsNetlink, snap: Snapshot, shown: dict[str, Any]) -> None:
    assert snap.datapath_dump is not None
    files: dict[str, Any] = {"datapaths": "datapaths.bin", "vports": {}}
    datagrams: dict[str, list[int]] = {}
    (out / "datapaths.bin").write_bytes(snap.datapath_dump.raw)
    datagrams["datapaths.bin"] = [len(d) for d in snap.datapath_dump.datagrams]
    for name, dump in sorted(snap.vport_dumps.items()):
        fname = f"vports-{name}.bin"
        (out / fname).write_bytes(dump.raw)
        files["vports"][name] = fname
        datagrams[fname] = [len(d) for d in dump.datagrams]
    expected = {
        "kernel": platform.release(),
        "families": {DATAPATH_FAMILY: nl.family(DATAPATH_FAMILY), VPORT_FAMILY: nl.family(VPORT_FAMILY)},
        "files": files,
        "datagram_sizes": datagrams,
        "datapaths": [dataclasses.asdict(dp) for dp in sorted(snap.datapaths.values(), key=lambda d: d.name)],
        "vports": {
            dp: [
                dict(dataclasses.asdict(v), type_name=v.type_name)
                for v in sorted(vps.values(), key=lambda v: v.port_no)
            ]
            for dp, vps in sorted(snap.vports.items())
        },
        "ovs_dpctl_show": shown,
    }
    (out / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    print(f"captured {len(files['vports'])} vport dumps from {platform.release()} into {out}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    capture(Path(sys.argv[1]))
