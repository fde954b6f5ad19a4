"""The port event listener against fake sockets fed kernel-layout notifications, and on the host's
real netlink (which has no openvswitch module): counting, lost notifications, a module reload,
namespaces, filters, and what a scrape sees."""

from __future__ import annotations

import errno
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.collector import Collector
from exporter.config import Filters
from exporter.exposition import Format
from exporter.kernel.dumps import DatapathDump, KernelSource
from exporter.kernel.events import EventListener, open_sockets
from exporter.kernel.families.datapath import Datapath
from exporter.kernel.families.nlctrl import CTRL_CMD_DELFAMILY, CTRL_CMD_NEWFAMILY
from exporter.kernel.families.vport import OVS_VPORT_FAMILY
from exporter.kernel.netlink import OVS_CMD_DEL, OVS_CMD_NEW, OVS_CMD_SET
from tests import ovs_messages as om
from tests.fake_events import DP_GROUP, NOTIFY, VPORT_GROUP, Kernel, listener_for
from tests.ovs_messages import FakeDatapath, FakeKernelSocket, FakeVport

NEW, DEL, SET = OVS_CMD_NEW, OVS_CMD_DEL, OVS_CMD_SET


@pytest.fixture
def kernel() -> Iterator[Kernel]:
    k = Kernel([FakeDatapath("ovs-system", 5), FakeDatapath("br-x", 9)])
    yield k
    k.notify.close()


def served(datapath: str, netns: str | None = None) -> DatapathDump:
    """A datapath as this scrape's dumps list it."""
    return DatapathDump(Datapath(1, datapath, None, None), [], 0, netns)


def counts(listener: EventListener, netns: str | None = None) -> dict[tuple[str, str], int]:
    (entry,) = [e for e in listener.snapshot() if e.netns == netns]
    return {(dp, event): n for dp, event, n in entry.counts}


def sample(body: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(want)}\}} (\S+)$", body, re.M)
    return None if match is None else float(match[1])


def test_subscribes_to_nlctrl_and_both_ovs_groups(kernel: Kernel) -> None:
    listener = listener_for((None, kernel))
    assert kernel.notify.joined == [NOTIFY, DP_GROUP, VPORT_GROUP]
    (entry,) = listener.snapshot()
    assert entry.subscribed
    # Every known datapath starts at 0, so that its first event is an increase in Prometheus.
    assert counts(listener) == {
        (dp, ev): 0 for dp in ("ovs-system", "br-x") for ev in ("added", "removed", "changed")
    }


def test_counts_new_del_set_per_datapath(kernel: Kernel) -> None:
    listener = listener_for((None, kernel))
    kernel.notify.send(*(kernel.vport(NEW, 5, f"tap{i}") for i in range(20)))
    kernel.notify.send(*(kernel.vport(DEL, 5, f"tap{i}") for i in range(10)))
    kernel.notify.send(
        kernel.vport(SET, 9, "vx0"), kernel.vport(7, 9, "vx0")
    )  # an unknown command: not an event
    listener.step(0)
    c = counts(listener)
    assert (c["ovs-system", "added"], c["ovs-system", "removed"], c["ovs-system", "changed"]) == (20, 10, 0)
    assert (c["br-x", "added"], c["br-x", "removed"], c["br-x", "changed"]) == (0, 0, 1)


def test_datapath_created_later_is_named_from_its_own_notification(kernel: Kernel) -> None:
    listener = listener_for((None, kernel))
    kernel.notify.send(om.datapath_notification(NEW, FakeDatapath("dp-new", 33)), kernel.vport(NEW, 33, "p0"))
    listener.step(0)
    assert counts(listener)["dp-new", "added"] == 1


def test_lost_notifications_are_counted_logged_once_and_resubscribe(
    kernel: Kernel, caplog: pytest.LogCaptureFixture
) -> None:
    listener = listener_for((None, kernel))
    caplog.set_level(logging.WARNING)
    for _ in range(3):
        kernel.notify.overflow = True
        kernel.notify.send(kernel.vport(NEW, 5, "p"))
        listener.step(0)
    (entry,) = listener.snapshot()
    assert entry.overflows == 3
    assert counts(listener)["ovs-system", "added"] == 3  # what did arrive is still counted
    lost = [r for r in caplog.records if "ENOBUFS" in r.getMessage()]
    assert len(lost) == 1
    assert kernel.notify.joined.count(VPORT_GROUP) == 4  # joined again after each overflow
    body = "".join(listener.report(Format.TEXT, []).chunks)
    assert "ovs_events_overflows_total 3\n" in body  # per namespace, whatever the datapaths


def test_module_reload_resolves_the_new_ids_and_joins_again(
    kernel: Kernel, caplog: pytest.LogCaptureFixture
) -> None:
    listener = listener_for((None, kernel))
    old_vport_family = kernel.control.vport_family
    kernel.notify.send(kernel.vport(NEW, 5, "before"))
    kernel.control.loaded = False
    kernel.notify.send(om.ctrl_family_message(CTRL_CMD_DELFAMILY, OVS_VPORT_FAMILY, old_vport_family))
    listener.step(0)
    (entry,) = listener.snapshot()
    assert not entry.subscribed
    assert listener.report(Format.TEXT, []).health[0].success is False
    listener.tick()  # the periodic retry while the module is away: still unsubscribed, logged once
    assert len([r for r in caplog.records if "not subscribed" in r.getMessage()]) == 1

    kernel.control.loaded = True
    kernel.control.vport_family, kernel.control.dp_family = 0x2B, 0x2A
    kernel.control.datapaths_now = [FakeDatapath("ovs-r", 40)]
    kernel.notify.send(
        om.ctrl_family_message(CTRL_CMD_NEWFAMILY, OVS_VPORT_FAMILY, 0x2B, [("ovs_vport", 7)]),
        kernel.vport(NEW, 40, "after"),
        om.vport_notification(NEW, 40, FakeVport(2, "stale-id"), old_vport_family),  # not a vport message now
    )
    listener.step(0)
    assert listener.snapshot()[0].subscribed
    c = counts(listener)
    assert c["ovs-r", "added"] == 1
    assert ("ovs-system", "added") not in c  # no datapath outlives the module
    assert listener.report(Format.TEXT, []).health[0].success is True


def test_namespaces_get_their_own_listener_and_label(
    kernel: Kernel, caplog: pytest.LogCaptureFixture
) -> None:
    other = Kernel([FakeDatapath("ovs-system", 5)])
    listener = EventListener(
        lambda ns: (
            {None: (kernel.notify, kernel.control), "blue": (other.notify, other.control)}[ns]
            if ns != "locked"
            else (_ for _ in ()).throw(PermissionError(errno.EPERM, "Operation not permitted"))
        ),
        namespaces=lambda: ["blue", "locked"],
    )
    listener.tick()
    listener.tick()
    other.notify.send(other.vport(NEW, 5, "p"), other.vport(NEW, 5, "q"))
    listener.step(0)
    report = listener.report(Format.TEXT, [served("ovs-system"), served("ovs-system", "blue")])
    body = "".join(report.chunks)
    assert (
        sample(body, "ovs_datapath_vport_events_total", netns="blue", datapath="ovs-system", event="added")
        == 2
    )
    assert sample(body, "ovs_datapath_vport_events_total", datapath="ovs-system", event="added") == 0
    assert [(h.netns, h.success) for h in report.health] == [(None, True), ("blue", True), ("locked", False)]
    assert len([r for r in caplog.records if "locked" in r.getMessage()]) == 1
    other.notify.close()


def test_only_datapaths_the_scrape_serves_have_event_series(kernel: Kernel) -> None:
    """The dumps come filtered (--collector.datapath-exclude) and list only datapaths that exist:
    event series follow them, so a deleted or excluded datapath has none."""
    listener = listener_for((None, kernel))
    kernel.notify.send(kernel.vport(NEW, 9, "p"), kernel.vport(NEW, 5, "q"))
    listener.step(0)
    body = "".join(listener.report(Format.TEXT, [served("ovs-system")]).chunks)
    assert 'datapath="br-x"' not in body
    assert sample(body, "ovs_datapath_vport_events_total", datapath="ovs-system", event="added") == 1
    assert "".join(listener.report(Format.TEXT, []).chunks).count("ovs_datapath_vport_events_total{") == 0


def test_a_deleted_datapath_takes_its_counters_with_it(kernel: Kernel) -> None:
    listener = listener_for((None, kernel))
    kernel.notify.send(kernel.vport(NEW, 9, "p"), om.datapath_notification(DEL, FakeDatapath("br-x", 9)))
    kernel.notify.send(om.datapath_notification(NEW, FakeDatapath("br-x", 10)), kernel.vport(NEW, 10, "p"))
    listener.step(0)
    assert counts(listener)["br-x", "added"] == 1  # the new br-x's own port only


def test_a_scrape_reads_the_published_snapshot_only(kernel: Kernel) -> None:
    """Notifications not yet handled by the listener's thread are not seen, and never waited for."""
    listener = listener_for((None, kernel))
    kernel.notify.send(kernel.vport(NEW, 5, "queued"))
    collector = Collector(
        KernelSource(lambda: FakeKernelSocket([FakeDatapath("ovs-system", 5)])),
        Filters(),
        "1",
        snapshot_sources=[listener],
    )
    body = collector.scrape(Format.TEXT)
    assert sample(body, "ovs_datapath_vport_events_total", datapath="ovs-system", event="added") == 0
    assert sample(body, "ovs_scrape_collector_success", collector="events") == 1
    listener.step(0)
    body = collector.scrape(Format.OPENMETRICS)
    assert sample(body, "ovs_datapath_vport_events_total", datapath="ovs-system", event="added") == 1


def test_real_netlink_of_this_host(caplog: pytest.LogCaptureFixture) -> None:
    """On the host's own kernel: nlctrl always resolves; the OVS groups are joined exactly when the
    openvswitch module is loaded (on most build machines it is not: then one warning, success 0)."""
    caplog.set_level(logging.WARNING)
    loaded = Path("/sys/module/openvswitch").is_dir()
    listener = EventListener(open_sockets(2.0))
    listener.start()
    try:
        listener.tick()
        report = listener.report(Format.TEXT, [])
    finally:
        listener.close()
    assert [(h.collector, h.netns, h.success) for h in report.health] == [("events", None, loaded)]
    warnings = [r for r in caplog.records if "not subscribed" in r.getMessage()]
    assert len(warnings) == (0 if loaded else 1)
