"""Realistic kernel dumps for the benchmark, and a kernel socket that replays them.

The bytes are built by ``tests.ovs_messages`` (kernel layout and fill order)
once, before anything is timed. ``PrebuiltKernelSocket`` then answers each dump
request with those datagrams, only writing the request's sequence number into
them: per scrape it costs one ``bytes.join`` per datagram, close to the copy the
kernel itself makes, so the timings are those of the exporter, not of the fake.
``PrebuiltLinkSocket`` answers the rtnetlink GETs of the vports' devices (the
exporter asks for each once), with the kind each port's name suggests.
"""

from __future__ import annotations

import errno
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from exporter.kernel.families.datapath import OVS_DATAPATH_FAMILY
from exporter.kernel.families.vport import OVS_VPORT_FAMILY
from exporter.kernel.genl import FamilyNotFoundError
from tests import ovs_messages as om

# The kind of device each port's name is typical of (rtnetlink's IFLA_INFO_KIND); None: none,
# as a physical NIC. Ports not matched (a local port of a datapath) are OVS internal ports.
_KIND_OF_PREFIX = (
    ("tap", "tun"),
    ("qvo", "veth"),
    ("veth", "veth"),
    ("vxlan_sys", "vxlan"),
    ("genev_sys", "geneve"),
    ("gre_sys", "gretap"),
    ("erspan_sys", "erspan"),
    ("eth", None),
)


def device_kind(name: str) -> str | None:
    return next((kind for prefix, kind in _KIND_OF_PREFIX if name.startswith(prefix)), "openvswitch")


# Several datapaths, one of them holding most ports, as on a hypervisor with a
# main bridge set and a few separate ones (dp_ifindex as the kernel would number them).
DATAPATHS = (
    ("ovs-system", 4, 0.85),
    ("dp-tenant-a", 5, 0.06),
    ("dp-tenant-b", 6, 0.06),
    ("dp-edge", 7, 0.03),
)

# Ports that are not the bulk of tap devices: (name, type, dst_port).
_SPECIAL_PORTS: dict[str, list[tuple[str, int, int | None]]] = {
    "ovs-system": [("br-int", 2, None), ("br-ex", 2, None), ("br-tun", 2, None), ("vxlan_sys_4789", 4, 4789)],
    "dp-tenant-a": [("br-tenant-a", 2, None), ("genev_sys_6081", 5, 6081)],
    "dp-tenant-b": [("br-tenant-b", 2, None), ("gre_sys", 3, None)],
    # A type this exporter's table does not know (a newer kernel's): exported as its number.
    "dp-edge": [("br-edge", 2, None), ("erspan_sys", 6, None)],
}
# Name prefixes of the bulk ports (OpenStack/OVN style tap, qvo, patch and veth devices).
_PREFIXES = ("tap", "tap", "tap", "qvo", "qr-", "qg-", "veth")


@dataclass(frozen=True)
class Dataset:
    """Pre-built dump replies: datagram templates with the sequence number left out."""

    vports: int
    datapath_dump: list[list[bytes]]  # each datagram as the pieces around its seq fields
    vport_dumps: dict[int, list[list[bytes]]]  # dp_ifindex -> datagrams
    links: dict[int, tuple[str, str | None]]  # ifindex -> name and device kind of the vports' netdevs

    @property
    def nbytes(self) -> int:
        datagrams = [self.datapath_dump, *self.vport_dumps.values()]
        return sum(len(piece) + 4 for dump in datagrams for dg in dump for piece in dg)


def _log_uniform(rng: random.Random, low: float, high: float) -> int:
    return int(low * (high / low) ** rng.random())


def _stats(rng: random.Random) -> tuple[int, ...]:
    """Counters of a port that has been up for weeks: wide magnitudes, errors rare."""
    rx_packets = _log_uniform(rng, 1e3, 5e11)
    tx_packets = _log_uniform(rng, 1e3, 5e11)
    rx_bytes = rx_packets * rng.randint(64, 1500)
    tx_bytes = tx_packets * rng.randint(64, 1500)
    rx_errors = 0 if rng.random() < 0.9 else rng.randint(1, 5000)
    tx_errors = 0 if rng.random() < 0.95 else rng.randint(1, 500)
    rx_dropped = 0 if rng.random() < 0.6 else _log_uniform(rng, 1, 1e7)
    tx_dropped = 0 if rng.random() < 0.7 else _log_uniform(rng, 1, 1e6)
    return (rx_packets, tx_packets, rx_bytes, tx_bytes, rx_errors, tx_errors, rx_dropped, tx_dropped)


def _upcall(rng: random.Random) -> tuple[int, int]:
    return _log_uniform(rng, 10, 1e8), (0 if rng.random() < 0.8 else _log_uniform(rng, 1, 1e5))


def fake_datapaths(vports: int, seed: int = 6) -> Iterator[tuple[om.FakeDatapath, Iterator[om.FakeVport]]]:
    """The datapaths and, lazily, their ports: ``vports`` ports in all, local ports included."""
    rng = random.Random(seed)
    ifindex = iter(range(10, 1 << 31))
    remaining = vports
    for i, (name, dp_ifindex, share) in enumerate(DATAPATHS):
        count = remaining if i == len(DATAPATHS) - 1 else max(1, round(vports * share))
        count = min(count, remaining - (len(DATAPATHS) - 1 - i))
        remaining -= count
        datapath = om.FakeDatapath(
            name,
            dp_ifindex,
            stats=(_log_uniform(rng, 1e6, 1e12), _log_uniform(rng, 1e3, 1e8), rng.randint(0, 1000), 12000),
            megaflow=(_log_uniform(rng, 1e6, 1e12), 40, _log_uniform(rng, 1e6, 1e12)),
        )

        def ports(
            name: str = name, dp_ifindex: int = dp_ifindex, count: int = count
        ) -> Iterator[om.FakeVport]:
            specials = [(name, 2, None), *_SPECIAL_PORTS[name]][:count]
            for port_no in range(count):
                if port_no < len(specials):
                    port_name, vtype, dst_port = specials[port_no]
                else:
                    port_name = f"{rng.choice(_PREFIXES)}{rng.getrandbits(32):08x}-{rng.getrandbits(8):02x}"
                    vtype, dst_port = 1, None
                yield om.FakeVport(
                    port_no=port_no,
                    name=port_name,
                    type=vtype,
                    ifindex=dp_ifindex if port_no == 0 else next(ifindex),
                    # A veth whose peer was moved into a container's netns.
                    netnsid=rng.randint(0, 200) if port_name.startswith("veth") else None,
                    stats=_stats(rng),
                    upcall=_upcall(rng),
                    dst_port=dst_port,
                    upcall_pids=(rng.getrandbits(31),),
                )

        yield datapath, ports()


def _split_at_seqs(datagram: bytes) -> list[bytes]:
    """The datagram as the pieces before, between and after the seq field of each message."""
    pieces = []
    pos = last = 0
    while pos < len(datagram):
        length = struct.unpack_from("=I", datagram, pos)[0]
        pieces.append(datagram[last : pos + 8])
        last = pos + 12
        pos += (length + 3) & ~3
    pieces.append(datagram[last:])
    return pieces


def _template(messages: list[bytes]) -> list[list[bytes]]:
    return [_split_at_seqs(dg) for dg in om.dump_reply(0, messages)]


def build(vports: int, seed: int = 6) -> Dataset:
    datapaths: list[om.FakeDatapath] = []
    vport_dumps: dict[int, list[list[bytes]]] = {}
    links: dict[int, tuple[str, str | None]] = {}
    for datapath, ports in fake_datapaths(vports, seed):
        datapaths.append(datapath)
        messages = []
        for port in ports:
            messages.append(om.vport_message(0, datapath.dp_ifindex, port))
            if port.ifindex is not None and port.netnsid is None:
                links[port.ifindex] = (port.name, device_kind(port.name))
        vport_dumps[datapath.dp_ifindex] = _template(messages)
    datapath_dump = _template([om.datapath_message(0, dp) for dp in datapaths])
    return Dataset(vports, datapath_dump, vport_dumps, links)


class PrebuiltKernelSocket:
    """A ``KernelSocket`` replaying a ``Dataset``: only the sequence number is written per dump."""

    def __init__(self, dataset: Dataset) -> None:
        self._dataset = dataset
        self._pending: Iterator[bytes] = iter(())

    def family_id(self, name: str) -> int:
        if name == OVS_DATAPATH_FAMILY:
            return om.DATAPATH_FAMILY_ID
        if name == OVS_VPORT_FAMILY:
            return om.VPORT_FAMILY_ID
        raise FamilyNotFoundError(name)

    def send(self, data: bytes) -> None:
        _length, family, _flags, seq, _pid = struct.unpack_from("=IHHII", data)
        dp_ifindex = struct.unpack_from("=i", data, 20)[0]
        if family == om.DATAPATH_FAMILY_ID:
            template = self._dataset.datapath_dump
        else:
            template = self._dataset.vport_dumps.get(dp_ifindex, [_split_at_seqs(om.done(0, errno.ENODEV))])
        seq_bytes = struct.pack("=I", seq)
        self._pending = (seq_bytes.join(pieces) for pieces in template)

    def recv(self) -> bytes:
        try:
            return next(self._pending)
        except StopIteration:
            raise TimeoutError("no reply pending") from None

    def close(self) -> None:
        self._pending = iter(())


class PrebuiltLinkSocket(om.FakeLinkSocket):
    """A NETLINK_ROUTE socket answering the exporter's link GETs from a ``Dataset``'s links."""

    def __init__(self, dataset: Dataset) -> None:
        super().__init__(dataset.links)
