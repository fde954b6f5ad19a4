"""Fixtures of the in-guest suite: the kernel, the standard topology, the exporter under test.

Outside the VM (no ``OVS_EXPORTER_VM=1``, set by tests/vm) nothing here is collected. Inside it,
a missing openvswitch family is a failure, never a skip: the VM exists to provide it.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from .kernel_reads import FAST_READERS
from .netns import in_netns
from .ovsnl import DATAPATH_FAMILY, VPORT_FAMILY, OvsNetlink, Snapshot
from .procs import Exporter
from .topology import Topology, standard_topology, wait_quiet
from .vswitchd import DB_GROUP, HOST_NS, MGMT_NS_IP, OvsHost

IN_VM = os.environ.get("OVS_EXPORTER_VM") == "1"

if not IN_VM:
    collect_ignore_glob = ["*"]

T = TypeVar("T")

EXPORTER_PORT = 19310
#: The exporter of ``host_exporter``, inside ``ovs-host`` (one module at a time uses it).
HOST_EXPORTER_PORT = 19320
NOBODY = 65534


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "module_reload: unloads the openvswitch module; runs late")
    config.addinivalue_line(
        "markers", "runs_last: after everything else, so that it may leave its state to the guest's power-off"
    )
    config.addinivalue_line(
        "markers", "prometheus: starts the real Prometheus (select with -m to skip it in quick runs)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def order(item: pytest.Item) -> int:
        if item.get_closest_marker("runs_last"):
            return 2
        return 1 if item.get_closest_marker("module_reload") else 0

    items.sort(key=order)  # stable: the file order otherwise


def nothing_runs_after(request: pytest.FixtureRequest) -> bool:
    """Whether the module of a module-scoped fixture holds the session's last test, so that what
    the fixture made can be left to the guest's power-off (tests/vm runs one session per boot)."""
    last = request.session.items[-1]
    return isinstance(last, pytest.Function) and last.module is request.module


def kernel_at_least(major: int, minor: int) -> bool:
    parts = platform.release().split(".")
    return (int(parts[0]), int(parts[1].split("-")[0])) >= (major, minor)


#: Per-vport upcall statistics (OVS_VPORT_ATTR_UPCALL_STATS) exist since Linux 6.2.
HAS_UPCALL_STATS = kernel_at_least(6, 2)


@pytest.fixture(scope="session")
def results_dir() -> Path:
    base = Path(os.environ.get("OVS_VM_RESULTS", "/tmp"))
    d = base / "kernel-tests"
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session")
def nl() -> Iterator[OvsNetlink]:
    sock = OvsNetlink()
    try:
        sock.family(DATAPATH_FAMILY)
        sock.family(VPORT_FAMILY)
    except OSError as e:
        pytest.fail(f"openvswitch generic netlink families missing in the guest: {e}")
    yield sock
    sock.close()


@pytest.fixture(scope="session")
def topology(nl: OvsNetlink) -> Iterator[Topology]:
    with standard_topology(nl) as topo:
        yield topo


@dataclass
class UpcallDatapath:
    """A datapath without per-CPU upcall dispatch, so upcalls go to each vport's pid.

    Frames sent into the peer of ``delivered`` reach a live socket (upcall success), those into
    the peer of ``refused`` reach a pid without a socket (upcall failure, datapath lost), those
    into the peer of ``unset`` have pid 0 (datapath lost, no upcall attempted).
    """

    name: str
    delivered: str
    refused: str
    unset: str
    listener: OvsNetlink

    def drain(self) -> None:
        """Read queued upcalls so that the listener's buffer never fills."""
        sock = self.listener.sock
        sock.setblocking(False)
        try:
            while sock.recv(1 << 16):
                pass
        except BlockingIOError:
            pass
        finally:
            sock.setblocking(True)


@pytest.fixture(scope="session")
def upcall_dp(nl: OvsNetlink) -> Iterator[UpcallDatapath]:
    topo = Topology(nl)
    listener = OvsNetlink()
    gone = OvsNetlink()
    dead_pid = gone.portid
    gone.close()
    try:
        topo.add_datapath("ovs-u")
        topo.add_veth("ovs-u", "vu0", upcall_pid=listener.portid)
        topo.add_veth("ovs-u", "vu1", upcall_pid=dead_pid)
        topo.add_veth("ovs-u", "vu2", upcall_pid=0)
        yield UpcallDatapath("ovs-u", "vu0", "vu1", "vu2", listener)
    finally:
        topo.teardown()
        listener.close()


@pytest.fixture(scope="session")
def exporter(results_dir: Path) -> Iterator[Exporter]:
    proc = Exporter(EXPORTER_PORT, results_dir, args=FAST_READERS)
    yield proc
    proc.stop()


# --- a host running the real daemons (test_vswitchd, test_ovn) ----------------------------------
# Each such module defines a module-scoped ``ovs_host`` fixture (an OvsHost or a subclass): these
# fixtures then look at that host.


@pytest.fixture(scope="module")
def host_nl(ovs_host: OvsHost) -> Iterator[OvsNetlink]:
    """A netlink socket in ``ovs-host``: the kernel's own view of vswitchd's datapath."""
    with in_netns(HOST_NS):
        sock = OvsNetlink()
    yield sock
    sock.close()


@pytest.fixture(scope="module")
def host_exporter_args() -> tuple[str, ...]:
    """The arguments of ``host_exporter``; a module overrides this fixture to pass more."""
    return ("--collector.ovsdb", *FAST_READERS)


@pytest.fixture(scope="module")
def host_exporter(
    ovs_host: OvsHost, host_exporter_args: tuple[str, ...], results_dir: Path, request: pytest.FixtureRequest
) -> Iterator[Exporter]:
    """The exporter as such a host runs it: inside ``ovs-host``, as uid 65534 with no
    capabilities, its only supplementary group the one that may open db.sock."""
    module = request.module.__name__.rpartition(".")[2].removeprefix("test_")
    proc = Exporter(
        HOST_EXPORTER_PORT,
        results_dir,
        name=f"exporter-{module}",
        user=NOBODY,
        host=MGMT_NS_IP,
        netns=HOST_NS,
        groups=(DB_GROUP,),
        args=host_exporter_args,
    )
    yield proc
    proc.stop()


def consistent(nl: OvsNetlink, read: Callable[[], T], attempts: int = 8) -> tuple[Snapshot, T]:
    """Run ``read`` between two kernel snapshots until no counter moved around it.

    Returns the snapshot and what ``read`` returned: with nothing moving in between, the two
    describe the same moment.
    """
    changes: list[str] = []
    for _ in range(attempts):
        before = wait_quiet(nl, settle=0.5)
        result = read()
        after = nl.snapshot()
        if before.counters() == after.counters() and before.vports.keys() == after.vports.keys():
            return after, result
        a, b = before.counters(), after.counters()
        changes = [
            f"{k}: {a.get(k)} -> {b.get(k)}" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)
        ]
    raise AssertionError("kernel counters kept moving during the read:\n" + "\n".join(changes[:20]))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the exporter's log tail to a failure: its errors explain most failed scrapes."""
    report = yield
    proc = getattr(item, "funcargs", {}).get("exporter")
    if report.failed and isinstance(proc, Exporter) and proc.log.is_file():
        report.sections.append(("exporter log (tail)", "\n".join(proc.log.read_text().splitlines()[-15:])))
    return report
