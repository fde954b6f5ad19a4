"""The Prometheus rules file: generated from its config, valid, and unit-tested by promtool."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.promql_inventory import RULES_PATH, dashboards, rule_groups

from .conftest import ROOT

ALERT_TESTS = sorted((ROOT / "alerts" / "tests").glob("*.yml"))


def _alerts() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]


def _records() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"] if "record" in rule]


def test_rules_file_is_current(rules_generator: ModuleType) -> None:
    expected = rules_generator.render(rules_generator.load_config())
    assert RULES_PATH.read_text(encoding="utf-8") == expected, "run: python alerts/generate_rules.py"


def test_generator_check_mode_reports_stale_output(rules_generator: ModuleType, tmp_path: Path) -> None:
    output = tmp_path / "rules.yml"
    assert rules_generator.main(["--check", "--output", str(output)]) == 1
    assert rules_generator.main(["--output", str(output)]) == 0
    assert rules_generator.main(["--check", "--output", str(output)]) == 0


def test_config_rejects_unknown_keys(rules_generator: ModuleType, tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "alerts" / "config.yml").read_text(encoding="utf-8"))
    config["drop_ratio"]["threshhold"] = 0.5
    bad = tmp_path / "config.yml"
    bad.write_text(yaml.safe_dump(config), encoding="utf-8")
    with pytest.raises(ValueError, match="threshhold"):
        rules_generator.load_config(bad)


def test_rules_file_is_a_plain_groups_file() -> None:
    document = yaml.safe_load(RULES_PATH.read_text(encoding="utf-8"))
    assert list(document) == ["groups"]
    names = [group["name"] for group in document["groups"]]
    assert len(names) == len(set(names))


def test_promtool_check_rules(promtool: Path) -> None:
    result = subprocess.run([promtool, "check", "rules", RULES_PATH], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests(promtool: Path) -> None:
    assert ALERT_TESTS, "no promtool unit tests in alerts/tests/"
    result = subprocess.run(
        [promtool, "test", "rules", *[path.name for path in ALERT_TESTS]],
        cwd=ROOT / "alerts" / "tests",
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_firing_and_quiet_unit_tests() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in ALERT_TESTS:
        for test in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {rule["alert"] for rule in _alerts()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested quiet"
    assert (firing | quiet) - names == set(), "unit tests for alerts that do not exist"


@pytest.mark.parametrize("alert", _alerts(), ids=lambda rule: rule["alert"])
def test_alert_has_for_severity_and_annotations(alert: dict[str, Any]) -> None:
    assert re.fullmatch(r"\d+[smh]", alert["for"])
    assert alert["labels"]["severity"] in {"info", "warning", "critical"}
    summary = alert["annotations"]["summary"]
    description = alert["annotations"]["description"]
    for text in (summary, description):
        assert "{{ $labels.instance }}" in text
        if re.search(r"ovs[:_]vport_", alert["expr"]):
            assert "{{ $labels.port }}" in text
        if re.search(r"ovs[:_](vport|datapath)_", alert["expr"]):
            assert "{{ $labels.datapath }}" in text


def test_port_ratio_alerts_have_a_traffic_guard() -> None:
    ratios = [
        alert
        for alert in _alerts()
        if re.fullmatch(r"OvsVport\w+(Drops|Errors|Failures)High", alert["alert"])
    ]
    assert len(ratios) == 5
    for alert in ratios:
        assert re.search(r"\band\b.*>= *[0-9.]+", alert["expr"], re.DOTALL), alert["alert"]


def test_recording_rule_names_follow_the_convention() -> None:
    names = [rule["record"] for rule in _records()]
    assert len(names) == len(set(names))
    for name in names:
        assert re.fullmatch(r"ovs:(vport|datapath|bridge|device_kind)_[a-z_]+:rate5m", name), name


def test_per_port_records_are_what_the_dashboards_read() -> None:
    # A recorded per-port series costs one series per port in Prometheus: only those the
    # dashboards read are recorded, and the alerts read the raw counters.
    per_port = {rule["record"] for rule in _records() if rule["record"].startswith("ovs:vport_")}
    used = {
        name
        for board in dashboards()
        for panel in board["panels"]
        for target in panel.get("targets") or []
        for name in re.findall(r"ovs:vport_[a-z_]+:rate5m", target["expr"])
    }
    assert per_port == used
    assert not [alert["alert"] for alert in _alerts() if "ovs:vport_" in alert["expr"]]


def test_trouble_records_exist_only_while_above_zero() -> None:
    groups = {group["name"]: group["rules"] for group in rule_groups()}
    for rule in groups["ovs-vport-exporter.ports-in-trouble"]:
        assert rule["expr"].rstrip().endswith("> 0"), rule["record"]
    for rule in groups["ovs-vport-exporter.ports"]:
        assert re.search(r"_(packets|bytes):rate5m$", rule["record"]), rule["record"]


def _generate(rules_generator: ModuleType, tmp_path: Path, **changes: Any) -> dict[str, Any]:
    config = yaml.safe_load((ROOT / "alerts" / "config.yml").read_text(encoding="utf-8"))
    config.update(changes)
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    text = rules_generator.render(rules_generator.load_config(path))
    out = tmp_path / "rules.yml"
    out.write_text(text, encoding="utf-8")
    document: dict[str, Any] = yaml.safe_load(text)
    document["path"] = out
    return document


def test_rules_without_per_port_records(rules_generator: ModuleType, promtool: Path, tmp_path: Path) -> None:
    document = _generate(rules_generator, tmp_path, record_per_port=False)
    rules = [rule for group in document["groups"] for rule in group["rules"]]
    assert not [rule["record"] for rule in rules if rule.get("record", "").startswith("ovs:vport_")]
    # The alerts do not depend on it.
    assert {rule["alert"] for rule in rules if "alert" in rule} == {rule["alert"] for rule in _alerts()}
    result = subprocess.run([promtool, "check", "rules", document["path"]], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_for_fewer_metric_groups(rules_generator: ModuleType, promtool: Path, tmp_path: Path) -> None:
    document = _generate(rules_generator, tmp_path, vport_metrics=["packets", "bytes", "info"])
    rules = [rule for group in document["groups"] for rule in group["rules"]]
    for rule in rules:
        # (flow_dropped: the flow collector's drop flows, no per-vport group)
        assert not re.search(r"(receive|transmit)_(dropped|errors)|upcall(s|_fail)", rule["expr"]), (
            rule.get("record") or rule["alert"]
        )
    alerts = {rule["alert"] for rule in rules if "alert" in rule}
    # The datapath's own lost-upcall counter, handler count and port events, its meters, the
    # conntrack zones, OVSDB's broken ports, the flow collector's series, and the health alerts
    # need no per-vport group.
    assert alerts == {
        "OvsDatapathUpcallsLost",
        "OvsDatapathNoUpcallHandlers",
        "OvsDatapathPortChurnHigh",
        "OvsWorkloadPortBroken",
        "OvsDatapathMeterDropping",
        "OvsConntrackZoneNearLimit",
        "OvsDatapathUnavailable",
        "OvsVportExporterDown",
        "OvsVportExporterScrapeSlow",
        "OvsVportDropFlowsHigh",
        "OvsFlowTableHeldByOnePort",
        "OvsFlowDumpsFailing",
    }
    result = subprocess.run([promtool, "check", "rules", document["path"]], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_config_rejects_an_unknown_metric_group(rules_generator: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vport_metrics"):
        _generate(rules_generator, tmp_path, vport_metrics=["packets", "drops"])


def test_groups_needed(rules_generator: ModuleType) -> None:
    needed = rules_generator.groups_needed
    assert needed("rate(ovs_vport_receive_dropped_total[5m])") == {"dropped"}
    assert needed("ovs:vport_upcall_failure_ratio:rate5m > 0") == {"upcalls"}
    assert needed("ovs:vport_receive_error_ratio:rate5m") == {"errors"}
    assert needed("ovs:bridge_transmit_bytes:rate5m + ovs:datapath_receive_packets:rate5m") == {
        "bytes",
        "packets",
    }
    assert needed("ovs_vport_info{port=~'x'}") == {"info"}
    assert needed("ovs:datapath_lookup_lost:rate5m > 0") == set()


def test_only_the_target_down_alert_selects_a_job() -> None:
    # Every other rule reads metrics only this exporter serves: a differently
    # named scrape job must not silence them.
    with_job = [
        rule.get("alert") or rule.get("record") for rule in _alerts() + _records() if "job=" in rule["expr"]
    ]
    assert with_job == ["OvsVportExporterDown"]


def test_docs_say_which_metric_groups_each_alert_needs(rules_generator: ModuleType) -> None:
    text = (ROOT / "docs" / "dashboards.md").read_text(encoding="utf-8")
    section = text.split("### Metric groups", 1)[1].split("\n#", 1)[0]
    documented = {
        match[1]: match[2]
        for match in re.finditer(r"^\| `(\w+)` \| ([a-z, ]+?)(?: \(.*\))? \|$", section, re.M)
    }
    config = rules_generator.load_config()
    expected = {
        rule["alert"]: ", ".join(
            sorted(rules_generator.groups_needed(rule["expr"]), key=rules_generator.VPORT_METRIC_GROUPS.index)
        )
        or "none"
        for rule in rules_generator.all_alerting_rules(config)
    }
    assert documented == expected
