"""A benchmark's server in a process of its own, and the driver's handle on it.

The server process builds what it serves, starts an HTTP server on a free loopback port, says
``READY <port> [<field> ...]`` on its stdout and serves until the driver closes its stdin
(``ready``). The driver starts it as ``python -m <module> --serve ...`` and waits for that line
(``ServerProcess``): each server's peak RSS is then its own, and the driver's work never
shares its interpreter. ``benchmarks.scrape`` and ``benchmarks.events`` serve this way.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from exporter.collector import SnapshotSource, Source
    from exporter.http.server import MetricsServer

REPO_ROOT = Path(__file__).resolve().parents[1]


# --- server side: runs in the subprocess ---------------------------------------------------------


def start_exporter(source: Source, snapshot_sources: Sequence[SnapshotSource] = ()) -> MetricsServer:
    """The exporter's HTTP server over ``source`` (and background sources), unfiltered, as
    ``python -m exporter`` builds it, serving on a free loopback port in a daemon thread."""
    from exporter import __version__
    from exporter.collector import Collector
    from exporter.config import Filters
    from exporter.http.server import MetricsServer

    collector = Collector(source, Filters(), __version__, snapshot_sources=snapshot_sources)
    server = MetricsServer("127.0.0.1", 0, "/metrics", collector, __version__)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def ready(port: int, *fields: object) -> None:
    """Tell the driver the port (and ``fields``), then serve until it closes stdin."""
    print(" ".join(["READY", str(port), *map(str, fields)]), flush=True)
    sys.stdin.read()


# --- client side: the driver ---------------------------------------------------------------------


class ServerProcess:
    """``python -m MODULE --serve SERVE_ARGS...`` run from ``root``, once it said READY.

    ``root`` is the checkout whose code runs: ``python -m`` puts the working directory first on
    sys.path, ahead of the virtualenv's editable install. ``port`` is the port it serves on,
    ``fields`` whatever else its READY line carried.
    """

    def __init__(self, module: str, serve_args: Sequence[str], what: str, root: Path = REPO_ROOT) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "--serve", *serve_args],
            cwd=root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "READY":
            self.stop()
            raise RuntimeError(f"{what} did not start")
        self.port = int(line[1])
        self.fields = line[2:]

    def status(self, key: str) -> int:
        """A number of the process's /proc/PID/status, e.g. ``Threads``, or ``VmRSS`` in kB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)

    def memory_mb(self, key: str) -> float:
        """VmRSS (now) or VmHWM (peak) of the server process, in MB (10^6 bytes)."""
        return self.status(key) * 1024 / 1e6

    def stop(self) -> None:
        """Close its stdin, so that it exits; kill it if it has not within 30 s."""
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """Kill it now, whatever it is doing (the baseline may still be rendering)."""
        self.proc.kill()
        self.proc.wait()
