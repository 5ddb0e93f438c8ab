"""Who is signed in to the portal, and whether a form post really came from them.

Pure state with an injected clock (no I/O, no trio), so expiry and throttling are testable without
waiting. Sessions live in memory only: a restart signs everyone out, which is also why each
session's API key (see app.py) can be revoked wholesale at startup.

- `SessionStore`: random 32-byte session tokens, kept by SHA-256 digest (the table never holds a
  usable cookie value), with an idle timeout and an absolute lifetime, and a bounded count.
- CSRF: every session has its own synchronizer token, compared with `hmac.compare_digest`; the
  sign-in form, which has no session yet, uses a double-submit token (cookie + form field).
  `same_origin` checks `Origin` / `Referer` when the browser sends them.
- `LoginThrottle`: failed sign-ins per client IP in a sliding window, in bounded memory.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

Clock = Callable[[], float]

TOKEN_BYTES = 32
DEFAULT_IDLE_TIMEOUT = 30 * 60.0
DEFAULT_ABSOLUTE_TIMEOUT = 12 * 3600.0
DEFAULT_MAX_SESSIONS = 10_000


def new_token() -> str:
    """32 random bytes, URL-safe base64 (43 characters): a session, CSRF or login token."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def tokens_equal(expected: str, presented: str | None) -> bool:
    """Constant-time comparison of a token we issued with what the client sent back."""
    if presented is None:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), presented.encode("utf-8", "replace"))


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


@dataclass
class Session:
    """One signed-in browser. `api_key` is the session's own key (see app.py), never logged."""

    token: str = field(repr=False)
    csrf_token: str = field(repr=False)
    user_id: str
    username: str
    display_name: str
    api_key_id: str
    api_key: str = field(repr=False)
    created: float
    last_seen: float


class SessionStore:
    """In-memory sessions with idle and absolute expiry; not thread-safe (one trio loop owns it)."""

    def __init__(self, clock: Clock = time.monotonic, *,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 absolute_timeout: float = DEFAULT_ABSOLUTE_TIMEOUT,
                 max_sessions: int = DEFAULT_MAX_SESSIONS) -> None:
        self._clock = clock
        self.idle_timeout = idle_timeout
        self.absolute_timeout = absolute_timeout
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[bytes, Session] = OrderedDict()   # least recently used first

    def __len__(self) -> int:
        return len(self._sessions)

    def _expired(self, session: Session, now: float) -> bool:
        return (now - session.last_seen >= self.idle_timeout
                or now - session.created >= self.absolute_timeout)

    def create(self, user_id: str, username: str, display_name: str, api_key_id: str,
               api_key: str) -> tuple[Session, list[Session]]:
        """A new session, and the sessions evicted to stay under `max_sessions` (revoke them)."""
        now = self._clock()
        session = Session(token=new_token(), csrf_token=new_token(), user_id=user_id,
                          username=username, display_name=display_name, api_key_id=api_key_id,
                          api_key=api_key, created=now, last_seen=now)
        evicted: list[Session] = []
        while len(self._sessions) >= self.max_sessions:
            evicted.append(self._sessions.popitem(last=False)[1])
        self._sessions[_digest(session.token)] = session
        return session, evicted

    def get(self, token: str | None) -> Session | None:
        """The live session for a cookie value (touching it), or None; expired ones stay for
        `sweep` to hand back, so their keys are revoked."""
        if not token:
            return None
        key = _digest(token)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self._clock()
        if self._expired(session, now):
            return None
        session.last_seen = now
        self._sessions.move_to_end(key)
        return session

    def end(self, token: str) -> Session | None:
        """Sign out: the session removed (even if already expired), or None if unknown."""
        return self._sessions.pop(_digest(token), None)

    def sweep(self) -> list[Session]:
        """Remove and return every expired session."""
        now = self._clock()
        gone = [key for key, s in self._sessions.items() if self._expired(s, now)]
        return [self._sessions.pop(key) for key in gone]

    def end_all(self) -> list[Session]:
        sessions = list(self._sessions.values())
        self._sessions.clear()
        return sessions

    def for_user(self, user_id: str) -> list[Session]:
        return [s for s in self._sessions.values() if s.user_id == user_id]


class LoginThrottle:
    """At most `max_failures` failed sign-ins per client IP within `window` seconds.

    Memory is bounded: at most `max_clients` addresses are remembered (least recently failing
    dropped first) and each keeps at most `max_failures` timestamps.
    """

    def __init__(self, clock: Clock = time.monotonic, *, max_failures: int = 5,
                 window: float = 300.0, max_clients: int = 4096) -> None:
        self._clock = clock
        self.max_failures = max_failures
        self.window = window
        self.max_clients = max_clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def retry_after(self, client: str) -> float:
        """Seconds until `client` may try again; 0 when it may try now."""
        times = self._failures.get(client)
        if times is None or len(times) < self.max_failures:
            return 0.0
        wait = self.window - (self._clock() - times[0])
        if wait <= 0:
            return 0.0
        return wait

    def failed(self, client: str) -> None:
        times = self._failures.pop(client, None)
        if times is None:
            times = deque(maxlen=self.max_failures)
        times.append(self._clock())
        self._failures[client] = times
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)


# ----------------------------------------------------------------------------- request headers

def cookie_values(headers: Iterable[tuple[str, str]], name: str) -> list[str]:
    """Every value of cookie `name` in the Cookie headers (RFC 6265: `a=b; c=d`), in order."""
    values: list[str] = []
    for header_name, header in headers:
        if header_name.lower() != "cookie":
            continue
        for pair in header.split(";"):
            key, sep, value = pair.strip().partition("=")
            if sep and key.strip() == name:
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                values.append(value)
    return values


def _origin_tuple(scheme: str, authority: str) -> tuple[str, str, int] | None:
    scheme = scheme.lower()
    try:
        parts = urlsplit(f"{scheme}://{authority}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    if port is None:
        port = {"https": 443, "http": 80}.get(scheme)
        if port is None:
            return None
    return scheme, parts.hostname.lower().rstrip("."), port


def _url_origin(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    return _origin_tuple(parts.scheme, parts.netloc.rpartition("@")[2])


def same_origin(headers: Iterable[tuple[str, str]], scheme: str, authority: str) -> bool:
    """False when `Origin` (or, without it, `Referer`) names another origin than this request's.

    Both absent is accepted: the synchronizer token is the real defence, this is the second.
    `Origin: null` (sandboxed frames, some redirects) is refused.
    """
    origin: str | None = None
    referer: str | None = None
    for name, value in headers:
        lname = name.lower()
        if lname == "origin" and origin is None:
            origin = value
        elif lname == "referer" and referer is None:
            referer = value
    claimed = origin if origin is not None else referer
    if claimed is None:
        return True
    ours = _origin_tuple(scheme, authority)
    theirs = _url_origin(claimed)
    return ours is not None and theirs is not None and ours == theirs
