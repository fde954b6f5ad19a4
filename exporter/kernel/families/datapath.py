"""The ``ovs_datapath`` family: one record per datapath, from ``OVS_DP_CMD_GET``.

Layouts from ``include/uapi/linux/openvswitch.h`` (``enum ovs_datapath_attr``, ``struct
ovs_dp_stats``, ``struct ovs_dp_megaflow_stats``), the same numbers as the kernel's
``Documentation/netlink/specs/ovs_datapath.yaml``. A handful of datapaths per scrape:
decoded by the generic ``AttributeSet.decode``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from exporter.kernel.netlink import AttributeSet, DecodeError, Message, StructLayout, ovs_start

OVS_DATAPATH_FAMILY = "ovs_datapath"
OVS_DATAPATH_MCGROUP = "ovs_datapath"
OVS_DATAPATH_VERSION = 2

DP_STATS = StructLayout(
    "ovs_dp_stats", (("n_hit", "u64"), ("n_missed", "u64"), ("n_lost", "u64"), ("n_flows", "u64"))
)
DP_MEGAFLOW_STATS = StructLayout(
    "ovs_dp_megaflow_stats",
    (("n_mask_hit", "u64"), ("n_masks", "u32"), ("pad0", "u32"), ("n_cache_hit", "u64"), ("pad1", "u64")),
)

# enum ovs_datapath_attr
DATAPATH = AttributeSet(
    "datapath",
    {
        1: ("NAME", "string"),
        2: ("UPCALL_PID", "u32"),
        3: ("STATS", DP_STATS),
        4: ("MEGAFLOW_STATS", DP_MEGAFLOW_STATS),
        5: ("USER_FEATURES", "u32"),  # OVS_DP_F_* bits
        6: ("PAD", "pad"),
        7: ("MASKS_CACHE_SIZE", "u32"),
        8: ("PER_CPU_PIDS", "u32-array"),  # only sent in per-CPU dispatch mode, once set
        9: ("IFINDEX", "u32"),
    },
)

# OVS_DP_F_* bits of OVS_DP_ATTR_USER_FEATURES, by bit number, as the ``user_features``
# label names them. A set bit missing here is shown as ``bitN``, never dropped.
OVS_DP_F_DISPATCH_UPCALL_PER_CPU = 1 << 3
DP_FEATURE_NAMES = {
    0: "unaligned",  # OVS_DP_F_UNALIGNED
    1: "vport_pids",  # OVS_DP_F_VPORT_PIDS
    2: "tc_recirc_sharing",  # OVS_DP_F_TC_RECIRC_SHARING
    3: "dispatch_upcall_per_cpu",  # OVS_DP_F_DISPATCH_UPCALL_PER_CPU
}


class DatapathStats(NamedTuple):
    """``struct ovs_dp_stats``: flow table lookups and the flow count."""

    hits: int
    missed: int
    lost: int
    flows: int


class MegaflowStats(NamedTuple):
    """``struct ovs_dp_megaflow_stats`` without its padding."""

    mask_hits: int
    masks: int
    cache_hits: int


@dataclass(frozen=True, slots=True)
class Datapath:
    """One datapath as ``OVS_DP_CMD_GET`` reports it. ``None`` means "not reported"."""

    dp_ifindex: int
    name: str
    stats: DatapathStats | None
    megaflow_stats: MegaflowStats | None
    user_features: int | None = None  # OVS_DP_ATTR_USER_FEATURES
    masks_cache_size: int | None = None  # OVS_DP_ATTR_MASKS_CACHE_SIZE
    per_cpu_pids: tuple[int, ...] | None = None  # OVS_DP_ATTR_PER_CPU_PIDS, in the kernel's order

    @property
    def per_cpu_dispatch(self) -> bool | None:
        """Whether upcalls are dispatched per CPU (else per vport); None if features are not reported."""
        if self.user_features is None:
            return None
        return bool(self.user_features & OVS_DP_F_DISPATCH_UPCALL_PER_CPU)

    @property
    def upcall_handlers(self) -> int | None:
        """Distinct non-zero netlink PIDs of the per-CPU array; None unless in per-CPU mode.

        In per-CPU mode the kernel sends no array until userspace sets one: that is
        zero handlers (every miss is lost), not "not reported". vswitchd repeats a
        handler's PID for several CPUs when it has fewer handlers than CPUs, and a 0
        entry reaches no socket, so distinct non-zero PIDs are the handler sockets.
        """
        if not self.per_cpu_dispatch:
            return None
        return len(set(self.per_cpu_pids or ()) - {0})


def decode_datapath(buf: bytes, message: Message) -> Datapath:
    """Decode one ``ovs_datapath`` message (OVS_DP_CMD_NEW as a dump reply or a notification)."""
    dp_ifindex, pos = ovs_start(buf, message, "datapath")
    attrs = DATAPATH.decode(buf, pos, message.end)
    name = attrs.get("NAME")
    if name is None:
        raise DecodeError(f"datapath message at offset {message.start} has no NAME attribute")
    stats = attrs.get("STATS")
    megaflow = attrs.get("MEGAFLOW_STATS")
    return Datapath(
        dp_ifindex,
        name,
        DatapathStats._make(stats) if stats is not None else None,
        MegaflowStats(megaflow[0], megaflow[1], megaflow[3]) if megaflow is not None else None,
        attrs.get("USER_FEATURES"),
        attrs.get("MASKS_CACHE_SIZE"),
        attrs.get("PER_CPU_PIDS"),
    )
