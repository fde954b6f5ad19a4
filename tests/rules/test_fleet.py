"""The sharded Prometheus configuration of docs/fleet.md: valid, and it really splits the hosts."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.promql_inventory import rule_groups

from . import synthetic
from .conftest import ROOT

EXAMPLE = ROOT / "examples" / "prometheus-shard.yml"
FLEET = ROOT / "docs" / "fleet.md"


def _example() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    return document


def test_promtool_check_config(promtool: Path) -> None:
    result = subprocess.run(
        [promtool, "check", "config", EXAMPLE.name], cwd=EXAMPLE.parent, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rules found" in result.stdout


def test_the_guide_shows_the_checked_file() -> None:
    text = FLEET.read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)
    assert EXAMPLE.read_text(encoding="utf-8") in blocks


def test_remote_write_keeps_the_aggregates_and_no_per_port_series() -> None:
    keep = _example()["remote_write"][0]["write_relabel_configs"][0]
    assert keep["action"] == "keep" and keep["source_labels"] == ["__name__"]
    pattern = re.compile(keep["regex"])
    records = [rule["record"] for group in rule_groups() for rule in group["rules"] if "record" in rule]
    for name in records:
        aggregate = name.startswith(("ovs:datapath_", "ovs:device_kind_", "ovs:bridge_"))
        assert bool(pattern.fullmatch(name)) == aggregate, name
    for name in ("ovs_up", "up", "ALERTS", "ovs_datapath_flows"):
        assert pattern.fullmatch(name), name
    for name in ("ovs_vport_receive_bytes_total", "ovs_vport_info", "ovs:vport_receive_bytes:rate5m"):
        assert not pattern.fullmatch(name), name


def _shard_config(shard: int, shards: int, targets: list[str]) -> str:
    config = _example()
    config["rule_files"] = []
    del config["remote_write"]  # nothing leaves loopback in a test
    job = config["scrape_configs"][0]
    del job["file_sd_configs"]
    job["static_configs"] = [{"targets": targets}]
    hashmod, keep = job["relabel_configs"]
    hashmod["modulus"] = shards
    keep["regex"] = str(shard)
    config["global"]["external_labels"]["prometheus_shard"] = str(shard)
    return json.dumps(config)


def _targets_once_discovered(url: str, count: int) -> dict[str, Any]:
    """/api/v1/targets once service discovery has seen every target (kept or dropped)."""
    deadline = time.monotonic() + 30
    while True:
        with urllib.request.urlopen(f"{url}/api/v1/targets", timeout=30) as response:
            data: dict[str, Any] = json.load(response)["data"]
        if len(data["activeTargets"]) + len(data["droppedTargets"]) >= count or time.monotonic() > deadline:
            return data
        time.sleep(0.2)


def test_hashmod_gives_every_host_to_exactly_one_shard(prometheus: Path, tmp_path: Path) -> None:
    # Nothing listens on these ports: the targets are down, which does not matter for who owns them.
    targets = [f"192.0.2.{i}:9310" for i in range(1, 25)]
    owned: list[set[str]] = []
    for shard in range(2):
        workdir = tmp_path / f"shard{shard}"
        workdir.mkdir()
        config = _shard_config(shard, 2, targets)
        with synthetic.prometheus_server(prometheus, workdir / "data", workdir, config) as url:
            data = _targets_once_discovered(url, len(targets))
        owned.append({target["discoveredLabels"]["__address__"] for target in data["activeTargets"]})
    assert owned[0] and owned[1], owned
    assert owned[0] & owned[1] == set()
    assert owned[0] | owned[1] == set(targets)


def test_example_is_shard_zero_of_four() -> None:
    hashmod, keep = _example()["scrape_configs"][0]["relabel_configs"]
    assert (hashmod["action"], hashmod["modulus"], hashmod["target_label"]) == (
        "hashmod",
        4,
        "__tmp_shard",
    )
    assert (keep["action"], keep["source_labels"], keep["regex"]) == ("keep", ["__tmp_shard"], "0")


def test_the_guide_quotes_the_measured_tables() -> None:
    # The figures are those benchmarks/series.py wrote, not retyped.
    text = FLEET.read_text(encoding="utf-8")
    for name in ("series.txt", "series-before.txt", "series-vm.txt"):
        assert (ROOT / "benchmarks" / "results" / name).read_text(encoding="utf-8") in text, name
