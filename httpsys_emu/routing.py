"""The route table: which registration gets a request, by HTTP.sys' precedence rules (§2, §6).

An index, not a list scan: for each (scheme, port) and category there is a dict from host key to
a segment trie, so one lookup costs four dict probes plus one step per path segment, whatever the
number of prefixes. Registrations (live applications) and reservations (urlacl entries) live in
the same tries because a reservation that nobody registered still claims its requests (§2.3).

Decisions (where the spec leaves room):
- A port belongs to one scheme while any registration or reservation uses it; registering or
  reserving the other scheme on it is WinError(183), ERROR_ALREADY_EXISTS, which HttpAddUrl
  documents as "the UrlPrefix conflicts with an existing registration" (87 is kept for
  malformed strings).
- The best match being a reservation nobody registered → 400 `ErrorPage.BAD_REQUEST`, HTTPERR
  reason "BadRequest"; lower categories do not get the request.
- Host acceptance (400 Invalid Hostname vs 404): the host is accepted when a *registration* on
  the request's scheme and port accepts it: `+`/`*` any host, an explicit name only that name, an
  IP-bound prefix any host on a connection to that local address. Reservations alone do not make
  a host acceptable (nothing is listening for them). With no registration at all on the port the
  answer is 400 Invalid Hostname (nothing accepts the host).
- The local address is normalised with `urlprefix.normalize_ip`: `::ffff:1.2.3.4` (a dual-stack
  socket) is `1.2.3.4`, so IPv4-bound prefixes match on dual-stack listeners.
- The request host is the one `parse_host_header` returns (lower-case, one trailing dot removed,
  port split off); an empty host (HTTP/1.0 without Host) is accepted only by `+`, `*` and
  IP-bound prefixes. A request path of `*` (OPTIONS *) routes as `/`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from httpsys_emu.pages import ErrorPage, HttpSysError
from httpsys_emu.urlprefix import Category, UrlPrefix, classify_host, normalize_ip, path_key
from httpsys_emu.winerror import (
    ERROR_ACCESS_DENIED,
    ERROR_ALREADY_EXISTS,
    ERROR_FILE_NOT_FOUND,
    WinError,
)

__all__ = [
    "AclLike",
    "RouteMatch",
    "RouteRequest",
    "RouteTable",
    "parse_host_header",
]

T = TypeVar("T")

_CATEGORIES = tuple(Category)


@dataclass(frozen=True)
class RouteRequest:
    """What routing needs from a request: the listener's scheme, the local socket, host, path."""

    scheme: str       # scheme of the listener the connection arrived on
    local_ip: str     # local address of the connection (IPv4, IPv6, or IPv4-mapped IPv6)
    local_port: int   # local port of the connection (never the Host header's port)
    host: str         # host name only, as parse_host_header returns it; '' when there is none
    path: str         # canonical path (canonical.canonicalize_path)


@dataclass(frozen=True)
class RouteMatch(Generic[T]):
    """The registration that gets the request."""

    prefix: UrlPrefix
    target: T
    category: Category


class AclLike(Protocol):
    """What a reservation's ACL must answer for registration checks."""

    def grants_listen(self, uid: int) -> bool: ...


class _Node(Generic[T]):
    """One path segment of a trie; holds at most one registration and one reservation."""

    __slots__ = ("children", "registration", "reservation", "registrations_below")

    def __init__(self) -> None:
        self.children: dict[str, _Node[T]] = {}
        self.registration: tuple[UrlPrefix, T] | None = None
        self.reservation: tuple[UrlPrefix, AclLike] | None = None
        self.registrations_below = 0   # registrations in this subtree, this node included

    def is_empty(self) -> bool:
        return self.registration is None and self.reservation is None and not self.children


class RouteTable(Generic[T]):
    """Registrations and reservations of every port, indexed for routing by §2 precedence."""

    def __init__(self) -> None:
        # (scheme, port) -> one dict per category (indexed by Category) of host key -> trie root
        self._ports: dict[tuple[str, int], tuple[dict[str, _Node[T]], ...]] = {}
        self._registrations: dict[UrlPrefix, T] = {}
        self._reservations: dict[UrlPrefix, AclLike] = {}
        self._port_schemes: dict[int, dict[str, int]] = {}   # port -> scheme -> users
        self.node_visits = 0   # trie nodes visited by route(); lets tests check lookup cost

    # ---- mutation -------------------------------------------------------------------------
    def register(self, prefix: UrlPrefix, target: T) -> None:
        """Add a live registration; WinError(183) if registered or the port has the other scheme."""
        if prefix in self._registrations:
            raise WinError(ERROR_ALREADY_EXISTS, f"{prefix} is already registered")
        self._check_port_scheme(prefix)
        path = self._path_to(prefix, create=True)
        node = path[-1]
        node.registration = (prefix, target)
        for step in path:
            step.registrations_below += 1
        self._registrations[prefix] = target
        self._use_port(prefix, +1)

    def unregister(self, prefix: UrlPrefix) -> T:
        """Remove a registration and return its target; WinError(2) if it is not registered."""
        if prefix not in self._registrations:
            raise WinError(ERROR_FILE_NOT_FOUND, f"{prefix} is not registered")
        target = self._registrations.pop(prefix)
        path = self._path_to(prefix, create=False)
        path[-1].registration = None
        for step in path:
            step.registrations_below -= 1
        self._prune(prefix, path)
        self._use_port(prefix, -1)
        return target

    def reserve(self, prefix: UrlPrefix, acl: AclLike) -> None:
        """Add a urlacl reservation; WinError(183) if reserved or the port has the other scheme."""
        if prefix in self._reservations:
            raise WinError(ERROR_ALREADY_EXISTS, f"{prefix} is already reserved")
        self._check_port_scheme(prefix)
        path = self._path_to(prefix, create=True)
        path[-1].reservation = (prefix, acl)
        self._reservations[prefix] = acl
        self._use_port(prefix, +1)

    def unreserve(self, prefix: UrlPrefix) -> None:
        """Remove a reservation; WinError(2) if there is none."""
        if prefix not in self._reservations:
            raise WinError(ERROR_FILE_NOT_FOUND, f"{prefix} is not reserved")
        del self._reservations[prefix]
        path = self._path_to(prefix, create=False)
        path[-1].reservation = None
        self._prune(prefix, path)
        self._use_port(prefix, -1)

    # ---- queries ---------------------------------------------------------------------------
    def check_may_register(self, prefix: UrlPrefix, uid: int) -> None:
        """WinError(5) unless uid is root or the longest covering reservation grants listen.

        Covering: same category, scheme, host and port, and a path that is a whole-segment
        prefix of (or equal to) the prefix's path. Reservations never cross categories.
        """
        if uid == 0:
            return
        roots = self._ports.get((prefix.scheme, prefix.port))
        node = roots[prefix.category].get(prefix.host_key) if roots else None
        best: tuple[UrlPrefix, AclLike] | None = None
        if node is not None:
            best = node.reservation
            for segment in prefix.segments:
                node = node.children.get(segment)
                if node is None:
                    break
                if node.reservation is not None:
                    best = node.reservation
        if best is None:
            raise WinError(ERROR_ACCESS_DENIED, f"no reservation covers {prefix}")
        if not best[1].grants_listen(uid):
            raise WinError(ERROR_ACCESS_DENIED,
                           f"the reservation {best[0]} does not grant listen to uid {uid}")

    def route(self, req: RouteRequest) -> RouteMatch[T]:
        """The registration for `req` by §2; raises HttpSysError for 400/404 outcomes."""
        path = req.path
        if path == "*":
            path = "/"
        elif not path.startswith("/"):
            raise HttpSysError(ErrorPage.INVALID_URL, "URL", "path does not start with '/'")
        host = req.host.lower()
        if host.endswith("."):
            host = host[:-1]
        roots = self._ports.get((req.scheme, req.local_port))
        if roots is None:
            raise HttpSysError(ErrorPage.INVALID_HOSTNAME, "Hostname",
                               f"nothing registered on {req.scheme} port {req.local_port}")
        ip = (normalize_ip(req.local_ip) or "") if roots[Category.IP_BOUND] else ""
        hosts = ("+", host, ip, "*")
        segments = path_key(path)[1:].split("/")
        visits = 0
        for category in _CATEGORIES:
            node = roots[category].get(hosts[category])
            if node is None:
                continue
            best = node if (node.registration or node.reservation) else None
            for segment in segments:
                node = node.children.get(segment)
                if node is None:
                    break
                visits += 1
                if node.registration is not None or node.reservation is not None:
                    best = node
            if best is None:
                continue
            self.node_visits += visits
            if best.registration is not None:
                prefix, target = best.registration
                return RouteMatch(prefix, target, category)
            assert best.reservation is not None
            raise HttpSysError(ErrorPage.BAD_REQUEST, "BadRequest",
                               f"{best.reservation[0]} is reserved but not registered")
        self.node_visits += visits
        for category in _CATEGORIES:
            root = roots[category].get(hosts[category])
            if root is not None and root.registrations_below > 0:
                raise HttpSysError(ErrorPage.NOT_FOUND, "NotFound",
                                   f"no prefix matches the path {req.path!r}")
        raise HttpSysError(ErrorPage.INVALID_HOSTNAME, "Hostname",
                           f"no registration on port {req.local_port} accepts host {req.host!r}")

    def registration(self, prefix: UrlPrefix) -> T | None:
        """The target registered for exactly `prefix`, or None."""
        return self._registrations.get(prefix)

    def reservation(self, prefix: UrlPrefix) -> AclLike | None:
        """The ACL reserved for exactly `prefix`, or None."""
        return self._reservations.get(prefix)

    def registrations(self) -> Iterator[tuple[UrlPrefix, T]]:
        """(prefix, target) of every registration, in registration order."""
        return iter(list(self._registrations.items()))

    def reservations(self) -> Iterator[tuple[UrlPrefix, AclLike]]:
        """(prefix, acl) of every reservation, in reservation order."""
        return iter(list(self._reservations.items()))

    def port_scheme(self, port: int) -> str | None:
        """The scheme a port is tied to by its registrations and reservations, if any."""
        users = self._port_schemes.get(port)
        return next(iter(users)) if users else None

    def __len__(self) -> int:
        return len(self._registrations)

    # ---- internals -------------------------------------------------------------------------
    def _check_port_scheme(self, prefix: UrlPrefix) -> None:
        users = self._port_schemes.get(prefix.port, {})
        for scheme, count in users.items():
            if scheme != prefix.scheme and count > 0:
                raise WinError(ERROR_ALREADY_EXISTS,
                               f"port {prefix.port} is already used by {scheme}; "
                               f"a port cannot carry both http and https")

    def _use_port(self, prefix: UrlPrefix, delta: int) -> None:
        users = self._port_schemes.setdefault(prefix.port, {})
        users[prefix.scheme] = users.get(prefix.scheme, 0) + delta
        if users[prefix.scheme] <= 0:
            del users[prefix.scheme]
            if not users:
                del self._port_schemes[prefix.port]

    def _path_to(self, prefix: UrlPrefix, *, create: bool) -> list[_Node[T]]:
        """The trie nodes from the root to the prefix's node (created when asked)."""
        key = (prefix.scheme, prefix.port)
        roots = self._ports.get(key)
        if roots is None:
            if not create:
                raise KeyError(prefix)
            roots = tuple({} for _ in _CATEGORIES)
            self._ports[key] = roots
        hosts = roots[prefix.category]
        node = hosts.get(prefix.host_key)
        if node is None:
            if not create:
                raise KeyError(prefix)
            node = hosts[prefix.host_key] = _Node()
        path = [node]
        for segment in prefix.segments:
            child = node.children.get(segment)
            if child is None:
                if not create:
                    raise KeyError(prefix)
                child = node.children[segment] = _Node()
            node = child
            path.append(node)
        return path

    def _prune(self, prefix: UrlPrefix, path: list[_Node[T]]) -> None:
        """Drop the empty nodes at the end of `path`, then empty roots and ports."""
        segments = prefix.segments
        for depth in range(len(path) - 1, 0, -1):
            if not path[depth].is_empty():
                return
            del path[depth - 1].children[segments[depth - 1]]
        if not path[0].is_empty():
            return
        key = (prefix.scheme, prefix.port)
        roots = self._ports[key]
        del roots[prefix.category][prefix.host_key]
        if not any(roots):
            del self._ports[key]


def parse_host_header(value: str | bytes) -> tuple[str, int | None]:
    """(host key, port or None) from a Host header or an absolute-form authority.

    `Example.COM:8443` → ('example.com', 8443); `[::1]:443` → ('[::1]', 443);
    `example.com.` → ('example.com', None) (one trailing dot is the same DNS name).
    HttpSysError(INVALID_HOSTNAME, "Hostname") for an empty value, `/`, `@`, whitespace,
    non-ASCII, `+`/`*`, an empty, zero, out-of-range or leading-zero port, numeric-looking
    names that are not dotted quads, and anything that is not a DNS name or IP literal.
    """
    def bad(detail: str) -> HttpSysError:
        return HttpSysError(ErrorPage.INVALID_HOSTNAME, "Hostname", detail)

    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("ascii")
        except UnicodeDecodeError:
            raise bad("non-ASCII Host") from None
    text = value.strip(" \t")
    if not text:
        raise bad("empty Host")
    if not text.isascii():
        raise bad(f"non-ASCII Host {text!r}")
    for ch in text:
        if not (ch.isalnum() or ch in "-._:[]"):
            raise bad(f"character {ch!r} in Host {text!r}")
    port_text: str | None = None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise bad(f"unterminated IPv6 literal in Host {text!r}")
        host, rest = text[:close + 1], text[close + 1:]
        if rest:
            if not rest.startswith(":"):
                raise bad(f"garbage after IPv6 literal in Host {text!r}")
            port_text = rest[1:]
    elif ":" in text:
        host, port_text = text.rsplit(":", 1)
    else:
        host = text
    port: int | None = None
    if port_text is not None:
        if not port_text.isdigit() or len(port_text) > 5 or port_text.startswith("0"):
            raise bad(f"bad port {port_text!r} in Host {text!r}")
        port = int(port_text)
        if port > 65535:
            raise bad(f"port {port} out of range in Host {text!r}")
    if not host.startswith("[") and host.endswith(".") and not host.endswith(".."):
        host = host[:-1]
    if host in ("+", "*"):
        raise bad(f"wildcard {host!r} as Host")
    try:
        category, key = classify_host(host, allow_unspecified=True, allow_mapped=True)
    except WinError as exc:
        raise bad(exc.detail) from None
    if category in (Category.STRONG, Category.WEAK):
        raise bad(f"wildcard {host!r} as Host")
    return key, port
