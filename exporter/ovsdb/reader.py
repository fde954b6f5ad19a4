"""The OVSDB source: a read-only copy of the Open_vSwitch database, kept current in the background.

Which bridge a kernel vport is on, and which VM or pod it serves, exist only in
OVSDB (``Bridge``, ``Port``, ``Interface.external_ids``). ``OvsdbReader`` owns one
thread that owns an ``ovs.db.idl.Idl`` (Open vSwitch's own Python library): it
fetches the server's schema, monitors only the columns in ``MONITORED`` that the
schema has, and after every change turns the replica into an immutable
``OvsdbSnapshot`` and hands it to a ``build`` function whose result the scrape
reads with ``current()``. A scrape never waits for OVSDB and never sends it
anything.

It only reads. On the wire that is ``get_schema`` (ours, for the columns the
server has, and the Idl's for ``_Server``), ``monitor_cond`` on ``_Server``,
``monitor_cond_since`` (or ``monitor_cond``/``monitor`` on older servers),
``set_db_change_aware``, ``monitor_cancel`` after the server cancels a monitor,
and ``echo`` probes; never ``transact``, ``lock`` or anything that writes.
``tests/unit/test_ovsdb.py`` proves that with a proxy in front of a real
ovsdb-server.

While the connection is down, or before the first complete copy after a
(re)connect, ``current()`` is None: no stale identity is ever served. It
reconnects with exponential backoff and logs once per change of state.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Any, Generic, TypeVar

# The ovs library (and the ssl, uuid and json machinery it brings, about 5 MB of RSS) is imported
# by the functions that talk to OVSDB, so an exporter without --collector.ovsdb never loads it.
if TYPE_CHECKING:
    import ovs.poller

log = logging.getLogger(__name__)

DATABASE = "Open_vSwitch"

#: The tables and columns the reader monitors, and nothing else.
MONITORED: dict[str, tuple[str, ...]] = {
    # system-id and hostname live in external_ids (vswitch.xml, "Open_vSwitch" table).
    "Open_vSwitch": ("external_ids", "ovs_version", "db_version"),
    # external_ids for OVN's ct-zone-<logical port> keys (which conntrack zone serves whom).
    "Bridge": ("name", "datapath_type", "ports", "external_ids"),
    "Port": ("name", "interfaces"),
    # options is read only for options:dst_port, which names a UDP tunnel's kernel vport; error
    # is why ovs-vswitchd could not open or configure the Interface (ofport is then -1).
    "Interface": ("name", "type", "ofport", "external_ids", "options", "error"),
}

#: Without these there is nothing to report; every other column degrades to an absent label.
REQUIRED: dict[str, tuple[str, ...]] = {
    "Bridge": ("name", "ports"),
    "Port": ("interfaces",),
    "Interface": ("name",),
}

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class OvsdbInterface:
    """One row of the Interface table, as far as the exporter reads it."""

    name: str
    type: str  # "" is OVS's "system": an ordinary network device
    ofport: int | None  # None: not assigned (yet), or the column is not monitored; -1: vswitchd failed
    external_ids: Mapping[str, str]
    dst_port: str | None  # options:dst_port, as written
    error: str | None = None  # Interface.error: why vswitchd could not open or configure it


@dataclass(frozen=True, slots=True)
class OvsdbBridge:
    name: str
    datapath_type: str  # "" and "system" are the kernel datapath; "netdev" is userspace
    interfaces: tuple[OvsdbInterface, ...]  # of every port of the bridge
    external_ids: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OvsdbSystem:
    """The Open_vSwitch table's one row."""

    system_id: str | None
    hostname: str | None
    ovs_version: str | None
    db_version: str | None


@dataclass(frozen=True, slots=True)
class OvsdbSnapshot:
    """A complete, consistent copy of what the exporter reads, as of one moment."""

    bridges: tuple[OvsdbBridge, ...]
    system: OvsdbSystem | None


class SchemaError(Exception):
    """The server's schema lacks a table or column the reader cannot do without."""


def check_remote(remote: str) -> str | None:
    """Why ``remote`` cannot be used as an OVSDB socket, or None when it can."""
    kind, sep, rest = remote.partition(":")
    if not sep or kind not in ("unix", "tcp"):
        return f"must be unix:PATH or tcp:HOST:PORT, got {remote!r}"
    if kind == "unix":
        if not rest:
            return "unix: needs a path"
        # sockaddr_un.sun_path holds 108 bytes with the NUL. The ovs library would work
        # around a longer path with a symlink and process-wide signal handlers; refuse instead.
        if len(os.fsencode(rest)) > 107:
            return f"unix socket path is longer than 107 bytes: {rest!r}"
    else:
        host, _, port = rest.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            return f"tcp: needs HOST:PORT, got {rest!r}"
    return None


def schema_columns(schema_json: Mapping[str, Any]) -> tuple[dict[str, list[str]], list[str]]:
    """The monitored columns the server's schema has, and the ``Table.column``s it lacks.

    Raises SchemaError when a table or column in ``REQUIRED`` is missing.
    """
    tables = schema_json.get("tables")
    if not isinstance(tables, Mapping):
        raise SchemaError("the server's schema has no tables")
    present: dict[str, list[str]] = {}
    missing: list[str] = []
    for table, columns in MONITORED.items():
        spec = tables.get(table)
        have = spec.get("columns", {}) if isinstance(spec, Mapping) else {}
        if not isinstance(have, Mapping):
            have = {}
        if not have and table in REQUIRED:
            raise SchemaError(f"the server's schema has no {table} table")
        if have:
            present[table] = [c for c in columns if c in have]
        missing.extend(f"{table}.{c}" for c in columns if c not in have)
    for table, columns in REQUIRED.items():
        for column in columns:
            if column not in present.get(table, ()):
                raise SchemaError(f"the server's schema has no {table}.{column} column")
    return present, missing


def _optional(value: Any) -> Any:
    """An optional OVSDB column (min 0, max 1) as the Idl gives it: [] or [value]."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _str_map(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def _text(value: Any) -> str | None:
    value = _optional(value)
    return value if isinstance(value, str) else None


@functools.cache
def _idl_class() -> Any:
    """The library's Idl, remembering which rows changed (its ``notify`` hook) since the last snapshot."""
    import ovs.db.idl

    class ChangeTrackingIdl(ovs.db.idl.Idl):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.changed: dict[str, set[Any]] = {}  # table name -> UUIDs of rows created, changed or deleted

        def notify(self, event: str, row: Any, updates: Any = None) -> None:
            self.changed.setdefault(row._table.name, set()).add(row.uuid)

    return ChangeTrackingIdl


def _ref_uuids(row: Any, column: str) -> tuple[Any, ...]:
    """The UUIDs a reference-set column holds (Bridge.ports, Port.interfaces).

    Reading the column as an attribute builds and sorts a Row per reference (0.1 s
    for a bridge of 10,000 ports, on every port added); the committed datum already
    holds the UUIDs. The reader never writes, so the committed data is all there is.
    """
    try:
        return tuple(atom.value for atom in row._data[column].values)
    except (AttributeError, KeyError, TypeError):  # another version of the library
        return tuple(ref.uuid for ref in getattr(row, column))


class SnapshotBuilder:
    """Copies an Idl's replica into immutable snapshots, converting only the rows that changed.

    Reading a column of an Idl row rebuilds its value each time (about 80 µs per
    interface for the columns read here, 0.8 s at 10,000), so each row's record is
    kept by UUID and rebuilt only when the Idl reports the row changed. Columns the
    schema lacks (absent from ``present``) read as absent values.
    """

    def __init__(self, present: Mapping[str, list[str]]) -> None:
        self._iface_columns = set(present.get("Interface", ()))
        self._ovs_columns = set(present.get("Open_vSwitch", ()))
        self._has_ovs_table = "Open_vSwitch" in present
        self._has_dp_type = "datapath_type" in present.get("Bridge", ())
        self._has_port_name = "name" in present.get("Port", ())
        self._has_bridge_ids = "external_ids" in present.get("Bridge", ())
        self._interfaces: dict[Any, OvsdbInterface] = {}
        self._ports: dict[Any, tuple[str, tuple[Any, ...]]] = {}  # name, interface UUIDs
        # name, datapath_type, port UUIDs, external_ids
        self._bridges: dict[Any, tuple[str, str, tuple[Any, ...], dict[str, str]]] = {}

    def snapshot(self, tables: Mapping[str, Any], changed: Mapping[str, set[Any]]) -> OvsdbSnapshot:
        """The snapshot of ``tables`` (``idl.tables``); ``changed``: table -> UUIDs changed since the last."""
        _refresh(tables["Interface"].rows, self._interfaces, changed.get("Interface", set()), self._interface)
        _refresh(tables["Port"].rows, self._ports, changed.get("Port", set()), self._port)
        _refresh(tables["Bridge"].rows, self._bridges, changed.get("Bridge", set()), self._bridge)
        bridges = []
        by_name = attrgetter("name")
        for name, datapath_type, port_uuids, bridge_ids in self._bridges.values():
            # In name order, so that a snapshot does not depend on the Idl's hash order.
            ports = sorted((self._ports[u] for u in port_uuids if u in self._ports), key=itemgetter(0))
            ifaces = []
            for _, iface_uuids in ports:
                found = [self._interfaces[u] for u in iface_uuids if u in self._interfaces]
                ifaces.extend(sorted(found, key=by_name) if len(found) > 1 else found)
            bridges.append(OvsdbBridge(name, datapath_type, tuple(ifaces), bridge_ids))
        bridges.sort(key=lambda b: b.name)
        system = None
        if self._has_ovs_table:
            for row in tables["Open_vSwitch"].rows.values():
                system = self._system(row)
                break
        return OvsdbSnapshot(tuple(bridges), system)

    def _interface(self, row: Any) -> OvsdbInterface:
        columns = self._iface_columns
        ofport = _optional(row.ofport) if "ofport" in columns else None
        options = _str_map(row.options) if "options" in columns else {}
        return OvsdbInterface(
            name=row.name,
            type=row.type if "type" in columns else "",
            ofport=ofport if isinstance(ofport, int) and not isinstance(ofport, bool) else None,
            external_ids=_str_map(row.external_ids) if "external_ids" in columns else {},
            dst_port=options.get("dst_port"),
            error=_text(row.error) if "error" in columns else None,
        )

    def _port(self, row: Any) -> tuple[str, tuple[Any, ...]]:
        name = row.name if self._has_port_name else str(row.uuid)
        return name, _ref_uuids(row, "interfaces")

    def _bridge(self, row: Any) -> tuple[str, str, tuple[Any, ...], dict[str, str]]:
        datapath_type = row.datapath_type if self._has_dp_type else ""
        external_ids = _str_map(row.external_ids) if self._has_bridge_ids else {}
        return row.name, datapath_type, _ref_uuids(row, "ports"), external_ids

    def _system(self, row: Any) -> OvsdbSystem:
        columns = self._ovs_columns
        ext = _str_map(row.external_ids) if "external_ids" in columns else {}
        return OvsdbSystem(
            system_id=ext.get("system-id"),
            hostname=ext.get("hostname"),
            ovs_version=_text(row.ovs_version) if "ovs_version" in columns else None,
            db_version=_text(row.db_version) if "db_version" in columns else None,
        )


R = TypeVar("R")


def _refresh(
    rows: Mapping[Any, Any], cache: dict[Any, R], changed: set[Any], convert: Callable[[Any], R]
) -> None:
    """Bring ``cache`` (UUID -> record) up to date with ``rows``, converting only the changed rows."""
    for uuid in changed:
        row = rows.get(uuid)
        if row is None:
            cache.pop(uuid, None)
        else:
            cache[uuid] = convert(row)
    if len(cache) != len(rows):
        # The Idl empties its tables without notifying when it reloads them: start over.
        cache.clear()
        for uuid, row in rows.items():
            cache[uuid] = convert(row)


def _describe(err: BaseException | int) -> str:
    if isinstance(err, int):
        import ovs.jsonrpc

        if err == ovs.jsonrpc.EOF:
            return "connection closed by the server"
        return f"{os.strerror(err)} (errno {err} {errno.errorcode.get(err, '?')})"
    if isinstance(err, OSError) and err.errno is not None:
        return _describe(err.errno)
    return str(err) or type(err).__name__


class OvsdbReader(Generic[T]):
    """A background thread that keeps ``current()`` equal to ``build(snapshot)`` of the live database.

    ``current()`` is None until the first complete copy, and again as soon as the
    connection is lost or the copy is being reloaded.
    """

    #: Build at most this often while the database keeps changing (seconds).
    MIN_REBUILD_INTERVAL = 1.0
    #: A connection that has not delivered a complete copy after this long is dropped and retried.
    SETTLE_TIMEOUT = 30.0

    def __init__(
        self,
        remote: str,
        build: Callable[[OvsdbSnapshot], T],
        *,
        timeout: float = 5.0,
        probe_interval: float = 5.0,
        min_backoff: float = 1.0,
        max_backoff: float = 30.0,
    ) -> None:
        self._remote = remote
        self._build = build
        self._timeout = timeout
        self._probe_ms = max(1000, int(probe_interval * 1000))
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._current: T | None = None
        self._state = "starting"
        self._last_missing: list[str] | None = None
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="ovsdb-reader", daemon=True)
        self.rebuilds = 0  # how many snapshots were built, for tests and the benchmark
        self.last_build_seconds = 0.0  # how long the last copy and build took, for the benchmark

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop the thread and close the connection (waits for the thread)."""
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def current(self) -> T | None:
        """The latest build of a complete copy, or None (never blocks)."""
        return self._current

    @property
    def state(self) -> str:
        """ "connected" with a complete copy, else what the reader is waiting for or why it failed."""
        return self._state

    # --- the thread --------------------------------------------------------------------------

    def _set_state(self, state: str, level: int = logging.INFO) -> None:
        """Log a change of state once; the same state again logs nothing."""
        if state != self._state:
            log.log(level, "ovsdb %s: %s", self._remote, state)
            self._state = state

    def _publish(self, value: T | None) -> None:
        self._current = value

    def _run(self) -> None:
        backoff = self._min_backoff
        while not self._stop.is_set():
            try:
                fresh = self._session()
            except Exception as err:  # the thread must survive any bug in a session
                log.exception("ovsdb %s: reader failed, will reconnect", self._remote)
                self._state = f"reader failed: {err}"
                fresh = False
            self._publish(None)
            if fresh:
                backoff = self._min_backoff
            if self._stop.wait(backoff):
                break
            if not fresh:
                backoff = min(backoff * 2, self._max_backoff)

    def _wait(self, poller: ovs.poller.Poller, timeout: float) -> None:
        poller.fd_wait(self._wake_r, select.POLLIN)
        poller.timer_wait(max(1, int(timeout * 1000)))
        poller.block()

    def _fetch_schema(self) -> dict[str, Any]:
        """The server's schema of the Open_vSwitch database (``get_schema``), within the timeout."""
        import ovs.jsonrpc
        import ovs.poller
        import ovs.stream

        deadline = time.monotonic() + self._timeout
        error, stream = ovs.stream.Stream.open_block(
            ovs.stream.Stream.open(self._remote), int(self._timeout * 1000)
        )
        if error:
            raise OSError(error, os.strerror(error))
        rpc = ovs.jsonrpc.Connection(stream)
        try:
            request = ovs.jsonrpc.Message.create_request("get_schema", [DATABASE])
            error = rpc.send(request)
            while not error and not self._stop.is_set():
                rpc.run()
                error, msg = rpc.recv()
                if error == errno.EAGAIN:
                    error = 0
                elif not error and msg is not None and msg.id == request.id:
                    if msg.type == ovs.jsonrpc.Message.T_ERROR:
                        raise SchemaError(f"get_schema {DATABASE} failed: {msg.error}")
                    if not isinstance(msg.result, dict):
                        raise SchemaError("get_schema returned no schema")
                    return msg.result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no reply to get_schema within {self._timeout:g} s")
                if msg is None:
                    poller = ovs.poller.Poller()
                    rpc.wait(poller)
                    rpc.recv_wait(poller)
                    self._wait(poller, remaining)
            if error:
                raise OSError(error, _describe(error))
            raise InterruptedError("stopped")
        finally:
            rpc.close()

    def _session(self) -> bool:
        """One connection, from the schema to its loss. True if it reached a complete copy."""
        import ovs.db.error
        import ovs.db.idl

        try:
            schema_json = self._fetch_schema()
            present, missing = schema_columns(schema_json)
        except InterruptedError:
            return False
        except SchemaError as err:
            self._set_state(f"unusable schema: {err}; retrying", logging.ERROR)
            return False
        except (OSError, ovs.db.error.Error, ValueError) as err:
            self._set_state(f"cannot connect: {_describe(err)}; retrying with backoff", logging.WARNING)
            return False
        if missing != self._last_missing:
            if missing:
                version = schema_json.get("version", "?")
                log.warning(
                    "ovsdb %s: schema %s has no %s; those labels are left out",
                    self._remote,
                    version,
                    ", ".join(missing),
                )
            self._last_missing = missing

        helper = ovs.db.idl.SchemaHelper(schema_json=schema_json)
        for table, columns in present.items():
            helper.register_columns(table, columns)
        # leader_only=False: reading from any member of a clustered database is fine.
        idl = _idl_class()(self._remote, helper, probe_interval=self._probe_ms, leader_only=False)
        try:
            return self._follow(idl, present)
        finally:
            idl.close()

    def _follow(self, idl: Any, present: Mapping[str, list[str]]) -> bool:
        """Run the Idl, publishing a build after each change, until the connection is lost."""
        import ovs.poller

        builder = SnapshotBuilder(present)
        started = time.monotonic()
        settling_since = started
        built_seqno = -1
        last_build = 0.0
        was_connected = False
        reached = False
        while not self._stop.is_set():
            idl.run()
            now = time.monotonic()
            # The Idl reconnects by itself; that would hide a restart. A session here is one
            # connection: when it is lost, the caller publishes None and starts over.
            connected = idl._session.is_connected()
            if was_connected and not connected:
                self._set_state("connection lost; reconnecting", logging.WARNING)
                return reached
            if not connected and now - started > self._timeout:
                self._set_state(f"cannot connect within {self._timeout:g} s; retrying", logging.WARNING)
                return reached
            was_connected = connected
            complete = connected and idl.state == idl.IDL_S_MONITORING
            timeout = 1.0
            if not complete:
                if self._current is not None:
                    # The server cancelled the monitor (e.g. the database was converted): reloading.
                    self._publish(None)
                    self._set_state("copy being reloaded", logging.WARNING)
                built_seqno = -1
                if connected and now - settling_since > self.SETTLE_TIMEOUT:
                    self._set_state(
                        f"no complete copy within {self.SETTLE_TIMEOUT:g} s; reconnecting", logging.WARNING
                    )
                    return reached
            else:
                settling_since = now
                if idl.change_seqno != built_seqno:
                    wait = last_build + self.MIN_REBUILD_INTERVAL - now
                    if wait <= 0:
                        seqno, changed, idl.changed = idl.change_seqno, idl.changed, {}
                        self._publish(self._build(builder.snapshot(idl.tables, changed)))
                        self.rebuilds += 1
                        built_seqno, last_build = seqno, time.monotonic()
                        self.last_build_seconds = last_build - now
                        reached = True
                        self._set_state("connected")
                    else:
                        timeout = wait
            poller = ovs.poller.Poller()
            idl.wait(poller)
            self._wait(poller, timeout)
        return reached
