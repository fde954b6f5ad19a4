"""The flow table collector on a real kernel: hand-built flows, counted by the exporter and by an
independent dump of the same table (``tests.kernel.ovsflow``) just before and just after.

A datapath ``ovs-fl`` with two veth ports whose peers sit in namespaces (so their packets enter
the datapath), and a datapath ``ovs-fx`` inside another namespace (``--collector.netns``). Flows
are installed over netlink, with and without a UFID; drop flows with empty actions and, on
kernels that have it (6.12, not 6.1), the explicit drop action with several OVS error codes.
The exporter runs with ``--collector.flows.interval 1``; every check waits for a dump that
started after the change it looks for (the dump's timestamp minus its duration).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from exporter.kernel.flow_worker import NamespaceFlows, WorkerConfig
from exporter.kernel.genl import GenlSocket
from exporter.kernel.netlink import NLM_F_DUMP, NLM_F_REQUEST, NLMSGHDR, OVS_CMD_GET

from .conftest import kernel_at_least
from .netns import in_netns
from .ovsflow import FlowInfo, FlowTable, drop, ipv4_match, output, per_port
from .ovsnl import VPORT_INTERNAL, OvsNetlink
from .procs import Exporter, make_traversable
from .promtext import Scrape
from .topology import Topology, ip_batch, sh

DP = "ovs-fl"
NS_DP = "ovs-fx"
NETNS = ("ovsns-f0", "ovsns-f1")
OTHER_NETNS = "ovsns-fx"
SUBNETS = ("198.18.40", "198.18.41")
#: OVS_ACTION_ATTR_DROP exists since Linux 6.4; Debian 12's 6.1 kernel refuses it (EINVAL).
HAS_EXPLICIT_DROP = kernel_at_least(6, 4)
NOBODY = 65534


@dataclass
class FlowHost:
    nl: OvsNetlink
    flows: FlowTable
    dp_ifindex: int
    other_nl: OvsNetlink  # a socket in OTHER_NETNS
    other_flows: FlowTable
    other_ifindex: int
    exporter: Exporter
    senders: tuple[socket.socket, socket.socket]  # UDP sockets inside each port's namespace

    def send(self, port: int, host: int, count: int, size: int = 100) -> None:
        """``count`` UDP packets from port ``port``'s namespace to SUBNET.``host`` (no ARP: static)."""
        for _ in range(count):
            self.senders[port - 1].sendto(b"x" * size, (f"{SUBNETS[port - 1]}.{host}", 9))


@pytest.fixture(scope="module")
def host(nl: OvsNetlink, results_dir: Path) -> Iterator[FlowHost]:
    topo = Topology(nl)
    other: OvsNetlink | None = None
    exporter: Exporter | None = None
    senders: list[socket.socket] = []
    try:
        dp_ifindex = topo.add_datapath(DP)
        for i, (netns, subnet) in enumerate(zip(NETNS, SUBNETS, strict=True)):
            topo.add_netns(netns)
            topo.add_veth(DP, f"vf{i}")  # port i + 1
            ip_batch([f"link set vf{i}p netns {netns}"])
            ip_batch(
                [f"link set vf{i}p up", f"addr add {subnet}.2/24 dev vf{i}p"]
                + [
                    f"neigh add {subnet}.{h} lladdr 02:00:00:00:{i:02x}:{h:02x} dev vf{i}p"
                    for h in range(100, 120)
                ],
                netns=netns,
            )
            sh("ip", "netns", "exec", netns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            with in_netns(netns):
                senders.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        topo.add_netns(OTHER_NETNS)
        with in_netns(OTHER_NETNS):
            other = OvsNetlink()
        other_ifindex = other.new_datapath(NS_DP)
        other.new_vport(other_ifindex, "ifx0", VPORT_INTERNAL)
        exporter = Exporter(
            19320,
            results_dir,
            name="exporter-flows",
            args=("--collector.flows", "--collector.flows.interval", "1", "--collector.netns", OTHER_NETNS),
        )
        yield FlowHost(
            nl,
            FlowTable(nl),
            dp_ifindex,
            other,
            FlowTable(other),
            other_ifindex,
            exporter,
            (senders[0], senders[1]),
        )
    finally:
        if exporter is not None:
            exporter.stop()
        for sender in senders:
            sender.close()
        if other is not None:
            with suppress(OSError):
                other.del_datapath(NS_DP)
            other.close()
        topo.teardown()


def scrape_after(host: FlowHost, started_after: float, datapath: str = DP, **netns: str) -> Scrape:
    """The first scrape whose last complete dump of ``datapath`` started after ``started_after``
    (Unix time): it saw every change made before then."""
    deadline = time.monotonic() + 90
    while True:
        scrape = host.exporter.scrape()
        ended = scrape.value("ovs_datapath_flow_dump_timestamp_seconds", **netns, datapath=datapath)
        took = scrape.value("ovs_datapath_flow_dump_duration_seconds", **netns, datapath=datapath)
        if ended is not None and took is not None and ended - took > started_after:
            return scrape
        if time.monotonic() > deadline:
            raise AssertionError(f"no dump of {datapath} started after {started_after} within 90 s")
        time.sleep(0.3)


def dropped(scrape: Scrape, port: str, reason: str, what: str = "packets") -> float:
    value = scrape.value(f"ovs_vport_flow_dropped_{what}_total", datapath=DP, port=port, reason=reason)
    return 0.0 if value is None else value


def worker_pid(exporter: Exporter) -> int:
    """The flow dump worker: the exporter's only child process."""
    children = []
    for task in Path(f"/proc/{exporter.pid}/task").iterdir():
        children += (task / "children").read_text().split()
    (pid,) = children
    return int(pid)


@contextmanager
def worker_stopped(exporter: Exporter) -> Iterator[None]:
    """The worker frozen (SIGSTOP): no dump sees what the body does until it goes on."""
    pid = worker_pid(exporter)
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_flows_per_port_equal_an_independent_count_before_and_after(host: FlowHost) -> None:
    table: list[tuple[bytes, bytes, bytes, bytes | None]] = []
    for n in range(30):  # port 1, with UFIDs, forwarding to port 2
        table.append((*ipv4_match(1, f"10.1.0.{n}"), output(2), bytes([1, n]) * 8))
    for n in range(6):  # port 1, a later pass after a recirculation: not counted again
        table.append((*ipv4_match(1, f"10.2.0.{n}", recirc_id=7), output(2), bytes([2, n]) * 8))
    for n in range(12):  # port 2, without UFIDs (their key identifies them)
        table.append((*ipv4_match(2, f"10.3.0.{n}"), output(1), None))
    table.append((*ipv4_match(None, "10.4.0.1"), b"", None))  # any port, no UFID: no port to count
    host.flows.new_many(host.dp_ifindex, ((key, actions, mask, ufid) for key, mask, actions, ufid in table))
    other_table = (ipv4_match(1, f"10.5.0.{n}") for n in range(4))
    host.other_flows.new_many(host.other_ifindex, ((key, b"", mask, None) for key, mask in other_table))
    installed = time.time()
    scrape_after(host, installed)
    scrape_after(host, installed, NS_DP, netns=OTHER_NETNS)

    before = host.flows.flows(host.dp_ifindex)
    before_other = host.other_flows.flows(host.other_ifindex)
    scrape = host.exporter.scrape()
    after = host.flows.flows(host.dp_ifindex)
    after_other = host.other_flows.flows(host.other_ifindex)
    assert per_port(before) == per_port(after) and per_port(before_other) == per_port(after_other)

    counts = per_port(before)
    assert counts == {1: 30, 2: 12}
    served = {
        port: scrape.value("ovs_vport_flows", datapath=DP, port=name)
        for port, name in ((0, DP), (1, "vf0"), (2, "vf1"))
    }
    assert served == {0: 0, 1: 30, 2: 12}
    assert scrape.value("ovs_datapath_flow_dump_flows", datapath=DP) == len(before) == 49
    assert scrape.value("ovs_datapath_flows", datapath=DP) == len(before)
    other = {"netns": OTHER_NETNS, "datapath": NS_DP}
    assert scrape.value("ovs_vport_flows", **other, port="ifx0") == per_port(before_other)[1] == 4
    assert scrape.value("ovs_scrape_collector_success", collector="flows") == 1
    assert scrape.value("ovs_scrape_collector_success", collector="flows", netns=OTHER_NETNS) == 1
    assert scrape.value("ovs_datapath_flow_dumps_abandoned_total", datapath=DP) == 0
    assert not scrape.duplicates()


def test_a_wildcarded_input_port_is_reported_as_the_kernel_keys_it(host: FlowHost) -> None:
    """A flow installed with a UFID whose mask wildcards the input port: the kernel's reply carries
    its masked key, whose IN_PORT is then 0, the datapath's local port. vswitchd never makes
    one (it always matches the input port); the docs say what a hand-made one shows."""
    key, mask = ipv4_match(None, "10.6.0.1")
    host.flows.new(host.dp_ifindex, key, b"", mask, ufid=b"\x06" * 16)
    (flow,) = [f for f in host.flows.flows(host.dp_ifindex) if f.ufid == b"\x06" * 16]
    scrape = scrape_after(host, time.time())
    assert flow.in_port == 0
    assert scrape.value("ovs_vport_flows", datapath=DP, port=DP) == 1
    host.flows.delete(host.dp_ifindex, ufid=b"\x06" * 16)


#: Drop flows of the reasons test: destination host -> (actions, UFID, label of its reason)
DROPS: dict[int, tuple[bytes, bytes | None, str]] = {
    100: (b"", None, "unspecified"),
    101: (drop(0), b"\x65" * 16, "of_pipeline"),
    102: (drop(3), b"\x66" * 16, "too_many_resubmit"),
    103: (drop(11), b"\x67" * 16, "forwarding_disabled"),
    104: (drop(99), b"\x68" * 16, "99"),
}
SENT = {100: 5, 101: 7, 102: 3, 103: 2, 104: 4}


def test_drop_flows_count_the_packets_they_matched_by_reason(host: FlowHost) -> None:
    made = []
    for dst, (actions, ufid, _label) in DROPS.items():
        key, mask = ipv4_match(1, f"{SUBNETS[0]}.{dst}")
        try:
            host.flows.new(host.dp_ifindex, key, actions, mask, ufid=ufid)
            made.append(dst)
        except OSError as err:
            assert not HAS_EXPLICIT_DROP and actions and err.errno == errno.EINVAL, err
    assert made == (list(DROPS) if HAS_EXPLICIT_DROP else [100])
    key, mask = ipv4_match(1, f"{SUBNETS[0]}.110")
    host.flows.new(host.dp_ifindex, key, output(2), mask, ufid=b"\x6e" * 16)  # forwards: no drop
    key, mask = ipv4_match(2, f"{SUBNETS[1]}.100")
    host.flows.new(host.dp_ifindex, key, b"", mask)  # port 2's own drop flow, no traffic
    baseline = scrape_after(host, time.time())

    before = {f.ufid or b"": f for f in host.flows.flows(host.dp_ifindex)}
    for dst in made:
        host.send(1, dst, SENT[dst])
    host.send(1, 110, 6)
    sent = time.time()
    kernel = wait_for_packets(host, {dst: SENT[dst] for dst in made})
    scrape = scrape_after(host, sent)
    after = {f.ufid or b"": f for f in host.flows.flows(host.dp_ifindex)}

    for dst in made:
        actions, ufid, label = DROPS[dst]
        grew = dropped(scrape, "vf0", label) - dropped(baseline, "vf0", label)
        assert grew == SENT[dst] == kernel[dst].packets, label
        byte_growth = dropped(scrape, "vf0", label, "bytes") - dropped(baseline, "vf0", label, "bytes")
        assert byte_growth == kernel[dst].bytes == SENT[dst] * (14 + 20 + 8 + 100), label
    reasons = {
        dict(labels)["reason"]
        for name, labels, _v in scrape.samples
        if name == "ovs_vport_flow_dropped_packets_total" and ("port", "vf0") in labels
    }
    assert reasons == {DROPS[dst][2] for dst in made}  # the forwarding flow adds no reason
    assert after[b"\x6e" * 16].packets == 6
    # Nothing else's drop counters moved: port 2 has its drop flow, and no traffic.
    assert dropped(scrape, "vf1", "unspecified") == dropped(baseline, "vf1", "unspecified") == 0
    assert (
        scrape.value("ovs_vport_flow_dropped_packets_total", datapath=DP, port="vf1", reason="unspecified")
        == 0
    )
    assert before.keys() <= after.keys()


def wait_for_packets(host: FlowHost, want: dict[int, int]) -> dict[int, FlowInfo]:
    """The drop flows of ``want``'s destinations once the kernel counted that many packets each."""
    deadline = time.monotonic() + 30
    while True:
        flows = host.flows.flows(host.dp_ifindex)
        by_dst = {}
        for flow in flows:
            if flow.in_port == 1 and flow.drop_reason is not None:
                dst = flow.key.get(7, b"\0" * 8)[7]  # OVS_KEY_ATTR_IPV4: ipv4_dst's last byte
                by_dst[dst] = flow
        if all(dst in by_dst and by_dst[dst].packets >= n for dst, n in want.items()):
            return by_dst
        if time.monotonic() > deadline:
            raise AssertionError(f"the kernel counted {by_dst} for {want}")
        time.sleep(0.2)


def test_churned_drop_flows_never_go_back_and_the_bound_is_what_no_dump_saw(host: FlowHost) -> None:
    """Counted = sent - the packets a flow matched after the last dump that saw it, before it was
    deleted: shown step by step, with the worker frozen while the table changes."""
    ufid = b"\x69" * 16
    key, mask = ipv4_match(1, f"{SUBNETS[0]}.105")
    table = host.flows
    table.new(host.dp_ifindex, key, b"", mask, ufid=ufid)
    start = dropped(scrape_after(host, time.time()), "vf0", "unspecified")
    seen: list[float] = []

    def counted(after: float) -> float:
        value = dropped(scrape_after(host, after), "vf0", "unspecified") - start
        assert not seen or value >= seen[-1], f"the counter went back: {seen} then {value}"
        seen.append(value)
        return value

    host.send(1, 105, 10)
    assert counted(time.time()) == 10
    with worker_stopped(host.exporter):
        # Deleted and made again under the same UFID between two dumps, with fewer packets.
        table.delete(host.dp_ifindex, ufid=ufid)
        table.new(host.dp_ifindex, key, b"", mask, ufid=ufid)
        host.send(1, 105, 3)
        resumed = time.time()
    assert counted(resumed) == 13
    with worker_stopped(host.exporter):
        host.send(1, 105, 5)  # matched, then the flow goes before any dump sees them
        table.delete(host.dp_ifindex, ufid=ufid)
        resumed = time.time()
    assert counted(resumed) == 13  # the bound: 18 sent, 5 of them unseen by any dump
    table.new(host.dp_ifindex, key, b"", mask, ufid=ufid)
    host.send(1, 105, 2)
    assert counted(time.time()) == 15  # made again after a dump saw it gone: counted whole


def test_a_restarted_worker_starts_from_a_baseline_and_counters_keep_going(host: FlowHost) -> None:
    ufid = b"\x6a" * 16
    key, mask = ipv4_match(1, f"{SUBNETS[0]}.106")
    host.flows.new(host.dp_ifindex, key, b"", mask, ufid=ufid)
    first = scrape_after(host, time.time())
    host.send(1, 106, 4)
    counted = dropped(scrape_after(host, time.time()), "vf0", "unspecified")
    assert counted == dropped(first, "vf0", "unspecified") + 4
    restarts = host.exporter.scrape().value("ovs_flow_worker_restarts_total")
    assert restarts is not None
    old = worker_pid(host.exporter)
    os.kill(old, signal.SIGSTOP)
    host.send(1, 106, 9)  # matched while no worker reads: the next worker's baseline takes them
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while worker_pid_or_none(host.exporter) in (None, old):
        assert time.monotonic() < deadline, "the worker was not restarted"
        time.sleep(0.2)
    restarted = time.time()
    after_restart = scrape_after(host, restarted)
    assert after_restart.value("ovs_flow_worker_restarts_total") == restarts + 1
    assert dropped(after_restart, "vf0", "unspecified") == counted  # kept, and nothing counted twice
    host.send(1, 106, 2)
    assert dropped(scrape_after(host, time.time()), "vf0", "unspecified") == counted + 2
    log = host.exporter.log.read_text()
    assert log.count('msg="the flow dump worker exited with status -9"') == 1


def worker_pid_or_none(exporter: Exporter) -> int | None:
    try:
        return worker_pid(exporter)
    except ValueError:
        return None


def test_over_the_cap_a_dump_is_abandoned_and_nothing_of_it_is_served(
    host: FlowHost, results_dir: Path
) -> None:
    listed = len(host.flows.flows(host.dp_ifindex))
    assert listed > 20
    capped = Exporter(
        19321,
        results_dir,
        name="exporter-flows-capped",
        args=("--collector.flows", "--collector.flows.interval", "1", "--collector.flows.max-flows", "20"),
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            scrape = capped.scrape()
            abandoned = scrape.value("ovs_datapath_flow_dumps_abandoned_total", datapath=DP) or 0
            if abandoned >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert abandoned >= 2
        assert scrape.value("ovs_scrape_collector_success", collector="flows") == 0
        assert scrape.value("ovs_vport_flows", datapath=DP, port="vf0") is None
        assert scrape.value("ovs_datapath_flow_dump_flows", datapath=DP) is None  # never complete
        log = capped.log.read_text()
        assert log.count("more than 20 flows (--collector.flows.max-flows)") == 1
    finally:
        capped.stop()


class RecordingSocket(GenlSocket):
    """The real socket, every request and every multicast join recorded."""

    sent: ClassVar[list[bytes]] = []
    joined: ClassVar[list[int]] = []

    def send(self, data: bytes) -> None:
        RecordingSocket.sent.append(data)
        super().send(data)

    def join(self, group: int) -> None:
        RecordingSocket.joined.append(group)
        super().join(group)


def test_the_worker_only_sends_get_dumps_to_the_real_kernel(host: FlowHost) -> None:
    before = sorted((f.ufid or b"", f.packets) for f in host.flows.flows(host.dp_ifindex))
    config = WorkerConfig(interval=1, max_flows=1000, max_seconds=30, netlink_timeout=5)
    rounds = NamespaceFlows(None, lambda: RecordingSocket(5), config)
    try:
        report = rounds.round()
        rounds.round()
    finally:
        rounds.close()
    assert report["error"] is None and DP in {dp["datapath"] for dp in report["datapaths"]}
    families = {host.nl.family(name): name for name in ("ovs_datapath", "ovs_vport", "ovs_flow")}
    kinds = set()
    for request in RecordingSocket.sent:
        _length, mtype, flags, _seq, _pid = NLMSGHDR.unpack_from(request)
        cmd = request[16]
        if mtype == 0x10:  # nlctrl: CTRL_CMD_GETFAMILY, to resolve the families
            assert (cmd, flags) == (3, NLM_F_REQUEST)
            continue
        assert (cmd, flags) == (OVS_CMD_GET, NLM_F_REQUEST | NLM_F_DUMP), request[:24].hex()
        kinds.add(families[mtype])
    assert kinds == {"ovs_datapath", "ovs_vport", "ovs_flow"}
    assert RecordingSocket.joined == []
    after = sorted((f.ufid or b"", f.packets) for f in host.flows.flows(host.dp_ifindex))
    assert after == before


def test_the_worker_needs_no_privilege(host: FlowHost) -> None:
    """The worker as uid 65534 with no capabilities reads the same counts."""
    make_traversable(Path(sys.executable).resolve())
    make_traversable(Path(sys.prefix))
    make_traversable(Path.cwd())
    config = WorkerConfig(interval=60, max_flows=10000, max_seconds=60, netlink_timeout=5)
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter.kernel.flow_worker", config.to_json()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        report = json.loads(proc.stdout.readline())
        proc.stdin.close()
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    (dp,) = [dp for dp in report["datapaths"] if dp["datapath"] == DP]
    assert dp["result"] == "complete", dp
    assert {port: n for port, n in dp["port_flows"]} == {
        port: n for port, n in per_port(host.flows.flows(host.dp_ifindex)).items() if port in (0, 1, 2)
    }
