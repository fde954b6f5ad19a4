"""Build datapaths, vports, namespaces and traffic inside the guest, and read ``ovs-dpctl``.

Addresses come from 198.18.0.0/15 (RFC 2544, benchmarking); the guest has no network card, so
every packet stays inside it.
"""

from __future__ import annotations

import re
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from . import ovsnl
from .netns import NO_IPV6, write_sysctl
from .ovsnl import OvsNetlink
from .promtext import Scrape


def sh(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=timeout)


def ip_batch(lines: list[str], netns: str | None = None) -> None:
    """Run several ``ip`` commands in one process: each process costs ~0.2 s under TCG."""
    cmd = ["ip", *(["-n", netns] if netns else []), "-batch", "-"]
    res = subprocess.run(cmd, input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=60)
    if res.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {res.stderr.strip()}\n" + "\n".join(lines))


def add_netns(*names: str) -> None:
    """Create these named network namespaces (one ``ip`` process), each with IPv6 off (NO_IPV6)."""
    ip_batch([f"netns add {name}" for name in names])
    for name in names:
        write_sysctl(name, NO_IPV6)


def link_exists(name: str) -> bool:
    return sh("ip", "link", "show", "dev", name, check=False).returncode == 0


@dataclass
class PortSpec:
    name: str
    vport_type: int
    dst_port: int | None = None
    gbp: bool = False  # vxlan Group Based Policy (OVS_VXLAN_EXT_GBP)


@dataclass
class DatapathSpec:
    """A datapath with a veth port whose peer sits in a namespace, plus more vports."""

    name: str
    subnet: int  # third octet of 198.18.<subnet>.0/24
    veth: str
    netns: str
    extra_ports: list[PortSpec] = field(default_factory=list)
    #: Internal ports moved into the namespace once created (they then report NETNSID).
    ns_internal_ports: list[str] = field(default_factory=list)

    @property
    def local_ip(self) -> str:
        return f"198.18.{self.subnet}.1"

    @property
    def peer_ip(self) -> str:
        return f"198.18.{self.subnet}.2"

    @property
    def peer(self) -> str:
        return self.veth + "p"


#: The shared topology: two datapaths holding every vport type between them.
STANDARD = (
    DatapathSpec(
        "ovs-a", 1, "va0", "ovsns-a",
        extra_ports=[
            PortSpec("vxa", ovsnl.VPORT_VXLAN, 4789),
            PortSpec("gna", ovsnl.VPORT_GENEVE, 6081),
            # Only one GRE vport per namespace: the kernel has one collect-metadata gretap each.
            PortSpec("grea", ovsnl.VPORT_GRE),
            PortSpec("ia1", ovsnl.VPORT_INTERNAL),
        ],
        ns_internal_ports=["ia1"],
    ),
    DatapathSpec(
        "ovs-b", 2, "vb0", "ovsns-b",
        extra_ports=[
            PortSpec("vxb", ovsnl.VPORT_VXLAN, 4790),
            PortSpec("vxgb", ovsnl.VPORT_VXLAN, 4792, gbp=True),
            PortSpec("gnb", ovsnl.VPORT_GENEVE, 6082),
            PortSpec("ib1", ovsnl.VPORT_INTERNAL),
        ],
    ),
)  # fmt: skip


class Topology:
    """Datapaths and vports created over netlink; torn down in reverse."""

    def __init__(self, nl: OvsNetlink) -> None:
        self.nl = nl
        self.datapaths: dict[str, int] = {}
        self.netns: list[str] = []
        self.veths: list[str] = []

    def add_datapath(
        self, name: str, upcall_pid: int = 0, per_cpu_pids: tuple[int, ...] | None = None
    ) -> int:
        """A datapath without per-CPU upcall dispatch (upcalls go to each vport's own pid), or
        with it when ``per_cpu_pids`` is given: those PIDs, set the way vswitchd sets them."""
        if per_cpu_pids is None:
            ifindex = self.nl.new_datapath(name, upcall_pid=upcall_pid)
        else:
            features = ovsnl.DP_F_UNALIGNED | ovsnl.DP_F_DISPATCH_UPCALL_PER_CPU
            ifindex = self.nl.new_datapath(name, user_features=features, per_cpu_pids=per_cpu_pids)
        self.datapaths[name] = ifindex
        return ifindex

    def add_netns(self, name: str) -> None:
        add_netns(name)
        self.netns.append(name)
        ip_batch(["link set lo up"], netns=name)

    def add_veth(self, dp: str, name: str, upcall_pid: int = 0) -> ovsnl.VportInfo:
        """A veth pair ``name``/``name``p, both up; ``name`` becomes a netdev vport of ``dp``."""
        ip_batch(
            [f"link add {name} type veth peer name {name}p", f"link set {name} up", f"link set {name}p up"]
        )
        self.veths.append(name)
        return self.nl.new_vport(self.datapaths[dp], name, ovsnl.VPORT_NETDEV, upcall_pid=upcall_pid)

    def build(self, spec: DatapathSpec) -> None:
        self.add_datapath(spec.name)
        self.add_netns(spec.netns)
        self.add_veth(spec.name, spec.veth)
        for port in spec.extra_ports:
            self.nl.new_vport(
                self.datapaths[spec.name], port.name, port.vport_type, dst_port=port.dst_port, gbp=port.gbp
            )
        ip_batch(
            [f"link set {spec.peer} netns {spec.netns}", f"link set {spec.name} up"]
            + [f"addr add {spec.local_ip}/24 dev {spec.name}"]
            + [f"link set {p} netns {spec.netns}" for p in spec.ns_internal_ports]
        )
        ip_batch(
            [f"link set {spec.peer} up", f"addr add {spec.peer_ip}/24 dev {spec.peer}"]
            + [f"link set {p} up" for p in spec.ns_internal_ports],
            netns=spec.netns,
        )
        # Port 0 is the datapath's own internal port; 1 the veth (created first).
        dpctl("add-flow", spec.name, "in_port(1),eth()", "0")
        dpctl("add-flow", spec.name, "in_port(0),eth()", "1")

    def remove_datapath(self, name: str) -> None:
        self.nl.del_datapath(name)
        self.datapaths.pop(name, None)

    def teardown(self) -> None:
        for name in list(self.datapaths):
            try:
                self.remove_datapath(name)
            except OSError:
                self.datapaths.pop(name, None)
        for veth in self.veths:
            if link_exists(veth):
                sh("ip", "link", "del", veth, check=False)
        for ns in self.netns:
            sh("ip", "netns", "del", ns, check=False)
        self.veths.clear()
        self.netns.clear()


@contextmanager
def standard_topology(nl: OvsNetlink) -> Iterator[Topology]:
    topo = Topology(nl)
    try:
        for spec in STANDARD:
            topo.build(spec)
        yield topo
    finally:
        topo.teardown()


# --- traffic -----------------------------------------------------------------------------------

#: Ethernet + IPv4 + ICMP headers around a ping payload.
PING_OVERHEAD = 14 + 20 + 8


def ping_from(netns: str, ip: str, count: int, size: int = 56, interval: float = 0.05) -> str:
    """Ping ``ip`` from namespace ``netns`` (busybox's ping); every echo must come back."""
    res = sh(
        "ip", "netns", "exec", netns, "busybox", "ping", "-q", "-c", str(count), "-s", str(size),
        "-i", str(interval), "-W", "5", ip,
        check=False, timeout=30 + count * (interval + 1),
    )  # fmt: skip
    if f"{count} packets received" not in res.stdout:
        raise AssertionError(f"ping {netns} -> {ip} lost packets: {res.stdout}{res.stderr}")
    return res.stdout


def background_ping_from(
    netns: str, ip: str, size: int = 56, interval: float = 0.2
) -> subprocess.Popen[bytes]:
    """Ping ``ip`` from namespace ``netns`` until the process is stopped."""
    return subprocess.Popen(
        ["ip", "netns", "exec", netns, "busybox", "ping", "-q", "-s", str(size), "-i", str(interval), ip],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def ping(spec: DatapathSpec, count: int, size: int = 56, interval: float = 0.05) -> str:
    """Ping the datapath's local port from the namespace; every echo must come back."""
    return ping_from(spec.netns, spec.local_ip, count, size, interval)


def background_ping(spec: DatapathSpec, size: int = 56, interval: float = 0.2) -> subprocess.Popen[bytes]:
    return background_ping_from(spec.netns, spec.local_ip, size, interval)


#: The EtherType of send_frames' frames: IEEE 802's "local experimental EtherType 1", which no
#: protocol of the host's stack takes.
EXPERIMENTAL_ETHERTYPE = 0x88B5
#: Bytes of a send_frames frame before its payload: destination and source MAC, EtherType and a
#: sequence number.
FRAME_HEADER = 6 + 6 + 2 + 4
#: The Ethernet header alone (destination, source, EtherType).
ETH_HLEN = 14


def send_frames(ifname: str, count: int, payload_len: int = 64) -> None:
    """Send ``count`` raw Ethernet frames out of ``ifname`` (an experimental EtherType), each
    ``FRAME_HEADER + payload_len`` bytes long; from the namespace the calling thread is in."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((ifname, 0))
        for i in range(count):
            frame = bytes.fromhex("020000000001020000000002") + struct.pack("!HI", EXPERIMENTAL_ETHERTYPE, i)
            s.send(frame + b"\0" * payload_len)


#: ETH_P_ALL (include/uapi/linux/if_ether.h): a packet socket of this protocol sees every frame
#: its device receives or sends.
ETH_P_ALL = 0x0003


def ethertype(frame: bytes) -> int:
    return int.from_bytes(frame[12:14], "big")


class FrameTap:
    """A packet socket on ``ifname``, in the calling thread's namespace: it takes the frames of
    ``protocol`` that the device receives (``ETH_P_ALL``: every frame it receives or sends).

    Opened before send_frames' frames arrive, a tap of their EtherType is the handler the
    host's stack delivers them to: without one, a frame of an EtherType no protocol takes is
    counted as the device's ``rx_dropped``.
    """

    def __init__(self, ifname: str, protocol: int = EXPERIMENTAL_ETHERTYPE) -> None:
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(protocol))
        self._sock.bind((ifname, protocol))  # bind converts to network order itself
        self._sock.setblocking(False)

    def take(self) -> list[bytes]:
        """The frames that arrived since the last call."""
        frames = []
        try:
            while True:
                frames.append(self._sock.recv(1 << 16))
        except BlockingIOError:
            return frames

    def close(self) -> None:
        self._sock.close()


# --- ovs-dpctl ----------------------------------------------------------------------------------


def dpctl(*args: str) -> str:
    """Run ovs-dpctl; its stderr carries harmless notes about tunnel netdevs it cannot find."""
    res = sh("ovs-dpctl", *args, check=False)
    if res.returncode:
        raise RuntimeError(f"ovs-dpctl {' '.join(args)} failed: {res.stderr.strip()}")
    return res.stdout


@dataclass
class DpctlDatapath:
    name: str
    counters: dict[str, int]
    ports: dict[str, dict[str, int | None]]
    port_numbers: dict[str, int]
    port_kinds: dict[str, str]


_PORT_RE = re.compile(r"^\s+port (\d+): (\S+)(?: \((\w+)[^)]*\))?$")
_STAT_RE = re.compile(r"(RX|TX) (packets|errors|dropped|bytes):(\d+|\?)")


def dpctl_show(datapath: str) -> DpctlDatapath:
    """``ovs-dpctl show -s DATAPATH``, parsed. A '?' (not reported) becomes None."""
    return parse_dpctl_show(datapath, dpctl("show", "-s", datapath))


def parse_dpctl_show(datapath: str, out: str) -> DpctlDatapath:
    """What ``show -s`` prints for one datapath (``ovs-dpctl``, or ``ovs-appctl dpctl/show``)."""
    dp = DpctlDatapath(datapath, {}, {}, {}, {})
    port: str | None = None
    for line in out.splitlines():
        if m := re.match(r"^\s+lookups: hit:(\d+) missed:(\d+) lost:(\d+)", line):
            dp.counters.update(hits=int(m[1]), misses=int(m[2]), lost=int(m[3]))
        elif m := re.match(r"^\s+flows: (\d+)", line):
            dp.counters["flows"] = int(m[1])
        elif m := re.match(r"^\s+masks: hit:(\d+) total:(\d+)", line):
            dp.counters.update(mask_hits=int(m[1]), masks=int(m[2]))
        elif m := re.match(r"^\s+cache: hit:(\d+)", line):
            dp.counters["mask_cache_hits"] = int(m[1])
        elif m := _PORT_RE.match(line):
            port = m[2]
            dp.port_numbers[port] = int(m[1])
            dp.port_kinds[port] = m[3] or "netdev"
            dp.ports[port] = {}
        elif port is not None:
            for direction, what, value in _STAT_RE.findall(line):
                dp.ports[port][f"{direction.lower()}_{what}"] = None if value == "?" else int(value)
    return dp


def dpctl_diff(dpctl: DpctlDatapath, scrape: Scrape) -> list[str]:
    """Differences between what ``show -s`` printed ('?' for some tunnel counters) and a scrape;
    empty when equal."""
    names = {"rx": "receive", "tx": "transmit"}
    kinds = {"packets": "packets", "bytes": "bytes", "errors": "errors", "dropped": "dropped"}
    problems = []
    for counter, want in dpctl.counters.items():
        metric = {
            "hits": "ovs_datapath_lookup_hits_total",
            "misses": "ovs_datapath_lookup_misses_total",
            "lost": "ovs_datapath_lookup_lost_total",
            "flows": "ovs_datapath_flows",
            "mask_hits": "ovs_datapath_mask_hits_total",
            "masks": "ovs_datapath_masks",
            "mask_cache_hits": "ovs_datapath_mask_cache_hits_total",
        }[counter]
        have = scrape.value(metric, datapath=dpctl.name)
        if have != want:
            problems.append(f"{dpctl.name} {counter}: shown {want}, exporter {have}")
    for port, stats in dpctl.ports.items():
        for key, shown in stats.items():
            if shown is None:
                continue
            direction, kind = key.split("_")
            metric = f"ovs_vport_{names[direction]}_{kinds[kind]}_total"
            have = scrape.value(metric, datapath=dpctl.name, port=port)
            if have != shown:
                problems.append(f"{dpctl.name}/{port} {key}: shown {shown}, exporter {have}")
    return problems


def wait_quiet(nl: OvsNetlink, settle: float = 1.0, timeout: float = 30) -> ovsnl.Snapshot:
    """Wait until no counter moves for ``settle`` seconds; return the last snapshot."""
    deadline = time.monotonic() + timeout
    last = nl.snapshot()
    while time.monotonic() < deadline:
        time.sleep(settle)
        now = nl.snapshot()
        if now.counters() == last.counters():
            return now
        last = now
    raise AssertionError("datapath counters kept moving")
