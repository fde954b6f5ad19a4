"""Fixtures for the rules, dashboards and query-inventory tests.

promtool and prometheus come from Debian's `prometheus` package, unpacked by
alerts/setup-promtool.sh into .cache/debian-tools/ (or $PROMTOOL, $PROMETHEUS,
or the PATH). Without them these tests skip, except under CI=true, where a
missing tool is a failure: CI must run what it claims to.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".cache" / "debian-tools" / "usr" / "bin"


def missing(what: str) -> None:
    """Skip, or fail under CI=true, for a missing tool or package."""
    message = f"{what} is missing: run alerts/setup-promtool.sh and install the project's test extras"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _tool(name: str) -> Path:
    configured = os.environ.get(name.upper())
    candidates = [Path(configured)] if configured else []
    candidates.append(TOOLS / name)
    found = shutil.which(name)
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    missing(name)
    raise AssertionError("unreachable")


def load_module(path: Path, name: str) -> ModuleType:
    """Import a script that is not part of a package (alerts/generate_rules.py, ...)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the module runs.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def promtool() -> Path:
    return _tool("promtool")


@pytest.fixture(scope="session")
def prometheus() -> Path:
    return _tool("prometheus")


@pytest.fixture(scope="session")
def rules_generator() -> ModuleType:
    return load_module(ROOT / "alerts" / "generate_rules.py", "ovs_alerts_generate")


@pytest.fixture(scope="session")
def dashboards_generator() -> ModuleType:
    if importlib.util.find_spec("grafana_foundation_sdk") is None:
        missing("grafana-foundation-sdk")
    return load_module(ROOT / "dashboards" / "generate_dashboards.py", "ovs_dashboards_generate")


@pytest.fixture(scope="session")
def renderer() -> ModuleType:
    if importlib.util.find_spec("matplotlib") is None:
        missing("matplotlib")
    return load_module(ROOT / "docs" / "render_dashboards.py", "ovs_render_dashboards")
