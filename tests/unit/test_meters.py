"""The meter source against a fake kernel behind the real GenlSocket: the probe, what a round
costs, what a scrape serves, and every way the kernel can fail it."""

from __future__ import annotations

import logging
import re
import threading
import time

import pytest

from exporter.collector import Collector
from exporter.config import Filters
from exporter.exposition import Format
from exporter.kernel import meters as meters_module
from exporter.kernel.dumps import DatapathDump, KernelSource
from exporter.kernel.families.datapath import Datapath
from exporter.kernel.families.meter import OVS_METER_FAMILY
from exporter.kernel.meters import PROBE_GAP, MeterReading, MeterSource, read_meters
from exporter.kernel.netlink import NLM_F_REQUEST
from exporter.kernel.poller import NamespacePoller
from tests.fake_genl import (
    FAMILY_IDS,
    METER_CMD_FEATURES,
    METER_CMD_GET,
    FakeGenlSocket,
    FakeKernel,
    FakeMeter,
)
from tests.ovs_messages import FakeDatapath, FakeKernelSocket, genl_ovs, nla, nlmsg, nlmsg_error


def kernel_with(*ids: int, dp_ifindex: int = 7) -> FakeKernel:
    meters = {
        i: FakeMeter(i, packets=100 + i, bytes=6400 + i, band_packets=i, band_bytes=64 * i) for i in ids
    }
    return FakeKernel([FakeDatapath("ovs-system", dp_ifindex)], {dp_ifindex: meters})


def read(kernel: FakeKernel, previous: MeterReading | None = None, netns: str | None = None) -> MeterReading:
    return read_meters(FakeGenlSocket(kernel), netns, previous)


def meter_gets(kernel: FakeKernel) -> int:
    return sum(
        1 for family, cmd, *_ in kernel.requests if family == OVS_METER_FAMILY and cmd == METER_CMD_GET
    )


def served(datapath: str = "ovs-system", netns: str | None = None) -> DatapathDump:
    return DatapathDump(Datapath(7, datapath, None, None), [], 0, netns)


def sample(body: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(want)}\}} (\S+)$", body, re.M)
    return None if match is None else float(match[1])


def test_dense_meters_are_found_with_a_gap_of_misses_past_the_last() -> None:
    kernel = kernel_with(*range(5))
    (dp,) = read(kernel).datapaths
    assert [m.meter_id for m in dp.meters] == [0, 1, 2, 3, 4]
    assert dp.meters[3] == (3, 103, 6403, 3, 192)
    assert dp.limit == 200_000 and not dp.truncated
    assert meter_gets(kernel) == 5 + PROBE_GAP


def test_a_hole_shorter_than_the_gap_is_crossed() -> None:
    kernel = kernel_with(0, 1, 2 + PROBE_GAP - 1, 2 + PROBE_GAP)
    (dp,) = read(kernel).datapaths
    assert [m.meter_id for m in dp.meters] == [0, 1, PROBE_GAP + 1, PROBE_GAP + 2]


def test_meters_below_a_wide_hole_are_kept_once_known() -> None:
    """vswitchd frees ids when meters go (a wide hole at the bottom): the ids found in the round
    before are probed again, so the meters above the hole are not lost."""
    kernel = kernel_with(*range(40), 40)
    first = read(kernel)
    for meter_id in range(40):
        del kernel.meters[7][meter_id]
    (dp,) = read(kernel, first).datapaths
    assert [m.meter_id for m in dp.meters] == [40]
    kernel.requests.clear()
    (dp,) = read(kernel, MeterReading((dp,), 0)).datapaths
    assert [m.meter_id for m in dp.meters] == [40]
    assert meter_gets(kernel) == 41 + PROBE_GAP


def test_features_once_per_datapath_and_only_reads_are_sent() -> None:
    kernel = kernel_with(0, 1)
    first = read(kernel)
    read(kernel, first)
    features = [r for r in kernel.requests if r[:2] == (OVS_METER_FAMILY, METER_CMD_FEATURES)]
    assert len(features) == 1, "MAX_METERS is fixed when the datapath is made"
    for family, cmd, flags, _dp in kernel.requests:
        if family == OVS_METER_FAMILY:
            assert cmd in (METER_CMD_GET, METER_CMD_FEATURES) and flags == NLM_F_REQUEST, (cmd, flags)
        else:
            assert (cmd, flags) == (3, 0x301)  # the datapath dump


def test_a_round_asks_for_at_most_max_probes_ids(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(meters_module, "MAX_PROBES", 50)
    kernel = kernel_with(*range(80))
    (dp,) = read(kernel).datapaths
    assert len(dp.meters) == 50 and dp.truncated
    assert meter_gets(kernel) == 50
    assert len([r for r in caplog.records if "not read" in r.getMessage()]) == 1
    read(kernel, MeterReading((dp,), 0))
    assert len([r for r in caplog.records if "not read" in r.getMessage()]) == 1, "logged once"


def test_a_datapath_deleted_during_the_round_is_skipped() -> None:
    kernel = FakeKernel([FakeDatapath("dp-a", 7), FakeDatapath("dp-b", 8)], {8: {0: FakeMeter(0, 5)}})

    def gone(family: str, cmd: int, dp_ifindex: int, attrs: bytes, seq: int) -> list[bytes] | None:
        return [nlmsg_error(seq, 19)] if family == OVS_METER_FAMILY and dp_ifindex == 7 else None  # ENODEV

    kernel.override = gone
    reading = read(kernel)
    assert [(d.datapath, len(d.meters)) for d in reading.datapaths] == [("dp-b", 1)]


def test_report_serves_the_datapaths_of_this_scrape_with_their_meters() -> None:
    kernel = FakeKernel(
        [FakeDatapath("ovs-system", 7), FakeDatapath("excluded", 8)],
        {
            7: {0: FakeMeter(0, 10, 640, 4, 256), 1: FakeMeter(1, 3, 192, 0, 0)},
            8: {0: FakeMeter(0, 1, 1, 1, 1)},
        },
        max_meters=1024,
    )
    source = MeterSource(lambda netns: FakeGenlSocket(kernel), interval=60)
    source.poller.poll()
    report = source.report(Format.TEXT, [served("ovs-system")])
    body = "".join(report.chunks)
    dp = {"datapath": "ovs-system"}
    assert sample(body, "ovs_datapath_meter_packets_total", **dp, meter="0") == 10
    assert sample(body, "ovs_datapath_meter_bytes_total", **dp, meter="0") == 640
    assert sample(body, "ovs_datapath_meter_dropped_packets_total", **dp, meter="0") == 4
    assert sample(body, "ovs_datapath_meter_dropped_bytes_total", **dp, meter="0") == 256
    assert sample(body, "ovs_datapath_meter_dropped_packets_total", **dp, meter="1") == 0
    assert sample(body, "ovs_datapath_meters", **dp) == 2
    assert sample(body, "ovs_datapath_meters_limit", **dp) == 1024
    assert 'datapath="excluded"' not in body, "only datapaths the scrape serves (filters, deletions)"
    assert "# TYPE ovs_datapath_meter_packets_total counter\n" in body
    assert [(h.collector, h.netns, h.success) for h in report.health] == [("meters", None, True)]
    om = "".join(source.report(Format.OPENMETRICS, [served("ovs-system")]).chunks)
    assert "# TYPE ovs_datapath_meter_packets counter\n" in om


def test_namespaces_are_read_with_their_own_socket_and_label() -> None:
    kernels = {None: kernel_with(0), "blue": kernel_with(0, 1)}
    source = MeterSource(
        lambda netns: FakeGenlSocket(kernels[netns]), interval=60, namespaces=lambda: ["blue"]
    )
    source.poller.poll()
    report = source.report(Format.TEXT, [served(), served(netns="blue")])
    body = "".join(report.chunks)
    assert sample(body, "ovs_datapath_meters", datapath="ovs-system") == 1
    assert sample(body, "ovs_datapath_meters", netns="blue", datapath="ovs-system") == 2
    assert (
        sample(body, "ovs_datapath_meter_packets_total", netns="blue", datapath="ovs-system", meter="1")
        == 101
    )
    assert [(h.netns, h.success) for h in report.health] == [(None, True), ("blue", True)]


def test_a_kernel_without_the_meter_family_is_health_0_and_nothing_else(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A module built without meters (or a kernel before 4.15): the scrape and the other sources
    carry on; the reader logs once and keeps trying."""
    kernel = kernel_with(0)
    kernel.families.discard(OVS_METER_FAMILY)
    events_like = FakeKernelSocket([FakeDatapath("ovs-system", 7)])
    source = MeterSource(lambda netns: FakeGenlSocket(kernel), interval=60)
    for _ in range(3):
        source.poller.poll()
    collector = Collector(KernelSource(lambda: events_like), Filters(), "1", snapshot_sources=[source])
    body = collector.scrape(Format.TEXT)
    assert sample(body, "ovs_scrape_collector_success", collector="meters") == 0
    assert sample(body, "ovs_scrape_collector_success", collector="kernel") == 1
    assert "ovs_up 1\n" in body and "ovs_datapath_meter" not in body
    assert len([r for r in caplog.records if "ovs_meter generic netlink family" in r.getMessage()]) == 1
    kernel.families.add(OVS_METER_FAMILY)  # the module comes back (reloaded with meters)
    source.poller.poll()
    body = collector.scrape(Format.TEXT)
    assert sample(body, "ovs_scrape_collector_success", collector="meters") == 1
    assert sample(body, "ovs_datapath_meters", datapath="ovs-system") == 1


def test_a_malformed_reply_fails_the_round_and_serves_nothing_stale(caplog: pytest.LogCaptureFixture) -> None:
    kernel = kernel_with(0, 1)
    sockets: list[FakeGenlSocket] = []

    def opener(netns: str | None) -> FakeGenlSocket:
        sockets.append(FakeGenlSocket(kernel))
        return sockets[-1]

    source = MeterSource(opener, interval=60)
    source.poller.poll()
    assert (
        sample(
            "".join(source.report(Format.TEXT, [served()]).chunks),
            "ovs_datapath_meters",
            datapath="ovs-system",
        )
        == 2
    )

    def short_stats(family: str, cmd: int, dp_ifindex: int, attrs: bytes, seq: int) -> list[bytes] | None:
        if (family, cmd) != (OVS_METER_FAMILY, METER_CMD_GET):
            return None
        payload = genl_ovs(METER_CMD_GET, 1, dp_ifindex, nla(1, b"\0\0\0\0") + nla(3, b"\1" * 12))
        return [nlmsg(FAMILY_IDS[OVS_METER_FAMILY], 0, seq, payload)]

    kernel.override = short_stats
    source.poller.poll()
    report = source.report(Format.TEXT, [served()])
    assert report.chunks == [] and [h.success for h in report.health] == [False]
    assert any(
        "meter STATS attribute 3" in r.getMessage() and "want 16 bytes" in r.getMessage()
        for r in caplog.records
    )
    assert sockets[0].closed and len(sockets) == 1, "the socket is replaced at the next round"
    kernel.override = None
    source.poller.poll()
    assert len(sockets) == 2 and source.report(Format.TEXT, [served()]).health[0].success


def test_before_the_first_round_the_source_is_unhealthy_and_serves_nothing() -> None:
    source = MeterSource(lambda netns: FakeGenlSocket(kernel_with(0)), interval=60)
    report = source.report(Format.TEXT, [served()])
    assert report.chunks == [] and [(h.netns, h.success) for h in report.health] == [(None, False)]


def test_close_stops_a_round_within_one_request() -> None:
    """A round of thousands of GETs ends at its next request once close() is called."""
    kernel = kernel_with(*range(5000))
    started = threading.Event()
    release = threading.Event()

    class Slow(FakeGenlSocket):
        def send(self, data: bytes) -> None:
            started.set()
            release.wait(5)
            super().send(data)

    poller: NamespacePoller[MeterReading] = NamespacePoller(
        what="meter reader", read=read_meters, opener=lambda netns: Slow(kernel), interval=60
    )
    poller.start()
    assert started.wait(5)
    closing = threading.Thread(target=poller.close)
    closing.start()
    time.sleep(0.05)
    release.set()
    closing.join(5)
    assert not closing.is_alive()
    assert meter_gets(kernel) < 10


def test_the_thread_reads_at_its_interval_and_a_scrape_never_waits() -> None:
    kernel = kernel_with(0)
    source = MeterSource(lambda netns: FakeGenlSocket(kernel), interval=1)
    source.start()
    try:
        deadline = time.monotonic() + 10
        while source.poller.reads < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert source.poller.reads >= 2
        kernel.meters[7][1] = FakeMeter(1, 9)
        while source.poller.reads < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        body = "".join(source.report(Format.TEXT, [served()]).chunks)
        assert sample(body, "ovs_datapath_meters", datapath="ovs-system") == 2
    finally:
        source.close()


def test_a_meter_without_bands_dropped_nothing_and_counters_absent_are_left_out() -> None:
    kernel = FakeKernel([FakeDatapath("ovs-system", 7)], {7: {0: FakeMeter(0, 3, bands=0)}})
    (dp,) = read(kernel).datapaths
    assert dp.meters[0].dropped_packets == 0


@pytest.mark.parametrize("level", [logging.WARNING])
def test_a_namespace_that_cannot_be_opened_is_reported_alone(
    level: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(level)

    def opener(netns: str | None) -> FakeGenlSocket:
        if netns == "locked":
            raise PermissionError(1, "Operation not permitted")
        return FakeGenlSocket(kernel_with(0))

    source = MeterSource(opener, interval=60, namespaces=lambda: ["locked"])
    source.poller.poll()
    source.poller.poll()
    report = source.report(Format.TEXT, [served()])
    assert [(h.netns, h.success) for h in report.health] == [(None, True), ("locked", False)]
    assert len([r for r in caplog.records if "locked" in r.getMessage()]) == 1
