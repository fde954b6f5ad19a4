"""Configuration: flags, the YAML file, and every way to get it wrong (exit 2, one line)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from exporter import config as config_module
from exporter.cli import load_config
from exporter.config import Config, ConfigError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "config.yml"


def test_defaults() -> None:
    config = load_config([])
    assert (config.listen_address, config.telemetry_path, config.log_level, config.log_format) == (
        ":9310",
        "/metrics",
        "info",
        "logfmt",
    )
    assert config.listen_host_port == ("", 9310)
    assert config.filters.port.is_open


def test_example_config_loads_and_means_what_it_says() -> None:
    config = load_config(["--config.file", str(EXAMPLE)])
    assert config.listen_address == ":9310" and config.netlink_timeout == 5.0
    assert config.filters.port.allows("tap0") and not config.filters.port.allows("patch-br-int")
    assert config.filters.vport_type.allows("vxlan")
    assert config.filters.device_kind.allows("none")


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("web: {listen_address: '127.0.0.1:1'}\nfilters: {port: {include: 'a.*'}}\n")
    config = load_config(
        ["--config.file", str(path), "--web.listen-address", "[::1]:9999", "--collector.port-include", "b.*"]
    )
    assert config.listen_host_port == ("::1", 9999)
    assert config.filters.port.allows("b1") and not config.filters.port.allows("a1")


def test_device_kind_filter_from_flags_and_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("filters: {device_kind: {exclude: 'geneve|vxlan'}}\n")
    config = load_config(["--config.file", str(path), "--collector.device-kind-include", "tun|veth|geneve"])
    kinds = config.filters.device_kind
    assert [kinds.allows(k) for k in ("tun", "veth", "geneve", "vxlan", "none", "")] == [
        True,
        True,
        False,
        False,
        False,
        False,
    ]


def test_every_file_key_is_read() -> None:
    fields = {(section, key) for section, key, _, _ in config_module._FILE_FIELDS}
    known = {
        (section, key)
        for section, keys in config_module._FILE_KEYS.items()
        if section != "filters"
        for key in keys
    }
    assert fields == known


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("webb: {}\n", "webb: unknown key (known keys: web, log, netlink, filters, netns"),
        ("web: {listen: ':1'}\n", "web.listen: unknown key"),
        ("web: [1]\n", "web: must be a mapping, got list"),
        ("web: {listen_address: 9310}\n", "web.listen_address: must be a string, got int"),
        ("web: {listen_address: 'nohost'}\n", "web.listen_address: 'nohost' is not host:port"),
        ("web: {listen_address: ':70000'}\n", "web.listen_address: port 70000 is out of range"),
        ("web: {telemetry_path: 'metrics'}\n", "web.telemetry_path: must start with /"),
        ("web: {max_requests: true}\n", "web.max_requests: must be a whole number, got bool"),
        ("web: {max_connections: 2.5}\n", "web.max_connections: must be a whole number, got float"),
        ("netlink: {timeout_seconds: true}\n", "netlink.timeout_seconds: must be a number, got bool"),
        ("netns: {names: [a, 1]}\n", "netns.names: must be a list of strings, got list"),
        ("netns: {all: 1}\n", "netns.all: must be true or false, got int"),
        ("log: {level: verbose}\n", "log.level: must be one of debug, info, warn, error, got 'verbose'"),
        ("log: {format: text}\n", "log.format: must be one of logfmt, json"),
        ("netlink: {timeout_seconds: 'x'}\n", "netlink.timeout_seconds: must be a number, got str"),
        ("netlink: {timeout_seconds: 0}\n", "netlink.timeout_seconds: must be above 0"),
        (
            "filters: {port: {include: '(unclosed'}}\n",
            "filters.port.include: invalid regular expression '(unclosed'",
        ),
        (
            "filters: {ports: {}}\n",
            "filters.ports: unknown key (known keys: datapath, port, vport_type, device_kind)",
        ),
        ("filters: {port: {only: x}}\n", "filters.port.only: unknown key"),
        ("filters: {port: {exclude: 5}}\n", "filters.port.exclude: must be a string, got int"),
        (
            "collector: {vport_metric: []}\n",
            "collector.vport_metric: unknown key (known keys: vport_metrics, events, flows, flows_interval_seconds,"
            " flows_max_flows, flows_max_seconds, meters, meters_interval_seconds, conntrack_zones,"
            " conntrack_zones_interval_seconds)",
        ),
        (
            "collector: {vport_metrics: packets}\n",
            "collector.vport_metrics: must be a list of strings, got str",
        ),
        ("collector: {events: 'no'}\n", "collector.events: must be true or false, got str"),
        (
            "collector: {vport_metrics: [packets, flows]}\n",
            "collector.vport_metrics: unknown metric group 'flows' (known: packets, bytes, errors, dropped,"
            " upcalls, info)",
        ),
        ("- a\n- b\n", "top level: must be a mapping, got list"),
        ("ovsdb: {enable: true}\n", "ovsdb.enable: unknown key (known keys: enabled, socket, external_ids)"),
        ("ovsdb: {enabled: 'yes'}\n", "ovsdb.enabled: must be true or false, got str"),
        (
            "ovsdb: {socket: /run/db.sock}\n",
            "ovsdb.socket: must be unix:PATH or tcp:HOST:PORT, got '/run/db.sock'",
        ),
        ("ovsdb: {socket: 'ssl:1.2.3.4:6640'}\n", "ovsdb.socket: must be unix:PATH or tcp:HOST:PORT"),
        ("ovsdb: {socket: 'tcp:1.2.3.4'}\n", "ovsdb.socket: tcp: needs HOST:PORT, got '1.2.3.4'"),
        (
            f"ovsdb: {{socket: 'unix:/{'x' * 120}'}}\n",
            "ovsdb.socket: unix socket path is longer than 107 bytes",
        ),
        ("ovsdb: {external_ids: iface-id}\n", "ovsdb.external_ids: must be a list of strings, got str"),
        (
            "ovsdb: {external_ids: [bridge]}\n",
            "ovsdb.external_ids: 'bridge' makes the label 'bridge', which the exporter's own labels use",
        ),
        (
            "ovsdb: {external_ids: [k8s.ovn.org/network]}\n",
            "ovsdb.external_ids: 'k8s.ovn.org/network' does not make a valid label name",
        ),
        (
            "ovsdb: {external_ids: [__x]}\n",
            "ovsdb.external_ids: '__x' makes the label '__x'; names starting with __ are reserved",
        ),
        ("ovsdb: {external_ids: [a, a]}\n", "ovsdb.external_ids: 'a' is listed twice"),
        ("web: {listen_address: ':1'\n", "invalid YAML at line 2, column 1"),
        ("collector: {meters: 1}\n", "collector.meters: must be true or false, got int"),
        (
            "collector: {conntrack_zones_interval_seconds: 7200}\n",
            "collector.conntrack_zones_interval_seconds: must be between 1 and 3600 seconds, got 7200",
        ),
        (
            "collector: {meters_interval_seconds: '15s'}\n",
            "collector.meters_interval_seconds: must be a number",
        ),
    ],
)
def test_bad_file_is_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(["--config.file", str(path)])
    assert message in str(info.value)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args], capture_output=True, text=True, timeout=60, cwd=ROOT
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config.file", "/nonexistent/c.yml"], "cannot read config file: No such file or directory"),
        (["--log.level", "loud"], "argument --log.level: invalid choice: 'loud'"),
        (["--collector.port-exclude", "[x"], "flag --collector.port-exclude: invalid regular expression"),
        (
            ["--collector.device-kind-include", "(x"],
            "flag --collector.device-kind-include: invalid regular expression",
        ),
        (["--web.listen-address", "localhost"], "flag --web.listen-address: 'localhost' is not host:port"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["--netlink.timeout", "abc"], "argument --netlink.timeout: invalid float value"),
        (
            ["--collector.vport.metrics", "packets,drops"],
            "flag --collector.vport.metrics: unknown metric group 'drops' (known: packets, bytes,",
        ),
        (
            ["--collector.ovsdb.socket", "db.sock"],
            "flag --collector.ovsdb.socket: must be unix:PATH or tcp:HOST:PORT",
        ),
        (
            ["--collector.ovsdb.external-ids", "iface-id,port"],
            "flag --collector.ovsdb.external-ids: 'port' makes the label 'port'",
        ),
        (
            ["--collector.meters.interval", "0.1"],
            "flag --collector.meters.interval: must be between 1 and 3600 seconds, got 0.1",
        ),
        (
            ["--collector.conntrack-zones.interval", "nan"],
            "flag --collector.conntrack-zones.interval: must be between 1 and 3600 seconds, got nan",
        ),
        (
            ["--collector.meters.interval", "soon"],
            "argument --collector.meters.interval: invalid float value",
        ),
    ],
)
def test_bad_config_exits_2_with_one_line(args: list[str], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("ovs-vport-exporter: error:")
    assert result.stdout == ""


def test_version_and_help() -> None:
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("ovs-vport-exporter version ")
    helptext = run_cli("--help")
    assert helptext.returncode == 0
    for flag in (
        "--web.listen-address",
        "--web.telemetry-path",
        "--config.file",
        "--log.level",
        "--log.format",
        "--collector.ovsdb",
        "--collector.ovsdb.socket",
        "--collector.ovsdb.external-ids",
        "--collector.meters",
        "--collector.meters.interval",
        "--collector.conntrack-zones",
        "--collector.conntrack-zones.interval",
    ):
        assert flag in helptext.stdout


def test_vport_metric_groups_default_to_all_and_flags_override_the_file(tmp_path: Path) -> None:
    assert load_config([]).vport_metrics == ("packets", "bytes", "errors", "dropped", "upcalls", "info")
    path = tmp_path / "c.yml"
    path.write_text("collector: {vport_metrics: [info, packets, packets]}\n")
    # Canonical order, each group once.
    assert load_config(["--config.file", str(path)]).vport_metrics == ("packets", "info")
    flags = ["--config.file", str(path), "--collector.vport.metrics", " bytes,dropped "]
    assert load_config(flags).vport_metrics == ("bytes", "dropped")
    assert load_config(["--collector.vport.metrics", ""]).vport_metrics == ()


def test_ovsdb_off_by_default_and_its_defaults() -> None:
    config = load_config([])
    assert not config.ovsdb_enabled
    assert config.ovsdb_socket == "unix:/run/openvswitch/db.sock"
    assert config.ovsdb_external_ids == (
        "iface-id", "attached-mac", "attached_mac", "iface-status", "vm-id", "vm-uuid", "pod_name", "pod_namespace",
    )  # fmt: skip


def test_ovsdb_file_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("ovsdb: {enabled: true, socket: 'tcp:127.0.0.1:6640', external_ids: [iface-id, owner]}\n")
    config = load_config(["--config.file", str(path)])
    assert (config.ovsdb_enabled, config.ovsdb_socket, config.ovsdb_external_ids) == (
        True, "tcp:127.0.0.1:6640", ("iface-id", "owner"),
    )  # fmt: skip
    config = load_config(
        [
            "--config.file",
            str(path),
            "--no-collector.ovsdb",
            "--collector.ovsdb.external-ids",
            " vm-uuid , ,x ",
        ]
    )
    assert not config.ovsdb_enabled and config.ovsdb_external_ids == ("vm-uuid", "x")
    config = load_config(["--collector.ovsdb", "--collector.ovsdb.external-ids", ""])
    assert config.ovsdb_enabled and config.ovsdb_external_ids == ()


def test_event_listener_is_on_by_default_and_can_be_turned_off(tmp_path: Path) -> None:
    assert load_config([]).events is True
    assert load_config(["--no-collector.events"]).events is False
    path = tmp_path / "c.yml"
    path.write_text("collector: {events: false}\n")
    assert load_config(["--config.file", str(path)]).events is False
    assert load_config(["--config.file", str(path), "--collector.events"]).events is True


def test_meters_and_conntrack_zones_defaults_file_and_flags(tmp_path: Path) -> None:
    config = load_config([])
    assert (config.meters, config.meters_interval, config.conntrack_zones, config.conntrack_zones_interval) == (
        True, 15.0, True, 15.0,
    )  # fmt: skip
    path = tmp_path / "c.yml"
    path.write_text(
        "collector: {meters: false, meters_interval_seconds: 30, conntrack_zones: false,"
        " conntrack_zones_interval_seconds: 60}\n"
    )
    config = load_config(["--config.file", str(path)])
    assert (config.meters, config.meters_interval, config.conntrack_zones, config.conntrack_zones_interval) == (
        False, 30.0, False, 60.0,
    )  # fmt: skip
    flags = ["--config.file", str(path), "--collector.meters", "--collector.meters.interval", "5",
             "--collector.conntrack-zones", "--collector.conntrack-zones.interval", "1"]  # fmt: skip
    config = load_config(flags)
    assert (config.meters, config.meters_interval, config.conntrack_zones, config.conntrack_zones_interval) == (
        True, 5.0, True, 1.0,
    )  # fmt: skip
    config = load_config(["--no-collector.meters", "--no-collector.conntrack-zones"])
    assert not config.meters and not config.conntrack_zones


def test_config_is_frozen() -> None:
    with pytest.raises(AttributeError):
        Config().listen_address = ":1"  # type: ignore[misc]


def test_an_exporter_without_ovsdb_or_config_file_never_loads_their_libraries() -> None:
    # The ovs library and PyYAML are about 8 MB of RSS together: every scrape's peak carries them.
    code = (
        "import sys\n"
        "from exporter import cli, collector\n"
        "from exporter.http import server\n"
        "cli.load_config(['--web.listen-address', '127.0.0.1:0'])\n"
        "print(sorted({'ovs', 'yaml'} & {name.partition('.')[0] for name in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
