"""Property tests (hypothesis) of the decoder and the dump loop: any input decodes or raises
the project's own error, and every well-formed vport survives the round trip exactly."""

from __future__ import annotations

import contextlib
import errno

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.kernel.dumps import KernelSource
from exporter.kernel.families.datapath import OVS_DP_F_DISPATCH_UPCALL_PER_CPU, decode_datapath
from exporter.kernel.families.vport import UpcallStats, Vport, VportStats, decode_vport
from exporter.kernel.netlink import NLA_TYPE_MASK, DecodeError, NetlinkError, iter_messages
from tests.fuzz.decode import decode_everything
from tests.ovs_messages import (
    FakeDatapath,
    FakeKernelSocket,
    FakeVport,
    datapath_message,
    done,
    vport_message,
)

NLA_TYPE_MAX = NLA_TYPE_MASK

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
    upcall_pids=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=8).map(tuple),
    extension=st.none() | st.lists(st.integers(1, NLA_TYPE_MAX), max_size=3).map(tuple),
)

datapaths = st.builds(
    FakeDatapath,
    name=names,
    dp_ifindex=st.integers(1, 2**31 - 1),
    user_features=st.none() | st.integers(0, 2**32 - 1),
    masks_cache_size=st.none() | st.integers(0, 2**32 - 1),
    per_cpu_pids=st.none() | st.lists(st.integers(0, 2**32 - 1), max_size=8).map(tuple),
)


@given(st.binary(max_size=2048))
@settings(max_examples=3000, deadline=None)
def test_arbitrary_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_everything(data)


@given(vports, st.integers(1, 2**31 - 1))
@settings(max_examples=500, deadline=None)
def test_well_formed_vport_round_trips(v: FakeVport, dp_ifindex: int) -> None:
    buf = vport_message(1, dp_ifindex, v)
    (message,) = iter_messages(buf)
    decoded = decode_vport(buf, message)
    assert decoded == Vport(
        dp_ifindex=dp_ifindex,
        port_no=v.port_no,
        type=v.type,
        name=v.name,
        ifindex=v.ifindex,
        netnsid=v.netnsid,
        stats=None if v.stats is None else VportStats(*v.stats),
        upcall_stats=None if v.upcall is None else UpcallStats(*v.upcall),
        dst_port=v.dst_port,
        extension=v.extension,
        upcall_handlers=len(set(v.upcall_pids) - {0}),
    )


@given(datapaths)
@settings(max_examples=300, deadline=None)
def test_well_formed_datapath_round_trips(dp: FakeDatapath) -> None:
    buf = datapath_message(1, dp)
    (message,) = iter_messages(buf)
    decoded = decode_datapath(buf, message)
    assert (decoded.name, decoded.user_features, decoded.masks_cache_size, decoded.per_cpu_pids) == (
        dp.name,
        dp.user_features,
        dp.masks_cache_size,
        dp.per_cpu_pids,
    )
    per_cpu = dp.user_features is not None and bool(dp.user_features & OVS_DP_F_DISPATCH_UPCALL_PER_CPU)
    assert decoded.upcall_handlers == (len(set(dp.per_cpu_pids or ()) - {0}) if per_cpu else None)


@given(vports, st.data())
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_vport_decodes_or_raises_decode_error(v: FakeVport, data: st.DataObject) -> None:
    buf = bytearray(vport_message(1, 3, v))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(buf) - 1))
        buf[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(buf)))
    with contextlib.suppress(DecodeError):
        decode_everything(bytes(buf[:cut]))


@given(st.lists(st.binary(max_size=512), max_size=4))
@settings(max_examples=500, deadline=None)
def test_dump_loop_reports_garbage_as_its_own_errors(datagrams: list[bytes]) -> None:
    """Whatever the kernel sends for a vport dump, collect() raises only a reported error type."""
    sock = FakeKernelSocket([FakeDatapath("dp0", 3, vports=[FakeVport(1, "p")])])
    sock.vport_dump_override = {3: [*datagrams, done(0, errno.EIO)]}
    with contextlib.suppress(DecodeError, NetlinkError, TimeoutError):
        KernelSource(lambda: sock).collect()
