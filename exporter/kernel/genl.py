"""The one netlink socket every kernel reader uses: lookups, requests, dumps, notifications.

A plain ``AF_NETLINK`` socket (pyroute2's socket objects are not used: in 0.9 a
synchronous one only works in the thread that made it, and scrapes run in the HTTP
server's threads), ``NETLINK_GENERIC`` for the OVS families, or ``NETLINK_ROUTE`` for
rtnetlink's link GET (``exporter.kernel.families.link``): the framing, the sequence
numbers, the errors and the timeouts are the same netlink. It resolves family names with nlctrl
(``exporter.kernel.families.nlctrl``), sends requests and yields the messages answering
them, matched by sequence number, and receives multicast notifications. Every wait is
bounded by the socket's timeout (``--netlink.timeout``) and, during a scrape, by the
scrape's deadline (``exporter.deadline``).

``open_socket(timeout, netns, protocol=...)`` opens one in the exporter's own network namespace or in a
named one (``exporter.kernel.netns``); the socket keeps its namespace for its whole life.
Only GET requests are ever built by the families' codecs; this socket sends what it is given.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
from collections.abc import Iterator

from exporter import deadline
from exporter.kernel.families.nlctrl import GENL_ID_CTRL, CtrlFamily, decode_ctrl_family, encode_get_family
from exporter.kernel.netlink import (
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSGHDR,
    DecodeError,
    Message,
    NetlinkError,
    error_code,
    iter_messages,
)

NETLINK_ROUTE = 0  # linux/netlink.h: rtnetlink
NETLINK_GENERIC = 16  # linux/netlink.h; the socket module does not name it
# linux/socket.h and linux/netlink.h; Python's socket module names neither.
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
# Large enough for the biggest datagram a netlink dump sends (32 KiB since 4.x).
RECV_BUFSIZE = 1 << 16
# Room for a dump's datagrams while the reader waits for the GIL. The kernel caps it at
# net.core.rmem_max for an unprivileged socket.
DEFAULT_RCVBUF = 1 << 20


class FamilyNotFoundError(Exception):
    """A generic netlink family is not registered: the openvswitch module is not loaded."""


def describe_error(err: BaseException) -> str:
    """One line for the log and the health reports about what a kernel read raised."""
    if isinstance(err, FamilyNotFoundError):
        return f"generic netlink family {err} not found: is the openvswitch kernel module loaded?"
    if isinstance(err, OSError) and err.errno is not None:  # a scrape's deadline too: it says which
        return f"{err.strerror or err} (errno {err.errno} {errno.errorcode.get(err.errno, '?')})"
    if isinstance(err, TimeoutError):
        return "timed out waiting for the kernel's reply"
    if isinstance(err, DecodeError):
        return f"malformed netlink reply: {err}"
    return f"{type(err).__name__}: {err}"


class GenlSocket:
    """A netlink socket: family lookups, requests and their replies, multicast groups.

    ``NETLINK_GENERIC`` unless ``protocol`` says otherwise; ``resolve`` and ``join`` are
    generic netlink's, everything else works for ``NETLINK_ROUTE`` as well.
    Not thread-safe: each reader owns its sockets.
    """

    def __init__(self, timeout: float, rcvbuf: int = DEFAULT_RCVBUF, protocol: int = NETLINK_GENERIC) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
        self._timeout = timeout
        self._seq = itertools.count(1)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self._sock.bind((0, 0))
            self._sock.settimeout(timeout)
        except BaseException:
            self._sock.close()
            raise

    def next_seq(self) -> int:
        """A sequence number for the next request (replies are matched on it)."""
        return next(self._seq) & 0xFFFFFFFF

    def resolve(self, name: str) -> CtrlFamily:
        """CTRL_CMD_GETFAMILY: the family's id and multicast groups; FamilyNotFoundError if absent."""
        seq = self.next_seq()
        self.send(encode_get_family(seq, name))
        for buf, message in self.replies(seq):
            if message.type == NLMSG_ERROR:
                code = error_code(buf, message)
                if code == errno.ENOENT:
                    raise FamilyNotFoundError(name)
                raise OSError(code, f"resolving generic netlink family {name}: {os.strerror(code)}")
            if message.type != GENL_ID_CTRL:
                raise DecodeError(f"unexpected message type {message.type} resolving {name}")
            return decode_ctrl_family(buf, message)
        raise AssertionError("unreachable: replies never ends")  # pragma: no cover

    def family_id(self, name: str) -> int:
        """The id of a family; FamilyNotFoundError if it is not registered."""
        family_id = self.resolve(name).family_id
        if family_id is None:
            raise DecodeError(f"nlctrl reply for {name} carries no family id")
        return family_id

    def send(self, data: bytes) -> None:
        self._sock.send(data)

    def recv(self) -> bytes:
        """One datagram; raises TimeoutError when none comes within the timeout or the deadline."""
        # --netlink.timeout bounds each wait; a scrape's deadline (exporter.deadline) can only
        # shorten it.
        self._sock.settimeout(deadline.remaining(self._timeout))
        return self._sock.recv(RECV_BUFSIZE)

    def poll(self) -> bytes | None:
        """One datagram if one is queued, else None (never waits). Raises OSError(ENOBUFS) after
        the socket's buffer overflowed and notifications were lost."""
        # Non-blocking for this call: a socket with a timeout would wait for it first (Python
        # polls before every recv on such a socket), whatever flags recv is given.
        self._sock.settimeout(0.0)
        try:
            return self._sock.recv(RECV_BUFSIZE)
        except BlockingIOError:
            return None

    def replies(self, seq: int) -> Iterator[tuple[bytes, Message]]:
        """Every message answering request ``seq``, as the datagrams arrive; the caller stops.

        Messages of other sequence numbers (late replies to an earlier request,
        notifications) are skipped. A timeout ends it with TimeoutError.
        """
        while True:
            deadline.check()
            buf = self.recv()
            if not buf:
                raise DecodeError("netlink socket returned an empty datagram")
            for message in iter_messages(buf):
                if message.seq == seq:
                    yield buf, message

    def dump(self, request: bytes, family_id: int, what: str) -> Iterator[tuple[bytes, Message]]:
        """Send a dump ``request`` and yield each message of ``family_id`` answering it, to NLMSG_DONE.

        Raises NetlinkError for an error the kernel answers with (its errno; ``what`` says
        which dump), DecodeError for a message of another type.
        """
        seq = NLMSGHDR.unpack_from(request)[3]
        self.send(request)
        for buf, message in self.replies(seq):
            if message.type == family_id:
                yield buf, message
            elif message.type in (NLMSG_DONE, NLMSG_ERROR):
                code = error_code(buf, message)
                if code:
                    raise NetlinkError(code, f"{what} failed: {os.strerror(code)}")
                if message.type == NLMSG_DONE:
                    return
            else:
                raise DecodeError(f"unexpected netlink message type {message.type} in the {what}")

    def get(self, request: bytes, family_id: int, what: str) -> tuple[bytes, Message]:
        """Send a GET ``request`` (not a dump) and return the one message answering it.

        Raises NetlinkError with the kernel's errno (ENOENT for an object that does not
        exist), DecodeError for a message of another type.
        """
        seq = NLMSGHDR.unpack_from(request)[3]
        self.send(request)
        for buf, message in self.replies(seq):
            if message.type == family_id:
                return buf, message
            if message.type == NLMSG_ERROR:
                code = error_code(buf, message)
                raise NetlinkError(code, f"{what} failed: {os.strerror(code)}")
            raise DecodeError(f"unexpected netlink message type {message.type} answering the {what}")
        raise AssertionError("unreachable: replies never ends")  # pragma: no cover

    def join(self, group: int) -> None:
        """Join one multicast group (NETLINK_ADD_MEMBERSHIP): its notifications arrive on this socket."""
        self._sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()


def open_socket(
    timeout: float, netns: str | None = None, rcvbuf: int = DEFAULT_RCVBUF, protocol: int = NETLINK_GENERIC
) -> GenlSocket:
    """A socket in the exporter's own network namespace (None) or in the named one.

    A named namespace needs CAP_SYS_ADMIN (setns); one that does not exist raises
    FileNotFoundError and is never created.
    """
    if netns is None:
        return GenlSocket(timeout, rcvbuf, protocol)
    from exporter.kernel.netns import call_in_namespace

    return call_in_namespace(netns, lambda: GenlSocket(timeout, rcvbuf, protocol))
