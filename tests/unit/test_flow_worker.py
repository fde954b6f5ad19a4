"""The flow dump worker: its rounds over a fake kernel, the drop counters' rules, the cap, and the
real worker process on this host (which has no openvswitch module)."""

from __future__ import annotations

import io
import json
import os
import select
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exporter.kernel.families.flow import Flow, FlowTally
from exporter.kernel.flow_worker import (
    DROP_REASONS,
    DropFlows,
    DumpAbandonedError,
    NamespaceFlows,
    Worker,
    WorkerConfig,
    dump_flows,
    reason_label,
)
from exporter.kernel.netlink import NetlinkError
from tests import flow_messages as fm
from tests.flow_messages import FakeFlow, FakeFlowKernel, drop_action
from tests.ovs_messages import FakeDatapath, FakeVport

ROOT = Path(__file__).resolve().parents[2]
CONFIG = WorkerConfig(interval=5, max_flows=1000, max_seconds=30, netlink_timeout=5)


def tally_of(*flows: Flow, others: tuple[int, ...] = ()) -> FlowTally:
    tally = FlowTally()
    for flow in flows:
        tally.add(flow)
    tally.identities.update(others)
    return tally


def drop(identity: int, packets: int, nbytes: int, port: int | None = 3, reason: int | None = None) -> Flow:
    return Flow(identity, port, 0, True, reason, packets, nbytes)


def test_the_first_dump_is_a_baseline_then_growth_is_counted() -> None:
    state = DropFlows(5)
    assert state.account(tally_of(drop(1, 100, 1000), drop(2, 5, 50, reason=0))) == {
        (3, None): [0, 0],
        (3, 0): [0, 0],
    }
    assert state.account(tally_of(drop(1, 130, 1300), drop(2, 5, 50, reason=0))) == {
        (3, None): [30, 300],
        (3, 0): [0, 0],
    }


def test_a_new_drop_flow_counts_all_its_packets() -> None:
    state = DropFlows(5)
    state.account(tally_of(drop(1, 1, 10)))
    assert state.account(tally_of(drop(1, 1, 10), drop(2, 7, 70, port=4))) == {
        (3, None): [0, 0],
        (4, None): [7, 70],
    }


def test_a_flow_made_again_under_the_same_ufid_counts_from_zero() -> None:
    state = DropFlows(5)
    state.account(tally_of(drop(1, 100, 1000)))
    # Deleted and installed again since: its counts went down, all of them are new.
    assert state.account(tally_of(drop(1, 40, 400))) == {(3, None): [40, 400]}
    assert state.account(tally_of(drop(1, 45, 450))) == {(3, None): [5, 50]}


def test_a_flow_that_became_a_drop_flow_starts_from_a_baseline() -> None:
    """vswitchd changes a flow's actions in place and keeps its counters: what it forwarded before
    is not dropped, so nothing is counted until the next dump."""
    state = DropFlows(5)
    state.account(tally_of(others=(9,)))  # flow 9 forwards
    assert state.account(tally_of(drop(9, 5000, 500000))) == {(3, None): [0, 0]}
    assert state.account(tally_of(drop(9, 5003, 500300))) == {(3, None): [3, 300]}


def test_a_drop_flow_a_dump_missed_is_not_counted_twice() -> None:
    state = DropFlows(5)
    state.account(tally_of(drop(1, 100, 1000)))
    state.account(tally_of())  # the dump walked past it while the table changed
    assert state.account(tally_of(drop(1, 120, 1200))) == {(3, None): [20, 200]}
    assert state.account(tally_of(drop(1, 121, 1210))) == {(3, None): [1, 10]}


def test_a_flow_that_turned_into_a_drop_flow_while_a_dump_missed_it_counts_nothing_yet() -> None:
    state = DropFlows(5)
    state.account(tally_of(others=(9,)))
    state.account(tally_of())
    assert state.account(tally_of(drop(9, 700, 7000))) == {(3, None): [0, 0]}


def test_a_drop_flow_without_an_input_port_is_kept_but_not_counted() -> None:
    state = DropFlows(5)
    state.account(tally_of(drop(1, 1, 1, port=None)))
    assert state.account(tally_of(drop(1, 5, 5, port=None))) == {}
    assert state.drops[0] == {1: (5, 5)}


def test_what_is_kept_is_bounded_by_the_last_two_dumps() -> None:
    state = DropFlows(5)
    for n in range(5):
        state.account(tally_of(drop(100 + n, 1, 1), others=tuple(range(n * 10, n * 10 + 10))))
    assert [list(d) for d in state.drops] == [[104], [103]]
    assert len(state.seen[0]) == len(state.seen[1]) == 11 and state.seen[0].nbytes == 88
    assert all(n in state.seen[0] for n in (*range(40, 50), 104)) and 39 not in state.seen[0]
    assert all(n in state.seen[1] for n in (*range(30, 40), 103)) and 104 not in state.seen[1]


def test_reason_labels_are_ovs_names_unspecified_or_the_number() -> None:
    assert reason_label(None) == "unspecified"
    assert reason_label(0) == "of_pipeline"
    assert reason_label(10) == "congestion"
    assert reason_label(99) == "99"
    assert len(DROP_REASONS) == 16 and len(set(DROP_REASONS.values())) == 16


def kernel(flows: list[FakeFlow], **kwargs: object) -> FakeFlowKernel:
    dp = FakeDatapath(
        "ovs-system",
        5,
        vports=[FakeVport(0, "ovs-system", type=2), FakeVport(3, "tap-a"), FakeVport(4, "tap-b")],
    )
    return FakeFlowKernel([dp], {5: flows}, **kwargs)  # type: ignore[arg-type]


def test_dump_flows_reads_to_done_and_the_cap_abandons() -> None:
    flows = [FakeFlow(in_port=3, ufid=fm.ufid(n)) for n in range(300)]
    sock = kernel(flows, flow_datagram_size=4096)
    tally = dump_flows(sock, fm.FLOW_FAMILY_ID, 5, 1, max_flows=300, max_seconds=30)
    assert tally.flows == 300 and tally.flows_by_port == {3: 300}
    with pytest.raises(DumpAbandonedError, match="more than 299 flows"):
        dump_flows(sock, fm.FLOW_FAMILY_ID, 5, 2, max_flows=299, max_seconds=30)
    sock.before_each_datagram = lambda: time.sleep(0.02)
    with pytest.raises(DumpAbandonedError, match=r"still running after 0.01 s, \d+ flows in"):
        dump_flows(sock, fm.FLOW_FAMILY_ID, 5, 3, max_flows=1000, max_seconds=0.01)
    with pytest.raises(NetlinkError, match="No such device"):
        dump_flows(sock, fm.FLOW_FAMILY_ID, 6, 4, max_flows=1000, max_seconds=30)


def rounds_of(sock: FakeFlowKernel, config: WorkerConfig = CONFIG) -> NamespaceFlows:
    return NamespaceFlows(None, lambda: sock, config)


def test_a_round_names_ports_counts_flows_and_drops() -> None:
    blocked = FakeFlow(in_port=4, ufid=fm.ufid(2), actions=[], packets=10, nbytes=1000)
    explicit = FakeFlow(in_port=4, ufid=fm.ufid(3), actions=drop_action(0), packets=1, nbytes=60)
    flows = [
        FakeFlow(in_port=3, ufid=fm.ufid(1)),
        blocked,
        explicit,
        FakeFlow(in_port=3, ufid=fm.ufid(4), recirc_id=7),
    ]
    sock = kernel(flows)
    namespace = rounds_of(sock)
    first = namespace.round(now=lambda: 1000.0)
    (dp,) = first["datapaths"]
    assert first["error"] is None
    assert (dp["datapath"], dp["dp_ifindex"], dp["result"], dp["flows"]) == ("ovs-system", 5, "complete", 4)
    assert dp["ports"] == [(0, "ovs-system"), (3, "tap-a"), (4, "tap-b")]
    assert dp["port_flows"] == [(3, 1), (4, 2)]  # recirculated flows are not counted again
    assert dp["drops"] == [(4, "tap-b", "of_pipeline", 0, 0), (4, "tap-b", "unspecified", 0, 0)]
    assert dp["started"] == 1000.0 and dp["duration"] >= 0

    blocked.packets, blocked.nbytes = 25, 2500
    explicit.packets, explicit.nbytes = 3, 180
    second = namespace.round()
    assert second["datapaths"][0]["drops"] == [
        (4, "tap-b", "of_pipeline", 2, 120),
        (4, "tap-b", "unspecified", 15, 1500),
    ]
    # Nothing but GET dumps, and no multicast group joined (FakeFlowKernel fails either).
    assert len(sock.flow_requests) == 2


def test_an_abandoned_dump_is_reported_and_the_next_round_opens_a_new_socket() -> None:
    flows = [FakeFlow(in_port=3, ufid=fm.ufid(n)) for n in range(50)]
    opened: list[FakeFlowKernel] = []

    def opener() -> FakeFlowKernel:
        opened.append(kernel(flows, flow_datagram_size=1024))
        return opened[-1]

    namespace = NamespaceFlows(
        None, opener, WorkerConfig(interval=5, max_flows=10, max_seconds=30, netlink_timeout=5)
    )
    (dp,) = namespace.round()["datapaths"]
    assert dp["result"] == "abandoned" and "more than 10 flows" in dp["error"] and "flows" not in dp
    flow_sockets = [sock for sock in opened if sock.flow_requests]
    assert flow_sockets[0].closed  # closing it ends the dump in the kernel
    namespace.round()
    assert len([sock for sock in opened if sock.flow_requests]) == 2


def test_a_datapath_deleted_between_the_dumps_is_left_out() -> None:
    sock = kernel([])
    sock.flows = {}  # the flow dump answers ENODEV
    assert rounds_of(sock).round()["datapaths"] == []


def test_without_the_module_the_round_reports_why() -> None:
    sock = FakeFlowKernel([], families={})
    report = rounds_of(sock).round()
    assert (
        report["datapaths"] == [] and "not found: is the openvswitch kernel module loaded?" in report["error"]
    )


def test_a_datapath_made_again_starts_its_drop_flows_over() -> None:
    flow = FakeFlow(in_port=3, ufid=fm.ufid(1), actions=[], packets=10, nbytes=10)
    sock = kernel([flow])
    namespace = rounds_of(sock)
    namespace.round()
    sock.datapaths[0].dp_ifindex = 8
    sock.flows = {8: [flow]}
    flow.packets, flow.nbytes = 12, 12
    # A new datapath: its first dump is a baseline again.
    assert namespace.round()["datapaths"][0]["drops"] == [(3, "tap-a", "unspecified", 0, 0)]


def test_the_worker_reports_each_namespace_with_its_memory() -> None:
    sockets = {None: kernel([]), "blue": kernel([FakeFlow(in_port=4, ufid=fm.ufid(1))])}
    worker = Worker(
        WorkerConfig(interval=0.01, max_flows=10, max_seconds=5, netlink_timeout=5, netns_names=("blue",)),
        lambda netns: sockets[netns],
    )
    out = io.StringIO()
    stops = iter([False, True])
    worker.run(out, lambda seconds: next(stops))
    reports = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["netns"] for r in reports] == [None, "blue", None, "blue"]
    assert reports[1]["datapaths"][0]["port_flows"] == [[4, 1]]
    assert all(r["rss_bytes"] > 1 << 20 and r["peak_rss_bytes"] >= r["rss_bytes"] // 2 for r in reports)


def test_a_namespace_that_fails_is_opened_again_next_round() -> None:
    attempts: list[str | None] = []

    def open_in(netns: str | None) -> FakeFlowKernel:
        attempts.append(netns)
        if netns == "gone":
            raise FileNotFoundError(2, "No such file or directory")
        return kernel([])

    worker = Worker(
        WorkerConfig(interval=1, max_flows=10, max_seconds=5, netlink_timeout=5, netns_names=("gone",)),
        open_in,
    )
    first = list(worker.rounds())
    assert [r["error"] is None for r in first] == [True, False]
    list(worker.rounds())
    assert attempts.count("gone") == 2


def test_the_worker_process_reports_and_exits_when_its_stdin_closes() -> None:
    """The real ``python -m exporter.kernel.flow_worker``: here, without the openvswitch module,
    its round reports why, and it leaves as soon as the exporter closes its stdin."""
    config = WorkerConfig(interval=0.5, max_flows=10, max_seconds=5, netlink_timeout=1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter.kernel.flow_worker", config.to_json()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        ready, _w, _x = select.select([proc.stdout], [], [], 60)
        assert ready, "no report from the worker within 60 s"
        report = json.loads(proc.stdout.readline())
        assert report["netns"] is None and report["datapaths"] == []
        assert "ovs_datapath not found" in report["error"] or "No such file" in report["error"]
        assert os.getpriority(os.PRIO_PROCESS, proc.pid) >= 10
        proc.stdin.close()
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
        proc.wait()


def test_the_config_travels_as_json() -> None:
    config = WorkerConfig(
        interval=2.5, max_flows=7, max_seconds=3, netlink_timeout=4, netns_names=("a", "b"), netns_all=True
    )
    assert WorkerConfig.from_json(config.to_json()) == config
    assert struct.calcsize("=Q") == 8  # identities fit the arrays the worker keeps
