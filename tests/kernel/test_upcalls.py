"""Upcall counters per vport (kernel 6.2+) and the datapath's lost counter."""

from __future__ import annotations

from .conftest import HAS_UPCALL_STATS, UpcallDatapath, consistent
from .ovsnl import DP_F_DISPATCH_UPCALL_PER_CPU, OvsNetlink
from .procs import Exporter
from .promtext import UPCALL_METRICS, diff, expected_series
from .topology import send_frames


def test_upcall_counters_move_without_per_cpu_dispatch(
    nl: OvsNetlink, upcall_dp: UpcallDatapath, exporter: Exporter
) -> None:
    u = upcall_dp
    before, scrape0 = consistent(nl, exporter.scrape)
    assert not (before.datapaths[u.name].user_features or 0) & DP_F_DISPATCH_UPCALL_PER_CPU

    send_frames(u.delivered + "p", 15)
    send_frames(u.refused + "p", 10)
    u.drain()
    after, scrape = consistent(nl, exporter.scrape)

    assert scrape.value("ovs_up") == 1
    assert not diff(expected_series(after), scrape.only())
    vb, va = before.vports[u.name], after.vports[u.name]
    assert va[u.delivered].stats["rx_packets"] - vb[u.delivered].stats["rx_packets"] == 15
    if not HAS_UPCALL_STATS:
        assert not [name for name, _, _ in scrape.samples if name in UPCALL_METRICS]
        return

    def moved(metric: str, port: str) -> float:
        now = scrape.value(metric, datapath=u.name, port=port)
        then = scrape0.value(metric, datapath=u.name, port=port)
        assert now is not None and then is not None, f"{metric} missing for {port}"
        return now - then

    assert moved("ovs_vport_upcalls_total", u.delivered) == 15
    assert moved("ovs_vport_upcall_failures_total", u.delivered) == 0
    assert moved("ovs_vport_upcalls_total", u.refused) == 10
    assert moved("ovs_vport_upcall_failures_total", u.refused) == 10
    assert moved("ovs_vport_upcalls_total", u.unset) == 0


def test_lost_counts_upcalls_that_cannot_be_delivered(
    nl: OvsNetlink, upcall_dp: UpcallDatapath, exporter: Exporter
) -> None:
    u = upcall_dp
    before, scrape0 = consistent(nl, exporter.scrape)

    send_frames(u.refused + "p", 7)
    send_frames(u.unset + "p", 5)
    send_frames(u.delivered + "p", 3)
    u.drain()
    after, scrape = consistent(nl, exporter.scrape)

    dp0, dp1 = before.datapaths[u.name], after.datapaths[u.name]
    assert dp1.misses - dp0.misses == 15
    assert dp1.lost - dp0.lost == 12
    lost0 = scrape0.value("ovs_datapath_lookup_lost_total", datapath=u.name)
    lost1 = scrape.value("ovs_datapath_lookup_lost_total", datapath=u.name)
    assert lost0 == dp0.lost and lost1 == dp1.lost
    assert scrape.value("ovs_datapath_lookup_misses_total", datapath=u.name) == dp1.misses
