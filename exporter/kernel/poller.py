"""Kernel state read in the background, in every collected namespace, at an interval.

Some of what the exporter serves costs the kernel more than the datapath and vport dumps a
scrape makes: a datapath's meters are found one GET per meter id, and each GET takes
``ovs_mutex``, the lock ovs-vswitchd needs to install a flow (``exporter.kernel.meters``);
more conntrack zone limits than fit one reply take hundreds of GETs
(``exporter.kernel.ct_zones``). Those are read by a ``NamespacePoller``: one thread that,
every ``interval`` seconds, runs a source's ``read`` function with a socket kept open in
each network namespace (the exporter's own and each ``--collector.netns``), and publishes
the results as one immutable tuple. A scrape only renders that tuple: it never waits for
the thread and never does its I/O, so what it costs the kernel does not depend on how
often, or by how many Prometheus servers, the exporter is scraped.

``read`` gets the socket, the namespace and its own previous result (what a source keeps
from one read to the next, such as the meter ids it found), and returns the new one or
raises. A failure is that namespace's health 0 until a read succeeds again, logged once
per distinct failure with its errno; nothing from before the failure is served (its
result is dropped). A family the kernel does not have (``FamilyNotFoundError``: the module
is not loaded, or was built without it) is such a failure, and nothing else: the scrape
and the other sources carry on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from exporter.kernel.genl import FamilyNotFoundError, describe_error
from exporter.kernel.netlink import DecodeError, Message
from exporter.kernel.netns import log_prefix
from exporter.records import Health

log = logging.getLogger(__name__)

T = TypeVar("T")


class RequestSocket(Protocol):
    """What a background read needs of a generic netlink socket (``genl.GenlSocket``)."""

    def family_id(self, name: str) -> int:
        """Resolve a family name; raise FamilyNotFoundError when it is not registered."""

    def next_seq(self) -> int: ...

    def get(self, request: bytes, family_id: int, what: str) -> tuple[bytes, Message]:
        """Send a GET (not a dump) and return the message answering it; NetlinkError on an error."""

    def dump(self, request: bytes, family_id: int, what: str) -> Iterator[tuple[bytes, Message]]:
        """Send a dump request and yield each message answering it."""

    def close(self) -> None: ...


class PollerClosingError(Exception):
    """The poller is closing: a read in progress ends at its next request."""


class _Stoppable:
    """A socket whose every request first checks that the poller is not closing, so that a
    read of thousands of requests ends within one request of ``close()``."""

    def __init__(self, sock: RequestSocket, stop: threading.Event) -> None:
        self._sock = sock
        self._stop = stop

    def family_id(self, name: str) -> int:
        return self._sock.family_id(name)

    def next_seq(self) -> int:
        return self._sock.next_seq()

    def get(self, request: bytes, family_id: int, what: str) -> tuple[bytes, Message]:
        if self._stop.is_set():
            raise PollerClosingError
        return self._sock.get(request, family_id, what)

    def dump(self, request: bytes, family_id: int, what: str) -> Iterator[tuple[bytes, Message]]:
        if self._stop.is_set():
            raise PollerClosingError
        return self._sock.dump(request, family_id, what)

    def close(self) -> None:
        self._sock.close()


@dataclass(frozen=True, slots=True)
class Reading(Generic[T]):
    """One namespace's latest result: ``value`` is None before the first complete read and
    after a failed one (``ok`` False)."""

    netns: str | None
    value: T | None
    ok: bool


#: A source's read: (socket, namespace, its previous result or None) -> the new result.
Read = Callable[[RequestSocket, str | None, T | None], T]


@dataclass
class _Namespace:
    netns: str | None
    sock: RequestSocket | None = None
    identity: tuple[int, int] | None = None


class NamespacePoller(Generic[T]):
    """Runs ``read`` in each collected namespace every ``interval`` seconds, in a thread of its own.

    ``what`` names the source in log lines ("meter reader"). ``opener(netns)`` opens a socket in a namespace
    (None: the exporter's own); ``namespaces`` lists the named ones to read as well, and
    ``identify`` tells a namespace deleted and made again under the same name from the old.
    """

    def __init__(
        self,
        *,
        what: str,
        read: Read[T],
        opener: Callable[[str | None], RequestSocket],
        interval: float,
        namespaces: Callable[[], Sequence[str]] = list,
        identify: Callable[[str], tuple[int, int]] | None = None,
        thread_name: str = "ovs-poller",
    ) -> None:
        self._what = what
        self._read = read
        self._opener = opener
        self._interval = interval
        self._namespaces = namespaces
        self._identify = identify
        self._thread_name = thread_name
        self._known: dict[str | None, _Namespace] = {}
        self._failures: dict[str | None, str] = {}  # namespace -> the failure last logged
        # Until the first round ends: the exporter's own namespace, not read yet.
        self._snapshot: tuple[Reading[T], ...] = (Reading(None, None, False),)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reads = 0  # completed rounds, for tests and benchmarks

    def start(self) -> None:
        """Read in a thread of its own, the first round at once."""
        self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.poll()
            except PollerClosingError:
                break
            except Exception:  # the thread must outlive any bug in a read
                log.exception("%s failed; starting over", self._what)
                self._close_sockets()
            self._stop.wait(max(0.0, self._interval - (time.monotonic() - started)))

    def poll(self) -> None:
        """One round: read every wanted namespace once and publish the results."""
        wanted: list[str | None] = [None, *self._namespaces()]
        for gone in [ns for ns in self._known if ns not in wanted]:
            self._drop(gone)
        previous = {reading.netns: reading.value for reading in self._snapshot}
        readings = [self._read_one(netns, previous.get(netns)) for netns in wanted]
        # One assignment: a scrape sees the whole round or the one before it, never a mix.
        self._snapshot = tuple(readings)
        self.reads += 1

    def _read_one(self, netns: str | None, previous: T | None) -> Reading[T]:
        known = self._socket(netns)
        if known is None or known.sock is None:
            return Reading(netns, None, False)
        try:
            value = self._read(_Stoppable(known.sock, self._stop), netns, previous)
        except PollerClosingError:
            raise
        except FamilyNotFoundError as err:
            missing = (
                f"the {err} generic netlink family is not registered (module not loaded, or built without it)"
            )
            self._failed(netns, missing, logging.WARNING)
            return Reading(netns, None, False)
        except (OSError, DecodeError) as err:
            # A fresh socket next time: it holds no late replies to this round's requests.
            self._drop(netns)
            self._failed(netns, describe_error(err), logging.ERROR)
            return Reading(netns, None, False)
        if self._failures.pop(netns, None) is not None:
            log.info("%s%s reads again", log_prefix(netns), self._what)
        return Reading(netns, value, True)

    def _socket(self, netns: str | None) -> _Namespace | None:
        """The namespace's socket, opened (again, when the name now points elsewhere) if need be."""
        known = self._known.get(netns)
        identity = None
        if netns is not None and self._identify is not None:
            try:
                identity = self._identify(netns)
            except OSError:
                self._drop(netns)
                self._failed(netns, "the network namespace does not exist", logging.WARNING)
                return None
        if known is not None and known.identity != identity:
            self._drop(netns)  # deleted, or deleted and made again: let the old socket go
            known = None
        if known is None:
            try:
                sock = self._opener(netns)
            except (OSError, ValueError) as err:
                self._failed(netns, f"cannot open its socket: {describe_error(err)}", logging.WARNING)
                return None
            known = self._known[netns] = _Namespace(netns, sock, identity)
        return known

    def _failed(self, netns: str | None, message: str, level: int) -> None:
        if self._failures.get(netns) != message:
            log.log(
                level, "%s%s: %s (retrying every %gs)", log_prefix(netns), self._what, message, self._interval
            )
            self._failures[netns] = message

    def _drop(self, netns: str | None) -> None:
        known = self._known.pop(netns, None)
        if known is not None and known.sock is not None:
            known.sock.close()

    def _close_sockets(self) -> None:
        for netns in list(self._known):
            self._drop(netns)

    def snapshot(self) -> tuple[Reading[T], ...]:
        """The latest round's results, one per namespace (before the first round ends: the exporter's
        own namespace, unread)."""
        return self._snapshot

    def close(self) -> None:
        """Stop the thread (within one request of a read in progress) and close the sockets."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._close_sockets()


class PolledSource(Generic[T]):
    """A ``SnapshotSource`` whose data a ``NamespacePoller`` reads: a subclass names itself
    (``collector``, the ``ovs_scrape_collector_success`` label value; ``what``, for log lines;
    ``thread_name``), says how to read (``read``) and renders what was read (``report``)."""

    collector: str
    what: str
    thread_name: str

    def __init__(
        self,
        opener: Callable[[str | None], RequestSocket],
        interval: float,
        namespaces: Callable[[], Sequence[str]] = list,
        identify: Callable[[str], tuple[int, int]] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.poller: NamespacePoller[T] = NamespacePoller(
            what=self.what,
            read=self.read,
            opener=opener,
            interval=interval,
            namespaces=namespaces,
            identify=identify,
            thread_name=self.thread_name,
        )
        self._clock = clock

    def read(self, sock: RequestSocket, netns: str | None, previous: T | None) -> T:
        """One round in one namespace (``previous``: this namespace's last result, or None)."""
        raise NotImplementedError

    def start(self) -> None:
        self.poller.start()

    def health(self, snapshot: Sequence[Reading[T]], started: float) -> list[Health]:
        """One ``Health`` per namespace of ``snapshot``: success while its latest read completed;
        the duration is this scrape's time on the source since ``started``, never the reads'."""
        duration = self._clock() - started
        return [Health(self.collector, reading.netns, reading.ok, duration) for reading in snapshot]

    def close(self) -> None:
        self.poller.close()
