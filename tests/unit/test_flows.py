"""The flow table collector's serving side: reports in, exposition out, joined onto a scrape's vports;
counters that only grow; what is served while dumps fail; the worker process started, restarted
and stopped (a fake process, and the real worker on this host)."""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.collector import Collector
from exporter.config import Filters, NameFilter
from exporter.exposition import Format
from exporter.kernel.dumps import DatapathDump, KernelSource
from exporter.kernel.families.datapath import Datapath
from exporter.kernel.families.vport import Vport
from exporter.kernel.flow_worker import WorkerConfig
from exporter.kernel.flows import FlowSource
from tests.ovs_messages import FakeDatapath, FakeKernelSocket, FakeVport

CONFIG = WorkerConfig(interval=5, max_flows=1000, max_seconds=10, netlink_timeout=5)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def vport(port_no: int, name: str) -> Vport:
    return Vport(5, port_no, 1, name, None, None, None, None, None)


def dump(
    *ports: tuple[int, str], name: str = "ovs-system", ifindex: int = 5, netns: str | None = None
) -> DatapathDump:
    return DatapathDump(
        Datapath(ifindex, name, None, None), [vport(p, n) for p, n in ports], len(ports), netns
    )


PORTS = ((0, "ovs-system"), (3, "tap-a"), (4, "tap-b"))


def complete(
    drops: list[tuple[int, str, str, int, int]] = (),  # type: ignore[assignment]
    port_flows: list[tuple[int, int]] = ((3, 7), (4, 2)),  # type: ignore[assignment]
    ports: tuple[tuple[int, str], ...] = PORTS,
    netns: str | None = None,
    ifindex: int = 5,
    flows: int = 12,
) -> dict[str, Any]:
    return {
        "netns": netns,
        "error": None,
        "datapaths": [
            {
                "datapath": "ovs-system",
                "dp_ifindex": ifindex,
                "result": "complete",
                "error": None,
                "ports": [list(p) for p in ports],
                "started": 1000.0,
                "duration": 0.25,
                "flows": flows,
                "duplicates": 0,
                "port_flows": [list(p) for p in port_flows],
                "drops": [list(d) for d in drops],
            }
        ],
        "rss_bytes": 20 << 20,
        "peak_rss_bytes": 30 << 20,
    }


def failed(result: str = "abandoned", ports: tuple[tuple[int, str], ...] = PORTS) -> dict[str, Any]:
    report = complete(ports=ports)
    entry = report["datapaths"][0]
    for key in ("started", "duration", "flows", "duplicates", "port_flows", "drops"):
        del entry[key]
    entry.update(result=result, error="more than 1000 flows (--collector.flows.max-flows)")
    return report


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def source(clock: Clock) -> FlowSource:
    return FlowSource(CONFIG, monotonic=clock)


def body(source: FlowSource, *dumps: DatapathDump, fmt: Format = Format.TEXT) -> str:
    return "".join(source.report(fmt, list(dumps) or [dump(*PORTS)]).chunks)


def value(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(want)}\}} (\S+)$", text, re.M)
    return None if match is None else float(match[1])


def tap_b_dropped(text: str) -> float | None:
    """tap-b's ovs_vport_flow_dropped_packets_total{reason="unspecified"}, the port most tests drop on."""
    return value(
        text,
        "ovs_vport_flow_dropped_packets_total",
        datapath="ovs-system",
        port="tap-b",
        reason="unspecified",
    )


def health(source: FlowSource, netns: str | None = None) -> bool:
    (entry,) = [h for h in source.report(Format.TEXT, []).health if h.netns == netns]
    assert entry.collector == "flows"
    return entry.success


def test_nothing_before_the_first_report_and_health_0(source: FlowSource) -> None:
    text = body(source)
    assert "ovs_vport_flows" not in text and "dropped" not in text
    assert not health(source)
    assert value(text.replace("ovs_flow_worker_restarts_total 0", "x{} 0"), "x") == 0


def test_a_complete_round_serves_gauges_counters_and_the_dump(source: FlowSource) -> None:
    source.apply(complete(drops=[(4, "tap-b", "unspecified", 0, 0), (4, "tap-b", "of_pipeline", 0, 0)]))
    text = body(source)
    assert health(source)
    assert value(text, "ovs_vport_flows", datapath="ovs-system", port="tap-a") == 7
    assert value(text, "ovs_vport_flows", datapath="ovs-system", port="tap-b") == 2
    assert value(text, "ovs_vport_flows", datapath="ovs-system", port="ovs-system") == 0  # every port
    for reason in ("unspecified", "of_pipeline"):
        labels = {"datapath": "ovs-system", "port": "tap-b", "reason": reason}
        assert value(text, "ovs_vport_flow_dropped_packets_total", **labels) == 0
        assert value(text, "ovs_vport_flow_dropped_bytes_total", **labels) == 0
    # A port without drop flows has no drop series: absent, not invented zeros.
    assert (
        value(
            text,
            "ovs_vport_flow_dropped_packets_total",
            datapath="ovs-system",
            port="tap-a",
            reason="unspecified",
        )
        is None
    )
    assert value(text, "ovs_datapath_flow_dump_timestamp_seconds", datapath="ovs-system") == 1000.25
    assert value(text, "ovs_datapath_flow_dump_duration_seconds", datapath="ovs-system") == 0.25
    assert value(text, "ovs_datapath_flow_dump_flows", datapath="ovs-system") == 12
    assert value(text, "ovs_datapath_flow_dumps_abandoned_total", datapath="ovs-system") == 0
    assert "ovs_flow_worker_resident_memory_bytes 20971520" in text
    assert "ovs_flow_worker_peak_resident_memory_bytes 31457280" in text


def test_drop_counters_add_up_and_only_grow(source: FlowSource) -> None:
    source.apply(complete(drops=[(4, "tap-b", "unspecified", 0, 0)]))
    source.apply(complete(drops=[(4, "tap-b", "unspecified", 5, 500)]))
    source.apply(complete(drops=[(4, "tap-b", "unspecified", 3, 300), (3, "tap-a", "congestion", 1, 60)]))
    text = body(source)
    assert tap_b_dropped(text) == 8
    assert (
        value(
            text,
            "ovs_vport_flow_dropped_bytes_total",
            datapath="ovs-system",
            port="tap-b",
            reason="unspecified",
        )
        == 800
    )
    assert (
        value(
            text,
            "ovs_vport_flow_dropped_packets_total",
            datapath="ovs-system",
            port="tap-a",
            reason="congestion",
        )
        == 1
    )
    # The drop flow went away: its port's counter stays.
    source.apply(complete(drops=[]))
    assert tap_b_dropped(body(source)) == 8


def test_a_failed_dump_hides_the_gauges_keeps_the_counters_and_counts_abandoned(
    source: FlowSource, caplog: pytest.LogCaptureFixture
) -> None:
    source.apply(complete(drops=[(4, "tap-b", "unspecified", 0, 0)]))
    source.apply(complete(drops=[(4, "tap-b", "unspecified", 9, 90)]))
    with caplog.at_level(logging.ERROR):
        source.apply(failed())
        source.apply(failed())
    text = body(source)
    assert not health(source)
    assert "ovs_vport_flows{" not in text
    assert tap_b_dropped(text) == 9
    assert value(text, "ovs_datapath_flow_dumps_abandoned_total", datapath="ovs-system") == 2
    # The last complete dump is still described, with its time: a user sees how old it is.
    assert value(text, "ovs_datapath_flow_dump_timestamp_seconds", datapath="ovs-system") == 1000.25
    assert [r.message for r in caplog.records] == [
        "datapath ovs-system: flow dump abandoned: more than 1000 flows (--collector.flows.max-flows)"
    ]
    with caplog.at_level(logging.INFO):
        source.apply(complete())
    assert "flow dumps complete again" in caplog.records[-1].message
    assert (
        health(source)
        and value(body(source), "ovs_datapath_flow_dumps_abandoned_total", datapath="ovs-system") == 2
    )


def test_rounds_that_stop_coming_are_not_current(source: FlowSource, clock: Clock) -> None:
    source.apply(complete())
    clock.now += 2 * CONFIG.interval + CONFIG.max_seconds + 4
    assert health(source)
    clock.now += 2
    assert not health(source)
    assert "ovs_vport_flows{" not in body(source)


def test_a_namespace_whose_round_failed_is_unhealthy_but_keeps_its_counters(source: FlowSource) -> None:
    source.apply(complete(drops=[(4, "tap-b", "unspecified", 0, 0)]))
    source.apply(complete(drops=[(4, "tap-b", "unspecified", 2, 20)]))
    source.apply({"netns": None, "error": "timed out", "datapaths": [], "rss_bytes": 1, "peak_rss_bytes": 2})
    text = body(source)
    assert not health(source) and "ovs_vport_flows{" not in text
    assert tap_b_dropped(text) == 2


def test_only_ports_of_this_scrape_with_the_same_name_are_served(source: FlowSource) -> None:
    source.apply(complete(drops=[(4, "tap-b", "unspecified", 0, 0)]))
    source.apply(complete(drops=[(4, "tap-b", "unspecified", 1, 1)]))
    # Filtered out of this scrape: not served.
    text = body(source, dump((3, "tap-a")))
    assert value(text, "ovs_vport_flows", datapath="ovs-system", port="tap-a") == 7 and "tap-b" not in text
    # Port 4 now holds another vport (tap-b went, tap-c came): nothing of tap-b's is given to it.
    text = body(source, dump((3, "tap-a"), (4, "tap-c")))
    assert "tap-c" not in text
    # Another datapath of the same name (made again): nothing until the worker has seen it.
    assert "ovs_vport_flows{" not in body(source, dump(*PORTS, ifindex=9))


def test_a_port_that_goes_takes_its_counters_with_it(source: FlowSource) -> None:
    source.apply(complete(drops=[(4, "tap-b", "unspecified", 0, 0)]))
    source.apply(complete(drops=[(4, "tap-b", "unspecified", 4, 4)]))
    source.apply(complete(ports=PORTS[:2], port_flows=[(3, 7)]))
    source.apply(
        complete(
            ports=(*PORTS[:2], (4, "tap-b")), port_flows=[(3, 7)], drops=[(4, "tap-b", "unspecified", 1, 1)]
        )
    )
    # Back under the same name and number after a round without it: a new series, from what is new.
    assert tap_b_dropped(body(source)) == 1


def test_a_datapath_made_again_starts_its_counters_over(source: FlowSource) -> None:
    source.apply(complete(drops=[(4, "tap-b", "unspecified", 0, 0)]))
    source.apply(complete(drops=[(4, "tap-b", "unspecified", 4, 4)]))
    source.apply(complete(ifindex=9, drops=[(4, "tap-b", "unspecified", 0, 0)]))
    text = body(source, dump(*PORTS, ifindex=9))
    assert tap_b_dropped(text) == 0


def test_namespaces_carry_their_label_and_their_own_health(source: FlowSource) -> None:
    source.apply(complete())
    source.apply(complete(netns="blue", port_flows=[(3, 1)]))
    text = body(source, dump(*PORTS), dump(*PORTS, netns="blue"))
    assert value(text, "ovs_vport_flows", netns="blue", datapath="ovs-system", port="tap-a") == 1
    assert value(text, "ovs_vport_flows", datapath="ovs-system", port="tap-a") == 7
    assert health(source, "blue") and health(source, None)
    source.apply({"netns": "blue", "error": "gone", "datapaths": [], "rss_bytes": 1, "peak_rss_bytes": 1})
    assert not health(source, "blue") and health(source, None)


@pytest.mark.parametrize("fmt", [Format.TEXT, Format.OPENMETRICS])
def test_the_families_parse_as_prometheus_reads_them(source: FlowSource, fmt: Format) -> None:
    source.apply(complete(drops=[(4, "tap-b", "unspecified", 0, 0)]))
    source.apply(complete(drops=[(4, "tap-b", "unspecified", 3, 30)]))
    text = body(source, fmt=fmt)
    parser = parse_openmetrics if fmt is Format.OPENMETRICS else parse_text
    families = {f.name: f for f in parser(text + ("# EOF\n" if fmt is Format.OPENMETRICS else ""))}
    assert families["ovs_vport_flow_dropped_packets"].type == "counter"
    assert families["ovs_vport_flows"].type == "gauge"
    assert families["ovs_datapath_flow_dumps_abandoned"].type == "counter"
    assert families["ovs_flow_worker_restarts"].type == "counter"


class FakeWorker:
    """A worker process that writes the given report lines, then exits with ``status``."""

    def __init__(self, lines: list[str], status: int = 1) -> None:
        self.stdin = io.StringIO()
        self.stdout: Iterator[str] = iter(lines)
        self.status = status
        self.terminated = False

    def poll(self) -> int | None:
        return self.status

    def wait(self, timeout: float | None = None) -> int:
        return self.status

    def terminate(self) -> None:
        self.terminated = True

    def kill(self) -> None:
        pass


def test_a_worker_that_dies_is_restarted_counted_and_its_counters_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import json

    lives = [
        FakeWorker(
            [
                json.dumps(complete(drops=[(4, "tap-b", "unspecified", 0, 0)])),
                json.dumps(complete(drops=[(4, "tap-b", "unspecified", 6, 60)])),
            ]
        ),
        FakeWorker(["not json\n", json.dumps(complete(drops=[(4, "tap-b", "unspecified", 0, 0)]))]),
    ]
    spawned: list[FakeWorker] = []

    def spawn(config: WorkerConfig) -> FakeWorker:
        worker = lives[len(spawned)] if len(spawned) < len(lives) else FakeWorker([], status=0)
        spawned.append(worker)
        return worker

    source = FlowSource(CONFIG, spawn=spawn, restart_pause=(0.01, 0.02))  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR):
        source.start()
        deadline = time.monotonic() + 10
        while len(spawned) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        source.close()
    text = body(source)
    assert source.snapshot().restarts >= 3
    # The second life's first round was its baseline: the first life's 6 packets stay, none twice.
    assert tap_b_dropped(text) == 6
    messages = [r.message for r in caplog.records]
    assert "the flow dump worker exited with status 1" in messages
    assert any(m.startswith("malformed report from the flow dump worker skipped") for m in messages)


def test_the_real_worker_runs_reports_and_stops_with_the_source() -> None:
    """On this host without the openvswitch module: the round fails, is reported, and close() ends
    the worker process."""
    source = FlowSource(WorkerConfig(interval=0.5, max_flows=10, max_seconds=2, netlink_timeout=1))
    source.start()
    try:
        deadline = time.monotonic() + 60
        while source.snapshot().rss_bytes is None and time.monotonic() < deadline:
            time.sleep(0.1)
        snapshot = source.snapshot()
        assert snapshot.rss_bytes is not None and snapshot.rss_bytes > 1 << 20
        assert snapshot.namespaces[None].error is not None
        assert not health(source)
        process = source._process
        assert process is not None and process.poll() is None
    finally:
        source.close()
    assert process.poll() is not None
    assert source.snapshot().restarts == 0


def test_a_collector_with_the_source_serves_it_after_the_kernel_families() -> None:
    source = FlowSource(CONFIG)
    source.apply(complete())
    kernel = FakeKernelSocket(
        [FakeDatapath("ovs-system", 5, vports=[FakeVport(3, "tap-a"), FakeVport(4, "tap-b")])]
    )
    filters = Filters(port=NameFilter(exclude=re.compile("tap-b")))
    text = Collector(KernelSource(lambda: kernel), filters, "t", snapshot_sources=[source]).scrape(
        Format.TEXT
    )
    assert value(text, "ovs_vport_flows", datapath="ovs-system", port="tap-a") == 7
    assert 'port="tap-b"' not in text  # the filters apply
    assert value(text, "ovs_scrape_collector_success", collector="flows") == 1
