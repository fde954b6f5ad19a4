#!/usr/bin/env bash
# Install and fetch everything the VM harness needs; idempotent and cached under .cache/vm.
# Host packages via apt-get (needs root); kernels, ovs-dpctl, prometheus and node_exporter via
# apt-get download + dpkg -x. Usage: tests/vm/setup.sh [--kernel 6.12|6.1 ...] [--refresh]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
py="${PYTHON:-$root/.venv/bin/python}"
[ -x "$py" ] || py=python3
cd "$root"
exec "$py" -m tests.vm setup "$@"
