"""The flow table collector's configuration: off by default, its flags and file keys, bad values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from exporter.cli import load_config
from exporter.config import FLOWS_INTERVAL, FLOWS_MAX_FLOWS, FLOWS_MAX_SECONDS, ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_off_by_default_with_its_defaults() -> None:
    config = load_config([])
    assert not config.flows
    assert (config.flows_interval, config.flows_max_flows, config.flows_max_seconds) == (
        FLOWS_INTERVAL, FLOWS_MAX_FLOWS, FLOWS_MAX_SECONDS,
    )  # fmt: skip


def test_file_keys_and_flags_that_override_them(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text(
        "collector: {flows: true, flows_interval_seconds: 2, flows_max_flows: 5000, flows_max_seconds: 7.5}\n"
    )
    config = load_config(["--config.file", str(path)])
    assert (config.flows, config.flows_interval, config.flows_max_flows, config.flows_max_seconds) == (
        True, 2.0, 5000, 7.5,
    )  # fmt: skip
    config = load_config(
        ["--config.file", str(path), "--no-collector.flows", "--collector.flows.interval", "30",
         "--collector.flows.max-flows", "10", "--collector.flows.max-seconds", "1"]
    )  # fmt: skip
    assert (config.flows, config.flows_interval, config.flows_max_flows, config.flows_max_seconds) == (
        False, 30.0, 10, 1.0,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("collector: {flows: 1}\n", "collector.flows: must be true or false, got int"),
        (
            "collector: {flows_interval_seconds: fast}\n",
            "collector.flows_interval_seconds: must be a number, got str",
        ),
        (
            "collector: {flows_interval_seconds: 0.1}\n",
            "collector.flows_interval_seconds: must be at least 0.5",
        ),
        (
            "collector: {flows_interval_seconds: .inf}\n",
            "collector.flows_interval_seconds: must be at least 0.5",
        ),
        (
            "collector: {flows_max_flows: 2.5}\n",
            "collector.flows_max_flows: must be a whole number, got float",
        ),
        ("collector: {flows_max_flows: 0}\n", "collector.flows_max_flows: must be at least 1"),
        (
            "collector: {flows_max_seconds: 0}\n",
            "collector.flows_max_seconds: must be above 0 and at most 3600",
        ),
        ("collector: {flows_max_seconds: .nan}\n", "collector.flows_max_seconds: must be above 0"),
        ("collector: {flows_interval: 5}\n", "collector.flows_interval: unknown key"),
    ],
)
def test_bad_file_values_are_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(["--config.file", str(path)])
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--collector.flows.interval", "0"], "flag --collector.flows.interval: must be at least 0.5"),
        (["--collector.flows.max-flows", "-1"], "flag --collector.flows.max-flows: must be at least 1"),
        (["--collector.flows.max-flows", "many"], "argument --collector.flows.max-flows: invalid int value"),
        (
            ["--collector.flows.max-seconds", "7200"],
            "flag --collector.flows.max-seconds: must be above 0 and at most 3600",
        ),
    ],
)
def test_bad_flags_exit_2_with_one_line(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "exporter", *args], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("ovs-vport-exporter: error:")
