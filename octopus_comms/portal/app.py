"""The web portal's handler: `Portal(server)` answers everything under `https://+:PORT/app/`.

Reads (machines with their live polling state, tasks, logs) come straight from the store and
`LiveAgents`. Every change (run a script, cancel a task) goes through `Api.handle` like any other
API client, so validation, target resolution and the task runner are the REST API's, with no
second code path. To make that possible a sign-in mints a *session API key* for the user
(`auth.create_api_key`, named "Web portal session (node N)"); the key lives only in server memory
next to the session, never reaches the browser, and is deleted on sign-out, expiry or eviction.
Keys of this node's earlier runs are deleted on the first request (in-memory sessions do not
survive a restart, so nothing can be using them).

Pages: HTML, escaped, no inline code (CSP `script-src 'self'`), `X-Frame-Options: DENY`,
`Cache-Control: no-store`. Not signed in: pages redirect (303) to the sign-in page, JSON answers
401. Every POST carries the session's CSRF token and must not come from another origin.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NoReturn, Protocol
from urllib.parse import parse_qs, quote, urlencode

import trio

from httpsys_emu.channel import ConnectionAbort
from httpsys_emu.handlers import HandlerRequest
from httpsys_emu.pages import HttpSysError
from httpsys_emu.request import RequestInfo
from httpsys_emu.urlprefix import parse_prefix

from octopus_comms.api import Api, ApiRequest, ApiResponse
from octopus_comms.auth import ApiKeyAuthenticator, create_api_key, verify_user_password
from octopus_comms.polling import LiveAgents
from octopus_comms.settings import ServerSettings
from octopus_comms.store import Machine, NotFound, Store, TaskQuery, User

from . import views
from .sessions import (DEFAULT_ABSOLUTE_TIMEOUT, DEFAULT_IDLE_TIMEOUT, Clock, LoginThrottle,
                       Session, SessionStore, cookie_values, new_token, same_origin,
                       tokens_equal)
from .static import STATIC_FILES

log = logging.getLogger("octopus_comms.portal")

BASE_PATH = "/app"
SESSION_COOKIE = "__Secure-octopus-portal"
LOGIN_COOKIE = "__Secure-octopus-login"
SESSION_KEY_NAME = "Web portal session"
MAX_FORM_BYTES = 1 << 20
TASKS_PER_PAGE = 50
MAX_RENDERED_LINES = 5000
MAX_LINES_PER_POLL = 1000
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Security-Policy", CSP),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
    ("X-Content-Type-Options", "nosniff"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)
HTML_TYPE = "text/html; charset=utf-8"
JSON_TYPE = "application/json; charset=utf-8"
_TASK_ID = r"(?P<id>[A-Za-z]+-[0-9]{1,9})"


class PortalHost(Protocol):
    """What the portal needs from the serving process (a CommsServer has all of it)."""

    store: Store
    live: LiveAgents
    api: Api | None
    node: str


def portal_route_prefix(settings: ServerSettings) -> str:
    """`https://+:PORT/app/`: the portal shares the (first) comms listener's scheme, host, port."""
    if not settings.comms_listen_websocket:
        raise ValueError("the comms listener is off, so the portal has no port to share")
    p = parse_prefix(settings.comms_listen_websocket[0])
    return f"{p.scheme}://{p.host}:{p.port}{BASE_PATH}/"


class _Refused(Exception):
    """A response was already sent; stop handling this request."""


Action = Callable[[HandlerRequest, re.Match[str]], Awaitable[None]]


class Portal:
    """The portal as one in-process handler; construct it once per server (it owns sessions)."""

    def __init__(self, server: PortalHost, *, base_path: str = BASE_PATH,
                 clock: Clock = time.monotonic, wall_clock: Clock = time.time,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 absolute_timeout: float = DEFAULT_ABSOLUTE_TIMEOUT,
                 max_login_failures: int = 5, login_failure_window: float = 300.0,
                 sweep_interval: float = 5.0, refresh_seconds: int = 3) -> None:
        self.server = server
        self.base = base_path.rstrip("/")
        self.sessions = SessionStore(clock, idle_timeout=idle_timeout,
                                     absolute_timeout=absolute_timeout)
        self.throttle = LoginThrottle(clock, max_failures=max_login_failures,
                                      window=login_failure_window)
        self.sweep_interval = sweep_interval
        self.refresh_seconds = refresh_seconds
        self._clock = clock
        self._wall = wall_clock
        self._last_sweep = clock()
        self._stale_keys_revoked = False
        self._own_key_ids: set[str] = set()
        self._authenticator: ApiKeyAuthenticator | None = None
        literal = re.escape
        self._routes: list[tuple[re.Pattern[str], dict[str, Action]]] = [
            (re.compile(r"/(?:machines/?)?", re.I), {"GET": self._machines}),
            (re.compile(literal("/login") + "/?", re.I),
             {"GET": self._login_form, "POST": self._login}),
            (re.compile(r"/logout/?", re.I), {"POST": self._logout}),
            (re.compile(r"/tasks/?", re.I), {"GET": self._tasks}),
            (re.compile(rf"/tasks/{_TASK_ID}/?", re.I), {"GET": self._task}),
            (re.compile(rf"/tasks/{_TASK_ID}/cancel/?", re.I), {"POST": self._cancel}),
            (re.compile(r"/script/?", re.I), {"GET": self._script_form, "POST": self._run_script}),
            (re.compile(r"/api/machines/?", re.I), {"GET": self._machines_json}),
            (re.compile(rf"/api/tasks/{_TASK_ID}/log/?", re.I), {"GET": self._task_log_json}),
            (re.compile(r"/static/(?P<name>[a-z0-9.\-]{1,64})", re.I), {"GET": self._static}),
        ]

    @property
    def session_key_name(self) -> str:
        """The name of this node's session API keys (what startup clean-up looks for)."""
        return f"{SESSION_KEY_NAME} (node {self.server.node})"

    # -- entry point -----------------------------------------------------------------------------
    async def __call__(self, request: HandlerRequest) -> None:
        try:
            await self._housekeeping()
            await self._dispatch(request)
        except _Refused:
            pass
        except (ConnectionAbort, HttpSysError):
            raise
        except Exception:
            log.exception("portal failure on %s %s", request.info.method, request.info.path)
            if not request.responded:
                await self._html(request, 500, views.message_page(
                    self.base, "Something went wrong",
                    "The server could not complete this request; the details are in its log.",
                    node=self.server.node))

    async def _dispatch(self, request: HandlerRequest) -> None:
        info = request.info
        path = info.path
        if not path.lower().startswith(self.base.lower()):
            await self._not_found(request)
            return
        rest = path[len(self.base):]
        if rest == "":
            await self._redirect(request, self.base + "/")
            return
        method = "GET" if info.method.upper() == "HEAD" else info.method.upper()
        for pattern, actions in self._routes:
            match = pattern.fullmatch(rest)
            if match is None:
                continue
            action = actions.get(method)
            if action is None:
                allowed = sorted(set(actions) | ({"HEAD"} if "GET" in actions else set()))
                await self._send(request, 405, b"Method Not Allowed\n",
                                 "text/plain; charset=utf-8", [("Allow", ", ".join(allowed))])
                return
            await action(request, match)
            return
        await self._not_found(request)

    async def _housekeeping(self) -> None:
        """Revoke keys of earlier runs once, and the keys of expired sessions now and then."""
        if not self._stale_keys_revoked:
            self._stale_keys_revoked = True
            await trio.to_thread.run_sync(self._revoke_stale_keys)
        now = self._clock()
        if now - self._last_sweep >= self.sweep_interval:
            self._last_sweep = now
            expired = self.sessions.sweep()
            if expired:
                log.info("%d portal session(s) expired", len(expired))
                await self._revoke(expired)

    def _revoke_stale_keys(self) -> None:
        store = self.server.store
        for key in store.list_api_keys():
            if key.name == self.session_key_name and key.id not in self._own_key_ids:
                try:
                    store.delete_api_key(key.id)
                except NotFound:
                    pass

    async def _revoke(self, sessions: Sequence[Session]) -> None:
        def revoke() -> None:
            for session in sessions:
                self._own_key_ids.discard(session.api_key_id)
                try:
                    self.server.store.delete_api_key(session.api_key_id)
                except NotFound:
                    pass
        await trio.to_thread.run_sync(revoke)

    # -- responses -------------------------------------------------------------------------------
    async def _send(self, request: HandlerRequest, status: int, body: bytes, content_type: str,
                    headers: Sequence[tuple[str, str]] = (), cache: str = "no-store") -> None:
        all_headers = [("Content-Type", content_type), *SECURITY_HEADERS,
                       ("Cache-Control", cache), *headers]
        head_only = request.info.method.upper() == "HEAD"
        await request.respond(status, all_headers, b"" if head_only else body)

    async def _html(self, request: HandlerRequest, status: int, page: str,
                    headers: Sequence[tuple[str, str]] = ()) -> None:
        await self._send(request, status, page.encode("utf-8"), HTML_TYPE, headers)

    async def _json(self, request: HandlerRequest, status: int, document: Any) -> None:
        body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        await self._send(request, status, body, JSON_TYPE)

    async def _redirect(self, request: HandlerRequest, location: str,
                        headers: Sequence[tuple[str, str]] = ()) -> None:
        await self._send(request, 303, b"", "text/plain; charset=utf-8",
                         [("Location", location), *headers])

    async def _not_found(self, request: HandlerRequest) -> None:
        await self._html(request, 404, views.message_page(
            self.base, "Not found", "There is nothing at this address.",
            node=self.server.node, link=(self.base + "/", "Go to the machines")))

    async def _refuse(self, request: HandlerRequest, status: int, title: str, message: str,
                      session: Session | None = None) -> NoReturn:
        await self._html(request, status, views.message_page(
            self.base, title, message, viewer=None if session is None else _viewer(session),
            node=self.server.node,
            link=(self.base + "/", "Back to the portal")))
        raise _Refused()

    # -- sessions and forms ----------------------------------------------------------------------
    def _cookie(self, name: str, value: str, *, max_age: int | None = None) -> tuple[str, str]:
        parts = [f"{name}={value}", f"Path={self.base}/", "Secure", "HttpOnly",
                 "SameSite=Strict"]
        if max_age is not None:
            parts.append(f"Max-Age={max_age}")
        return ("Set-Cookie", "; ".join(parts))

    def _session(self, info: RequestInfo) -> Session | None:
        for token in _cookie_values(info, SESSION_COOKIE):
            session = self.sessions.get(token)
            if session is not None:
                return session
        return None

    async def _live_session(self, info: RequestInfo) -> Session | None:
        """The request's session, if its key still exists and its user is still active.

        Deleting the session's API key (or disabling the user) thus signs the browser out at
        once, not at expiry.
        """
        session = self._session(info)
        if session is None:
            return None
        store = self.server.store

        def valid() -> bool:
            if store.find_api_key(session.api_key_id) is None:
                return False
            try:
                return store.get_user(session.user_id).is_active
            except NotFound:
                return False
        if await trio.to_thread.run_sync(valid):
            return session
        self.sessions.end(session.token)
        await self._revoke([session])
        log.info("portal: ended the session of %s (key revoked or user disabled)",
                 session.username)
        return None

    async def _page_session(self, request: HandlerRequest) -> Session:
        """The viewer's session, or a redirect to the sign-in page (then _Refused)."""
        info = request.info
        session = await self._live_session(info)
        if session is None:
            here = quote(info.path, safe="/-._~!$'()*+,;=:@") + (f"?{info.query}"
                                                                 if info.query else "")
            target = f"{self.base}/login"
            if info.method.upper() in ("GET", "HEAD") and self._safe_next(here) != self.base + "/":
                target += "?" + urlencode({"next": here})
            await self._redirect(request, target)
            raise _Refused()
        return session

    async def _json_session(self, request: HandlerRequest) -> Session:
        session = await self._live_session(request.info)
        if session is None:
            await self._json(request, 401, {"error": "You are not signed in."})
            raise _Refused()
        return session

    async def _form(self, request: HandlerRequest) -> dict[str, list[str]]:
        info = request.info
        content_type = (info.header("content-type") or "").split(";", 1)[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            await self._refuse(request, 415, "Unsupported form", "Forms must be posted as "
                               "application/x-www-form-urlencoded.")
        try:
            body = await request.read_body(limit=MAX_FORM_BYTES)
        except ValueError:
            await self._refuse(request, 413, "Too large", "The form is larger than the server "
                               "accepts.")
        try:
            return parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=5000)
        except (UnicodeDecodeError, ValueError):
            await self._refuse(request, 400, "Bad form", "The form could not be read.")

    async def _check_post(self, request: HandlerRequest, session: Session,
                          form: Mapping[str, list[str]]) -> None:
        """The synchronizer token and the origin, or 403 (then _Refused)."""
        info = request.info
        presented = _one(form, "csrf_token")
        if not same_origin(info.headers, info.scheme, _authority(info)) \
                or not tokens_equal(session.csrf_token, presented):
            log.warning("portal: refused a %s %s from %s without a valid CSRF token or origin",
                        info.method, info.path, info.conn.remote_ip)
            await self._refuse(request, 403, "Request refused",
                               "This form could not be verified (it may have come from another "
                               "site, or the page is out of date). Reload the page and try again.",
                               session)

    def _safe_next(self, value: str | None) -> str:
        """Where to go after signing in: a portal page of ours, never another site."""
        home = self.base + "/"
        if not value or not value.startswith(home) or "//" in value or "\\" in value:
            return home
        if not all(33 <= ord(ch) < 127 for ch in value):
            return home
        lowered = value.lower()
        for excluded in ("/api/", "/login", "/logout", "/static/"):
            if lowered.startswith((self.base + excluded).lower()):
                return home
        return value

    # -- sign in and out -------------------------------------------------------------------------
    async def _login_form(self, request: HandlerRequest, match: re.Match[str]) -> None:
        query = parse_qs(request.info.query, keep_blank_values=True)
        next_url = self._safe_next(_one(query, "next"))
        if await self._live_session(request.info) is not None:
            await self._redirect(request, next_url)
            return
        notice = "You have signed out." if _one(query, "signed_out") else ""
        await self._show_login(request, 200, next_url=next_url, notice=notice)

    async def _show_login(self, request: HandlerRequest, status: int, *, next_url: str,
                          username: str = "", error: str = "", notice: str = "",
                          headers: Sequence[tuple[str, str]] = ()) -> None:
        token = new_token()
        page = views.login_page(self.base, login_token=token, next_url=next_url,
                                username=username, error=error, notice=notice,
                                node=self.server.node)
        await self._html(request, status, page,
                         [self._cookie(LOGIN_COOKIE, token, max_age=3600), *headers])

    async def _login(self, request: HandlerRequest, match: re.Match[str]) -> None:
        info = request.info
        client = info.conn.remote_ip
        form = await self._form(request)
        next_url = self._safe_next(_one(form, "next"))
        username = (_one(form, "username") or "").strip()
        presented = _one(form, "login_token")
        if not same_origin(info.headers, info.scheme, _authority(info)) or not any(
                tokens_equal(cookie, presented)
                for cookie in _cookie_values(info, LOGIN_COOKIE) if cookie):
            await self._show_login(request, 403, next_url=next_url, username=username,
                                   error="The sign-in form expired or came from another site. "
                                         "Please try again.")
            return
        wait = self.throttle.retry_after(client)
        if wait > 0:
            seconds = math.ceil(wait)
            await self._show_login(request, 429, next_url=next_url, username=username,
                                   error=f"Too many failed sign-in attempts. Try again in "
                                         f"{seconds} s.",
                                   headers=[("Retry-After", str(seconds))])
            return
        user = await self._authenticate(username, _one(form, "password") or "",
                                        (_one(form, "api_key") or "").strip())
        if user is None:
            self.throttle.failed(client)
            log.warning("portal: failed sign-in for %r from %s", username[:64], client)
            await self._show_login(request, 401, next_url=next_url, username=username,
                                   error="The username and password, or the API key, were not "
                                         "accepted.")
            return
        self.throttle.succeeded(client)
        for token in _cookie_values(info, SESSION_COOKIE):      # no two sessions per browser
            previous = self.sessions.end(token)
            if previous is not None:
                await self._revoke([previous])
        record, key = await trio.to_thread.run_sync(
            lambda: create_api_key(self.server.store, self.session_key_name, user.id))
        self._own_key_ids.add(record.id)
        session, evicted = self.sessions.create(user.id, user.username, user.display_name,
                                                record.id, key)
        if evicted:
            await self._revoke(evicted)
        log.info("portal: %s signed in from %s", user.username, client)
        await self._redirect(request, next_url, [self._cookie(SESSION_COOKIE, session.token),
                                                 self._cookie(LOGIN_COOKIE, "", max_age=0)])

    async def _authenticate(self, username: str, password: str, api_key: str) -> User | None:
        store = self.server.store
        if api_key:
            if self._authenticator is None:
                api = self.server.api
                self._authenticator = api.authenticator if api is not None \
                    else ApiKeyAuthenticator(store)
            authenticator = self._authenticator

            def by_key() -> User | None:
                record = authenticator.authenticate(api_key)
                if record is None:
                    return None
                user = store.get_user(record.user_id)
                return user if user.is_active else None
            return await trio.to_thread.run_sync(by_key)
        if not username or not password:
            return None
        return await trio.to_thread.run_sync(verify_user_password, store, username, password)

    async def _logout(self, request: HandlerRequest, match: re.Match[str]) -> None:
        form = await self._form(request)
        session = await self._page_session(request)
        await self._check_post(request, session, form)
        self.sessions.end(session.token)
        await self._revoke([session])
        log.info("portal: %s signed out", session.username)
        await self._redirect(request, f"{self.base}/login?signed_out=1",
                             [self._cookie(SESSION_COOKIE, "", max_age=0)])

    # -- machines --------------------------------------------------------------------------------
    async def _machine_rows(self) -> list[views.MachineRow]:
        store = self.server.store

        def read() -> tuple[list[Machine], dict[str, str]]:
            space = store.default_space().id
            names = {env.id: env.name for env in store.list_environments(space)}
            return store.list_machines(space), names
        machines, env_names = await trio.to_thread.run_sync(read)
        live = self.server.live     # read on the event loop, which is the only writer
        now = self._wall()
        rows: list[views.MachineRow] = []
        for m in machines:
            connections = live.for_machine(m.id)
            last = live.last_seen.get(m.id)
            if connections:
                last = max([c.last_poll for c in connections] + ([last] if last else []))
            rows.append(views.MachineRow(
                id=m.id, name=m.name,
                environments=tuple(env_names.get(i, i) for i in m.environment_ids),
                roles=m.roles, thumbprint=m.thumbprint,
                communication_style=m.communication_style, disabled=m.is_disabled,
                connected=bool(connections), connections=len(connections),
                last_poll=views.fmt_epoch(last),
                last_poll_ago=views.fmt_ago(None if last is None else now - last),
                node=", ".join(sorted({c.node for c in connections})),
                remote=", ".join(c.remote for c in connections)))
        return rows

    async def _machines(self, request: HandlerRequest, match: re.Match[str]) -> None:
        session = await self._page_session(request)
        rows = await self._machine_rows()
        await self._html(request, 200, views.machines_page(
            self.base, rows, viewer=_viewer(session), node=self.server.node,
            refresh_seconds=self.refresh_seconds))

    async def _machines_json(self, request: HandlerRequest, match: re.Match[str]) -> None:
        await self._json_session(request)
        rows = await self._machine_rows()
        await self._json(request, 200, {"node": self.server.node,
                                        "machines": [row.to_json() for row in rows]})

    # -- tasks -----------------------------------------------------------------------------------
    async def _tasks(self, request: HandlerRequest, match: re.Match[str]) -> None:
        session = await self._page_session(request)
        query = parse_qs(request.info.query)
        skip_text = _one(query, "skip") or "0"
        skip = int(skip_text) if skip_text.isdigit() and len(skip_text) < 9 else 0
        store = self.server.store

        def read() -> tuple[list[views.TaskRow], int]:
            tasks, total = store.list_tasks(TaskQuery(space_id=store.default_space().id),
                                            skip, TASKS_PER_PAGE)
            now = store.now()
            return [views.task_row(t, now) for t in tasks], total
        rows, total = await trio.to_thread.run_sync(read)
        await self._html(request, 200, views.tasks_page(
            self.base, rows, viewer=_viewer(session), node=self.server.node, total=total,
            skip=skip, take=TASKS_PER_PAGE))

    async def _task(self, request: HandlerRequest, match: re.Match[str]) -> None:
        session = await self._page_session(request)
        store = self.server.store
        task_id = match["id"]

        def read() -> Any:
            task = store.get_task(task_id)
            machines = store.task_machines(task.id)
            names = {m.machine_id: m.machine_name for m in machines}
            lines = views.log_rows(store.task_logs(task.id), names)
            return task, machines, lines
        try:
            task, machines, lines = await trio.to_thread.run_sync(read)
        except NotFound:
            await self._not_found(request)
            return
        truncated = len(lines) > MAX_RENDERED_LINES
        arguments = task.arguments if isinstance(task.arguments, Mapping) else {}
        await self._html(request, 200, views.task_page(
            self.base, views.task_row(task, store.now()),
            [views.activity_row(m) for m in machines], lines[-MAX_RENDERED_LINES:],
            viewer=_viewer(session), node=self.server.node,
            script=str(arguments.get("ScriptBody", "")), syntax=str(arguments.get("Syntax", "")),
            truncated=truncated))

    async def _task_log_json(self, request: HandlerRequest, match: re.Match[str]) -> None:
        await self._json_session(request)
        after_text = _one(parse_qs(request.info.query), "after") or "0"
        if not after_text.isdigit() or len(after_text) > 12:
            await self._json(request, 400, {"error": "after must be a whole number"})
            return
        store = self.server.store
        task_id = match["id"]

        def read() -> dict[str, Any]:
            task = store.get_task(task_id)        # the state first: lines written before a
            machines = store.task_machines(task.id)       # completion are then all included
            names = {m.machine_id: m.machine_name for m in machines}
            lines = views.log_rows(store.task_logs(task.id, after_sequence=int(after_text)),
                                   names)
            return {"task": views.task_row(task, store.now()).to_json(),
                    "activities": [views.activity_row(m).to_json() for m in machines],
                    "lines": [line.to_json() for line in lines[:MAX_LINES_PER_POLL]],
                    "more": len(lines) > MAX_LINES_PER_POLL}
        try:
            document = await trio.to_thread.run_sync(read)
        except NotFound:
            await self._json(request, 404, {"error": f"There is no task {task_id}."})
            return
        await self._json(request, 200, document)

    async def _cancel(self, request: HandlerRequest, match: re.Match[str]) -> None:
        form = await self._form(request)
        session = await self._page_session(request)
        await self._check_post(request, session, form)
        task_id = match["id"]
        response = await self._call_api(request, session, "POST",
                                         f"/api/tasks/{quote(task_id)}/cancel", None)
        if response.status >= 400:
            await self._refuse(request, response.status, "Not cancelled",
                               "; ".join(_api_errors(response)), session)
        await self._redirect(request, f"{self.base}/tasks/{quote(task_id)}")

    # -- ad hoc scripts --------------------------------------------------------------------------
    async def _script_choices(self) -> tuple[list[views.Choice], list[views.Choice],
                                             list[views.Choice]]:
        rows = await self._machine_rows()
        store = self.server.store
        environments = await trio.to_thread.run_sync(
            lambda: store.list_environments(store.default_space().id))
        machines = [views.Choice(r.id, r.name, " · ".join(
            [", ".join(r.environments)] if r.environments else []) + (
            " · connected" if r.connected else " · offline")) for r in rows if not r.disabled]
        roles: dict[str, str] = {}
        for r in rows:
            for role in r.roles:
                roles.setdefault(role.casefold(), role)
        return (machines, [views.Choice(env.id, env.name) for env in environments],
                [views.Choice(role, role) for role in sorted(roles.values(), key=str.casefold)])

    async def _show_script_form(self, request: HandlerRequest, session: Session, status: int,
                                form: views.ScriptForm, errors: Sequence[str] = ()) -> None:
        machines, environments, roles = await self._script_choices()
        await self._html(request, status, views.script_page(
            self.base, viewer=_viewer(session), node=self.server.node, machines=machines,
            environments=environments, roles=roles, form=form, errors=errors))

    async def _script_form(self, request: HandlerRequest, match: re.Match[str]) -> None:
        session = await self._page_session(request)
        query = parse_qs(request.info.query)
        await self._show_script_form(request, session, 200, views.ScriptForm(
            machine_ids=tuple(query.get("machine", ()))))

    async def _run_script(self, request: HandlerRequest, match: re.Match[str]) -> None:
        form = await self._form(request)
        session = await self._page_session(request)
        await self._check_post(request, session, form)
        syntax = _one(form, "syntax") or "Bash"
        script = (_one(form, "script") or "").replace("\r\n", "\n")   # textareas send CRLF
        entered = views.ScriptForm(
            machine_ids=tuple(v for v in form.get("machine", []) if v),
            environment_ids=tuple(v for v in form.get("environment", []) if v),
            roles=tuple(v for v in form.get("role", []) if v), syntax=syntax, script=script,
            description=(_one(form, "description") or "").strip())
        document = {"Name": "AdHocScript",
                    "Description": entered.description or "Script run from the web portal",
                    "Arguments": {"MachineIds": list(entered.machine_ids),
                                  "EnvironmentIds": list(entered.environment_ids),
                                  "TargetRoles": list(entered.roles),
                                  "ScriptBody": script, "Syntax": syntax}}
        response = await self._call_api(request, session, "POST", "/api/tasks", document)
        if response.status == 201:
            task_id = str(response.json()["Id"])
            log.info("portal: %s started %s", session.username, task_id)
            await self._redirect(request, f"{self.base}/tasks/{quote(task_id)}")
            return
        await self._show_script_form(request, session, 400 if response.status < 500
                                     else response.status, entered, _api_errors(response))

    async def _call_api(self, request: HandlerRequest, session: Session, method: str,
                        path: str, document: Any) -> ApiResponse:
        """The REST API, called as this session's user with the session's own key."""
        api = self.server.api
        if api is None:
            await self._refuse(request, 503, "Not ready", "The server is still starting.",
                               session)
        assert api is not None
        body = b"" if document is None else json.dumps(document).encode("utf-8")
        api_request = ApiRequest(method=method, path=path, body=body,
                                 headers={"x-octopus-apikey": session.api_key,
                                          "content-type": "application/json"},
                                 client_ip=request.info.conn.remote_ip)
        response = await trio.to_thread.run_sync(api.handle, api_request)
        if response.status == 401:            # the key was revoked, or the user disabled
            self.sessions.end(session.token)
            await self._revoke([session])
            await self._redirect(request, f"{self.base}/login",
                                 [self._cookie(SESSION_COOKIE, "", max_age=0)])
            raise _Refused()
        return response

    # -- static ----------------------------------------------------------------------------------
    async def _static(self, request: HandlerRequest, match: re.Match[str]) -> None:
        item = STATIC_FILES.get(match["name"].lower())
        if item is None:
            await self._not_found(request)
            return
        etag = item.etag
        if etag in [t.strip() for t in (request.info.header("if-none-match") or "").split(",")]:
            await self._send(request, 304, b"", item.content_type, [("ETag", etag)],
                             cache="no-cache")
            return
        await self._send(request, 200, item.body, item.content_type, [("ETag", etag)],
                         cache="no-cache")


# ----------------------------------------------------------------------------- helpers

def _viewer(session: Session) -> views.Viewer:
    return views.Viewer(session.display_name, session.csrf_token)


def _authority(info: RequestInfo) -> str:
    """The host[:port] the client addressed (a registered process learns it from headers)."""
    return info.authority or info.header("x-forwarded-host") or info.header("host") or ""


def _one(values: Mapping[str, list[str]], name: str) -> str | None:
    found = values.get(name)
    return found[0] if found else None


def _cookie_values(info: RequestInfo, name: str) -> list[str]:
    return cookie_values(info.headers, name)


def _api_errors(response: ApiResponse) -> list[str]:
    try:
        document = response.json()
    except (ValueError, UnicodeDecodeError):
        return [f"The server answered {response.status}."]
    if not isinstance(document, dict):
        return [f"The server answered {response.status}."]
    errors = [str(x) for x in document.get("Errors") or [] if x]
    return errors or [str(document.get("ErrorMessage") or f"The server answered "
                                                           f"{response.status}.")]
