"""Generate the Grafana dashboards of ovs-vport-exporter with grafana-foundation-sdk.

Writes ``dashboards/ovs-overview.json`` (every host and datapath: top ports,
drops, errors, upcalls, datapath flow-table statistics, exporter health) and
``dashboards/ovs-port.json`` (one port in detail). Both are committed; run this
script after changing it or ``alerts/config.yml`` (``--check`` only reports
whether the committed files are current).

The overview reads the recording rules of ``alerts/ovs-vport-exporter.rules.yml``
(``ovs:*`` series), so it stays cheap with thousands of ports; with
``record_per_port: false`` in ``alerts/config.yml`` its top-port panels compute
the same rates from the raw counters instead. The per-port dashboard reads the
raw counters of one port at full resolution. Every panel that reads a per-vport
metric group of the exporter (``--collector.vport.metrics``) names it in its
description and in the text it shows without data.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import yaml
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders.common import GraphThresholdsStyleConfig, VizLegendOptions
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.variants import Dataquery
from grafana_foundation_sdk.models.common import (
    GraphThresholdsStyleMode,
    LegendDisplayMode,
    LegendPlacement,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DashboardLinkType,
    DataSourceRef,
    DataTransformerConfig,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMappingResult,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

HERE = Path(__file__).resolve().parent
CONFIG_PATH = HERE.parent / "alerts" / "config.yml"
OVERVIEW_UID = "ovs-overview"
PORT_UID = "ovs-port"
TAGS = ["ovs-vport-exporter"]
# How many ports the "top ports" panels show.
TOP_N = 10

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
NO_UPCALL_STATS = "no upcall stats (kernel < 6.2, or metric group upcalls off)"
# The top-port trouble panels read rates recorded only while above 0.
NO_FAILED_UPCALLS = "no port failed upcalls (none reported before kernel 6.2; needs metric group upcalls)"
# Who is on a port, from OVSDB (the exporter's --collector.ovsdb): the labels of ovs_interface_info
# the top-port panels add to each port. iface_id names the VM's or pod's logical port everywhere
# (Neutron port, <namespace>_<pod>, <pod>.<namespace>); vm_uuid (os-vif) and pod_namespace and
# pod_name (kube-ovn) name the VM or pod where the CMS writes them. docs/ovsdb.md lists who writes
# which.
IDENTITY_LABELS = ("bridge", "iface_id", "vm_uuid", "pod_namespace", "pod_name")
IDENTITY_LEGEND = " ".join(f"{{{{{label}}}}}" for label in IDENTITY_LABELS)
# What the port dashboard's identity table shows: every label of ovs_interface_info but those the
# Vport table above it already has.
IDENTITY_HIDDEN = ("Time", "Value", "__name__", "job", "instance", "datapath", "port")
NO_OVSDB = "needs --collector.ovsdb"
NO_FLOWS = "needs --collector.flows"
# Which way a port's counters point, for every panel that shows them: as its device counts
# (the README's "Which way the counters point"; tests/kernel/test_counters.py proves it).
DIRECTION = (
    "Each port counts as its device does: received is what a VM or pod (on a NIC or tunnel port, the "
    "wire) sent into the switch, transmitted what the switch delivered to it; an internal port "
    "(br-int, the datapath's own port) is the other way round: received is what the switch delivered "
    "to the host, transmitted what the host sent into the switch. Traffic offloaded to tc flower or a "
    "NIC is included."
)
#: What the kernel's flow table counts leaves out offloaded traffic, which the ports count.
NOT_OFFLOADED = "Traffic offloaded to tc flower or a NIC never reaches this table, though its ports count it."
# Who a conntrack zone is for, from OVSDB (ovs_conntrack_zone_info, the exporter's --collector.ovsdb):
# OVN records each zone it assigns on br-int. One info series per zone is picked (topk by zone): a
# stale second key for the same zone must not break the join.
ZONE_JOIN = "instance, job, netns, zone"
ZONE_INFO = "ovs_conntrack_zone_info"
# How to find what a datapath meter is: its id means nothing outside the datapath.
METER_HOWTO = (
    "ovs-vswitchd makes datapath meters from OpenFlow meters (OVN: control plane protection, ACL "
    "logging, QoS) and numbers them itself, from 0. To find which one a meter id is, on the host: "
    "ovs-appctl dpctl/dump-flows shows the flows using meter(ID) and what they match; "
    "ovs-ofctl -O OpenFlow15 meter-stats br-int shows the OpenFlow meter with the same counters; "
    "with OVN, ovn-nbctl meter-list and copp-list name it (docs/dashboards.md, Meters)."
)


def zone_info(selector: str) -> str:
    """One ovs_conntrack_zone_info series per zone, for a group_left join."""
    return f"topk by ({ZONE_JOIN}) (1, {ZONE_INFO}{{{selector}}})"


#: Stat colours of a 0/1 health value (up, success) or a count where 0 is the trouble.
RED_BELOW_ONE = [Threshold(value=None, color="red"), Threshold(value=1, color="green")]
#: Stat colours of a count where anything above 0 is the trouble.
RED_FROM_ONE = [Threshold(value=None, color="green"), Threshold(value=1, color="red")]
#: The broken-port table's columns: every label of ovs_interface_broken_info but Prometheus' own.
BROKEN_HIDDEN = ("Time", "Value", "__name__", "job")


def _load_rules_generator() -> ModuleType:
    """alerts/generate_rules.py: the recording rules' names and expressions, and which
    metric groups an expression reads, come from there (a script, not a package)."""
    path = HERE.parent / "alerts" / "generate_rules.py"
    spec = importlib.util.spec_from_file_location("ovs_generate_rules", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while it runs
    spec.loader.exec_module(module)
    return module


rules = _load_rules_generator()

# Link from any per-port series to the drill-down, keeping time range and data source.
PORT_LINK_URL = (
    f"/d/{PORT_UID}/ovs-port?var-datasource=${{datasource}}&var-instance=${{__field.labels.instance}}"
    "&var-datapath=${__field.labels.datapath}&var-port=${__field.labels.port}&${__url_time_range}"
)


@dataclass(frozen=True)
class Thresholds:
    """What the dashboards draw as threshold lines: the alerts' thresholds."""

    job_selector: str
    drop_ratio: float
    error_ratio: float
    upcall_failure_ratio: float
    scrape_seconds: float
    port_churn_per_minute: float
    flow_drops_per_second: float
    flow_table_share: float
    zone_fill: float = 0.9
    record_per_port: bool = True


def load_thresholds(path: Path = CONFIG_PATH) -> Thresholds:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError(f"{path} is not a mapping")
    return Thresholds(
        job_selector=str(raw["job_selector"]),
        drop_ratio=float(raw["drop_ratio"]["threshold"]),
        error_ratio=float(raw["error_ratio"]["threshold"]),
        upcall_failure_ratio=float(raw["upcall_failure_ratio"]["threshold"]),
        scrape_seconds=float(raw["scrape_slow"]["threshold_seconds"]),
        port_churn_per_minute=float(raw["port_churn"]["threshold_per_minute"]),
        flow_drops_per_second=float(raw["flow_drops"]["threshold_per_second"]),
        flow_table_share=float(raw["flow_table_hog"]["share"]),
        zone_fill=float(raw["conntrack_zone_fill"]["threshold"]),
        record_per_port=bool(raw.get("record_per_port", True)),
    )


def needs(queries: Sequence[Query]) -> list[str]:
    """The exporter's per-vport metric groups the queries read, in the exporter's order."""
    found = set().union(*(rules.groups_needed(query.expr) for query in queries))
    return [group for group in rules.VPORT_METRIC_GROUPS if group in found]


def _needs_text(groups: Sequence[str]) -> str:
    plural = "s" if len(groups) > 1 else ""
    return f"metric group{plural} {', '.join(groups)}"


def with_needs(description: str, queries: Sequence[Query]) -> str:
    """The description, plus which per-vport metric groups the panel needs."""
    groups = needs(queries)
    if not groups:
        return description
    return f"{description} Needs the exporter's {_needs_text(groups)} (--collector.vport.metrics)."


def no_data_text(queries: Sequence[Query], no_value: str | None) -> str | None:
    """What a panel shows without data: ``no_value``, or the metric groups it needs."""
    groups = needs(queries)
    if no_value is not None or not groups:
        return no_value
    return f"no data (needs {_needs_text(groups)})"


class PanelIds:
    """Hands out unique panel ids in layout order."""

    def __init__(self) -> None:
        self._next = 0

    def __call__(self) -> int:
        self._next += 1
        return self._next


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


def _targets(queries: Sequence[Query], *, instant: bool = False) -> list[Builder[Dataquery]]:
    targets: list[Builder[Dataquery]] = []
    for index, query in enumerate(queries):
        target = (
            prometheus.Dataquery()
            .datasource(DATASOURCE)
            .expr(query.expr)
            .legend_format(query.legend)
            .ref_id(chr(ord("A") + index))
        )
        if instant:
            target = target.instant().format(PromQueryFormat.TABLE)
        targets.append(target)
    return targets


def _threshold_steps(limit: float | None) -> dash.ThresholdsConfig:
    steps = [Threshold(value=None, color="green")]
    if limit is not None:
        steps.append(Threshold(value=limit, color="red"))
    return dash.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(steps)


def graph(
    ids: PanelIds,
    title: str,
    unit: str,
    queries: Sequence[Query],
    *,
    description: str,
    width: int = 12,
    height: int = 8,
    limit: float | None = None,
    port_links: bool = False,
    no_value: str | None = None,
) -> timeseries.Panel:
    """A time series panel; ``limit`` draws the alert threshold as a red line."""
    no_value = no_data_text(queries, no_value)
    panel = (
        timeseries.Panel()
        .id(ids())
        .title(title)
        .description(with_needs(description, queries))
        .datasource(DATASOURCE)
        .unit(unit)
        .min(0)
        .span(width)
        .height(height)
        .targets(_targets(queries))
        .fill_opacity(10)
        .legend(
            VizLegendOptions()
            .show_legend(True)
            .display_mode(LegendDisplayMode.TABLE)
            .placement(LegendPlacement.RIGHT if width > 12 else LegendPlacement.BOTTOM)
            .calcs(["mean", "max", "lastNotNull"])
            .sort_by("Max")
            .sort_desc(True)
        )
        .thresholds(_threshold_steps(limit))
    )
    if limit is not None:
        panel = panel.thresholds_style(GraphThresholdsStyleConfig().mode(GraphThresholdsStyleMode.LINE))
    if port_links:
        panel = panel.data_links([dash.DashboardLink("Open this port").url(PORT_LINK_URL)])
    if no_value is not None:
        panel = panel.no_value(no_value)
    return panel


def big_number(
    ids: PanelIds,
    title: str,
    unit: str,
    queries: Sequence[Query],
    *,
    description: str,
    width: int = 6,
    height: int = 8,
    steps: list[Threshold],
) -> stat.Panel:
    """A stat panel showing the last value of each series."""
    return (
        stat.Panel()
        .id(ids())
        .title(title)
        .description(with_needs(description, queries))
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(height)
        .targets(_targets(queries))
        .thresholds(dash.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(steps))
    )


def _datasource_variable() -> dash.DatasourceVariable:
    return dash.DatasourceVariable("datasource").label("Data source").type("prometheus")


def _query_variable(
    name: str, label: str, query: str, *, multi: bool, description: str | None = None
) -> dash.QueryVariable:
    variable = (
        dash.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
    )
    if description is not None:
        variable = variable.description(description)
    if multi:
        # ".*" rather than a list of every value keeps queries short at thousands of ports.
        variable = variable.multi(True).include_all(True).all_value(".*")
    return variable


def _dashboards_link() -> dash.DashboardLink:
    return (
        dash.DashboardLink("OVS dashboards")
        .type(DashboardLinkType.DASHBOARDS)
        .tags(TAGS)
        .as_dropdown(False)
        .include_vars(True)
        .keep_time(True)
    )


def _base(uid: str, title: str, description: str) -> dash.Dashboard:
    return (
        dash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .time("now-3h", "now")
        .refresh("1m")
        .timezone("browser")
        .link(_dashboards_link())
    )


def _raw_port_series(recorded: str, selector: str) -> str:
    """What a per-port recording rule records, computed from the raw counters at query time."""
    for counter in rules.DENSE_PORT_RATES:
        if recorded == rules.vport_rate(counter):
            return str(rules.raw_rate(counter, selector))
    for counter in rules.SPARSE_PORT_RATES:
        if recorded == rules.vport_rate(counter):
            return f"{rules.raw_rate(counter, selector)} > 0"
    for kind, bad, offered in rules.PORT_RATIOS:
        if recorded == rules.vport_ratio(kind):
            return f"({rules.raw_ratio(bad, offered, selector)}) > 0"
    raise KeyError(f"no per-port recording rule {recorded}")


def with_identity(ports: str, info_selector: str) -> str:
    """Per-port series ``ports`` with who is on each port (IDENTITY_LABELS) where OVSDB says so.

    The join is done in PromQL rather than by a Grafana transformation joining a second query:
    the top-port panels are time series, whose legends and data links read each series' labels,
    and a transformation cannot add labels from another query to a time series. ``or on(...)``
    the un-joined series keeps, as they are, the ports that no OVSDB Interface describes (the
    datapath's own port, ports added by other tools) and every port of a host whose exporter
    runs without --collector.ovsdb: an inner join alone would hide them. ovs_interface_info has
    one series per vport, so ``group_left`` never meets two. The join labels are those of the
    per-bridge recording rules: with ``netns`` among them a port of another namespace never
    borrows a host port's identity.
    """
    on = f"on ({rules.INTERFACE_JOIN})"
    info = f"{rules.INTERFACE_INFO}{{{info_selector}}}"
    return f"{ports}\n* {on} group_left ({', '.join(IDENTITY_LABELS)})\n{info}\nor {on}\n{ports}"


def ovsdb_no_data(queries: Sequence[Query], what: str) -> str:
    """What a panel fed by OVSDB's identity shows without data: why, and the groups it needs."""
    groups = needs(queries)
    suffix = f"; {_needs_text(groups)}" if groups else ""
    return f"{what} ({NO_OVSDB}{suffix})"


def overview(limits: Thresholds) -> dash.Dashboard:
    """Every selected host and datapath; per-port panels show the top ports."""
    ids = PanelIds()
    inst = 'instance=~"$instance"'
    dp = f'{inst}, datapath=~"$datapath"'
    port = f'{dp}, port=~"$port"'
    bridge = f'{dp}, bridge=~"$bridge"'
    job = f"{limits.job_selector}, {inst}"
    where = "{{instance}} {{datapath}}"
    who = f"{{{{instance}}}} {{{{datapath}}}} {{{{port}}}} {IDENTITY_LEGEND}"

    def top(metric: str) -> str:
        # The top ports first, then who is on them: identity never changes which ports are shown.
        if limits.record_per_port:
            ports = f"topk({TOP_N}, {metric}{{{port}}})"
        else:
            ports = f"topk({TOP_N}, {_raw_port_series(metric, '{' + port + '}')})"
        return with_identity(ports, port)

    board = (
        _base(
            OVERVIEW_UID,
            "OVS kernel datapath / Overview",
            "Open vSwitch kernel datapaths and their busiest or most troubled ports, "
            "from ovs-vport-exporter. Per-port panels show the top ports; "
            "click a series to open it in the per-port dashboard.",
        )
        .with_variable(_datasource_variable())
        .with_variable(_query_variable("instance", "Instance", "label_values(ovs_up, instance)", multi=True))
        .with_variable(
            _query_variable(
                "datapath", "Datapath", f"label_values(ovs_datapath_flows{{{inst}}}, datapath)", multi=True
            )
        )
        .with_variable(
            _query_variable(
                "bridge",
                "Bridge",
                f"label_values({rules.INTERFACE_INFO}{{{dp}}}, bridge)",
                multi=True,
                description="Bridges of the Bridges row, from OVSDB (the exporter's --collector.ovsdb). "
                "The top-port panels show every port, those OVSDB does not describe included.",
            )
        )
        .with_variable(
            _query_variable("port", "Port", f"label_values(ovs_vport_info{{{dp}}}, port)", multi=True)
        )
    )

    board = board.with_row(dash.Row("Exporter health").id(ids()))
    board = board.with_panel(
        big_number(
            ids,
            "Datapath readable (ovs_up)",
            "none",
            [Query(f"min by (instance) (ovs_up{{{inst}}})", "{{instance}}")],
            description="1 when the exporter resolved the OVS generic netlink families "
            "and every dump completed.",
            steps=RED_BELOW_ONE,
        )
    )
    board = board.with_panel(
        big_number(
            ids,
            "Exporter target up",
            "none",
            [Query(f"up{{{job}}}", "{{instance}}")],
            description=f"Prometheus' `up` for the exporter's scrape target ({limits.job_selector}).",
            steps=RED_BELOW_ONE,
        )
    )
    board = board.with_panel(
        graph(
            ids,
            "Scrape duration",
            "s",
            [Query(f"ovs_scrape_duration_seconds{{{inst}}}", "{{instance}}")],
            description="Time each scrape spent reading the kernel and writing the exposition. "
            "The red line is the OvsVportExporterScrapeSlow threshold.",
            limit=limits.scrape_seconds,
        )
    )
    board = board.with_panel(
        graph(
            ids,
            "Failed scrapes",
            "short",
            [Query(f"increase(ovs_scrape_errors_total{{{inst}}}[$__rate_interval])", "{{instance}}")],
            description="Scrapes whose kernel read failed (ovs_up 0), per interval.",
            width=8,
        )
    )
    board = board.with_panel(
        graph(
            ids,
            "Exporter memory",
            "bytes",
            [Query(f"process_resident_memory_bytes{{{job}}}", "{{instance}}")],
            description="Resident memory of the exporter process.",
            width=8,
        )
    )
    board = board.with_panel(
        graph(
            ids,
            "Exporter CPU",
            "percentunit",
            [Query(f"rate(process_cpu_seconds_total{{{job}}}[$__rate_interval])", "{{instance}}")],
            description="CPU time of the exporter process, as a share of one core.",
            width=8,
        )
    )

    board = board.with_row(dash.Row("Datapaths").id(ids()))
    lookups = f"(ovs:datapath_lookup_hits:rate5m{{{dp}}} + ovs:datapath_lookup_misses:rate5m{{{dp}}})"
    board = board.with_panel(
        graph(
            ids,
            "Flow table lookups",
            "pps",
            [
                Query(f"ovs:datapath_lookup_hits:rate5m{{{dp}}}", f"{where} hit"),
                Query(f"ovs:datapath_lookup_misses:rate5m{{{dp}}}", f"{where} missed"),
                Query(f"ovs:datapath_lookup_lost:rate5m{{{dp}}}", f"{where} lost"),
            ],
            description="Packets that matched a flow (hit), were sent to userspace as upcalls (missed), "
            f"or missed and could not be queued to userspace (lost, a subset of missed). {NOT_OFFLOADED}",
        )
    )
    board = board.with_panel(
        graph(
            ids,
            "Flow table hit ratio",
            "percentunit",
            [Query(f"ovs:datapath_lookup_hits:rate5m{{{dp}}} / ({lookups} > 0)", where)],
            description=f"Share of packets that matched an installed flow. {NOT_OFFLOADED}",
        )
    )
    board = board.with_panel(
        graph(
            ids,
            "Flows",
            "short",
            [Query(f"ovs_datapath_flows{{{dp}}}", where)],
            description="Flows installed in the datapath's flow table, not those offloaded to tc flower or "
            "a NIC.",
            width=8,
        )
    )
    board = board.with_panel(
        graph(
            ids,
            "Masks",
            "short",
            [Query(f"ovs_datapath_masks{{{dp}}}", where)],
            description="Megaflow masks: each lookup may probe every mask.",
            width=8,
        )
    )
    board = board.with_panel(
        graph(
            ids,
            "Masks probed per packet and mask cache hits",
            "short",
            [
                Query(f"ovs:datapath_mask_hits:rate5m{{{dp}}} / ({lookups} > 0)", f"{where} masks/packet"),
                Query(
                    f"ovs:datapath_mask_cache_hits:rate5m{{{dp}}} / ({lookups} > 0)",
                    f"{where} cache hits/packet",
                ),
            ],
            description="Masks probed per packet looked up (as ovs-dpctl show's 'hit/pkt'), and the share of "
            "lookups answered by the mask cache.",
            width=8,
        )
    )
    board = board.with_panel(
        graph(
            ids,
            "Datapath traffic",
            "pps",
            [
                Query(f"ovs:datapath_receive_packets:rate5m{{{dp}}}", f"{where} received"),
                Query(f"ovs:datapath_transmit_packets:rate5m{{{dp}}}", f"{where} transmitted"),
            ],
            description=f"Packets per second summed over the datapath's ports. {DIRECTION}",
            width=8,
        )
    )
    board = board.with_panel(
        graph(
            ids,
            "Datapath throughput",
            "Bps",
            [
                Query(f"ovs:datapath_receive_bytes:rate5m{{{dp}}}", f"{where} received"),
                Query(f"ovs:datapath_transmit_bytes:rate5m{{{dp}}}", f"{where} transmitted"),
            ],
            description=f"Bytes per second summed over the datapath's ports. {DIRECTION}",
            width=8,
        )
    )
    board = board.with_panel(
        graph(
            ids,
            "Datapath drops, errors and failed upcalls",
            "pps",
            [
                Query(f"ovs:datapath_receive_dropped:rate5m{{{dp}}}", f"{where} receive dropped"),
                Query(f"ovs:datapath_transmit_dropped:rate5m{{{dp}}}", f"{where} transmit dropped"),
                Query(f"ovs:datapath_receive_errors:rate5m{{{dp}}}", f"{where} receive errors"),
                Query(f"ovs:datapath_transmit_errors:rate5m{{{dp}}}", f"{where} transmit errors"),
                Query(f"ovs:datapath_upcall_failures:rate5m{{{dp}}}", f"{where} failed upcalls"),
            ],
            description="Summed over the datapath's ports. Failed upcalls need kernel 6.2 or later. "
            f"{DIRECTION}",
            width=8,
        )
    )

    board = board.with_row(dash.Row("Ports by kind of device").id(ids()))
    kind_where = f"{where} {{{{device_kind}}}}"
    for title, unit, pairs in (
        (
            "Traffic by device kind",
            "pps",
            [("receive_packets", "received"), ("transmit_packets", "transmitted")],
        ),
        (
            "Throughput by device kind",
            "Bps",
            [("receive_bytes", "received"), ("transmit_bytes", "transmitted")],
        ),
    ):
        board = board.with_panel(
            graph(
                ids,
                title,
                unit,
                [
                    Query(f"{rules.device_kind_rate(counter)}{{{dp}}}", f"{kind_where} {label}")
                    for counter, label in pairs
                ],
                description="Summed over the ports of each kind of device (ovs_vport_info's device_kind, "
                "from rtnetlink; recording rules ovs:device_kind_*): tunnels (geneve, vxlan, gretap) against "
                "VMs' taps (tun) and pods' veths (veth), the bridges' internal ports (openvswitch) and "
                "physical NICs (none). Every tunnel of a kind shares one vport: which remote chassis a "
                "tunnel's traffic goes to is not in the kernel's counters (docs/ovsdb.md, 'Tunnels').",
            )
        )

    board = board.with_row(dash.Row("Broken ports (OVSDB)").id(ids()))
    broken_sel = f'{inst}, bridge=~"$bridge"'
    board = board.with_panel(
        big_number(
            ids,
            "Interfaces vswitchd cannot open",
            "none",
            [Query(f"sum by (instance) (ovs_bridge_broken_interfaces{{{broken_sel}}})", "{{instance}}")],
            description="Interfaces of kernel-datapath bridges that ovs-vswitchd could not open or configure "
            "(OVSDB Interface.error set, or ofport -1; ovs_bridge_broken_interfaces). Red above 0: a VM's "
            "tap or a pod's veth gone under its row, a device that cannot be added, a patch port "
            "without its peer. The table beside names them; alert OvsWorkloadPortBroken fires for "
            "VMs' and pods' ports.",
            width=6,
            steps=RED_FROM_ONE,
        ).no_value(f"no OVSDB ({NO_OVSDB})")
    )
    broken = [Query(f"ovs_interface_broken_info{{{broken_sel}}}", "")]
    board = board.with_panel(
        table.Panel()
        .id(ids())
        .title("Interfaces vswitchd cannot open")
        .description(
            "Each Interface ovs-vswitchd could not open or configure (ovs_interface_broken_info): its "
            "bridge, name, type, the allowed external_ids (iface_id, vm_uuid, pod_namespace, pod_name, "
            "...) and OVSDB's error, e.g. 'could not open network device tap... (No such device)'. Such "
            "a port has no kernel vport, so no counters and no ovs_interface_info."
        )
        .no_value(f"none (or {NO_OVSDB})")
        .datasource(DATASOURCE)
        .unit("none")
        .span(18)
        .height(8)
        .targets(_targets(broken, instant=True))
        .with_transformation(
            DataTransformerConfig(
                id_val="organize", options={"excludeByName": {name: True for name in BROKEN_HIDDEN}}
            )
        )
    )

    board = board.with_row(dash.Row("Bridges").id(ids()))
    bridge_where = "{{instance}} {{bridge}}"
    for title, unit, pairs, summed in (
        (
            "Bridge traffic",
            "pps",
            [("receive_packets", "received"), ("transmit_packets", "transmitted")],
            "Packets per second",
        ),
        (
            "Bridge throughput",
            "Bps",
            [("receive_bytes", "received"), ("transmit_bytes", "transmitted")],
            "Bytes per second",
        ),
        (
            "Bridge drops, errors and failed upcalls",
            "pps",
            [
                ("receive_dropped", "receive dropped"),
                ("transmit_dropped", "transmit dropped"),
                ("receive_errors", "receive errors"),
                ("transmit_errors", "transmit errors"),
                ("upcall_failures", "failed upcalls"),
            ],
            "Per second (failed upcalls need kernel 6.2 or later)",
        ),
    ):
        queries = [
            Query(f"{rules.bridge_rate(counter)}{{{bridge}}}", f"{bridge_where} {label}")
            for counter, label in pairs
        ]
        board = board.with_panel(
            graph(
                ids,
                title,
                unit,
                queries,
                description=f"{summed}, summed over each bridge's ports (recording rules ovs:bridge_*), "
                "which bridge a port is on coming from OVSDB (ovs_interface_info, the exporter's "
                "--collector.ovsdb). Ports OVSDB does not describe count towards their datapath only. "
                + DIRECTION,
                # The drops panel gets a line of its own: five series per bridge, and room for
                # the text it shows without data.
                width=24 if len(pairs) > 2 else 12,
                no_value=ovsdb_no_data(queries, "no bridges"),
            )
        )

    board = board.with_row(dash.Row(f"Top {TOP_N} ports by traffic").id(ids()))
    for title, metric, unit in (
        ("Received packets: from the VM/pod into the switch", "ovs:vport_receive_packets:rate5m", "pps"),
        ("Transmitted packets: from the switch to the VM/pod", "ovs:vport_transmit_packets:rate5m", "pps"),
        ("Received bytes: from the VM/pod into the switch", "ovs:vport_receive_bytes:rate5m", "Bps"),
        ("Transmitted bytes: from the switch to the VM/pod", "ovs:vport_transmit_bytes:rate5m", "Bps"),
    ):
        board = board.with_panel(
            graph(
                ids,
                title,
                unit,
                [Query(top(metric), who)],
                description=f"The {TOP_N} ports with the highest rate at each point in time, with their "
                "bridge and VM or pod (iface_id, vm_uuid, pod_namespace, pod_name) where OVSDB describes "
                f"them (the exporter's --collector.ovsdb). {DIRECTION}",
                port_links=True,
            )
        )

    board = board.with_row(dash.Row(f"Top {TOP_N} ports by drops, errors and failed upcalls").id(ids()))
    for title, unit, pairs, limit, no_value in (
        (
            "Dropped packets",
            "pps",
            [
                ("ovs:vport_receive_dropped:rate5m", "receive"),
                ("ovs:vport_transmit_dropped:rate5m", "transmit"),
            ],
            None,
            "no port dropped packets (needs metric group dropped)",
        ),
        (
            "Drop ratio",
            "percentunit",
            [
                ("ovs:vport_receive_drop_ratio:rate5m", "receive"),
                ("ovs:vport_transmit_drop_ratio:rate5m", "transmit"),
            ],
            limits.drop_ratio,
            "no port dropped packets (needs metric groups packets, dropped)",
        ),
        (
            "Packets with errors",
            "pps",
            [
                ("ovs:vport_receive_errors:rate5m", "receive"),
                ("ovs:vport_transmit_errors:rate5m", "transmit"),
            ],
            None,
            "no port had errors (needs metric group errors)",
        ),
        (
            "Error ratio",
            "percentunit",
            [
                ("ovs:vport_receive_error_ratio:rate5m", "receive"),
                ("ovs:vport_transmit_error_ratio:rate5m", "transmit"),
            ],
            limits.error_ratio,
            "no port had errors (needs metric groups packets, errors)",
        ),
        (
            "Failed upcalls",
            "pps",
            [("ovs:vport_upcall_failures:rate5m", "failed")],
            None,
            NO_FAILED_UPCALLS,
        ),
        (
            "Upcall failure ratio",
            "percentunit",
            [("ovs:vport_upcall_failure_ratio:rate5m", "failed")],
            limits.upcall_failure_ratio,
            NO_FAILED_UPCALLS,
        ),
    ):
        ratio = unit == "percentunit"
        board = board.with_panel(
            graph(
                ids,
                title,
                unit,
                [Query(top(metric), f"{who} {label}") for metric, label in pairs],
                description=(
                    "Share of the packets offered to each port, over 5 minutes; "
                    "the red line is the alert threshold."
                    if ratio
                    else "Per second, over 5 minutes."
                )
                + f" The {TOP_N} highest ports of each direction, among those where it is above 0, with "
                f"their bridge and VM or pod where OVSDB describes them (--collector.ovsdb). {DIRECTION}",
                limit=limit,
                port_links=True,
                no_value=no_value,
            )
        )

    board = board.with_row(dash.Row("Upcall handlers and port churn").id(ids()))
    board = board.with_panel(
        big_number(
            ids,
            "Upcall handlers (per-CPU dispatch)",
            "none",
            [Query(f"ovs_datapath_upcall_handlers{{{dp}}}", where)],
            description="Netlink sockets receiving upcalls of each datapath in per-CPU dispatch mode "
            "(OVS_DP_ATTR_PER_CPU_PIDS); ovs-vswitchd has one per handler thread. Red 0: no handler, every "
            "flow miss is lost (OVS 3.1.0 started within 10 s of boot). Datapaths in per-vport mode have "
            "none here: see ovs_vport_upcall_handlers.",
            width=8,
            steps=RED_BELOW_ONE,
        )
    )
    events = f"ovs_datapath_vport_events_total{{{dp}"
    board = board.with_panel(
        graph(
            ids,
            "Ports added, removed and changed per minute",
            "short",
            [
                Query(
                    f'sum without (event) (rate({events}, event=~"added|removed"}}[$__rate_interval])) * 60',
                    f"{where} added + removed",
                ),
                Query(f'rate({events}, event="changed"}}[$__rate_interval]) * 60', f"{where} changed"),
            ],
            description="From the kernel's vport notifications, so ports that live shorter than a scrape "
            "count too. The red line is the port churn alert's threshold (added + removed).",
            width=16,
            limit=limits.port_churn_per_minute,
        )
    )
    board = meter_and_zone_rows(board, ids, limits, inst, dp, where)
    return flow_table_rows(board, ids, limits, dp, port, who)


def meter_and_zone_rows(
    board: dash.Dashboard, ids: PanelIds, limits: Thresholds, inst: str, dp: str, where: str
) -> dash.Dashboard:
    """The overview's row of datapath meters and conntrack zone limits (on by default)."""
    board = board.with_row(dash.Row("Meters and conntrack zones").id(ids()))
    meter_where = f"{where} meter {{{{meter}}}}"

    def top_meters(counter: str) -> str:
        return f"topk({TOP_N}, rate(ovs_datapath_meter_{counter}_total{{{dp}}}[$__rate_interval]))"

    board = board.with_panel(
        graph(
            ids,
            f"Packets dropped by meters (top {TOP_N})",
            "pps",
            [Query(top_meters("dropped_packets"), meter_where)],
            description="Packets each datapath meter dropped over its rate (its drop band), per second: "
            "above 0 for 10 minutes raises OvsDatapathMeterDropping. " + METER_HOWTO,
            no_value="no meters (or --no-collector.meters)",
        )
    )
    board = board.with_panel(
        graph(
            ids,
            f"Packets reaching meters (top {TOP_N})",
            "pps",
            [Query(top_meters("packets"), meter_where)],
            description="Packets that reached each datapath meter per second, passed or dropped. "
            "A meter replaced by ovs-vswitchd starts again from 0: a counter reset, which rate() takes "
            "in its stride.",
            no_value="no meters (or --no-collector.meters)",
        )
    )
    fill = f"ovs_conntrack_zone_connections{{{inst}}}\n/\n(ovs_conntrack_zone_limit{{{inst}}} > 0)"
    top_zones = f"topk({TOP_N}, {fill})"
    board = board.with_panel(
        graph(
            ids,
            f"Conntrack zone fill (top {TOP_N})",
            "percentunit",
            [
                Query(
                    f"{top_zones}\n* on ({ZONE_JOIN}) group_left (owner, port)\n{zone_info(inst)}"
                    f"\nor on ({ZONE_JOIN})\n{top_zones}",
                    "{{instance}} zone {{zone}} {{owner}} {{port}}",
                )
            ],
            description="Connections counted against each limited conntrack zone, as a share of its "
            "limit: at 100% the kernel refuses new connections in the zone. With OVN each logical port "
            "has its zone: owner is the logical port (or router) and port its kernel vport, from OVSDB "
            "(the exporter's --collector.ovsdb); zones OVN did not assign show without them. Counted are "
            "connections committed through OVS while the zone had a limit. The red line is the "
            "OvsConntrackZoneNearLimit threshold.",
            width=16,
            limit=limits.zone_fill,
            no_value="no zone has a limit of its own (or --no-collector.conntrack-zones)",
        )
    )
    board = board.with_panel(
        big_number(
            ids,
            "Meters and zone limits read",
            "none",
            [
                Query(
                    f'ovs_scrape_collector_success{{{inst}, collector=~"meters|conntrack_zones"}}',
                    "{{instance}} {{collector}} {{netns}}",
                )
            ],
            description="Whether the exporter's background readers of the datapaths' meters (ovs_meter) and "
            "of the conntrack zone limits (ovs_ct_limit) completed their last round: 0 when the kernel "
            "lacks the family (a module built without conntrack limits or meters) or a read failed (the "
            "exporter's log says why). No value when the collector is off.",
            width=8,
            steps=RED_BELOW_ONE,
        )
    )
    return board


def flow_table_rows(
    board: dash.Dashboard, ids: PanelIds, limits: Thresholds, dp: str, port: str, who: str
) -> dash.Dashboard:
    """The overview's flow table row (the exporter's --collector.flows): who fills the table, and
    whose traffic drop flows match."""
    where = "{{instance}} {{datapath}}"
    keys = "instance, job, netns, datapath"
    board = board.with_row(dash.Row("Flow table: megaflows and drop flows (--collector.flows)").id(ids()))
    board = board.with_panel(
        graph(
            ids,
            f"Top {TOP_N} ports by megaflows",
            "short",
            [Query(with_identity(f"topk({TOP_N}, ovs_vport_flows{{{port}}})", port), who)],
            description=f"The {TOP_N} ports whose traffic fills the kernel flow table most: megaflows whose "
            "match starts at the port (ovs_vport_flows, from the exporter's last complete flow dump), with "
            "their bridge and VM or pod where OVSDB describes them (--collector.ovsdb). A megaflow explosion "
            "(a scan, a flood of new connections) drives upcalls, lost packets and the flow limit.",
            port_links=True,
            no_value=f"no flow dumps ({NO_FLOWS})",
        )
    )
    if limits.record_per_port:
        drops = f"topk({TOP_N}, {rules.flow_drop_rate('vport')}{{{port}}})"
    else:
        drops = f"topk({TOP_N}, {rules.raw_flow_drop_rate('{' + port + '}')} > 0)"
    board = board.with_panel(
        graph(
            ids,
            f"Top {TOP_N} ports by packets their drop flows match",
            "pps",
            [Query(with_identity(drops, port), who)],
            description="Packets per second that kernel flows dropping them (empty actions, or the explicit "
            "drop action) matched, by input port, every reason summed, over 5 minutes: a lower bound "
            "(the first packets of each drop flow, dropped in userspace, are not counted). The red line is "
            "the OvsVportDropFlowsHigh threshold; the port dashboard shows the reasons.",
            limit=limits.flow_drops_per_second,
            port_links=True,
            no_value=f"no port's drop flows matched packets ({NO_FLOWS})",
        )
    )
    board = board.with_panel(
        graph(
            ids,
            "Packets drop flows match, by reason",
            "pps",
            [Query(f"{rules.flow_drop_rate('datapath')}{{{dp}}}", f"{where} {{{{reason}}}}")],
            description="Per datapath, every port summed, by reason: OVS's name for the drop's error code "
            "(of_pipeline: the OpenFlow tables dropped it, an ACL or security group), unspecified for drop "
            "flows with empty actions (OVS before 3.4, or a kernel before 6.4).",
            width=8,
            no_value=f"no drop flows ({NO_FLOWS})",
        )
    )
    board = board.with_panel(
        graph(
            ids,
            "Share of the flow table held by the busiest port",
            "percentunit",
            [
                Query(
                    f"max by ({keys}) (ovs_vport_flows{{{dp}}})\n/ on ({keys})\n"
                    f"ovs_datapath_flow_dump_flows{{{dp}}}",
                    where,
                )
            ],
            description="The largest share of a datapath's megaflows one port holds. The red line is the "
            "OvsFlowTableHeldByOnePort threshold (which also needs a nearly full table).",
            width=8,
            limit=limits.flow_table_share,
            no_value=f"no flow dumps ({NO_FLOWS})",
        )
    )
    board = board.with_panel(
        graph(
            ids,
            "Flow dumps: age and duration",
            "s",
            [
                Query(f"time() - ovs_datapath_flow_dump_timestamp_seconds{{{dp}}}", f"{where} age"),
                Query(f"ovs_datapath_flow_dump_duration_seconds{{{dp}}}", f"{where} duration"),
                Query(
                    f"increase(ovs_datapath_flow_dumps_abandoned_total{{{dp}}}[$__rate_interval])",
                    f"{where} abandoned",
                ),
            ],
            description="How old the last complete flow dump is (what ovs_vport_flows shows), how long it "
            "took, and dumps abandoned over --collector.flows.max-flows or .max-seconds per interval.",
            width=8,
            no_value=f"no flow dumps ({NO_FLOWS})",
        )
    )
    return board


def port_detail(limits: Thresholds) -> dash.Dashboard:
    """One port at full resolution, with its datapath for context."""
    ids = PanelIds()
    inst = 'instance=~"$instance"'
    dp = f'{inst}, datapath=~"$datapath"'
    sel = f'{dp}, port=~"$port"'

    def rate(counter: str) -> str:
        return f"rate(ovs_vport_{counter}_total{{{sel}}}[$__rate_interval])"

    def ratio(direction: str, bad: str) -> str:
        offered = f"({rate(f'{direction}_packets')} + {rate(f'{direction}_{bad}')} > 0)"
        return f"{rate(f'{direction}_{bad}')} / {offered}"

    board = (
        _base(
            PORT_UID,
            "OVS kernel datapath / Port",
            "One Open vSwitch kernel datapath port (vport) in detail, from ovs-vport-exporter.",
        )
        .with_variable(_datasource_variable())
        .with_variable(_query_variable("instance", "Instance", "label_values(ovs_up, instance)", multi=False))
        .with_variable(
            _query_variable(
                "datapath", "Datapath", f"label_values(ovs_vport_info{{{inst}}}, datapath)", multi=False
            )
        )
        .with_variable(
            _query_variable("port", "Port", f"label_values(ovs_vport_info{{{dp}}}, port)", multi=False)
        )
    )

    board = board.with_row(dash.Row("Port $port on $datapath ($instance)").id(ids()))
    info = [Query(f"ovs_vport_info{{{sel}}}", "")]
    board = board.with_panel(
        table.Panel()
        .id(ids())
        .title("Vport")
        .description(with_needs("Static attributes of the port (ovs_vport_info).", info))
        .no_value(str(no_data_text(info, None)))
        .datasource(DATASOURCE)
        .unit("none")
        .span(24)
        .height(4)
        .targets(_targets(info, instant=True))
        .with_transformation(
            DataTransformerConfig(
                id_val="organize",
                options={"excludeByName": {"Time": True, "Value": True, "__name__": True, "job": True}},
            )
        )
    )
    identity = [Query(f"{rules.INTERFACE_INFO}{{{sel}}}", "")]
    board = board.with_panel(
        table.Panel()
        .id(ids())
        .title("Who is on this port (OVSDB)")
        .description(
            "The port's bridge, OpenFlow port number, Interface type and the allowed external_ids "
            "(iface_id, attached_mac, vm_uuid, pod_namespace, pod_name, ...), from OVSDB's "
            "ovs_interface_info (the exporter's --collector.ovsdb). Nothing for a port that no OVSDB "
            "Interface describes (the datapath's own port, ports other tools added) or when the "
            "exporter does not read OVSDB: the panel beside says which."
        )
        .no_value("no OVSDB row for this port (or the exporter runs without --collector.ovsdb)")
        .datasource(DATASOURCE)
        .unit("none")
        .span(18)
        .height(4)
        .targets(_targets(identity, instant=True))
        .with_transformation(
            DataTransformerConfig(
                id_val="organize", options={"excludeByName": {name: True for name in IDENTITY_HIDDEN}}
            )
        )
    )
    board = board.with_panel(
        big_number(
            ids,
            "OVSDB read by the exporter",
            "none",
            [Query(f'ovs_scrape_collector_success{{{inst}, collector="ovsdb"}}', "{{instance}}")],
            description="Whether the exporter serves a complete, current copy of OVSDB "
            '(ovs_scrape_collector_success{collector="ovsdb"}): no value when it runs without '
            "--collector.ovsdb, 0 while it has no current copy (ovsdb-server down or restarting).",
            width=6,
            height=4,
            steps=RED_BELOW_ONE,
        )
        .mappings(
            [
                ValueMap(
                    options={
                        "1": ValueMappingResult(text="current copy", color="green", index=0),
                        "0": ValueMappingResult(text="no current copy", color="red", index=1),
                    }
                )
            ]
        )
        .no_value("collector off (no --collector.ovsdb)")
    )

    board = board.with_row(dash.Row("Traffic").id(ids()))
    board = board.with_panel(
        graph(
            ids,
            "Packets: received from, transmitted to the VM/pod",
            "pps",
            [Query(rate("receive_packets"), "received"), Query(rate("transmit_packets"), "transmitted")],
            description=f"Packets per second. {DIRECTION}",
            width=8,
        )
    )
    board = board.with_panel(
        graph(
            ids,
            "Throughput: received from, transmitted to the VM/pod",
            "Bps",
            [Query(rate("receive_bytes"), "received"), Query(rate("transmit_bytes"), "transmitted")],
            description=f"Bytes per second. {DIRECTION} An internal port's received bytes leave out the "
            "14-byte Ethernet headers.",
            width=8,
        )
    )
    board = board.with_panel(
        graph(
            ids,
            "Average packet size",
            "decbytes",
            [
                Query(f"{rate('receive_bytes')} / ({rate('receive_packets')} > 0)", "received"),
                Query(f"{rate('transmit_bytes')} / ({rate('transmit_packets')} > 0)", "transmitted"),
            ],
            description=f"Bytes per packet. {DIRECTION}",
            width=8,
        )
    )

    board = board.with_row(dash.Row("Drops and errors").id(ids()))
    board = board.with_panel(
        graph(
            ids,
            "Dropped packets",
            "pps",
            [Query(rate("receive_dropped"), "receive"), Query(rate("transmit_dropped"), "transmit")],
            description="Packets dropped per second: receive on the way into the switch, transmit what "
            "the switch could not deliver (e.g. to a VM that does not read its queue fast enough); the "
            "other way round on an internal port.",
            width=6,
        )
    )
    board = board.with_panel(
        graph(
            ids,
            "Drop ratio",
            "percentunit",
            [Query(ratio("receive", "dropped"), "receive"), Query(ratio("transmit", "dropped"), "transmit")],
            description="dropped / (packets + dropped), per direction as the port's device counts it (on "
            "a VM's tap or a pod's veth, receive is into the switch); the red line is the alert threshold.",
            width=6,
            limit=limits.drop_ratio,
        )
    )
    board = board.with_panel(
        graph(
            ids,
            "Packets with errors",
            "pps",
            [Query(rate("receive_errors"), "receive"), Query(rate("transmit_errors"), "transmit")],
            description="Packets with errors per second: receive on the way into the switch, transmit on "
            "the way to the VM or pod; the other way round on an internal port.",
            width=6,
        )
    )
    board = board.with_panel(
        graph(
            ids,
            "Error ratio",
            "percentunit",
            [Query(ratio("receive", "errors"), "receive"), Query(ratio("transmit", "errors"), "transmit")],
            description="errors / (packets + errors), per direction as the port's device counts it (on "
            "a VM's tap or a pod's veth, receive is into the switch); the red line is the alert threshold.",
            width=6,
            limit=limits.error_ratio,
        )
    )

    board = board.with_row(dash.Row("Upcalls").id(ids()))
    board = board.with_panel(
        graph(
            ids,
            "Upcalls",
            "pps",
            [Query(rate("upcalls"), "all"), Query(rate("upcall_failures"), "failed")],
            description="Packets of this port sent to userspace because no flow matched (kernel 6.2+); "
            "traffic offloaded to tc flower or a NIC makes none.",
            no_value=NO_UPCALL_STATS,
        )
    )
    board = board.with_panel(
        graph(
            ids,
            "Upcall failure ratio",
            "percentunit",
            [Query(f"{rate('upcall_failures')} / ({rate('upcalls')} > 0)", "failed")],
            description="Share of upcalls that could not be queued to userspace; "
            "the red line is the alert threshold.",
            limit=limits.upcall_failure_ratio,
            no_value=NO_UPCALL_STATS,
        )
    )

    board = board.with_row(dash.Row("Flow table").id(ids()))
    board = board.with_panel(
        graph(
            ids,
            "Megaflows from this port",
            "short",
            [Query(f"ovs_vport_flows{{{sel}}}", "megaflows")],
            description="Megaflows in the kernel flow table whose match starts at this port (recirculation "
            "id 0), from the exporter's last complete flow dump.",
            width=8,
            no_value=f"no flow dumps ({NO_FLOWS})",
        )
    )
    for title, unit, what in (
        ("Packets its drop flows match", "pps", "packets"),
        ("Bytes its drop flows match", "Bps", "bytes"),
    ):
        board = board.with_panel(
            graph(
                ids,
                title,
                unit,
                [
                    Query(
                        f"sum by (reason) (rate(ovs_vport_flow_dropped_{what}_total{{{sel}}}"
                        "[$__rate_interval]))",
                        "{{reason}}",
                    )
                ],
                description="What kernel flows that drop this port's traffic matched, by reason: OVS's name "
                "for the drop's error code (of_pipeline: the OpenFlow tables dropped it, an ACL or security "
                "group), unspecified for empty actions. A lower bound: the first packets of each drop flow "
                "go to userspace and are not counted.",
                width=8,
                no_value=f"no drop flows for this port ({NO_FLOWS})",
            )
        )

    board = board.with_row(dash.Row("Conntrack zone").id(ids()))
    # The zone OVN gave this port's logical port (ovs_conntrack_zone_info names its vport).
    zone = zone_info(sel)
    on = f"on ({ZONE_JOIN}) group_left"
    no_zone = "no limited zone for this port (needs --collector.ovsdb and OVN's ct-zone keys)"
    board = board.with_panel(
        graph(
            ids,
            "Conntrack zone fill",
            "percentunit",
            [
                Query(
                    f"ovs_conntrack_zone_connections{{{inst}}} / (ovs_conntrack_zone_limit{{{inst}}} > 0)"
                    f"\n* {on} (owner)\n{zone}",
                    "zone {{zone}} ({{owner}})",
                )
            ],
            description="Connections counted against the limit of the conntrack zone OVN gave this "
            "port's logical port, as a share of the limit: at 100% the kernel refuses the port's new "
            "connections. The red line is the OvsConntrackZoneNearLimit threshold.",
            limit=limits.zone_fill,
            no_value=no_zone,
        )
    )
    board = board.with_panel(
        graph(
            ids,
            "Conntrack zone connections and limit",
            "short",
            [
                Query(
                    f"ovs_conntrack_zone_connections{{{inst}}}\n* {on} ()\n{zone}",
                    "zone {{zone}} connections",
                ),
                Query(f"ovs_conntrack_zone_limit{{{inst}}}\n* {on} ()\n{zone}", "zone {{zone}} limit"),
            ],
            description="Connections committed through OVS in the port's conntrack zone that still exist, "
            "and the zone's own limit (ovs-appctl dpctl/ct-set-limits, OVSDB CT_Zone, OVN's "
            "ct-zone-limit).",
            no_value=no_zone,
        )
    )

    board = board.with_row(dash.Row("Datapath $datapath").id(ids()))
    board = board.with_panel(
        graph(
            ids,
            "Flow table lookups",
            "pps",
            [
                Query(f"ovs:datapath_lookup_hits:rate5m{{{dp}}}", "hit"),
                Query(f"ovs:datapath_lookup_misses:rate5m{{{dp}}}", "missed"),
                Query(f"ovs:datapath_lookup_lost:rate5m{{{dp}}}", "lost"),
            ],
            description="The whole datapath's lookups, from the recording rules (5-minute rates). "
            + NOT_OFFLOADED,
        )
    )
    board = board.with_panel(
        graph(
            ids,
            "Flows and masks",
            "short",
            [Query(f"ovs_datapath_flows{{{dp}}}", "flows"), Query(f"ovs_datapath_masks{{{dp}}}", "masks")],
            description="Flows and megaflow masks installed in the datapath's flow table, not those "
            "offloaded to tc flower or a NIC.",
        )
    )
    return board


def render(board: dash.Dashboard) -> str:
    """Stable JSON text of a dashboard, as committed."""
    return json.dumps(board.build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def outputs(limits: Thresholds) -> dict[Path, str]:
    """Every committed dashboard file and its expected content."""
    return {
        HERE / f"{OVERVIEW_UID}.json": render(overview(limits)),
        HERE / f"{PORT_UID}.json": render(port_detail(limits)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the ovs-vport-exporter Grafana dashboards.")
    parser.add_argument("--config", type=Path, default=CONFIG_PATH)
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed dashboard is not current")
    args = parser.parse_args(argv)
    try:
        files = outputs(load_thresholds(args.config))
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as exc:
        print(f"{Path(__file__).name}: {exc}", file=sys.stderr)
        return 2
    stale = [
        path for path, text in files.items() if not path.exists() or path.read_text(encoding="utf-8") != text
    ]
    if args.check:
        for path in stale:
            print(f"{path} is stale: run python dashboards/generate_dashboards.py", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(files[path], encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
