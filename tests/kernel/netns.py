"""Enter a named network namespace from the test process itself, without a new process.

Each process costs 0.15-0.5 s under TCG; ``ip netns exec`` costs two. setns(2) switches only
the calling thread, and a socket stays in the namespace it was created in, so a test can open
a netlink socket or write a namespace's /proc/sys/net files and come back.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager

#: From <sched.h>; Python 3.11's os module has no setns.
CLONE_NEWNET = 0x40000000
#: No IPv6 in a namespace the tests make: its router solicitations and MLD reports would keep
#: counters moving. Written into each new namespace before any device is in it: a new namespace
#: starts with IPv6 on, whatever the guest's own namespace says, and a device moved in takes the
#: namespace's default.
NO_IPV6 = {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def enter_netns(name: str) -> None:
    """Move the calling thread into ``/run/netns/NAME`` (as ``ip netns exec`` does), for good."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(fd)
    finally:
        os.close(fd)


@contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the body inside namespace ``name``; back in this thread's own namespace afterwards."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter_netns(name)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def write_sysctl(netns: str, settings: dict[str, str]) -> None:
    """Write /proc/sys entries as seen from ``netns`` (net.* files are per namespace)."""
    with in_netns(netns):
        for key, value in settings.items():
            with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                f.write(value)
