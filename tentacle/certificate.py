"""The agent's own certificate: generation, thumbprint, and the `Tentacle.Certificate` encoding.

Why a module: the Octopus Server pins this agent by the SHA-1 thumbprint of its certificate, and
the certificate must be stored the way the real Linux Tentacle stores it so a real configuration
file can be read here. The real Tentacle generates RSA-2048, `CN=Octopus Tentacle`, valid for 100
years, and keeps it as the base64 text of a password-less PKCS#12 (PFX) export. On Linux it then
encrypts that text with the machine key (`/etc/octopus/machinekey`, `base64(key).base64(iv)`,
AES-CBC with PKCS#7 padding, result base64). We *read* both forms (plain and machine-key
encrypted) and *write* the plain base64 PFX into a 0600 file: no key file to lose, and the file
permissions are what protects the key (the machine key sits next to it on the same disk anyway).
Pure functions except `default_machine_key_paths` (reads the environment).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import functools
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from tentacle import TentacleError

SUBJECT_COMMON_NAME = "Octopus Tentacle"
KEY_SIZE = 2048
VALIDITY = datetime.timedelta(days=36525)  # 100 years, like the real Tentacle
BACKDATE = datetime.timedelta(days=1)  # tolerate clock skew between agent and server
MACHINE_KEY_FILE = "machinekey"
MACHINE_CONFIG_HOME_ENV = "TentacleMachineConfigurationHomeDirectory"
STANDARD_MACHINE_CONFIG_HOME = Path("/etc/octopus")


class CertificateError(TentacleError):
    """The stored certificate cannot be decoded (corrupt, or encrypted with a key we lack)."""


@dataclass(frozen=True)
class AgentCertificate:
    """A certificate and its private key in PEM, and the thumbprint the server pins."""

    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    thumbprint: str


def thumbprint_of_der(cert_der: bytes) -> str:
    """SHA-1 of a DER certificate, upper-case hex: what Windows calls the thumbprint."""
    return hashlib.sha1(cert_der).hexdigest().upper()


def thumbprint_of_pem(cert_pem: bytes) -> str:
    """The thumbprint of the first certificate in `cert_pem`."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return thumbprint_of_der(cert.public_bytes(serialization.Encoding.DER))


def normalize_thumbprint(text: str) -> str | None:
    """A SHA-1 thumbprint in canonical form (40 upper-case hex digits), or None if it is not one.

    Spaces and colons (as some tools print them) are ignored.
    """
    cleaned = text.strip().replace(" ", "").replace(":", "")
    if len(cleaned) != 40:
        return None
    try:
        int(cleaned, 16)
    except ValueError:
        return None
    return cleaned.upper()


def new_certificate(now: datetime.datetime | None = None) -> AgentCertificate:
    """A fresh self-signed RSA-2048 `CN=Octopus Tentacle` certificate, SHA-256, 100 years."""
    moment = now or datetime.datetime.now(datetime.UTC)
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SUBJECT_COMMON_NAME)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(moment - BACKDATE)
        .not_valid_after(moment + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return AgentCertificate(cert_pem=cert_pem, key_pem=key_pem,
                            thumbprint=thumbprint_of_der(cert.public_bytes(
                                serialization.Encoding.DER)))


# ------------------------------------------------------------------ Tentacle.Certificate value

def encode_certificate_setting(cert_pem: bytes, key_pem: bytes) -> str:
    """The `Tentacle.Certificate` value: base64 of a password-less PFX holding cert and key."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    # The key is ours (generated here, or validated when its PFX was decoded): skip the costly
    # RSA consistency check.
    key = serialization.load_pem_private_key(key_pem, password=None,
                                             unsafe_skip_rsa_key_validation=True)
    pfx = pkcs12.serialize_key_and_certificates(
        None, key, cert, None, serialization.NoEncryption())  # type: ignore[arg-type]
    return base64.b64encode(pfx).decode("ascii")


@functools.lru_cache(maxsize=16)
def _pems_from_pfx(pfx: bytes) -> AgentCertificate:
    """Decode a PFX (cached: loading validates the RSA key, ~80 ms, and one CLI command may load
    the same configuration several times)."""
    key, cert, _chain = pkcs12.load_key_and_certificates(pfx, None)
    if cert is None or key is None:
        raise CertificateError("The stored certificate has no certificate or no private key.")
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return AgentCertificate(cert_pem=cert_pem, key_pem=key_pem,
                            thumbprint=thumbprint_of_der(cert.public_bytes(
                                serialization.Encoding.DER)))


def _b64decode(text: str) -> bytes | None:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        return None


def decode_certificate_setting(
        value: str, machine_keys: Iterable[tuple[bytes, bytes]] = ()) -> AgentCertificate:
    """Read a `Tentacle.Certificate` value: plain base64 PFX, else machine-key encrypted.

    `machine_keys` are (key, iv) pairs to try, as `load_machine_key` returns them.
    """
    raw = _b64decode(value)
    if raw is None:
        raise CertificateError("The stored certificate (Tentacle.Certificate) is not base64.")
    try:
        return _pems_from_pfx(raw)
    except (ValueError, TypeError):
        pass
    for key, iv in machine_keys:
        try:
            plain = decrypt_machine_key_value(value, key, iv)
        except ValueError:
            continue
        inner = _b64decode(plain)
        if inner is None:
            continue
        try:
            return _pems_from_pfx(inner)
        except (ValueError, TypeError):
            continue
    raise CertificateError(
        "The stored certificate (Tentacle.Certificate) could not be read: it is neither a "
        "base64 PFX nor encrypted with a machine key found on this machine "
        f"({MACHINE_KEY_FILE}). Run new-certificate to replace it.")


# ------------------------------------------------------------------ the Linux machine key

def parse_machine_key(text: str) -> tuple[bytes, bytes]:
    """`base64(key).base64(iv)` → (key, iv); ValueError when malformed."""
    parts = text.strip().split(".")
    if len(parts) != 2:
        raise ValueError("a machine key is base64(key).base64(iv)")
    key, iv = _b64decode(parts[0]), _b64decode(parts[1])
    if key is None or iv is None or len(key) not in (16, 24, 32) or len(iv) != 16:
        raise ValueError("the machine key or its IV has the wrong size")
    return key, iv


def encrypt_machine_key_value(plain: str, key: bytes, iv: bytes) -> str:
    """What the real Linux Tentacle writes for a MachineKey-protected value (AES-CBC, PKCS#7)."""
    padder = padding.PKCS7(128).padder()
    data = padder.update(plain.encode("utf-8")) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return base64.b64encode(encryptor.update(data) + encryptor.finalize()).decode("ascii")


def decrypt_machine_key_value(value: str, key: bytes, iv: bytes) -> str:
    """Inverse of `encrypt_machine_key_value`; ValueError when the key does not fit."""
    raw = _b64decode(value)
    if raw is None or not raw or len(raw) % 16:
        raise ValueError("not an AES-CBC ciphertext")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    data = decryptor.update(raw) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        plain = unpadder.update(data) + unpadder.finalize()
        return plain.decode("utf-8")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("wrong machine key") from exc


def default_machine_key_paths() -> list[Path]:
    """Where the real Tentacle keeps its machine key: the relocated machine configuration home
    (`$TentacleMachineConfigurationHomeDirectory`), then `/etc/octopus`."""
    paths = []
    custom = os.environ.get(MACHINE_CONFIG_HOME_ENV, "").strip()
    if custom:
        paths.append(Path(custom) / MACHINE_KEY_FILE)
    paths.append(STANDARD_MACHINE_CONFIG_HOME / MACHINE_KEY_FILE)
    return paths


def load_machine_keys(paths: Iterable[Path]) -> list[tuple[bytes, bytes]]:
    """The readable, well-formed machine keys among `paths` (missing or unreadable are skipped)."""
    keys = []
    for path in paths:
        try:
            keys.append(parse_machine_key(path.read_text("ascii")))
        except (OSError, ValueError, UnicodeDecodeError):
            continue
    return keys
