"""The families of the datapath and vport dumps: their names, what they count, how they are written.

Every metric the exporter derives from the ``ovs_datapath`` and ``ovs_vport`` dumps is
named and described here (``VPORT_COUNTERS``, ``DATAPATH_METRICS``, the info families),
so this module is the place to look up where a counter comes from and what it does and
does not count. ``DatapathRenderer`` writes them, reusing between scrapes the text of
ports that did not change.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from exporter.exposition import Format, escape_label_value, family_header
from exporter.kernel.dumps import DatapathDump
from exporter.kernel.families.datapath import DP_FEATURE_NAMES
from exporter.kernel.families.vport import VXLAN_EXT_NAMES, UpcallStats, Vport, VportStats

# Where each group of counters is in a ``Vport``: a tuple of numbers, or None when the
# kernel did not send it (upcall statistics before 6.2).
_STATS = Vport._fields.index("stats")
_UPCALL_STATS = Vport._fields.index("upcall_stats")
# A family's values, taken out of that record of every vport that has it, in order.
Column = Callable[[Sequence[Any]], tuple[int, ...]]


@dataclass(frozen=True, slots=True)
class VportCounter:
    """A counter family fed by one record of each vport (``Vport.stats`` or ``.upcall_stats``).

    ``column`` reads the family's values out of the records of every vport at once:
    ``map`` and ``operator`` loops run in C, where one Python call per sample cost
    more than the rest of the rendering.
    """

    name: str  # without the _total suffix
    help: str
    record: int  # the index in Vport of the record read: _STATS or _UPCALL_STATS
    column: Column
    kind: str = "counter"  # or "gauge", for the one gauge written the same way

    @property
    def sample(self) -> str:
        """The name of the family's samples: a counter's ends with ``_total``."""
        return self.name + "_total" if self.kind == "counter" else self.name


def _stat(index: int) -> Column:
    field = operator.itemgetter(index)

    def column(records: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
        return tuple(map(field, records))

    return column


_SUCCESS = operator.itemgetter(UpcallStats._fields.index("success"))
_FAIL = operator.itemgetter(UpcallStats._fields.index("fail"))


def _upcalls(records: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    return tuple(map(operator.add, map(_SUCCESS, records), map(_FAIL, records)))


def _upcall_failures(records: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    return tuple(map(_FAIL, records))


# Which way a vport's counters point: they are its network device's own, as the device sees
# them (ovs_vport_get_stats() reads dev_get_stats(), net/openvswitch/vport.c). A VM's tap
# (drivers/net/tun.c) and a pod's veth host end (drivers/net/veth.c: its receive is its peer's
# transmit) receive what the VM or pod sends into the switch. An internal port is the other way
# round (net/openvswitch/vport-internal_dev.c): the host's stack transmits into the switch
# through it (internal_dev_xmit), and it receives what the switch delivers to the host
# (internal_dev_recv, which counts the bytes once the Ethernet header is pulled). Being the
# device's, they also count traffic that tc flower or a NIC forwarded without the kernel's flow
# table ("offloaded"), which the datapath's lookups, flows, masks and upcalls never see.
_S = VportStats._fields
VPORT_COUNTERS: tuple[VportCounter, ...] = (
    VportCounter(
        "ovs_vport_receive_packets",
        "Packets received by the vport's device (ovs_vport_stats.rx_packets): for a VM's tap or a"
        " pod's veth what the VM or pod sent into the switch, for an internal port (a bridge's or"
        " the datapath's own port) what the switch delivered to the host. Includes traffic offloaded"
        " to tc flower or a NIC.",
        _STATS,
        _stat(_S.index("rx_packets")),
    ),
    VportCounter(
        "ovs_vport_transmit_packets",
        "Packets transmitted by the vport's device (ovs_vport_stats.tx_packets): for a VM's tap or a"
        " pod's veth what the switch delivered to the VM or pod, for an internal port (a bridge's or"
        " the datapath's own port) what the host sent into the switch. Includes traffic offloaded to"
        " tc flower or a NIC.",
        _STATS,
        _stat(_S.index("tx_packets")),
    ),
    VportCounter(
        "ovs_vport_receive_bytes",
        "Bytes received by the vport's device (ovs_vport_stats.rx_bytes): for a VM's tap or a pod's"
        " veth what the VM or pod sent into the switch, for an internal port (a bridge's or the datapath's"
        " own port) what the switch delivered to the host, less Ethernet headers. Includes traffic"
        " offloaded to tc flower or a NIC.",
        _STATS,
        _stat(_S.index("rx_bytes")),
    ),
    VportCounter(
        "ovs_vport_transmit_bytes",
        "Bytes transmitted by the vport's device (ovs_vport_stats.tx_bytes): for a VM's tap or a"
        " pod's veth what the switch delivered to the VM or pod, for an internal port (a bridge's or"
        " the datapath's own port) what the host sent into the switch. Includes traffic offloaded to"
        " tc flower or a NIC.",
        _STATS,
        _stat(_S.index("tx_bytes")),
    ),
    VportCounter(
        "ovs_vport_receive_errors",
        "Receive errors of the vport's device (ovs_vport_stats.rx_errors): for a VM's tap or a pod's"
        " veth on the way into the switch, for an internal port on the way from the switch to the"
        " host.",
        _STATS,
        _stat(_S.index("rx_errors")),
    ),
    VportCounter(
        "ovs_vport_transmit_errors",
        "Transmit errors of the vport's device (ovs_vport_stats.tx_errors): for a VM's tap or a pod's"
        " veth on the way to the VM or pod, for an internal port on the way from the host into the"
        " switch.",
        _STATS,
        _stat(_S.index("tx_errors")),
    ),
    VportCounter(
        "ovs_vport_receive_dropped",
        "Received packets the vport's device dropped (ovs_vport_stats.rx_dropped): for a VM's tap or"
        " a pod's veth on the way into the switch, for an internal port on the way from the switch to"
        " the host.",
        _STATS,
        _stat(_S.index("rx_dropped")),
    ),
    VportCounter(
        "ovs_vport_transmit_dropped",
        "Packets the vport's device dropped on transmit (ovs_vport_stats.tx_dropped): for a VM's tap"
        " or a pod's veth what the switch could not deliver to the VM or pod (a VM that does not read"
        " its queue), for an internal port on the way from the host into the switch.",
        _STATS,
        _stat(_S.index("tx_dropped")),
    ),
    VportCounter(
        "ovs_vport_upcalls",
        "Upcalls from the vport to userspace, successful or not (OVS_VPORT_UPCALL_ATTR_SUCCESS +"
        " FAIL; kernel 6.2+); traffic offloaded to tc flower or a NIC makes none.",
        _UPCALL_STATS,
        _upcalls,
    ),
    VportCounter(
        "ovs_vport_upcall_failures",
        "Upcalls from the vport that could not be delivered to userspace"
        " (OVS_VPORT_UPCALL_ATTR_FAIL; kernel 6.2+).",
        _UPCALL_STATS,
        _upcall_failures,
    ),
)

VPORT_INFO = (
    "ovs_vport",
    "Static attributes of a vport, and the kind of its device (rtnetlink IFLA_INFO_KIND; none: a physical"
    " NIC) (value 1).",
)

# The per-vport metric groups an operator chooses with --collector.vport.metrics
# (config.VPORT_METRIC_GROUPS) -> the families each one serves.
VPORT_METRIC_GROUPS: dict[str, tuple[str, ...]] = {
    "packets": ("ovs_vport_receive_packets", "ovs_vport_transmit_packets"),
    "bytes": ("ovs_vport_receive_bytes", "ovs_vport_transmit_bytes"),
    "errors": ("ovs_vport_receive_errors", "ovs_vport_transmit_errors"),
    "dropped": ("ovs_vport_receive_dropped", "ovs_vport_transmit_dropped"),
    "upcalls": ("ovs_vport_upcalls", "ovs_vport_upcall_failures", "ovs_vport_upcall_handlers"),
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
        "Packets that matched an existing flow (ovs_dp_stats.n_hit); traffic offloaded to tc flower or"
        " a NIC is not looked up here.",
        _dp_stat("hits"),
    ),
    DatapathMetric(
        "ovs_datapath_lookup_misses",
        "counter",
        "Packets that matched no flow and were sent to userspace (ovs_dp_stats.n_missed); traffic"
        " offloaded to tc flower or a NIC is not looked up here.",
        _dp_stat("missed"),
    ),
    DatapathMetric(
        "ovs_datapath_lookup_lost",
        "counter",
        "Packets that matched no flow and could not be sent to userspace (ovs_dp_stats.n_lost);"
        " traffic offloaded to tc flower or a NIC is not looked up here.",
        _dp_stat("lost"),
    ),
    DatapathMetric(
        "ovs_datapath_flows",
        "gauge",
        "Flows in the datapath's flow table (ovs_dp_stats.n_flows); flows offloaded to tc flower or a"
        " NIC are not in it.",
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
        "Masks visited to find matching flows (ovs_dp_megaflow_stats.n_mask_hit); traffic offloaded to"
        " tc flower or a NIC is not looked up here.",
        _megaflow_stat("mask_hits"),
    ),
    DatapathMetric(
        "ovs_datapath_mask_cache_hits",
        "counter",
        "Lookups answered by the mask cache (ovs_dp_megaflow_stats.n_cache_hit); traffic offloaded to"
        " tc flower or a NIC is not looked up here.",
        _megaflow_stat("cache_hits"),
    ),
    DatapathMetric(
        "ovs_datapath_vports",
        "gauge",
        "Vports in the datapath, as the kernel's vport dump lists them.",
        lambda d: d.vport_count,
    ),
    DatapathMetric(
        "ovs_datapath_upcall_handlers",
        "gauge",
        "Netlink sockets receiving the datapath's upcalls in per-CPU dispatch mode: distinct non-zero"
        " PIDs of OVS_DP_ATTR_PER_CPU_PIDS, 0 when none was set (every miss is then lost).",
        lambda d: d.datapath.upcall_handlers,
    ),
    DatapathMetric(
        "ovs_datapath_masks_cache_size",
        "gauge",
        "Entries of the datapath's megaflow mask cache (OVS_DP_ATTR_MASKS_CACHE_SIZE).",
        lambda d: d.datapath.masks_cache_size,
    ),
)


def _vport_info_sample(port_labels: str, vport: Vport, device_kind: str | None) -> str:
    """The ``ovs_vport_info`` line. ``port_labels``: the escaped labels naming the port;
    ``device_kind``: its netdev's kind (``device_kinds.NO_KIND`` for none), None when not read."""
    # Attributes an older kernel does not send are left out, never filled with 0. The
    # numbers and type names need no escaping.
    optional = ""
    if device_kind is not None:
        optional += f',device_kind="{escape_label_value(device_kind)}"'
    if vport.ifindex is not None:
        optional += f',ifindex="{vport.ifindex}"'
    if vport.netnsid is not None:
        optional += f',netnsid="{vport.netnsid}"'
    if vport.dst_port is not None:
        optional += f',dst_port="{vport.dst_port}"'
    if vport.extension:
        optional += f',extension="{extension_label(vport.extension)}"'
    fixed = f'{port_labels},port_no="{vport.port_no}",vport_type="{vport.type_name}"'
    return f"ovs_vport_info{{{fixed}{optional}}} 1\n"


def datapath_labels(netns: str | None, datapath: str) -> str:
    """``datapath=".."``, after ``netns=".."`` for a datapath read in a named namespace: the
    labels (without braces) every per-datapath and per-port series of the kernel starts with."""
    labels = f'datapath="{escape_label_value(datapath)}"'
    return labels if netns is None else f'netns="{escape_label_value(netns)}",{labels}'


def _datapath_labels(dump: DatapathDump) -> str:
    return datapath_labels(dump.netns, dump.datapath.name)


_NAME = operator.itemgetter(Vport._fields.index("name"))
_HANDLERS = Vport._fields.index("upcall_handlers")
# Everything a vport record holds but its counters: what its ovs_vport_info line is made of.
# Every field but the counters, so that a field added to the record is part of the key
# before any label shows it.
_IDENTITY = operator.itemgetter(
    *(i for i, field in enumerate(Vport._fields) if field not in ("stats", "upcall_stats"))
)


def _sample_template(port_labels: Sequence[str]) -> bytes:
    """``%s{labels} %d\n`` for each port, to be filled with ``bytes %`` of (name, value) pairs."""
    # A '%' in a label value (a port may be named so) is written as itself, not a conversion.
    labels = [label.encode().replace(b"%", b"%%") for label in port_labels]
    return b"%s{" + b"} %d\n%s{".join(labels) + b"} %d\n"


class _Counters:
    """One datapath's cached text for one counter record: keyed on the port names it is made of.

    The families of a record (the eight of STATS, the two of upcall statistics) share one
    template, the sample name a field of it: a template per family would hold each port's
    labels eight times over (8.7 MB at 10,000 vports, against 0.6 MB).
    """

    __slots__ = ("identity", "template")

    def __init__(self, identity: object) -> None:
        self.identity = identity
        self.template: bytes | None = None


class _Ports:
    """One datapath's vports in this scrape, and the cached text each family of them uses."""

    __slots__ = ("_labels", "dp", "dump", "groups", "names")

    def __init__(self, dump: DatapathDump) -> None:
        self.dump = dump
        self.dp = _datapath_labels(dump)
        self.names = tuple(map(_NAME, dump.vports))
        self._labels: list[str] | None = None
        # record index -> its cache entry, the records of the ports that have it, and which
        # ports those are (None: all of them)
        self.groups: dict[int, tuple[_Counters, list[tuple[int, ...]], tuple[int, ...] | None]] = {}

    @property
    def labels(self) -> list[str]:
        """The escaped labels of every port, made only when some text must be made."""
        if self._labels is None:
            self._labels = _port_labels(self.dp, self.names)
        return self._labels


class DatapathRenderer:
    """Writes the exposition of datapaths and vports, reusing the fixed text of unchanged ports.

    What stays the same from one scrape to the next is a port's escaped label text
    and the fixed part of each of its lines: the lines of a counter family for a
    datapath are kept as one ``bytes`` template (``name{labels} %d\n`` per port)
    that ``bytes %`` fills with this scrape's values in one C loop, and a datapath's
    ``ovs_vport_info`` lines are kept whole.

    Nothing is ever served from an earlier scrape: each cached text is stored with
    the exact values it was made from (the datapath's labels and every port name in
    order, which ports have the record; every non-counter field of every port and the
    datapath's device kinds for the info lines) and used only when this scrape's
    records hold the same, and every counter value is this scrape's. The cache holds
    only what the last scrape used, so ports and datapaths that went away are let go.
    Not thread-safe: the collector renders under its lock.

    The text is handed to ``write`` a family of a datapath at a time, in exposition
    order, so that it can be compressed and let go as it is made: a scrape never
    holds the whole body.
    """

    def __init__(self) -> None:
        self._counters: dict[tuple[str, int], _Counters] = {}
        # datapath labels -> the key of its ovs_vport_info text, the device kinds it shows, the text
        self._info: dict[str, tuple[object, Mapping[str, str], bytes]] = {}

    def render(
        self,
        dumps: Sequence[DatapathDump],
        fmt: Format,
        counters: Sequence[VportCounter] = VPORT_COUNTERS,
        vport_info: bool = True,
    ) -> list[bytes]:
        """``render_into`` a list: the chunks of the exposition, in order."""
        chunks: list[bytes] = []
        self.render_into(chunks.append, dumps, fmt, counters, vport_info)
        return chunks

    def render_into(
        self,
        write: Callable[[bytes], object],
        dumps: Sequence[DatapathDump],
        fmt: Format,
        counters: Sequence[VportCounter] = VPORT_COUNTERS,
        vport_info: bool = True,
    ) -> None:
        """Write the exposition of every datapath and vport to ``write``, chunk by chunk.

        ``counters`` and ``vport_info`` are the per-vport families to serve
        (``vport_counters``; --collector.vport.metrics); the datapath families are
        always served. A family with no samples (no vports, or upcall stats on a
        kernel before 6.2) is left out entirely: absent means "not reported", never zero.
        """
        previous_counters, self._counters = self._counters, {}
        previous_info, self._info = self._info, {}
        ports = [_Ports(dump) for dump in dumps if dump.vports]
        for counter in counters:
            self._write_family(write, fmt, counter, ports, previous_counters)

        if vport_info and ports:
            write(family_header(VPORT_INFO[0], "info", VPORT_INFO[1], fmt).encode())
            for port in ports:
                vports = port.dump.vports
                kinds = port.dump.device_kinds
                info_key = (port.dp, tuple(map(_IDENTITY, vports)))
                cached_info = previous_info.get(port.dp)
                # The kinds are the same object as last time while the datapath's links are.
                if (
                    cached_info is None
                    or cached_info[0] != info_key
                    or (cached_info[1] is not kinds and cached_info[1] != kinds)
                ):
                    samples = map(_vport_info_sample, port.labels, vports, map(kinds.get, port.names))
                    cached_info = (info_key, kinds, "".join(samples).encode())
                self._info[port.dp] = cached_info
                write(cached_info[2])

        for metric in DATAPATH_METRICS:
            sample = metric.name + "_total" if metric.kind == "counter" else metric.name
            dp_lines = [
                f"{sample}{{{_datapath_labels(dump)}}} {v}\n"
                for dump in dumps
                if (v := metric.value(dump)) is not None
            ]
            if dp_lines:
                write(family_header(metric.name, metric.kind, metric.help, fmt).encode())
                write("".join(dp_lines).encode())
        for chunk in render_upcall_dispatch(dumps, fmt):
            write(chunk.encode())
        # ovs_vport_upcall_handlers belongs to the "upcalls" group, like the upcall counters. A
        # vport's upcall PIDs only matter in per-vport dispatch mode: the gauge is left out
        # elsewhere rather than read wrongly (a family of the datapath's handler counts).
        if any(counter.name == "ovs_vport_upcalls" for counter in counters):
            per_vport = [port for port in ports if port.dump.datapath.per_cpu_dispatch is False]
            self._write_family(write, fmt, _UPCALL_HANDLERS_GAUGE, per_vport, previous_counters)

    def _write_family(
        self,
        write: Callable[[bytes], object],
        fmt: Format,
        counter: VportCounter,
        ports: Sequence[_Ports],
        previous: Mapping[tuple[str, int], _Counters],
    ) -> None:
        """One family's samples, a datapath at a time; its header only if it has any.

        ``previous``: the last scrape's cache entries, which this scrape's may reuse."""
        header = True
        for port in ports:
            cached, present, kept = self._group(port, counter.record, previous)
            if not present:
                continue
            template = cached.template
            if template is None:
                chosen = port.labels if kept is None else [port.labels[i] for i in kept]
                template = cached.template = _sample_template(chosen)
            if header:
                write(family_header(counter.name, counter.kind, counter.help, fmt).encode())
                header = False
            # (name, value) for each port: the name repeated, this scrape's values in between.
            fields: list[object] = [counter.sample.encode()] * (2 * len(present))
            fields[1::2] = counter.column(present)
            write(template % tuple(fields))

    def _group(
        self, port: _Ports, record: int, previous: Mapping[tuple[str, int], _Counters]
    ) -> tuple[_Counters, list[tuple[int, ...]], tuple[int, ...] | None]:
        """The cache entry of one datapath's counter record, with the ports' records of this scrape."""
        group = port.groups.get(record)
        if group is None:
            vports = port.dump.vports
            present = list(map(operator.itemgetter(record), vports))
            kept: tuple[int, ...] | None = None  # None: every port has the record
            if not all(present):
                kept = tuple(i for i, one in enumerate(present) if one is not None)
                present = [present[i] for i in kept]
            identity = (port.dp, port.names, kept)
            cached = previous.get((port.dp, record))
            if cached is None or cached.identity != identity:
                cached = _Counters(identity)
            self._counters[(port.dp, record)] = cached
            group = port.groups[record] = (cached, present, kept)
        return group


def _port_labels(dp: str, names: Iterable[str]) -> list[str]:
    """``datapath="..",port=".."`` (and ``netns``) of each port, escaped."""
    return [f'{dp},port="{escape_label_value(name)}"' for name in names]


def render_datapaths(
    dumps: Sequence[DatapathDump],
    fmt: Format,
    counters: Sequence[VportCounter] = VPORT_COUNTERS,
    vport_info: bool = True,
) -> list[bytes]:
    """The exposition of every datapath and vport, made from scratch (no cache kept).

    See ``DatapathRenderer.render``; a collector keeps one renderer between scrapes.
    """
    return DatapathRenderer().render(dumps, fmt, counters, vport_info)


def extension_label(extension: Sequence[int]) -> str:
    """OVS_VXLAN_EXT_* types as the ``extension`` label shows them: ``gbp``, or the number of
    a type this exporter does not know, comma-separated in the kernel's order."""
    return ",".join(VXLAN_EXT_NAMES.get(t) or str(t) for t in extension)


def features_label(features: int) -> str:
    """OVS_DP_F_* bits as the ``user_features`` label shows them: names in bit order, ``bitN``
    for a bit this exporter does not know, ``none`` when no bit is set."""
    names = [
        DP_FEATURE_NAMES.get(bit) or f"bit{bit}"
        for bit in range(features.bit_length())
        if features >> bit & 1
    ]
    return ",".join(names) or "none"


DATAPATH_INFO = ("ovs_datapath", "Upcall dispatch mode and feature bits of a datapath (value 1).")
VPORT_UPCALL_HANDLERS = (
    "ovs_vport_upcall_handlers",
    "Netlink sockets receiving this vport's upcalls in per-vport dispatch mode: distinct non-zero PIDs"
    " of OVS_VPORT_ATTR_UPCALL_PID, 0 when none (every miss on the port is then lost).",
)


def _handler_counts(records: Sequence[int]) -> tuple[int, ...]:
    return tuple(records)  # the records are the handler counts themselves


# The vport gauge of the upcalls group, written like a counter family (one cached template per
# datapath, filled with the handler counts of this scrape's records): its record is the count.
_UPCALL_HANDLERS_GAUGE = VportCounter(
    VPORT_UPCALL_HANDLERS[0], VPORT_UPCALL_HANDLERS[1], _HANDLERS, _handler_counts, kind="gauge"
)


def render_upcall_dispatch(dumps: Sequence[DatapathDump], fmt: Format) -> list[str]:
    """``ovs_datapath_info``: each datapath's upcall dispatch mode and feature bits.

    The per-vport ``ovs_vport_upcall_handlers`` gauge is written by ``DatapathRenderer``,
    from its cached templates, for datapaths in per-vport dispatch mode only.
    """
    info_lines = []
    for dump in dumps:
        labels = _datapath_labels(dump)
        features = dump.datapath.user_features
        if features is not None:
            dispatch = "per-cpu" if dump.datapath.per_cpu_dispatch else "per-vport"
            labels += f',upcall_dispatch="{dispatch}",user_features="{features_label(features)}"'
        info_lines.append(f"ovs_datapath_info{{{labels}}} 1\n")
    if not info_lines:
        return []
    return [family_header(DATAPATH_INFO[0], "info", DATAPATH_INFO[1], fmt), "".join(info_lines)]
