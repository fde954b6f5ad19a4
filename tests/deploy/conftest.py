"""Fixtures of the deployment tests: the helm binary, chart rendering, tool checks.

The tools come from tests/deploy/setup.sh (helm) and the test extras (Python
packages). A missing tool fails the tests when CI is set, as in `.ci/run`;
on a developer's machine it skips them with the command that installs it.
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import pytest
import yaml

from tests import loopback

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "ovs-vport-exporter"
SETUP = REPO / "tests" / "deploy" / "setup.sh"
RELEASE = "ovs"
NAMESPACE = "monitoring"


def missing_tool(what: str, install: str) -> NoReturn:
    """Fail in CI, skip elsewhere: a deployment test must not pass by not running."""
    message = f"{what} is missing: {install}"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def helm_version() -> str:
    """The helm version setup.sh installs (its `helm_version=` line)."""
    match = re.search(r"^helm_version=(\S+)$", SETUP.read_text(encoding="utf-8"), re.MULTILINE)
    assert match, f"{SETUP} has no helm_version= line"
    return match.group(1)


@pytest.fixture(scope="session")
def helm() -> Path:
    path = REPO / ".cache" / "helm" / helm_version() / "helm"
    if not os.access(path, os.X_OK):
        missing_tool(f"helm {helm_version()} ({path})", f"run {SETUP.relative_to(REPO)}")
    return path


@dataclass(frozen=True)
class Rendered:
    """The documents of one `helm template`, by kind and name."""

    documents: list[dict[str, Any]]
    namespace: str

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.documents if d["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.of_kind(kind)
        assert len(found) == 1, f"expected one {kind}, got {len(found)}"
        return found[0]

    def kinds(self) -> set[str]:
        return {d["kind"] for d in self.documents}


class HelmError(Exception):
    """helm exited non-zero; the message is its stderr without the INFO lines."""


def _stderr(text: str) -> str:
    # Helm logs one INFO line per symlink it follows under files/: expected, not news.
    return "\n".join(line for line in text.splitlines() if not line.startswith("level=INFO"))


def run_helm(helm: Path, *args: str, values: dict[str, Any] | None = None, tmp: Path | None = None) -> str:
    command = [str(helm), *args]
    if values is not None:
        assert tmp is not None
        values_file = tmp / f"values-{abs(hash(json.dumps(values, sort_keys=True)))}.yaml"
        values_file.write_text(yaml.safe_dump(values), encoding="utf-8")
        command += ["--values", str(values_file)]
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(REPO / ".cache" / "helm" / "home" / "cache"),
        "HELM_CONFIG_HOME": str(REPO / ".cache" / "helm" / "home" / "config"),
        "HELM_DATA_HOME": str(REPO / ".cache" / "helm" / "home" / "data"),
    }
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)
    if result.returncode != 0:
        raise HelmError(_stderr(result.stderr) or result.stdout)
    return result.stdout


@pytest.fixture(scope="session")
def helm_run(helm: Path) -> Callable[..., str]:
    """Run helm with the given arguments; return stdout or raise HelmError."""

    def _run(*args: str) -> str:
        return run_helm(helm, *args)

    return _run


@pytest.fixture(scope="session")
def render(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[dict[str, Any]], Rendered]:
    """values -> the rendered chart; each set of values is rendered once per session."""
    tmp = tmp_path_factory.mktemp("helm-values")
    cache: dict[str, Rendered] = {}

    def _render(values: dict[str, Any]) -> Rendered:
        key = json.dumps(values, sort_keys=True)
        if key not in cache:
            out = run_helm(
                helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, values=values, tmp=tmp
            )
            cache[key] = Rendered([d for d in yaml.safe_load_all(out) if d], NAMESPACE)
        return cache[key]

    return _render


@pytest.fixture(scope="session")
def render_error(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[dict[str, Any]], str]:
    """values -> helm's error message; fails the test when helm accepts them."""
    tmp = tmp_path_factory.mktemp("helm-bad-values")

    def _render_error(values: dict[str, Any]) -> str:
        try:
            run_helm(helm, "template", RELEASE, str(CHART), values=values, tmp=tmp)
        except HelmError as err:
            return str(err)
        pytest.fail(f"helm accepted values it should refuse: {values}")

    return _render_error


def _module(name: str, requirement: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        missing_tool(f"Python module {name}", f".venv/bin/pip install '{requirement}'")


@pytest.fixture(scope="session")
def kubernetes_validate() -> ModuleType:
    return _module("kubernetes_validate", "kubernetes-validate>=1.35,<2")


@pytest.fixture(scope="session")
def prometheus_operator() -> ModuleType:
    """pydantic models of the monitoring.coreos.com/v1 resources, made from the operator's CRDs."""
    return _module("cloudcoil.models.prometheus_operator.v1", "cloudcoil-models-prometheus-operator>=0.79,<1")


@pytest.fixture(scope="session")
def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        missing_tool("systemd-analyze", "apt-get install systemd")
    return path


@dataclass(frozen=True)
class Scrape:
    """What an exporter started by `run_exporter` served, and how it ran."""

    landing_status: int
    anonymous_status: int
    metrics_status: int
    metrics: str
    capabilities: dict[str, int]
    exit_code: int


# Drops every capability (also for uid 0), forbids gaining privileges, and
# turns on MemoryDenyWriteExecute (PR_SET_MDWE, Linux 6.3): what the systemd
# unit and the pod's security context impose, as far as a test can without them.
_SANDBOX = (
    "import ctypes, os, sys\n"
    "PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1\n"
    "if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:\n"
    "    sys.exit(f'PR_SET_MDWE failed: errno {ctypes.get_errno()}')\n"
    "os.execvp('setpriv', ['setpriv', '--inh-caps=-all', '--ambient-caps=-all', '--bounding-set=-all',\n"
    "                      '--no-new-privs', '--', *sys.argv[1:]])\n"
)


def _get(url: str, context: ssl.SSLContext | None, authorization: str | None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": authorization} if authorization else {})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, response.read().decode("utf-8")
    except urllib.error.HTTPError as err:
        return err.code, ""


@pytest.fixture(scope="session")
def run_exporter() -> Callable[..., Scrape]:
    """Start the exporter of this checkout with the given flags on a free loopback port
    (the flags' listen address is replaced), without capabilities; read `/` with and
    without credentials and the metrics, then stop it with SIGTERM.

    run_exporter(flags, telemetry_path, *, ca_file=None, basic_auth=None): with ca_file the
    exporter is reached over HTTPS, verified against that certificate."""
    if shutil.which("setpriv") is None:
        missing_tool("setpriv", "apt-get install util-linux")

    def _run(
        flags: list[str],
        telemetry_path: str,
        *,
        ca_file: Path | None = None,
        basic_auth: tuple[str, str] | None = None,
    ) -> Scrape:
        port = loopback.free_port()
        flags = [f for f in flags if not f.startswith("--web.listen-address")]
        flags.append(f"--web.listen-address=127.0.0.1:{port}")
        scheme = "https" if ca_file else "http"
        context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
        authorization = (
            "Basic " + base64.b64encode(f"{basic_auth[0]}:{basic_auth[1]}".encode()).decode()
            if basic_auth
            else None
        )
        base = f"{scheme}://127.0.0.1:{port}"
        command = [sys.executable, "-c", _SANDBOX, sys.executable, "-m", "exporter", *flags]
        process = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            deadline = time.monotonic() + 30
            landing = 0
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    output = process.stdout.read() if process.stdout else ""
                    pytest.fail(f"exporter exited with {process.returncode}: {output}", pytrace=False)
                try:
                    landing, _ = _get(f"{base}/", context, authorization)
                    break
                except (ConnectionError, urllib.error.URLError):
                    time.sleep(0.1)
            anonymous, _ = _get(f"{base}/", context, None)
            metrics_status, metrics = _get(f"{base}{telemetry_path}", context, authorization)
            status = Path(f"/proc/{process.pid}/status").read_text(encoding="utf-8")
            capabilities = {
                name: int(value, 16)
                for name, value in re.findall(r"^(Cap\w+):\s+([0-9a-f]+)$", status, re.MULTILINE)
            }
        finally:
            process.terminate()
            try:
                exit_code = process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                exit_code = process.wait()
            if process.stdout:
                process.stdout.close()
        return Scrape(landing, anonymous, metrics_status, metrics, capabilities, exit_code)

    return _run


class Serving:
    """An exporter process being served on a loopback port (see `serving`)."""

    def __init__(self, process: subprocess.Popen[str], base: str) -> None:
        self.process = process
        self.base = base
        self.exit_code: int | None = None
        self.output = ""

    def get(self, path: str) -> tuple[int, str]:
        return _get(self.base + path, None, None)


@contextmanager
def _serving(
    command: list[str], port: int, *, cwd: Path, env: dict[str, str] | None = None
) -> Iterator[Serving]:
    """Start `command`, which serves HTTP on 127.0.0.1:`port`; yield once `/` answers; then SIGTERM
    it and record its exit code and output (stdout and stderr)."""
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    handle = Serving(process, f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                output = process.stdout.read() if process.stdout else ""
                pytest.fail(f"{command[0]} exited with {process.returncode}: {output}", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"{' '.join(command)} did not answer on port {port} within 60 s", pytrace=False)
            try:
                handle.get("/")
                break
            except (ConnectionError, urllib.error.URLError):
                time.sleep(0.1)
        yield handle
    finally:
        process.terminate()
        try:
            handle.exit_code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            handle.exit_code = process.wait()
        if process.stdout:
            handle.output = process.stdout.read()
            process.stdout.close()


@pytest.fixture(scope="session")
def serving() -> Callable[..., AbstractContextManager[Serving]]:
    """serving(command, port, *, cwd, env=None): a context manager that starts an installed
    exporter (a wheel's entry point, an image under podman) and stops it with SIGTERM."""
    return _serving


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    return loopback.free_port
