"""The VM harness: boots Debian kernels under QEMU TCG and runs commands in this checkout."""
