"""Named network namespaces: listing them, telling them apart, opening sockets inside them.

Datapaths belong to a network namespace, and a netlink socket sees the datapaths
of the namespace it was opened in. To read the datapaths of namespaces named
under ``/run/netns`` (``ip netns``), the exporter opens its sockets inside each:
it switches its own thread into the namespace with setns(2) (which needs
CAP_SYS_ADMIN), opens the socket, and switches back. The socket keeps its
namespace, so it is opened once and kept. A namespace that does not exist is
never created.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

NETNS_RUN_DIR = "/run/netns"
T = TypeVar("T")


def list_namespaces(run_dir: str = NETNS_RUN_DIR) -> list[str]:
    """The names ``ip netns`` knows, sorted; none when the directory does not exist."""
    try:
        return sorted(name for name in os.listdir(run_dir) if not name.startswith("."))
    except FileNotFoundError:
        return []


def log_prefix(netns: str | None) -> str:
    """What a log line about a namespace starts with: nothing for the exporter's own."""
    return "" if netns is None else f"network namespace {netns}: "


def call_in_namespace(name: str, make: Callable[[], T], run_dir: str = NETNS_RUN_DIR) -> T:
    """``make()`` run inside the named namespace (sockets it opens stay there); the thread comes back."""
    from pyroute2.netns import setns

    target = os.open(os.path.join(run_dir, name), os.O_RDONLY)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        # flags=0: never create. The fds are ours, so pyroute2 does not look names up.
        setns(target, flags=0)
        try:
            return make()
        finally:
            setns(home, flags=0)
    finally:
        os.close(home)
        os.close(target)


def namespace_id(name: str, run_dir: str = NETNS_RUN_DIR) -> tuple[int, int]:
    """The (device, inode) pair that identifies the namespace a name is bound to."""
    st = os.stat(os.path.join(run_dir, name))
    return st.st_dev, st.st_ino
