"""The host side of the VM stage boots real kernels (minutes): collected only with OVS_VM_TESTS=1.

The usual entry point is tests/vm/run_suite.sh; these tests wrap the same functions for pytest.
"""

from __future__ import annotations

import os

if os.environ.get("OVS_VM_TESTS") != "1":
    collect_ignore_glob = ["test_*.py"]
