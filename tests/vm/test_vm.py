"""The harness itself, and the in-guest suite on each kernel (run with OVS_VM_TESTS=1)."""

from __future__ import annotations

import time

import pytest

from .paths import KERNEL_SERIES
from .qemu import VMError, run_in_vm
from .suite import run_kernel_suite


def test_exit_status_and_output_come_back() -> None:
    res = run_in_vm(["bash", "-c", "echo hello from $(uname -r); exit 3"], "6.12", timeout=180, stream=False)
    assert res.returncode == 3
    assert f"hello from {res.kernel.release}" in res.output


def test_broken_boot_fails_with_the_console_tail() -> None:
    with pytest.raises(VMError, match="did not run the command") as err:
        run_in_vm(["true"], "6.12", timeout=180, stream=False, append="rdinit=/no/such/init")
    assert "panic" in str(err.value).lower()


def test_hung_guest_is_killed_at_the_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(VMError, match="did not finish within 30s"):
        run_in_vm(["sleep", "600"], "6.12", timeout=30, stream=False)
    assert time.monotonic() - started < 90


@pytest.mark.parametrize("kernel", KERNEL_SERIES)
def test_kernel_suite_passes(kernel: str) -> None:
    result = run_kernel_suite(kernel, stream=False)
    assert result.ok, result.detail
