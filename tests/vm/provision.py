"""Install and fetch everything the VM harness needs, from Debian's registry only.

Host packages (QEMU, busybox, the OVS common files) are installed with apt-get. Everything else is
downloaded with ``apt-get download`` and unpacked with ``dpkg -x`` under ``.cache/vm``, so that no
package scripts run and no daemon starts:

* the two kernels: bookworm's ``linux-image-amd64`` (6.1) and bookworm-backports' (6.12);
* ``ovs-dpctl``, ``ovs-vswitchd`` and ``ovs-vsctl`` out of ``openvswitch-switch``;
* OVN (``ovn-common``, ``ovn-central``, ``ovn-host``): ovn-northd, ovn-controller, ovn-nbctl,
  ovn-sbctl and the NB/SB schemas, for the OVN control plane scenario (tests/kernel/ovn.py);
* ``prometheus`` and ``prometheus-node-exporter``.

Backports is reached through a private apt configuration under ``.cache/vm/apt``: its mirror URI
is read from the machine's own apt sources, so the project names no host and never changes the
system's apt configuration. Every step is skipped when its result is already in the cache.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests import host_packages

from .paths import CACHE_DIR, Kernel, kernel_dir, tools_root

#: Host packages that are installed (not just unpacked); CI runs as root on a fresh machine.
HOST_PACKAGES = ("qemu-system-x86", "busybox-static", "openvswitch-common")

#: Packages unpacked into ``tools_root()``; installing them would start daemons.
TOOL_PACKAGES = (
    "openvswitch-switch",
    "ovn-common",
    "ovn-central",
    "ovn-host",
    "prometheus",
    "prometheus-node-exporter",
)

#: What the tests run out of ``tools_root()``: setup fails unless unpacking left every one.
TOOL_FILES = (
    "usr/bin/ovs-dpctl",
    "usr/bin/ovs-vsctl",
    "usr/lib/openvswitch-switch/ovs-vswitchd",
    "usr/share/openvswitch/vswitch.ovsschema",
    "usr/bin/ovn-northd",
    "usr/bin/ovn-controller",
    "usr/bin/ovn-nbctl",
    "usr/bin/ovn-sbctl",
    "usr/bin/ovn-appctl",
    "usr/share/ovn/ovn-nb.ovsschema",
    "usr/share/ovn/ovn-sb.ovsschema",
    "usr/bin/prometheus",
    "usr/bin/prometheus-node-exporter",
)

#: The daemons and clients unpacked without their packages' dependencies: the guest runs them
#: on the host's own libraries (openvswitch-common, qemu-system-x86 and apt bring them all).
LINKED_TOOLS = (
    "usr/lib/openvswitch-switch/ovs-vswitchd",
    "usr/bin/ovn-northd",
    "usr/bin/ovn-controller",
    "usr/bin/ovn-nbctl",
    "usr/bin/ovn-sbctl",
)

#: Which suite (relative to the host's codename) carries each kernel series.
KERNEL_SUITES = {"6.1": "{codename}", "6.12": "{codename}-backports"}

APT_DIR = CACHE_DIR / "apt"
DEB_DIR = CACHE_DIR / "debs"


def log(message: str) -> None:
    print(f"[vm-setup] {message}", flush=True)


def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    log("$ " + " ".join(cmd))
    return subprocess.run(cmd, check=True, text=True, **kwargs)  # type: ignore[call-overload,no-any-return]


# --- host packages ---------------------------------------------------------------------------


def install_host_packages() -> None:
    host_packages.install(HOST_PACKAGES, "vm-setup")


# --- the private apt configuration -----------------------------------------------------------


@dataclass(frozen=True)
class DebianSource:
    uri: str
    signed_by: str | None


def os_codename() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip().strip('"')
    sys.exit("[vm-setup] cannot tell the Debian codename from /etc/os-release")


def _deb822_stanzas(text: str) -> list[dict[str, str]]:
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if line.startswith("#"):
            continue
        if not line:
            if current:
                stanzas.append(current)
            current = {}
            continue
        if line[0] in " \t" and key:
            current[key] += "\n" + line.strip()
            continue
        key, _, value = line.partition(":")
        key = key.strip().lower()
        current[key] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def system_debian_source(codename: str) -> DebianSource:
    """The apt source of the machine that carries the ``codename`` suite itself."""
    apt_etc = Path("/etc/apt")
    candidates: list[DebianSource] = []
    for path in sorted(apt_etc.glob("sources.list.d/*.sources")):
        for st in _deb822_stanzas(path.read_text()):
            if st.get("enabled", "yes").lower() == "no" or "deb" not in st.get("types", "").split():
                continue
            if codename in st.get("suites", "").split():
                for uri in st.get("uris", "").split():
                    candidates.append(DebianSource(uri, st.get("signed-by")))
    one_line = [apt_etc / "sources.list", *sorted(apt_etc.glob("sources.list.d/*.list"))]
    for path in one_line:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            m = re.match(r"^\s*deb\s+(?:\[(?P<opts>[^\]]*)\]\s+)?(?P<uri>\S+)\s+(?P<suite>\S+)", line)
            if not m or m["suite"] != codename:
                continue
            opts = dict(o.split("=", 1) for o in (m["opts"] or "").split() if "=" in o)
            candidates.append(DebianSource(m["uri"], opts.get("signed-by")))
    if not candidates:
        sys.exit(f"[vm-setup] no apt source of this machine carries the suite {codename!r}")
    return candidates[0]


def apt_options() -> list[str]:
    return [
        "-o", f"Dir::Etc::SourceList={APT_DIR / 'sources.list'}",
        "-o", "Dir::Etc::SourceParts=/dev/null",
        "-o", f"Dir::State::Lists={APT_DIR / 'lists'}",
        "-o", f"Dir::Cache={APT_DIR / 'cache'}",
        "-o", "Debug::NoLocking=1",
        "-o", "APT::Sandbox::User=root",
    ]  # fmt: skip


def prepare_private_apt(refresh: bool) -> None:
    codename = os_codename()
    src = system_debian_source(codename)
    opts = f" [signed-by={src.signed_by}]" if src.signed_by else ""
    lines = [f"deb{opts} {src.uri} {codename} main", f"deb{opts} {src.uri} {codename}-backports main"]
    (APT_DIR / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (APT_DIR / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    sources = APT_DIR / "sources.list"
    text = "\n".join(lines) + "\n"
    changed = not sources.is_file() or sources.read_text() != text
    sources.write_text(text)
    have_lists = any((APT_DIR / "lists").glob("*Packages*"))
    if refresh or changed or not have_lists:
        log(f"private apt sources ({sources}): {codename}, {codename}-backports from the system's mirror")
        run(["apt-get", *apt_options(), "update", "-q"])


def download(spec: str) -> Path:
    """``apt-get download`` ``spec`` (``name`` or ``name/suite``) into the cache; return the .deb."""
    name = spec.split("/", 1)[0]
    DEB_DIR.mkdir(parents=True, exist_ok=True)
    before = set(DEB_DIR.glob(f"{name}_*.deb"))
    res = run(["apt-get", *apt_options(), "download", "--print-uris", spec], capture_output=True)
    m = re.search(r"'\S+'\s+(\S+\.deb)\s", res.stdout)
    if not m:
        sys.exit(f"[vm-setup] apt-get cannot locate {spec}: {res.stdout}{res.stderr}")
    target = DEB_DIR / m.group(1)
    if target.is_file():
        log(f"cached {target.name}")
        return target
    run(["apt-get", *apt_options(), "download", "-q", spec], cwd=DEB_DIR)
    for stale in before - {target}:
        stale.unlink()
    if not target.is_file():
        sys.exit(f"[vm-setup] apt-get download {spec} left no {target.name}")
    return target


def deb_field(deb: Path, field: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "-f", str(deb), field], check=True, capture_output=True, text=True
    ).stdout.strip()


def extract(deb: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    run(["dpkg-deb", "-x", str(deb), str(dest)])


# --- kernels and tools -------------------------------------------------------------------------


def fetch_kernel(series: str, refresh: bool) -> Kernel:
    kdir = kernel_dir(series)
    ready = kdir / "READY"
    if ready.is_file() and not refresh:
        k = Kernel.load(series)
        log(f"kernel {series}: cached {k.release}")
        return k
    suite = KERNEL_SUITES[series].format(codename=os_codename())
    meta = download(f"linux-image-amd64/{suite}")
    image_pkg = ""
    for alt in deb_field(meta, "Depends").split(","):
        name = alt.split("|")[0].strip().split(" ")[0]
        if re.fullmatch(r"linux-image-[0-9.]+.*-amd64", name):
            image_pkg = name
    if not image_pkg.startswith(f"linux-image-{series}."):
        sys.exit(f"[vm-setup] linux-image-amd64/{suite} depends on {image_pkg!r}, not a {series} kernel")
    deb = download(f"{image_pkg}/{suite}")
    if kdir.exists():
        shutil.rmtree(kdir)
    extract(deb, kdir / "root")
    release = image_pkg.removeprefix("linux-image-")
    (kdir / "release").write_text(release + "\n")
    (kdir / "version").write_text(deb_field(deb, "Version") + "\n")
    k = Kernel.load(series)
    if not k.vmlinuz.is_file() or not k.modules_dir.is_dir():
        sys.exit(f"[vm-setup] {deb.name} has no {k.vmlinuz} or {k.modules_dir}")
    ready.write_text(release + "\n")
    log(f"kernel {series}: {release} unpacked in {kdir}")
    return k


def tools_stamp() -> str:
    """What READY records for the tools root: the package list, so that a cache unpacked from
    another list (an older checkout's, or before a package was added) is fetched again."""
    return "packages: " + " ".join(TOOL_PACKAGES) + "\n"


def tools_ready() -> bool:
    ready = tools_root().parent / "READY"
    return ready.is_file() and ready.read_text() == tools_stamp()


def fetch_tools(refresh: bool) -> None:
    root = tools_root()
    ready = root.parent / "READY"
    if tools_ready() and not refresh:
        log(f"tools: cached in {root}")
        return
    # Unpacked beside the old root and swapped in at the end: a test reading the tools meanwhile
    # (the host OVSDB tests take the schema and ovs-vsctl from there) finds one whole tree.
    staging = root.with_name(root.name + ".new")
    if staging.exists():
        shutil.rmtree(staging)
    for pkg in TOOL_PACKAGES:
        extract(download(f"{pkg}/{os_codename()}"), staging)
    missing = [f for f in TOOL_FILES if not (staging / f).is_file()]
    if missing:
        sys.exit(f"[vm-setup] {', '.join(missing)} missing after unpacking {', '.join(TOOL_PACKAGES)}")
    for binary in LINKED_TOOLS:
        libs = run(["ldd", str(staging / binary)], capture_output=True).stdout
        absent = [line.split()[0] for line in libs.splitlines() if "not found" in line]
        if absent:
            sys.exit(f"[vm-setup] {binary} needs {', '.join(absent)}, which this machine lacks")
    ready.unlink(missing_ok=True)
    if root.exists():
        old = root.with_name(root.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        root.rename(old)
        staging.rename(root)
        shutil.rmtree(old)
    else:
        staging.rename(root)
    ready.write_text(tools_stamp())
    log(f"tools: {', '.join(TOOL_PACKAGES)} unpacked in {root}")


def provision(kernels: list[str], refresh: bool = False) -> None:
    install_host_packages()
    need_apt = refresh or not tools_ready()
    need_apt |= any(not (kernel_dir(s) / "READY").is_file() for s in kernels)
    if need_apt:
        prepare_private_apt(refresh)
    for series in kernels:
        fetch_kernel(series, refresh)
    fetch_tools(refresh)
