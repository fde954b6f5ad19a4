"""Access control (exporter-toolkit web config: TLS, client certificates, basic auth) and HTTP
robustness: bad requests, idle clients, many clients. The server stays up through all of it."""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest

from exporter.collector import Collector
from exporter.config import ConfigError, Filters
from exporter.http.server import MetricsServer
from exporter.http.webconfig import WebConfig, load
from exporter.kernel.dumps import KernelSource
from tests.ovs_messages import FakeDatapath, FakeKernelSocket, FakeVport
from tests.tools import ROOT


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl."""
    d = tmp_path_factory.mktemp("pki")
    openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        str(d / "ca.key"),
        "-out",
        str(d / "ca.crt"),
    )
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        openssl(
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            str(d / f"{name}.key"),
            "-out",
            str(d / f"{name}.csr"),
        )
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl(
            "x509",
            "-req",
            "-in",
            str(d / f"{name}.csr"),
            "-CA",
            str(d / "ca.crt"),
            "-CAkey",
            str(d / "ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            str(d / f"{name}.ext"),
            "-out",
            str(d / f"{name}.crt"),
        )
    return d


def serve(web_config: WebConfig | None = None, request_timeout: float = 30.0) -> MetricsServer:
    sock = FakeKernelSocket([FakeDatapath("dp0", 3, vports=[FakeVport(1, "veth0", ifindex=4)])])
    collector = Collector(KernelSource(lambda: sock), Filters(), "test")
    server = MetricsServer("127.0.0.1", 0, "/metrics", collector, "test", web_config, request_timeout)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def plain() -> Iterator[MetricsServer]:
    server = serve(request_timeout=1.0)
    yield server
    server.shutdown()
    server.server_close()


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "web.yml"
    path.write_text(text)
    return path


def client_context(pki: Path, cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if cert:
        context.load_cert_chain(pki / "client.crt", pki / "client.key")
    return context


def https_get(server: MetricsServer, context: ssl.SSLContext, headers: dict[str, str] | None = None) -> int:
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=10)
    conn.request("GET", "/metrics", headers=headers or {})
    response = conn.getresponse()
    response.read()
    return response.status


def test_tls_serves_and_refuses_old_versions(pki: Path, tmp_path: Path) -> None:
    config = load(
        write_config(
            tmp_path,
            f"tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: {pki}/server.key\n  min_version: TLS13\n",
        )
    )
    server = serve(config)
    try:
        assert https_get(server, client_context(pki)) == 200
        old = client_context(pki)
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(ssl.SSLError):
            https_get(server, old)
        plain_conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            plain_conn.request("GET", "/metrics")
            plain_conn.getresponse()
        assert https_get(server, client_context(pki)) == 200, "still serving after bad clients"
    finally:
        server.shutdown()
        server.server_close()


def test_client_certificates_required_and_verified(pki: Path, tmp_path: Path) -> None:
    config = load(
        write_config(
            tmp_path,
            (
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
            )
            .replace("server.", f"{pki}/server.")
            .replace("ca.crt", f"{pki}/ca.crt"),
        )
    )
    server = serve(config)
    try:
        assert https_get(server, client_context(pki, cert=True)) == 200
        with pytest.raises((ssl.SSLError, ConnectionError)):
            https_get(server, client_context(pki, cert=False))
    finally:
        server.shutdown()
        server.server_close()


def test_basic_auth(tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    config = load(
        write_config(
            tmp_path,
            f"basic_auth_users:\n  prometheus: '{hashed}'\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\n",
        )
    )
    server = serve(config)

    def get(user: str | None, password: str = "") -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        headers = {}
        if user is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        conn.request("GET", "/metrics", headers=headers)
        response = conn.getresponse()
        response.read()
        return response

    try:
        refused = get(None)
        assert refused.status == 401 and "Basic" in refused.getheader("WWW-Authenticate", "")
        assert get("prometheus", "wrong").status == 401
        assert get("nobody", "s3cret").status == 401
        ok = get("prometheus", "s3cret")
        assert ok.status == 200 and ok.getheader("X-Frame-Options") == "deny"
        assert get("prometheus", "s3cret").status == 200
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "tls_server_config:\n  cert_file: /nonexistent.crt\n  key_file: /nonexistent.key\n",
            "cannot load cert_file",
        ),
        ("tls_server_config:\n  cert_file: a.crt\n", "cert_file and key_file must both be set"),
        ("tls_server_config:\n  cipher_suites: [x]\n", "tls_server_config.cipher_suites: not supported"),
        ("tls_server_config:\n  certfile: a\n", "tls_server_config.certfile: unknown key"),
        ("basic_auth_users:\n  u: plaintext\n", "basic_auth_users.u: must be a bcrypt hash"),
        ("basic_auth_users:\n  u: '$2b$10$tooshort'\n", "basic_auth_users.u: invalid bcrypt hash"),
        ("http_server_config:\n  headers:\n    Set-Cookie: x\n", "headers.Set-Cookie: not allowed"),
        ("tls_config: {}\n", "tls_config: unknown key"),
        ("basic_auth_users: [a]\n", "basic_auth_users: must be a mapping"),
    ],
)
def test_bad_web_config_is_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("$", r"\$")):
        load(write_config(tmp_path, text))


def test_bad_web_config_exits_2_with_one_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, "basic_auth_users:\n  u: plaintext\n")
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--web.config.file", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and f"web config file {path}: basic_auth_users.u" in result.stderr


def raw_request(server: MetricsServer, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and not data.startswith(b"GET /metrics"):
                break
        return b"".join(chunks)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", b"414"),
        (b"GET /metrics HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(150)) + b"\r\n", b"431"),
        (b"GET /metrics HTTP/1.1\r\nX: " + b"y" * 70000 + b"\r\n\r\n", b"431"),
        (b"BREW /metrics HTTP/1.1\r\n\r\n", b"501"),
        (b"DELETE /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b"405"),
        (b"GET /metrics HTTP/9.9\r\n\r\n", b"505"),
    ],
    ids=["garbage", "long-uri", "many-headers", "huge-header", "unknown-method", "delete", "bad-version"],
)
def test_malformed_requests_get_clean_errors(
    plain: MetricsServer, request_bytes: bytes, status: bytes
) -> None:
    reply = raw_request(plain, request_bytes)
    # A request without a valid HTTP/1.x version is answered HTTP/0.9-style: a body, no status line.
    answered = (
        reply.split(b" ", 2)[1] if reply.startswith(b"HTTP/1.") else reply.split(b"Error code: ")[1][:3]
    )
    assert answered == status, reply[:200]
    assert http_status(plain) == 200


def http_status(server: MetricsServer) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    response.read()
    return response.status


def test_idle_clients_never_block_scrapes_and_are_dropped(plain: MetricsServer) -> None:
    idle = [socket.create_connection(("127.0.0.1", plain.port), timeout=10) for _ in range(20)]
    half = socket.create_connection(("127.0.0.1", plain.port), timeout=10)
    half.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
    try:
        assert http_status(plain) == 200
        started = time.monotonic()
        assert idle[0].recv(1) == b"", "server closes an idle connection after its timeout"
        assert half.recv(65536) == b"", "and one that never finishes its request"
        assert time.monotonic() - started < 5
    finally:
        for s in [*idle, half]:
            s.close()
    assert http_status(plain) == 200


def test_many_concurrent_clients(plain: MetricsServer) -> None:
    statuses: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        for _ in range(5):
            status = http_status(plain)
            with lock:
                statuses.append(status)

    threads = [threading.Thread(target=client) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert statuses == [200] * 200
