"""Our SQLite stores (the front door's state.db, the comms server's comms.db): opening, WAL,
durability and schema migrations in one place, so both get the same guarantees.

`migrations[i]` takes a database from version i to i + 1; append, never edit. Several processes
may open a fresh database at once: the version is re-read under the write lock, so each step runs
exactly once, and all of it happens in one transaction.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Sequence

Migration = Callable[[sqlite3.Connection], None]


class SchemaTooNew(Exception):
    """The database was written by a newer program."""

    def __init__(self, version: int, target: int) -> None:
        self.version = version
        self.target = target
        super().__init__(f"schema version {version}, newer than this program understands "
                         f"({target})")


def read_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT name FROM sqlite_master WHERE type='table' "
                       "AND name='schema_version'").fetchone()
    if row is None:
        return 0
    version = conn.execute("SELECT version FROM schema_version").fetchone()
    return int(version[0]) if version else 0


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration],
            after: Callable[[sqlite3.Connection], None] | None = None) -> int:
    """Bring the database up to `len(migrations)`; returns the version it had.

    `after` runs inside the same transaction when anything was applied (e.g. to bump a change
    counter). SchemaTooNew when the database is ahead of us.
    """
    target = len(migrations)
    if read_version(conn) == target:
        return target
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = read_version(conn)
        if version > target:
            raise SchemaTooNew(version, target)
        for step in migrations[version:]:
            step(conn)
        if version < target:
            if version == 0:
                conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (target,))
            else:
                conn.execute("UPDATE schema_version SET version = ?", (target,))
            if after is not None:
                after(conn)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return version


def prepare_connection(conn: sqlite3.Connection, migrations: Sequence[Migration],
                       migrate_fn: Callable[[sqlite3.Connection, Sequence[Migration]], int],
                       busy_timeout_ms: int) -> str:
    """WAL, durability and the schema, retried while another process holds the lock.

    SQLite does not run the busy handler for every lock a fresh database needs (switching to
    WAL, the first schema write): two CLI commands on a new state directory at the same moment
    could fail with "database is locked". Returns the journal mode in force.
    """
    import time
    deadline = time.monotonic() + busy_timeout_ms / 1000
    delay = 0.005
    while True:
        try:
            conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
            mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            migrate_fn(conn, migrations)
            return mode
        except sqlite3.OperationalError as exc:
            text = str(exc).lower()
            if ("locked" not in text and "busy" not in text) or time.monotonic() > deadline:
                raise
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def open_database(path: "os.PathLike[str] | str", migrations: Sequence[Migration],
                  migrate_fn: Callable[[sqlite3.Connection, Sequence[Migration]], int],
                  busy_timeout_ms: int, label: str, error: type[Exception]) -> sqlite3.Connection:
    """A connection in WAL mode with the schema brought up to date; `error` (one line, naming
    the database as `label`) for anything that goes wrong. Autocommit: the stores open their own
    transactions."""
    try:
        conn = sqlite3.connect(path, timeout=busy_timeout_ms / 1000, isolation_level=None,
                               check_same_thread=False)
    except sqlite3.Error as exc:
        raise error(f"cannot open {label} {path}: {exc}") from None
    try:
        mode = prepare_connection(conn, migrations, migrate_fn, busy_timeout_ms)
        if mode.lower() != "wal":
            raise error(f"{label} {path} cannot use WAL mode ({mode})")
    except error:
        conn.close()
        raise
    except sqlite3.Error as exc:
        conn.close()
        raise error(f"cannot use {label} {path}: {exc}") from None
    return conn
