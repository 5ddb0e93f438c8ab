"""URL reservation ACLs: the small SDDL subset netsh http urlacl uses, mapped to Linux users.

A reservation's DACL says who may register (listen) under it and who may delegate it. On Windows
the principals are SIDs; here a Linux user is the Unix-user SID `S-1-22-1-<uid>` (the form Samba
and Windows Services for UNIX use). The router asks `UrlAcl.grants_listen(uid)`.

SDDL subset, decided here (anything else is error 87, ERROR_INVALID_PARAMETER):
- `D:` followed by zero or more ACEs `(A;;RIGHTS;;;SID)`; only allow ACEs, no ACE flags, no
  object GUIDs, no DACL flags (`P`, `AI`), no owner/group parts.
- RIGHTS: a concatenation of `GA` (all), `GX` (execute = listen), `GW` (write = delegate) and
  `GR` (read: accepted, grants nothing). An ACE must grant listen or delegate.
- SID: `S-1-22-1-<uid>`; `WD` / `S-1-1-0` Everyone (any uid); `BA` / `S-1-5-32-544`
  Administrators, `SY` / `S-1-5-18` LocalSystem, `LS` / `S-1-5-19` LocalService and
  `NS` / `S-1-5-20` NetworkService all mean root (uid 0): Linux has one administrator.
  Any other SID (domain users, `S-1-22-2-<gid>` groups, ...) is rejected.
- Letters are accepted in any case; `to_sddl()` writes the canonical upper-case form with the
  well-known aliases (`WD`, `BA`, ...), and the rights netsh itself writes: listen only `GX`,
  listen+delegate `GA`, delegate only `GW`.
"""

from __future__ import annotations

import pwd
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass

from httpsys_emu.winerror import ERROR_INVALID_PARAMETER, ERROR_NONE_MAPPED, WinError

EVERYONE_SID = "S-1-1-0"
ADMINISTRATORS_SID = "S-1-5-32-544"
LOCAL_SYSTEM_SID = "S-1-5-18"
LOCAL_SERVICE_SID = "S-1-5-19"
NETWORK_SERVICE_SID = "S-1-5-20"
UNIX_USER_SID_PREFIX = "S-1-22-1-"
MAX_UID = 2**32 - 2  # (uid_t)-1 is "no user"

SID_ALIASES: dict[str, str] = {
    "WD": EVERYONE_SID,
    "BA": ADMINISTRATORS_SID,
    "SY": LOCAL_SYSTEM_SID,
    "LS": LOCAL_SERVICE_SID,
    "NS": NETWORK_SERVICE_SID,
}
_ALIAS_OF_SID = {sid: alias for alias, sid in SID_ALIASES.items()}
ROOT_SIDS = frozenset({ADMINISTRATORS_SID, LOCAL_SYSTEM_SID, LOCAL_SERVICE_SID,
                       NETWORK_SERVICE_SID})

WELL_KNOWN_DISPLAY: dict[str, str] = {
    EVERYONE_SID: "\\Everyone",
    ADMINISTRATORS_SID: "BUILTIN\\Administrators",
    LOCAL_SYSTEM_SID: "NT AUTHORITY\\SYSTEM",
    LOCAL_SERVICE_SID: "NT AUTHORITY\\LOCAL SERVICE",
    NETWORK_SERVICE_SID: "NT AUTHORITY\\NETWORK SERVICE",
}
# Account names netsh users type for the well-known principals (matched case-insensitively,
# with or without the domain part).
_WELL_KNOWN_NAMES: dict[str, str] = {
    "everyone": EVERYONE_SID,
    "administrators": ADMINISTRATORS_SID,
    "builtin\\administrators": ADMINISTRATORS_SID,
    "system": LOCAL_SYSTEM_SID,
    "nt authority\\system": LOCAL_SYSTEM_SID,
    "local service": LOCAL_SERVICE_SID,
    "nt authority\\local service": LOCAL_SERVICE_SID,
    "network service": NETWORK_SERVICE_SID,
    "nt authority\\network service": NETWORK_SERVICE_SID,
}

GENERIC_ALL = "GA"
GENERIC_EXECUTE = "GX"
GENERIC_WRITE = "GW"
GENERIC_READ = "GR"

_ACE_RE = re.compile(r"\(([^()]*)\)")
_UNIX_SID_RE = re.compile(r"S-1-22-1-(0|[1-9][0-9]{0,9})", re.IGNORECASE)
_SID_RE = re.compile(r"S(-[0-9]+)+", re.IGNORECASE)


def _bad(detail: str) -> WinError:
    return WinError(ERROR_INVALID_PARAMETER, detail)


def unix_user_sid(uid: int) -> str:
    """The SID that stands for Linux user `uid`."""
    if not 0 <= uid <= MAX_UID:
        raise _bad(f"uid {uid} out of range")
    return f"{UNIX_USER_SID_PREFIX}{uid}"


def sid_uid(sid: str) -> int | None:
    """The uid of a Unix-user SID, else None."""
    if sid.startswith(UNIX_USER_SID_PREFIX):
        return int(sid[len(UNIX_USER_SID_PREFIX):])
    return None


def parse_sid(text: str) -> str:
    """Canonical `S-1-...` form of an SDDL SID token (alias or string SID); 87 if unsupported."""
    alias = SID_ALIASES.get(text.upper())
    if alias is not None:
        return alias
    if _UNIX_SID_RE.fullmatch(text):
        uid = int(text[len(UNIX_USER_SID_PREFIX):])
        return unix_user_sid(uid)
    if _SID_RE.fullmatch(text):
        canonical = "S" + text[1:]
        if canonical in _ALIAS_OF_SID or canonical == EVERYONE_SID:
            return canonical
        raise _bad(f"SID {text} has no Linux equivalent")
    raise _bad(f"malformed SID {text!r}")


def format_sid(sid: str) -> str:
    """The SDDL token for a canonical SID: the alias when there is one."""
    return _ALIAS_OF_SID.get(sid, sid)


def _parse_rights(text: str) -> tuple[bool, bool]:
    if not text or len(text) % 2:
        raise _bad(f"malformed rights {text!r}")
    listen = delegate = False
    for i in range(0, len(text), 2):
        code = text[i:i + 2].upper()
        if code == GENERIC_ALL:
            listen = delegate = True
        elif code == GENERIC_EXECUTE:
            listen = True
        elif code == GENERIC_WRITE:
            delegate = True
        elif code != GENERIC_READ:
            raise _bad(f"unsupported right {code!r}")
    if not (listen or delegate):
        raise _bad("an ACE must grant listen or delegate")
    return listen, delegate


def _format_rights(listen: bool, delegate: bool) -> str:
    if listen and delegate:
        return GENERIC_ALL
    return GENERIC_EXECUTE if listen else GENERIC_WRITE


def _default_user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return None


@dataclass(frozen=True)
class Ace:
    """One allow entry: a principal (canonical SID) and the two HTTP.sys rights."""

    sid: str
    listen: bool = True
    delegate: bool = False

    def __post_init__(self) -> None:
        if not (self.listen or self.delegate):
            raise _bad("an ACE must grant listen or delegate")

    def applies_to(self, uid: int) -> bool:
        """Whether this entry's principal includes Linux user `uid`."""
        if self.sid == EVERYONE_SID:
            return True
        if self.sid in ROOT_SIDS:
            return uid == 0
        return sid_uid(self.sid) == uid

    def to_sddl(self) -> str:
        return f"(A;;{_format_rights(self.listen, self.delegate)};;;{format_sid(self.sid)})"

    def display_user(self, user_name: Callable[[int], str | None] = _default_user_name) -> str:
        """The user as netsh shows it: `\\octopus`, `\\Everyone`, `NT AUTHORITY\\SYSTEM`.

        A uid with no passwd entry shows as `\\uid:N`, which `resolve_user` accepts back.
        """
        known = WELL_KNOWN_DISPLAY.get(self.sid)
        if known is not None:
            return known
        uid = sid_uid(self.sid)
        assert uid is not None
        name = user_name(uid)
        return f"\\{name}" if name is not None else f"\\uid:{uid}"


@dataclass(frozen=True)
class UrlAcl:
    """A reservation's DACL: the allow entries in their given order."""

    aces: tuple[Ace, ...]

    @classmethod
    def for_user(cls, sid: str, listen: bool = True, delegate: bool = False) -> UrlAcl:
        """The DACL netsh builds from `user= listen= delegate=`; 87 when neither right is set."""
        return cls((Ace(sid, listen, delegate),))

    @classmethod
    def from_sddl(cls, text: str) -> UrlAcl:
        """Parse the supported SDDL subset (module docstring); WinError 87 otherwise."""
        if len(text) < 2 or text[:2].upper() != "D:":
            raise _bad("SDDL must start with D:")
        body = text[2:]
        aces: list[Ace] = []
        position = 0
        while position < len(body):
            match = _ACE_RE.match(body, position)
            if match is None:
                raise _bad(f"malformed SDDL at {body[position:]!r}")
            aces.append(_parse_ace(match.group(1)))
            position = match.end()
        return cls(tuple(aces))

    def to_sddl(self) -> str:
        return "D:" + "".join(ace.to_sddl() for ace in self.aces)

    def grants_listen(self, uid: int) -> bool:
        """May Linux user `uid` register URLs under this reservation?"""
        return any(ace.listen and ace.applies_to(uid) for ace in self.aces)

    def grants_delegate(self, uid: int) -> bool:
        """May Linux user `uid` delegate this reservation to a request queue owner?"""
        return any(ace.delegate and ace.applies_to(uid) for ace in self.aces)


def _parse_ace(inner: str) -> Ace:
    fields = inner.split(";")
    if len(fields) != 6:
        raise _bad(f"ACE needs 6 fields: ({inner})")
    ace_type, flags, rights, object_guid, inherit_guid, sid = fields
    if ace_type.upper() != "A":
        raise _bad(f"only allow ACEs are supported: ({inner})")
    if flags or object_guid or inherit_guid:
        raise _bad(f"ACE flags and object GUIDs are not supported: ({inner})")
    listen, delegate = _parse_rights(rights)
    return Ace(parse_sid(sid), listen, delegate)


def _default_uid_of(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def resolve_user(name: str, uid_of: Callable[[str], int | None] = _default_uid_of,
                 hostname: str | None = None) -> str:
    """The SID for a netsh `user=` value; WinError 1332 when no such account exists.

    Accepted: a Linux user name, `uid:N`, the Windows well-known names (`Everyone`,
    `BUILTIN\\Administrators`, `NT AUTHORITY\\SYSTEM`, ...), each optionally prefixed by `\\`,
    `.\\` or `HOSTNAME\\` as Windows users write local accounts.
    """
    lowered = name.lower()
    if lowered in _WELL_KNOWN_NAMES:
        return _WELL_KNOWN_NAMES[lowered]
    account = name
    if "\\" in name:
        domain, _, account = name.rpartition("\\")
        local = {"", ".", (hostname or socket.gethostname()).split(".")[0].lower()}
        if domain.lower() not in local:
            raise WinError(ERROR_NONE_MAPPED, f"unknown domain in {name!r}")
        if account.lower() in _WELL_KNOWN_NAMES:
            return _WELL_KNOWN_NAMES[account.lower()]
    if account.lower().startswith("uid:"):
        digits = account[4:]
        if digits.isascii() and digits.isdigit() and int(digits) <= MAX_UID:
            return unix_user_sid(int(digits))
        raise WinError(ERROR_NONE_MAPPED, f"bad uid in {name!r}")
    uid = uid_of(account) if account else None
    if uid is None:
        raise WinError(ERROR_NONE_MAPPED, f"no such user {account!r}")
    return unix_user_sid(uid)
