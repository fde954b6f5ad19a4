"""Port events between scrapes, from the kernel's notifications, counted by the running exporter."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

from .ovsnl import VPORT_INTERNAL, OvsNetlink
from .procs import Exporter
from .promtext import Scrape
from .test_churn import ports_of
from .topology import Topology

EVENTS = ("added", "removed", "changed")


def events(scrape: Scrape, datapath: str, **netns: str) -> dict[str, float | None]:
    return {
        event: scrape.value("ovs_datapath_vport_events_total", **netns, datapath=datapath, event=event)
        for event in EVENTS
    }


def scrape_until(exporter: Exporter, done: Callable[[Scrape], bool], timeout: float = 60) -> Scrape:
    """Scrape until ``done(scrape)`` holds: the listener's thread handles notifications on its own
    time (slowly under TCG), and a scrape never waits for it. The last scrape is returned either way,
    for the caller's exact assertions."""
    deadline = time.monotonic() + timeout
    while True:
        scrape = exporter.scrape()
        if done(scrape) or time.monotonic() > deadline:
            return scrape
        time.sleep(0.3)


def test_twenty_added_and_ten_removed_between_two_scrapes_are_counted_exactly(
    nl: OvsNetlink, exporter: Exporter
) -> None:
    topo = Topology(nl)
    try:
        ifindex = topo.add_datapath("ovs-ev")
        zero = {"added": 0, "removed": 0, "changed": 0}
        first = scrape_until(exporter, lambda s: events(s, "ovs-ev") == zero)
        assert events(first, "ovs-ev") == zero, "the listener never learned of the new datapath"
        assert first.value("ovs_scrape_collector_success", collector="events") == 1

        for i in range(20):
            nl.new_vport(ifindex, f"ev{i}", VPORT_INTERNAL)
        for i in range(10):
            nl.del_vport(f"ev{i}")
        nl.set_vport_upcall_pid("ev10", 4242)

        want = {"added": 20, "removed": 10, "changed": 1}
        second = scrape_until(exporter, lambda s: events(s, "ovs-ev") == want)
        assert events(second, "ovs-ev") == want
        # Neither scrape's dump saw the ten ports that came and went in between.
        assert not {f"ev{i}" for i in range(10)} & (ports_of(first, "ovs-ev") | ports_of(second, "ovs-ev"))
        assert second.value("ovs_datapath_vports", datapath="ovs-ev") == 11
        assert second.value("ovs_events_overflows_total") == 0
        assert not second.duplicates()

        # Deleting the datapath takes its series, as it does its other series.
        topo.remove_datapath("ovs-ev")
        gone = exporter.scrape()
        assert events(gone, "ovs-ev") == {"added": None, "removed": None, "changed": None}
    finally:
        topo.teardown()


def test_lost_notifications_are_counted_and_logged_once(nl: OvsNetlink, exporter: Exporter) -> None:
    """With the exporter stopped (SIGSTOP), thousands of notifications overflow its socket buffer:
    the kernel drops some and reports ENOBUFS, which the listener counts, logs once, and survives."""
    topo = Topology(nl)
    try:
        ifindex = topo.add_datapath("ovs-ov")
        nl.new_vport(ifindex, "ov0", VPORT_INTERNAL)
        scrape_until(exporter, lambda s: events(s, "ovs-ov")["added"] == 1)
        before = exporter.scrape().value("ovs_events_overflows_total")
        assert before is not None
        sent = 3000
        os.kill(exporter.pid, signal.SIGSTOP)
        try:
            for i in range(sent):
                nl.set_vport_upcall_pid("ov0", 1000 + i)
        finally:
            os.kill(exporter.pid, signal.SIGCONT)

        def overflowed(s: Scrape) -> bool:
            value = s.value("ovs_events_overflows_total")
            return value is not None and value > before

        scrape = scrape_until(exporter, overflowed)
        assert overflowed(scrape), "3000 notifications to a stopped listener did not overflow its buffer"
        changed = events(scrape, "ovs-ov")["changed"]
        assert changed is not None and 0 < changed < sent, changed
        assert scrape.value("ovs_scrape_collector_success", collector="events") == 1
        assert exporter.log.read_text().count("ENOBUFS") == 1

        # It keeps counting exactly afterwards.
        nl.new_vport(ifindex, "ov1", VPORT_INTERNAL)
        after = scrape_until(exporter, lambda s: events(s, "ovs-ov")["added"] == 2)
        assert events(after, "ovs-ov")["added"] == 2
    finally:
        topo.teardown()
