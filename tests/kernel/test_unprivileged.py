"""The exporter needs no privilege: as uid 65534 with no capabilities it serves the same numbers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import consistent
from .ovsnl import OvsNetlink
from .procs import Exporter
from .promtext import Scrape, diff, expected_series
from .topology import STANDARD, Topology, ping

NOBODY = 65534


@pytest.fixture(scope="module")
def nobody_exporter(results_dir: Path) -> Iterator[Exporter]:
    proc = Exporter(19311, results_dir, name="exporter-nobody", user=NOBODY)
    yield proc
    proc.stop()


def test_runs_as_nobody_without_capabilities(nobody_exporter: Exporter) -> None:
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{nobody_exporter.pid}/status").read_text().splitlines()
    )
    assert status["Uid"].split() == [str(NOBODY)] * 4
    assert status["Gid"].split() == [str(NOBODY)] * 4
    for caps in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(status[caps], 16) == 0, f"{caps} = {status[caps]}"


def test_unprivileged_exporter_serves_the_same_numbers(
    nl: OvsNetlink, topology: Topology, exporter: Exporter, nobody_exporter: Exporter
) -> None:
    ping(STANDARD[0], count=3)

    def read() -> tuple[Scrape, Scrape]:
        return exporter.scrape(), nobody_exporter.scrape()

    snap, (as_root, as_nobody) = consistent(nl, read)
    assert as_nobody.value("ovs_up") == 1
    # Joining the kernel's multicast groups needs no privilege either.
    assert as_nobody.value("ovs_scrape_collector_success", collector="events") == 1
    assert not diff(expected_series(snap), as_nobody.only())
    assert as_root.only() == as_nobody.only()
