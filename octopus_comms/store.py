"""The comms server's persistent state in one SQLite database, `<home>/comms.db`.

Spaces, environments, machine policies, machines (deployment targets), users, API keys (hashes
only), ad hoc script tasks, their per-machine results and their log lines. WAL mode, so the CLI
can register an environment while the server runs; every write is one short `BEGIN IMMEDIATE`
transaction; a `schema_version` table drives `MIGRATIONS`. Ids are Octopus's (`Machines-7`) and
come from per-collection counters, so a deleted id is never handed out again.

Threading: a Store owns one connection guarded by a lock, so any thread may call it, and every
call is one short transaction. Reads take well under a millisecond, so trio code may call them
directly; a write ends with an fsync (synchronous=FULL: a created key or task survives a crash),
a few milliseconds on real disks, so trio code should make writes (task log batches above all)
and big reads through `trio.to_thread.run_sync`. Open one Store per process. Time comes from the
injected `clock` (UTC), never from the methods themselves.
"""

from __future__ import annotations

import enum
import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from httpsys_emu.sqlitedb import Migration, SchemaTooNew, open_database, read_version
from httpsys_emu.sqlitedb import migrate as run_migrations

from octopus_comms.home import db_path, ensure_home

BUSY_TIMEOUT_MS = 10_000
DB_MODE = 0o600
DEFAULT_SPACE_ID = "Spaces-1"
DEFAULT_MACHINE_POLICY_ID = "MachinePolicies-1"
ADMIN_USER_ID = "Users-1"

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


# ----------------------------------------------------------------------------- errors

class StoreError(Exception):
    """The database itself cannot be used (corrupt, newer schema, locked); one-line message."""


class NotFound(Exception):
    """No record with that id (or name); the message names what was looked for, and
    `resource_id` is the id as the caller gave it (for the API's "resource not found")."""

    def __init__(self, message: str, resource_id: str | None = None) -> None:
        super().__init__(message)
        self.resource_id = resource_id


class ValidationFailed(Exception):
    """A write was refused; `errors` are the messages for the API's `Errors` list."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(self.errors))


# ----------------------------------------------------------------------------- enums

class TaskState(enum.StrEnum):
    """Octopus's TaskState names (JSON writes them as strings)."""

    QUEUED = "Queued"
    EXECUTING = "Executing"
    FAILED = "Failed"
    CANCELED = "Canceled"
    TIMED_OUT = "TimedOut"
    SUCCESS = "Success"
    CANCELLING = "Cancelling"

    @property
    def is_completed(self) -> bool:
        return self in COMPLETED_TASK_STATES


COMPLETED_TASK_STATES = frozenset({TaskState.FAILED, TaskState.CANCELED, TaskState.TIMED_OUT,
                                   TaskState.SUCCESS})


class ActivityStatus(enum.StrEnum):
    """Octopus's ActivityStatus: the state of one machine's part of a task."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCESS = "Success"
    FAILED = "Failed"
    SKIPPED = "Skipped"
    SUCCESS_WITH_WARNING = "SuccessWithWarning"
    CANCELED = "Canceled"

    @property
    def is_finished(self) -> bool:
        return self not in (ActivityStatus.PENDING, ActivityStatus.RUNNING)


class LogCategory(enum.StrEnum):
    """Octopus's ActivityLogEntryCategory."""

    TRACE = "Trace"
    VERBOSE = "Verbose"
    INFO = "Info"
    HIGHLIGHT = "Highlight"
    WAIT = "Wait"
    GAP = "Gap"
    ALERT = "Alert"
    WARNING = "Warning"
    ERROR = "Error"
    FATAL = "Fatal"
    PLANNED = "Planned"
    UPDATED = "Updated"
    FINISHED = "Finished"
    ABANDONED = "Abandoned"


WARNING_CATEGORIES = frozenset({LogCategory.WARNING, LogCategory.ERROR, LogCategory.FATAL})
COMMUNICATION_STYLES = ("TentacleActive", "TentaclePassive")
TENANTED_PARTICIPATION = ("Untenanted", "TenantedOrUntenanted", "Tenanted")


# ----------------------------------------------------------------------------- records

@dataclass(frozen=True)
class Space:
    id: str
    name: str
    slug: str
    description: str
    is_default: bool


@dataclass(frozen=True)
class Environment:
    id: str
    space_id: str
    name: str
    slug: str
    description: str
    sort_order: int
    use_guided_failure: bool = False
    allow_dynamic_infrastructure: bool = True


@dataclass(frozen=True)
class MachinePolicy:
    id: str
    space_id: str
    name: str
    description: str
    is_default: bool


@dataclass(frozen=True)
class MachineSpec:
    """The writable fields of a deployment target, as validated by the API or the CLI."""

    name: str
    environment_ids: tuple[str, ...]
    roles: tuple[str, ...]
    communication_style: str          # TentacleActive | TentaclePassive
    thumbprint: str                   # the agent's certificate, 40 upper-case hex digits
    uri: str                          # poll://abcdefghijklmnopqrst/ or https://host:10933/
    tenanted_deployment_participation: str = "Untenanted"
    tenant_ids: tuple[str, ...] = ()
    tenant_tags: tuple[str, ...] = ()
    machine_policy_id: str | None = None   # None: the space's default policy
    is_disabled: bool = False


@dataclass(frozen=True)
class Machine:
    id: str
    space_id: str
    name: str
    environment_ids: tuple[str, ...]
    roles: tuple[str, ...]
    communication_style: str
    thumbprint: str
    uri: str
    tenanted_deployment_participation: str
    tenant_ids: tuple[str, ...]
    tenant_tags: tuple[str, ...]
    machine_policy_id: str
    is_disabled: bool
    health: Mapping[str, Any]
    created: datetime
    modified: datetime


@dataclass(frozen=True)
class User:
    id: str
    username: str
    display_name: str
    email_address: str | None
    password_hash: str | None
    is_admin: bool
    is_active: bool
    is_service: bool
    created: datetime


@dataclass(frozen=True)
class ApiKey:
    id: str
    user_id: str
    name: str
    prefix: str          # the first characters after "API-", for lookup; not a secret
    key_hash: str        # auth.hash_api_key(); the key itself is never stored
    created: datetime


@dataclass(frozen=True)
class Task:
    id: str
    space_id: str
    name: str
    description: str
    arguments: Mapping[str, Any]
    machine_ids: tuple[str, ...]      # the resolved targets, in execution order
    state: TaskState
    queue_time: datetime
    start_time: datetime | None
    completed_time: datetime | None
    last_updated_time: datetime
    error_message: str
    has_warnings_or_errors: bool

    @property
    def is_completed(self) -> bool:
        return self.state.is_completed


@dataclass(frozen=True)
class TaskMachine:
    """One machine's part of a task (one activity in the task details)."""

    task_id: str
    machine_id: str
    machine_name: str     # as it was when the task was created
    position: int
    status: ActivityStatus
    exit_code: int | None
    started: datetime | None
    ended: datetime | None


@dataclass(frozen=True)
class TaskLogEntry:
    task_id: str
    sequence: int         # 1, 2, 3 ... per task, in append order
    machine_id: str | None
    category: LogCategory
    occurred_at: datetime
    text: str


@dataclass(frozen=True)
class LogLine:
    """What a runner appends: category, text, and when it happened (None: now)."""

    category: LogCategory | str
    text: str
    occurred_at: datetime | None = None


@dataclass(frozen=True)
class TaskQuery:
    space_id: str | None = None
    states: frozenset[TaskState] = field(default_factory=frozenset)
    name: str | None = None
    ids: frozenset[str] = field(default_factory=frozenset)


# ----------------------------------------------------------------------------- helpers

def name_key(name: str) -> str:
    """Names compare trimmed and case-insensitively (Unicode case folding)."""
    return name.strip().casefold()


def slugify(name: str) -> str:
    """Octopus-style slug: lower-case, runs of anything else than letters/digits become '-'."""
    out: list[str] = []
    dash = False
    for ch in name.strip().lower():
        if ch.isalnum():
            out.append(ch)
            dash = False
        elif not dash and out:
            out.append("-")
            dash = True
    return "".join(out).strip("-") or "item"


def format_time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def parse_time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _tuple(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text))


# ----------------------------------------------------------------------------- schema

def _migrate_0_to_1(conn: sqlite3.Connection) -> None:
    statements = (
        "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE sequences (collection TEXT PRIMARY KEY, next INTEGER NOT NULL)",
        """CREATE TABLE spaces (id TEXT PRIMARY KEY, name TEXT NOT NULL,
            name_key TEXT NOT NULL UNIQUE, slug TEXT NOT NULL, description TEXT NOT NULL,
            is_default INTEGER NOT NULL)""",
        """CREATE TABLE environments (id TEXT PRIMARY KEY, space_id TEXT NOT NULL
            REFERENCES spaces(id), name TEXT NOT NULL, name_key TEXT NOT NULL,
            slug TEXT NOT NULL, description TEXT NOT NULL, sort_order INTEGER NOT NULL,
            use_guided_failure INTEGER NOT NULL, allow_dynamic_infrastructure INTEGER NOT NULL,
            UNIQUE (space_id, name_key))""",
        """CREATE TABLE machine_policies (id TEXT PRIMARY KEY, space_id TEXT NOT NULL
            REFERENCES spaces(id), name TEXT NOT NULL, description TEXT NOT NULL,
            is_default INTEGER NOT NULL)""",
        """CREATE TABLE machines (id TEXT PRIMARY KEY, space_id TEXT NOT NULL
            REFERENCES spaces(id), name TEXT NOT NULL, name_key TEXT NOT NULL,
            environment_ids TEXT NOT NULL, roles TEXT NOT NULL,
            communication_style TEXT NOT NULL, thumbprint TEXT NOT NULL, uri TEXT NOT NULL,
            tenanted_participation TEXT NOT NULL, tenant_ids TEXT NOT NULL,
            tenant_tags TEXT NOT NULL, machine_policy_id TEXT NOT NULL,
            is_disabled INTEGER NOT NULL, health TEXT NOT NULL, created TEXT NOT NULL,
            modified TEXT NOT NULL, UNIQUE (space_id, name_key))""",
        "CREATE INDEX machines_thumbprint ON machines (thumbprint)",
        """CREATE TABLE users (id TEXT PRIMARY KEY, username TEXT NOT NULL,
            username_key TEXT NOT NULL UNIQUE, display_name TEXT NOT NULL, email TEXT,
            password_hash TEXT, is_admin INTEGER NOT NULL, is_active INTEGER NOT NULL,
            is_service INTEGER NOT NULL, created TEXT NOT NULL)""",
        """CREATE TABLE api_keys (id TEXT PRIMARY KEY, user_id TEXT NOT NULL
            REFERENCES users(id) ON DELETE CASCADE, name TEXT NOT NULL, prefix TEXT NOT NULL,
            key_hash TEXT NOT NULL, created TEXT NOT NULL)""",
        "CREATE INDEX api_keys_prefix ON api_keys (prefix)",
        """CREATE TABLE tasks (id TEXT PRIMARY KEY, seq INTEGER NOT NULL UNIQUE,
            space_id TEXT NOT NULL, name TEXT NOT NULL, description TEXT NOT NULL,
            arguments TEXT NOT NULL, machine_ids TEXT NOT NULL, state TEXT NOT NULL,
            queue_time TEXT NOT NULL, start_time TEXT, completed_time TEXT,
            last_updated TEXT NOT NULL, error_message TEXT NOT NULL,
            has_warnings INTEGER NOT NULL)""",
        "CREATE INDEX tasks_state ON tasks (state)",
        """CREATE TABLE task_machines (task_id TEXT NOT NULL REFERENCES tasks(id)
            ON DELETE CASCADE, machine_id TEXT NOT NULL, machine_name TEXT NOT NULL,
            position INTEGER NOT NULL, status TEXT NOT NULL, exit_code INTEGER,
            started TEXT, ended TEXT, PRIMARY KEY (task_id, machine_id))""",
        """CREATE TABLE task_logs (task_id TEXT NOT NULL REFERENCES tasks(id)
            ON DELETE CASCADE, seq INTEGER NOT NULL, machine_id TEXT,
            category TEXT NOT NULL, occurred_at TEXT NOT NULL, text TEXT NOT NULL,
            PRIMARY KEY (task_id, seq))""",
    )
    for statement in statements:
        conn.execute(statement)
    conn.execute("INSERT INTO meta (name, value) VALUES ('installation_id', ?)",
                 (str(uuid.uuid4()),))
    conn.execute("INSERT INTO meta (name, value) VALUES ('generation', '0')")
    for collection, next_value in (("Spaces", 2), ("MachinePolicies", 2), ("Users", 2)):
        conn.execute("INSERT INTO sequences (collection, next) VALUES (?, ?)",
                     (collection, next_value))
    conn.execute("INSERT INTO spaces VALUES (?, 'Default', 'default', 'default', '', 1)",
                 (DEFAULT_SPACE_ID,))
    conn.execute("INSERT INTO machine_policies VALUES (?, ?, 'Default Machine Policy', "
                 "'This is the default machine policy', 1)",
                 (DEFAULT_MACHINE_POLICY_ID, DEFAULT_SPACE_ID))
    conn.execute("INSERT INTO users VALUES (?, 'admin', 'admin', 'Administrator', NULL, NULL, "
                 "1, 1, 0, ?)", (ADMIN_USER_ID, format_time(utc_now())))


# MIGRATIONS[i] takes a database from version i to version i + 1. Append, never edit.
MIGRATIONS: tuple[Migration, ...] = (_migrate_0_to_1,)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Bring the database up to `len(migrations)` (see httpsys_emu.sqlitedb)."""
    try:
        return run_migrations(conn, migrations)
    except SchemaTooNew as exc:
        raise StoreError(f"comms database has schema version {exc.version}, newer than this "
                         f"program understands ({exc.target}); upgrade octopus-comms") from None


# ----------------------------------------------------------------------------- row mapping

_MACHINE_COLUMNS = ("id, space_id, name, environment_ids, roles, communication_style, "
                    "thumbprint, uri, tenanted_participation, tenant_ids, tenant_tags, "
                    "machine_policy_id, is_disabled, health, created, modified")
_TASK_COLUMNS = ("id, space_id, name, description, arguments, machine_ids, state, queue_time, "
                 "start_time, completed_time, last_updated, error_message, has_warnings")
_USER_COLUMNS = ("id, username, display_name, email, password_hash, is_admin, is_active, "
                 "is_service, created")


def _machine(row: Sequence[Any]) -> Machine:
    return Machine(id=row[0], space_id=row[1], name=row[2], environment_ids=_tuple(row[3]),
                   roles=_tuple(row[4]), communication_style=row[5], thumbprint=row[6],
                   uri=row[7], tenanted_deployment_participation=row[8],
                   tenant_ids=_tuple(row[9]), tenant_tags=_tuple(row[10]),
                   machine_policy_id=row[11], is_disabled=bool(row[12]),
                   health=json.loads(row[13]), created=_time(row[14]),
                   modified=_time(row[15]))


def _task(row: Sequence[Any]) -> Task:
    return Task(id=row[0], space_id=row[1], name=row[2], description=row[3],
                arguments=json.loads(row[4]), machine_ids=_tuple(row[5]),
                state=TaskState(row[6]), queue_time=_time(row[7]),
                start_time=parse_time(row[8]), completed_time=parse_time(row[9]),
                last_updated_time=_time(row[10]), error_message=row[11],
                has_warnings_or_errors=bool(row[12]))


def _user(row: Sequence[Any]) -> User:
    return User(id=row[0], username=row[1], display_name=row[2], email_address=row[3],
                password_hash=row[4], is_admin=bool(row[5]), is_active=bool(row[6]),
                is_service=bool(row[7]), created=_time(row[8]))


def _environment(row: Sequence[Any]) -> Environment:
    return Environment(id=row[0], space_id=row[1], name=row[2], slug=row[3],
                       description=row[4], sort_order=int(row[5]),
                       use_guided_failure=bool(row[6]),
                       allow_dynamic_infrastructure=bool(row[7]))


_ENV_COLUMNS = ("id, space_id, name, slug, description, sort_order, use_guided_failure, "
                "allow_dynamic_infrastructure")


def _api_key(row: Sequence[Any]) -> ApiKey:
    return ApiKey(id=row[0], user_id=row[1], name=row[2], prefix=row[3], key_hash=row[4],
                  created=_time(row[5]))


def _task_machine(row: Sequence[Any]) -> TaskMachine:
    return TaskMachine(task_id=row[0], machine_id=row[1], machine_name=row[2],
                       position=int(row[3]), status=ActivityStatus(row[4]),
                       exit_code=None if row[5] is None else int(row[5]),
                       started=parse_time(row[6]), ended=parse_time(row[7]))


def _log(row: Sequence[Any]) -> TaskLogEntry:
    return TaskLogEntry(task_id=row[0], sequence=int(row[1]), machine_id=row[2],
                        category=LogCategory(row[3]), occurred_at=_time(row[4]), text=row[5])


def _category(value: LogCategory | str) -> LogCategory:
    if isinstance(value, LogCategory):
        return value
    for category in LogCategory:
        if category.value.lower() == str(value).lower():
            return category
    raise ValidationFailed([f"Unknown log category {value!r}."])


# ----------------------------------------------------------------------------- the store

class Store:
    """A connection to comms.db. Thread-safe (one lock); see the module docstring."""

    ADMIN_USER_ID = ADMIN_USER_ID
    DEFAULT_SPACE_ID = DEFAULT_SPACE_ID

    def __init__(self, conn: sqlite3.Connection, path: Path, clock: Clock = utc_now) -> None:
        self._conn = conn
        self._lock = threading.RLock()
        self._clock = clock
        self.path = path

    @classmethod
    def open(cls, home: str | os.PathLike[str], clock: Clock = utc_now,
             migrations: Sequence[Migration] = MIGRATIONS) -> Store:
        """Open (creating and migrating if needed) `<home>/comms.db`.

        HomeError if the directory is unusable, StoreError if the database is.
        """
        path = db_path(ensure_home(home))
        try:
            if not path.exists():
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, DB_MODE))
        except OSError as exc:
            raise StoreError(f"cannot open comms database {path}: {exc}") from None
        # synchronous=FULL: a created key or task survives a crash
        conn = open_database(path, migrations, migrate, BUSY_TIMEOUT_MS, "comms database",
                             StoreError)
        return cls(conn, path, clock)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def now(self) -> datetime:
        return self._clock().astimezone(UTC)

    # -- transactions

    @contextmanager
    def _write(self, bump: bool = False) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StoreError(f"comms database is busy: {exc}") from None
            try:
                yield self._conn
                if bump:
                    self._conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 "
                                       "WHERE name = 'generation'")
                self._conn.execute("COMMIT")
            except BaseException as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"comms database error: {exc}") from None
                raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._conn.execute("BEGIN")
                try:
                    yield self._conn
                finally:
                    self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"comms database error: {exc}") from None

    @staticmethod
    def _next_id(conn: sqlite3.Connection, collection: str) -> str:
        row = conn.execute("SELECT next FROM sequences WHERE collection = ?",
                           (collection,)).fetchone()
        value = 1 if row is None else int(row[0])
        conn.execute("INSERT INTO sequences (collection, next) VALUES (?, ?) ON CONFLICT "
                     "(collection) DO UPDATE SET next = excluded.next", (collection, value + 1))
        return f"{collection}-{value}"

    # -- meta

    def schema_version(self) -> int:
        with self._lock:
            return read_version(self._conn)

    def installation_id(self) -> str:
        """A GUID made when the database was created; stable for its lifetime."""
        with self._read() as conn:
            return str(conn.execute(
                "SELECT value FROM meta WHERE name = 'installation_id'").fetchone()[0])

    def generation(self) -> int:
        """Bumped by every change to machines, environments, users or API keys (not tasks).

        The serving process polls this cheaply to reload its trusted thumbprints.
        """
        with self._read() as conn:
            return int(conn.execute(
                "SELECT value FROM meta WHERE name = 'generation'").fetchone()[0])

    # -- spaces

    def list_spaces(self) -> list[Space]:
        with self._read() as conn:
            rows = conn.execute("SELECT id, name, slug, description, is_default FROM spaces "
                                "ORDER BY CAST(substr(id, 8) AS INTEGER)").fetchall()
        return [Space(r[0], r[1], r[2], r[3], bool(r[4])) for r in rows]

    def get_space(self, space_id: str) -> Space:
        for space in self.list_spaces():
            if space.id.lower() == space_id.lower():
                return space
        raise NotFound(f"Space {space_id} not found", space_id)

    def default_space(self) -> Space:
        for space in self.list_spaces():
            if space.is_default:
                return space
        raise NotFound("No default space")

    # -- environments

    def create_environment(self, name: str, description: str = "",
                           space_id: str = DEFAULT_SPACE_ID) -> Environment:
        clean = name.strip() if isinstance(name, str) else ""
        if not clean:
            raise ValidationFailed(["Please provide a name for the environment."])
        if len(clean) > 200 or any(ord(ch) < 32 for ch in clean):
            raise ValidationFailed(["The environment name must be at most 200 characters, "
                                    "without control characters."])
        with self._write(bump=True) as conn:
            self._require_space(conn, space_id)
            if conn.execute("SELECT 1 FROM environments WHERE space_id = ? AND name_key = ?",
                            (space_id, name_key(clean))).fetchone():
                raise ValidationFailed([f"An environment with the name '{clean}' already "
                                        "exists. Environment names must be unique."])
            env_id = self._next_id(conn, "Environments")
            order = conn.execute("SELECT COALESCE(MAX(sort_order) + 1, 0) FROM environments "
                                 "WHERE space_id = ?", (space_id,)).fetchone()[0]
            slug = self._unique_slug(conn, "environments", space_id, slugify(clean))
            conn.execute("INSERT INTO environments VALUES (?, ?, ?, ?, ?, ?, ?, 0, 1)",
                         (env_id, space_id, clean, name_key(clean), slug, description or "",
                          int(order)))
        return self.get_environment(env_id)

    @staticmethod
    def _unique_slug(conn: sqlite3.Connection, table: str, space_id: str, slug: str) -> str:
        candidate, n = slug, 1
        while conn.execute(f"SELECT 1 FROM {table} WHERE space_id = ? AND slug = ?",
                           (space_id, candidate)).fetchone():
            n += 1
            candidate = f"{slug}-{n}"
        return candidate

    @staticmethod
    def _require_space(conn: sqlite3.Connection, space_id: str) -> None:
        if not conn.execute("SELECT 1 FROM spaces WHERE id = ?", (space_id,)).fetchone():
            raise NotFound(f"Space {space_id} not found", space_id)

    def get_environment(self, env_id: str, space_id: str | None = None) -> Environment:
        with self._read() as conn:
            row = conn.execute(f"SELECT {_ENV_COLUMNS} FROM environments WHERE id = ? "
                               "COLLATE NOCASE", (env_id,)).fetchone()
        if row is None or (space_id is not None and row[1] != space_id):
            raise NotFound(f"Environment {env_id} not found", env_id)
        return _environment(row)

    def list_environments(self, space_id: str | None = DEFAULT_SPACE_ID) -> list[Environment]:
        with self._read() as conn:
            if space_id is None:
                rows = conn.execute(f"SELECT {_ENV_COLUMNS} FROM environments "
                                    "ORDER BY space_id, sort_order, name_key").fetchall()
            else:
                rows = conn.execute(f"SELECT {_ENV_COLUMNS} FROM environments WHERE "
                                    "space_id = ? ORDER BY sort_order, name_key",
                                    (space_id,)).fetchall()
        return [_environment(r) for r in rows]

    def find_environment(self, text: str, space_id: str = DEFAULT_SPACE_ID) -> Environment:
        """By name, then slug, then id (ignoring case), as `register-with` matches them."""
        environments = self.list_environments(space_id)
        key = name_key(text)
        for match in (lambda e: name_key(e.name) == key, lambda e: e.slug.casefold() == key,
                      lambda e: e.id.casefold() == key):
            for env in environments:
                if match(env):
                    return env
        raise NotFound(f"Environment {text!r} not found")

    def update_environment(self, env_id: str, *, name: str | None = None,
                           description: str | None = None, sort_order: int | None = None,
                           use_guided_failure: bool | None = None,
                           allow_dynamic_infrastructure: bool | None = None) -> Environment:
        current = self.get_environment(env_id)
        new_name = current.name if name is None else name.strip()
        if not new_name:
            raise ValidationFailed(["Please provide a name for the environment."])
        if len(new_name) > 200 or any(ord(ch) < 32 for ch in new_name):
            raise ValidationFailed(["The environment name must be at most 200 characters, "
                                    "without control characters."])
        with self._write(bump=True) as conn:
            clash = conn.execute("SELECT id FROM environments WHERE space_id = ? AND "
                                 "name_key = ? AND id <> ?",
                                 (current.space_id, name_key(new_name), current.id)).fetchone()
            if clash:
                raise ValidationFailed([f"An environment with the name '{new_name}' already "
                                        "exists. Environment names must be unique."])
            conn.execute(
                "UPDATE environments SET name = ?, name_key = ?, description = ?, "
                "sort_order = ?, use_guided_failure = ?, allow_dynamic_infrastructure = ? "
                "WHERE id = ?",
                (new_name, name_key(new_name),
                 current.description if description is None else description,
                 current.sort_order if sort_order is None else int(sort_order),
                 int(current.use_guided_failure if use_guided_failure is None
                     else use_guided_failure),
                 int(current.allow_dynamic_infrastructure
                     if allow_dynamic_infrastructure is None else allow_dynamic_infrastructure),
                 current.id))
        return self.get_environment(current.id)

    def delete_environment(self, env_id: str) -> Environment:
        env = self.get_environment(env_id)
        with self._write(bump=True) as conn:
            users = [m for m in self._machines(conn, env.space_id)
                     if env.id in m.environment_ids]
            if users:
                names = ", ".join(m.name for m in users)
                raise ValidationFailed([f"The environment '{env.name}' is used by the "
                                        f"following deployment targets: {names}. Remove them "
                                        "from the environment first."])
            conn.execute("DELETE FROM environments WHERE id = ?", (env.id,))
        return env

    # -- machine policies

    def list_machine_policies(self, space_id: str = DEFAULT_SPACE_ID) -> list[MachinePolicy]:
        with self._read() as conn:
            rows = conn.execute("SELECT id, space_id, name, description, is_default FROM "
                                "machine_policies WHERE space_id = ? ORDER BY id",
                                (space_id,)).fetchall()
        return [MachinePolicy(r[0], r[1], r[2], r[3], bool(r[4])) for r in rows]

    def get_machine_policy(self, policy_id: str, space_id: str | None = None) -> MachinePolicy:
        with self._read() as conn:
            row = conn.execute("SELECT id, space_id, name, description, is_default FROM "
                               "machine_policies WHERE id = ? COLLATE NOCASE",
                               (policy_id,)).fetchone()
        if row is None or (space_id is not None and row[1] != space_id):
            raise NotFound(f"Machine policy {policy_id} not found", policy_id)
        return MachinePolicy(row[0], row[1], row[2], row[3], bool(row[4]))

    # -- machines

    def _check_machine(self, conn: sqlite3.Connection, spec: MachineSpec, space_id: str,
                       exclude_id: str | None) -> str:
        """Referential and uniqueness checks; returns the machine policy id to store."""
        errors: list[str] = []
        if not spec.name.strip():
            errors.append("Please provide a name for the deployment target.")
        else:
            clash = conn.execute("SELECT id FROM machines WHERE space_id = ? AND name_key = ? "
                                 "AND id <> ?", (space_id, name_key(spec.name),
                                                 exclude_id or "")).fetchone()
            if clash:
                errors.append(f"A deployment target with the name '{spec.name.strip()}' "
                              "already exists. Deployment target names must be unique.")
        known = {r[0] for r in conn.execute("SELECT id FROM environments WHERE space_id = ?",
                                            (space_id,))}
        if not spec.environment_ids:
            errors.append("Please select at least one environment for the deployment target.")
        for env_id in spec.environment_ids:
            if env_id not in known:
                errors.append(f"The environment '{env_id}' does not exist.")
        policy = spec.machine_policy_id
        if policy is None:
            row = conn.execute("SELECT id FROM machine_policies WHERE space_id = ? AND "
                               "is_default = 1", (space_id,)).fetchone()
            policy = row[0] if row else DEFAULT_MACHINE_POLICY_ID
        elif not conn.execute("SELECT 1 FROM machine_policies WHERE id = ? AND space_id = ?",
                              (policy, space_id)).fetchone():
            errors.append(f"The machine policy '{policy}' does not exist.")
        if spec.communication_style not in COMMUNICATION_STYLES:
            errors.append(f"The communication style '{spec.communication_style}' is not "
                          "supported by this server.")
        if spec.tenanted_deployment_participation not in TENANTED_PARTICIPATION:
            errors.append("TenantedDeploymentParticipation must be one of "
                          + ", ".join(TENANTED_PARTICIPATION) + ".")
        for tenant in spec.tenant_ids:
            errors.append(f"The tenant '{tenant}' does not exist.")
        if errors:
            raise ValidationFailed(errors)
        return policy

    def create_machine(self, spec: MachineSpec, space_id: str = DEFAULT_SPACE_ID) -> Machine:
        now = format_time(self.now())
        with self._write(bump=True) as conn:
            self._require_space(conn, space_id)
            policy = self._check_machine(conn, spec, space_id, None)
            machine_id = self._next_id(conn, "Machines")
            conn.execute(f"INSERT INTO machines ({_MACHINE_COLUMNS}, name_key) VALUES "
                         "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (machine_id, space_id, spec.name.strip(),
                          _json(list(spec.environment_ids)), _json(list(spec.roles)),
                          spec.communication_style, spec.thumbprint.upper(), spec.uri,
                          spec.tenanted_deployment_participation, _json(list(spec.tenant_ids)),
                          _json(list(spec.tenant_tags)), policy, int(spec.is_disabled), "{}",
                          now, now, name_key(spec.name)))
        return self.get_machine(machine_id)

    def update_machine(self, machine_id: str, spec: MachineSpec) -> Machine:
        current = self.get_machine(machine_id)
        now = format_time(self.now())
        with self._write(bump=True) as conn:
            policy = self._check_machine(conn, spec, current.space_id, current.id)
            conn.execute("UPDATE machines SET name = ?, name_key = ?, environment_ids = ?, "
                         "roles = ?, communication_style = ?, thumbprint = ?, uri = ?, "
                         "tenanted_participation = ?, tenant_ids = ?, tenant_tags = ?, "
                         "machine_policy_id = ?, is_disabled = ?, modified = ? WHERE id = ?",
                         (spec.name.strip(), name_key(spec.name),
                          _json(list(spec.environment_ids)), _json(list(spec.roles)),
                          spec.communication_style, spec.thumbprint.upper(), spec.uri,
                          spec.tenanted_deployment_participation, _json(list(spec.tenant_ids)),
                          _json(list(spec.tenant_tags)), policy, int(spec.is_disabled), now,
                          current.id))
        return self.get_machine(current.id)

    def delete_machine(self, machine_id: str) -> Machine:
        machine = self.get_machine(machine_id)
        with self._write(bump=True) as conn:
            conn.execute("DELETE FROM machines WHERE id = ?", (machine.id,))
        return machine

    def get_machine(self, machine_id: str, space_id: str | None = None) -> Machine:
        with self._read() as conn:
            row = conn.execute(f"SELECT {_MACHINE_COLUMNS} FROM machines WHERE id = ? "
                               "COLLATE NOCASE", (machine_id,)).fetchone()
        if row is None or (space_id is not None and row[1] != space_id):
            raise NotFound(f"Machine {machine_id} not found", machine_id)
        return _machine(row)

    @staticmethod
    def _machines(conn: sqlite3.Connection, space_id: str | None) -> list[Machine]:
        order = "ORDER BY name_key, CAST(substr(id, 10) AS INTEGER)"
        if space_id is None:
            rows = conn.execute(f"SELECT {_MACHINE_COLUMNS} FROM machines {order}").fetchall()
        else:
            rows = conn.execute(f"SELECT {_MACHINE_COLUMNS} FROM machines WHERE space_id = ? "
                                f"{order}", (space_id,)).fetchall()
        return [_machine(r) for r in rows]

    def list_machines(self, space_id: str | None = DEFAULT_SPACE_ID) -> list[Machine]:
        """Machines ordered by name (None: every space)."""
        with self._read() as conn:
            return self._machines(conn, space_id)

    def find_machine(self, name_or_id: str, space_id: str | None = None) -> Machine:
        """By id, else by name (ignoring case); NotFound otherwise."""
        machines = self.list_machines(space_id)
        key = name_key(name_or_id)
        for machine in machines:
            if machine.id.casefold() == key:
                return machine
        for machine in machines:
            if name_key(machine.name) == key:
                return machine
        raise NotFound(f"Machine {name_or_id!r} not found")

    def machines_for_subscription(self, subscription_uri: str) -> list[Machine]:
        """Polling machines registered with that `poll://…/` subscription id (any space)."""
        key = subscription_uri.strip().lower().rstrip("/") + "/"
        return [m for m in self.list_machines(None)
                if m.communication_style == "TentacleActive" and m.uri.lower() == key]

    def trusted_thumbprints(self) -> frozenset[str]:
        """Client-certificate thumbprints of enabled polling machines, for the comms endpoint."""
        with self._read() as conn:
            rows = conn.execute("SELECT DISTINCT thumbprint FROM machines WHERE is_disabled = 0 "
                                "AND communication_style = 'TentacleActive'").fetchall()
        return frozenset(r[0] for r in rows)

    def trusted_machine(self, thumbprint: str) -> Machine | None:
        """The enabled polling machine with this client-certificate thumbprint (indexed look-up,
        done for every polling connection before anything else is read)."""
        with self._read() as conn:
            row = conn.execute(f"SELECT {_MACHINE_COLUMNS} FROM machines WHERE thumbprint = ? "
                               "AND is_disabled = 0 AND communication_style = 'TentacleActive' "
                               "ORDER BY id LIMIT 1", (thumbprint.upper(),)).fetchone()
        return None if row is None else _machine(row)

    def set_machine_health(self, machine_id: str, health: Mapping[str, Any]) -> Machine:
        """Replace the machine's health document (HealthStatus, StatusSummary, LastSeen, …)."""
        machine = self.get_machine(machine_id)
        with self._write() as conn:
            conn.execute("UPDATE machines SET health = ? WHERE id = ?",
                         (_json(dict(health)), machine.id))
        return self.get_machine(machine.id)

    # -- users

    def create_user(self, username: str, display_name: str, password_hash: str | None,
                    is_admin: bool = False, email_address: str | None = None) -> User:
        clean = username.strip() if isinstance(username, str) else ""
        if not clean:
            raise ValidationFailed(["Please provide a username."])
        if any(ch.isspace() or ord(ch) < 32 for ch in clean) or len(clean) > 64:
            raise ValidationFailed(["Usernames must be 64 characters or fewer, without spaces."])
        with self._write(bump=True) as conn:
            if conn.execute("SELECT 1 FROM users WHERE username_key = ?",
                            (name_key(clean),)).fetchone():
                raise ValidationFailed([f"A user with the username '{clean}' already exists."])
            user_id = self._next_id(conn, "Users")
            conn.execute(f"INSERT INTO users ({_USER_COLUMNS}, username_key) VALUES "
                         "(?, ?, ?, ?, ?, ?, 1, 0, ?, ?)",
                         (user_id, clean, display_name.strip() or clean, email_address,
                          password_hash, int(is_admin), format_time(self.now()),
                          name_key(clean)))
        return self.get_user(user_id)

    def get_user(self, user_id: str) -> User:
        with self._read() as conn:
            row = conn.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE id = ? "
                               "COLLATE NOCASE", (user_id,)).fetchone()
        if row is None:
            raise NotFound(f"User {user_id} not found", user_id)
        return _user(row)

    def find_user(self, username_or_id: str) -> User | None:
        with self._read() as conn:
            row = conn.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE username_key = ? OR "
                               "id = ? COLLATE NOCASE",
                               (name_key(username_or_id), username_or_id.strip())).fetchone()
        return None if row is None else _user(row)

    def list_users(self) -> list[User]:
        with self._read() as conn:
            rows = conn.execute(f"SELECT {_USER_COLUMNS} FROM users "
                                "ORDER BY CAST(substr(id, 7) AS INTEGER)").fetchall()
        return [_user(r) for r in rows]

    def set_user_password_hash(self, user_id: str, password_hash: str | None) -> User:
        user = self.get_user(user_id)
        with self._write(bump=True) as conn:
            conn.execute("UPDATE users SET password_hash = ? WHERE id = ?",
                         (password_hash, user.id))
        return self.get_user(user.id)

    # -- API keys (hashes only: see auth.py)

    def add_api_key(self, user_id: str, name: str, prefix: str, key_hash: str) -> ApiKey:
        with self._write(bump=True) as conn:
            if not conn.execute("SELECT 1 FROM users WHERE id = ?", (user_id,)).fetchone():
                raise NotFound(f"User {user_id} not found", user_id)
            key_id = self._next_id(conn, "APIKeys")
            conn.execute("INSERT INTO api_keys (id, user_id, name, prefix, key_hash, created) "
                         "VALUES (?, ?, ?, ?, ?, ?)",
                         (key_id, user_id, name, prefix, key_hash, format_time(self.now())))
        found = self.find_api_key(key_id)
        assert found is not None
        return found

    def find_api_key(self, key_id: str) -> ApiKey | None:
        with self._read() as conn:
            row = conn.execute("SELECT id, user_id, name, prefix, key_hash, created FROM "
                               "api_keys WHERE id = ? COLLATE NOCASE", (key_id,)).fetchone()
        return None if row is None else _api_key(row)

    def api_keys_with_prefix(self, prefix: str) -> list[ApiKey]:
        with self._read() as conn:
            rows = conn.execute("SELECT id, user_id, name, prefix, key_hash, created FROM "
                                "api_keys WHERE prefix = ?", (prefix,)).fetchall()
        return [_api_key(r) for r in rows]

    def list_api_keys(self, user_id: str | None = None) -> list[ApiKey]:
        with self._read() as conn:
            rows = conn.execute("SELECT id, user_id, name, prefix, key_hash, created FROM "
                                "api_keys ORDER BY CAST(substr(id, 9) AS INTEGER)").fetchall()
        keys = [_api_key(r) for r in rows]
        return keys if user_id is None else [k for k in keys if k.user_id == user_id]

    def delete_api_key(self, key_id: str) -> ApiKey:
        key = self.find_api_key(key_id)
        if key is None:
            raise NotFound(f"API key {key_id} not found", key_id)
        with self._write(bump=True) as conn:
            conn.execute("DELETE FROM api_keys WHERE id = ?", (key.id,))
        return key

    # -- tasks

    def create_task(self, name: str, description: str, arguments: Mapping[str, Any],
                    machine_ids: Sequence[str], space_id: str = DEFAULT_SPACE_ID) -> Task:
        """A Queued task over `machine_ids` (which must exist); one Pending activity each."""
        now = format_time(self.now())
        with self._write() as conn:
            self._require_space(conn, space_id)
            names: list[str] = []
            for machine_id in machine_ids:
                row = conn.execute("SELECT name FROM machines WHERE id = ?",
                                   (machine_id,)).fetchone()
                if row is None:
                    raise ValidationFailed([f"The machine '{machine_id}' does not exist."])
                names.append(row[0])
            task_id = self._next_id(conn, "ServerTasks")
            seq = int(task_id.rsplit("-", 1)[1])
            conn.execute(f"INSERT INTO tasks ({_TASK_COLUMNS}, seq) VALUES "
                         "(?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?, '', 0, ?)",
                         (task_id, space_id, name, description, _json(dict(arguments)),
                          _json(list(machine_ids)), TaskState.QUEUED.value, now, now, seq))
            for position, (machine_id, machine_name) in enumerate(zip(machine_ids, names,
                                                                      strict=True)):
                conn.execute("INSERT INTO task_machines VALUES (?, ?, ?, ?, ?, NULL, NULL, "
                             "NULL)", (task_id, machine_id, machine_name, position,
                                       ActivityStatus.PENDING.value))
        return self.get_task(task_id)

    def get_task(self, task_id: str, space_id: str | None = None) -> Task:
        with self._read() as conn:
            row = conn.execute(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id = ? "
                               "COLLATE NOCASE", (task_id,)).fetchone()
        if row is None or (space_id is not None and row[1] != space_id):
            raise NotFound(f"Task {task_id} not found", task_id)
        return _task(row)

    def list_tasks(self, query: TaskQuery = TaskQuery(), skip: int = 0,
                   take: int | None = None) -> tuple[list[Task], int]:
        """(page, total matching), newest first."""
        clauses: list[str] = []
        params: list[Any] = []
        if query.space_id is not None:
            clauses.append("space_id = ?")
            params.append(query.space_id)
        if query.states:
            clauses.append(f"state IN ({', '.join('?' * len(query.states))})")
            params.extend(sorted(s.value for s in query.states))
        if query.name is not None:
            clauses.append("name = ? COLLATE NOCASE")
            params.append(query.name)
        if query.ids:
            clauses.append(f"id IN ({', '.join('?' * len(query.ids))})")
            params.extend(sorted(query.ids))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        limit = -1 if take is None else max(0, take)
        with self._read() as conn:
            total = int(conn.execute(f"SELECT COUNT(*) FROM tasks {where}",
                                     params).fetchone()[0])
            rows = conn.execute(f"SELECT {_TASK_COLUMNS} FROM tasks {where} ORDER BY seq DESC "
                                "LIMIT ? OFFSET ?", [*params, limit, max(0, skip)]).fetchall()
        return [_task(r) for r in rows], total

    def set_task_state(self, task_id: str, state: TaskState | str,
                       error_message: str | None = None) -> Task:
        """Move a task on. Completed tasks never change (the call returns them as they are).

        Executing stamps StartTime; a completed state stamps CompletedTime and closes the
        machines still Pending or Running (Canceled for Canceled, Failed for Failed/TimedOut).
        """
        new = TaskState(state)
        now = self.now()
        with self._write() as conn:
            row = conn.execute(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id = ?",
                               (task_id,)).fetchone()
            if row is None:
                raise NotFound(f"Task {task_id} not found", task_id)
            task = _task(row)
            if task.is_completed or (task.state is TaskState.CANCELLING
                                     and new in (TaskState.QUEUED, TaskState.EXECUTING)):
                return task
            start = task.start_time
            if new is TaskState.EXECUTING and start is None:
                start = now
            completed = now if new.is_completed else None
            conn.execute("UPDATE tasks SET state = ?, start_time = ?, completed_time = ?, "
                         "last_updated = ?, error_message = ? WHERE id = ?",
                         (new.value, None if start is None else format_time(start),
                          None if completed is None else format_time(completed),
                          format_time(now),
                          task.error_message if error_message is None else error_message,
                          task.id))
            if new.is_completed:
                closing = {TaskState.CANCELED: ActivityStatus.CANCELED,
                           TaskState.FAILED: ActivityStatus.FAILED,
                           TaskState.TIMED_OUT: ActivityStatus.FAILED}.get(new)
                if closing is not None:
                    conn.execute("UPDATE task_machines SET status = ?, ended = ? WHERE "
                                 "task_id = ? AND status IN ('Pending', 'Running')",
                                 (closing.value, format_time(now), task.id))
        return self.get_task(task.id)

    def set_task_machine_state(self, task_id: str, machine_id: str,
                               status: ActivityStatus | str,
                               exit_code: int | None = None) -> TaskMachine:
        """Record one machine's progress: Running stamps Started, a finished status Ended."""
        new = ActivityStatus(status)
        now = format_time(self.now())
        with self._write() as conn:
            row = conn.execute("SELECT task_id, machine_id, machine_name, position, status, "
                               "exit_code, started, ended FROM task_machines WHERE task_id = ? "
                               "AND machine_id = ?", (task_id, machine_id)).fetchone()
            if row is None:
                raise NotFound(f"Machine {machine_id} is not part of task {task_id}")
            current = _task_machine(row)
            started = current.started
            if new is not ActivityStatus.PENDING and started is None:
                started = self.now()
            ended = now if new.is_finished else None
            conn.execute("UPDATE task_machines SET status = ?, exit_code = ?, started = ?, "
                         "ended = ? WHERE task_id = ? AND machine_id = ?",
                         (new.value, current.exit_code if exit_code is None else int(exit_code),
                          None if started is None else format_time(started), ended, task_id,
                          machine_id))
            conn.execute("UPDATE tasks SET last_updated = ? WHERE id = ?", (now, task_id))
        return self.task_machines(task_id, machine_id)[0]

    def task_machines(self, task_id: str, machine_id: str | None = None) -> list[TaskMachine]:
        with self._read() as conn:
            rows = conn.execute("SELECT task_id, machine_id, machine_name, position, status, "
                                "exit_code, started, ended FROM task_machines WHERE task_id = ? "
                                "ORDER BY position", (task_id,)).fetchall()
        machines = [_task_machine(r) for r in rows]
        return machines if machine_id is None else [m for m in machines
                                                    if m.machine_id == machine_id]

    def append_task_log(self, task_id: str, machine_id: str | None,
                        category: LogCategory | str, text: str,
                        occurred_at: datetime | None = None) -> int:
        """Append one line (machine_id None: the task's own log); returns its sequence."""
        return self.append_task_logs(task_id, machine_id,
                                     [LogLine(category, text, occurred_at)])[-1]

    def append_task_logs(self, task_id: str, machine_id: str | None,
                         lines: Iterable[LogLine]) -> list[int]:
        """Append lines in one transaction (a batch of script output); returns their sequences."""
        batch = [(_category(line.category), str(line.text), line.occurred_at)
                 for line in lines]
        if not batch:
            return []
        now = self.now()
        with self._write() as conn:
            if not conn.execute("SELECT 1 FROM tasks WHERE id = ?", (task_id,)).fetchone():
                raise NotFound(f"Task {task_id} not found", task_id)
            seq = int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM task_logs WHERE "
                                   "task_id = ?", (task_id,)).fetchone()[0])
            sequences: list[int] = []
            warned = False
            for category, text, occurred in batch:
                seq += 1
                sequences.append(seq)
                warned = warned or category in WARNING_CATEGORIES
                conn.execute("INSERT INTO task_logs VALUES (?, ?, ?, ?, ?, ?)",
                             (task_id, seq, machine_id, category.value,
                              format_time(occurred or now), text))
            conn.execute("UPDATE tasks SET last_updated = ?, has_warnings = has_warnings OR ? "
                         "WHERE id = ?", (format_time(now), int(warned), task_id))
        return sequences

    def task_logs(self, task_id: str, machine_id: str | None = None,
                  after_sequence: int = 0) -> list[TaskLogEntry]:
        """Log lines in order; with `machine_id`, only that machine's."""
        with self._read() as conn:
            if machine_id is None:
                rows = conn.execute("SELECT task_id, seq, machine_id, category, occurred_at, "
                                    "text FROM task_logs WHERE task_id = ? AND seq > ? "
                                    "ORDER BY seq", (task_id, after_sequence)).fetchall()
            else:
                rows = conn.execute("SELECT task_id, seq, machine_id, category, occurred_at, "
                                    "text FROM task_logs WHERE task_id = ? AND machine_id = ? "
                                    "AND seq > ? ORDER BY seq",
                                    (task_id, machine_id, after_sequence)).fetchall()
        return [_log(r) for r in rows]
