"""Series a host costs in Prometheus: the exporter's own, and what the shipped rules add.

Counted by a real Prometheus (Debian's, unpacked by ``alerts/setup-promtool.sh``),
never by arithmetic: for each size it starts the exporter of this checkout on
loopback, fed by the benchmark's kernel dumps (``benchmarks.dataset``: several
datapaths, kernel-layout messages, decoded by the real decoder), starts
Prometheus with ``alerts/ovs-vport-exporter.rules.yml`` scraping it, waits for
scrapes and rule evaluations, and asks Prometheus how many series there are.

Counters move between scrapes as the scenario says, because the per-port
"ports in trouble" rules record only ports whose drops, errors or failed upcalls
are above 0:

- ``idle``: no counter moves (a host whose ports carry no traffic);
- ``dataset``: every counter the dataset has above 0 keeps growing, so ports drop,
  err and fail upcalls in the dataset's shares (about 40% / 30% of ports drop on
  receive / transmit, 10% / 5% have errors, 20% fail upcalls);
- ``all``: every counter of every port grows: every port in trouble, the worst case.

    .venv/bin/python -m benchmarks.series                    # 100, 1,000, 10,000 vports; all scenarios
    .venv/bin/python -m benchmarks.series --vports 100 --scenarios idle
    # the rules before issue 13, for comparison (benchmarks/results/series-before.*):
    git show 84eba58:alerts/ovs-vport-exporter.rules.yml > /tmp/rules-before.yml
    .venv/bin/python -m benchmarks.series --rules /tmp/rules-before.yml --name series-before

``--real-kernel`` counts the same in the VM instead, with that many real internal
vports created over netlink on one datapath of the running kernel (they carry no
traffic: the ``idle`` scenario):

    .venv/bin/python -m tests.vm run --kernel 6.12 -- \
        python -m benchmarks.series --real-kernel --vports 100,1000

Results: ``benchmarks/results/series.json`` and ``series.txt``; in the VM,
``series-vm.json`` and ``series-vm.txt`` in the run's results directory (the
harness prints it), copied to ``benchmarks/results/`` by hand. docs/fleet.md
quotes both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.serving import start_exporter
from tests import loopback

REPO_ROOT = Path(__file__).resolve().parents[1]
RULES = REPO_ROOT / "alerts" / "ovs-vport-exporter.rules.yml"
RESULTS = REPO_ROOT / "benchmarks" / "results"
JOB = "ovs-vport-exporter"
SIZES = (100, 1000, 10000)
SCENARIOS = ("idle", "dataset", "all")
INTERVAL = 5  # seconds between scrapes and between rule evaluations
# Counted once this many rule evaluations have seen at least two scrapes (rate() needs two).
EVALUATIONS = 3

# PromQL -> what it counts. Each is one number per run.
COUNTS = {
    "exporter_samples": f'scrape_samples_scraped{{job="{JOB}"}}',
    "exporter_ovs": f'count({{job="{JOB}", __name__=~"ovs_.+"}})',
    "exporter_vport": f'count({{job="{JOB}", __name__=~"ovs_vport_.+"}})',
    "exporter_runtime": f'count({{job="{JOB}", __name__=~"process_.+|python_.+"}})',
    "recorded_ports": 'count({__name__=~"ovs:vport_(receive|transmit)_(packets|bytes):rate5m"})',
    "recorded_ports_in_trouble": 'count({__name__=~"ovs:vport_.+"})'
    ' - count({__name__=~"ovs:vport_(receive|transmit)_(packets|bytes):rate5m"})',
    "recorded_datapath": 'count({__name__=~"ovs:datapath_.+"})',
    "recorded_bridge": 'count({__name__=~"ovs:bridge_.+"}) or vector(0)',
    "alerts": 'count({__name__=~"ALERTS|ALERTS_FOR_STATE"}) or vector(0)',
}


@dataclass
class Run:
    source: str  # "dataset" (pre-built dumps) or "kernel <release>" (the VM)
    scenario: str
    vports: int
    datapaths: int
    counts: dict[str, float]

    @property
    def per_vport(self) -> dict[str, float]:
        return {key: value / self.vports for key, value in self.counts.items()}


def prometheus_binary() -> Path:
    for candidate in (
        os.environ.get("PROMETHEUS"),
        str(Path(os.environ.get("OVS_VM_TOOLS", "/nonexistent")) / "usr" / "bin" / "prometheus"),
        str(REPO_ROOT / ".cache" / "debian-tools" / "usr" / "bin" / "prometheus"),
        shutil.which("prometheus"),
    ):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise SystemExit("prometheus not found: run sh alerts/setup-promtool.sh (or set $PROMETHEUS)")


@contextmanager
def prometheus(exporter_port: int, workdir: Path, rules: Path = RULES) -> Iterator[str]:
    """Prometheus scraping the exporter and evaluating the shipped rules; yields its API URL."""
    config = {
        "global": {
            "scrape_interval": f"{INTERVAL}s",
            "scrape_timeout": f"{INTERVAL}s",
            "evaluation_interval": f"{INTERVAL}s",
        },
        "rule_files": [str(rules)],
        "scrape_configs": [
            {"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}
        ],
    }
    # 120 s to start: in the VM (--kernel), under TCG, everything is 20-35 times slower.
    with loopback.prometheus(
        prometheus_binary(), workdir / "data", workdir, json.dumps(config), ("--log.level=warn",), 120
    ) as url:
        yield url


def query(url: str, expr: str) -> float:
    with urllib.request.urlopen(
        f"{url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}", timeout=60
    ) as r:
        body = json.load(r)
    if body["status"] != "success":
        raise RuntimeError(f"{expr}: {body}")
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def _rule_groups_evaluated_since(url: str, since: float) -> bool:
    with urllib.request.urlopen(f"{url}/api/v1/rules", timeout=60) as resp:
        groups = json.load(resp)["data"]["groups"]
    return bool(groups) and all(
        datetime.fromisoformat(group["lastEvaluation"].replace("Z", "+00:00")[:26] + "+00:00").timestamp()
        > since
        for group in groups
    )


def count(url: str) -> dict[str, float]:
    """Wait until the rules have been evaluated on enough scrapes, then count."""
    deadline = time.monotonic() + 30 * INTERVAL
    while time.monotonic() < deadline:
        scrapes = query(url, f'count_over_time(up{{job="{JOB}"}}[1h])')
        if scrapes >= 2 + EVALUATIONS and query(url, f'up{{job="{JOB}"}}') == 1:
            # Every group evaluated once more after the last scrape counted.
            since = time.time()
            while not _rule_groups_evaluated_since(url, since):
                time.sleep(0.5)
            counts = {name: query(url, expr) for name, expr in COUNTS.items()}
            with urllib.request.urlopen(f"{url}/api/v1/status/tsdb", timeout=60) as resp:
                counts["head_series"] = float(json.load(resp)["data"]["headStats"]["numSeries"])
            return counts
        time.sleep(1)
    raise RuntimeError(f"Prometheus did not scrape and evaluate in time (up={query(url, 'up')})")


# --- the exporter fed by the benchmark's dumps ---------------------------------------------------


def _moving_socket(vports: int, scenario: str) -> Any:
    """A fake kernel whose counters advance at each datapath dump (once per scrape)."""
    from benchmarks.dataset import fake_datapaths
    from tests import ovs_messages as om

    datapaths = []
    for datapath, ports in fake_datapaths(vports):
        datapath.vports = list(ports)
        datapaths.append(datapath)

    class MovingKernelSocket(om.FakeKernelSocket):
        def send(self, data: bytes) -> None:
            if int.from_bytes(data[4:6], sys.byteorder) == om.DATAPATH_FAMILY_ID and scenario != "idle":
                for datapath in self.datapaths:
                    for port in datapath.vports:
                        _advance(port, everything=scenario == "all")
            super().send(data)

    return MovingKernelSocket(datapaths)


# Per scrape: 5,000 packets of 900 bytes each way, 200 dropped and 200 with errors each way,
# 500 upcalls of which 50 fail. rate() divides by its whole 5-minute window, so within the
# first minute these already clear the alerts' traffic guards (10 packets/s, 1 upcall/s) and
# thresholds, as a host in trouble would.
_STEPS = (5000, 5000, 5000 * 900, 5000 * 900, 200, 200, 200, 200)


def _advance(port: Any, everything: bool) -> None:
    """One scrape's worth of traffic: packets, bytes and, where the scenario says, trouble."""
    if port.stats is not None:
        steps = _STEPS
        port.stats = tuple(
            value + step if everything or value > 0 else value
            for value, step in zip(port.stats, steps, strict=True)
        )
    if port.upcall is not None:
        success, fail = port.upcall
        port.upcall = (success + 450, fail + 50 if everything or fail > 0 else fail)


@contextmanager
def dataset_exporter(vports: int, scenario: str) -> Iterator[tuple[int, int]]:
    from exporter.kernel.dumps import KernelSource

    sock = _moving_socket(vports, scenario)
    server = start_exporter(KernelSource(lambda: sock))
    try:
        yield server.port, len(sock.datapaths)
    finally:
        server.shutdown()
        server.server_close()


# --- the real kernel (in the VM) -----------------------------------------------------------------


@contextmanager
def kernel_exporter(vports: int, workdir: Path) -> Iterator[tuple[int, int]]:
    """``vports`` real internal vports on one datapath, and the exporter as a process."""
    from tests.kernel.ovsnl import VPORT_INTERNAL, OvsNetlink
    from tests.kernel.procs import Exporter
    from tests.kernel.topology import Topology

    nl = OvsNetlink()
    topo = Topology(nl)
    try:
        ifindex = topo.add_datapath("ovs-n")
        started = time.monotonic()
        for index in range(1, vports):  # the datapath's own local port is one
            nl.new_vport(ifindex, f"n{index}", VPORT_INTERNAL)
        print(f"created {vports} vports in {time.monotonic() - started:.0f}s", file=sys.stderr)
        exporter = Exporter(loopback.free_port(), workdir)
        try:
            yield exporter.port, 1
        finally:
            exporter.stop()
    finally:
        topo.teardown()
        nl.close()


def measure(sizes: list[int], scenarios: list[str], real_kernel: bool, rules: Path = RULES) -> list[Run]:
    runs = []
    for vports in sizes:
        for scenario in ["idle"] if real_kernel else scenarios:
            with tempfile.TemporaryDirectory(prefix="ovs-series-") as tmp:
                workdir = Path(tmp)
                exporter = (
                    kernel_exporter(vports, workdir) if real_kernel else dataset_exporter(vports, scenario)
                )
                with exporter as (port, datapaths), prometheus(port, workdir, rules) as url:
                    counts = count(url)
            source = f"kernel {platform.release()}" if real_kernel else "dataset"
            run = Run(source, scenario, vports, datapaths, counts)
            runs.append(run)
            print(f"{vports:>6} vports {scenario:>8}: {json.dumps(counts)}", file=sys.stderr)
    return runs


def table(runs: list[Run]) -> str:
    head = (
        "| source | scenario | vports | datapaths | exporter series | of which per vport | "
        "recorded per port | per port in trouble | per datapath/bridge | ALERTS | head series (all) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for run in runs:
        c = {key: f"{value:,.0f}" for key, value in run.counts.items()}
        per_vport = run.counts["exporter_vport"] / run.vports
        aggregates = f"{run.counts['recorded_datapath'] + run.counts['recorded_bridge']:,.0f}"
        cells = [
            run.source,
            run.scenario,
            f"{run.vports:,}",
            str(run.datapaths),
            c["exporter_samples"],
            f"{c['exporter_vport']} ({per_vport:.1f}/vport)",
            c["recorded_ports"],
            c["recorded_ports_in_trouble"],
            aggregates,
            c["alerts"],
            c["head_series"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--vports", default=",".join(map(str, SIZES)), help="comma-separated sizes")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated: idle,dataset,all")
    parser.add_argument("--real-kernel", action="store_true", help="real vports on this kernel (in the VM)")
    parser.add_argument("--rules", type=Path, default=RULES, help="rules file (default the shipped one)")
    parser.add_argument("--name", help="results file name (default series, or series-vm)")
    parser.add_argument("--out", type=Path, help="results directory (default benchmarks/results)")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.vports.split(",")]
    scenarios = [name for name in args.scenarios.split(",") if name]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {sorted(unknown)}")
    runs = measure(sizes, scenarios, args.real_kernel, args.rules.resolve())
    # In the VM only its results share outlives the guest.
    out = args.out or (Path(os.environ["OVS_VM_RESULTS"]) if "OVS_VM_RESULTS" in os.environ else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    name = args.name or ("series-vm" if args.real_kernel else "series")
    document = {
        "command": " ".join(["python -m benchmarks.series", *(argv if argv is not None else sys.argv[1:])]),
        "interval_seconds": INTERVAL,
        "rules": _shown(args.rules.resolve()),
        "runs": [{**asdict(run), "per_vport": run.per_vport} for run in runs],
    }
    (out / f"{name}.json").write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    (out / f"{name}.txt").write_text(table(runs), encoding="utf-8")
    sys.stdout.write(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
