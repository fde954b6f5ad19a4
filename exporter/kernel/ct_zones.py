"""Conntrack zone limits: each limited zone's limit and how many connections count against it.

OVN gives each logical port its own conntrack zone, and a limit can be set per zone
(``ovs-appctl dpctl/ct-set-limits``, OVSDB ``CT_Zone.limit`` in OVS 3.3+, OVN's
``ct-zone-limit``): a zone at its limit refuses new connections for that VM or pod only.
The kernel keeps the limits per network namespace (``exporter.kernel.families.ct_limit``),
so this source reads them once per collected namespace, in the background
(``exporter.kernel.poller``); a GET takes no lock beyond RCU.

One GET answers with the default limit and every zone that has a limit of its own, when
they fit in the kernel's reply buffer (about 650 zones: 654 measured on 6.1 and 6.12, the
kernel answers EMSGSIZE past that, it never truncates). With more, a round asks for every
zone id, ``ZONES_PER_REQUEST`` at a time (219 GETs), and keeps the zones whose limit
differs from the default: a zone whose own limit equals the default cannot be told apart
from one without, and is left out (it behaves the same).

What ``count`` covers (``ovs_ct_limit_get_zone_limit`` and ``ovs_ct_check_limit`` in
``net/openvswitch/conntrack.c``): connections committed through OVS (``ct(commit)``) in
the zone while it had a non-zero limit, that still exist. Not connections made by
iptables or nftables in that zone, not those committed before the zone had a limit, and
nothing while the zone is unlimited (limit 0). The kernel refuses a new connection when
it would make the count exceed the limit: a zone at its limit shows count == limit.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass

from exporter.exposition import Format, family_header, render_labels
from exporter.kernel.families.ct_limit import (
    MAX_ZONE,
    OVS_CT_LIMIT_FAMILY,
    OVS_ZONE_LIMIT_DEFAULT_ZONE,
    ZONES_PER_REQUEST,
    ZoneLimit,
    decode_ct_limits,
    encode_ct_limit_get,
)
from exporter.kernel.netlink import DecodeError, NetlinkError
from exporter.kernel.poller import PolledSource, RequestSocket
from exporter.records import SourceReport

COLLECTOR = "conntrack_zones"

DEFAULT_LIMIT_HELP = (
    "The conntrack connection limit of every zone without a limit of its own, in this network"
    " namespace (OVS_CT_LIMIT_CMD_GET, zone -1); 0: unlimited."
)
ZONE_LIMIT_HELP = "The connection limit of this conntrack zone, set for it alone (OVS_CT_LIMIT_CMD_GET)."
ZONE_CONNECTIONS_HELP = (
    "Connections counted against this zone's limit: those committed through OVS (ct(commit)) in the"
    " zone while it had a limit, that still exist (struct ovs_zone_limit count). Not a count of every"
    " conntrack entry of the zone."
)


@dataclass(frozen=True, slots=True)
class ZoneLimits:
    """One namespace's zone limits as one round read them, with their samples already written."""

    default_limit: int
    zones: tuple[ZoneLimit, ...]  # by zone id
    chunked: bool  # read zone id by zone id, since the zones did not fit one reply
    requests: int  # what the round sent, the GET that failed with EMSGSIZE included
    default_line: str
    limit_lines: str
    connection_lines: str


def read_zone_limits(sock: RequestSocket, netns: str | None, previous: ZoneLimits | None) -> ZoneLimits:
    """The default limit and every zone with its own: one GET, or every zone id in chunks."""
    family = sock.family_id(OVS_CT_LIMIT_FAMILY)
    try:
        reply = decode_ct_limits(
            *sock.get(encode_ct_limit_get(family, sock.next_seq()), family, "ct_limit GET")
        )
    except NetlinkError as err:
        if err.errno != errno.EMSGSIZE:
            raise
        default_limit, zones, requests = _read_every_zone(sock, family)
        return _zone_limits(netns, default_limit, zones, 1 + requests, chunked=True)
    if reply.default_limit is None:
        raise DecodeError("ct_limit GET: the reply holds no default limit (zone -1)")
    return _zone_limits(netns, reply.default_limit, reply.zones, 1, chunked=False)


def _read_every_zone(sock: RequestSocket, family: int) -> tuple[int, tuple[ZoneLimit, ...], int]:
    """Every zone id asked for, ZONES_PER_REQUEST at a time (the default first); those whose
    limit is not the default's are the zones with a limit of their own."""
    ids = [OVS_ZONE_LIMIT_DEFAULT_ZONE, *range(MAX_ZONE + 1)]
    default_limit: int | None = None
    zones: list[ZoneLimit] = []
    requests = 0
    for start in range(0, len(ids), ZONES_PER_REQUEST):
        request = encode_ct_limit_get(family, sock.next_seq(), ids[start : start + ZONES_PER_REQUEST])
        # The first chunk starts with the default limit (zone -1): the later ones skip its zones.
        reply = decode_ct_limits(
            *sock.get(request, family, "ct_limit GET of zone ids"), skip_limit=default_limit
        )
        requests += 1
        if start == 0:
            if reply.default_limit is None:
                raise DecodeError("ct_limit GET: the reply holds no default limit (zone -1)")
            default_limit = reply.default_limit
        zones.extend(zone for zone in reply.zones if zone.limit != default_limit)
    assert default_limit is not None
    return default_limit, tuple(zones), requests


def _zone_limits(
    netns: str | None, default_limit: int, zones: tuple[ZoneLimit, ...], requests: int, chunked: bool
) -> ZoneLimits:
    # By zone id, each once: two samples of one series would make Prometheus reject the scrape.
    ordered = tuple(sorted({zone.zone: zone for zone in zones}.values()))
    ns = [] if netns is None else [("netns", netns)]
    limit_lines: list[str] = []
    connection_lines: list[str] = []
    for zone in ordered:
        labels = render_labels([*ns, ("zone", str(zone.zone))])
        limit_lines.append(f"ovs_conntrack_zone_limit{labels} {zone.limit}\n")
        connection_lines.append(f"ovs_conntrack_zone_connections{labels} {zone.connections}\n")
    return ZoneLimits(
        default_limit,
        ordered,
        chunked,
        requests,
        f"ovs_conntrack_default_zone_limit{render_labels(ns) if ns else ''} {default_limit}\n",
        "".join(limit_lines),
        "".join(connection_lines),
    )


class ConntrackZoneSource(PolledSource[ZoneLimits]):
    """The zone limits of every collected namespace; a ``SnapshotSource``."""

    collector = COLLECTOR
    what = "conntrack zone limit reader"
    thread_name = "ovs-ct-zones"

    def read(self, sock: RequestSocket, netns: str | None, previous: ZoneLimits | None) -> ZoneLimits:
        return read_zone_limits(sock, netns, previous)

    def report(self, fmt: Format, dumps: Sequence[object]) -> SourceReport:
        """The latest round's zone limits, and each namespace's health. Never blocks."""
        started = self._clock()
        snapshot = self.poller.snapshot()
        read = [reading.value for reading in snapshot if reading.value is not None]
        chunks: list[str] = []
        if read:
            chunks.append(family_header("ovs_conntrack_default_zone_limit", "gauge", DEFAULT_LIMIT_HELP, fmt))
            chunks.append("".join(limits.default_line for limits in read))
            if any(limits.zones for limits in read):
                chunks.append(family_header("ovs_conntrack_zone_limit", "gauge", ZONE_LIMIT_HELP, fmt))
                chunks.append("".join(limits.limit_lines for limits in read))
                chunks.append(
                    family_header("ovs_conntrack_zone_connections", "gauge", ZONE_CONNECTIONS_HELP, fmt)
                )
                chunks.append("".join(limits.connection_lines for limits in read))
        return SourceReport(chunks, self.health(snapshot, started))
