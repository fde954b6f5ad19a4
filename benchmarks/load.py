"""Load benchmark: scrapes as Prometheus makes them while other clients stall or scrape too.

    .venv/bin/python -m benchmarks.load --json benchmarks/results/load.json

For each implementation (the exporter, and the baseline of ``benchmarks.baseline``:
prometheus_client's own server) and each load, a fresh server process at ``--vports``
(10,000) vports, as in ``benchmarks.scrape`` (only the kernel socket is replaced). Then:

- its *single-scrape peak*: VmHWM after one plain-text and two Prometheus-style scrapes;
- **stalled readers** (0, 50, 200): clients that ask for the plain-text body without gzip
  (a client chooses its own headers), take 64 bytes and never read again, arriving
  evenly over ``--arrival`` seconds; meanwhile and after, ``--runs`` Prometheus-style
  scrapes (OpenMetrics, gzip) one after the other, each timed from connect to last byte;
- **concurrent scrapers** (2, 8): that many clients scraping Prometheus-style in a loop,
  ``--rounds`` scrapes each, every scrape timed;
- **idle connections** (1,000): opened and left silent, then ``--runs`` Prometheus-style
  scrapes; also reported, the server's threads at the end.

Reported: median and p99 (nearest rank) of the timed scrapes, how many got 200 with every
vport, and the server's peak RSS, also as a ratio to its single-scrape peak. A scenario
gives up after ``--budget`` seconds (a scrape after ``--scrape-timeout``): the baseline
renders every stalled reader's body in a thread of its own, and its scrapes can wait
minutes behind them; that is reported, not waited for.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import http.client
import json
import math
import os
import resource
import selectors
import socket
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.scrape import IMPLEMENTATIONS, Server, get_metrics, machine

STALLED = (0, 50, 200)
CONCURRENT = (2, 8)
IDLE = (1000,)


@dataclass
class LoadResult:
    implementation: str
    vports: int
    load: str  # "N stalled" or "N concurrent"
    scrapes: int  # timed scrapes attempted
    whole: int  # of which 200 with every vport
    median_ms: float | None
    p99_ms: float | None
    single_peak_mb: float
    peak_rss_mb: float
    gave_up: bool  # the budget ran out before every scrape was made
    threads: int | None = None  # the server's threads at the end (idle loads)


def timed_scrape(port: int, vports: int, timeout: float) -> tuple[float, bool]:
    """Seconds from connect to last byte, and whether it was a 200 with every vport."""
    started = time.perf_counter()
    try:
        elapsed, response, body = get_metrics(port, timeout=timeout)
        if response.status != 200:
            return elapsed, False
        if response.getheader("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        return elapsed, body.count(b"\novs_vport_info{") == vports
    except (OSError, http.client.HTTPException):
        return time.perf_counter() - started, False


def scrapes_in_turn(
    port: int, vports: int, args: argparse.Namespace, started: float
) -> tuple[list[float], int]:
    """``--runs`` timed scrapes one after the other, until ``--budget`` seconds after ``started``
    (``time.monotonic``): their times, and how many were a 200 with every vport."""
    times: list[float] = []
    whole = 0
    for _ in range(args.runs):
        if time.monotonic() - started > args.budget:
            break
        elapsed, ok = timed_scrape(port, vports, args.scrape_timeout)
        times.append(elapsed)
        whole += ok
    return times, whole


def stalled_reader(port: int) -> socket.socket | None:
    """Connects and asks for the text body; ``take_a_little`` later reads 64 bytes of it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        sock.settimeout(30)
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: exporter\r\n\r\n")
        return sock
    except OSError:
        sock.close()
        return None


class Taker:
    """One thread that reads the first 64 bytes of each stalled reader's response, then no more.

    Apart from the arrivals, so that they keep their pace whatever the server's answer time.
    """

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def add(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        with self._lock:
            self._selector.register(sock, selectors.EVENT_READ)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                ready = self._selector.select(timeout=0) if self._selector.get_map() else []
            for key, _ in ready:
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                with contextlib.suppress(OSError):
                    sock.recv(64)
                with self._lock:
                    self._selector.unregister(sock)
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def p99(times: list[float]) -> float:
    ordered = sorted(times)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def single_scrape_peak(server: Server) -> float:
    server.scrape(check=True)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
    conn.request("GET", "/metrics")  # the plain text, as the stalled readers ask for it
    conn.getresponse().read()
    conn.close()
    server.scrape()
    return server.memory_mb("VmHWM")


def run_stalled(implementation: str, vports: int, stalled: int, args: argparse.Namespace) -> LoadResult:
    server = Server(implementation, vports)
    taker = Taker()
    readers: list[socket.socket] = []
    try:
        single = single_scrape_peak(server)
        started = time.monotonic()

        def arrive() -> None:
            for _ in range(stalled):
                sock = stalled_reader(server.port)
                if sock is not None:
                    readers.append(sock)
                    taker.add(sock)
                time.sleep(args.arrival / stalled)

        arrivals = threading.Thread(target=arrive, daemon=True)
        arrivals.start()
        times, whole = scrapes_in_turn(server.port, vports, args, started)
        arrivals.join(max(0.0, args.budget - (time.monotonic() - started)))
        peak = server.memory_mb("VmHWM")
    finally:
        taker.stop()
        for sock in readers:
            sock.close()
        server.kill()  # the baseline may still be rendering for its stalled readers
    return _result(implementation, vports, f"{stalled} stalled", args.runs, times, whole, single, peak)


def run_idle(implementation: str, vports: int, idle: int, args: argparse.Namespace) -> LoadResult:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, idle + 1024)), hard))
    server = Server(implementation, vports)
    conns: list[socket.socket] = []
    try:
        single = single_scrape_peak(server)
        started = time.monotonic()
        for _ in range(idle):
            with contextlib.suppress(OSError):
                conns.append(socket.create_connection(("127.0.0.1", server.port), timeout=30))
        times, whole = scrapes_in_turn(server.port, vports, args, started)
        peak = server.memory_mb("VmHWM")
        threads = server.status("Threads")
    finally:
        for sock in conns:
            sock.close()
        server.kill()
    result = _result(implementation, vports, f"{idle} idle", args.runs, times, whole, single, peak)
    result.threads = threads
    return result


def run_concurrent(implementation: str, vports: int, clients: int, args: argparse.Namespace) -> LoadResult:
    server = Server(implementation, vports)
    times: list[float] = []
    outcomes: list[bool] = []
    lock = threading.Lock()
    try:
        single = single_scrape_peak(server)
        started = time.monotonic()

        def client() -> None:
            for _ in range(args.rounds):
                if time.monotonic() - started > args.budget:
                    return
                elapsed, ok = timed_scrape(server.port, vports, args.scrape_timeout)
                with lock:
                    times.append(elapsed)
                    outcomes.append(ok)

        threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(args.budget + args.scrape_timeout)
        peak = server.memory_mb("VmHWM")
    finally:
        server.kill()
    return _result(
        implementation,
        vports,
        f"{clients} concurrent",
        clients * args.rounds,
        times,
        sum(outcomes),
        single,
        peak,
    )


def _result(
    implementation: str,
    vports: int,
    load: str,
    planned: int,
    times: list[float],
    whole: int,
    single: float,
    peak: float,
) -> LoadResult:
    return LoadResult(
        implementation,
        vports,
        load,
        len(times),
        whole,
        statistics.median(times) * 1e3 if times else None,
        p99(times) * 1e3 if times else None,
        single,
        peak,
        len(times) < planned,
    )


def table(results: list[LoadResult]) -> str:
    by = {(r.implementation, r.load): r for r in results}
    loads = list(dict.fromkeys(r.load for r in results))
    head = (
        "| load | exporter median ms | exporter p99 ms | exporter whole/scrapes "
        "| exporter peak RSS MB (x single) | baseline median ms | baseline p99 ms "
        "| baseline whole/scrapes | baseline peak RSS MB (x single) |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = []
    for load in loads:
        cells = [load]
        for implementation in IMPLEMENTATIONS:
            r = by.get((implementation, load))
            if r is None:
                cells += ["-"] * 4
                continue
            ms = lambda v: "-" if v is None else f"{v:,.1f}"  # noqa: E731
            gave_up = " (gave up)" if r.gave_up else ""
            if r.threads is not None:
                gave_up += f", {r.threads} threads"
            cells += [
                ms(r.median_ms),
                ms(r.p99_ms),
                f"{r.whole}/{r.scrapes}{gave_up}",
                f"{r.peak_rss_mb:.1f} ({r.peak_rss_mb / r.single_peak_mb:.2f}x)",
            ]
        rows.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(rows)


def inflate_cost(vports: int) -> str:
    """What a client that does not take gzip costs: inflating one body as the server sends it."""
    from benchmarks.dataset import PrebuiltKernelSocket, build
    from exporter.collector import Collector
    from exporter.config import Filters
    from exporter.exposition import Format
    from exporter.http.server import _inflated, gzip_compress
    from exporter.kernel.dumps import KernelSource

    dataset = build(vports)
    collector = Collector(KernelSource(lambda: PrebuiltKernelSocket(dataset)), Filters(), "bench")
    encoded = collector.scrape_chunks(Format.TEXT)  # bytes already
    gzipped, size = gzip_compress(encoded), sum(map(len, encoded))
    best = math.inf
    for _ in range(5):
        started = time.perf_counter()
        inflated = sum(len(piece) for piece in _inflated(gzipped))
        best = min(best, time.perf_counter() - started)
    assert inflated == size
    return (
        f"inflating the text body of {vports:,} vports ({size / 1e6:.2f} MB, "
        f"{len(gzipped) / 1e6:.2f} MB gzipped): {best * 1e3:.1f} ms, fastest of 5, "
        f"{best * 1e3 / (size / 1e6):.2f} ms/MB"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.splitlines()[0])
    p.add_argument("--vports", type=int, default=10000)
    p.add_argument("--stalled", default=",".join(map(str, STALLED)), help="stalled reader counts")
    p.add_argument("--concurrent", default=",".join(map(str, CONCURRENT)), help="concurrent scraper counts")
    p.add_argument("--idle", default=",".join(map(str, IDLE)), help="idle connection counts")
    p.add_argument("--runs", type=int, default=21, help="timed scrapes per stalled-reader load")
    p.add_argument("--rounds", type=int, default=5, help="scrapes per concurrent scraper")
    p.add_argument("--arrival", type=float, default=5.0, help="seconds over which stalled readers arrive")
    p.add_argument("--budget", type=float, default=90.0, help="seconds a scenario may take at most")
    p.add_argument("--scrape-timeout", type=float, default=30.0)
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--json", type=Path)
    p.add_argument("--inflate-only", action="store_true", help="only time inflating one text body")
    args = p.parse_args(argv)
    if args.inflate_only:
        print(inflate_cost(args.vports))
        return 0

    info = machine()
    print(f"# machine: {info['nproc']} CPUs ({info['cpu_model']}), Python {info['python']}, "
          f"kernel {info['kernel']}", flush=True)  # fmt: skip
    implementations = ["exporter"] if args.no_baseline else list(IMPLEMENTATIONS)
    results = []
    scenarios = [
        (run, int(n))
        for run, counts in (
            (run_stalled, args.stalled),
            (run_concurrent, args.concurrent),
            (run_idle, args.idle),
        )
        for n in counts.split(",")
        if n
    ]
    for run, n in scenarios:
        for implementation in implementations:
            r = run(implementation, args.vports, n, args)
            print(f"# {implementation:8} {r.load:>13}: {r.whole}/{r.scrapes} whole, median {r.median_ms} ms, "
                  f"p99 {r.p99_ms} ms, peak RSS {r.peak_rss_mb:.1f} MB "
                  f"({r.peak_rss_mb / r.single_peak_mb:.2f}x single){' gave up' if r.gave_up else ''}",
                  flush=True)  # fmt: skip
            results.append(r)
    print()
    print(table(results))
    print()
    print(inflate_cost(args.vports))
    info["loadavg_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nload average at start {info['loadavg_at_start']}, at end {info['loadavg_at_end']}")
    if args.json:
        args.json.write_text(
            json.dumps({"machine": info, "results": [asdict(r) for r in results]}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
