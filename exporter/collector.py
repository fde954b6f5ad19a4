"""One scrape: read every source, filter, and write the exposition with each source's health.

This is where the sources meet: the kernel's datapath and vport dumps
(``exporter.kernel.dumps``, in the exporter's own network namespace and in named
ones) are read during the scrape; sources that keep a snapshot in the background
(``SnapshotSource``: the port event listener, OVSDB) are asked for their latest one. Every source
reports ``ovs_scrape_collector_success`` and ``ovs_scrape_collector_duration_seconds``
with its ``collector`` name (and ``netns``), as node_exporter's collectors do.

``Collector.scrape`` never raises. A failed kernel read becomes ``ovs_up 0``, one more
``ovs_scrape_errors_total`` and a log line with the errno; no partial kernel data
is served, and the next scrape starts again from scratch. A failed source never
fails the scrape or the other sources.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client import generate_latest as generate_text
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from exporter.config import VPORT_METRIC_GROUPS, Filters
from exporter.exposition import (
    Format,
    family_header,
    render_counter,
    render_gauge,
    render_info,
    render_labels,
)
from exporter.kernel.dump_metrics import DatapathRenderer, vport_counters
from exporter.kernel.dumps import DatapathDump, NamespaceSources
from exporter.kernel.genl import FamilyNotFoundError, describe_error
from exporter.kernel.netlink import DecodeError
from exporter.kernel.netns import log_prefix
from exporter.records import Health, SourceReport

log = logging.getLogger(__name__)

_OM_EOF = "# EOF\n"


class Source(Protocol):
    """The per-scrape kernel source (``exporter.kernel.dumps.KernelSource``): read during the scrape."""

    def collect(self) -> list[DatapathDump]: ...


class SnapshotSource(Protocol):
    """A source that keeps its own copy of its data current in the background.

    ``report`` renders the latest snapshot and must not block on I/O: a scrape
    never waits for such a source. ``dumps`` is this scrape's kernel state (after
    filters), for a source whose output depends on which ports the kernel has.
    """

    def report(self, fmt: Format, dumps: Sequence[DatapathDump]) -> SourceReport: ...

    def close(self) -> None: ...


def apply_filters(dumps: Sequence[DatapathDump], filters: Filters) -> list[DatapathDump]:
    """Keep the datapaths and vports the configuration asks for.

    ``ovs_datapath_vports`` keeps counting every vport of a datapath (``vport_count``):
    a filter changes what is exported, not what the datapath holds.
    """
    if filters.port.is_open and filters.vport_type.is_open and filters.device_kind.is_open:
        return [d for d in dumps if filters.datapath.allows(d.datapath.name)]
    kept: list[DatapathDump] = []
    for dump in dumps:
        if filters.datapath.allows(dump.datapath.name):
            kinds = dump.device_kinds
            vports = [
                v
                for v in dump.vports
                if filters.port.allows(v.name)
                and filters.vport_type.allows(v.type_name)
                # A vport whose kind was not read (its netdev in another namespace) is matched as "".
                and filters.device_kind.allows(kinds.get(v.name, ""))
            ]
            kept.append(dataclasses.replace(dump, vports=vports))
    return kept


class Collector:
    """Turns the source's kernel state into one exposition per scrape."""

    def __init__(
        self,
        source: Source,
        filters: Filters,
        version: str,
        clock: Callable[[], float] = time.perf_counter,
        namespaces: NamespaceSources | None = None,
        vport_metrics: Collection[str] = VPORT_METRIC_GROUPS,
        snapshot_sources: Sequence[SnapshotSource] = (),
        extra: Sequence[Callable[[Format], list[str]]] = (),
    ) -> None:
        self._source = source
        self._extra = extra  # more of the exporter's own families (the HTTP side's)
        # The per-vport families to serve (--collector.vport.metrics), chosen once.
        self._counters = vport_counters(vport_metrics)
        self._vport_info = "info" in vport_metrics
        # Keeps the fixed text of unchanged ports between scrapes (used under self._lock).
        self._renderer = DatapathRenderer()
        self._namespaces = namespaces
        self._snapshot_sources = tuple(snapshot_sources)
        self._filters = filters
        self._version = version
        self._clock = clock
        # The kernel socket is not shared between threads; concurrent scrapes queue here.
        self._lock = threading.Lock()
        self._errors = 0
        # The last failure logged for each source ("" is the exporter's own namespace).
        self._failures: dict[str, str] = {}
        self._runtime = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self._runtime)
        PlatformCollector(registry=self._runtime)
        GCCollector(registry=self._runtime)

    def scrape(self, fmt: Format) -> str:
        """The whole exposition body for one scrape, in the asked format."""
        return b"".join(self.scrape_chunks(fmt)).decode("utf-8")

    def scrape_chunks(self, fmt: Format) -> list[bytes]:
        """The body of one scrape as encoded chunks, in order (``scrape_into`` a list)."""
        chunks: list[bytes] = []
        self.scrape_into(fmt, chunks.append)
        return chunks

    def scrape_into(self, fmt: Format, write: Callable[[bytes], object]) -> None:
        """Write the body of one scrape to ``write``, encoded, a chunk (about a family) at a time.

        The kernel's families are written as bytes directly and handed over as they are
        made, so that the HTTP side compresses each and lets it go: at 10,000 vports the
        body is ~10 MB of text, and no whole copy of it is ever held.
        """
        with self._lock, _cyclic_gc_paused():
            started = self._clock()
            dumps, up, health = self._read_source()
            namespaces_up = self._read_namespaces(dumps, health)
            self._renderer.render_into(write, dumps, fmt, self._counters, self._vport_info)
            chunks: list[str] = []  # the other families, small: encoded together at the end
            for source in self._snapshot_sources:
                report = source.report(fmt, dumps)
                chunks.extend(report.chunks)
                health.extend(report.health)
            duration = self._clock() - started
            errors = self._errors
        chunks.append(
            render_gauge(
                "ovs_up", "1 if the OVS datapath families resolved and every dump completed, else 0.", up, fmt
            )
        )
        if namespaces_up:
            chunks.append(
                family_header(
                    "ovs_netns_up",
                    "gauge",
                    "1 if every dump in this network namespace (--collector.netns) completed, else 0.",
                    fmt,
                )
            )
            chunks.extend(
                f"ovs_netns_up{render_labels([('netns', name)])} {ok}\n" for name, ok in namespaces_up
            )
        chunks.extend(render_health(health, fmt))
        chunks.append(
            render_gauge(
                "ovs_scrape_duration_seconds",
                "Time this scrape spent reading the kernel and writing the exposition.",
                duration,
                fmt,
            )
        )
        chunks.append(
            render_counter(
                "ovs_scrape_errors",
                "Scrapes whose kernel read failed (ovs_up 0), since the exporter started.",
                errors,
                fmt,
            )
        )
        chunks.append(
            render_info(
                "ovs_exporter_build", "The exporter's version (value 1).", {"version": self._version}, fmt
            )
        )
        for render in self._extra:
            chunks.extend(render(fmt))
        if fmt is Format.OPENMETRICS:
            # The runtime registry's output ends with the one "# EOF" a body may have.
            chunks.append(generate_openmetrics(self._runtime).decode("utf-8"))  # type: ignore[no-untyped-call]
        else:
            chunks.append(generate_text(self._runtime).decode("utf-8"))
        write("".join(chunks).encode("utf-8"))

    def _read_namespaces(self, dumps: list[DatapathDump], health: list[Health]) -> list[tuple[str, int]]:
        """Add the datapaths of the configured namespaces to ``dumps`` and their health to ``health``.

        A namespace that fails is reported alone (``ovs_netns_up 0`` and a log line
        once per distinct failure); the others, and the host's, are still served.
        """
        if self._namespaces is None:
            return []
        up: list[tuple[str, int]] = []
        for result in self._namespaces.collect():
            where = log_prefix(result.netns)
            ok = result.error is None
            if result.error is None:
                dumps.extend(apply_filters(result.dumps, self._filters))
                self._log_recovery(where)
            else:
                self._log_failure(where, result.error)
            up.append((result.netns, int(ok)))
            health.append(Health("kernel", result.netns, ok, result.duration_seconds))
        return up

    def _read_source(self) -> tuple[list[DatapathDump], int, list[Health]]:
        """The kernel in the exporter's own namespace: its dumps, ``ovs_up`` and its health."""
        started = self._clock()
        try:
            dumps = apply_filters(self._source.collect(), self._filters)
        except Exception as err:  # noqa: BLE001 - a scrape reports every failure, never raises
            self._errors += 1
            self._log_failure("", err)
            return [], 0, [Health("kernel", None, False, self._clock() - started)]
        self._log_recovery("")
        return dumps, 1, [Health("kernel", None, True, self._clock() - started)]

    def _log_failure(self, where: str, err: BaseException) -> None:
        """Log a failure once per distinct failure of a source, not on every scrape while it lasts."""
        message = describe_error(err)
        if isinstance(err, FamilyNotFoundError):
            message += " (will retry on every scrape)"
        if self._failures.get(where) != message:
            log_fn = log.warning if isinstance(err, FamilyNotFoundError) else log.error
            log_fn("%sscrape failed: %s", where, message, exc_info=_is_unexpected(err))
            self._failures[where] = message

    def _log_recovery(self, where: str) -> None:
        last = self._failures.pop(where, None)
        if last is not None:
            log.info("%sscrape succeeded again after: %s", where, last)


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Hold off Python's cyclic garbage collector while the kernel is read and rendered.

    A scrape makes a few objects per vport (records, counter tuples) that live until it
    ends, none of them in a reference cycle: reference counting frees every one. The cyclic
    collector, which runs every 700 allocations, would walk them again and again, its oldest
    generation too, so that the cost per vport grew with the number of ports: a scrape of
    50,000 vports took 1.6 times as long with it running (``benchmarks.stages`` measures both).
    Collections resume when the scrape is over. Entered under the collector's lock, so one
    scrape at a time; a collector that was already disabled stays so.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def render_health(health: Sequence[Health], fmt: Format) -> list[str]:
    """``ovs_scrape_collector_success`` and ``..._duration_seconds``, one series per source."""
    if not health:
        return []
    rows = [(_health_labels(h), h) for h in health]
    return [
        family_header(
            "ovs_scrape_collector_success",
            "gauge",
            "1 if this collector's source answered this scrape with fresh data, else 0.",
            fmt,
        ),
        "".join(f"ovs_scrape_collector_success{labels} {int(h.success)}\n" for labels, h in rows),
        family_header(
            "ovs_scrape_collector_duration_seconds",
            "gauge",
            "Time this scrape spent on this collector's source.",
            fmt,
        ),
        "".join(
            f"ovs_scrape_collector_duration_seconds{labels} {h.duration_seconds!r}\n" for labels, h in rows
        ),
    ]


def _health_labels(health: Health) -> str:
    labels = [("collector", health.collector)]
    if health.netns is not None:
        labels.append(("netns", health.netns))
    return render_labels(labels)


def _is_unexpected(err: BaseException) -> bool:
    return not isinstance(err, (FamilyNotFoundError, OSError, DecodeError))
