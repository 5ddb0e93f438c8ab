"""The web portal through the real front door: sign-in, sessions, CSRF, escaping, the pages.

Each test starts the comms server with its embedded front door on a free port (real TLS) and
talks to it with a small cookie-keeping HTTPS client (`http.client` in a worker thread). The pure
parts (sessions, throttle, origin and cookie parsing, escaping) also get direct and property
tests. The browser test (test_portal_browser.py) reuses `make_world` and `serving` from here.
"""

from __future__ import annotations

import html
import http.client
import json
import re
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import trio
from hypothesis import given, strategies as st

from octopus_comms.auth import create_api_key, create_user
from octopus_comms.portal import Portal, portal_route_prefix
from octopus_comms.portal import views
from octopus_comms.portal.sessions import (LoginThrottle, SessionStore, cookie_values,
                                           same_origin, tokens_equal)
from octopus_comms.server import CommsServer
from octopus_comms.settings import ServerSettings
from octopus_comms.store import MachineSpec, Store, TaskState
from tentacle.agent import run_agent
from tentacle.config import TentacleConfig, TrustedServer
from tests.comms_fixtures import make_comms_site
from tests.certs import make_certificate

SUBSCRIPTION = "poll://portalportalportal01/"
EVIL_NAME = "<script>alert('x')</script>&co"
PASSWORD = "correct horse battery staple"


# ----------------------------------------------------------------------------- the world

@dataclass
class World:
    state: Path
    home: Path
    agent_home: Path
    port: int
    thumbprint: str
    api_key: str
    agent_config: Callable[[], TentacleConfig]

    @property
    def origin(self) -> str:
        return f"https://localhost:{self.port}"


def make_world(tmp_path: Path) -> World:
    """A front door state dir (cert bound to a free port), a comms home with an environment,
    a polling machine `web01` (with an agent certificate), a machine with a hostile name, the
    user `alice`, and an API key for the administrator."""
    site = make_comms_site(tmp_path)
    state, home, port = site.state, site.home, site.port
    agent_home = tmp_path / "agent"
    agent_home.mkdir()
    agent_cert = make_certificate("Octopus Tentacle", client=True)
    with Store.open(home) as store:
        dev = store.create_environment("Dev")
        prod = store.create_environment("Production")
        store.create_machine(MachineSpec(name="web01", environment_ids=(dev.id,),
                                         roles=("web",), communication_style="TentacleActive",
                                         thumbprint=agent_cert.thumbprint, uri=SUBSCRIPTION))
        store.create_machine(MachineSpec(name=EVIL_NAME, environment_ids=(prod.id,),
                                         roles=("db", "<b>role</b>"),
                                         communication_style="TentacleActive",
                                         thumbprint="AB" * 20,
                                         uri="poll://evilevilevilevilevil1/"))
        create_user(store, "alice", "Alice Example", password=PASSWORD)
        _record, key = create_api_key(store, "portal test")

    def agent_config() -> TentacleConfig:
        return TentacleConfig(
            instance="Tentacle", config_path=agent_home / "tentacle.config", home=agent_home,
            app_dir=agent_home / "Applications", certificate_pem=agent_cert.cert_pem,
            private_key_pem=agent_cert.key_pem, thumbprint=agent_cert.thumbprint,
            trusted_servers=(TrustedServer(site.thumbprint, 2,
                                           f"wss://localhost:{port}/OctopusComms", None,
                                           SUBSCRIPTION),),
            polling_connection_count=1, no_listen=True, listen_port=10933, extra={})

    return World(state, home, agent_home, port, site.thumbprint, key, agent_config)


class PortalServer(CommsServer):
    """A CommsServer whose portal has the test's options (short timeouts, injected clocks)."""

    def __init__(self, home: Path, state: Path, *, portal_options: Mapping[str, Any],
                 **kwargs: Any) -> None:
        super().__init__(home, state, **kwargs)
        self.portal = Portal(self, **dict(portal_options))     # served at /app/ by routes()


@asynccontextmanager
async def serving(world: World, *, agent: bool = False,
                  **portal_options: Any) -> AsyncIterator[PortalServer]:
    """The server (and optionally our polling agent, connected) for the duration of a block."""
    server = PortalServer(world.home, world.state, keepalive=1.0, collection_timeout=15,
                          portal_options=portal_options)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run_embedded)
            if agent:
                await nursery.start(run_agent, world.agent_config())
                with trio.fail_after(15):
                    while server.live.count() == 0:
                        await trio.sleep(0.05)
            yield server
            nursery.cancel_scope.cancel()
    finally:
        server.close()


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


# ----------------------------------------------------------------------------- an HTTPS client

@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self) -> Any:
        return json.loads(self.body)

    def field(self, name: str) -> str:
        """The value of a hidden form field on the page."""
        found = re.search(rf'name="{re.escape(name)}" value="([^"]*)"', self.text)
        assert found, f"no {name} field on the page"
        return html.unescape(found.group(1))


@dataclass
class Client:
    """Keeps cookies like a browser would (by name; Max-Age=0 deletes)."""

    port: int
    cookies: dict[str, str] = field(default_factory=dict)

    def _request(self, method: str, path: str, body: bytes | None,
                 headers: Mapping[str, str]) -> Reply:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection("localhost", self.port, context=context, timeout=15)
        try:
            all_headers = dict(headers)
            if self.cookies:
                all_headers.setdefault("Cookie", "; ".join(f"{k}={v}"
                                                           for k, v in self.cookies.items()))
            conn.request(method, path, body=body, headers=all_headers)
            response = conn.getresponse()
            data = response.read()
            reply = Reply(response.status, list(response.getheaders()), data)
        finally:
            conn.close()
        for cookie in reply.all("Set-Cookie"):
            name, _, rest = cookie.partition("=")
            value = rest.split(";", 1)[0]
            if "max-age=0" in cookie.lower():
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return reply

    async def get(self, path: str, headers: Mapping[str, str] | None = None) -> Reply:
        return await trio.to_thread.run_sync(self._request, "GET", path, None, headers or {})

    async def post(self, path: str, form: Mapping[str, Any] | list[tuple[str, str]],
                   headers: Mapping[str, str] | None = None) -> Reply:
        body = urlencode(form, doseq=True).encode()
        all_headers = {"Content-Type": "application/x-www-form-urlencoded",
                       "Origin": f"https://localhost:{self.port}", **(headers or {})}
        return await trio.to_thread.run_sync(self._request, "POST", path, body, all_headers)

    async def sign_in(self, username: str = "alice", password: str = PASSWORD,
                      api_key: str = "", login_path: str = "/app/login") -> Reply:
        page = await self.get(login_path)
        return await self.post("/app/login", {"login_token": page.field("login_token"),
                                              "next": page.field("next"), "username": username,
                                              "password": password, "api_key": api_key})


def assert_secure_page(reply: Reply) -> None:
    csp = reply.header("Content-Security-Policy") or ""
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp
    assert "frame-ancestors 'none'" in csp
    assert reply.header("X-Frame-Options") == "DENY"
    assert reply.header("Referrer-Policy")
    assert reply.header("Cache-Control") == "no-store"
    assert reply.header("X-Content-Type-Options") == "nosniff"


def session_keys(world: World) -> list[str]:
    with Store.open(world.home) as store:
        return [k.id for k in store.list_api_keys() if k.name.startswith("Web portal session")]


# ----------------------------------------------------------------------------- through the door

async def test_sign_in_with_a_password_shows_the_machines(world: World) -> None:
    async with serving(world):
        client = Client(world.port)
        first = await client.get("/app/machines")
        assert first.status == 303
        assert first.header("Location") == "/app/login?next=%2Fapp%2Fmachines"
        login = await client.get("/app/login?next=%2Fapp%2Fmachines")
        assert login.status == 200
        assert_secure_page(login)
        assert "<title>Sign in · Octopus comms</title>" in login.text
        assert login.field("next") == "/app/machines"
        signed_in = await client.sign_in(login_path=first.header("Location") or "")
        assert signed_in.status == 303, signed_in.text
        assert signed_in.header("Location") == "/app/machines"
        cookie = next(c for c in signed_in.all("Set-Cookie")
                      if c.startswith("__Secure-octopus-portal="))
        attributes = {a.strip().lower() for a in cookie.split(";")[1:]}
        assert {"secure", "httponly", "samesite=strict", "path=/app/"} <= attributes
        token = cookie.split(";")[0].split("=", 1)[1]
        assert len(token) >= 43                       # 32 random bytes, base64url
        assert len(session_keys(world)) == 1          # the session's own API key

        page = await client.get("/app/machines")
        assert page.status == 200
        assert_secure_page(page)
        assert "<title>Machines · Octopus comms</title>" in page.text
        assert "web01" in page.text and "Dev" in page.text and "Alice Example" in page.text
        assert "Offline" in page.text                 # no agent in this test
        live = await client.get("/app/api/machines")
        assert live.status == 200 and (live.header("Content-Type") or "").startswith("application/json")
        machines = {m["name"]: m for m in live.json()["machines"]}
        assert machines["web01"]["connected"] is False
        assert machines["web01"]["roles"] == ["web"]
        assert machines["web01"]["environments"] == ["Dev"]

        for path in ("/app/", "/app/tasks", "/app/script"):
            reply = await client.get(path)
            assert reply.status == 200, path
            assert_secure_page(reply)
            assert "Octopus comms</title>" in reply.text
        # signed in, the sign-in page sends you on
        again = await client.get("/app/login")
        assert again.status == 303 and again.header("Location") == "/app/"


async def test_wrong_password_and_unknown_api_key_are_refused(world: World) -> None:
    async with serving(world):
        client = Client(world.port)
        wrong = await client.sign_in(password="not it")
        assert wrong.status == 401
        assert "were not accepted" in wrong.text
        assert "__Secure-octopus-portal" not in client.cookies
        bad_key = await client.sign_in(username="", password="", api_key="API-" + "A" * 26)
        assert bad_key.status == 401
        nobody = await client.sign_in(username="mallory")
        assert nobody.status == 401
        assert (await client.get("/app/")).status == 303
        assert (await client.get("/app/api/machines")).status == 401
        assert session_keys(world) == []


async def test_sign_in_with_an_api_key(world: World) -> None:
    async with serving(world):
        client = Client(world.port)
        reply = await client.sign_in(username="", password="", api_key=world.api_key.lower())
        assert reply.status == 303
        page = await client.get("/app/")
        assert page.status == 200 and "Signed in as" in page.text


async def test_failed_sign_ins_are_rate_limited_per_client(world: World) -> None:
    async with serving(world, max_login_failures=3, login_failure_window=60.0):
        client = Client(world.port)
        for _ in range(3):
            assert (await client.sign_in(password="guess")).status == 401
        blocked = await client.sign_in()              # even the right password now
        assert blocked.status == 429
        assert 0 < int(blocked.header("Retry-After") or "0") <= 60
        assert "Too many failed sign-in attempts" in blocked.text
        assert "__Secure-octopus-portal" not in client.cookies


async def test_sign_in_form_needs_its_token_and_our_origin(world: World) -> None:
    async with serving(world):
        client = Client(world.port)
        page = await client.get("/app/login")
        form = {"login_token": page.field("login_token"), "username": "alice",
                "password": PASSWORD}
        no_token = await client.post("/app/login", {**form, "login_token": ""})
        assert no_token.status == 403
        foreign = await client.post("/app/login", {**form, "login_token":
                                                   (await client.get("/app/login"))
                                                   .field("login_token")},
                                    headers={"Origin": "https://evil.example"})
        assert foreign.status == 403
        assert "__Secure-octopus-portal" not in client.cookies


async def test_posts_without_the_csrf_token_are_refused(world: World) -> None:
    async with serving(world):
        client = Client(world.port)
        assert (await client.sign_in()).status == 303
        form_page = await client.get("/app/script")
        token = form_page.field("csrf_token")
        script = {"machine": "Machines-1", "syntax": "Bash", "script": "echo hi"}
        assert (await client.post("/app/script", script)).status == 403
        wrong = await client.post("/app/script", {**script, "csrf_token": token[:-2] + "xx"})
        assert wrong.status == 403
        assert_secure_page(wrong)
        other_site = await client.post("/app/script", {**script, "csrf_token": token},
                                       headers={"Origin": "https://evil.example"})
        assert other_site.status == 403
        other_referer = await client.post(
            "/app/script", {**script, "csrf_token": token},
            headers={"Origin": "", "Referer": "https://evil.example/app/script"})
        assert other_referer.status == 403
        assert (await client.post("/app/logout", {})).status == 403
        with Store.open(world.home) as store:
            assert store.list_tasks()[1] == 0         # nothing was started
        # the same form with the token goes through to the API and makes a task
        ok = await client.post("/app/script", {**script, "csrf_token": token})
        assert ok.status == 303, ok.text
        assert re.fullmatch(r"/app/tasks/ServerTasks-\d+", ok.header("Location") or "")
        task_page = await client.get(ok.header("Location") or "")
        assert task_page.status == 200 and "echo hi" in task_page.text


async def test_script_form_shows_the_api_validation_errors(world: World) -> None:
    async with serving(world):
        client = Client(world.port)
        await client.sign_in()
        token = (await client.get("/app/script")).field("csrf_token")
        reply = await client.post("/app/script", {"csrf_token": token, "syntax": "Bash",
                                                  "script": "echo <kept>"})
        assert reply.status == 400
        assert "Please choose the deployment targets" in reply.text
        assert "echo &lt;kept&gt;</textarea>" in reply.text


async def test_sessions_expire_and_their_keys_are_revoked(world: World) -> None:
    now = [1000.0]
    async with serving(world, clock=lambda: now[0], idle_timeout=60.0, sweep_interval=1.0):
        client = Client(world.port)
        assert (await client.sign_in()).status == 303
        assert len(session_keys(world)) == 1
        now[0] += 59.0
        assert (await client.get("/app/")).status == 200      # activity renews the idle timer
        now[0] += 59.0
        assert (await client.get("/app/api/machines")).status == 200
        now[0] += 61.0
        expired = await client.get("/app/tasks")
        assert expired.status == 303
        assert (expired.header("Location") or "").startswith("/app/login")
        assert (await client.get("/app/api/machines")).status == 401
        assert session_keys(world) == []


async def test_sign_out_ends_the_session_and_revokes_its_key(world: World) -> None:
    async with serving(world):
        client = Client(world.port)
        await client.sign_in()
        old_cookies = dict(client.cookies)
        page = await client.get("/app/")
        out = await client.post("/app/logout", {"csrf_token": page.field("csrf_token")})
        assert out.status == 303
        assert out.header("Location") == "/app/login?signed_out=1"
        assert any(c.startswith("__Secure-octopus-portal=;") and "Max-Age=0" in c
                   for c in out.all("Set-Cookie"))
        assert session_keys(world) == []
        notice = await client.get("/app/login?signed_out=1")
        assert "You have signed out." in notice.text
        replay = Client(world.port, dict(old_cookies))          # the old cookie is dead
        assert (await replay.get("/app/")).status == 303


async def test_deleting_the_session_key_signs_the_browser_out(world: World) -> None:
    async with serving(world) as server:
        client = Client(world.port)
        await client.sign_in()
        assert (await client.get("/app/")).status == 200
        [key_id] = session_keys(world)
        await trio.to_thread.run_sync(server.store.delete_api_key, key_id)
        assert (await client.get("/app/api/machines")).status == 401
        assert (await client.get("/app/")).status == 303
        # signing in again replaces, rather than adds to, this browser's session
        await client.sign_in()
        session = client.cookies.pop("__Secure-octopus-portal")
        form = await client.get("/app/login")             # a form, fetched as if signed out
        client.cookies["__Secure-octopus-portal"] = session
        again = await client.post("/app/login", {"login_token": form.field("login_token"),
                                                 "username": "alice", "password": PASSWORD})
        assert again.status == 303
        assert client.cookies["__Secure-octopus-portal"] != session
        assert len(session_keys(world)) == 1


async def test_hostile_names_are_escaped_everywhere(world: World) -> None:
    async with serving(world):
        client = Client(world.port)
        await client.sign_in()
        for path in ("/app/machines", "/app/script"):
            page = await client.get(path)
            assert "<script>alert" not in page.text, path
            assert "<b>role</b>" not in page.text, path
            assert html.escape(EVIL_NAME, quote=True) in page.text, path
        data = (await client.get("/app/api/machines")).json()
        assert EVIL_NAME in [m["name"] for m in data["machines"]]
        # a script body and description with markup, shown on the task page
        token = (await client.get("/app/script")).field("csrf_token")
        made = await client.post("/app/script", {"csrf_token": token, "machine": "Machines-2",
                                                 "syntax": "Bash", "script": "echo '</pre><i>'",
                                                 "description": "<img src=x onerror=1>"})
        assert made.status == 303
        page = await client.get(made.header("Location") or "")
        assert "<img src=x" not in page.text and "</pre><i>" not in page.text
        assert "&lt;img src=x onerror=1&gt;" in page.text


async def test_anonymous_json_static_files_and_unknown_paths(world: World) -> None:
    async with serving(world):
        client = Client(world.port)
        denied = await client.get("/app/api/tasks/ServerTasks-1/log?after=0")
        assert denied.status == 401 and denied.json()["error"]
        css = await client.get("/app/static/portal.css")
        assert css.status == 200 and (css.header("Content-Type") or "").startswith("text/css")
        js = await client.get("/app/static/portal.js")
        assert js.status == 200 and "textContent" in js.text and "innerHTML" not in js.text
        cached = await client.get("/app/static/portal.js",
                                  headers={"If-None-Match": js.header("ETag") or ""})
        assert cached.status == 304
        await client.sign_in()
        assert (await client.get("/app/nowhere")).status == 404
        assert (await client.get("/app/tasks/ServerTasks-999")).status == 404
        missing = await client.get("/app/api/tasks/ServerTasks-999/log?after=0")
        assert missing.status == 404
        assert (await client.get("/app/api/tasks/ServerTasks-1/log?after=x")).status == 400
        not_allowed = await client.post("/app/tasks", {})
        assert not_allowed.status == 405 and "GET" in (not_allowed.header("Allow") or "")
        bare = await client.get("/app")
        assert bare.status in (301, 302, 303, 307, 308)


async def test_task_log_endpoint_pages_lines_after_a_sequence(world: World) -> None:
    async with serving(world) as server:
        client = Client(world.port)
        await client.sign_in()
        task = await trio.to_thread.run_sync(lambda: server.store.create_task(
            "AdHocScript", "manual", {"ScriptBody": "true", "Syntax": "Bash"}, ["Machines-1"]))
        await trio.to_thread.run_sync(lambda: server.store.append_task_log(
            task.id, "Machines-1", "Info", "first <line>"))
        await trio.to_thread.run_sync(lambda: server.store.append_task_log(
            task.id, "Machines-1", "Error", "second"))
        everything = (await client.get(f"/app/api/tasks/{task.id}/log?after=0")).json()
        assert [line["text"] for line in everything["lines"]] == ["first <line>", "second"]
        assert everything["lines"][0]["machine"] == "web01"
        assert everything["task"]["completed"] is False
        later = (await client.get(f"/app/api/tasks/{task.id}/log?after=1")).json()
        assert [line["seq"] for line in later["lines"]] == [2]
        await trio.to_thread.run_sync(lambda: server.store.set_task_state(task.id,
                                                                          TaskState.SUCCESS))
        done = (await client.get(f"/app/api/tasks/{task.id}/log?after=2")).json()
        assert done["lines"] == [] and done["task"]["completed"] is True
        page = await client.get(f"/app/tasks/{task.id}")
        assert "first &lt;line&gt;" in page.text and 'data-after="2"' in page.text


# ----------------------------------------------------------------------------- the pure parts

def test_portal_route_prefix_shares_the_comms_listener() -> None:
    settings = ServerSettings(comms_listen_websocket=("https://+:8443/OctopusComms/",))
    assert portal_route_prefix(settings) == "https://+:8443/app/"
    named = ServerSettings(comms_listen_websocket=("https://octo.example.com:443/OctopusComms/",))
    assert portal_route_prefix(named) == "https://octo.example.com:443/app/"
    with pytest.raises(ValueError):
        portal_route_prefix(ServerSettings())


def test_session_store_idle_absolute_and_eviction() -> None:
    now = [0.0]
    sessions = SessionStore(lambda: now[0], idle_timeout=10, absolute_timeout=25, max_sessions=2)
    a, evicted = sessions.create("Users-1", "a", "A", "APIKeys-1", "API-A")
    assert evicted == [] and sessions.get(a.token) is a
    assert sessions.get("nope") is None and sessions.get(None) is None
    for _ in range(3):
        now[0] += 8
        assert sessions.get(a.token) is a          # kept alive by use...
    now[0] += 2
    assert sessions.get(a.token) is None           # ...but not past its absolute lifetime
    assert sessions.sweep() == [a] and len(sessions) == 0
    b, _ = sessions.create("Users-1", "b", "B", "APIKeys-2", "API-B")
    c, _ = sessions.create("Users-1", "c", "C", "APIKeys-3", "API-C")
    sessions.get(b.token)                          # c is now the least recently used
    d, evicted = sessions.create("Users-1", "d", "D", "APIKeys-4", "API-D")
    assert evicted == [c] and len(sessions) == 2
    assert sessions.end(b.token) is b and sessions.get(b.token) is None
    assert b.token not in repr(b) and "API-B" not in repr(b)


def test_login_throttle_window_and_bounded_memory() -> None:
    now = [0.0]
    throttle = LoginThrottle(lambda: now[0], max_failures=3, window=100, max_clients=50)
    for _ in range(3):
        assert throttle.retry_after("10.0.0.1") == 0
        throttle.failed("10.0.0.1")
        now[0] += 10
    assert throttle.retry_after("10.0.0.1") == pytest.approx(70)
    assert throttle.retry_after("10.0.0.2") == 0
    now[0] += 71
    assert throttle.retry_after("10.0.0.1") == 0
    throttle.succeeded("10.0.0.1")
    for i in range(500):
        throttle.failed(f"192.0.2.{i}")
    assert len(throttle) == 50


def test_same_origin() -> None:
    ours = ("https", "localhost:8443")
    assert same_origin([], *ours)
    assert same_origin([("Origin", "https://localhost:8443")], *ours)
    assert same_origin([("Origin", "https://LOCALHOST:8443")], *ours)
    assert not same_origin([("Origin", "https://localhost:9443")], *ours)
    assert not same_origin([("Origin", "http://localhost:8443")], *ours)
    assert not same_origin([("Origin", "null")], *ours)
    assert not same_origin([("Origin", "https://evil.example")], *ours)
    assert same_origin([("Referer", "https://localhost:8443/app/script?x=1")], *ours)
    assert not same_origin([("Referer", "https://localhost:8443.evil.example/app/")], *ours)
    assert same_origin([("Origin", "https://example.com")], "https", "example.com")
    assert same_origin([("Origin", "https://example.com:443")], "https", "example.com")
    assert tokens_equal("abc", "abc") and not tokens_equal("abc", "abd")
    assert not tokens_equal("abc", None) and not tokens_equal("abc", "\udcff")


_token = st.text(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                 "0123456789-_"), min_size=1, max_size=60)


@given(st.lists(st.tuples(_token, _token), min_size=1, max_size=6), st.integers(0, 5))
def test_cookie_values_finds_every_value_of_a_name(pairs: list[tuple[str, str]],
                                                    pick: int) -> None:
    name = pairs[pick % len(pairs)][0]
    header = "; ".join(f"{k}={v}" for k, v in pairs)
    assert cookie_values([("Cookie", header)], name) == [v for k, v in pairs if k == name]


@given(st.text(max_size=80), st.text(max_size=80), st.text(max_size=40))
def test_same_origin_never_raises(origin: str, referer: str, authority: str) -> None:
    result = same_origin([("Origin", origin), ("Referer", referer)], "https", authority)
    assert isinstance(result, bool)


class _CellText(HTMLParser):
    """Collects the text of <strong> elements (where the machines table puts the name)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.inside = False
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "strong":
            self.inside = True
            self.found.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "strong":
            self.inside = False

    def handle_data(self, data: str) -> None:
        if self.inside:
            self.found[-1] += data


@given(st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40))
def test_any_machine_name_renders_as_text(name: str) -> None:
    row = views.MachineRow(id="Machines-1", name=name, environments=(name,), roles=(name,),
                           thumbprint="00" * 20, communication_style="TentacleActive",
                           disabled=False, connected=True, connections=1, last_poll="",
                           last_poll_ago="", node=name, remote="127.0.0.1:1")
    page = views.machines_page("/app", [row], viewer=views.Viewer("v", "t"), node="n")
    parser = _CellText()
    parser.feed(page)
    assert name in parser.found          # the browser shows exactly the name, as text
    assert "<" not in name or name not in page
