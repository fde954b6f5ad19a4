"""The device kind of each vport: read once per link over rtnetlink, reused while nothing changed.

Against a fake NETLINK_ROUTE socket (``tests.ovs_messages.FakeLinkSocket``) for what the kernel
could answer, and against this host's own kernel for what it does answer: every link of the
host's namespace, a physical NIC (no kind) among them where the machine has one, compared with
``ip -d -j link``.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import subprocess
import uuid

import pytest

from exporter.kernel.device_kinds import BATCH, NO_KIND, DeviceKinds
from exporter.kernel.dumps import KernelSource, open_link_socket_in
from exporter.kernel.families.vport import Vport
from exporter.kernel.netlink import NetlinkError
from tests.ovs_messages import (
    FakeDatapath,
    FakeKernelSocket,
    FakeLinkSocket,
    FakeVport,
    link_message,
    nlmsg_error,
)


def vport(name: str, ifindex: int | None, netnsid: int | None = None, port_no: int = 1) -> Vport:
    return Vport(5, port_no, 1, name, ifindex, netnsid, None, None, None)


def test_kinds_are_read_once_per_link_and_reused() -> None:
    sock = FakeLinkSocket({3: ("ovs-system", "openvswitch"), 7: ("tap0", "tun"), 8: ("eth1", None)})
    kinds = DeviceKinds(lambda: sock)
    ports = [vport("ovs-system", 3, port_no=0), vport("tap0", 7), vport("eth1", 8, port_no=2)]
    kinds.new_scrape()
    first = kinds.kinds("ovs-system", ports)
    assert first == {"ovs-system": "openvswitch", "tap0": "tun", "eth1": NO_KIND}
    assert kinds.links_read == 3 and sock.sends == 1
    for _ in range(3):
        kinds.new_scrape()
        # Vport records are new every scrape; the links they name are the same: nothing is asked.
        again = kinds.kinds("ovs-system", [vport(v.name, v.ifindex, port_no=v.port_no) for v in ports])
        assert again is first
    assert kinds.links_read == 3


def test_a_dump_the_decoder_served_from_its_cache_costs_nothing_per_vport() -> None:
    """``unchanged``: the source vouches that these are the last scrape's vports (the vport
    decoder served every message from its cache), so not one vport is looked at: the proof is
    that even other records of the same count get the last scrape's kinds."""
    sock = FakeLinkSocket({7: ("tap0", "tun"), 8: ("veth0", "veth")})
    kinds = DeviceKinds(lambda: sock)
    kinds.new_scrape()
    first = kinds.kinds("dp", [vport("tap0", 7), vport("veth0", 8, port_no=2)])
    kinds.new_scrape()
    assert kinds.kinds("dp", [vport("x", 1), vport("y", 2, port_no=2)], unchanged=True) is first
    # As many vports is part of the condition, and the same datapath (dp_ifindex).
    kinds.new_scrape()
    assert kinds.kinds("dp", [vport("tap0", 7)], unchanged=True) == {"tap0": "tun"}
    assert sock.sends == 1


def test_the_source_says_unchanged_only_when_the_decoder_decoded_nothing_afresh() -> None:
    ports = [
        FakeVport(0, "dp0", type=2, ifindex=3),
        FakeVport(1, "tap0", ifindex=7),
        FakeVport(2, "tap1", ifindex=8),
    ]
    kernel = FakeKernelSocket([FakeDatapath("dp0", 3, vports=ports)])
    links = FakeLinkSocket(
        {3: ("dp0", "openvswitch"), 7: ("tap0", "tun"), 8: ("tap1", "tun"), 9: ("veth9", "veth")}
    )
    source = KernelSource(lambda: kernel, lambda: links)
    (first,) = source.collect()
    # Counters move: every message is served from the decoder's cache, the kinds are the same object.
    kernel.datapaths[0].vports = [
        FakeVport(p.port_no, p.name, type=p.type, ifindex=p.ifindex, stats=(9,) * 8) for p in ports
    ]
    (again,) = source.collect()
    assert again.device_kinds is first.device_kinds
    # tap1 replaced by another port, as many as before: decoded afresh, its kind read.
    kernel.datapaths[0].vports = [*ports[:2], FakeVport(3, "veth9", ifindex=9)]
    (changed,) = source.collect()
    assert changed.device_kinds == {"dp0": "openvswitch", "tap0": "tun", "veth9": "veth"}
    assert len(links.requests) == 4


def test_only_new_links_are_asked_for() -> None:
    sock = FakeLinkSocket({7: ("tap0", "tun"), 9: ("veth9", "veth"), 10: ("tap0", "veth")})
    kinds = DeviceKinds(lambda: sock)
    kinds.new_scrape()
    kinds.kinds("dp", [vport("tap0", 7)])
    kinds.new_scrape()
    assert kinds.kinds("dp", [vport("tap0", 7), vport("veth9", 9)]) == {"tap0": "tun", "veth9": "veth"}
    assert kinds.links_read == 2
    # tap0 deleted and a device of another kind made under its name: a new ifindex, asked again.
    kinds.new_scrape()
    assert kinds.kinds("dp", [vport("tap0", 10), vport("veth9", 9)]) == {"tap0": "veth", "veth9": "veth"}
    assert kinds.links_read == 3


def test_a_datapath_gone_for_a_scrape_is_forgotten() -> None:
    sock = FakeLinkSocket({7: ("tap0", "tun")})
    kinds = DeviceKinds(lambda: sock)
    for ports in ([vport("tap0", 7)], [], [vport("tap0", 7)]):
        kinds.new_scrape()
        if ports:
            kinds.kinds("dp", ports)
    assert kinds.links_read == 2  # bounded: only what the last scrape saw is kept


def test_vports_without_a_readable_link_get_no_kind_and_cost_nothing() -> None:
    """A netdev in another namespace (NETNSID) has an ifindex of that namespace; before 4.16
    the kernel sends no IFINDEX. Neither is asked for, and neither makes the datapath's kinds
    incomplete (they would be asked again every scrape)."""
    sock = FakeLinkSocket({7: ("vxlan0", "vxlan")})
    kinds = DeviceKinds(lambda: sock)
    ports = [vport("vxlan0", 7, netnsid=2), vport("old0", None), vport("zero", 0)]
    kinds.new_scrape()
    first = kinds.kinds("dp", ports)
    assert first == {} and kinds.links_read == 0
    kinds.new_scrape()
    assert kinds.kinds("dp", ports) is first


def test_a_link_gone_or_renamed_has_no_kind_and_is_asked_again() -> None:
    sock = FakeLinkSocket({7: ("tap0", "tun"), 8: ("someone-else", "veth")})
    kinds = DeviceKinds(lambda: sock)
    ports = [vport("tap0", 7), vport("gone0", 6), vport("tap8", 8)]
    kinds.new_scrape()
    # ENODEV for 6 (deleted since the vport dump); 8 names another device by now.
    assert kinds.kinds("dp", ports) == {"tap0": "tun"}
    kinds.new_scrape()
    assert kinds.kinds("dp", ports) == {"tap0": "tun"}
    assert kinds.links_read == 5  # tap0 once, the two unknown ones twice


def test_requests_go_in_batches() -> None:
    links = {100 + i: (f"tap{i}", "tun") for i in range(2 * BATCH + 5)}
    sock = FakeLinkSocket(links)
    kinds = DeviceKinds(lambda: sock)
    kinds.new_scrape()
    got = kinds.kinds("dp", [vport(name, ifindex) for ifindex, (name, _kind) in links.items()])
    assert got == {name: "tun" for name, _kind in links.values()}
    assert sock.sends == 3 and len(sock.requests) == len(links)


class LateRepliesSocket(FakeLinkSocket):
    """Answers each request after a late reply to an earlier one and an unrelated ack."""

    def send(self, data: bytes) -> None:
        super().send(data)
        self.pending = [link_message(999, 5, "late", "tun"), nlmsg_error(998, 0), *self.pending]


def test_late_replies_are_skipped() -> None:
    kinds = DeviceKinds(lambda: LateRepliesSocket({7: ("tap0", "tun")}))
    kinds.new_scrape()
    assert kinds.kinds("dp", [vport("tap0", 7)]) == {"tap0": "tun"}


class FailingSocket(FakeLinkSocket):
    def __init__(self, code: int) -> None:
        super().__init__()
        self.code = code

    def send(self, data: bytes) -> None:
        seq = struct.unpack_from("=I", data, 8)[0]
        self.pending = [nlmsg_error(seq, self.code, data)]


def test_an_error_other_than_enodev_fails_the_read_and_the_socket_is_reopened() -> None:
    opened: list[FailingSocket] = []

    def open_socket() -> FailingSocket:
        opened.append(FailingSocket(errno.EPERM))
        return opened[-1]

    kinds = DeviceKinds(open_socket)
    for _ in range(2):
        kinds.new_scrape()
        with pytest.raises(NetlinkError, match="link GET of ifindex 7 failed") as caught:
            kinds.kinds("dp", [vport("tap0", 7)])
        assert caught.value.errno == errno.EPERM
    assert len(opened) == 2 and all(sock.closed for sock in opened)


def test_kernel_source_hands_the_kinds_over_with_each_dump() -> None:
    datapaths = [
        FakeDatapath("ovs-system", 3, vports=[FakeVport(0, "ovs-system", type=2, ifindex=3), FakeVport(1, "veth0", ifindex=20)]),
        FakeDatapath("dp1", 11, vports=[FakeVport(0, "dp1", type=2, ifindex=11), FakeVport(1, "vx", ifindex=5, netnsid=1)]),
    ]  # fmt: skip
    links = FakeLinkSocket(
        {3: ("ovs-system", "openvswitch"), 20: ("veth0", "veth"), 11: ("dp1", "openvswitch")}
    )
    source = KernelSource(lambda: FakeKernelSocket(datapaths), lambda: links)
    first = {d.datapath.name: d.device_kinds for d in source.collect()}
    assert first == {
        "ovs-system": {"ovs-system": "openvswitch", "veth0": "veth"},
        "dp1": {"dp1": "openvswitch"},
    }
    again = {d.datapath.name: d.device_kinds for d in source.collect()}
    assert all(again[name] is first[name] for name in first)
    assert len(links.requests) == 3
    # Without a link socket, no kinds and no rtnetlink at all.
    (dump, _) = KernelSource(lambda: FakeKernelSocket(datapaths)).collect()
    assert dump.device_kinds == {}


def test_a_failed_link_read_fails_the_collect_and_closes_both_sockets() -> None:
    kernel = FakeKernelSocket([FakeDatapath("dp0", 3, vports=[FakeVport(1, "tap0", ifindex=7)])])
    links = FailingSocket(errno.EINVAL)
    source = KernelSource(lambda: kernel, lambda: links)
    with pytest.raises(NetlinkError):
        source.collect()
    assert kernel.closed and links.closed


# --- this host's own kernel -----------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2's ip")
def test_kinds_from_this_hosts_kernel_equal_what_ip_link_says() -> None:
    """Every link of this host's namespace, read over a real NETLINK_ROUTE socket: the kind
    equals ``ip -d -j link``'s ``info_kind``, and a device with none (a physical NIC, lo) is
    ``none``. (The VM suite reads them as nobody: a GET needs no capability.)"""
    shown = json.loads(
        subprocess.run(["ip", "-d", "-j", "link", "show"], capture_output=True, check=True).stdout
    )
    ports = [vport(link["ifname"], link["ifindex"], port_no=i) for i, link in enumerate(shown)]
    kinds = DeviceKinds(lambda: open_link_socket_in(None, 5.0))
    try:
        kinds.new_scrape()
        got = kinds.kinds("host", ports)
    finally:
        kinds.close()
    want = {link["ifname"]: link.get("linkinfo", {}).get("info_kind") or NO_KIND for link in shown}
    assert got == want
    assert NO_KIND in got.values(), "lo has no kind on every host"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="creating a namespace needs root")
def test_kinds_of_many_links_in_batches_from_this_hosts_kernel() -> None:
    """More links than a batch, of several kinds, in a namespace of their own: several requests
    per datagram, answered one by one by the real kernel, each with the kind ip says."""
    name = f"ovsx-{uuid.uuid4().hex[:8]}"
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode != 0:
        pytest.skip("cannot create network namespaces here")
    try:
        lines = [f"link add v{i} type veth peer name p{i}" for i in range(BATCH)]
        lines += ["tuntap add tp0 mode tap", "link add br0 type bridge"]
        subprocess.run(["ip", "-n", name, "-batch", "-"], input="\n".join(lines), text=True, check=True)
        shown = json.loads(
            subprocess.run(
                ["ip", "-n", name, "-d", "-j", "link", "show"], capture_output=True, check=True
            ).stdout
        )
        assert len(shown) > 2 * BATCH
        kinds = DeviceKinds(lambda: open_link_socket_in(name, 5.0))
        try:
            kinds.new_scrape()
            got = kinds.kinds(
                name, [vport(link["ifname"], link["ifindex"], port_no=i) for i, link in enumerate(shown)]
            )
        finally:
            kinds.close()
        assert got == {link["ifname"]: link.get("linkinfo", {}).get("info_kind") or NO_KIND for link in shown}
        assert {"veth", "tun", "bridge", NO_KIND} <= set(got.values())
        assert kinds.links_read == len(shown)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


# --- through long runs of changing kernels ----------------------------------------------------------

KINDS = ("tun", "veth", "geneve", "openvswitch", None)


def _unique_ifindexes(datapaths: list[FakeDatapath]) -> list[FakeDatapath]:
    """An ifindex names one device in a namespace: a later port with one already taken has none."""
    seen: set[int] = set()
    for dp in datapaths:
        for port in dp.vports:
            if port.ifindex is not None and port.ifindex in seen:
                port.ifindex = None
            elif port.ifindex is not None:
                seen.add(port.ifindex)
    return datapaths


@pytest.mark.parametrize("seed", range(6))
def test_kept_kinds_are_what_a_fresh_source_reads_scrape_after_scrape(seed: int) -> None:
    """The render cache test's random kernels (names, types, ifindexes, netnsids, counters, ports
    and datapaths changing in every way between scrapes), a device's kind a function of its name:
    a source kept across scrapes must hand over exactly what a fresh one reads."""
    import copy
    import random

    from tests.unit.test_render_cache import mutate, start

    rng = random.Random(seed)

    def kind_of(name: str) -> str | None:
        return KINDS[sum(map(ord, name)) % len(KINDS)]

    def links(datapaths: list[FakeDatapath]) -> FakeLinkSocket:
        return FakeLinkSocket(
            {
                p.ifindex: (p.name, kind_of(p.name))
                for dp in datapaths
                for p in dp.vports
                if p.ifindex is not None
            }
        )

    kernel = FakeKernelSocket(_unique_ifindexes(start(rng)))
    kept_links = links(kernel.datapaths)
    source = KernelSource(lambda: kernel, lambda: kept_links)
    for _scrape in range(80):
        kernel.datapaths = _unique_ifindexes(copy.deepcopy(mutate(rng, kernel.datapaths)))
        kept_links.links = links(kernel.datapaths).links
        kept = {(d.datapath.name, d.netns): d.device_kinds for d in source.collect()}
        fresh_kernel, fresh_links = FakeKernelSocket(kernel.datapaths), links(kernel.datapaths)
        fresh = KernelSource(lambda k=fresh_kernel: k, lambda s=fresh_links: s).collect()
        assert kept == {(d.datapath.name, d.netns): d.device_kinds for d in fresh}
