"""Where OVSDB meets the kernel: which kernel vport each OVSDB Interface is, and who is on it.

The kernel source names a vport by its datapath and its name (``datapath``,
``port``); OVSDB names an Interface and the bridge it is on. This module maps
one onto the other, the way ovs-vswitchd does when it creates the vports:

* every bridge whose ``datapath_type`` is ``""`` or ``"system"`` shares the one
  kernel datapath ``ovs-system`` ("ovs-" + the type, ``ofproto/ofproto-dpif.c``);
  bridges of other types (``netdev``: the userspace datapath) have no kernel vports
  and are left out;
* an Interface's kernel vport has the Interface's name, except for tunnels: all
  Interfaces of one tunnel type (and UDP port) share one vport named
  ``<prefix>`` or ``<prefix>_<dst_port>``, e.g. ``genev_sys_6081``
  (``netdev_vport_get_dpif_port()`` in ``lib/netdev-vport.c``);
* the series of such a shared vport carries the same labels however many
  Interfaces share it (an OVN chassis has one per remote chassis): ``bridge``
  (the bridges of those Interfaces, comma-separated when several) and
  ``interface_type``, never an Interface's ``ofport`` or external_ids. So a
  ``group_left`` join never meets two series for one vport, and the series is
  not replaced as tunnels come and go;
* an Interface vswitchd could not create (``ofport`` -1: its device is gone, or
  cannot be opened or added) has no kernel vport and no ``ovs_interface_info``.

Patch ports (``type="patch"``) are implemented in userspace and have no kernel
vport: their series name the port as OVSDB does and match no vport counters.
Kernel vports that no Interface describes (the datapath's own ``ovs-system``
port, ports added by other tools) have no ``ovs_interface_info``.

Every Interface of a kernel-datapath bridge that vswitchd could not open or
configure (``Interface.error`` set, or ``ofport`` -1) is served on its own, as
``ovs_interface_broken_info`` with its bridge, name, type, allowed external_ids
and the error, and counted per bridge in ``ovs_bridge_broken_interfaces``: a VM
or pod whose port is in OVSDB but not in the switch has no network.

Every label value is made safe here (``label_value``), once per change of the
database rather than once per scrape.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from exporter.exposition import Format, family_header, render_info_samples, render_labels
from exporter.ovsdb.reader import OvsdbInterface, OvsdbReader, OvsdbSnapshot
from exporter.records import Health, SourceReport

INTERFACE_INFO = (
    "ovs_interface",
    "A kernel vport as OVSDB describes it: bridge, ofport, interface type and the allowed"
    " Interface external_ids (value 1). Join on (instance, job, netns, datapath, port).",
)
SYSTEM_INFO = (
    "ovs_system",
    "The Open vSwitch instance, from OVSDB's Open_vSwitch table (value 1).",
)
BROKEN_INFO = (
    "ovs_interface_broken",
    "An Interface of a kernel-datapath bridge that ovs-vswitchd could not open or configure (OVSDB"
    " Interface.error set, or ofport -1): bridge, interface name and type, the allowed external_ids"
    " and the error (value 1).",
)
BRIDGE_BROKEN = (
    "ovs_bridge_broken_interfaces",
    "Interfaces of this kernel-datapath bridge that ovs-vswitchd could not open or configure"
    " (the ovs_interface_broken_info series of the bridge).",
)
ZONE_INFO = (
    "ovs_conntrack_zone",
    "A conntrack zone as OVN assigned it on this host, from the bridge's external_ids"
    " ct-zone-<owner> (value 1): owner is a logical port or <router>_dnat/_snat; for a logical port"
    " bound to a kernel vport here, iface_id and that vport (datapath, port)."
    " Join on (instance, job, netns, zone).",
)
#: OVN records each zone it assigns as external_ids:ct-zone-<owner>=<zone> of the integration
#: bridge (ct_zones_commit in ovn-controller's ct-zone.c); zones are 16-bit.
CT_ZONE_KEY_PREFIX = "ct-zone-"
MAX_CT_ZONE = 65535

KERNEL_DATAPATH = "ovs-system"
SYSTEM_DATAPATH_TYPES = ("", "system")
#: Interface.ofport when vswitchd could not create the Interface (OFPP_NONE, vswitchd/bridge.c).
OFPORT_FAILED = -1

#: Label values longer than this many characters are cut, and end with "…".
MAX_LABEL_VALUE_LENGTH = 256

#: Tunnel type -> (kernel vport name prefix, default UDP port or None when the name has no port).
#: From the vport classes in lib/netdev-vport.c; the default ports from the same file and packets.h.
TUNNEL_VPORTS: dict[str, tuple[str, int | None]] = {
    "geneve": ("genev_sys", 6081),
    "vxlan": ("vxlan_sys", 4789),
    "lisp": ("lisp_sys", 4341),
    "stt": ("stt_sys", 7471),
    "gtpu": ("gtpu_sys", 2152),
    "bareudp": ("udp_sys", 0),  # bareudp has no default port: options:dst_port is mandatory
    "gre": ("gre_sys", None),
    "erspan": ("erspan_sys", None),
    "ip6erspan": ("ip6erspan_sys", None),
    "ip6gre": ("ip6gre_sys", None),
}

#: The default external_ids allow-list: what OVS documents (vswitch.xml, Interface
#: "Virtual Machine Identifiers") and what libvirt, OpenStack os-vif, ovn-kubernetes
#: and kube-ovn write on the interfaces they plug.
DEFAULT_EXTERNAL_IDS: tuple[str, ...] = (
    "iface-id",  # everyone: the logical port (OVN), Neutron port, libvirt interface UUID
    "attached-mac",  # OVS, libvirt, os-vif: the MAC of the VM's NIC
    "attached_mac",  # ovn-kubernetes spells it with an underscore: the same label
    "iface-status",  # OVS, libvirt, os-vif: active/inactive during a migration
    "vm-id",  # OVS, libvirt: the domain UUID
    "vm-uuid",  # os-vif (Nova): the instance UUID
    "pod_name",  # kube-ovn
    "pod_namespace",  # kube-ovn
)

#: Labels ovs_interface_info and ovs_interface_broken_info always may carry; no external_ids key
#: may take their names.
FIXED_LABELS = ("datapath", "port", "bridge", "ofport", "interface_type", "interface", "error")
#: Label names that other series of the exporter carry and a join could confuse.
RESERVED_LABELS = (
    *FIXED_LABELS,
    "netns",
    "vport_type",
    "device_kind",
    "port_no",
    "ifindex",
    "netnsid",
    "dst_port",
)

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# C0 and C1 controls, DEL and lone surrogates (a JSON "\ud800" escape decodes to one; it
# cannot be encoded as UTF-8 and would break the whole response).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def label_name(key: str) -> str:
    """The label an external_ids key becomes: ``-`` as ``_`` (``iface-id`` -> ``iface_id``)."""
    return key.replace("-", "_")


def check_external_ids(keys: Sequence[str]) -> str | None:
    """Why this allow-list cannot be used, or None. Keys whose labels coincide are alternatives."""
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            return f"{key!r} is listed twice"
        seen.add(key)
        name = label_name(key)
        if not _LABEL_NAME.fullmatch(name):
            return f"{key!r} does not make a valid label name ({name!r})"
        if name.startswith("__"):
            return f"{key!r} makes the label {name!r}; names starting with __ are reserved by Prometheus"
        if name in RESERVED_LABELS:
            return f"{key!r} makes the label {name!r}, which the exporter's own labels use"
    return None


def label_value(value: str) -> str:
    """A value safe for any exposition: controls and lone surrogates as U+FFFD, at most 256 characters."""
    if _UNSAFE.search(value) is not None:
        value = _UNSAFE.sub("\ufffd", value)
    if len(value) > MAX_LABEL_VALUE_LENGTH:
        value = value[: MAX_LABEL_VALUE_LENGTH - 1] + "\u2026"
    return value


def kernel_vport_name(name: str, type_: str, dst_port: str | None) -> str:
    """The name of the kernel vport that implements an Interface on the kernel datapath."""
    tunnel = TUNNEL_VPORTS.get(type_)
    if tunnel is None:
        return name
    prefix, default_port = tunnel
    if default_port is None:
        return prefix
    port = default_port
    if dst_port is not None:
        # ovs-vswitchd reads options:dst_port with atoi(): leading digits, else 0.
        digits = re.match(r"\s*[+]?(\d+)", dst_port)
        port = int(digits.group(1)) & 0xFFFF if digits else 0
    return f"{prefix}_{port}"


def is_shared(type_: str) -> bool:
    """Whether Interfaces of this type share one kernel vport (the tunnels), whatever their names."""
    return type_ in TUNNEL_VPORTS


def is_broken(iface: OvsdbInterface) -> bool:
    """Whether vswitchd could not open or configure the Interface: an error, or no OpenFlow port."""
    return bool(iface.error) or iface.ofport == OFPORT_FAILED


@dataclass(frozen=True, slots=True)
class InterfaceIdentity:
    """One ``ovs_interface_info`` series: a kernel vport and what OVSDB says about it."""

    datapath: str
    port: str
    # bridge, ofport, interface_type, then external_ids labels; a shared vport: bridge, interface_type
    labels: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class BrokenInterface:
    """One ``ovs_interface_broken_info`` series: an Interface vswitchd could not open or configure."""

    bridge: str  # as OVSDB has it, before label_value
    interface: str  # the same
    labels: tuple[tuple[str, str], ...]  # bridge, interface, interface_type, external_ids labels, error


@dataclass(frozen=True, slots=True)
class SystemIdentity:
    """The ``ovs_system_info`` series: which Open vSwitch this is."""

    labels: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class IdentityView:
    """What a scrape serves from one OVSDB snapshot: the info samples, already written."""

    interfaces: str  # ovs_interface_info samples, without the family header
    system: str  # ovs_system_info sample, or ""
    interface_count: int
    broken: str = ""  # ovs_interface_broken_info samples
    bridges: str = ""  # ovs_bridge_broken_interfaces samples, one per kernel-datapath bridge
    zones: str = ""  # ovs_conntrack_zone_info samples, without the family header


@dataclass(frozen=True, slots=True)
class _Joined:
    """One Interface joined: its vport and labels as OVSDB has them, the identity and its sample line."""

    iface: OvsdbInterface
    bridge: str
    port: str  # the kernel vport name, before label_value
    labels: tuple[tuple[str, str], ...]  # before label_value
    identity: InterfaceIdentity
    line: str


class IdentityBuilder:
    """Joins snapshots into identities and ``ovs_interface_info`` samples (in the reader's thread).

    The reader hands over the records of unchanged rows as the same objects, so the
    work for an Interface is kept by object identity and redone only when it changed:
    after one port is added to 10,000, one Interface is joined, not 10,000.
    """

    def __init__(
        self, external_ids: Sequence[str], allows: Callable[[str, str], bool] = lambda datapath, port: True
    ) -> None:
        self._wanted = tuple((key, label_name(key)) for key in external_ids)
        self._allows = allows
        self._memo: dict[int, _Joined] = {}

    def identities(self, snapshot: OvsdbSnapshot) -> list[tuple[InterfaceIdentity, str]]:
        """Every kernel-datapath vport OVSDB describes, one identity (and line) per vport, in port order.

        An Interface vswitchd could not create (ofport -1) has no vport and is left out. A
        vport that tunnel Interfaces share gets the labels of a shared vport, the bridges of all
        of them. Any other vport several Interfaces name (two bridges with an Interface of the
        same name: vswitchd refuses all but one, with ofport -1) is the first one's, in bridge
        name order.
        """
        memo: dict[int, _Joined] = {}
        by_port: dict[str, list[_Joined]] = {}
        for bridge in snapshot.bridges:
            if bridge.datapath_type not in SYSTEM_DATAPATH_TYPES:
                continue
            for iface in bridge.interfaces:
                if iface.ofport == OFPORT_FAILED:
                    continue
                joined = self._memo.get(id(iface))
                if joined is None or joined.iface is not iface or joined.bridge != bridge.name:
                    joined = self._join(bridge.name, iface)
                memo[id(iface)] = joined
                by_port.setdefault(joined.port, []).append(joined)
        self._memo = memo
        result = []
        for port in sorted(by_port):
            first, *others = by_port[port]
            bridges = sorted({j.bridge for j in others if j.bridge != first.bridge})
            if not bridges or not is_shared(first.iface.type):
                result.append((first.identity, first.line))
            else:
                # Tunnels of several bridges on one vport: the vport belongs to all of them.
                shared = (
                    ("bridge", ",".join(sorted({first.bridge, *bridges}))),
                    ("interface_type", first.iface.type),
                )
                identity = _identity(port, shared)
                result.append((identity, _line(identity)))
        return result

    def broken(self, snapshot: OvsdbSnapshot) -> list[BrokenInterface]:
        """Every Interface of a kernel-datapath bridge vswitchd could not open or configure, in
        bridge and interface name order."""
        found = []
        for bridge in snapshot.bridges:
            if bridge.datapath_type not in SYSTEM_DATAPATH_TYPES:
                continue
            for iface in bridge.interfaces:
                if is_broken(iface):
                    labels = {
                        "bridge": bridge.name,
                        "interface": iface.name,
                        "interface_type": iface.type or "system",
                    }
                    self._add_external_ids(labels, iface)
                    if iface.error:
                        labels["error"] = iface.error
                    found.append(
                        BrokenInterface(
                            bridge.name, iface.name, tuple((k, label_value(v)) for k, v in labels.items())
                        )
                    )
        return found

    def build(self, snapshot: OvsdbSnapshot) -> IdentityView:
        """The view a scrape serves of one snapshot."""
        lines = [line for i, line in self.identities(snapshot) if self._allows(i.datapath, i.port)]
        system = system_identity(snapshot)
        # The datapath and port filters apply to the broken Interfaces too: on the datapath their
        # bridges are on, and on the name their vport would have.
        broken = [b for b in self.broken(snapshot) if self._allows(KERNEL_DATAPATH, b.interface)]
        counts = dict.fromkeys(
            (b.name for b in snapshot.bridges if b.datapath_type in SYSTEM_DATAPATH_TYPES), 0
        )
        for b in broken:
            counts[b.bridge] += 1
        return IdentityView(
            "".join(lines),
            render_info_samples(SYSTEM_INFO[0], [system.labels]) if system is not None else "",
            len(lines),
            render_info_samples(BROKEN_INFO[0], [b.labels for b in broken]),
            "".join(
                f"{BRIDGE_BROKEN[0]}{render_labels([('bridge', label_value(name))])} {n}\n"
                for name, n in counts.items()
            ),
            render_info_samples(ZONE_INFO[0], zone_identities(snapshot)),
        )

    def _add_external_ids(self, labels: dict[str, str], iface: OvsdbInterface) -> None:
        """The allowed external_ids of ``iface`` as labels, added to ``labels``."""
        for key, name in self._wanted:
            value = iface.external_ids.get(key)
            # Keys with the same label are alternatives: the first one present wins.
            if value is not None and name not in labels:
                labels[name] = value

    def _join(self, bridge: str, iface: OvsdbInterface) -> _Joined:
        labels: dict[str, str] = {"bridge": bridge}
        if is_shared(iface.type):
            # A vport other Interfaces share: only what is the same for all of them, so that its
            # labels never depend on how many share it.
            labels["interface_type"] = iface.type
        else:
            if iface.ofport is not None:
                labels["ofport"] = str(iface.ofport)
            labels["interface_type"] = iface.type or "system"
            self._add_external_ids(labels, iface)
        port = kernel_vport_name(iface.name, iface.type, iface.dst_port)
        raw = tuple(labels.items())
        identity = _identity(port, raw)
        return _Joined(iface, bridge, port, raw, identity, _line(identity))


def _identity(port: str, labels: Iterable[tuple[str, str]]) -> InterfaceIdentity:
    return InterfaceIdentity(
        KERNEL_DATAPATH, label_value(port), tuple((k, label_value(v)) for k, v in labels)
    )


def _line(identity: InterfaceIdentity) -> str:
    return render_info_samples(
        INTERFACE_INFO[0], [(("datapath", identity.datapath), ("port", identity.port), *identity.labels)]
    )


def interface_identities(snapshot: OvsdbSnapshot, external_ids: Sequence[str]) -> list[InterfaceIdentity]:
    """Every kernel-datapath vport OVSDB describes, one identity per vport, in port order."""
    return [identity for identity, _ in IdentityBuilder(external_ids).identities(snapshot)]


def broken_interfaces(snapshot: OvsdbSnapshot, external_ids: Sequence[str]) -> list[BrokenInterface]:
    """Every Interface of a kernel-datapath bridge vswitchd could not open or configure."""
    return IdentityBuilder(external_ids).broken(snapshot)


def zone_identities(snapshot: OvsdbSnapshot) -> list[tuple[tuple[str, str], ...]]:
    """The label sets of ``ovs_conntrack_zone_info``: every ct-zone-<owner> key of a bridge on
    the kernel datapath, by bridge and zone; with the vport of the one Interface whose
    external_ids:iface-id is the owner (OVN's logical port), when there is exactly one."""
    vports: dict[str, list[str]] = {}
    for bridge in snapshot.bridges:
        if bridge.datapath_type in SYSTEM_DATAPATH_TYPES:
            for iface in bridge.interfaces:
                iface_id = iface.external_ids.get("iface-id")
                if iface_id is not None:
                    vports.setdefault(iface_id, []).append(
                        kernel_vport_name(iface.name, iface.type, iface.dst_port)
                    )
    found = []
    for bridge in snapshot.bridges:
        if bridge.datapath_type not in SYSTEM_DATAPATH_TYPES:
            continue
        for key, value in bridge.external_ids.items():
            owner = key[len(CT_ZONE_KEY_PREFIX) :]
            if not key.startswith(CT_ZONE_KEY_PREFIX) or not owner:
                continue
            zone = _zone_number(value)
            if zone is None:
                continue  # not a zone: ovn-controller skips such keys too
            labels = [
                ("zone", str(zone)),
                ("bridge", label_value(bridge.name)),
                ("owner", label_value(owner)),
            ]
            ports = vports.get(owner, [])
            if ports:
                labels.append(("iface_id", label_value(owner)))
            if len(ports) == 1:
                labels += [("datapath", KERNEL_DATAPATH), ("port", label_value(ports[0]))]
            found.append((zone, bridge.name, owner, tuple(labels)))
    return [labels for *_key, labels in sorted(found)]


def _zone_number(value: str) -> int | None:
    """A zone as OVN writes it (decimal, 0-65535), or None."""
    if not value.isascii() or not value.isdigit() or int(value) > MAX_CT_ZONE:
        return None
    return int(value)


def system_identity(snapshot: OvsdbSnapshot) -> SystemIdentity | None:
    system = snapshot.system
    if system is None:
        return None
    values = (
        ("system_id", system.system_id),
        ("hostname", system.hostname),
        ("ovs_version", system.ovs_version),
        ("db_version", system.db_version),
    )
    return SystemIdentity(tuple((k, label_value(v)) for k, v in values if v))


class IdentitySource:
    """The OVSDB source as the collector sees it: the latest view, never waiting for OVSDB."""

    def __init__(
        self,
        remote: str,
        external_ids: Sequence[str],
        allows: Callable[[str, str], bool] = lambda datapath, port: True,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.reader: OvsdbReader[IdentityView] = OvsdbReader(
            remote, IdentityBuilder(external_ids, allows).build
        )
        self._clock = clock
        self.reader.start()

    def report(self, fmt: Format, dumps: Sequence[object]) -> SourceReport:
        """This scrape's identity families and ``collector="ovsdb"`` health (``SnapshotSource``).

        Success means a complete, current copy of OVSDB was there to serve; the duration
        is what this scrape spent here, never time spent waiting for OVSDB.
        """
        started = self._clock()
        chunks, ok = self.render(fmt)
        return SourceReport(chunks, [Health("ovsdb", None, ok, self._clock() - started)])

    def render(self, fmt: Format) -> tuple[list[str], bool]:
        """This scrape's identity families, and whether a fresh copy of OVSDB was there."""
        view = self.reader.current()
        if view is None:
            return [], False
        chunks = []
        if view.interfaces:
            chunks.append(family_header(INTERFACE_INFO[0], "info", INTERFACE_INFO[1], fmt))
            chunks.append(view.interfaces)
        if view.broken:
            chunks.append(family_header(BROKEN_INFO[0], "info", BROKEN_INFO[1], fmt))
            chunks.append(view.broken)
        if view.bridges:
            chunks.append(family_header(BRIDGE_BROKEN[0], "gauge", BRIDGE_BROKEN[1], fmt))
            chunks.append(view.bridges)
        if view.system:
            chunks.append(family_header(SYSTEM_INFO[0], "info", SYSTEM_INFO[1], fmt))
            chunks.append(view.system)
        if view.zones:
            chunks.append(family_header(ZONE_INFO[0], "info", ZONE_INFO[1], fmt))
            chunks.append(view.zones)
        return chunks, True

    def close(self) -> None:
        self.reader.close()
