"""The hardened systemd unit: systemd's own checks, its settings, and a run as it starts the exporter.

There is no running systemd here (and none in CI), so the unit is not started by
systemd: `systemd-analyze verify` and `systemd-analyze security --offline` read
it, and the exporter is started with the unit's command line and the example
configuration under the restrictions a test can impose itself (no capabilities,
no new privileges, MemoryDenyWriteExecute).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "systemd" / "ovs-vport-exporter.service"
EXAMPLE_CONFIG = REPO / "deploy" / "systemd" / "config.yml"
INSTALLED_CONFIG = "/etc/ovs-vport-exporter/config.yml"

# What `systemd-analyze security` may find open, and why.
ALLOWED_EXPOSURES = {
    "PrivateNetwork=": "the kernel datapath is per network namespace: the exporter needs the host's",
    "RestrictAddressFamilies=~AF_(INET|INET6)": "it serves HTTP",
    "RestrictAddressFamilies=~AF_NETLINK": "it reads the datapath over generic netlink",
    "RestrictAddressFamilies=~AF_UNIX": "name service lookups of the C library",
    "IPAddressDeny=": "the scrapers' addresses are the site's choice",
    "ProcSubset=": "the process_* metrics read /proc/stat",
    "DeviceAllow=": "ProtectClock= leaves read access to the RTC",
    "RootDirectory=/RootImage=": "it runs the interpreter installed on the host",
}


def settings(text: str) -> dict[str, list[str]]:
    """Each key of the [Service] section with its values in order."""
    found: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return settings(UNIT.read_text(encoding="utf-8"))


@pytest.fixture
def unit_for_analysis(tmp_path: Path) -> Path:
    """The unit, its ExecStart program replaced by one that exists here (verify checks it)."""
    program = shlex.split(settings(UNIT.read_text(encoding="utf-8"))["ExecStart"][0])[0]
    stub = tmp_path / "ovs-vport-exporter"
    stub.write_text("#!/bin/sh\n", encoding="utf-8")
    stub.chmod(0o755)
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text(encoding="utf-8").replace(program, str(stub)), encoding="utf-8")
    return unit


def test_systemd_analyze_verify(systemd_analyze: str, unit_for_analysis: Path) -> None:
    result = subprocess.run(
        [systemd_analyze, "verify", str(unit_for_analysis)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert not result.stderr.strip(), f"systemd-analyze verify warns:\n{result.stderr}"


def test_systemd_analyze_security(systemd_analyze: str, unit_for_analysis: Path) -> None:
    """Every hardening systemd knows of is on, except those the exporter needs open."""
    result = subprocess.run(
        [systemd_analyze, "security", "--offline=yes", "--json=short", str(unit_for_analysis)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    checks: list[dict[str, Any]] = json.loads(result.stdout)
    assert len(checks) > 50
    open_ = {check["name"]: check["description"] for check in checks if not check["set"]}
    unexpected = {name: why for name, why in open_.items() if name not in ALLOWED_EXPOSURES}
    assert not unexpected, f"hardening left off: {unexpected}"

    overall = subprocess.run(
        [systemd_analyze, "security", "--offline=yes", "--no-pager", str(unit_for_analysis)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", overall.stdout)
    assert match, overall.stdout[-2000:]
    assert float(match.group(1)) <= 2.0, overall.stdout[-2000:]
    assert match.group(2) == "OK"


OVSDB_DROP_IN = REPO / "deploy" / "systemd" / "ovsdb.conf"


@pytest.fixture
def unit_with_ovsdb_drop_in(unit_for_analysis: Path) -> Path:
    """The unit and deploy/systemd/ovsdb.conf as its drop-in, where systemd-analyze looks for it."""
    drop_ins = unit_for_analysis.parent / f"{unit_for_analysis.name}.d"
    drop_ins.mkdir()
    (drop_ins / OVSDB_DROP_IN.name).write_text(OVSDB_DROP_IN.read_text(encoding="utf-8"), encoding="utf-8")
    return unit_for_analysis


def test_ovsdb_drop_in(systemd_analyze: str, unit_with_ovsdb_drop_in: Path) -> None:
    """The drop-in adds one group and keeps host IDs; nothing else opens up, no privilege comes back."""
    drop_in = settings(OVSDB_DROP_IN.read_text(encoding="utf-8"))
    assert drop_in == {"SupplementaryGroups": ["openvswitch"], "PrivateUsers": ["no"]}
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{unit_with_ovsdb_drop_in.parent}:"}
    verify = subprocess.run(
        [systemd_analyze, "verify", str(unit_with_ovsdb_drop_in)],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    result = subprocess.run(
        [systemd_analyze, "security", "--offline=yes", "--json=short", str(unit_with_ovsdb_drop_in)],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    open_ = {check["name"] for check in json.loads(result.stdout) if not check["set"]}
    # Read with the drop-in: the group itself and the host's IDs are open now, and only those.
    assert open_ - set(ALLOWED_EXPOSURES) == {"PrivateUsers=", "SupplementaryGroups="}


def test_unit_runs_unprivileged(service: dict[str, list[str]]) -> None:
    assert service["DynamicUser"] == ["yes"]
    assert "User" not in service and "Group" not in service
    assert service["CapabilityBoundingSet"] == [""]
    assert service["AmbientCapabilities"] == [""]
    assert service["NoNewPrivileges"] == ["yes"]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("RestrictNamespaces", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("LockPersonality", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("RestrictRealtime", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
        ("SystemCallArchitectures", "native"),
    ],
)
def test_unit_hardening(service: dict[str, list[str]], key: str, value: str) -> None:
    assert service.get(key) == [value]


def test_unit_keeps_what_the_exporter_needs(service: dict[str, list[str]]) -> None:
    assert set(service["RestrictAddressFamilies"][0].split()) == {
        "AF_NETLINK",
        "AF_INET",
        "AF_INET6",
        "AF_UNIX",
    }
    assert service["SystemCallFilter"][0] == "@system-service"
    assert service.get("PrivateNetwork", ["no"]) == ["no"], "the datapath lives in the host's netns"
    assert "ProcSubset" not in service, "the process_* metrics read /proc/stat"
    assert "RestartPreventExitStatus" in service  # a configuration error (status 2) is not retried


def test_unit_starts_the_exporter_it_documents(
    service: dict[str, list[str]], run_exporter: Callable[..., Any]
) -> None:
    """The ExecStart flags and the example config, with ARGS as /etc/default would set it."""
    program, *flags = shlex.split(service["ExecStart"][0])
    assert program.endswith("/bin/ovs-vport-exporter")
    assert f"--config.file={INSTALLED_CONFIG}" in flags
    assert flags[-1] == "$ARGS"
    flags = [f.replace(INSTALLED_CONFIG, str(EXAMPLE_CONFIG)) for f in flags[:-1]]
    scrape = run_exporter(flags, "/metrics")
    assert scrape.landing_status == 200
    assert scrape.metrics_status == 200
    assert re.search(r"^ovs_up [01]$", scrape.metrics, re.MULTILINE), scrape.metrics[:2000]
    assert "ovs_exporter_build_info{" in scrape.metrics
    assert scrape.capabilities["CapEff"] == 0
    assert scrape.capabilities["CapBnd"] == 0
    assert scrape.exit_code == 0, "SIGTERM (systemctl stop) should end the exporter cleanly"
