"""Read the exporter's text exposition, and say what it should contain for a kernel snapshot."""

from __future__ import annotations

import re
import urllib.request
from collections import Counter
from dataclasses import dataclass

from .ovsnl import Snapshot

_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?$")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Labels = frozenset[tuple[str, str]]
SeriesKey = tuple[str, Labels]

#: Exporter metric name -> field of ovsnl.VportInfo.stats.
VPORT_COUNTERS = {
    "ovs_vport_receive_packets_total": "rx_packets",
    "ovs_vport_transmit_packets_total": "tx_packets",
    "ovs_vport_receive_bytes_total": "rx_bytes",
    "ovs_vport_transmit_bytes_total": "tx_bytes",
    "ovs_vport_receive_errors_total": "rx_errors",
    "ovs_vport_transmit_errors_total": "tx_errors",
    "ovs_vport_receive_dropped_total": "rx_dropped",
    "ovs_vport_transmit_dropped_total": "tx_dropped",
}

#: Exporter metric name -> attribute of ovsnl.DatapathInfo.
DATAPATH_METRICS = {
    "ovs_datapath_lookup_hits_total": "hits",
    "ovs_datapath_lookup_misses_total": "misses",
    "ovs_datapath_lookup_lost_total": "lost",
    "ovs_datapath_flows": "flows",
    "ovs_datapath_masks": "masks",
    "ovs_datapath_mask_hits_total": "mask_hits",
    "ovs_datapath_mask_cache_hits_total": "mask_cache_hits",
}

UPCALL_METRICS = ("ovs_vport_upcalls_total", "ovs_vport_upcall_failures_total")

#: Counters of what happened between scrapes: no snapshot of the kernel predicts them.
HISTORY_METRICS = ("ovs_datapath_vport_events_total",)
#: Read in the background, per meter: tests/kernel/kernel_reads.py compares them on their own.
BACKGROUND_PREFIX = "ovs_datapath_meter"

#: OVS_DP_F_* bit -> its name in the user_features label (include/uapi/linux/openvswitch.h).
FEATURE_NAMES = {0: "unaligned", 1: "vport_pids", 2: "tc_recirc_sharing", 3: "dispatch_upcall_per_cpu"}
DP_F_DISPATCH_UPCALL_PER_CPU = 1 << 3


def feature_label(features: int) -> str:
    names = [FEATURE_NAMES.get(bit, f"bit{bit}") for bit in range(32) if features >> bit & 1]
    return ",".join(names) or "none"


def _unescape(value: str) -> str:
    return value.replace(r"\"", '"').replace(r"\n", "\n").replace("\\\\", "\\")


def labels(**kw: str) -> Labels:
    return frozenset(kw.items())


@dataclass(frozen=True)
class Scrape:
    """Every sample of one scrape, in order (duplicates kept, so tests can look for them)."""

    samples: tuple[tuple[str, Labels, float], ...]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        samples = []
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            m = _SAMPLE_RE.match(line)
            if not m:
                raise ValueError(f"unparsable exposition line: {line!r}")
            lbls = frozenset((k, _unescape(v)) for k, v in _LABEL_RE.findall(m[2] or ""))
            samples.append((m[1], lbls, float(m[3])))
        return cls(tuple(samples))

    def series(self) -> dict[SeriesKey, float]:
        return {(name, lbls): value for name, lbls, value in self.samples}

    def duplicates(self) -> list[SeriesKey]:
        counts = Counter((name, lbls) for name, lbls, _ in self.samples)
        return [key for key, n in counts.items() if n > 1]

    def value(self, name: str, **kw: str) -> float | None:
        return self.series().get((name, labels(**kw)))

    def only(self, prefixes: tuple[str, ...] = ("ovs_vport_", "ovs_datapath_")) -> dict[SeriesKey, float]:
        """The series a kernel snapshot describes (event counters count history, not state; the
        meters are read in the background, not from the dumps a snapshot holds)."""
        return {
            k: v
            for k, v in self.series().items()
            if k[0].startswith(prefixes)
            and k[0] not in HISTORY_METRICS
            and not k[0].startswith(BACKGROUND_PREFIX)
        }

    def label_values(self, name: str, label: str) -> set[str]:
        return {dict(lbls)[label] for n, lbls, _ in self.samples if n == name and label in dict(lbls)}


def identities(scrape: Scrape) -> set[Labels]:
    """The label sets of ``ovs_interface_info``: what the exporter read from OVSDB."""
    return {lbls for name, lbls, _ in scrape.samples if name == "ovs_interface_info"}


def broken_interfaces(scrape: Scrape) -> set[Labels]:
    """The label sets of ``ovs_interface_broken_info``: Interfaces vswitchd could not open."""
    return {lbls for name, lbls, _ in scrape.samples if name == "ovs_interface_broken_info"}


def zone_infos(scrape: Scrape) -> dict[str, dict[str, str]]:
    """The labels of ``ovs_conntrack_zone_info`` by zone: whose each conntrack zone is, from OVSDB."""
    return {
        dict(lbls)["zone"]: dict(lbls)
        for name, lbls, _ in scrape.samples
        if name == "ovs_conntrack_zone_info"
    }


def fetch_text(url: str, accept: str | None = None, timeout: float = 60) -> str:
    """The body as served, in the format ``accept`` asks for (none: the text format)."""
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return str(resp.read().decode())


def fetch(url: str, timeout: float = 60) -> Scrape:
    return Scrape.parse(fetch_text(url, timeout=timeout))


def expected_series(snap: Snapshot) -> dict[SeriesKey, float]:
    """Every ovs_vport_* and ovs_datapath_* sample the exporter should serve for ``snap``."""
    out: dict[SeriesKey, float] = {}
    for dp in snap.datapaths.values():
        dl = labels(datapath=dp.name)
        for metric, attr in DATAPATH_METRICS.items():
            value = getattr(dp, attr)
            if value is not None:
                out[(metric, dl)] = value
        vports = snap.vports.get(dp.name, {})
        out[("ovs_datapath_vports", dl)] = len(vports)
        if dp.masks_cache_size is not None:
            out[("ovs_datapath_masks_cache_size", dl)] = dp.masks_cache_size
        per_vport = False
        if dp.user_features is not None:
            per_cpu = bool(dp.user_features & DP_F_DISPATCH_UPCALL_PER_CPU)
            per_vport = not per_cpu
            dispatch = "per-cpu" if per_cpu else "per-vport"
            dp_info = labels(
                datapath=dp.name, upcall_dispatch=dispatch, user_features=feature_label(dp.user_features)
            )
            out[("ovs_datapath_info", dp_info)] = 1
            if per_cpu:
                # No PID array sent (never set) is zero handlers: every miss is lost.
                out[("ovs_datapath_upcall_handlers", dl)] = len(set(dp.per_cpu_pids or ()) - {0})
        else:
            out[("ovs_datapath_info", dl)] = 1
        for vp in vports.values():
            pl = labels(datapath=dp.name, port=vp.name)
            for metric, stat in VPORT_COUNTERS.items():
                out[(metric, pl)] = vp.stats[stat]
            if per_vport and vp.upcall_pids:
                out[("ovs_vport_upcall_handlers", pl)] = len(set(vp.upcall_pids) - {0})
            if vp.upcall_success is not None and vp.upcall_fail is not None:
                out[("ovs_vport_upcalls_total", pl)] = vp.upcall_success + vp.upcall_fail
                out[("ovs_vport_upcall_failures_total", pl)] = vp.upcall_fail
            info = {
                "datapath": dp.name,
                "port": vp.name,
                "port_no": str(vp.port_no),
                "vport_type": vp.type_name,
            }
            link = snap.links.get(vp.ifindex) if vp.ifindex and vp.netnsid is None else None
            if link is not None and link.name == vp.name:
                # The device's kind, as rtnetlink lists it; none: a device without one.
                info["device_kind"] = link.kind or "none"
            if vp.ifindex is not None:
                info["ifindex"] = str(vp.ifindex)
            if vp.netnsid is not None:
                info["netnsid"] = str(vp.netnsid)
            if vp.dst_port is not None:
                info["dst_port"] = str(vp.dst_port)
            if vp.extension:
                info["extension"] = ",".join("gbp" if t == 1 else str(t) for t in vp.extension)
            out[("ovs_vport_info", frozenset(info.items()))] = 1
    return out


def diff(expected: dict[SeriesKey, float], got: dict[SeriesKey, float]) -> list[str]:
    """Human-readable differences, empty when equal."""
    lines = []
    for key in sorted(expected.keys() | got.keys(), key=repr):
        want, have = expected.get(key), got.get(key)
        if want != have:
            lbl = ",".join(f'{k}="{v}"' for k, v in sorted(key[1]))
            lines.append(f"{key[0]}{{{lbl}}}: kernel {want}, exporter {have}")
    return lines
