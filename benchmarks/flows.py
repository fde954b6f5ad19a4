"""The flow collector's cost at scrape time: a scrape while a 200,000-flow dump runs, against none.

Exporter servers over the same pre-built vport dumps (``benchmarks.dataset``, 10,000 vports by
default), each in its own process, in two phases; in each, a server without the flow collector
and one with it are scraped in turn, round after round, so both see the same background load:

- ``none``: no flow collector (the baseline);
- ``thread``: the flow dump and its aggregation (the worker's own code,
  ``exporter.kernel.flow_worker.NamespaceFlows``) run back to back in a thread of the serving
  process, feeding its ``FlowSource``: the design a worker process replaces, measured to say why;
- ``process``: the exporter's design: ``FlowSource`` runs its worker process (here
  ``python -m benchmarks.flows --worker``: the real ``Worker``, with a socket replaying a
  pre-built flow table in place of the kernel's), dumping back to back (interval 0).

The flow table (``--flows``, 200,000 by default) is built by ``tests.flow_messages`` in the
kernel's layout, with UFIDs, a twentieth of drop flows, some recirculated and some from a tunnel.
The driver reports each server's median scrape, the median over its phase's rounds of each mode
against ``none``, and how many dumps completed meanwhile (so that a dump was always running).

    .venv/bin/python -m benchmarks.flows                       # what make bench runs
    .venv/bin/python -m benchmarks.flows --vports 1000 --flows 20000 --rounds 9
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gzip
import json
import os
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.dataset import PrebuiltKernelSocket, _split_at_seqs, build
from benchmarks.scrape import get_metrics, machine
from benchmarks.serving import REPO_ROOT, ServerProcess, ready, start_exporter

MODES = ("none", "thread", "process")
BIG_DATAPATH = 4  # the dataset's ovs-system: most of the vports, and the whole flow table


class FlowKernel(PrebuiltKernelSocket):
    """A kernel socket replaying the vport dataset and a pre-built flow table of ``ovs-system``."""

    def __init__(self, vports: int, flows: int) -> None:
        from tests.flow_messages import flow_dump, typical_flows

        super().__init__(build(vports))
        ports = max(2, min(2000, round(vports * 0.85) - 1))
        table = typical_flows(flows, ports)
        self._flows = [_split_at_seqs(datagram) for datagram in flow_dump(0, BIG_DATAPATH, table)]
        self._empty = [_split_at_seqs(flow_dump(0, 0, [])[0])]

    def family_id(self, name: str) -> int:
        from tests.flow_messages import FLOW_FAMILY_ID

        return FLOW_FAMILY_ID if name == "ovs_flow" else super().family_id(name)

    def socket(self) -> FlowKernel:
        """A socket of its own over the same data (the worker opens one per dump kind)."""
        other = copy.copy(self)
        other._pending = iter(())
        return other

    def send(self, data: bytes) -> None:
        from tests.flow_messages import FLOW_FAMILY_ID

        _length, family, _flags, seq, _pid = struct.unpack_from("=IHHII", data)
        if family != FLOW_FAMILY_ID:
            super().send(data)
            return
        dp_ifindex = struct.unpack_from("=i", data, 20)[0]
        template = self._flows if dp_ifindex == BIG_DATAPATH else self._empty
        seq_bytes = struct.pack("=I", seq)
        self._pending = (seq_bytes.join(pieces) for pieces in template)


def worker(vports: int, flows: int) -> None:
    """The real worker loop (``flow_worker.serve``: its priority too) over a replayed table, back to
    back, until stdin closes."""
    from exporter.kernel.flow_worker import Worker, WorkerConfig
    from exporter.kernel.flow_worker import serve as serve_worker

    kernel = FlowKernel(vports, flows)
    config = WorkerConfig(interval=0, max_flows=10 * flows, max_seconds=600, netlink_timeout=5)
    serve_worker(Worker(config, lambda _netns: kernel.socket()))


def serve(mode: str, vports: int, flows: int) -> None:
    """One exporter server over the vport dataset, with the flow collector as ``mode`` says."""
    from exporter.kernel.dumps import KernelSource
    from exporter.kernel.flow_worker import NamespaceFlows, WorkerConfig, memory
    from exporter.kernel.flows import FlowSource

    dataset = build(vports)
    config = WorkerConfig(interval=0, max_flows=10 * flows, max_seconds=600, netlink_timeout=5)
    sources = []
    if mode == "thread":
        kernel = FlowKernel(vports, flows)
        flow_source = FlowSource(config)
        namespace = NamespaceFlows(None, kernel.socket, config)

        def dump_forever() -> None:
            while True:
                flow_source.apply({**namespace.round(), **memory()})

        threading.Thread(target=dump_forever, name="flows-in-a-thread", daemon=True).start()
        sources.append(flow_source)
    elif mode == "process":

        def spawn(_config: WorkerConfig) -> subprocess.Popen[str]:
            command = [sys.executable, "-m", "benchmarks.flows", "--worker", "--vports", str(vports)]
            return subprocess.Popen(
                [*command, "--flows", str(flows)],
                cwd=REPO_ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )

        flow_source = FlowSource(config, spawn=spawn)
        flow_source.start()
        sources.append(flow_source)
    server = start_exporter(KernelSource(lambda: PrebuiltKernelSocket(dataset)), sources)
    ready(server.port)


class Server(ServerProcess):
    def __init__(self, mode: str, vports: int, flows: int) -> None:
        self.mode = mode
        serve_args = [mode, "--vports", str(vports), "--flows", str(flows)]
        super().__init__("benchmarks.flows", serve_args, f"server {mode}")

    def scrape(self) -> tuple[float, str]:
        elapsed, response, body = get_metrics(self.port)
        if response.status != 200:
            raise RuntimeError(f"{self.mode}: HTTP {response.status}")
        return elapsed, gzip.decompress(body).decode()


def _sample(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


@dataclass
class FlowsCost:
    vports: int
    flows: int
    rounds: int
    median_ms: dict[str, float]  # "thread", "process" and the "none" of each phase -> median scrape
    ratio: dict[str, float]  # mode -> median over its phase's rounds of mode / none
    # The process server's scrape with its worker dumping against the same server's scrape with
    # the worker frozen (no dump under way): the dump's own effect on a scrape.
    ratio_dump_under_way: float
    dumps_during: dict[str, int]  # mode -> complete dumps between its phase's first and last scrape
    dump_seconds: dict[str, float]  # mode -> the last complete dump's duration, as served
    flows_served: dict[str, int]  # mode -> sum of ovs_vport_flows in the last scrape
    server_peak_rss_mb: dict[str, float]
    worker_peak_rss_mb: float | None


@dataclass
class Phase:
    """One flow collector mode scraped in turn with a server without it, round after round."""

    mode: str
    times: dict[str, list[float]]
    dumps: int
    last: str
    peak_rss_mb: dict[str, float]


def _child(pid: int) -> int:
    """The one child process of ``pid`` (the process server's flow dump worker)."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread (a scrape's) that ended meanwhile
            children += (task / "children").read_text().split()
    (child,) = children
    return int(child)


def measure_phase(mode: str, vports: int, flows: int, rounds: int) -> Phase:
    """``none`` and ``mode`` side by side, and nothing else: a dump thread at full priority in the
    third server would load the machine for the other two."""
    servers = {name: Server(name, vports, flows) for name in ("none", mode)}
    try:
        # Wait until the collector has completed a dump: then one is always under way (interval 0).
        deadline = time.monotonic() + 900
        while _sample(servers[mode].scrape()[1], "ovs_datapath_flow_dump_timestamp_seconds") is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{mode}: no complete flow dump in 15 minutes")
            time.sleep(1)
        times: dict[str, list[float]] = {name: [] for name in servers}
        ends: set[float] = set()
        text = ""
        # The worker process, frozen for a scrape of the same server with no dump under way.
        worker = _child(servers[mode].proc.pid) if mode == "process" else None
        if worker is not None:
            times["process, no dump under way"] = []
        for _ in range(rounds):
            for name, server in servers.items():
                elapsed, body = server.scrape()
                times[name].append(elapsed)
                if name == mode:
                    text = body
                    ends.add(_sample(body, "ovs_datapath_flow_dump_timestamp_seconds") or 0.0)
            if worker is not None:
                os.kill(worker, signal.SIGSTOP)
                try:
                    times["process, no dump under way"].append(servers[mode].scrape()[0])
                finally:
                    os.kill(worker, signal.SIGCONT)
                time.sleep(0.2)  # under way again before the next round's scrape
        peaks = {name: server.memory_mb("VmHWM") for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
    return Phase(mode, times, len(ends) - 1, text, peaks)


def measure(vports: int, flows: int, rounds: int) -> FlowsCost:
    phases = [measure_phase(mode, vports, flows, rounds) for mode in ("thread", "process")]

    def flows_served(text: str) -> int:
        return int(
            sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("ovs_vport_flows{")
            )
        )

    median_ms: dict[str, float] = {}
    for phase in phases:
        median_ms[phase.mode] = statistics.median(phase.times[phase.mode]) * 1e3
        median_ms[f"none ({phase.mode} phase)"] = statistics.median(phase.times["none"]) * 1e3
    median_ms["process, no dump under way"] = (
        statistics.median(phases[1].times["process, no dump under way"]) * 1e3
    )
    worker_peak = _sample(phases[1].last, "ovs_flow_worker_peak_resident_memory_bytes")
    return FlowsCost(
        vports,
        flows,
        rounds,
        median_ms,
        {
            p.mode: statistics.median(t / n for t, n in zip(p.times[p.mode], p.times["none"], strict=True))
            for p in phases
        },
        statistics.median(
            t / n
            for t, n in zip(
                phases[1].times["process"], phases[1].times["process, no dump under way"], strict=True
            )
        ),
        {p.mode: p.dumps for p in phases},
        {p.mode: _sample(p.last, "ovs_datapath_flow_dump_duration_seconds") or 0.0 for p in phases},
        {p.mode: flows_served(p.last) for p in phases},
        {
            **{p.mode: p.peak_rss_mb[p.mode] for p in phases},
            "none": max(p.peak_rss_mb["none"] for p in phases),
        },
        None if worker_peak is None else worker_peak / 1e6,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.flows", description=__doc__.splitlines()[0])
    p.add_argument("--vports", type=int, default=10000)
    p.add_argument("--flows", type=int, default=200000)
    p.add_argument("--rounds", type=int, default=31, help="scrapes of each server (odd: the median is one)")
    p.add_argument("--json", type=Path)
    p.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.vports, args.flows)
        return 0
    if args.serve:
        serve(args.serve, args.vports, args.flows)
        return 0

    info = machine()
    cost = measure(args.vports, args.flows, args.rounds)
    m, r = cost.median_ms, cost.ratio
    d, rss = cost.dump_seconds, cost.server_peak_rss_mb
    print(
        f"flow collector at {cost.vports:,} vports and {cost.flows:,} flows, {cost.rounds} rounds per phase"
        f" ({info['nproc']} CPUs, load at start {info['loadavg_at_start']}): with the dump in a thread of"
        f" the exporter, median scrape {m['thread']:.1f} ms against {m['none (thread phase)']:.1f} ms without"
        f" (median of the rounds' ratios {r['thread']:.3f}); with it in the worker process,"
        f" {m['process']:.1f} ms against {m['none (process phase)']:.1f} ms (ratio {r['process']:.3f}), and"
        f" against {m['process, no dump under way']:.1f} ms with the worker frozen, no dump under way"
        f" (ratio {cost.ratio_dump_under_way:.3f})."
        f" Dumps completed during the scrapes: thread {cost.dumps_during['thread']}, process"
        f" {cost.dumps_during['process']}; last dump {d['thread']:.2f} s (thread), {d['process']:.2f} s"
        f" (process); flows served {cost.flows_served['thread']:,} and {cost.flows_served['process']:,};"
        f" peak RSS of the servers: without {rss['none']:.1f} MB, thread {rss['thread']:.1f} MB, process"
        f" {rss['process']:.1f} MB (+ worker {cost.worker_peak_rss_mb or 0:.1f} MB, which holds the replayed"
        f" table too); load at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "flows": asdict(cost)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
