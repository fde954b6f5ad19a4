"""The port event listener's cost at scrape time: the same scrape with and without it, side by side.

Three exporter servers over the same pre-built dumps (``benchmarks.dataset``), each in its own
process: without the listener (``--no-collector.events``), with it idle, and with it receiving a
steady stream of vport notifications. The notifications come from a fourth process (standing in
for the kernel) through a Unix datagram socket in place of the netlink one; everything else is
the listener's real code (``exporter.kernel.events``), in its own thread. The driver scrapes the three
in turn, round after round, so all three see the same background load, and reports each one's
median and the median over the rounds of with/without.

    .venv/bin/python -m benchmarks.events                 # what make bench runs after the scrape benchmark
    .venv/bin/python -m benchmarks.events --vports 1000 --rounds 9 --rate 200
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.scrape import get_metrics, machine
from benchmarks.serving import REPO_ROOT, ServerProcess, ready, start_exporter

MODES = ("without", "idle", "busy")


class UnixNotifySocket:
    """A ``NotifySocket`` reading datagrams sent to a Unix socket path (by the feeder process)."""

    def __init__(self, path: str) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._sock.bind(path)
        self._sock.setblocking(False)

    def fileno(self) -> int:
        return self._sock.fileno()

    def join(self, group: int) -> None:
        pass  # whatever arrives at the path is "the group"

    def poll(self) -> bytes | None:
        try:
            return self._sock.recv(1 << 16)
        except BlockingIOError:
            return None

    def close(self) -> None:
        self._sock.close()


def serve(mode: str, vports: int, path: str) -> None:
    """One exporter server: the scrape benchmark's, plus the listener unless ``mode`` is "without"."""
    from benchmarks.dataset import PrebuiltKernelSocket, build, fake_datapaths
    from exporter.kernel.dumps import KernelSource
    from exporter.kernel.events import EventListener
    from tests.fake_events import FakeControl

    dataset = build(vports)
    sources = []
    if mode != "without":
        control = FakeControl([dp for dp, _ports in fake_datapaths(vports)])
        listener = EventListener(lambda _netns: (UnixNotifySocket(path), control))
        listener.start()
        sources.append(listener)
    ready(start_exporter(KernelSource(lambda: PrebuiltKernelSocket(dataset)), sources).port)


def feed(path: str, rate: float) -> None:
    """Send vport notifications (NEW and DEL of one port, in turn) at ``rate`` per second."""
    from tests import ovs_messages as om

    messages = [om.vport_notification(cmd, 4, om.FakeVport(9, "tapchurn0", ifindex=99)) for cmd in (1, 2)]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    interval = 1.0 / rate
    sent = 0
    started = time.monotonic()
    while True:
        try:
            sock.sendto(messages[sent % 2], path)
        except (FileNotFoundError, ConnectionRefusedError):
            return  # the server is gone
        except BlockingIOError:
            pass
        sent += 1
        delay = started + sent * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)


class Server(ServerProcess):
    def __init__(self, mode: str, vports: int, path: str) -> None:
        self.mode = mode
        super().__init__(
            "benchmarks.events", [mode, "--vports", str(vports), "--path", path], f"server {mode}"
        )

    def scrape(self) -> tuple[float, bytes]:
        elapsed, response, body = get_metrics(self.port)
        if response.status != 200:
            raise RuntimeError(f"{self.mode}: HTTP {response.status}")
        return elapsed, body


@dataclass
class EventsCost:
    vports: int
    rounds: int
    rate_per_second: float
    median_ms: dict[str, float]  # mode -> median scrape
    ratio_idle: float  # median over the rounds of idle / without
    ratio_busy: float  # median over the rounds of busy / without
    events_counted: int  # added + removed the busy server reported at the end (the feed was handled)


def _events_total(body: bytes) -> int:
    import gzip

    text = gzip.decompress(body).decode()
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith("ovs_datapath_vport_events_total{") and 'datapath="ovs-system"' in line
    )


def measure(vports: int, rounds: int, rate: float) -> EventsCost:
    with tempfile.TemporaryDirectory(prefix="ovs-events-bench-") as tmp:
        paths = {mode: os.path.join(tmp, mode) for mode in MODES}
        servers = {mode: Server(mode, vports, paths[mode]) for mode in MODES}
        feeder = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.events", "--feed", paths["busy"], "--rate", str(rate)],
            cwd=REPO_ROOT,
        )
        try:
            for server in servers.values():
                server.scrape()  # first-use costs, not counted
            # The busy rounds start once the feed reaches the listener (the feeder is a new process).
            deadline = time.monotonic() + 60
            while not _events_total(servers["busy"].scrape()[1]):
                if feeder.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the busy listener counted no event: the feed never reached it")
                time.sleep(0.05)
            times: dict[str, list[float]] = {mode: [] for mode in MODES}
            last = b""
            for _ in range(rounds):
                for mode in MODES:
                    elapsed, body = servers[mode].scrape()
                    times[mode].append(elapsed)
                    if mode == "busy":
                        last = body
        finally:
            feeder.terminate()
            feeder.wait()
            for server in servers.values():
                server.stop()

    def ratio(mode: str) -> float:
        return statistics.median(t / w for t, w in zip(times[mode], times["without"], strict=True))

    return EventsCost(
        vports,
        rounds,
        rate,
        {mode: statistics.median(t) * 1e3 for mode, t in times.items()},
        ratio("idle"),
        ratio("busy"),
        _events_total(last),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.events", description=__doc__.splitlines()[0])
    p.add_argument("--vports", type=int, default=10000)
    p.add_argument("--rounds", type=int, default=31, help="scrapes of each server (odd: the median is one)")
    p.add_argument("--rate", type=float, default=1000.0, help="notifications per second to the busy listener")
    p.add_argument("--json", type=Path)
    p.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--feed", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.serve, args.vports, args.path)
        return 0
    if args.feed:
        feed(args.feed, args.rate)
        return 0

    info = machine()
    cost = measure(args.vports, args.rounds, args.rate)
    m = cost.median_ms
    print(
        f"event listener at {cost.vports:,} vports, {cost.rounds} rounds ({info['nproc']} CPUs, load at start"
        f" {info['loadavg_at_start']}): median scrape without it {m['without']:.1f} ms, with it idle"
        f" {m['idle']:.1f} ms, with it handling {cost.rate_per_second:g} notifications/s {m['busy']:.1f} ms;"
        f" median ratio of the rounds idle/without {cost.ratio_idle:.3f}, busy/without {cost.ratio_busy:.3f};"
        f" the busy listener had counted {cost.events_counted} events"
    )
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "events": asdict(cost)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
