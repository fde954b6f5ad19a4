"""Property tests (hypothesis) of the decoder and the dump loop: any input decodes or raises
the project's own error, and every well-formed vport survives the round trip exactly."""

from __future__ import annotations

import contextlib
import errno

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter import wire
from exporter.source import KernelSource
from tests.fuzz.decode import decode_everything
from tests.ovs_messages import FakeDatapath, FakeKernelSocket, FakeVport, done, vport_message

u64 = st.integers(0, 2**64 - 1)
names = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1, max_size=15
)

vports = st.builds(
    FakeVport,
    port_no=st.integers(0, 2**32 - 1),
    name=names,
    type=st.integers(0, 2**32 - 1),
    ifindex=st.none() | st.integers(0, 2**32 - 1),
    netnsid=st.none() | st.integers(-(2**31), 2**31 - 1),
    stats=st.none() | st.tuples(u64, u64, u64, u64, u64, u64, u64, u64),
    upcall=st.none() | st.tuples(u64, u64),
    dst_port=st.none() | st.integers(0, 65535),
)


@given(st.binary(max_size=2048))
@settings(max_examples=3000)
def test_arbitrary_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    with contextlib.suppress(wire.DecodeError):
        decode_everything(data)


@given(vports, st.integers(1, 2**31 - 1))
@settings(max_examples=500)
def test_well_formed_vport_round_trips(v: FakeVport, dp_ifindex: int) -> None:
    buf = vport_message(1, dp_ifindex, v)
    (message,) = wire.iter_messages(buf)
    decoded = wire.decode_vport(buf, message)
    assert decoded == wire.Vport(
        dp_ifindex=dp_ifindex,
        port_no=v.port_no,
        type=v.type,
        name=v.name,
        ifindex=v.ifindex,
        netnsid=v.netnsid,
        stats=None if v.stats is None else wire.VportStats(*v.stats),
        upcall_stats=None if v.upcall is None else wire.UpcallStats(*v.upcall),
        dst_port=v.dst_port,
    )


@given(vports, st.data())
@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_vport_decodes_or_raises_decode_error(v: FakeVport, data: st.DataObject) -> None:
    buf = bytearray(vport_message(1, 3, v))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(buf) - 1))
        buf[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(buf)))
    with contextlib.suppress(wire.DecodeError):
        decode_everything(bytes(buf[:cut]))


@given(st.lists(st.binary(max_size=512), max_size=4))
@settings(max_examples=500)
def test_dump_loop_reports_garbage_as_its_own_errors(datagrams: list[bytes]) -> None:
    """Whatever the kernel sends for a vport dump, collect() raises only a reported error type."""
    sock = FakeKernelSocket([FakeDatapath("dp0", 3, vports=[FakeVport(1, "p")])])
    sock.vport_dump_override = {3: [*datagrams, done(0, errno.EIO)]}
    with contextlib.suppress(wire.DecodeError, wire.NetlinkError, TimeoutError):
        KernelSource(lambda: sock).collect()
