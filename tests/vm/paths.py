"""Where the VM harness keeps things: the checkout it runs from and its cache."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: The checkout this harness belongs to (CI runs a fresh clone elsewhere, not /work/main).
REPO_ROOT = Path(__file__).resolve().parents[2]

#: Downloads, unpacked kernels and tools, initramfs images and per-run result shares.
CACHE_DIR = Path(os.environ.get("OVS_VM_CACHE", REPO_ROOT / ".cache" / "vm")).resolve()

KERNEL_SERIES = ("6.12", "6.1")


def kernel_dir(series: str) -> Path:
    return CACHE_DIR / "kernels" / series


def tools_root() -> Path:
    """Root of the unpacked ovs-dpctl, prometheus and node exporter packages."""
    return CACHE_DIR / "tools" / "root"


@dataclass(frozen=True)
class Kernel:
    """One unpacked Debian kernel package."""

    series: str
    release: str
    root: Path

    @classmethod
    def load(cls, series: str) -> Kernel:
        kdir = kernel_dir(series)
        release_file = kdir / "release"
        if not release_file.is_file():
            raise FileNotFoundError(f"kernel {series} is not in {kdir}; run tests/vm/setup.sh first")
        return cls(series, release_file.read_text().strip(), kdir / "root")

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def modules_dir(self) -> Path:
        for base in ("lib", "usr/lib"):
            d = self.root / base / "modules" / self.release
            if d.is_dir():
                return d
        return self.root / "lib" / "modules" / self.release

    @property
    def build_dir(self) -> Path:
        """Generated files: initramfs, uncompressed modules and their load order."""
        return kernel_dir(self.series) / "build"
