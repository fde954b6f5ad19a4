"""The package as pip users get it: `python -m build`'s sdist and wheel, installed and served.

`python -m build` makes the sdist and then the wheel from the unpacked sdist, so a file the
sdist forgets fails here. The wheel must hold exactly the `exporter` package of this checkout
and declare the runtime dependencies of pyproject.toml; installed into a fresh virtualenv (its
dependencies from pip's cache or PyPI), its entry point, run outside the checkout, serves
/metrics on loopback and ends cleanly on SIGTERM. Costs about 10 s (two isolated builds).
"""

from __future__ import annotations

import configparser
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
DIST_INFO = f"ovs_vport_exporter-{PROJECT['version']}.dist-info"


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, (
        f"python -m build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return sdist, wheel


def _package_files() -> set[str]:
    return {
        p.relative_to(REPO).as_posix()
        for p in (REPO / "exporter").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_wheel_holds_the_package_and_its_metadata(dists: tuple[Path, Path]) -> None:
    _, wheel = dists
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(f"{DIST_INFO}/METADATA").decode()
        entry_points = archive.read(f"{DIST_INFO}/entry_points.txt").decode()
    assert {n for n in names if not n.startswith(DIST_INFO + "/")} == _package_files()
    scripts = configparser.ConfigParser()
    scripts.read_string(entry_points)
    assert dict(scripts["console_scripts"]) == {"ovs-vport-exporter": "exporter.cli:main"}
    runtime = {
        Requirement(line.split(":", 1)[1].strip())
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    }
    assert {str(r) for r in runtime} == {str(Requirement(d)) for d in PROJECT["dependencies"]}


def test_sdist_holds_the_package(dists: tuple[Path, Path]) -> None:
    sdist, _ = dists
    with tarfile.open(sdist) as archive:
        top = sdist.name.removesuffix(".tar.gz")
        names = {m.name.removeprefix(top + "/") for m in archive.getmembers() if m.isfile()}
    assert _package_files() <= names
    assert {"pyproject.toml", "README.md"} <= names


def test_installed_wheel_serves(
    dists: tuple[Path, Path],
    tmp_path: Path,
    serving: Callable[..., AbstractContextManager[Any]],
    free_port: Callable[[], int],
) -> None:
    _, wheel = dists
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--quiet",
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"pip install {wheel.name} failed:\n{result.stderr[-3000:]}"
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import exporter; print(exporter.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(venv), f"exporter imported from {where}, not from the wheel"

    port = free_port()
    command = [str(venv / "bin" / "ovs-vport-exporter"), f"--web.listen-address=127.0.0.1:{port}"]
    with serving(command, port, cwd=tmp_path) as served:
        landing, _ = served.get("/")
        status, metrics = served.get("/metrics")
    assert landing == 200
    assert status == 200
    assert "\novs_up " in metrics
    assert f'ovs_exporter_build_info{{version="{PROJECT["version"]}"}} 1' in metrics
    assert served.exit_code == 0, served.output
