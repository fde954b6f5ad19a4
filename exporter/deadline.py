"""A scrape's deadline, carried down to the kernel reads without threading it through every call.

Prometheus says how long it will wait for a scrape (``X-Prometheus-Scrape-Timeout-Seconds``);
past that, an answer is wasted work. The HTTP side sets the deadline around a scrape
(``within``), and the kernel source checks it before each datagram it waits for (``check``)
and waits at most until then (``remaining``), so a read that cannot finish in time fails
fast with ``DeadlineExceededError``: ``ovs_up 0``, counted and logged like any failed read.
A context variable, like Go's ``context.Context`` deadline: it follows the thread that
renders the scrape and nothing else.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import time
from collections.abc import Iterator

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("scrape_deadline", default=None)


class DeadlineExceededError(TimeoutError):
    """The scrape's deadline passed before the kernel finished answering."""

    def __init__(self) -> None:
        # An errno and a strerror, so the collector's log line says what happened.
        super().__init__(
            errno.ETIMEDOUT,
            "the scrape's deadline (X-Prometheus-Scrape-Timeout-Seconds) passed before the kernel answered",
        )


@contextlib.contextmanager
def within(deadline: float | None) -> Iterator[None]:
    """Run the block with ``deadline`` (a ``time.monotonic()`` instant; None: none)."""
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


def remaining(upper_bound: float) -> float:
    """Seconds left before the deadline, at most ``upper_bound``; raise once it has passed."""
    deadline = _deadline.get()
    if deadline is None:
        return upper_bound
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceededError
    return min(left, upper_bound)


def check() -> None:
    """Raise DeadlineExceededError if the deadline has passed."""
    deadline = _deadline.get()
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlineExceededError
