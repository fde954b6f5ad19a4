"""The fast path means exactly what the straightforward one would have meant.

The exporter decodes with ``struct`` and writes the exposition by hand for speed.
Here the same kernel bytes also go through the reference (``tests/reference_pyroute2.py``:
pyroute2 message classes, prometheus_client metric families and its own
``generate_latest``), and both outputs are parsed with prometheus_client's
parsers, in the classic text format and in OpenMetrics: same families, types,
help, samples, labels and values. The decoders are also compared record for
record, on hand-built bytes and on the captured real-kernel fixtures.
"""

from __future__ import annotations

import gzip
import http.client
import json
import random
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import generate_latest as generate_text
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.collector import Collector
from exporter.config import Filters
from exporter.exposition import Format
from exporter.http import server as web
from exporter.http.server import MetricsServer, gzip_compress
from exporter.kernel.dumps import KernelSource
from exporter.kernel.families.datapath import OVS_DATAPATH_FAMILY, Datapath, decode_datapath
from exporter.kernel.families.vport import (
    OVS_VPORT_ATTR_IFINDEX,
    OVS_VPORT_ATTR_NAME,
    OVS_VPORT_ATTR_PORT_NO,
    OVS_VPORT_ATTR_STATS,
    OVS_VPORT_ATTR_TYPE,
    OVS_VPORT_FAMILY,
    OVS_VPORT_VERSION,
    Vport,
    _decode_usual_vport_prefix,
    decode_vport,
)
from exporter.kernel.netlink import iter_messages, ovs_start
from tests import ovs_messages as om
from tests.reference_pyroute2 import ReferenceCollector, ReferenceSource

VERSION = "1.2.3-equivalence"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kernel"
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
# prometheus_client's own runtime families: their values move between two calls, so only
# their names, types and label names are compared.
RUNTIME_PREFIXES = ("process_", "python_")

U64_MAX = 2**64 - 1


# --- snapshots: the kernel state both paths read --------------------------------------------------


def odd_datapaths() -> list[om.FakeDatapath]:
    """Everything that is easy to get wrong in a name, a label or a value."""
    return [
        om.FakeDatapath(
            'dp"quoted\\back',
            3,
            stats=(U64_MAX, 2**53 + 1, 0, 7),
            megaflow=(2**63, 1, 2**53 + 3),
            vports=[
                om.FakeVport(0, 'dp"quoted\\back', type=2, ifindex=3, stats=(1, 2, 3, 4, 5, 6, 7, 8), upcall=(0, 0)),
                om.FakeVport(1, 'tap"1\\2', ifindex=40, stats=(U64_MAX, 2**53 + 1, 2**60 + 7, 0, 0, 0, 0, 1),
                             upcall=(U64_MAX - 5, 5)),
                om.FakeVport(2, "eth-ünïcødé-端口", ifindex=41, upcall=(3, 0)),
                om.FakeVport(3, "new\nline", ifindex=42, upcall=(0, 0)),
                om.FakeVport(4, "vxlan_sys_4789", type=4, ifindex=43, dst_port=4789, upcall=(1, 1)),
                om.FakeVport(5, "genev_sys_6081", type=5, ifindex=44, dst_port=6081, upcall=(1, 1)),
                om.FakeVport(6, "gre_sys", type=3, ifindex=45, upcall=(0, 0)),
                om.FakeVport(7, "future0", type=9, ifindex=46, upcall=(0, 0)),  # unknown type: its number
                om.FakeVport(8, "veth-in-netns", ifindex=47, netnsid=0, upcall=(2, 0)),
                om.FakeVport(9, "veth-netns-neg", ifindex=48, netnsid=-1, upcall=(2, 0)),
                om.FakeVport(10, "no-stats", ifindex=49, stats=None, upcall=(9, 9)),
                om.FakeVport(11, "pre-4.16", ifindex=None, upcall=(0, 0)),  # no IFINDEX attribute
                om.FakeVport(0xFFFFFFFF, "max-port-no", ifindex=0xFFFFFFFF, upcall=(0, 0)),
                # Attributes a newer kernel might add, inside and outside the fast path's range.
                om.FakeVport(13, "extra-attrs", ifindex=50, upcall=(4, 4),
                             extra_attrs=om.nla(42, b"\x01\x02\x03") + om.nla(7, b"\0" * 4)),
            ],
        ),
        # Kernel 6.1: no upcall stats at all, so the two upcall families are absent.
        om.FakeDatapath(
            "dp-6.1",
            4,
            megaflow=None,
            vports=[
                om.FakeVport(0, "dp-6.1", type=2, ifindex=4, stats=(0, 0, 0, 0, 0, 0, 0, 0)),
                om.FakeVport(1, "tap0", ifindex=60, stats=(10, 20, 30, 40, 1, 2, 3, 4)),
            ],
        ),
        om.FakeDatapath("dp-no-stats", 5, stats=None, megaflow=None, vports=[]),
    ]  # fmt: skip


def no_upcall_datapaths() -> list[om.FakeDatapath]:
    """A whole kernel without upcall stats (Debian 12's 6.1)."""
    return [
        om.FakeDatapath(
            "ovs-system",
            3,
            vports=[om.FakeVport(i, f"tap{i:03x}", ifindex=10 + i, stats=(i,) * 8) for i in range(20)],
        )
    ]


def random_datapaths(seed: int, vports: int) -> list[om.FakeDatapath]:
    """Many vports with random names, types, presence of attributes and counter magnitudes."""
    rng = random.Random(seed)
    alphabet = 'abcXYZ019-_."\\é端 '

    def counter() -> int:
        return rng.choice((0, 1, rng.getrandbits(32), rng.getrandbits(53), rng.getrandbits(64), U64_MAX))

    datapaths = []
    for d in range(3):
        ports = []
        for p in range(vports):
            vtype = rng.choice((1, 1, 1, 2, 3, 4, 5, 6, 200))
            ports.append(
                om.FakeVport(
                    p,
                    f"p{d}-{p}-" + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6))),
                    type=vtype,
                    ifindex=rng.choice((None, rng.getrandbits(31))),
                    netnsid=rng.choice((None, None, rng.randint(-1, 100))),
                    stats=None if rng.random() < 0.05 else tuple(counter() for _ in range(8)),
                    upcall=None if rng.random() < 0.1 else (counter(), counter()),
                    dst_port=rng.getrandbits(16) if vtype in (4, 5) and rng.random() < 0.8 else None,
                    upcall_pids=tuple(rng.getrandbits(32) for _ in range(rng.randint(1, 4))),
                )
            )
        datapaths.append(
            om.FakeDatapath(
                f"dp{d}",
                10 + d,
                stats=None if rng.random() < 0.2 else (counter(), counter(), counter(), counter()),
                megaflow=None if rng.random() < 0.2 else (counter(), rng.getrandbits(32), counter()),
                vports=ports,
            )
        )
    return datapaths


SNAPSHOTS: dict[str, Callable[[], list[om.FakeDatapath]]] = {
    "odd": odd_datapaths,
    "no-upcall-stats": no_upcall_datapaths,
    "random": lambda: random_datapaths(6, 300),
    "empty": list,
}


# --- the two paths --------------------------------------------------------------------------------


def fixed_clock() -> float:
    return 0.0  # so ovs_scrape_duration_seconds is 0 on the fast path, as in the reference


def fast_body(sock: Any, fmt: Format) -> str:
    return Collector(KernelSource(lambda: sock), Filters(), VERSION, clock=fixed_clock).scrape(fmt)


class ExporterSelfFamilies:
    """The exporter's own families for a successful scrape, the prometheus_client way.

    Their help texts are the exporter's to choose and are taken from its output;
    names, types, labels and values are what this test checks.
    """

    def __init__(self, help_of: dict[str, str], up: int, errors: int) -> None:
        self.help_of, self.up, self.errors = help_of, up, errors

    def help(self, name: str) -> str:
        # The classic text format has no info type: there the family is a gauge named ..._info.
        return self.help_of.get(name) or self.help_of[name + "_info"]

    def collector_gauge(self, name: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, self.help(name), labels=["collector"])
        family.add_metric(["kernel"], value)
        return family

    def collect(self) -> list[Metric]:
        h = self.help
        return [
            GaugeMetricFamily("ovs_up", h("ovs_up"), value=self.up),
            self.collector_gauge("ovs_scrape_collector_success", self.up),
            self.collector_gauge("ovs_scrape_collector_duration_seconds", 0.0),
            GaugeMetricFamily("ovs_scrape_duration_seconds", h("ovs_scrape_duration_seconds"), value=0.0),
            CounterMetricFamily("ovs_scrape_errors", h("ovs_scrape_errors"), value=self.errors),
            InfoMetricFamily("ovs_exporter_build", h("ovs_exporter_build"), value={"version": VERSION}),
        ]


def reference_body(sock: Any, fmt: Format, help_of: dict[str, str], up: int = 1, errors: int = 0) -> str:
    registry = CollectorRegistry()
    if up:
        registry.register(ReferenceCollector(ReferenceSource(sock)))
    registry.register(ExporterSelfFamilies(help_of, up, errors))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    generate = generate_openmetrics if fmt is Format.OPENMETRICS else generate_text
    return bytes(generate(registry)).decode("utf-8")


# --- comparing what two bodies mean ---------------------------------------------------------------

Sample = tuple[str, tuple[tuple[str, str], ...], float]


def parse(body: str, fmt: Format) -> list[Any]:
    parser = parse_openmetrics if fmt is Format.OPENMETRICS else parse_text
    return list(parser(body))


def meaning(body: str, fmt: Format) -> dict[str, tuple[str, str, list[Sample]]]:
    """Family name -> (type, help, samples sorted); runtime families without their values."""
    families: dict[str, tuple[str, str, list[Sample]]] = {}
    for family in parse(body, fmt):
        assert family.name not in families, f"family {family.name} appears twice"
        runtime = family.name.startswith(RUNTIME_PREFIXES)
        samples: list[Sample] = [
            (s.name, tuple(sorted(s.labels.items())), 0.0 if runtime else float(s.value))
            for s in family.samples
        ]
        keys = [(name, labels) for name, labels, _value in samples]
        assert len(set(keys)) == len(keys), f"duplicate samples in {family.name}"
        families[family.name] = (family.type, "" if runtime else family.documentation, sorted(samples))
    return families


def help_texts(body: str, fmt: Format) -> dict[str, str]:
    return {f.name: f.documentation for f in parse(body, fmt)}


def assert_same_meaning(fast: str, reference: str, fmt: Format) -> None:
    got, want = meaning(fast, fmt), meaning(reference, fmt)
    assert sorted(got) == sorted(want), "different families"
    for name in want:
        assert got[name][:2] == want[name][:2], f"{name}: type or help differs"
        assert got[name][2] == want[name][2], f"{name}: samples differ"


# --- tests: exposition ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(Format), ids=lambda f: f.name.lower())
@pytest.mark.parametrize("snapshot", list(SNAPSHOTS))
def test_exposition_means_what_prometheus_client_would_write(snapshot: str, fmt: Format) -> None:
    datapaths = SNAPSHOTS[snapshot]()
    fast = fast_body(om.FakeKernelSocket(datapaths), fmt)
    reference = reference_body(om.FakeKernelSocket(datapaths), fmt, help_texts(fast, fmt))
    assert_same_meaning(fast, reference, fmt)


@pytest.mark.parametrize("fmt", list(Format), ids=lambda f: f.name.lower())
def test_a_failed_scrape_means_what_prometheus_client_would_write(fmt: Format) -> None:
    sock = om.FakeKernelSocket(odd_datapaths(), families={})  # the module is not loaded
    fast = fast_body(sock, fmt)
    assert_same_meaning(fast, reference_body(sock, fmt, help_texts(fast, fmt), up=0, errors=1), fmt)


def test_the_odd_snapshot_really_is_odd() -> None:
    """Guards the test above: the values it compares survive parsing as written."""
    families = meaning(
        fast_body(om.FakeKernelSocket(odd_datapaths()), Format.OPENMETRICS), Format.OPENMETRICS
    )
    _type, _help, samples = families["ovs_vport_receive_packets"]
    ports = {dict(labels)["port"]: value for _name, labels, value in samples}
    assert ports['tap"1\\2'] == float(U64_MAX)
    assert "eth-ünïcødé-端口" in ports and "new\nline" in ports and "no-stats" not in ports
    info = {dict(labels)["port"]: dict(labels) for _n, labels, _v in families["ovs_vport"][2]}
    assert info["future0"]["vport_type"] == "9"
    assert info["veth-netns-neg"]["netnsid"] == "-1"
    assert "ifindex" not in info["pre-4.16"]
    upcall_ports = {dict(labels)["port"] for _n, labels, _v in families["ovs_vport_upcalls"][2]}
    assert "tap0" not in upcall_ports  # from the 6.1 datapath: not reported, not zero


def get_all(port: int, fmt: Format, clients: int) -> list[tuple[http.client.HTTPResponse, bytes]]:
    """``clients`` scrapes sent at the same moment, as Prometheus sends them."""
    accept = PROMETHEUS_ACCEPT if fmt is Format.OPENMETRICS else "text/plain;version=0.0.4"
    barrier = threading.Barrier(clients)
    answers: list[tuple[http.client.HTTPResponse, bytes]] = []

    def get() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        barrier.wait()
        conn.request("GET", "/metrics", headers={"Accept": accept, "Accept-Encoding": "gzip"})
        response = conn.getresponse()
        answers.append((response, response.read()))
        conn.close()

    threads = [threading.Thread(target=get) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


@pytest.mark.parametrize("clients", [1, 4])
@pytest.mark.parametrize("fmt", list(Format), ids=lambda f: f.name.lower())
def test_served_body_through_http_and_gzip_means_the_same(
    fmt: Format, clients: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end through the real server, alone and with concurrent scrapes, with bodies
    large enough to be deflated in many batches."""
    monkeypatch.setattr(web, "GZIP_BATCH", 4096)
    datapaths = random_datapaths(7, 100)
    collector = Collector(
        KernelSource(lambda: om.FakeKernelSocket(datapaths)), Filters(), VERSION, fixed_clock
    )
    server = MetricsServer("127.0.0.1", 0, "/metrics", collector, VERSION)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        answers = get_all(server.port, fmt, clients)
    finally:
        server.shutdown()
        server.server_close()
    assert len(answers) == clients
    reference = None
    for response, raw in answers:
        assert response.status == 200 and response.getheader("Content-Encoding") == "gzip"
        body = gzip.decompress(raw).decode("utf-8")
        assert len(body) > web.GZIP_BATCH
        if reference is None:
            reference = reference_body(om.FakeKernelSocket(datapaths), fmt, help_texts(body, fmt))
        assert_same_meaning(body, reference, fmt)


@pytest.mark.parametrize("size", [0, 1, 1000, (1 << 20) - 1, 1 << 20, (3 << 20) + 1])
@pytest.mark.parametrize("pieces", [1, 2, 11, 40])
def test_gzip_compress_is_one_gzip_member_of_the_chunks(size: int, pieces: int) -> None:
    rng = random.Random(size * pieces)
    body = rng.randbytes(size // 2) + b"ovs_vport_receive_packets_total 1\n" * (size // 68)
    cuts = sorted(rng.randrange(len(body) + 1) for _ in range(pieces - 1))
    chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    compressed = gzip_compress(chunks)
    # One member: a reader that stops after the first member gets everything.
    decompressor = zlib.decompressobj(31)
    assert decompressor.decompress(compressed) == body
    assert decompressor.eof and not decompressor.unused_data


# --- tests: decoders ------------------------------------------------------------------------------


def fast_records(sock: Any) -> list[tuple[Datapath, list[Vport]]]:
    return [(d.datapath, d.vports) for d in KernelSource(lambda: sock).collect()]


def reference_records(sock: Any) -> list[tuple[Datapath, list[Vport]]]:
    return [(d.datapath, d.vports) for d in ReferenceSource(sock).collect()]


@pytest.mark.parametrize("snapshot", list(SNAPSHOTS))
def test_fast_decoder_matches_pyroute2_reference(snapshot: str) -> None:
    datapaths = SNAPSHOTS[snapshot]()
    assert fast_records(om.FakeKernelSocket(datapaths)) == reference_records(om.FakeKernelSocket(datapaths))


def shuffled_vport_message(rng: random.Random, dp_ifindex: int, vport: om.FakeVport) -> bytes:
    """A vport message whose attributes come in a random order, some with PAD between them."""
    attrs = list(iter_attrs(om.vport_attrs(vport)))
    rng.shuffle(attrs)
    if rng.random() < 0.5:
        attrs.insert(rng.randrange(len(attrs) + 1), om.nla(7, b"\0" * 4))  # OVS_VPORT_ATTR_PAD
    payload = om.genl_ovs(1, OVS_VPORT_VERSION, dp_ifindex, b"".join(attrs))
    return om.nlmsg(om.VPORT_FAMILY_ID, om.NLM_F_MULTI, 0, payload)


def iter_attrs(attrs: bytes) -> Iterator[bytes]:
    pos = 0
    while pos < len(attrs):
        length = struct.unpack_from("=H", attrs, pos)[0]
        padded = (length + 3) & ~3
        yield attrs[pos : pos + padded]
        pos += padded


def test_fast_decoder_matches_reference_in_any_attribute_order() -> None:
    """The fast path reads the kernel's usual order; any other order must give the same records."""
    rng = random.Random(16)
    datapaths = random_datapaths(16, 200)
    overrides = {
        dp.dp_ifindex: om.dump_reply(0, [shuffled_vport_message(rng, dp.dp_ifindex, v) for v in dp.vports])
        for dp in datapaths
    }
    fast = fast_records(om.FakeKernelSocket(datapaths, vport_dump_override=overrides))
    reference = reference_records(om.FakeKernelSocket(datapaths, vport_dump_override=overrides))
    assert fast == reference
    assert sum(len(vports) for _dp, vports in fast) == 600


def raw_name_vport(dp_ifindex: int, port_no: int, name: bytes) -> bytes:
    attrs = (
        om.nla(OVS_VPORT_ATTR_PORT_NO, struct.pack("=I", port_no))
        + om.nla(OVS_VPORT_ATTR_TYPE, struct.pack("=I", 1))
        + om.nla(OVS_VPORT_ATTR_NAME, name + b"\0")
        + om.nla(OVS_VPORT_ATTR_IFINDEX, struct.pack("=I", 9))
        + om.nla(OVS_VPORT_ATTR_STATS, struct.pack("=8Q", *range(8)))
    )
    payload = om.genl_ovs(1, OVS_VPORT_VERSION, dp_ifindex, attrs)
    return om.nlmsg(om.VPORT_FAMILY_ID, om.NLM_F_MULTI, 0, payload)


@pytest.mark.parametrize("fmt", list(Format), ids=lambda f: f.name.lower())
def test_names_that_are_not_utf8_mean_the_same(fmt: Format) -> None:
    """Kernel names are bytes; both paths show invalid UTF-8 backslash-escaped, then escape that."""
    datapaths = [om.FakeDatapath("dp0", 3)]
    names = [b"ok", b"bad\xff\xfe", b"half\xe2\x82", b"\xc3\xa9t\xc3\xa9"]
    override = {3: om.dump_reply(0, [raw_name_vport(3, i, name) for i, name in enumerate(names)])}
    fast_sock = om.FakeKernelSocket(datapaths, vport_dump_override=override)
    reference_sock = om.FakeKernelSocket(datapaths, vport_dump_override=override)
    assert fast_records(fast_sock) == reference_records(reference_sock)
    fast = fast_body(om.FakeKernelSocket(datapaths, vport_dump_override=override), fmt)
    reference = reference_body(
        om.FakeKernelSocket(datapaths, vport_dump_override=override), fmt, help_texts(fast, fmt)
    )
    assert_same_meaning(fast, reference, fmt)


class ReplaySocket:
    """A kernel socket answering dumps with datagrams captured from a real kernel.

    The captured messages keep the kernel's family ids (from ``expected.json``); only
    their sequence number is rewritten to the request's.
    """

    def __init__(self, families: dict[str, int], datapaths: list[bytes], vports: dict[int, list[bytes]]):
        self.families, self.datapaths, self.vports = families, datapaths, vports
        self.pending: list[bytes] = []

    def family_id(self, name: str) -> int:
        return self.families[name]

    def send(self, data: bytes) -> None:
        _length, family, _flags, seq, _pid = struct.unpack_from("=IHHII", data)
        dp_ifindex = struct.unpack_from("=i", data, 20)[0]
        if family == self.families[OVS_DATAPATH_FAMILY]:
            datagrams = self.datapaths
        else:
            datagrams = self.vports[dp_ifindex]
        self.pending = [with_seq(d, seq) for d in datagrams]

    def recv(self) -> bytes:
        return self.pending.pop(0)

    def close(self) -> None:
        pass


def with_seq(datagram: bytes, seq: int) -> bytes:
    buf = bytearray(datagram)
    for message in iter_messages(datagram):
        struct.pack_into("=I", buf, message.start + 8, seq)
    return bytes(buf)


def split_datagrams(raw: bytes, sizes: list[int]) -> list[bytes]:
    assert sum(sizes) == len(raw)
    offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    return [raw[offsets[i] : offsets[i + 1]] for i in range(len(sizes))]


def capture_dirs() -> list[Path]:
    return sorted(p.parent for p in FIXTURES.glob("*/expected.json"))


def replay_socket(capture: Path) -> ReplaySocket:
    expected = json.loads((capture / "expected.json").read_text())
    sizes = expected["datagram_sizes"]
    files = expected["files"]
    datapaths = split_datagrams((capture / files["datapaths"]).read_bytes(), sizes[files["datapaths"]])
    dp_family = expected["families"][OVS_DATAPATH_FAMILY]
    dp_ifindex = {
        dp.name: dp.dp_ifindex
        for d in datapaths
        for m in iter_messages(d)
        if m.type == dp_family
        for dp in [decode_datapath(d, m)]
    }
    vports = {
        dp_ifindex[name]: split_datagrams((capture / fname).read_bytes(), sizes[fname])
        for name, fname in files["vports"].items()
    }
    return ReplaySocket(expected["families"], datapaths, vports)


@pytest.mark.skipif(not capture_dirs(), reason="no captured real-kernel dumps in tests/fixtures/kernel")
@pytest.mark.parametrize("capture", capture_dirs(), ids=lambda p: p.name)
def test_fast_decoder_matches_reference_on_real_kernel_captures(capture: Path) -> None:
    fast = fast_records(replay_socket(capture))
    assert fast == reference_records(replay_socket(capture))
    assert fast and all(vports for _dp, vports in fast)


@pytest.mark.skipif(not capture_dirs(), reason="no captured real-kernel dumps in tests/fixtures/kernel")
@pytest.mark.parametrize("fmt", list(Format), ids=lambda f: f.name.lower())
@pytest.mark.parametrize("capture", capture_dirs(), ids=lambda p: p.name)
def test_exposition_of_real_kernel_captures_means_the_same(capture: Path, fmt: Format) -> None:
    fast = fast_body(replay_socket(capture), fmt)
    assert_same_meaning(fast, reference_body(replay_socket(capture), fmt, help_texts(fast, fmt)), fmt)


@pytest.mark.skipif(not capture_dirs(), reason="no captured real-kernel dumps in tests/fixtures/kernel")
@pytest.mark.parametrize("capture", capture_dirs(), ids=lambda p: p.name)
def test_real_kernel_vports_take_the_fast_path(capture: Path) -> None:
    """The decoder's fast path is written for the kernel's own layout: every captured vport
    without a NETNSID (which the kernel puts before STATS) must take it, or the speed measured
    in docs/performance.md does not apply to real kernels."""
    sock = replay_socket(capture)
    fast = general = 0
    for datagrams in sock.vports.values():
        for datagram in datagrams:
            for message in iter_messages(datagram):
                if message.type != sock.families[OVS_VPORT_FAMILY]:
                    continue
                has_netnsid = decode_vport(datagram, message).netnsid is not None
                _dp_ifindex, attrs = ovs_start(datagram, message, "vport")
                usual = _decode_usual_vport_prefix(datagram, attrs, message.end)
                assert (usual is None) == has_netnsid
                fast += usual is not None
                general += usual is None
    assert fast > general
