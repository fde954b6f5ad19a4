"""Kernel records -> Prometheus exposition text, in the classic text format or OpenMetrics.

Every metric the exporter derives from the kernel is named, described and
written here, so this module is the place to look up where a counter comes from.
It writes the exposition directly instead of building a prometheus_client
``Metric`` per family and sample: at thousands of vports the object-per-sample
route costs ~10x the rest of the scrape. ``tests/unit/test_exposition.py`` parses
both formats with prometheus_client's own parsers and checks they mean exactly
what prometheus_client would have written for the same families.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from exporter import wire
from exporter.model import DatapathDump


class Format(enum.Enum):
    TEXT = "text/plain; version=0.0.4; charset=utf-8"
    OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@dataclass(frozen=True, slots=True)
class VportCounter:
    """A counter family fed by one field of a vport record."""

    name: str  # without the _total suffix
    help: str
    value: Callable[[wire.Vport], int | None]


def _stat(index: int) -> Callable[[wire.Vport], int | None]:
    def value(vport: wire.Vport) -> int | None:
        return None if vport.stats is None else vport.stats[index]

    return value


def _upcalls(vport: wire.Vport) -> int | None:
    upcall = vport.upcall_stats
    return None if upcall is None else upcall.success + upcall.fail


def _upcall_failures(vport: wire.Vport) -> int | None:
    upcall = vport.upcall_stats
    return None if upcall is None else upcall.fail


_S = wire.VportStats._fields
VPORT_COUNTERS: tuple[VportCounter, ...] = (
    VportCounter(
        "ovs_vport_receive_packets",
        "Packets received by the vport (ovs_vport_stats.rx_packets).",
        _stat(_S.index("rx_packets")),
    ),
    VportCounter(
        "ovs_vport_transmit_packets",
        "Packets transmitted by the vport (ovs_vport_stats.tx_packets).",
        _stat(_S.index("tx_packets")),
    ),
    VportCounter(
        "ovs_vport_receive_bytes",
        "Bytes received by the vport (ovs_vport_stats.rx_bytes).",
        _stat(_S.index("rx_bytes")),
    ),
    VportCounter(
        "ovs_vport_transmit_bytes",
        "Bytes transmitted by the vport (ovs_vport_stats.tx_bytes).",
        _stat(_S.index("tx_bytes")),
    ),
    VportCounter(
        "ovs_vport_receive_errors",
        "Receive errors on the vport (ovs_vport_stats.rx_errors).",
        _stat(_S.index("rx_errors")),
    ),
    VportCounter(
        "ovs_vport_transmit_errors",
        "Transmit errors on the vport (ovs_vport_stats.tx_errors).",
        _stat(_S.index("tx_errors")),
    ),
    VportCounter(
        "ovs_vport_receive_dropped",
        "Received packets dropped by the vport (ovs_vport_stats.rx_dropped).",
        _stat(_S.index("rx_dropped")),
    ),
    VportCounter(
        "ovs_vport_transmit_dropped",
        "Packets dropped on transmit by the vport (ovs_vport_stats.tx_dropped).",
        _stat(_S.index("tx_dropped")),
    ),
    VportCounter(
        "ovs_vport_upcalls",
        "Upcalls from the vport to userspace, successful or not"
        " (OVS_VPORT_UPCALL_ATTR_SUCCESS + FAIL; kernel 6.2+).",
        _upcalls,
    ),
    VportCounter(
        "ovs_vport_upcall_failures",
        "Upcalls from the vport that could not be delivered to userspace"
        " (OVS_VPORT_UPCALL_ATTR_FAIL; kernel 6.2+).",
        _upcall_failures,
    ),
)

VPORT_INFO = ("ovs_vport", "Static attributes of a vport (value 1).")

# The per-vport metric groups an operator chooses with --collector.vport.metrics
# (config.VPORT_METRIC_GROUPS) -> the families each one serves.
VPORT_METRIC_GROUPS: dict[str, tuple[str, ...]] = {
    "packets": ("ovs_vport_receive_packets", "ovs_vport_transmit_packets"),
    "bytes": ("ovs_vport_receive_bytes", "ovs_vport_transmit_bytes"),
    "errors": ("ovs_vport_receive_errors", "ovs_vport_transmit_errors"),
    "dropped": ("ovs_vport_receive_dropped", "ovs_vport_transmit_dropped"),
    "upcalls": ("ovs_vport_upcalls", "ovs_vport_upcall_failures"),
    "info": (VPORT_INFO[0],),
}


def vport_counters(groups: Iterable[str]) -> tuple[VportCounter, ...]:
    """The counter families of the chosen groups, in exposition order."""
    names = {name for group in groups for name in VPORT_METRIC_GROUPS[group]}
    return tuple(counter for counter in VPORT_COUNTERS if counter.name in names)


@dataclass(frozen=True, slots=True)
class DatapathMetric:
    """A datapath family: a counter (``_total`` added) or a gauge."""

    name: str
    kind: str  # "counter" or "gauge"
    help: str
    value: Callable[[DatapathDump], int | None]


def _dp_stat(field: str) -> Callable[[DatapathDump], int | None]:
    def value(dump: DatapathDump) -> int | None:
        stats = dump.datapath.stats
        return None if stats is None else int(getattr(stats, field))

    return value


def _megaflow_stat(field: str) -> Callable[[DatapathDump], int | None]:
    def value(dump: DatapathDump) -> int | None:
        stats = dump.datapath.megaflow_stats
        return None if stats is None else int(getattr(stats, field))

    return value


DATAPATH_METRICS: tuple[DatapathMetric, ...] = (
    DatapathMetric(
        "ovs_datapath_lookup_hits",
        "counter",
        "Packets that matched an existing flow (ovs_dp_stats.n_hit).",
        _dp_stat("hits"),
    ),
    DatapathMetric(
        "ovs_datapath_lookup_misses",
        "counter",
        "Packets that matched no flow and were sent to userspace (ovs_dp_stats.n_missed).",
        _dp_stat("missed"),
    ),
    DatapathMetric(
        "ovs_datapath_lookup_lost",
        "counter",
        "Packets that matched no flow and could not be sent to userspace (ovs_dp_stats.n_lost).",
        _dp_stat("lost"),
    ),
    DatapathMetric(
        "ovs_datapath_flows",
        "gauge",
        "Flows in the datapath's flow table (ovs_dp_stats.n_flows).",
        _dp_stat("flows"),
    ),
    DatapathMetric(
        "ovs_datapath_masks",
        "gauge",
        "Megaflow masks in the datapath (ovs_dp_megaflow_stats.n_masks).",
        _megaflow_stat("masks"),
    ),
    DatapathMetric(
        "ovs_datapath_mask_hits",
        "counter",
        "Masks visited to find matching flows (ovs_dp_megaflow_stats.n_mask_hit).",
        _megaflow_stat("mask_hits"),
    ),
    DatapathMetric(
        "ovs_datapath_mask_cache_hits",
        "counter",
        "Lookups answered by the mask cache (ovs_dp_megaflow_stats.n_cache_hit).",
        _megaflow_stat("cache_hits"),
    ),
    DatapathMetric(
        "ovs_datapath_vports",
        "gauge",
        "Vports in the datapath, as the kernel's vport dump lists them.",
        lambda d: d.vport_count,
    ),
)


def escape_label_value(value: str) -> str:
    """Escape a label value the same way in both formats."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _escape_help(text: str, fmt: Format) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if fmt is Format.OPENMETRICS else text


def family_header(name: str, kind: str, help_text: str, fmt: Format) -> str:
    """HELP and TYPE lines. ``name`` is the family name without ``_total``/``_info``.

    OpenMetrics names the family without the suffix its samples carry; the
    classic text format names it as the samples are named, and has no info type.
    """
    if fmt is Format.OPENMETRICS:
        family = name
    elif kind == "counter":
        family = name + "_total"
    elif kind == "info":
        family, kind = name + "_info", "gauge"
    else:
        family = name
    return f"# HELP {family} {_escape_help(help_text, fmt)}\n# TYPE {family} {kind}\n"


def render_labels(labels: Iterable[tuple[str, str]]) -> str:
    return "{" + ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels) + "}"


# Vports per block in render_datapaths: a block's records (~400 bytes each) fit in a CPU cache.
_RENDER_BLOCK = 2048


def _vport_info_sample(port_labels: str, vport: wire.Vport) -> str:
    """The ``ovs_vport_info`` line. ``port_labels``: the escaped labels naming the port."""
    # Attributes an older kernel does not send are left out, never filled with 0. The
    # numbers and type names need no escaping. One f-string per vport: this runs for every vport.
    optional = ""
    if vport.ifindex is not None:
        optional += f',ifindex="{vport.ifindex}"'
    if vport.netnsid is not None:
        optional += f',netnsid="{vport.netnsid}"'
    if vport.dst_port is not None:
        optional += f',dst_port="{vport.dst_port}"'
    fixed = f'{port_labels},port_no="{vport.port_no}",vport_type="{vport.type_name}"'
    return f"ovs_vport_info{{{fixed}{optional}}} 1\n"


def _datapath_labels(dump: DatapathDump) -> str:
    """``datapath=".."``, and ``netns=".."`` for a datapath read in a named namespace."""
    labels = f'datapath="{escape_label_value(dump.datapath.name)}"'
    return labels if dump.netns is None else f'netns="{escape_label_value(dump.netns)}",{labels}'


def render_datapaths(
    dumps: Sequence[DatapathDump],
    fmt: Format,
    counters: Sequence[VportCounter] = VPORT_COUNTERS,
    vport_info: bool = True,
) -> list[str]:
    """The exposition of every datapath and vport, as chunks to join.

    ``counters`` and ``vport_info`` are the per-vport families to serve
    (``vport_counters``; --collector.vport.metrics); the datapath families are always served.

    A family with no samples (no vports, or upcall stats on a kernel before 6.2)
    is left out entirely: absent means "not reported", never zero.

    This is the hot path of a scrape (about ten samples per vport): each vport's
    label set is escaped once and reused by every family, and the samples of a
    family are list comprehensions of f-strings, joined once per block of vports.
    """
    out: list[str] = []
    # Each vport with its escaped 'datapath="..",port=".."', computed once for every family.
    rows: list[tuple[str, wire.Vport]] = []
    for dump in dumps:
        dp = _datapath_labels(dump)
        for vport in dump.vports:
            rows.append((f'{dp},port="{escape_label_value(vport.name)}"', vport))

    # Block by block: every counter family's samples of one block of vports, then the next
    # block. A block's records stay in the CPU cache while the ten families read them; a
    # whole pass per family would fetch every record from memory ten times, which made a
    # vport cost more at 50,000 vports than at 10,000.
    counter_blocks: list[list[str]] = [[] for _ in counters]
    for start in range(0, len(rows), _RENDER_BLOCK):
        block = rows[start : start + _RENDER_BLOCK]
        for blocks, counter in zip(counter_blocks, counters, strict=True):
            sample = counter.name + "_total"
            value = counter.value
            blocks.append(
                "".join(
                    [
                        f"{sample}{{{labels}}} {v}\n"
                        for labels, vport in block
                        if (v := value(vport)) is not None
                    ]
                )
            )
    for blocks, counter in zip(counter_blocks, counters, strict=True):
        if any(blocks):
            out.append(family_header(counter.name, "counter", counter.help, fmt))
            out.extend(blocks)

    if rows and vport_info:
        out.append(family_header(VPORT_INFO[0], "info", VPORT_INFO[1], fmt))
        out.append("".join([_vport_info_sample(labels, vport) for labels, vport in rows]))

    for metric in DATAPATH_METRICS:
        sample = metric.name + "_total" if metric.kind == "counter" else metric.name
        dp_lines = [
            f"{sample}{{{_datapath_labels(dump)}}} {v}\n"
            for dump in dumps
            if (v := metric.value(dump)) is not None
        ]
        if dp_lines:
            out.append(family_header(metric.name, metric.kind, metric.help, fmt))
            out.append("".join(dp_lines))
    return out


def render_gauge(name: str, help_text: str, value: float, fmt: Format) -> str:
    return family_header(name, "gauge", help_text, fmt) + f"{name} {_number(value)}\n"


def render_counter(name: str, help_text: str, value: float, fmt: Format) -> str:
    return family_header(name, "counter", help_text, fmt) + f"{name}_total {_number(value)}\n"


def render_info(name: str, help_text: str, labels: dict[str, str], fmt: Format) -> str:
    return family_header(name, "info", help_text, fmt) + f"{name}_info{render_labels(labels.items())} 1\n"


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


# --- OVSDB identity (exporter.identity): info series that join onto the vport metrics ---

INTERFACE_INFO = (
    "ovs_interface",
    "A kernel vport as OVSDB describes it: bridge, ofport, interface type and the allowed"
    " Interface external_ids (value 1). Join on (datapath, port).",
)
SYSTEM_INFO = (
    "ovs_system",
    "The Open vSwitch instance, from OVSDB's Open_vSwitch table (value 1).",
)


def render_info_samples(name: str, label_sets: Iterable[Iterable[tuple[str, str]]]) -> str:
    """The samples of an info family (``name`` without ``_info``), one per label set; no header.

    The same text serves both formats, so a background source can write it once per change.
    """
    return "".join([f"{name}_info{render_labels(labels)} 1\n" for labels in label_sets])
