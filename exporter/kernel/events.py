"""Port events between scrapes: the kernel's ``ovs_vport`` notifications, counted per datapath.

A port that comes and goes between two scrapes never shows in a dump. The kernel
announces every vport it creates, deletes or changes (``OVS_VPORT_CMD_NEW``,
``_DEL``, ``_SET``) to the ``ovs_vport`` multicast group, and every datapath to
``ovs_datapath`` (net/openvswitch/datapath.c, ``ovs_notify``); the notifications
have the layout of a dump reply (include/uapi/linux/openvswitch.h). Joining the
groups needs no privilege: the groups carry no permission flags and generic
netlink lets any socket receive multicast.

One thread ("ovs-events") owns one notification socket per network namespace (the
exporter's own and each collected one, ``--collector.netns``), plus a request
socket there to resolve families and list datapaths (a vport notification names
its datapath only by ``dp_ifindex``). It follows nlctrl's "notify" group too: when
the openvswitch module is unloaded the families and their groups vanish, and when
it is loaded again the listener resolves the new ids and joins the new groups.
Lost notifications (ENOBUFS: the socket's buffer overflowed) are counted and
logged once per namespace, and the listener then resolves and joins again, since
the lost ones may have been nlctrl's.

The scrape never waits for it: after each batch the thread publishes an immutable
snapshot, and ``report`` only renders the latest one.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from exporter.exposition import Format, family_header, render_labels
from exporter.kernel.dumps import DatapathDump
from exporter.kernel.families.datapath import (
    OVS_DATAPATH_FAMILY,
    OVS_DATAPATH_MCGROUP,
    OVS_DATAPATH_VERSION,
    Datapath,
    decode_datapath,
)
from exporter.kernel.families.nlctrl import (
    CTRL_CMD_DELFAMILY,
    CTRL_CMD_DELMCAST_GRP,
    CTRL_CMD_NEWFAMILY,
    CTRL_CMD_NEWMCAST_GRP,
    GENL_CTRL_NOTIFY_GROUP,
    GENL_ID_CTRL,
    CtrlFamily,
    decode_ctrl_family,
)
from exporter.kernel.families.vport import OVS_VPORT_FAMILY, OVS_VPORT_MCGROUP
from exporter.kernel.genl import FamilyNotFoundError, GenlSocket
from exporter.kernel.netlink import (
    OVS_CMD_DEL,
    OVS_CMD_NEW,
    OVS_CMD_SET,
    DecodeError,
    encode_ovs_get,
    genl_command,
    iter_messages,
)
from exporter.kernel.netns import call_in_namespace, log_prefix
from exporter.records import Health, SourceReport

log = logging.getLogger(__name__)

COLLECTOR = "events"
# Room for bursts (a pod boot loop, a CNI restart) while the thread waits for the GIL. The kernel
# caps it at net.core.rmem_max for an unprivileged socket; overflows are counted, not hidden.
_NOTIFY_RCVBUF = 4 << 20
# How often the thread looks at namespaces coming and going, and retries a failed subscription
# (nlctrl's notifications make a reload quick; this is the fallback).
TICK_SECONDS = 1.0

EVENTS = {OVS_CMD_NEW: "added", OVS_CMD_DEL: "removed", OVS_CMD_SET: "changed"}
EVENTS_HELP = (
    "Vport notifications from the kernel since the exporter started: OVS_VPORT_CMD_NEW (added),"
    " _DEL (removed), _SET (changed)."
)
OVERFLOWS_HELP = (
    "Times the kernel could not queue a notification for the event listener (ENOBUFS): each time at"
    " least one vport event was lost and ovs_datapath_vport_events_total undercounts."
)


class NotifySocket(Protocol):
    """A netlink socket that only receives multicast notifications."""

    def fileno(self) -> int: ...

    def join(self, group: int) -> None:
        """Join one multicast group (NETLINK_ADD_MEMBERSHIP)."""

    def poll(self) -> bytes | None:
        """One datagram, None when none is queued; raises OSError(ENOBUFS) after an overflow."""

    def close(self) -> None: ...


class ControlSocket(Protocol):
    """Requests the listener sends: family lookups and the list of datapaths."""

    def resolve(self, name: str) -> CtrlFamily:
        """CTRL_CMD_GETFAMILY; raises FamilyNotFoundError when the family is not registered."""

    def datapaths(self, family_id: int) -> list[Datapath]:
        """An OVS_DP_CMD_GET dump."""

    def close(self) -> None: ...


class _Control:
    """The real ControlSocket: a GenlSocket, and the datapath dump decoded."""

    def __init__(self, sock: GenlSocket) -> None:
        self._sock = sock

    def resolve(self, name: str) -> CtrlFamily:
        return self._sock.resolve(name)

    def datapaths(self, family_id: int) -> list[Datapath]:
        request = encode_ovs_get(family_id, OVS_DATAPATH_VERSION, self._sock.next_seq())
        return [decode_datapath(buf, m) for buf, m in self._sock.dump(request, family_id, "datapath dump")]

    def close(self) -> None:
        self._sock.close()


@dataclass(frozen=True, slots=True)
class NamespaceEvents:
    """One namespace's counts at one moment (part of the immutable snapshot)."""

    netns: str | None
    subscribed: bool
    counts: tuple[tuple[str, str, int], ...]  # (datapath, event, count), sorted
    overflows: int


@dataclass
class _Listener:
    """The listener of one network namespace: its sockets, family ids and counts."""

    netns: str | None
    notify: NotifySocket
    control: ControlSocket
    identity: tuple[int, int] | None = None
    subscribed: bool = False
    error: str | None = None
    families: dict[str, int] = field(default_factory=dict)
    datapath_names: dict[int, str] = field(default_factory=dict)
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    overflows: int = 0

    @property
    def where(self) -> str:
        return log_prefix(self.netns)

    def subscribe(self) -> None:
        """Resolve the families, join their groups, learn the datapaths' names.

        Groups are joined before the datapaths are listed, so that a datapath created
        in between is announced on the socket rather than missed.
        """
        self.subscribed = False
        self.families.clear()
        try:
            ctrl = self.control.resolve("nlctrl")
            self._join(ctrl, GENL_CTRL_NOTIFY_GROUP)
            for name, group in (
                (OVS_DATAPATH_FAMILY, OVS_DATAPATH_MCGROUP),
                (OVS_VPORT_FAMILY, OVS_VPORT_MCGROUP),
            ):
                family = self.control.resolve(name)
                self._join(family, group)
                if family.family_id is None:
                    raise DecodeError(f"nlctrl reply for {name} carries no family id")
                self.families[name] = family.family_id
            self.datapath_names = {
                dp.dp_ifindex: dp.name for dp in self.control.datapaths(self.families[OVS_DATAPATH_FAMILY])
            }
        except (FamilyNotFoundError, OSError, DecodeError) as err:
            self.families.clear()
            self._fail(err)
            return
        for name in self.datapath_names.values():
            self._known(name)
        self.subscribed = True
        if self.error is not None:
            log.info("%sport event listener subscribed again after: %s", self.where, self.error)
            self.error = None

    def _join(self, family: CtrlFamily, group: str) -> None:
        groups = dict(family.groups)
        if group not in groups:
            raise DecodeError(f"family {family.name} has no multicast group {group}")
        self.notify.join(groups[group])

    def _fail(self, err: BaseException) -> None:
        if isinstance(err, FamilyNotFoundError):
            # One message whichever family is missing: a reload takes them away one by one.
            message = "the OVS generic netlink families are not registered (openvswitch module not loaded?)"
        elif isinstance(err, OSError) and err.errno is not None:
            message = f"{err.strerror or err} (errno {err.errno} {errno.errorcode.get(err.errno, '?')})"
        else:
            message = f"{type(err).__name__}: {err}"
        if message != self.error:
            log.warning("%sport event listener not subscribed: %s (retrying)", self.where, message)
            self.error = message

    def _known(self, datapath: str) -> None:
        """Start a datapath's counters at 0, so that its first event is an increase, not a new series."""
        for event in EVENTS.values():
            self.counts.setdefault((datapath, event), 0)

    def drain(self) -> bool:
        """Handle every queued datagram; True when anything changed."""
        changed = False
        while True:
            try:
                buf = self.notify.poll()
            except OSError as err:
                if err.errno != errno.ENOBUFS:
                    raise
                self.overflows += 1
                if self.overflows == 1:
                    log.warning(
                        "%sport event listener lost notifications: its socket buffer overflowed (ENOBUFS);"
                        " counted in ovs_events_overflows_total, not logged again",
                        self.where,
                    )
                # What was lost may include nlctrl's news of a module reload.
                self.subscribe()
                changed = True
                continue
            if buf is None:
                return changed
            try:
                self._handle(buf)
            except DecodeError as err:
                log.error("%sport event listener: malformed notification skipped: %s", self.where, err)
            changed = True

    def _handle(self, buf: bytes) -> None:
        vport_family = self.families.get(OVS_VPORT_FAMILY)
        dp_family = self.families.get(OVS_DATAPATH_FAMILY)
        for message in iter_messages(buf):
            if message.type == vport_family:
                cmd, dp_ifindex = genl_command(buf, message)
                event = EVENTS.get(cmd)
                if event is not None:
                    self._count(dp_ifindex, event)
            elif message.type == dp_family:
                cmd, _ = genl_command(buf, message)
                datapath = decode_datapath(buf, message)
                if cmd == OVS_CMD_DEL:
                    # Its counters go with it: a datapath made again under this name starts at 0.
                    self.datapath_names.pop(datapath.dp_ifindex, None)
                    for event in EVENTS.values():
                        self.counts.pop((datapath.name, event), None)
                elif cmd == OVS_CMD_NEW:
                    self.datapath_names[datapath.dp_ifindex] = datapath.name
                    self._known(datapath.name)
            elif message.type == GENL_ID_CTRL:
                self._on_ctrl(decode_ctrl_family(buf, message))

    def _on_ctrl(self, ctrl: CtrlFamily) -> None:
        if ctrl.name not in (OVS_DATAPATH_FAMILY, OVS_VPORT_FAMILY):
            return
        if ctrl.cmd in (CTRL_CMD_DELFAMILY, CTRL_CMD_DELMCAST_GRP):
            # The kernel dropped our memberships with the family; the ids may differ next time. No
            # datapath outlives the module, so their counters go too.
            if self.subscribed:
                self._fail(FamilyNotFoundError(ctrl.name))
            self.subscribed = False
            self.families.clear()
            self.datapath_names.clear()
            self.counts.clear()
        elif ctrl.cmd in (CTRL_CMD_NEWFAMILY, CTRL_CMD_NEWMCAST_GRP):
            self.subscribe()

    def _count(self, dp_ifindex: int, event: str) -> None:
        name = self.datapath_names.get(dp_ifindex)
        if name is None:
            # Only after lost notifications (the datapath's own NEW was among them): ask again.
            try:
                family = self.families[OVS_DATAPATH_FAMILY]
                self.datapath_names.update((dp.dp_ifindex, dp.name) for dp in self.control.datapaths(family))
            except (KeyError, OSError, DecodeError) as err:
                log.debug("%slisting datapaths failed: %s", self.where, err)
            name = self.datapath_names.get(dp_ifindex)
            if name is None:
                log.debug(
                    "%svport %s event of vanished datapath %d not counted", self.where, event, dp_ifindex
                )
                return
            self._known(name)
        self.counts[(name, event)] = self.counts.get((name, event), 0) + 1

    def snapshot(self) -> NamespaceEvents:
        counts = tuple(sorted((dp, event, n) for (dp, event), n in self.counts.items()))
        return NamespaceEvents(self.netns, self.subscribed, counts, self.overflows)

    def close(self) -> None:
        self.notify.close()
        self.control.close()


OpenSockets = Callable[[str | None], tuple[NotifySocket, ControlSocket]]


def open_sockets(timeout: float) -> OpenSockets:
    """The real sockets, opened in the named namespace (None: the exporter's own)."""

    def opener(netns: str | None) -> tuple[NotifySocket, ControlSocket]:
        if netns is None:
            return _open_pair(timeout)
        return call_in_namespace(netns, lambda: _open_pair(timeout))

    return opener


def _open_pair(timeout: float) -> tuple[NotifySocket, ControlSocket]:
    notify = GenlSocket(timeout, rcvbuf=_NOTIFY_RCVBUF)
    try:
        return notify, _Control(GenlSocket(timeout))
    except BaseException:
        notify.close()
        raise


class EventListener:
    """Counts vport notifications in the background; a ``SnapshotSource`` for the collector."""

    def __init__(
        self,
        opener: OpenSockets,
        namespaces: Callable[[], Sequence[str]] = list,
        identify: Callable[[str], tuple[int, int]] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._opener = opener
        self._namespaces = namespaces
        self._identify = identify
        self._clock = clock
        self._listeners: dict[str | None, _Listener] = {}
        self._failed: dict[str, str] = {}  # namespace -> why its sockets could not be opened
        self._selector = selectors.DefaultSelector()
        # close() writes here so the thread leaves its select() at once (SIGTERM stops within a second).
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._selector.register(self._wake_reader, selectors.EVENT_READ, None)
        self._wanted: list[str | None] = [None]
        self._snapshot: tuple[NamespaceEvents, ...] = ()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_tick = -TICK_SECONDS

    def start(self) -> None:
        """Subscribe in the exporter's own namespace now, then listen in a thread of its own."""
        self.tick()
        self._thread = threading.Thread(target=self._run, name="ovs-events", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step(TICK_SECONDS)
            except Exception:
                log.exception("port event listener failed; starting over")
                self._close_listeners()
                self._stop.wait(TICK_SECONDS)

    def step(self, timeout: float) -> None:
        """Wait up to ``timeout`` for notifications, handle them, and do the periodic work."""
        changed = False
        for key, _mask in self._selector.select(timeout):
            listener: _Listener | None = key.data
            if listener is None:
                return  # woken by close()
            changed |= listener.drain()
        if time.monotonic() - self._last_tick >= TICK_SECONDS:
            self.tick()
        elif changed:
            self._publish()

    def tick(self) -> None:
        """Follow namespaces coming and going; retry subscriptions that failed."""
        self._last_tick = time.monotonic()
        wanted: list[str | None] = [None, *self._namespaces()]
        self._wanted = wanted
        for gone in [ns for ns in self._listeners if ns not in wanted]:
            self._drop(gone)
        for netns in wanted:
            listener = self._listeners.get(netns)
            if listener is not None and netns is not None and self._identity(netns) != listener.identity:
                self._drop(netns)  # deleted, or deleted and made again: let the old one go
                listener = None
            if listener is None:
                listener = self._open(netns)
                if listener is None:
                    continue
            if not listener.subscribed:
                listener.subscribe()
        self._publish()

    def _identity(self, netns: str) -> tuple[int, int] | None:
        if self._identify is None:
            return None
        try:
            return self._identify(netns)
        except OSError:
            return None

    def _open(self, netns: str | None) -> _Listener | None:
        identity = None if netns is None else self._identity(netns)
        try:
            notify, control = self._opener(netns)
        except (OSError, ValueError) as err:
            where = netns or ""
            message = f"{err.strerror or err}" if isinstance(err, OSError) else str(err)
            if self._failed.get(where) != message:
                log.warning("%sport event listener cannot open its sockets: %s", log_prefix(netns), message)
                self._failed[where] = message
            return None
        self._failed.pop(netns or "", None)
        listener = _Listener(netns, notify, control, identity)
        self._listeners[netns] = listener
        self._selector.register(notify, selectors.EVENT_READ, listener)
        return listener

    def _drop(self, netns: str | None) -> None:
        listener = self._listeners.pop(netns, None)
        if listener is not None:
            self._selector.unregister(listener.notify)
            listener.close()

    def _publish(self) -> None:
        # One assignment: a scrape reads either the old tuple or the new one, never a mix. A
        # namespace whose sockets could not be opened is there too, unsubscribed.
        self._snapshot = tuple(
            listener.snapshot()
            if (listener := self._listeners.get(netns))
            else NamespaceEvents(netns, False, (), 0)
            for netns in self._wanted
        )

    def snapshot(self) -> tuple[NamespaceEvents, ...]:
        """The latest published counts, one entry per namespace listened to."""
        return self._snapshot

    def report(self, fmt: Format, dumps: Sequence[DatapathDump]) -> SourceReport:
        """The latest counts as exposition, and each namespace's listener health. Never blocks."""
        started = self._clock()
        snapshot = self._snapshot
        # Only datapaths this scrape serves: a deleted one vanishes with its other series, and the
        # datapath filter applies (``dumps`` come filtered).
        present = {(dump.netns, dump.datapath.name) for dump in dumps}
        event_lines: list[str] = []
        overflow_lines: list[str] = []
        for entry in snapshot:
            ns = [] if entry.netns is None else [("netns", entry.netns)]
            overflow_lines.append(
                f"ovs_events_overflows_total{render_labels(ns) if ns else ''} {entry.overflows}\n"
            )
            sample = "ovs_datapath_vport_events_total"
            event_lines.extend(
                f"{sample}{render_labels([*ns, ('datapath', dp), ('event', ev)])} {n}\n"
                for dp, ev, n in entry.counts
                if (entry.netns, dp) in present
            )
        chunks: list[str] = []
        if event_lines:
            chunks.append(family_header("ovs_datapath_vport_events", "counter", EVENTS_HELP, fmt))
            chunks.append("".join(event_lines))
        if overflow_lines:
            chunks.append(family_header("ovs_events_overflows", "counter", OVERFLOWS_HELP, fmt))
            chunks.append("".join(overflow_lines))
        duration = self._clock() - started
        health = [Health(COLLECTOR, entry.netns, entry.subscribed, duration) for entry in snapshot]
        return SourceReport(chunks, health)

    def _close_listeners(self) -> None:
        for netns in list(self._listeners):
            self._drop(netns)

    def close(self) -> None:
        self._stop.set()
        self._wake_writer.send(b"x")
        if self._thread is not None:
            self._thread.join(timeout=2 * TICK_SECONDS + 1)
        self._close_listeners()
        self._selector.close()
        self._wake_reader.close()
        self._wake_writer.close()
