"""The collector against a fake source: values, health, filters, and failures that never raise."""

from __future__ import annotations

import dataclasses
import errno
import gc
import logging
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter import config
from exporter.collector import Collector
from exporter.config import Filters, NameFilter
from exporter.exposition import Format
from exporter.kernel.dump_metrics import (
    VPORT_COUNTERS,
    VPORT_INFO,
    VPORT_METRIC_GROUPS,
    VPORT_UPCALL_HANDLERS,
)
from exporter.kernel.dumps import DatapathDump, KernelSource
from exporter.kernel.genl import FamilyNotFoundError
from exporter.kernel.netlink import DecodeError, NetlinkError
from tests.ovs_messages import FakeDatapath, FakeKernelSocket, FakeVport


class ListSource:
    """Returns the next item per collect(): a dump list, or an exception to raise."""

    def __init__(self, *results: list[DatapathDump] | BaseException) -> None:
        self.results = list(results)

    def collect(self) -> list[DatapathDump]:
        result = self.results.pop(0)
        if isinstance(result, BaseException):
            raise result
        return result


def kernel(*datapaths: FakeDatapath) -> list[DatapathDump]:
    sock = FakeKernelSocket(datapaths)
    return KernelSource(lambda: sock).collect()


def samples(body: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"duplicate series {key}"
            out[key] = s.value
    return out


def value(body: str, name: str, **labels: str) -> float | None:
    return samples(body).get((name, frozenset(labels.items())))


def sample_dp() -> FakeDatapath:
    return FakeDatapath(
        "dp0",
        10,
        stats=(100, 7, 3, 12),
        megaflow=(250, 4, 90),
        vports=[
            FakeVport(0, "dp0", type=2, ifindex=10, stats=(1, 2, 3, 4, 5, 6, 7, 8), upcall=(9, 1)),
            FakeVport(
                1, "veth0", type=1, ifindex=20, netnsid=0, stats=(10, 20, 30, 40, 0, 0, 2, 0), upcall=(5, 0)
            ),
            FakeVport(2, "vx0", type=4, ifindex=21, dst_port=4789, upcall=(0, 0)),
        ],
    )


def test_every_vport_and_datapath_metric() -> None:
    body = Collector(ListSource(kernel(sample_dp())), Filters(), "1.2.3").scrape(Format.TEXT)
    assert value(body, "ovs_up") == 1
    veth = {"datapath": "dp0", "port": "veth0"}
    expected = {
        "ovs_vport_receive_packets_total": 10,
        "ovs_vport_transmit_packets_total": 20,
        "ovs_vport_receive_bytes_total": 30,
        "ovs_vport_transmit_bytes_total": 40,
        "ovs_vport_receive_errors_total": 0,
        "ovs_vport_transmit_errors_total": 0,
        "ovs_vport_receive_dropped_total": 2,
        "ovs_vport_transmit_dropped_total": 0,
        "ovs_vport_upcalls_total": 5,
        "ovs_vport_upcall_failures_total": 0,
    }
    for name, want in expected.items():
        assert value(body, name, **veth) == want, name
    assert value(body, "ovs_vport_upcalls_total", datapath="dp0", port="dp0") == 10  # success + fail
    assert (
        value(
            body,
            "ovs_vport_info",
            datapath="dp0",
            port="veth0",
            port_no="1",
            vport_type="netdev",
            ifindex="20",
            netnsid="0",
        )
        == 1
    )
    assert (
        value(
            body,
            "ovs_vport_info",
            datapath="dp0",
            port="vx0",
            port_no="2",
            vport_type="vxlan",
            ifindex="21",
            dst_port="4789",
        )
        == 1
    )
    dp = {"datapath": "dp0"}
    assert value(body, "ovs_datapath_lookup_hits_total", **dp) == 100
    assert value(body, "ovs_datapath_lookup_misses_total", **dp) == 7
    assert value(body, "ovs_datapath_lookup_lost_total", **dp) == 3
    assert value(body, "ovs_datapath_flows", **dp) == 12
    assert value(body, "ovs_datapath_masks", **dp) == 4
    assert value(body, "ovs_datapath_mask_hits_total", **dp) == 250
    assert value(body, "ovs_datapath_mask_cache_hits_total", **dp) == 90
    assert value(body, "ovs_datapath_vports", **dp) == 3
    assert value(body, "ovs_exporter_build_info", version="1.2.3") == 1
    assert value(body, "ovs_scrape_errors_total") == 0
    assert value(body, "process_open_fds") is not None
    assert not re.search(r"^ovs_\S+ \S+ \d+$", body, re.M), "no timestamps"


def test_upcall_metrics_absent_when_kernel_does_not_report_them() -> None:
    dp = FakeDatapath("dp0", 10, megaflow=None, vports=[FakeVport(1, "veth0", ifindex=3)])
    body = Collector(ListSource(kernel(dp)), Filters(), "1").scrape(Format.TEXT)
    assert "ovs_vport_upcalls" not in body and "ovs_vport_upcall_failures" not in body
    assert "ovs_datapath_masks{" not in body and "ovs_datapath_mask_hits" not in body
    assert value(body, "ovs_vport_receive_packets_total", datapath="dp0", port="veth0") == 0


def test_gone_port_is_gone_from_the_next_scrape() -> None:
    first = sample_dp()
    second = sample_dp()
    second.vports.pop(1)
    collector = Collector(ListSource(kernel(first), kernel(second)), Filters(), "1")
    assert (
        value(collector.scrape(Format.TEXT), "ovs_vport_receive_packets_total", datapath="dp0", port="veth0")
        == 10
    )
    body = collector.scrape(Format.TEXT)
    assert 'port="veth0"' not in body
    assert value(body, "ovs_datapath_vports", datapath="dp0") == 2


@pytest.mark.parametrize(
    ("error", "logged"),
    [
        (FamilyNotFoundError("ovs_datapath"), "is the openvswitch kernel module loaded"),
        (NetlinkError(errno.EPERM, "dump failed"), "errno 1 EPERM"),
        (
            DecodeError("vport STATS attribute 6 at offset 40: want 64 bytes, got 8"),
            "malformed netlink reply",
        ),
        (TimeoutError("timed out"), "timed out"),
        (RuntimeError("a bug"), "RuntimeError: a bug"),
    ],
)
def test_failures_give_up_zero_and_count_and_log_once(
    error: BaseException, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    collector = Collector(ListSource(kernel(sample_dp()), error, error, kernel(sample_dp())), Filters(), "1")
    collector.scrape(Format.TEXT)
    with caplog.at_level(logging.INFO, logger="exporter.collector"):
        failed = collector.scrape(Format.TEXT)
        again = collector.scrape(Format.OPENMETRICS)
        recovered = collector.scrape(Format.TEXT)
    assert value(failed, "ovs_up") == 0 and "ovs_vport_" not in failed and "ovs_datapath_" not in failed
    assert value(failed, "ovs_scrape_errors_total") == 1
    assert "ovs_up 0" in again and "ovs_scrape_errors_total 2" in again
    assert value(recovered, "ovs_up") == 1 and value(recovered, "ovs_scrape_errors_total") == 2
    failures = [r for r in caplog.records if r.getMessage().startswith("scrape failed")]
    assert len(failures) == 1 and logged in failures[0].getMessage()
    assert any(r.getMessage().startswith("scrape succeeded again") for r in caplog.records)


def test_filters_on_datapath_port_and_type() -> None:
    dps = [sample_dp(), FakeDatapath("br-int", 11, vports=[FakeVport(0, "br-int", type=2)])]
    filters = Filters(
        datapath=NameFilter(exclude=re.compile("br-.*")),
        port=NameFilter(include=re.compile("veth.*|vx.*|dp0")),
        vport_type=NameFilter(exclude=re.compile("internal")),
    )
    body = Collector(ListSource(kernel(*dps)), filters, "1").scrape(Format.TEXT)
    ports = {dict(k[1]).get("port") for k in samples(body) if k[0] == "ovs_vport_info"}
    assert ports == {"veth0", "vx0"}
    assert "br-int" not in body
    assert value(body, "ovs_datapath_vports", datapath="dp0") == 3  # counts what the datapath holds


def test_filter_on_device_kind() -> None:
    """Kinds as the source reads them; a vport whose kind was not read is matched as ""."""
    (dump,) = kernel(
        FakeDatapath("ovs-system", 3, vports=[
            FakeVport(0, "ovs-system", type=2, ifindex=3), FakeVport(1, "tap0", ifindex=7),
            FakeVport(2, "genev_sys_6081", ifindex=8), FakeVport(3, "eth1", ifindex=9),
            FakeVport(4, "veth-in-pod", ifindex=4, netnsid=1),
        ])
    )  # fmt: skip
    kinds = {"ovs-system": "openvswitch", "tap0": "tun", "genev_sys_6081": "geneve", "eth1": "none"}
    dumps = [dataclasses.replace(dump, device_kinds=kinds)]

    def served(**rules: NameFilter) -> set[str | None]:
        body = Collector(ListSource(dumps), Filters(**rules), "1").scrape(Format.TEXT)
        return {dict(k[1]).get("port") for k in samples(body) if k[0] == "ovs_vport_info"}

    assert served(device_kind=NameFilter(include=re.compile("tun|veth"))) == {"tap0"}
    assert served(device_kind=NameFilter(exclude=re.compile("geneve|vxlan|openvswitch"))) == {
        "tap0",
        "eth1",
        "veth-in-pod",
    }
    assert served(device_kind=NameFilter(include=re.compile(""))) == {"veth-in-pod"}
    body = Collector(ListSource(dumps), Filters(), "1").scrape(Format.TEXT)
    assert value(body, "ovs_vport_info", datapath="ovs-system", port="eth1", port_no="3", vport_type="netdev",
                 device_kind="none", ifindex="9") == 1  # fmt: skip
    assert value(body, "ovs_vport_info", datapath="ovs-system", port="veth-in-pod", port_no="4",
                 vport_type="netdev", ifindex="4", netnsid="1") == 1  # fmt: skip


def test_label_values_are_escaped() -> None:
    dp = FakeDatapath('d"p\\0', 10, vports=[FakeVport(1, 'we"ird\\name', ifindex=4)])
    body = Collector(ListSource(kernel(dp)), Filters(), "1").scrape(Format.TEXT)
    assert value(body, "ovs_vport_receive_packets_total", datapath='d"p\\0', port='we"ird\\name') == 0


def test_openmetrics_body_ends_with_one_eof() -> None:
    body = Collector(ListSource(kernel(sample_dp())), Filters(), "1").scrape(Format.OPENMETRICS)
    assert body.endswith("# EOF\n") and body.count("# EOF") == 1
    assert "# TYPE ovs_vport_receive_packets counter" in body
    assert "# TYPE ovs_vport info" in body


def test_named_namespaces_carry_a_netns_label_and_their_own_health() -> None:
    from exporter.kernel.dumps import NamespaceSources

    def open_in(name: str, timeout: float) -> FakeKernelSocket:
        if name == "broken":
            sock = FakeKernelSocket([])
            sock.families = {}
            return sock
        return FakeKernelSocket([FakeDatapath("br-int", 7, vports=[FakeVport(1, "tap0", ifindex=5)])])

    namespaces = NamespaceSources(
        ["red", "broken"], False, 1.0, open_in, lambda: [], lambda name: (0, hash(name))
    )
    collector = Collector(ListSource(kernel(sample_dp())), Filters(), "1", namespaces=namespaces)
    body = collector.scrape(Format.TEXT)
    assert value(body, "ovs_vport_receive_packets_total", netns="red", datapath="br-int", port="tap0") == 0
    assert value(body, "ovs_datapath_vports", netns="red", datapath="br-int") == 1
    assert value(body, "ovs_vport_receive_packets_total", datapath="dp0", port="veth0") == 10
    assert value(body, "ovs_netns_up", netns="red") == 1
    assert value(body, "ovs_netns_up", netns="broken") == 0
    assert value(body, "ovs_up") == 1


def test_vport_metric_groups_choose_the_families_served() -> None:
    dumps = kernel(sample_dp())
    body = Collector(ListSource(dumps), Filters(), "1", vport_metrics=("bytes", "info")).scrape(Format.TEXT)
    names = {name for name, _ in samples(body) if name.startswith("ovs_vport")}
    assert names == {"ovs_vport_receive_bytes_total", "ovs_vport_transmit_bytes_total", "ovs_vport_info"}
    # The datapath families and the exporter's health stay.
    assert value(body, "ovs_datapath_vports", datapath="dp0") == 3
    assert value(body, "ovs_up") == 1

    none = Collector(ListSource(dumps), Filters(), "1", vport_metrics=()).scrape(Format.OPENMETRICS)
    assert "ovs_vport" not in none
    assert 'ovs_datapath_lookup_hits_total{datapath="dp0"} 100' in none


def test_every_vport_family_is_in_exactly_one_group() -> None:
    assert tuple(VPORT_METRIC_GROUPS) == config.VPORT_METRIC_GROUPS
    families = [name for group in VPORT_METRIC_GROUPS.values() for name in group]
    assert sorted(families) == sorted(
        [c.name for c in VPORT_COUNTERS] + [VPORT_INFO[0], VPORT_UPCALL_HANDLERS[0]]
    )


def test_every_source_reports_the_same_health_families() -> None:
    """The kernel (own and named namespaces) and snapshot sources: success and duration per collector."""
    from exporter.kernel.dumps import NamespaceSources
    from exporter.records import Health, SourceReport

    class Snapshot:
        def __init__(self) -> None:
            self.seen: list[list[str]] = []

        def report(self, fmt: Format, dumps: object) -> SourceReport:
            self.seen.append([d.datapath.name for d in dumps])  # type: ignore[attr-defined]
            return SourceReport(
                ["# HELP ovs_test_info t\n# TYPE ovs_test_info gauge\novs_test_info 1\n"],
                [Health("ovsdb", None, False, 0.25)],
            )

        def close(self) -> None:
            pass

    def open_in(name: str, timeout: float) -> FakeKernelSocket:
        sock = FakeKernelSocket([])
        sock.families = {}  # the module is missing there
        return sock

    ticks = iter(range(100))
    snapshot = Snapshot()
    collector = Collector(
        ListSource(kernel(sample_dp())),
        Filters(),
        "1",
        clock=lambda: float(next(ticks)),
        namespaces=NamespaceSources(["broken"], False, 1.0, open_in, lambda: [], lambda n: (0, 1)),
        snapshot_sources=[snapshot],
    )
    body = collector.scrape(Format.TEXT)
    assert value(body, "ovs_scrape_collector_success", collector="kernel") == 1
    assert value(body, "ovs_scrape_collector_duration_seconds", collector="kernel") == 1.0
    assert value(body, "ovs_scrape_collector_success", collector="kernel", netns="broken") == 0
    assert value(body, "ovs_scrape_collector_success", collector="ovsdb") == 0
    assert value(body, "ovs_scrape_collector_duration_seconds", collector="ovsdb") == 0.25
    assert value(body, "ovs_test_info") == 1
    assert value(body, "ovs_up") == 1
    assert snapshot.seen == [["dp0"]], "a snapshot source sees this scrape's (filtered) kernel state"


def test_a_failed_kernel_read_is_a_failed_kernel_collector() -> None:
    collector = Collector(ListSource(OSError(errno.EPERM, "nope")), Filters(), "1")
    body = collector.scrape(Format.TEXT)
    assert value(body, "ovs_up") == 0
    assert value(body, "ovs_scrape_collector_success", collector="kernel") == 0


class GcWatchingSource:
    """Notes whether Python's cyclic collector is enabled while the kernel is read."""

    def __init__(self, result: list[DatapathDump] | BaseException) -> None:
        self.result = result
        self.enabled_during: list[bool] = []

    def collect(self) -> list[DatapathDump]:
        self.enabled_during.append(gc.isenabled())
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


@pytest.mark.parametrize(
    "result", [kernel(sample_dp()), OSError(errno.EIO, "I/O error")], ids=["ok", "failed"]
)
def test_cyclic_gc_is_paused_during_a_scrape_and_resumed_after(
    result: list[DatapathDump] | BaseException,
) -> None:
    source = GcWatchingSource(result)
    collector = Collector(source, Filters(), "1")
    assert gc.isenabled()
    collector.scrape(Format.TEXT)
    collector.scrape(Format.OPENMETRICS)
    assert source.enabled_during == [False, False]
    assert gc.isenabled()


def test_a_cyclic_gc_disabled_before_the_scrape_stays_disabled() -> None:
    source = GcWatchingSource(kernel(sample_dp()))
    gc.disable()
    try:
        Collector(source, Filters(), "1").scrape(Format.TEXT)
        assert source.enabled_during == [False]
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_render_that_raises_resumes_the_cyclic_gc(monkeypatch: pytest.MonkeyPatch) -> None:
    collector = Collector(GcWatchingSource(kernel(sample_dp())), Filters(), "1")

    def broken(*args: object) -> None:
        raise RuntimeError("a bug in the renderer")

    monkeypatch.setattr(collector._renderer, "render_into", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        collector.scrape(Format.TEXT)
    assert gc.isenabled()
