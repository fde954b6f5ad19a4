#!/usr/bin/env bash
# Boot each Debian kernel (6.12, then 6.1) under QEMU and run tests/kernel inside it.
# Fails when any test fails or a guest does not boot; prints per-stage wall times.
# Usage: tests/vm/run_suite.sh [--kernel 6.12|6.1 ...] [--skip-setup] [-- PYTEST_ARGS...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
exec "${PYTHON:-$root/.venv/bin/python}" -m tests.vm suite "$@"
