"""Deflate implementations side by side on the exporter's own body: why the exporter uses ISA-L.

    .venv/bin/python -m benchmarks.compression [--vports 10000]

Compresses the body of one scrape (OpenMetrics, every sample, as Prometheus gets it) on
one core with: the standard library's zlib at levels 1 (the exporter's former choice)
and 6; python-isal (the exporter's dependency) at its levels 0-3; and, when the
``zlib-ng`` package is installed (``.venv/bin/pip install zlib-ng``; not a dependency),
zlib-ng at levels 1 and 2. Then the exporter's ``gzip_compress`` (its ``GzipStream``, as a
scrape deflates its body, in batches as it is written). Every output is checked to decompress
to the body with Python's gzip reader. Each time is the fastest of ``--runs``: the least
disturbed by other work.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import time
import zlib
from collections.abc import Callable

from isal import isal_zlib

from benchmarks.dataset import PrebuiltKernelSocket, build
from exporter.collector import Collector
from exporter.config import Filters
from exporter.exposition import Format
from exporter.http.server import GZIP_LEVEL, gzip_compress
from exporter.kernel.dumps import KernelSource

_GZIP = 31  # wbits: a gzip member


def candidates(body: bytes) -> list[tuple[str, Callable[[], bytes]]]:
    found: list[tuple[str, Callable[[], bytes]]] = [
        (f"zlib level {level}", lambda level=level: zlib.compress(body, level, wbits=_GZIP))
        for level in (1, 6)
    ]
    found += [
        (f"isal level {level}", lambda level=level: isal_zlib.compress(body, level, wbits=_GZIP))
        for level in (0, 1, 2, 3)
    ]
    try:
        from zlib_ng import zlib_ng  # type: ignore[import-not-found]
    except ImportError:
        print("# zlib-ng not installed: left out", flush=True)
    else:
        found += [
            (f"zlib-ng level {level}", lambda level=level: zlib_ng.compress(body, level, wbits=_GZIP))
            for level in (1, 2)
        ]
    return found


def fastest(fn: Callable[[], bytes], runs: int) -> tuple[float, bytes]:
    best, out = float("inf"), b""
    for _ in range(runs):
        started = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - started)
    return best, out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compression", description=__doc__.splitlines()[0])
    p.add_argument("--vports", type=int, default=10000)
    p.add_argument("--runs", type=int, default=15)
    args = p.parse_args(argv)
    print(f"# load average at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    dataset = build(args.vports)
    collector = Collector(KernelSource(lambda: PrebuiltKernelSocket(dataset)), Filters(), "compression")
    chunks = collector.scrape_chunks(Format.OPENMETRICS)
    body = b"".join(chunks)
    print(f"# body of {args.vports:,} vports, OpenMetrics: {len(body) / 1e6:.2f} MB\n")
    print("| compressor | ms | gzipped MB | ratio | ms relative to zlib level 1 |")
    print("|---|---:|---:|---:|---:|")
    rows = [*candidates(body), (f"exporter gzip_compress (isal level {GZIP_LEVEL}, batches)",
                                lambda: gzip_compress(chunks))]  # fmt: skip
    reference = None
    for name, fn in rows:
        seconds, out = fastest(fn, args.runs)
        if gzip.decompress(out) != body:
            raise RuntimeError(f"{name}: the gzip stream does not decompress to the body")
        reference = reference or seconds
        print(f"| {name} | {seconds * 1e3:.2f} | {len(out) / 1e6:.3f} | {len(body) / len(out):.2f} "
              f"| {seconds / reference:.2f} |", flush=True)  # fmt: skip
    print(f"\nload average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
