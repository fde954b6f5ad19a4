"""A host as OpenStack and Kubernetes nodes run it: ovsdb-server and the real ovs-vswitchd.

Everything runs inside one network namespace, ``ovs-host``, that plays the host: vswitchd
deletes every kernel datapath of its namespace that is not its own ``ovs-system``, so in the
guest's own namespace it would destroy the datapaths the other tests build. The "VMs" and
"pods" are namespaces joined to ``br-int`` by veth pairs, with the ``external_ids`` that
OpenStack's os-vif, ovn-kubernetes and kube-ovn write; ``br-ex`` has an uplink into namespace
``ext`` and reaches ``br-int`` through a pair of patch ports (which have no kernel vport);
``gnv0`` is a Geneve tunnel port (its kernel vport is ``genev_sys_6081``). vswitchd runs the
bridges with the NORMAL action: it learns MACs from the upcalls of the first packets and
installs kernel flows.

A management veth (198.18.200.1 in the guest's namespace, .2 in ``ovs-host``) lets the test
process and Prometheus reach an exporter listening inside ``ovs-host``. The binaries are
Debian's: ovs-vswitchd and ovs-vsctl unpacked from openvswitch-switch by tests/vm/setup.sh,
ovsdb-server, ovsdb-tool and ovs-appctl from the host's openvswitch-common.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .netns import write_sysctl
from .procs import Process
from .promtext import Labels
from .topology import DpctlDatapath, ip_batch, parse_dpctl_show, sh

HOST_NS = "ovs-host"
RUNDIR = Path("/run/openvswitch")
DB_SOCK = RUNDIR / "db.sock"
DB_FILE = Path("/tmp/ovs/conf.db")
SCHEMA = Path(os.environ.get("OVS_VM_TOOLS", "/")) / "usr/share/openvswitch/vswitch.ovsschema"
VSWITCHD = Path(os.environ.get("OVS_VM_TOOLS", "/")) / "usr/lib/openvswitch-switch/ovs-vswitchd"
#: The group that may open db.sock: the exporter's only right beyond "nobody".
DB_GROUP = 2001
#: Management link between the guest's namespace and ``ovs-host``.
MGMT_HOST_IP = "198.18.200.1"
MGMT_NS_IP = "198.18.200.2"
#: Kernel datapath of every bridge of ovs-vswitchd (a bridge exists only in OVSDB).
DATAPATH = "ovs-system"
#: OVS 3.1.0 counts the CPUs only once CLOCK_MONOTONIC passes 10 s; a vswitchd started earlier
#: creates no upcall handlers and every miss is lost for good (fixed in 3.1.1).
VSWITCHD_MIN_UPTIME = 11.0
#: No IPv6: its router solicitations and MLD reports would keep counters moving.
NO_IPV6 = {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}
SUBNET = "198.18.20"
SYSTEM_ID = "5d8a2d52-3c1b-4d0e-9f57-0c9a8f2b1e44"


@dataclass(frozen=True)
class Guest:
    """A VM or pod: a namespace whose eth0 is the peer of ``port`` on ``bridge``."""

    netns: str
    port: str
    bridge: str
    ip: str
    mac: str
    external_ids: dict[str, str] = field(default_factory=dict)
    #: Default route of the namespace (none: only its own /24 is reachable).
    gateway: str | None = None

    @property
    def iface_id(self) -> str:
        """The logical port (OVN), Neutron port or pod this port belongs to."""
        return self.external_ids["iface-id"]

    def setup_lines(self) -> list[str]:
        """``ip -batch`` lines that configure eth0 inside the guest's namespace."""
        lines = ["link set lo up", "link set eth0 up", f"addr add {self.ip}/24 dev eth0"]
        if self.gateway:
            lines.append(f"route add default via {self.gateway}")
        return lines


#: Names and external_ids as each system writes them (os-vif: tap + 11 characters of the
#: Neutron port id; ovn-kubernetes: the sandbox id's first 15 characters and iface-id
#: "<namespace>_<pod>"; kube-ovn: the container id's first 12 characters + "_h" and iface-id
#: "<pod>.<namespace>").
GUESTS = (
    Guest(
        "vm-nova", "tapa1b2c3d4-e5", "br-int", f"{SUBNET}.11", "fa:16:3e:11:22:33",
        {
            "iface-id": "a1b2c3d4-e5f6-4711-8899-aabbccddeeff",
            "iface-status": "active",
            "attached-mac": "fa:16:3e:11:22:33",
            "vm-uuid": "0f1e2d3c-4b5a-4697-8877-665544332211",
        },
    ),
    Guest(
        "pod-ovnk", "3f2a9c1e7b4d5a6", "br-int", f"{SUBNET}.12", "0a:58:c6:12:14:0c",
        {
            "iface-id": "shop_web-0",
            "attached_mac": "0a:58:c6:12:14:0c",
            "ip_addresses": f"{SUBNET}.12/24",
            "sandbox": "3f2a9c1e7b4d5a6e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a",
        },
    ),
    Guest(
        "pod-kubeovn", "9c8b7a6d5e4f_h", "br-int", f"{SUBNET}.13", "00:00:00:6b:0e:0d",
        {
            "iface-id": "db-1.payments",
            "vendor": "kube-ovn",
            "pod_name": "db-1",
            "pod_namespace": "payments",
            "ip": f"{SUBNET}.13",
            "pod_netns": "/var/run/netns/cni-6f1c2b3a",
        },
    ),
    Guest("ext", "eth-ext", "br-ex", f"{SUBNET}.254", "02:00:00:00:0e:fe"),
)  # fmt: skip

#: The tunnel port: OVSDB interface name, and the kernel vport all Geneve ports on 6081 share.
GENEVE = "gnv0"
GENEVE_VPORT = "genev_sys_6081"
PATCH_PORTS = ("patch-int", "patch-ex")


def add_port_args(g: Guest) -> list[str]:
    """ovs-vsctl commands that plug ``g``'s port into its bridge with its external_ids."""
    args = ["--", "add-port", g.bridge, g.port]
    if g.external_ids:
        args += ["--", "set", "Interface", g.port]
        args += [f'external_ids:"{k}"="{v}"' for k, v in g.external_ids.items()]
    return args


def _vsctl_args(guests: tuple[Guest, ...]) -> list[str]:
    """One ovs-vsctl transaction for the bridges and every port (one process, one commit)."""
    args = ["--", "add-br", "br-int", "--", "add-br", "br-ex"]
    for g in guests:
        args += add_port_args(g)
    args += [
        "--", "add-port", "br-int", GENEVE,
        "--", "set", "Interface", GENEVE, "type=geneve", "options:remote_ip=198.18.99.2",
        "options:key=flow",
        "--", "add-port", "br-int", PATCH_PORTS[0],
        "--", "set", "Interface", PATCH_PORTS[0], "type=patch", f"options:peer={PATCH_PORTS[1]}",
        "--", "add-port", "br-ex", PATCH_PORTS[1],
        "--", "set", "Interface", PATCH_PORTS[1], "type=patch", f"options:peer={PATCH_PORTS[0]}",
    ]  # fmt: skip
    return args


def vsctl(*args: str, wait: bool = True) -> str:
    """ovs-vsctl; without ``wait`` it does not wait for vswitchd to apply the change."""
    cmd = ["ovs-vsctl", "--timeout=60", *([] if wait else ["--no-wait"]), *args]
    res = sh(*cmd, check=False, timeout=90)
    if res.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {res.stderr.strip()}")
    return res.stdout


def appctl(*args: str) -> str:
    res = sh("ovs-appctl", "-t", "ovs-vswitchd", *args, check=False)
    if res.returncode:
        raise RuntimeError(f"ovs-appctl {' '.join(args)} failed: {res.stderr.strip()}")
    return res.stdout


def vswitchd_dpctl_show() -> DpctlDatapath:
    """vswitchd's own view of its datapath: ``ovs-appctl dpctl/show -s``, parsed."""
    return parse_dpctl_show(DATAPATH, appctl("dpctl/show", "-s", f"system@{DATAPATH}"))


def ovsdb_tables() -> dict[str, list[dict[str, Any]]]:
    """Open_vSwitch, Bridge, Port and Interface rows as ovs-vsctl reads them (one process).

    A second reader of OVSDB, independent of the exporter's: the tests compare the two.
    """
    tables = ("Open_vSwitch", "Bridge", "Port", "Interface")
    args = ["--format=json", "--data=json"]
    for table in tables:
        args += ["--", "list", table]
    out = vsctl(*args, wait=False)
    result: dict[str, list[dict[str, Any]]] = {}
    for table, line in zip(tables, [line for line in out.splitlines() if line.strip()], strict=True):
        doc = json.loads(line)
        result[table] = [dict(zip(doc["headings"], row, strict=True)) for row in doc["data"]]
    return result


def _atoms(value: Any) -> list[Any]:
    """An OVSDB set in JSON (``["set", [...]]`` or a single atom) as a list of atoms."""
    if isinstance(value, list) and value and value[0] == "set":
        return list(value[1])
    return [value]


def _map(value: Any) -> dict[str, str]:
    return dict(value[1]) if isinstance(value, list) and value and value[0] == "map" else {}


def _uuid(value: Any) -> str:
    return str(value[1])


#: What ovs_interface_info must say for a kernel vport: the OVS rules the exporter documents.
#: A tunnel Interface is implemented by the vport ``<prefix>_<dst_port>`` (lib/netdev-vport.c).
TUNNEL_VPORT_PREFIX = {"geneve": ("genev_sys", 6081), "vxlan": ("vxlan_sys", 4789)}


def expected_identity(tables: dict[str, list[dict[str, Any]]], keys: tuple[str, ...]) -> set[Labels]:
    """Every ovs_interface_info label set the exporter should serve for these OVSDB rows."""
    interfaces = {_uuid(row["_uuid"]): row for row in tables["Interface"]}
    ports = {_uuid(row["_uuid"]): row for row in tables["Port"]}
    out: set[Labels] = set()
    for bridge in tables["Bridge"]:
        if bridge.get("datapath_type") not in ("", "system"):
            continue
        for port_ref in _atoms(bridge["ports"]):
            for iface_ref in _atoms(ports[_uuid(port_ref)]["interfaces"]):
                iface = interfaces[_uuid(iface_ref)]
                kind = iface["type"]
                name = iface["name"]
                if kind in TUNNEL_VPORT_PREFIX:
                    prefix, default = TUNNEL_VPORT_PREFIX[kind]
                    name = f"{prefix}_{_map(iface['options']).get('dst_port', default)}"
                labels = {"datapath": DATAPATH, "port": name, "bridge": bridge["name"]}
                if isinstance(iface["ofport"], int):
                    labels["ofport"] = str(iface["ofport"])
                labels["interface_type"] = kind or "system"
                ids = _map(iface["external_ids"])
                for key in keys:
                    label = key.replace("-", "_")
                    if key in ids and label not in labels:
                        labels[label] = ids[key]
                out.add(frozenset(labels.items()))
    return out


def expected_system(tables: dict[str, list[dict[str, Any]]]) -> Labels:
    (row,) = tables["Open_vSwitch"]
    ids = _map(row["external_ids"])
    values = {
        "system_id": ids.get("system-id"),
        "hostname": ids.get("hostname"),
        "ovs_version": next(iter(_atoms(row["ovs_version"])), None),
        "db_version": next(iter(_atoms(row["db_version"])), None),
    }
    return frozenset((k, v) for k, v in values.items() if isinstance(v, str) and v)


def ovsdb_server(name: str, db: Path, sock: Path, log_dir: Path, netns: str | None = None) -> Process:
    """Start ovsdb-server serving ``db`` on the unix socket ``sock`` (its pidfile and control
    socket ``<name>.pid``/``.ctl`` beside it), inside ``netns`` if given; return once it listens."""
    sock.unlink(missing_ok=True)
    cmd = [
        "ovsdb-server", str(db), f"--remote=punix:{sock}",
        f"--pidfile={sock.parent / f'{name}.pid'}", f"--unixctl={sock.parent / f'{name}.ctl'}",
        "-vconsole:info", "-vsyslog:off",
    ]  # fmt: skip
    proc = Process(name, [*(["ip", "netns", "exec", netns] if netns else []), *cmd], log_dir)
    deadline = time.monotonic() + 60
    while not sock.exists():
        if not proc.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not create {sock}:\n{proc.log.read_text()[-2000:]}")
        time.sleep(0.1)
    return proc


def uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def ping(src: Guest, dst: Guest | str, count: int, size: int = 56, interval: float = 0.05) -> None:
    """Ping ``dst`` (a guest or an address) from ``src``; every echo must come back."""
    ip = dst if isinstance(dst, str) else dst.ip
    res = sh(
        "ip", "netns", "exec", src.netns, "busybox", "ping", "-q", "-c", str(count), "-s", str(size),
        "-i", str(interval), "-W", "5", ip,
        check=False, timeout=30 + count * (interval + 1),
    )  # fmt: skip
    if f"{count} packets received" not in res.stdout:
        raise AssertionError(f"ping {src.netns} -> {ip} lost packets: {res.stdout}{res.stderr}")


def background_ping(src: Guest, dst: Guest, interval: float = 0.2) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["ip", "netns", "exec", src.netns, "busybox", "ping", "-q", "-i", str(interval), dst.ip],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def background_misses(src: Guest, dst: Guest, interval: float = 0.5) -> subprocess.Popen[bytes]:
    """Frames from ``src`` to ``dst``, each from a source MAC never seen before: each misses the
    kernel's flows (NORMAL matches the source MAC it learns), so vswitchd handles a steady
    stream of upcalls, unlike pings whose flows are installed once."""
    script = (
        "import itertools, socket, struct, time\n"
        "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n"
        "s.bind(('eth0', 0))\n"
        "for i in itertools.count():\n"
        f"    s.send(bytes.fromhex('{dst.mac.replace(':', '')}02aa') + struct.pack('!IH', i, 0x88B5) + bytes(46))\n"
        f"    time.sleep({interval})\n"
    )
    return subprocess.Popen(
        ["ip", "netns", "exec", src.netns, sys.executable, "-c", script],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


class OvsHost:
    """ovsdb-server and ovs-vswitchd in namespace ``ovs-host``, with the guests attached.

    ``start`` builds the vswitchd scenario; a scenario of its own (tests/kernel/ovn.py) calls
    ``start_vswitchd`` and then configures the bridges itself.
    """

    def __init__(
        self,
        log_dir: Path,
        guests: tuple[Guest, ...] = GUESTS,
        system_ids: dict[str, str] | None = None,
    ) -> None:
        """``guests`` get a namespace and a veth into ``ovs-host`` (plugged into their bridge by
        ``start``); ``system_ids`` are the Open_vSwitch external_ids written at init."""
        self.log_dir = log_dir
        self.guests = guests
        self.system_ids = (
            {"system-id": SYSTEM_ID, "hostname": "compute-0"} if system_ids is None else system_ids
        )
        self.ovsdb: Process | None = None
        self.vswitchd: Process | None = None
        self.netns: list[str] = []

    # --- daemons ---

    def start_ovsdb(self) -> None:
        """Start ovsdb-server on the existing database; db.sock open to group DB_GROUP only."""
        self.ovsdb = ovsdb_server("ovsdb-server", DB_FILE, DB_SOCK, self.log_dir)
        # As distributions that run OVS as its own user do: the socket is the access control
        # (connect() needs write permission on it), so a group may connect, nobody else.
        os.chown(DB_SOCK, 0, DB_GROUP)
        os.chmod(DB_SOCK, 0o660)

    def stop_ovsdb(self) -> None:
        if self.ovsdb is not None:
            self.ovsdb.stop()

    def start(self) -> None:
        self.start_vswitchd()
        # Waits until vswitchd has applied the whole transaction (ofports assigned).
        vsctl(*_vsctl_args(self.guests))
        ip_batch(["link set br-int up", "link set br-ex up"], netns=HOST_NS)

    def start_vswitchd(self) -> None:
        """A new database and its ovsdb-server, the namespaces with the guests' veths, and
        ovs-vswitchd (once the uptime allows it), with no bridge yet."""
        RUNDIR.mkdir(parents=True, exist_ok=True)
        DB_FILE.parent.mkdir(parents=True, exist_ok=True)
        DB_FILE.unlink(missing_ok=True)
        sh("ovsdb-tool", "create", str(DB_FILE), str(SCHEMA))
        self.start_ovsdb()
        # As ovs-ctl does at start: the host's identity and the versions, which
        # ovs_system_info reports.
        version = sh("ovs-vsctl", "--version").stdout.split()[3]
        schema_version = json.loads(SCHEMA.read_text())["version"]
        vsctl(
            "init", "--", "set", "Open_vSwitch", ".", f'ovs_version="{version}"', f'db_version="{schema_version}"',
            *(f'external_ids:"{k}"="{v}"' for k, v in self.system_ids.items()),
            wait=False,
        )  # fmt: skip
        self._build_namespaces()
        time.sleep(max(0.0, VSWITCHD_MIN_UPTIME - uptime()))
        self.vswitchd = Process(
            "ovs-vswitchd",
            [
                "ip", "netns", "exec", HOST_NS, str(VSWITCHD), f"unix:{DB_SOCK}",
                f"--pidfile={RUNDIR / 'ovs-vswitchd.pid'}", "-vconsole:info", "-vsyslog:off",
            ],
            self.log_dir,
        )  # fmt: skip

    def _build_namespaces(self) -> None:
        names = [HOST_NS, *(g.netns for g in self.guests)]
        ip_batch([f"netns add {n}" for n in names])
        self.netns = names
        for n in names:
            write_sysctl(n, NO_IPV6)
        lines = [
            f"link add mgmt0 type veth peer name mgmt1 netns {HOST_NS}",
            f"addr add {MGMT_HOST_IP}/24 dev mgmt0",
            "link set mgmt0 up",
        ]
        lines += [
            f"link add {g.port} netns {HOST_NS} type veth peer name eth0 netns {g.netns} address {g.mac}"
            for g in self.guests
        ]
        ip_batch(lines)
        ip_batch(
            ["link set lo up", "link set mgmt1 up", f"addr add {MGMT_NS_IP}/24 dev mgmt1"]
            + [f"link set {g.port} up" for g in self.guests],
            netns=HOST_NS,
        )
        for g in self.guests:
            ip_batch(g.setup_lines(), netns=g.netns)

    def add_guest(self, g: Guest) -> None:
        """Plug one more guest into its bridge, as a CNI or os-vif would (one ovs-vsctl call)."""
        ip_batch([f"netns add {g.netns}"])
        self.netns.append(g.netns)
        write_sysctl(g.netns, NO_IPV6)
        ip_batch(
            [f"link add {g.port} netns {HOST_NS} type veth peer name eth0 netns {g.netns} address {g.mac}"]
        )
        ip_batch([f"link set {g.port} up"], netns=HOST_NS)
        ip_batch(g.setup_lines(), netns=g.netns)
        vsctl(*add_port_args(g))

    def remove_guest(self, g: Guest) -> None:
        vsctl("--", "del-port", g.bridge, g.port)
        ip_batch([f"netns del {g.netns}"])
        self.netns.remove(g.netns)

    def kill_ovsdb(self) -> None:
        """ovsdb-server dies (SIGKILL): no goodbye to its clients."""
        if self.ovsdb is not None:
            self.ovsdb.proc.kill()
            self.ovsdb.proc.wait()

    def stop(self) -> None:
        """Stop vswitchd removing its datapath (``exit --cleanup``), then ovsdb-server."""
        if self.vswitchd is not None and self.vswitchd.alive():
            try:
                appctl("exit", "--cleanup")
                self.vswitchd.proc.wait(timeout=30)
            except (RuntimeError, subprocess.TimeoutExpired):
                self.vswitchd.stop()
        self.stop_ovsdb()
        sh("ip", "link", "del", "mgmt0", check=False)
        if self.netns:
            ip_batch([f"netns del {n}" for n in self.netns])
        self.netns = []
