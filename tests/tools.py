"""Locating the external tools the tests run for real (promtool, ...).

They are fetched by the project's setup scripts into .cache/ (see .ci/run). A
missing tool skips its tests on a developer's machine, but fails them in CI
(CI=true), where a skip would hide that nothing was checked.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROMTOOL_CANDIDATES = [ROOT / ".cache" / "debian-tools" / "usr" / "bin" / "promtool"]


def require_tool(name: str, candidates: list[Path], setup_hint: str) -> Path:
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if found:
        return Path(found)
    message = f"{name} not found; run {setup_hint}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def promtool() -> Path:
    return require_tool("promtool", PROMTOOL_CANDIDATES, "alerts/setup-promtool.sh")
