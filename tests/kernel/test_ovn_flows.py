"""The flow collector on a host that a real OVN control plane drives (tests/kernel/ovn.py).

OVN 23.03's ovn-controller programs br-int; ovs-vswitchd turns its OpenFlow tables into kernel
megaflows as traffic comes. The exporter runs as conftest's ``host_exporter`` (inside
``ovs-host``, uid 65534, reading OVSDB) with ``--collector.flows``, and is compared with an
independent dump of the same flow table (``tests.kernel.ovsflow``) taken just before and just
after its dump. vswitchd's idle timeout is raised for the module (``other_config:max-idle``), so
that megaflows stay until the test is done with them: the table then changes only when traffic
does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests import promql_inventory

from .conftest import nothing_runs_after
from .ovn import (
    ALLOWED_PORT,
    DROPPED_PORT,
    PROVIDER,
    REMOTE,
    ROUTER_PUBLIC_IP,
    VM1,
    VM2,
    VM3,
    VMS,
    OvnHost,
    send_syns,
    send_udp,
)
from .ovsflow import FlowInfo, FlowTable, per_port
from .ovsnl import OvsNetlink
from .procs import Exporter, Prometheus, rules_and_scrapes, scrape_until
from .promtext import Scrape, identities
from .test_ovn import EXTERNAL_IDS
from .vswitchd import DATAPATH, GENEVE_VPORT, MGMT_NS_IP, ping, vsctl

#: Long enough for every test of the module: vswitchd evicts no megaflow meanwhile.
MAX_IDLE_MS = 600_000
PROMETHEUS_PORT = 19092
JOB = "ovs-vport-exporter"


@pytest.fixture(scope="module")
def ovs_host(results_dir: Path, request: pytest.FixtureRequest) -> Iterator[OvnHost]:
    host = OvnHost(results_dir)
    try:
        host.start()
        vsctl("set", "Open_vSwitch", ".", f"other_config:max-idle={MAX_IDLE_MS}")
        yield host
    finally:
        if not nothing_runs_after(request):
            host.stop()


@pytest.fixture(scope="module")
def host_exporter_args() -> tuple[str, ...]:
    return (
        "--collector.ovsdb",
        "--collector.ovsdb.external-ids",
        ",".join(EXTERNAL_IDS),
        "--collector.flows",
        "--collector.flows.interval",
        "1",
    )


@pytest.fixture(scope="module")
def table(host_nl: OvsNetlink) -> FlowTable:
    return FlowTable(host_nl)


def dp_ifindex(host_nl: OvsNetlink) -> int:
    return host_nl.snapshot().datapaths[DATAPATH].ifindex


def port_numbers(host_nl: OvsNetlink) -> dict[str, int]:
    return {name: v.port_no for name, v in host_nl.snapshot().vports[DATAPATH].items()}


def scrape_after(exporter: Exporter, started_after: float) -> Scrape:
    """The first scrape whose last complete dump started after ``started_after`` (Unix time)."""

    def fresh(scrape: Scrape) -> bool:
        ended = scrape.value("ovs_datapath_flow_dump_timestamp_seconds", datapath=DATAPATH)
        took = scrape.value("ovs_datapath_flow_dump_duration_seconds", datapath=DATAPATH)
        return ended is not None and took is not None and ended - took > started_after

    return scrape_until(exporter, fresh, f"with a flow dump started after {started_after}")


def bracketed(
    table: FlowTable, dp: int, exporter: Exporter, attempts: int = 6
) -> tuple[list[FlowInfo], Scrape]:
    """The table dumped just before and just after a scrape whose dump came between: until both
    agree port by port, then the table and that scrape."""
    for _ in range(attempts):
        before = table.flows(dp)
        scrape = scrape_after(exporter, time.time())
        after = table.flows(dp)
        if per_port(before) == per_port(after):
            return after, scrape
    raise AssertionError("the flow table kept changing around the scrape")


def test_vm_ports_megaflows_equal_an_independent_count_and_name_their_logical_ports(
    ovs_host: OvnHost, host_nl: OvsNetlink, host_exporter: Exporter, table: FlowTable
) -> None:
    # Traffic of every kind: switched, routed to the provider network through the patch ports,
    # into the tunnel, allowed by the ACLs.
    ping(VM1, VM2, count=3)
    ping(VM2, VM3, count=2)
    ping(VM1, PROVIDER, count=2)
    send_udp(VM2, REMOTE.ip, 3)
    send_syns(VM1, VM3.ip, ALLOWED_PORT, 3)
    time.sleep(0.5)
    numbers = port_numbers(host_nl)
    flows, scrape = bracketed(table, dp_ifindex(host_nl), host_exporter)
    counts = per_port(flows)
    served = {name: scrape.value("ovs_vport_flows", datapath=DATAPATH, port=name) for name in numbers}
    assert served == {name: counts.get(number, 0) for name, number in numbers.items()}
    for vm in VMS:
        assert counts[numbers[vm.port]] > 0, vm.port
    assert scrape.value("ovs_scrape_collector_success", collector="flows") == 1
    assert scrape.value("ovs_datapath_flow_dump_flows", datapath=DATAPATH) == len(flows)
    # Who fills the table, named by the join the dashboards make: the logical port of each VM.
    by_port = {dict(labels)["port"]: dict(labels) for labels in identities(scrape)}
    for vm in VMS:
        assert by_port[vm.port]["iface_id"] == vm.iface_id
    # Recirculation: OVN's stateful ACLs send every VM packet through conntrack and back, so the
    # table holds later passes too; they are not counted again.
    assert any(flow.recirc_id != 0 for flow in flows)
    assert sum(counts.values()) < len(flows)


def drop_flows_of(table: FlowTable, dp: int, in_port: int) -> dict[bytes, FlowInfo]:
    return {
        flow.ufid or b"": flow
        for flow in table.flows(dp)
        if flow.in_port == in_port and flow.drop_reason is not None
    }


def dropped(scrape: Scrape, port: str) -> float:
    """Every reason of the port's drop-flow packets counter (absent: 0)."""
    return sum(
        value
        for name, labels, value in scrape.samples
        if name == "ovs_vport_flow_dropped_packets_total" and ("port", port) in labels
    )


def test_the_acl_drops_count_on_the_sending_port_within_the_bound(
    ovs_host: OvnHost, host_nl: OvsNetlink, host_exporter: Exporter, table: FlowTable
) -> None:
    """TCP to VM3's DROPPED_PORT is dropped by a to-lport ACL: in the kernel, by megaflows with
    empty actions whose input port is the sender's (VM1). The first SYN of each new drop megaflow
    misses the table and is dropped by vswitchd in userspace, uncounted: counted = sent - the
    drop megaflows the burst created, and equal to what the kernel's drop flows matched."""
    dp = dp_ifindex(host_nl)
    numbers = port_numbers(host_nl)
    send_syns(VM1, VM3.ip, ALLOWED_PORT, 1)  # VM3's address resolved: no ARP in the count
    time.sleep(0.5)
    kernel_before = drop_flows_of(table, dp, numbers[VM1.port])
    before = scrape_after(host_exporter, time.time())
    # One SYN first, alone: its drop megaflows installed before the others come.
    sent = send_syns(VM1, VM3.ip, DROPPED_PORT, 1)
    deadline = time.monotonic() + 30
    while drop_flows_of(table, dp, numbers[VM1.port]).keys() == kernel_before.keys():
        assert time.monotonic() < deadline, "the first dropped SYN made no drop megaflow"
        time.sleep(0.2)
    sent += send_syns(VM1, VM3.ip, DROPPED_PORT, 29)
    time.sleep(1.0)
    kernel_after = drop_flows_of(table, dp, numbers[VM1.port])
    after = scrape_after(host_exporter, time.time())

    matched = sum(
        f.packets - (kernel_before[u].packets if u in kernel_before else 0) for u, f in kernel_after.items()
    )
    new_flows = len(kernel_after.keys() - kernel_before.keys())
    counted = dropped(after, VM1.port) - dropped(before, VM1.port)
    assert counted == matched, (counted, matched)
    assert counted == sent - new_flows, (counted, sent, new_flows)
    assert new_flows >= 1 and counted >= sent - 2
    # OVS 3.1 installs drop flows with empty actions: no code, reason "unspecified".
    reasons = {
        dict(labels)["reason"]
        for name, labels, _v in after.samples
        if name == "ovs_vport_flow_dropped_packets_total" and ("port", VM1.port) in labels
    }
    assert reasons == {"unspecified"}
    # Nobody else's drop counters moved: not VM3's (whose ACL dropped them), not the others'.
    for port in numbers:
        if port != VM1.port:
            assert dropped(after, port) == dropped(before, port), port


def test_tunnels_and_patch_ports_are_counted_as_the_docs_say(
    ovs_host: OvnHost, host_nl: OvsNetlink, host_exporter: Exporter, table: FlowTable
) -> None:
    """Patch ports have no kernel vport: a packet crossing br-int and br-phys through them is one
    megaflow of the port it came in through. The tunnel: flows of the remote chassis would count on
    the one tunnel vport; here nothing comes from it, while packets to it are flows of their
    sender."""
    numbers = port_numbers(host_nl)
    ping(PROVIDER, VM3, count=2)  # in through br-phys's uplink, across the patch ports to VM3
    ping(PROVIDER, ROUTER_PUBLIC_IP, count=1)
    send_udp(VM3, REMOTE.ip, 2)  # into the tunnel
    time.sleep(0.5)
    flows, scrape = bracketed(table, dp_ifindex(host_nl), host_exporter)
    counts = per_port(flows)
    assert counts[numbers[PROVIDER.port]] > 0
    assert (
        scrape.value("ovs_vport_flows", datapath=DATAPATH, port=PROVIDER.port)
        == counts[numbers[PROVIDER.port]]
    )
    assert (
        scrape.value("ovs_vport_flows", datapath=DATAPATH, port=GENEVE_VPORT)
        == counts.get(numbers[GENEVE_VPORT], 0)
        == 0
    )
    # Every kernel vport has the gauge; the patch ports, which are not kernel vports, have none.
    served = {dict(labels)["port"] for name, labels, _v in scrape.samples if name == "ovs_vport_flows"}
    assert served == set(numbers)
    assert not served & set(ovs_host.patch_ports)
    # Every flow's input port is a kernel vport.
    assert {flow.in_port for flow in flows} <= set(numbers.values())


@pytest.fixture(scope="module")
def host_prometheus(host_exporter: Exporter, results_dir: Path) -> Iterator[Prometheus]:
    config = rules_and_scrapes({JOB: f"{MGMT_NS_IP}:{host_exporter.port}"})
    prom = Prometheus(PROMETHEUS_PORT, config, results_dir, workdir=Path("/tmp/prometheus-ovn-flows"))
    yield prom
    prom.stop()


#: The flow collector's alerts, none of which this host makes true.
QUIET_ALERTS = ("alert/OvsVportDropFlowsHigh", "alert/OvsFlowTableHeldByOnePort", "alert/OvsFlowDumpsFailing")


def test_every_flow_dashboard_and_alert_query_returns_data(
    host_prometheus: Prometheus, host_exporter: Exporter
) -> None:
    """Every expression of the dashboards and rules over the flow collector's series
    (``promql_inventory.needs_flows``), run on a real Prometheus scraping this exporter while VM1's
    dropped SYNs keep coming: each returns data (the port dashboard's for VM1, the top-port panels
    naming each VM's logical port), and no alert of the collector fires."""
    instance = f"{MGMT_NS_IP}:{host_exporter.port}"
    deadline = time.monotonic() + 120
    while True:
        send_syns(VM1, VM3.ip, DROPPED_PORT, 5)
        ready = host_prometheus.query(f'count_over_time(ovs_vport_flows{{job="{JOB}"}}[1m])')
        dropping = host_prometheus.query("ovs:vport_flow_dropped_packets:rate5m > 0")
        if ready and min(float(r["value"][1]) for r in ready) >= 4 and dropping:
            break
        assert time.monotonic() < deadline, (
            f"Prometheus never had flow series: {host_prometheus.targets_up()}"
        )
        time.sleep(1)
    picked = {"ovs-port/instance": instance, "ovs-port/datapath": DATAPATH, "ovs-port/port": VM1.port}
    exprs = [
        (name, expr)
        for name, expr in promql_inventory.all_exprs(picked)
        if promql_inventory.needs_flows(expr)
    ]
    assert len(exprs) >= 10
    with host_prometheus.frozen() as now, ThreadPoolExecutor(max_workers=4) as pool:
        answers = pool.map(lambda expr: host_prometheus.query(expr, at=now), [e for _, e in exprs])
        results = dict(zip([name for name, _ in exprs], answers, strict=True))
    empty = []
    for name, expr in exprs:
        if promql_inventory.is_condition(name):
            assert name in QUIET_ALERTS and not results[name], (name, results[name])
        elif not results[name]:
            empty.append(f"{name}: {expr}")
    assert not empty, "expressions without data:\n" + "\n".join(empty)
    # The top-port panels name who is on each VM port: its logical port (iface_id), from OVSDB.
    joins = [name for name, expr in exprs if promql_inventory.joins_identity(expr)]
    assert joins
    for name in joins:
        shown = {r["metric"]["port"]: r["metric"] for r in results[name]}
        for vm in VMS:
            if vm.port in shown:
                assert shown[vm.port].get("iface_id") == vm.iface_id, (name, shown[vm.port])
        assert VM1.port in shown, (name, sorted(shown))
