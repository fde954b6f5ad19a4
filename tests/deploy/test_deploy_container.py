"""The Containerfile: its install steps, run here without a container engine.

The build stage's COPY lines say which files the image gets; the test copies
exactly those into a fresh directory, makes a fresh virtualenv as the RUN line
does, runs the Containerfile's own pip line there, and starts the installed
entry point. A file the build needs but the COPY lines forget fails here as it
would in `podman build`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONTAINERFILE = REPO / "Containerfile"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def instructions(text: str) -> list[Instruction]:
    """The instructions of a Containerfile, continuation lines joined, comments dropped."""
    result: list[Instruction] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        keyword, _, arguments = whole.partition(" ")
        result.append(Instruction(keyword.upper(), arguments.strip()))
    return result


def stages(text: str) -> list[list[Instruction]]:
    found: list[list[Instruction]] = []
    for instruction in instructions(text):
        if instruction.keyword == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def _args(text: str) -> dict[str, str]:
    return {
        name: value
        for i in instructions(text)
        if i.keyword == "ARG" and "=" in i.arguments
        for name, value in [i.arguments.split("=", 1)]
    }


def _env(instruction: Instruction) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in shlex.split(instruction.arguments))


@pytest.fixture(scope="module")
def text() -> str:
    return CONTAINERFILE.read_text(encoding="utf-8")


def test_base_image_is_python_311_slim(text: str) -> None:
    base = _args(text)["PYTHON_IMAGE"]
    assert re.fullmatch(r"(docker\.io/library/)?python:3\.11-slim(-bookworm)?", base), base
    for stage in stages(text):
        assert stage[0].arguments.split()[0] == "${PYTHON_IMAGE}"


def test_final_stage_runs_unprivileged(text: str) -> None:
    final = stages(text)[-1]
    users = [i.arguments for i in final if i.keyword == "USER"]
    assert users, "the final stage sets no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, f"USER {users[-1]}: use a numeric non-root uid"
    assert [i.arguments for i in final if i.keyword == "EXPOSE"] == ["9310"]
    (entrypoint,) = [i.arguments for i in final if i.keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["ovs-vport-exporter"]
    assert not [i for i in final if i.keyword == "RUN"], "the final stage only copies the built venv"


def test_install_steps_work_in_a_fresh_virtualenv(text: str, tmp_path: Path) -> None:
    build = stages(text)[0]
    workdir = Path(next(i.arguments for i in build if i.keyword == "WORKDIR"))
    context = tmp_path / "context"
    context.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV"))}
    venv: Path | None = None
    venv_in_image: str | None = None
    installed = False
    for instruction in build[1:]:
        if instruction.keyword == "COPY":
            words = instruction.arguments.split()
            assert not any(w.startswith("--") for w in words), f"unexpected COPY flags: {instruction}"
            *sources, destination = words
            target = (
                context / Path(destination).relative_to(workdir)
                if destination.startswith("/")
                else context / destination
            )
            for source in sources:
                origin = REPO / source
                assert origin.exists(), f"COPY {source}: no such file in the repository"
                if origin.is_dir():
                    shutil.copytree(
                        origin,
                        target,
                        dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
                    )
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(origin, target / origin.name)
        elif instruction.keyword == "ENV":
            for name, value in _env(instruction).items():
                if name == "PATH":
                    assert venv is not None and venv_in_image is not None
                    value = value.replace(venv_in_image, str(venv)).replace("$PATH", env["PATH"])
                if name == "PIP_NO_CACHE_DIR":
                    continue  # the same install, but allowed to reuse this machine's wheel cache
                env[name] = value
        elif instruction.keyword == "RUN":
            command = instruction.arguments
            venv_match = re.fullmatch(r"python3? -m venv (\S+)", command)
            if venv_match:
                venv_in_image = venv_match.group(1)
                venv = tmp_path / "venv"
                subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
                continue
            assert re.match(r"pip install\b.* \.$", command), f"unexpected RUN line: {command}"
            result = subprocess.run(
                ["sh", "-c", command],
                cwd=context,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert result.returncode == 0, (
                f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
            installed = True
    assert installed and venv is not None, "no `RUN pip install ... .` line in the build stage"

    executable = venv / "bin" / "ovs-vport-exporter"
    result = subprocess.run(
        [str(executable), "--version"], capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False
    )
    assert result.returncode == 0, result.stderr
    version = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    assert version in result.stdout + result.stderr
