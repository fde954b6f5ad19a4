"""The flow dump's cost on a real kernel, against ``ovs-dpctl dump-flows`` reading the same table.

Runs inside the guest of the VM harness (``tests/vm``), from the host:

    .venv/bin/python -m tests.vm run --kernel 6.12 --quiet -- python -m benchmarks.flows_vm

It creates one datapath with ``--ports`` internal vports and grows its flow table to each of
``--sizes`` flows (OVS_FLOW_CMD_NEW sent in batches over netlink, with UFIDs as vswitchd makes
them; every twentieth drops), and at each size times, interleaved, ``--runs`` times:

- ``ovs-dpctl dump-flows`` (Debian's, the C tool), output to /dev/null: wall time, CPU time and
  peak RSS of the process (``wait4``);
- the exporter's worker doing one round, in a fresh process (``--round``): the vport dump, the
  flow dump decoded as it arrives (``dump_flows``: the socket's time and the scanner's), and the
  drop accounting (``DropFlows.account``), each timed inside; its peak RSS (VmHWM) and its RSS
  before the round (the interpreter and the exporter's modules); what it keeps for the next
  dump (the identities and drop flows of ``DropFlows``, in bytes);
- a straightforward standard-library decode of the same dump asked key-only (OMIT_MASK and
  OMIT_ACTIONS): every attribute of every message, the key's too, walked with ``struct`` into
  dicts; and the raw dump (datagrams received, headers walked) as the floor.

With ``--scrape-vports N`` it then adds vports up to N and times a scrape of an exporter without
the flow collector against one with it dumping the whole table back to back (the largest size).

The guest runs under TCG emulation (20-35x slower than native): only the ratios mean something.
Figures go to stdout and to ``$OVS_VM_RESULTS/flows_vm.json``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.scrape import get_metrics
from exporter.kernel.netlink import NLA_TYPE_MASK, NLMSG_DONE, NLMSG_ERROR, encode_attr, encode_ovs_get
from tests.kernel import ovsnl
from tests.kernel.ovsflow import (
    FLOW_FAMILY,
    UFID_F_OMIT_ACTIONS,
    UFID_F_OMIT_MASK,
    FlowTable,
    ipv4_match,
    output,
)
from tests.kernel.procs import Exporter

DATAPATH = "bench-fl"


def grow_table(table: FlowTable, dp_ifindex: int, ports: int, have: int, want: int) -> None:
    """Flows ``have`` .. ``want`` - 1: from a port chosen at random, to an address of their own."""
    rng = random.Random(have)

    def flows() -> Any:
        for n in range(have, want):
            key, mask = ipv4_match(
                rng.randrange(1, ports + 1), f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
            )
            actions = b"" if n % 20 == 0 else output(rng.randrange(1, ports + 1))
            yield key, actions, mask, rng.randbytes(16)

    table.new_many(dp_ifindex, flows())


def wait4(command: list[str]) -> dict[str, float]:
    """Run ``command``, stdout to /dev/null: wall and CPU seconds, peak RSS in MB."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if status:
        raise RuntimeError(f"{command} exited with {status}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss * 1024 / 1e6}


def one_round() -> None:
    """In a fresh process: one worker round on the datapath, its parts timed; JSON on stdout."""
    from exporter.kernel import flow_worker
    from exporter.kernel.families.flow import FlowTally
    from exporter.kernel.flow_worker import DropFlows, NamespaceFlows, WorkerConfig, memory
    from exporter.kernel.genl import open_socket

    timings = {"dump": 0.0, "account": 0.0}
    real_dump, real_account = flow_worker.dump_flows, DropFlows.account

    def dump(*args: Any, **kwargs: Any) -> FlowTally:
        started = time.perf_counter()
        try:
            return real_dump(*args, **kwargs)
        finally:
            timings["dump"] += time.perf_counter() - started

    kept: list[DropFlows] = []

    def account(self: DropFlows, tally: FlowTally) -> Any:
        started = time.perf_counter()
        try:
            return real_account(self, tally)
        finally:
            timings["account"] += time.perf_counter() - started
            kept.append(self)

    flow_worker.dump_flows = dump  # type: ignore[assignment]
    DropFlows.account = account  # type: ignore[method-assign]
    config = WorkerConfig(interval=1, max_flows=10_000_000, max_seconds=3600, netlink_timeout=30)
    namespace = NamespaceFlows(None, lambda: open_socket(30), config)
    before = memory()["rss_bytes"]
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    report = namespace.round()
    elapsed = time.perf_counter() - started
    used = resource.getrusage(resource.RUSAGE_SELF)
    (entry,) = [dp for dp in report["datapaths"] if dp["datapath"] == DATAPATH]
    state = kept[-1]
    kept_bytes = sum(ids.nbytes for ids in state.seen) + sum(
        sys.getsizeof(d)
        + sum(sys.getsizeof(k) + sys.getsizeof(v) + sum(map(sys.getsizeof, v)) for k, v in d.items())
        for d in state.drops
    )
    print(
        json.dumps(
            {
                "flows": entry["flows"],
                "round": elapsed,
                "dump": timings["dump"],
                "account": timings["account"],
                "cpu": used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime,
                "rss_before_mb": before / 1e6,
                "peak_rss_mb": memory()["peak_rss_bytes"] / 1e6,
                "kept_mb": kept_bytes / 1e6,
            }
        )
    )


class RawFlowDump:
    """The flow dump received and its message headers walked: the floor of any reader."""

    def __init__(self, nl: ovsnl.OvsNetlink, dp_ifindex: int, ufid_flags: int) -> None:
        self.family = nl.family(FLOW_FAMILY)
        self.dp_ifindex = dp_ifindex
        self.ufid_flags = ufid_flags
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, ovsnl.NETLINK_GENERIC)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, 0))
        self.seq = 0

    def request(self) -> None:
        self.seq += 1
        attrs = encode_attr(10, struct.pack("=I", self.ufid_flags))  # OVS_FLOW_ATTR_UFID_FLAGS
        self.sock.send(encode_ovs_get(self.family, 1, self.seq, self.dp_ifindex, attrs))

    def __call__(self) -> int:
        self.request()
        messages = 0
        while True:
            data = self.sock.recv(1 << 16)
            pos = 0
            while pos + 16 <= len(data):
                length, mtype = struct.unpack_from("=IH", data, pos)
                if mtype == NLMSG_DONE:
                    return messages
                if mtype == NLMSG_ERROR:
                    raise OSError("dump failed")
                messages += 1
                pos += (length + 3) & ~3


class BareFlowDecode(RawFlowDump):
    """The dump asked key-only, every attribute of every message walked into dicts, nested ones
    (the key) too: what a straightforward standard-library reader does."""

    def __call__(self) -> int:
        self.request()
        flows: list[dict[int, Any]] = []
        while True:
            data = self.sock.recv(1 << 16)
            pos = 0
            while pos + 16 <= len(data):
                length, mtype = struct.unpack_from("=IH", data, pos)
                if mtype == NLMSG_DONE:
                    return len(flows)
                if mtype == NLMSG_ERROR:
                    raise OSError("dump failed")
                flows.append(_attrs(data, pos + 24, pos + length))
                pos += (length + 3) & ~3


def _attrs(data: bytes, pos: int, end: int, nests: tuple[int, ...] = (1, 7)) -> dict[int, Any]:
    """Every attribute into a dict: u32 and u64 as numbers, ``nests`` (KEY and MASK at the top, the
    key's ENCAP and TUNNEL inside) walked the same way, anything else as bytes."""
    attrs: dict[int, Any] = {}
    while pos + 4 <= end:
        alen, atype = struct.unpack_from("=HH", data, pos)
        if alen < 4:
            raise ValueError(f"attribute of {alen} bytes at offset {pos}")
        atype &= NLA_TYPE_MASK
        if atype in nests:
            attrs[atype] = _attrs(data, pos + 4, pos + alen, (1, 16))
        elif alen == 8:
            attrs[atype] = struct.unpack_from("=I", data, pos + 4)[0]
        elif alen == 12:
            attrs[atype] = struct.unpack_from("=Q", data, pos + 4)[0]
        else:
            attrs[atype] = data[pos + 4 : pos + alen]
        pos += (alen + 3) & ~3
    return attrs


def timed(fn: Any) -> tuple[float, int]:
    started = time.perf_counter()
    count = fn()
    return time.perf_counter() - started, count


def measure_size(nl: ovsnl.OvsNetlink, dp_ifindex: int, flows: int, runs: int) -> dict[str, Any]:
    raw = RawFlowDump(nl, dp_ifindex, UFID_F_OMIT_MASK)
    bare = BareFlowDecode(nl, dp_ifindex, UFID_F_OMIT_MASK | UFID_F_OMIT_ACTIONS)
    rounds: list[dict[str, float]] = []
    dpctl: list[dict[str, float]] = []
    bare_s: list[float] = []
    raw_s: list[float] = []
    try:
        for _ in range(runs):
            dpctl.append(wait4(["ovs-dpctl", "dump-flows", DATAPATH]))
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.flows_vm", "--round"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            rounds.append(json.loads(out.splitlines()[-1]))
            seconds, count = timed(bare)
            assert count == flows, (count, flows)
            bare_s.append(seconds)
            seconds, count = timed(raw)
            assert count == flows, (count, flows)
            raw_s.append(seconds)
    finally:
        raw.sock.close()
        bare.sock.close()
    assert all(r["flows"] == flows for r in rounds), rounds

    def med(values: list[dict[str, float]], key: str) -> float:
        return statistics.median(v[key] for v in values)

    result = {
        "flows": flows,
        "runs": runs,
        "ovs_dpctl": {key: med(dpctl, key) for key in ("wall", "cpu", "peak_rss_mb")},
        "exporter": {key: med(rounds, key) for key in rounds[0] if key != "flows"},
        "bare_decode_key_only": statistics.median(bare_s),
        "raw_dump": statistics.median(raw_s),
    }
    exporter = result["exporter"]
    result["ratios"] = {
        "exporter_round_to_ovs_dpctl": exporter["round"] / result["ovs_dpctl"]["wall"],
        "exporter_dump_to_ovs_dpctl": exporter["dump"] / result["ovs_dpctl"]["wall"],
        "bare_decode_to_ovs_dpctl": result["bare_decode_key_only"] / result["ovs_dpctl"]["wall"],
        "exporter_dump_to_bare_decode": exporter["dump"] / result["bare_decode_key_only"],
        "raw_dump_to_ovs_dpctl": result["raw_dump"] / result["ovs_dpctl"]["wall"],
    }
    return result


def _dump_ended(body: bytes) -> float | None:
    """The flow dump timestamp a gzipped scrape carries (None before the first complete dump)."""
    for line in gzip.decompress(body).decode().splitlines():
        if line.startswith("ovs_datapath_flow_dump_timestamp_seconds{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def measure_scrape(results_dir: Path, rounds: int) -> dict[str, Any]:
    """An exporter without the flow collector and one dumping back to back, scraped in turn."""
    plain = Exporter(9310, results_dir, name="exporter-plain")
    flows = Exporter(
        9311,
        results_dir,
        name="exporter-flows",
        args=(
            "--collector.flows",
            "--collector.flows.interval",
            "0.5",
            "--collector.flows.max-seconds",
            "3600",
        ),
    )
    try:
        deadline = time.monotonic() + 3600
        while _dump_ended(get_metrics(9311)[2]) is None:
            if time.monotonic() > deadline:
                raise RuntimeError("no complete flow dump in an hour")
            time.sleep(2)
        times: dict[str, list[float]] = {"without": [], "with": []}
        ends: set[float] = set()
        for _ in range(rounds):
            for name, port in (("without", 9310), ("with", 9311)):
                elapsed, response, body = get_metrics(port)
                assert response.status == 200
                times[name].append(elapsed)
                if name == "with":
                    ends.add(_dump_ended(body) or 0.0)
    finally:
        plain.stop()
        flows.stop()
    ratios = [w / n for w, n in zip(times["with"], times["without"], strict=True)]
    return {
        "rounds": rounds,
        "median_seconds_emulated": {name: statistics.median(t) for name, t in times.items()},
        "median_ratio_with_to_without": statistics.median(ratios),
        "dumps_completed_during_the_scrapes": len(ends) - 1,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.flows_vm", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,10000,100000,200000", help="flow table sizes, ascending")
    p.add_argument("--ports", type=int, default=100, help="vports the flows come in through")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--scrape-vports", type=int, default=0, help="then scrape at this many vports (0: not)")
    p.add_argument("--scrape-rounds", type=int, default=11)
    p.add_argument("--round", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.round:
        one_round()
        return 0
    results_dir = Path(os.environ.get("OVS_VM_RESULTS", "/tmp"))
    nl = ovsnl.OvsNetlink()
    table = FlowTable(nl)
    dp_ifindex = nl.new_datapath(DATAPATH)
    report: dict[str, Any] = {"kernel": os.uname().release, "ports": args.ports, "sizes": []}
    try:
        nl.new_vports(dp_ifindex, [f"tap{i:08x}" for i in range(args.ports)], ovsnl.VPORT_INTERNAL)
        have = 0
        for size in map(int, args.sizes.split(",")):
            started = time.perf_counter()
            grow_table(table, dp_ifindex, args.ports, have, size)
            have = size
            print(f"{size} flows installed ({time.perf_counter() - started:.0f} s)", flush=True)
            result = measure_size(nl, dp_ifindex, size, args.runs)
            report["sizes"].append(result)
            print(json.dumps(result), flush=True)
        if args.scrape_vports:
            started = time.perf_counter()
            more = [f"vp{i:08x}" for i in range(args.scrape_vports - args.ports - 1)]
            nl.new_vports(dp_ifindex, more, ovsnl.VPORT_INTERNAL)
            print(f"{len(more)} more vports ({time.perf_counter() - started:.0f} s)", flush=True)
            report["scrape"] = {
                "vports": args.scrape_vports,
                "flows": have,
                **measure_scrape(results_dir, args.scrape_rounds),
            }
            print(json.dumps(report["scrape"]), flush=True)
    finally:
        nl.del_datapath(DATAPATH)
        nl.close()
    (results_dir / "flows_vm.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        "\nflows   ovs-dpctl  exporter round (dump, account)  ratio  bare key-only  raw"
        "    exporter peak RSS / kept"
    )
    for r in report["sizes"]:
        e, d = r["exporter"], r["ovs_dpctl"]
        print(
            f"{r['flows']:>7}  {d['wall']:8.3f}s  {e['round']:8.3f}s ({e['dump']:.3f}, {e['account']:.3f})"
            f"  {r['ratios']['exporter_round_to_ovs_dpctl']:5.2f}  {r['bare_decode_key_only']:8.3f}s"
            f"  {r['raw_dump']:6.3f}s  {e['peak_rss_mb']:.1f} MB ({e['rss_before_mb']:.1f} before)"
            f" / {e['kept_mb']:.2f} MB"
            f"; ovs-dpctl {d['peak_rss_mb']:.1f} MB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
