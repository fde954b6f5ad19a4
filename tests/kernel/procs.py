"""Processes the in-guest tests start: the exporter, Prometheus and node_exporter."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .netns import enter_netns
from .promtext import Scrape, fetch, identities

#: Python is 20-35x slower under TCG: a cold start of the exporter takes seconds.
START_TIMEOUT = 120.0


def wait_http(url: str, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"{what} did not answer {url} within {START_TIMEOUT:.0f}s:\n{log.read_text()[-3000:]}")


def make_traversable(path: Path) -> None:
    """Let other users reach ``path`` (e.g. an interpreter under /root).

    Only ever called in the guest, whose root is a throwaway overlay over the host's.
    """
    for parent in [path, *path.parents]:
        if parent.is_dir():
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod(mode | 0o001)


class Process:
    """A child process with its output in a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, cmd: list[str], log_dir: Path, **popen: Any) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, **popen)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Exporter(Process):
    def __init__(
        self,
        port: int,
        log_dir: Path,
        name: str = "exporter",
        user: int | None = None,
        host: str = "127.0.0.1",
        args: tuple[str, ...] = (),
        netns: str | None = None,
        groups: tuple[int, ...] = (),
    ) -> None:
        """``netns`` runs it inside that namespace (as if it were the host), ``groups`` are the
        supplementary groups of ``user``; reach it on ``host`` (an address of that namespace)."""
        self.port = port
        # Also right when listening on every address (host "").
        self.reach = host or "127.0.0.1"
        popen: dict[str, Any] = {}
        if user is not None:
            make_traversable(Path(sys.executable).resolve())
            make_traversable(Path(sys.prefix))
            make_traversable(Path.cwd())
            # Leaving uid 0 clears every capability: the exporter runs with none.
            popen = {"user": user, "group": user, "extra_groups": list(groups)}
        if netns is not None:
            # setns() needs CAP_SYS_ADMIN, and Popen drops the user before preexec_fn runs:
            # enter the namespace first, then drop to the user, in the child itself.
            popen = {"preexec_fn": _enter_and_drop(netns, user, groups)}
        cmd = [sys.executable, "-m", "exporter", "--web.listen-address", f"{host}:{port}", *args]
        super().__init__(name, cmd, log_dir, **popen)
        wait_http(f"http://{self.reach}:{port}/", self.proc, name, self.log)

    @property
    def url(self) -> str:
        return f"http://{self.reach}:{self.port}/metrics"

    def scrape(self) -> Scrape:
        return fetch(self.url)


def scrape_until(
    exporter: Exporter, done: Callable[[Scrape], bool], what: str, timeout: float = 60
) -> Scrape:
    """Scrape until ``done``; the reader follows OVSDB in the background, a scrape never waits."""
    deadline = time.monotonic() + timeout
    scrape = exporter.scrape()
    while not done(scrape):
        if time.monotonic() > deadline:
            got = sorted(sorted(dict(lbls).items()) for lbls in identities(scrape))
            raise AssertionError(f"no scrape within {timeout:.0f}s {what}; last identities: {got}")
        time.sleep(0.5)
        scrape = exporter.scrape()
    return scrape


def _enter_and_drop(netns: str, user: int | None, groups: tuple[int, ...]) -> Callable[[], None]:
    def preexec() -> None:
        enter_netns(netns)
        if user is not None:
            os.setgroups(list(groups))
            os.setgid(user)
            os.setuid(user)

    return preexec


def tool(name: str) -> str:
    return str(Path(os.environ.get("OVS_VM_TOOLS", "/")) / "usr" / "bin" / name)


def rules_and_scrapes(targets: dict[str, str]) -> dict[str, Any]:
    """A Prometheus config that scrapes each job's one target and evaluates the project's rules,
    every second (``targets``: job name to ``host:port``)."""
    from tests import promql_inventory

    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(promql_inventory.RULES_PATH)],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [target]}]} for job, target in targets.items()
        ],
    }


class Prometheus(Process):
    """Debian's Prometheus, unpacked by tests/vm/setup.sh, with its data in /tmp (a guest tmpfs)."""

    def __init__(
        self, port: int, config: dict[str, Any], log_dir: Path, workdir: Path = Path("/tmp/prometheus")
    ) -> None:
        """``workdir`` holds its config and TSDB: one per instance, so no run sees another's data."""
        self.port = port
        self.started = time.time()
        self.config = config
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_file = workdir / "prometheus.yml"
        self.config_file.write_text(json.dumps(config, indent=2))  # JSON is YAML
        cmd = [
            tool("prometheus"),
            f"--config.file={self.config_file}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ]
        super().__init__(workdir.name, cmd, log_dir)
        wait_http(f"http://127.0.0.1:{port}/-/ready", self.proc, "prometheus", self.log)

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=60) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as e:
            raise AssertionError(f"Prometheus {path} {params}: HTTP {e.code}: {e.read().decode()}") from e
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus {path} {params}: {body}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        result: list[dict[str, Any]] = self.api("query", **params)["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api(
            "query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step:g}"
        )["result"]
        return result

    def targets_up(self) -> dict[str, str]:
        data = self.api("targets")
        return {t["labels"]["job"]: t["health"] for t in data["activeTargets"]}

    @contextmanager
    def frozen(self) -> Iterator[float]:
        """Neither scrape nor evaluate rules while a batch of queries runs; yields the instant to
        query at, whose data is all stored.

        Under TCG, scraping and evaluating every rule each second keep the guest's CPUs busy,
        and each query waited its turn behind them. Stopped by a reload, so that the TSDB (and
        the scrapes so far) stay; the stale markers the reload writes come after the instant.
        """
        at = time.time()
        self._reload({**self.config, "rule_files": [], "scrape_configs": []})
        try:
            yield self._healthy_until(at)
        finally:
            self._reload(self.config)

    def _healthy_until(self, at: float, settled: float = 2.5) -> float:
        """The latest instant up to ``at`` at which every target's scrapes had succeeded for
        ``settled`` seconds (so the rules evaluated since saw them too).

        A scrape that fails (over its 1 s timeout, on a loaded machine) marks every series of its
        target stale from that moment: gauges queried just after it return nothing, although
        the data before it is all there. Seen once in CI as every instant gauge empty.
        """
        step = 0.25
        (series,) = self.query_range("min(up)", at - 120, at, step) or [{"values": []}]
        healthy_since: float | None = None
        best = None
        for stamp, value in series["values"]:
            if value != "1":
                healthy_since = None
                continue
            if healthy_since is None:
                healthy_since = float(stamp)
            if float(stamp) - healthy_since >= settled:
                best = float(stamp)
        if best is None:
            raise AssertionError(f"no {settled} s before {at:.3f} in which every scrape succeeded")
        return best

    def _reload(self, config: dict[str, Any]) -> None:
        """Load ``config`` (SIGHUP), and wait until its targets and rule groups are (or are no
        longer) active."""
        self.config_file.write_text(json.dumps(config, indent=2))
        self.proc.send_signal(signal.SIGHUP)
        want = (bool(config.get("scrape_configs")), bool(config.get("rule_files")))
        deadline = time.monotonic() + 60
        while (bool(self.api("targets")["activeTargets"]), bool(self.api("rules")["groups"])) != want:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"Prometheus did not load {config} in 60 s:\n{self.log.read_text()[-3000:]}"
                )
            time.sleep(0.2)


class NodeExporter(Process):
    def __init__(self, port: int, log_dir: Path) -> None:
        self.port = port
        cmd = [tool("prometheus-node-exporter"), f"--web.listen-address=127.0.0.1:{port}"]
        super().__init__("node-exporter", cmd, log_dir)
        wait_http(f"http://127.0.0.1:{port}/metrics", self.proc, "node-exporter", self.log)
