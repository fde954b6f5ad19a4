"""Tests against a real kernel datapath; they run only inside the VM that tests/vm boots."""
