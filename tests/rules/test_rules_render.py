"""docs/render_dashboards.py on hand-made results."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.promql_inventory import dashboards


@pytest.mark.parametrize(
    ("unit", "value", "text"),
    [
        ("pps", 1500.0, "1.5 kp/s"),
        ("Bps", 2_000_000.0, "2 MB/s"),
        ("percentunit", 0.0125, "1.25%"),
        ("s", 0.25, "250 ms"),
        ("bytes", 3 * 2**20, "3 MiB"),
        ("short", 0.0, "0"),
    ],
)
def test_format_value(renderer: ModuleType, unit: str, value: float, text: str) -> None:
    assert renderer.format_value(unit, value) == text


def test_legend_text(renderer: ModuleType) -> None:
    labels = {"instance": "h1:9310", "port": "vm1"}
    assert renderer.legend_text("{{instance}} {{ port }} rx", labels) == "h1:9310 vm1 rx"
    assert renderer.legend_text("", labels) == '{instance="h1:9310", port="vm1"}'


def test_render_without_results_draws_empty_panels(renderer: ModuleType, tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps({}), encoding="utf-8")
    assert renderer.main([str(results), "--out", str(tmp_path / "img")]) == 0
    assert sorted(p.name for p in (tmp_path / "img").iterdir()) == ["ovs-overview.png", "ovs-port.png"]


def test_render_reads_matrix_and_vector_results(renderer: ModuleType, tmp_path: Path) -> None:
    matrix = [
        {"metric": {"instance": "h1", "datapath": "dp0", "port": "vm1"}, "values": [[0, "1"], [60, "2"]]}
    ]
    vector = [
        {
            "metric": {"instance": "h1", "datapath": "dp0", "port": "vm1", "vport_type": "netdev"},
            "value": [60, "1"],
        }
    ]
    results = {
        "dashboard/ovs-overview/18/A": {"expr": "x", "result": matrix},
        "dashboard/ovs-port/2/A": {"expr": "y", "result": vector},
    }
    written = renderer.render_all(results, tmp_path, variables={"ovs-port/port": "vm1"})
    assert len(written) == 2


def _grid_overlaps(board: dict[str, Any]) -> list[str]:
    found = []
    panels = board["panels"]
    for index, panel in enumerate(panels):
        a = panel["gridPos"]
        if a["x"] < 0 or a["x"] + a["w"] > 24:
            found.append(f"panel {panel['id']} is outside the 24 columns")
        for other in panels[index + 1 :]:
            b = other["gridPos"]
            if (
                a["x"] < b["x"] + b["w"]
                and b["x"] < a["x"] + a["w"]
                and a["y"] < b["y"] + b["h"]
                and b["y"] < a["y"] + a["h"]
            ):
                found.append(f"panels {panel['id']} and {other['id']}")
    return found


@pytest.mark.parametrize("board", dashboards(), ids=lambda b: b["uid"])
def test_dashboard_grid_has_no_overlapping_panels(board: dict[str, Any]) -> None:
    assert _grid_overlaps(board) == []


def test_grid_overlap_check_finds_an_overlap() -> None:
    board = {
        "panels": [
            {"id": 1, "gridPos": {"x": 0, "y": 0, "w": 12, "h": 8}},
            {"id": 2, "gridPos": {"x": 8, "y": 4, "w": 8, "h": 8}},
        ]
    }
    assert _grid_overlaps(board) == ["panels 1 and 2"]


def _port_info(count: int) -> list[dict[str, Any]]:
    return [
        {
            "metric": {
                "instance": "h1",
                "datapath": "dp0",
                "port": f"tap{i}",
                "port_no": str(i),
                "vport_type": "netdev",
            },
            "value": [60, "1"],
        }
        for i in range(count)
    ]


@pytest.mark.parametrize("ports", [1, 40])
def test_rendered_panels_do_not_overlap(renderer: ModuleType, ports: int) -> None:
    # The port table with one port (a user's pick) or with 40 (every port) stays in its cell.
    board = next(b for b in dashboards() if b["uid"] == "ovs-port")
    table = next(p for p in board["panels"] if p["type"] == "table")
    results = {f"dashboard/ovs-port/{table['id']}/A": {"expr": "x", "result": _port_info(ports)}}
    fig = renderer.render_dashboard(board, results, {"ovs-port/port": "tap0"})
    try:
        assert renderer.overlaps(fig) == []
    finally:
        renderer.plt.close(fig)


def test_overlap_check_finds_a_table_drawn_over_the_panels_below(renderer: ModuleType) -> None:
    # What docs/img/ovs-port.png showed before: a table grown to every port, over the traffic panels.
    board = next(b for b in dashboards() if b["uid"] == "ovs-port")
    fig = renderer.render_dashboard(board, {}, {})
    try:
        table_axes = next(ax for ax in fig.axes if "'Vport'" in ax.get_gid())
        rows = [[f"tap{i}", "netdev"] for i in range(40)]
        table_axes.table(cellText=rows, colLabels=["port", "vport_type"], loc="upper center")
        found = renderer.overlaps(fig)
        assert any("'Vport' overlaps" in item for item in found), found
    finally:
        renderer.plt.close(fig)
