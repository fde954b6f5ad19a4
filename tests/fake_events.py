"""Fake sockets for the port event listener: kernel-layout notifications through a real fd.

Shared by the listener's unit tests and the golden end-to-end scrape.
"""

from __future__ import annotations

import errno
import socket

from exporter.kernel.events import EventListener
from exporter.kernel.families.datapath import OVS_DATAPATH_FAMILY, OVS_DATAPATH_MCGROUP, Datapath
from exporter.kernel.families.nlctrl import CTRL_CMD_NEWFAMILY, CtrlFamily
from exporter.kernel.families.vport import OVS_VPORT_FAMILY, OVS_VPORT_MCGROUP
from exporter.kernel.genl import FamilyNotFoundError
from tests import ovs_messages as om
from tests.ovs_messages import FakeDatapath, FakeVport

NOTIFY, DP_GROUP, VPORT_GROUP = 0x10, 3, 4


class FakeNotify:
    """A datagram socket pair standing in for the multicast socket: a real fd to select on."""

    def __init__(self) -> None:
        self.ours, self.kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.ours.setblocking(False)
        self.joined: list[int] = []
        self.overflow = False

    def fileno(self) -> int:
        return self.ours.fileno()

    def join(self, group: int) -> None:
        self.joined.append(group)

    def poll(self) -> bytes | None:
        if self.overflow:
            self.overflow = False
            raise OSError(errno.ENOBUFS, "No buffer space available")
        try:
            return self.ours.recv(1 << 16)
        except BlockingIOError:
            return None

    def send(self, *messages: bytes) -> None:
        for message in messages:
            self.kernel.send(message)

    def close(self) -> None:
        self.ours.close()
        self.kernel.close()


class FakeControl:
    """Family lookups and the datapath list of one fake kernel (ids change on a 'reload')."""

    def __init__(
        self, datapaths: list[FakeDatapath], dp_family: int = 0x1A, vport_family: int = 0x1B
    ) -> None:
        self.datapaths_now = datapaths
        self.loaded = True
        self.dp_family, self.vport_family = dp_family, vport_family
        self.closed = False

    def resolve(self, name: str) -> CtrlFamily:
        families = {"nlctrl": (0x10, "notify", NOTIFY)}
        if self.loaded:
            families[OVS_DATAPATH_FAMILY] = (self.dp_family, OVS_DATAPATH_MCGROUP, DP_GROUP)
            families[OVS_VPORT_FAMILY] = (self.vport_family, OVS_VPORT_MCGROUP, VPORT_GROUP)
        if name not in families:
            raise FamilyNotFoundError(name)
        family_id, group, group_id = families[name]
        return CtrlFamily(CTRL_CMD_NEWFAMILY, name, family_id, ((group, group_id),))

    def datapaths(self, family_id: int) -> list[Datapath]:
        assert family_id == self.dp_family
        return [Datapath(dp.dp_ifindex, dp.name, None, None) for dp in self.datapaths_now]

    def close(self) -> None:
        self.closed = True


class Kernel:
    """One namespace's fake kernel: the control side and the notification socket."""

    def __init__(self, datapaths: list[FakeDatapath]) -> None:
        self.control = FakeControl(datapaths)
        self.notify = FakeNotify()

    def vport(self, cmd: int, dp_ifindex: int, name: str) -> bytes:
        return om.vport_notification(cmd, dp_ifindex, FakeVport(1, name), self.control.vport_family)


def listener_for(*kernels: tuple[str | None, Kernel]) -> EventListener:
    """A listener over fake kernels (None: the exporter's own namespace), subscribed, not started."""
    by_ns = dict(kernels)

    def opener(netns: str | None) -> tuple[FakeNotify, FakeControl]:
        if netns not in by_ns:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        return by_ns[netns].notify, by_ns[netns].control

    named = [ns for ns in by_ns if ns is not None]
    listener = EventListener(opener, namespaces=lambda: named)
    listener.tick()
    return listener
