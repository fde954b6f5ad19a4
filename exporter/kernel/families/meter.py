"""The ``ovs_meter`` family: a datapath's meters, one ``OVS_METER_CMD_GET`` per meter id.

Layouts from ``include/uapi/linux/openvswitch.h`` (``enum ovs_meter_cmd``, ``enum
ovs_meter_attr``, ``enum ovs_band_attr``, ``struct ovs_flow_stats``); what the kernel sends
and when from ``net/openvswitch/meter.c``:

* ``OVS_METER_CMD_GET`` needs ``OVS_METER_ATTR_ID`` (else EINVAL) and the datapath's
  ``dp_ifindex`` (else ENODEV); an id without a meter is ENOENT. There is no dump: a meter
  is found only by asking for its id. The reply holds ID, STATS (packets and bytes that
  reached the meter), USED (ms, monotonic) and BANDS: one nest per band holding only that
  band's STATS, the packets and bytes the band took. Rate and burst are not returned.
* ``OVS_METER_CMD_FEATURES`` needs the ``dp_ifindex`` too (since 5.10): MAX_METERS (what
  the datapath's meter table may hold), MAX_BANDS, and the band types it supports (drop).
* Both take ``ovs_mutex``, the lock ovs-vswitchd needs for every flow it installs:
  ``exporter.kernel.meters`` keeps their number bounded.

Unlike the other OVS families, ``ovs_meter`` numbers FEATURES 1, SET 2, DEL 3 and GET 4:
this codec passes its own numbers, never ``netlink.OVS_CMD_GET`` (3, its DEL). A few
meters per datapath and read in the background: decoded by the generic
``AttributeSet.decode``.
"""

from __future__ import annotations

from typing import NamedTuple

from exporter.kernel.netlink import (
    U32,
    AttributeSet,
    DecodeError,
    Message,
    NestArray,
    StructLayout,
    encode_attr,
    encode_ovs_get,
    ovs_start,
)

OVS_METER_FAMILY = "ovs_meter"
OVS_METER_VERSION = 1

# enum ovs_meter_cmd: the only two this exporter sends. (SET is 2, DEL is 3.)
OVS_METER_CMD_FEATURES = 1
OVS_METER_CMD_GET = 4

# struct ovs_flow_stats { __u64 n_packets; __u64 n_bytes; }
FLOW_STATS = StructLayout("ovs_flow_stats", (("n_packets", "u64"), ("n_bytes", "u64")))

# enum ovs_band_attr, inside each nest of OVS_METER_ATTR_BANDS
BAND = AttributeSet(
    "meter band",
    {
        1: ("TYPE", "u32"),  # OVS_METER_BAND_TYPE_*: only FEATURES sends it
        2: ("RATE", "u32"),  # never sent by GET
        3: ("BURST", "u32"),  # never sent by GET
        4: ("STATS", FLOW_STATS),
    },
)
# enum ovs_meter_attr
METER = AttributeSet(
    "meter",
    {
        1: ("ID", "u32"),
        2: ("KBPS", "flag"),
        3: ("STATS", FLOW_STATS),
        4: ("BANDS", NestArray(BAND)),
        5: ("USED", "u64"),
        6: ("CLEAR", "flag"),
        7: ("MAX_METERS", "u32"),
        8: ("MAX_BANDS", "u32"),
        9: ("PAD", "pad"),
    },
)
OVS_METER_ATTR_ID = METER["ID"]
# enum ovs_meter_band_type
OVS_METER_BAND_TYPE_DROP = 1


class Meter(NamedTuple):
    """One meter as ``OVS_METER_CMD_GET`` reports it.

    ``packets``/``bytes``: what reached the meter. ``dropped_packets``/``dropped_bytes``:
    the sum of its bands' counters, the packets the meter took over its rate; a kernel
    meter has at most one band, and the kernel supports only drop bands
    (``ovs_meter_execute``), so these are the packets it dropped. None when the kernel
    sent no STATS (or no band).
    """

    meter_id: int
    packets: int | None
    bytes: int | None
    dropped_packets: int | None
    dropped_bytes: int | None


class MeterFeatures(NamedTuple):
    """``OVS_METER_CMD_FEATURES``: the datapath's meter capacity. None: not reported."""

    max_meters: int | None
    max_bands: int | None


def encode_meter_get(family_id: int, seq: int, dp_ifindex: int, meter_id: int) -> bytes:
    """``OVS_METER_CMD_GET`` of one meter of one datapath (not a dump: the family has none)."""
    return encode_ovs_get(
        family_id,
        OVS_METER_VERSION,
        seq,
        dp_ifindex,
        encode_attr(OVS_METER_ATTR_ID, U32.pack(meter_id)),
        dump=False,
        command=OVS_METER_CMD_GET,
    )


def encode_meter_features(family_id: int, seq: int, dp_ifindex: int) -> bytes:
    """``OVS_METER_CMD_FEATURES`` of one datapath."""
    return encode_ovs_get(
        family_id, OVS_METER_VERSION, seq, dp_ifindex, dump=False, command=OVS_METER_CMD_FEATURES
    )


def decode_meter(buf: bytes, message: Message) -> Meter:
    """Decode the reply to ``OVS_METER_CMD_GET``."""
    _dp_ifindex, pos = ovs_start(buf, message, "meter")
    attrs = METER.decode(buf, pos, message.end)
    meter_id = attrs.get("ID")
    if meter_id is None:
        raise DecodeError(f"meter message at offset {message.start} has no ID attribute")
    stats = attrs.get("STATS")
    dropped: tuple[int, int] | None = None
    if "BANDS" in attrs:
        # A meter without a band takes nothing: 0. A band without STATS is not counted.
        bands = [band["STATS"] for band in attrs["BANDS"] if "STATS" in band]
        dropped = (sum(band[0] for band in bands), sum(band[1] for band in bands))
    return Meter(
        meter_id,
        stats[0] if stats is not None else None,
        stats[1] if stats is not None else None,
        dropped[0] if dropped is not None else None,
        dropped[1] if dropped is not None else None,
    )


def decode_meter_features(buf: bytes, message: Message) -> MeterFeatures:
    """Decode the reply to ``OVS_METER_CMD_FEATURES``."""
    _dp_ifindex, pos = ovs_start(buf, message, "meter features")
    attrs = METER.decode(buf, pos, message.end)
    return MeterFeatures(attrs.get("MAX_METERS"), attrs.get("MAX_BANDS"))
