"""A real Prometheus over synthetic exporter data, to run every shipped query on.

Builds a TSDB from OpenMetrics text shaped like what ovs-vport-exporter serves
(plus the ``instance``/``job`` labels and ``up`` that Prometheus adds), with
busy, idle, dropping, erroring and recreated ports, then backfills the
recording rules of the rules file into it, starts Debian's prometheus binary on
it and answers queries. The data is made so that every alert's condition holds
somewhere, so every inventory expression should return data.

This is the host-side stand-in for the VM suite; it checks the expressions and
the renderer, not the exporter. ``python -m tests.rules.synthetic OUT.json``
writes a results file for ``docs/render_dashboards.py``.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests import loopback
from tests.promql_inventory import RULES_PATH, all_exprs

STEP = 15  # seconds between samples, as a typical scrape interval
SPAN = 90 * 60  # seconds of data
JOB = "ovs-vport-exporter"
# The overview shows everything; the per-port dashboard one busy port.
VARIABLES = {
    "__rate_interval": "1m",
    "__interval": f"{STEP}s",
    "ovs-port/instance": "host1:9310",
    "ovs-port/datapath": "dp0",
    "ovs-port/port": "vm1",
}


@dataclass
class Family:
    """One metric family: its type and, per label set, the values at each step."""

    kind: str
    series: dict[tuple[tuple[str, str], ...], list[float]] = field(default_factory=dict)


def _labels(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def _counter(rates: list[float], start: float = 0.0) -> list[float]:
    """Cumulative integer counter from per-second rates at each step."""
    total = start
    values = []
    for rate in rates:
        values.append(float(int(total)))
        total += max(rate, 0.0) * STEP
    return values


def synthetic_families(seed: int = 4) -> dict[str, Family]:
    """Every series the dashboards and rules read, over SPAN seconds at STEP."""
    rng = random.Random(seed)
    steps = SPAN // STEP
    families: dict[str, Family] = {}

    def add(name: str, kind: str, labels: tuple[tuple[str, str], ...], values: list[float]) -> None:
        families.setdefault(name, Family(kind)).series[labels] = values

    def wave(base: float, swing: float, period: float, phase: float) -> list[float]:
        return [
            base * (1 + swing * math.sin(2 * math.pi * i * STEP / period + phase)) * rng.uniform(0.95, 1.05)
            for i in range(steps)
        ]

    # (instance, datapath, port, vport type, receive pps, share of packets dropped on receive and on
    # transmit, share with errors on receive and on transmit, share of upcalls failing)
    ports = [
        ("host1:9310", "dp0", "vm1", "netdev", 900.0, 0.03, 0.0005, 0.0, 0.0, 0.05),
        ("host1:9310", "dp0", "vm2", "netdev", 400.0, 0.0, 0.0, 0.004, 0.01, 0.0),
        ("host1:9310", "dp0", "vm3", "netdev", 250.0, 0.001, 0.0, 0.0, 0.0, 0.0),
        ("host1:9310", "dp0", "idle0", "internal", 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
        ("host1:9310", "dp0", "vxlan_sys_4789", "vxlan", 600.0, 0.0, 0.02, 0.0, 0.0, 0.0),
        ("host2:9310", "dp1", "p1", "netdev", 1500.0, 0.0, 0.0, 0.0, 0.0, 0.0),
        ("host2:9310", "dp1", "p2", "geneve", 120.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    ]
    # The kind of each port's device (rtnetlink): VMs' taps, a pod's veth, an internal port, the
    # tunnels' devices, and a physical NIC (none).
    device_kinds = {
        "vm1": "tun", "vm2": "tun", "vm3": "veth", "idle0": "openvswitch", "vxlan_sys_4789": "vxlan",
        "p1": "none", "p2": "geneve",
    }  # fmt: skip
    for index, (
        instance,
        datapath,
        port,
        vport_type,
        pps,
        rx_drop,
        tx_drop,
        rx_error,
        tx_error,
        upcall_fail,
    ) in enumerate(ports):
        labels = {"instance": instance, "job": JOB, "datapath": datapath, "port": port}
        key = _labels(**labels)
        rx = wave(pps, 0.4, 1800, index)
        tx = wave(pps * 0.8, 0.3, 2400, index + 1)
        # vm3 is deleted and recreated halfway: its counters start again from 0.
        reset_at = steps // 2 if port == "vm3" else None

        def counter(rates: list[float], reset_at: int | None = reset_at) -> list[float]:
            if reset_at is None:
                return _counter(rates, start=rng.uniform(1e5, 1e6) if rates[0] else 0.0)
            return _counter(rates[:reset_at], start=5e6) + _counter(rates[reset_at:])

        size = 900 + 300 * index
        add("ovs_vport_receive_packets", "counter", key, counter(rx))
        add("ovs_vport_transmit_packets", "counter", key, counter(tx))
        add("ovs_vport_receive_bytes", "counter", key, counter([r * size for r in rx]))
        add("ovs_vport_transmit_bytes", "counter", key, counter([t * size for t in tx]))
        add("ovs_vport_receive_dropped", "counter", key, counter([r * rx_drop for r in rx]))
        add("ovs_vport_transmit_dropped", "counter", key, counter([t * tx_drop for t in tx]))
        add("ovs_vport_receive_errors", "counter", key, counter([r * rx_error for r in rx]))
        add("ovs_vport_transmit_errors", "counter", key, counter([t * tx_error for t in tx]))
        upcalls = [r * 0.02 for r in rx]
        add("ovs_vport_upcalls", "counter", key, counter(upcalls))
        add("ovs_vport_upcall_failures", "counter", key, counter([u * upcall_fail for u in upcalls]))
        info = _labels(
            **labels,
            port_no=str(index + 1),
            vport_type=vport_type,
            device_kind=device_kinds[port],
            ifindex=str(10 + index),
        )
        add("ovs_vport_info", "gauge", info, [1.0] * steps)
        # OVSDB's identity of the port (the ovsdb collector), for the per-bridge sums and the
        # identity joins: host1 reads OVSDB, where vm1 and vm2 are VMs (os-vif) and vm3 a pod
        # (kube-ovn), and idle0 is a port no Interface describes; host2 runs without it.
        if instance == "host1:9310" and port != "idle0":
            bridge = "br-ex" if vport_type == "vxlan" else "br-int"
            who = (
                {"pod_namespace": "default", "pod_name": f"{port}-pod"}
                if port == "vm3"
                else {"vm_uuid": f"{index:08d}-0000-4000-8000-000000000000"}
                if port.startswith("vm")
                else {}
            )
            identity = _labels(**labels, bridge=bridge, iface_id=f"{port}-iface", **who)
            add("ovs_interface_info", "gauge", identity, [1.0] * steps)

    # host1's OVSDB still holds the row of a crashed VM's tap, whose device is gone (the
    # broken-port alert holds), on br-int; br-ex has none.
    vm = {"instance": "host1:9310", "job": JOB}
    gone = "could not open network device tapdead0-00 (No such device)"
    broken = _labels(**vm, bridge="br-int", interface="tapdead0-00", interface_type="system",
                     iface_id="dead0-iface", vm_uuid="00000099-0000-4000-8000-000000000000", error=gone)  # fmt: skip
    add("ovs_interface_broken_info", "gauge", broken, [1.0] * steps)
    for bridge, count in (("br-int", 1.0), ("br-ex", 0.0)):
        add("ovs_bridge_broken_interfaces", "gauge", _labels(**vm, bridge=bridge), [count] * steps)

    for instance, datapath, vports, pps in (
        ("host1:9310", "dp0", 5, 2150.0),
        ("host2:9310", "dp1", 2, 1620.0),
    ):
        key = _labels(instance=instance, job=JOB, datapath=datapath)
        lookups = wave(pps * 1.8, 0.3, 1800, 0)
        add("ovs_datapath_lookup_hits", "counter", key, _counter([x * 0.98 for x in lookups]))
        add("ovs_datapath_lookup_misses", "counter", key, _counter([x * 0.02 for x in lookups]))
        add(
            "ovs_datapath_lookup_lost",
            "counter",
            key,
            _counter([x * 0.002 if vports == 5 else 0.0 for x in lookups]),
        )
        add("ovs_datapath_mask_hits", "counter", key, _counter([x * 2.5 for x in lookups]))
        add("ovs_datapath_mask_cache_hits", "counter", key, _counter([x * 0.9 for x in lookups]))
        add("ovs_datapath_flows", "gauge", key, [float(int(v)) for v in wave(400 * vports, 0.2, 1200, 1)])
        add("ovs_datapath_masks", "gauge", key, [float(int(v)) for v in wave(6 * vports, 0.1, 3000, 2)])
        add("ovs_datapath_vports", "gauge", key, [float(vports)] * steps)
        # dp0 is per-CPU without handlers (the no-handler alert holds) and has ports in a boot loop
        # (25 added and 25 removed a minute: the churn alert holds); dp1 is quiet with 4 handlers.
        add("ovs_datapath_upcall_handlers", "gauge", key, [0.0 if vports == 5 else 4.0] * steps)
        per_second = 25 / 60 if vports == 5 else 1 / 600
        for event, rate in (("added", per_second), ("removed", per_second), ("changed", per_second / 5)):
            events = _labels(instance=instance, job=JOB, datapath=datapath, event=event)
            add("ovs_datapath_vport_events", "counter", events, _counter([rate] * steps))

    # The flow collector (--collector.flows), on host1 and host2. On host1's dp0, vm1 holds 160,000
    # of 200,000 megaflows (the table-hog alert holds) and its drop flows match 150 packets/s (the
    # drop-flow alert holds); vm2's explicit pipeline drops match 20/s. host2's dumps fail.
    dp0 = {"instance": "host1:9310", "job": JOB, "datapath": "dp0"}
    for port, flows in (("vm1", 160000.0), ("vm2", 30000.0), ("vm3", 9000.0), ("idle0", 0.0)):
        add("ovs_vport_flows", "gauge", _labels(**dp0, port=port), [flows] * steps)
    add("ovs_datapath_flow_dump_flows", "gauge", _labels(**dp0), [200000.0] * steps)
    add("ovs_datapath_flow_dump_duration_seconds", "gauge", _labels(**dp0), wave(0.9, 0.1, 600, 0))
    add(
        "ovs_datapath_flow_dump_timestamp_seconds",
        "gauge",
        _labels(**dp0),
        [1.8e9 + i * STEP for i in range(steps)],
    )
    add("ovs_datapath_flow_dumps_abandoned", "counter", _labels(**dp0), [0.0] * steps)
    for port, reason, pps, size in (("vm1", "unspecified", 150.0, 80), ("vm2", "of_pipeline", 20.0, 1400)):
        drops = _labels(**dp0, port=port, reason=reason)
        add("ovs_vport_flow_dropped_packets", "counter", drops, _counter([pps] * steps))
        add("ovs_vport_flow_dropped_bytes", "counter", drops, _counter([pps * size] * steps))
    for instance, success in (("host1:9310", 1.0), ("host2:9310", 0.0)):
        flows_health = _labels(instance=instance, job=JOB, collector="flows")
        add("ovs_scrape_collector_success", "gauge", flows_health, [success] * steps)
    # host1's vswitchd has OVN's meters on dp0: meter 0 passes everything, meter 1 (CoPP for ARP)
    # drops 15 of the 40 packets a second offered (the meter alert holds); host2 has none.
    for meter, offered, dropped in (("0", 3.0, 0.0), ("1", 40.0, 15.0)):
        key = _labels(instance="host1:9310", job=JOB, datapath="dp0", meter=meter)
        add("ovs_datapath_meter_packets", "counter", key, _counter(wave(offered, 0.2, 900, 1)))
        add("ovs_datapath_meter_bytes", "counter", key, _counter(wave(offered * 60, 0.2, 900, 1)))
        add("ovs_datapath_meter_dropped_packets", "counter", key, _counter([dropped] * steps))
        add("ovs_datapath_meter_dropped_bytes", "counter", key, _counter([dropped * 60] * steps))
    for instance, meters in (("host1:9310", 2.0), ("host2:9310", 0.0)):
        key = _labels(instance=instance, job=JOB, datapath="dp0" if meters else "dp1")
        add("ovs_datapath_meters", "gauge", key, [meters] * steps)
        add("ovs_datapath_meters_limit", "gauge", key, [200000.0] * steps)
    # Conntrack zones with limits of their own: host1's zone 5 is vm1's (OVN), full (the zone alert
    # holds); zone 6 is vm2's at 60%; host2's zone 9 has no OVSDB identity. Default limit 0.
    for instance, zone, limit, connections, port in (
        ("host1:9310", "5", 100.0, 100.0, "vm1"),
        ("host1:9310", "6", 1000.0, 600.0, "vm2"),
        ("host2:9310", "9", 50.0, 12.0, None),
    ):
        key = _labels(instance=instance, job=JOB, zone=zone)
        add("ovs_conntrack_zone_limit", "gauge", key, [limit] * steps)
        add("ovs_conntrack_zone_connections", "gauge", key, [connections] * steps)
        if port is not None:
            owner = f"{port}-iface"
            info = _labels(instance=instance, job=JOB, zone=zone, bridge="br-int", owner=owner,
                           iface_id=owner, datapath="dp0", port=port)  # fmt: skip
            add("ovs_conntrack_zone_info", "gauge", info, [1.0] * steps)
    for instance in ("host1:9310", "host2:9310"):
        add("ovs_conntrack_default_zone_limit", "gauge", _labels(instance=instance, job=JOB), [0.0] * steps)

    # host1 is healthy; host2 scrapes slowly; host3 cannot read the datapath;
    # host4's exporter is down.
    for instance, up, ovs_up, duration, errors in (
        ("host1:9310", 1.0, 1.0, 0.05, 0.0),
        ("host2:9310", 1.0, 1.0, 6.5, 0.0),
        ("host3:9310", 1.0, 0.0, 0.01, 1.0 / STEP),
        ("host4:9310", 0.0, None, None, None),
    ):
        key = _labels(instance=instance, job=JOB)
        add("up", "gauge", key, [up] * steps)
        if ovs_up is None or duration is None or errors is None:
            continue
        add("ovs_up", "gauge", key, [ovs_up] * steps)
        add("ovs_scrape_duration_seconds", "gauge", key, wave(duration, 0.1, 600, 0))
        add("ovs_scrape_errors", "counter", key, _counter([errors] * steps))
        # host1 reads OVSDB (--collector.ovsdb), and its copy is current.
        collectors = ("kernel", "events", "meters", "conntrack_zones")
        for collector in (*collectors, "ovsdb") if instance == "host1:9310" else collectors:
            success = _labels(instance=instance, job=JOB, collector=collector)
            add(
                "ovs_scrape_collector_success",
                "gauge",
                success,
                [ovs_up if collector == "kernel" else 1.0] * steps,
            )
        add("process_resident_memory_bytes", "gauge", key, wave(40e6, 0.05, 900, 0))
        add("process_cpu_seconds", "counter", key, _cpu(steps, duration))
    return families


def _cpu(steps: int, duration: float) -> list[float]:
    total = 0.0
    values = []
    for _ in range(steps):
        values.append(total)
        total += min(duration, STEP) * 0.5
    return values


def openmetrics(families: dict[str, Family], end: float) -> str:
    """OpenMetrics text with timestamps, the last sample at ``end``."""
    steps = SPAN // STEP
    start = end - (steps - 1) * STEP
    lines = []
    for name, family in families.items():
        lines.append(f"# TYPE {name} {family.kind}")
        sample = f"{name}_total" if family.kind == "counter" else name
        for labels, values in family.series.items():
            text = ",".join(f'{k}="{v}"' for k, v in labels)
            for i, value in enumerate(values):
                lines.append(f"{sample}{{{text}}} {value} {start + i * STEP:.0f}")
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


#: Backfilled blocks are as old as the synthetic data: keep them, whatever the default retention.
RETENTION = "--storage.tsdb.retention.time=30d"


@contextmanager
def prometheus_server(
    prometheus: Path, data: Path, workdir: Path, config_text: str = "global:\n  evaluation_interval: 1m\n"
) -> Iterator[str]:
    """Run prometheus on ``data`` (by default no scrapes, no rules) until the block exits; yields its URL."""
    with loopback.prometheus(prometheus, data, workdir, config_text, args=(RETENTION,)) as url:
        yield url


def build_tsdb(promtool: Path, prometheus: Path, workdir: Path, end: float) -> Path:
    """A TSDB with the synthetic series and the recording rules' series backfilled."""
    data = workdir / "data"
    source = workdir / "synthetic.om"
    source.write_text(openmetrics(synthetic_families(), end), encoding="utf-8")
    subprocess.run(
        [str(promtool), "tsdb", "create-blocks-from", "openmetrics", str(source), str(data)],
        check=True,
        capture_output=True,
    )
    # Rules of a group cannot see each other's backfilled output: a rule that reads
    # recorded series (none does today) is backfilled after those.
    document = _load_rules()
    recording = [rule for group in document["groups"] for rule in group["rules"] if "record" in rule]
    levels = [
        [rule for rule in recording if "ovs:" not in rule["expr"]],
        [rule for rule in recording if "ovs:" in rule["expr"]],
    ]
    start = end - SPAN
    for level, rules in enumerate(levels):
        if not rules:
            continue
        rules_file = workdir / f"level{level}.rules.yml"
        rules_file.write_text(
            json.dumps({"groups": [{"name": f"level{level}", "rules": rules}]}), encoding="utf-8"
        )
        blocks = workdir / f"level{level}-blocks"
        with prometheus_server(prometheus, data, workdir) as url:
            subprocess.run(
                [
                    str(promtool),
                    "tsdb",
                    "create-blocks-from",
                    "rules",
                    f"--url={url}",
                    f"--start={start:.0f}",
                    f"--end={end + 1:.0f}",
                    f"--eval-interval={STEP}s",
                    f"--output-dir={blocks}",
                    str(rules_file),
                ],
                check=True,
                capture_output=True,
            )
        for block in blocks.iterdir():
            shutil.move(str(block), data / block.name)
    return data


def _load_rules() -> dict[str, Any]:
    import yaml

    document: dict[str, Any] = yaml.safe_load(RULES_PATH.read_text(encoding="utf-8"))
    return document


def query_range(url: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{url}/api/v1/query_range?{params}", timeout=30) as response:
        body = json.load(response)
    if body.get("status") != "success":
        raise RuntimeError(f"query failed: {expr}: {body}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def run_inventory(promtool: Path, prometheus: Path, workdir: Path) -> dict[str, dict[str, Any]]:
    """Every inventory expression run over the synthetic data: {name: {expr, result}}."""
    end = float(int(time.time()) // STEP * STEP - 5 * 60)
    data = build_tsdb(promtool, prometheus, workdir, end)
    # The last hour, where every rate window is full.
    start = end - 60 * 60
    results: dict[str, dict[str, Any]] = {}
    with prometheus_server(prometheus, data, workdir) as url:
        for name, expr in all_exprs(VARIABLES):
            results[name] = {"expr": expr, "result": query_range(url, expr, start, end, 60.0)}
    return results


def main(argv: list[str]) -> int:
    import tempfile

    if len(argv) != 2:
        print("usage: python -m tests.rules.synthetic OUT.json", file=sys.stderr)
        return 2
    tools = Path(__file__).resolve().parents[2] / ".cache" / "debian-tools" / "usr" / "bin"
    with tempfile.TemporaryDirectory() as tmp:
        results = run_inventory(tools / "promtool", tools / "prometheus", Path(tmp))
    Path(argv[1]).write_text(json.dumps(results), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
