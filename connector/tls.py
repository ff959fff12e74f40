"""Certificate trust for device calls: SHA-256 pins, a requests adapter that enforces a pin before
anything is sent (or skips verification, when configured), and the self-signed identity a
simulated device (or a demo) serves with."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import socket
import ssl
from collections.abc import Iterable
from functools import cache
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from faceverify.errors import config_error
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
    anything; it tells an administrator which fingerprint to pin."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((hostname, port), timeout=timeout_s) as raw,
        context.wrap_socket(raw, server_hostname=hostname) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise ssl.SSLError("the server presented no certificate")
    return der_fingerprint(der)


def self_signed_identity(hosts: Iterable[str], days: int = 30) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM) for a self-signed P-256 certificate naming `hosts`
    (IP addresses and DNS names). It is its own CA, so its PEM works as a CA bundle."""
    names = list(hosts)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    alt_names: list[x509.GeneralName] = []
    for name in names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt_names.append(x509.DNSName(name))
    now = datetime.datetime.now(datetime.UTC)
    public_key = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem
