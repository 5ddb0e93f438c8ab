"""The instance configuration file and the instance registry, in the real Tentacle's formats."""

from __future__ import annotations

import json
import os
import stat
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tentacle.certificate import (
    decode_certificate_setting,
    encode_certificate_setting,
    encrypt_machine_key_value,
    new_certificate,
    normalize_thumbprint,
    thumbprint_of_pem,
)
from tentacle.config import (
    KEY_CERTIFICATE,
    KEY_TRUSTED_SERVERS,
    ConfigError,
    TrustedServer,
    add_or_update_trusted_server,
    config_from_settings,
    load_config,
    new_config,
    parse_settings_xml,
    remove_trusted_thumbprint,
    render_settings_xml,
    resolve_config,
    save_config,
    update_config,
)
from tentacle.instances import (
    InstanceError,
    InstanceRecord,
    InstanceRegistry,
    decode_record,
    default_config_path,
    instances_dir,
    registry_file_name,
)

THUMB_A = "5BF1B7093DBD1EB1B7000EA9769484541E44A8A9"
THUMB_B = "0F3C5D1C8B9E0F3C5D1C8B9E0F3C5D1C8B9E0F3C"

REAL_STYLE_CONFIG = (
    "\ufeff<?xml version=\"1.0\" encoding=\"utf-8\"?>\n"
    "<octopus-settings xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" "
    "xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\n"
    "  <set key=\"Octopus.Communications.Squid\" />\n"
    "  <set key=\"Octopus.Home\">/etc/octopus/Tentacle</set>\n"
    "  <set key=\"Tentacle.Communication.TrustedOctopusServers\">[{\"Thumbprint\":\"" + THUMB_A +
    "\",\"CommunicationStyle\":2,\"Address\":\"wss://octopus.example.com:443/OctopusComms\","
    "\"Squid\":null,\"SubscriptionId\":\"poll://abcdefghijklmnopqrst/\"}]</set>\n"
    "  <set key=\"Tentacle.Deployment.ApplicationDirectory\">/home/Octopus/Applications</set>\n"
    "  <set key=\"Tentacle.Services.NoListen\">True</set>\n"
    "  <set key=\"Tentacle.Services.PortNumber\">10933</set>\n"
    "  <set key=\"Tentacle.Watchdog.Enabled\">false</set>\n"
    "</octopus-settings>")


@pytest.fixture(autouse=True)
def relocated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never touch /etc/octopus: the registry and machine configuration home live in tmp."""
    monkeypatch.setenv("TENTACLE_INSTANCES_DIR", str(tmp_path / "instances"))
    monkeypatch.setenv("TentacleMachineConfigurationHomeDirectory", str(tmp_path / "machine"))
    return tmp_path


@pytest.fixture(scope="module")
def certificate():
    return new_certificate()


# ------------------------------------------------------------------ the XML document

xml_text = st.text(st.characters(blacklist_categories=("Cs",),
                                 blacklist_characters="\x00\x01\x02\x03\x04\x05\x06\x07\x08"
                                                      "\x0b\x0c\x0e\x0f\x10\x11\x12\x13\x14\x15"
                                                      "\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f"
                                                      "\ufffe\uffff"), max_size=40)


@given(st.dictionaries(xml_text, xml_text, max_size=8))
def test_settings_xml_round_trip(settings: dict[str, str]) -> None:
    assert parse_settings_xml(render_settings_xml(settings)) == settings


def test_rendered_xml_looks_like_the_real_one() -> None:
    data = render_settings_xml({"Tentacle.Services.PortNumber": "10933", "Octopus.Home": "/x & y",
                                "Empty": ""})
    assert data.startswith(b"\xef\xbb\xbf<?xml version=\"1.0\" encoding=\"utf-8\"?>\n"
                           b"<octopus-settings xmlns:xsd=")
    lines = data.decode("utf-8-sig").splitlines()
    assert lines[2:] == ['  <set key="Empty" />',
                         '  <set key="Octopus.Home">/x &amp; y</set>',
                         '  <set key="Tentacle.Services.PortNumber">10933</set>',
                         "</octopus-settings>"]


@pytest.mark.parametrize("document", [
    b"",
    b"<other/>",
    b"<octopus-settings><set>no key</set></octopus-settings>",
    b"<octopus-settings><set key='a'><b/></set></octopus-settings>",
    b"<!DOCTYPE x [<!ENTITY a 'aaaa'>]><octopus-settings><set key='k'>&a;</set>"
    b"</octopus-settings>",
    b"<octopus-settings><set key='a'>unclosed</octopus-settings>",
])
def test_malformed_settings_are_refused(document: bytes) -> None:
    with pytest.raises(ValueError):
        parse_settings_xml(document)


def test_control_characters_cannot_be_saved() -> None:
    with pytest.raises(ValueError):
        render_settings_xml({"k": "bell\x07"})


# ------------------------------------------------------------------ TentacleConfig

def test_real_style_config_loads_and_unknown_keys_survive_a_save(tmp_path: Path) -> None:
    path = tmp_path / "Tentacle" / "tentacle-Tentacle.config"
    path.parent.mkdir()
    path.write_text(REAL_STYLE_CONFIG, encoding="utf-8")
    config = load_config(path)
    assert config.instance == "Tentacle"  # from the file name, no registry entry
    assert config.home == Path("/etc/octopus/Tentacle")
    assert config.no_listen is True and config.listen_port == 10933
    assert config.polling_connection_count == 1
    assert config.certificate_pem is None and config.thumbprint is None
    assert config.trusted_servers == (TrustedServer(
        thumbprint=THUMB_A, communication_style=2,
        address="wss://octopus.example.com:443/OctopusComms", squid=None,
        subscription_id="poll://abcdefghijklmnopqrst/"),)
    assert config.extra == {"Octopus.Communications.Squid": "",
                            "Tentacle.Watchdog.Enabled": "false"}

    save_config(replace(config, listen_port=10934))
    again = parse_settings_xml(path.read_bytes())
    assert again["Tentacle.Watchdog.Enabled"] == "false"
    assert again["Octopus.Communications.Squid"] == ""
    assert again["Tentacle.Services.PortNumber"] == "10934"
    assert again["Tentacle.Services.NoListen"] == "true"


def test_trusted_servers_json_has_the_exact_real_shape(tmp_path: Path) -> None:
    path = tmp_path / "t.config"
    servers = (TrustedServer(THUMB_A, 2, "wss://host:443/OctopusComms", None,
                             "poll://abcdefghijklmnopqrst/"),
               TrustedServer(THUMB_B, 1, None, None, None))
    save_config(replace(new_config("T", path, tmp_path), trusted_servers=servers))
    text = parse_settings_xml(path.read_bytes())[KEY_TRUSTED_SERVERS]
    assert text == (
        '[{"Thumbprint":"' + THUMB_A + '","CommunicationStyle":2,'
        '"Address":"wss://host:443/OctopusComms","Squid":null,'
        '"SubscriptionId":"poll://abcdefghijklmnopqrst/"},'
        '{"Thumbprint":"' + THUMB_B + '","CommunicationStyle":1,"Address":null,"Squid":null,'
        '"SubscriptionId":null}]')
    assert load_config(path).trusted_servers == servers


def test_trusted_server_reader_is_lenient_like_newtonsoft() -> None:
    entry = TrustedServer.from_json({"thumbprint": THUMB_A, "communicationStyle": "TentacleActive",
                                     "ADDRESS": "https://h:10943/", "Unknown": 1})
    assert entry == TrustedServer(THUMB_A, 2, "https://h:10943/", None, None)
    with pytest.raises(ValueError):
        TrustedServer.from_json({"CommunicationStyle": 2})


def test_saved_config_is_0600_and_written_atomically(tmp_path: Path, certificate) -> None:
    path = tmp_path / "deep" / "dir" / "t.config"
    config = replace(new_config("T", path, tmp_path), certificate_pem=certificate.cert_pem,
                     private_key_pem=certificate.key_pem, thumbprint=certificate.thumbprint)
    save_config(config)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    inode = path.stat().st_ino
    save_config(replace(config, listen_port=2000))
    assert path.stat().st_ino != inode  # replaced by rename, never rewritten in place
    assert [p.name for p in path.parent.iterdir()] == ["t.config"]  # no temp file left
    loaded = load_config(path)
    assert loaded.thumbprint == certificate.thumbprint
    assert loaded.certificate_pem == certificate.cert_pem
    assert loaded.private_key_pem == certificate.key_pem


def test_certificate_is_a_base64_pfx_like_the_real_one(tmp_path: Path, certificate) -> None:
    path = tmp_path / "t.config"
    save_config(replace(new_config("T", path, tmp_path), certificate_pem=certificate.cert_pem,
                        private_key_pem=certificate.key_pem))
    settings = parse_settings_xml(path.read_bytes())
    assert settings["Tentacle.CertificateThumbprint"] == certificate.thumbprint
    import base64

    from cryptography.hazmat.primitives.serialization import pkcs12
    key, cert, _ = pkcs12.load_key_and_certificates(base64.b64decode(settings[KEY_CERTIFICATE]),
                                                    None)
    assert key is not None and cert is not None
    assert cert.subject.rfc4514_string() == "CN=Octopus Tentacle"
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days >= 36500


def test_machine_key_encrypted_certificate_of_a_real_linux_tentacle_is_read(
        tmp_path: Path, certificate) -> None:
    key, iv = os.urandom(32), os.urandom(16)
    machine_home = tmp_path / "machine"
    machine_home.mkdir()
    import base64
    (machine_home / "machinekey").write_text(base64.b64encode(key).decode() + "." +
                                             base64.b64encode(iv).decode())
    plain = encode_certificate_setting(certificate.cert_pem, certificate.key_pem)
    encrypted = encrypt_machine_key_value(plain, key, iv)
    path = tmp_path / "t.config"
    path.write_bytes(render_settings_xml({KEY_CERTIFICATE: encrypted,
                                          "Tentacle.CertificateThumbprint": "IGNORED"}))
    loaded = load_config(path)
    assert loaded.thumbprint == certificate.thumbprint
    assert loaded.private_key_pem == certificate.key_pem


def test_undecodable_certificate_fails_unless_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "t.config"
    path.write_bytes(render_settings_xml({KEY_CERTIFICATE: "bm90IGEgcGZ4"}))
    with pytest.raises(ConfigError, match="could not be read"):
        load_config(path)
    tolerant = load_config(path, tolerate_bad_certificate=True)
    assert tolerant.certificate_pem is None
    save_config(replace(tolerant, listen_port=1))
    assert parse_settings_xml(path.read_bytes())[KEY_CERTIFICATE] == "bm90IGEgcGZ4"


@pytest.mark.parametrize("key,value,fragment", [
    ("Tentacle.Services.PortNumber", "ten", "not a number"),
    ("Tentacle.Services.PortNumber", "70000", "between 1 and 65535"),
    ("Tentacle.Services.NoListen", "yes", "not true or false"),
    ("Tentacle.Communication.TrustedOctopusServers", "{", "cannot be read"),
])
def test_bad_values_name_the_key(tmp_path: Path, key: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as info:
        config_from_settings({key: value}, tmp_path / "t.config", "T", machine_keys=[])
    assert key in str(info.value)


def test_missing_file_has_the_real_message(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"Configuration file .* could not be found\."):
        load_config(tmp_path / "absent.config")


def test_relative_home_is_relative_to_the_config_file(tmp_path: Path) -> None:
    config = config_from_settings({"Octopus.Home": "home"}, tmp_path / "t.config", "T",
                                  machine_keys=[])
    assert config.home == tmp_path / "home"


def test_update_config_serialises_concurrent_writers(tmp_path: Path) -> None:
    path = tmp_path / "t.config"
    save_config(new_config("T", path, tmp_path))
    thumbprints = [f"{i:040X}" for i in range(12)]

    def add(thumbprint: str) -> None:
        update_config(path, lambda c: replace(c, trusted_servers=add_or_update_trusted_server(
            c.trusted_servers, TrustedServer(thumbprint, 1, None, None, None))))

    threads = [threading.Thread(target=add, args=(t,)) for t in thumbprints]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(s.thumbprint for s in load_config(path).trusted_servers) == thumbprints


def test_trust_list_operations() -> None:
    polling = TrustedServer(THUMB_A, 2, "wss://h/OctopusComms", None, "poll://aaaaaaaaaaaaaaaaaaaa/")
    servers = add_or_update_trusted_server((), polling)
    moved = replace(polling, address="WSS://H/OctopusComms/", subscription_id="poll://b/")
    servers = add_or_update_trusted_server(servers, moved)
    assert servers == (moved,)  # same thumbprint and address (ignoring case, trailing /)
    servers = add_or_update_trusted_server(servers, TrustedServer(THUMB_B, 1, None, None, None))
    assert len(servers) == 2
    assert remove_trusted_thumbprint(servers, THUMB_A.lower()) == servers[1:]


def test_thumbprint_helpers(certificate) -> None:
    assert thumbprint_of_pem(certificate.cert_pem) == certificate.thumbprint
    assert normalize_thumbprint(" 5b:f1" + THUMB_A[4:].lower()) == THUMB_A
    assert normalize_thumbprint("XYZ") is None
    assert decode_certificate_setting(
        encode_certificate_setting(certificate.cert_pem, certificate.key_pem)).thumbprint == \
        certificate.thumbprint


# ------------------------------------------------------------------ the instance registry

def test_registry_create_list_find_delete(relocated: Path) -> None:
    registry = InstanceRegistry()
    assert registry.directory == relocated / "instances" == instances_dir()
    assert registry.list() == []
    one = InstanceRecord("Tentacle", relocated / "a" / "tentacle-Tentacle.config")
    two = InstanceRecord("My Worker", relocated / "b.config")
    entry = registry.register(two)
    registry.register(one)
    assert entry.name == "my-worker.config" == registry_file_name("My Worker")
    assert json.loads(entry.read_text()) == {"Name": "My Worker",
                                              "ConfigurationFilePath": str(relocated / "b.config")}
    assert [r.name for r in registry.list()] == ["My Worker", "Tentacle"]
    assert registry.find("my worker") == two
    assert registry.require(None) == one  # the instance named Tentacle is the default
    assert registry.find_by_config_path(relocated / "b.config") == two
    assert registry.delete("MY WORKER") is True
    assert registry.delete("My Worker") is False
    assert registry.require(None) == one


def test_registry_errors_use_the_real_messages(relocated: Path) -> None:
    registry = InstanceRegistry()
    with pytest.raises(InstanceError, match="Unable to find default instance of Tentacle"):
        registry.require(None)
    registry.register(InstanceRecord("A", relocated / "a.config"))
    registry.register(InstanceRecord("B", relocated / "b.config"))
    with pytest.raises(InstanceError, match=r"more than one instance.*Available instances: A, B"):
        registry.require(None)
    with pytest.raises(InstanceError, match="Instance C of Tentacle has not been configured"):
        registry.require("C")


def test_registry_skips_corrupt_entries_and_reads_real_ones(relocated: Path) -> None:
    directory = relocated / "instances"
    directory.mkdir()
    (directory / "broken.config").write_text("{not json")
    (directory / "real.config").write_text(
        '\ufeff{\r\n  "name": "Real",\r\n  "configurationFilePath": "/etc/octopus/Real/x.config"'
        "\r\n}")
    assert InstanceRegistry().list() == [InstanceRecord("Real", Path("/etc/octopus/Real/x.config"))]
    with pytest.raises(ValueError):
        decode_record(b'{"Name": ""}')


def test_resolve_config_prefers_config_then_registry(relocated: Path) -> None:
    InstanceRegistry().register(InstanceRecord("Tentacle", relocated / "t.config"))
    assert resolve_config(None, None) == relocated / "t.config"
    assert resolve_config("tentacle", None) == relocated / "t.config"
    assert resolve_config("Tentacle", str(relocated / "other.config")) == relocated / "other.config"
    with pytest.raises(InstanceError):
        resolve_config("missing", None)


def test_default_config_path_follows_the_linux_install_script(relocated: Path) -> None:
    assert default_config_path("Tentacle") == (relocated / "machine" / "Tentacle" /
                                               "tentacle-Tentacle.config")


def test_instance_name_comes_from_the_registry(relocated: Path) -> None:
    path = relocated / "odd-name.config"
    save_config(new_config("x", path, relocated))
    assert load_config(path).instance == "Tentacle"
    InstanceRegistry().register(InstanceRecord("Worker 7", path))
    assert load_config(path).instance == "Worker 7"
