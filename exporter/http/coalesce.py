"""Scrapes that arrive together share one kernel read, one rendering and one encoded body.

Between the HTTP server and the collector. A *generation* is one
``Collector.scrape_into`` (kernel read and exposition) of one format, encoded and
gzipped once. A request joins the generation of its format that is under way, if its
kernel read began at most ``window`` seconds ago, or else the next one, which every
request arriving meanwhile shares. So:

- **Freshness.** A response comes from a kernel read that had not finished when the
  request arrived (begun at most ``window``, 1 s, before it, or after it), never from one
  already over: a scraper always sees counters at least as new as its request, and two
  scrapes one after the other are two reads. Both replicas of an HA pair scraping in the
  same moment cost one dump.
- **Work.** However many clients scrape, renders run one at a time, each shared by every
  request that arrived while the one before it was being made.
- **Memory.** A body is one immutable gzip member (``Body``) shared by every response
  sent from it, six times smaller than the text; a client that does not take gzip gets it
  inflated as it is sent, 256 KiB at a time. A reader that stalls costs its socket buffer
  and one such piece, not a copy of the body. Readers of the ``keep`` (3) newest
  generations of a format are left alone; when a newer one is made, the readers of older
  bodies that took nothing for ``stalled_after`` (1 s) are cut off (``Body.cut_stalled``),
  so stalled readers pin a few bodies however they arrive. A reader that stalls a second
  while three newer bodies were made is no scraper.
- **Admission.** Requests waiting for a generation, or making it, are *in flight*; past
  ``max_in_flight`` a request is refused (the HTTP side answers 503). Sending a body does
  not count: stalled readers cannot lock a scraper out.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from exporter import deadline
from exporter.exposition import Format

log = logging.getLogger(__name__)

#: How long after a generation's kernel read began a request may still join it.
COALESCE_WINDOW = 1.0
#: Generations per format whose bodies readers may hold however slowly they take them.
BODIES_KEPT = 3
#: A reader of an older body that took nothing for this long is cut off.
STALLED_AFTER = 1.0


class Scraper(Protocol):
    def scrape_into(self, fmt: Format, write: Callable[[bytes], object]) -> None: ...


class BodyWriter(Protocol):
    """Where a generation's text goes as it is rendered: it keeps only the gzipped body."""

    size: int  # of the text written

    def write(self, chunk: bytes) -> None: ...

    def finish(self) -> bytes:
        """The gzip member of everything written."""


class Reader(Protocol):
    """A connection sending a body, which the coalescer may cut off."""

    def stalled_for(self) -> float:
        """Seconds since the reader last took some of its body."""

    def cut(self, reason: str) -> None:
        """Close the connection; ``reason`` is counted."""


class Body:
    """One scrape's body as one gzip member, never changed once made; shared by every response."""

    __slots__ = ("__weakref__", "_lock", "_readers", "generation", "gzipped", "size")

    def __init__(self, generation: int, gzipped: bytes, size: int) -> None:
        self.generation = generation
        self.gzipped = gzipped
        self.size = size  # of the body inflated
        self._lock = threading.Lock()
        self._readers: set[Reader] = set()

    def attach(self, reader: Reader) -> None:
        """Register a reader about to be sent this body."""
        with self._lock:
            self._readers.add(reader)

    def detach(self, reader: Reader) -> None:
        with self._lock:
            self._readers.discard(reader)

    def cut_stalled(self, stalled_after: float) -> int:
        """Cut off the readers that took nothing for ``stalled_after`` seconds; how many."""
        with self._lock:
            stalled = [r for r in self._readers if r.stalled_for() >= stalled_after]
            self._readers.difference_update(stalled)
        for reader in stalled:
            reader.cut("superseded")
        return len(stalled)


@dataclass(eq=False)
class _Generation:
    number: int
    fmt: Format
    started: float | None = None  # monotonic time its kernel read began; None: not yet
    # The latest deadline among the requests waiting when it starts; None: one has none.
    deadline: float | None = None
    unbounded: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    body: Body | None = None

    def wants(self, request_deadline: float | None) -> None:
        if request_deadline is None:
            self.unbounded = True
        elif self.deadline is None or request_deadline > self.deadline:
            self.deadline = request_deadline


@dataclass(eq=False)
class _FormatState:
    latest: _Generation | None = None  # under way
    pending: _Generation | None = None  # queued for the render thread
    count: int = 0  # generations of this format so far
    # Bodies readers may still hold, oldest first (weak: a body nobody holds is freed).
    bodies: deque[weakref.ref[Body]] = field(default_factory=deque)


class Coalescer:
    """Hands out shared bodies; see the module docstring for what is shared and when.

    Generations are made by one thread of its own, one at a time: a kernel read and an
    exposition are Python work holding the GIL, which gains nothing from overlapping
    (docs/performance.md). It also keeps every large allocation of a body in one malloc
    arena: made in the requests' threads, bodies spread over one arena per thread, and
    memory freed in one arena is never reused by another.
    """

    def __init__(
        self,
        scraper: Scraper,
        writer: Callable[[], BodyWriter],
        max_in_flight: int = 0,
        window: float = COALESCE_WINDOW,
        keep: int = BODIES_KEPT,
        stalled_after: float = STALLED_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._scraper = scraper
        self._max_in_flight = max_in_flight
        self._writer = writer
        self._window = window
        self._keep = keep
        self._stalled_after = stalled_after
        self._clock = clock
        self._lock = threading.Lock()
        self._states = {fmt: _FormatState() for fmt in Format}
        self._in_flight = 0
        self._queue: queue.SimpleQueue[_Generation | None] = queue.SimpleQueue()
        self._worker = threading.Thread(target=self._work, name="render", daemon=True)
        self._worker.start()
        self.renders = 0  # generations made, for the metrics and tests
        self.cut_readers = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def max_in_flight(self) -> int:
        return self._max_in_flight

    def close(self) -> None:
        """Stop the render thread once the generations queued are made."""
        self._queue.put(None)

    def body(self, fmt: Format, request_deadline: float | None = None) -> Body | None:
        """The body to answer a request with, or None when too many are in flight already.

        ``request_deadline`` (a ``time.monotonic()`` instant) bounds the kernel read of a
        generation not yet begun: the latest deadline of its requests, none if one has none.
        """
        now = self._clock()
        with self._lock:
            if 0 < self._max_in_flight <= self._in_flight:
                return None
            self._in_flight += 1
            state = self._states[fmt]
            gen = state.latest
            if gen is None or gen.started is None or gen.started < now - self._window:
                gen = state.pending
                if gen is None:
                    state.count += 1
                    gen = state.pending = _Generation(state.count, fmt)
                    self._queue.put(gen)
                gen.wants(request_deadline)
        try:
            gen.done.wait()
            if gen.body is None:
                raise RuntimeError("the scrape failed to render")
            return gen.body
        finally:
            with self._lock:
                self._in_flight -= 1

    def _work(self) -> None:
        while (gen := self._queue.get()) is not None:
            try:
                self._make(gen)
            except Exception:  # the requests waiting for it answer 500; go on
                log.exception("rendering a scrape failed")

    def _make(self, gen: _Generation) -> None:
        with self._lock:
            gen.started = self._clock()
            state = self._states[gen.fmt]
            state.latest, state.pending = gen, None
            limit = None if gen.unbounded else gen.deadline
        try:
            writer = self._writer()
            with deadline.within(limit):
                self._scraper.scrape_into(gen.fmt, writer.write)
            gen.body = Body(gen.number, writer.finish(), writer.size)
            self.renders += 1
        finally:
            with self._lock:
                # Over: later requests wait for the next one. Only this generation's
                # requests hold it now, so an idle exporter keeps no body.
                if state.latest is gen:
                    state.latest = None
            gen.done.set()
        self._keep_body(gen.fmt, gen.body)

    def _keep_body(self, fmt: Format, body: Body) -> None:
        """Remember ``body``; cut off the stalled readers of bodies ``keep`` generations older."""
        old: list[Body] = []
        with self._lock:
            state = self._states[fmt]
            live: deque[weakref.ref[Body]] = deque()
            for ref in (*state.bodies, weakref.ref(body)):
                held = ref()
                if held is not None:  # a body nobody holds any more is gone
                    live.append(ref)
                    if held.generation <= body.generation - self._keep:
                        old.append(held)
            state.bodies = live
        for held in old:
            self.cut_readers += held.cut_stalled(self._stalled_after)
