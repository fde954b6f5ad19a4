"""The openvswitch module unloaded under a running exporter, then loaded again."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .ovsnl import DATAPATH_FAMILY, VPORT_FAMILY, OvsNetlink
from .procs import Exporter
from .promtext import Scrape
from .test_events import events, scrape_until
from .topology import Topology

#: Modules that use openvswitch, unloaded before it.
VPORT_MODULES = ("vport_vxlan", "vport_geneve", "vport_gre")


def loaded(module: str) -> bool:
    return Path("/sys/module", module).is_dir()


def load_ovs_modules() -> None:
    """insmod openvswitch and the vport modules again, from the harness's uncompressed copies."""
    mod_dir = Path(os.environ["OVS_VM_MODULES"])
    for name in ("openvswitch", *VPORT_MODULES):
        if not loaded(name):
            subprocess.run(["busybox", "insmod", str(mod_dir / f"{name}.ko")], check=True, timeout=60)


@pytest.mark.module_reload
def test_module_unload_gives_ovs_up_0_and_reload_brings_data_back(
    nl: OvsNetlink, topology: Topology, exporter: Exporter
) -> None:
    assert exporter.scrape().value("ovs_up") == 1

    def listening(scrape: Scrape) -> float | None:
        return scrape.value("ovs_scrape_collector_success", collector="events")

    def readers(scrape: Scrape) -> tuple[float | None, float | None]:
        """The background readers' health: the meters and the conntrack zone limits."""
        return tuple(  # type: ignore[return-value]
            scrape.value("ovs_scrape_collector_success", collector=c) for c in ("meters", "conntrack_zones")
        )

    assert listening(exporter.scrape()) == 1
    assert readers(scrape_until(exporter, lambda s: readers(s) == (1, 1))) == (1, 1)
    topology.teardown()
    for dp in nl.snapshot().datapaths:
        nl.del_datapath(dp)
    for name in (*VPORT_MODULES, "openvswitch"):
        subprocess.run(["busybox", "rmmod", name], check=True, timeout=60)
    assert not loaded("openvswitch")

    try:
        down = exporter.scrape()
        assert down.value("ovs_up") == 0
        assert not [name for name, _, _ in down.samples if name.startswith(("ovs_vport_", "ovs_datapath_"))]
        errors = down.value("ovs_scrape_errors_total")
        assert errors is not None and errors >= 1
        # The event listener saw the families go (nlctrl's notification) and says so.
        assert listening(scrape_until(exporter, lambda s: listening(s) == 0)) == 0
        # So do the background readers at their next round: health 0, and nothing else.
        gone = scrape_until(exporter, lambda s: readers(s) == (0, 0))
        assert readers(gone) == (0, 0)
        assert not [
            name for name, _, _ in gone.samples if name.startswith(("ovs_conntrack_", "ovs_datapath_"))
        ]
        assert exporter.alive()
    finally:
        load_ovs_modules()
        nl.family(DATAPATH_FAMILY, refresh=True)
        nl.family(VPORT_FAMILY, refresh=True)

    # The listener re-resolved the new family ids and joined the new groups, without a restart;
    # the readers resolve the families again at their next round.
    assert listening(scrape_until(exporter, lambda s: listening(s) == 1)) == 1
    back = scrape_until(exporter, lambda s: readers(s) == (1, 1))
    assert readers(back) == (1, 1) and back.value("ovs_conntrack_default_zone_limit") == 0
    with OvsNetlink() as fresh:
        fresh.family(DATAPATH_FAMILY)
        again = Topology(fresh)
        try:
            again.add_datapath("ovs-r")
            again.add_veth("ovs-r", "vr0")
            want = {"added": 1, "removed": 0, "changed": 0}
            up = scrape_until(exporter, lambda s: events(s, "ovs-r") == want)
            assert events(up, "ovs-r") == want, "vport notifications after the reload were not counted"
            assert up.value("ovs_up") == 1
            assert up.value("ovs_datapath_vports", datapath="ovs-r") == 2
            assert up.value("ovs_vport_receive_packets_total", datapath="ovs-r", port="vr0") is not None
        finally:
            again.teardown()
