"""Command line: flags and config file -> Config, then serve until SIGTERM or Ctrl-C.

Bad configuration ends the process before it serves anything, with exit status 2
and one line on stderr saying what is wrong and where.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from exporter import __version__, logs
from exporter.collector import Collector, SnapshotSource
from exporter.config import (
    FLOWS_INTERVAL,
    FLOWS_MAX_FLOWS,
    FLOWS_MAX_SECONDS,
    LOG_FORMATS,
    LOG_LEVELS,
    VPORT_METRIC_GROUPS,
    Config,
    ConfigError,
    build,
    load_file,
)
from exporter.http import webconfig
from exporter.http.server import HttpMetrics, MetricsServer
from exporter.kernel.ct_zones import ConntrackZoneSource
from exporter.kernel.dumps import KernelSource, NamespaceSources, open_link_socket_in
from exporter.kernel.events import EventListener, open_sockets
from exporter.kernel.flow_worker import WorkerConfig
from exporter.kernel.flows import FlowSource
from exporter.kernel.genl import GenlSocket, open_socket
from exporter.kernel.meters import MeterSource
from exporter.kernel.netns import namespace_id
from exporter.ovsdb.identity import DEFAULT_EXTERNAL_IDS, IdentitySource

PROG = "ovs-vport-exporter"
EXIT_CONFIG = 2
log = logging.getLogger(__name__)

# Filter flags: (flag, subject, rule), named like node_exporter's --collector.netdev.device-include.
_FILTER_FLAGS = [
    (f"--collector.{flag_subject}-{rule}", subject, rule)
    for flag_subject, subject in (
        ("datapath", "datapath"),
        ("port", "port"),
        ("vport-type", "vport_type"),
        ("device-kind", "device_kind"),
    )
    for rule in ("include", "exclude")
]


# Config key -> the flag that sets it, so an error in a flag's value names the flag.
_FLAG_OF_KEY = {
    "web.listen_address": "--web.listen-address",
    "web.telemetry_path": "--web.telemetry-path",
    "netlink.timeout_seconds": "--netlink.timeout",
    "web.max_requests": "--web.max-requests",
    "web.max_connections": "--web.max-connections",
    "netns.names": "--collector.netns",
    "collector.vport_metrics": "--collector.vport.metrics",
    "ovsdb.socket": "--collector.ovsdb.socket",
    "ovsdb.external_ids": "--collector.ovsdb.external-ids",
    "collector.events": "--[no-]collector.events",
    "collector.flows_interval_seconds": "--collector.flows.interval",
    "collector.flows_max_flows": "--collector.flows.max-flows",
    "collector.flows_max_seconds": "--collector.flows.max-seconds",
    "collector.meters_interval_seconds": "--collector.meters.interval",
    "collector.conntrack_zones_interval_seconds": "--collector.conntrack-zones.interval",
    **{f"filters.{subject}.{rule}": flag for flag, subject, rule in _FILTER_FLAGS},
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block: the same shape as every config error.
        self.exit(EXIT_CONFIG, f"{PROG}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Prometheus exporter for the Open vSwitch kernel datapath: per-vport counters "
        "from the ovs_datapath and ovs_vport generic netlink families. Read-only; needs no privileges.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument(
        "--config.file",
        dest="config_file",
        metavar="PATH",
        help="YAML configuration file; flags override it.",
    )
    p.add_argument(
        "--web.listen-address",
        dest="listen_address",
        metavar="ADDR",
        help="Address to listen on (default :9310, every address).",
    )
    p.add_argument(
        "--web.config.file",
        dest="web_config_file",
        metavar="PATH",
        help="exporter-toolkit web configuration: TLS and basic auth (see SECURITY.md).",
    )
    p.add_argument(
        "--web.telemetry-path",
        dest="telemetry_path",
        metavar="PATH",
        help="Path under which to expose metrics (default /metrics).",
    )
    p.add_argument(
        "--web.max-requests",
        dest="max_requests",
        type=int,
        metavar="N",
        help="Most scrapes waiting for or making a body at once; past it, 503 (default 40, 0: no limit).",
    )
    p.add_argument(
        "--web.max-connections",
        dest="max_connections",
        type=int,
        metavar="N",
        help="Most open HTTP connections; past it an idle or stalled one is closed (default 256, 0: none).",
    )
    p.add_argument(
        "--log.level",
        dest="log_level",
        choices=LOG_LEVELS,
        help="Only log messages with the given severity or above (default info).",
    )
    p.add_argument(
        "--log.format",
        dest="log_format",
        choices=LOG_FORMATS,
        help="Output format of log messages (default logfmt).",
    )
    p.add_argument(
        "--netlink.timeout",
        dest="netlink_timeout",
        type=float,
        metavar="SECONDS",
        help="How long to wait for each kernel reply (default 5).",
    )
    filter_subjects = {
        "vport_type": "vport types (netdev, internal, gre, vxlan, geneve, or a number)",
        "device_kind": "device kinds of the vports' netdevs (tun, veth, geneve, vxlan, openvswitch, "
        "none for a physical NIC, ...; '' when not known)",
    }
    for flag, subject, rule in _FILTER_FLAGS:
        what = filter_subjects.get(subject, f"{subject} names")
        p.add_argument(
            flag,
            dest=f"filter_{subject}_{rule}",
            metavar="REGEX",
            help=f"Regular expression of {what} to {rule} (full match).",
        )
    p.add_argument(
        "--collector.netns",
        dest="netns_names",
        action="append",
        metavar="NAME",
        help="Also collect from this network namespace (under /run/netns; repeatable). Needs CAP_SYS_ADMIN.",
    )
    p.add_argument(
        "--collector.netns.all",
        dest="netns_all",
        action="store_true",
        help="Also collect from every network namespace under /run/netns. Needs CAP_SYS_ADMIN.",
    )
    p.add_argument(
        "--collector.vport.metrics",
        dest="vport_metrics",
        metavar="GROUPS",
        help="Comma-separated per-vport metric groups to serve "
        f"(default all: {','.join(VPORT_METRIC_GROUPS)}); empty serves no per-vport series.",
    )
    p.add_argument(
        "--collector.ovsdb",
        dest="ovsdb_enabled",
        action=argparse.BooleanOptionalAction,
        help="Also read bridges and VM/pod identity from OVSDB (ovs_interface_info, ovs_system_info), "
        "and the Interfaces ovs-vswitchd cannot open (ovs_interface_broken_info). "
        "Read-only; needs permission to connect to the socket.",
    )
    p.add_argument(
        "--collector.ovsdb.socket",
        dest="ovsdb_socket",
        metavar="REMOTE",
        help="OVSDB server to read: unix:PATH or tcp:HOST:PORT (default unix:/run/openvswitch/db.sock).",
    )
    p.add_argument(
        "--collector.ovsdb.external-ids",
        dest="ovsdb_external_ids",
        metavar="KEYS",
        help="Comma-separated Interface external_ids keys that become labels of ovs_interface_info "
        "('-' as '_'; empty: none). Default: " + ",".join(DEFAULT_EXTERNAL_IDS) + ".",
    )
    p.add_argument(
        "--collector.events",
        dest="events",
        action=argparse.BooleanOptionalAction,
        help="Count vport additions, removals and changes between scrapes from the kernel's notifications "
        "(default on; --no-collector.events turns it off).",
    )
    p.add_argument(
        "--collector.flows",
        dest="flows",
        action=argparse.BooleanOptionalAction,
        help="Dump the kernel's flow tables in a worker process: megaflows and drop flows per port "
        "(default off).",
    )
    p.add_argument(
        "--collector.flows.interval",
        dest="flows_interval",
        type=float,
        metavar="SECONDS",
        help=f"Seconds between the starts of two rounds of flow dumps (default {FLOWS_INTERVAL:g}).",
    )
    p.add_argument(
        "--collector.flows.max-flows",
        dest="flows_max_flows",
        type=int,
        metavar="N",
        help=f"A flow dump listing more flows is abandoned (default {FLOWS_MAX_FLOWS}).",
    )
    p.add_argument(
        "--collector.flows.max-seconds",
        dest="flows_max_seconds",
        type=float,
        metavar="SECONDS",
        help=f"A flow dump running longer is abandoned (default {FLOWS_MAX_SECONDS:g}).",
    )
    p.add_argument(
        "--collector.meters",
        dest="meters",
        action=argparse.BooleanOptionalAction,
        help="Read every datapath's meters (ovs_meter, one GET per meter id) in the background "
        "(default on; --no-collector.meters turns it off).",
    )
    p.add_argument(
        "--collector.meters.interval",
        dest="meters_interval",
        type=float,
        metavar="SECONDS",
        help="Seconds between two rounds of meter reads (default 15).",
    )
    p.add_argument(
        "--collector.conntrack-zones",
        dest="conntrack_zones",
        action=argparse.BooleanOptionalAction,
        help="Read the conntrack zone limits and their connection counts (ovs_ct_limit) in the background "
        "(default on; --no-collector.conntrack-zones turns it off).",
    )
    p.add_argument(
        "--collector.conntrack-zones.interval",
        dest="conntrack_zones_interval",
        type=float,
        metavar="SECONDS",
        help="Seconds between two reads of the conntrack zone limits (default 15).",
    )
    p.add_argument("--version", action="version", version=f"{PROG} version {__version__}")
    return p  # fmt: skip


def load_config(argv: Sequence[str]) -> Config:
    """Parse flags and the config file; raise ConfigError (or exit 2 from argparse)."""
    args: dict[str, Any] = vars(_parser().parse_args(argv))
    file_settings: dict[str, Any] = {}
    config_file = args.pop("config_file", None)
    if config_file is not None:
        try:
            file_settings = load_file(Path(config_file))
        except ConfigError as err:
            raise ConfigError(f"config file {config_file}: {err}") from None
    flag_settings: dict[str, Any] = {"filters": {}}
    for key, value in args.items():
        if key.startswith("filter_"):
            for _flag, subject, rule in _FILTER_FLAGS:
                if key == f"filter_{subject}_{rule}":
                    flag_settings["filters"].setdefault(subject, {})[rule] = value
        elif key == "netns_names":
            flag_settings[key] = tuple(value)
        elif key == "vport_metrics":
            flag_settings[key] = tuple(group.strip() for group in value.split(",") if group.strip())
        elif key == "ovsdb_external_ids":
            flag_settings[key] = tuple(k.strip() for k in value.split(",") if k.strip())
        else:
            flag_settings[key] = value
    if config_file is not None:
        try:
            build(file_settings, {})  # the file alone, so its errors name the file
        except ConfigError as err:
            raise ConfigError(f"config file {config_file}: {err}") from None
    try:
        return build(file_settings, flag_settings)
    except ConfigError as err:
        key = str(err).split(":", 1)[0]
        raise ConfigError(f"flag {_FLAG_OF_KEY.get(key, key)}: {str(err).split(': ', 1)[-1]}") from None


def _polled_sources(
    config: Config, namespaces: NamespaceSources | None
) -> list[MeterSource | ConntrackZoneSource]:
    """The background kernel readers the configuration turns on, started."""

    def opener(netns: str | None) -> GenlSocket:
        return open_socket(config.netlink_timeout, netns)

    follow = namespaces.namespaces if namespaces is not None else list
    sources: list[MeterSource | ConntrackZoneSource] = []
    if config.meters:
        sources.append(MeterSource(opener, config.meters_interval, follow, namespace_id))
    if config.conntrack_zones:
        sources.append(ConntrackZoneSource(opener, config.conntrack_zones_interval, follow, namespace_id))
    for polled in sources:
        polled.start()
    return sources


def _stop(signum: int, frame: FrameType | None) -> NoReturn:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load_config(sys.argv[1:] if argv is None else argv)
    except ConfigError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    web_config = None
    if config.web_config_file is not None:
        try:
            web_config = webconfig.load(Path(config.web_config_file))
        except ConfigError as err:
            print(f"{PROG}: error: web config file {config.web_config_file}: {err}", file=sys.stderr)
            return EXIT_CONFIG
    logs.setup(config.log_level, config.log_format)

    # Device kinds are read for ovs_vport_info and the device kind filter; without either, not at all.
    read_kinds = "info" in config.vport_metrics or not config.filters.device_kind.is_open
    source = KernelSource(
        lambda: open_socket(config.netlink_timeout),
        (lambda: open_link_socket_in(None, config.netlink_timeout)) if read_kinds else None,
    )
    namespaces = None
    if config.netns_names or config.netns_all:
        namespaces = NamespaceSources(
            config.netns_names,
            config.netns_all,
            config.netlink_timeout,
            open_link_in=open_link_socket_in if read_kinds else None,
        )
    identity = None
    if config.ovsdb_enabled:
        filters = config.filters
        identity = IdentitySource(
            config.ovsdb_socket,
            config.ovsdb_external_ids,
            lambda datapath, port: filters.datapath.allows(datapath) and filters.port.allows(port),
        )
    http_metrics = HttpMetrics()
    listeners: list[EventListener] = []
    if config.events:
        listener = EventListener(
            open_sockets(config.netlink_timeout),
            namespaces=namespaces.namespaces if namespaces is not None else list,
            identify=namespace_id,
        )
        listener.start()
        listeners.append(listener)
    flows = None
    if config.flows:
        flows = FlowSource(
            WorkerConfig(
                interval=config.flows_interval,
                max_flows=config.flows_max_flows,
                max_seconds=config.flows_max_seconds,
                netlink_timeout=config.netlink_timeout,
                netns_names=config.netns_names,
                netns_all=config.netns_all,
            )
        )
        flows.start()
    # Every source that runs in the background, in the order the scrape reports them.
    background: list[SnapshotSource] = [
        *listeners,
        *_polled_sources(config, namespaces),
        *([identity] if identity is not None else []),
        *([flows] if flows is not None else []),
    ]

    def close_sources() -> None:
        source.close()
        for started in background:
            started.close()
        if namespaces is not None:
            namespaces.close()

    collector = Collector(
        source,
        config.filters,
        __version__,
        namespaces=namespaces,
        vport_metrics=config.vport_metrics,
        snapshot_sources=background,
        extra=(http_metrics.render,),
    )
    host, port = config.listen_host_port
    try:
        server = MetricsServer(
            host,
            port,
            config.telemetry_path,
            collector,
            __version__,
            web_config,
            max_requests=config.max_requests,
            max_connections=config.max_connections,
            metrics=http_metrics,
        )
    except OSError as err:
        log.error("cannot listen on %s: %s", config.listen_address, err.strerror or err)
        close_sources()
        return 1
    signal.signal(signal.SIGTERM, _stop)
    scheme = "https" if web_config is not None and web_config.ssl_context is not None else "http"
    bound_host, bound_port = server.server_address[:2]
    shown_host = f"[{bound_host!s}]" if ":" in str(bound_host) else str(bound_host)
    log.info(
        "listening on %s://%s:%d, metrics at %s (version %s)",
        scheme,
        shown_host,
        bound_port,
        config.telemetry_path,
        __version__,
    )
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        log.info("shutting down")
    finally:
        server.server_close()
        close_sources()
    return 0
