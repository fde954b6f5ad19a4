"""Meters and conntrack zone limits in the guest: traffic that moves them, and the exporter's
numbers held against the suite's own reads of the same kernel objects.

The exporter reads both in the background (``exporter.kernel.poller``), so a scrape serves what
its last round read. ``meters_agree`` and ``zones_agree`` therefore bracket: they read the
kernel with ``tests/kernel/ovsnl.py`` (its own encoder and decoder), scrape, and read again, until
the two reads agree (nothing moved) and the scrape says the same; a round that started before
the last change is waited out, never taken for the truth.
"""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Iterable

from .netns import in_netns
from .ovsnl import MeterInfo, OvsNetlink
from .procs import Exporter
from .promtext import Scrape
from .vswitchd import Guest

#: The exporter's background readers every second (default 15 s), so that tests wait seconds, not rounds.
FAST_READERS = ("--collector.meters.interval", "1", "--collector.conntrack-zones.interval", "1")
#: How far past the highest meter id the suite's own reads look (the exporter's probe gap is 32).
METER_IDS = range(0, 64)
#: Source ports of send_udp_flows: each datagram its own 5-tuple, a new conntrack connection.
_FLOW_PORTS = itertools.cycle(range(30000, 60000))

MeterCounts = tuple[int, int, int, int]  # packets, bytes, dropped packets, dropped bytes
ZoneCounts = tuple[int, int]  # limit, connections


def udp_socket(guest: Guest) -> socket.socket:
    """A UDP socket in the guest's namespace (it stays there): no process per datagram."""
    with in_netns(guest.netns):
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


def flood_udp(src: Guest, ip: str, count: int, port: int = 9, size: int = 32) -> float:
    """Send ``count`` UDP datagrams from ``src`` as fast as Python can; returns the seconds it took."""
    payload = bytes(size)
    with udp_socket(src) as s:
        started = time.monotonic()
        for _ in range(count):
            s.sendto(payload, (ip, port))
        return time.monotonic() - started


def send_udp_flows(src: Guest, ip: str, count: int, port: int) -> None:
    """``count`` UDP datagrams from ``src``, each from a source port of its own: ``count`` new
    connections for conntrack, each unanswered (its entry lives nf_conntrack_udp_timeout)."""
    for _ in range(count):
        with in_netns(src.netns):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with s:
            s.bind(("", next(_FLOW_PORTS)))
            s.sendto(b"x", (ip, port))


class UdpReceiver:
    """A bound UDP socket in a guest: counts the datagrams that arrive (its stack's own count)."""

    def __init__(self, guest: Guest, port: int) -> None:
        with in_netns(guest.netns):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("", port))
        self.sock.setblocking(False)
        self.received = 0

    def drain(self) -> int:
        """Read what has arrived; the total so far."""
        while True:
            try:
                self.sock.recv(2048)
            except BlockingIOError:
                return self.received
            self.received += 1

    def close(self) -> None:
        self.sock.close()


def udp_flows_delivered(src: Guest, dst: Guest, count: int, port: int) -> int:
    """Send ``count`` new UDP connections (``send_udp_flows``) from ``src`` to ``dst``; how many
    of them ``dst``'s stack received (a connection a zone at its limit refuses is dropped)."""
    receiver = UdpReceiver(dst, port)
    try:
        send_udp_flows(src, dst.ip, count, port)
        time.sleep(1)
        return receiver.drain()
    finally:
        receiver.close()


def served_meters(scrape: Scrape, datapath: str) -> dict[int, MeterCounts]:
    """What the exporter serves of a datapath's meters, by meter id."""
    names = (
        "ovs_datapath_meter_packets_total",
        "ovs_datapath_meter_bytes_total",
        "ovs_datapath_meter_dropped_packets_total",
        "ovs_datapath_meter_dropped_bytes_total",
    )
    ids = {int(m) for m in scrape.label_values(names[0], "meter")}
    counts: dict[int, MeterCounts] = {}
    for i in ids:
        packets, nbytes, dropped, dropped_bytes = (
            _int(scrape.value(name, datapath=datapath, meter=str(i))) for name in names
        )
        counts[i] = (packets, nbytes, dropped, dropped_bytes)
    return counts


def _int(value: float | None) -> int:
    """A served value as the kernel's integer; -1 for one not served (never equal to a count)."""
    return -1 if value is None else int(value)


def kernel_meters(nl: OvsNetlink, dp_ifindex: int, ids: Iterable[int] = METER_IDS) -> dict[int, MeterCounts]:
    """The suite's own read of the same meters: what reached each, and what its bands took."""
    return {i: _counts(m) for i, m in nl.meters(dp_ifindex, list(ids)).items()}


def _counts(meter: MeterInfo) -> MeterCounts:
    return meter.packets, meter.bytes, sum(meter.band_packets), sum(meter.band_bytes)


def meters_agree(
    nl: OvsNetlink, dp_ifindex: int, exporter: Exporter, datapath: str, timeout: float = 60
) -> tuple[dict[int, MeterCounts], Scrape]:
    """A scrape whose meters equal the kernel's read just before and just after it."""
    deadline = time.monotonic() + timeout
    while True:
        before = kernel_meters(nl, dp_ifindex)
        scrape = exporter.scrape()
        after = kernel_meters(nl, dp_ifindex)
        served = served_meters(scrape, datapath)
        if before == after == served:
            return after, scrape
        if time.monotonic() > deadline:
            raise AssertionError(
                f"meters never agreed: kernel before {before}, served {served}, after {after}"
            )
        time.sleep(0.3)


def served_zones(scrape: Scrape, netns: str | None = None) -> tuple[float | None, dict[int, ZoneCounts]]:
    """The default limit and every zone the exporter serves, with its limit and connections."""
    ns = {} if netns is None else {"netns": netns}
    zones = {
        int(dict(labels)["zone"])
        for name, labels, _ in scrape.samples
        if name == "ovs_conntrack_zone_limit" and dict(labels).get("netns") == netns
    }
    return scrape.value("ovs_conntrack_default_zone_limit", **ns), {
        z: (
            _int(scrape.value("ovs_conntrack_zone_limit", **ns, zone=str(z))),
            _int(scrape.value("ovs_conntrack_zone_connections", **ns, zone=str(z))),
        )
        for z in zones
    }


def kernel_zones(nl: OvsNetlink, chunk: int = 600) -> tuple[int | None, dict[int, ZoneCounts]]:
    """The suite's own read of the zone limits: one GET, or every zone id in chunks when they do
    not fit one reply; in chunks, the zones whose limit is not the default. Its chunks are its
    own (600 zones: a reply of 7.2 KB, which 6.1 and 6.12 answer; the exporter asks for 300)."""
    try:
        return nl.ct_limits()
    except OSError as err:
        if err.errno != 90:  # EMSGSIZE
            raise
    default, _ = nl.ct_limits([-1])
    zones: dict[int, ZoneCounts] = {}
    for start in range(0, 65536, chunk):
        _, part = nl.ct_limits(list(range(start, min(start + chunk, 65536))))
        zones.update((z, counts) for z, counts in part.items() if counts[0] != default)
    return default, zones


def zones_agree(
    nl: OvsNetlink, exporter: Exporter, timeout: float = 90
) -> tuple[tuple[int | None, dict[int, ZoneCounts]], Scrape]:
    """A scrape whose zone limits and counts equal the kernel's read just before and after it."""
    deadline = time.monotonic() + timeout
    while True:
        before = kernel_zones(nl)
        scrape = exporter.scrape()
        after = kernel_zones(nl)
        served = served_zones(scrape)
        if before == after == served:
            return after, scrape
        if time.monotonic() > deadline:
            raise AssertionError(
                f"zone limits never agreed: kernel before {_short(before)}, served {_short(served)}, "
                f"after {_short(after)}"
            )
        time.sleep(0.3)


def _short(zones: tuple[float | None, dict[int, ZoneCounts]]) -> str:
    default, by_zone = zones
    shown = dict(sorted(by_zone.items())[:8])
    return f"default {default}, {len(by_zone)} zones {shown}{' ...' if len(by_zone) > 8 else ''}"
