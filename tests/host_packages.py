"""The Debian packages that the test harnesses install on the host with apt-get (as root): the
VM harness's QEMU and busybox (tests/vm/provision.py), the image build's podman and mmdebstrap
(tests/image.py)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence


def missing(packages: Sequence[str]) -> list[str]:
    """Those of ``packages`` that dpkg does not have installed."""
    absent = []
    for package in packages:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False
        )
        if "install ok installed" not in result.stdout:
            absent.append(package)
    return absent


def install(packages: Sequence[str], tag: str) -> None:
    """apt-get install those of ``packages`` that are missing, logging as ``[tag]``.

    The package lists are refreshed only when the install fails: a fresh machine may have none,
    and `apt-get update` costs every other run seconds for nothing.
    """
    absent = missing(packages)
    if not absent:
        print(f"[{tag}] host packages present: {', '.join(packages)}", flush=True)
        return
    if os.geteuid() != 0:
        raise SystemExit(f"[{tag}] missing host packages {absent}: run this as root or apt-get install them")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    apt = ["apt-get", "-q", "-o", "DPkg::Lock::Timeout=300"]
    install_missing = [*apt, "install", "-y", "--no-install-recommends", *absent]
    print(f"[{tag}] apt-get install {' '.join(absent)}", flush=True)
    if subprocess.run(install_missing, env=env, check=False).returncode:
        subprocess.run([*apt, "update"], env=env, check=True)
        subprocess.run(install_missing, env=env, check=True)
