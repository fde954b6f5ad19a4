"""The host's apt, as the test harnesses use it: the Debian packages they install with apt-get
(as root), the VM harness's QEMU and busybox (tests/vm/provision.py) and the image build's
podman and mmdebstrap (tests/image.py); and what both read of the machine's own apt setup, its
Debian release and its source files, to fetch from wherever this machine's apt gets Debian."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

APT_ETC = Path("/etc/apt")


def os_codename(tag: str) -> str:
    """This machine's Debian release (e.g. bookworm), from /etc/os-release; exits, logging as
    ``[tag]``, when it does not say."""
    for line in Path("/etc/os-release").read_text(encoding="utf-8").splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip().strip('"')
    raise SystemExit(f"[{tag}] cannot tell the Debian codename from /etc/os-release")


def apt_source_files() -> tuple[list[Path], list[Path]]:
    """This machine's apt source files that exist: the one-line ones (``sources.list``,
    ``sources.list.d/*.list``) and the deb822 ones (``sources.list.d/*.sources``)."""
    one_line = [APT_ETC / "sources.list", *sorted(APT_ETC.glob("sources.list.d/*.list"))]
    deb822 = sorted(APT_ETC.glob("sources.list.d/*.sources"))
    return [f for f in one_line if f.is_file()], [f for f in deb822 if f.is_file()]


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
