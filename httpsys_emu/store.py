"""The persistent HTTP.sys configuration (netsh http's data) in one SQLite database, state.db.

WAL mode, so the CLI can change the configuration while the front door reads it; every write is
one `BEGIN IMMEDIATE` transaction that also bumps a `generation` counter, so a running daemon
notices a change with one cheap query (`Store.generation()`) and then reloads a `snapshot()`.
A `schema_version` table drives migrations (`MIGRATIONS`, schema v1 today).

Rows are typed, immutable dataclasses; failures are `WinError` with the numbers netsh reports:
183 duplicate, 2 missing, 87 bad parameter.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from httpsys_emu.limits import Limits
from httpsys_emu.statedir import ensure_state_dir
from httpsys_emu.urlacl import UrlAcl
from httpsys_emu.urlprefix import Category, UrlPrefix, classify_host, parse_prefix
from httpsys_emu.sqlitedb import Migration, SchemaTooNew, open_database, read_version
from httpsys_emu.sqlitedb import migrate as run_migrations
from httpsys_emu.winerror import (ERROR_ALREADY_EXISTS, ERROR_FILE_NOT_FOUND,
                                  ERROR_INVALID_PARAMETER, WinError)

DB_NAME = "state.db"
BUSY_TIMEOUT_MS = 10_000


class StoreError(Exception):
    """The database itself cannot be used (corrupt, newer schema, locked); one-line message."""


def _bad(detail: str) -> WinError:
    return WinError(ERROR_INVALID_PARAMETER, detail)


def _check_port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise _bad(f"port {port!r} out of range 1..65535")
    return port


# ----------------------------------------------------------------------------- sslcert rows

class SslKind(enum.Enum):
    """How a binding is keyed, in the order §7 consults them for a connection."""

    HOSTNAMEPORT = "hostnameport"
    IPPORT = "ipport"
    CCS = "ccs"


@dataclass(frozen=True)
class SslKey:
    """The identity of an sslcert binding: `ipport=`, `hostnameport=` or `ccs=`.

    `host` is the compressed IP address (no brackets) for ipport, the lower-case DNS name for
    hostnameport, and "" for ccs. Build with the class methods, which validate.
    """

    kind: SslKind
    host: str
    port: int

    @classmethod
    def ipport(cls, ip: str, port: int) -> SslKey:
        text = ip[1:-1] if ip.startswith("[") and ip.endswith("]") else ip
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise _bad(f"{ip!r} is not an IP address") from None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return cls(SslKind.IPPORT, address.compressed, _check_port(port))

    @classmethod
    def hostnameport(cls, name: str, port: int) -> SslKey:
        try:
            category, host = classify_host(name)
        except WinError:
            raise _bad(f"{name!r} is not a host name") from None
        if category is not Category.EXPLICIT:
            raise _bad(f"{name!r} is not a host name")
        return cls(SslKind.HOSTNAMEPORT, host, _check_port(port))

    @classmethod
    def ccs(cls, port: int) -> SslKey:
        return cls(SslKind.CCS, "", _check_port(port))

    @property
    def is_ipv6(self) -> bool:
        return self.kind is SslKind.IPPORT and ":" in self.host

    def __str__(self) -> str:
        """The value as netsh writes it: `0.0.0.0:443`, `[::]:443`, `name:443`, `443`."""
        if self.kind is SslKind.CCS:
            return str(self.port)
        host = f"[{self.host}]" if self.is_ipv6 else self.host
        return f"{host}:{self.port}"


_THUMBPRINT_RE = re.compile(r"[0-9A-F]{40}")
_GUID_RE = re.compile(r"\{[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\}")


@dataclass(frozen=True)
class SslCertBinding:
    """One `netsh http add sslcert` binding with every §8 field (netsh's defaults).

    `certhash` is 40 upper-case hex digits; `appid` is `{guid}` in lower case, as netsh shows
    it; `certstorename` None means "not given" (netsh shows `(null)`, the store used is MY).
    """

    key: SslKey
    certhash: str | None  # None only for a ccs binding (the certificate is found by SNI)
    appid: str
    certstorename: str | None = None
    verify_client_cert_revocation: bool = True
    verify_revocation_with_cached_client_cert_only: bool = False
    usage_check: bool = True
    revocation_freshness_time: int = 0
    url_retrieval_timeout: int = 0
    sslctl_identifier: str | None = None
    sslctl_storename: str | None = None
    ds_mapper_usage: bool = False
    client_cert_negotiation: bool = False

    def __post_init__(self) -> None:
        if self.certhash is None:
            if self.key.kind is not SslKind.CCS:
                raise _bad("certhash is required for ipport and hostnameport bindings")
        elif not _THUMBPRINT_RE.fullmatch(self.certhash):
            raise _bad(f"certhash {self.certhash!r} is not 40 upper-case hex digits")
        if not _GUID_RE.fullmatch(self.appid):
            raise _bad(f"appid {self.appid!r} is not a lower-case {{GUID}}")
        for name in ("revocation_freshness_time", "url_retrieval_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
                raise _bad(f"{name} {value!r} is not an unsigned 32-bit number")

    @property
    def store_name(self) -> str:
        """The certificate store the hash is looked up in (default MY)."""
        return (self.certstorename or "MY").upper()


# ----------------------------------------------------------------------------- other rows

@dataclass(frozen=True)
class UrlAclEntry:
    """A URL reservation: the prefix (shown as written) and who may listen / delegate."""

    prefix: UrlPrefix
    acl: UrlAcl


_TCP_TARGET_RE = re.compile(r"http://(\[[^\]]*\]|[^:/\[\]]+):([1-9][0-9]{0,4})/?")
UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the NUL


@dataclass(frozen=True)
class ForwardTarget:
    """Where a static forward sends requests: `http://HOST:PORT` or `unix:/PATH`."""

    host: str | None = None   # DNS name, IPv4, or IPv6 without brackets
    port: int | None = None
    unix_path: str | None = None

    @classmethod
    def parse(cls, text: str) -> ForwardTarget:
        """Parse a `target=` value; WinError 87 for anything else."""
        if text.startswith("unix:"):
            path = text[len("unix:"):]
            if not path.startswith("/") or "\x00" in path:
                raise _bad(f"unix target {text!r} needs an absolute path")
            if len(path.encode()) > UNIX_PATH_MAX:
                raise _bad(f"unix socket path longer than {UNIX_PATH_MAX} bytes")
            return cls(unix_path=path)
        match = _TCP_TARGET_RE.fullmatch(text)
        if match is None:
            raise _bad(f"target {text!r} is not http://HOST:PORT or unix:/PATH")
        host, port = match.group(1), int(match.group(2))
        _check_port(port)
        if host.startswith("["):
            try:
                host = ipaddress.IPv6Address(host[1:-1]).compressed
            except ValueError:
                raise _bad(f"bad IPv6 address in target {text!r}") from None
        else:
            try:
                classify_host(host, allow_unspecified=False)
            except WinError:
                raise _bad(f"bad host in target {text!r}") from None
            host = host.lower()
        return cls(host=host, port=port)

    @property
    def is_unix(self) -> bool:
        return self.unix_path is not None

    def __str__(self) -> str:
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@dataclass(frozen=True)
class Forward:
    """A static registration: requests routed to `prefix` go to `target`."""

    prefix: UrlPrefix
    target: ForwardTarget


def normalize_ip_address(text: str) -> str:
    """An `iplisten ipaddress=` value in canonical form (compressed, no brackets); 87 if bad."""
    inner = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return ipaddress.ip_address(inner).compressed
    except ValueError:
        raise _bad(f"{text!r} is not an IP address") from None


# ----------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class SettingSpec:
    """One tunable of §5: its stored name, default, unit and allowed range."""

    name: str
    default: int
    unit: str
    minimum: int
    maximum: int
    is_timeout: bool


# Names are HTTP.sys's own (HTTP_TIMEOUT_LIMIT_INFO fields, the netsh timeouttype values for the
# two netsh can set, the registry names for the size limits); `limits.Limits.from_settings`
# understands every one of them.
SETTINGS: dict[str, SettingSpec] = {s.name: s for s in (
    SettingSpec("idleconnectiontimeout", 120, "secs", 1, 65535, True),
    SettingSpec("headerwaittimeout", 120, "secs", 1, 65535, True),
    SettingSpec("entitybody", 120, "secs", 1, 65535, True),
    SettingSpec("drainentitybody", 120, "secs", 1, 65535, True),
    SettingSpec("requestqueue", 120, "secs", 1, 65535, True),
    SettingSpec("minsendrate", 150, "bytes/sec", 1, 2**31 - 1, True),
    SettingSpec("maxfieldlength", 16384, "bytes", 64, 65534, False),
    SettingSpec("maxrequestbytes", 16384, "bytes", 256, 16777216, False),
    SettingSpec("urlsegmentmaxlength", 260, "chars", 1, 32766, False),
    SettingSpec("urlsegmentmaxcount", 255, "segments", 1, 16383, False),
    SettingSpec("requestqueuelength", 1000, "requests", 1, 65535, False),
)}
NETSH_TIMEOUT_TYPES = ("idleconnectiontimeout", "headerwaittimeout")


@dataclass(frozen=True)
class Timeouts:
    """The effective HTTP.sys timers (defaults overlaid with stored values)."""

    idle_connection: int = 120
    header_wait: int = 120
    entity_body: int = 120
    drain_entity_body: int = 120
    request_queue: int = 120
    min_send_rate: int = 150

    @classmethod
    def from_settings(cls, settings: dict[str, int]) -> Timeouts:
        names = ("idleconnectiontimeout", "headerwaittimeout", "entitybody", "drainentitybody",
                 "requestqueue", "minsendrate")
        values = {f.name: settings.get(n, SETTINGS[n].default)
                  for f, n in zip(fields(cls), names, strict=True)}
        return cls(**values)


def _setting_spec(name: str) -> SettingSpec:
    spec = SETTINGS.get(name.lower())
    if spec is None:
        raise _bad(f"unknown setting {name!r}")
    return spec


@dataclass(frozen=True)
class Snapshot:
    """Everything the front door needs, read in one transaction."""

    generation: int
    sslcerts: tuple[SslCertBinding, ...]
    urlacls: tuple[UrlAclEntry, ...]
    iplisten: tuple[str, ...]
    settings: dict[str, int]
    forwards: tuple[Forward, ...]

    @property
    def timeouts(self) -> Timeouts:
        return Timeouts.from_settings(self.settings)

    @property
    def limits(self) -> Limits:
        return Limits.from_settings(self.settings)


# ----------------------------------------------------------------------------- schema

def _migrate_0_to_1(conn: sqlite3.Connection) -> None:
    for statement in (
        "CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
        "INSERT INTO meta (name, value) VALUES ('generation', 0)",
        """CREATE TABLE sslcert (
            kind TEXT NOT NULL, host TEXT NOT NULL, port INTEGER NOT NULL,
            certhash TEXT, appid TEXT NOT NULL, certstorename TEXT,
            verify_client_cert_revocation INTEGER NOT NULL,
            verify_revocation_with_cached_client_cert_only INTEGER NOT NULL,
            usage_check INTEGER NOT NULL,
            revocation_freshness_time INTEGER NOT NULL,
            url_retrieval_timeout INTEGER NOT NULL,
            sslctl_identifier TEXT, sslctl_storename TEXT,
            ds_mapper_usage INTEGER NOT NULL,
            client_cert_negotiation INTEGER NOT NULL,
            PRIMARY KEY (kind, host, port))""",
        "CREATE TABLE urlacl (key TEXT PRIMARY KEY, url TEXT NOT NULL, sddl TEXT NOT NULL)",
        "CREATE TABLE iplisten (address TEXT PRIMARY KEY)",
        "CREATE TABLE setting (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
        "CREATE TABLE forward (key TEXT PRIMARY KEY, url TEXT NOT NULL, target TEXT NOT NULL)",
    ):
        conn.execute(statement)


# MIGRATIONS[i] takes a database from version i to version i + 1. Append, never edit.
MIGRATIONS: tuple[Migration, ...] = (_migrate_0_to_1,)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Bring the database up to `len(migrations)` (see httpsys_emu.sqlitedb)."""
    try:
        return run_migrations(conn, migrations, after=_bump_generation)
    except SchemaTooNew as exc:
        raise StoreError(f"state database has schema version {exc.version}, newer than this "
                         f"program understands ({exc.target}); upgrade httpsys-emu") from None


def _bump_generation(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE meta SET value = value + 1 WHERE name = 'generation'")


# ----------------------------------------------------------------------------- the store

_SSL_COLUMNS = ("kind", "host", "port", "certhash", "appid", "certstorename",
                "verify_client_cert_revocation",
                "verify_revocation_with_cached_client_cert_only", "usage_check",
                "revocation_freshness_time", "url_retrieval_timeout", "sslctl_identifier",
                "sslctl_storename", "ds_mapper_usage", "client_cert_negotiation")


def _ssl_row(binding: SslCertBinding) -> tuple[object, ...]:
    b = binding
    return (b.key.kind.value, b.key.host, b.key.port, b.certhash, b.appid, b.certstorename,
            int(b.verify_client_cert_revocation),
            int(b.verify_revocation_with_cached_client_cert_only), int(b.usage_check),
            b.revocation_freshness_time, b.url_retrieval_timeout, b.sslctl_identifier,
            b.sslctl_storename, int(b.ds_mapper_usage), int(b.client_cert_negotiation))


def _ssl_from_row(row: Sequence[Any]) -> SslCertBinding:
    (kind, host, port, certhash, appid, storename, vccr, vrcco, usage, freshness, retrieval,
     ctl_id, ctl_store, dsmapper, negotiate) = row
    return SslCertBinding(
        key=SslKey(SslKind(kind), str(host), int(port)),
        certhash=None if certhash is None else str(certhash), appid=str(appid),
        certstorename=None if storename is None else str(storename),
        verify_client_cert_revocation=bool(vccr),
        verify_revocation_with_cached_client_cert_only=bool(vrcco), usage_check=bool(usage),
        revocation_freshness_time=int(freshness),
        url_retrieval_timeout=int(retrieval),
        sslctl_identifier=None if ctl_id is None else str(ctl_id),
        sslctl_storename=None if ctl_store is None else str(ctl_store),
        ds_mapper_usage=bool(dsmapper), client_cert_negotiation=bool(negotiate))


def _prefix(url: str | UrlPrefix) -> UrlPrefix:
    return url if isinstance(url, UrlPrefix) else parse_prefix(url)


class Store:
    """A connection to state.db. Thread-safe (one lock); open one per process or thread pool.

    Reads see the last committed state (WAL); each mutating method is one transaction that
    also increments `generation()`.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._lock = threading.RLock()
        self.path = path

    @classmethod
    def open(cls, state_dir: str | Path,
             migrations: Sequence[Migration] = MIGRATIONS) -> Store:
        """Open (creating and migrating if needed) `<state_dir>/state.db`.

        StateDirError if the directory is unusable, StoreError if the database is.
        """
        directory = ensure_state_dir(Path(state_dir))
        path = directory / DB_NAME
        # synchronous=FULL: "successfully added" survives power loss
        conn = open_database(path, migrations, migrate, BUSY_TIMEOUT_MS, "state database",
                             StoreError)
        return cls(conn, path)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StoreError(f"state database is busy: {exc}") from None
            try:
                yield self._conn
                self._conn.execute(
                    "UPDATE meta SET value = value + 1 WHERE name = 'generation'")
                self._conn.execute("COMMIT")
            except BaseException as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"state database error: {exc}") from None
                raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                self._conn.execute("COMMIT")

    def schema_version(self) -> int:
        with self._lock:
            return read_version(self._conn)

    def generation(self) -> int:
        """A counter bumped by every committed write, from any process."""
        with self._lock:
            row = self._conn.execute(
                "SELECT value FROM meta WHERE name = 'generation'").fetchone()
        return int(row[0])

    # -- sslcert

    def add_sslcert(self, binding: SslCertBinding) -> None:
        """Add a binding; 183 if one with the same key exists."""
        with self._write() as conn:
            try:
                conn.execute(f"INSERT INTO sslcert ({', '.join(_SSL_COLUMNS)}) VALUES "
                             f"({', '.join('?' * len(_SSL_COLUMNS))})", _ssl_row(binding))
            except sqlite3.IntegrityError:
                raise WinError(ERROR_ALREADY_EXISTS, f"sslcert {binding.key}") from None

    def delete_sslcert(self, key: SslKey) -> None:
        with self._write() as conn:
            cursor = conn.execute("DELETE FROM sslcert WHERE kind = ? AND host = ? AND port = ?",
                                  (key.kind.value, key.host, key.port))
            if cursor.rowcount == 0:
                raise WinError(ERROR_FILE_NOT_FOUND, f"sslcert {key}")

    def get_sslcert(self, key: SslKey) -> SslCertBinding:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {', '.join(_SSL_COLUMNS)} FROM sslcert "
                "WHERE kind = ? AND host = ? AND port = ?",
                (key.kind.value, key.host, key.port)).fetchone()
        if row is None:
            raise WinError(ERROR_FILE_NOT_FOUND, f"sslcert {key}")
        return _ssl_from_row(row)

    def list_sslcerts(self) -> list[SslCertBinding]:
        with self._lock:
            return self._list_sslcerts(self._conn)

    @staticmethod
    def _list_sslcerts(conn: sqlite3.Connection) -> list[SslCertBinding]:
        rows = conn.execute(f"SELECT {', '.join(_SSL_COLUMNS)} FROM sslcert ORDER BY rowid")
        return [_ssl_from_row(row) for row in rows]

    # -- urlacl

    def add_urlacl(self, url: str | UrlPrefix, acl: UrlAcl) -> UrlAclEntry:
        """Reserve `url`; 87 if it is not a valid prefix, 183 if it is already reserved."""
        prefix = _prefix(url)
        with self._write() as conn:
            try:
                conn.execute("INSERT INTO urlacl (key, url, sddl) VALUES (?, ?, ?)",
                             (prefix.canonical(), str(prefix), acl.to_sddl()))
            except sqlite3.IntegrityError:
                raise WinError(ERROR_ALREADY_EXISTS, f"urlacl {prefix}") from None
        return UrlAclEntry(prefix, acl)

    def delete_urlacl(self, url: str | UrlPrefix) -> None:
        prefix = _prefix(url)
        with self._write() as conn:
            cursor = conn.execute("DELETE FROM urlacl WHERE key = ?", (prefix.canonical(),))
            if cursor.rowcount == 0:
                raise WinError(ERROR_FILE_NOT_FOUND, f"urlacl {prefix}")

    def get_urlacl(self, url: str | UrlPrefix) -> UrlAclEntry:
        prefix = _prefix(url)
        with self._lock:
            row = self._conn.execute("SELECT url, sddl FROM urlacl WHERE key = ?",
                                     (prefix.canonical(),)).fetchone()
        if row is None:
            raise WinError(ERROR_FILE_NOT_FOUND, f"urlacl {prefix}")
        return UrlAclEntry(parse_prefix(row[0]), UrlAcl.from_sddl(row[1]))

    def list_urlacls(self) -> list[UrlAclEntry]:
        with self._lock:
            return self._list_urlacls(self._conn)

    @staticmethod
    def _list_urlacls(conn: sqlite3.Connection) -> list[UrlAclEntry]:
        rows = conn.execute("SELECT url, sddl FROM urlacl ORDER BY rowid")
        return [UrlAclEntry(parse_prefix(url), UrlAcl.from_sddl(sddl)) for url, sddl in rows]

    # -- iplisten

    def add_iplisten(self, address: str) -> str:
        canonical = normalize_ip_address(address)
        with self._write() as conn:
            try:
                conn.execute("INSERT INTO iplisten (address) VALUES (?)", (canonical,))
            except sqlite3.IntegrityError:
                raise WinError(ERROR_ALREADY_EXISTS, f"iplisten {canonical}") from None
        return canonical

    def delete_iplisten(self, address: str) -> None:
        canonical = normalize_ip_address(address)
        with self._write() as conn:
            cursor = conn.execute("DELETE FROM iplisten WHERE address = ?", (canonical,))
            if cursor.rowcount == 0:
                raise WinError(ERROR_FILE_NOT_FOUND, f"iplisten {canonical}")

    def list_iplisten(self) -> list[str]:
        with self._lock:
            return self._list_iplisten(self._conn)

    @staticmethod
    def _list_iplisten(conn: sqlite3.Connection) -> list[str]:
        return [row[0] for row in conn.execute("SELECT address FROM iplisten ORDER BY rowid")]

    # -- settings (timeouts and limits)

    def set_setting(self, name: str, value: int) -> None:
        """Set one §5 tunable (see SETTINGS); 87 for an unknown name or out-of-range value."""
        spec = _setting_spec(name)
        if isinstance(value, bool) or not isinstance(value, int) \
                or not spec.minimum <= value <= spec.maximum:
            raise _bad(f"{spec.name} must be {spec.minimum}..{spec.maximum}, not {value!r}")
        with self._write() as conn:
            conn.execute("INSERT INTO setting (name, value) VALUES (?, ?) "
                         "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                         (spec.name, value))

    def delete_setting(self, name: str) -> None:
        """Back to the default; 2 if the setting was not set."""
        spec = _setting_spec(name)
        with self._write() as conn:
            cursor = conn.execute("DELETE FROM setting WHERE name = ?", (spec.name,))
            if cursor.rowcount == 0:
                raise WinError(ERROR_FILE_NOT_FOUND, f"setting {spec.name} is not set")

    def set_timeout(self, name: str, seconds: int) -> None:
        """Set a timer (`idleconnectiontimeout`, `headerwaittimeout`, `entitybody`, ...)."""
        if not _setting_spec(name).is_timeout:
            raise _bad(f"{name!r} is not a timeout")
        self.set_setting(name, seconds)

    def delete_timeout(self, name: str) -> None:
        if not _setting_spec(name).is_timeout:
            raise _bad(f"{name!r} is not a timeout")
        self.delete_setting(name)

    def settings(self) -> dict[str, int]:
        """The stored overrides only, by name (what `Limits.from_settings` takes)."""
        with self._lock:
            return self._settings(self._conn)

    @staticmethod
    def _settings(conn: sqlite3.Connection) -> dict[str, int]:
        return {name: int(value)
                for name, value in conn.execute("SELECT name, value FROM setting")}

    def timeouts(self) -> Timeouts:
        return Timeouts.from_settings(self.settings())

    def limits(self) -> Limits:
        """All limits and timers with defaults filled in."""
        return Limits.from_settings(self.settings())

    # -- forwards

    def add_forward(self, url: str | UrlPrefix, target: str | ForwardTarget) -> Forward:
        prefix = _prefix(url)
        parsed = target if isinstance(target, ForwardTarget) else ForwardTarget.parse(target)
        with self._write() as conn:
            try:
                conn.execute("INSERT INTO forward (key, url, target) VALUES (?, ?, ?)",
                             (prefix.canonical(), str(prefix), str(parsed)))
            except sqlite3.IntegrityError:
                raise WinError(ERROR_ALREADY_EXISTS, f"forward {prefix}") from None
        return Forward(prefix, parsed)

    def delete_forward(self, url: str | UrlPrefix) -> None:
        prefix = _prefix(url)
        with self._write() as conn:
            cursor = conn.execute("DELETE FROM forward WHERE key = ?", (prefix.canonical(),))
            if cursor.rowcount == 0:
                raise WinError(ERROR_FILE_NOT_FOUND, f"forward {prefix}")

    def list_forwards(self) -> list[Forward]:
        with self._lock:
            return self._list_forwards(self._conn)

    @staticmethod
    def _list_forwards(conn: sqlite3.Connection) -> list[Forward]:
        rows = conn.execute("SELECT url, target FROM forward ORDER BY rowid")
        return [Forward(parse_prefix(url), ForwardTarget.parse(target)) for url, target in rows]

    # -- everything at once

    def snapshot(self) -> Snapshot:
        """A consistent view of the whole configuration (one read transaction)."""
        with self._read() as conn:
            generation = int(conn.execute(
                "SELECT value FROM meta WHERE name = 'generation'").fetchone()[0])
            return Snapshot(generation=generation,
                            sslcerts=tuple(self._list_sslcerts(conn)),
                            urlacls=tuple(self._list_urlacls(conn)),
                            iplisten=tuple(self._list_iplisten(conn)),
                            settings=self._settings(conn),
                            forwards=tuple(self._list_forwards(conn)))
