"""Datapath meters: what reached each meter and what it dropped, read in the background.

OpenFlow meters become kernel datapath meters: ovs-vswitchd installs one (``OVS_METER_CMD_SET``)
for each meter a controller adds, e.g. OVN's control plane protection (CoPP: ARP, DHCP, ICMP
errors, BFD... sent to ovn-controller at a bounded rate), ACL logging and QoS. A kernel meter
has one band, of type drop: its band's counters are the packets the meter dropped. When a
CoPP meter drops, DHCP or ARP "just fails" for some VMs; these series say which meter.

The kernel has no meter dump (``exporter.kernel.families.meter``): meters are found by asking
for ids. ovs-vswitchd allocates datapath meter ids densely from 0, the lowest free one first
(its ``id_pool``), and shares them between the bridges of a datapath; so each round asks, per
datapath, for id 0, 1, 2, ... up to ``PROBE_GAP`` ids past the highest meter found in this
round or the one before, and never more than ``MAX_PROBES`` ids. Every GET (and the one
``OVS_METER_CMD_FEATURES`` per datapath, for its capacity) takes ``ovs_mutex``, the lock
ovs-vswitchd needs for each flow it installs; a round costs one GET per meter id up to the
highest in use plus ``PROBE_GAP``, every ``--collector.meters.interval`` seconds, whatever the
scrapes (docs/performance.md has what that costs ovs-vswitchd).

A meter that ovs-vswitchd replaces (``OVS_METER_CMD_SET`` on an id in use, e.g. after
``ovs-ofctl mod-meter``) starts again from 0: its counters reset under the same ``meter``
label, which ``rate()`` and ``increase()`` take as a counter reset. The kernel keeps no
creation time or generation a label could show.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from exporter.exposition import Format, family_header, render_labels
from exporter.kernel.dumps import DatapathDump
from exporter.kernel.families.datapath import OVS_DATAPATH_FAMILY, OVS_DATAPATH_VERSION, decode_datapath
from exporter.kernel.families.meter import (
    OVS_METER_FAMILY,
    Meter,
    decode_meter,
    decode_meter_features,
    encode_meter_features,
    encode_meter_get,
)
from exporter.kernel.netlink import NetlinkError, encode_ovs_get
from exporter.kernel.netns import log_prefix
from exporter.kernel.poller import PolledSource, RequestSocket
from exporter.records import SourceReport

log = logging.getLogger(__name__)

COLLECTOR = "meters"
#: Ids without a meter, past the highest meter known, that end a datapath's probe.
PROBE_GAP = 32
#: The most meter ids one round asks for, per datapath.
MAX_PROBES = 10_000

#: name (without _total), HELP, and the Meter field of each per-meter counter.
METER_COUNTERS: tuple[tuple[str, str, str], ...] = (
    (
        "ovs_datapath_meter_packets",
        "Packets that reached this datapath meter, passed or dropped (OVS_METER_ATTR_STATS n_packets).",
        "packets",
    ),
    (
        "ovs_datapath_meter_bytes",
        "Bytes that reached this datapath meter, passed or dropped (OVS_METER_ATTR_STATS n_bytes).",
        "bytes",
    ),
    (
        "ovs_datapath_meter_dropped_packets",
        "Packets this datapath meter dropped over its rate: its drop band's OVS_BAND_ATTR_STATS n_packets.",
        "dropped_packets",
    ),
    (
        "ovs_datapath_meter_dropped_bytes",
        "Bytes this datapath meter dropped over its rate: its drop band's OVS_BAND_ATTR_STATS n_bytes.",
        "dropped_bytes",
    ),
)
METERS_HELP = (
    "Meters the exporter found on this datapath: ids 0 and up, to "
    f"{PROBE_GAP} past the highest in use, at most {MAX_PROBES} ids per round."
)
LIMIT_HELP = "Meters this datapath can hold (OVS_METER_CMD_FEATURES: OVS_METER_ATTR_MAX_METERS)."


@dataclass(frozen=True, slots=True)
class DatapathMeters:
    """One datapath's meters as one round found them, with their samples already written."""

    datapath: str
    dp_ifindex: int
    limit: int | None  # MAX_METERS; None when the kernel did not say
    meters: tuple[Meter, ...]  # by id
    truncated: bool  # MAX_PROBES ids were asked and the last ones still had meters
    samples: tuple[str, ...]  # per METER_COUNTERS family: its sample lines for this datapath
    count_line: str  # the ovs_datapath_meters sample
    limit_line: str  # the ovs_datapath_meters_limit sample, "" when the limit is not known

    @property
    def highest_id(self) -> int:
        return self.meters[-1].meter_id if self.meters else -1


@dataclass(frozen=True, slots=True)
class MeterReading:
    """One namespace's meters, per datapath."""

    datapaths: tuple[DatapathMeters, ...]
    requests: int  # what the round sent: datapath dump, FEATURES and GETs (for tests and benchmarks)


def read_meters(sock: RequestSocket, netns: str | None, previous: MeterReading | None) -> MeterReading:
    """One round in one namespace: the datapaths, then each one's meters."""
    dp_family = sock.family_id(OVS_DATAPATH_FAMILY)
    meter_family = sock.family_id(OVS_METER_FAMILY)
    dp_request = encode_ovs_get(dp_family, OVS_DATAPATH_VERSION, sock.next_seq())
    datapaths = [decode_datapath(buf, m) for buf, m in sock.dump(dp_request, dp_family, "datapath dump")]
    before = {(d.dp_ifindex, d.datapath): d for d in previous.datapaths} if previous is not None else {}
    requests = 1
    found: list[DatapathMeters] = []
    for dp in datapaths:
        last = before.get((dp.dp_ifindex, dp.name))
        try:
            if last is not None:
                limit = last.limit  # fixed when the datapath was created (ovs_meters_init)
            else:
                requests += 1
                request = encode_meter_features(meter_family, sock.next_seq(), dp.dp_ifindex)
                limit = decode_meter_features(*sock.get(request, meter_family, "meter features")).max_meters
            meters, truncated, asked = _probe(
                sock, meter_family, dp.dp_ifindex, last.highest_id if last is not None else -1
            )
        except NetlinkError as err:
            if err.errno == errno.ENODEV:
                continue  # deleted since the datapath dump
            raise
        requests += asked
        if truncated and (last is None or not last.truncated):
            log.warning(
                "%sdatapath %s has meters up to id %d, the last of the %d ids a round asks for: those"
                " above it, if any, are not read (ovs_datapath_meters counts the meters below)",
                log_prefix(netns),
                dp.name,
                MAX_PROBES - 1,
                MAX_PROBES,
            )
        found.append(_datapath_meters(netns, dp.name, dp.dp_ifindex, limit, meters, truncated))
    return MeterReading(tuple(found), requests)


def _probe(
    sock: RequestSocket, family: int, dp_ifindex: int, highest_known: int
) -> tuple[tuple[Meter, ...], bool, int]:
    """Ask for ids 0, 1, ... until PROBE_GAP misses past ``highest_known`` and the highest found."""
    meters: list[Meter] = []
    misses = 0
    meter_id = 0
    while meter_id < MAX_PROBES:
        try:
            reply = sock.get(
                encode_meter_get(family, sock.next_seq(), dp_ifindex, meter_id), family, "meter GET"
            )
        except NetlinkError as err:
            if err.errno != errno.ENOENT:
                raise
            misses += 1
            if misses >= PROBE_GAP and meter_id > highest_known:
                return tuple(meters), False, meter_id + 1
        else:
            misses = 0
            meters.append(decode_meter(*reply))
        meter_id += 1
    return tuple(meters), misses < PROBE_GAP, meter_id


def _datapath_meters(
    netns: str | None,
    datapath: str,
    dp_ifindex: int,
    limit: int | None,
    meters: tuple[Meter, ...],
    truncated: bool,
) -> DatapathMeters:
    base = ([] if netns is None else [("netns", netns)]) + [("datapath", datapath)]
    samples = []
    for name, _help, field in METER_COUNTERS:
        lines = []
        for meter in meters:
            value = getattr(meter, field)
            if value is not None:
                lines.append(
                    f"{name}_total{render_labels([*base, ('meter', str(meter.meter_id))])} {value}\n"
                )
        samples.append("".join(lines))
    labels = render_labels(base)
    count_line = f"ovs_datapath_meters{labels} {len(meters)}\n"
    limit_line = "" if limit is None else f"ovs_datapath_meters_limit{labels} {limit}\n"
    return DatapathMeters(
        datapath, dp_ifindex, limit, meters, truncated, tuple(samples), count_line, limit_line
    )


class MeterSource(PolledSource[MeterReading]):
    """The meters of every datapath of every collected namespace; a ``SnapshotSource``."""

    collector = COLLECTOR
    what = "meter reader"
    thread_name = "ovs-meters"

    def read(self, sock: RequestSocket, netns: str | None, previous: MeterReading | None) -> MeterReading:
        return read_meters(sock, netns, previous)

    def report(self, fmt: Format, dumps: Sequence[DatapathDump]) -> SourceReport:
        """The latest round's meters of the datapaths this scrape serves, and each namespace's health."""
        started = self._clock()
        snapshot = self.poller.snapshot()
        # Only datapaths this scrape serves: the datapath filter applies, and a deleted one
        # goes with its other series.
        present = {(dump.netns, dump.datapath.name) for dump in dumps}
        served = [
            meters
            for reading in snapshot
            if reading.value is not None
            for meters in reading.value.datapaths
            if (reading.netns, meters.datapath) in present
        ]
        chunks: list[str] = []
        if served:
            for index, (name, help_text, _field) in enumerate(METER_COUNTERS):
                lines = "".join(meters.samples[index] for meters in served)
                if lines:
                    chunks.append(family_header(name, "counter", help_text, fmt))
                    chunks.append(lines)
            chunks.append(family_header("ovs_datapath_meters", "gauge", METERS_HELP, fmt))
            chunks.append("".join(meters.count_line for meters in served))
            limits = "".join(meters.limit_line for meters in served)
            if limits:
                chunks.append(family_header("ovs_datapath_meters_limit", "gauge", LIMIT_HELP, fmt))
                chunks.append(limits)
        return SourceReport(chunks, self.health(snapshot, started))
