"""Records that the sources hand to the collector and the exposition, apart from any I/O.

The kernel source (``exporter.source``, and ``exporter.namespaces`` for other
network namespaces) produces ``DatapathDump``s; every other source (one that reads
in a thread of its own, such as OVSDB or the kernel's notifications) answers a
scrape with a ``SourceReport``: its metric families, already written, and its
health. The collector (``exporter.collector``) is where they meet, and it writes
every source's health the same way, as node_exporter does for its collectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from exporter import wire

if TYPE_CHECKING:
    from exporter.exposition import Format


@dataclass(frozen=True, slots=True)
class DatapathDump:
    """A datapath and its vports, each vport name once."""

    datapath: wire.Datapath
    vports: list[wire.Vport]
    vport_count: int  # every vport the kernel listed, before any filter
    netns: str | None = None  # the named network namespace it was read in; None: the exporter's own


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


class SnapshotSource(Protocol):
    """A source that keeps its own copy of its data current in the background.

    ``report`` renders the latest snapshot and must not block on I/O: a scrape
    never waits for such a source. ``dumps`` is this scrape's kernel state (after
    filters), for a source whose output depends on which ports the kernel has.
    """

    def report(self, fmt: Format, dumps: Sequence[DatapathDump]) -> SourceReport: ...

    def close(self) -> None: ...
