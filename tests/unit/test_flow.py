"""The ``ovs_flow`` codec: the hot scanner, the plain walk and the declared tables agree on every
message, hand-built in the kernel's layout or captured from real kernels; malformed ones raise."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

from exporter.kernel.families import flow as flow_module
from exporter.kernel.families.flow import (
    ACTIONS,
    DUMP_UFID_FLAGS,
    FLOW,
    KEY,
    OVS_UFID_F_OMIT_MASK,
    Flow,
    FlowTally,
    decode_flow,
    encode_flow_dump,
    scan_flows,
)
from exporter.kernel.netlink import (
    NLM_F_DUMP,
    NLM_F_REQUEST,
    OVS_CMD_GET,
    DecodeError,
    Message,
    iter_messages,
    ovs_start,
)
from tests import flow_messages as fm
from tests.flow_messages import FakeFlow, drop_action, flow_dump, flow_message
from tests.ovs_messages import NLA_F_NESTED, done, genl_ovs, nla, nlmsg

CAPTURES = sorted((Path(__file__).resolve().parents[1] / "fixtures" / "kernel").glob("*/flows"))


def scanned(datagrams: list[bytes], seq: int = 7, family: int = fm.FLOW_FAMILY_ID) -> FlowTally:
    tally = FlowTally()
    for buf in datagrams:
        pos = scan_flows(buf, 0, seq, family, tally)
        assert pos == len(buf) or next(iter_messages(buf, pos)).type == 3  # NLMSG_DONE
    return tally


def walked(datagrams: list[bytes], family: int = fm.FLOW_FAMILY_ID) -> FlowTally:
    tally = FlowTally()
    for buf in datagrams:
        for message in iter_messages(buf):
            if message.type == family:
                tally.add(decode_flow(buf, message))
    return tally


def from_tables(buf: bytes, message: object) -> tuple[int | None, int, bool, int | None, int, int]:
    """What the declared FLOW, KEY and ACTIONS tables say of a message (the generic decoder)."""
    _dp, pos = ovs_start(buf, message, "flow")  # type: ignore[arg-type]
    attrs = FLOW.decode(buf, pos, message.end)  # type: ignore[attr-defined]
    key = attrs.get("KEY", {})
    actions = attrs.get("ACTIONS")
    drop, reason = False, None
    if actions is not None:
        listed = []
        at = 0
        while at < len(actions):
            length, atype = struct.unpack_from("=HH", actions, at)
            listed.append((atype & 0x3FFF, actions[at + 4 : at + length]))
            at += (length + 3) & ~3
        if not listed:
            drop = True
        elif len(listed) == 1 and listed[0][0] == ACTIONS["DROP"]:
            drop, reason = True, struct.unpack("=I", listed[0][1])[0]
    packets, nbytes = attrs.get("STATS", (0, 0))
    return key.get("IN_PORT"), key.get("RECIRC_ID", 0), drop, reason, packets, nbytes


def summary(flow: Flow) -> tuple[int | None, int, bool, int | None, int, int]:
    return flow.in_port, flow.recirc_id, flow.drop, flow.reason, flow.packets, flow.bytes


def one(flow: FakeFlow) -> tuple[bytes, object]:
    buf = flow_message(7, 5, flow)
    (message,) = iter_messages(buf)
    return buf, message


CASES = {
    "forwarding": FakeFlow(in_port=3, ufid=fm.ufid(1), packets=10, nbytes=1000, used=5),
    "empty actions": FakeFlow(in_port=4, ufid=fm.ufid(2), packets=7, nbytes=700, used=9, actions=[]),
    "explicit drop": FakeFlow(in_port=4, ufid=fm.ufid(3), packets=2, nbytes=120, actions=drop_action(3)),
    "drop without stats": FakeFlow(in_port=4, ufid=fm.ufid(4), actions=drop_action(0)),
    "drop with tcp flags": FakeFlow(
        in_port=2, ufid=fm.ufid(5), packets=3, nbytes=180, tcp_flags=2, actions=[]
    ),
    "recirculated": FakeFlow(in_port=6, ufid=fm.ufid(6), recirc_id=42, actions=[]),
    "from a tunnel": FakeFlow(
        in_port=9,
        ufid=fm.ufid(7),
        packets=1,
        nbytes=64,
        tunnel=nla(0, struct.pack("!Q", 5)) + nla(1, b"\n\0\0\1"),
    ),
    "without a ufid": FakeFlow(in_port=3, ufid=None, packets=5, nbytes=500, actions=[]),
    "a short ufid": FakeFlow(in_port=3, ufid=b"\1\2\3\4", packets=1, nbytes=60),
    "no in_port": FakeFlow(in_port=None, ufid=fm.ufid(8), actions=[]),
    "drop after a sample": FakeFlow(
        in_port=3,
        ufid=fm.ufid(9),
        actions=[(fm.ACTION_USERSPACE | NLA_F_NESTED, nla(1, b"\0\0\0\0")), *drop_action(0)],
    ),
    "with the mask": FakeFlow(
        in_port=3, ufid=fm.ufid(10), mask=True, actions=drop_action(5), packets=1, nbytes=1
    ),
    "newer key attribute": FakeFlow(in_port=3, ufid=fm.ufid(11), extra_key=nla(29, b"\0" * 4), actions=[]),
}


@pytest.mark.parametrize("name", CASES)
def test_scanner_walk_and_tables_agree(name: str) -> None:
    flow = CASES[name]
    buf, message = one(flow)
    decoded = decode_flow(buf, message)  # type: ignore[arg-type]
    assert summary(decoded) == from_tables(buf, message)
    tally = scanned([buf + done(7)])
    assert tally.flows == 1 and tally.identities == {decoded.identity}
    assert tally.drops == ([decoded] if decoded.drop else [])
    expected_ports = {flow.in_port: 1} if flow.in_port is not None and flow.recirc_id == 0 else {}
    assert tally.flows_by_port == expected_ports


def test_what_each_case_means() -> None:
    def of(name: str) -> Flow:
        buf, message = one(CASES[name])
        return decode_flow(buf, message)  # type: ignore[arg-type]

    assert summary(of("forwarding")) == (3, 0, False, None, 10, 1000)
    assert summary(of("empty actions")) == (4, 0, True, None, 7, 700)
    assert summary(of("explicit drop")) == (4, 0, True, 3, 2, 120)
    assert summary(of("drop without stats")) == (4, 0, True, 0, 0, 0)
    assert summary(of("recirculated")) == (6, 42, True, None, 0, 0)
    assert summary(of("from a tunnel"))[0] == 9
    assert summary(of("no in_port")) == (None, 0, True, None, 0, 0)
    assert not of("drop after a sample").drop
    # The identity is the UFID's first 8 bytes; without a UFID, the key's bytes make it.
    assert of("forwarding").identity == int.from_bytes(fm.ufid(1)[:8], "little")
    assert of("without a ufid").identity != of("forwarding").identity


def test_a_whole_dump_scans_as_it_walks() -> None:
    flows = fm.typical_flows(3000, 40)
    datagrams = flow_dump(7, 5, flows)
    assert len(datagrams) > 10
    fast, plain = scanned(datagrams), walked(datagrams)
    assert (fast.flows, fast.flows_by_port, sorted(fast.drops), fast.duplicates) == (
        plain.flows,
        plain.flows_by_port,
        sorted(plain.drops),
        plain.duplicates,
    )
    assert fast.flows == 3000
    assert sum(fast.flows_by_port.values()) == sum(1 for f in flows if f.recirc_id == 0)
    assert len(fast.drops) == sum(1 for f in flows if f.actions == [] or f.actions[0][0] == fm.ACTION_DROP)


def test_a_flow_listed_twice_counts_once() -> None:
    flow = FakeFlow(in_port=3, ufid=fm.ufid(1), actions=[], packets=4, nbytes=40)
    other = FakeFlow(in_port=5, ufid=None, actions=[], packets=1, nbytes=10)
    datagrams = flow_dump(7, 5, [flow, other, flow, other])
    tally = scanned(datagrams)
    assert (tally.flows, tally.duplicates, tally.flows_by_port, len(tally.drops)) == (2, 2, {3: 1, 5: 1}, 2)


def test_messages_of_other_requests_are_skipped_and_done_ends_the_run() -> None:
    mine = flow_message(7, 5, FakeFlow(in_port=1, ufid=fm.ufid(1)))
    late = flow_message(6, 5, FakeFlow(in_port=2, ufid=fm.ufid(2)))
    buf = mine + late + done(7)
    tally = FlowTally()
    pos = scan_flows(buf, 0, 7, fm.FLOW_FAMILY_ID, tally)
    assert pos == len(mine) + len(late) and tally.flows_by_port == {1: 1}


def test_the_dump_request_is_a_get_dump_without_masks() -> None:
    request = encode_flow_dump(0x1C, 9, 5)
    length, mtype, flags, seq, _pid = struct.unpack_from("=IHHII", request)
    cmd, version, _reserved, dp_ifindex = struct.unpack_from("=BBHi", request, 16)
    assert (length, mtype, flags, seq) == (len(request), 0x1C, NLM_F_REQUEST | NLM_F_DUMP, 9)
    assert (cmd, version, dp_ifindex) == (OVS_CMD_GET, 1, 5)
    assert request[24:] == nla(FLOW["UFID_FLAGS"], struct.pack("=I", OVS_UFID_F_OMIT_MASK))
    assert DUMP_UFID_FLAGS == OVS_UFID_F_OMIT_MASK  # the key and the actions are needed


def test_the_tables_carry_the_uapi_numbers() -> None:
    """Against tests/flow_messages.py, which writes them out again from openvswitch.h."""
    assert (FLOW["KEY"], FLOW["ACTIONS"], FLOW["STATS"], FLOW["USED"], FLOW["UFID"], FLOW["UFID_FLAGS"]) == (
        fm.FLOW_KEY, fm.FLOW_ACTIONS, fm.FLOW_STATS, fm.FLOW_USED, fm.FLOW_UFID, 10,
    )  # fmt: skip
    assert (KEY["IN_PORT"], KEY["RECIRC_ID"], KEY["TUNNEL"], KEY["DP_HASH"], KEY["PRIORITY"]) == (
        fm.KEY_IN_PORT, fm.KEY_RECIRC_ID, fm.KEY_TUNNEL, fm.KEY_DP_HASH, fm.KEY_PRIORITY,
    )  # fmt: skip
    assert (ACTIONS["OUTPUT"], ACTIONS["DROP"]) == (fm.ACTION_OUTPUT, fm.ACTION_DROP)


def raw_flow(attrs: bytes) -> bytes:
    return nlmsg(fm.FLOW_FAMILY_ID, 2, 7, genl_ovs(1, 1, 5, attrs))


UFID = nla(fm.FLOW_UFID, fm.ufid(1))
KEY_OK = nla(fm.FLOW_KEY, nla(fm.KEY_RECIRC_ID, b"\0" * 4) + nla(fm.KEY_IN_PORT, b"\1\0\0\0"))


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        (
            UFID + KEY_OK + nla(fm.FLOW_STATS, b"\0" * 8) + nla(fm.FLOW_ACTIONS, b""),
            "flow STATS attribute 3 .*want 16 bytes, got 8",
        ),
        (
            UFID + nla(fm.FLOW_KEY, nla(fm.KEY_IN_PORT, b"\1\0")) + nla(fm.FLOW_ACTIONS, b""),
            "flow KEY IN_PORT attribute 3 .*want 4 bytes, got 2",
        ),
        (
            UFID + nla(fm.FLOW_KEY, nla(fm.KEY_RECIRC_ID, b"\0" * 8)) + nla(fm.FLOW_ACTIONS, b""),
            "flow KEY RECIRC_ID attribute 20 .*want 4 bytes, got 8",
        ),
        (
            UFID + KEY_OK + nla(fm.FLOW_ACTIONS, nla(fm.ACTION_DROP, b"\0\0")),
            "flow ACTIONS DROP attribute 24 .*want 4 bytes, got 2",
        ),
        (
            UFID + KEY_OK + nla(fm.FLOW_ACTIONS, b"\0\0"),
            "flow ACTIONS at offset .*: 2 bytes, not an attribute",
        ),
        (
            UFID + KEY_OK + nla(fm.FLOW_ACTIONS, struct.pack("=HH", 40, 24) + b"\0" * 4),
            "flow ACTIONS attribute at offset .* claims 40 bytes",
        ),
        (nla(fm.FLOW_UFID, b"") + KEY_OK, "flow UFID attribute .*: 0 bytes, not 1-16"),
        (nla(fm.FLOW_UFID, b"\0" * 20) + KEY_OK, "flow UFID attribute .*: 20 bytes, not 1-16"),
        (nla(fm.FLOW_ACTIONS, b""), "has neither UFID nor KEY"),
        (UFID + struct.pack("=HH", 200, fm.FLOW_KEY), "flow attribute at offset .* claims 200 bytes"),
        (UFID + KEY_OK + b"\0\0", "flow: 2 trailing bytes"),
    ],
)
def test_malformed_flows_raise_decode_error_naming_the_attribute(attrs: bytes, expected: str) -> None:
    buf = raw_flow(attrs)
    with pytest.raises(DecodeError, match=expected):
        decode_flow(buf, next(iter_messages(buf)))
    with pytest.raises(DecodeError, match=expected):
        scan_flows(buf, 0, 7, fm.FLOW_FAMILY_ID, FlowTally())


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b[:-3],  # the message claims more than the datagram holds
        lambda b: struct.pack("=I", 8) + b[4:],  # a length shorter than a header
        lambda b: b + b"\0" * 7,  # a truncated header after the message
    ],
)
def test_broken_framing_raises(mangle: object) -> None:
    buf = flow_message(7, 5, FakeFlow(in_port=1, ufid=fm.ufid(1)))
    with pytest.raises(DecodeError):
        scan_flows(mangle(buf), 0, 7, fm.FLOW_FAMILY_ID, FlowTally())  # type: ignore[operator]


def test_a_usual_looking_message_with_a_broken_tail_is_still_checked() -> None:
    """The scanner's shortcut never accepts what the plain walk would refuse."""
    good = flow_message(7, 5, FakeFlow(in_port=1, ufid=fm.ufid(1), packets=3, nbytes=30, used=1))
    bad = bytearray(good)
    # Make STATS (after the key and USED) claim 12 bytes instead of 20.
    at = bytes(bad).index(struct.pack("=HH", 20, fm.FLOW_STATS))
    struct.pack_into("=HH", bad, at, 12, fm.FLOW_STATS)
    with pytest.raises(DecodeError):
        scan_flows(bytes(bad), 0, 7, fm.FLOW_FAMILY_ID, FlowTally())


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.parent.name)
@pytest.mark.parametrize("dump", ["flows-omit-mask.bin", "flows-full.bin"])
def test_captured_flow_dumps_decode_the_same_three_ways(
    capture: Path, dump: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flows real kernels sent (``python -m tests.vm capture-flows``: with and without UFIDs, drops
    of every kind, a recirculated flow, tunnel metadata, no input port; the exporter's request and
    a full one with masks): scanner, plain walk and declared tables agree, and each flow is what
    the independent client read of it."""
    expected = json.loads((capture / "expected.json").read_text())
    family = expected["family"]
    buf = (capture / dump).read_bytes()
    decoded = []
    for message in iter_messages(buf):
        if message.type == family:
            flow = decode_flow(buf, message)
            assert summary(flow) == from_tables(buf, message)
            decoded.append(flow)
    want = [
        (f["in_port"], f["recirc_id"], f["drop"], f["reason"], f["packets"], f["bytes"])
        for f in expected["dumps"][dump]
    ]
    assert sorted(map(summary, decoded), key=repr) == sorted(want, key=repr)
    ufids = [bytes.fromhex(f["ufid"]) for f in expected["dumps"][dump] if f["ufid"] is not None]
    assert {int.from_bytes(u[:8], sys.byteorder) for u in ufids} <= {f.identity for f in decoded}
    walked_instead: list[int] = []

    def plain_walk(buf: bytes, message: Message) -> Flow:
        walked_instead.append(message.start)
        return decode_flow(buf, message)

    monkeypatch.setattr(flow_module, "decode_flow", plain_walk)
    tally = FlowTally()
    seq = next(iter_messages(buf)).seq
    scan_flows(buf, 0, seq, family, tally)
    assert tally.identities == {f.identity for f in decoded}
    # In the dump the exporter asks for, the scanner's shortcut read every flow with a UFID, tunnel
    # metadata included; only the flows without one took the plain walk. (With masks, which the
    # exporter never asks for, every flow takes it.)
    if dump == "flows-omit-mask.bin":
        assert len(walked_instead) == sum(1 for f in expected["dumps"][dump] if f["ufid"] is None)
    assert sorted(map(summary, tally.drops), key=repr) == sorted(
        (summary(f) for f in decoded if f.drop), key=repr
    )
    assert len(decoded) >= 7 and any(f.reason is not None for f in decoded) == (capture.parent.name != "6.1")
