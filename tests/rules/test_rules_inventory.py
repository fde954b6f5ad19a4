"""tests/promql_inventory.py, and every shipped expression parsed and run by Prometheus."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.promql_inventory import (
    all_exprs,
    dashboards,
    is_condition,
    joins_identity,
    needs_flows,
    needs_ovsdb,
    needs_upcall_stats,
    only_with_trouble,
    reads_meters_or_zones,
    rule_groups,
    substitute,
)

from . import synthetic


def test_inventory_has_every_panel_query_variable_and_rule() -> None:
    exprs = all_exprs({})
    names = [name for name, _ in exprs]
    assert len(names) == len(set(names))
    targets = sum(
        len(panel.get("targets") or [])
        for board in dashboards()
        for panel in board["panels"]
        if panel["type"] != "row"
    )
    variables = sum(
        1 for board in dashboards() for variable in board["templating"]["list"] if variable["type"] == "query"
    )
    rules = sum(len(group["rules"]) for group in rule_groups())
    assert len(exprs) == targets + variables + rules
    assert sum(name.startswith("dashboard/") for name in names) == targets
    for name, expr in exprs:
        assert "$" not in expr and "[[" not in expr, name


def test_substitution() -> None:
    expr = 'rate(x{instance=~"$instance", port=~"${port}", dp=~"[[datapath]]"}[$__rate_interval])'
    assert substitute(expr, {"instance": "h1", "port": "vm1"}) == (
        'rate(x{instance=~"h1", port=~"vm1", dp=~".*"}[1m])'
    )
    assert substitute("$port ${port:regex}", {"port": "a", "d/port": "b"}, "d") == "b b"
    with pytest.raises(KeyError, match="nosuch"):
        substitute("$nosuch", {})


def test_inventory_applies_variables_per_dashboard() -> None:
    exprs = dict(all_exprs({"port": "vm9", "ovs-port/port": "vm1"}))
    overview = [expr for name, expr in exprs.items() if name.startswith("dashboard/ovs-overview/")]
    port = [expr for name, expr in exprs.items() if name.startswith("dashboard/ovs-port/")]
    assert any('port=~"vm9"' in expr for expr in overview)
    assert all('port=~"vm1"' in expr for expr in port if "port=~" in expr)


def test_inventory_helpers() -> None:
    assert is_condition("alert/OvsDatapathUnavailable")
    assert not is_condition("record/ovs:vport_upcalls:rate5m")
    assert needs_upcall_stats("ovs:vport_upcall_failure_ratio:rate5m")
    assert needs_upcall_stats("rate(ovs_vport_upcalls_total[5m])")
    assert not needs_upcall_stats("ovs:datapath_lookup_lost:rate5m")
    assert only_with_trouble("record/ovs:vport_receive_dropped:rate5m", "rate(x[5m]) > 0")
    assert only_with_trouble("dashboard/x/1/A", "topk(10, ovs:vport_receive_error_ratio:rate5m{a='b'})")
    assert not only_with_trouble("record/ovs:vport_receive_packets:rate5m", "rate(x[5m])")
    assert not only_with_trouble("dashboard/x/1/A", "ovs:datapath_receive_dropped:rate5m")
    assert needs_ovsdb("ovs:bridge_receive_bytes:rate5m") and not needs_ovsdb("ovs_vport_info")
    assert needs_ovsdb('ovs_scrape_collector_success{collector="ovsdb"}')
    assert not needs_ovsdb('ovs_scrape_collector_success{collector="kernel"}')
    # A join that keeps the ports without identity returns data without OVSDB; an inner one does not.
    inner = "a * on (instance, job, netns, datapath, port) group_left (bridge) ovs_interface_info"
    assert needs_ovsdb(inner) and not joins_identity(inner)
    kept = f"{inner} or on (instance, job, netns, datapath, port) a"
    assert joins_identity(kept) and not needs_ovsdb(kept)
    assert any(joins_identity(expr) for _, expr in all_exprs({}))
    assert needs_upcall_stats("ovs:datapath_upcall_failures:rate5m")
    assert not needs_upcall_stats("ovs_datapath_upcall_handlers == 0")
    assert needs_flows("topk(10, ovs_vport_flows{a='b'})") and needs_flows(
        "ovs:vport_flow_dropped_packets:rate5m"
    )
    assert needs_flows('ovs_scrape_collector_success{collector="flows"} == 0')
    assert not needs_flows("ovs_datapath_flows") and not needs_flows("ovs:datapath_lookup_hits:rate5m")
    flows = [name for name, expr in all_exprs({}) if needs_flows(expr)]
    assert {
        "alert/OvsVportDropFlowsHigh",
        "alert/OvsFlowTableHeldByOnePort",
        "alert/OvsFlowDumpsFailing",
    } <= set(flows)
    assert any(name.startswith("dashboard/ovs-port/") for name in flows)
    zones = "a * on (instance, job, netns, zone) group_left (owner) ovs_conntrack_zone_info"
    assert needs_ovsdb(zones) and not joins_identity(zones)
    assert not needs_ovsdb(f"{zones} or on (instance, job, netns, zone) a")
    assert reads_meters_or_zones("rate(ovs_datapath_meter_dropped_packets_total[5m])")
    assert reads_meters_or_zones("ovs_conntrack_zone_connections / ovs_conntrack_zone_limit")
    assert not reads_meters_or_zones("ovs_datapath_flows") and not reads_meters_or_zones("ovs_up")


def test_every_expression_parses(promtool: Path, tmp_path: Path) -> None:
    # As recording rules, every expression goes through Prometheus' parser.
    rules = [
        {"record": f"inventory:expr_{index}", "expr": expr, "labels": {"inventory_name": name}}
        for index, (name, expr) in enumerate(all_exprs({}))
    ]
    path = tmp_path / "inventory.rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "inventory", "rules": rules}]}), encoding="utf-8")
    result = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout


@pytest.fixture(scope="module")
def synthetic_results(promtool: Path, prometheus: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return synthetic.run_inventory(promtool, prometheus, tmp_path_factory.mktemp("prometheus"))


def test_every_expression_returns_data_on_synthetic_data(synthetic_results: dict[str, Any]) -> None:
    # The synthetic data makes every alert's condition hold somewhere, so even
    # the alert conditions must return series.
    assert set(synthetic_results) == {name for name, _ in all_exprs(synthetic.VARIABLES)}
    empty = sorted(name for name, entry in synthetic_results.items() if not entry["result"])
    assert empty == []


def test_render_synthetic_results(
    renderer: ModuleType, synthetic_results: dict[str, Any], tmp_path: Path
) -> None:
    written = renderer.render_all(synthetic_results, tmp_path, variables=synthetic.VARIABLES)
    assert sorted(path.name for path in written) == ["ovs-overview.png", "ovs-port.png"]
    for path in written:
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        assert len(data) > 50_000


def _exposition_names() -> set[str]:
    # The exporter's checked-in end-to-end scrape output.
    text = (Path(__file__).resolve().parents[1] / "fixtures" / "e2e-output.txt").read_text(encoding="utf-8")
    return {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")
    }


# Served by collectors the golden exposition does not run: OVSDB identity (issue #10), of ports and
# of conntrack zones (the per-bridge recording rules that join it record nothing without it,
# alerts/tests/recording.yml), the Interfaces vswitchd cannot open (issue #22), and the flow
# table (--collector.flows, issue 20; exporter.kernel.flows names these families).
OPTIONAL = {
    "ovs_interface_info",
    "ovs_conntrack_zone_info",
    "ovs_interface_broken_info",
    "ovs_bridge_broken_interfaces",
    "ovs_vport_flows",
    "ovs_vport_flow_dropped_packets",
    "ovs_vport_flow_dropped_bytes",
    "ovs_datapath_flow_dump_flows",
    "ovs_datapath_flow_dump_duration_seconds",
    "ovs_datapath_flow_dump_timestamp_seconds",
    "ovs_datapath_flow_dumps_abandoned",
}


def test_queries_read_only_metrics_the_exporter_serves() -> None:
    served = _exposition_names() | OPTIONAL | {f"{name}_total" for name in OPTIONAL}
    used = {name for _, expr in all_exprs({}) for name in re.findall(r"\b(ovs_[a-z_]+)\b", expr)}
    assert used, "no exporter metric referenced"
    assert used - served == set()


def test_synthetic_data_looks_like_the_exporter() -> None:
    served = _exposition_names()
    for name, family in synthetic.synthetic_families().items():
        sample = f"{name}_total" if family.kind == "counter" else name
        if name == "up" or name.startswith("process_") or name in OPTIONAL:
            continue
        assert sample in served, name
