"""The certificate store, our `Cert:\\LocalMachine\\<Store>`: PEM files under `<state>/certs/`.

Layout: `<state>/certs/<STORE>/<THUMBPRINT>.pem` (the certificate, then any chain) and
`<THUMBPRINT>.key` (PKCS#8 private key, mode 0600, written atomically). Store names match
case-insensitively and are kept upper-cased (`My` → `MY`). A thumbprint is the SHA-1 of the DER
certificate as 40 upper-case hex digits, the value `netsh http add sslcert certhash=` takes.

Thumbprint look-ups forgive what people paste from Windows' certificate dialog or from openssl:
case, spaces, colons, and invisible Unicode format characters (the U+200E LEFT-TO-RIGHT MARK
that the Windows certificate viewer puts in front of the thumbprint, zero-width spaces, BOM) are
removed before the 40 hex digits are checked.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from httpsys_emu.atomic import remove_durably, write_atomic
from httpsys_emu.winerror import (ERROR_ACCESS_DENIED, ERROR_FILE_NOT_FOUND,
                                  ERROR_NO_SUCH_LOGON_SESSION,
                                  ERROR_INVALID_PARAMETER, WinError)

CERTS_DIR = "certs"
DEFAULT_STORE = "MY"
KEY_TYPES = ("rsa2048", "ecdsa-p256")
DEFAULT_DAYS = 365
MAX_DAYS = 36500
BACKDATE = dt.timedelta(minutes=10)  # New-SelfSignedCertificate's NotBefore is "now - 10 min"

_STORE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_HEX40_RE = re.compile(r"[0-9A-F]{40}")
_HOSTNAME_RE = re.compile(
    r"(\*\.)?([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}"
    r"[A-Za-z0-9_])?)*")

PrivateKey = (rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
              | ed448.Ed448PrivateKey)


def _bad(detail: str) -> WinError:
    return WinError(ERROR_INVALID_PARAMETER, detail)


def normalize_thumbprint(text: str) -> str:
    """40 upper-case hex digits from a pasted thumbprint; WinError 87 if it is not one.

    Removed first: whitespace, `:` separators and Unicode format characters (category Cf:
    U+200E LRM, U+200B ZWSP, U+FEFF BOM, ...).
    """
    cleaned = "".join(ch for ch in text
                      if not (ch.isspace() or ch == ":" or unicodedata.category(ch) == "Cf"))
    upper = cleaned.upper()
    if not _HEX40_RE.fullmatch(upper):
        raise _bad(f"{text!r} is not a SHA-1 thumbprint (40 hex digits)")
    return upper


def normalize_store_name(name: str) -> str:
    """Upper-cased store name; 87 for anything that is not a plain folder name."""
    if not _STORE_RE.fullmatch(name) or name in (".", ".."):
        raise _bad(f"invalid certificate store name {name!r}")
    return name.upper()


# ----------------------------------------------------------------------------- subjects

_ATTRIBUTES = {
    "CN": NameOID.COMMON_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "L": NameOID.LOCALITY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "S": NameOID.STATE_OR_PROVINCE_NAME,   # Windows' spelling of ST
    "C": NameOID.COUNTRY_NAME,
}


def _split_unescaped(text: str, separator: str) -> list[str]:
    """Split on `separator` outside double quotes and not preceded by a backslash."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            current.append(text[i:i + 2])
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        if ch == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    if quoted:
        raise _bad(f"unterminated quote in {text!r}")
    parts.append("".join(current))
    return parts


def _unescape_value(raw: str) -> str:
    value = raw.strip()
    if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
        value = value[1:-1]
    out: list[str] = []
    i = 0
    while i < len(value):
        if value[i] == "\\":
            if i + 1 >= len(value):
                raise _bad(f"dangling backslash in {raw!r}")
            out.append(value[i + 1])
            i += 2
        elif value[i] == '"':
            raise _bad(f"stray quote in {raw!r}")
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def parse_subject(text: str) -> x509.Name:
    """An RFC 4514-ish distinguished name, as `New-SelfSignedCertificate -Subject` takes it.

    `CN=Example Website, O=Octopus, C=AU`; attributes CN, O, OU, L, ST (or S), C; values may be
    double-quoted or use backslash escapes; a text with no `=` is a bare common name. The name
    is encoded so that `rfc4514_string()` gives back the order written. WinError 87 otherwise.
    """
    stripped = text.strip()
    if not stripped:
        raise _bad("empty subject")
    if "=" not in stripped:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, stripped)])
    attributes: list[x509.NameAttribute[str]] = []
    for part in _split_unescaped(stripped, ","):
        name, sep, raw_value = part.partition("=")
        if not sep:
            raise _bad(f"{part.strip()!r} is not NAME=VALUE")
        oid = _ATTRIBUTES.get(name.strip().upper())
        if oid is None:
            raise _bad(f"unsupported attribute {name.strip()!r} (use CN, O, OU, L, ST, C)")
        value = _unescape_value(raw_value)
        if not value:
            raise _bad(f"empty value for {name.strip()}")
        if oid == NameOID.COUNTRY_NAME and not (len(value) == 2 and value.isascii()
                                                 and value.isalpha()):
            raise _bad(f"country {value!r} must be a two-letter code")
        if len(value) > 64 and oid != NameOID.COMMON_NAME:
            raise _bad(f"value of {name.strip()} longer than 64 characters")
        attributes.append(x509.NameAttribute(oid, value))
    return x509.Name(list(reversed(attributes)))


def format_subject(name: x509.Name) -> str:
    """The subject as Windows and RFC 4514 write it: `CN=Example Website, O=Octopus`."""
    return ", ".join(rdn.rfc4514_string() for rdn in reversed(name.rdns))


def _common_name(name: x509.Name) -> str | None:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else None


def _looks_like_host(text: str) -> bool:
    return len(text) <= 253 and bool(_HOSTNAME_RE.fullmatch(text))


# ----------------------------------------------------------------------------- CertInfo

@dataclass(frozen=True)
class CertInfo:
    """What `cert list` shows about one certificate in one store."""

    thumbprint: str
    subject: str
    issuer: str
    not_before: dt.datetime
    not_after: dt.datetime
    store: str
    has_private_key: bool
    dns_names: tuple[str, ...]
    key_type: str
    serial_number: str

    @property
    def is_self_signed(self) -> bool:
        return self.subject == self.issuer


def thumbprint_of(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 - identity, not security


def _key_type(public_key: object) -> str:
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"rsa{public_key.key_size}"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        names = {"secp256r1": "p256", "secp384r1": "p384", "secp521r1": "p521"}
        return f"ecdsa-{names.get(public_key.curve.name, public_key.curve.name)}"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(public_key, ed448.Ed448PublicKey):
        return "ed448"
    return "unknown"


def _subject_alt_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return tuple(names)


def _cert_info(cert: x509.Certificate, store: str, has_key: bool) -> CertInfo:
    return CertInfo(
        thumbprint=thumbprint_of(cert),
        subject=format_subject(cert.subject),
        issuer=format_subject(cert.issuer),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        store=store,
        has_private_key=has_key,
        dns_names=_subject_alt_names(cert),
        key_type=_key_type(cert.public_key()),
        serial_number=format(cert.serial_number, "X"),
    )


def _public_bytes(key: Any) -> bytes:
    return bytes(key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo))


def _check_key_matches(cert: x509.Certificate, key: PrivateKey) -> None:
    if _public_bytes(key.public_key()) != _public_bytes(cert.public_key()):
        raise _bad("the private key does not belong to the certificate")


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _chain_pem(chain: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)


def _password_bytes(password: str | bytes | None) -> bytes | None:
    if password is None or isinstance(password, bytes):
        return password
    return password.encode()


# ----------------------------------------------------------------------------- the store

class CertStore:
    """Certificates and keys under `<state_dir>/certs/`, grouped in named stores."""

    def __init__(self, state_dir: str | Path) -> None:
        self.root = Path(state_dir) / CERTS_DIR

    def _store_dir(self, store: str, create: bool = False) -> Path:
        directory = self.root / normalize_store_name(store)
        if create:
            directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        return directory

    def _paths(self, thumbprint: str, store: str) -> tuple[Path, Path]:
        directory = self._store_dir(store)
        thumb = normalize_thumbprint(thumbprint)
        return directory / f"{thumb}.pem", directory / f"{thumb}.key"

    # -- adding

    def _save(self, chain: list[x509.Certificate], key: PrivateKey | None,
              store: str) -> CertInfo:
        if not chain:
            raise _bad("no certificate found")
        leaf = chain[0]
        if key is not None:
            _check_key_matches(leaf, key)
        directory = self._store_dir(store, create=True)
        thumb = thumbprint_of(leaf)
        key_path = directory / f"{thumb}.key"
        if key is not None:  # key first: a listing never shows a cert whose key is on its way
            write_atomic(key_path, _key_pem(key), mode=0o600)
        write_atomic(directory / f"{thumb}.pem", _chain_pem(chain), mode=0o644)
        return _cert_info(leaf, normalize_store_name(store), key_path.exists())

    def new_self_signed(self, subject: str | None, dns_names: list[str] | None = None,
                        key_type: str = "rsa2048", days: int = DEFAULT_DAYS,
                        store: str = DEFAULT_STORE,
                        now: dt.datetime | None = None) -> CertInfo:
        """Create and store a self-signed certificate, like `New-SelfSignedCertificate`.

        The subject defaults to `CN=<first DNS name>`. The SAN lists `dns_names` (IP literals
        become IP entries); with none given, the CN goes in the SAN when it looks like a host
        name, else there is no SAN (as Windows does with only `-Subject`). EKU serverAuth +
        clientAuth, random serial, SHA-256 signature, valid from 10 minutes ago for `days`.
        """
        names = [n.strip() for n in (dns_names or []) if n.strip()]
        if subject is None or not subject.strip():
            if not names:
                raise _bad("a subject or at least one DNS name is required")
            subject = f"CN={names[0]}"
        name = parse_subject(subject)
        if key_type not in KEY_TYPES:
            raise _bad(f"key type {key_type!r} is not one of {', '.join(KEY_TYPES)}")
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
            raise _bad(f"days must be 1..{MAX_DAYS}")
        normalize_store_name(store)
        if not names:
            cn = _common_name(name)
            if cn is not None and _looks_like_host(cn):
                names = [cn]
        general_names: list[x509.GeneralName] = []
        for entry in names:
            try:
                general_names.append(x509.IPAddress(ipaddress.ip_address(entry)))
                continue
            except ValueError:
                pass
            if not _looks_like_host(entry):
                raise _bad(f"{entry!r} is not a DNS name")
            general_names.append(x509.DNSName(entry.lower()))

        key: PrivateKey
        if key_type == "rsa2048":
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            key = ec.generate_private_key(ec.SECP256R1())
        start = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
        public_key = key.public_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - BACKDATE)
            .not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False,
                key_encipherment=isinstance(key, rsa.RSAPrivateKey), data_encipherment=False,
                key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False,
                decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        )
        if general_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(general_names),
                                            critical=False)
        cert = builder.sign(key, hashes.SHA256())
        return self._save([cert], key, store)

    def import_pem(self, cert_path: str | Path, key_path: str | Path | None = None,
                   store: str = DEFAULT_STORE, password: str | bytes | None = None) -> CertInfo:
        """Import a PEM certificate (first one is the leaf, the rest its chain) and its key.

        The key comes from `key_path`, else from a key block in the certificate file; it may be
        encrypted with `password`. Re-importing a certificate replaces it; a certificate
        imported without a key keeps a key stored earlier.
        """
        data = _read(cert_path)
        return self._import_pem_bytes(data, _read(key_path) if key_path else None, store,
                                      password)

    def _import_pem_bytes(self, data: bytes, key_data: bytes | None, store: str,
                          password: str | bytes | None) -> CertInfo:
        try:
            chain = x509.load_pem_x509_certificates(data)
        except ValueError:
            raise _bad("no PEM certificate found") from None
        key_source = key_data if key_data is not None else (
            data if b"PRIVATE KEY-----" in data else None)
        key = _load_pem_key(key_source, password) if key_source is not None else None
        return self._save(chain, key, store)

    def import_pkcs12(self, path: str | Path, password: str | bytes | None = None,
                      store: str = DEFAULT_STORE) -> CertInfo:
        """Import a .pfx / .p12 file: its certificate, private key and extra certificates."""
        return self._import_pkcs12_bytes(_read(path), password, store)

    def _import_pkcs12_bytes(self, data: bytes, password: str | bytes | None,
                             store: str) -> CertInfo:
        try:
            key, cert, extra = pkcs12.load_key_and_certificates(data, _password_bytes(password))
        except ValueError:
            raise _bad("not a PKCS#12 file, or the password is wrong") from None
        if cert is None:
            raise _bad("the PKCS#12 file holds no certificate")
        if key is not None and not isinstance(key, PrivateKey):
            raise _bad("unsupported private key type")
        return self._save([cert, *extra], key, store)

    def import_file(self, path: str | Path, key_path: str | Path | None = None,
                    password: str | bytes | None = None,
                    store: str = DEFAULT_STORE) -> CertInfo:
        """Import PEM, DER or PKCS#12, told apart by content (and the .pfx/.p12 extension)."""
        data = _read(path)
        suffix = Path(path).suffix.lower()
        if b"-----BEGIN" in data:
            return self._import_pem_bytes(data, _read(key_path) if key_path else None, store,
                                          password)
        if suffix not in (".pfx", ".p12"):
            try:
                cert = x509.load_der_x509_certificate(data)
            except ValueError:
                pass
            else:
                key = _load_pem_key(_read(key_path), password) if key_path else None
                return self._save([cert], key, store)
        if key_path:
            raise _bad("--key is only for PEM or DER certificates")
        return self._import_pkcs12_bytes(data, password, store)

    # -- reading

    def list(self, store: str | None = None) -> list[CertInfo]:
        """Certificates of one store, or of every store; sorted by store then thumbprint.

        Files that do not parse as certificates are skipped.
        """
        if store is not None:
            directories = [self._store_dir(store)]
        elif self.root.is_dir():
            directories = sorted(p for p in self.root.iterdir() if p.is_dir())
        else:
            directories = []
        infos: list[CertInfo] = []
        for directory in directories:
            if not directory.is_dir():
                continue
            for pem in sorted(directory.glob("*.pem")):
                try:
                    cert = x509.load_pem_x509_certificate(pem.read_bytes())
                except (ValueError, OSError):
                    continue
                has_key = pem.with_suffix(".key").exists()
                infos.append(_cert_info(cert, directory.name.upper(), has_key))
        return infos

    def get(self, thumbprint: str, store: str = DEFAULT_STORE) -> CertInfo:
        """One certificate; WinError 2 if it is not in that store (87 if the hash is bad)."""
        pem, key = self._paths(thumbprint, store)
        try:
            cert = x509.load_pem_x509_certificate(pem.read_bytes())
        except FileNotFoundError:
            raise WinError(ERROR_FILE_NOT_FOUND,
                           f"certificate {normalize_thumbprint(thumbprint)} is not in store "
                           f"{normalize_store_name(store)}") from None
        return _cert_info(cert, normalize_store_name(store), key.exists())

    def exists(self, thumbprint: str, store: str = DEFAULT_STORE) -> bool:
        return self._paths(thumbprint, store)[0].exists()

    def export_pem(self, thumbprint: str, store: str = DEFAULT_STORE,
                   include_key: bool = False) -> str:
        """The certificate chain as PEM text, followed by the private key if asked."""
        cert_pem, key_pem = self.load_pair(thumbprint, store) if include_key else (
            self._read_chain(thumbprint, store), b"")
        return (cert_pem + key_pem).decode("ascii")

    def _read_chain(self, thumbprint: str, store: str) -> bytes:
        self.get(thumbprint, store)  # the right error when missing
        return self._paths(thumbprint, store)[0].read_bytes()

    def load_pair(self, thumbprint: str, store: str = DEFAULT_STORE) -> tuple[bytes, bytes]:
        """(certificate chain PEM, private key PEM) for building an SSL context.

        WinError 2 when the certificate is missing, 1312 (what netsh reports for a certificate
        it cannot use) when it has no private key.
        """
        chain = self._read_chain(thumbprint, store)
        key_path = self._paths(thumbprint, store)[1]
        try:
            key = key_path.read_bytes()
        except FileNotFoundError:
            raise WinError(ERROR_NO_SUCH_LOGON_SESSION,
                           f"certificate {normalize_thumbprint(thumbprint)} has no private key"
                           ) from None
        return chain, key

    # -- removing

    def delete(self, thumbprint: str, store: str = DEFAULT_STORE) -> None:
        """Remove the certificate and its key; WinError 2 if it is not there."""
        pem, key = self._paths(thumbprint, store)
        try:
            remove_durably(pem)
        except FileNotFoundError:
            raise WinError(ERROR_FILE_NOT_FOUND,
                           f"certificate {normalize_thumbprint(thumbprint)} is not in store "
                           f"{normalize_store_name(store)}") from None
        try:
            remove_durably(key)
        except FileNotFoundError:
            pass


def _read(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise WinError(ERROR_FILE_NOT_FOUND, f"{path}: no such file") from None
    except IsADirectoryError:
        raise _bad(f"{path} is a directory") from None
    except PermissionError:
        raise WinError(ERROR_ACCESS_DENIED, f"{path}: permission denied") from None


def _load_pem_key(data: bytes, password: str | bytes | None) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, _password_bytes(password))
    except TypeError:
        raise _bad("the private key is encrypted: give its password") from None
    except ValueError:
        raise _bad("no usable PEM private key (or the password is wrong)") from None
    if not isinstance(key, PrivateKey):
        raise _bad("unsupported private key type")
    return key


__all__ = ["CertInfo", "CertStore", "DEFAULT_STORE", "ERROR_NO_SUCH_LOGON_SESSION", "KEY_TYPES",
           "format_subject", "normalize_store_name", "normalize_thumbprint", "parse_subject",
           "thumbprint_of"]
