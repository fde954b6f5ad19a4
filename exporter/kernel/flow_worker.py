"""The flow table worker: a process of its own that dumps every datapath's flows and counts them.

``python -m exporter.kernel.flow_worker CONFIG`` (started by ``exporter.kernel.flows.FlowSource``,
never by hand). At 200,000 flows a dump is 40 MB of netlink messages and a second or more of
Python: in a thread of the exporter it would hold the GIL against the scrapes for that long
(docs/performance.md measures it). In a process of its own it costs the scrape nothing but a
share of the CPU, and it runs at the lowest priority (nice 19) so that even that goes to the
scrape first.

Every ``interval`` seconds (start to start) it reads, in the exporter's own network namespace and
in each collected one (sockets opened there, as the scrape's are):

1. the datapaths and each one's vports (``exporter.kernel.dumps.KernelSource``: port numbers
   and names, to attribute flows by ``OVS_KEY_ATTR_IN_PORT``);
2. each datapath's flow table, an ``OVS_FLOW_CMD_GET`` dump that leaves the masks out
   (``exporter.kernel.families.flow``), counted as it arrives into a ``FlowTally``. A dump that
   lists more than ``max_flows`` flows or runs longer than ``max_seconds`` is abandoned (its
   socket closed, which ends it in the kernel) and reported as such: nothing of it is used.

It only sends GET dumps and never joins a multicast group: with a member in the ``ovs_flow``
group the kernel would build a notification for every flow vswitchd installs or deletes.

Drop counters. For each drop flow (empty actions, or one explicit DROP) it keeps the packets and
bytes of the last complete dump, by the flow's identity (its UFID, or its key without one), and
reports per port and reason what grew since: a drop flow of either of the two dumps before counts
its growth since (all of it when its count went down: the flow was deleted and made again under
the same UFID); a flow in neither counts all its packets (it is new since); a flow that was there
but not as a drop flow (vswitchd changed its actions in place, keeping its counters) counts
nothing yet, since its packets so far were not dropped. Two dumps, not one, because a dump can
miss a flow while vswitchd changes the table under it. The first dump of a datapath after the
worker starts only takes this baseline. So no packet is counted twice, and what is counted is a
lower bound of what the drop flows matched (docs: what it cannot see). The state is bounded by
``max_flows``: the identities of the last two dumps' flows (sorted arrays, 8 bytes each) and
their drop flows' counts.

Each namespace's round is one JSON line on stdout (``WorkerReport``); the exporter reads them in a
thread and serves the latest. The worker exits when its stdin closes (the exporter is gone).
"""

from __future__ import annotations

import bisect
import errno
import json
import os
import select
import sys
import time
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from exporter import deadline
from exporter.kernel.dumps import DatapathDump, KernelSocket, KernelSource
from exporter.kernel.families.flow import OVS_FLOW_FAMILY, FlowTally, encode_flow_dump, scan_flows
from exporter.kernel.genl import describe_error, open_socket
from exporter.kernel.netlink import (
    NLMSG_DONE,
    NLMSG_ERROR,
    DecodeError,
    NetlinkError,
    error_code,
    iter_messages,
)
from exporter.kernel.netns import list_namespaces

#: The worker's CPU priority, the lowest of the normal scheduler: a scrape (and anything else) that
#: wants the CPU gets it first (docs/performance.md measures it).
NICENESS = 19

#: OVS's enum xlate_error (ofproto/ofproto-dpif-xlate.h, include/linux/openvswitch.h in OVS), the
#: code an explicit drop action carries, as OVS's own coverage counters name them
#: (``drop_action_<name>``, lib/odp-execute.c). A code missing here is reported as its number.
DROP_REASONS = {
    0: "of_pipeline",  # XLATE_OK: the OpenFlow pipeline dropped it (an ACL, a security group, no match)
    1: "bridge_not_found",
    2: "recursion_too_deep",
    3: "too_many_resubmit",
    4: "stack_too_deep",
    5: "no_recirculation_context",
    6: "recirculation_conflict",
    7: "too_many_mpls_labels",
    8: "invalid_tunnel_metadata",
    9: "unsupported_packet_type",
    10: "congestion",
    11: "forwarding_disabled",
    12: "tunnel_routing_failed",
    13: "tunnel_output_no_ethernet",
    14: "tunnel_neigh_cache_miss",
    15: "tunnel_header_build_failed",
}
#: The reason of a drop flow whose actions are empty: it carries no code.
UNSPECIFIED = "unspecified"


def reason_label(code: int | None) -> str:
    """The ``reason`` label of a drop flow: OVS's name for its code, ``unspecified``, or the number."""
    if code is None:
        return UNSPECIFIED
    return DROP_REASONS.get(code) or str(code)


@dataclass(frozen=True)
class WorkerConfig:
    """What the exporter tells its worker, as JSON on the command line."""

    interval: float
    max_flows: int
    max_seconds: float
    netlink_timeout: float
    netns_names: tuple[str, ...] = ()
    netns_all: bool = False

    def to_json(self) -> str:
        return json.dumps({**self.__dict__, "netns_names": list(self.netns_names)})

    @classmethod
    def from_json(cls, text: str) -> WorkerConfig:
        data = json.loads(text)
        return cls(**{**data, "netns_names": tuple(data["netns_names"])})


class FlowSocket(Protocol):
    """What a flow dump needs of a generic netlink socket (``exporter.kernel.genl.GenlSocket``)."""

    def family_id(self, name: str) -> int: ...

    def send(self, data: bytes) -> None: ...

    def recv(self) -> bytes: ...

    def close(self) -> None: ...


class DumpAbandonedError(Exception):
    """A flow dump went over its cap (flows or seconds): nothing of it is used."""


class Identities:
    """The identities of one dump's flows, 8 bytes each, sorted only if ever looked up.

    Most dumps never need it (only a drop flow that was not one in the last two dumps is looked
    up), and sorting 200,000 numbers costs a tenth of the dump's time.
    """

    __slots__ = ("_ids", "_sorted")

    def __init__(self, ids: Iterable[int] = ()) -> None:
        self._ids = array("Q", ids)
        self._sorted = False

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, identity: object) -> bool:
        if not self._sorted:
            self._ids = array("Q", sorted(self._ids))
            self._sorted = True
        if not isinstance(identity, int):
            return False
        at = bisect.bisect_left(self._ids, identity)
        return at < len(self._ids) and self._ids[at] == identity

    @property
    def nbytes(self) -> int:
        return self._ids.itemsize * len(self._ids)


@dataclass
class DropFlows:
    """What the worker keeps of one datapath's flow table between dumps (see the module's doc).

    The last two complete dumps: their drop flows' counts by identity, and every flow's identity
    (sorted, 8 bytes each). Two, not one, because a dump can miss a flow while the table changes
    under it: a flow seen again after one dump missed it is still known.
    """

    dp_ifindex: int
    drops: tuple[dict[int, tuple[int, int]], dict[int, tuple[int, int]]] = field(
        default_factory=lambda: ({}, {})
    )  # identity -> (packets, bytes), newest first
    seen: tuple[Identities, Identities] = field(default_factory=lambda: (Identities(), Identities()))
    baseline: bool = True  # the next complete dump only takes the baseline

    def account(self, tally: FlowTally) -> dict[tuple[int, int | None], list[int]]:
        """Take one complete dump: the packets and bytes its drop flows matched since the last one,
        per (port number, reason code). Every (port, reason) with a drop flow is there, 0 or not."""
        grown: dict[tuple[int, int | None], list[int]] = {}
        current: dict[int, tuple[int, int]] = {}
        last_drops, older_drops = self.drops
        for flow in tally.drops:
            counts = (flow.packets, flow.bytes)
            current[flow.identity] = counts
            last = last_drops.get(flow.identity) or older_drops.get(flow.identity)
            if self.baseline:
                packets = nbytes = 0
            elif last is not None:
                if flow.packets >= last[0] and flow.bytes >= last[1]:
                    packets, nbytes = flow.packets - last[0], flow.bytes - last[1]
                else:
                    packets, nbytes = counts  # made again under the same UFID since: all of it is new
            elif flow.identity in self.seen[0] or flow.identity in self.seen[1]:
                packets = nbytes = 0  # there before, not as a drop flow: what it matched was not dropped
            else:
                packets, nbytes = counts  # new since the last dump
            if flow.in_port is None:
                continue  # matches any port: no port to count it for
            entry = grown.setdefault((flow.in_port, flow.reason), [0, 0])
            entry[0] += packets
            entry[1] += nbytes
        self.drops = (current, last_drops)
        self.seen = (Identities(tally.identities), self.seen[0])
        self.baseline = False
        return grown


def dump_flows(
    sock: FlowSocket, family: int, dp_ifindex: int, seq: int, max_flows: int, max_seconds: float
) -> FlowTally:
    """One datapath's flow table, counted as the datagrams arrive.

    Raises DumpAbandonedError past ``max_flows`` listed or ``max_seconds``; NetlinkError (ENODEV: the
    datapath is gone), DecodeError, OSError as a dump does.
    """
    tally = FlowTally()
    started = time.monotonic()
    sock.send(encode_flow_dump(family, seq, dp_ifindex))
    while True:
        try:
            # The socket waits for a datagram at most until the cap (exporter.deadline).
            with deadline.within(started + max_seconds):
                buf = sock.recv()
        except deadline.DeadlineExceededError:
            raise DumpAbandonedError(
                f"still running after {max_seconds:g} s, {tally.flows} flows in"
                " (--collector.flows.max-seconds)"
            ) from None
        if not buf:
            raise DecodeError("netlink socket returned an empty datagram")
        pos = scan_flows(buf, 0, seq, family, tally)
        listed = tally.flows + tally.duplicates
        if listed > max_flows:
            raise DumpAbandonedError(f"more than {max_flows} flows (--collector.flows.max-flows)")
        if time.monotonic() - started > max_seconds:
            raise DumpAbandonedError(
                f"still running after {max_seconds:g} s, {listed} flows in (--collector.flows.max-seconds)"
            )
        if pos < len(buf):
            message = next(iter_messages(buf, pos))
            if message.type not in (NLMSG_DONE, NLMSG_ERROR):
                raise DecodeError(f"unexpected netlink message type {message.type} in a flow dump")
            code = error_code(buf, message)
            if code:
                raise NetlinkError(code, f"flow dump of dp_ifindex {dp_ifindex} failed: {os.strerror(code)}")
            if message.type == NLMSG_DONE:
                return tally


class NamespaceFlows:
    """The worker's side of one network namespace: its sockets and each datapath's drop flows."""

    def __init__(self, netns: str | None, opener: Callable[[], KernelSocket], config: WorkerConfig) -> None:
        self.netns = netns
        self._opener = opener
        self._config = config
        self._source = KernelSource(opener)
        self._flow_socket: KernelSocket | None = None
        self._seq = 0
        self._datapaths: dict[str, DropFlows] = {}

    def close(self) -> None:
        self._source.close()
        self._close_flow_socket()

    def _close_flow_socket(self) -> None:
        if self._flow_socket is not None:
            sock, self._flow_socket = self._flow_socket, None
            sock.close()

    def round(self, now: Callable[[], float] = time.time) -> dict[str, Any]:
        """Dump every datapath's vports and flows once: the report of this namespace's round."""
        report: dict[str, Any] = {"netns": self.netns, "error": None, "datapaths": []}
        try:
            dumps = self._source.collect()
            if self._flow_socket is None:
                self._flow_socket = self._opener()
            # Resolved every round: reloading the module can change the id.
            family = self._flow_socket.family_id(OVS_FLOW_FAMILY)
        except Exception as err:  # noqa: BLE001 - reported, never fatal: the next round starts over
            self._close_flow_socket()
            report["error"] = describe_error(err)
            return report
        present = {}
        for dump in dumps:
            entry = self._datapath(dump, family, now)
            if entry is not None:
                report["datapaths"].append(entry)
                present[dump.datapath.name] = dump.datapath.dp_ifindex
        # A datapath that is gone, or was made again (a new ifindex), starts over.
        self._datapaths = {
            name: state for name, state in self._datapaths.items() if present.get(name) == state.dp_ifindex
        }
        return report

    def _datapath(self, dump: DatapathDump, family: int, now: Callable[[], float]) -> dict[str, Any] | None:
        datapath = dump.datapath
        names = {vport.port_no: vport.name for vport in dump.vports}
        entry: dict[str, Any] = {
            "datapath": datapath.name,
            "dp_ifindex": datapath.dp_ifindex,
            "result": "complete",
            "error": None,
            "ports": sorted(names.items()),
        }
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        started_at, started = now(), time.monotonic()
        try:
            if self._flow_socket is None:
                self._flow_socket = self._opener()
            tally = dump_flows(
                self._flow_socket,
                family,
                datapath.dp_ifindex,
                self._seq,
                self._config.max_flows,
                self._config.max_seconds,
            )
        except DumpAbandonedError as err:
            # Closing the socket ends the dump in the kernel; the next round opens another.
            self._close_flow_socket()
            entry.update(result="abandoned", error=str(err))
            return entry
        except Exception as err:  # noqa: BLE001 - reported per datapath
            if isinstance(err, NetlinkError) and err.errno == errno.ENODEV:
                return None  # deleted since the datapath dump: not an error
            self._close_flow_socket()
            entry.update(result="failed", error=describe_error(err))
            return entry
        state = self._datapaths.get(datapath.name)
        if state is None or state.dp_ifindex != datapath.dp_ifindex:
            state = self._datapaths[datapath.name] = DropFlows(datapath.dp_ifindex)
        grown = state.account(tally)
        entry.update(
            started=started_at,
            duration=time.monotonic() - started,
            flows=tally.flows,
            duplicates=tally.duplicates,
            port_flows=sorted((port, n) for port, n in tally.flows_by_port.items() if port in names),
            drops=sorted(
                (port, names[port], reason_label(code), counts[0], counts[1])
                for (port, code), counts in grown.items()
                if port in names
            ),
        )
        return entry


def memory(status: str = "/proc/self/status") -> dict[str, int]:
    """The worker's resident memory now and at its peak, in bytes (VmRSS and VmHWM).

    Not getrusage's ru_maxrss: that keeps the exporter's own peak, inherited through the fork
    before the worker's exec.
    """
    values = {}
    with open(status) as lines:
        for line in lines:
            name, _colon, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) * 1024  # in kB
    return {"rss_bytes": values["VmRSS"], "peak_rss_bytes": values["VmHWM"]}


class Worker:
    """The worker's loop: a round in every namespace each interval, a report line per namespace."""

    def __init__(
        self,
        config: WorkerConfig,
        open_in: Callable[[str | None], KernelSocket],
        discover: Callable[[], list[str]] = list_namespaces,
    ) -> None:
        self._config = config
        self._open_in = open_in
        self._discover = discover
        self._namespaces: dict[str | None, NamespaceFlows] = {}

    def wanted(self) -> list[str | None]:
        names = set(self._config.netns_names)
        if self._config.netns_all:
            names |= set(self._discover())
        return [None, *sorted(names)]

    def rounds(self) -> Iterable[dict[str, Any]]:
        """One round in every namespace: each one's report."""
        wanted = self.wanted()
        for gone in [ns for ns in self._namespaces if ns not in wanted]:
            self._namespaces.pop(gone).close()
        for netns in wanted:
            flows = self._namespaces.get(netns)
            if flows is None:
                flows = self._namespaces[netns] = NamespaceFlows(netns, self._opener(netns), self._config)
            report = flows.round()
            if report["error"] is not None:
                # Start that namespace over next time (it may have been deleted and made again).
                self._namespaces.pop(netns).close()
            yield {**report, **memory()}

    def _opener(self, netns: str | None) -> Callable[[], KernelSocket]:
        return lambda: self._open_in(netns)

    def close(self) -> None:
        for flows in self._namespaces.values():
            flows.close()
        self._namespaces.clear()

    def run(self, out: IO[str], stop: Callable[[float], bool]) -> None:
        """Rounds until ``stop(seconds)`` (which waits at most that long) says to stop."""
        while True:
            started = time.monotonic()
            for report in self.rounds():
                out.write(json.dumps(report, separators=(",", ":")) + "\n")
                out.flush()
            if stop(max(0.0, started + self._config.interval - time.monotonic())):
                return


def _stdin_closed(seconds: float) -> bool:
    """Wait up to ``seconds``; True once the exporter closed our stdin (it stopped, or died)."""
    readable, _w, _x = select.select([sys.stdin], [], [], seconds)
    return bool(readable) and not os.read(sys.stdin.fileno(), 4096)


def serve(worker: Worker) -> None:
    """Run ``worker`` as the exporter's child: at a lower priority, until the exporter is gone."""
    os.nice(NICENESS)
    try:
        worker.run(sys.stdout, _stdin_closed)
    except BrokenPipeError:
        pass  # the exporter is gone
    finally:
        worker.close()


def main(argv: Sequence[str]) -> int:
    config = WorkerConfig.from_json(argv[0])
    serve(Worker(config, lambda netns: open_socket(config.netlink_timeout, netns)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
