"""Generate the Prometheus rules file of ovs-vport-exporter from alerts/config.yml.

The output, ``alerts/ovs-vport-exporter.rules.yml``, is committed: it is the one
rules file that Prometheus, the Helm chart and the tests read. Run this script
after editing ``config.yml`` (``--check`` only reports whether the committed file
is current).

Recording rules come first. Per port, Prometheus already stores one series per
exporter family; a recorded rate of each would double that. So per port only
what the overview dashboard's top-port panels read is recorded (``record_per_port``
in config.yml turns even that off): the packet and byte rates of every port, and
the drop, error and failed-upcall rates and ratios only while they are above 0,
which is a few ports, not all of them. The aggregates the dashboards read are
recorded per datapath, per datapath and kind of device (``ovs_vport_info``'s
``device_kind``: tunnels against VMs' and pods' ports) and, where OVSDB identity
(``ovs_interface_info``) is scraped, per bridge. Alerts read the raw counters: an alert rule stores nothing
but its firing alerts. Rules and alerts that need a per-vport metric group the
exporters do not serve (``vport_metrics`` in config.yml) are left out.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
CONFIG_PATH = HERE / "config.yml"
RULES_PATH = HERE / "ovs-vport-exporter.rules.yml"

# The window of every recorded rate; it is part of the recorded names.
WINDOW = "5m"

# Per-vport counters, as named by the exporter without the `_total` suffix.
VPORT_COUNTERS = (
    "receive_packets",
    "transmit_packets",
    "receive_bytes",
    "transmit_bytes",
    "receive_errors",
    "transmit_errors",
    "receive_dropped",
    "transmit_dropped",
    "upcalls",
    "upcall_failures",
)
# The exporter's metric group (--collector.vport.metrics) of each per-vport counter.
GROUP_OF_COUNTER = {
    "receive_packets": "packets",
    "transmit_packets": "packets",
    "receive_bytes": "bytes",
    "transmit_bytes": "bytes",
    "receive_errors": "errors",
    "transmit_errors": "errors",
    "receive_dropped": "dropped",
    "transmit_dropped": "dropped",
    "upcalls": "upcalls",
    "upcall_failures": "upcalls",
}
VPORT_METRIC_GROUPS = ("packets", "bytes", "errors", "dropped", "upcalls", "info")
# Per-port rates recorded for every port (the top-port traffic panels), and those recorded
# only while above 0 (the top-port trouble panels: most ports never drop or fail).
DENSE_PORT_RATES = ("receive_packets", "transmit_packets", "receive_bytes", "transmit_bytes")
SPARSE_PORT_RATES = (
    "receive_dropped",
    "transmit_dropped",
    "receive_errors",
    "transmit_errors",
    "upcall_failures",
)
# (ratio name, bad counter, all-offered counters): bad / (offered) where offered > 0.
PORT_RATIOS = (
    ("receive_drop", "receive_dropped", ("receive_packets", "receive_dropped")),
    ("transmit_drop", "transmit_dropped", ("transmit_packets", "transmit_dropped")),
    ("receive_error", "receive_errors", ("receive_packets", "receive_errors")),
    ("transmit_error", "transmit_errors", ("transmit_packets", "transmit_errors")),
    # ovs_vport_upcalls_total already counts the failed upcalls.
    ("upcall_failure", "upcall_failures", ("upcalls",)),
)
# Rule groups: dense per-port, sparse per-port ("ports in trouble"), aggregates, alerts.
GROUP_PORTS = "ovs-vport-exporter.ports"
GROUP_PORTS_IN_TROUBLE = "ovs-vport-exporter.ports-in-trouble"
GROUP_AGGREGATES = "ovs-vport-exporter.aggregates"
GROUP_ALERTS = "ovs-vport-exporter.alerts"
# OVSDB identity of a port (exporter issue #10): joined on these labels to sum per bridge and
# to name the bridge, VM or pod of a port in the dashboards. ovs_interface_info describes the
# host's ovs-vswitchd only and has no netns label; vport series of another namespace
# (--collector.netns) carry netns="NAME". With netns among the join labels (absent = "" on both
# sides), only the host's own ports match, and a namespace's ovs-system port that shares a name
# with a host port never borrows the host's identity. Should ovs_interface_info ever describe
# another namespace's OVSDB, it would carry that namespace's netns and join its ports.
INTERFACE_INFO = "ovs_interface_info"
INTERFACE_JOIN = "instance, job, netns, datapath, port"
# What each vport is (the exporter's ovs_vport_info, device_kind from rtnetlink): joined on these
# labels to sum the traffic per kind of device (tunnels, VMs' taps, pods' veths, NICs).
VPORT_INFO = "ovs_vport_info"
VPORT_JOIN = "instance, job, netns, datapath, port"
# The per-port counters summed per device kind: traffic, the dashboards' tunnels-against-workloads view.
DEVICE_KIND_COUNTERS = DENSE_PORT_RATES
# The flow collector's drop counters (--collector.flows): packets its drop flows matched, per
# port and reason (OVS's name for the drop's error code, "unspecified" for empty actions).
FLOW_DROPPED_PACKETS = "ovs_vport_flow_dropped_packets_total"
# Labels that tie a flow collector series to its datapath (netns: --collector.netns).
DATAPATH_JOIN = "instance, job, netns, datapath"
# Per-datapath counters (ovs_dp_stats, ovs_dp_megaflow_stats).
DATAPATH_COUNTERS = (
    "lookup_hits",
    "lookup_misses",
    "lookup_lost",
    "mask_hits",
    "mask_cache_hits",
)

HEADER = """\
# Prometheus rules for ovs-vport-exporter.
# GENERATED by alerts/generate_rules.py from alerts/config.yml: edit those, then
# regenerate. Load it with `rule_files:` in prometheus.yml; check it with
# `promtool check rules` and `promtool test rules alerts/tests/*.yml`.
"""


def vport_rate(counter: str) -> str:
    """Name of the recorded per-port rate of an ``ovs_vport_<counter>_total``."""
    return f"ovs:vport_{counter}:rate{WINDOW}"


def datapath_rate(counter: str) -> str:
    """Name of the recorded per-datapath rate (own counter, or sum over its ports)."""
    return f"ovs:datapath_{counter}:rate{WINDOW}"


def vport_ratio(kind: str) -> str:
    """Name of a recorded per-port ratio, e.g. ``receive_drop``."""
    return f"ovs:vport_{kind}_ratio:rate{WINDOW}"


def flow_drop_rate(kind: str) -> str:
    """Name of the recorded rate of the packets drop flows matched, per ``vport`` (every reason
    summed) or per ``datapath`` (every port summed, per reason)."""
    return f"ovs:{kind}_flow_dropped_packets:rate{WINDOW}"


def raw_flow_drop_rate(selector: str = "") -> str:
    """The packets a port's drop flows matched per second, every reason summed, from the counter."""
    return f"sum without (reason) (rate({FLOW_DROPPED_PACKETS}{selector}[{WINDOW}]))"


def bridge_rate(counter: str) -> str:
    """Name of the recorded per-bridge sum of a per-port rate."""
    return f"ovs:bridge_{counter}:rate{WINDOW}"


def device_kind_rate(counter: str) -> str:
    """Name of the recorded per-datapath, per-device-kind sum of a per-port rate."""
    return f"ovs:device_kind_{counter}:rate{WINDOW}"


def raw_rate(counter: str, selector: str = "") -> str:
    """``rate()`` of an exporter counter over the window, e.g. of ``ovs_vport_upcalls_total``."""
    return f"rate(ovs_vport_{counter}_total{selector}[{WINDOW}])"


def raw_ratio(bad: str, offered: tuple[str, ...], selector: str = "") -> str:
    """bad / offered from the raw counters, only where something was offered (no 0/0)."""
    total = " + ".join(raw_rate(counter, selector) for counter in offered)
    return f"{raw_rate(bad, selector)}\n/\n({total} > 0)"


def groups_needed(expr: str) -> set[str]:
    """The exporter's per-vport metric groups an expression reads."""
    needed = {
        GROUP_OF_COUNTER[counter]
        for counter in re.findall(
            r"\bovs[_:](?:vport|datapath|bridge|device_kind)_([a-z_]+?)(?:_total\b|:rate)", expr
        )
        if counter in GROUP_OF_COUNTER
    }
    for bad, kind, _offered in ((r[1], r[0], r[2]) for r in PORT_RATIOS):
        if vport_ratio(kind) in expr:
            needed.add(GROUP_OF_COUNTER[bad])
    if re.search(r"\bovs_vport_info\b|ovs:device_kind_", expr):
        needed.add("info")
    return needed


@dataclass(frozen=True)
class AlertSettings:
    """``for:`` duration, severity label and threshold of one alert."""

    for_: str
    severity: str
    threshold: float = 0.0
    min_rate: float = 0.0
    min_flows: float = 0.0


@dataclass(frozen=True)
class Config:
    """Everything in config.yml, validated."""

    job_selector: str
    port_min_packets_per_second: float
    drop_ratio: AlertSettings
    error_ratio: AlertSettings
    upcall_failure_ratio: AlertSettings
    lost_upcalls: AlertSettings
    datapath_unavailable: AlertSettings
    exporter_down: AlertSettings
    scrape_slow: AlertSettings
    record_per_port: bool
    vport_metrics: tuple[str, ...]
    no_upcall_handlers: AlertSettings
    port_churn: AlertSettings
    broken_workload_port: AlertSettings
    workload_selector: str
    flow_drops: AlertSettings
    flow_table_hog: AlertSettings
    flow_dumps_failing: AlertSettings
    meter_dropping: AlertSettings
    conntrack_zone_fill: AlertSettings


def _alert_settings(
    raw: dict[str, Any],
    key: str,
    threshold_key: str | None,
    min_key: str | None = None,
    text_keys: tuple[str, ...] = (),
    min_flows_key: str | None = None,
) -> AlertSettings:
    section = raw.get(key)
    if not isinstance(section, dict):
        raise ValueError(f"config: {key!r} must be a mapping")
    allowed = {"for", "severity", *text_keys} | {k for k in (threshold_key, min_key, min_flows_key) if k}
    unknown = set(section) - allowed
    if unknown:
        raise ValueError(f"config: unknown keys in {key!r}: {sorted(unknown)}")
    for_ = section.get("for")
    severity = section.get("severity")
    if not isinstance(for_, str) or not isinstance(severity, str):
        raise ValueError(f"config: {key!r} needs string 'for' and 'severity'")
    threshold = float(section[threshold_key]) if threshold_key else 0.0
    min_rate = float(section[min_key]) if min_key else 0.0
    min_flows = float(section[min_flows_key]) if min_flows_key else 0.0
    return AlertSettings(
        for_=for_, severity=severity, threshold=threshold, min_rate=min_rate, min_flows=min_flows
    )


def _text_setting(raw: dict[str, Any], key: str, name: str) -> str:
    """A string setting of an alert's section, e.g. a label selector."""
    value = raw[key].get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"config: {key}.{name} must be a non-empty string")
    return value


def load_config(path: Path = CONFIG_PATH) -> Config:
    """Read and validate config.yml; raises ValueError on a bad file."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError(f"config: {path} is not a mapping")
    known = {field for field in Config.__dataclass_fields__}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"config: unknown keys {sorted(unknown)}")
    job_selector = raw.get("job_selector")
    if not isinstance(job_selector, str) or not job_selector:
        raise ValueError("config: 'job_selector' must be a non-empty string")
    record_per_port = raw.get("record_per_port", True)
    if not isinstance(record_per_port, bool):
        raise ValueError("config: 'record_per_port' must be true or false")
    vport_metrics = raw.get("vport_metrics", list(VPORT_METRIC_GROUPS))
    if not isinstance(vport_metrics, list) or set(vport_metrics) - set(VPORT_METRIC_GROUPS):
        raise ValueError(f"config: 'vport_metrics' must be a list of {', '.join(VPORT_METRIC_GROUPS)}")
    return Config(
        record_per_port=record_per_port,
        vport_metrics=tuple(group for group in VPORT_METRIC_GROUPS if group in vport_metrics),
        job_selector=job_selector,
        port_min_packets_per_second=float(raw["port_min_packets_per_second"]),
        drop_ratio=_alert_settings(raw, "drop_ratio", "threshold"),
        error_ratio=_alert_settings(raw, "error_ratio", "threshold"),
        upcall_failure_ratio=_alert_settings(raw, "upcall_failure_ratio", "threshold", "min_per_second"),
        lost_upcalls=_alert_settings(raw, "lost_upcalls", "threshold_per_second"),
        datapath_unavailable=_alert_settings(raw, "datapath_unavailable", None),
        exporter_down=_alert_settings(raw, "exporter_down", None),
        scrape_slow=_alert_settings(raw, "scrape_slow", "threshold_seconds"),
        no_upcall_handlers=_alert_settings(raw, "no_upcall_handlers", None),
        port_churn=_alert_settings(raw, "port_churn", "threshold_per_minute"),
        broken_workload_port=_alert_settings(
            raw, "broken_workload_port", None, text_keys=("workload_selector",)
        ),
        workload_selector=_text_setting(raw, "broken_workload_port", "workload_selector"),
        flow_drops=_alert_settings(raw, "flow_drops", "threshold_per_second"),
        flow_table_hog=_alert_settings(raw, "flow_table_hog", "share", min_flows_key="min_flows"),
        flow_dumps_failing=_alert_settings(raw, "flow_dumps_failing", None),
        meter_dropping=_alert_settings(raw, "meter_dropping", "threshold_per_second"),
        conntrack_zone_fill=_alert_settings(raw, "conntrack_zone_fill", "threshold"),
    )


def _num(value: float) -> str:
    """A threshold as PromQL and prose want it: 10 not 10.0, 0.001 not 1e-03."""
    return f"{value:f}".rstrip("0").rstrip(".")


def _percent(value: float) -> str:
    return _num(value * 100) + "%"


def _served(counter: str, config: Config) -> bool:
    return GROUP_OF_COUNTER[counter] in config.vport_metrics


def port_rules(config: Config) -> list[dict[str, Any]]:
    """Per-port rates recorded for every port: the overview's top-port traffic panels."""
    if not config.record_per_port:
        return []
    return [
        {"record": vport_rate(counter), "expr": raw_rate(counter)}
        for counter in DENSE_PORT_RATES
        if _served(counter, config)
    ]


def port_trouble_rules(config: Config) -> list[dict[str, Any]]:
    """Per-port drop, error and failed-upcall rates and ratios, only while above 0."""
    if not config.record_per_port:
        return []
    rules = [
        {"record": vport_rate(counter), "expr": f"{raw_rate(counter)} > 0"}
        for counter in SPARSE_PORT_RATES
        if _served(counter, config)
    ]
    # A ratio of what went wrong to everything offered stays within [0, 1]: a port that
    # drops everything shows 1, not a division by zero. Ports without traffic have none.
    for kind, bad, offered in PORT_RATIOS:
        if all(_served(counter, config) for counter in (bad, *offered)):
            rules.append({"record": vport_ratio(kind), "expr": f"(\n{raw_ratio(bad, offered)}\n) > 0\n"})
    # What drop flows matched (--collector.flows): only ports with drop flows have the counter,
    # and only those where it grows get a recorded rate.
    rules.append({"record": flow_drop_rate("vport"), "expr": f"{raw_flow_drop_rate()} > 0"})
    return rules


def aggregate_rules(config: Config) -> list[dict[str, Any]]:
    """Per-datapath rates (own counters, and sums over ports) and per-bridge sums."""
    rules: list[dict[str, Any]] = []
    served = [counter for counter in VPORT_COUNTERS if _served(counter, config)]
    for counter in served:
        rules.append({"record": datapath_rate(counter), "expr": f"sum without (port) ({raw_rate(counter)})"})
    for counter in DATAPATH_COUNTERS:
        rules.append(
            {"record": datapath_rate(counter), "expr": f"rate(ovs_datapath_{counter}_total[{WINDOW}])"}
        )
    rules.append(
        {
            "record": flow_drop_rate("datapath"),
            "expr": f"sum without (port) (rate({FLOW_DROPPED_PACKETS}[{WINDOW}]))",
        }
    )
    # Per bridge, from OVSDB's identity of each port. Without ovs_interface_info the join is
    # empty and nothing is recorded; max by () keeps one info series per port whatever other
    # labels (external_ids) it carries.
    interface = f"max by ({INTERFACE_JOIN}, bridge) ({INTERFACE_INFO})"
    for counter in served:
        rules.append(
            {
                "record": bridge_rate(counter),
                "expr": f"sum without (port) (\n{raw_rate(counter)}\n"
                f"* on ({INTERFACE_JOIN}) group_left (bridge)\n{interface}\n)\n",
            }
        )
    # Per kind of device (ovs_vport_info's device_kind): tunnels against VMs' and pods' ports. One
    # ovs_vport_info per vport, so the join never meets two; a vport without a device_kind (its
    # device in another namespace) sums under device_kind="".
    if "info" in config.vport_metrics:
        for counter in DEVICE_KIND_COUNTERS:
            if _served(counter, config):
                rules.append(
                    {
                        "record": device_kind_rate(counter),
                        "expr": f"sum without (port) (\n{raw_rate(counter)}\n"
                        f"* on ({VPORT_JOIN}) group_left (device_kind)\n{VPORT_INFO}\n)\n",
                    }
                )
    return rules


def recording_rules(config: Config) -> list[dict[str, Any]]:
    """Every recording rule, in file order."""
    return port_rules(config) + port_trouble_rules(config) + aggregate_rules(config)


# Alertmanager template pieces used in annotations.
INSTANCE = "{{ $labels.instance }}"
DATAPATH = "{{ $labels.datapath }}"
PORT = "{{ $labels.port }}"
PERCENT = "{{ $value | humanizePercentage }}"
# Who is on the port, when the exporter reads OVSDB (--collector.ovsdb): looked up in
# ovs_interface_info when the annotation is rendered, so that a changed VM or pod name never
# changes the alert's labels. Nothing is added for a port OVSDB does not describe. netns=""
# matches only the host's own ports, as ovs_interface_info describes only those.
IDENTITY = (
    '{{ with printf "ovs_interface_info{instance=%q,netns=%q,datapath=%q,port=%q}" '
    "$labels.instance $labels.netns $labels.datapath $labels.port | query }}"
    "{{ with first . }}{{ $id := .Labels }} (bridge {{ $id.bridge }}"
    "{{ with $id.iface_id }}, iface-id {{ . }}{{ end }}"
    "{{ with $id.pod_name }}, pod {{ $id.pod_namespace }}/{{ . }}{{ end }}"
    "{{ with $id.vm_uuid }}, VM {{ . }}{{ end }}){{ end }}{{ end }}"
)


# Which way a port's counters point, as its device counts them (the README's "Which way the
# counters point"): said in the annotations of the alerts of one direction.
DIRECTION = {
    "receive": "Received as the port's device counts it: on a VM's tap or a pod's veth, what the VM or "
    "pod sent into the switch; on an internal port (br-int, the datapath's own port), what the switch "
    "delivered to the host.",
    "transmit": "Transmitted as the port's device counts it: on a VM's tap or a pod's veth, what the "
    "switch delivered to the VM or pod; on an internal port (br-int, the datapath's own port), what the "
    "host sent into the switch.",
}
# A tap drops on transmit when its queue is full (drivers/net/tun.c tun_net_xmit).
TAP_TRANSMIT_DROPS = " On a VM's tap, transmit drops can be a VM that does not read its queue fast enough."

# The broken-port alert's own labels (ovs_interface_broken_info carries the identity itself).
BROKEN_INFO = "ovs_interface_broken_info"
INTERFACE = "{{ $labels.interface }}"
BRIDGE = "{{ $labels.bridge }}"
WORKLOAD = (
    "{{ with $labels.iface_id }} (iface-id {{ . }}"
    "{{ with $labels.pod_name }}, pod {{ $labels.pod_namespace }}/{{ . }}{{ end }}"
    "{{ with $labels.vm_uuid }}, VM {{ . }}{{ end }}){{ end }}"
)

# Who a conntrack zone is for, when the exporter reads OVSDB: OVN's owner of the zone (a logical
# port, or a router's _dnat/_snat zone) and the kernel vport of that port, looked up in
# ovs_conntrack_zone_info when the annotation is rendered (nothing for a zone OVN did not assign).
ZONE_OWNER = (
    '{{ with printf "ovs_conntrack_zone_info{instance=%q,netns=%q,zone=%q}" '
    "$labels.instance $labels.netns $labels.zone | query }}"
    "{{ with first . }}{{ $z := .Labels }} (OVN {{ $z.owner }}"
    "{{ with $z.port }}, port {{ . }}{{ end }}){{ end }}{{ end }}"
)
METER = "{{ $labels.meter }}"


def _alert(name: str, expr: str, settings: AlertSettings, summary: str, description: str) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": settings.for_,
        "labels": {"severity": settings.severity},
        "annotations": {"summary": summary, "description": description},
    }


def _port_ratio_alert(
    name: str, direction: str, kind: str, settings: AlertSettings, min_pps: float
) -> dict[str, Any]:
    """Drop or error ratio of one direction, guarded by a minimum of offered packets."""
    bad = {"drop": "dropped", "error": "errors"}[kind]
    outcome = {"drop": "were dropped", "error": "had errors"}[kind]
    offered = (f"{direction}_packets", f"{direction}_{bad}")
    noun, verb = (
        ("received packets", "received")
        if direction == "receive"
        else ("packets to transmit", "was to transmit")
    )
    return _alert(
        name,
        f"(\n{raw_ratio(f'{direction}_{bad}', offered)}\n) > {_num(settings.threshold)}\n"
        f"and\n{' + '.join(raw_rate(counter) for counter in offered)} >= {_num(min_pps)}\n",
        settings,
        f"OVS port {PORT}{IDENTITY} on datapath {DATAPATH} ({INSTANCE}): {PERCENT} of {noun} {outcome}.",
        f"On {INSTANCE}, {PERCENT} of the packets that OVS port {PORT}{IDENTITY} of datapath {DATAPATH} "
        f"{verb} over the last {WINDOW} {outcome} (threshold {_percent(settings.threshold)}, "
        f"counted on ports offered at least {_num(min_pps)} packets/s). {DIRECTION[direction]}"
        + (TAP_TRANSMIT_DROPS if (direction, kind) == ("transmit", "drop") else ""),
    )


def alerting_rules(config: Config) -> list[dict[str, Any]]:
    """Every alert whose metric groups the exporters serve, in the order the docs list them."""
    served = set(config.vport_metrics)
    return [rule for rule in all_alerting_rules(config) if groups_needed(rule["expr"]) <= served]


def all_alerting_rules(config: Config) -> list[dict[str, Any]]:
    """Every alert, in the order the docs list them."""
    min_pps = config.port_min_packets_per_second
    upcall = config.upcall_failure_ratio
    lost = config.lost_upcalls
    unavailable = config.datapath_unavailable
    down = config.exporter_down
    slow = config.scrape_slow
    handlers = config.no_upcall_handlers
    churn = config.port_churn
    broken = config.broken_workload_port
    flow_drops = config.flow_drops
    hog = config.flow_table_hog
    dumps = config.flow_dumps_failing
    meter = config.meter_dropping
    zone = config.conntrack_zone_fill
    lost_rate = '{{ printf "%.2f" $value }}'
    duration = "{{ $value | humanizeDuration }}"
    netns = "{{ with $labels.netns }} (network namespace {{ . }}){{ end }}"
    return [
        _port_ratio_alert("OvsVportReceiveDropsHigh", "receive", "drop", config.drop_ratio, min_pps),
        _port_ratio_alert("OvsVportTransmitDropsHigh", "transmit", "drop", config.drop_ratio, min_pps),
        _port_ratio_alert("OvsVportReceiveErrorsHigh", "receive", "error", config.error_ratio, min_pps),
        _port_ratio_alert("OvsVportTransmitErrorsHigh", "transmit", "error", config.error_ratio, min_pps),
        _alert(
            "OvsVportUpcallFailuresHigh",
            f"(\n{raw_ratio('upcall_failures', ('upcalls',))}\n) > {_num(upcall.threshold)}\n"
            f"and\n{raw_rate('upcalls')} >= {_num(upcall.min_rate)}\n",
            upcall,
            f"OVS port {PORT}{IDENTITY} on datapath {DATAPATH} ({INSTANCE}) fails {PERCENT} of its upcalls.",
            f"On {INSTANCE}, OVS port {PORT}{IDENTITY} of datapath {DATAPATH} could not queue {PERCENT} of "
            f"its upcalls to userspace over the last {WINDOW} (threshold {_percent(upcall.threshold)}, "
            "counted on ports "
            f"with at least {_num(upcall.min_rate)} upcalls/s): the first packets of new flows on this port "
            "are dropped. Is ovs-vswitchd running and keeping up?",
        ),
        _alert(
            "OvsDatapathUpcallsLost",
            f"{datapath_rate('lookup_lost')} > {_num(lost.threshold)}\n",
            lost,
            f"OVS datapath {DATAPATH} on {INSTANCE} loses {lost_rate} upcalls per second.",
            f"On {INSTANCE}, datapath {DATAPATH} lost {lost_rate} upcalls per second over the last {WINDOW} "
            f"(threshold {_num(lost.threshold)}/s): packets that missed the flow table were dropped because "
            "they could not be queued to userspace. The per-port upcall failure panels show which ports.",
        ),
        _alert(
            "OvsDatapathUnavailable",
            "ovs_up == 0\n",
            unavailable,
            f"The OVS vport exporter on {INSTANCE} cannot read the OVS kernel datapath.",
            f"ovs_up has been 0 on {INSTANCE} for {unavailable.for_}: the openvswitch module is not loaded, "
            "its generic netlink families did not resolve, or a datapath or vport dump failed. "
            "The exporter's log has the errno. No datapath or port is being watched on this host.",
        ),
        _alert(
            "OvsVportExporterDown",
            f"up{{{config.job_selector}}} == 0\n",
            down,
            f"The OVS vport exporter on {INSTANCE} is down.",
            f"Prometheus (job {{{{ $labels.job }}}}) has failed to scrape {INSTANCE} for {down.for_}: "
            "no datapath or port alert can fire for this host until it is back.",
        ),
        _alert(
            "OvsVportExporterScrapeSlow",
            f"avg_over_time(ovs_scrape_duration_seconds[{WINDOW}]) > {_num(slow.threshold)}\n",
            slow,
            f"Scrapes of the OVS vport exporter on {INSTANCE} take {duration}.",
            f"The OVS vport exporter on {INSTANCE} spent {duration} per scrape on average over the last "
            f"{WINDOW} (threshold {_num(slow.threshold)}s). Scrapes that reach Prometheus' scrape_timeout "
            "fail and leave gaps: filter ports out or raise the timeout.",
        ),
        _alert(
            "OvsDatapathNoUpcallHandlers",
            "ovs_datapath_upcall_handlers == 0\n",
            handlers,
            f"OVS datapath {DATAPATH} on {INSTANCE} has no upcall handler: every flow miss is lost.",
            f"Datapath {DATAPATH} on {INSTANCE} dispatches upcalls per CPU but no netlink socket receives "
            f"them (OVS_DP_ATTR_PER_CPU_PIDS holds no PID) for {handlers.for_}: every packet that misses "
            "the flow table is dropped and counted as lost, so new flows never get set up. OVS 3.1.0 does "
            "this when ovs-vswitchd starts within 10 s of boot (fixed in 3.1.1): restart ovs-vswitchd.",
        ),
        _alert(
            "OvsWorkloadPortBroken",
            f"{BROKEN_INFO}{{{config.workload_selector}}}\n",
            broken,
            f"OVS port {INTERFACE}{WORKLOAD} of bridge {BRIDGE} on {INSTANCE}: ovs-vswitchd cannot open it.",
            f"On {INSTANCE}, ovs-vswitchd has not been able to open or configure Interface {INTERFACE} of "
            f"bridge {BRIDGE}{WORKLOAD} for {broken.for_}: {{{{ $labels.error }}}}. That VM or pod has no "
            "network through this port. A VM that crashed or a CNI that did not clean up leaves its row "
            "behind when its tap or veth is gone: remove the port (ovs-vsctl del-port) or bring the "
            "device back.",
        ),
        _alert(
            "OvsDatapathPortChurnHigh",
            f'sum without (event) (rate(ovs_datapath_vport_events_total{{event=~"added|removed"}}[{WINDOW}]))'
            f" * 60 > {_num(churn.threshold)}\n",
            churn,
            f'OVS datapath {DATAPATH} on {INSTANCE}: {{{{ printf "%.0f" $value }}}} ports added or removed '
            "per minute.",
            f"On {INSTANCE}, ports were added to or removed from datapath {DATAPATH} at "
            f'{{{{ printf "%.0f" $value }}}} per minute over the last {WINDOW} (threshold '
            f"{_num(churn.threshold)}/min) for {churn.for_}: a VM or pod in a boot loop, or a flapping CNI "
            "or agent. Ports that live shorter than a scrape interval show only here.",
        ),
        _alert(
            "OvsVportDropFlowsHigh",
            f"{raw_flow_drop_rate()} > {_num(flow_drops.threshold)}\n",
            flow_drops,
            f"OVS port {PORT}{IDENTITY} on datapath {DATAPATH} ({INSTANCE}): drop flows match "
            f'{{{{ printf "%.0f" $value }}}} of its packets per second.',
            f'On {INSTANCE}, kernel flows that drop matched {{{{ printf "%.0f" $value }}}} packets per '
            f"second coming in through OVS port {PORT}{IDENTITY} of datapath {DATAPATH} over the last "
            f"{WINDOW} (threshold {_num(flow_drops.threshold)}/s, a lower bound) for {flow_drops.for_}."
            " The reason label of ovs_vport_flow_dropped_packets_total says why (of_pipeline or"
            " unspecified: the OpenFlow tables chose to drop, usually an ACL or security group, or no"
            " route). Runbook: check the port's ACLs or security group rules (OVN: ovn-nbctl acl-list,"
            " ovn-trace; OpenStack: the port's security groups), then trace one of its packets with"
            " ovs-appctl ofproto/trace br-int in_port=<its ofport>,<the packet's fields> to see the rule"
            " that drops it.",
        ),
        _alert(
            "OvsFlowTableHeldByOnePort",
            f"ovs_vport_flows\n/ on ({DATAPATH_JOIN}) group_left\novs_datapath_flow_dump_flows\n"
            f"> {_num(hog.threshold)}\nand on ({DATAPATH_JOIN})\n"
            f"ovs_datapath_flow_dump_flows >= {_num(hog.min_flows)}\n",
            hog,
            f"OVS port {PORT}{IDENTITY} holds {PERCENT} of the flow table of datapath {DATAPATH}"
            f" ({INSTANCE}).",
            f"On {INSTANCE}, {PERCENT} of the megaflows in datapath {DATAPATH}'s flow table (at least "
            f"{_num(hog.min_flows)} flows; threshold {_percent(hog.threshold)}) start at OVS port {PORT}"
            f"{IDENTITY} for {hog.for_}: one VM or pod (a scan, a flood of new connections) is filling "
            "the table. Past ovs-vswitchd's flow limit (other_config:flow-limit, 200,000 by default) new "
            "flows are refused and their packets go to userspace, for every port. Look at what the port "
            "sends (ovs-appctl dpctl/dump-flows, filtered on its in_port).",
        ),
        _alert(
            "OvsFlowDumpsFailing",
            'ovs_scrape_collector_success{collector="flows"} == 0\n',
            dumps,
            f"The OVS vport exporter on {INSTANCE}{netns} cannot complete its flow dumps.",
            f"The flow collector of the OVS vport exporter on {INSTANCE}{netns} has had no complete, "
            f"current flow dump for {dumps.for_}: the per-port megaflow gauges (ovs_vport_flows) are not "
            "served and the drop-flow counters stand still. The exporter's log says why; if "
            "ovs_datapath_flow_dumps_abandoned_total grows, the table is over the cap: raise "
            "--collector.flows.max-flows or --collector.flows.max-seconds.",
        ),
        _alert(
            "OvsDatapathMeterDropping",
            f"rate(ovs_datapath_meter_dropped_packets_total[{WINDOW}]) > {_num(meter.threshold)}\n",
            meter,
            f'OVS datapath meter {METER} of {DATAPATH} on {INSTANCE} drops {{{{ printf "%.1f" $value }}}} '
            "packets per second.",
            f"On {INSTANCE}, meter {METER} of datapath {DATAPATH} has dropped "
            f'{{{{ printf "%.1f" $value }}}} packets per second over its rate for {meter.for_} (threshold '
            f"{_num(meter.threshold)}/s). ovs-vswitchd makes datapath meters from OpenFlow meters: OVN's "
            "control plane protection (CoPP) meters limit ARP, DHCP, ICMP errors or BFD sent to "
            "ovn-controller, so some of those fail. Which meter: on the host, ovs-appctl dpctl/dump-flows "
            f"| grep 'meter({METER})' lists the datapath flows that use it (their match says which "
            "traffic); ovs-ofctl -O OpenFlow15 meter-stats br-int shows the OpenFlow meter whose counters "
            "equal this one's; with OVN, ovn-nbctl meter-list and ovn-nbctl copp-list name it. Raise its "
            "rate if the traffic is legitimate, else find the sender (an ARP or DHCP storm).",
        ),
        _alert(
            "OvsConntrackZoneNearLimit",
            f"ovs_conntrack_zone_connections\n/\n(ovs_conntrack_zone_limit > 0)\n> {_num(zone.threshold)}\n",
            zone,
            f"Conntrack zone {{{{ $labels.zone }}}}{ZONE_OWNER} on {INSTANCE} holds {PERCENT} of its "
            "connection limit.",
            f"On {INSTANCE}, conntrack zone {{{{ $labels.zone }}}}{ZONE_OWNER} has held {PERCENT} of its "
            f"connection limit for {zone.for_} (threshold {_percent(zone.threshold)}): at its limit the "
            "kernel refuses every new connection committed in the zone, which OVN gives one logical port "
            "(one VM or pod). Counted are the connections committed through OVS in the zone that still "
            "exist. Raise the limit (ovs-appctl dpctl/ct-set-limits, OVSDB CT_Zone, OVN's ct-zone-limit) "
            "or find what opens so many connections.",
        ),
    ]


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings, so expressions read as written."""


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_representer)


def render(config: Config) -> str:
    """The complete rules file as text."""
    groups = [
        (GROUP_PORTS, port_rules(config)),
        (GROUP_PORTS_IN_TROUBLE, port_trouble_rules(config)),
        (GROUP_AGGREGATES, aggregate_rules(config)),
        (GROUP_ALERTS, alerting_rules(config)),
    ]
    # Prometheus refuses a group without rules.
    document = {"groups": [{"name": name, "rules": rules} for name, rules in groups if rules]}
    body = yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True)
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--config", type=Path, default=CONFIG_PATH)
    parser.add_argument("--output", type=Path, default=RULES_PATH)
    parser.add_argument("--check", action="store_true", help="exit 1 if the output file is not current")
    args = parser.parse_args(argv)
    try:
        text = render(load_config(args.config))
    except (OSError, ValueError, KeyError, yaml.YAMLError) as exc:
        print(f"{Path(__file__).name}: {exc}", file=sys.stderr)
        return 2
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
