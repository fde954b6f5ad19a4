"""The datapath source: talks to the kernel and returns every datapath with its vports.

One ``collect()`` is one scrape's worth of kernel state: an ``ovs_datapath`` dump,
then one ``ovs_vport`` dump per datapath (the kernel's vport dump covers a single
datapath, named by its ``dp_ifindex``). Only GET dumps are ever sent.

The socket is the only piece that touches the kernel, behind the small
``KernelSocket`` protocol, so tests and the benchmark replace exactly that and
run everything else for real. The real one is a plain netlink socket: pyroute2's
controller message class resolves the family names over it, and the dumps' raw
bytes go straight to ``exporter.wire``'s decoder, since pyroute2's message
classes would cost far more per vport than the whole rest of a scrape.
"""

from __future__ import annotations

import errno
import itertools
import operator
import os
import socket
from collections.abc import Callable
from typing import Protocol, TypeVar

from exporter import deadline, wire
from exporter.model import DatapathDump

T = TypeVar("T")

# Large enough for the biggest datagram a netlink dump sends (32 KiB since 4.x).
_RECV_BUFSIZE = 1 << 16
_SOCKET_RCVBUF = 1 << 20
NETLINK_GENERIC = 16  # linux/netlink.h; the socket module does not name it
_CTRL_CMD_GETFAMILY = 3  # linux/genetlink.h


class FamilyNotFoundError(Exception):
    """A generic netlink family is not registered: the openvswitch module is not loaded."""


class KernelSocket(Protocol):
    """What the source needs of a generic netlink socket."""

    def family_id(self, name: str) -> int:
        """Resolve a generic netlink family name; raise FamilyNotFoundError if absent."""

    def send(self, data: bytes) -> None:
        """Send one request to the kernel."""

    def recv(self) -> bytes:
        """Receive one datagram (raise OSError/TimeoutError when none comes)."""

    def close(self) -> None:
        """Release the socket."""


class NetlinkKernelSocket:
    """The real socket: one raw NETLINK_GENERIC socket for family lookups and dumps.

    Family lookups use pyroute2's ``ctrlmsg`` to encode the controller request
    and decode its reply, sent over this socket. pyroute2's own socket objects are
    not used: in 0.9 a synchronous socket only works in the thread that made it,
    and every scrape runs in the HTTP server's thread for that request.
    """

    def __init__(self, timeout: float) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        self._timeout = timeout
        self._seq = itertools.count(1)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_RCVBUF)
            self._sock.bind((0, 0))
            self._sock.settimeout(timeout)
        except BaseException:
            self._sock.close()
            raise

    def family_id(self, name: str) -> int:
        # Imported here: pyroute2 is slow to import, and only this needs it.
        from pyroute2.netlink import GENL_ID_CTRL, NLM_F_REQUEST, ctrlmsg

        seq = (1 << 31) | (next(self._seq) & 0x7FFFFFFF)  # apart from the dumps' numbers
        request = ctrlmsg()
        request["cmd"] = _CTRL_CMD_GETFAMILY
        request["version"] = 1
        request["attrs"].append(["CTRL_ATTR_FAMILY_NAME", name])
        request["header"]["type"] = GENL_ID_CTRL
        request["header"]["flags"] = NLM_F_REQUEST
        request["header"]["sequence_number"] = seq
        request.encode()
        self._sock.send(request.data)
        while True:
            buf = self.recv()
            for message in wire.iter_messages(buf):
                if message.seq != seq:
                    continue  # a late reply to an earlier request
                if message.type == wire.NLMSG_ERROR:
                    code = wire.error_code(buf, message)
                    if code == errno.ENOENT:
                        raise FamilyNotFoundError(name)
                    raise OSError(code, f"resolving generic netlink family {name}: {os.strerror(code)}")
                if message.type != GENL_ID_CTRL:
                    raise wire.DecodeError(f"unexpected message type {message.type} resolving {name}")
                reply = ctrlmsg(buf[message.start : message.end])
                reply.decode()
                family_id = reply.get_attr("CTRL_ATTR_FAMILY_ID")
                if not isinstance(family_id, int):
                    raise wire.DecodeError(f"nlctrl reply for {name} carries no family id")
                return family_id

    def send(self, data: bytes) -> None:
        self._sock.send(data)

    def recv(self) -> bytes:
        # --netlink.timeout bounds each wait; a scrape's deadline (exporter.deadline) can only
        # shorten it.
        self._sock.settimeout(deadline.remaining(self._timeout))
        return self._sock.recv(_RECV_BUFSIZE)

    def close(self) -> None:
        self._sock.close()


class KernelSource:
    """Dumps every datapath and every vport, through a socket kept open between scrapes."""

    def __init__(self, open_socket: Callable[[], KernelSocket]) -> None:
        self._open_socket = open_socket
        self._socket: KernelSocket | None = None
        self._seq = itertools.count(1)
        # Reuses the decoding of vport messages whose bytes, counters aside, did not change.
        self._vports = wire.VportDecoder()

    def collect(self) -> list[DatapathDump]:
        """One scrape's kernel state. Raises on any failure; the caller reports it.

        Raises FamilyNotFoundError, wire.NetlinkError (with the errno),
        wire.DecodeError, or OSError (socket errors and timeouts).
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

    def _collect(self, sock: KernelSocket) -> list[DatapathDump]:
        # Resolved on every scrape: reloading the module can change the ids.
        dp_family = sock.family_id(wire.OVS_DATAPATH_FAMILY)
        vport_family = sock.family_id(wire.OVS_VPORT_FAMILY)
        datapaths = _unique_by_name(
            self._dump(sock, dp_family, wire.OVS_DATAPATH_VERSION, 0, _decoding(wire.decode_datapath))
        )
        self._vports.new_scrape()
        dumps: list[DatapathDump] = []
        for datapath in datapaths:
            try:
                vports = self._dump(
                    sock,
                    vport_family,
                    wire.OVS_VPORT_VERSION,
                    datapath.dp_ifindex,
                    self._vports.decode_run,
                )
            except wire.NetlinkError as err:
                if err.errno == errno.ENODEV:
                    continue  # deleted since the datapath dump: normal, not an error
                raise
            unique = _unique_by_name(vports)
            dumps.append(DatapathDump(datapath, unique, len(unique)))
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
        sock.send(wire.encode_get_dump(family, version, seq, dp_ifindex))
        records: list[T] = []
        while True:
            deadline.check()  # any socket, the fake ones of the tests too
            buf = sock.recv()
            if not buf:
                raise wire.DecodeError("netlink socket returned an empty datagram")
            pos = 0
            while True:
                # The records of this dump, up to a message of another type (or the datagram's end).
                pos = decode_run(buf, pos, seq, family, records)
                if pos >= len(buf):
                    break
                message = next(wire.iter_messages(buf, pos))
                pos = (message.end + 3) & ~3
                if message.type == wire.NLMSG_DONE:
                    code = wire.error_code(buf, message)
                    if code:
                        raise _netlink_error(code, family, dp_ifindex)
                    return records
                elif message.type == wire.NLMSG_ERROR:
                    code = wire.error_code(buf, message)
                    if code:
                        raise _netlink_error(code, family, dp_ifindex)
                else:
                    raise wire.DecodeError(
                        f"unexpected netlink message type {message.type} in a dump of family {family}"
                    )


# Decodes the messages of a dump (family, seq) in a datagram from an offset into a list; returns
# the offset of the first message of that seq and another type, or the datagram's length.
DecodeRun = Callable[[bytes, int, int, int, list[T]], int]


def _decoding(decode: Callable[[bytes, wire.Message], T]) -> DecodeRun[T]:
    """A DecodeRun that decodes each message with ``decode``."""

    def run(buf: bytes, pos: int, seq: int, family: int, records: list[T]) -> int:
        for message in wire.iter_messages(buf, pos):
            if message.seq != seq:
                continue  # a late reply to an earlier request
            if message.type != family:
                return message.start
            records.append(decode(buf, message))
        return len(buf)

    return run


def _netlink_error(code: int, family: int, dp_ifindex: int) -> wire.NetlinkError:
    return wire.NetlinkError(
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
