"""The HTTP server: the metrics path, a landing page at ``/``, 404 elsewhere.

Content negotiation follows Prometheus: OpenMetrics when the ``Accept`` header
asks for it, the classic text format otherwise; gzip when ``Accept-Encoding``
allows it. Every request is answered or cleanly refused; a client that connects
and sends nothing is dropped after ``REQUEST_TIMEOUT`` and never holds up others
(each connection has its own thread).
"""

from __future__ import annotations

import html
import logging
import socket
import ssl
import struct
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

from isal import isal_zlib

from exporter.exposition import Format
from exporter.webconfig import WebConfig

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 30.0
# ISA-L's level 1 of 0-3 (its own scale, not zlib's): on a 10,000-vport body about 8x
# faster than zlib's level 1 and 10% smaller; see the README's Dependencies section.
GZIP_LEVEL = 1
# Bodies at least this large are deflated in two halves at once (see gzip_compress).
PARALLEL_GZIP_MIN = 1 << 20
# RFC 1952 header: deflate, no flags, no mtime (so equal bodies give equal bytes),
# "fastest" (XFL 4), unknown OS.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff"
# zlib's wbits convention, which isal_zlib follows: 16 + 15 a gzip member, -15 raw deflate.
_GZIP_WBITS = 16 + isal_zlib.MAX_WBITS
_RAW_DEFLATE_WBITS = -isal_zlib.MAX_WBITS


class Scraper(Protocol):
    def scrape_chunks(self, fmt: Format) -> list[bytes]: ...


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


def _deflate(parts: Sequence[memoryview | bytes], level: int, wbits: int, last: bool) -> bytes:
    compressor = isal_zlib.compressobj(level, isal_zlib.DEFLATED, wbits)
    out = [compressor.compress(part) for part in parts]
    # A sync flush ends the first half on a byte boundary, so the second half's raw deflate
    # stream can follow it directly (as pigz joins its blocks).
    out.append(compressor.flush(isal_zlib.Z_FINISH if last else isal_zlib.Z_SYNC_FLUSH))
    return b"".join(out)


def _halves(chunks: Sequence[bytes], half: int) -> tuple[list[memoryview], list[memoryview]]:
    """The chunks as two runs of views, the first holding exactly ``half`` bytes."""
    first: list[memoryview] = []
    second: list[memoryview] = []
    seen = 0
    for chunk in chunks:
        view = memoryview(chunk)
        if seen >= half:
            second.append(view)
        elif seen + len(view) <= half:
            first.append(view)
        else:
            first.append(view[: half - seen])
            second.append(view[half - seen :])
        seen += len(view)
    return first, second


def gzip_compress(chunks: Sequence[bytes], level: int = GZIP_LEVEL, parallel: bool = True) -> bytes:
    """One gzip member holding the chunks, in order, as any gzip reader expects.

    Deflate is ISA-L's (python-isal), which writes the same standard deflate
    stream as zlib, several times faster. It releases the GIL while it
    deflates, so a large body is cut in two halves deflated at the same time on
    two cores: about half the wall time, for a body a few bytes larger. The
    CRC of the whole body is computed meanwhile (also without the GIL).
    ``parallel=False`` uses one core. The chunks are fed to the compressor one by
    one, never joined into one more copy of the body.
    """
    total = sum(map(len, chunks))
    if total < PARALLEL_GZIP_MIN or not parallel:
        return _deflate(chunks, level, _GZIP_WBITS, True)
    first, second = _halves(chunks, total // 2)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gzip") as pool:
        tail = pool.submit(_deflate, second, level, _RAW_DEFLATE_WBITS, True)
        head = _deflate(first, level, _RAW_DEFLATE_WBITS, False)
        crc = 0
        for chunk in chunks:
            crc = isal_zlib.crc32(chunk, crc)
        trailer = struct.pack("<II", crc, total & 0xFFFFFFFF)
        return b"".join((_GZIP_HEADER, head, tail.result(), trailer))


def landing_page(telemetry_path: str, version: str) -> bytes:
    path = html.escape(telemetry_path)
    return (
        "<!DOCTYPE html>\n<html><head><title>OVS vport exporter</title></head><body>\n"
        "<h1>OVS vport exporter</h1>\n"
        f"<p>Prometheus metrics of the Open vSwitch kernel datapath. Version {html.escape(version)}.</p>\n"
        f'<p><a href="{path}">Metrics</a></p>\n</body></html>\n'
    ).encode()


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        # Every read and write, the TLS handshake included, gives up after the timeout:
        # a client that connects and sends nothing only ever holds its own thread.
        super().setup()
        self.connection.settimeout(self.server.request_timeout)
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _refuse_method(self) -> None:
        self._send(
            HTTPStatus.METHOD_NOT_ALLOWED,
            b"Method not allowed: use GET.\n",
            "text/plain; charset=utf-8",
            head=False,
            extra={"Allow": "GET, HEAD"},
        )

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method  # noqa: N815

    def _serve(self, head: bool) -> None:
        if not self.server.web_config.authorized(self.headers.get("Authorization")):
            self._send(
                HTTPStatus.UNAUTHORIZED,
                b"Unauthorized.\n",
                "text/plain; charset=utf-8",
                head,
                extra={"WWW-Authenticate": 'Basic realm="ovs-vport-exporter", charset="UTF-8"'},
            )
            return
        path = self.path.split("?", 1)[0]
        if path == self.server.telemetry_path:
            fmt = negotiate_format(self.headers.get("Accept"))
            compress = accepts_gzip(self.headers.get("Accept-Encoding"))
            chunks, others_waiting = self.server.render(fmt)
            # Compression runs without the GIL. Alone, a scrape deflates its body on both
            # cores; while another one renders (on one core), on the other core only.
            body = gzip_compress(chunks, parallel=not others_waiting) if compress else b"".join(chunks)
            self._send(HTTPStatus.OK, body, fmt.value, head, gzipped=compress)
        elif path == "/":
            self._send(HTTPStatus.OK, self.server.landing, "text/html; charset=utf-8", head)
        else:
            self._send(HTTPStatus.NOT_FOUND, b"Not found.\n", "text/plain; charset=utf-8", head)

    def _send(
        self,
        status: HTTPStatus,
        body: bytes,
        content_type: str,
        head: bool,
        gzipped: bool = False,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if gzipped:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Vary", "Accept, Accept-Encoding")
        for name, value in {**self.server.web_config.headers, **(extra or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base class name
        log.debug("%s - %s", self.address_string(), format % args)


class MetricsServer(ThreadingHTTPServer):
    """A threading HTTP server bound to one address, IPv4 or IPv6."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 64

    def __init__(
        self,
        host: str,
        port: int,
        telemetry_path: str,
        scraper: Scraper,
        version: str,
        web_config: WebConfig | None = None,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self.web_config = web_config or WebConfig()
        self.request_timeout = request_timeout
        self._render_lock = threading.Lock()
        self._renders_pending = 0  # metrics requests that have not finished rendering
        self._pending_lock = threading.Lock()
        self.telemetry_path = telemetry_path
        self.scraper = scraper
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

    def render(self, fmt: Format) -> tuple[list[bytes], bool]:
        """The body's chunks, encoded, and whether another request is waiting to render.

        Requests render one at a time (the kernel read, the exposition and its encoding).
        That is Python work holding the GIL, which gains nothing from overlapping; and a
        request whose system calls must win the GIL back from another busy thread waits up
        to a switch interval (5 ms) for each, so overlapping made both finish later.
        """
        with self._pending_lock:
            self._renders_pending += 1
        try:
            with self._render_lock:
                chunks = self.scraper.scrape_chunks(fmt)
        finally:
            with self._pending_lock:
                self._renders_pending -= 1
                others_waiting = self._renders_pending > 0
        return chunks, others_waiting

    def handle_error(self, request: object, client_address: object) -> None:
        """Log a failed request instead of printing a traceback to stderr; keep serving."""
        err = sys.exc_info()[1]
        if isinstance(err, (ConnectionError, TimeoutError, ssl.SSLError)):
            log.debug("client %s: %s", client_address, err)
        else:
            log.error("error serving %s", client_address, exc_info=True)

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
