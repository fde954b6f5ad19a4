"""Where a scrape's time goes: each stage of the exporter's path timed alone, in one process.

    .venv/bin/python -m benchmarks.stages [--sizes 1000,10000,50000]

Stages, on the same pre-built kernel dumps as ``benchmarks.scrape``:
``collect`` (the kernel socket's bytes decoded into records by a ``KernelSource`` kept between
scrapes, as the exporter keeps one: its decoder reuses what it decoded of messages whose bytes,
counters aside, did not change), ``collect cold`` (the same by a fresh source: the first
scrape, or one after every port changed),
``render`` (the exposition of those records by a ``DatapathRenderer`` kept between
scrapes, as the collector keeps one: the fixed text of the ports is reused), ``render
cold`` (the same from scratch, ``render_datapaths``: what the scrape after a change of
every port costs), ``body`` (a whole ``Collector.scrape_chunks`` with the exporter's own
families, as bytes), ``body, gc not paused`` (the same with Python's cyclic collector left to
run during the scrape, as it did before the collector paused it), ``gzip``
(``web.gzip_compress`` of that body, once it is whole: deflating alone) and ``body + gzip``
(the scrape as the server makes it, written into a ``web.GzipStream`` that deflates the text
as it comes). Each figure is the fastest of several
runs, per vport: the least disturbed by other work on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable

from benchmarks.dataset import PrebuiltKernelSocket, build
from exporter import collector as collector_module
from exporter.collector import Collector
from exporter.config import Filters
from exporter.exposition import Format
from exporter.http.server import GzipStream, gzip_compress
from exporter.kernel.dump_metrics import DatapathRenderer, render_datapaths
from exporter.kernel.dumps import DatapathDump, KernelSource


def fastest(fn: Callable[[], object], runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def _fastest_render(dumps: list[DatapathDump], runs: int) -> tuple[float, float]:
    renderer = DatapathRenderer()
    warm = fastest(lambda: renderer.render(dumps, Format.OPENMETRICS), runs)
    return warm, fastest(lambda: render_datapaths(dumps, Format.OPENMETRICS), runs)


def _fastest_unpaused(collector: Collector, runs: int) -> float:
    """``collector.scrape_chunks`` with the cyclic collector running during the scrape."""
    paused = collector_module._cyclic_gc_paused
    collector_module._cyclic_gc_paused = contextlib.nullcontext  # type: ignore[assignment]
    try:
        return fastest(lambda: collector.scrape_chunks(Format.OPENMETRICS), runs)
    finally:
        collector_module._cyclic_gc_paused = paused


def _fastest_gzip(chunks: list[bytes], runs: int) -> float:
    return fastest(lambda: gzip_compress(chunks), runs)


def measure(vports: int) -> list[float]:
    """Seconds of each stage at this size: collect, collect cold, render, render cold, body, body
    with collections not paused, gzip, body + gzip."""
    dataset = build(vports)
    source = KernelSource(lambda: PrebuiltKernelSocket(dataset))
    collector = Collector(source, Filters(), "stages")
    runs = max(7, 200_000 // vports)
    # Each stage is timed with only what a server would hold at that point alive.
    collect = fastest(source.collect, runs)
    cold_collect = fastest(lambda: KernelSource(lambda: PrebuiltKernelSocket(dataset)).collect(), runs)
    body = fastest(lambda: collector.scrape_chunks(Format.OPENMETRICS), runs)
    unpaused = _fastest_unpaused(collector, runs)
    render, cold = _fastest_render(source.collect(), runs)
    deflate = _fastest_gzip(collector.scrape_chunks(Format.OPENMETRICS), runs)

    def served() -> bytes:
        stream = GzipStream()
        collector.scrape_into(Format.OPENMETRICS, stream.write)
        return stream.finish()

    streamed = fastest(served, runs)
    return [collect, cold_collect, render, cold, body, unpaused, deflate, streamed]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stages", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,10000,50000")
    args = p.parse_args(argv)
    print(f"# load average at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    columns = ("collect", "collect cold", "render", "render cold", "body", "body, gc not paused", "gzip",
               "body + gzip")  # fmt: skip
    print("| vports | " + " | ".join(f"{c} µs/vport" for c in columns) + " |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for vports in (int(s) for s in args.sizes.split(",")):
        figures = measure(vports)
        print(f"| {vports:,} | " + " | ".join(f"{f / vports * 1e6:.2f}" for f in figures) + " |", flush=True)
    print(f"# load average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
