"""Throwaway certificates for tests: self-signed RSA-2048 and ECDSA P-256, server or client, with SAN.

Why a helper: TLS tests need real certificates (including expired ones, which a client may still
present) and nothing here may depend on files outside the tree. Generation is cached per argument
set, so a test run pays for each RSA key once.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyType = Literal["rsa", "ec"]


@dataclass(frozen=True)
class TestCertificate:
    """A certificate and its key in PEM, plus what tests compare against."""

    __test__ = False  # not a pytest test class

    cert_pem: bytes
    key_pem: bytes
    cert_der: bytes

    @property
    def thumbprint(self) -> str:
        """SHA-1 of the DER, upper-case hex: what `netsh http add sslcert certhash=` takes."""
        return hashlib.sha1(self.cert_der).hexdigest().upper()

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Write `<stem>.crt` and `<stem>.key` into `directory` (for openssl and curl)."""
        cert_path = directory / f"{stem}.crt"
        key_path = directory / f"{stem}.key"
        cert_path.write_bytes(self.cert_pem)
        key_path.write_bytes(self.key_pem)
        return cert_path, key_path


@functools.lru_cache(maxsize=None)
def make_certificate(
    common_name: str,
    *,
    key_type: KeyType = "rsa",
    sans: tuple[str, ...] = (),
    client: bool = False,
    expired: bool = False,
) -> TestCertificate:
    """A self-signed certificate for `common_name`.

    `sans` holds DNS names and IP literals; when empty, the common name is the only DNS SAN.
    `client` sets the clientAuth extended key usage instead of serverAuth. `expired` makes a
    certificate whose validity ended yesterday.
    """
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if key_type == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    if expired:
        not_before, not_after = now - datetime.timedelta(days=30), now - datetime.timedelta(days=1)
    else:
        not_before, not_after = now - datetime.timedelta(days=1), now + datetime.timedelta(days=30)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    alt_names: list[x509.GeneralName] = []
    for entry in sans or (common_name,):
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(entry)))
        except ValueError:
            alt_names.append(x509.DNSName(entry))
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return TestCertificate(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key_pem,
        cert_der=cert.public_bytes(serialization.Encoding.DER),
    )
