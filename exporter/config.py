"""Configuration: a YAML file and command-line flags, merged into one frozen ``Config``.

Flags override the file; the file overrides the defaults. Everything is checked
here, before the server starts: an unknown key, a wrong type or a bad regular
expression raises ``ConfigError`` with one line naming the key and the problem,
and the CLI turns that into exit status 2.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.ovsdb.identity import DEFAULT_EXTERNAL_IDS, check_external_ids
from exporter.ovsdb.reader import check_remote

LOG_LEVELS = ("debug", "info", "warn", "error")
LOG_FORMATS = ("logfmt", "json")
FILTER_SUBJECTS = ("datapath", "port", "vport_type", "device_kind")
# Per-vport metric groups an operator can choose (--collector.vport.metrics), in the order the
# README lists them; exposition.VPORT_METRIC_GROUPS says which families each one serves.
VPORT_METRIC_GROUPS = ("packets", "bytes", "errors", "dropped", "upcalls", "info")
# The flow table collector's defaults (--collector.flows.*); docs/performance.md says why.
FLOWS_INTERVAL = 5.0
FLOWS_MAX_FLOWS = 250_000
FLOWS_MAX_SECONDS = 60.0
# Seconds between two rounds of a background kernel reader (meters, conntrack zones): at least a
# second, since each round's requests cost the kernel (a meter GET takes ovs_mutex).
MIN_POLL_INTERVAL = 1.0
MAX_POLL_INTERVAL = 3600.0


class ConfigError(Exception):
    """Bad configuration. The message is one line: where, then what."""


@dataclass(frozen=True)
class NameFilter:
    """Include and exclude patterns; a name passes when it fully matches ``include``
    (or there is none) and does not fully match ``exclude``."""

    include: re.Pattern[str] | None = None
    exclude: re.Pattern[str] | None = None

    def allows(self, name: str) -> bool:
        if self.include is not None and self.include.fullmatch(name) is None:
            return False
        return self.exclude is None or self.exclude.fullmatch(name) is None

    @property
    def is_open(self) -> bool:
        return self.include is None and self.exclude is None


@dataclass(frozen=True)
class Filters:
    datapath: NameFilter = field(default_factory=NameFilter)
    port: NameFilter = field(default_factory=NameFilter)
    vport_type: NameFilter = field(default_factory=NameFilter)
    device_kind: NameFilter = field(default_factory=NameFilter)  # "" for a vport whose kind was not read


@dataclass(frozen=True)
class Config:
    listen_address: str = ":9310"
    telemetry_path: str = "/metrics"
    log_level: str = "info"
    log_format: str = "logfmt"
    netlink_timeout: float = 5.0
    filters: Filters = field(default_factory=Filters)
    netns_names: tuple[str, ...] = ()  # named network namespaces to collect from as well
    netns_all: bool = False  # and every namespace under /run/netns
    web_config_file: str | None = None  # exporter-toolkit web config, flag only (as in node_exporter)
    vport_metrics: tuple[str, ...] = VPORT_METRIC_GROUPS  # the per-vport metric groups served
    ovsdb_enabled: bool = False  # read identity (bridge, VM, pod) from OVSDB as well
    ovsdb_socket: str = "unix:/run/openvswitch/db.sock"
    ovsdb_external_ids: tuple[str, ...] = DEFAULT_EXTERNAL_IDS  # keys that become labels
    max_requests: int = 40  # scrapes waiting for or making a body; 0: no limit (node_exporter's default)
    max_connections: int = 256  # open HTTP connections, one thread each; 0: no limit
    events: bool = True  # count vport notifications between scrapes (exporter.kernel.events)
    flows: bool = False  # dump the flow tables in a worker process (exporter.kernel.flows)
    flows_interval: float = FLOWS_INTERVAL  # seconds between the starts of two rounds of flow dumps
    flows_max_flows: int = FLOWS_MAX_FLOWS  # a flow dump listing more is abandoned
    flows_max_seconds: float = FLOWS_MAX_SECONDS  # a flow dump running longer is abandoned
    meters: bool = True  # read the datapaths' meters in the background (exporter.kernel.meters)
    meters_interval: float = 15.0  # seconds between two rounds of meter reads
    conntrack_zones: bool = True  # read the conntrack zone limits (exporter.kernel.ct_zones)
    conntrack_zones_interval: float = 15.0  # seconds between two reads of the zone limits

    @property
    def listen_host_port(self) -> tuple[str, int]:
        return parse_listen_address(self.listen_address)


# The file's schema: key -> (type, allowed sub-keys). Kept as data so the error
# for an unknown key can list the known ones.
_FILE_KEYS: dict[str, tuple[str, ...]] = {
    "web": ("listen_address", "telemetry_path", "max_requests", "max_connections"),
    "log": ("level", "format"),
    "netlink": ("timeout_seconds",),
    "filters": FILTER_SUBJECTS,
    "netns": ("names", "all"),
    "collector": (
        "vport_metrics",
        "events",
        "flows",
        "flows_interval_seconds",
        "flows_max_flows",
        "flows_max_seconds",
        "meters",
        "meters_interval_seconds",
        "conntrack_zones",
        "conntrack_zones_interval_seconds",
    ),
    "ovsdb": ("enabled", "socket", "external_ids"),
}


def parse_listen_address(address: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (all addresses) -> (host, port)."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"{address!r} is not host:port (for example :9310 or 127.0.0.1:9310)")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 0-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


def mapping(value: Any, where: str) -> Mapping[str, Any]:
    """A YAML section as a mapping with string keys (absent: empty), or ConfigError."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: must be a mapping, got {_type_name(value)}")
    for key in value:
        if not isinstance(key, str):
            raise ConfigError(f"{where}: keys must be strings, got {key!r}")
    return value


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def check_keys(section: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    """Refuse any key of ``section`` not in ``allowed``, naming its full path."""
    for key in section:
        if key not in allowed:
            prefix = f"{where}." if where else ""
            raise ConfigError(f"{prefix}{key}: unknown key (known keys: {', '.join(allowed)})")


#: What a value of each kind must be, in the words the error uses, and its check.
_KINDS: dict[str, Callable[[Any], bool]] = {
    "a string": lambda v: isinstance(v, str),
    "true or false": lambda v: isinstance(v, bool),
    # bool is an int in Python; YAML's `true` is no port count.
    "a whole number": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "a number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "a list of strings": lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v),
}

#: Every scalar or list key of the file: (section, key, kind, Config field). The filters
#: section, a mapping of patterns, is read by _file_filters, with the same checker.
_FILE_FIELDS: tuple[tuple[str, str, str, str], ...] = (
    ("web", "listen_address", "a string", "listen_address"),
    ("web", "telemetry_path", "a string", "telemetry_path"),
    ("web", "max_requests", "a whole number", "max_requests"),
    ("web", "max_connections", "a whole number", "max_connections"),
    ("log", "level", "a string", "log_level"),
    ("log", "format", "a string", "log_format"),
    ("netlink", "timeout_seconds", "a number", "netlink_timeout"),
    ("netns", "names", "a list of strings", "netns_names"),
    ("netns", "all", "true or false", "netns_all"),
    ("collector", "vport_metrics", "a list of strings", "vport_metrics"),
    ("collector", "events", "true or false", "events"),
    ("collector", "flows", "true or false", "flows"),
    ("collector", "flows_interval_seconds", "a number", "flows_interval"),
    ("collector", "flows_max_flows", "a whole number", "flows_max_flows"),
    ("collector", "flows_max_seconds", "a number", "flows_max_seconds"),
    ("collector", "meters", "true or false", "meters"),
    ("collector", "meters_interval_seconds", "a number", "meters_interval"),
    ("collector", "conntrack_zones", "true or false", "conntrack_zones"),
    ("collector", "conntrack_zones_interval_seconds", "a number", "conntrack_zones_interval"),
    ("ovsdb", "enabled", "true or false", "ovsdb_enabled"),
    ("ovsdb", "socket", "a string", "ovsdb_socket"),
    ("ovsdb", "external_ids", "a list of strings", "ovsdb_external_ids"),
)


def _file_value(value: Any, kind: str, where: str) -> Any:
    """``value`` checked against ``kind``, as Config holds it (lists as tuples, numbers as float)."""
    if not _KINDS[kind](value):
        raise ConfigError(f"{where}: must be {kind}, got {_type_name(value)}")
    if kind == "a list of strings":
        return tuple(value)
    if kind == "a number":
        return float(value)
    return value


def compile_pattern(pattern: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"{where}: invalid regular expression {pattern!r}: {err}") from None


def _file_filters(section: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    check_keys(section, FILTER_SUBJECTS, "filters")
    result: dict[str, dict[str, str]] = {}
    for subject in FILTER_SUBJECTS:
        where = f"filters.{subject}"
        rules = mapping(section.get(subject), where)
        check_keys(rules, ("include", "exclude"), where)
        result[subject] = {}
        for rule in ("include", "exclude"):
            value = rules.get(rule)
            if value is not None:
                result[subject][rule] = _file_value(value, "a string", f"{where}.{rule}")
    return result


def parse_yaml(text: str) -> Any:
    """The YAML document in ``text``, or ConfigError saying where it is malformed."""
    import yaml  # here: only a --config.file needs it, and it is 3 MB of RSS

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"invalid YAML{at}: {problem}") from None


def load_file(path: Path) -> dict[str, Any]:
    """Read and check the YAML file; return its settings flattened to Config field names."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read config file: {err.strerror}: {path}") from None
    top = mapping(parse_yaml(text), "top level")
    check_keys(top, tuple(_FILE_KEYS), "")
    settings: dict[str, Any] = {}
    sections = {name: mapping(top.get(name), name) for name in _FILE_KEYS if name != "filters"}
    for name, section in sections.items():
        check_keys(section, _FILE_KEYS[name], name)
    for name, key, kind, setting in _FILE_FIELDS:
        value = sections[name].get(key)
        if value is not None:
            settings[setting] = _file_value(value, kind, f"{name}.{key}")
    settings["filters"] = _file_filters(mapping(top.get("filters"), "filters"))
    return settings


def vport_metric_groups(names: tuple[str, ...]) -> tuple[str, ...]:
    """The chosen groups in their canonical order, or ConfigError naming an unknown one."""
    for name in names:
        if name not in VPORT_METRIC_GROUPS:
            raise ConfigError(
                f"collector.vport_metrics: unknown metric group {name!r}"
                f" (known: {', '.join(VPORT_METRIC_GROUPS)})"
            )
    return tuple(group for group in VPORT_METRIC_GROUPS if group in names)


def _check_range(key: str, value: float, low: float, high: float, *, low_allowed: bool = True) -> None:
    """A number setting, finite and within [low, high] (or (low, high]), or a ConfigError naming it."""
    above_low = low <= value if low_allowed else low < value
    if not (math.isfinite(value) and above_low and value <= high):
        bound = "at least" if low_allowed else "above"
        raise ConfigError(f"{key}: must be {bound} {low} and at most {high}, got {value}")


def build(file_settings: Mapping[str, Any], flag_settings: Mapping[str, Any]) -> Config:
    """Merge file and flags (flags win) and check every value.

    ``flag_settings`` holds only the flags given on the command line, with the
    same keys as ``load_file`` returns (filters as ``{subject: {rule: pattern}}``).
    """
    merged: dict[str, Any] = {k: v for k, v in file_settings.items() if k != "filters"}
    merged.update({k: v for k, v in flag_settings.items() if k != "filters"})

    config = Config(**merged)
    try:
        config.listen_host_port  # noqa: B018 - validates the address
    except ValueError as err:
        raise ConfigError(f"web.listen_address: {err}") from None
    if not config.telemetry_path.startswith("/") or config.telemetry_path == "/":
        raise ConfigError(
            f"web.telemetry_path: must start with / and not be / itself, got {config.telemetry_path!r}"
        )
    if config.log_level not in LOG_LEVELS:
        raise ConfigError(f"log.level: must be one of {', '.join(LOG_LEVELS)}, got {config.log_level!r}")
    if config.log_format not in LOG_FORMATS:
        raise ConfigError(f"log.format: must be one of {', '.join(LOG_FORMATS)}, got {config.log_format!r}")
    _check_range("netlink.timeout_seconds", config.netlink_timeout, 0, 60, low_allowed=False)
    _check_range("collector.flows_interval_seconds", config.flows_interval, 0.5, 3600)
    _check_range("collector.flows_max_flows", config.flows_max_flows, 1, 100_000_000)
    _check_range("collector.flows_max_seconds", config.flows_max_seconds, 0, 3600, low_allowed=False)
    for key in ("meters_interval", "conntrack_zones_interval"):
        value = getattr(config, key)
        if not (math.isfinite(value) and MIN_POLL_INTERVAL <= value <= MAX_POLL_INTERVAL):
            raise ConfigError(
                f"collector.{key}_seconds: must be between {MIN_POLL_INTERVAL:g} and"
                f" {MAX_POLL_INTERVAL:g} seconds, got {value:g}"
            )

    for key in ("max_requests", "max_connections"):
        if getattr(config, key) < 0:
            raise ConfigError(f"web.{key}: must be 0 (no limit) or more, got {getattr(config, key)}")

    for name in config.netns_names:
        if not name or "/" in name or name in (".", "..") or "\0" in name:
            raise ConfigError(f"netns.names: {name!r} is not a namespace name (as under /run/netns)")

    merged["vport_metrics"] = vport_metric_groups(tuple(config.vport_metrics))
    problem = check_remote(config.ovsdb_socket)
    if problem is not None:
        raise ConfigError(f"ovsdb.socket: {problem}")
    problem = check_external_ids(config.ovsdb_external_ids)
    if problem is not None:
        raise ConfigError(f"ovsdb.external_ids: {problem}")

    filters: dict[str, NameFilter] = {}
    for subject in FILTER_SUBJECTS:
        rules = dict(file_settings.get("filters", {}).get(subject, {}))
        rules.update(flag_settings.get("filters", {}).get(subject, {}))
        where = f"filters.{subject}"
        filters[subject] = NameFilter(
            include=compile_pattern(rules["include"], f"{where}.include") if "include" in rules else None,
            exclude=compile_pattern(rules["exclude"], f"{where}.exclude") if "exclude" in rules else None,
        )
    return Config(**{**merged, "filters": Filters(**filters)})
