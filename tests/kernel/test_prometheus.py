"""A real Prometheus scraping the exporter every second.

``rate()`` of a port's bytes agrees with the traffic sent, and every PromQL expression of the
dashboards and rules (tests/promql_inventory.py) runs and returns data. The range query results
go to ``$OVS_VM_RESULTS/promql-results.json`` for the docs.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests import promql_inventory

from .conftest import EXPORTER_PORT, HAS_UPCALL_STATS, UpcallDatapath
from .ovsnl import VPORT_INTERNAL, OvsNetlink
from .procs import Exporter, NodeExporter, Prometheus, rules_and_scrapes
from .topology import STANDARD, Topology, background_ping, dpctl, ip_batch, ping, send_frames

pytestmark = pytest.mark.prometheus

PROMETHEUS_PORT = 19090
NODE_EXPORTER_PORT = 19100
JOB = "ovs-vport-exporter"

#: The one port the per-port dashboard is queried for, as a Grafana user picks it: upcall_dp's
#: "refused" port (vu1 on ovs-u), whose trickle of frames all miss the flow table and whose
#: upcalls all fail, so that every panel has data on 6.12. docs/img/ovs-port.png draws it.
PORT_DASHBOARD = {
    "ovs-port/instance": f"127.0.0.1:{EXPORTER_PORT}",
    "ovs-port/datapath": "ovs-u",
    "ovs-port/port": "vu1",
}

#: Alert conditions this module makes true on purpose (see ``troubled_datapath``).
PROVOKED_ALERTS = {
    # ovs-dpctl switches ovs-a and ovs-b to per-CPU dispatch and sets no handler PIDs.
    "alert/OvsDatapathNoUpcallHandlers",
    "alert/OvsDatapathUpcallsLost",
    "alert/OvsVportTransmitDropsHigh",
    "alert/OvsVportTransmitErrorsHigh",
}
if HAS_UPCALL_STATS:
    PROVOKED_ALERTS.add("alert/OvsVportUpcallFailuresHigh")
#: Series recorded only for ports in trouble that ``troubled_datapath`` puts in trouble.
PROVOKED_TROUBLE = {
    "record/ovs:vport_transmit_dropped:rate5m",
    "record/ovs:vport_transmit_drop_ratio:rate5m",
    "record/ovs:vport_transmit_errors:rate5m",
    "record/ovs:vport_transmit_error_ratio:rate5m",
}
if HAS_UPCALL_STATS:
    PROVOKED_TROUBLE |= {
        "record/ovs:vport_upcall_failures:rate5m",
        "record/ovs:vport_upcall_failure_ratio:rate5m",
    }
#: Alert conditions that must stay empty while the exporter is healthy.
HEALTHY_ALERTS = {
    "alert/OvsDatapathUnavailable",
    "alert/OvsVportExporterDown",
    "alert/OvsVportExporterScrapeSlow",
}


@pytest.fixture(scope="module")
def troubled_datapath(nl: OvsNetlink) -> Iterator[str]:
    """A datapath whose flow copies each frame from vd0 to two ports that each lose it.

    vd1's veth peer has a smaller MTU (the veth drops the frame: transmit dropped); id2 has a
    smaller MTU itself (OVS refuses the frame: transmit error).
    """
    topo = Topology(nl)
    try:
        ifindex = topo.add_datapath("ovs-d")
        topo.add_veth("ovs-d", "vd0")
        topo.add_veth("ovs-d", "vd1")
        nl.new_vport(ifindex, "id2", VPORT_INTERNAL)
        ip_batch(["link set vd1p mtu 1000", "link set id2 mtu 1000", "link set id2 up"])
        dpctl("add-flow", "ovs-d", "in_port(1),eth()", "2,3")
        yield "ovs-d"
    finally:
        topo.teardown()


@pytest.fixture(scope="module")
def background_traffic(topology: Topology, upcall_dp: UpcallDatapath) -> Iterator[None]:
    """Pings on ovs-a and a trickle of upcalls (delivered, refused, unset) on ovs-u."""
    pinger = background_ping(STANDARD[0], size=200, interval=0.2)
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(0.5):
            for port in (upcall_dp.delivered, upcall_dp.refused, upcall_dp.unset):
                send_frames(port + "p", 2)
            upcall_dp.drain()

    worker = threading.Thread(target=trickle, daemon=True)
    worker.start()
    yield
    stop.set()
    worker.join(timeout=10)
    pinger.terminate()
    pinger.wait()


def _needs_node_exporter() -> bool:
    return any("node_" in expr for _, expr in promql_inventory.all_exprs({}))


@pytest.fixture(scope="module")
def prometheus(
    results_dir: Path, exporter: Exporter, background_traffic: None, troubled_datapath: str
) -> Iterator[Prometheus]:
    targets = {JOB: f"127.0.0.1:{EXPORTER_PORT}"}
    node = None
    if _needs_node_exporter():
        node = NodeExporter(NODE_EXPORTER_PORT, results_dir)
        targets["node"] = f"127.0.0.1:{NODE_EXPORTER_PORT}"
    config = rules_and_scrapes(targets)
    prom = Prometheus(PROMETHEUS_PORT, config, results_dir)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            samples = prom.query(f'count_over_time(ovs_up{{job="{JOB}"}}[1m])')
            if samples and float(samples[0]["value"][1]) >= 3:
                break
            time.sleep(1)
        else:
            pytest.fail(f"Prometheus never scraped the exporter 3 times: {prom.targets_up()}")
        yield prom
    finally:
        prom.stop()
        if node is not None:
            node.stop()


def _scalar(result: list[dict[str, Any]]) -> float:
    assert len(result) == 1, result
    return float(result[0]["value"][1])


def test_rate_of_port_bytes_agrees_with_traffic_sent(nl: OvsNetlink, prometheus: Prometheus) -> None:
    spec = STANDARD[1]
    count, frame = 100, 1000
    selector = f'ovs_vport_receive_bytes_total{{job="{JOB}",datapath="{spec.name}",port="{spec.veth}"}}'
    before = nl.snapshot().vports[spec.name][spec.veth].stats["rx_bytes"]
    start = time.time()
    ping(spec, count=count, size=frame - 42, interval=0.1)
    end = time.time()
    sent = nl.snapshot().vports[spec.name][spec.veth].stats["rx_bytes"] - before
    # Echo requests are all the veth receives (ARP adds at most a few 42-byte frames).
    assert count * frame <= sent <= count * frame + 10 * 42
    time.sleep(3)  # two more scrapes after the last packet
    now = time.time()
    window = int(now - start) + 2

    # The samples themselves: the counter went up by exactly what the kernel counted.
    raw = prometheus.query(f"{selector}[{window}s]", at=now)
    assert len(raw) == 1, raw
    points = [(float(t), float(v)) for t, v in raw[0]["values"]]
    delta = points[-1][1] - points[0][1]
    assert abs(delta - sent) <= 10 * 42, (delta, sent)
    # increase() and rate() extrapolate the sampled delta towards each edge of the window, by at
    # most 1.1 average scrape intervals per edge (Prometheus's extrapolatedRate): a fixed
    # tolerance is exceeded whenever a slow guest stretches the scrape intervals.
    span = points[-1][0] - points[0][0]
    most = delta * (span + 2.2 * span / (len(points) - 1)) / span
    increase = _scalar(prometheus.query(f"increase({selector}[{window}s])", at=now))
    assert delta * 0.999 <= increase <= most * 1.001, (increase, delta, most, len(points))
    rate = _scalar(prometheus.query(f"rate({selector}[{window}s])", at=now))
    assert abs(rate * window - increase) <= increase * 0.001, (rate, increase, window)
    # While the pings ran, the per-second rate matched their pace.
    mid = (start + end) / 2
    half = max(2, int((end - start) / 2))
    pace = sent / (end - start)
    mid_rate = _scalar(prometheus.query(f"rate({selector}[{half}s])", at=mid + half / 2))
    assert abs(mid_rate - pace) / pace < 0.3, (mid_rate, pace)


def test_every_dashboard_and_rule_query_returns_data(
    prometheus: Prometheus, upcall_dp: UpcallDatapath, results_dir: Path
) -> None:
    assert (PORT_DASHBOARD["ovs-port/datapath"], PORT_DASHBOARD["ovs-port/port"]) == (
        upcall_dp.name,
        upcall_dp.refused,
    )
    started = time.time()
    # Bursts big enough for the alerts' minimum rates over 5 minutes (>= 10 packets/s, >= 1 upcall/s).
    send_frames("vd0p", 3200, payload_len=1400)
    if HAS_UPCALL_STATS:
        send_frames(upcall_dp.refused + "p", 400)
    upcall_dp.drain()
    time.sleep(4)  # scrapes and rule evaluations see the bursts

    # Every expression as Grafana runs it with "All" selected (each must have data somewhere),
    # and, for the docs' picture, the port dashboard as a user sees it for one port.
    exprs = promql_inventory.all_exprs({})
    drawn = dict(promql_inventory.all_exprs(PORT_DASHBOARD))
    first = prometheus.started
    out: dict[str, dict[str, Any]] = {}
    empty: list[str] = []
    unexpected: list[str] = []
    failed_healthy: list[str] = []
    silent_provoked: list[str] = []
    # OVSDB identity (the per-bridge sums, the identity panels): this suite runs no
    # ovsdb-server, so they are empty; test_vswitchd.py runs them over a real one. Nor has it
    # meters or conntrack zone limits (what vswitchd and OVN install): test_vswitchd.py has both.
    # The flow collector's (--collector.flows, off by default): test_flows.py runs them.
    wanted = [
        (name, expr)
        for name, expr in exprs
        if not promql_inventory.needs_ovsdb(expr)
        and not promql_inventory.needs_flows(expr)
        and not promql_inventory.reads_meters_or_zones(expr)
    ]

    with prometheus.frozen() as now:

        def answers(item: tuple[str, str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            """The expression's instant result, and the port dashboard's view of it over time."""
            name, expr = item
            return prometheus.query(expr, at=now), prometheus.query_range(drawn[name], first, now, 1)

        # Four at a time, as Prometheus can answer them (not measured against one at a time since
        # the queries run frozen: 131 of them, with their range queries, take about 10 s).
        with ThreadPoolExecutor(max_workers=4) as pool:
            answered = dict(zip([name for name, _ in wanted], pool.map(answers, wanted), strict=True))
    for name, expr in wanted:
        # The top-port panels join OVSDB's identity onto their ports but keep those without one
        # (joins_identity): with no ovsdb-server here they must show every port, un-joined.
        result, shown = answered[name]
        out[name] = {"expr": drawn[name], "result": shown}
        if promql_inventory.is_condition(name):
            if name in HEALTHY_ALERTS and result:
                failed_healthy.append(name)
            if name in PROVOKED_ALERTS and not result:
                silent_provoked.append(name)
        elif promql_inventory.only_with_trouble(name, expr):
            # Recorded only for ports in trouble: those this module provokes must be there.
            if name in PROVOKED_TROUBLE and not result:
                silent_provoked.append(name)
        elif HAS_UPCALL_STATS or not promql_inventory.needs_upcall_stats(expr):
            if not result:
                empty.append(f"{name}: {expr}")
        elif result:
            # Kernels before 6.2 report no upcall statistics: these panels must stay empty.
            unexpected.append(f"{name}: {expr}")
    target = Path(os.environ.get("OVS_VM_RESULTS", results_dir)) / "promql-results.json"
    # The variables the queries ran with, for the renderer's titles.
    target.write_text(json.dumps({**out, "_variables": PORT_DASHBOARD}, indent=1, sort_keys=True))
    print(f"{len(out)} of {len(exprs)} expressions run in {time.time() - started:.1f}s; results in {target}")

    assert not empty, "expressions without data:\n" + "\n".join(empty)
    # The one port drawn has data in every panel (its transmit side may be empty: it only receives).
    panels: dict[str, list[str]] = {}
    for name in out:
        if name.startswith("dashboard/ovs-port/"):
            panels.setdefault(name.rsplit("/", 1)[0], []).append(name)
    blank_panels = [
        panel
        for panel, names in sorted(panels.items())
        if not any(out[name]["result"] for name in names)
        and (HAS_UPCALL_STATS or not any(promql_inventory.needs_upcall_stats(drawn[name]) for name in names))
    ]
    assert not blank_panels, f"port dashboard panels without data for {PORT_DASHBOARD}: {blank_panels}"
    assert not unexpected, "upcall expressions with data on a pre-6.2 kernel:\n" + "\n".join(unexpected)
    assert not silent_provoked, f"conditions made true returned nothing: {silent_provoked}"
    assert not failed_healthy, f"alerts firing on a healthy exporter: {failed_healthy}"
    missing = (PROVOKED_ALERTS | HEALTHY_ALERTS | PROVOKED_TROUBLE) - {name for name, _ in exprs}
    assert not missing, f"rules this test knows are gone: {missing}"
