"""What every source hands a scrape besides its data: its health, and its part of the exposition.

node_exporter reports each collector the same way (``node_scrape_collector_success`` and
``..._duration_seconds``); here every source does so through ``Health``, and a source that
reads in a thread of its own (OVSDB, the kernel's notifications, the flow table) answers a
scrape with a ``SourceReport``: its metric families, already written, and its health. The
collector (``exporter.collector``) is where they meet. No I/O here, and no import of any
source: the kernel's, OVSDB's and the HTTP side's packages all build on this module.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Health:
    """How one source did in one scrape: ``ovs_scrape_collector_success`` and ``..._duration_seconds``.

    ``collector`` names the kind of source ("kernel", "ovsdb", ...); ``netns`` the
    named network namespace it reads in, or None for the exporter's own.
    """

    collector: str
    netns: str | None
    success: bool
    duration_seconds: float


@dataclass(frozen=True, slots=True)
class SourceReport:
    """A source's part of one scrape: whole metric families (exposition text) and its health."""

    chunks: list[str]
    health: list[Health]
