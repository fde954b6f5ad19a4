"""docs/render_dashboards.py on hand-made results."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest


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
