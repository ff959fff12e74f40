"""Certificate trust for device calls: SHA-256 pins, and a requests adapter that enforces a pin
before anything is sent (or skips verification, when configured)."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import ssl
import threading
from functools import cache
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from faceid_core.errors import config_error
from requests.adapters import HTTPAdapter
from urllib3.util.ssl_ import create_urllib3_context

_HEX = frozenset("0123456789abcdef")


def normalize_fingerprint(text: str) -> str:
    """Lowercase hex without separators; accepts `AB:CD:..`, `ab cd ..` or plain hex."""
    digits = "".join(text.split()).replace(":", "").lower()
    if len(digits) != 64 or not set(digits) <= _HEX:
        raise config_error("A pinned certificate fingerprint must be 64 hex digits (SHA-256)")
    return digits


def display_fingerprint(hex_digits: str) -> str:
    """The `AB:CD:...` form that browsers and `openssl x509 -fingerprint` show."""
    upper = hex_digits.upper()
    return ":".join(upper[i : i + 2] for i in range(0, len(upper), 2))


def der_fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def pem_fingerprint(pem: bytes) -> str:
    certificate = x509.load_pem_x509_certificate(pem)
    return certificate.fingerprint(hashes.SHA256()).hex()


@cache
def _no_ca_context() -> ssl.SSLContext:
    """One shared context without CA validation: urllib3 would otherwise build a context and load
    the system CA store for every new connection (tens of milliseconds each)."""
    context = create_urllib3_context(cert_reqs=ssl.CERT_NONE)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class NoCaAdapter(HTTPAdapter):
    """Transport for the pinned and the insecure policies (the session sets verify=False).
    With a pin, urllib3 compares the SHA-256 of the peer's DER certificate with it right after
    the handshake and before the request line is written, so credentials never reach an
    impostor. Never retries."""

    def __init__(self, fingerprint: str | None = None) -> None:
        self.fingerprint = normalize_fingerprint(fingerprint) if fingerprint else None
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = _no_ca_context()
        if self.fingerprint is not None:
            kwargs["assert_fingerprint"] = self.fingerprint
        super().init_poolmanager(*args, **kwargs)


def peer_fingerprint(hostname: str, port: int, timeout_s: float) -> str:
    """The SHA-256 of the certificate a server presents, read without trusting or sending
    anything; it tells an administrator which fingerprint to pin. The handshake ends within
    `timeout_s` however slowly the peer sends (the socket is shut down then: OSError)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((hostname, port), timeout=timeout_s) as raw:
        deadline = threading.Timer(timeout_s, shut_down, (raw,))
        deadline.start()
        try:
            with context.wrap_socket(raw, server_hostname=hostname) as tls:
                der = tls.getpeercert(binary_form=True)
        finally:
            deadline.cancel()
    if not der:
        raise ssl.SSLError("the server presented no certificate")
    return der_fingerprint(der)


def shut_down(sock: socket.socket) -> None:
    """End a socket another thread may be blocked on. The plain socket's shutdown:
    SSLSocket.shutdown would also drop its TLS state under the feet of the thread reading."""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
