"""The readable reference of the whole scrape: pyroute2 message classes and prometheus_client families.

This is what a straightforward exporter would be: the ``ovs_datapath`` and
``ovs_vport`` families declared as pyroute2 message classes (attribute maps
and struct fields as data, after include/uapi/linux/openvswitch.h), decoded
into the same ``exporter.kernel.families`` records the fast decoder returns, and turned
into prometheus_client ``CounterMetricFamily``/``GaugeMetricFamily``/
``InfoMetricFamily`` objects.

It is used twice, and is deliberately slow and obvious:
- by the unit tests, which check that the fast struct decoder and the fast
  exposition mean exactly what this reference means for the same bytes;
- by ``benchmarks/baseline.py``, the baseline the exporter's speed is compared with.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, genlmsg, nla
from pyroute2.netlink.marshal import Marshal

from exporter.kernel.dump_metrics import (
    DATAPATH_INFO,
    DATAPATH_METRICS,
    VPORT_COUNTERS,
    VPORT_INFO,
    VPORT_UPCALL_HANDLERS,
)
from exporter.kernel.families.datapath import (
    OVS_DATAPATH_FAMILY,
    OVS_DATAPATH_VERSION,
    Datapath,
    DatapathStats,
    MegaflowStats,
)
from exporter.kernel.families.vport import OVS_VPORT_FAMILY, OVS_VPORT_VERSION, UpcallStats, Vport, VportStats
from exporter.kernel.netlink import OVS_CMD_GET


class OvsDatapathMessage(genlmsg):
    """``ovs_datapath`` family, version 2: genlmsghdr + ``struct ovs_header`` + ``enum ovs_datapath_attr``."""

    fields = (*genlmsg.fields, ("dp_ifindex", "i"))
    nla_map = (
        ("OVS_DP_ATTR_UNSPEC", "none"),
        ("OVS_DP_ATTR_NAME", "asciiz"),
        ("OVS_DP_ATTR_UPCALL_PID", "uint32"),
        ("OVS_DP_ATTR_STATS", "dp_stats"),
        ("OVS_DP_ATTR_MEGAFLOW_STATS", "dp_megaflow_stats"),
        ("OVS_DP_ATTR_USER_FEATURES", "uint32"),
        ("OVS_DP_ATTR_PAD", "none"),
        ("OVS_DP_ATTR_MASKS_CACHE_SIZE", "uint32"),
        ("OVS_DP_ATTR_PER_CPU_PIDS", "array(uint32)"),
        ("OVS_DP_ATTR_IFINDEX", "uint32"),
    )

    class dp_stats(nla):  # noqa: N801 - pyroute2 looks attribute classes up by these names
        """``struct ovs_dp_stats``."""

        fields = (("n_hit", "Q"), ("n_missed", "Q"), ("n_lost", "Q"), ("n_flows", "Q"))

    class dp_megaflow_stats(nla):  # noqa: N801
        """``struct ovs_dp_megaflow_stats``."""

        fields = (
            ("n_mask_hit", "Q"),
            ("n_masks", "I"),
            ("pad0", "I"),
            ("n_cache_hit", "Q"),
            ("pad1", "Q"),
        )


class OvsVportMessage(genlmsg):
    """``ovs_vport`` family, version 1: genlmsghdr + ``struct ovs_header`` + ``enum ovs_vport_attr``."""

    fields = (*genlmsg.fields, ("dp_ifindex", "i"))
    nla_map = (
        ("OVS_VPORT_ATTR_UNSPEC", "none"),
        ("OVS_VPORT_ATTR_PORT_NO", "uint32"),
        ("OVS_VPORT_ATTR_TYPE", "uint32"),
        ("OVS_VPORT_ATTR_NAME", "asciiz"),
        ("OVS_VPORT_ATTR_OPTIONS", "vport_options"),
        ("OVS_VPORT_ATTR_UPCALL_PID", "array(uint32)"),
        ("OVS_VPORT_ATTR_STATS", "vport_stats"),
        ("OVS_VPORT_ATTR_PAD", "none"),
        ("OVS_VPORT_ATTR_IFINDEX", "uint32"),
        ("OVS_VPORT_ATTR_NETNSID", "int32"),
        ("OVS_VPORT_ATTR_UPCALL_STATS", "vport_upcall_stats"),
    )

    class vport_stats(nla):  # noqa: N801
        """``struct ovs_vport_stats``."""

        fields = (
            ("rx_packets", "Q"),
            ("tx_packets", "Q"),
            ("rx_bytes", "Q"),
            ("tx_bytes", "Q"),
            ("rx_errors", "Q"),
            ("tx_errors", "Q"),
            ("rx_dropped", "Q"),
            ("tx_dropped", "Q"),
        )

    class vport_options(nla):  # noqa: N801
        """``enum ovs_tunnel_attr``. DST_PORT is a u16 on the wire (nla_put_u16) in the kernel."""

        nla_map = (
            ("OVS_TUNNEL_ATTR_UNSPEC", "none"),
            ("OVS_TUNNEL_ATTR_DST_PORT", "uint16"),
            ("OVS_TUNNEL_ATTR_EXTENSION", "vxlan_ext"),
        )

        class vxlan_ext(nla):  # noqa: N801
            """``enum ovs_vxlan_ext``: flags."""

            nla_map = (("OVS_VXLAN_EXT_UNSPEC", "none"), ("OVS_VXLAN_EXT_GBP", "flag"))

    class vport_upcall_stats(nla):  # noqa: N801
        """``enum ovs_vport_upcall_attr``: the one OVS enum numbered from 0."""

        nla_map = (
            ("OVS_VPORT_UPCALL_ATTR_SUCCESS", "uint64"),
            ("OVS_VPORT_UPCALL_ATTR_FAIL", "uint64"),
        )


class ReferenceMarshal(Marshal):
    """Maps the two family ids of one kernel (assigned at module load) to the message classes."""

    def __init__(self, datapath_family: int, vport_family: int) -> None:
        super().__init__()
        self.msg_map = {datapath_family: OvsDatapathMessage, vport_family: OvsVportMessage}


def dump_request(message_class: type[genlmsg], family: int, version: int, seq: int, dp_ifindex: int) -> bytes:
    """A GET dump request encoded by pyroute2 (the same bytes ``encode_ovs_get`` writes)."""
    msg = message_class()
    msg["cmd"] = OVS_CMD_GET
    msg["version"] = version
    msg["reserved"] = 0
    msg["dp_ifindex"] = dp_ifindex
    msg["header"]["type"] = family
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
    msg["header"]["sequence_number"] = seq
    msg.encode()
    return bytes(msg.data)


def _name(value: Any) -> str:
    # pyroute2 keeps a name that is not valid UTF-8 as bytes; the exporter shows such bytes
    # backslash-escaped, so the reference does the same.
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def datapath_record(msg: Any) -> Datapath:
    """A decoded ``ovs_datapath`` message as the record the fast decoder returns."""
    stats = msg.get_attr("OVS_DP_ATTR_STATS")
    megaflow = msg.get_attr("OVS_DP_ATTR_MEGAFLOW_STATS")
    return Datapath(
        dp_ifindex=msg["dp_ifindex"],
        name=_name(msg.get_attr("OVS_DP_ATTR_NAME")),
        stats=None
        if stats is None
        else DatapathStats(stats["n_hit"], stats["n_missed"], stats["n_lost"], stats["n_flows"]),
        megaflow_stats=None
        if megaflow is None
        else MegaflowStats(megaflow["n_mask_hit"], megaflow["n_masks"], megaflow["n_cache_hit"]),
        user_features=msg.get_attr("OVS_DP_ATTR_USER_FEATURES"),
        masks_cache_size=msg.get_attr("OVS_DP_ATTR_MASKS_CACHE_SIZE"),
        per_cpu_pids=_pids(msg.get_attr("OVS_DP_ATTR_PER_CPU_PIDS")),
    )


def _pids(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    return (value,) if isinstance(value, int) else tuple(value)


def _extension(options: Any) -> tuple[int, ...] | None:
    """The attribute types inside OVS_TUNNEL_ATTR_EXTENSION, unknown ones included."""
    ext = None if options is None else options.get_attr("OVS_TUNNEL_ATTR_EXTENSION")
    if ext is None:
        return None
    types = {"OVS_VXLAN_EXT_GBP": 1}
    return tuple(
        value["header"]["type"] if name == "UNKNOWN" else types[name] for name, value in ext["attrs"]
    )


def vport_record(msg: Any) -> Vport:
    """A decoded ``ovs_vport`` message as the record the fast decoder returns."""
    stats = msg.get_attr("OVS_VPORT_ATTR_STATS")
    upcall = msg.get_attr("OVS_VPORT_ATTR_UPCALL_STATS")
    options = msg.get_attr("OVS_VPORT_ATTR_OPTIONS")
    pids = msg.get_attr("OVS_VPORT_ATTR_UPCALL_PID")
    return Vport(
        dp_ifindex=msg["dp_ifindex"],
        port_no=msg.get_attr("OVS_VPORT_ATTR_PORT_NO"),
        type=msg.get_attr("OVS_VPORT_ATTR_TYPE"),
        name=_name(msg.get_attr("OVS_VPORT_ATTR_NAME")),
        ifindex=msg.get_attr("OVS_VPORT_ATTR_IFINDEX"),
        netnsid=msg.get_attr("OVS_VPORT_ATTR_NETNSID"),
        stats=None if stats is None else VportStats(*(stats[f] for f in VportStats._fields)),
        upcall_stats=None
        if upcall is None
        else UpcallStats(
            upcall.get_attr("OVS_VPORT_UPCALL_ATTR_SUCCESS"), upcall.get_attr("OVS_VPORT_UPCALL_ATTR_FAIL")
        ),
        dst_port=None if options is None else options.get_attr("OVS_TUNNEL_ATTR_DST_PORT"),
        extension=_extension(options),
        upcall_handlers=None if pids is None else len(set(_pids(pids) or ()) - {0}),
    )


def decode_datagrams(marshal: Marshal, datagrams: Iterable[bytes]) -> Iterator[Any]:
    """Every message of a dump, decoded by pyroute2, up to and without NLMSG_DONE.

    Raises OSError for an NLMSG_ERROR or a failed NLMSG_DONE.
    """
    for datagram in datagrams:
        for msg in marshal.parse(datagram):
            error = msg["header"].get("error")
            if error is not None:
                raise error if isinstance(error, OSError) else OSError(str(error))
            mtype = msg["header"]["type"]
            if mtype == NLMSG_DONE:
                return
            if mtype != NLMSG_ERROR:
                yield msg


@dataclass
class ReferenceDump:
    """A datapath and its de-duplicated vports, as the reference decodes them."""

    datapath: Datapath
    vports: list[Vport]


class ReferenceSource:
    """The straightforward source: pyroute2 encodes the requests and decodes every reply.

    It talks to the same ``KernelSocket`` as the exporter's source, so both read the same bytes.
    """

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._seq = 0

    def _dump(
        self, marshal: Marshal, message_class: type[genlmsg], family: int, version: int, dp_ifindex: int
    ) -> list[Any]:
        self._seq += 1
        self._sock.send(dump_request(message_class, family, version, self._seq, dp_ifindex))

        def datagrams() -> Iterator[bytes]:
            while True:
                yield self._sock.recv()

        return list(decode_datagrams(marshal, datagrams()))

    def collect(self) -> list[ReferenceDump]:
        dp_family = self._sock.family_id(OVS_DATAPATH_FAMILY)
        vport_family = self._sock.family_id(OVS_VPORT_FAMILY)
        marshal = ReferenceMarshal(dp_family, vport_family)
        datapaths = {
            d.name: d
            for d in map(
                datapath_record,
                self._dump(marshal, OvsDatapathMessage, dp_family, OVS_DATAPATH_VERSION, 0),
            )
        }
        dumps = []
        for datapath in datapaths.values():
            messages = self._dump(
                marshal, OvsVportMessage, vport_family, OVS_VPORT_VERSION, datapath.dp_ifindex
            )
            # The kernel may list a port twice during a dump: the last report wins.
            vports = {v.name: v for v in map(vport_record, messages)}
            dumps.append(ReferenceDump(datapath, list(vports.values())))
        return dumps


def _vport_values(vport: Vport) -> dict[str, int | None]:
    """Family name -> the vport's value, None where the kernel did not report it."""
    values: dict[str, int | None] = {
        "ovs_vport_receive_packets": None,
        "ovs_vport_transmit_packets": None,
        "ovs_vport_receive_bytes": None,
        "ovs_vport_transmit_bytes": None,
        "ovs_vport_receive_errors": None,
        "ovs_vport_transmit_errors": None,
        "ovs_vport_receive_dropped": None,
        "ovs_vport_transmit_dropped": None,
        "ovs_vport_upcalls": None,
        "ovs_vport_upcall_failures": None,
    }
    if vport.stats is not None:
        values["ovs_vport_receive_packets"] = vport.stats.rx_packets
        values["ovs_vport_transmit_packets"] = vport.stats.tx_packets
        values["ovs_vport_receive_bytes"] = vport.stats.rx_bytes
        values["ovs_vport_transmit_bytes"] = vport.stats.tx_bytes
        values["ovs_vport_receive_errors"] = vport.stats.rx_errors
        values["ovs_vport_transmit_errors"] = vport.stats.tx_errors
        values["ovs_vport_receive_dropped"] = vport.stats.rx_dropped
        values["ovs_vport_transmit_dropped"] = vport.stats.tx_dropped
    if vport.upcall_stats is not None:
        values["ovs_vport_upcalls"] = vport.upcall_stats.success + vport.upcall_stats.fail
        values["ovs_vport_upcall_failures"] = vport.upcall_stats.fail
    return values


def _datapath_values(dump: ReferenceDump) -> dict[str, int | None]:
    """Family name -> the datapath's value, None where the kernel did not report it."""
    values: dict[str, int | None] = {
        "ovs_datapath_lookup_hits": None,
        "ovs_datapath_lookup_misses": None,
        "ovs_datapath_lookup_lost": None,
        "ovs_datapath_flows": None,
        "ovs_datapath_masks": None,
        "ovs_datapath_mask_hits": None,
        "ovs_datapath_mask_cache_hits": None,
        "ovs_datapath_vports": len(dump.vports),
        "ovs_datapath_upcall_handlers": None,
        "ovs_datapath_masks_cache_size": dump.datapath.masks_cache_size,
    }
    features = dump.datapath.user_features
    if features is not None and features & (1 << 3):  # OVS_DP_F_DISPATCH_UPCALL_PER_CPU
        values["ovs_datapath_upcall_handlers"] = len({p for p in dump.datapath.per_cpu_pids or () if p})
    stats, megaflow = dump.datapath.stats, dump.datapath.megaflow_stats
    if stats is not None:
        values["ovs_datapath_lookup_hits"] = stats.hits
        values["ovs_datapath_lookup_misses"] = stats.missed
        values["ovs_datapath_lookup_lost"] = stats.lost
        values["ovs_datapath_flows"] = stats.flows
    if megaflow is not None:
        values["ovs_datapath_masks"] = megaflow.masks
        values["ovs_datapath_mask_hits"] = megaflow.mask_hits
        values["ovs_datapath_mask_cache_hits"] = megaflow.cache_hits
    return values


def vport_type_name(vport_type: int) -> str:
    return {1: "netdev", 2: "internal", 3: "gre", 4: "vxlan", 5: "geneve"}.get(vport_type, str(vport_type))


def feature_names(features: int) -> str:
    known = {0: "unaligned", 1: "vport_pids", 2: "tc_recirc_sharing", 3: "dispatch_upcall_per_cpu"}
    names = [known.get(bit, f"bit{bit}") for bit in range(32) if features & (1 << bit)]
    return ",".join(names) if names else "none"


def reference_families(dumps: Sequence[ReferenceDump]) -> list[Metric]:
    """The kernel-derived metric families, built the prometheus_client way.

    Names and help texts come from ``exporter.exposition`` (they are the
    interface under test); which record field feeds which family, which labels
    a sample carries and what is left out are written out again here.
    A family with no samples is left out, as "not reported" is not zero.
    """
    counters = {
        c.name: CounterMetricFamily(c.name, c.help, labels=["datapath", "port"]) for c in VPORT_COUNTERS
    }
    for dump in dumps:
        for vport in dump.vports:
            for name, value in _vport_values(vport).items():
                if value is not None:
                    counters[name].add_metric([dump.datapath.name, vport.name], value)
    families: list[Metric] = [family for family in counters.values() if family.samples]

    info = InfoMetricFamily(VPORT_INFO[0], VPORT_INFO[1], labels=["datapath", "port"])
    for dump in dumps:
        for vport in dump.vports:
            attributes = {"port_no": str(vport.port_no), "vport_type": vport_type_name(vport.type)}
            if vport.ifindex is not None:
                attributes["ifindex"] = str(vport.ifindex)
            if vport.netnsid is not None:
                attributes["netnsid"] = str(vport.netnsid)
            if vport.dst_port is not None:
                attributes["dst_port"] = str(vport.dst_port)
            if vport.extension:
                attributes["extension"] = ",".join("gbp" if t == 1 else str(t) for t in vport.extension)
            info.add_metric([dump.datapath.name, vport.name], attributes)
    if info.samples:
        families.append(info)

    for metric in DATAPATH_METRICS:
        family_class = CounterMetricFamily if metric.kind == "counter" else GaugeMetricFamily
        dp_family = family_class(metric.name, metric.help, labels=["datapath"])
        for dump in dumps:
            value = _datapath_values(dump)[metric.name]
            if value is not None:
                dp_family.add_metric([dump.datapath.name], value)
        if dp_family.samples:
            families.append(dp_family)

    dp_info = InfoMetricFamily(DATAPATH_INFO[0], DATAPATH_INFO[1], labels=["datapath"])
    handlers = GaugeMetricFamily(
        VPORT_UPCALL_HANDLERS[0], VPORT_UPCALL_HANDLERS[1], labels=["datapath", "port"]
    )
    for dump in dumps:
        features = dump.datapath.user_features
        per_cpu = features is not None and bool(features & (1 << 3))
        attributes = {}
        if features is not None:
            attributes = {
                "upcall_dispatch": "per-cpu" if per_cpu else "per-vport",
                "user_features": feature_names(features),
            }
        dp_info.add_metric([dump.datapath.name], attributes)
        if features is not None and not per_cpu:
            for vport in dump.vports:
                if vport.upcall_handlers is not None:
                    handlers.add_metric([dump.datapath.name, vport.name], vport.upcall_handlers)
    families.extend(family for family in (dp_info, handlers) if family.samples)
    return families


class ReferenceCollector:
    """A prometheus_client custom collector over ``ReferenceSource``: the baseline's whole pipeline."""

    def __init__(self, source: ReferenceSource) -> None:
        self._source = source

    def describe(self) -> list[Metric]:
        return []  # registering must not run a dump

    def collect(self) -> list[Metric]:
        return reference_families(self._source.collect())
