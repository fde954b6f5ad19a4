"""The whole exporter on a datapath that the real ovs-vswitchd manages.

vswitchd (Debian's 3.1) owns ``ovs-system`` for bridges ``br-int`` and ``br-ex`` inside namespace
``ovs-host`` (see tests/kernel/vswitchd.py). Traffic between the guests goes through br-int with
the NORMAL action: vswitchd handles the upcalls of the first packets and installs kernel flows.
The exporter runs there as uid 65534, no capabilities, whose only extra right is the group that
may open db.sock.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import HAS_UPCALL_STATS, consistent
from .netns import in_netns
from .ovsnl import OvsNetlink
from .procs import Exporter
from .promtext import Scrape, diff, expected_series
from .topology import DpctlDatapath, dpctl_diff
from .vswitchd import (
    DATAPATH,
    DB_GROUP,
    GENEVE_VPORT,
    GUESTS,
    HOST_NS,
    MGMT_NS_IP,
    PATCH_PORTS,
    RUNDIR,
    OvsHost,
    appctl,
    ping,
    vswitchd_dpctl_show,
)

NOBODY = 65534
EXPORTER_PORT = 19320
NOVA, OVNK, KUBEOVN, EXT = GUESTS


@pytest.fixture(scope="module")
def ovs_host(results_dir: Path) -> Iterator[OvsHost]:
    host = OvsHost(results_dir)
    try:
        host.start()
        yield host
    finally:
        host.stop()


@pytest.fixture(scope="module")
def host_nl(ovs_host: OvsHost) -> Iterator[OvsNetlink]:
    """A netlink socket in ``ovs-host``: the kernel's own view of vswitchd's datapath."""
    with in_netns(HOST_NS):
        sock = OvsNetlink()
    yield sock
    sock.close()


@pytest.fixture(scope="module")
def host_exporter(ovs_host: OvsHost, results_dir: Path) -> Iterator[Exporter]:
    proc = Exporter(
        EXPORTER_PORT,
        results_dir,
        name="exporter-vswitchd",
        user=NOBODY,
        host=MGMT_NS_IP,
        netns=HOST_NS,
        groups=(DB_GROUP,),
    )
    yield proc
    proc.stop()


def test_exporter_is_nobody_with_only_the_db_group(host_exporter: Exporter) -> None:
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{host_exporter.pid}/status").read_text().splitlines()
    )
    assert status["Uid"].split() == [str(NOBODY)] * 4
    assert status["Gid"].split() == [str(NOBODY)] * 4
    assert status["Groups"].split() == [str(DB_GROUP)]
    for caps in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(status[caps], 16) == 0, f"{caps} = {status[caps]}"


def test_vswitchd_datapath_and_ports_are_served(host_nl: OvsNetlink, host_exporter: Exporter) -> None:
    snap = host_nl.snapshot()
    assert set(snap.datapaths) == {DATAPATH}, "vswitchd's namespace holds its datapath only"
    kernel_ports = set(snap.vports[DATAPATH])
    # One internal port per bridge and the datapath's own; patch ports have no kernel vport.
    assert kernel_ports == {DATAPATH, "br-int", "br-ex", GENEVE_VPORT, *(g.port for g in GUESTS)}
    assert not kernel_ports & set(PATCH_PORTS)
    scrape = host_exporter.scrape()
    assert scrape.value("ovs_up") == 1
    assert scrape.label_values("ovs_vport_info", "port") == kernel_ports
    # vswitchd creates the tunnel device over rtnetlink and attaches it as a netdev vport: the
    # kernel reports no Geneve type and no destination port for it.
    tunnel = snap.vports[DATAPATH][GENEVE_VPORT]
    assert tunnel.type_name == "netdev" and tunnel.dst_port is None
    info = {
        "datapath": DATAPATH,
        "port": GENEVE_VPORT,
        "port_no": str(tunnel.port_no),
        "vport_type": "netdev",
    }
    if tunnel.ifindex is not None:
        info["ifindex"] = str(tunnel.ifindex)
    assert scrape.value("ovs_vport_info", **info) == 1


def test_vswitchd_handles_upcalls_and_installs_flows(host_nl: OvsNetlink, host_exporter: Exporter) -> None:
    _, before = consistent(host_nl, host_exporter.scrape)
    ping(NOVA, OVNK, count=10)
    ping(KUBEOVN, EXT, count=5)  # br-int -> patch ports -> br-ex
    _, after = consistent(host_nl, host_exporter.scrape)

    def grew(metric: str, **labels: str) -> float:
        return (after.value(metric, **labels) or 0) - (before.value(metric, **labels) or 0)

    dp = {"datapath": DATAPATH}
    # The first packets of each flow miss and go up to vswitchd; the rest hit the flows it
    # installed. Nothing is lost: vswitchd's handler threads take every upcall.
    assert grew("ovs_datapath_lookup_misses_total", **dp) >= 2
    assert grew("ovs_datapath_lookup_hits_total", **dp) >= 20
    assert grew("ovs_datapath_lookup_lost_total", **dp) == 0
    assert (after.value("ovs_datapath_flows", **dp) or 0) >= 2
    assert (after.value("ovs_datapath_masks", **dp) or 0) >= 1
    for g in (NOVA, OVNK, KUBEOVN, EXT):
        port = {"datapath": DATAPATH, "port": g.port}
        assert grew("ovs_vport_receive_packets_total", **port) >= 5, g.port
        assert grew("ovs_vport_transmit_packets_total", **port) >= 5, g.port
    if HAS_UPCALL_STATS:
        # Per-vport upcall counters (6.2+): the first packets in from each guest went up.
        for g in (NOVA, OVNK, KUBEOVN):
            port = {"datapath": DATAPATH, "port": g.port}
            assert grew("ovs_vport_upcalls_total", **port) >= 1, g.port
            assert grew("ovs_vport_upcall_failures_total", **port) == 0, g.port
    else:
        assert not after.label_values("ovs_vport_upcalls_total", "port")


def test_every_counter_equals_kernel_dump_and_vswitchd_view(
    host_nl: OvsNetlink, host_exporter: Exporter
) -> None:
    ping(OVNK, KUBEOVN, count=4, size=300)
    ping(NOVA, EXT, count=3, size=700)

    def read() -> tuple[DpctlDatapath, Scrape]:
        return vswitchd_dpctl_show(), host_exporter.scrape()

    snap, (shown, scrape) = consistent(host_nl, read)
    assert scrape.value("ovs_up") == 1
    assert not scrape.duplicates()
    assert not diff(expected_series(snap), scrape.only())
    assert set(shown.ports) == set(snap.vports[DATAPATH]), "vswitchd and the kernel list other ports"
    assert set(shown.counters) == {"hits", "misses", "lost", "flows", "mask_hits", "masks", "mask_cache_hits"}
    assert not dpctl_diff(shown, scrape)
    assert scrape.value("ovs_vport_receive_bytes_total", datapath=DATAPATH, port=OVNK.port)


def test_dispatch_mode_and_handlers_equal_vswitchds(ovs_host: OvsHost, host_exporter: Exporter) -> None:
    """The exporter's upcall dispatch view equals vswitchd's own: ``ovs-appctl dpif-netlink/dispatch-mode``
    and its handler threads (one netlink socket each)."""
    said = appctl("dpif-netlink/dispatch-mode")
    mode = re.search(r"(per-cpu|per-vport) dispatch mode", said)
    assert mode, f"unexpected dpif-netlink/dispatch-mode output: {said!r}"
    pid = int((RUNDIR / "ovs-vswitchd.pid").read_text())
    handlers = [
        t for t in Path(f"/proc/{pid}/task").iterdir() if (t / "comm").read_text().startswith("handler")
    ]
    assert handlers, "vswitchd runs no handler thread"
    scrape = host_exporter.scrape()
    (info,) = [dict(lbls) for name, lbls, _ in scrape.samples if name == "ovs_datapath_info"]
    assert info["datapath"] == DATAPATH
    assert info["upcall_dispatch"] == mode[1]
    if mode[1] == "per-cpu":
        assert scrape.value("ovs_datapath_upcall_handlers", datapath=DATAPATH) == len(handlers)
    else:
        served = scrape.label_values("ovs_vport_upcall_handlers", "port")
        assert served and all(
            scrape.value("ovs_vport_upcall_handlers", datapath=DATAPATH, port=p) == len(handlers)
            for p in served
        )
