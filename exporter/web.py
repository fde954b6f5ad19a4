"""The HTTP server: the metrics path, a landing page at ``/``, 404 elsewhere.

Content negotiation follows Prometheus: OpenMetrics when the ``Accept`` header
asks for it, the classic text format otherwise; gzip when ``Accept-Encoding``
allows it. Every request is answered or cleanly refused; a client that connects
and sends nothing is dropped after ``REQUEST_TIMEOUT`` and never holds up others
(each connection has its own thread).
"""

from __future__ import annotations

import gzip
import html
import logging
import socket
import ssl
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

from exporter.exposition import Format
from exporter.webconfig import WebConfig

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 30.0
# Level 1, not zlib's 9 (prometheus_client's choice): ~10x faster on a multi-megabyte
# body, for a body about 25% larger.
GZIP_LEVEL = 1


class Scraper(Protocol):
    def scrape(self, fmt: Format) -> str: ...


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
            body = self.server.scraper.scrape(fmt).encode("utf-8")
            self._send(
                HTTPStatus.OK,
                body,
                fmt.value,
                head,
                compress=accepts_gzip(self.headers.get("Accept-Encoding")),
            )
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
        compress: bool = False,
        extra: dict[str, str] | None = None,
    ) -> None:
        if compress:
            body = gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if compress:
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
