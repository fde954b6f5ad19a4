"""The per-scrape kernel source: every datapath with its vports, here and in named namespaces.

One ``KernelSource.collect()`` is one scrape's worth of kernel state: an ``ovs_datapath``
dump, then one ``ovs_vport`` dump per datapath (the kernel's vport dump covers a single
datapath, named by its ``dp_ifindex``), and the device kind of every vport not seen before
(``exporter.kernel.device_kinds``: one rtnetlink GET per new link). Only GETs are ever
sent. ``NamespaceSources`` keeps one such source per named network namespace
(``--collector.netns``).

The socket is the only piece that touches the kernel, behind the small
``KernelSocket`` protocol, so tests and the benchmark replace exactly that and
run everything else for real. The real one is ``exporter.kernel.genl.GenlSocket``; the
dumps' raw bytes go straight to the families' decoders
(``exporter.kernel.families``), since a generic message class would cost far more per
vport than the whole rest of a scrape.
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import operator
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol, TypeVar

from exporter import deadline
from exporter.kernel import netns
from exporter.kernel.device_kinds import DeviceKinds, LinkSocket
from exporter.kernel.families.datapath import (
    OVS_DATAPATH_FAMILY,
    OVS_DATAPATH_VERSION,
    Datapath,
    decode_datapath,
)
from exporter.kernel.families.vport import OVS_VPORT_FAMILY, OVS_VPORT_VERSION, Vport, VportDecoder
from exporter.kernel.genl import NETLINK_ROUTE, open_socket
from exporter.kernel.netlink import (
    NLMSG_DONE,
    NLMSG_ERROR,
    DecodeError,
    Message,
    NetlinkError,
    encode_ovs_get,
    error_code,
    iter_messages,
)

T = TypeVar("T")

#: The device kinds of a dump read without them.
NO_DEVICE_KINDS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class DatapathDump:
    """A datapath and its vports, each vport name once: what the kernel source hands the collector."""

    datapath: Datapath
    vports: list[Vport]
    vport_count: int  # every vport the kernel listed, before any filter
    netns: str | None = None  # the named network namespace it was read in; None: the exporter's own
    # Vport name -> the kind of its netdev (device_kinds.NO_KIND: none), for the vports whose kind
    # was read; the same object from scrape to scrape while the datapath's links are the same.
    device_kinds: Mapping[str, str] = dataclasses.field(default_factory=lambda: NO_DEVICE_KINDS)


class KernelSocket(Protocol):
    """What the source needs of a generic netlink socket."""

    def family_id(self, name: str) -> int:
        """Resolve a generic netlink family name; raise genl.FamilyNotFoundError if absent."""

    def send(self, data: bytes) -> None:
        """Send one request to the kernel."""

    def recv(self) -> bytes:
        """Receive one datagram (raise OSError/TimeoutError when none comes)."""

    def close(self) -> None:
        """Release the socket."""


class KernelSource:
    """Dumps every datapath and every vport, through a socket kept open between scrapes.

    With ``open_link_socket`` (a NETLINK_ROUTE socket), it also reads the device kind of
    every vport it has not seen before; without, the dumps carry no device kinds.
    """

    def __init__(
        self,
        open_socket: Callable[[], KernelSocket],
        open_link_socket: Callable[[], LinkSocket] | None = None,
    ) -> None:
        self._open_socket = open_socket
        self._socket: KernelSocket | None = None
        self._seq = itertools.count(1)
        # Reuses the decoding of vport messages whose bytes, counters aside, did not change.
        self._vports = VportDecoder()
        self._kinds = DeviceKinds(open_link_socket) if open_link_socket is not None else None

    def collect(self) -> list[DatapathDump]:
        """One scrape's kernel state. Raises on any failure; the caller reports it.

        Raises genl.FamilyNotFoundError, NetlinkError (with the errno), DecodeError, or
        OSError (socket errors and timeouts).
        """
        if self._socket is None:
            self._socket = self._open_socket()
        try:
            return self._collect(self._socket)
        except BaseException:
            # Start the next scrape from scratch: a fresh socket holds no late replies,
            # and family ids are resolved again (the module may have been reloaded).
            self.close()
            raise

    def close(self) -> None:
        if self._socket is not None:
            sock, self._socket = self._socket, None
            sock.close()
        if self._kinds is not None:
            self._kinds.close()

    def _collect(self, sock: KernelSocket) -> list[DatapathDump]:
        # Resolved on every scrape: reloading the module can change the ids.
        dp_family = sock.family_id(OVS_DATAPATH_FAMILY)
        vport_family = sock.family_id(OVS_VPORT_FAMILY)
        datapaths = _unique_by_name(
            self._dump(sock, dp_family, OVS_DATAPATH_VERSION, 0, _decoding(decode_datapath))
        )
        self._vports.new_scrape()
        if self._kinds is not None:
            self._kinds.new_scrape()
        dumps: list[DatapathDump] = []
        for datapath in datapaths:
            decoded = self._vports.decoded
            try:
                vports = self._dump(
                    sock,
                    vport_family,
                    OVS_VPORT_VERSION,
                    datapath.dp_ifindex,
                    self._vports.decode_run,
                )
            except NetlinkError as err:
                if err.errno == errno.ENODEV:
                    continue  # deleted since the datapath dump: normal, not an error
                raise
            unique = _unique_by_name(vports)
            kinds = NO_DEVICE_KINDS
            if self._kinds is not None:
                # The decoder decoded no message of this dump afresh: each is, counters aside, a
                # message of the last scrape (and so of this datapath, its dp_ifindex included).
                unchanged = self._vports.decoded == decoded
                kinds = self._kinds.kinds(datapath.name, unique, unchanged)
            dumps.append(DatapathDump(datapath, unique, len(unique), device_kinds=kinds))
        return dumps

    def _dump(
        self,
        sock: KernelSocket,
        family: int,
        version: int,
        dp_ifindex: int,
        decode_run: DecodeRun[T],
    ) -> list[T]:
        seq = next(self._seq) & 0xFFFFFFFF
        sock.send(encode_ovs_get(family, version, seq, dp_ifindex))
        records: list[T] = []
        while True:
            deadline.check()  # any socket, the fake ones of the tests too
            buf = sock.recv()
            if not buf:
                raise DecodeError("netlink socket returned an empty datagram")
            pos = 0
            while True:
                # The records of this dump, up to a message of another type (or the datagram's end).
                pos = decode_run(buf, pos, seq, family, records)
                if pos >= len(buf):
                    break
                message = next(iter_messages(buf, pos))
                pos = (message.end + 3) & ~3
                if message.type == NLMSG_DONE:
                    code = error_code(buf, message)
                    if code:
                        raise _netlink_error(code, family, dp_ifindex)
                    return records
                elif message.type == NLMSG_ERROR:
                    code = error_code(buf, message)
                    if code:
                        raise _netlink_error(code, family, dp_ifindex)
                else:
                    raise DecodeError(
                        f"unexpected netlink message type {message.type} in a dump of family {family}"
                    )


# Decodes the messages of a dump (family, seq) in a datagram from an offset into a list; returns
# the offset of the first message of that seq and another type, or the datagram's length.
DecodeRun = Callable[[bytes, int, int, int, list[T]], int]


def _decoding(decode: Callable[[bytes, Message], T]) -> DecodeRun[T]:
    """A DecodeRun that decodes each message with ``decode``."""

    def run(buf: bytes, pos: int, seq: int, family: int, records: list[T]) -> int:
        for message in iter_messages(buf, pos):
            if message.seq != seq:
                continue  # a late reply to an earlier request
            if message.type != family:
                return message.start
            records.append(decode(buf, message))
        return len(buf)

    return run


def _netlink_error(code: int, family: int, dp_ifindex: int) -> NetlinkError:
    return NetlinkError(
        code, f"dump of family {family} (dp_ifindex {dp_ifindex}) failed: {os.strerror(code)}"
    )


class _Named(Protocol):
    @property
    def name(self) -> str: ...


N = TypeVar("N", bound=_Named)


def _unique_by_name(records: list[N]) -> list[N]:
    """Drop repeats: the kernel's vport dump walks hash buckets under RCU and can
    report a port twice while ports come and go. Two samples with one label set
    would make Prometheus reject the whole scrape. The last report wins."""
    # Checked with C loops first: repeats are rare, and this runs over every vport of every scrape.
    if len(set(map(_name, records))) == len(records):
        return records
    by_name = {record.name: record for record in records}
    return list(by_name.values())


_name = operator.attrgetter("name")


@dataclass(frozen=True, slots=True)
class NamespaceResult:
    """One namespace's scrape: its datapaths, or the error that stopped it."""

    netns: str
    dumps: list[DatapathDump]
    error: BaseException | None
    duration_seconds: float = 0.0


class NamespaceSources:
    """One KernelSource per namespace, named in the config or every one under /run/netns."""

    def __init__(
        self,
        names: Sequence[str],
        all_namespaces: bool,
        timeout: float,
        open_in: Callable[[str, float], KernelSocket] = lambda name, timeout: open_socket(timeout, name),
        discover: Callable[[], list[str]] = netns.list_namespaces,
        identify: Callable[[str], tuple[int, int]] = netns.namespace_id,
        open_link_in: Callable[[str, float], LinkSocket] | None = None,
    ) -> None:
        """``open_link_in``: a NETLINK_ROUTE socket in a namespace, to read device kinds there
        (``open_link_socket_in``); None reads none."""
        self._names = list(names)
        self._all = all_namespaces
        self._timeout = timeout
        self._open_in = open_in
        self._open_link_in = open_link_in
        self._discover = discover
        self._identify = identify
        # name -> (the namespace's identity when its socket was opened, its source)
        self._sources: dict[str, tuple[tuple[int, int], KernelSource]] = {}

    def namespaces(self) -> list[str]:
        if not self._all:
            return self._names
        return sorted(set(self._names) | set(self._discover()))

    def collect(self) -> list[NamespaceResult]:
        wanted = self.namespaces()
        for gone in set(self._sources) - set(wanted):
            self._drop(gone)
        results = []
        for name in wanted:
            started = time.perf_counter()
            try:
                dumps = [dataclasses.replace(d, netns=name) for d in self._source(name).collect()]
            except Exception as err:  # noqa: BLE001 - reported per namespace, never fatal
                results.append(NamespaceResult(name, [], err, time.perf_counter() - started))
                continue
            results.append(NamespaceResult(name, dumps, None, time.perf_counter() - started))
        return results

    def close(self) -> None:
        for name in list(self._sources):
            self._drop(name)

    def _source(self, name: str) -> KernelSource:
        """The namespace's source, reopened when the name now points to another namespace.

        An open socket keeps its namespace alive: one deleted with ``ip netns del``
        (identity gone) or deleted and created again (identity changed) must be let go.
        """
        try:
            identity = self._identify(name)
        except FileNotFoundError:
            self._drop(name)
            raise FileNotFoundError(f"network namespace {name} does not exist") from None
        known = self._sources.get(name)
        if known is not None and known[0] == identity:
            return known[1]
        self._drop(name)
        open_link = self._open_link_in
        source = KernelSource(
            self._socket_opener(name),
            None if open_link is None else lambda: open_link(name, self._timeout),
        )
        self._sources[name] = (identity, source)
        return source

    def _drop(self, name: str) -> None:
        known = self._sources.pop(name, None)
        if known is not None:
            known[1].close()

    def _socket_opener(self, name: str) -> Callable[[], KernelSocket]:
        return lambda: self._open_in(name, self._timeout)


def open_link_socket_in(netns_name: str | None, timeout: float) -> LinkSocket:
    """A NETLINK_ROUTE socket, in a named namespace or (None) the exporter's own, for device kinds."""
    return open_socket(timeout, netns_name, protocol=NETLINK_ROUTE)
