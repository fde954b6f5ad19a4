"""The HTTP server under load, on loopback: --web.max-requests and its 503, Prometheus's scrape
timeout header, coalesced scrapes, write deadlines, stalled readers let go, bounded connections."""

from __future__ import annotations

import http.client
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from exporter import deadline
from exporter.collector import Collector
from exporter.config import Filters
from exporter.http.server import HttpMetrics, MetricsServer, read_budget, scrape_timeout
from exporter.kernel.dumps import KernelSource
from tests.ovs_messages import FakeDatapath, FakeKernelSocket, FakeVport

DATAPATH_DUMP = 0x1A  # tests.ovs_messages.DATAPATH_FAMILY_ID, the type of a datapath dump request


def datapaths(vports: int = 2) -> list[FakeDatapath]:
    return [
        FakeDatapath("dp0", 3, vports=[FakeVport(i, f"tap{i:08x}-0a", ifindex=10 + i) for i in range(vports)])
    ]


class GatedSocket(FakeKernelSocket):
    """A fake kernel whose replies wait for ``gate`` (set: answer at once), after ``delay`` seconds."""

    def __init__(self, dps: list[FakeDatapath], delay: float = 0.0) -> None:
        super().__init__(dps)
        self.gate = threading.Event()
        self.gate.set()
        self.delay = delay
        self.waiting = threading.Event()

    def recv(self) -> bytes:
        self.waiting.set()
        assert self.gate.wait(30)
        time.sleep(self.delay)
        return super().recv()

    def datapath_dumps(self) -> int:
        return sum(1 for r in self.requests if r[4] == DATAPATH_DUMP)


class Served:
    def __init__(self, server: MetricsServer, sock: GatedSocket, metrics: HttpMetrics) -> None:
        self.server, self.sock, self.metrics = server, sock, metrics

    def get(self, **headers: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
        try:
            conn.request("GET", "/metrics", headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def connect(self, rcvbuf: int | None = None) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Set before connecting, so the window the server sees stays this small.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", self.server.port))
        return sock


@contextmanager
def serve(sock: GatedSocket, **options: float) -> Iterator[Served]:
    metrics = HttpMetrics()
    collector = Collector(KernelSource(lambda: sock), Filters(), "test", extra=(metrics.render,))
    server = MetricsServer("127.0.0.1", 0, "/metrics", collector, "test", metrics=metrics, **options)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Served(server, sock, metrics)
    finally:
        sock.gate.set()
        server.shutdown()
        server.server_close()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline_at = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline_at, f"timed out waiting for {what}"
        time.sleep(0.02)


def sample(body: bytes, series: str) -> float:
    match = re.search(rf"^{re.escape(series)} (\S+)$", body.decode(), re.M)
    assert match, f"{series} not in the body"
    return float(match.group(1))


def in_background(fn: Callable[[], tuple[int, bytes]]) -> tuple[threading.Thread, list[tuple[int, bytes]]]:
    out: list[tuple[int, bytes]] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    return thread, out


def test_past_max_requests_a_scrape_gets_503_and_is_counted() -> None:
    sock = GatedSocket(datapaths())
    with serve(sock, max_requests=2) as ex:
        sock.gate.clear()
        first, first_out = in_background(ex.get)
        second, second_out = in_background(ex.get)
        wait_for(lambda: ex.server.coalescer.in_flight == 2, "two scrapes in flight")
        status, body = ex.get()
        assert status == 503
        assert body == b"Too many scrapes in flight (--web.max-requests 2), try again later.\n"
        sock.gate.set()
        first.join(30)
        second.join(30)
        assert [s for s, _ in first_out + second_out] == [200, 200]
        status, body = ex.get()
        assert status == 200
        assert sample(body, 'ovs_exporter_http_requests_total{code="503"}') == 1
        assert sample(body, 'ovs_exporter_http_requests_total{code="200"}') == 2  # before this one
        assert sample(body, "ovs_exporter_http_requests_in_flight") == 1  # this one


def test_two_concurrent_scrapes_share_one_dump_and_one_body() -> None:
    sock = GatedSocket(datapaths())
    with serve(sock) as ex:
        sock.gate.clear()
        sock.waiting.clear()
        first, first_out = in_background(ex.get)
        assert sock.waiting.wait(10), "the first scrape reads the kernel"
        second, second_out = in_background(ex.get)
        wait_for(lambda: ex.server.coalescer.in_flight == 2, "the second scrape waiting")
        sock.gate.set()
        first.join(30)
        second.join(30)
        assert first_out[0][0] == second_out[0][0] == 200
        assert first_out[0][1] == second_out[0][1], "one body for both"
        assert sock.datapath_dumps() == 1
        assert ex.server.coalescer.renders == 1
        # Freshness: a scrape arriving after that read was over reads the kernel again.
        status, body = ex.get()
        assert status == 200 and sock.datapath_dumps() == 2
        assert sample(body, "ovs_exporter_http_renders_total") == 1  # before this render was counted


def test_scrape_timeout_header_makes_a_slow_kernel_read_fail_fast(caplog: pytest.LogCaptureFixture) -> None:
    # Each kernel reply takes 0.6 s: a scrape needs two (datapaths, vports), 1.2 s in all.
    sock = GatedSocket(datapaths(), delay=0.6)
    with serve(sock) as ex, caplog.at_level(logging.INFO):
        for _ in range(2):
            # 1 s for Prometheus; 0.5 s left for the kernel once the body's time is kept aside.
            status, body = ex.get(**{"X-Prometheus-Scrape-Timeout-Seconds": "1"})
            assert status == 200
            assert sample(body, "ovs_up") == 0
            assert "ovs_vport_info{" not in body.decode()
        assert sample(body, "ovs_scrape_errors_total") == 2
        failures = [r.getMessage() for r in caplog.records if "scrape failed" in r.getMessage()]
        assert len(failures) == 1, failures
        assert "X-Prometheus-Scrape-Timeout-Seconds" in failures[0]
        # A malformed header is ignored, not fatal: no deadline, the slow read completes.
        for malformed in ("ten", "-1", "nan", "0", ""):
            status, body = ex.get(**{"X-Prometheus-Scrape-Timeout-Seconds": malformed})
            assert status == 200 and sample(body, "ovs_up") == 1, malformed
        # Enough time: served whole.
        status, body = ex.get(**{"X-Prometheus-Scrape-Timeout-Seconds": "10"})
        assert sample(body, "ovs_up") == 1 and "ovs_vport_info{" in body.decode()


def test_scrape_timeout_parsing_and_the_netlink_timeout_as_upper_bound() -> None:
    assert scrape_timeout("10") == 10.0
    assert scrape_timeout("2.5") == 2.5
    for bad in (None, "", "x", "-3", "0", "inf", "nan", "1e999"):
        assert scrape_timeout(bad) is None, bad
    assert read_budget(10) == 9.5
    assert read_budget(0.6) == 0.3
    # --netlink.timeout stays the longest any kernel wait can be, whatever the header says.
    with deadline.within(time.monotonic() + 3600):
        assert deadline.remaining(5.0) == 5.0
    with deadline.within(time.monotonic() + 1):
        assert deadline.remaining(5.0) <= 1.0
    with deadline.within(time.monotonic() - 1), pytest.raises(deadline.DeadlineExceededError):
        deadline.remaining(5.0)
    assert deadline.remaining(5.0) == 5.0  # outside a scrape: no deadline


def stalled_scrape(ex: Served) -> socket.socket:
    """A client that asks for the (large) text body, takes a few bytes and stops reading."""
    sock = ex.connect(rcvbuf=4096)
    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert sock.recv(100).startswith(b"HTTP/1.1 200")
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed this connection: read what is left until EOF or reset."""
    try:
        while sock.recv(1 << 16):
            pass
    except ConnectionResetError:
        pass
    return True


def test_a_stalled_reader_is_dropped_at_the_write_deadline() -> None:
    sock = GatedSocket(datapaths(3000))  # a body of about 3 MB, far more than socket buffers hold
    with serve(sock, write_timeout=1.0) as ex:
        stalled = stalled_scrape(ex)
        wait_for(lambda: ex.metrics.dropped_count("write_timeout") == 1, "the write deadline")
        assert closed_by_server(stalled)
        stalled.close()
        wait_for(lambda: ex.metrics.connections == 0, "the connection forgotten")
        status, _ = ex.get()
        assert status == 200


def test_stalled_readers_of_old_bodies_are_cut_when_newer_ones_are_made() -> None:
    sock = GatedSocket(datapaths(3000))
    with serve(sock) as ex:
        stalled = stalled_scrape(ex)  # generation 1 of the text format
        time.sleep(1.2)  # stalled for longer than STALLED_AFTER
        for _ in range(2):  # generations 2 and 3: generation 1 is still among the three kept
            assert ex.get()[0] == 200
        assert ex.metrics.dropped_count("superseded") == 0
        assert ex.get()[0] == 200  # generation 4
        assert ex.metrics.dropped_count("superseded") == 1
        assert closed_by_server(stalled)
        stalled.close()


def test_past_max_connections_an_idle_one_is_evicted_for_a_scrape() -> None:
    sock = GatedSocket(datapaths())
    with serve(sock, max_connections=4) as ex:
        idle = [ex.connect() for _ in range(4)]
        wait_for(lambda: ex.metrics.connections == 4, "four connections")
        status, body = ex.get()
        assert status == 200
        assert ex.metrics.dropped_count("evicted") >= 1
        assert sample(body, "ovs_exporter_http_connections") <= 4
        assert closed_by_server(idle[0]), "the oldest idle connection was closed"
        for s in idle:
            s.close()


def test_past_max_connections_with_all_busy_a_new_one_is_refused() -> None:
    sock = GatedSocket(datapaths())
    with serve(sock, max_connections=2, max_requests=0) as ex:
        sock.gate.clear()
        busy = [in_background(ex.get) for _ in range(2)]
        wait_for(lambda: ex.server.coalescer.in_flight == 2, "two scrapes busy")
        refused = ex.connect()
        refused.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert closed_by_server(refused)
        assert ex.metrics.dropped_count("refused") == 1
        sock.gate.set()
        for thread, out in busy:
            thread.join(30)
            assert out[0][0] == 200
        refused.close()


def test_a_request_sent_a_byte_at_a_time_is_dropped_at_its_deadline() -> None:
    sock = GatedSocket(datapaths())
    with serve(sock, request_timeout=1.0) as ex:
        slow = ex.connect()
        slow.settimeout(0.2)
        closed = False
        for byte in b"GET /metrics HTTP/1.1\r\nX-Padding: " + b"x" * 200:
            try:
                slow.send(bytes([byte]))
                if slow.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue  # still open: keep dripping
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
        assert closed, "a request dripped for 40 s kept its connection"
        slow.close()
        assert ex.get()[0] == 200


def test_every_http_metric_is_served_and_documented_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    sock = GatedSocket(datapaths())
    with serve(sock) as ex:
        _, body = ex.get()
    names = set(re.findall(r"^(ovs_exporter_http_\w+)[{ ]", body.decode(), re.M))
    assert len(names) == 5, names
    for name in names:
        assert f"`{name}`" in readme or f"`{name}{{" in readme, f"{name} is not in README's metric table"
