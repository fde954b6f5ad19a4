"""A real ovsdb-server for host tests, and a recording proxy that fails on any writing method.

ovsdb-server, ovsdb-tool and ovsdb-client come from Debian's openvswitch-common;
the schema and ovs-vsctl from openvswitch-switch, unpacked by the VM setup
(``python -m tests.vm setup --tools-only``, which ``make tools`` runs). Nothing is
installed as a service: each test runs its own server on a socket in a private
directory and kills it at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.tools import require_tool
from tests.vm.paths import tools_root

SETUP_HINT = "python -m tests.vm setup --tools-only (make tools)"


def schema_path() -> Path:
    path = tools_root() / "usr/share/openvswitch/vswitch.ovsschema"
    if not path.is_file():
        message = f"{path} not found; run {SETUP_HINT}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _tool(name: str) -> Path:
    return require_tool(name, [Path("/usr/sbin") / name, Path("/usr/bin") / name], SETUP_HINT)


def vsctl_path() -> Path:
    return require_tool("ovs-vsctl", [tools_root() / "usr/bin/ovs-vsctl"], SETUP_HINT)


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


class OvsdbServer:
    """One ovsdb-server process on a unix socket, with its database file in ``directory``."""

    def __init__(self, directory: Path, schema: Path | None = None) -> None:
        self.directory = directory
        self.db = directory / "conf.db"
        self.socket = directory / "db.sock"
        self.remote = f"unix:{self.socket}"
        self.proc: subprocess.Popen[bytes] | None = None
        subprocess.run(
            [str(_tool("ovsdb-tool")), "create", str(self.db), str(schema or schema_path())],
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        assert self.proc is None
        self.proc = subprocess.Popen(
            [
                str(_tool("ovsdb-server")),
                str(self.db),
                f"--remote=punix:{self.socket}",
                f"--unixctl={self.directory / 'ctl'}",
                "--no-chdir",
                f"--log-file={self.directory / 'ovsdb-server.log'}",
                "-vconsole:off",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self.socket.exists, what="ovsdb-server's socket")
        wait_for(self._answers, what="ovsdb-server to answer")

    def _answers(self) -> bool:
        res = subprocess.run(
            [str(_tool("ovsdb-client")), "--timeout=2", "list-dbs", self.remote],
            capture_output=True,
            check=False,
        )
        return res.returncode == 0

    def kill(self) -> None:
        """SIGKILL, as a crash would; the socket file stays behind, as it would."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc = None

    def restart(self) -> None:
        """Kill and start again on the same database; the new server replaces the stale socket."""
        self.kill()
        self.start()

    def vsctl(self, *args: str) -> str:
        res = subprocess.run(
            [str(vsctl_path()), f"--db={self.remote}", "--no-wait", "--timeout=10", *args],
            capture_output=True,
            text=True,
            check=False,
        )
        assert res.returncode == 0, f"ovs-vsctl {' '.join(args)}: {res.stderr}"
        return res.stdout

    def transact(self, *operations: dict[str, Any]) -> Any:
        """One transaction (``ovsdb-client transact``) on Open_vSwitch; its result, checked."""
        res = subprocess.run(
            [str(_tool("ovsdb-client")), "--timeout=30", "transact", self.remote,
             json.dumps(["Open_vSwitch", *operations])],
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        result = json.loads(res.stdout)
        for op in result:
            assert not (isinstance(op, dict) and "error" in op), f"transaction failed: {result}"
        return result


@contextlib.contextmanager
def ovsdb_server(schema: Path | None = None, start: bool = True) -> Iterator[OvsdbServer]:
    # A short private path: a unix socket path must fit in 107 bytes (pytest's tmp_path may not).
    directory = Path(tempfile.mkdtemp(prefix="ovsdb-", dir="/tmp"))
    server = None
    try:
        server = OvsdbServer(directory, schema)  # skips, or fails in CI, without the tools
        if start:
            server.start()
        yield server
    finally:
        if server is not None:
            server.kill()
        shutil.rmtree(directory, ignore_errors=True)


# --- the recording proxy ---------------------------------------------------------------------

#: What a read-only monitor may send: every request or notification of the Idl that
#: neither writes nor locks (RFC 7047 and ovsdb-server(5)); replies carry no method.
READ_ONLY_METHODS = frozenset(
    {
        "get_schema",
        "list_dbs",
        "monitor",
        "monitor_cond",
        "monitor_cond_since",
        "monitor_cancel",
        "set_db_change_aware",
        "echo",
    }
)


class RecordingProxy:
    """A unix socket in front of a server's, that records every JSON-RPC message the client sends.

    A message whose method is not in ``allowed`` is recorded in ``violations`` and the
    connection is cut before it reaches the server.
    """

    def __init__(
        self,
        upstream: Path,
        directory: Path,
        allowed: frozenset[str] = READ_ONLY_METHODS,
        rewrite: tuple[bytes, bytes] | None = None,
    ) -> None:
        self.upstream = upstream
        self.rewrite = rewrite  # (marker, replacement) in what the server sends
        self.path = directory / "proxy.sock"
        self.remote = f"unix:{self.path}"
        self.allowed = allowed
        self.methods: list[str] = []  # every method the client sent, in order
        self.violations: list[dict[str, Any]] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.path))
        self._listener.listen(16)
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                server.connect(str(self.upstream))
            except OSError:
                client.close()  # the server is down: the client sees the connection close
                continue
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._client_to_server, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        """Server to client, with ``rewrite`` applied (a marker split between reads included)."""
        held = b""
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if self.rewrite is None:
                    dst.sendall(data)
                    continue
                marker, replacement = self.rewrite
                data = (held + data).replace(marker, replacement)
                held = b""
                for keep in range(min(len(marker) - 1, len(data)), 0, -1):
                    if marker.startswith(data[-keep:]):
                        data, held = data[:-keep], data[-keep:]
                        break
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def _client_to_server(self, client: socket.socket, server: socket.socket) -> None:
        """Forward whole messages only, each after it has been checked."""
        decoder = json.JSONDecoder()
        buffer = ""
        raw = b""
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                raw += data
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    continue  # a character split between two reads
                raw = b""
                buffer += text
                while True:
                    stripped = buffer.lstrip()
                    if not stripped:
                        buffer = ""
                        break
                    try:
                        message, end = decoder.raw_decode(stripped)
                    except json.JSONDecodeError:
                        buffer = stripped
                        break  # incomplete: wait for more
                    buffer = stripped[end:]
                    method = message.get("method") if isinstance(message, dict) else None
                    if method is not None:
                        with self._lock:
                            self.methods.append(method)
                            if method not in self.allowed:
                                self.violations.append(message)
                        if method not in self.allowed:
                            raise OSError("forbidden method")
                    server.sendall(stripped[:end].encode("utf-8"))
        for s in (client, server):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
