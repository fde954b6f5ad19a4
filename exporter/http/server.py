"""The HTTP server: the metrics path, a landing page at ``/``, 404 elsewhere.

Content negotiation follows Prometheus: OpenMetrics when the ``Accept`` header
asks for it, the classic text format otherwise; gzip when ``Accept-Encoding``
allows it. Bodies come from ``exporter.http.coalesce``: scrapes that arrive together
share one kernel read and one immutable encoded body.

Bounded under hostile load (docs/performance.md, "Under hostile load"):

- at most ``max_requests`` scrapes waiting for or making a body (``--web.max-requests``),
  past which a scrape gets 503 with a one-line reason; sending a body does not count;
- at most ``max_connections`` open connections, each with its own thread
  (``--web.max-connections``); a new one past the limit evicts the connection idle the
  longest (waiting for a request, even half sent) or else the one whose reader stalled
  the longest, and is refused only when every connection is busy making a response;
- a request must arrive whole within ``request_timeout`` of the wait for it starting (no
  client holds a connection by sending a byte now and then), and a response must be sent
  within ``write_timeout`` (or Prometheus's own scrape timeout, when it says one);
- ``X-Prometheus-Scrape-Timeout-Seconds`` becomes the deadline of the kernel read
  (``exporter.deadline``), so a read that cannot finish in time fails fast.

Each of these is counted in the ``ovs_exporter_http_*`` metrics (``HttpMetrics``).
"""

from __future__ import annotations

import contextlib
import html
import io
import logging
import math
import socket
import ssl
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from isal import isal_zlib

from exporter.exposition import Format, family_header, render_labels
from exporter.http.coalesce import STALLED_AFTER, Body, Coalescer, Scraper
from exporter.http.webconfig import WebConfig

log = logging.getLogger(__name__)

#: Seconds a connection may take to send a whole request, counted from when the wait for
#: it began (the connection opened, or the previous response was sent).
REQUEST_TIMEOUT = 30.0
#: Seconds a response may take to be sent, unless Prometheus's scrape timeout is shorter.
WRITE_TIMEOUT = 30.0
#: Defaults of --web.max-requests (node_exporter's) and --web.max-connections.
MAX_REQUESTS = 40
MAX_CONNECTIONS = 256
#: Taken off Prometheus's scrape timeout for the kernel read, leaving time to send the body
#: (blackbox_exporter's --timeout-offset default).
SCRAPE_TIMEOUT_OFFSET = 0.5
SCRAPE_TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"
# Bytes handed to one send(): a stalled reader never makes the loop spin, a fast one
# never waits for more than this to be taken.
_SEND_SIZE = 1 << 18
# For a client that does not take gzip: gzipped bytes inflated at a time, and the most text
# one piece may hold. A stalled reader holds one piece: 64 KiB, not a quarter of a MiB.
_INFLATE_INPUT = 1 << 13
_INFLATED_PIECE = 1 << 16
#: Each connection's kernel send buffer (the kernel doubles it). Left to autotuning, it
#: grows to tcp_wmem's 4 MiB and a stalled reader pins a whole body in kernel memory, which
#: is charged to the exporter's cgroup like its own: 256 stalled connections could hold
#: 1 GiB. At 256 KiB each, 64 MiB at most; 256 KiB in flight still carries 25 MB/s at a
#: 10 ms round trip, a 10,000-vport gzipped body in under 100 ms.
SEND_BUFFER = 1 << 17
# ISA-L's level 1 of 0-3 (its own scale, not zlib's): on a 10,000-vport body about 8x
# faster than zlib's level 1 and 10% smaller; see the README's Dependencies section.
GZIP_LEVEL = 1
# Text is deflated once this much of it is waiting (GzipStream): few enough calls into ISA-L
# that each is worth making, and little text alive at once.
GZIP_BATCH = 1 << 18
# zlib's wbits convention, which isal_zlib follows: 16 + 15 a gzip member.
_GZIP_WBITS = 16 + isal_zlib.MAX_WBITS


def negotiate_format(accept: str | None) -> Format:
    """OpenMetrics only when the client lists it (Prometheus does, first)."""
    if accept:
        for part in accept.split(","):
            media_type, _, params = part.partition(";")
            if media_type.strip().lower() == "application/openmetrics-text" and "q=0" not in params.replace(
                " ", ""
            ).split(";"):
                return Format.OPENMETRICS
    return Format.TEXT


def accepts_gzip(accept_encoding: str | None) -> bool:
    if not accept_encoding:
        return False
    for part in accept_encoding.split(","):
        coding, _, params = part.partition(";")
        if coding.strip().lower() == "gzip":
            q = params.replace(" ", "")
            return not (q.startswith("q=0") and q.strip("q=0.") == "")
    return False


class GzipStream:
    """One gzip member, deflated as the body is written: the text is let go as soon as it is in.

    Deflate is ISA-L's (python-isal), which writes the same standard deflate stream
    as zlib, several times faster. The text is deflated ``GZIP_BATCH`` bytes or more
    at a time, as the scrape writes it, so a scrape never holds more than a batch and
    the chunk being written, whatever the size of its body. (Deflating on a second
    thread while the next family is rendered was measured no faster on two cores, and
    held more: docs/performance.md.)
    """

    def __init__(self, level: int = GZIP_LEVEL) -> None:
        self._compressor = isal_zlib.compressobj(level, isal_zlib.DEFLATED, _GZIP_WBITS)
        self._gathered: list[bytes] = []
        self._gathered_size = 0
        self._out: list[bytes] = []
        self.size = 0  # of the text written so far

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self._gathered.append(chunk)
        self._gathered_size += len(chunk)
        if self._gathered_size >= GZIP_BATCH:
            self._deflate()

    def finish(self) -> bytes:
        """The whole gzip member (header, deflate stream, CRC and size trailer)."""
        self._deflate()
        self._out.append(self._compressor.flush(isal_zlib.Z_FINISH))
        out, self._out = self._out, []
        return b"".join(out)

    def _deflate(self) -> None:
        self._out.extend([self._compressor.compress(chunk) for chunk in self._gathered])
        self._gathered, self._gathered_size = [], 0


def gzip_compress(chunks: Iterable[bytes], level: int = GZIP_LEVEL) -> bytes:
    """One gzip member holding the chunks, in order, as any gzip reader expects (``GzipStream``)."""
    stream = GzipStream(level)
    for chunk in chunks:
        stream.write(chunk)
    return stream.finish()


def landing_page(telemetry_path: str, version: str) -> bytes:
    path = html.escape(telemetry_path)
    return (
        "<!DOCTYPE html>\n<html><head><title>OVS vport exporter</title></head><body>\n"
        "<h1>OVS vport exporter</h1>\n"
        f"<p>Prometheus metrics of the Open vSwitch kernel datapath. Version {html.escape(version)}.</p>\n"
        f'<p><a href="{path}">Metrics</a></p>\n</body></html>\n'
    ).encode()


def scrape_timeout(value: str | None) -> float | None:
    """Prometheus's scrape timeout from its header, in seconds; None if absent or malformed."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def read_budget(timeout: float) -> float:
    """How much of a scrape timeout the kernel read may use: the rest sends the body."""
    return max(timeout - SCRAPE_TIMEOUT_OFFSET, timeout / 2)


#: Why the exporter closed a connection before its client did (the ``reason`` label).
DROP_REASONS = ("refused", "evicted", "write_timeout", "superseded")


class HttpMetrics:
    """The HTTP side's own metrics, in promhttp's spirit, rendered into every scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # promhttp starts its request counter with these codes, so rate() has a series
        # from the start.
        self._requests: Counter[int] = Counter({200: 0, 500: 0, 503: 0})
        self._dropped: Counter[str] = Counter(dict.fromkeys(DROP_REASONS, 0))
        self.connections = 0
        self.coalescer: Coalescer | None = None  # set by the server it belongs to

    def answered(self, code: int) -> None:
        with self._lock:
            self._requests[int(code)] += 1

    def dropped(self, reason: str) -> None:
        with self._lock:
            self._dropped[reason] += 1

    def dropped_count(self, reason: str) -> int:
        return self._dropped[reason]

    def render(self, fmt: Format) -> list[str]:
        with self._lock:
            requests = sorted(self._requests.items())
            dropped = sorted(self._dropped.items())
            connections = self.connections
        coalescer = self.coalescer
        in_flight = coalescer.in_flight if coalescer is not None else 0
        renders = coalescer.renders if coalescer is not None else 0
        return [
            family_header(
                "ovs_exporter_http_requests_in_flight",
                "gauge",
                "Scrapes waiting for or making a body, what --web.max-requests bounds (this one included).",
                fmt,
            )
            + f"ovs_exporter_http_requests_in_flight {in_flight}\n",
            family_header(
                "ovs_exporter_http_requests",
                "counter",
                "Requests to the metrics path, by HTTP status code (503: over --web.max-requests).",
                fmt,
            )
            + "".join(
                f"ovs_exporter_http_requests_total{render_labels([('code', str(code))])} {count}\n"
                for code, count in requests
            ),
            family_header(
                "ovs_exporter_http_renders",
                "counter",
                "Kernel reads and renderings made for the metrics path; scrapes arriving together share one.",
                fmt,
            )
            + f"ovs_exporter_http_renders_total {renders}\n",
            family_header(
                "ovs_exporter_http_connections",
                "gauge",
                "Open HTTP connections, at most --web.max-connections.",
                fmt,
            )
            + f"ovs_exporter_http_connections {connections}\n",
            family_header(
                "ovs_exporter_http_connections_dropped",
                "counter",
                "Connections the exporter closed before the client did, by reason.",
                fmt,
            )
            + "".join(
                f"ovs_exporter_http_connections_dropped_total{render_labels([('reason', reason)])} {count}\n"
                for reason, count in dropped
            ),
        ]


def _inflated(gzipped: bytes) -> Iterator[bytes]:
    """The body inflated piece by piece, each at most _INFLATED_PIECE: what a reader holds at a time."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    view = memoryview(gzipped)
    for start in range(0, len(view), _INFLATE_INPUT):
        piece = inflater.decompress(view[start : start + _INFLATE_INPUT], _INFLATED_PIECE)
        while piece:
            yield piece
            piece = inflater.decompress(inflater.unconsumed_tail, _INFLATED_PIECE)
    yield inflater.flush()


class _Connection:
    """One open connection: what it is doing, since when, and how to cut it off."""

    __slots__ = ("_cut", "read_deadline", "since", "sock", "state")

    def __init__(self, sock: socket.socket, request_timeout: float) -> None:
        self.sock = sock
        self._cut = False
        self.idle(request_timeout)

    def idle(self, request_timeout: float) -> None:
        """Waiting for a request (a new connection, or between requests): evictable."""
        self.state = "idle"
        self.since = time.monotonic()
        self.read_deadline = self.since + request_timeout

    def busy(self) -> None:
        """Making a response: never evicted (--web.max-requests and the deadlines bound it)."""
        self.state = "busy"

    def sending(self) -> None:
        """Sending a body; ``since`` is when the reader last took some of it."""
        self.state = "sending"
        self.since = time.monotonic()

    def shut(self) -> bool:
        """Shut the socket down (the connection's thread sees it at its next read or write).

        socket.socket's own shutdown, also for a TLS socket: SSLSocket.shutdown would drop
        the TLS state under the thread still using it. False if already cut.
        """
        if self._cut:
            return False
        self._cut = True
        with contextlib.suppress(OSError):  # already closed by the client
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
        return True


class _DeadlineReader(io.RawIOBase):
    """The connection's reads, all bounded by one deadline for the whole request.

    A socket timeout bounds each read alone: a client sending a byte every few seconds
    would hold its connection forever. Here every read waits only for what is left.
    """

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._conn.read_deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")
        self._conn.sock.settimeout(left)
        return self._conn.sock.recv_into(buffer)


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        # Every read, the TLS handshake included, gives up at the request's deadline: a
        # client that connects and sends nothing only ever holds its own thread.
        super().setup()
        self.conn = self.server.connection_of(self.request)
        self.rfile.close()
        self.rfile = io.BufferedReader(_DeadlineReader(self.conn))
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.settimeout(max(self.conn.read_deadline - time.monotonic(), 0.001))
            self.connection.do_handshake()

    def handle_one_request(self) -> None:
        self.conn.idle(self.server.request_timeout)
        super().handle_one_request()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.forget(self.request)

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _refuse_method(self) -> None:
        self.conn.busy()
        self._send(
            HTTPStatus.METHOD_NOT_ALLOWED,
            b"Method not allowed: use GET.\n",
            "text/plain; charset=utf-8",
            head=False,
            extra={"Allow": "GET, HEAD"},
        )

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method  # noqa: N815

    def _serve(self, head: bool) -> None:
        self.conn.busy()
        arrived = time.monotonic()
        path = self.path.split("?", 1)[0]
        metrics = self.server.metrics if path == self.server.telemetry_path else None
        if not self.server.web_config.authorized(self.headers.get("Authorization")):
            if metrics is not None:
                metrics.answered(HTTPStatus.UNAUTHORIZED)
            self._send(
                HTTPStatus.UNAUTHORIZED,
                b"Unauthorized.\n",
                "text/plain; charset=utf-8",
                head,
                extra={"WWW-Authenticate": 'Basic realm="ovs-vport-exporter", charset="UTF-8"'},
            )
            return
        if metrics is not None:
            self._serve_metrics(head, arrived, metrics)
        elif path == "/":
            self._send(HTTPStatus.OK, self.server.landing, "text/html; charset=utf-8", head)
        else:
            self._send(HTTPStatus.NOT_FOUND, b"Not found.\n", "text/plain; charset=utf-8", head)

    def _serve_metrics(self, head: bool, arrived: float, metrics: HttpMetrics) -> None:
        fmt = negotiate_format(self.headers.get("Accept"))
        compress = accepts_gzip(self.headers.get("Accept-Encoding"))
        timeout = scrape_timeout(self.headers.get(SCRAPE_TIMEOUT_HEADER))
        read_deadline = None if timeout is None else arrived + read_budget(timeout)
        try:
            body = self.server.coalescer.body(fmt, read_deadline)
        except Exception:
            metrics.answered(HTTPStatus.INTERNAL_SERVER_ERROR)
            raise
        if body is None:
            metrics.answered(HTTPStatus.SERVICE_UNAVAILABLE)
            limit = self.server.coalescer.max_in_flight
            self._send(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"Too many scrapes in flight (--web.max-requests {limit}), try again later.\n".encode(),
                "text/plain; charset=utf-8",
                head,
            )
            return
        metrics.answered(HTTPStatus.OK)
        write_deadline = time.monotonic() + self.server.write_timeout
        if timeout is not None:
            # Prometheus gives up then: sending any longer is wasted.
            write_deadline = min(write_deadline, arrived + timeout)
        self._send(HTTPStatus.OK, body, fmt.value, head, deadline=write_deadline, gzip_ok=compress)

    def _send(
        self,
        status: HTTPStatus,
        body: bytes | Body,
        content_type: str,
        head: bool,
        extra: dict[str, str] | None = None,
        deadline: float | None = None,
        gzip_ok: bool = False,
    ) -> None:
        if deadline is None:
            deadline = time.monotonic() + self.server.write_timeout
        if isinstance(body, Body):
            shared: Body | None = body
            size = len(body.gzipped) if gzip_ok else body.size
        else:
            shared, size = None, len(body)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(size))
        if shared is not None and gzip_ok:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Vary", "Accept, Accept-Encoding")
        for name, value in {**self.server.web_config.headers, **(extra or {})}.items():
            self.send_header(name, value)
        self.connection.settimeout(max(deadline - time.monotonic(), 0.001))
        self.end_headers()
        if head:
            return
        if shared is None:
            assert isinstance(body, bytes)
            self._write((body,), deadline)
            return
        shared.attach(self)
        try:
            self._write((shared.gzipped,) if gzip_ok else _inflated(shared.gzipped), deadline)
        finally:
            shared.detach(self)

    def _write(self, chunks: Iterable[bytes], deadline: float) -> None:
        """Send the chunks by the deadline, noting each time the reader takes some."""
        self.conn.sending()
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                try:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError("the response was not taken in time")
                    self.connection.settimeout(left)
                    sent = self.connection.send(view[:_SEND_SIZE])
                except TimeoutError:
                    self.server.metrics.dropped("write_timeout")
                    self.close_connection = True
                    raise
                self.conn.sending()
                view = view[sent:]

    def stalled_for(self) -> float:
        return time.monotonic() - self.conn.since

    def cut(self, reason: str) -> None:
        """Called by the coalescer: this reader's body is being let go."""
        if self.conn.shut():
            self.server.metrics.dropped(reason)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base class name
        log.debug("%s - %s", self.address_string(), format % args)


class MetricsServer(ThreadingHTTPServer):
    """A threading HTTP server bound to one address, IPv4 or IPv6, with bounded connections."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(
        self,
        host: str,
        port: int,
        telemetry_path: str,
        scraper: Scraper,
        version: str,
        web_config: WebConfig | None = None,
        request_timeout: float = REQUEST_TIMEOUT,
        *,
        max_requests: int = MAX_REQUESTS,
        max_connections: int = MAX_CONNECTIONS,
        write_timeout: float = WRITE_TIMEOUT,
        metrics: HttpMetrics | None = None,
    ) -> None:
        self.web_config = web_config or WebConfig()
        self.request_timeout = request_timeout
        self.write_timeout = write_timeout
        self.max_connections = max_connections
        self.metrics = metrics or HttpMetrics()
        self.coalescer = Coalescer(scraper, GzipStream, max_requests)
        self.metrics.coalescer = self.coalescer
        self._connections: dict[socket.socket, _Connection] = {}
        self._connections_lock = threading.Lock()
        self.telemetry_path = telemetry_path
        self.landing = landing_page(telemetry_path, version)
        family, address = _bind_address(host, port)
        self.address_family = family
        super().__init__(address, _Handler, bind_and_activate=False)
        try:
            if family == socket.AF_INET6 and not host:
                # ":port" means every address, IPv4 included, as in Go exporters.
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            self.server_bind()
            if self.web_config.ssl_context is not None:
                # The handshake happens in the connection's own thread (see _Handler.setup),
                # so a slow or silent client never holds up accept().
                self.socket = self.web_config.ssl_context.wrap_socket(
                    self.socket, server_side=True, do_handshake_on_connect=False
                )
            self.server_activate()
        except BaseException:
            self.server_close()
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        """Admit the connection (evicting one if at the limit) and give it its thread."""
        if not self._admit(request):
            self.metrics.dropped("refused")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.forget(request)  # no thread (out of threads?): serve_forever closes it
            raise

    def _admit(self, sock: socket.socket) -> bool:
        with self._connections_lock:
            if 0 < self.max_connections <= len(self._connections):
                victim = self._victim()
                if victim is None:
                    return False
                del self._connections[victim.sock]
                if victim.shut():
                    self.metrics.dropped("evicted")
            self._connections[sock] = _Connection(sock, self.request_timeout)
            self.metrics.connections = len(self._connections)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        return True

    def _victim(self) -> _Connection | None:
        """The connection idle the longest, else the one stalled the longest, else none."""
        idle = [c for c in self._connections.values() if c.state == "idle"]
        if idle:
            return min(idle, key=lambda c: c.since)
        stalled_since = time.monotonic() - STALLED_AFTER
        stalled = [c for c in self._connections.values() if c.state == "sending" and c.since < stalled_since]
        return min(stalled, key=lambda c: c.since) if stalled else None

    def connection_of(self, sock: socket.socket) -> _Connection:
        with self._connections_lock:
            conn = self._connections.get(sock)
        # Evicted before its thread started: a record of its own, already shut.
        return conn if conn is not None else _Connection(sock, 0.0)

    def forget(self, sock: socket.socket) -> None:
        with self._connections_lock:
            self._connections.pop(sock, None)
            self.metrics.connections = len(self._connections)

    def handle_error(self, request: object, client_address: object) -> None:
        """Log a failed request instead of printing a traceback to stderr; keep serving."""
        err = sys.exc_info()[1]
        if isinstance(err, (ConnectionError, TimeoutError, ssl.SSLError)):
            log.debug("client %s: %s", client_address, err)
        else:
            log.error("error serving %s", client_address, exc_info=True)

    def server_close(self) -> None:
        super().server_close()
        self.coalescer.close()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


def _bind_address(host: str, port: int) -> tuple[socket.AddressFamily, tuple[str, int]]:
    if not host:
        if socket.has_ipv6:
            try:
                socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
                return socket.AF_INET6, ("::", port)
            except OSError:
                pass
        return socket.AF_INET, ("0.0.0.0", port)
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = info[0]
    return family, (str(sockaddr[0]), port)
