"""state.db: rows round-trip, netsh error numbers, generation counter, migrations, concurrency."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from httpsys_emu.statedir import ROOT_DEFAULT, StateDirError, resolve_state_dir
from httpsys_emu.store import (DB_NAME, MIGRATIONS, SCHEMA_VERSION, ForwardTarget,
                               SslCertBinding, SslKey, Store, StoreError, Timeouts)
from httpsys_emu.urlacl import UrlAcl, unix_user_sid
from httpsys_emu.winerror import WinError

THUMB = "C38BA62A08DB13FBEC05A004AA2AA85686BA650E"
APPID = "{00112233-4455-6677-8899-aabbccddeeff}"
ACL = UrlAcl.for_user(unix_user_sid(1000))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    with Store.open(tmp_path / "state") as opened:
        yield opened  # type: ignore[misc]


def _code(info: pytest.ExceptionInfo[WinError]) -> int:
    return info.value.code


# --------------------------------------------------------------------------- basics


def test_open_creates_wal_database_at_current_schema(tmp_path: Path) -> None:
    with Store.open(tmp_path / "a" / "b") as store:
        assert store.schema_version() == SCHEMA_VERSION == 1
        assert store.path == tmp_path / "a" / "b" / DB_NAME
    conn = sqlite3.connect(tmp_path / "a" / "b" / DB_NAME)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_generation_bumps_on_every_write_and_not_on_failures(store: Store) -> None:
    start = store.generation()
    store.add_iplisten("10.0.0.1")
    assert store.generation() == start + 1
    with pytest.raises(WinError):
        store.add_iplisten("10.0.0.1")
    with pytest.raises(WinError):
        store.delete_urlacl("http://+:80/none/")
    assert store.generation() == start + 1
    store.set_timeout("idleconnectiontimeout", 30)
    store.delete_iplisten("10.0.0.1")
    assert store.generation() == start + 3


def test_second_connection_sees_changes(tmp_path: Path) -> None:
    with Store.open(tmp_path) as writer, Store.open(tmp_path) as reader:
        before = reader.generation()
        writer.add_urlacl("https://+:443/OctopusComms", ACL)
        assert reader.generation() == before + 1
        assert [str(e.prefix) for e in reader.list_urlacls()] == ["https://+:443/OctopusComms/"]


# --------------------------------------------------------------------------- sslcert


def test_sslcert_add_get_list_delete(store: Store) -> None:
    binding = SslCertBinding(SslKey.ipport("0.0.0.0", 443), THUMB, APPID)
    store.add_sslcert(binding)
    assert store.get_sslcert(SslKey.ipport("0.0.0.0", 443)) == binding
    assert store.list_sslcerts() == [binding]
    with pytest.raises(WinError) as info:
        store.add_sslcert(binding)
    assert _code(info) == 183
    store.delete_sslcert(binding.key)
    with pytest.raises(WinError) as info:
        store.delete_sslcert(binding.key)
    assert _code(info) == 2
    with pytest.raises(WinError) as info:
        store.get_sslcert(binding.key)
    assert _code(info) == 2


def test_sslcert_keys_normalise(store: Store) -> None:
    store.add_sslcert(SslCertBinding(SslKey.ipport("[0::0]", 443), THUMB, APPID))
    assert store.get_sslcert(SslKey.ipport("::", 443)).key.host == "::"
    store.add_sslcert(SslCertBinding(SslKey.hostnameport("WWW.Example.COM", 443), THUMB, APPID))
    assert store.get_sslcert(SslKey.hostnameport("www.example.com", 443))
    # the same IP on another port, and IPv4 vs IPv6, are different bindings
    store.add_sslcert(SslCertBinding(SslKey.ipport("0.0.0.0", 443), THUMB, APPID))
    store.add_sslcert(SslCertBinding(SslKey.ipport("0.0.0.0", 444), THUMB, APPID))
    assert len(store.list_sslcerts()) == 4


_keys = st.one_of(
    st.builds(SslKey.ipport, st.ip_addresses().map(str), st.integers(1, 65535)),
    st.builds(SslKey.hostnameport,
              st.from_regex(r"[a-z]([a-z0-9-]{0,8}[a-z0-9])?(\.[a-z]{2,5}){0,2}", fullmatch=True),
              st.integers(1, 65535)),
    st.builds(SslKey.ccs, st.integers(1, 65535)),
)
_texts = st.none() | st.text(st.characters(blacklist_categories=("Cs",)), min_size=1,
                             max_size=12)


@st.composite
def _bindings(draw: st.DrawFn) -> SslCertBinding:
    key = draw(_keys)
    certhash = draw(st.from_regex(r"[0-9A-F]{40}", fullmatch=True))
    return SslCertBinding(
        key=key, certhash=draw(st.none()) if key.kind.value == "ccs" else certhash,
        appid="{" + str(draw(st.uuids())) + "}",
        certstorename=draw(_texts), verify_client_cert_revocation=draw(st.booleans()),
        verify_revocation_with_cached_client_cert_only=draw(st.booleans()),
        usage_check=draw(st.booleans()),
        revocation_freshness_time=draw(st.integers(0, 2**32 - 1)),
        url_retrieval_timeout=draw(st.integers(0, 2**32 - 1)),
        sslctl_identifier=draw(_texts), sslctl_storename=draw(_texts),
        ds_mapper_usage=draw(st.booleans()), client_cert_negotiation=draw(st.booleans()))


@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_bindings())
def test_every_sslcert_field_round_trips(store: Store, binding: SslCertBinding) -> None:
    try:
        store.delete_sslcert(binding.key)
    except WinError:
        pass
    store.add_sslcert(binding)
    assert store.get_sslcert(binding.key) == binding


# --------------------------------------------------------------------------- urlacl


def test_urlacl_identity_is_case_insensitive_and_slash_insensitive(store: Store) -> None:
    entry = store.add_urlacl("https://+:443/OctopusComms", ACL)
    assert str(entry.prefix) == "https://+:443/OctopusComms/"
    with pytest.raises(WinError) as info:
        store.add_urlacl("https://+:443/octopuscomms/", ACL)
    assert _code(info) == 183
    assert store.get_urlacl("https://+:443/OCTOPUSCOMMS").acl == ACL
    store.delete_urlacl("https://+:443/octopuscomms/")
    assert store.list_urlacls() == []


@pytest.mark.parametrize("url", ["https://+:443", "https://+/", "http://+:0/", "nope",
                                 "http://0.0.0.0:80/", "http://+:80/a?b"])
def test_urlacl_bad_url_is_87(store: Store, url: str) -> None:
    with pytest.raises(WinError) as info:
        store.add_urlacl(url, ACL)
    assert _code(info) == 87


# --------------------------------------------------------------------------- iplisten


def test_iplisten(store: Store) -> None:
    assert store.add_iplisten("[0:0::1]") == "::1"
    store.add_iplisten("10.0.0.1")
    assert store.list_iplisten() == ["::1", "10.0.0.1"]
    with pytest.raises(WinError) as info:
        store.add_iplisten("::1")
    assert _code(info) == 183
    with pytest.raises(WinError) as info:
        store.add_iplisten("10.0.0.256")
    assert _code(info) == 87
    store.delete_iplisten("::1")
    with pytest.raises(WinError) as info:
        store.delete_iplisten("::1")
    assert _code(info) == 2


# --------------------------------------------------------------------------- settings


def test_timeouts_and_limits(store: Store) -> None:
    assert store.timeouts() == Timeouts()
    store.set_timeout("IdleConnectionTimeout", 240)
    store.set_timeout("headerwaittimeout", 30)
    store.set_timeout("minsendrate", 300)
    store.set_setting("maxfieldlength", 32768)
    assert store.timeouts() == Timeouts(idle_connection=240, header_wait=30, min_send_rate=300)
    limits = store.limits()
    assert (limits.idle_connection, limits.header_wait, limits.max_field_length,
            limits.min_send_rate) == (240, 30, 32768, 300)
    assert store.settings() == {"idleconnectiontimeout": 240, "headerwaittimeout": 30,
                                "minsendrate": 300, "maxfieldlength": 32768}
    store.set_timeout("idleconnectiontimeout", 60)  # setting again replaces
    store.delete_timeout("headerwaittimeout")
    assert store.timeouts().header_wait == 120 and store.timeouts().idle_connection == 60
    with pytest.raises(WinError) as info:
        store.delete_timeout("headerwaittimeout")
    assert _code(info) == 2


@pytest.mark.parametrize("name, value", [("idleconnectiontimeout", 0),
                                         ("idleconnectiontimeout", 65536),
                                         ("nosuchsetting", 5), ("maxfieldlength", True)])
def test_bad_settings_are_87(store: Store, name: str, value: int) -> None:
    with pytest.raises(WinError) as info:
        store.set_setting(name, value)
    assert _code(info) == 87


def test_set_timeout_refuses_limits(store: Store) -> None:
    with pytest.raises(WinError):
        store.set_timeout("maxfieldlength", 100)


# --------------------------------------------------------------------------- forwards


def test_forwards(store: Store) -> None:
    store.add_forward("https://+:8443/", "http://127.0.0.1:8080")
    store.add_forward("https://+:8443/API", "unix:/run/octopus.sock")
    forwards = store.list_forwards()
    assert [(str(f.prefix), str(f.target)) for f in forwards] == [
        ("https://+:8443/", "http://127.0.0.1:8080"),
        ("https://+:8443/API/", "unix:/run/octopus.sock")]
    assert forwards[1].target.is_unix and forwards[1].target.unix_path == "/run/octopus.sock"
    with pytest.raises(WinError) as info:
        store.add_forward("https://+:8443/api/", "http://127.0.0.1:1")
    assert _code(info) == 183
    store.delete_forward("https://+:8443/api")
    with pytest.raises(WinError) as info:
        store.delete_forward("https://+:8443/api")
    assert _code(info) == 2


@pytest.mark.parametrize("text, shown", [
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
    ("http://Backend.Local:80", "http://backend.local:80"),
    ("http://[0::1]:9000", "http://[::1]:9000"),
    ("unix:/run/x.sock", "unix:/run/x.sock"),
])
def test_forward_targets(text: str, shown: str) -> None:
    assert str(ForwardTarget.parse(text)) == shown


@pytest.mark.parametrize("text", ["http://127.0.0.1", "http://127.0.0.1:0", "https://a:1",
                                  "http://a:1/path", "http://:80", "unix:relative",
                                  "unix:/" + "x" * 200, "tcp://a:1", "http://[zz]:80",
                                  "http://0.0.0.0:80", "http://a b:80"])
def test_bad_forward_targets_are_87(text: str) -> None:
    with pytest.raises(WinError) as info:
        ForwardTarget.parse(text)
    assert _code(info) == 87


# --------------------------------------------------------------------------- snapshot


def test_snapshot_holds_everything(store: Store) -> None:
    store.add_sslcert(SslCertBinding(SslKey.ipport("0.0.0.0", 443), THUMB, APPID))
    store.add_urlacl("https://+:443/a", ACL)
    store.add_iplisten("10.0.0.1")
    store.set_setting("maxrequestbytes", 32768)
    store.add_forward("https://+:443/", "http://127.0.0.1:8080")
    snap = store.snapshot()
    assert snap.generation == store.generation()
    assert len(snap.sslcerts) == len(snap.urlacls) == len(snap.forwards) == 1
    assert snap.iplisten == ("10.0.0.1",)
    assert snap.limits.max_request_bytes == 32768 and snap.timeouts == Timeouts()


# --------------------------------------------------------------------------- migrations


def test_empty_database_file_is_version_0_and_migrates(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / DB_NAME).close()  # an empty (v0) database
    with Store.open(tmp_path) as store:
        assert store.schema_version() == 1
        store.add_iplisten("10.0.0.1")


def _add_description_column(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE forward ADD COLUMN description TEXT")


def test_v1_database_migrates_to_a_newer_schema_keeping_data(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        store.add_forward("https://+:443/", "http://127.0.0.1:1")
        generation = store.generation()
    with Store.open(tmp_path, migrations=(*MIGRATIONS, _add_description_column)) as store:
        assert store.schema_version() == 2
        assert store.generation() == generation + 1
        assert len(store.list_forwards()) == 1
    conn = sqlite3.connect(tmp_path / DB_NAME)
    columns = [row[1] for row in conn.execute("PRAGMA table_info(forward)")]
    conn.close()
    assert "description" in columns
    with Store.open(tmp_path, migrations=(*MIGRATIONS, _add_description_column)) as store:
        assert store.schema_version() == 2  # nothing re-applied


def test_newer_database_is_refused(tmp_path: Path) -> None:
    Store.open(tmp_path).close()
    conn = sqlite3.connect(tmp_path / DB_NAME)
    conn.execute("UPDATE schema_version SET version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="schema version 99"):
        Store.open(tmp_path)


def test_corrupt_database_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not a database, just some bytes" * 100)
    with pytest.raises(StoreError):
        Store.open(tmp_path)


def test_state_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StateDirError, match="not a directory"):
        Store.open(tmp_path / "file")
    with pytest.raises(StateDirError):
        Store.open(tmp_path / "file" / "below")


# --------------------------------------------------------------------------- concurrency

WRITER = textwrap.dedent("""
    import sys
    from httpsys_emu.store import Store
    state, first = sys.argv[1], int(sys.argv[2])
    with Store.open(state) as store:
        for i in range(first, first + 40):
            store.add_iplisten(f"10.0.{i // 256}.{i % 256}")
            store.set_timeout("idleconnectiontimeout", 1 + i)
""")


def test_two_processes_writing_at_once_both_succeed(tmp_path: Path) -> None:
    state = tmp_path / "state"  # fresh: both processes also race to create and migrate it
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(state), str(first)],
                                stderr=subprocess.PIPE, text=True) for first in (0, 1000)]
    for writer in writers:
        _, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err
    with Store.open(state) as store:
        assert len(store.list_iplisten()) == 80
        assert store.generation() == 1 + 160  # the migration, then every write


# --------------------------------------------------------------------------- state dir


def test_state_dir_resolution_order() -> None:
    env = {"HTTPSYS_EMU_STATE_DIR": "/env/dir", "XDG_STATE_HOME": "/xdg", "HOME": "/home/u"}
    assert resolve_state_dir("/cli", env, euid=1000) == Path("/cli")
    assert resolve_state_dir(None, env, euid=1000) == Path("/env/dir")
    assert resolve_state_dir(None, env, euid=0) == Path("/env/dir")
    del env["HTTPSYS_EMU_STATE_DIR"]
    assert resolve_state_dir(None, env, euid=1000) == Path("/xdg/httpsys-emu")
    assert resolve_state_dir(None, env, euid=0) == ROOT_DEFAULT
    env["XDG_STATE_HOME"] = "relative/ignored"
    assert resolve_state_dir(None, env, euid=1000) == Path("/home/u/.local/state/httpsys-emu")
    del env["XDG_STATE_HOME"]
    assert resolve_state_dir(None, env, euid=1000) == Path("/home/u/.local/state/httpsys-emu")
