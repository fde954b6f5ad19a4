"""End to end on loopback: the real HTTP server, the real collector and source, a fake kernel socket."""

from __future__ import annotations

import gzip
import http.client
import os
import re
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.collector import Collector
from exporter.config import Filters
from exporter.exposition import Format
from exporter.http.server import MetricsServer, accepts_gzip, negotiate_format
from exporter.kernel.ct_zones import ConntrackZoneSource
from exporter.kernel.dumps import KernelSource
from exporter.kernel.events import EventListener
from exporter.kernel.families.link import RTM_GETLINK
from exporter.kernel.meters import MeterSource
from exporter.kernel.netlink import NLM_F_REQUEST
from exporter.kernel.netlink import OVS_CMD_DEL as DEL
from exporter.kernel.netlink import OVS_CMD_NEW as NEW
from exporter.kernel.netlink import OVS_CMD_SET as SET
from tests.fake_events import Kernel, listener_for
from tests.fake_genl import FakeGenlSocket, FakeKernel, FakeMeter
from tests.ovs_messages import FakeDatapath, FakeKernelSocket, FakeLinkSocket, FakeVport
from tests.tools import ROOT, promtool

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
GOLDEN = ROOT / "tests" / "fixtures" / "e2e-output.txt"


def golden_datapaths() -> list[FakeDatapath]:
    return [
        FakeDatapath(
            "ovs-system",
            3,
            stats=(123456, 789, 12, 40),
            megaflow=(987654, 6, 55555),
            # vswitchd's per-CPU dispatch: 2 handlers over 3 CPUs.
            user_features=0b1011,
            per_cpu_pids=(4001, 4002, 4001),
            vports=[
                FakeVport(0, "ovs-system", type=2, ifindex=3, stats=(0, 0, 0, 0, 0, 0, 0, 0), upcall=(0, 0)),
                FakeVport(1, "br-int", type=2, ifindex=4, stats=(10, 20, 1000, 2000, 0, 0, 0, 0), upcall=(3, 0)),
                FakeVport(2, "tap1a2b3c4d-5e", type=1, ifindex=17, stats=(2**60, 501, 9876543210, 12345, 1, 2, 3, 4), upcall=(700, 12)),
                FakeVport(3, "genev_sys_6081", type=5, ifindex=9, dst_port=6081, stats=(5, 6, 7, 8, 0, 0, 0, 0), upcall=(1, 1)),
                FakeVport(4, "vxlan0", type=4, ifindex=10, netnsid=2, dst_port=4789, upcall=(0, 0), extension=(1, 9)),
                FakeVport(5, "gre_sys", type=3, ifindex=11, upcall=(0, 0)),
                FakeVport(6, "future0", type=9, ifindex=12, upcall=(0, 0)),
            ],
        ),
        # Per-vport dispatch with a feature bit the exporter does not name (bit 7).
        FakeDatapath("dp-legacy", 20, megaflow=None, user_features=0b10000011, masks_cache_size=None, vports=[
            FakeVport(0, "dp-legacy", type=2, ifindex=20, upcall_pids=(0,)),
            FakeVport(1, "tap-legacy", ifindex=21, upcall_pids=(3001,)),
        ]),
    ]  # fmt: skip


def golden_links() -> FakeLinkSocket:
    """The netdevs of golden_datapaths' vports: vxlan0's is in another namespace (not asked for),
    tap-legacy's is gone (ENODEV), future0 has no kind, as a physical NIC."""
    return FakeLinkSocket(
        {
            3: ("ovs-system", "openvswitch"),
            4: ("br-int", "openvswitch"),
            17: ("tap1a2b3c4d-5e", "tun"),
            9: ("genev_sys_6081", "geneve"),
            11: ("gre_sys", "gretap"),
            12: ("future0", None),
            20: ("dp-legacy", "openvswitch"),
        }
    )


class Exporter:
    def __init__(
        self, server: MetricsServer, sock: FakeKernelSocket, links: FakeLinkSocket, kernel: FakeKernel
    ) -> None:
        self.server, self.sock, self.links, self.kernel = server, sock, links, kernel

    def get(self, path: str = "/metrics", method: str = "GET", **headers: str) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        conn.request(method, path, headers=headers)
        return conn.getresponse()


def golden_events(kernel: Kernel) -> EventListener:
    """Notifications since start: ovs-system had 3 ports added, 1 removed and 1 changed."""
    listener = listener_for((None, kernel))
    kernel.notify.send(*(kernel.vport(c, 3, f"tap{i}") for i, c in enumerate((NEW, NEW, NEW, DEL, SET))))
    listener.step(0)
    return listener


def golden_meters_and_zones() -> tuple[MeterSource, ConntrackZoneSource, FakeKernel]:
    """vswitchd's meters on ovs-system (OVN's CoPP: meter 1 dropping ARP over its rate), none on
    dp-legacy; conntrack zone limits on two of the zones OVN gave its ports, one of them full."""
    kernel = FakeKernel(
        [FakeDatapath("ovs-system", 3), FakeDatapath("dp-legacy", 20)],
        {
            3: {
                0: FakeMeter(0, 40, 3360),
                1: FakeMeter(1, 5000, 210000, 4890, 205380),
                2: FakeMeter(2, 7, 2254),
            }
        },
        max_meters=200_000,
        default_limit=0,
        zone_limits={4: (1000, 12), 2: (100, 100)},
    )
    meters = MeterSource(lambda netns: FakeGenlSocket(kernel), interval=15)
    zones = ConntrackZoneSource(lambda netns: FakeGenlSocket(kernel), interval=15)
    meters.poller.poll()
    zones.poller.poll()
    return meters, zones, kernel


@pytest.fixture
def exporter() -> Iterator[Exporter]:
    sock = FakeKernelSocket(golden_datapaths())
    links = golden_links()
    kernel = Kernel([FakeDatapath("ovs-system", 3), FakeDatapath("dp-legacy", 20)])
    events = golden_events(kernel)
    meters, zones, fake_kernel = golden_meters_and_zones()
    collector = Collector(
        KernelSource(lambda: sock, lambda: links),
        Filters(),
        "0.1.0-test",
        snapshot_sources=[events, meters, zones],
    )
    server = MetricsServer("127.0.0.1", 0, "/metrics", collector, "0.1.0-test")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Exporter(server, sock, links, fake_kernel)
    server.shutdown()
    server.server_close()
    events.close()
    kernel.notify.close()


def stable(body: str) -> str:
    """The body without what changes from run to run: runtime metrics and the scrape's duration."""
    lines = [
        line
        for line in body.splitlines(keepends=True)
        if not re.match(r"(# (HELP|TYPE) )?(process_|python_)", line)
    ]
    return re.sub(
        r"^(ovs_scrape_duration_seconds|ovs_scrape_collector_duration_seconds\{.*\}) \S+$",
        r"\1 0.001",
        "".join(lines),
        flags=re.M,
    )


def test_text_format_matches_golden_file(exporter: Exporter) -> None:
    response = exporter.get()
    assert response.status == 200
    assert response.getheader("Content-Type") == "text/plain; version=0.0.4; charset=utf-8"
    body = stable(response.read().decode())
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(body)
    assert body == GOLDEN.read_text(), "rerun with UPDATE_GOLDEN=1 and review the diff"
    families = {f.name for f in parse_text(body)}
    assert "ovs_vport_receive_packets" in families


def test_golden_file_passes_promtool_check_metrics() -> None:
    result = subprocess.run(
        [str(promtool()), "check", "metrics"],
        input=GOLDEN.read_text(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_live_scrape_passes_promtool_check_metrics(exporter: Exporter) -> None:
    body = exporter.get().read().decode()
    result = subprocess.run(
        [str(promtool()), "check", "metrics"], input=body, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_openmetrics_with_gzip_as_prometheus_asks(exporter: Exporter) -> None:
    response = exporter.get(**{"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"})
    assert response.status == 200
    assert response.getheader("Content-Type", "").startswith("application/openmetrics-text; version=1.0.0")
    assert response.getheader("Content-Encoding") == "gzip"
    body = gzip.decompress(response.read()).decode()
    assert body.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(body)}
    rx = families["ovs_vport_receive_packets"]
    assert rx.type == "counter"
    assert {s.labels["port"]: s.value for s in rx.samples}["tap1a2b3c4d-5e"] == 2**60
    assert families["ovs_vport"].type == "info"
    assert families["ovs_up"].samples[0].value == 1


def test_text_and_openmetrics_carry_the_same_samples(exporter: Exporter) -> None:
    def sample_set(families: object) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
        return {
            (s.name, tuple(sorted(s.labels.items())), s.value)
            for f in families  # type: ignore[attr-defined]
            for s in f.samples
            if s.name.startswith("ovs_")
            and s.name not in ("ovs_scrape_duration_seconds", "ovs_scrape_collector_duration_seconds")
        }

    text = sample_set(parse_text(exporter.get().read().decode()))
    om = sample_set(parse_openmetrics(exporter.get(Accept=PROMETHEUS_ACCEPT).read().decode()))
    assert text == om and len(text) > 80


def test_landing_page_404_405_and_head(exporter: Exporter) -> None:
    landing = exporter.get("/")
    assert landing.status == 200 and b'href="/metrics"' in landing.read()
    missing = exporter.get("/nope")
    assert missing.status == 404
    missing.read()
    post = exporter.get("/metrics", method="POST")
    assert post.status == 405 and post.getheader("Allow") == "GET, HEAD"
    post.read()
    head = exporter.get("/metrics", method="HEAD")
    assert head.status == 200 and int(head.getheader("Content-Length", "0")) > 0
    assert exporter.get("/metrics?x=1").status == 200


def test_only_get_dumps_reach_the_kernel(exporter: Exporter) -> None:
    for _ in range(3):
        exporter.get().read()
    assert exporter.sock.requests
    for request in exporter.sock.requests:
        assert request[4:8] == bytes([request[4], request[5], 0x01, 0x03]), "flags must be REQUEST|DUMP"
        assert request[16] == 3, "command must be GET"
    # rtnetlink: RTM_GETLINK (18) of one link, flags REQUEST only; each of the 7 links once, and
    # tap-legacy's, gone (ENODEV), in each of the 3 scrapes.
    assert len(exporter.links.requests) == 7 + 3
    for request in exporter.links.requests:
        assert struct.unpack_from("=HH", request, 4) == (RTM_GETLINK, NLM_F_REQUEST)
    # The background readers: ovs_meter's GET (4) and FEATURES (1), ovs_ct_limit's GET (3), the
    # datapath dump; NLM_F_REQUEST alone for the GETs (no ACK, no ECHO, nothing that creates).
    assert exporter.kernel.requests
    allowed = {
        ("ovs_meter", 4, 0x1),
        ("ovs_meter", 1, 0x1),
        ("ovs_ct_limit", 3, 0x1),
        ("ovs_datapath", 3, 0x301),
    }
    assert {(family, cmd, flags) for family, cmd, flags, _dp in exporter.kernel.requests} <= allowed


def test_concurrent_scrapes_all_succeed(exporter: Exporter) -> None:
    results: list[int] = []

    def scrape() -> None:
        response = exporter.get()
        response.read()
        results.append(response.status)

    threads = [threading.Thread(target=scrape) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [200] * 16


@pytest.mark.parametrize(
    ("accept", "fmt"),
    [
        (None, Format.TEXT),
        ("text/plain", Format.TEXT),
        (PROMETHEUS_ACCEPT, Format.OPENMETRICS),
        ("application/openmetrics-text; version=1.0.0", Format.OPENMETRICS),
        ("application/openmetrics-text;q=0,text/plain", Format.TEXT),
    ],
)
def test_negotiate_format(accept: str | None, fmt: Format) -> None:
    assert negotiate_format(accept) is fmt


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, False), ("gzip", True), ("deflate, gzip;q=1.0", True), ("gzip;q=0", False), ("identity", False)],
)
def test_accepts_gzip(value: str | None, expected: bool) -> None:
    assert accepts_gzip(value) is expected


def test_real_cli_without_openvswitch_module_serves_up_zero() -> None:
    """On a host without the module (like CI's): start, serve ovs_up 0, log why once."""
    if Path("/sys/module/openvswitch").exists():
        pytest.skip("this host has the openvswitch module loaded")
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "--web.listen-address", "127.0.0.1:0", "--log.level", "info"],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        while "listening on" not in line and line:
            line = proc.stderr.readline()  # the event listener may log first that it has no families
        port = _port_of(line)
        bodies = []
        for _ in range(3):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/metrics")
            bodies.append(conn.getresponse().read().decode())
        assert all("\novs_up 0\n" in b for b in bodies)
        assert "\novs_scrape_errors_total 3\n" in bodies[-1]
        started = time.monotonic()
        proc.terminate()
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - started < 1.0, "SIGTERM stops it within a second"
        log = proc.stderr.read()
        assert log.count("openvswitch kernel module") == 1, log
    finally:
        proc.kill()
        proc.wait()


def _port_of(log_line: str) -> int:
    match = re.search(r"listening on \S+:(\d+)", log_line)
    assert match, log_line
    return int(match.group(1))
