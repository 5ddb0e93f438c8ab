"""The certificate store: self-signed creation, imports (PEM, DER, PKCS#12), look-ups, modes."""

from __future__ import annotations

import datetime as dt
import hashlib
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given
from hypothesis import strategies as st

from httpsys_emu.atomic import write_atomic
from httpsys_emu.certstore import (CertStore, format_subject, normalize_store_name,
                                   normalize_thumbprint, parse_subject)
from httpsys_emu.winerror import WinError


@pytest.fixture
def certs(tmp_path: Path) -> CertStore:
    return CertStore(tmp_path)


@pytest.fixture(scope="module")
def rsa_source(tmp_path_factory: pytest.TempPathFactory) -> tuple[CertStore, str]:
    """One RSA certificate made once per module, for the tests that only read or copy it."""
    store = CertStore(tmp_path_factory.mktemp("source"))
    info = store.new_self_signed("CN=Example Website, O=Octopus", ["example.com", "10.0.0.1"])
    return store, info.thumbprint


def _cert(certs: CertStore, thumbprint: str, store: str = "MY") -> x509.Certificate:
    return x509.load_pem_x509_certificate(certs.export_pem(thumbprint, store).encode())


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --------------------------------------------------------------------------- self-signed


def test_new_self_signed_rsa(rsa_source: tuple[CertStore, str]) -> None:
    certs, thumb = rsa_source
    info = certs.get(thumb)
    cert = _cert(certs, thumb)
    der = cert.public_bytes(serialization.Encoding.DER)
    assert thumb == hashlib.sha1(der).hexdigest().upper() and len(thumb) == 40
    assert info.subject == "CN=Example Website, O=Octopus" == info.issuer
    assert info.key_type == "rsa2048" and info.has_private_key and info.store == "MY"
    assert info.dns_names == ("example.com", "10.0.0.1")
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert 364 <= (info.not_after - info.not_before).days <= 366
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Example Website"


def test_key_file_is_0600_and_no_temp_files_are_left(rsa_source: tuple[CertStore, str]) -> None:
    certs, thumb = rsa_source
    directory = certs.root / "MY"
    assert _files(directory) == [f"{thumb}.key", f"{thumb}.pem"]
    assert stat.S_IMODE((directory / f"{thumb}.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((directory / f"{thumb}.pem").stat().st_mode) == 0o644


def test_new_self_signed_ecdsa_defaults(certs: CertStore) -> None:
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    info = certs.new_self_signed(None, ["octopus.example.com", "b.example.com"],
                                 key_type="ecdsa-p256", days=90, store="Web", now=now)
    assert info.subject == "CN=octopus.example.com" and info.key_type == "ecdsa-p256"
    assert info.dns_names == ("octopus.example.com", "b.example.com")
    assert info.store == "WEB" and (certs.root / "WEB").is_dir()
    assert info.not_before == now - dt.timedelta(minutes=10)
    assert info.not_after == now + dt.timedelta(days=90)


def test_subject_only_puts_a_host_like_cn_in_the_san(certs: CertStore) -> None:
    assert certs.new_self_signed("localhost", [], key_type="ecdsa-p256").dns_names == (
        "localhost",)
    assert certs.new_self_signed("CN=Example Website", [], key_type="ecdsa-p256"
                                 ).dns_names == ()


@pytest.mark.parametrize("subject, dns, key_type, days", [
    (None, [], "ecdsa-p256", 1), ("CN=x", [], "dsa", 1), ("CN=x", [], "ecdsa-p256", 0),
    ("CN=x", ["bad name"], "ecdsa-p256", 1), ("XX=y", [], "ecdsa-p256", 1),
    ("CN=x, C=Australia", [], "ecdsa-p256", 1), ("CN=", [], "ecdsa-p256", 1),
])
def test_new_self_signed_rejects(certs: CertStore, subject: str | None, dns: list[str],
                                 key_type: str, days: int) -> None:
    with pytest.raises(WinError) as info:
        certs.new_self_signed(subject, dns, key_type=key_type, days=days)
    assert info.value.code == 87


# --------------------------------------------------------------------------- look-ups


def _pasted_forms(thumb: str) -> list[str]:
    spaced = " ".join(thumb[i:i + 2] for i in range(0, 40, 2))
    return [thumb.lower(), spaced, spaced.lower(), "\u200e" + spaced, f" {thumb}\n",
            ":".join(thumb[i:i + 2] for i in range(0, 40, 2)), "\ufeff" + thumb + "\u200b"]


def test_thumbprint_lookup_ignores_case_spaces_and_invisible_marks(
        rsa_source: tuple[CertStore, str]) -> None:
    certs, thumb = rsa_source
    for pasted in _pasted_forms(thumb):
        assert normalize_thumbprint(pasted) == thumb
        assert certs.get(pasted, "my").thumbprint == thumb
        assert certs.exists(pasted)


@pytest.mark.parametrize("text", ["", "abc", "G" * 40, "A" * 41, "A" * 39, "0x" + "A" * 38])
def test_bad_thumbprint_is_87(text: str) -> None:
    with pytest.raises(WinError) as info:
        normalize_thumbprint(text)
    assert info.value.code == 87


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "MY ", "-x", "a" * 65])
def test_bad_store_names_are_87(name: str) -> None:
    with pytest.raises(WinError) as info:
        normalize_store_name(name)
    assert info.value.code == 87


def test_missing_certificate(certs: CertStore) -> None:
    for call in (lambda: certs.get("A" * 40), lambda: certs.delete("A" * 40),
                 lambda: certs.export_pem("A" * 40), lambda: certs.load_pair("A" * 40)):
        with pytest.raises(WinError) as info:
            call()
        assert info.value.code == 2


def test_stores_are_separate_and_case_insensitive(certs: CertStore,
                                                  rsa_source: tuple[CertStore, str]) -> None:
    source, thumb = rsa_source
    pem = source.export_pem(thumb, include_key=True)
    (certs.root.parent / "both.pem").write_text(pem)
    certs.import_pem(certs.root.parent / "both.pem", store="Root")
    assert [i.store for i in certs.list()] == ["ROOT"]
    assert certs.get(thumb, "root").store == "ROOT"
    assert not certs.exists(thumb, "MY")
    assert certs.list("My") == []
    certs.import_pem(certs.root.parent / "both.pem", store="my")
    assert [i.store for i in certs.list()] == ["MY", "ROOT"]
    certs.delete(thumb.lower(), "ROOT")
    assert [i.store for i in certs.list()] == ["MY"]
    assert _files(certs.root / "ROOT") == []


# --------------------------------------------------------------------------- imports


def test_import_pem_with_separate_key_and_chain(tmp_path: Path, certs: CertStore,
                                                rsa_source: tuple[CertStore, str]) -> None:
    source, thumb = rsa_source
    ca = source.new_self_signed("CN=Some CA", [], key_type="ecdsa-p256", store="CA")
    chain = source.export_pem(thumb) + source.export_pem(ca.thumbprint, "CA")
    cert_pem, key_pem = source.load_pair(thumb)
    (tmp_path / "chain.pem").write_text(chain)
    (tmp_path / "key.pem").write_bytes(key_pem)
    info = certs.import_pem(tmp_path / "chain.pem", tmp_path / "key.pem")
    assert info.thumbprint == thumb and info.has_private_key
    assert certs.export_pem(thumb) == chain  # the chain is kept, leaf first
    exported = certs.export_pem(thumb, include_key=True)
    assert exported.startswith(chain) and "PRIVATE KEY" in exported
    assert certs.load_pair(thumb) == (chain.encode(), key_pem)


def test_import_pem_without_key_then_load_pair_is_1312(tmp_path: Path, certs: CertStore,
                                                       rsa_source: tuple[CertStore, str]
                                                       ) -> None:
    source, thumb = rsa_source
    (tmp_path / "c.pem").write_text(source.export_pem(thumb))
    info = certs.import_pem(tmp_path / "c.pem")
    assert not info.has_private_key
    with pytest.raises(WinError) as error:
        certs.load_pair(thumb)
    assert error.value.code == 1312


def test_import_encrypted_key(tmp_path: Path, certs: CertStore,
                              rsa_source: tuple[CertStore, str]) -> None:
    source, thumb = rsa_source
    key = serialization.load_pem_private_key(source.load_pair(thumb)[1], None)
    encrypted = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.BestAvailableEncryption(b"s3cret"))
    (tmp_path / "c.pem").write_text(source.export_pem(thumb))
    (tmp_path / "k.pem").write_bytes(encrypted)
    with pytest.raises(WinError):
        certs.import_pem(tmp_path / "c.pem", tmp_path / "k.pem")
    with pytest.raises(WinError):
        certs.import_pem(tmp_path / "c.pem", tmp_path / "k.pem", password="wrong")
    assert certs.import_pem(tmp_path / "c.pem", tmp_path / "k.pem",
                            password="s3cret").has_private_key


def test_mismatched_key_is_refused_and_nothing_is_written(tmp_path: Path, certs: CertStore,
                                                          rsa_source: tuple[CertStore, str]
                                                          ) -> None:
    source, thumb = rsa_source
    other = source.new_self_signed("CN=other", [], key_type="ecdsa-p256", store="OTHER")
    (tmp_path / "c.pem").write_text(source.export_pem(thumb))
    (tmp_path / "k.pem").write_bytes(source.load_pair(other.thumbprint, "OTHER")[1])
    with pytest.raises(WinError) as info:
        certs.import_pem(tmp_path / "c.pem", tmp_path / "k.pem")
    assert info.value.code == 87
    assert certs.list() == []


def test_pkcs12_round_trip(tmp_path: Path, certs: CertStore,
                           rsa_source: tuple[CertStore, str]) -> None:
    source, thumb = rsa_source
    cert_pem, key_pem = source.load_pair(thumb)
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, None)
    pfx = pkcs12.serialize_key_and_certificates(
        b"friendly", key, cert, None, serialization.BestAvailableEncryption(b"pfx-pass"))
    (tmp_path / "site.pfx").write_bytes(pfx)
    with pytest.raises(WinError) as info:
        certs.import_pkcs12(tmp_path / "site.pfx", "wrong")
    assert info.value.code == 87
    imported = certs.import_pkcs12(tmp_path / "site.pfx", "pfx-pass", store="Web")
    assert imported.thumbprint == thumb and imported.has_private_key
    assert imported.subject == "CN=Example Website, O=Octopus"
    chain, key_again = certs.load_pair(thumb, "web")
    assert chain == cert_pem
    assert serialization.load_pem_private_key(key_again, None).private_numbers() == \
        key.private_numbers()  # type: ignore[union-attr]
    # the same file through content sniffing, even without the extension
    (tmp_path / "site.bin").write_bytes(pfx)
    assert certs.import_file(tmp_path / "site.bin", password="pfx-pass").thumbprint == thumb


def test_import_file_sniffs_der_and_pem(tmp_path: Path, certs: CertStore,
                                        rsa_source: tuple[CertStore, str]) -> None:
    source, thumb = rsa_source
    cert = _cert(source, thumb)
    (tmp_path / "c.cer").write_bytes(cert.public_bytes(serialization.Encoding.DER))
    assert certs.import_file(tmp_path / "c.cer", store="DER").thumbprint == thumb
    (tmp_path / "c.txt").write_text(source.export_pem(thumb, include_key=True))
    assert certs.import_file(tmp_path / "c.txt", store="PEM").has_private_key
    (tmp_path / "junk").write_bytes(b"\x00\x01junk")
    with pytest.raises(WinError):
        certs.import_file(tmp_path / "junk")
    with pytest.raises(WinError) as info:
        certs.import_file(tmp_path / "missing.pem")
    assert info.value.code == 2


# --------------------------------------------------------------------------- atomic writes


def test_write_atomic_replaces_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "secret.key"
    write_atomic(target, b"one", mode=0o600)
    write_atomic(target, b"two", mode=0o600)
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert _files(tmp_path) == ["secret.key"]


def test_write_atomic_failure_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "d"
    target.mkdir()  # os.replace of a file over a directory fails
    with pytest.raises(OSError):
        write_atomic(target, b"x")
    assert _files(tmp_path) == ["d"]


# --------------------------------------------------------------------------- subjects


@pytest.mark.parametrize("text, shown", [
    ("Example Website", "CN=Example Website"),
    ("CN=Example Website", "CN=Example Website"),
    ("cn=a, o=Octopus Deploy, ou=R&D, l=Brisbane, st=QLD, c=AU",
     "CN=a, O=Octopus Deploy, OU=R&D, L=Brisbane, ST=QLD, C=AU"),
    ('CN="Example, Inc"', "CN=Example\\, Inc"),
    ("CN=Example\\, Inc,O=x", "CN=Example\\, Inc, O=x"),
    ("S=QLD,CN=x", "ST=QLD, CN=x"),
])
def test_parse_subject(text: str, shown: str) -> None:
    assert format_subject(parse_subject(text)) == shown


def test_subject_is_encoded_in_x509_order() -> None:
    name = parse_subject("CN=a, O=b, C=AU")
    assert [rdn.rfc4514_string() for rdn in name.rdns] == ["C=AU", "O=b", "CN=a"]


@pytest.mark.parametrize("text", ["", "  ", "CN=a, X=b", "CN=a,", 'CN="a', "CN=a\\", "C=A1",
                                  "CN=a, =b", 'CN=a"b'])
def test_bad_subjects_are_87(text: str) -> None:
    with pytest.raises(WinError) as info:
        parse_subject(text)
    assert info.value.code == 87


_ATTRS = [NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME,
          NameOID.LOCALITY_NAME, NameOID.STATE_OR_PROVINCE_NAME]
_value = st.text(st.characters(min_codepoint=0x20, blacklist_categories=("Cs", "Cc", "Zl",
                                                                          "Zp")),
                 min_size=1, max_size=20).map(str.strip).filter(bool)


@given(st.lists(st.tuples(st.sampled_from(_ATTRS), _value), min_size=1, max_size=5))
def test_subject_format_parse_round_trip(parts: list[tuple[x509.ObjectIdentifier, str]]
                                         ) -> None:
    name = x509.Name([x509.NameAttribute(oid, value) for oid, value in parts])
    assert parse_subject(format_subject(name)) == name
