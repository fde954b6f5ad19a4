"""What a newcomer's first two commands cost: `make run` and `make setup` on a fresh clone.

Clones this checkout's committed HEAD into a temporary directory (uncommitted
changes are not measured), then

1. times `make run` from the clone's first command until `/metrics` answers 200
   on a loopback port, stops it, and measures `.venv` (`du -sb`);
2. times `make setup` in the same clone (the test extras `make test` and every
   test target add) and measures `.venv` again;
3. runs `make run` once more, to show the light command still serves after the
   test extras were added.

Nothing here uses the checkout's own `.venv`: only the system Python (`python3`)
and pip's cache, whose state the figures depend on (a warm cache is the common
case for a developer; a cold one adds the download time).

    python3 -m benchmarks.install                     # README "Quick start" figures
    python3 -m benchmarks.install --make LEND_PIP=    # as on a Python without pip of its own
    python3 -m benchmarks.install --keep              # leave the clone and print its path
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.loopback import free_port

REPO = Path(__file__).resolve().parents[1]


def _venv_bytes(clone: Path) -> int:
    out = subprocess.run(["du", "-sb", str(clone / ".venv")], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def _serve(clone: Path, make_args: list[str], deadline_s: float) -> float:
    """`make run` on a loopback port: seconds until /metrics answers 200; then SIGTERM."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    start = time.monotonic()
    # A process group of its own, so that stopping it stops make's child (the exporter) too.
    process = subprocess.Popen(
        ["make", "--no-print-directory", "run", f"ARGS=--web.listen-address=127.0.0.1:{port}", *make_args],
        cwd=clone,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        while True:
            if process.poll() is not None:
                errors = process.stderr.read() if process.stderr else ""
                sys.exit(f"make run exited with {process.returncode}:\n{errors}")
            if time.monotonic() - start > deadline_s:
                sys.exit(f"make run did not serve {url} within {deadline_s:.0f} s")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200 and b"ovs_up" in response.read():
                        return time.monotonic() - start
            except (ConnectionError, urllib.error.URLError):
                time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def _load() -> str:
    """The 1-minute load average: these are wall times, and other work on the machine shows in them."""
    return f"{os.getloadavg()[0]:.1f}"


def _timed(command: list[str], clone: Path) -> float:
    start = time.monotonic()
    subprocess.run(command, cwd=clone, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the clone in place")
    parser.add_argument("--make", nargs="*", default=[], metavar="VAR=VALUE", help="extra make arguments")
    args = parser.parse_args()

    parent = Path(tempfile.mkdtemp(prefix="ovs-install-"))
    clone = parent / "ovs-vport-exporter"
    try:
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True, check=True
        ).stdout.strip()
        python = subprocess.run(
            ["python3", "-c", "import sys; print(sys.version.split()[0])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        print(f"fresh clone of {head}, python3 {python}, {os.cpu_count()} CPUs, load {_load()}")

        serve_s = _serve(clone, args.make, deadline_s=300)
        run_mb = _venv_bytes(clone) / 1e6
        print(f"make run:   serving /metrics after {serve_s:5.1f} s   .venv {run_mb:6.1f} MB")

        setup_s = _timed(["make", "--no-print-directory", "setup", *args.make], clone)
        test_mb = _venv_bytes(clone) / 1e6
        print(f"make setup: test extras added in  {setup_s:5.1f} s   .venv {test_mb:6.1f} MB")

        again_s = _serve(clone, args.make, deadline_s=60)
        print(f"make run again, after the test extras: serving after {again_s:.1f} s")
        print(f"load average at the end: {_load()}")
        if args.keep:
            print(f"clone left in {clone}")
    finally:
        if not args.keep:
            shutil.rmtree(parent)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
