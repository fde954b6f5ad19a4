"""Who fills the flow table, and what it drops: per-port megaflows and drop flows, in the background.

Off by default (``--collector.flows``): it costs more than the rest of the exporter. The flow
table is dumped by a worker process of its own (``exporter.kernel.flow_worker``: at 200,000 flows
a dump in a thread of this process would hold the GIL against the scrapes for seconds). This
module starts it, restarts it if it dies (with a growing pause, counted in
``ovs_flow_worker_restarts_total``), stops it with the exporter, and keeps, from the reports it
writes after each round, an immutable snapshot that ``report`` renders: a scrape never waits for
a flow dump and never serves half of one.

What a scrape serves, joined by port number onto this scrape's own vport dump (so only ports that
exist now and pass the filters, with the vport metrics' labels; a port number the worker saw
under another name is not served until its next round):

* ``ovs_vport_flows``: the last complete dump's megaflows whose match starts at the port, only
  while the datapath's latest dump completed and the worker's rounds are current
  (``ovs_scrape_collector_success{collector="flows"}``); how old it is, its timestamp says;
* ``ovs_vport_flow_dropped_packets_total`` / ``_bytes_total{reason}``: what the drop flows
  matched, summed by the worker, kept here across worker restarts (a restarted worker's first
  dump only takes a baseline) and served even while dumps fail: they only grow. A port's counters
  go when the port goes;
* per datapath, the last complete dump's time, duration and flow count, and the dumps abandoned
  over the cap; the worker's memory.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from exporter.exposition import Format, escape_label_value, family_header
from exporter.kernel.dump_metrics import datapath_labels
from exporter.kernel.dumps import DatapathDump
from exporter.kernel.flow_worker import WorkerConfig
from exporter.kernel.netns import log_prefix
from exporter.records import Health, SourceReport

log = logging.getLogger(__name__)

COLLECTOR = "flows"
#: Pauses before restarting a worker that died: doubled each time, reset by a report.
RESTART_PAUSE = (1.0, 60.0)

FLOWS_HELP = (
    "Megaflows in the kernel's flow table whose match starts at this port (OVS_KEY_ATTR_IN_PORT,"
    " recirculation id 0), in the last complete flow dump; absent while the latest dump failed."
)
DROPPED_PACKETS_HELP = (
    "Packets matched by drop flows (empty actions, or OVS_ACTION_ATTR_DROP with this reason) whose"
    " match starts at this port, summed between flow dumps: a lower bound, without the packets"
    " userspace dropped before the flow was installed and those of a flow deleted between two dumps."
)
DROPPED_BYTES_HELP = "Bytes of the packets ovs_vport_flow_dropped_packets_total counts."
DUMP_TIMESTAMP_HELP = "Unix time the last complete dump of this datapath's flow table ended."
DUMP_DURATION_HELP = "How long the last complete dump of this datapath's flow table took."
DUMP_FLOWS_HELP = "Flows the last complete dump of this datapath's flow table listed, each once."
ABANDONED_HELP = (
    "Flow dumps of this datapath abandoned over --collector.flows.max-flows or .max-seconds, since"
    " the exporter started; nothing of an abandoned dump is served."
)
WORKER_RSS_HELP = "Resident memory of the flow dump worker process, as of its latest report."
WORKER_PEAK_HELP = "Peak resident memory of the flow dump worker process since it started."
RESTARTS_HELP = "Times the flow dump worker process exited and was started again."


class WorkerProcess(Protocol):
    """What FlowSource needs of the worker process (``subprocess.Popen`` in text mode)."""

    @property
    def stdin(self) -> IO[str] | None: ...

    @property
    def stdout(self) -> IO[str] | None: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


def spawn_worker(config: WorkerConfig) -> WorkerProcess:
    """``python -m exporter.kernel.flow_worker CONFIG`` with this interpreter, this package first.

    Its stdout carries the reports; its stdin stays open while the exporter lives (it exits when
    that closes); its stderr is the exporter's (a crash's traceback lands in the exporter's log).
    """
    package_root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": package_root if not path else f"{package_root}{os.pathsep}{path}"}
    return subprocess.Popen(
        [sys.executable, "-m", "exporter.kernel.flow_worker", config.to_json()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        close_fds=True,
    )


@dataclass(frozen=True, slots=True)
class DatapathFlows:
    """One datapath as the worker last reported it (part of the immutable snapshot)."""

    dp_ifindex: int
    ports: Mapping[int, str]  # port number -> name, from the worker's vport dump of that round
    port_flows: Mapping[int, int] | None  # of the latest dump, None unless it completed
    last_complete: tuple[float, float, int] | None  # (ended, unix time; duration, s; flows)
    abandoned: int
    # (port number, port name) -> ((reason, packets, bytes), ...), reasons sorted
    drops: Mapping[tuple[int, str], tuple[tuple[str, int, int], ...]]
    # (port number, port name) -> its sample lines, written once per report rather than once per
    # scrape: ovs_vport_flows (empty unless the latest dump completed), the dropped packets, bytes
    samples: Mapping[tuple[int, str], tuple[str, str, str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NamespaceRound:
    """One namespace's latest round, and when it arrived (``time.monotonic``)."""

    netns: str | None
    received: float
    error: str | None
    datapaths: Mapping[str, DatapathFlows]

    @property
    def complete(self) -> bool:
        return self.error is None and all(dp.port_flows is not None for dp in self.datapaths.values())


@dataclass(frozen=True, slots=True)
class FlowSnapshot:
    namespaces: Mapping[str | None, NamespaceRound] = field(default_factory=dict)
    rss_bytes: int | None = None
    peak_rss_bytes: int | None = None
    restarts: int = 0


class ReportError(ValueError):
    """A worker's report line that is not what the worker writes."""


class FlowSource:
    """The flow table collector: a ``SnapshotSource`` fed by its worker process."""

    def __init__(
        self,
        config: WorkerConfig,
        spawn: Callable[[WorkerConfig], WorkerProcess] = spawn_worker,
        clock: Callable[[], float] = time.perf_counter,
        monotonic: Callable[[], float] = time.monotonic,
        restart_pause: tuple[float, float] = RESTART_PAUSE,
    ) -> None:
        self._config = config
        self._spawn = spawn
        self._clock = clock
        self._monotonic = monotonic
        self._restart_pause = restart_pause
        # A round older than this is not current: the worker is stuck, or too slow for its interval.
        self._stale_after = 2 * config.interval + config.max_seconds + 5
        self._snapshot = FlowSnapshot()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # guards _process between the thread and close()
        self._process: WorkerProcess | None = None
        self._thread: threading.Thread | None = None
        self._logged: dict[str, str] = {}  # where -> the last failure logged there

    # --- the worker's side -------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ovs-flows", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pause = self._restart_pause[0]
        while not self._stop.is_set():
            try:
                process = self._spawn(self._config)
            except OSError as err:
                self._failure("", f"cannot start the flow dump worker: {err}")
            else:
                with self._lock:
                    self._process = process
                if self._read(process):
                    pause = self._restart_pause[0]
                status = process.wait()
                with self._lock:
                    self._process = None
                if self._stop.is_set():
                    return
                self._failure("", f"the flow dump worker exited with status {status}")
                self._publish(restarts=self._snapshot.restarts + 1)
            self._stop.wait(pause)
            pause = min(pause * 2, self._restart_pause[1])

    def _read(self, process: WorkerProcess) -> bool:
        """Apply every report the worker writes until it exits; True if any came."""
        assert process.stdout is not None
        received = False
        for line in process.stdout:
            try:
                self.apply(json.loads(line))
            except (ValueError, KeyError, TypeError) as err:
                self._failure("", f"malformed report from the flow dump worker skipped: {err}")
                continue
            received = True
        return received

    def apply(self, report: Mapping[str, Any]) -> None:
        """Take one namespace's round (a ``flow_worker`` report) into a new snapshot."""
        netns = report["netns"]
        if netns is not None and not isinstance(netns, str):
            raise ReportError(f"netns {netns!r}")
        where = log_prefix(netns)
        old = self._snapshot.namespaces.get(netns)
        error = report["error"]
        if error is not None:
            self._failure(where, f"flow dump failed: {error}")
            datapaths = dict(old.datapaths) if old is not None else {}
            entry = NamespaceRound(netns, self._monotonic(), str(error), datapaths)
        else:
            self._recovered(where)
            datapaths = {}
            for dp in report["datapaths"]:
                name = str(dp["datapath"])
                previous = old.datapaths.get(name) if old is not None else None
                datapaths[name] = self._datapath(where, netns, name, dp, previous)
            entry = NamespaceRound(netns, self._monotonic(), None, datapaths)
        self._publish(
            namespaces={**self._snapshot.namespaces, netns: entry},
            rss_bytes=int(report["rss_bytes"]),
            peak_rss_bytes=int(report["peak_rss_bytes"]),
        )

    def _datapath(
        self, where: str, netns: str | None, name: str, dp: Mapping[str, Any], previous: DatapathFlows | None
    ) -> DatapathFlows:
        dp_ifindex = int(dp["dp_ifindex"])
        if previous is not None and previous.dp_ifindex != dp_ifindex:
            previous = None  # deleted and made again: its ports' counters started over with it
        ports = {int(port): str(port_name) for port, port_name in dp["ports"]}
        kept = {
            key: counts
            for key, counts in (previous.drops if previous else {}).items()
            if ports.get(key[0]) == key[1]
        }
        result = dp["result"]
        where = f"{where}datapath {name}: "
        if result == "complete":
            self._recovered(where)
            drops: dict[tuple[int, str], dict[str, tuple[int, int]]] = {
                key: {reason: (packets, nbytes) for reason, packets, nbytes in counts}
                for key, counts in kept.items()
            }
            for port, port_name, reason, packets, nbytes in dp["drops"]:
                by_reason = drops.setdefault((int(port), str(port_name)), {})
                was = by_reason.get(str(reason), (0, 0))
                by_reason[str(reason)] = (was[0] + int(packets), was[1] + int(nbytes))
            port_flows = {int(port): int(n) for port, n in dp["port_flows"]}
            counters = {
                key: tuple((reason, *counts) for reason, counts in sorted(by_reason.items()))
                for key, by_reason in drops.items()
                if ports.get(key[0]) == key[1]
            }
            return DatapathFlows(
                dp_ifindex,
                ports,
                port_flows,
                (float(dp["started"]) + float(dp["duration"]), float(dp["duration"]), int(dp["flows"])),
                previous.abandoned if previous else 0,
                counters,
                _samples(datapath_labels(netns, name), ports, port_flows, counters),
            )
        if result not in ("abandoned", "failed"):
            raise ReportError(f"result {result!r}")
        self._failure(where, f"flow dump {result}: {dp['error']}")
        return DatapathFlows(
            dp_ifindex,
            ports,
            None,
            previous.last_complete if previous else None,
            (previous.abandoned if previous else 0) + (result == "abandoned"),
            kept,
            _samples(datapath_labels(netns, name), ports, None, kept),
        )

    def _publish(self, **changes: Any) -> None:
        # One assignment: a scrape reads either the old snapshot or the new one, never a mix.
        current = self._snapshot
        self._snapshot = FlowSnapshot(
            changes.get("namespaces", current.namespaces),
            changes.get("rss_bytes", current.rss_bytes),
            changes.get("peak_rss_bytes", current.peak_rss_bytes),
            changes.get("restarts", current.restarts),
        )

    def _failure(self, where: str, message: str) -> None:
        """Log a failure once per place, not on every round while it lasts."""
        if self._logged.get(where) != message:
            log.error("%s%s", where, message)
            self._logged[where] = message

    def _recovered(self, where: str) -> None:
        last = self._logged.pop(where, None)
        if last is not None:
            log.info("%sflow dumps complete again after: %s", where, last)

    def snapshot(self) -> FlowSnapshot:
        return self._snapshot

    # --- the scrape's side --------------------------------------------------------------------

    def report(self, fmt: Format, dumps: Sequence[DatapathDump]) -> SourceReport:
        """The latest flow dumps as exposition, joined onto this scrape's vports. Never blocks."""
        started = self._clock()
        snapshot = self._snapshot
        now = self._monotonic()
        current = {
            netns
            for netns, entry in snapshot.namespaces.items()
            if entry.complete and now - entry.received <= self._stale_after
        }
        flow_lines: list[str] = []
        packet_lines: list[str] = []
        byte_lines: list[str] = []
        timestamp_lines: list[str] = []
        duration_lines: list[str] = []
        listed_lines: list[str] = []
        abandoned_lines: list[str] = []
        for dump in dumps:
            namespace = snapshot.namespaces.get(dump.netns)
            datapath = namespace.datapaths.get(dump.datapath.name) if namespace is not None else None
            if datapath is None or datapath.dp_ifindex != dump.datapath.dp_ifindex:
                continue
            dp_labels = datapath_labels(dump.netns, dump.datapath.name)
            if datapath.last_complete is not None:
                ended, duration, listed = datapath.last_complete
                timestamp_lines.append(f"ovs_datapath_flow_dump_timestamp_seconds{{{dp_labels}}} {ended!r}\n")
                duration_lines.append(
                    f"ovs_datapath_flow_dump_duration_seconds{{{dp_labels}}} {duration!r}\n"
                )
                listed_lines.append(f"ovs_datapath_flow_dump_flows{{{dp_labels}}} {listed}\n")
            abandoned_lines.append(
                f"ovs_datapath_flow_dumps_abandoned_total{{{dp_labels}}} {datapath.abandoned}\n"
            )
            # Only this scrape's ports (they pass the filters), under the name the worker saw: one
            # lookup each, the lines written when the report came.
            samples = datapath.samples
            served = [line for vport in dump.vports if (line := samples.get((vport.port_no, vport.name)))]
            if dump.netns in current:
                flow_lines.extend(flows for flows, _packets, _bytes in served if flows)
            packet_lines.extend(packets for _flows, packets, _bytes in served if packets)
            byte_lines.extend(nbytes for _flows, _packets, nbytes in served if nbytes)
        chunks: list[str] = []
        for name, kind, help_text, lines in (
            ("ovs_vport_flows", "gauge", FLOWS_HELP, flow_lines),
            ("ovs_vport_flow_dropped_packets", "counter", DROPPED_PACKETS_HELP, packet_lines),
            ("ovs_vport_flow_dropped_bytes", "counter", DROPPED_BYTES_HELP, byte_lines),
            ("ovs_datapath_flow_dump_timestamp_seconds", "gauge", DUMP_TIMESTAMP_HELP, timestamp_lines),
            ("ovs_datapath_flow_dump_duration_seconds", "gauge", DUMP_DURATION_HELP, duration_lines),
            ("ovs_datapath_flow_dump_flows", "gauge", DUMP_FLOWS_HELP, listed_lines),
            ("ovs_datapath_flow_dumps_abandoned", "counter", ABANDONED_HELP, abandoned_lines),
        ):
            if lines:
                chunks.append(family_header(name, kind, help_text, fmt))
                chunks.append("".join(lines))
        chunks.extend(_worker_families(snapshot, fmt))
        duration = self._clock() - started
        netns_seen: Iterable[str | None] = snapshot.namespaces or {None: None}
        health = [Health(COLLECTOR, netns, netns in current, duration) for netns in netns_seen]
        return SourceReport(chunks, health)

    def close(self) -> None:
        """Stop the worker (its stdin closed, then SIGTERM, then SIGKILL) and the thread."""
        self._stop.set()
        with self._lock:
            process = self._process
        if process is not None:
            if process.stdin is not None:
                process.stdin.close()
            process.terminate()
            try:
                process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _samples(
    dp_labels: str,
    ports: Mapping[int, str],
    port_flows: Mapping[int, int] | None,
    drops: Mapping[tuple[int, str], tuple[tuple[str, int, int], ...]],
) -> dict[tuple[int, str], tuple[str, str, str]]:
    """Each port's sample lines: its megaflows (when the dump completed), its drop counters."""
    samples = {}
    for port_no, name in ports.items():
        labels = f'{dp_labels},port="{escape_label_value(name)}"'
        flows = "" if port_flows is None else f"ovs_vport_flows{{{labels}}} {port_flows.get(port_no, 0)}\n"
        counters = drops.get((port_no, name), ())
        packets = "".join(
            f'ovs_vport_flow_dropped_packets_total{{{labels},reason="{reason}"}} {n}\n'
            for reason, n, _b in counters
        )
        nbytes = "".join(
            f'ovs_vport_flow_dropped_bytes_total{{{labels},reason="{reason}"}} {b}\n'
            for reason, _n, b in counters
        )
        samples[(port_no, name)] = (flows, packets, nbytes)
    return samples


def _worker_families(snapshot: FlowSnapshot, fmt: Format) -> list[str]:
    chunks = []
    if snapshot.rss_bytes is not None:
        chunks.append(
            family_header("ovs_flow_worker_resident_memory_bytes", "gauge", WORKER_RSS_HELP, fmt)
            + f"ovs_flow_worker_resident_memory_bytes {snapshot.rss_bytes}\n"
        )
    if snapshot.peak_rss_bytes is not None:
        chunks.append(
            family_header("ovs_flow_worker_peak_resident_memory_bytes", "gauge", WORKER_PEAK_HELP, fmt)
            + f"ovs_flow_worker_peak_resident_memory_bytes {snapshot.peak_rss_bytes}\n"
        )
    chunks.append(
        family_header("ovs_flow_worker_restarts", "counter", RESTARTS_HELP, fmt)
        + f"ovs_flow_worker_restarts_total {snapshot.restarts}\n"
    )
    return chunks
