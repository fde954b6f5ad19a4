"""Build the project's container image with podman from Debian and PyPI only, with no registry.

`Containerfile` starts `FROM ${PYTHON_IMAGE}` (python:3.11-slim by default). Where no container
registry can be reached, as in CI, the base is made here instead: `mmdebstrap` writes a minimal
Debian of the host's own release (python3 and python3-venv) from the machine's own apt sources,
so no mirror is named in the project, and `podman import` turns the tarball into an image. The
tarball is cached under `.cache/container/`; the podman store is private to one build (under a
temporary directory), so nothing is left in the machine's own store, and every build is a real one.

What this machine kind needs, each with its reason at the place it is set:

* runc rather than crun (crun refuses cgroups in hybrid v1/v2 mode);
* container ulimits within the host's hard limits (podman asks for more than a CI machine grants);
* the host's CA bundle mounted into the build, so pip reaches PyPI through a TLS-intercepting
  proxy the host trusts (a build-time mount: nothing of it is saved in the image);
* host networking for the build (no netavark firewall rules left behind).

    python -m tests.image setup            # apt-get podman mmdebstrap runc (as root), make the base
    python -m tests.image build            # setup, then build the image once and print its size
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests import host_packages

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "container"
CONTAINERFILE = REPO / "Containerfile"

#: Host packages the build needs; installed with apt-get (CI runs as root on a fresh machine).
HOST_PACKAGES = ("podman", "mmdebstrap", "runc")

#: The base: what both stages of the Containerfile run (python3 -m venv needs python3-venv).
BASE_PACKAGES = ("python3", "python3-venv")
#: Manual pages, documentation and translations: a quarter of the base, never read in a container.
BASE_EXCLUDES = ("/usr/share/man/*", "/usr/share/doc/*", "/usr/share/locale/*", "/usr/share/info/*")

CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def log(message: str) -> None:
    print(f"[image] {message}", file=sys.stderr, flush=True)


def version() -> str:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return str(project["version"])


# --- host packages ---------------------------------------------------------------------------


def missing_host_packages() -> list[str]:
    return host_packages.missing(HOST_PACKAGES)


def install_host_packages() -> None:
    host_packages.install(HOST_PACKAGES, "image")


# --- the base image's tarball ----------------------------------------------------------------


def apt_source_files(codename: str) -> list[Path]:
    """The machine's apt source files that carry its own release: mmdebstrap's mirrors.

    mmdebstrap takes a sources file (one-line or deb822) as a mirror argument, signing keys
    included, so the base comes from wherever this machine's apt gets Debian."""
    one_line, deb822 = host_packages.apt_source_files()
    suite = re.compile(rf"(^|\s){re.escape(codename)}(\s|$)", re.MULTILINE)
    found = [f for f in one_line + deb822 if suite.search(re.sub(r"#.*", "", f.read_text(encoding="utf-8")))]
    if not found:
        raise SystemExit(f"[image] no apt source file of this machine carries {codename!r}")
    return found


def base_tarball() -> Path:
    """The cached base tarball; its name changes with anything that would change its content."""
    codename = host_packages.os_codename("image")
    sources = apt_source_files(codename)
    key = hashlib.sha256(
        "\n".join(
            [codename, *BASE_PACKAGES, *BASE_EXCLUDES, *(s.read_text(encoding="utf-8") for s in sources)]
        ).encode()
    ).hexdigest()[:12]
    tarball = CACHE / f"debian-{codename}-python3-{key}.tar"
    if tarball.is_file():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    for stale in CACHE.glob(f"debian-{codename}-python3-*.tar*"):
        stale.unlink()
    part = tarball.with_suffix(".tar.part")
    command = [
        "mmdebstrap",
        "--quiet",
        "--variant=minbase",
        "--include=" + ",".join(BASE_PACKAGES),
        *(f"--dpkgopt=path-exclude={pattern}" for pattern in BASE_EXCLUDES),
        "--format=tar",
        codename,
        str(part),
        *map(str, sources),
    ]
    log("$ " + " ".join(command))
    subprocess.run(command, check=True)
    part.rename(tarball)
    log(f"base tarball {tarball.relative_to(REPO)}: {tarball.stat().st_size / 1e6:.0f} MB")
    return tarball


# --- a private podman ------------------------------------------------------------------------


@dataclass(frozen=True)
class Podman:
    """podman with its own configuration and store under `state`; nothing shared with the host's."""

    state: Path

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "CONTAINERS_CONF": str(self.state / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(self.state / "storage.conf"),
            "TMPDIR": str(self.state / "tmp"),
        }

    def configure(self) -> None:
        (self.state / "tmp").mkdir(parents=True, exist_ok=True)
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nproc_hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
        pid_max = int(Path("/proc/sys/kernel/pid_max").read_text(encoding="utf-8"))
        nproc = pid_max if nproc_hard == resource.RLIM_INFINITY else min(nproc_hard, pid_max)
        nofile = 1048576 if nofile == resource.RLIM_INFINITY else nofile
        (self.state / "containers.conf").write_text(
            "[containers]\n"
            # podman asks for 1048576 open files and processes by default; a container may not
            # raise a limit above the host's hard one (setrlimit: Operation not permitted).
            f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
            "[engine]\n"
            # crun 1.8 refuses "cgroups in hybrid mode"; runc handles a mixed v1/v2 host.
            'runtime = "runc"\n'
            # No systemd as PID 1 on a CI machine: no journald for events, no systemd cgroups.
            'events_logger = "file"\n'
            f'events_logfile_path = "{self.state / "events.log"}"\n'
            'cgroup_manager = "cgroupfs"\n',
            encoding="utf-8",
        )
        (self.state / "storage.conf").write_text(
            '[storage]\ndriver = "overlay"\n'
            f'graphroot = "{self.state / "storage"}"\nrunroot = "{self.state / "run"}"\n',
            encoding="utf-8",
        )

    def __call__(self, *args: str, capture: bool = False, timeout: float = 600) -> str:
        result = subprocess.run(
            ["podman", *args],
            env=self.env,
            capture_output=capture,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            detail = f"\n{result.stdout}\n{result.stderr}" if capture else ""
            raise RuntimeError(f"podman {' '.join(args)} exited with {result.returncode}{detail}")
        return result.stdout if capture else ""

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["podman", *args], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def cleanup(self) -> None:
        for args in (("rm", "--all", "--force", "--time", "5"), ("rmi", "--all", "--force")):
            subprocess.run(["podman", *args], env=self.env, capture_output=True, check=False, timeout=120)
        # containers/storage bind-mounts its overlay directory onto itself; let go of it first.
        mounts = Path("/proc/self/mountinfo").read_text(encoding="utf-8").splitlines()
        for mountpoint in sorted((line.split()[4] for line in mounts), reverse=True):
            if mountpoint.startswith(str(self.state) + "/"):
                subprocess.run(["umount", "--lazy", mountpoint], capture_output=True, check=False)
        shutil.rmtree(self.state, ignore_errors=True)


@dataclass(frozen=True)
class Image:
    podman: Podman
    ref: str
    base_ref: str

    def size_bytes(self, ref: str | None = None) -> int:
        return int(self.podman("image", "inspect", "--format", "{{.Size}}", ref or self.ref, capture=True))


def build(podman: Podman, tarball: Path) -> Image:
    """Import the base and build the Containerfile on it, with no registry and no pull."""
    base_ref = "localhost/ovs-vport-exporter-base:" + tarball.stem
    podman("import", "--quiet", str(tarball), base_ref, capture=True)
    ref = f"localhost/ovs-vport-exporter:{version()}"
    mounts = ["--volume", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"] if CA_BUNDLE.is_file() else []
    podman(
        "build",
        "--pull=never",
        "--network=host",
        "--layers=false",
        "--build-arg",
        f"PYTHON_IMAGE={base_ref}",
        *mounts,
        "--tag",
        ref,
        "--file",
        str(CONTAINERFILE),
        str(REPO),
    )
    return Image(podman, ref, base_ref)


@contextmanager
def built_image() -> Iterator[Image]:
    """Set up, build the image in a private store, yield it; remove the store afterwards."""
    install_host_packages()
    tarball = base_tarball()
    podman = Podman(Path(tempfile.mkdtemp(prefix="ovs-image-")))
    try:
        podman.configure()
        yield build(podman, tarball)
    finally:
        podman.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["setup", "build"])
    args = parser.parse_args()
    if args.command == "setup":
        try:
            install_host_packages()
        except SystemExit as missing:
            if os.environ.get("CI"):
                raise
            # On a developer's machine without root the image test skips, saying why; CI fails it.
            log(f"{missing}; the image test will skip")
            return 0
        print(base_tarball())
        return 0
    with built_image() as image:
        size, base = image.size_bytes(), image.size_bytes(image.base_ref)
        print(f"{image.ref}: {size / 1e6:.0f} MB ({base / 1e6:.0f} MB of them the base {image.base_ref})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
