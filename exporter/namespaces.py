"""Collecting from other network namespaces: one kernel source per named namespace.

Datapaths belong to a network namespace, and a netlink socket sees the datapaths
of the namespace it was opened in. To report the datapaths of namespaces named
under ``/run/netns`` (``ip netns``), the exporter opens one socket inside each:
it switches its own thread into the namespace with setns(2) (which needs
CAP_SYS_ADMIN), opens the socket, and switches back. The socket keeps its
namespace, so it is opened once and kept between scrapes. A namespace that does
not exist is never created; one that vanishes or cannot be entered is reported
for that namespace alone.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from exporter.model import DatapathDump
from exporter.source import KernelSocket, KernelSource, NetlinkKernelSocket

NETNS_RUN_DIR = "/run/netns"
T = TypeVar("T")


def list_namespaces(run_dir: str = NETNS_RUN_DIR) -> list[str]:
    """The names ``ip netns`` knows, sorted; none when the directory does not exist."""
    try:
        return sorted(name for name in os.listdir(run_dir) if not name.startswith("."))
    except FileNotFoundError:
        return []


def open_socket_in(name: str, timeout: float, run_dir: str = NETNS_RUN_DIR) -> KernelSocket:
    """A kernel socket opened inside the named namespace; the calling thread's namespace is restored.

    Raises FileNotFoundError for a namespace that does not exist (it is never created)
    and PermissionError without CAP_SYS_ADMIN.
    """
    return call_in_namespace(name, lambda: NetlinkKernelSocket(timeout), run_dir)


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


@dataclass(frozen=True, slots=True)
class NamespaceResult:
    """One namespace's scrape: its datapaths, or the error that stopped it."""

    netns: str
    dumps: list[DatapathDump]
    error: BaseException | None
    duration_seconds: float = 0.0


class NamespaceSources:
    """One KernelSource per namespace, named in the config or every one under /run/netns."""

    def __init__(
        self,
        names: Sequence[str],
        all_namespaces: bool,
        timeout: float,
        open_in: Callable[[str, float], KernelSocket] = open_socket_in,
        discover: Callable[[], list[str]] = list_namespaces,
        identify: Callable[[str], tuple[int, int]] = namespace_id,
    ) -> None:
        self._names = list(names)
        self._all = all_namespaces
        self._timeout = timeout
        self._open_in = open_in
        self._discover = discover
        self._identify = identify
        # name -> (the namespace's identity when its socket was opened, its source)
        self._sources: dict[str, tuple[tuple[int, int], KernelSource]] = {}

    def namespaces(self) -> list[str]:
        if not self._all:
            return self._names
        return sorted(set(self._names) | set(self._discover()))

    def collect(self) -> list[NamespaceResult]:
        wanted = self.namespaces()
        for gone in set(self._sources) - set(wanted):
            self._drop(gone)
        results = []
        for name in wanted:
            started = time.perf_counter()
            try:
                dumps = [dataclasses.replace(d, netns=name) for d in self._source(name).collect()]
            except Exception as err:  # noqa: BLE001 - reported per namespace, never fatal
                results.append(NamespaceResult(name, [], err, time.perf_counter() - started))
                continue
            results.append(NamespaceResult(name, dumps, None, time.perf_counter() - started))
        return results

    def close(self) -> None:
        for name in list(self._sources):
            self._drop(name)

    def _source(self, name: str) -> KernelSource:
        """The namespace's source, reopened when the name now points to another namespace.

        An open socket keeps its namespace alive: one deleted with ``ip netns del``
        (identity gone) or deleted and created again (identity changed) must be let go.
        """
        try:
            identity = self._identify(name)
        except FileNotFoundError:
            self._drop(name)
            raise FileNotFoundError(f"network namespace {name} does not exist") from None
        known = self._sources.get(name)
        if known is not None and known[0] == identity:
            return known[1]
        self._drop(name)
        source = KernelSource(self._socket_opener(name))
        self._sources[name] = (identity, source)
        return source

    def _drop(self, name: str) -> None:
        known = self._sources.pop(name, None)
        if known is not None:
            known[1].close()

    def _socket_opener(self, name: str) -> Callable[[], KernelSocket]:
        return lambda: self._open_in(name, self._timeout)
