"""The dump sequence against a fake kernel socket: every datapath, every vport, every failure."""

from __future__ import annotations

import errno
import struct

import pytest

from exporter.kernel.dumps import KernelSource
from exporter.kernel.genl import FamilyNotFoundError
from exporter.kernel.netlink import OVS_CMD_GET, DecodeError, NetlinkError
from tests.ovs_messages import (
    DATAPATH_FAMILY_ID,
    VPORT_FAMILY_ID,
    FakeDatapath,
    FakeKernelSocket,
    FakeVport,
    done,
    dump_reply,
    nlmsg_error,
    vport_message,
)


def two_datapaths() -> list[FakeDatapath]:
    return [
        FakeDatapath("dp0", 10, vports=[FakeVport(0, "dp0", type=2), FakeVport(1, "veth0", ifindex=20)]),
        FakeDatapath("dp1", 11, vports=[FakeVport(0, "dp1", type=2)]),
    ]


def test_dumps_every_datapath_then_its_vports() -> None:
    sock = FakeKernelSocket(two_datapaths())
    dumps = KernelSource(lambda: sock).collect()
    assert [(d.datapath.name, [v.name for v in d.vports], d.vport_count) for d in dumps] == [
        ("dp0", ["dp0", "veth0"], 2),
        ("dp1", ["dp1"], 1),
    ]
    # One datapath dump with dp_ifindex 0, then one vport dump per datapath, all GET dumps.
    headers = [struct.unpack_from("=IHHII", r) + struct.unpack_from("=BBHi", r, 16) for r in sock.requests]
    assert [(h[1], h[2], h[5], h[8]) for h in headers] == [
        (DATAPATH_FAMILY_ID, 0x301, OVS_CMD_GET, 0),
        (VPORT_FAMILY_ID, 0x301, OVS_CMD_GET, 10),
        (VPORT_FAMILY_ID, 0x301, OVS_CMD_GET, 11),
    ]


def test_many_vports_across_datagrams() -> None:
    vports = [FakeVport(i, f"tap{i:05d}", ifindex=100 + i) for i in range(2000)]
    sock = FakeKernelSocket([FakeDatapath("dp0", 3, vports=vports)])
    (dump,) = KernelSource(lambda: sock).collect()
    assert len(dump.vports) == 2000 and dump.vports[-1].name == "tap01999"


def test_socket_is_kept_between_scrapes_and_replaced_after_failure() -> None:
    sockets: list[FakeKernelSocket] = []

    def open_socket() -> FakeKernelSocket:
        sockets.append(FakeKernelSocket(two_datapaths()))
        return sockets[-1]

    source = KernelSource(open_socket)
    source.collect()
    source.collect()
    assert len(sockets) == 1
    sockets[0].families = {}
    with pytest.raises(FamilyNotFoundError):
        source.collect()
    assert sockets[0].closed
    source.collect()
    assert len(sockets) == 2


def test_datapath_deleted_between_dumps_is_skipped() -> None:
    dps = two_datapaths()
    sock = FakeKernelSocket(dps)
    sock.vport_dump_override = {10: [done(0, errno.ENODEV)]}
    dumps = KernelSource(lambda: sock).collect()
    assert [d.datapath.name for d in dumps] == ["dp1"]


@pytest.mark.parametrize("code", [errno.EPERM, errno.EINVAL, errno.ENOBUFS])
def test_other_errors_raise_with_errno(code: int) -> None:
    sock = FakeKernelSocket(two_datapaths())
    sock.vport_dump_override = {11: [nlmsg_error(0, code)]}
    with pytest.raises(NetlinkError) as info:
        KernelSource(lambda: sock).collect()
    assert info.value.errno == code


def test_a_port_reported_twice_appears_once() -> None:
    port = FakeVport(1, "veth0", ifindex=20, stats=(5, 0, 0, 0, 0, 0, 0, 0))
    again = FakeVport(1, "veth0", ifindex=20, stats=(6, 0, 0, 0, 0, 0, 0, 0))
    reply = dump_reply(
        0, [vport_message(0, 10, port), vport_message(0, 10, FakeVport(2, "b")), vport_message(0, 10, again)]
    )
    sock = FakeKernelSocket([FakeDatapath("dp0", 10)], vport_dump_override={10: reply})
    (dump,) = KernelSource(lambda: sock).collect()
    assert [(v.name, v.stats and v.stats.rx_packets) for v in dump.vports] == [("veth0", 6), ("b", 0)]
    assert dump.vport_count == 2


def test_late_replies_to_earlier_requests_are_ignored() -> None:
    stale = vport_message(999, 10, FakeVport(7, "stale"))
    sock = FakeKernelSocket([FakeDatapath("dp0", 10, vports=[FakeVport(1, "fresh")])])
    source = KernelSource(lambda: sock)
    original_send = sock.send

    def send_with_stale_reply(data: bytes) -> None:
        original_send(data)
        if struct.unpack_from("=H", data, 4)[0] == VPORT_FAMILY_ID:
            # a datagram left over from an earlier, timed-out request (seq 999)
            sock.pending.insert(0, stale)

    sock.send = send_with_stale_reply  # type: ignore[method-assign]
    (dump,) = source.collect()
    assert [v.name for v in dump.vports] == ["fresh"]


def test_unexpected_message_type_is_a_decode_error() -> None:
    sock = FakeKernelSocket(two_datapaths())
    sock.vport_dump_override = {10: [struct.pack("=IHHII", 16, 0x99, 2, 0, 0)]}
    with pytest.raises(DecodeError, match="unexpected netlink message type 153"):
        KernelSource(lambda: sock).collect()


def test_no_reply_times_out() -> None:
    sock = FakeKernelSocket(two_datapaths())
    sock.vport_dump_override = {10: []}
    with pytest.raises(TimeoutError):
        KernelSource(lambda: sock).collect()


def test_real_socket_resolves_families_from_any_thread() -> None:
    """The real socket on this host: nlctrl always exists; scrapes run in many threads."""
    import threading

    from exporter.kernel.genl import GenlSocket

    sock = GenlSocket(5.0)
    results: list[object] = []

    def resolve() -> None:
        results.append(sock.family_id("nlctrl"))
        try:
            sock.family_id("nosuchfam")
        except FamilyNotFoundError as err:
            results.append(err)

    try:
        for _ in range(3):
            thread = threading.Thread(target=resolve)
            thread.start()
            thread.join(10)
    finally:
        sock.close()
    assert results[0::2] == [0x10] * 3
    assert all(isinstance(r, FamilyNotFoundError) for r in results[1::2])


def test_real_socket_poll_never_waits() -> None:
    """The event listener polls its notification socket after select() said it was readable, and
    at every tick: a poll of an idle socket returns None at once, whatever the socket's timeout."""
    import time

    from exporter.kernel.genl import GenlSocket

    sock = GenlSocket(5.0)
    try:
        started = time.monotonic()
        assert sock.poll() is None
        assert time.monotonic() - started < 1.0
        assert sock.family_id("nlctrl") == 0x10  # and requests still wait for their replies
    finally:
        sock.close()
