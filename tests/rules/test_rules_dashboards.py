"""The committed Grafana dashboards: generated from code, consistent, linted."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.promql_inventory import DASHBOARD_DIR, dashboards, rule_groups

from .conftest import ROOT

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
UIDS = {"ovs-overview", "ovs-port"}


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels") or [])
    return found


def _boards() -> list[dict[str, Any]]:
    return dashboards()


def test_committed_dashboards_are_current(dashboards_generator: ModuleType) -> None:
    files = dashboards_generator.outputs(dashboards_generator.load_thresholds())
    assert {path.name for path in files} == {path.name for path in DASHBOARD_DIR.glob("*.json")}
    for path, text in files.items():
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.name} is stale: run python dashboards/generate_dashboards.py"
        )


def test_generator_check_mode(dashboards_generator: ModuleType) -> None:
    assert dashboards_generator.main(["--check"]) == 0


def test_both_dashboards_exist_with_stable_uids() -> None:
    assert {board["uid"] for board in _boards()} == UIDS


@pytest.mark.parametrize("path", sorted(DASHBOARD_DIR.glob("*.json")), ids=lambda p: p.name)
def test_dashboard_lint(path: Path) -> None:
    board = json.loads(path.read_text(encoding="utf-8"))
    panels = _panels(board)
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    # A row or panel twice (as a merge can leave a section) is a copy a user scrolls past.
    kinds = [(panel["type"], panel["title"]) for panel in panels]
    assert len(kinds) == len(set(kinds)), f"panels twice: {sorted({k for k in kinds if kinds.count(k) > 1})}"
    for panel in panels:
        if panel["type"] == "row":
            continue
        where = f"{path.name} panel {panel['id']} {panel['title']!r}"
        assert panel.get("fieldConfig", {}).get("defaults", {}).get("unit"), f"{where}: no unit"
        assert panel.get("datasource") == DATASOURCE, where
        assert panel.get("targets"), f"{where}: no query"
        assert panel.get("description"), f"{where}: no description"
        for target in panel["targets"]:
            assert target.get("datasource") == DATASOURCE, where
            # Every query follows the instance selection (and so the data source's hosts).
            assert 'instance=~"$instance"' in target["expr"], where


@pytest.mark.parametrize("board", _boards(), ids=lambda b: b["uid"])
def test_template_variables(board: dict[str, Any]) -> None:
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    # The overview's bridges come from OVSDB; the port dashboard selects a port by datapath, as
    # a port without an OVSDB row (or a host without --collector.ovsdb) has no bridge to pick.
    bridge = ["bridge"] if board["uid"] == "ovs-overview" else []
    assert list(variables) == ["datasource", "instance", "datapath", *bridge, "port"]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("instance", "datapath", *bridge, "port"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == DATASOURCE
        assert variables[name]["query"].startswith("label_values(")


def test_dashboards_link_to_each_other() -> None:
    for board in _boards():
        links = board["links"]
        assert any(link["type"] == "dashboards" and "ovs-vport-exporter" in link["tags"] for link in links)
        assert all(link["includeVars"] and link["keepTime"] for link in links)
        assert "ovs-vport-exporter" in board["tags"]
    overview = next(board for board in _boards() if board["uid"] == "ovs-overview")
    drill_downs = [
        link["url"]
        for panel in _panels(overview)
        for link in panel.get("fieldConfig", {}).get("defaults", {}).get("links", [])
    ]
    assert drill_downs, "overview has no link to the per-port dashboard"
    for url in drill_downs:
        assert url.startswith("/d/ovs-port/")
        for variable in ("datasource", "instance", "datapath", "port"):
            assert f"var-{variable}=" in url


def test_recorded_series_used_by_dashboards_exist() -> None:
    recorded = {rule["record"] for group in rule_groups() for rule in group["rules"] if "record" in rule}
    used = {
        name
        for board in _boards()
        for panel in _panels(board)
        for target in panel.get("targets") or []
        for name in re.findall(r"ovs:[a-z_]+:rate5m", target["expr"])
    }
    assert used, "the dashboards should read recording rules"
    assert used - recorded == set()


def test_threshold_lines_are_the_alert_thresholds() -> None:
    config = yaml.safe_load((ROOT / "alerts" / "config.yml").read_text(encoding="utf-8"))
    expected = {
        "Drop ratio": config["drop_ratio"]["threshold"],
        "Error ratio": config["error_ratio"]["threshold"],
        "Upcall failure ratio": config["upcall_failure_ratio"]["threshold"],
        "Scrape duration": config["scrape_slow"]["threshold_seconds"],
    }
    seen = 0
    for board in _boards():
        for panel in _panels(board):
            if panel.get("title") in expected:
                defaults = panel["fieldConfig"]["defaults"]
                assert defaults["custom"]["thresholdsStyle"]["mode"] == "line"
                steps = [
                    step["value"] for step in defaults["thresholds"]["steps"] if step["value"] is not None
                ]
                assert steps == [expected[panel["title"]]], panel["title"]
                seen += 1
    assert seen >= len(expected)


def test_panels_name_the_metric_groups_they_need(rules_generator: ModuleType) -> None:
    checked = 0
    for board in _boards():
        for panel in _panels(board):
            if panel["type"] == "row":
                continue
            groups = set().union(*(rules_generator.groups_needed(t["expr"]) for t in panel["targets"]))
            where = f"{board['uid']} {panel['title']!r}"
            if not groups:
                assert "metric group" not in panel["description"], where
                continue
            checked += 1
            assert "--collector.vport.metrics" in panel["description"], where
            no_value = panel["fieldConfig"]["defaults"]["noValue"]
            for group in groups:
                assert re.search(rf"\b{group}\b", panel["description"].rsplit("Needs", 1)[-1]), where
                assert re.search(rf"\b{group}\b", no_value), where
    assert checked > 20
