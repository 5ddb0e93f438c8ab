"""The comms store: migrations, seeds, ids, hashing at rest, task bookkeeping, concurrency."""

from __future__ import annotations

import sqlite3
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from octopus_comms import auth, settings
from octopus_comms.home import HomeError, ensure_home, resolve_home
from octopus_comms.store import (MIGRATIONS, ActivityStatus, LogCategory, LogLine, MachineSpec,
                                 NotFound, Store, StoreError, TaskState, ValidationFailed,
                                 slugify)

THUMB = "A1B2C3D4E5F60718293A4B5C6D7E8F9012345678"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def store(home: Path) -> Iterator[Store]:
    with Store.open(home) as opened:
        yield opened


def spec(name: str, env_ids: tuple[str, ...], **changes: object) -> MachineSpec:
    values: dict[str, object] = {"name": name, "environment_ids": env_ids, "roles": ("web",),
                                 "communication_style": "TentacleActive", "thumbprint": THUMB,
                                 "uri": f"poll://{name.lower()}/"}
    values.update(changes)
    return MachineSpec(**values)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- home & schema

def test_home_resolution_order(tmp_path: Path) -> None:
    assert resolve_home("/x", {"OCTOPUS_COMMS_HOME": "/y"}, 1000) == Path("/x")
    assert resolve_home(None, {"OCTOPUS_COMMS_HOME": "/y"}, 1000) == Path("/y")
    assert resolve_home(None, {}, 0) == Path("/var/lib/octopus-comms")
    assert resolve_home(None, {"XDG_STATE_HOME": "/s", "HOME": "/h"}, 1000) == Path(
        "/s/octopus-comms")
    assert resolve_home(None, {"XDG_STATE_HOME": "rel", "HOME": "/h"}, 1000) == Path(
        "/h/.local/state/octopus-comms")
    (tmp_path / "file").write_text("")
    with pytest.raises(HomeError, match="not a directory"):
        ensure_home(tmp_path / "file")
    assert stat.S_IMODE(ensure_home(tmp_path / "new").stat().st_mode) == 0o700


def test_fresh_store_is_migrated_and_seeded(store: Store, home: Path) -> None:
    assert store.schema_version() == len(MIGRATIONS) == 1
    assert [(s.id, s.name, s.is_default) for s in store.list_spaces()] == [
        ("Spaces-1", "Default", True)]
    assert store.list_machine_policies()[0].id == "MachinePolicies-1"
    assert [(u.id, u.username, u.is_admin) for u in store.list_users()] == [
        ("Users-1", "admin", True)]
    assert stat.S_IMODE((home / "comms.db").stat().st_mode) == 0o600
    mode = sqlite3.connect(home / "comms.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_reopen_keeps_installation_id_and_does_not_remigrate(home: Path) -> None:
    with Store.open(home) as first:
        installation = first.installation_id()
        first.create_environment("Production")
    with Store.open(home) as second:
        assert second.installation_id() == installation
        assert [e.name for e in second.list_environments()] == ["Production"]


def test_added_migration_runs_once(home: Path) -> None:
    calls: list[int] = []

    def add_column(conn: sqlite3.Connection) -> None:
        calls.append(1)
        conn.execute("ALTER TABLE machines ADD COLUMN note TEXT")

    Store.open(home).close()
    for _ in range(2):
        with Store.open(home, migrations=(*MIGRATIONS, add_column)) as upgraded:
            assert upgraded.schema_version() == 2
    assert calls == [1]
    with pytest.raises(StoreError, match="newer than this program"):
        Store.open(home)


def test_unusable_database_is_a_one_line_error(home: Path) -> None:
    ensure_home(home)
    (home / "comms.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError) as info:
        Store.open(home)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- records

def test_environment_rules(store: Store) -> None:
    prod = store.create_environment("Production", "live")
    assert (prod.id, prod.slug, prod.sort_order) == ("Environments-1", "production", 0)
    second = store.create_environment("Pre Production!")
    assert (second.slug, second.sort_order) == ("pre-production", 1)
    with pytest.raises(ValidationFailed, match="already exists"):
        store.create_environment("  PRODUCTION ")
    with pytest.raises(ValidationFailed):
        store.create_environment("   ")
    assert store.find_environment("production").id == prod.id
    assert store.find_environment("pre-production").id == second.id
    assert store.find_environment("environments-2").id == second.id
    with pytest.raises(NotFound):
        store.find_environment("nope")
    store.create_machine(spec("web01", (prod.id,)))
    with pytest.raises(ValidationFailed, match="used by the following deployment targets: web01"):
        store.delete_environment(prod.id)
    store.delete_environment(second.id)
    assert store.create_environment("Test").id == "Environments-3"   # ids are never reused


def test_machine_rules(store: Store) -> None:
    env = store.create_environment("Production")
    before = store.generation()
    web = store.create_machine(spec("web01", (env.id,)))
    assert store.generation() > before
    assert (web.id, web.machine_policy_id, web.thumbprint) == ("Machines-1", "MachinePolicies-1",
                                                               THUMB)
    with pytest.raises(ValidationFailed) as info:
        store.create_machine(spec("WEB01", ("Environments-9",), machine_policy_id="Nope-1"))
    assert info.value.errors == [
        "A deployment target with the name 'WEB01' already exists. Deployment target names "
        "must be unique.", "The environment 'Environments-9' does not exist.",
        "The machine policy 'Nope-1' does not exist."]
    moved = store.update_machine(web.id, spec("web01", (env.id,), roles=("api",),
                                              is_disabled=True))
    assert moved.roles == ("api",) and moved.is_disabled
    assert store.trusted_thumbprints() == frozenset()
    store.update_machine(web.id, spec("web01", (env.id,)))
    assert store.trusted_thumbprints() == {THUMB}
    assert store.machines_for_subscription("POLL://WEB01") == [store.get_machine(web.id)]
    assert store.find_machine("Web01").id == web.id
    assert store.set_machine_health(web.id, {"HealthStatus": "Healthy"}).health == {
        "HealthStatus": "Healthy"}
    store.delete_machine(web.id)
    with pytest.raises(NotFound):
        store.get_machine(web.id)
    assert store.create_machine(spec("web02", (env.id,))).id == "Machines-2"


@given(st.text(max_size=30))
def test_slugs_are_url_safe(name: str) -> None:
    slug = slugify(name)
    assert slug and slug == slug.lower() and not slug.startswith("-")
    assert all(ch.isalnum() or ch == "-" for ch in slug) and "--" not in slug


# ----------------------------------------------------------------------------- secrets at rest

def test_keys_and_passwords_are_never_stored_in_clear(store: Store, home: Path) -> None:
    record, key = auth.create_api_key(store, "ci")
    user = auth.create_user(store, "alice", "Alice", "correct horse battery staple")
    assert key.startswith("API-") and len(key) == 30 and key[4:].isalnum() and key.isupper()
    assert record.prefix == key[4:10] and key not in record.key_hash
    authenticator = auth.ApiKeyAuthenticator(store)
    assert authenticator.authenticate(key) == record
    assert authenticator.authenticate(key) == record          # from the cache
    assert authenticator.authenticate(key[:-1] + "0" if key[-1] != "0" else key[:-1] + "1") \
        is None
    assert auth.verify_user_password(store, "ALICE", "correct horse battery staple") == user
    assert auth.verify_user_password(store, "alice", "wrong") is None
    assert auth.verify_user_password(store, "admin", "") is None
    data = b"".join(p.read_bytes() for p in home.iterdir() if p.name.startswith("comms.db"))
    assert record.prefix.encode() in data                     # we looked at the right bytes
    for secret in (key, key[4:], key[10:], "correct horse battery staple"):
        assert secret.encode() not in data
    store.delete_api_key(record.id)
    assert authenticator.authenticate(key) is None


def test_hash_formats_verify_and_reject_tampering() -> None:
    encoded = auth.hash_api_key("API-ABC")
    assert encoded.startswith("pbkdf2-sha256$") and auth.verify_secret("API-ABC", encoded)
    assert not auth.verify_secret("API-ABD", encoded)
    assert not auth.verify_secret("API-ABC", encoded.replace("pbkdf2", "md5"))
    assert not auth.verify_secret("API-ABC", "pbkdf2-sha256$x$y$z")
    assert auth.hash_api_key("API-ABC") != encoded           # a fresh salt every time


# ----------------------------------------------------------------------------- tasks

def test_task_state_and_logs(store: Store) -> None:
    env = store.create_environment("Production")
    a = store.create_machine(spec("a", (env.id,)))
    b = store.create_machine(spec("b", (env.id,)))
    task = store.create_task("AdHocScript", "Check", {"ScriptBody": "x"}, [a.id, b.id])
    assert (task.id, task.state, task.start_time) == ("ServerTasks-1", TaskState.QUEUED, None)
    assert [m.status for m in store.task_machines(task.id)] == [ActivityStatus.PENDING] * 2
    running = store.set_task_state(task.id, TaskState.EXECUTING)
    assert running.start_time is not None
    assert store.append_task_logs(task.id, a.id, [LogLine("info", "one"),
                                                  LogLine(LogCategory.VERBOSE, "two")]) == [1, 2]
    assert not store.get_task(task.id).has_warnings_or_errors
    assert store.append_task_log(task.id, None, "Warning", "careful") == 3
    assert store.get_task(task.id).has_warnings_or_errors
    with pytest.raises(ValidationFailed):
        store.append_task_log(task.id, a.id, "Shouting", "x")
    store.set_task_machine_state(task.id, a.id, ActivityStatus.SUCCESS, exit_code=0)
    cancelling = store.set_task_state(task.id, TaskState.CANCELLING)
    assert store.set_task_state(task.id, TaskState.EXECUTING).state is TaskState.CANCELLING
    done = store.set_task_state(task.id, TaskState.CANCELED)
    assert cancelling.state is TaskState.CANCELLING and done.completed_time is not None
    assert [m.status for m in store.task_machines(task.id)] == [ActivityStatus.SUCCESS,
                                                                ActivityStatus.CANCELED]
    assert store.set_task_state(task.id, TaskState.SUCCESS).state is TaskState.CANCELED
    assert [e.text for e in store.task_logs(task.id, a.id)] == ["one", "two"]
    assert [e.sequence for e in store.task_logs(task.id, after_sequence=1)] == [2, 3]
    with pytest.raises(ValidationFailed):
        store.create_task("AdHocScript", "x", {}, ["Machines-99"])


def test_injected_clock_stamps_times(home: Path) -> None:
    fixed = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    with Store.open(home, clock=lambda: fixed) as store:
        env = store.create_environment("E")
        machine = store.create_machine(spec("m", (env.id,)))
        assert machine.created == fixed
        task = store.create_task("AdHocScript", "x", {}, [machine.id])
        assert task.queue_time == fixed
        store.append_task_log(task.id, None, "Info", "hi")
        assert store.task_logs(task.id)[0].occurred_at == fixed


# ----------------------------------------------------------------------------- concurrency

def test_concurrent_writers_from_two_connections(home: Path) -> None:
    """Two Stores (two connections, like CLI + server) and threads on each: no lost writes."""
    first, second = Store.open(home), Store.open(home)
    try:
        env = first.create_environment("Production")
        task_machine = first.create_machine(spec("target", (env.id,)))
        task = first.create_task("AdHocScript", "x", {}, [task_machine.id])
        errors: list[BaseException] = []

        def work(store: Store, worker: int) -> None:
            try:
                for n in range(15):
                    store.create_machine(spec(f"w{worker}-{n}", (env.id,)))
                    store.append_task_log(task.id, task_machine.id, "Info", f"{worker}:{n}")
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(store, n))
                   for n, store in enumerate([first, second, first, second])]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []
        machines = second.list_machines()
        assert len(machines) == 61
        assert len({m.id for m in machines}) == 61
        logs = first.task_logs(task.id)
        assert [e.sequence for e in logs] == list(range(1, 61))
    finally:
        first.close()
        second.close()


# ----------------------------------------------------------------------------- settings

def test_settings_round_trip_and_validation(home: Path) -> None:
    ensure_home(home)
    assert settings.load_settings(home) == settings.ServerSettings()
    saved = settings.update_settings(
        home, comms_listen_websocket=settings.parse_prefix_list(
            "https://+:8443/OctopusComms", settings.validate_comms_prefix),
        web_listen_prefixes=settings.parse_prefix_list(
            "https://+:8443/api/, https://+:8443/app/,", settings.validate_web_prefix))
    assert saved.comms_listen_websocket == ("https://+:8443/OctopusComms/",)
    assert saved.web_listen_prefixes == ("https://+:8443/api/", "https://+:8443/app/")
    raw = (home / "server.json").read_text()
    (home / "server.json").write_text(raw.replace('"ApiUrl": null',
                                                  '"ApiUrl": null, "Future": [1]'))
    assert settings.load_settings(home).extra == {"Future": [1]}
    settings.update_settings(home, api_url="https://localhost:8443/api")
    assert "Future" in (home / "server.json").read_text()
    with pytest.raises(settings.SettingsError, match="scheme must be https"):
        settings.validate_comms_prefix("http://+:80/OctopusComms")
    with pytest.raises(settings.SettingsError, match="invalid web listen prefix"):
        settings.validate_web_prefix("https://+/api")
    (home / "server.json").write_text("{")
    with pytest.raises(settings.SettingsError, match="not valid JSON"):
        settings.load_settings(home)
