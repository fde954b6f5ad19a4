"""What kind of device each vport is (``device_kind``): read over rtnetlink, once per link.

The ``ovs_vport`` family says a vport is a ``netdev`` vport, and nothing more: a VM's
tap, a pod's veth, a physical NIC, a bond and the tunnel devices ovs-vswitchd creates
(``genev_sys_6081``, ``vxlan_sys_4789``) all look the same. The device behind it knows:
rtnetlink's ``IFLA_INFO_KIND`` (``exporter.kernel.families.link``) is ``tun``, ``veth``,
``bond``, ``geneve``, ``vxlan``, ``openvswitch`` for an OVS internal port, and none at all
for a physical NIC (shown as ``NO_KIND``).

A device keeps its kind for its whole life, so ``DeviceKinds`` asks the kernel once per
link, keyed on its ifindex and its name, and keeps what the last scrape saw of each
datapath. (The kernel hands out ifindexes in turn: a new device has an ifindex an older one
had only when the counter wrapped, or when it was asked for or came from another namespace;
the name, checked against the reply, tells most of those apart.)

A scrape does no work per vport for a datapath whose vports are those of the last
scrape: the source says so when the vport decoder served every message of the
datapath's dump from its cache (``VportDecoder.decoded`` did not move: each message's
bytes but its counters, name, ifindex and netnsid included, equal a message of that
datapath in the last scrape) and the dump holds as many vports as then; its kinds are
then the same object as in the last scrape. A vport whose netdev lives in another
namespace (``NETNSID``) has an ifindex of that namespace, which only CAP_NET_ADMIN there
could read (``IFLA_TARGET_NETNSID``): it gets no kind, as do vports of kernels before
4.16 (no ``IFINDEX``).

Only ``RTM_GETLINK`` of one ifindex is ever sent, a batch at a time (the kernel answers
each request of a datagram in turn). A link gone since the vport dump (``ENODEV``), or
whose ifindex now names another device, gets no kind in this scrape and is asked again
in the next. Any other failure raises, as a failed dump does.
"""

from __future__ import annotations

import errno
import itertools
import operator
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from exporter import deadline
from exporter.kernel.families.link import RTM_NEWLINK, decode_link, encode_get_link
from exporter.kernel.families.vport import Vport
from exporter.kernel.netlink import NLMSG_ERROR, DecodeError, NetlinkError, error_code, iter_messages

#: ``device_kind`` of a device whose driver has no kind (no ``IFLA_INFO_KIND``): a physical NIC.
NO_KIND = "none"
#: Requests sent in one datagram before their replies are read: the kernel answers them all
#: before the send returns, so their replies must fit the socket's buffer at once. Each is about
#: 1.1 KB of message in a few KB of buffer; an unprivileged socket gets twice net.core.rmem_max
#: (416 KB with the default 212,992), several times what 32 need. The VM suite reads 3,000 links
#: this way with that default (tests/kernel/test_hostile_load.py).
BATCH = 32

# The fields of a vport its kind is keyed on, read a field at a time over a datapath's vports.
_NAME = operator.itemgetter(Vport._fields.index("name"))
_IFINDEX = operator.itemgetter(Vport._fields.index("ifindex"))
_NETNSID = operator.itemgetter(Vport._fields.index("netnsid"))


class LinkSocket(Protocol):
    """What reading links needs of a NETLINK_ROUTE socket (``genl.GenlSocket`` is one)."""

    def send(self, data: bytes) -> None:
        """Send requests to the kernel."""

    def recv(self) -> bytes:
        """Receive one datagram (raise OSError/TimeoutError when none comes)."""

    def close(self) -> None:
        """Release the socket."""


@dataclass(frozen=True, slots=True)
class _Datapath:
    """What one scrape learned of a datapath's links."""

    dp_ifindex: int | None  # of its vports (None: it had none)
    vports: int  # how many
    kinds: Mapping[str, str]  # vport name -> kind, for the vports whose kind is known
    by_link: Mapping[tuple[int, str], str]  # (ifindex, name) -> kind
    complete: bool  # every vport that can have a kind has one


class DeviceKinds:
    """The kinds of the vports' netdevs, read through a socket kept open between scrapes.

    Not thread-safe: one source reads at a time.
    """

    def __init__(self, open_socket: Callable[[], LinkSocket]) -> None:
        self._open_socket = open_socket
        self._socket: LinkSocket | None = None
        self._seq = itertools.count(1)
        self._previous: dict[str, _Datapath] = {}
        self._current: dict[str, _Datapath] = {}
        self.links_read = 0  # links asked of the kernel so far (for the tests and the benchmark)

    def new_scrape(self) -> None:
        """Start a scrape: what the last one saw can be reused, anything older is let go."""
        self._previous, self._current = self._current, {}

    def kinds(self, datapath: str, vports: Sequence[Vport], unchanged: bool = False) -> Mapping[str, str]:
        """The kind of each vport of ``datapath`` that has one, by vport name.

        ``unchanged``: the caller knows each of these vports is one of the datapath's vports of the
        last scrape, with the same name, ifindex and netnsid (the vport decoder's cache served its
        whole dump). With as many vports as then, nothing is looked at. The same object as in the
        last scrape whenever the kinds are the same. Raises NetlinkError, DecodeError or OSError
        (timeouts too) when the kernel cannot be read.
        """
        known = self._previous.get(datapath)
        dp_ifindex = vports[0].dp_ifindex if vports else None
        if (
            unchanged
            and known is not None
            and known.complete
            and known.vports == len(vports)
            and known.dp_ifindex == dp_ifindex
        ):
            self._current[datapath] = known
            return known.kinds
        before = known.by_link if known is not None else {}
        by_link: dict[tuple[int, str], str] = {}
        missing: list[tuple[int, str]] = []
        for name, ifindex, netnsid in zip(
            map(_NAME, vports), map(_IFINDEX, vports), map(_NETNSID, vports), strict=True
        ):
            if not ifindex or netnsid is not None:
                continue  # no IFINDEX (kernel < 4.16), or an ifindex of another namespace
            link = (ifindex, name)
            kind = before.get(link)
            if kind is None:
                missing.append(link)
            else:
                by_link[link] = kind
        if missing:
            by_link.update(self._read(missing))
        kinds: Mapping[str, str] = {name: kind for (_ifindex, name), kind in by_link.items()}
        if known is not None and kinds == known.kinds:
            kinds = known.kinds  # the same object: the renderer reuses its text without comparing
        complete = all(link in by_link for link in missing)
        self._current[datapath] = _Datapath(dp_ifindex, len(vports), kinds, by_link, complete)
        return kinds

    def close(self) -> None:
        if self._socket is not None:
            sock, self._socket = self._socket, None
            sock.close()

    def _read(self, links: Sequence[tuple[int, str]]) -> dict[tuple[int, str], str]:
        """Ask the kernel for ``links`` (ifindex, name), a batch at a time: the kind of each found."""
        if self._socket is None:
            self._socket = self._open_socket()
        try:
            found: dict[tuple[int, str], str] = {}
            for start in range(0, len(links), BATCH):
                self._read_batch(self._socket, links[start : start + BATCH], found)
            return found
        except BaseException:
            # The next scrape starts with a fresh socket, which holds no late replies.
            self.close()
            raise

    def _read_batch(
        self, sock: LinkSocket, links: Sequence[tuple[int, str]], found: dict[tuple[int, str], str]
    ) -> None:
        pending: dict[int, tuple[int, str]] = {}
        requests = []
        for link in links:
            seq = next(self._seq) & 0xFFFFFFFF
            pending[seq] = link
            requests.append(encode_get_link(seq, link[0]))
        sock.send(b"".join(requests))
        self.links_read += len(links)
        while pending:
            deadline.check()
            buf = sock.recv()
            if not buf:
                raise DecodeError("netlink socket returned an empty datagram")
            for message in iter_messages(buf):
                if message.seq not in pending:
                    continue  # a late reply to an earlier request
                link = pending.pop(message.seq)
                if message.type == RTM_NEWLINK:
                    reply = decode_link(buf, message)
                    # The ifindex may name another device by now: then no kind for this one.
                    if reply.ifindex == link[0] and reply.name == link[1]:
                        found[link] = reply.kind or NO_KIND
                elif message.type == NLMSG_ERROR:
                    code = error_code(buf, message)
                    if code and code != errno.ENODEV:  # ENODEV: gone since the vport dump
                        raise NetlinkError(code, f"link GET of ifindex {link[0]} failed: {os.strerror(code)}")
                else:
                    raise DecodeError(f"unexpected netlink message type {message.type} answering a link GET")
