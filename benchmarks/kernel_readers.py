"""What the meter and conntrack zone readers cost, on a real kernel in the VM.

Runs inside the guest of the VM harness (``tests/vm``), from the host:

    .venv/bin/python -m tests.vm run --kernel 6.12 --quiet -- python -m benchmarks.kernel_readers

Three parts, each measured in the same run as its baseline (the guest runs under TCG, many
times slower than native and not uniformly so: compare figures within a run):

- **meters**: a datapath with N meters (0, 100, 1,000, 5,000), made over netlink as
  ovs-vswitchd makes them (ids 0 up). One round of the exporter's reader
  (``exporter.kernel.meters.read_meters``, its real code and socket): the requests it sent
  (every one a GET that takes ``ovs_mutex``), its time, the CPU it used, the memory its result
  holds; beside it the bare cost of the same requests (sent and received on a plain netlink
  socket, nothing decoded).
- **zones**: N conntrack zones with a limit of their own (0, 100, 650, 1,000: past about 650
  they do not fit one reply and every zone id is asked for in chunks). The same figures for
  ``exporter.kernel.ct_zones.read_zone_limits``. For meters, also what a scrape spends on them
  (``MeterSource.report`` of a round's result: its samples are written by the round).
- **ovs_mutex**: what the meter reader costs the flow setups of ovs-vswitchd. Every flow
  vswitchd installs or deletes takes ``ovs_mutex``, as every meter GET does; here a process
  installs and deletes exact-match flows (``OVS_FLOW_CMD_NEW``/``DEL``) back to back on a datapath
  holding M meters, timing each, while the exporter itself (``python -m exporter``, another
  process) reads those meters in rounds back to back (``--collector.meters.interval 1`` with
  rounds longer than a second) or is not running, in alternating windows. Reported: flow
  operations per second and their latency (median, 99th percentile) with the reader on and off,
  and the ratios.
- **ovs-vswitchd**: the same question asked of the real ovs-vswitchd (``tests/kernel/vswitchd.py``'s
  host): frames from a new source MAC each, sent as fast as a process can into br-int, make
  vswitchd handle an upcall and install a flow for each; its datapath's M meters are read by the
  exporter (running in vswitchd's namespace, rounds back to back) or not, in alternating windows.
  Reported: upcalls queued to vswitchd per second (``ovs_dp_stats.n_missed``, which grows only
  as fast as vswitchd drains its sockets once they are full) and lost ones, reader on and off.

Figures go to stdout and to ``$OVS_VM_RESULTS/kernel_readers.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from exporter.exposition import Format
from exporter.kernel.ct_zones import read_zone_limits
from exporter.kernel.dumps import DatapathDump
from exporter.kernel.families.ct_limit import OVS_CT_LIMIT_FAMILY
from exporter.kernel.families.datapath import Datapath
from exporter.kernel.families.meter import OVS_METER_FAMILY
from exporter.kernel.genl import GenlSocket
from exporter.kernel.meters import MeterSource, read_meters
from exporter.kernel.netlink import NLMSG_DONE, NLMSG_ERROR, NLMSGHDR
from tests.kernel import ovsnl
from tests.kernel.procs import wait_http

EXPORTER_PORT = 19400


class RecordingSocket(GenlSocket):
    """The exporter's socket, keeping a copy of every request it sends (for the bare replay)."""

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout)
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)
        super().send(data)


def bare_replay(requests: list[bytes]) -> float:
    """Send the same requests on a plain netlink socket, receive every reply, decode nothing."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((0, 0))
    started = time.perf_counter()
    for request in requests:
        sock.send(request)
        seq = NLMSGHDR.unpack_from(request)[3]
        done = False
        while not done:
            buf = sock.recv(1 << 16)
            pos = 0
            while pos < len(buf):
                length, mtype, flags, mseq, _ = NLMSGHDR.unpack_from(buf, pos)
                if mseq == seq and (mtype in (NLMSG_DONE, NLMSG_ERROR) or not flags & 0x2):
                    done = True
                pos += (length + 3) & ~3
    elapsed = time.perf_counter() - started
    sock.close()
    return elapsed


def measure(read: Callable[[RecordingSocket, Any], Any], rounds: int) -> dict[str, Any]:
    """``rounds`` rounds of a reader (each given the previous result, as its thread does)."""
    walls, cpus, bares = [], [], []
    previous = None
    requests = 0
    for _ in range(rounds):
        sock = RecordingSocket(5.0)
        cpu = time.thread_time()
        started = time.perf_counter()
        previous = read(sock, previous)
        walls.append(time.perf_counter() - started)
        cpus.append(time.thread_time() - cpu)
        sock.close()
        requests = len(sock.sent) - sum(1 for r in sock.sent if r[4:6] == b"\x10\x00")  # minus nlctrl lookups
        bares.append(bare_replay(sock.sent))
    # What one round allocates at its peak, and what its result (the snapshot a scrape renders)
    # holds once the round is over: the socket is closed first, its buffers are not the result's.
    plain = GenlSocket(5.0)
    tracemalloc.start()
    kept = read(plain, previous)  # type: ignore[arg-type]
    plain.close()
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del kept
    wall, bare = statistics.median(walls), statistics.median(bares)
    return {
        "requests": requests,
        "round_s": round(wall, 4),
        "cpu_s": round(statistics.median(cpus), 4),
        "bare_requests_s": round(bare, 4),
        "round_over_bare": round(wall / bare, 2) if bare else None,
        "result_bytes": held,
        "peak_bytes": peak,
    }


def bench_meters(nl: ovsnl.OvsNetlink, counts: list[int], rounds: int) -> dict[int, dict[str, Any]]:
    out = {}
    for count in counts:
        dp_ifindex = nl.new_datapath("bench-m")
        try:
            nl.meter_set_many(dp_ifindex, list(range(count)), rate=1000, burst=100)
            out[count] = measure(lambda sock, prev: read_meters(sock, None, prev), rounds)
            assert [len(d.meters) for d in read_meters(GenlSocket(5.0), None, None).datapaths] == [count]
            out[count]["report_ms"] = report_time(dp_ifindex)
        finally:
            nl.del_datapath("bench-m")
        print(f"meters {count:>6}: {out[count]}", flush=True)
    return out


def report_time(dp_ifindex: int) -> float:
    """What a scrape spends on the meters: ``MeterSource.report`` of one round's result (median of 21)."""
    source = MeterSource(lambda netns: GenlSocket(5.0), interval=3600)
    source.poller.poll()
    dumps = [DatapathDump(Datapath(dp_ifindex, "bench-m", None, None), [], 0)]
    times = []
    for _ in range(21):
        started = time.perf_counter()
        source.report(Format.OPENMETRICS, dumps)
        times.append(time.perf_counter() - started)
    source.close()
    return round(1000 * statistics.median(times), 3)


def bench_zones(nl: ovsnl.OvsNetlink, counts: list[int], rounds: int) -> dict[int, dict[str, Any]]:
    out = {}
    for count in counts:
        limits = {zone: 100 + zone for zone in range(1, count + 1)}
        for start in range(0, count, 300):
            nl.ct_set_limits(dict(list(limits.items())[start : start + 300]))
        try:
            out[count] = measure(lambda sock, prev: read_zone_limits(sock, None, prev), rounds)
            read = read_zone_limits(GenlSocket(5.0), None, None)
            assert len(read.zones) == count, (len(read.zones), count)
            out[count]["chunked"] = read.chunked
        finally:
            zones = list(limits)
            for start in range(0, len(zones), 300):
                nl.ct_del_limits(zones[start : start + 300])
        print(f"zones  {count:>6}: {out[count]}", flush=True)
    return out


def flow_churn(dp_ifindex: int, seconds: float) -> list[float]:
    """Install and delete exact-match flows back to back for ``seconds``: each operation's latency."""
    latencies: list[float] = []
    with ovsnl.OvsNetlink() as nl:
        deadline = time.monotonic() + seconds
        i = 0
        while time.monotonic() < deadline:
            src = struct.pack("!HI", 0x0200, i)
            for op in (nl.flow_new, nl.flow_del):
                started = time.perf_counter()
                op(dp_ifindex, 1, src, b"\x02\x00\x00\x00\x00\x01")
                latencies.append(time.perf_counter() - started)
            i += 1
    return latencies


def bench_mutex(
    nl: ovsnl.OvsNetlink, meters: int, seconds: float, rounds: int, results: Path
) -> dict[str, Any]:
    dp_ifindex = nl.new_datapath("bench-f")
    nl.new_vport(dp_ifindex, "bench-f0", ovsnl.VPORT_INTERNAL)
    nl.meter_set_many(dp_ifindex, list(range(meters)), rate=1000, burst=100)
    args = [
        sys.executable, "-m", "exporter", "--web.listen-address", f"127.0.0.1:{EXPORTER_PORT}",
        "--collector.meters.interval", "1", "--no-collector.conntrack-zones", "--no-collector.events",
    ]  # fmt: skip
    windows: dict[str, list[list[float]]] = {"off": [], "on": []}
    reader_cpu: list[float] = []
    exporter_rss_kb: list[int] = []
    try:
        for _ in range(rounds):
            windows["off"].append(flow_churn(dp_ifindex, seconds))
            with (results / "exporter-bench.log").open("ab") as log:
                proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
            try:
                wait_http(
                    f"http://127.0.0.1:{EXPORTER_PORT}/", proc, "exporter", results / "exporter-bench.log"
                )
                time.sleep(2)  # its first round under way
                before = _cpu_seconds(proc.pid)
                windows["on"].append(flow_churn(dp_ifindex, seconds))
                reader_cpu.append((_cpu_seconds(proc.pid) - before) / seconds)
                exporter_rss_kb.append(_peak_rss_kb(proc.pid))
            finally:
                proc.terminate()
                proc.wait(30)
    finally:
        nl.del_datapath("bench-f")

    def summary(lats: list[list[float]]) -> dict[str, float]:
        ops = [len(w) / seconds for w in lats]
        flat = sorted(x for w in lats for x in w)
        return {
            "ops_per_s": round(statistics.median(ops), 1),
            "median_ms": round(1000 * statistics.median(flat), 3),
            "p99_ms": round(1000 * flat[int(len(flat) * 0.99)], 3),
        }

    off, on = summary(windows["off"]), summary(windows["on"])
    out = {
        "meters": meters,
        "window_s": seconds,
        "rounds": rounds,
        "off": off,
        "on": on,
        "ops_on_over_off": round(on["ops_per_s"] / off["ops_per_s"], 3),
        "median_on_over_off": round(on["median_ms"] / off["median_ms"], 3),
        "p99_on_over_off": round(on["p99_ms"] / off["p99_ms"], 3),
        "reader_cpu_share": round(statistics.median(reader_cpu), 3),
        "exporter_peak_rss_kb": max(exporter_rss_kb),
    }
    print(f"ovs_mutex at {meters} meters: {out}", flush=True)
    return out


def bench_vswitchd(meters: int, seconds: float, rounds: int, results: Path) -> dict[str, Any]:
    from tests.kernel.netns import in_netns
    from tests.kernel.procs import Exporter
    from tests.kernel.vswitchd import DATAPATH, GUESTS, HOST_NS, MGMT_NS_IP, OvsHost, background_misses

    host = OvsHost(results / "vswitchd-bench")
    host.start()
    windows: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
    try:
        with in_netns(HOST_NS):
            nl = ovsnl.OvsNetlink()
        dp_ifindex = nl.snapshot().datapaths[DATAPATH].ifindex
        nl.meter_set_many(dp_ifindex, list(range(meters)), rate=1000, burst=100)
        sender, receiver = GUESTS[0], GUESTS[1]
        args = ("--collector.meters.interval", "1", "--no-collector.conntrack-zones", "--no-collector.events")
        for _ in range(rounds):
            for mode in ("off", "on"):
                exporter = None
                if mode == "on":
                    exporter = Exporter(EXPORTER_PORT, results, "exporter-vswitchd-bench", host=MGMT_NS_IP,
                                        netns=HOST_NS, args=args)  # fmt: skip
                    time.sleep(2)  # its first round under way
                flood = background_misses(sender, receiver, interval=0)
                try:
                    time.sleep(1)
                    first = nl.snapshot().datapaths[DATAPATH]
                    started = time.monotonic()
                    time.sleep(seconds)
                    last = nl.snapshot().datapaths[DATAPATH]
                    elapsed = time.monotonic() - started
                finally:
                    flood.terminate()
                    flood.wait()
                    if exporter is not None:
                        exporter.stop()
                windows[mode].append(
                    ((last.misses - first.misses) / elapsed, (last.lost - first.lost) / elapsed)
                )
                time.sleep(1)
        nl.close()
    finally:
        host.stop()
    off = statistics.median(m for m, _ in windows["off"])
    on = statistics.median(m for m, _ in windows["on"])
    out = {
        "meters": meters,
        "window_s": seconds,
        "rounds": rounds,
        "upcalls_per_s_off": round(off, 1),
        "upcalls_per_s_on": round(on, 1),
        "lost_per_s_off": round(statistics.median(lost for _, lost in windows["off"]), 1),
        "lost_per_s_on": round(statistics.median(lost for _, lost in windows["on"]), 1),
        "upcalls_on_over_off": round(on / off, 3) if off else None,
        "windows": windows,
    }
    print(f"ovs-vswitchd at {meters} meters: {out}", flush=True)
    return out


def _peak_rss_kb(pid: int) -> int:
    """VmHWM: the process's peak resident set so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return -1


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--meters", default="0,100,1000,5000", help="meter counts, comma-separated")
    parser.add_argument("--zones", default="0,100,650,1000", help="limited zone counts, comma-separated")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each reader per count")
    parser.add_argument("--mutex-meters", type=int, default=5000, help="meters while flows are set up")
    parser.add_argument("--mutex-seconds", type=float, default=5.0, help="length of each window")
    parser.add_argument("--mutex-rounds", type=int, default=6, help="windows with the reader off, and on")
    parser.add_argument(
        "--vswitchd-rounds", type=int, default=4, help="ovs-vswitchd windows off and on (0: none)"
    )
    parser.add_argument("--vswitchd-seconds", type=float, default=6.0, help="length of each vswitchd window")
    args = parser.parse_args(argv)
    results = Path(os.environ.get("OVS_VM_RESULTS", "/tmp"))
    with ovsnl.OvsNetlink() as nl:
        nl.family(OVS_METER_FAMILY)
        nl.family(OVS_CT_LIMIT_FAMILY)
        report = {
            "kernel": os.uname().release,
            "meters": bench_meters(nl, [int(n) for n in args.meters.split(",")], args.rounds),
            "zones": bench_zones(nl, [int(n) for n in args.zones.split(",")], args.rounds),
            "ovs_mutex": bench_mutex(nl, args.mutex_meters, args.mutex_seconds, args.mutex_rounds, results),
        }
    if args.vswitchd_rounds:
        report["vswitchd"] = bench_vswitchd(
            args.mutex_meters, args.vswitchd_seconds, args.vswitchd_rounds, results
        )
    report["max_rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    (results / "kernel_readers.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())
