"""The Prometheus rules file: generated from its config, valid, and unit-tested by promtool."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.promql_inventory import RULES_PATH, rule_groups

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
        if "ovs:vport_" in alert["expr"]:
            assert "{{ $labels.port }}" in text
        if "ovs:vport_" in alert["expr"] or "ovs:datapath_" in alert["expr"]:
            assert "{{ $labels.datapath }}" in text


def test_port_ratio_alerts_have_a_traffic_guard() -> None:
    for alert in _alerts():
        if "_ratio:" in alert["expr"]:
            assert re.search(r"\band\b.*>= *[0-9.]+", alert["expr"], re.DOTALL), alert["alert"]


def test_recording_rule_names_follow_the_convention() -> None:
    names = [rule["record"] for rule in _records()]
    assert len(names) == len(set(names))
    for name in names:
        assert re.fullmatch(r"ovs:(vport|datapath)_[a-z_]+:rate5m", name), name


def test_only_the_target_down_alert_selects_a_job() -> None:
    # Every other rule reads metrics only this exporter serves: a differently
    # named scrape job must not silence them.
    with_job = [
        rule.get("alert") or rule.get("record") for rule in _alerts() + _records() if "job=" in rule["expr"]
    ]
    assert with_job == ["OvsVportExporterDown"]
