"""Decoding of kernel-layout messages: every attribute, and every way a reply can be wrong."""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from exporter.kernel.families.ct_limit import CtLimits, ZoneLimit, decode_ct_limits, encode_ct_limit_get
from exporter.kernel.families.datapath import (
    DATAPATH,
    Datapath,
    DatapathStats,
    MegaflowStats,
    decode_datapath,
)
from exporter.kernel.families.link import (
    IFINFOMSG,
    LINK,
    LINKINFO,
    RTEXT_FILTER_SKIP_STATS,
    RTM_GETLINK,
    RTM_NEWLINK,
    Link,
    decode_link,
    encode_get_link,
)
from exporter.kernel.families.meter import (
    OVS_METER_CMD_FEATURES,
    OVS_METER_CMD_GET,
    Meter,
    MeterFeatures,
    decode_meter,
    decode_meter_features,
    encode_meter_features,
    encode_meter_get,
)
from exporter.kernel.families.nlctrl import (
    CTRL_ATTR_FAMILY_ID,
    CTRL_ATTR_FAMILY_NAME,
    CTRL_CMD_GETFAMILY,
    CTRL_CMD_NEWFAMILY,
    GENL_ID_CTRL,
    CtrlFamily,
    decode_ctrl_family,
    encode_get_family,
)
from exporter.kernel.families.vport import VPORT, VXLAN_EXT, UpcallStats, Vport, VportStats, decode_vport
from exporter.kernel.netlink import (
    NLM_F_REQUEST,
    NLMSG_DONE,
    OVS_CMD_DEL,
    AttributeSet,
    DecodeError,
    Message,
    StructArray,
    StructLayout,
    encode_ovs_get,
    error_code,
    genl_command,
    iter_messages,
    ovs_start,
)
from tests.fake_genl import FakeMeter, ct_limit_message, meter_features_message, meter_message
from tests.ovs_messages import (
    NLA_F_NESTED,
    VPORT_FAMILY_ID,
    FakeDatapath,
    FakeVport,
    datapath_message,
    done,
    genl_ovs,
    link_message,
    nla,
    nlmsg,
    nlmsg_error,
    vport_message,
)


def decode_one_vport(message: bytes) -> Vport:
    (msg,) = list(iter_messages(message))
    return decode_vport(message, msg)


def raw_vport(attrs: bytes, dp_ifindex: int = 7) -> bytes:
    return nlmsg(VPORT_FAMILY_ID, 2, 1, genl_ovs(1, 1, dp_ifindex, attrs))


def test_vport_every_attribute_in_kernel_order() -> None:
    v = FakeVport(
        port_no=3,
        name="vxlan_sys_4789",
        type=4,
        ifindex=12,
        netnsid=5,
        stats=(1, 2, 3, 4, 5, 6, 7, 8),
        upcall=(40, 2),
        dst_port=4789,
        upcall_pids=(100, 101),
        extension=(VXLAN_EXT["GBP"],),
    )
    vport = decode_one_vport(vport_message(1, 7, v))
    assert vport == Vport(
        dp_ifindex=7,
        port_no=3,
        type=4,
        name="vxlan_sys_4789",
        ifindex=12,
        netnsid=5,
        stats=VportStats(1, 2, 3, 4, 5, 6, 7, 8),
        upcall_stats=UpcallStats(success=40, fail=2),
        dst_port=4789,
        extension=(1,),
        upcall_handlers=2,
    )
    assert vport.type_name == "vxlan"


def test_upcall_stats_numbering_starts_at_zero() -> None:
    # SUCCESS is attribute 0: a decoder that skips type 0 as "unspec" loses it.
    inner = nla(0, struct.pack("=Q", 123)) + nla(1, struct.pack("=Q", 4))
    attrs = (
        nla(1, struct.pack("=I", 1))
        + nla(2, struct.pack("=I", 1))
        + nla(3, b"p1\0")
        + nla(10 | NLA_F_NESTED, inner)
    )
    vport = decode_one_vport(raw_vport(attrs))
    assert vport.upcall_stats == UpcallStats(success=123, fail=4)


def test_missing_optional_attributes_are_none_not_zero() -> None:
    v = FakeVport(port_no=0, name="dp0", type=2, stats=None)
    vport = decode_one_vport(vport_message(1, 7, v))
    assert (vport.ifindex, vport.netnsid, vport.stats, vport.upcall_stats, vport.dst_port) == (
        None,
        None,
        None,
        None,
        None,
    )


def test_unknown_attributes_and_types_are_tolerated() -> None:
    unknown = nla(42, b"\x01\x02\x03") + nla(77 | NLA_F_NESTED, nla(1, b"xxxx"))
    v = FakeVport(port_no=9, name="new0", type=11, ifindex=3, extra_attrs=unknown)
    vport = decode_one_vport(vport_message(1, 7, v))
    assert vport.type == 11 and vport.type_name == "11" and vport.name == "new0"


def test_attribute_order_does_not_matter() -> None:
    attrs = (
        nla(6, struct.pack("=8Q", *range(8)))
        + nla(3, b"late\0")
        + nla(8, struct.pack("=I", 4))
        + nla(2, struct.pack("=I", 1))
        + nla(1, struct.pack("=I", 2))
    )
    vport = decode_one_vport(raw_vport(attrs))
    assert (vport.name, vport.port_no, vport.ifindex, vport.stats) == (
        "late",
        2,
        4,
        VportStats(*range(8)),
    )


def test_dst_port_as_u32_is_accepted() -> None:
    attrs = (
        nla(1, struct.pack("=I", 2))
        + nla(2, struct.pack("=I", 5))
        + nla(3, b"gnv\0")
        + nla(4 | NLA_F_NESTED, nla(1, struct.pack("=I", 6081)))
    )
    assert decode_one_vport(raw_vport(attrs)).dst_port == 6081


def test_name_decoding_never_fails() -> None:
    attrs = nla(1, struct.pack("=I", 2)) + nla(2, struct.pack("=I", 1)) + nla(3, b"bad\xff\0")
    assert decode_one_vport(raw_vport(attrs)).name == "bad\\xff"


def test_datapath_with_stats_and_megaflow_stats() -> None:
    dp = FakeDatapath("ovs-system", 4, stats=(10, 2, 1, 5), megaflow=(30, 3, 7))
    buf = datapath_message(1, dp)
    (msg,) = iter_messages(buf)
    assert decode_datapath(buf, msg) == Datapath(
        4, "ovs-system", DatapathStats(10, 2, 1, 5), MegaflowStats(30, 3, 7), 0, 256, None
    )


def test_datapath_without_megaflow_stats() -> None:
    dp = FakeDatapath("dp1", 5, megaflow=None)
    buf = datapath_message(1, dp)
    (msg,) = iter_messages(buf)
    assert decode_datapath(buf, msg).megaflow_stats is None


def test_datagram_with_many_messages_and_done() -> None:
    seq = 5
    buf = b"".join(vport_message(seq, 7, FakeVport(i, f"p{i}")) for i in range(3)) + done(seq)
    messages = list(iter_messages(buf))
    assert [m.type for m in messages] == [VPORT_FAMILY_ID] * 3 + [NLMSG_DONE]
    assert [decode_vport(buf, m).name for m in messages[:3]] == ["p0", "p1", "p2"]
    assert error_code(buf, messages[3]) == 0


def test_error_codes_are_positive_errnos() -> None:
    buf = nlmsg_error(1, 19)
    (msg,) = iter_messages(buf)
    assert error_code(buf, msg) == 19


@pytest.mark.parametrize(
    ("mangle", "expected"),
    [
        (lambda b: b[:10], "truncated netlink header"),
        (lambda b: b[:-8], "claims"),
        (lambda b: struct.pack("=I", 8) + b[4:], "claims 8 bytes"),
    ],
    ids=["short-header", "short-body", "length-below-header"],
)
def test_truncated_messages_raise_decode_error(mangle: Callable[[bytes], bytes], expected: str) -> None:
    bad = mangle(vport_message(1, 7, FakeVport(1, "p1", ifindex=3)))
    with pytest.raises(DecodeError, match=expected):
        for msg in iter_messages(bad):
            decode_vport(bad, msg)


def test_message_without_genl_header_raises_decode_error() -> None:
    bad = nlmsg(VPORT_FAMILY_ID, 2, 1, b"\x01")
    (msg,) = iter_messages(bad)
    with pytest.raises(DecodeError, match=r"shorter than its 24-byte headers"):
        decode_vport(bad, msg)


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        (nla(1, b"\x01\x00"), "PORT_NO attribute 1 .*want 4 bytes, got 2"),
        (nla(1, struct.pack("=I", 1)) + nla(2, struct.pack("=I", 1)) + nla(3, b"x\0") + nla(6, b"\0" * 56),
         "STATS attribute 6 .*want 64 bytes, got 56"),
        (nla(1, struct.pack("=I", 1)) + nla(2, struct.pack("=I", 1)), "lacks NAME"),
        (nla(3, b"x\0"), "lacks PORT_NO, TYPE"),
        (nla(1, struct.pack("=I", 1)) + struct.pack("=HH", 200, 3) + b"xx\0\0", "claims 200 bytes"),
        (nla(1, struct.pack("=I", 1)) + struct.pack("=HH", 2, 3), "claims 2 bytes"),
        (nla(1, struct.pack("=I", 1)) + nla(2, struct.pack("=I", 1)) + nla(3, b"x\0")
         + nla(10 | NLA_F_NESTED, nla(0, struct.pack("=Q", 1))), "lacks its SUCCESS or FAIL"),
        (nla(1, struct.pack("=I", 1)) + nla(2, struct.pack("=I", 1)) + nla(3, b"x\0")
         + nla(10 | NLA_F_NESTED, nla(0, b"\0" * 4) + nla(1, b"\0" * 8)), "want 8 bytes, got 4"),
        (nla(1, struct.pack("=I", 1)) + nla(2, struct.pack("=I", 1)) + nla(3, b"x\0")
         + nla(4 | NLA_F_NESTED, nla(1, b"\0")), "DST_PORT .*got 1"),
        (nla(1, struct.pack("=I", 1)) + b"\x05\x00", "trailing bytes"),
    ],
    ids=[
        "short-port-no", "short-stats", "no-name", "no-port-no-type", "attr-overruns",
        "attr-len-below-header", "upcall-missing-fail", "upcall-short", "dst-port-width", "trailing",
    ],
)  # fmt: skip
def test_malformed_vport_attributes_raise_decode_error(attrs: bytes, expected: str) -> None:
    with pytest.raises(DecodeError, match=expected):
        decode_one_vport(raw_vport(attrs))


def test_malformed_datapath_raises_decode_error() -> None:
    buf = nlmsg(0x1A, 2, 1, genl_ovs(1, 2, 3, nla(3, b"\0" * 16)))
    (msg,) = iter_messages(buf)
    with pytest.raises(DecodeError, match=r"STATS attribute 3 .*want 32 bytes, got 16"):
        decode_datapath(buf, msg)
    buf = nlmsg(0x1A, 2, 1, genl_ovs(1, 2, 3, nla(3, b"\0" * 32)))
    (msg,) = iter_messages(buf)
    with pytest.raises(DecodeError, match=r"no NAME"):
        decode_datapath(buf, msg)


def test_get_dump_request_layout() -> None:
    request = encode_ovs_get(0x1B, 1, seq=9, dp_ifindex=42)
    assert request == struct.pack("=IHHII", 24, 0x1B, 0x301, 9, 0) + struct.pack("=BBHi", 3, 1, 0, 42)


# --- datapath attributes and vport upcall PIDs / tunnel extensions ------------------------------


def decode_one_datapath(message: bytes) -> Datapath:
    (msg,) = list(iter_messages(message))
    return decode_datapath(message, msg)


def test_datapath_features_cache_size_and_per_cpu_pids() -> None:
    dp = FakeDatapath(
        "ovs-system", 5, user_features=0b1011, masks_cache_size=256, per_cpu_pids=(1001, 1002, 1001, 0)
    )
    record = decode_one_datapath(datapath_message(1, dp))
    assert (record.user_features, record.masks_cache_size, record.per_cpu_pids) == (
        0b1011,
        256,
        (1001, 1002, 1001, 0),
    )
    assert record.per_cpu_dispatch is True
    # vswitchd repeats a handler's PID for CPUs beyond its handlers; a 0 reaches no socket.
    assert record.upcall_handlers == 2


def test_per_cpu_datapath_without_pid_array_has_zero_handlers() -> None:
    # OVS 3.1.0 before 10 s of uptime: per-CPU mode set, PIDs never sent. Every miss is lost.
    record = decode_one_datapath(datapath_message(1, FakeDatapath("ovs-system", 5, user_features=0b1001)))
    assert record.per_cpu_pids is None
    assert record.upcall_handlers == 0


def test_per_vport_datapath_reports_no_handler_count() -> None:
    record = decode_one_datapath(datapath_message(1, FakeDatapath("dp0", 5, user_features=0b0011)))
    assert record.per_cpu_dispatch is False
    assert record.upcall_handlers is None


def test_datapath_attributes_not_sent_are_none() -> None:
    dp = FakeDatapath("old", 5, user_features=None, masks_cache_size=None)
    record = decode_one_datapath(datapath_message(1, dp))
    assert (
        record.user_features,
        record.masks_cache_size,
        record.per_cpu_dispatch,
        record.upcall_handlers,
    ) == (
        None,
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("attr", "payload"),
    [(5, b"\1\0"), (7, b"\0" * 8), (8, b"\1\2\3\4\5")],
    ids=["user_features_short", "masks_cache_size_long", "per_cpu_pids_ragged"],
)
def test_malformed_datapath_attributes_are_rejected(attr: int, payload: bytes) -> None:
    attrs = nla(1, b"dp\0") + nla(attr, payload)
    message = nlmsg(0x1A, 2, 1, genl_ovs(1, 2, 5, attrs))
    with pytest.raises(DecodeError, match=f"attribute {attr}"):
        decode_one_datapath(message)


def test_vxlan_extension_keeps_unknown_flags() -> None:
    v = FakeVport(port_no=4, name="vxgbp", type=4, ifindex=9, dst_port=4789, extension=(1, 5))
    assert decode_one_vport(vport_message(1, 7, v)).extension == (1, 5)
    plain = FakeVport(port_no=5, name="vx", type=4, ifindex=10, dst_port=4789)
    assert decode_one_vport(vport_message(1, 7, plain)).extension is None


def test_vport_upcall_handlers_count_distinct_non_zero_pids() -> None:
    def handlers(pids: tuple[int, ...]) -> int | None:
        return decode_one_vport(vport_message(1, 7, FakeVport(1, "p", upcall_pids=pids))).upcall_handlers

    assert handlers((0,)) == 0
    assert handlers((77,)) == 1
    assert handlers((0, 0, 0)) == 0
    assert handlers((5, 6, 5, 0)) == 2
    attrs = nla(1, struct.pack("=I", 1)) + nla(2, struct.pack("=I", 1)) + nla(3, b"p\0")
    assert decode_one_vport(raw_vport(attrs)).upcall_handlers is None  # not sent: not reported
    with pytest.raises(DecodeError, match="UPCALL_PID"):
        decode_one_vport(raw_vport(attrs + nla(5, b"\1\2\3\4\5\6")))


# --- nlctrl and notifications -------------------------------------------------------------------


def test_ctrl_family_reply_with_groups() -> None:
    from tests.ovs_messages import ctrl_family_message

    buf = ctrl_family_message(CTRL_CMD_NEWFAMILY, "ovs_vport", 0x22, [("ovs_vport", 9), ("x", 10)], seq=4)
    (msg,) = iter_messages(buf)
    assert decode_ctrl_family(buf, msg) == CtrlFamily(1, "ovs_vport", 0x22, (("ovs_vport", 9), ("x", 10)))


def test_ctrl_family_request_is_what_the_kernel_expects() -> None:
    buf = encode_get_family(7, "ovs_vport")
    (msg,) = iter_messages(buf)
    assert (msg.type, msg.seq, msg.flags) == (GENL_ID_CTRL, 7, NLM_F_REQUEST)
    assert buf[16:20] == bytes([CTRL_CMD_GETFAMILY, 2, 0, 0])
    assert buf[20:] == nla(CTRL_ATTR_FAMILY_NAME, b"ovs_vport\0")


def test_malformed_ctrl_family_id_is_rejected() -> None:
    buf = nlmsg(GENL_ID_CTRL, 0, 1, struct.pack("=BBH", 1, 2, 0) + nla(CTRL_ATTR_FAMILY_ID, b"\0" * 4))
    (msg,) = iter_messages(buf)
    with pytest.raises(DecodeError, match="FAMILY_ID"):
        decode_ctrl_family(buf, msg)


def test_notification_command_and_datapath() -> None:
    from tests.ovs_messages import vport_notification

    buf = vport_notification(OVS_CMD_DEL, 12, FakeVport(3, "tap3"))
    (msg,) = iter_messages(buf)
    assert genl_command(buf, msg) == (OVS_CMD_DEL, 12)
    with pytest.raises(DecodeError, match="shorter"):
        short = nlmsg(VPORT_FAMILY_ID, 0, 0, b"\1\1")
        genl_command(short, next(iter_messages(short)))


# --- rtnetlink links (exporter.kernel.families.link) ---------------------------------------------


def test_link_get_request_is_one_link_without_statistics() -> None:
    buf = encode_get_link(9, 42)
    (msg,) = iter_messages(buf)
    # A GET of one link (no NLM_F_DUMP): the only rtnetlink request the exporter sends.
    assert (msg.type, msg.seq, msg.flags) == (RTM_GETLINK, 9, NLM_F_REQUEST)
    assert IFINFOMSG.unpack_from(buf, 16) == (0, 0, 42, 0, 0)
    assert buf[32:] == nla(LINK["EXT_MASK"], struct.pack("=I", RTEXT_FILTER_SKIP_STATS))


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("veth", "veth"), ("tun", "tun"), ("geneve", "geneve"), ("openvswitch", "openvswitch"), (None, None)],
)
def test_link_reply_gives_name_and_kind(kind: str | None, expected: str | None) -> None:
    buf = link_message(3, 17, "tap1", kind)
    (msg,) = iter_messages(buf)
    assert msg.type == RTM_NEWLINK
    assert decode_link(buf, msg) == Link(17, "tap1", expected)


def test_link_slave_kind_is_not_the_kind() -> None:
    """A bond's member has IFLA_INFO_SLAVE_KIND "bond" and no kind of its own: a physical NIC."""
    info = nla(LINKINFO["SLAVE_KIND"], b"bond\0")
    attrs = nla(LINK["IFNAME"], b"eth1\0") + nla(LINK["LINKINFO"] | NLA_F_NESTED, info)
    buf = nlmsg(RTM_NEWLINK, 0, 1, IFINFOMSG.pack(0, 1, 5, 0, 0) + attrs)
    assert decode_link(buf, next(iter_messages(buf))) == Link(5, "eth1", None)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"\0" * 8, "shorter than its 32-byte headers"),
        (IFINFOMSG.pack(0, 1, 5, 0, 0) + struct.pack("=HH", 40, 3) + b"eth", "link attribute at offset 32"),
        (IFINFOMSG.pack(0, 1, 5, 0, 0) + nla(18, struct.pack("=HH", 99, 1)), "link LINKINFO attribute"),
    ],
)
def test_malformed_link_replies_raise_decode_error(payload: bytes, expected: str) -> None:
    buf = nlmsg(RTM_NEWLINK, 0, 1, payload)
    with pytest.raises(DecodeError, match=expected):
        decode_link(buf, next(iter_messages(buf)))


# --- captured real-kernel dumps (tests/fixtures/kernel, python -m tests.vm capture) ------------

CAPTURES = sorted(
    p.parent for p in (Path(__file__).resolve().parents[1] / "fixtures" / "kernel").glob("*/expected.json")
)


def _records(capture: Path, name: str, family: int, decode: Callable[[bytes, Message], object]) -> list:
    buf = (capture / name).read_bytes()
    # Each .bin is whole datagrams back to back: their messages parse straight through.
    return [decode(buf, m) for m in iter_messages(buf) if m.type == family]


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.name)
def test_captured_datapath_attributes_and_gbp(capture: Path) -> None:
    expected = json.loads((capture / "expected.json").read_text())
    families = expected["families"]
    datapaths = {
        d.name: d for d in _records(capture, "datapaths.bin", families["ovs_datapath"], decode_datapath)
    }
    for want in expected["datapaths"]:
        got = datapaths[want["name"]]
        assert (got.user_features, got.masks_cache_size) == (want["user_features"], want["masks_cache_size"])
        assert got.per_cpu_pids == (None if want["per_cpu_pids"] is None else tuple(want["per_cpu_pids"]))
    # ovs-p: per-CPU with two handler sockets set; ovs-a: per-CPU (ovs-dpctl) and no PIDs; ovs-u: per-vport.
    assert datapaths["ovs-p"].upcall_handlers == 2
    assert datapaths["ovs-a"].per_cpu_dispatch and datapaths["ovs-a"].upcall_handlers == 0
    assert datapaths["ovs-u"].per_cpu_dispatch is False and datapaths["ovs-u"].upcall_handlers is None
    vports = {
        v.name: v
        for v in _records(capture, "vports-ovs-b.bin", families["ovs_vport"], decode_vport)
        + _records(capture, "vports-ovs-u.bin", families["ovs_vport"], decode_vport)
    }
    assert vports["vxgb"].extension == (VXLAN_EXT["GBP"],)
    assert vports["vxb"].extension is None
    # ovs-u's ports upcall to a live socket (vu0) and a dead pid (vu1); its local port to none.
    assert (
        vports["vu0"].upcall_handlers,
        vports["vu1"].upcall_handlers,
        vports["ovs-u"].upcall_handlers,
    ) == (1, 1, 0)


# --- the declared formats against the hand-written decoders -------------------------------------


def _vport_from_table(buf: bytes, message: Message) -> Vport:
    """A vport decoded by the generic decoder over the family's declared table (VPORT)."""
    dp_ifindex, pos = ovs_start(buf, message, "vport")
    attrs = VPORT.decode(buf, pos, message.end)
    options = attrs.get("OPTIONS", {})
    dst_port = options.get("DST_PORT")
    upcall = attrs.get("UPCALL_STATS")
    pids = attrs.get("UPCALL_PID")
    return Vport(
        dp_ifindex,
        attrs["PORT_NO"],
        attrs["TYPE"],
        attrs["NAME"],
        attrs.get("IFINDEX"),
        attrs.get("NETNSID"),
        VportStats(*attrs["STATS"]) if "STATS" in attrs else None,
        UpcallStats(upcall["SUCCESS"], upcall["FAIL"]) if upcall is not None else None,
        int.from_bytes(dst_port, sys.byteorder) if dst_port is not None else None,
        tuple(VXLAN_EXT[name] for name in options["EXTENSION"]) if "EXTENSION" in options else None,
        len(set(pids) - {0}) if pids is not None else None,
    )


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.name)
def test_the_vport_decoder_reads_what_the_declared_table_says(capture: Path) -> None:
    """decode_vport's unrolled reads and the VPORT table (the uapi numbers as data) agree on
    every message real kernels sent: a number typed wrongly in either would show here."""
    families = json.loads((capture / "expected.json").read_text())["families"]
    checked = 0
    for path in sorted(capture.glob("vports-*.bin")):
        buf = path.read_bytes()
        for message in iter_messages(buf):
            if message.type == families["ovs_vport"]:
                assert decode_vport(buf, message) == _vport_from_table(buf, message)
                checked += 1
    assert checked > 10


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.name)
def test_datapaths_decode_with_the_declared_table(capture: Path) -> None:
    families = json.loads((capture / "expected.json").read_text())["families"]
    buf = (capture / "datapaths.bin").read_bytes()
    for message in iter_messages(buf):
        if message.type == families["ovs_datapath"]:
            _dp_ifindex, pos = ovs_start(buf, message, "datapath")
            attrs = DATAPATH.decode(buf, pos, message.end)
            datapath = decode_datapath(buf, message)
            assert (attrs["NAME"], attrs["STATS"]) == (datapath.name, tuple(datapath.stats or ()))


def test_attribute_tables_reject_unknown_types_and_name_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="unknown attribute type"):
        AttributeSet("x", {1: ("A", "u24")})
    layout = StructLayout("pair", (("a", "u32"), ("b", "u32")))
    table = AttributeSet("t", {1: ("PAIRS", StructArray(layout)), 2: ("ONE", layout), 3: ("F", "flag")})
    buf = (
        nla(1, struct.pack("=4I", 1, 2, 3, 4)) + nla(2, struct.pack("=2I", 5, 6)) + nla(3, b"") + nla(9, b"x")
    )
    assert table.decode(buf, 0, len(buf)) == {"PAIRS": [(1, 2), (3, 4)], "ONE": (5, 6), "F": True}
    with pytest.raises(
        DecodeError, match=r"t PAIRS attribute 1 at offset 0: 12 bytes, not whole 8-byte pair"
    ):
        bad = nla(1, b"\0" * 12)
        table.decode(bad, 0, len(bad))
    with pytest.raises(DecodeError, match=r"t ONE attribute 2 .*want 8 bytes, got 4"):
        bad = nla(2, b"\0" * 4)
        table.decode(bad, 0, len(bad))


# --- ovs_meter and ovs_ct_limit ---------------------------------------------------------------


def one(buf: bytes) -> tuple[bytes, Message]:
    (message,) = iter_messages(buf)
    return buf, message


def test_meter_get_reply_in_kernel_order() -> None:
    meter = FakeMeter(17, packets=1000, bytes=64000, band_packets=990, band_bytes=63360)
    assert decode_meter(*one(meter_message(5, 7, meter))) == Meter(17, 1000, 64000, 990, 63360)


def test_meter_bands_sum_and_a_meter_without_bands_dropped_nothing() -> None:
    assert decode_meter(*one(meter_message(5, 7, FakeMeter(1, 3, 4, 1, 2, bands=2)))).dropped_packets == 2
    assert decode_meter(*one(meter_message(5, 7, FakeMeter(1, 3, 4, 1, 2, bands=0))))[3:] == (0, 0)


def test_meter_attributes_not_sent_are_none() -> None:
    buf = nlmsg(0x1D, 0, 1, genl_ovs(4, 1, 7, nla(1, struct.pack("=I", 3))))
    assert decode_meter(*one(buf)) == Meter(3, None, None, None, None)


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        (nla(3, b"\0" * 16), "meter message at offset 0 has no ID"),
        (nla(1, b"\0\0"), "meter ID attribute 1 .*want 4 bytes, got 2"),
        (nla(1, b"\0" * 4) + nla(3, b"\0" * 8), "meter STATS attribute 3 .*want 16 bytes, got 8"),
        (nla(1, b"\0" * 4) + nla(4 | NLA_F_NESTED, nla(NLA_F_NESTED, nla(4, b"\0" * 15))),
         "meter band STATS attribute 4 .*want 16 bytes, got 15"),
        (nla(1, b"\0" * 4) + nla(5, b"\0" * 4), "meter USED attribute 5 .*want 8 bytes, got 4"),
    ],
    ids=["no-id", "short-id", "short-stats", "short-band-stats", "short-used"],
)  # fmt: skip
def test_malformed_meter_replies_name_the_attribute(attrs: bytes, expected: str) -> None:
    with pytest.raises(DecodeError, match=expected):
        decode_meter(*one(nlmsg(0x1D, 0, 1, genl_ovs(4, 1, 7, attrs))))


def test_meter_features_reply() -> None:
    assert decode_meter_features(*one(meter_features_message(2, 7, 200_000))) == MeterFeatures(200_000, 1)


def test_meter_requests_use_the_meter_familys_own_numbers() -> None:
    """ovs_meter numbers GET 4 and FEATURES 1; 3 is its DEL. No flag but NLM_F_REQUEST."""
    get = encode_meter_get(0x1D, seq=9, dp_ifindex=42, meter_id=5)
    assert get == (
        struct.pack("=IHHII", 32, 0x1D, NLM_F_REQUEST, 9, 0)
        + struct.pack("=BBHi", OVS_METER_CMD_GET, 1, 0, 42)
        + nla(1, struct.pack("=I", 5))
    )
    assert OVS_METER_CMD_GET == 4 and OVS_METER_CMD_FEATURES == 1
    features = encode_meter_features(0x1D, seq=10, dp_ifindex=42)
    assert features == struct.pack("=IHHII", 24, 0x1D, NLM_F_REQUEST, 10, 0) + struct.pack(
        "=BBHi", 1, 1, 0, 42
    )


def test_ct_limit_reply_default_then_zones() -> None:
    reply = ct_limit_message(3, [(-1, 0, 0), (5, 100, 37), (7, 0, 0)])
    assert decode_ct_limits(*one(reply)) == CtLimits(0, (ZoneLimit(5, 100, 37), ZoneLimit(7, 0, 0)))
    assert decode_ct_limits(*one(ct_limit_message(3, [(9, 4, 4)]))) == CtLimits(None, (ZoneLimit(9, 4, 4),))
    # Reading every zone id: the zones at the default limit are left out as they are decoded.
    asked = ct_limit_message(3, [(-1, 50, 0), (1, 50, 0), (2, 7, 7), (3, 50, 2)])
    assert decode_ct_limits(*one(asked), skip_limit=50) == CtLimits(50, (ZoneLimit(2, 7, 7),))


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        (b"", "has no ZONE_LIMIT"),
        (nla(1, b"\0" * 13), "ct_limit ZONE_LIMIT attribute 1 .*13 bytes, not whole 12-byte ovs_zone_limit"),
        (nla(1, struct.pack("=iII", 70000, 1, 1)), "zone id 70000 out of range"),
        (nla(1, struct.pack("=iII", -2, 1, 1)), "zone id -2 out of range"),
    ],
    ids=["no-zone-limit", "partial-struct", "zone-too-big", "negative-zone"],
)
def test_malformed_ct_limit_replies_are_rejected(attrs: bytes, expected: str) -> None:
    with pytest.raises(DecodeError, match=expected):
        decode_ct_limits(*one(nlmsg(0x1E, 0, 1, genl_ovs(3, 1, 0, attrs))))


def test_ct_limit_requests() -> None:
    every = encode_ct_limit_get(0x1E, seq=4)
    assert every == struct.pack("=IHHII", 24, 0x1E, NLM_F_REQUEST, 4, 0) + struct.pack("=BBHi", 3, 1, 0, 0)
    some = encode_ct_limit_get(0x1E, seq=5, zones=[-1, 7])
    assert some[24:] == nla(1, struct.pack("=iII", -1, 0, 0) + struct.pack("=iII", 7, 0, 0))
    assert struct.unpack_from("=I", some)[0] == len(some) == 24 + 4 + 24
