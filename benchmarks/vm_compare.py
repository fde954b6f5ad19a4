"""In-VM comparison on a real datapath: the exporter's scrape against the raw kernel dump and node_exporter.

Runs inside the guest of the VM harness (``tests/vm``), from the host:

    .venv/bin/python -m tests.vm run --kernel 6.12 --quiet -- python -m benchmarks.vm_compare --vports 2000

It creates one datapath with ``--vports`` internal vports over netlink
(OVS_VPORT_CMD_NEW; each is also a network interface), then times, in the same run:

- the raw kernel dump alone: the ``ovs_datapath`` dump and the datapath's
  ``ovs_vport`` dump on a plain netlink socket, datagrams received and their
  message headers walked, nothing decoded: the floor of any exporter;
- a bare standard-library decode of the same dumps (``BareDecode``): every
  attribute of every vport walked with ``struct`` into a dict, nothing rendered;
- the exporter (``python -m exporter``, unchanged, as its own process), scraped over
  HTTP with Prometheus's headers;
- node_exporter (Debian's ``prometheus-node-exporter``) with only its netdev
  collector, scraped the same way: about as many interfaces as there are vports.

The guest runs under TCG emulation (20-35x slower than native), so only the
ratios mean something. Figures go to stdout and to ``$OVS_VM_RESULTS/vm_compare.json``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import socket
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.scrape import get_metrics
from exporter.kernel.families.datapath import OVS_DATAPATH_VERSION
from exporter.kernel.families.vport import (
    OVS_VPORT_ATTR_NAME,
    OVS_VPORT_ATTR_OPTIONS,
    OVS_VPORT_ATTR_STATS,
    OVS_VPORT_ATTR_UPCALL_STATS,
    OVS_VPORT_VERSION,
)
from exporter.kernel.netlink import NLA_TYPE_MASK, NLMSG_DONE, NLMSG_ERROR, encode_ovs_get
from tests.kernel import ovsnl
from tests.kernel.procs import Exporter, Process, tool, wait_http

DATAPATH = "bench"
EXPORTER_PORT = 9310
NODE_EXPORTER_PORT = 9100


def create_vports(nl: ovsnl.OvsNetlink, count: int) -> int:
    """A datapath with ``count`` internal vports named like OpenStack taps; returns its dp_ifindex."""
    dp_ifindex = nl.new_datapath(DATAPATH)
    for i in range(count):
        nl.new_vport(dp_ifindex, f"tap{i:08x}-{i % 256:02x}", ovsnl.VPORT_INTERNAL)
    return dp_ifindex


class RawDump:
    """The kernel's share of a scrape: both dumps received, message headers walked, nothing decoded."""

    def __init__(self, nl: ovsnl.OvsNetlink, dp_ifindex: int) -> None:
        self.families = (nl.family(ovsnl.DATAPATH_FAMILY), nl.family(ovsnl.VPORT_FAMILY))
        self.dp_ifindex = dp_ifindex
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, ovsnl.NETLINK_GENERIC)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, 0))
        self.seq = 0
        self.buf = bytearray(1 << 16)

    def _dump(self, family: int, version: int, dp_ifindex: int) -> int:
        self.seq += 1
        self.sock.send(encode_ovs_get(family, version, self.seq, dp_ifindex))
        messages = 0
        while True:
            size = self.sock.recv_into(self.buf)
            pos = 0
            while pos + 16 <= size:
                length, mtype = struct.unpack_from("=IH", self.buf, pos)
                if mtype == NLMSG_DONE:
                    return messages
                if mtype == NLMSG_ERROR:
                    raise OSError("dump failed")
                messages += 1
                pos += (length + 3) & ~3

    def __call__(self) -> int:
        self._dump(self.families[0], OVS_DATAPATH_VERSION, 0)
        return self._dump(self.families[1], OVS_VPORT_VERSION, self.dp_ifindex)

    def close(self) -> None:
        self.sock.close()


class BareDecode(RawDump):
    """The same dumps decoded the plain way, with nothing but the standard library.

    Every attribute of every vport message walked with ``struct``, nested ones
    (OPTIONS, UPCALL_STATS) too, into one dict per vport: name, port number, type,
    ifindex, the eight counters and the upcall counters. What any Python exporter
    must at least do to read the vports; the exporter's whole scrape is compared to it.
    """

    def _dump(self, family: int, version: int, dp_ifindex: int) -> int:
        self.seq += 1
        self.sock.send(encode_ovs_get(family, version, self.seq, dp_ifindex))
        vports: list[dict[int, object]] = []
        while True:
            size = self.sock.recv_into(self.buf)
            data = bytes(self.buf[:size])
            pos = 0
            while pos + 16 <= size:
                length, mtype = struct.unpack_from("=IH", data, pos)
                if mtype == NLMSG_DONE:
                    return len(vports)
                if mtype == NLMSG_ERROR:
                    raise OSError("dump failed")
                if mtype == family == self.families[1]:  # the datapath dump is only received
                    vports.append(_attrs(data, pos + 24, pos + length))
                elif mtype == family:
                    vports.append({})
                pos += (length + 3) & ~3


def _attrs(data: bytes, pos: int, end: int) -> dict[int, object]:
    attrs: dict[int, object] = {}
    while pos + 4 <= end:
        alen, atype = struct.unpack_from("=HH", data, pos)
        if alen < 4:
            raise ValueError(f"attribute of {alen} bytes at offset {pos}")  # would never advance
        atype &= NLA_TYPE_MASK
        value = data[pos + 4 : pos + alen]
        if atype == OVS_VPORT_ATTR_NAME:
            attrs[atype] = value.rstrip(b"\0").decode()
        elif atype == OVS_VPORT_ATTR_STATS:
            attrs[atype] = struct.unpack("=8Q", value)
        elif atype in (OVS_VPORT_ATTR_OPTIONS, OVS_VPORT_ATTR_UPCALL_STATS):
            attrs[atype] = _attrs(data, pos + 4, pos + alen)
        elif len(value) == 8:
            attrs[atype] = struct.unpack("=Q", value)[0]
        elif len(value) == 4:
            attrs[atype] = struct.unpack("=I", value)[0]
        pos += (alen + 3) & ~3
    return attrs


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    started = time.perf_counter()
    count = fn()
    return time.perf_counter() - started, count


def scrape_and_count(port: int, sample_prefix: str) -> Callable[[], int]:
    """A scrape function that checks the answer and returns how many samples start with the prefix."""

    def scrape() -> int:
        _seconds, response, body = get_metrics(port)
        if response.status != 200:
            raise RuntimeError(f"port {port}: HTTP {response.status}")
        if response.getheader("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        return sum(1 for line in body.decode().splitlines() if line.startswith(sample_prefix))

    return scrape


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.vm_compare", description=__doc__.splitlines()[0])
    p.add_argument("--vports", type=int, default=2000, help="internal vports to create")
    p.add_argument("--runs", type=int, default=15, help="timed runs of each measurement")
    args = p.parse_args(argv)
    results_dir = Path(os.environ.get("OVS_VM_RESULTS", "/tmp"))

    nl = ovsnl.OvsNetlink()
    started = time.perf_counter()
    dp_ifindex = create_vports(nl, args.vports)
    created = time.perf_counter() - started
    print(f"created {args.vports} internal vports in {created:.1f} s", flush=True)

    raw = RawDump(nl, dp_ifindex)
    bare = BareDecode(nl, dp_ifindex)
    exporter = Exporter(EXPORTER_PORT, results_dir)
    node = Process(
        "node-exporter",
        [
            tool("prometheus-node-exporter"),
            "--collector.disable-defaults",
            "--collector.netdev",
            f"--web.listen-address=127.0.0.1:{NODE_EXPORTER_PORT}",
        ],
        results_dir,
    )
    try:
        wait_http(f"http://127.0.0.1:{NODE_EXPORTER_PORT}/metrics", node.proc, "node-exporter", node.log)
        exporter_scrape = scrape_and_count(EXPORTER_PORT, "ovs_vport_info{")
        node_scrape = scrape_and_count(NODE_EXPORTER_PORT, "node_network_receive_bytes_total{")
        # Also the warm-up: first-use costs (the exporter's imports, page faults) are not compared.
        counts = {
            "vport_messages_in_raw_dump": raw(),
            "vports_in_bare_decode": bare(),
            "exporter_vports": exporter_scrape(),
            "node_exporter_interfaces": node_scrape(),
        }
        print(f"counts: {counts}", flush=True)
        # Interleaved rounds, so a slow phase of the emulator hits all three alike. A scrape
        # that does not carry every vport (or interface) is counted as failed, not timed.
        measured: dict[str, Callable[[], int]] = {
            "raw_dump": raw,
            "bare_decode": bare,
            "exporter": exporter_scrape,
            "node_exporter": node_scrape,
        }
        # Every vport plus the datapath's local port; node_exporter also lists lo and the
        # fallback devices that loading the tunnel modules creates.
        expected = {
            "raw_dump": args.vports + 1,
            "bare_decode": args.vports + 1,
            "exporter": args.vports + 1,
            "node_exporter": counts["node_exporter_interfaces"],
        }
        if counts["node_exporter_interfaces"] < args.vports + 1:
            raise RuntimeError(f"node_exporter lists {counts['node_exporter_interfaces']} interfaces")
        times: dict[str, list[float]] = {name: [] for name in measured}
        failures = dict.fromkeys(measured, 0)
        for _ in range(args.runs):
            for name, fn in measured.items():
                elapsed, count = timed(fn)
                if count == expected[name]:
                    times[name].append(elapsed)
                else:
                    failures[name] += 1
    finally:
        exporter.stop()
        node.stop()
        raw.close()
        bare.close()
        nl.del_datapath(DATAPATH)
        nl.close()

    if any(failures.values()):
        print(f"WARNING: incomplete answers, not timed: {failures}", flush=True)
    median = {name: statistics.median(values) for name, values in times.items()}
    report = {
        "kernel": os.uname().release,
        "vports": args.vports,
        "runs": args.runs,
        "counts": counts,
        "failed_runs": failures,
        "median_seconds_emulated": median,
        "ratios": {
            "exporter_to_bare_decode": median["exporter"] / median["bare_decode"],
            "bare_decode_to_raw_dump": median["bare_decode"] / median["raw_dump"],
            "exporter_to_raw_dump": median["exporter"] / median["raw_dump"],
            "exporter_to_node_exporter_netdev": median["exporter"] / median["node_exporter"],
            "node_exporter_netdev_to_raw_dump": median["node_exporter"] / median["raw_dump"],
        },
    }
    (results_dir / "vm_compare.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(
        f"\nkernel {report['kernel']}, {args.vports} vports,"
        f" median of {args.runs} interleaved rounds (emulated):"
    )
    for name, ratio in report["ratios"].items():
        print(f"  {name}: {ratio:.2f}")
    print("  median seconds (emulated): " + ", ".join(f"{name} {m:.4f}" for name, m in median.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
