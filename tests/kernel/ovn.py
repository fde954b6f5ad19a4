"""A real OVN control plane on the vswitchd host, as OpenStack (Neutron's OVN driver) and
Kubernetes (ovn-kubernetes) computes run it.

Built on ``OvsHost`` (tests/kernel/vswitchd.py): the same ovsdb-server, ovs-vswitchd and
namespace ``ovs-host``, plus Debian's OVN 23.03 (unpacked by tests/vm/setup.sh). Every daemon
runs inside ``ovs-host``: vswitchd deletes every other datapath of its namespace.

- Central: the NB and SB ovsdb-servers on unix sockets under /run/ovn, and ovn-northd.
- This chassis (``chassis-1``): Open_vSwitch external_ids ``system-id``, ``ovn-remote``,
  ``ovn-encap-type=geneve``, ``ovn-encap-ip`` (an address on a dummy device) and
  ``ovn-bridge-mappings=physnet1:br-phys``, then ovn-controller, which creates ``br-int``.
- A second chassis that exists only in SB (``ovn-sbctl chassis-add``): ovn-controller makes a
  Geneve tunnel Interface to it, whose kernel vport is ``genev_sys_6081`` (a *netdev* vport).
  Its encap address is routed out of the dummy device: what enters the tunnel is encapsulated
  and counted, then vanishes.
- Logical switch ``sw0`` (198.18.30.0/24): three VMs, each a namespace whose eth0's veth peer
  is plugged into br-int with ``external_ids:iface-id=<logical switch port>`` as os-vif does;
  a logical port ``REMOTE`` bound to the fake chassis (``ovn-sbctl lsp-bind``), so traffic to it
  goes into the tunnel; and a port of router ``lr0`` (198.18.30.1, the VMs' default gateway).
- Stateful ACLs on sw0: everything IP is ``allow-related`` both ways, except TCP to
  ``DROPPED_PORT`` of VM3 (a ``to-lport`` drop at a higher priority). Conntrack is therefore in
  every VM's path, in the zone ovn-controller gives each logical port.
- Logical switch ``public`` (198.18.31.0/24): lr0's second port and a localnet port on
  ``physnet1``; ovn-controller joins br-int and ``br-phys`` with a pair of patch ports (no kernel
  vport). br-phys (a NORMAL bridge) has an uplink into namespace ``ovn-provider`` (.254), so the
  router's ports are reachable from both sides, and ``UNRESOLVED_IP`` is an address on that
  network nobody answers for: each packet routed to it makes lr0 ARP (OVN's ``arp-resolve``).

``OvnHost.start`` builds it all in 6-7 s of guest time under TCG on an otherwise idle machine
and 11-12 s when other work shares its cores, on both kernels (docs/testing-vm.md).
"""

from __future__ import annotations

import itertools
import json
import os
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .netns import in_netns
from .procs import Process
from .topology import ip_batch, sh
from .vswitchd import (
    DB_SOCK,
    HOST_NS,
    Guest,
    OvsHost,
    add_port_args,
    ovsdb_server,
    vsctl,
)

TOOLS = Path(os.environ.get("OVS_VM_TOOLS", "/"))
NB_SCHEMA = TOOLS / "usr/share/ovn/ovn-nb.ovsschema"
SB_SCHEMA = TOOLS / "usr/share/ovn/ovn-sb.ovsschema"
OVN_RUNDIR = Path("/run/ovn")
OVN_DBDIR = Path("/tmp/ovn")
NB_SOCK = OVN_RUNDIR / "ovnnb_db.sock"
SB_SOCK = OVN_RUNDIR / "ovnsb_db.sock"

CHASSIS = "chassis-1"
REMOTE_CHASSIS = "chassis-2"
ENCAP_DEV = "ovn-encap"
ENCAP_IP = "198.18.99.1"
REMOTE_ENCAP_IP = "198.18.99.2"
PHYSNET = "physnet1"
PROVIDER_BRIDGE = "br-phys"
#: The Open_vSwitch external_ids that make this host an OVN chassis (an installer writes them,
#: ovn-controller reads them).
CHASSIS_IDS = {
    "system-id": CHASSIS,
    "hostname": "compute-0",
    "ovn-remote": f"unix:{SB_SOCK}",
    "ovn-encap-type": "geneve",
    "ovn-encap-ip": ENCAP_IP,
    "ovn-bridge-mappings": f"{PHYSNET}:{PROVIDER_BRIDGE}",
}

SWITCH = "sw0"
ROUTER = "lr0"
PUBLIC = "public"
LOCALNET = "ln-public"
ROUTER_IP = "198.18.30.1"
ROUTER_MAC = "fa:16:3e:30:00:01"
ROUTER_PUBLIC_IP = "198.18.31.1"
ROUTER_PUBLIC_MAC = "fa:16:3e:31:00:01"
#: On the provider network, answered by nobody: lr0 ARPs for it at every packet routed there.
UNRESOLVED_IP = "198.18.31.99"
#: TCP to VM3 on DROPPED_PORT is dropped by a to-lport ACL; ALLOWED_PORT is not.
DROPPED_PORT = 5001
ALLOWED_PORT = 5002


def _vm(n: int, neutron_id: str) -> Guest:
    """A Nova VM as os-vif plugs it: tap + the Neutron port id's first 11 characters, whose
    iface-id is the Neutron port id, which Neutron's OVN driver also names the logical port."""
    mac = f"fa:16:3e:30:00:{10 + n:02x}"
    return Guest(
        f"ovn-vm{n}", f"tap{neutron_id[:11]}", "br-int", f"198.18.30.{10 + n}", mac,
        {"iface-id": neutron_id, "iface-status": "active", "attached-mac": mac,
         "vm-uuid": f"6c0e0a5f-0b7d-4c1e-9a3b-00000000000{n}"},
        gateway=ROUTER_IP,
    )  # fmt: skip


VM1 = _vm(1, "5a0c1e2f-3b4d-4e5f-8a9b-0c1d2e3f4a01")
VM2 = _vm(2, "6b1d2f30-4c5e-4f60-9bac-1d2e3f405b02")
VM3 = _vm(3, "7c2e3041-5d6f-4071-acbd-2e3f40516c03")
VMS = (VM1, VM2, VM3)
#: A host on the provider network, behind br-phys's uplink.
PROVIDER = Guest(
    "ovn-provider",
    "eth-phys",
    PROVIDER_BRIDGE,
    "198.18.31.254",
    "02:00:00:31:00:fe",
    gateway=ROUTER_PUBLIC_IP,
)


@dataclass(frozen=True)
class RemotePort:
    """A logical switch port bound to the fake chassis: traffic to it leaves through the tunnel."""

    lport: str
    ip: str
    mac: str
    chassis: str


REMOTE = RemotePort(
    "8d3f4152-6e70-4182-bdce-3f4051627d04", "198.18.30.20", "fa:16:3e:30:00:20", REMOTE_CHASSIS
)


def nbctl(*args: str) -> str:
    return _cli("ovn-nbctl", f"--db=unix:{NB_SOCK}", *args)


def sbctl(*args: str) -> str:
    return _cli("ovn-sbctl", f"--db=unix:{SB_SOCK}", *args)


def ovn_appctl(*args: str, target: str = "ovn-controller") -> str:
    """``ovn-appctl`` to ovn-controller (or ``target``: ``ovn-northd``); they have their pidfiles
    and control sockets where ovn-appctl looks by default (/run/ovn)."""
    return _cli("ovn-appctl", "-t", target, *args)


def ofctl(*args: str) -> str:
    """``ovs-ofctl`` speaking OpenFlow 1.5 as ovn-controller does (meters need 1.3 or later)."""
    return _cli("ovs-ofctl", "-O", "OpenFlow15", *args)


def _cli(*cmd: str) -> str:
    res = sh(*cmd, check=False, timeout=90)
    if res.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {res.stderr.strip()}")
    return res.stdout


def _logical_topology() -> list[str]:
    """One ovn-nbctl transaction for the whole NB configuration (one process, one commit)."""
    args = ["--", "init", "--", "ls-add", SWITCH]
    for vm in VMS:
        args += [
            "--", "lsp-add", SWITCH, vm.iface_id,
            "--", "lsp-set-addresses", vm.iface_id, f"{vm.mac} {vm.ip}",
        ]  # fmt: skip
    args += [
        "--", "lsp-add", SWITCH, REMOTE.lport,
        "--", "lsp-set-addresses", REMOTE.lport, f"{REMOTE.mac} {REMOTE.ip}",
        "--", "lr-add", ROUTER,
        "--", "lrp-add", ROUTER, f"{ROUTER}-{SWITCH}", ROUTER_MAC, f"{ROUTER_IP}/24",
        "--", "lsp-add", SWITCH, f"{SWITCH}-{ROUTER}",
        "--", "lsp-set-type", f"{SWITCH}-{ROUTER}", "router",
        "--", "lsp-set-addresses", f"{SWITCH}-{ROUTER}", "router",
        "--", "lsp-set-options", f"{SWITCH}-{ROUTER}", f"router-port={ROUTER}-{SWITCH}",
        "--", "lrp-add", ROUTER, f"{ROUTER}-{PUBLIC}", ROUTER_PUBLIC_MAC, f"{ROUTER_PUBLIC_IP}/24",
        "--", "ls-add", PUBLIC,
        "--", "lsp-add", PUBLIC, f"{PUBLIC}-{ROUTER}",
        "--", "lsp-set-type", f"{PUBLIC}-{ROUTER}", "router",
        "--", "lsp-set-addresses", f"{PUBLIC}-{ROUTER}", "router",
        "--", "lsp-set-options", f"{PUBLIC}-{ROUTER}", f"router-port={ROUTER}-{PUBLIC}",
        "--", "lsp-add", PUBLIC, LOCALNET,
        "--", "lsp-set-type", LOCALNET, "localnet",
        "--", "lsp-set-addresses", LOCALNET, "unknown",
        "--", "lsp-set-options", LOCALNET, f"network_name={PHYSNET}",
        # Security-group-like ACLs: stateful (conntrack in every VM's path), all allowed but one.
        "--", "acl-add", SWITCH, "from-lport", "1000", "ip4", "allow-related",
        "--", "acl-add", SWITCH, "to-lport", "1000", "ip4", "allow-related",
        "--", "acl-add", SWITCH, "to-lport", "1001",
        f'outport == "{VM3.iface_id}" && tcp.dst == {DROPPED_PORT}', "drop",
    ]  # fmt: skip
    return args


def wait_for(
    what: str, check: Callable[[], bool], timeout: float = 60, state: Callable[[], str] | None = None
) -> None:
    """Poll ``check`` until true; on timeout, the error says ``state()``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"timed out after {timeout:.0f}s waiting for {what}" + (f":\n{state()}" if state else "")
            )
        time.sleep(0.2)


def _interface_table() -> str:
    return "\n".join(
        f"{i['name']} type={i['type'] or 'system'} ofport={i['ofport']} {i['options']}" for i in interfaces()
    )


def find(table: str, columns: str, **match: str) -> list[dict[str, object]]:
    """Rows of an OVSDB table (``column=value`` conditions), maps as dicts."""
    out = vsctl("--format=json", "--data=json", f"--columns={columns}", "find", table,
                *(f"{k}={v}" for k, v in match.items()), wait=False)  # fmt: skip
    doc = json.loads(out)
    rows = []
    for row in doc["data"]:
        rec = dict(zip(doc["headings"], row, strict=True))
        for col, value in rec.items():
            if isinstance(value, list) and value and value[0] == "map":
                rec[col] = dict(value[1])
        rows.append(rec)
    return rows


def interfaces(**match: str) -> list[dict[str, object]]:
    """Interface rows (name, type, ofport, options, external_ids) matching ``column=value``."""
    return find("Interface", "name,type,ofport,options,external_ids", **match)


def ct_zones() -> dict[str, int]:
    """ovn-controller's conntrack zones as it records them in br-int's external_ids
    ``ct-zone-<name>``: by local logical port (the VMs' and the localnet port), and
    ``<datapath uuid>_dnat``/``_snat`` for each local datapath (OVN 23.03 gives switches a pair
    too). The numbers depend on the order ovn-controller saw things in: never hard-code them."""
    (row,) = find("Bridge", "external_ids", name="br-int")
    ids = row["external_ids"]
    assert isinstance(ids, dict)
    return {k.removeprefix("ct-zone-"): int(v) for k, v in ids.items() if k.startswith("ct-zone-")}


def ct_zone(vm: Guest) -> int:
    return ct_zones()[vm.iface_id]


# --- traffic from the guests' namespaces, sent by the test process itself ---------------------
# A socket stays in the namespace it was created in: no process per call (0.15-0.5 s each).

ConnectResult = Literal["connected", "refused", "timeout"]
#: Source ports of send_syns, not reused within 40,000 SYNs: each SYN is a new conntrack
#: connection, not a retransmission of an earlier one.
_SOURCE_PORTS = itertools.cycle(range(20000, 60000))


def _socket(netns: str, kind: int, proto: int = 0) -> socket.socket:
    with in_netns(netns):
        return socket.socket(socket.AF_INET, kind, proto)


def tcp_connect(src: Guest, ip: str, port: int, timeout: float = 2.0) -> ConnectResult:
    """Open a TCP connection from ``src`` to ``ip:port`` and close it again.

    A SYN that is dropped is resent after 1 s (the initial RTO): with the default timeout a
    dropped attempt sends two SYNs.
    """
    with _socket(src.netns, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect((ip, port))
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "timeout"
    return "connected"


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp_syn(src_ip: str, dst_ip: str, sport: int, dport: int) -> bytes:
    """A TCP SYN segment (no IP header) with its checksum over the IPv4 pseudo-header."""
    header = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = socket.inet_aton(src_ip) + socket.inet_aton(dst_ip) + struct.pack("!BBH", 0, 6, len(header))
    return header[:16] + struct.pack("!H", _checksum(pseudo + header)) + header[18:]


def send_syns(src: Guest, ip: str, port: int, count: int) -> int:
    """Send exactly ``count`` TCP SYNs from ``src`` to ``ip:port``, each from its own source port
    (a new connection each), over a raw socket: the kernel resends nothing. A SYN-ACK coming
    back is answered with a RST by ``src``'s kernel (no socket owns the port). Returns how many
    were sent."""
    sent = 0
    with _socket(src.netns, socket.SOCK_RAW, socket.IPPROTO_TCP) as s:
        for _ in range(count):
            if s.sendto(tcp_syn(src.ip, ip, next(_SOURCE_PORTS), port), (ip, 0)):
                sent += 1
    return sent


def send_udp(src: Guest, ip: str, count: int, port: int = 9, size: int = 64) -> int:
    """Send ``count`` UDP datagrams (discard port) from ``src``: for destinations that answer
    nothing, such as REMOTE (through the tunnel) or UNRESOLVED_IP (lr0 ARPs for it)."""
    with _socket(src.netns, socket.SOCK_DGRAM) as s:
        return sum(1 for _ in range(count) if s.sendto(bytes(size), (ip, port)))


def tcp_segments_received(guest: Guest) -> int:
    """``Tcp: InSegs`` of the guest's namespace: every TCP segment its stack received."""
    with in_netns(guest.netns), open("/proc/thread-self/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Tcp:")]
    return int(rows[1][rows[0].index("InSegs")])


class TcpListener:
    """Listening sockets in a guest's namespace, served by a thread that accepts and closes."""

    def __init__(self, guest: Guest, ports: Iterable[int]) -> None:
        with in_netns(guest.netns):
            self.sockets = [socket.create_server(("", p), backlog=128) for p in ports]
        self.accepted = dict.fromkeys(ports, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"listen-{guest.netns}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as sel:
            for s in self.sockets:
                sel.register(s, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=0.2):
                    listener = key.fileobj
                    assert isinstance(listener, socket.socket)
                    conn, _ = listener.accept()
                    self.accepted[listener.getsockname()[1]] += 1
                    conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for s in self.sockets:
            s.close()


class OvnHost(OvsHost):
    """OvsHost plus OVN central (NB, SB, ovn-northd) and this chassis' ovn-controller.

    ``timings`` holds the guest seconds each setup step took (``start`` fills it).
    """

    def __init__(self, log_dir: Path) -> None:
        super().__init__(log_dir, guests=(*VMS, PROVIDER), system_ids=CHASSIS_IDS)
        self.nb: Process | None = None
        self.sb: Process | None = None
        self.northd: Process | None = None
        self.controller: Process | None = None
        self.listener: TcpListener | None = None
        self.tunnel: str = ""  # the tunnel Interface's name (ovn-<chassis>-0)
        self.patch_ports: tuple[str, ...] = ()
        self.timings: dict[str, float] = {}

    def _daemon(self, name: str, cmd: list[str]) -> Process:
        # `ip netns exec` as vswitchd's: the daemon's /sys is the namespace's too.
        return Process(
            name, ["ip", "netns", "exec", HOST_NS, *cmd, "-vconsole:info", "-vsyslog:off"], self.log_dir
        )

    def start(self) -> None:
        """Build the whole scenario; return once the VMs' ports are installed, the tunnel and
        the patch ports exist, lr0 knows the provider host and VM3 listens."""
        started = time.monotonic()

        def step(name: str) -> None:
            self.timings[name] = round(time.monotonic() - started - sum(self.timings.values()), 2)

        # ovs-host exists once start_vswitchd returns: the OVN daemons come after.
        self.start_vswitchd()
        step("vswitchd")
        self.start_central()
        step("central")
        self.start_chassis()
        step("chassis")
        self.plug_vms()
        step("vms")
        self.resolve_provider()
        step("provider")
        self.listener = TcpListener(VM3, (DROPPED_PORT, ALLOWED_PORT))
        self.timings["total"] = round(time.monotonic() - started, 2)

    def start_central(self) -> None:
        """NB and SB databases and servers, the logical topology, ovn-northd."""
        OVN_RUNDIR.mkdir(parents=True, exist_ok=True)
        OVN_DBDIR.mkdir(parents=True, exist_ok=True)
        for db, schema in (("ovnnb_db", NB_SCHEMA), ("ovnsb_db", SB_SCHEMA)):
            (OVN_DBDIR / f"{db}.db").unlink(missing_ok=True)
            sh("ovsdb-tool", "create", str(OVN_DBDIR / f"{db}.db"), str(schema))
        self.nb = ovsdb_server("ovnnb_db", OVN_DBDIR / "ovnnb_db.db", NB_SOCK, self.log_dir, netns=HOST_NS)
        self.sb = ovsdb_server("ovnsb_db", OVN_DBDIR / "ovnsb_db.db", SB_SOCK, self.log_dir, netns=HOST_NS)
        nbctl(*_logical_topology())
        self.northd = self._daemon(
            "ovn-northd",
            ["ovn-northd", f"--ovnnb-db=unix:{NB_SOCK}", f"--ovnsb-db=unix:{SB_SOCK}",
             f"--pidfile={OVN_RUNDIR / 'ovn-northd.pid'}"],
        )  # fmt: skip
        # northd has written the Port_Bindings (lsp-bind needs REMOTE's): the fake chassis and
        # the binding that puts REMOTE there.
        nbctl("--wait=sb", "--timeout=60", "sync")
        sbctl(
            "--", "chassis-add", REMOTE.chassis, "geneve", REMOTE_ENCAP_IP,
            "--", "lsp-bind", REMOTE.lport, REMOTE.chassis,
        )  # fmt: skip

    def start_chassis(self) -> None:
        """The encap address, the provider bridge and its uplink, then ovn-controller; returns
        once br-int (which ovn-controller creates) has the tunnel to the fake chassis."""
        # REMOTE_ENCAP_IP is on the dummy's subnet: Geneve packets to it leave through the dummy.
        ip_batch(
            [
                f"link add {ENCAP_DEV} type dummy",
                f"addr add {ENCAP_IP}/24 dev {ENCAP_DEV}",
                f"link set {ENCAP_DEV} up",
            ],
            netns=HOST_NS,
        )
        vsctl("--", "add-br", PROVIDER_BRIDGE, "--", "add-port", PROVIDER_BRIDGE, PROVIDER.port)
        self.controller = self._daemon(
            "ovn-controller",
            ["ovn-controller", f"unix:{DB_SOCK}",
             f"--pidfile={OVN_RUNDIR / 'ovn-controller.pid'}"],
        )  # fmt: skip

        def tunnel() -> bool:
            assert self.controller is not None
            if not self.controller.alive():
                raise RuntimeError(f"ovn-controller exited:\n{self.controller.log.read_text()[-3000:]}")
            tunnels = [
                i for i in interfaces(type="geneve") if isinstance(i["ofport"], int) and i["ofport"] > 0
            ]
            self.tunnel = str(tunnels[0]["name"]) if len(tunnels) == 1 else ""
            return bool(self.tunnel)

        wait_for("a tunnel to the fake chassis on br-int", tunnel, state=_interface_table)

    def plug_vms(self) -> None:
        """Plug the VMs into br-int as os-vif does; return once ovn-controller has claimed each
        (``external_ids:ovn-installed=true``: its flows are in)."""
        vsctl(*(arg for vm in VMS for arg in add_port_args(vm)))
        waits: list[str] = []
        for vm in VMS:
            waits += ["--", "wait-until", "Interface", vm.port, 'external_ids:"ovn-installed"="true"']
        vsctl(*waits)

        # Only now is the provider network "local" (reached from the VMs through lr0), and
        # ovn-controller joins br-int to br-phys.
        def patches() -> bool:
            self.patch_ports = tuple(sorted(str(i["name"]) for i in interfaces(type="patch")))
            return len(self.patch_ports) == 2

        wait_for("patch ports between br-int and br-phys", patches, state=_interface_table)

    def resolve_provider(self) -> None:
        """Make lr0 learn the provider host's MAC (a MAC_Binding in SB), so that no later packet
        between the VMs and the provider network is the one lr0 turns into its ARP request."""

        def learned() -> bool:
            sh("ip", "netns", "exec", PROVIDER.netns, "busybox", "ping", "-c", "1", "-W", "1", ROUTER_PUBLIC_IP,
               check=False)  # fmt: skip
            return PROVIDER.ip in sbctl("--bare", "--columns=ip", "list", "MAC_Binding").split()

        wait_for("lr0 to learn the provider host's MAC", learned, timeout=30)

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.close()
        for proc in (self.controller, self.northd):
            if proc is not None:
                proc.stop()
        super().stop()
        for proc in (self.nb, self.sb):
            if proc is not None:
                proc.stop()
