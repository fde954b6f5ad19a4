"""The caches of a scrape never serve anything from an earlier scrape.

``DatapathRenderer`` keeps the fixed text of each datapath's ports between scrapes, and
``VportDecoder`` (in ``KernelSource``) what it decoded of each vport message whose
bytes, counters aside, did not change. Here one renderer (and one collector, with its
source) lives through long runs of scrapes in which the kernel's state changes in every
way it can between two of them: counters, names, types, ifindex, netnsid, destination
ports, ports and datapaths coming and going or reordered, statistics appearing and
disappearing, netns labels. After each scrape its output must be byte for byte what is
written from scratch for the same kernel bytes, decoded with no cache at all
(``decode_vport``) and rendered by a fresh renderer; and values from an earlier
scrape must not be in it.
"""

from __future__ import annotations

import dataclasses
import random
import struct

import pytest

from exporter.collector import Collector
from exporter.config import Filters
from exporter.exposition import Format
from exporter.kernel.dump_metrics import VPORT_COUNTERS, DatapathRenderer, render_datapaths, vport_counters
from exporter.kernel.dumps import DatapathDump, KernelSource
from exporter.kernel.families.datapath import decode_datapath
from exporter.kernel.families.vport import Vport, VportDecoder, VportStats, decode_vport
from exporter.kernel.netlink import DecodeError, iter_messages
from tests import ovs_messages as om

NAMES = ("tap0", "tap1", "qvo-a", 'q"uote', "back\\slash", "per%cent", "per%d", "%%", "new\nline", "端口")


def decode(datapaths: list[om.FakeDatapath]) -> list[DatapathDump]:
    """The records the exporter's own decoder makes of these datapaths' dump bytes."""
    return KernelSource(lambda: om.FakeKernelSocket(datapaths)).collect()


def decode_without_cache(datapaths: list[om.FakeDatapath]) -> list[DatapathDump]:
    """The records of these datapaths' dump bytes, each message through the plain decoders."""
    dumps = []
    for dp in datapaths:
        message = om.datapath_message(0, dp)
        datapath = decode_datapath(message, next(iter_messages(message)))
        records = []
        # The fake kernel answers a vport dump with the first datapath of that dp_ifindex (mutate
        # can give a new datapath the ifindex of another).
        for port in next(d for d in datapaths if d.dp_ifindex == dp.dp_ifindex).vports:
            message = om.vport_message(0, dp.dp_ifindex, port)
            records.append(decode_vport(message, next(iter_messages(message))))
        unique = list({record.name: record for record in records}.values())  # as the source does
        dumps.append(DatapathDump(datapath, unique, len(unique)))
    return dumps


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
                    "upcall counters",
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
            elif change == "upcall counters" and port.upcall is not None:
                ports[i] = dataclasses.replace(
                    port, upcall=(port.upcall[0] + 1, port.upcall[1] + rng.randrange(2))
                )
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


DEVICE_KINDS = ("tun", "veth", "geneve", "openvswitch", "none", 'k"ind')


def with_kinds(
    dumps: list[DatapathDump], rng: random.Random, kept: dict[str, dict[str, str]]
) -> list[DatapathDump]:
    """Device kinds as the source hands them over: the same object while a datapath's links do
    not change, a new one (some kinds changed, some vports without one) when they do."""
    out = []
    for dump in dumps:
        kinds = kept.get(dump.datapath.name)
        if kinds is None or rng.random() < 0.2:
            kinds = {v.name: rng.choice(DEVICE_KINDS) for v in dump.vports if rng.random() < 0.8}
            kept[dump.datapath.name] = kinds
        out.append(dataclasses.replace(dump, device_kinds=kinds))
    return out


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
    kinds: dict[str, dict[str, str]] = {}
    for _scrape in range(150):
        datapaths = mutate(rng, datapaths)
        dumps = with_netns(with_kinds(decode(datapaths), rng, kinds), rng)
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


def test_a_change_of_device_kind_alone_is_this_scrapes() -> None:
    """The same ports with the same attributes: only the kinds differ, and the info lines show it."""
    (dump,) = decode([om.FakeDatapath("dp", 3, vports=[om.FakeVport(1, "tap0", ifindex=7)])])
    renderer = DatapathRenderer()
    first = b"".join(renderer.render([dataclasses.replace(dump, device_kinds={"tap0": "tun"})], Format.TEXT))
    assert (
        b'ovs_vport_info{datapath="dp",port="tap0",port_no="1",vport_type="netdev",device_kind="tun",'
        in first
    )
    for kinds, shown in (({"tap0": "veth"}, b'device_kind="veth"'), ({}, b'vport_type="netdev",ifindex="7"')):
        again = b"".join(renderer.render([dataclasses.replace(dump, device_kinds=kinds)], Format.TEXT))
        assert shown in again and b"tun" not in again


def test_a_collector_serves_each_scrape_from_its_own_dump() -> None:
    """Through the collector, which keeps its renderer, with the kernel changing between scrapes."""
    rng = random.Random(99)
    kernel = om.FakeKernelSocket(start(rng))  # kept open by the source, as a real socket is
    collector = Collector(KernelSource(lambda: kernel), Filters(), "t")
    for _ in range(60):
        kernel.datapaths = mutate(rng, kernel.datapaths)
        fmt = rng.choice(list(Format))
        served = collector.scrape(fmt)
        expected = b"".join(render_datapaths(decode_without_cache(kernel.datapaths), fmt)).decode()
        assert served.startswith(expected)


def test_the_cache_holds_only_what_the_last_scrape_used() -> None:
    """Ports and datapaths that went away are let go: memory follows the current port set."""
    renderer = DatapathRenderer()
    many = [om.FakeDatapath(f"dp{d}", 10 + d, vports=[om.FakeVport(0, f"p{d}")]) for d in range(50)]
    renderer.render(decode(many), Format.TEXT)
    renderer.render(decode(many[:1]), Format.TEXT)
    # one datapath: stats, upcalls, upcall handlers (per-vport dispatch); info
    assert len(renderer._counters) == 3 and len(renderer._info) == 1


# One port of each kind the kernel sends: a plain one with upcall statistics, one whose peer is
# in another netns (NETNSID before STATS), a tunnel with options, one before 6.2 (no upcall
# statistics), one without STATS, and one with several upcall PIDs and an attribute a newer
# kernel would add.
KINDS = [
    om.FakeVport(0, "dp", type=2, ifindex=3, stats=(1, 2, 3, 4, 5, 6, 7, 8), upcall=(9, 10), upcall_pids=(77,)),
    om.FakeVport(1, "veth1", ifindex=11, netnsid=2, stats=(11, 12, 13, 14, 15, 16, 17, 18), upcall=(19, 20)),
    om.FakeVport(2, "vxlan_sys_4789", type=4, ifindex=12, stats=(21, 22, 23, 24, 25, 26, 27, 28),
                 upcall=(29, 30), dst_port=4789, extension=(1,)),
    om.FakeVport(3, "tap-old", ifindex=13, stats=(31, 32, 33, 34, 35, 36, 37, 38)),
    om.FakeVport(4, "no-stats", ifindex=14, stats=None, upcall=(49, 50)),
    om.FakeVport(5, "pids", ifindex=15, stats=(51, 52, 53, 54, 55, 56, 57, 58), upcall=(59, 60),
                 upcall_pids=(5, 6, 5), extra_attrs=om.nla(99, b"new!")),
]  # fmt: skip
NEW = 987654321  # a value no port has: a stale body cannot contain it by chance


def changes(port: om.FakeVport) -> list[tuple[str, om.FakeVport]]:
    """Every counter and every attribute of the port changed alone, and some removed or added."""
    out = []
    if port.stats is not None:
        for i, field in enumerate(VportStats._fields):
            stats = list(port.stats)
            stats[i] = NEW
            out.append((f"stats.{field}", dataclasses.replace(port, stats=tuple(stats))))
    if port.upcall is not None:
        out.append(("upcall.success", dataclasses.replace(port, upcall=(NEW, port.upcall[1]))))
        out.append(("upcall.fail", dataclasses.replace(port, upcall=(port.upcall[0], NEW))))
    out += [
        ("port_no", dataclasses.replace(port, port_no=port.port_no + 40)),
        ("type", dataclasses.replace(port, type=9)),
        ("name", dataclasses.replace(port, name=port.name + "x")),
        ("name, same length", dataclasses.replace(port, name=port.name[:-1] + "Z")),
        ("ifindex", dataclasses.replace(port, ifindex=NEW)),
        ("no ifindex", dataclasses.replace(port, ifindex=None)),
        ("netnsid", dataclasses.replace(port, netnsid=7 if port.netnsid is None else None)),
        ("stats sent or not", dataclasses.replace(port, stats=None if port.stats else (NEW,) * 8)),
        ("upcall sent or not", dataclasses.replace(port, upcall=None if port.upcall else (NEW, 1))),
        ("dst_port", dataclasses.replace(port, type=5, dst_port=6081)),
        ("extension", dataclasses.replace(port, type=4, dst_port=4789, extension=(1, 5))),
        ("upcall_pids", dataclasses.replace(port, upcall_pids=(0,) if port.upcall_pids != (0,) else (3,))),
        ("unknown attribute", dataclasses.replace(port, extra_attrs=om.nla(98, b"abcd"))),
    ]
    return out


CHANGES = [(i, what, changed) for i, port in enumerate(KINDS) for what, changed in changes(port)]


@pytest.mark.parametrize("fmt", list(Format), ids=lambda f: f.name.lower())
@pytest.mark.parametrize(
    ("index", "what", "changed"), CHANGES, ids=[f"{KINDS[i].name}-{w}" for i, w, _c in CHANGES]
)
def test_a_change_of_any_counter_or_attribute_is_served_from_this_scrape(
    index: int, what: str, changed: om.FakeVport, fmt: Format
) -> None:
    """Each counter and each attribute of each kind of port, changed alone between two scrapes of a
    kept collector (its source's decoder cache and its renderer warm): the body is the one made
    from this scrape's bytes with no cache, and changing it back is served from that scrape's too."""
    before = [om.FakeDatapath("dp", 3, vports=list(KINDS)), om.FakeDatapath("other", 4, vports=[KINDS[0]])]
    after = [dataclasses.replace(before[0], vports=[*KINDS[:index], changed, *KINDS[index + 1 :]]), before[1]]
    kernel = om.FakeKernelSocket(before)
    collector = Collector(KernelSource(lambda: kernel), Filters(), "t")
    for datapaths in (before, before, after, after, before):
        kernel.datapaths = datapaths
        served = collector.scrape(fmt)
        expected = b"".join(render_datapaths(decode_without_cache(datapaths), fmt)).decode()
        assert served.startswith(expected), what
        if datapaths is before:
            assert str(NEW) not in served, f"{what}: a value of the scrape before"


def test_the_decoder_cache_is_used_and_holds_only_the_last_scrapes_ports() -> None:
    """An unchanged port's record is made from its cache entry (its name is the same object), a
    changed one afresh; entries of ports that went away are dropped at the next scrape."""
    ports = [om.FakeVport(i, f"tap{i}", ifindex=10 + i, stats=(i,) * 8, upcall=(i, 0)) for i in range(50)]
    kernel = om.FakeKernelSocket([om.FakeDatapath("dp", 3, vports=ports)])
    source = KernelSource(lambda: kernel)
    (first,) = source.collect()
    kernel.datapaths = [om.FakeDatapath("dp", 3, vports=[dataclasses.replace(ports[0], stats=(5,) * 8),
                                                          dataclasses.replace(ports[1], ifindex=99)])]  # fmt: skip
    (second,) = source.collect()
    assert second.vports[0].name is first.vports[0].name, "an unchanged port: its entry was not used"
    assert second.vports[0].stats == (5,) * 8
    assert second.vports[1].name is not first.vports[1].name and second.vports[1].ifindex == 99
    assert len(source._vports) == 2
    kernel.datapaths = []
    source.collect()
    assert len(source._vports) == 0


def uniform_port(rng: random.Random, port_no: int, upcall: bool) -> om.FakeVport:
    """A port with STATS, and upcall statistics or not as every other port of its datagram."""
    port = random_port(rng, port_no)
    stats = tuple(rng.randrange(4) for _ in range(8))
    return dataclasses.replace(port, stats=stats, upcall=(rng.randrange(4), 1) if upcall else None)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ports", ["mixed", "uniform", "uniform-6.1"])
def test_the_decoder_cache_decodes_any_bytes_as_decode_vport_does(seed: int, ports: str) -> None:
    """Scrape after scrape, random bytes of random messages changed (anywhere past the netlink
    header: attribute headers, lengths, names, counters) and late replies of another dump mixed
    in: the cached decoder gives exactly the records decode_vport gives for this scrape's bytes,
    or fails where it fails. With ports all of one shape (STATS, with or without upcall
    statistics), whole datagrams are decoded from the last scrape's layout (the run cache)."""
    rng = random.Random(seed)
    seq = 7
    if ports == "mixed":
        base = [om.vport_message(seq, 3, random_port(rng, p)) for p in range(12)] + [
            om.vport_message(seq, 3, dataclasses.replace(k, name=f"k{i}")) for i, k in enumerate(KINDS)
        ]
    else:
        base = [om.vport_message(seq, 3, uniform_port(rng, p, ports == "uniform")) for p in range(14)]
    decoder = VportDecoder()
    last: dict[int, Vport] = {}
    hits = 0
    for _scrape in range(300):
        messages = list(base)
        for _ in range(rng.choice((0, 1, 1, 2, 4))):
            i = rng.randrange(len(messages))
            buf = bytearray(messages[i])
            for _ in range(rng.choice((1, 1, 2))):
                buf[rng.randrange(16, len(buf))] = rng.randrange(256)
            messages[i] = bytes(buf)
        if rng.random() < 0.05:  # a late reply to an earlier dump
            messages.insert(
                rng.randrange(len(messages)), om.vport_message(seq - 1, 3, uniform_port(rng, 0, True))
            )
        if rng.random() < 0.05:  # the same datagram, all of it a late reply to an earlier dump
            messages = [m[:8] + struct.pack("=I", seq - 1) + m[12:] for m in messages]
        datagram = b"".join(messages)
        expected: list[Vport] = []
        try:
            for message in iter_messages(datagram):
                if message.seq == seq:
                    expected.append(decode_vport(datagram, message))
        except DecodeError:
            expected_error = True
        else:
            expected_error = False
        decoder.new_scrape()
        got: list[Vport] = []
        try:
            end = decoder.decode_run(datagram, 0, seq, om.VPORT_FAMILY_ID, got)
        except DecodeError:
            assert expected_error
        else:
            assert not expected_error and end == len(datagram)
        assert got == expected
        for i, record in enumerate(got):
            hits += last.get(i) is not None and record.name is last[i].name
        last = dict(enumerate(got))
    assert hits > 1000, "the cache was hardly used: the test would prove nothing"
    runs = decoder.whole_datagrams
    # Whole datagrams when every port has the same shape and no byte but counters changed.
    assert runs == 0 if ports == "mixed" else runs > 30
