"""Boot each kernel, run the in-guest suite (or the fixture capture), report per-stage wall times."""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from xml.etree import ElementTree

from .paths import CACHE_DIR, KERNEL_SERIES, REPO_ROOT
from .provision import provision
from .qemu import VMError, run_in_vm

#: Extra pytest arguments per kernel. Both run everything: on 6.1 (no upcall statistics) the
#: tests check that upcall metrics and the panels built on them are absent instead.
PYTEST_SELECTION: dict[str, list[str]] = {"6.12": [], "6.1": []}

#: Copied from the run's share to .cache/vm/results/<kernel>/ (the docs render promql-results.json).
ARTIFACTS = ("junit.xml", "promql-results.json", "output", "console.log")

#: Hard limit of one guest run. The suite takes 5 to 10 minutes under TCG on an idle machine;
#: a busy one has made 6.12 take over 15 (the limit is a hang detector, not a budget).
SUITE_TIMEOUT = 1500.0


@dataclass
class StageResult:
    kernel: str
    ok: bool
    boot_seconds: float
    command_seconds: float
    total_seconds: float
    detail: str


def pytest_command(kernel: str, extra: list[str]) -> list[str]:
    args = [
        "python", "-m", "pytest", "tests/kernel",
        "-p", "no:cacheprovider",
        "-o", "addopts=",
        "-ra", "-v", "--durations=8",
        *PYTEST_SELECTION.get(kernel, []),
        *extra,
    ]  # fmt: skip
    # The junit report goes to the run's results share (its path is only known in the guest).
    return ["bash", "-c", 'exec "$@" --junitxml="$OVS_VM_RESULTS/junit.xml"', "pytest", *args]


def run_kernel_suite(kernel: str, extra: list[str] | None = None, stream: bool = True) -> StageResult:
    """Boot ``kernel`` and run tests/kernel in it; a boot failure is a failed stage, not a skip."""
    started = time.monotonic()
    latest = CACHE_DIR / "results" / kernel
    if latest.exists():
        shutil.rmtree(latest)  # no stale report may count for this run
    try:
        res = run_in_vm(
            pytest_command(kernel, extra or []),
            kernel,
            timeout=SUITE_TIMEOUT,
            stream=stream,
            label=f"suite-{kernel}",
            # The suite needs no pytest plugin; loading every installed one (hypothesis, ...)
            # costs ~25 s under TCG.
            env={"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
        )
    except (VMError, FileNotFoundError) as e:
        return StageResult(kernel, False, 0.0, 0.0, time.monotonic() - started, str(e))
    latest.mkdir(parents=True)
    for name in ARTIFACTS:
        if (res.results_dir / name).is_file():
            shutil.copy2(res.results_dir / name, latest / name)
    detail = f"results in {latest}"
    return StageResult(
        kernel, res.returncode == 0, res.boot_seconds, res.command_seconds, res.total_seconds, detail
    )


def main_suite(kernels: list[str], extra: list[str], skip_setup: bool = False) -> int:
    t0 = time.monotonic()
    if not skip_setup:
        provision(kernels)
    setup_s = time.monotonic() - t0
    results = [run_kernel_suite(k, extra) for k in kernels]
    print("\n=== VM suite wall times ===")
    print(f"setup            {setup_s:7.1f}s")
    for r in results:
        status = "PASS" if r.ok else "FAIL"
        print(
            f"{r.kernel:<6} {status}     boot {r.boot_seconds:6.1f}s  tests {r.command_seconds:6.1f}s  "
            f"total {r.total_seconds:6.1f}s  {r.detail.splitlines()[0] if r.detail else ''}"
        )
        if not r.ok and "\n" in r.detail:
            print(r.detail, file=sys.stderr)
    print(f"all              {time.monotonic() - t0:7.1f}s")
    passed, failed = junit_totals(kernels)
    # Every kernel that did not boot counts as one failure: the stage must never look green.
    failed += sum(
        1 for r in results if not r.ok and not (CACHE_DIR / "results" / r.kernel / "junit.xml").is_file()
    )
    print(f"{passed} passed, {failed} failed")
    return 0 if results and all(r.ok for r in results) else 1


def junit_totals(kernels: list[str]) -> tuple[int, int]:
    """Passed and failed test counts over the latest junit reports of ``kernels``."""
    passed = failed = 0
    for kernel in kernels:
        report = CACHE_DIR / "results" / kernel / "junit.xml"
        if not report.is_file():
            continue
        for suite in ElementTree.parse(report).getroot().iter("testsuite"):
            bad = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            failed += bad
            passed += int(suite.get("tests", 0)) - bad - int(suite.get("skipped", 0))
    return passed, failed


def main_capture(kernels: list[str], module: str = "tests.kernel.capture", subdir: str = "") -> int:
    """Run a capture ``module`` in each kernel; its files replace tests/fixtures/kernel/<K>/<subdir>."""
    provision(kernels)
    rc = 0
    for kernel in kernels:
        cmd = ["bash", "-c", f'exec python -m {module} "$OVS_VM_RESULTS/fixtures"']
        try:
            res = run_in_vm(cmd, kernel, timeout=300, label=f"capture-{kernel}")
        except VMError as e:
            print(e, file=sys.stderr)
            rc = 1
            continue
        if res.returncode:
            rc = 1
            continue
        target = REPO_ROOT / "tests" / "fixtures" / "kernel" / kernel / subdir
        # What this capture wrote before goes; another capture's subdirectory stays.
        for old in target.iterdir() if target.exists() else ():
            if old.is_file():
                old.unlink()
        shutil.copytree(res.results_dir / "fixtures", target, dirs_exist_ok=True)
        print(f"fixtures of {res.kernel.release} written to {target.relative_to(REPO_ROOT)}")
    return rc


def default_kernels() -> list[str]:
    return list(KERNEL_SERIES)
