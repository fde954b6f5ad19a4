"""Scrape benchmark: the exporter against the straightforward baseline, as Prometheus scrapes them.

For each size, each implementation runs in a fresh subprocess (so its peak RSS
is its own): it builds the kernel dumps of that many vports up front, replaces
only the kernel socket (``benchmarks.dataset.PrebuiltKernelSocket``) and serves
HTTP on loopback. This process is the Prometheus side: it sends real GETs with
Prometheus's Accept and Accept-Encoding headers, reads the whole gzipped body,
and times each scrape from connect to last byte.

    .venv/bin/python -m benchmarks.scrape            # the full run documented in docs/performance.md
    .venv/bin/python -m benchmarks.scrape --sizes 1000 --soak 0 --no-baseline   # a quick look
    .venv/bin/python -m benchmarks.scrape --sizes 10000 --no-baseline --concurrency-size 0 --soak 0 \
        --ovsdb-size 0 --against HEAD~1   # this change against the last commit, side by side

Reported per size: median scrape time, cost per vport, peak RSS (VmHWM of the
server process, which also holds the pre-built dump bytes: ``dataset MB``) and
the speedup over the baseline. Then, for the exporter: two concurrent scrapes
against two sequential ones, and RSS over a long run of scrapes.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import http.client
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.serving import REPO_ROOT, ServerProcess, ready, start_exporter

if TYPE_CHECKING:
    from exporter.ovsdb.identity import IdentitySource

# Prometheus 2.x/3.x sends exactly this when it scrapes a target (scrape_protocols default order).
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
SCRAPE_HEADERS = {
    "Accept": PROMETHEUS_ACCEPT,
    "Accept-Encoding": "gzip",
    "User-Agent": "Prometheus/3.0.0",
    "X-Prometheus-Scrape-Timeout-Seconds": "10",
}
IMPLEMENTATIONS = ("exporter", "baseline")


# --- server side: runs in the subprocess ---------------------------------------------------------


def serve(implementation: str, vports: int, ovsdb: str | None = None) -> None:
    """Build the dataset, start the server, report the port, and serve until stdin closes.

    With ``ovsdb`` (a remote), the exporter also runs its OVSDB reader on it, as
    ``--collector.ovsdb`` does, and reports once its first complete copy is in: then
    the READY line also carries the reader's memory (RSS growth from its start to
    its copy, in bytes) and how long its first copy and build, and the one after one
    port is added, took (seconds).
    """
    from benchmarks.dataset import PrebuiltKernelSocket, build

    dataset = build(vports)
    extra: list[object] = []
    if implementation == "exporter":
        from exporter.kernel.dumps import KernelSource

        sources = []
        if ovsdb is not None:
            extra = _start_ovsdb(ovsdb, sources)
        port = start_exporter(KernelSource(lambda: PrebuiltKernelSocket(dataset)), sources).port
    else:
        from benchmarks import baseline

        port = baseline.serve(dataset)
    ready(port, dataset.nbytes, *extra)


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise KeyError("VmRSS")


def _start_ovsdb(remote: str, sources: list[IdentitySource]) -> list[object]:
    """Start the OVSDB source, wait for its first copy, add a port: [bytes, first s, change s]."""
    import gc

    from exporter.ovsdb.identity import DEFAULT_EXTERNAL_IDS, IdentitySource

    gc.collect()
    before = _rss_bytes()
    identity = IdentitySource(remote, DEFAULT_EXTERNAL_IDS)
    deadline = time.monotonic() + 300
    while identity.reader.current() is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no copy of OVSDB from {remote}: {identity.reader.state}")
        time.sleep(0.1)
    first = identity.reader.last_build_seconds
    # One port added, as a CNI or Nova would: the rebuild after one change.
    from tests.ovsdb_server import vsctl_path

    rebuilds = identity.reader.rebuilds
    subprocess.run([str(vsctl_path()), f"--db={remote}", "--no-wait", "add-port", "br-int", "tap-bench-new"],
                   check=True, capture_output=True)  # fmt: skip
    while identity.reader.rebuilds == rebuilds:
        if time.monotonic() > deadline:
            raise RuntimeError("the reader did not see the added port")
        time.sleep(0.05)
    gc.collect()
    sources.append(identity)
    return [_rss_bytes() - before, first, identity.reader.last_build_seconds]


# --- client side: the driver ---------------------------------------------------------------------


def get_metrics(
    port: int, path: str = "/metrics", timeout: float = 600
) -> tuple[float, http.client.HTTPResponse, bytes]:
    """One scrape as Prometheus makes it: seconds from connect to the body's last byte, response, body."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=SCRAPE_HEADERS)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    return time.perf_counter() - started, response, body


class Server(ServerProcess):
    """One implementation at one size, in its own process (``root``: the checkout that runs)."""

    def __init__(
        self, implementation: str, vports: int, ovsdb: str | None = None, root: Path = REPO_ROOT
    ) -> None:
        self.implementation = implementation
        self.vports = vports
        super().__init__(
            "benchmarks.scrape",
            [implementation, "--vports", str(vports), *(["--ovsdb", ovsdb] if ovsdb else [])],
            f"{implementation} server for {vports} vports",
            root,
        )
        self.dataset_bytes = int(self.fields[0])
        self.extra = self.fields[1:]  # with --ovsdb: the reader's bytes and build seconds

    def scrape(self, check: bool = False) -> float:
        """One scrape; seconds from connect to the body's last byte."""
        elapsed, response, body = get_metrics(self.port)
        if check:
            self._check(response, body)
        return elapsed

    def _check(self, response: http.client.HTTPResponse, body: bytes) -> None:
        """The body is what Prometheus would accept, and carries every vport once."""
        where = f"{self.implementation} at {self.vports} vports"
        if response.status != 200:
            raise RuntimeError(f"{where}: HTTP {response.status}")
        if response.getheader("Content-Encoding") != "gzip":
            raise RuntimeError(f"{where}: body not gzipped")
        if not (response.getheader("Content-Type") or "").startswith("application/openmetrics-text"):
            raise RuntimeError(f"{where}: not OpenMetrics: {response.getheader('Content-Type')}")
        text = gzip.decompress(body).decode("utf-8")
        info_lines = sum(1 for line in text.splitlines() if line.startswith("ovs_vport_info{"))
        if info_lines != self.vports or not text.endswith("# EOF\n"):
            raise RuntimeError(f"{where}: {info_lines} ovs_vport_info samples, or no final # EOF")
        self.body_bytes = len(text.encode())
        self.gzip_bytes = len(body)


@dataclass
class Result:
    implementation: str
    vports: int
    runs: int
    median_ms: float
    min_ms: float
    max_ms: float
    us_per_vport: float
    peak_rss_mb: float
    idle_rss_mb: float
    dataset_mb: float
    body_mb: float
    gzip_mb: float


def measure(implementation: str, vports: int, budget: float, max_runs: int) -> Result:
    server = Server(implementation, vports)
    try:
        idle = server.memory_mb("VmRSS")
        warmup = server.scrape(check=True)  # also pays for first-use costs; not in the median
        runs = max(3, min(max_runs, math.ceil(budget / max(warmup, 1e-3))))
        runs |= 1  # an odd count: the median is a measured scrape
        times = [server.scrape() for _ in range(runs)]
        peak = server.memory_mb("VmHWM")
    finally:
        server.stop()
    median = statistics.median(times)
    return Result(
        implementation,
        vports,
        runs,
        median * 1e3,
        min(times) * 1e3,
        max(times) * 1e3,
        median / vports * 1e6,
        peak,
        idle,
        server.dataset_bytes / 1e6,
        server.body_bytes / 1e6,
        server.gzip_bytes / 1e6,
    )


@dataclass
class Concurrency:
    vports: int
    rounds: int
    sequential_ms: float  # median wall time of two scrapes one after the other
    concurrent_ms: float  # median wall time of two scrapes started together
    ratio: float  # median over the rounds of concurrent / sequential within the round


def _scrape_after(barrier: threading.Barrier, server: Server) -> None:
    barrier.wait()  # both requests leave together
    server.scrape()


def measure_concurrency(vports: int, rounds: int) -> Concurrency:
    server = Server("exporter", vports)
    try:
        server.scrape(check=True)
        sequential, concurrent = [], []
        for _ in range(rounds):
            started = time.perf_counter()
            server.scrape()
            server.scrape()
            sequential.append(time.perf_counter() - started)

            barrier = threading.Barrier(2)
            threads = [threading.Thread(target=_scrape_after, args=(barrier, server)) for _ in range(2)]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            concurrent.append(time.perf_counter() - started)
    finally:
        server.stop()
    return Concurrency(
        vports,
        rounds,
        statistics.median(sequential) * 1e3,
        statistics.median(concurrent) * 1e3,
        # Each round's own ratio: both halves of a round see the same background load.
        statistics.median(c / s for c, s in zip(concurrent, sequential, strict=True)),
    )


@dataclass
class Soak:
    vports: int
    rss_mb: dict[int, float] = field(default_factory=dict)  # scrapes done -> VmRSS
    peak_rss_mb: float = 0.0
    median_ms: float = 0.0


def measure_soak(vports: int, scrapes: int) -> Soak:
    checkpoints = {n for n in (10, 100, 1000, 10000) if n <= scrapes} | {scrapes}
    server = Server("exporter", vports)
    soak = Soak(vports)
    times = []
    try:
        for n in range(1, scrapes + 1):
            times.append(server.scrape(check=n == 1))
            if n in checkpoints:
                soak.rss_mb[n] = server.memory_mb("VmRSS")
        soak.peak_rss_mb = server.memory_mb("VmHWM")
    finally:
        server.stop()
    soak.median_ms = statistics.median(times) * 1e3
    return soak


def turn_about(first: Server, second: Server, rounds: int) -> tuple[list[float], list[float]]:
    """Scrape both servers each round, ``first`` first in even rounds and second in odd ones, so
    that neither always follows the other and both see the same background load: the times of
    each. Read the median of the rounds' ratios: both halves of a round share its load."""
    times: dict[Server, list[float]] = {first: [], second: []}
    for i in range(rounds):
        for server in (first, second) if i % 2 == 0 else (second, first):
            times[server].append(server.scrape())
    return times[first], times[second]


@dataclass
class OvsdbCost:
    vports: int
    interfaces: int
    rounds: int
    off_ms: float  # median scrape, OVSDB off
    on_ms: float  # median scrape of the same vports with the OVSDB reader on
    ratio: float  # median over the rounds of on / off within the round
    reader_mb: float  # RSS growth of the exporter from before the reader to its first copy
    build_ms: float  # the reader's first copy + join + write of all the interfaces, once per connection
    change_build_ms: float  # the same after one port is added
    idle_rss_off_mb: float
    idle_rss_on_mb: float
    interface_info_samples: int


def measure_ovsdb(vports: int, interfaces: int, rounds: int) -> OvsdbCost:
    """The same scrape with the OVSDB reader off and on, side by side: both servers up, turn about."""
    from benchmarks.ovsdb_load import loaded_server

    with loaded_server(interfaces, vports) as ovsdb:
        off, on = Server("exporter", vports), Server("exporter", vports, ovsdb=ovsdb.remote)
        try:
            off.scrape(check=True)
            on.scrape(check=True)
            text = gzip.decompress(get_metrics(on.port)[2]).decode()
            samples = sum(1 for line in text.splitlines() if line.startswith("ovs_interface_info{"))
            if samples == 0 or 'ovs_scrape_collector_success{collector="ovsdb"} 1' not in text:
                raise RuntimeError("the OVSDB side served no identity")
            times_off, times_on = turn_about(off, on, rounds)
            ratios = [t_on / t_off for t_on, t_off in zip(times_on, times_off, strict=True)]
            idle_off, idle_on = off.memory_mb("VmRSS"), on.memory_mb("VmRSS")
        finally:
            off.stop()
            on.stop()
    return OvsdbCost(
        vports, interfaces, rounds,
        statistics.median(times_off) * 1e3, statistics.median(times_on) * 1e3, statistics.median(ratios),
        int(on.extra[0]) / 1e6, float(on.extra[1]) * 1e3, float(on.extra[2]) * 1e3,
        idle_off, idle_on, samples,
    )  # fmt: skip


@dataclass
class Against:
    revision: str
    vports: int
    rounds: int
    this_ms: float  # median scrape of this checkout's exporter
    other_ms: float  # median scrape of the exporter at ``revision``
    ratio: float  # median over the rounds of this / other within the round
    this_peak_rss_mb: float
    other_peak_rss_mb: float


@contextlib.contextmanager
def checkout(revision: str) -> Iterator[Path]:
    """A detached git worktree of ``revision`` in a temporary directory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="bench-against-") as tmp:
        path = Path(tmp) / "checkout"
        git = ["git", "-C", str(REPO_ROOT), "worktree"]
        subprocess.run([*git, "add", "--detach", "--quiet", str(path), revision], check=True)
        try:
            yield path
        finally:
            subprocess.run([*git, "remove", "--force", str(path)], check=False)


def measure_against(revision: str, vports: int, rounds: int) -> Against:
    """This checkout's exporter and the one at ``revision``, side by side: both servers up, turn about.

    Each round scrapes both, the first alternating, so both see the same background load; the
    figure to read is the median of the rounds' ratios (this / other): 1.00 is no change.
    """
    with checkout(revision) as other_root:
        this, other = Server("exporter", vports), Server("exporter", vports, root=other_root)
        try:
            this.scrape(check=True)
            other.scrape(check=True)
            times_this, times_other = turn_about(this, other, rounds)
            ratios = [t_this / t_other for t_this, t_other in zip(times_this, times_other, strict=True)]
            peaks = this.memory_mb("VmHWM"), other.memory_mb("VmHWM")
        finally:
            this.stop()
            other.stop()
    return Against(
        revision, vports, rounds, statistics.median(times_this) * 1e3, statistics.median(times_other) * 1e3,
        statistics.median(ratios), *peaks,
    )  # fmt: skip


def machine() -> dict[str, str]:
    model = "unknown"
    for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
        if line.startswith("Model name:"):
            model = line.split(":", 1)[1].strip()
    return {
        "cpus": str(os.cpu_count()),
        "nproc": subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip(),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def table(results: list[Result]) -> str:
    by = {(r.implementation, r.vports): r for r in results}
    sizes = sorted({r.vports for r in results})
    head = (
        "| vports | exporter median ms | exporter µs/vport | exporter peak RSS MB "
        "| baseline median ms | baseline µs/vport | baseline peak RSS MB | speedup |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = []
    for n in sizes:
        e, b = by.get(("exporter", n)), by.get(("baseline", n))
        cells = [f"{n:,}"]
        for r in (e, b):
            cells += (
                [f"{r.median_ms:.1f}", f"{r.us_per_vport:.2f}", f"{r.peak_rss_mb:.1f}"]
                if r
                else ["-", "-", "-"]
            )
        cells.append(f"{b.median_ms / e.median_ms:.1f}x" if e and b else "-")
        rows.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(rows)


def details(results: list[Result]) -> str:
    head = (
        "| implementation | vports | runs | median ms | min ms | max ms | idle RSS MB | peak RSS MB "
        "| dataset MB | body MB | gzipped MB |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = [
        f"| {r.implementation} | {r.vports:,} | {r.runs} | {r.median_ms:.1f} | {r.min_ms:.1f} "
        f"| {r.max_ms:.1f} | {r.idle_rss_mb:.1f} | {r.peak_rss_mb:.1f} | {r.dataset_mb:.2f} "
        f"| {r.body_mb:.2f} | {r.gzip_mb:.2f} |"
        for r in results
    ]
    return head + "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scrape", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="100,1000,10000,50000", help="comma-separated vport counts")
    p.add_argument("--budget", type=float, default=10.0, help="seconds of timed scrapes per size (about)")
    p.add_argument("--max-runs", type=int, default=31, help="at most this many timed scrapes per size")
    p.add_argument("--no-baseline", action="store_true", help="measure the exporter only")
    p.add_argument("--concurrency-size", type=int, default=10000, help="0 to skip")
    p.add_argument("--concurrency-rounds", type=int, default=15)
    p.add_argument("--soak", type=int, default=1000, help="scrapes in the RSS run (0 to skip)")
    p.add_argument("--soak-size", type=int, default=10000)
    p.add_argument("--ovsdb-size", type=int, default=10000, help="vports and OVSDB interfaces (0 to skip)")
    p.add_argument("--ovsdb-rounds", type=int, default=31)
    p.add_argument("--against", metavar="REV", help="also scrape the exporter at this revision side by side")
    p.add_argument("--against-size", type=int, default=10000)
    p.add_argument("--against-rounds", type=int, default=41)
    p.add_argument("--json", type=Path, help="also write every figure to this file")
    p.add_argument("--ovsdb", help=argparse.SUPPRESS)
    p.add_argument("--serve", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    p.add_argument("--vports", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.serve, args.vports, args.ovsdb)
        return 0

    info = machine()
    print(f"# machine: {info['nproc']} CPUs ({info['cpu_model']}), Python {info['python']}, "
          f"kernel {info['kernel']}", flush=True)  # fmt: skip
    sizes = [int(s) for s in args.sizes.split(",") if s]
    implementations = ["exporter"] if args.no_baseline else list(IMPLEMENTATIONS)
    results = []
    for n in sizes:
        for implementation in implementations:
            r = measure(implementation, n, args.budget, args.max_runs)
            print(
                f"# {implementation:8} {n:>6} vports: median {r.median_ms:9.1f} ms over {r.runs} runs,"
                f" {r.us_per_vport:7.2f} µs/vport, peak RSS {r.peak_rss_mb:6.1f} MB",
                flush=True,
            )
            results.append(r)
    report: dict[str, object] = {"machine": info, "results": [asdict(r) for r in results]}
    print()
    print(table(results))
    print()
    print(details(results))

    if args.concurrency_size:
        c = measure_concurrency(args.concurrency_size, args.concurrency_rounds)
        report["concurrency"] = asdict(c)
        print(
            f"\nconcurrency, exporter at {c.vports:,} vports, median of {c.rounds} rounds:"
            f" two sequential scrapes {c.sequential_ms:.1f} ms, two concurrent scrapes"
            f" {c.concurrent_ms:.1f} ms; concurrent/sequential, median of the rounds' ratios: {c.ratio:.2f}"
        )
    if args.soak:
        s = measure_soak(args.soak_size, args.soak)
        report["soak"] = asdict(s)
        after = ", ".join(f"{n} scrapes {mb:.1f} MB" for n, mb in sorted(s.rss_mb.items()))
        print(f"\nRSS of the exporter at {s.vports:,} vports after {after}; peak {s.peak_rss_mb:.1f} MB; "
              f"median scrape over the run {s.median_ms:.1f} ms")  # fmt: skip
    if args.ovsdb_size:
        o = measure_ovsdb(args.ovsdb_size, args.ovsdb_size, args.ovsdb_rounds)
        report["ovsdb"] = asdict(o)
        print(f"\nOVSDB reader, {o.vports:,} vports and {o.interfaces:,} OVSDB interfaces"
              f" ({o.interface_info_samples:,} ovs_interface_info samples), {o.rounds} rounds side by side:"
              f" median scrape {o.off_ms:.1f} ms off, {o.on_ms:.1f} ms on; on/off, median of the rounds'"
              f" ratios: {o.ratio:.3f}. Reader memory {o.reader_mb:.1f} MB (idle RSS"
              f" {o.idle_rss_off_mb:.1f} MB off, {o.idle_rss_on_mb:.1f} MB on);"
              f" first copy and build {o.build_ms:.0f} ms, again after one port added"
              f" {o.change_build_ms:.0f} ms")  # fmt: skip
    if args.against:
        a = measure_against(args.against, args.against_size, args.against_rounds)
        report["against"] = asdict(a)
        print(f"\nside by side with {a.revision} at {a.vports:,} vports, {a.rounds} rounds: median scrape"
              f" {a.this_ms:.1f} ms here, {a.other_ms:.1f} ms there; here/there, median of the rounds'"
              f" ratios: {a.ratio:.3f}; peak RSS {a.this_peak_rss_mb:.1f} MB here,"
              f" {a.other_peak_rss_mb:.1f} MB there")  # fmt: skip
    # Other work on the machine skews every figure: the load average says how quiet it was.
    info["loadavg_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nload average at start {info['loadavg_at_start']}, at end {info['loadavg_at_end']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
