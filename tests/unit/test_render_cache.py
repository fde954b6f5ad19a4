"""The rendering cache never serves anything from an earlier scrape.

``DatapathRenderer`` keeps the fixed text of each datapath's ports between scrapes.
Here one renderer (and one collector) lives through long runs of scrapes in which
the kernel's state changes in every way it can between two of them: counters,
names, types, ifindex, netnsid, destination ports, ports and datapaths coming and
going or reordered, statistics appearing and disappearing, netns labels. After each
scrape its output must be byte for byte what a renderer made from scratch writes for
the same records; and values from an earlier scrape must not be in it.
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from exporter.collector import Collector
from exporter.config import Filters
from exporter.exposition import VPORT_COUNTERS, DatapathRenderer, Format, render_datapaths, vport_counters
from exporter.model import DatapathDump
from exporter.source import KernelSource
from tests import ovs_messages as om

NAMES = ("tap0", "tap1", "qvo-a", 'q"uote', "back\\slash", "per%cent", "per%d", "%%", "new\nline", "端口")


def decode(datapaths: list[om.FakeDatapath]) -> list[DatapathDump]:
    """The records the exporter's own decoder makes of these datapaths' dump bytes."""
    return KernelSource(lambda: om.FakeKernelSocket(datapaths)).collect()


def random_port(rng: random.Random, port_no: int) -> om.FakeVport:
    vtype = rng.choice((1, 2, 4, 5, 9))
    return om.FakeVport(
        port_no,
        rng.choice(NAMES) + str(rng.randrange(4)),
        type=vtype,
        ifindex=rng.choice((None, rng.randrange(1, 50))),
        netnsid=rng.choice((None, None, rng.randint(-1, 3))),
        stats=None if rng.random() < 0.1 else tuple(rng.randrange(4) for _ in range(8)),
        upcall=None if rng.random() < 0.2 else (rng.randrange(4), rng.randrange(4)),
        dst_port=rng.choice((None, 4789, 6081)) if vtype in (4, 5) else None,
    )


def unique_names(ports: list[om.FakeVport]) -> list[om.FakeVport]:
    by_name = {port.name: port for port in ports}
    return list(by_name.values())


def mutate(rng: random.Random, datapaths: list[om.FakeDatapath]) -> list[om.FakeDatapath]:
    """The next scrape's kernel state: a few random changes, or none, to the last one.

    Values are drawn from small ranges so that a stale line would often look
    plausible; only the comparison with a fresh render tells.
    """
    out = []
    for dp in datapaths:
        ports = list(dp.vports)
        for _ in range(rng.choice((0, 0, 1, 2, 5))):
            if not ports:
                break
            i = rng.randrange(len(ports))
            change = rng.choice(
                (
                    "counters",
                    "counters",
                    "name",
                    "type",
                    "ifindex",
                    "netnsid",
                    "stats",
                    "upcall",
                    "drop",
                    "add",
                    "swap",
                )
            )
            port = ports[i]
            if change == "counters" and port.stats is not None:
                stats = list(port.stats)
                stats[rng.randrange(8)] += 1
                ports[i] = dataclasses.replace(port, stats=tuple(stats))
            elif change == "name":
                ports[i] = dataclasses.replace(port, name=rng.choice(NAMES) + str(rng.randrange(4)))
            elif change == "type":
                ports[i] = dataclasses.replace(port, type=rng.choice((1, 2, 3, 9)), dst_port=None)
            elif change == "ifindex":
                ports[i] = dataclasses.replace(port, ifindex=rng.choice((None, rng.randrange(1, 50))))
            elif change == "netnsid":
                ports[i] = dataclasses.replace(port, netnsid=rng.choice((None, rng.randint(-1, 3))))
            elif change == "stats":
                stats = None if port.stats is not None else tuple(rng.randrange(4) for _ in range(8))
                ports[i] = dataclasses.replace(port, stats=stats)
            elif change == "upcall":
                upcall = None if port.upcall is not None else (rng.randrange(4), rng.randrange(4))
                ports[i] = dataclasses.replace(port, upcall=upcall)
            elif change == "drop":
                del ports[i]
            elif change == "add":
                ports.insert(i, random_port(rng, rng.randrange(100)))
            else:
                j = rng.randrange(len(ports))
                ports[i], ports[j] = ports[j], ports[i]
        stats = dp.stats
        if stats is not None and rng.random() < 0.3:
            stats = (stats[0] + 1, *stats[1:])
        name = dp.name if rng.random() < 0.95 else dp.name + "x"
        out.append(dataclasses.replace(dp, name=name, stats=stats, vports=unique_names(ports)))
    if rng.random() < 0.1:
        out.append(om.FakeDatapath(f"dp-new{rng.randrange(3)}", 20 + len(out), vports=[random_port(rng, 0)]))
    if len(out) > 1 and rng.random() < 0.1:
        del out[rng.randrange(len(out))]
    unique = {dp.name: dp for dp in out}
    return list(unique.values())


def start(rng: random.Random) -> list[om.FakeDatapath]:
    return [
        om.FakeDatapath(f"dp{d}", 10 + d, vports=unique_names([random_port(rng, p) for p in range(8)]))
        for d in range(3)
    ]


def with_netns(dumps: list[DatapathDump], rng: random.Random) -> list[DatapathDump]:
    """Sometimes the same datapaths again, as read in a named namespace (a netns label)."""
    if rng.random() < 0.3:
        return dumps + [dataclasses.replace(d, netns=rng.choice(("ns1", "ns2"))) for d in dumps[:1]]
    return dumps


@pytest.mark.parametrize("seed", range(8))
def test_a_kept_renderer_writes_what_a_fresh_one_writes_scrape_after_scrape(seed: int) -> None:
    rng = random.Random(seed)
    renderer = DatapathRenderer()
    counters = VPORT_COUNTERS if seed % 2 == 0 else vport_counters(("bytes", "upcalls", "info"))
    datapaths = start(rng)
    for _scrape in range(150):
        datapaths = mutate(rng, datapaths)
        dumps = with_netns(decode(datapaths), rng)
        fmt = rng.choice(list(Format))
        kept = renderer.render(dumps, fmt, counters)
        fresh = render_datapaths(dumps, fmt, counters)
        assert b"".join(kept) == b"".join(fresh)


def test_new_values_with_the_same_ports_are_this_scrapes() -> None:
    """Same ports, so the cached templates are reused: every value is still the new one."""
    ports = [om.FakeVport(i, f"tap{i}", ifindex=10 + i, stats=(i,) * 8, upcall=(i, 0)) for i in range(5)]
    before = [om.FakeDatapath("dp", 3, vports=ports)]
    after = [
        om.FakeDatapath(
            "dp",
            3,
            vports=[dataclasses.replace(p, stats=(1000 + p.port_no,) * 8, upcall=None) for p in ports],
        )
    ]
    renderer = DatapathRenderer()
    first = b"".join(renderer.render(decode(before), Format.TEXT)).decode()
    assert 'ovs_vport_receive_packets_total{datapath="dp",port="tap3"} 3\n' in first
    second = b"".join(renderer.render(decode(after), Format.TEXT)).decode()
    assert 'ovs_vport_receive_packets_total{datapath="dp",port="tap3"} 1003\n' in second
    assert not any(line.endswith("} 3") for line in second.splitlines()), "a value of the first scrape"
    assert "ovs_vport_upcalls" not in second, "upcall stats no longer sent: the families are absent"


def test_changed_attributes_with_the_same_names_are_this_scrapes() -> None:
    """The names stay, so the counter templates are reused; the info lines must not be."""
    before = [om.FakeDatapath("dp", 3, vports=[om.FakeVport(1, "vx", type=4, ifindex=7, dst_port=4789)])]
    after = [
        om.FakeDatapath("dp", 3, vports=[om.FakeVport(2, "vx", type=5, ifindex=8, netnsid=1, dst_port=6081)])
    ]
    renderer = DatapathRenderer()
    renderer.render(decode(before), Format.OPENMETRICS)
    second = b"".join(renderer.render(decode(after), Format.OPENMETRICS)).decode()
    assert (
        'ovs_vport_info{datapath="dp",port="vx",port_no="2",vport_type="geneve",ifindex="8",netnsid="1",'
        'dst_port="6081"} 1\n' in second
    )
    assert "4789" not in second and 'port_no="1"' not in second


def test_a_collector_serves_each_scrape_from_its_own_dump() -> None:
    """Through the collector, which keeps its renderer, with the kernel changing between scrapes."""
    rng = random.Random(99)
    kernel = om.FakeKernelSocket(start(rng))  # kept open by the source, as a real socket is
    collector = Collector(KernelSource(lambda: kernel), Filters(), "t")
    for _ in range(40):
        kernel.datapaths = mutate(rng, kernel.datapaths)
        dumps = decode(kernel.datapaths)
        served = collector.scrape(Format.TEXT)
        expected = b"".join(render_datapaths(dumps, Format.TEXT)).decode()
        assert served.startswith(expected)


def test_the_cache_holds_only_what_the_last_scrape_used() -> None:
    """Ports and datapaths that went away are let go: memory follows the current port set."""
    renderer = DatapathRenderer()
    many = [om.FakeDatapath(f"dp{d}", 10 + d, vports=[om.FakeVport(0, f"p{d}")]) for d in range(50)]
    renderer.render(decode(many), Format.TEXT)
    renderer.render(decode(many[:1]), Format.TEXT)
    assert len(renderer._counters) == 2 and len(renderer._info) == 1  # one datapath: stats, upcalls; info
