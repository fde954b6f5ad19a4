"""Access control in the Prometheus ecosystem's own format: the exporter-toolkit web config.

``--web.config.file`` takes the same YAML as node_exporter and every exporter
built on prometheus/exporter-toolkit: ``tls_server_config`` (certificate, key,
client CA and client-auth mode, TLS versions), ``basic_auth_users`` (bcrypt
hashes) and ``http_server_config.headers``. Everything is checked at start; a
setting this exporter cannot honour is refused, never silently ignored.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt

from exporter.config import ConfigError, check_keys, mapping, parse_yaml

_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# exporter-toolkit's client_auth_type values that Python's ssl module can honour.
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_UNSUPPORTED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert")
_TLS_KEYS = ("cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version")
# Keys of the format this exporter does not implement: refused with a clear message.
_TLS_UNSUPPORTED = ("cert", "key", "client_ca", "cipher_suites", "curve_preferences",
                    "prefer_server_cipher_suites", "client_allowed_sans")  # fmt: skip
_TOP_KEYS = ("tls_server_config", "basic_auth_users", "http_server_config")
# http2 is accepted for portability of configs; this server speaks HTTP/1.1 only,
# which is what Prometheus uses for scrapes anyway.
_HTTP_KEYS = ("headers", "http2")
# Headers exporter-toolkit allows to be set; the same list keeps configs portable.
_ALLOWED_HEADERS = (
    "Cache-Control",
    "Content-Security-Policy",
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-XSS-Protection",
)


@functools.cache
def _dummy_hash() -> bytes:
    """A hash no password matches, checked for unknown users so that a wrong user name costs
    the same time as a wrong password (no user enumeration by timing). Made once, when a file
    with users is loaded: at import it would cost every start ~0.1 s (seconds under emulation)."""
    return bcrypt.hashpw(b"not a password", bcrypt.gensalt(rounds=10))


@dataclass(frozen=True)
class WebConfig:
    """What the web config file asks for; the default is plain HTTP without auth."""

    ssl_context: ssl.SSLContext | None = None
    basic_auth_users: Mapping[str, bytes] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    _verified: dict[tuple[str, bytes], bool] = field(default_factory=dict, compare=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def authorized(self, authorization: str | None) -> bool:
        """Check an ``Authorization`` header against ``basic_auth_users``."""
        if not self.basic_auth_users:
            return True
        if not authorization or not authorization.startswith("Basic "):
            return False
        try:
            decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        if not sep:
            return False
        # bcrypt is slow by design (~50-250 ms); remember successful checks, keyed by a
        # digest of the password so the cache holds no password.
        key = (user, hashlib.sha256(password.encode()).digest())
        with self._lock:
            if self._verified.get(key):
                return True
        stored = self.basic_auth_users.get(user)
        ok = bcrypt.checkpw(password.encode(), stored if stored is not None else _dummy_hash())
        ok = ok and stored is not None
        if ok:
            with self._lock:
                if len(self._verified) > 1024:
                    self._verified.clear()
                self._verified[key] = True
        return ok


def _path(section: Mapping[str, Any], key: str, where: str, base: Path) -> Path | None:
    value = section.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where}.{key}: must be a string")
    path = Path(value)
    return path if path.is_absolute() else base / path


def _tls_context(section: Mapping[str, Any], base: Path) -> ssl.SSLContext | None:
    where = "tls_server_config"
    for name in section:
        if name in _TLS_UNSUPPORTED:
            raise ConfigError(f"{where}.{name}: not supported by this exporter")
    check_keys(section, _TLS_KEYS, where)
    cert = _path(section, "cert_file", where, base)
    key = _path(section, "key_file", where, base)
    if cert is None and key is None and not section:
        return None
    if cert is None or key is None:
        raise ConfigError(f"{where}: cert_file and key_file must both be set")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"{where}: cannot load cert_file {cert} / key_file {key}: {err}") from None

    versions: dict[str, ssl.TLSVersion] = {}
    for bound in ("min_version", "max_version"):
        value = section.get(bound)
        if value is not None:
            if value not in _TLS_VERSIONS:
                raise ConfigError(
                    f"{where}.{bound}: must be one of {', '.join(_TLS_VERSIONS)}, got {value!r}"
                )
            versions[bound] = _TLS_VERSIONS[value]
    # exporter-toolkit's default minimum is TLS 1.2.
    context.minimum_version = versions.get("min_version", ssl.TLSVersion.TLSv1_2)
    if "max_version" in versions:
        context.maximum_version = versions["max_version"]

    auth = section.get("client_auth_type", "NoClientCert")
    if auth in _UNSUPPORTED_CLIENT_AUTH:
        raise ConfigError(
            f"{where}.client_auth_type: {auth} is not supported; use VerifyClientCertIfGiven or"
            " RequireAndVerifyClientCert"
        )
    if auth not in _CLIENT_AUTH:
        raise ConfigError(f"{where}.client_auth_type: must be one of {', '.join(_CLIENT_AUTH)}, got {auth!r}")
    client_ca = _path(section, "client_ca_file", where, base)
    if _CLIENT_AUTH[auth] != ssl.CERT_NONE:
        if client_ca is None:
            raise ConfigError(f"{where}.client_ca_file: required when client_auth_type is {auth}")
        try:
            context.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(f"{where}.client_ca_file: cannot load {client_ca}: {err}") from None
    elif client_ca is not None:
        raise ConfigError(f"{where}.client_ca_file: set, but client_auth_type is {auth}")
    context.verify_mode = _CLIENT_AUTH[auth]
    return context


def _users(section: Mapping[str, Any]) -> dict[str, bytes]:
    users: dict[str, bytes] = {}
    for user, hashed in section.items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise ConfigError(f"basic_auth_users.{user}: must be a bcrypt hash ($2a$, $2b$ or $2y$)")
        try:
            bcrypt.checkpw(b"", hashed.encode())
        except ValueError as err:
            raise ConfigError(f"basic_auth_users.{user}: invalid bcrypt hash: {err}") from None
        users[user] = hashed.encode()
    if users:
        _dummy_hash()
    return users


def _headers(section: Mapping[str, Any]) -> dict[str, str]:
    check_keys(section, _HTTP_KEYS, "http_server_config")
    headers = mapping(section.get("headers"), "http_server_config.headers")
    for name, value in headers.items():
        if name not in _ALLOWED_HEADERS:
            raise ConfigError(
                f"http_server_config.headers.{name}: not allowed (allowed: {', '.join(_ALLOWED_HEADERS)})"
            )
        if not isinstance(value, str) or "\n" in value or "\r" in value:
            raise ConfigError(f"http_server_config.headers.{name}: must be a one-line string")
    return dict(headers)


def load(path: Path) -> WebConfig:
    """Read and check a web config file; relative paths in it are relative to the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read: {err.strerror}") from None
    top = mapping(parse_yaml(text), "top level")
    check_keys(top, _TOP_KEYS, "")
    base = path.resolve().parent
    return WebConfig(
        ssl_context=_tls_context(mapping(top.get("tls_server_config"), "tls_server_config"), base),
        basic_auth_users=_users(mapping(top.get("basic_auth_users"), "basic_auth_users")),
        headers=_headers(mapping(top.get("http_server_config"), "http_server_config")),
    )
