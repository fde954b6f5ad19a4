"""Every PromQL expression the project ships, for tests that parse or run them.

``all_exprs(variables)`` returns ``(name, expr)`` pairs read from the committed
dashboards (``dashboards/*.json``) and the rules file
(``alerts/ovs-vport-exporter.rules.yml``), with Grafana variables substituted:

- ``dashboard/<uid>/<panel id>/<refId>``: each query of each panel;
- ``variable/<uid>/<name>``: the series selector inside a ``label_values()``
  template variable (the dashboard shows nothing when it has no series);
- ``record/<name>``: each recording rule;
- ``alert/<name>``: each alerting rule's condition.

A runner that checks every expression returns data against a real Prometheus
should know two things, which ``is_condition`` and ``needs_upcall_stats`` tell:
alert conditions return data only while the alert's condition holds, and
expressions over the per-port upcall counters return nothing on kernels older
than 6.2, which do not report them. Two more, which ``only_with_trouble`` and
``needs_ovsdb`` tell: the per-port drop, error and failed-upcall series are
recorded only for ports where they are above 0, and the per-bridge sums, the
identity table and the OVSDB health need OVSDB (the exporter's
``--collector.ovsdb``). The top-port panels join OVSDB's identity onto their
ports but keep the ports without one (``joins_identity``): they need no OVSDB.
The flow collector's series exist only with ``--collector.flows`` (``needs_flows``). Recording-rule series (``ovs:*``) exist only
when Prometheus loaded the rules file and has evaluated it at least once.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = ROOT / "dashboards"
RULES_PATH = ROOT / "alerts" / "ovs-vport-exporter.rules.yml"

# What Grafana would substitute when nothing else is given: every instance,
# datapath, bridge and port; intervals as for a 1-hour range at 15 s resolution.
DEFAULT_VARIABLES: dict[str, str] = {
    "datasource": "prometheus",
    "instance": ".*",
    "datapath": ".*",
    "bridge": ".*",
    "port": ".*",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}

# $name, ${name}, ${name:format} and the deprecated [[name]], [[name:format]].
_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::[^\]]*)?\]\]")
_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<selector>.+),\s*(?P<label>\w+)\s*\)\s*$", re.DOTALL)


def substitute(expr: str, variables: dict[str, str], uid: str = "") -> str:
    """Replace Grafana variables in ``expr``; an unknown variable raises KeyError.

    A key ``"<dashboard uid>/<name>"`` in ``variables`` applies to that dashboard
    only and wins over ``"<name>"``: e.g. ``{"ovs-port/port": "vm1"}`` shows one
    port in the per-port dashboard while the overview still shows every port.
    """

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group is not None)
        if f"{uid}/{name}" in variables:
            return variables[f"{uid}/{name}"]
        if name in variables:
            return variables[name]
        if name in DEFAULT_VARIABLES:
            return DEFAULT_VARIABLES[name]
        raise KeyError(f"no value for Grafana variable ${name} in {expr!r}")

    return _VARIABLE.sub(replace, expr)


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Panels in layout order, including those inside collapsed rows."""
    found: list[dict[str, Any]] = []
    for panel in panels:
        found.append(panel)
        found.extend(_panels(panel.get("panels") or []))
    return found


def dashboards() -> list[dict[str, Any]]:
    """The committed dashboards, parsed, in file name order."""
    return [json.loads(path.read_text(encoding="utf-8")) for path in sorted(DASHBOARD_DIR.glob("*.json"))]


def rule_groups() -> list[dict[str, Any]]:
    """The groups of the committed rules file."""
    document = yaml.safe_load(RULES_PATH.read_text(encoding="utf-8"))
    groups: list[dict[str, Any]] = document["groups"]
    return groups


def dashboard_exprs(variables: dict[str, str]) -> list[tuple[str, str]]:
    """Panel queries and variable selectors of every committed dashboard."""
    exprs: list[tuple[str, str]] = []
    for board in dashboards():
        uid = board["uid"]
        for variable in board.get("templating", {}).get("list", []):
            query = variable.get("query")
            if isinstance(query, dict):
                query = query.get("query")
            if variable.get("type") != "query" or not isinstance(query, str):
                continue
            match = _LABEL_VALUES.match(query)
            if match:
                exprs.append(
                    (f"variable/{uid}/{variable['name']}", substitute(match["selector"], variables, uid))
                )
        for panel in _panels(board.get("panels", [])):
            for target in panel.get("targets") or []:
                if target.get("expr"):
                    name = f"dashboard/{uid}/{panel['id']}/{target['refId']}"
                    exprs.append((name, substitute(target["expr"], variables, uid)))
    return exprs


def rule_exprs() -> list[tuple[str, str]]:
    """Every recording and alerting rule expression, as written."""
    exprs: list[tuple[str, str]] = []
    for group in rule_groups():
        for rule in group["rules"]:
            kind, name = ("record", rule["record"]) if "record" in rule else ("alert", rule["alert"])
            exprs.append((f"{kind}/{name}", rule["expr"].strip()))
    return exprs


def all_exprs(variables: dict[str, str]) -> list[tuple[str, str]]:
    """(name, expr) for every dashboard query and rule, names unique."""
    exprs = dashboard_exprs(variables) + rule_exprs()
    names = [name for name, _ in exprs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"duplicate inventory names: {duplicates}")
    return exprs


# The rule group of per-port series recorded only while above 0 (alerts/generate_rules.py).
TROUBLE_GROUP = "ovs-vport-exporter.ports-in-trouble"


@functools.cache
def _trouble_series() -> frozenset[str]:
    """The series of TROUBLE_GROUP (parsed once: callers ask for every expression, and pure
    Python YAML takes a second per parse under TCG)."""
    return frozenset(
        rule["record"] for group in rule_groups() if group["name"] == TROUBLE_GROUP for rule in group["rules"]
    )


def only_with_trouble(name: str, expr: str) -> bool:
    """True for a series recorded only for ports in trouble, and for queries reading one:
    empty while no port drops, errs or fails upcalls."""
    recorded = _trouble_series()
    return name.removeprefix("record/") in recorded or any(
        re.search(rf"{re.escape(series)}\b", expr) for series in recorded
    )


def _keeps_unjoined(expr: str) -> bool:
    """A ``group_left`` join that keeps, with ``or on(...)`` the un-joined series, those without a match."""
    return "group_left" in expr and re.search(r"\bor on\b", expr) is not None


def joins_identity(expr: str) -> bool:
    """True when ``expr`` adds OVSDB's identity (``ovs_interface_info``) to per-port series and
    keeps, with ``or on(...)`` the un-joined series, the ports that have none: it returns data with
    or without OVSDB."""
    return "ovs_interface_info" in expr and _keeps_unjoined(expr)


def needs_ovsdb(expr: str) -> bool:
    """True when ``expr`` returns nothing without OVSDB (the exporter's ``--collector.ovsdb``):
    the identity itself (of ports, and of conntrack zones), the broken Interfaces and their counts,
    the per-bridge sums, the OVSDB source's health."""
    reads = re.search(
        r"\bovs_interface_info\b|\bovs_system_info\b|\bovs_interface_broken_info\b|\bovs_conntrack_zone_info\b|"
        r'\bovs_bridge_broken_interfaces\b|ovs:bridge_|collector="ovsdb"',
        expr,
    )
    return reads is not None and not _keeps_unjoined(expr)


def reads_meters_or_zones(expr: str) -> bool:
    """True when ``expr`` reads datapath meters or conntrack zone limits: none exist until
    something installs them (ovs-vswitchd's meters, zone limits set by OVN or an operator), so the
    plain-kernel suite (test_prometheus) leaves these to test_vswitchd, which has both."""
    return re.search(r"\bovs_datapath_meter|\bovs_conntrack_", expr) is not None


def needs_flows(expr: str) -> bool:
    """True when ``expr`` reads the flow collector's series (the exporter's ``--collector.flows``,
    off by default): per-port megaflows and drop flows, the dumps, the worker, and the rules
    recorded from them. Only an exporter running the collector has them."""
    return (
        re.search(
            r"\bovs_vport_flows\b|ovs_vport_flow_dropped_|ovs_datapath_flow_dump|ovs_flow_worker_"
            r'|ovs:(vport|datapath)_flow_dropped_|collector="flows"',
            expr,
        )
        is not None
    )


def is_condition(name: str) -> bool:
    """True for alert conditions, which are empty while all is well."""
    return name.startswith("alert/")


def needs_upcall_stats(expr: str) -> bool:
    """True when ``expr`` reads per-port upcall counters (kernel 6.2+ only), or the per-bridge
    series recorded from them; the handler gauges, read from other attributes, are on every
    kernel."""
    return re.search(r"(vport|datapath|bridge)_upcall(s|_failure)", expr) is not None


if __name__ == "__main__":
    print(json.dumps(dict(all_exprs({})), indent=2))
