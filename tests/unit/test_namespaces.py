"""Collecting from other network namespaces: sockets kept, vanished namespaces let go, never created."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from exporter.kernel.dumps import NamespaceSources
from exporter.kernel.genl import FamilyNotFoundError, open_socket
from exporter.kernel.netns import list_namespaces
from tests.ovs_messages import FakeDatapath, FakeKernelSocket, FakeVport


class World:
    """Fake namespaces: name -> identity, and the sockets opened in each."""

    def __init__(self) -> None:
        self.ids: dict[str, tuple[int, int]] = {"red": (1, 10), "blue": (1, 11)}
        self.opened: list[tuple[str, FakeKernelSocket]] = []

    def open_in(self, name: str, timeout: float) -> FakeKernelSocket:
        sock = FakeKernelSocket([FakeDatapath(f"dp-{name}", 5, vports=[FakeVport(1, f"p-{name}")])])
        self.opened.append((name, sock))
        return sock

    def identify(self, name: str) -> tuple[int, int]:
        if name not in self.ids:
            raise FileNotFoundError(name)
        return self.ids[name]

    def sources(self, names: list[str], all_namespaces: bool = False) -> NamespaceSources:
        return NamespaceSources(
            names, all_namespaces, 1.0, self.open_in, lambda: sorted(self.ids), self.identify
        )


def test_each_namespace_is_read_through_its_own_kept_socket() -> None:
    world = World()
    sources = world.sources(["red", "blue"])
    for _ in range(3):
        results = sources.collect()
    assert [(r.netns, [d.datapath.name for d in r.dumps], r.error) for r in results] == [
        ("red", ["dp-red"], None),
        ("blue", ["dp-blue"], None),
    ]
    assert all(d.netns == r.netns for r in results for d in r.dumps)
    assert [name for name, _ in world.opened] == ["red", "blue"], "opened once, kept between scrapes"


def test_a_missing_namespace_is_reported_alone_and_let_go() -> None:
    world = World()
    sources = world.sources(["red", "blue", "green"])
    results = {r.netns: r for r in sources.collect()}
    assert isinstance(results["green"].error, FileNotFoundError)
    assert "green does not exist" in str(results["green"].error)
    assert results["red"].error is None and results["blue"].error is None
    red_socket = world.opened[0][1]
    del world.ids["red"]  # ip netns del red
    results = {r.netns: r for r in sources.collect()}
    assert isinstance(results["red"].error, FileNotFoundError)
    assert red_socket.closed, "a socket would keep the deleted namespace alive"


def test_a_namespace_recreated_under_the_same_name_gets_a_new_socket() -> None:
    world = World()
    sources = world.sources(["red"])
    sources.collect()
    world.ids["red"] = (1, 99)
    sources.collect()
    assert [name for name, _ in world.opened] == ["red", "red"] and world.opened[0][1].closed


def test_all_follows_the_namespaces_that_come_and_go() -> None:
    world = World()
    sources = world.sources([], all_namespaces=True)
    assert [r.netns for r in sources.collect()] == ["blue", "red"]
    world.ids["green"] = (1, 12)
    del world.ids["blue"]
    assert [r.netns for r in sources.collect()] == ["green", "red"]
    assert [s.closed for n, s in world.opened if n == "blue"] == [True]


def test_a_failing_namespace_does_not_stop_the_others() -> None:
    world = World()
    sources = world.sources(["red", "blue"])
    sources.collect()
    world.opened[0][1].families = {}
    results = {r.netns: r for r in sources.collect()}
    assert isinstance(results["red"].error, FamilyNotFoundError)
    assert results["blue"].error is None


def test_list_namespaces_of_a_missing_directory_is_empty(tmp_path: Path) -> None:
    assert list_namespaces(str(tmp_path / "none")) == []
    (tmp_path / "b").touch()
    (tmp_path / "a").touch()
    assert list_namespaces(str(tmp_path)) == ["a", "b"]


@pytest.mark.skipif(os.geteuid() != 0, reason="creating a namespace needs root")
def test_real_namespace_entered_and_left_and_missing_one_never_created() -> None:
    """With real namespaces (ip netns): the socket opens inside, the thread comes back home."""
    name = f"ovsx-{uuid.uuid4().hex[:8]}"
    home = os.stat("/proc/thread-self/ns/net").st_ino
    missing = f"ovsx-missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(FileNotFoundError):
        open_socket(1.0, missing)
    assert not os.path.exists(f"/run/netns/{missing}"), "a missing namespace is never created"
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode != 0:
        pytest.skip("cannot create network namespaces here")
    try:
        sock = open_socket(1.0, name)
        try:
            assert os.stat("/proc/thread-self/ns/net").st_ino == home
            # The module is absent on this host: the socket works, the family does not resolve.
            with pytest.raises(FamilyNotFoundError):
                sock.family_id("ovs_datapath")
        finally:
            sock.close()
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)
