"""register-with and poll-server against a small real HTTPS server imitating the Octopus REST API.

The fake server speaks real TLS (stdlib `ssl`, a throwaway self-signed certificate) on one port,
like a front door serving both `/OctopusComms` and `/api`, and answers with the shapes Octopus
Server 2024 returns (halibut.md §5). Every request is recorded so the tests can check the exact
sequence and bodies the agent sent.
"""

from __future__ import annotations

import io
import json
import re
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from tentacle.certificate import new_certificate
from tentacle.cli import main
from tentacle.config import TrustedServer, load_config, save_config
from tentacle.octopus_api import OctopusApiError, expand_template, format_api_error, resolve_link
from tentacle.registration import (
    RegistrationError,
    ServerEndpointOptions,
    check_root_document,
    choose_subscription_id,
    comms_address,
    machine_document,
    match_environments,
    probe_comms,
)
from tests.certs import TestCertificate, make_certificate

API_KEY = "API-GOOD0000000000000000000000"
SUBSCRIPTION = re.compile(r"poll://[a-z]{20}/")


# ------------------------------------------------------------------ the fake Octopus Server

@dataclass
class Recorded:
    method: str
    target: str
    headers: dict[str, str]
    body: Any

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query)


@dataclass
class FakeOctopus:
    """The bits of the Octopus REST API that registration uses."""

    certificate: TestCertificate
    environments_v2: bool = True
    requests: list[Recorded] = field(default_factory=list)
    machines: dict[str, dict[str, Any]] = field(default_factory=dict)
    reject_create: dict[str, Any] | None = None
    port: int = 0

    spaces: ClassVar[list[dict[str, Any]]] = [
        {"Id": "Spaces-1", "Name": "Default", "Slug": "default", "IsDefault": True,
         "Links": {"Self": "/api/spaces/Spaces-1", "SpaceHome": "/api/Spaces-1"}},
        {"Id": "Spaces-2", "Name": "Other Team", "Slug": "other-team", "IsDefault": False,
         "Links": {"Self": "/api/spaces/Spaces-2", "SpaceHome": "/api/Spaces-2"}},
    ]
    environments: ClassVar[list[dict[str, Any]]] = [
        {"Id": "Environments-1", "Name": "Production", "Slug": "production", "Type": "Static",
         "SpaceId": "Spaces-1", "SortOrder": 0, "Description": ""},
        {"Id": "Environments-2", "Name": "Test Lab", "Slug": "test-lab", "Type": "Static",
         "SpaceId": "Spaces-1", "SortOrder": 1, "Description": ""},
    ]
    policies: ClassVar[list[dict[str, Any]]] = [
        {"Id": "MachinePolicies-1", "Name": "Default Machine Policy"},
        {"Id": "MachinePolicies-2", "Name": "Linux Policy"}]

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def wss(self) -> str:
        return f"wss://127.0.0.1:{self.port}/OctopusComms"

    def api_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.startswith("/api")]

    # -- documents
    @staticmethod
    def root() -> dict[str, Any]:
        space = "/api/Spaces-1"
        return {"Application": "Octopus Deploy", "Version": "2024.1.0", "ApiVersion": "3.0.0",
                "InstallationId": "7f8d2c6e-0000-4000-8000-000000000001",
                "Links": {"Self": "/api", "CurrentUser": "/api/users/me",
                          "Spaces": "/api/spaces{/id}{?skip,ids,take,partialName}",
                          "SpaceHome": "/api/{spaceId}",
                          "Environments": space + "/environments{/id}{?name,skip,ids,take,"
                                                  "partialName}",
                          "Machines": space + "/machines{/id}{?skip,take,name,ids,partialName}",
                          "MachinePolicies": space + "/machinepolicies{/id}{?skip,take,ids,"
                                                     "partialName}"}}

    @staticmethod
    def space_root(space_id: str) -> dict[str, Any]:
        space = f"/api/{space_id}"
        return {"Links": {"Self": space,
                          "Environments": space + "/environments{/id}{?name,skip,ids,take,"
                                                  "partialName}",
                          "Machines": space + "/machines{/id}{?skip,take,name,ids,partialName}",
                          "MachinePolicies": space + "/machinepolicies{/id}{?skip,take,ids,"
                                                     "partialName}"}}

    @staticmethod
    def page(item_type: str, items: list[Any]) -> dict[str, Any]:
        return {"ItemType": item_type, "TotalResults": len(items), "ItemsPerPage": len(items),
                "NumberOfPages": 1, "LastPageNumber": 0, "Items": items,
                "Links": {"Self": "/api/whatever", "Page.Current": "/api/whatever"}}

    # -- routing
    def answer(self, record: Recorded) -> tuple[int, Any, str]:
        path, method = record.path, record.method
        if path == "/handshake":  # a Halibut TCP port: "send a client certificate" → 400
            return 400, "", "text/plain"
        if path.rstrip("/") == "/OctopusComms":
            return 200, "<html><title>Octopus Server configured successfully</title></html>", \
                "text/html; charset=utf-8"
        if record.headers.get("x-octopus-apikey") != API_KEY:
            return 401, {"ErrorMessage": "You must be logged in to perform this action. Please "
                                         "provide a valid API key or log in again.",
                         "Errors": [], "FullException": None, "HelpText": None,
                         "Details": None}, ""
        override = record.headers.get("x-http-method-override")
        if method not in ("GET", "POST"):
            return 405, {"ErrorMessage": "Method not allowed", "Errors": []}, ""
        verb = override or method
        if verb == "GET" and path == "/api":
            return 200, self.root(), ""
        if verb == "GET" and path == "/api/users/me":
            return 200, {"Id": "Users-1", "Username": "admin",
                         "Links": {"Self": "/api/users/Users-1",
                                   "Spaces": "/api/users/Users-1/spaces"}}, ""
        if verb == "GET" and path == "/api/users/Users-1/spaces":
            return 200, self.spaces, ""
        match = re.fullmatch(r"/api/(Spaces-\d+)(/.*)?", path)
        if match is None:
            return 404, {"ErrorMessage": f"The resource '{path}' was not found.", "Errors": []}, ""
        space_id, rest = match.group(1), match.group(2) or ""
        if verb == "GET" and rest == "":
            return 200, self.space_root(space_id), ""
        if verb == "GET" and rest == "/environments/v2":
            if not self.environments_v2:
                return 404, {"ErrorMessage": "The resource was not found.", "Errors": []}, ""
            return 200, self.page("Environment", self.environments), ""
        if verb == "GET" and rest == "/environments":
            return 200, self.page("Environment", self.environments), ""
        if verb == "GET" and rest == "/machinepolicies":
            return 200, self.page("MachinePolicy", self.policies), ""
        if rest == "/machines" and verb == "GET":
            name = record.query.get("name", [None])[0]
            items = [m for m in self.machines.values()
                     if name is None or m["Name"].lower() == name.lower()]
            return 200, self.page("Machine", items), ""
        if rest == "/machines" and verb == "POST":
            if self.reject_create is not None:
                return 400, self.reject_create, ""
            machine_id = f"Machines-{len(self.machines) + 1}"
            machine = dict(record.body, Id=machine_id,
                           Links={"Self": f"/api/{space_id}/machines/{machine_id}"})
            self.machines[machine_id] = machine
            return 201, machine, ""
        machine_match = re.fullmatch(r"/machines/(Machines-\d+)", rest)
        if machine_match and machine_match.group(1) in self.machines:
            machine_id = machine_match.group(1)
            if verb == "GET":
                return 200, self.machines[machine_id], ""
            if verb == "PUT" and method == "POST":
                self.machines[machine_id] = dict(record.body, Id=machine_id,
                                                 Links={"Self": f"/api/{space_id}/machines/"
                                                                f"{machine_id}"})
                return 200, self.machines[machine_id], ""
        return 404, {"ErrorMessage": f"The resource '{path}' was not found.", "Errors": []}, ""


def _handler_for(fake: FakeOctopus) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw and "json" in (self.headers.get("Content-Type") or "") \
                else raw.decode("latin-1")
            record = Recorded(self.command, self.path,
                              {k.lower(): v for k, v in self.headers.items()}, body)
            fake.requests.append(record)
            status, document, content_type = fake.answer(record)
            payload = (document if isinstance(document, str) else json.dumps(document)).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type or "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload)
            self.close_connection = True

        do_GET = do_POST = do_PUT = _serve

    return Handler


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    servers: list[ThreadingHTTPServer] = []

    def start(fake: FakeOctopus, port: int = 0) -> FakeOctopus:
        cert_path, key_path = fake.certificate.write(tmp_path, f"server{len(servers)}")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_path, key_path)
        server = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(fake))
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        fake.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        servers.append(server)
        return fake

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def agent_certificate():
    return new_certificate()


@pytest.fixture
def instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, agent_certificate) -> Path:
    """An instance `Tentacle` with a certificate, registry and machine home in tmp."""
    monkeypatch.setenv("TENTACLE_INSTANCES_DIR", str(tmp_path / "instances"))
    monkeypatch.setenv("TentacleMachineConfigurationHomeDirectory", str(tmp_path / "machine"))
    config_path = tmp_path / "Tentacle" / "tentacle-Tentacle.config"
    code, _out, err = run("create-instance", "--instance", "Tentacle", "--config",
                          str(config_path))
    assert code == 0, err
    config = load_config(config_path)
    save_config(replace(config, certificate_pem=agent_certificate.cert_pem,
                        private_key_pem=agent_certificate.key_pem,
                        thumbprint=agent_certificate.thumbprint))
    return config_path


def run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def register(fake: FakeOctopus, *extra: str, name: str = "web-01") -> tuple[int, str, str]:
    return run("register-with", "--server", fake.base, "--apiKey", API_KEY, "--name", name,
               "--environment", "production", "--role", "web-server", "--comms-style",
               "TentacleActive", "--server-web-socket", fake.wss, *extra)


# ------------------------------------------------------------------ register-with

def test_register_with_follows_the_steps_and_trusts_the_probed_certificate(
        serve: Any, instance: Path, agent_certificate) -> None:
    fake = serve(FakeOctopus(make_certificate("127.0.0.1", sans=("127.0.0.1",))))
    code, out, err = register(fake, "--environment", "Environments-2", "--role", "db")
    assert code == 0, err
    assert err == ""

    config = load_config(instance)
    [entry] = config.trusted_servers
    assert entry.thumbprint == fake.certificate.thumbprint
    assert entry.communication_style == 2
    assert entry.address == fake.wss
    assert SUBSCRIPTION.fullmatch(entry.subscription_id or "")
    assert entry.squid is None

    assert [(r.method, r.path) for r in fake.requests] == [
        ("POST", "/OctopusComms"), ("GET", "/api"), ("GET", "/api/users/me"),
        ("GET", "/api/users/Users-1/spaces"), ("GET", "/api/Spaces-1"),
        ("GET", "/api/Spaces-1/environments/v2"), ("GET", "/api/Spaces-1/machines"),
        ("POST", "/api/Spaces-1/machines"), ("GET", "/api/Spaces-1/machines/Machines-1")]
    probe = fake.requests[0]
    assert probe.body == "" and "x-octopus-apikey" not in probe.headers
    assert all(r.headers["x-octopus-apikey"] == API_KEY for r in fake.api_requests())
    assert fake.requests[5].query == {"skip": ["0"], "take": ["2147483647"]}
    assert fake.requests[6].query["name"] == ["web-01"]
    assert fake.requests[7].body == {
        "Name": "web-01", "EnvironmentIds": ["Environments-1", "Environments-2"],
        "Roles": ["web-server", "db"], "TenantedDeploymentParticipation": "Untenanted",
        "TenantIds": [], "TenantTags": [], "SpaceId": "Spaces-1", "MachinePolicyId": None,
        "IsDisabled": False,
        "Endpoint": {"CommunicationStyle": "TentacleActive",
                     "Thumbprint": agent_certificate.thumbprint,
                     "Uri": entry.subscription_id}}

    assert f"Checking connectivity on the server web socket address {fake.wss}..." in out
    assert f"Trusting the Octopus Server certificate {fake.certificate.thumbprint}" in out
    assert f"Subscription id: {entry.subscription_id}" in out
    assert "Machine web-01 registered with id: Machines-1" in out
    assert "Machine registered successfully" in out


def test_duplicate_name_is_refused_and_force_updates_with_a_method_override(
        serve: Any, instance: Path) -> None:
    fake = serve(FakeOctopus(make_certificate("127.0.0.1", sans=("127.0.0.1",))))
    assert register(fake)[0] == 0
    first = load_config(instance).trusted_servers
    fake.requests.clear()

    code, out, err = register(fake, name="WEB-01")
    assert code == 1
    assert err.strip() == ("A machine named 'WEB-01' already exists in the environment. Use the "
                           "'force' parameter if you want to update the existing machine.")
    assert "Traceback" not in out + err
    assert not any(r.method == "POST" and "machines" in r.path for r in fake.requests)
    assert load_config(instance).trusted_servers == first

    fake.requests.clear()
    code, out, err = register(fake, "--force", "--policy", "linux policy")
    assert code == 0, err
    update = [r for r in fake.requests if r.path == "/api/Spaces-1/machines/Machines-1"
              and r.method == "POST"]
    assert len(update) == 1
    assert update[0].headers["x-http-method-override"] == "PUT"
    assert update[0].body["Id"] == "Machines-1"
    assert update[0].body["MachinePolicyId"] == "MachinePolicies-2"
    assert update[0].body["Endpoint"]["Uri"] == first[0].subscription_id  # reused
    assert "Machine web-01 updated with id: Machines-1" in out
    assert load_config(instance).trusted_servers == first


def test_environments_fall_back_to_the_classic_endpoint_on_404(serve: Any, instance: Path) -> None:
    fake = serve(FakeOctopus(make_certificate("127.0.0.1", sans=("127.0.0.1",)),
                             environments_v2=False))
    code, _out, err = register(fake, "--environment", "TEST-LAB")
    assert code == 0, err
    paths = [r.target for r in fake.requests if "environments" in r.path]
    assert paths == ["/api/Spaces-1/environments/v2?skip=0&take=2147483647",
                     "/api/Spaces-1/environments?skip=0&take=2147483647"]
    assert fake.machines["Machines-1"]["EnvironmentIds"] == ["Environments-1", "Environments-2"]


def test_unknown_environment_has_the_real_message_and_saves_nothing(
        serve: Any, instance: Path) -> None:
    fake = serve(FakeOctopus(make_certificate("127.0.0.1", sans=("127.0.0.1",))))
    code, _out, err = register(fake, "--environment", "Atlantis", "--environment", "Nowhere")
    assert code == 1
    assert err.strip() == ("Could not find the environments with names, slugs or Ids: Atlantis, "
                           "Nowhere on the Octopus Server. Ensure the environments exist and you "
                           "have permission to access them.")
    assert load_config(instance).trusted_servers == ()
    assert fake.machines == {}


def test_server_errors_print_error_message_and_errors(serve: Any, instance: Path) -> None:
    fake = serve(FakeOctopus(make_certificate("127.0.0.1", sans=("127.0.0.1",))))
    fake.reject_create = {"ErrorMessage": "There was a problem with your request.",
                          "Errors": ["The machine name is too long.", "Roles are required."],
                          "FullException": None, "HelpText": None, "Details": None}
    code, _out, err = register(fake)
    assert code == 1
    assert err.rstrip("\n") == ("There was a problem with your request.\n\n"
                                " - The machine name is too long.\n - Roles are required.")
    assert load_config(instance).trusted_servers == ()

    code, _out, err = run("register-with", "--server", fake.base, "--apiKey", "API-WRONG",
                          "--environment", "Production", "--role", "r", "--server-web-socket",
                          fake.wss)
    assert code == 1
    assert err.startswith("You must be logged in to perform this action.")


def test_space_option_selects_a_space_by_name(serve: Any, instance: Path) -> None:
    fake = serve(FakeOctopus(make_certificate("127.0.0.1", sans=("127.0.0.1",))))
    code, _out, err = register(fake, "--space", "other team")
    assert code == 0, err
    assert fake.machines["Machines-1"]["SpaceId"] == "Spaces-2"
    assert any(r.path == "/api/Spaces-2/environments/v2" for r in fake.requests)
    code, _out, err = register(fake, "--space", "Nope", name="other")
    assert code == 1
    assert 'A space with name "Nope" could not be found.' in err


def test_given_subscription_id_is_used(serve: Any, instance: Path) -> None:
    fake = serve(FakeOctopus(make_certificate("127.0.0.1", sans=("127.0.0.1",))))
    code, _out, err = register(fake, "--server-subscription-id", "poll://mychosensubscription")
    assert code == 0, err
    assert load_config(instance).trusted_servers[0].subscription_id == \
        "poll://mychosensubscription/"
    assert fake.machines["Machines-1"]["Endpoint"]["Uri"] == "poll://mychosensubscription/"


def test_api_on_the_comms_host_is_pinned_to_the_probed_certificate(
        serve: Any, instance: Path) -> None:
    comms = serve(FakeOctopus(make_certificate("127.0.0.1", sans=("127.0.0.1",))))
    impostor = serve(FakeOctopus(make_certificate("localhost", sans=("127.0.0.1",),
                                                  client=True)))
    code, _out, err = run("register-with", "--server", impostor.base, "--apiKey", API_KEY,
                          "--environment", "Production", "--role", "r",
                          "--server-web-socket", comms.wss)
    assert code == 1
    assert "is neither the one the Octopus Server's comms endpoint presented" in err
    assert comms.certificate.thumbprint in err and impostor.certificate.thumbprint in err
    assert impostor.api_requests() == []  # the API key never left for the impostor


def test_register_needs_a_certificate_environment_and_role(serve: Any, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENTACLE_INSTANCES_DIR", str(tmp_path / "instances"))
    assert run("create-instance", "--config", str(tmp_path / "t.config"))[0] == 0
    base = ("register-with", "--server", "https://127.0.0.1:1", "--apiKey", API_KEY,
            "--server-web-socket", "wss://127.0.0.1:1/OctopusComms")
    assert run(*base, "--role", "r")[2].strip() == ("Please specify an environment name, e.g., "
                                                    "--environment=Development")
    assert run(*base, "--environment", "e")[2].strip() == ("Please specify a role name, e.g., "
                                                           "--role=web-server")
    assert run(*base, "--environment", "e", "--role", "r")[2].strip() == (
        "No certificate has been generated for this Tentacle. Please run the new-certificate "
        "command first.")
    code, _out, err = run("register-with", "--server", "https://x", "--apiKey", API_KEY,
                          "--environment", "e", "--role", "r", "--server-web-socket",
                          "ws://x/OctopusComms")
    assert (code, err.strip()) == (1, "The websocket address must start with wss://")


def test_halibut_tcp_polling_address_is_registered_with_a_warning(serve: Any,
                                                                   instance: Path) -> None:
    fake = serve(FakeOctopus(make_certificate("127.0.0.1", sans=("127.0.0.1",))))
    code, out, err = run("register-with", "--server", fake.base, "--apiKey", API_KEY,
                         "--environment", "Production", "--role", "r", "--server-comms-port",
                         str(fake.port))
    assert code == 0, err
    assert fake.requests[0].method == "POST" and fake.requests[0].path == "/handshake"
    [entry] = load_config(instance).trusted_servers
    assert entry.address == f"https://127.0.0.1:{fake.port}/"
    assert entry.thumbprint == fake.certificate.thumbprint
    assert f"Checking connectivity on the server communications port {fake.port}..." in out
    assert "this agent polls over WebSockets only" in out


def test_registration_restarts_a_running_agent(serve: Any, instance: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import shlex
    import sys
    monkeypatch.setenv("TENTACLE_SERVICE_MANAGER", "none")
    monkeypatch.setenv("TENTACLE_AGENT_COMMAND",
                       f"{shlex.quote(sys.executable)} -c 'import time; time.sleep(600)'")
    fake = serve(FakeOctopus(make_certificate("127.0.0.1", sans=("127.0.0.1",))))
    pid_file = instance.parent / "tentacle.pid"
    assert run("service", "--start")[0] == 0
    try:
        before = pid_file.read_text()
        code, out, err = register(fake)
        assert code == 0, err
        assert "Restarting the Tentacle service so that it uses the new configuration" in out
        assert pid_file.read_text() != before
    finally:
        assert run("service", "--stop")[0] == 0


# ------------------------------------------------------------------ poll-server

def test_poll_server_adds_an_ha_node_with_the_same_subscription(serve: Any,
                                                                instance: Path) -> None:
    shared = make_certificate("127.0.0.1", sans=("127.0.0.1",))
    node_a = serve(FakeOctopus(shared))
    node_b = serve(FakeOctopus(shared))
    assert register(node_a)[0] == 0
    subscription = load_config(instance).trusted_servers[0].subscription_id

    code, out, err = run("poll-server", "--server", node_b.base, "--apiKey", API_KEY,
                         "--server-web-socket", node_b.wss, "--reuse-server-thumbprint")
    assert code == 0, err
    assert "Polling endpoint configured" in out
    servers = load_config(instance).trusted_servers
    assert [(s.address, s.subscription_id, s.thumbprint) for s in servers] == [
        (node_a.wss, subscription, shared.thumbprint),
        (node_b.wss, subscription, shared.thumbprint)]
    assert node_b.machines == {}  # no second machine: the server side already knows the agent


def test_poll_server_requires_the_nodes_certificate_to_be_trusted(serve: Any,
                                                                  instance: Path) -> None:
    node_a = serve(FakeOctopus(make_certificate("127.0.0.1", sans=("127.0.0.1",))))
    node_b = serve(FakeOctopus(make_certificate("node-b", sans=("127.0.0.1",), client=True)))
    assert register(node_a)[0] == 0
    args = ("poll-server", "--server", node_b.base, "--apiKey", API_KEY, "--server-web-socket",
            node_b.wss)
    code, _out, err = run(*args)
    assert code == 1
    assert f"configure --trust={node_b.certificate.thumbprint}" in err
    assert run(*args, "--reuse-server-thumbprint")[0] == 1

    assert run("configure", "--trust", node_b.certificate.thumbprint)[0] == 0
    code, _out, err = run(*args)
    assert code == 0, err
    polling = [s for s in load_config(instance).trusted_servers if s.address]
    assert {s.subscription_id for s in polling} == {polling[0].subscription_id}
    assert polling[1].thumbprint == node_b.certificate.thumbprint


# ------------------------------------------------------------------ the probe

async def test_probe_reports_what_answered_and_gives_up() -> None:
    lines: list[str] = []
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()
    with pytest.raises(RegistrationError, match="Unable to connect"):
        await probe_comms(f"wss://127.0.0.1:{port}/OctopusComms", lines.append, tries=2)
    assert lines == [f"Checking connectivity on the server web socket address "
                     f"wss://127.0.0.1:{port}/OctopusComms..."]


def test_probe_refuses_something_that_is_not_octopus(serve: Any) -> None:
    fake = serve(FakeOctopus(make_certificate("127.0.0.1", sans=("127.0.0.1",))))
    with pytest.raises(RegistrationError, match=r"does not appear to be an Octopus Server\. "
                                                r"The response code was: 401"):
        trio.run(lambda: probe_comms(f"wss://127.0.0.1:{fake.port}/api/x", lambda _l: None,
                                     tries=1))


# ------------------------------------------------------------------ pure pieces

names = st.text(st.characters(min_codepoint=97, max_codepoint=122), min_size=1, max_size=8)
values = st.text(max_size=12)


@given(st.dictionaries(names, values, max_size=4))
def test_query_expansion_round_trips_through_parse_qs(params: dict[str, str]) -> None:
    template = "/api/Spaces-1/machines{?" + ",".join(sorted(params) or ["x"]) + "}"
    url = expand_template(template, params)
    parts = urlsplit(url)
    assert parts.path == "/api/Spaces-1/machines"
    assert parse_qs(parts.query, keep_blank_values=True) == {k: [v] for k, v in params.items()}


@given(names, values)
def test_path_expansion_encodes_reserved_characters(name: str, value: str) -> None:
    url = expand_template("/api/{spaceId}/x{/id}", {"spaceId": value, "id": name})
    assert "{" not in url and "}" not in url
    assert url.count("/") == 4  # a value never adds a path segment
    assert url.endswith("/x/" + name)


def test_template_and_link_details() -> None:
    assert expand_template("/api/{spaceId}", {"SPACEID": "Spaces-1"}) == "/api/Spaces-1"
    assert expand_template("/m{?skip,take,ids}", {"skip": 0, "ids": ["a", "b"]}) == \
        "/m?skip=0&ids=a,b"
    assert expand_template("/m{?skip}{&take}", {"take": True}) == "/m&take=true"
    assert resolve_link("https://h:8443/octo", "/api/x") == "https://h:8443/api/x"
    assert resolve_link("https://h:8443/octo", "~/api/x") == "https://h:8443/octo/api/x"
    assert format_api_error("Bad.", ["a"], "See docs.") == "Bad.\n\n - a\n\nSee docs."
    assert str(OctopusApiError(400, "Bad.", [])) == "Bad."


def test_root_document_checks() -> None:
    good = FakeOctopus.root()
    check_root_document(good, "https://o")
    with pytest.raises(RegistrationError, match=r"newer API specification \(3\.1\.0\)"):
        check_root_document(dict(good, ApiVersion="3.1.0"), "https://o")
    with pytest.raises(RegistrationError, match="older API specification"):
        check_root_document(dict(good, ApiVersion=""), "https://o")
    with pytest.raises(RegistrationError, match=r"2\.\* Octopus Server"):
        check_root_document(dict(good, Version="2.6.5"), "https://o")
    with pytest.raises(RegistrationError, match="does not appear to be an Octopus Server"):
        check_root_document(dict(good, Application="Jenkins"), "https://o")


def test_environment_matching_by_name_slug_then_id() -> None:
    envs = FakeOctopus.environments
    assert match_environments(["production", "TEST-LAB", "environments-1"], envs) == [
        "Environments-1", "Environments-2"]
    with pytest.raises(RegistrationError, match="with name, slug or Id Atlantis on"):
        match_environments(["Atlantis"], envs)


def test_update_document_keeps_the_policy_unless_given() -> None:
    existing = {"Id": "Machines-9", "name": "old", "MachinePolicyId": "MachinePolicies-7",
                "IsDisabled": True, "Links": {"Self": "/x"}}
    updated = machine_document(existing, name="new", environment_ids=["E"], roles=["r"],
                               space_id="Spaces-1", policy_id=None, tentacle_thumbprint="T",
                               subscription_id="poll://s/")
    assert updated["MachinePolicyId"] == "MachinePolicies-7" and updated["IsDisabled"] is True
    assert updated["Name"] == "new" and "name" not in updated
    assert updated["Endpoint"] == {"CommunicationStyle": "TentacleActive", "Thumbprint": "T",
                                   "Uri": "poll://s/"}


def test_comms_address_forms() -> None:
    assert comms_address(ServerEndpointOptions("https://o.example.com", "k",
                                               server_web_socket="https://o/OctopusComms")) == \
        "wss://o/OctopusComms"
    assert comms_address(ServerEndpointOptions("https://o.example.com/octo", "k")) == \
        "https://o.example.com:10943/"
    assert comms_address(ServerEndpointOptions("https://o", "k", server_comms_port=443,
                                               server_comms_address="https://n:1/")) == \
        "https://n:1/"


def test_subscription_reuse_only_for_the_same_address(tmp_path: Path) -> None:
    from tentacle.config import new_config
    entry = TrustedServer("T", 2, "wss://h/OctopusComms", None, "poll://abcdefghijklmnopqrst/")
    config = replace(new_config("T", tmp_path / "c", tmp_path), trusted_servers=(entry,))
    assert choose_subscription_id(config, "WSS://h/OctopusComms/", None) == entry.subscription_id
    assert choose_subscription_id(config, "wss://other/OctopusComms", None) != \
        entry.subscription_id
    with pytest.raises(RegistrationError):
        choose_subscription_id(config, "x", "http://not-poll")
