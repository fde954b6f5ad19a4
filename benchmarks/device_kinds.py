"""What reading the vports' device kinds costs against this host's real kernel: the first time, and after.

``device_kind`` comes from rtnetlink (``exporter.kernel.device_kinds``): one ``RTM_GETLINK`` per
link the exporter has not seen, a batch per datagram, and nothing for a datapath whose links
are the same as in the last scrape. This measures both against the real kernel of the machine
it runs on: it creates a network namespace holding ``--links`` devices, veth pairs (the host needs
no openvswitch module: the vports are records naming those devices, as a vport dump would), then
times ``DeviceKinds.kinds`` for all of them cold (a fresh ``DeviceKinds``: every link asked
for) and warm (the next scrape's records, new objects naming the same links: nothing asked),
and a read with one new link among them (a port added). Needs root (``ip netns add``).

    sudo .venv/bin/python -m benchmarks.device_kinds --links 10000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from benchmarks.scrape import machine
from exporter.kernel.device_kinds import DeviceKinds
from exporter.kernel.dumps import open_link_socket_in
from exporter.kernel.families.vport import Vport


def _links(netns: str) -> list[tuple[int, str]]:
    out = subprocess.run(["ip", "-n", netns, "-j", "link", "show"], capture_output=True, check=True).stdout
    return [(link["ifindex"], link["ifname"]) for link in json.loads(out)]


def _vports(links: list[tuple[int, str]]) -> list[Vport]:
    """Records as a vport dump of these links would give them (new objects each call)."""
    return [Vport(5, i, 1, name, ifindex, None, None, None, None) for i, (ifindex, name) in enumerate(links)]


def measure(links: int, runs: int) -> dict[str, float | int]:
    netns = f"ovsx-bench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        lines = [f"link add v{i} type veth peer name p{i}" for i in range(links // 2)]
        subprocess.run(["ip", "-n", netns, "-batch", "-"], input="\n".join(lines), text=True, check=True)
        found = _links(netns)
        cold, warm = [], []
        for _ in range(runs):
            # Opened before the clock starts: entering the namespace imports pyroute2 (setns), which a
            # socket of the exporter's own namespace never does.
            sock = open_link_socket_in(netns, 5.0)
            kinds = DeviceKinds(lambda sock=sock: sock)
            try:
                kinds.new_scrape()
                started = time.perf_counter()
                got = kinds.kinds("dp", _vports(found))
                cold.append(time.perf_counter() - started)
                assert len(got) == len(found) and kinds.links_read == len(found)
                for _ in range(5):
                    records = _vports(found)
                    kinds.new_scrape()
                    started = time.perf_counter()
                    kinds.kinds("dp", records)
                    warm.append(time.perf_counter() - started)
                assert kinds.links_read == len(found), "a warm scrape asked the kernel"
            finally:
                kinds.close()
        subprocess.run(["ip", "-n", netns, "tuntap", "add", "new0", "mode", "tap"], check=True)
        sock = open_link_socket_in(netns, 5.0)
        kinds = DeviceKinds(lambda: sock)
        try:
            kinds.new_scrape()
            kinds.kinds("dp", _vports(found))
            added = _links(netns)
            kinds.new_scrape()
            records = _vports(added)
            started = time.perf_counter()
            kinds.kinds("dp", records)
            one_new = time.perf_counter() - started
            assert kinds.links_read == len(added)
        finally:
            kinds.close()
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=True)
    return {
        "links": len(found),
        "runs": runs,
        "cold_ms_median": statistics.median(cold) * 1e3,
        "cold_us_per_link": statistics.median(cold) / len(found) * 1e6,
        "warm_ms_median": statistics.median(warm) * 1e3,
        "one_new_link_ms": one_new * 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--links", type=int, default=10000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--json", type=Path, help="also write every figure to this file")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root, to create a network namespace with veth pairs", file=sys.stderr)
        return 2
    report = {"machine": machine(), "device_kinds": measure(args.links, args.runs)}
    result = report["device_kinds"]
    print(
        f"{result['links']} links, {result['runs']} runs: cold {result['cold_ms_median']:.1f} ms "
        f"({result['cold_us_per_link']:.1f} us per link), warm {result['warm_ms_median']:.2f} ms, "
        f"one new link among them {result['one_new_link_ms']:.2f} ms"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
