"""Where the exporter's memory goes: what it holds between scrapes, and a scrape's peak.

    .venv/bin/python -m benchmarks.memory [--vports 10000] [--top 12]

On the same pre-built kernel dumps as ``benchmarks.scrape``, one ``Collector`` makes three
scrapes (both formats) with ``tracemalloc`` on from before it was made, each written into a
``GzipStream`` as the HTTP server writes it. Reported: the memory its objects hold after the
scrapes (the decode and render caches, between two scrapes), the highest it reached during
them (with a scrape's records, the text being deflated and the gzipped body), and the
lines of the exporter that allocated most of what is held. Python objects only: the
process's RSS (``benchmarks.scrape``) adds the interpreter, the modules and what the
allocator keeps.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tracemalloc

from benchmarks.dataset import PrebuiltKernelSocket, build
from exporter.collector import Collector
from exporter.config import Filters
from exporter.exposition import Format
from exporter.http.server import GzipStream
from exporter.kernel.dumps import KernelSource


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.splitlines()[0])
    p.add_argument("--vports", type=int, default=10_000)
    p.add_argument("--top", type=int, default=12, help="allocation sites to list")
    args = p.parse_args(argv)
    dataset = build(args.vports)
    gc.collect()
    tracemalloc.start()
    collector = Collector(KernelSource(lambda: PrebuiltKernelSocket(dataset)), Filters(), "memory")
    body = 0
    for fmt in (Format.OPENMETRICS, Format.TEXT, Format.OPENMETRICS):
        stream = GzipStream()
        collector.scrape_into(fmt, stream.write)
        stream.finish()
        body = stream.size
    gc.collect()
    held, peak = tracemalloc.get_traced_memory()
    sites = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, "*/exporter/*")])
    tracemalloc.stop()
    print(f"{args.vports:,} vports, body {body / 1e6:.2f} MB: held between scrapes {held / 1e6:.1f} MB, "
          f"peak during them {peak / 1e6:.1f} MB (Python objects, tracemalloc)")  # fmt: skip
    print("| allocated at | MB held | objects |\n|---|---:|---:|")
    for stat in sites.statistics("lineno")[: args.top]:
        frame = stat.traceback[0]
        where = f"{frame.filename.rsplit('/exporter/', 1)[-1]}:{frame.lineno}"
        print(f"| exporter/{where} | {stat.size / 1e6:.2f} | {stat.count:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
