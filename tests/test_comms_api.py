"""The REST API driven through `Api.handle`, the way a real Tentacle's `register-with` drives it.

The register-with flow follows OctopusClients: every next URL is taken from the previous
response's `Links` and expanded as an RFC 6570 template (the subset UrlTemplate.Resolve uses),
never hard-coded. The task runner is a tiny fake (the seam the serving process implements) that
records calls; the tests play the runner's part by writing progress through the Store.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from octopus_comms import apimodel
from octopus_comms.api import (INVALID_KEY_MESSAGE, MISSING_KEY_MESSAGE, Api, ApiRequest,
                               ApiResponse)
from octopus_comms.auth import create_api_key
from octopus_comms.store import (ActivityStatus, Environment, LogCategory, LogLine, Machine,
                                 MachineSpec, Store, Task, TaskState)

THUMB_A = "A1B2C3D4E5F60718293A4B5C6D7E8F9012345678"
THUMB_B = "0123456789ABCDEF0123456789ABCDEF01234567"
SERVER_THUMB = "9975B2FB620B857821AE5054CC43EFDADD75BCC2"
SUBSCRIPTION = "poll://abcdefghijklmnopqrst/"


class FakeRunner:
    """Records start/cancel; optionally refuses to start."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.refuse = False

    def start(self, task_id: str) -> None:
        if self.refuse:
            raise RuntimeError("no polling connection")
        self.started.append(task_id)

    def cancel(self, task_id: str) -> None:
        self.cancelled.append(task_id)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2024, 3, 12, 1, 2, 3, 456000, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Client:
    """Sends ApiRequests like OctopusClients: API key header, JSON bodies, PUT/DELETE as POST."""

    def __init__(self, api: Api, key: str | None) -> None:
        self.api = api
        self.key = key
        self.log: list[tuple[str, str]] = []

    def send(self, method: str, url: str, body: Any = None, *, key: str | None = None,
             raw: bytes | None = None, override: bool = True,
             headers: dict[str, str] | None = None) -> ApiResponse:
        parts = urlsplit(url)
        all_headers = {"accept": "application/json"}
        if (key or self.key) is not None:
            all_headers["x-octopus-apikey"] = key or self.key or ""
        verb = method
        if override and method in ("PUT", "DELETE"):
            verb = "POST"
            all_headers["x-http-method-override"] = method
        data = raw if raw is not None else (b"" if body is None
                                            else json.dumps(body).encode("utf-8"))
        if data:
            all_headers["content-type"] = "application/json; charset=utf-8"
        all_headers.update(headers or {})
        self.log.append((method, url))
        return self.api.handle(ApiRequest(verb, parts.path, parse_qs(parts.query),
                                          all_headers, data, "127.0.0.1"))

    def get(self, url: str, **kwargs: Any) -> ApiResponse:
        return self.send("GET", url, **kwargs)


def expand(template: str, **params: Any) -> str:
    """RFC 6570 level-3 subset as OctopusClients' UrlTemplate.Resolve uses it.

    `{name}` and `{/name}` substitute (or vanish); `{?a,b}` adds the given parameters as a query,
    lists comma-joined; parameters a template does not name are dropped.
    """
    def substitute(match: re.Match[str]) -> str:
        operator, names = match.group(1), match.group(2).split(",")
        given_ = [(n, params[n]) for n in names if params.get(n) is not None]
        if operator == "?":
            pairs = [f"{n}={quote(','.join(v) if isinstance(v, list) else str(v), safe=',')}"
                     for n, v in given_]
            return "?" + "&".join(pairs) if pairs else ""
        if operator == "/":
            return "".join(f"/{quote(str(v), safe='')}" for _, v in given_)
        return "".join(quote(str(v), safe="") for _, v in given_)
    return re.sub(r"\{([?/]?)([A-Za-z0-9_,]+)\}", substitute, template)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[Store]:
    with Store.open(tmp_path / "home", clock=clock) as opened:
        yield opened


@pytest.fixture
def runner() -> FakeRunner:
    return FakeRunner()


@pytest.fixture
def api(store: Store, runner: FakeRunner, clock: Clock) -> Api:
    return Api(store, runner, server_thumbprint=SERVER_THUMB, clock=clock)


@pytest.fixture
def key(store: Store) -> str:
    return create_api_key(store, "register tentacles")[1]


@pytest.fixture
def client(api: Api, key: str) -> Client:
    return Client(api, key)


def polling_body(name: str, env_ids: list[str], roles: list[str], *, thumbprint: str = THUMB_A,
                 uri: str = SUBSCRIPTION, policy: str | None = None) -> dict[str, Any]:
    """A MachineResource as Octopus.Client serializes it for a polling Tentacle."""
    return {
        "Id": None, "Name": name, "Thumbprint": None, "Uri": None, "IsDisabled": False,
        "MachinePolicyId": policy, "HealthStatus": "Unknown", "HasLatestCalamari": False,
        "StatusSummary": None, "IsInProcess": False,
        "Endpoint": {"CommunicationStyle": "TentacleActive", "Uri": uri,
                     "Thumbprint": thumbprint, "TentacleVersionDetails": None, "Id": None,
                     "LastModifiedOn": None, "LastModifiedBy": None, "Links": {}},
        "EnvironmentIds": env_ids, "Roles": roles,
        "TenantedDeploymentParticipation": "Untenanted", "TenantIds": [], "TenantTags": [],
        "SpaceId": "Spaces-1", "LastModifiedOn": None, "LastModifiedBy": None, "Links": {},
    }


def register_with(client: Client, name: str, environments: list[str], roles: list[str], *,
                  force: bool = False, thumbprint: str = THUMB_A,
                  use_v2: bool = True) -> dict[str, Any]:
    """`Tentacle register-with` steps 2–6 against the API, following Links like the client."""
    root = client.get("/api")
    assert root.status == 200
    doc = root.json()
    assert doc["Application"] == "Octopus Deploy" and int(doc["Version"].split(".")[0]) >= 3
    assert doc["ApiVersion"].startswith("3.0.")
    me = client.get(doc["Links"]["CurrentUser"]).json()
    spaces = client.get(me["Links"]["Spaces"]).json()
    assert isinstance(spaces, list)
    space = next(s for s in spaces if s["IsDefault"])
    home = client.get(expand(space["Links"]["SpaceHome"], id=space["Id"])).json()
    links = {**doc["Links"], **home["Links"]}          # the space root's links win
    found: list[dict[str, Any]] = []
    v2 = client.get(f"/api/{space['Id']}/environments/v2?skip=0&take=2147483647")
    if use_v2 and v2.status == 200:
        items = v2.json()["Items"]
    else:
        items = client.get(expand(links["Environments"], skip=0, take=2147483647)).json()["Items"]
    for wanted in environments:
        match = (next((e for e in items if e["Name"].lower() == wanted.lower()), None)
                 or next((e for e in items if e["Slug"].lower() == wanted.lower()), None)
                 or next((e for e in items if e["Id"].lower() == wanted.lower()), None))
        assert match is not None, f"Could not find the environment {wanted}"
        found.append(match)
    page = client.get(expand(links["Machines"], name=name)).json()
    existing = next((m for m in page["Items"] if m["Name"].strip().lower() == name.lower()),
                    None)
    if existing is not None and not force:
        raise LookupError(f"A machine named '{name}' already exists in the environment. Use the "
                          "'force' parameter if you want to update the existing machine.")
    body = existing or polling_body(name, [], [], thumbprint=thumbprint)
    body["EnvironmentIds"] = [e["Id"] for e in found]
    body["Roles"] = roles
    body["Endpoint"] = polling_body(name, [], [], thumbprint=thumbprint)["Endpoint"]
    if existing is None:
        created = client.send("POST", expand(links["Machines"]), body)
        assert created.status == 201, created.body
        self_link = created.json()["Links"]["Self"]
        assert created.header("Location") == self_link
    else:
        self_link = existing["Links"]["Self"]
        updated = client.send("PUT", self_link, body)
        assert updated.status == 200, updated.body
    final = client.get(self_link)
    assert final.status == 200
    document: dict[str, Any] = final.json()
    return document


# ----------------------------------------------------------------------------- register-with

def test_register_with_flow_creates_a_polling_machine(client: Client, store: Store) -> None:
    prod = store.create_environment("Production")
    store.create_environment("Test")
    machine = register_with(client, "web01", ["production"], ["web-server"])
    assert machine["Name"] == "web01"
    assert machine["EnvironmentIds"] == [prod.id]
    assert machine["Roles"] == ["web-server"]
    assert machine["Endpoint"]["CommunicationStyle"] == "TentacleActive"
    assert machine["Endpoint"]["Uri"] == SUBSCRIPTION
    assert machine["Thumbprint"] == machine["Endpoint"]["Thumbprint"] == THUMB_A
    assert machine["MachinePolicyId"] == "MachinePolicies-1"
    assert machine["SpaceId"] == "Spaces-1"
    assert machine["Links"]["Self"] == f"/api/Spaces-1/machines/{machine['Id']}"
    visited = [url.split("?")[0] for _, url in client.log]
    assert visited == ["/api", "/api/users/me", "/api/users/Users-1/spaces", "/api/Spaces-1",
                       "/api/Spaces-1/environments/v2", "/api/Spaces-1/machines",
                       "/api/Spaces-1/machines", machine["Links"]["Self"]]
    assert store.trusted_thumbprints() == {THUMB_A}


def test_register_with_legacy_environments_path(client: Client, store: Store) -> None:
    """The fallback an older client takes when environments/v2 answers 404."""
    store.create_environment("Production")
    env2 = store.create_environment("Staging Area")
    machine = register_with(client, "db01", ["staging-area", env2.id], ["db"], use_v2=False)
    assert machine["EnvironmentIds"] == [env2.id]
    legacy = client.get("/api/Spaces-1/environments?skip=0&take=2147483647").json()
    assert [e["Name"] for e in legacy["Items"]] == ["Production", "Staging Area"]
    assert "Type" not in legacy["Items"][0]
    v2 = client.get("/api/Spaces-1/environments/v2?skip=0&take=2147483647").json()
    assert v2["Items"][0]["Type"] == "Static"
    assert client.get("/api/Spaces-9/environments/v2").status == 404
    assert client.get("/api/environments/v2").json()["TotalResults"] == 2


def test_second_registration_without_force_is_refused_by_the_name_lookup(
        client: Client, store: Store) -> None:
    store.create_environment("Production")
    register_with(client, "web01", ["Production"], ["web"])
    with pytest.raises(LookupError) as info:
        register_with(client, "WEB01", ["Production"], ["web"])
    assert str(info.value) == ("A machine named 'WEB01' already exists in the environment. Use "
                               "the 'force' parameter if you want to update the existing "
                               "machine.")
    page = client.get("/api/Spaces-1/machines?name=Web01").json()
    assert page["ItemType"] == "DeploymentTarget" and page["TotalResults"] == 1
    assert client.get("/api/Spaces-1/machines?name=web").json()["TotalResults"] == 0


def test_force_updates_with_put_via_method_override(client: Client, store: Store) -> None:
    store.create_environment("Production")
    store.create_environment("Test")
    first = register_with(client, "web01", ["Production"], ["web"])
    second = register_with(client, "web01", ["Test"], ["web", "api"], force=True,
                           thumbprint=THUMB_B)
    assert second["Id"] == first["Id"]
    assert second["Roles"] == ["web", "api"]
    assert second["Thumbprint"] == THUMB_B
    assert ("PUT", first["Links"]["Self"]) in client.log
    assert store.trusted_thumbprints() == {THUMB_B}


def test_duplicate_post_is_a_400_with_the_error_document(client: Client, store: Store) -> None:
    env = store.create_environment("Production")
    assert client.send("POST", "/api/Spaces-1/machines",
                       polling_body("web01", [env.id], ["web"])).status == 201
    response = client.send("POST", "/api/machines", polling_body(" Web01 ", [env.id], ["web"]))
    assert response.status == 400
    assert response.header("Content-Type") == "application/json; charset=utf-8"
    assert response.json() == {
        "ErrorMessage": "There was a problem with your request.",
        "Errors": ["A deployment target with the name 'Web01' already exists. Deployment "
                   "target names must be unique."],
        "FullException": None, "HelpText": None, "Details": None}


@pytest.mark.parametrize("change, message", [
    ({"Name": ""}, "Please provide a name for the deployment target."),
    ({"EnvironmentIds": []}, "Please select at least one environment for the deployment target."),
    ({"EnvironmentIds": ["Environments-99"]}, "The environment 'Environments-99' does not exist."),
    ({"Endpoint": {"CommunicationStyle": "TentacleActive", "Uri": SUBSCRIPTION,
                   "Thumbprint": "XYZ"}},
     "The Tentacle thumbprint must be 40 hexadecimal digits."),
    ({"Endpoint": {"CommunicationStyle": "Ssh", "Uri": SUBSCRIPTION, "Thumbprint": THUMB_A}},
     "The communication style 'Ssh' is not supported by this server; use TentacleActive "
     "(polling) or TentaclePassive."),
    ({"Endpoint": {"CommunicationStyle": "TentacleActive", "Uri": "https://x/",
                   "Thumbprint": THUMB_A}},
     "The subscription Uri 'https://x/' must look like poll://abcdefghijklmnopqrst/."),
    ({"MachinePolicyId": "MachinePolicies-7"}, "The machine policy 'MachinePolicies-7' does not "
                                               "exist."),
    ({"SpaceId": "Spaces-2"}, "The SpaceId 'Spaces-2' does not match the space of this request "
                              "(Spaces-1)."),
    ({"Roles": "web"}, "Roles must be a list of strings."),
])
def test_machine_validation(client: Client, store: Store, change: dict[str, Any],
                            message: str) -> None:
    env = store.create_environment("Production")
    body = {**polling_body("web01", [env.id], ["web"]), **change}
    response = client.send("POST", "/api/Spaces-1/machines", body)
    assert response.status == 400
    assert message in response.json()["Errors"]
    assert store.list_machines() == []


def test_bad_json_and_non_object_bodies_are_400(client: Client) -> None:
    for raw in (b"{", b"[1, 2]", b"\xff\xfe", b"NaN", b"", b'{"Name": "\\ud800"}'):
        response = client.send("POST", "/api/Spaces-1/machines", raw=raw)
        assert response.status == 400, raw
        assert response.json()["ErrorMessage"] == "There was a problem with your request."


def test_listening_tentacle_and_delete_via_override(client: Client, store: Store) -> None:
    env = store.create_environment("Production")
    body = polling_body("web02", [env.id], ["web"])
    body["Endpoint"] = {"CommunicationStyle": "TentaclePassive", "Thumbprint": THUMB_B.lower(),
                        "Uri": "https://Web02.example.com:10933/"}
    created = client.send("POST", "/api/Spaces-1/machines", body).json()
    assert created["Uri"] == "https://web02.example.com:10933/"
    assert created["Thumbprint"] == THUMB_B
    assert store.trusted_thumbprints() == frozenset()
    deleted = client.send("DELETE", created["Links"]["Self"])
    assert deleted.status == 200
    gone = client.get(created["Links"]["Self"])
    assert gone.status == 404
    assert gone.json()["ErrorMessage"] == f"The resource '{created['Id']}' was not found."
    assert client.send("DELETE", created["Links"]["Self"]).status == 404
    assert client.send("DELETE", created["Links"]["Self"], override=False).status == 404


# ----------------------------------------------------------------------------- documents

def test_root_document_is_anonymous_and_links_are_templates(api: Api, store: Store) -> None:
    response = api.handle(ApiRequest("GET", "/api"))
    assert response.status == 200
    doc = response.json()
    assert doc["InstallationId"] == store.installation_id()
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                        doc["InstallationId"])
    links = doc["Links"]
    assert links["CurrentUser"] == "/api/users/me"
    assert links["SpaceHome"] == "/api/{spaceId}"
    assert links["Spaces"] == "/api/spaces{/id}{?skip,ids,take,partialName}"
    assert links["Machines"].startswith("/api/Spaces-1/machines{/id}{?skip,take,name,ids,")
    assert links["Environments"] == ("/api/Spaces-1/environments{/id}"
                                     "{?name,skip,ids,take,partialName}")
    assert expand(links["Machines"], id="Machines-3") == "/api/Spaces-1/machines/Machines-3"
    assert expand(links["Machines"], name="a b") == "/api/Spaces-1/machines?name=a%20b"
    assert api.handle(ApiRequest("GET", "/API/")).status == 200


def test_every_advertised_link_answers(client: Client) -> None:
    root = client.get("/api").json()["Links"]
    home = client.get("/api/Spaces-1").json()["Links"]
    for link in [*root.values(), *home.values()]:
        if "{spaceId}" in link:
            link = expand(link, spaceId="Spaces-1")
        response = client.get(expand(link))
        assert response.status == 200, (link, response.body)


def test_users_spaces_and_space_home(client: Client) -> None:
    me = client.get("/api/users/me").json()
    assert me["Id"] == "Users-1" and me["Username"] == "admin"
    assert me["Links"]["Spaces"] == "/api/users/Users-1/spaces"
    spaces = client.get("/api/users/Users-1/spaces").json()
    assert [s["Id"] for s in spaces] == ["Spaces-1"]
    assert spaces[0]["Links"] == {"Self": "/api/spaces/Spaces-1", "SpaceHome": "/api/Spaces-1"}
    assert client.get("/api/spaces").json()["Items"][0]["Name"] == "Default"
    assert client.get("/api/spaces/spaces-1").json()["IsDefault"] is True
    home = client.get("/api/spaces-1").json()
    assert home["Links"]["Self"] == "/api/Spaces-1"
    assert home["Links"]["Tasks"].startswith("/api/Spaces-1/tasks{/id}")
    assert client.get("/api/Spaces-2").status == 404


def test_certificate_and_machine_policies(client: Client, store: Store, runner: FakeRunner) -> None:
    for path in ("/api/configuration/certificates/certificate-global",
                 "/api/certificates/certificate-global"):
        assert client.get(path).json()["Thumbprint"] == SERVER_THUMB
    without = Client(Api(store, runner), client.key)
    assert without.get("/api/certificates/certificate-global").status == 404
    policies = client.get("/api/Spaces-1/machinepolicies").json()
    assert policies["Items"][0]["Id"] == "MachinePolicies-1"
    assert policies["Items"][0]["IsDefault"] is True
    assert client.get("/api/machinepolicies/MachinePolicies-1").status == 200


def test_paging_links(client: Client, store: Store) -> None:
    env = store.create_environment("Production")
    for n in range(5):
        store.create_machine(MachineSpec(f"m{n}", (env.id,), ("web",), "TentacleActive",
                                         THUMB_A, f"poll://machine{n}/"))
    page = client.get("/api/Spaces-1/machines?skip=0&take=2&roles=web").json()
    assert [m["Name"] for m in page["Items"]] == ["m0", "m1"]
    assert (page["TotalResults"], page["ItemsPerPage"], page["NumberOfPages"],
            page["LastPageNumber"]) == (5, 2, 3, 2)
    seen: list[str] = []
    url: str | None = page["Links"]["Page.Current"]
    while url:
        current = client.get(url).json()
        seen.extend(m["Name"] for m in current["Items"])
        url = current["Links"].get("Page.Next")
    assert seen == ["m0", "m1", "m2", "m3", "m4"]
    assert "Page.Next" not in client.get("/api/machines?take=2147483647").json()["Links"]
    assert client.get("/api/Spaces-1/machines?ids=Machines-2,machines-4").json()[
        "TotalResults"] == 2
    assert client.get("/api/Spaces-1/machines?skip=-1").status == 400
    assert len(client.get("/api/Spaces-1/machines/all").json()) == 5
    # Machines.FindByThumbprint (deregister-from): the Machines link with id=all + thumbprint
    found = client.get(expand(client.get("/api").json()["Links"]["Machines"], id="all",
                              thumbprint=THUMB_A.lower())).json()
    assert isinstance(found, list) and len(found) == 5
    assert client.get(f"/api/machines/all?thumbprint={THUMB_B}").json() == []
    assert client.get(f"/api/Spaces-1/environments/{env.id}/machines").json()[
        "TotalResults"] == 5


def test_environment_create_modify_delete(client: Client, store: Store) -> None:
    created = client.send("POST", "/api/Spaces-1/environments",
                          {"Name": "Production", "Description": "live"})
    assert created.status == 201
    env = created.json()
    assert (env["Id"], env["Slug"], env["SortOrder"]) == ("Environments-1", "production", 0)
    again = client.send("POST", "/api/environments", {"Name": "production"})
    assert again.status == 400
    modified = client.send("PUT", env["Links"]["Self"], {**env, "Name": "Prod"})
    assert modified.status == 200 and modified.json()["Name"] == "Prod"
    assert client.send("DELETE", env["Links"]["Self"]).status == 200
    assert client.get(env["Links"]["Self"]).status == 404


# ----------------------------------------------------------------------------- auth

def test_missing_key_is_401_with_octopus_text(api: Api) -> None:
    response = api.handle(ApiRequest("GET", "/api/users/me"))
    assert response.status == 401
    assert response.json() == {"ErrorMessage": MISSING_KEY_MESSAGE, "Errors": [],
                               "FullException": None, "HelpText": None, "Details": None}
    assert MISSING_KEY_MESSAGE == ("You must be logged in to perform this action. Please provide "
                                   "a valid API key or log in again.")


def test_wrong_key_is_401(api: Api, key: str) -> None:
    wrong = key[:-1] + ("A" if key[-1] != "A" else "B")
    for presented in (wrong, "API-NOTAREALKEY12345678", "garbage", key + "X"):
        response = api.handle(ApiRequest("GET", "/api/users/me",
                                         headers={"x-octopus-apikey": presented}))
        assert response.status == 401
        assert response.json()["ErrorMessage"] == INVALID_KEY_MESSAGE


def test_key_in_query_bearer_and_revocation(api: Api, store: Store, key: str) -> None:
    assert api.handle(ApiRequest("GET", "/api/users/me", {"apikey": [key]})).status == 200
    assert api.handle(ApiRequest("GET", "/api/users/me", {"ApiKey": [key.lower()]})).status \
        == 200
    assert api.handle(ApiRequest("GET", "/api/users/me",
                                 headers={"authorization": f"Bearer {key}"})).status == 200
    store.delete_api_key(store.list_api_keys()[0].id)
    assert api.handle(ApiRequest("GET", "/api/users/me", {"apikey": [key]})).status == 401


def test_unknown_route_404_and_wrong_method_405(client: Client) -> None:
    response = client.get("/api/nothing/here")
    assert response.status == 404
    assert set(response.json()) == {"ErrorMessage", "Errors", "FullException", "HelpText",
                                    "Details"}
    assert client.get("/elsewhere").status == 404
    response = client.send("PATCH", "/api/Spaces-1/machines")
    assert response.status == 405
    assert "GET" in (response.header("Allow") or "")
    head = client.send("HEAD", "/api")
    assert head.status == 200 and head.body == b""


def test_base_path(store: Store, runner: FakeRunner, key: str) -> None:
    mounted = Client(Api(store, runner, base_path="/octopus/"), key)
    doc = mounted.get("/octopus/api").json()
    assert doc["Links"]["Self"] == "/octopus/api"
    assert doc["Links"]["CurrentUser"] == "/octopus/api/users/me"
    assert mounted.get(doc["Links"]["CurrentUser"]).status == 200
    assert mounted.get("/api").status == 404


# ----------------------------------------------------------------------------- tasks

@pytest.fixture
def targets(store: Store) -> list[Machine]:
    prod = store.create_environment("Production")
    test = store.create_environment("Test")
    specs = [("web01", prod.id, ("web",)), ("web02", prod.id, ("web", "api")),
             ("db01", prod.id, ("db",)), ("web03", test.id, ("web",))]
    return [store.create_machine(MachineSpec(name, (env,), roles, "TentacleActive", THUMB_A,
                                             f"poll://{name}/")) for name, env, roles in specs]


def adhoc(script: str = "echo hi", **arguments: Any) -> dict[str, Any]:
    return {"Name": "AdHocScript", "Description": "Check disk",
            "Arguments": {"ScriptBody": script, "Syntax": "Bash", **arguments}}


def test_adhoc_script_targets(client: Client, store: Store, runner: FakeRunner,
                              targets: list[Machine]) -> None:
    web01, web02, db01, web03 = targets

    def machines_of(body: dict[str, Any]) -> list[str]:
        response = client.send("POST", "/api/Spaces-1/tasks", body)
        assert response.status == 201, response.body
        return list(store.get_task(response.json()["Id"]).machine_ids)

    assert machines_of(adhoc(MachineIds=[db01.id, web01.id])) == [db01.id, web01.id]
    assert machines_of(adhoc(EnvironmentIds=["Environments-1"], TargetRoles=["web"])) == [
        web01.id, web02.id]
    assert machines_of(adhoc(TargetRoles=["WEB"])) == [web01.id, web02.id, web03.id]
    assert machines_of(adhoc(EnvironmentIds=["Environments-2"])) == [web03.id]
    assert runner.started == [f"ServerTasks-{n}" for n in range(1, 5)]


@pytest.mark.parametrize("body, message", [
    (adhoc(""), "Please provide a script body (Arguments.ScriptBody)."),
    (adhoc(MachineIds=["Machines-99"]), "The machine 'Machines-99' does not exist."),
    (adhoc(EnvironmentIds=["Environments-9"]), "The environment 'Environments-9' does not "
                                               "exist."),
    (adhoc(TargetRoles=["nope"]), "No enabled deployment targets match the chosen environments "
                                  "and roles."),
    (adhoc(), "Please choose the deployment targets to run the script on (MachineIds, or "
              "EnvironmentIds and/or TargetRoles)."),
    ({**adhoc(MachineIds=["Machines-1"]), "Name": "Backup"},
     "The task type 'Backup' is not supported by this server; only AdHocScript tasks can be "
     "created."),
    ({"Name": "AdHocScript", "Arguments": {"ScriptBody": "x", "Syntax": "CSharp",
                                           "MachineIds": ["Machines-1"]}},
     "The script syntax 'CSharp' is not supported; use PowerShell or Bash."),
])
def test_adhoc_script_validation(client: Client, runner: FakeRunner, targets: list[Machine],
                                 body: dict[str, Any], message: str) -> None:
    response = client.send("POST", "/api/tasks", body)
    assert response.status == 400
    assert message in response.json()["Errors"]
    assert runner.started == []


def test_task_lifecycle_details_raw(client: Client, store: Store, runner: FakeRunner,
                                    clock: Clock, targets: list[Machine]) -> None:
    web01, web02 = targets[0], targets[1]
    created = client.send("POST", "/api/Spaces-1/tasks",
                          adhoc("df -h", MachineIds=[web01.id, web02.id]))
    task = created.json()
    assert created.header("Location") == task["Links"]["Self"] == f"/api/tasks/{task['Id']}"
    assert task["State"] == "Queued" and task["Completed"] == "Queued..."
    assert task["IsCompleted"] is False and task["FinishedSuccessfully"] is False
    assert task["QueueTime"] == "2024-03-12T01:02:03.456+00:00"
    assert task["Arguments"]["ScriptBody"] == "df -h"
    assert task["Links"]["Raw"] == f"/api/tasks/{task['Id']}/raw"
    assert task["Links"]["Details"] == f"/api/tasks/{task['Id']}/details{{?verbose,tail}}"
    assert task["Links"]["Cancel"] == f"/api/tasks/{task['Id']}/cancel"
    # the runner's part
    task_id = task["Id"]
    clock.advance(1)
    store.set_task_state(task_id, TaskState.EXECUTING)
    store.append_task_log(task_id, None, LogCategory.INFO, "Running on 2 targets")
    for machine, code in ((web01, 0), (web02, 1)):
        store.set_task_machine_state(task_id, machine.id, ActivityStatus.RUNNING)
        store.append_task_logs(task_id, machine.id, [
            LogLine(LogCategory.VERBOSE, "starting bash"),
            LogLine(LogCategory.INFO, f"{machine.name}: 42% used"),
            LogLine("error" if code else "Info", "disk nearly full" if code else "ok")])
        clock.advance(2)
        store.set_task_machine_state(task_id, machine.id,
                                     ActivityStatus.FAILED if code else ActivityStatus.SUCCESS,
                                     exit_code=code)
    clock.advance(40)
    store.set_task_state(task_id, TaskState.FAILED, "Script failed on web02")
    done = client.get(expand(task["Links"]["Self"])).json()
    assert done["State"] == "Failed" and done["IsCompleted"] is True
    assert done["ErrorMessage"] == "Script failed on web02"
    assert done["HasWarningsOrErrors"] is True
    assert done["Duration"] == "44 seconds"
    assert done["Completed"] == "Tuesday, 12 March 2024 1:02:48 AM +00:00"
    assert "Cancel" not in done["Links"]
    details = client.get(expand(task["Links"]["Details"], verbose="true", tail=2)).json()
    root = details["ActivityLogs"][0]
    assert root["Status"] == "Failed" and root["Name"] == "Check disk"
    assert [c["Name"] for c in root["Children"]] == ["Run script on web01", "Run script on web02"]
    assert [c["Status"] for c in root["Children"]] == ["Success", "Failed"]
    assert [e["MessageText"] for e in root["Children"][1]["LogElements"]] == [
        "web02: 42% used", "disk nearly full"]
    assert root["Children"][1]["LogElements"][1]["Category"] == "Error"
    assert details["Progress"]["ProgressPercentage"] == 100
    quiet = client.get(expand(task["Links"]["Details"])).json()["ActivityLogs"][0]
    assert len(quiet["Children"][0]["LogElements"]) == 2      # Verbose hidden
    raw = client.get(task["Links"]["Raw"])
    assert raw.header("Content-Type") == "text/plain; charset=utf-8"
    text = raw.body.decode()
    assert f"Task ID:        {task_id}" in text
    assert "01:02:04   Info     |   Running on 2 targets" in text
    assert "Error    |     disk nearly full" in text
    assert text.index("web01: 42% used") < text.index("web02: 42% used")


def test_cancel_and_task_list(client: Client, store: Store, runner: FakeRunner,
                              targets: list[Machine]) -> None:
    first = client.send("POST", "/api/tasks", adhoc(MachineIds=[targets[0].id])).json()
    second = client.send("POST", "/api/tasks", adhoc(MachineIds=[targets[1].id])).json()
    cancelled = client.send("POST", first["Links"]["Cancel"])
    assert cancelled.status == 200 and cancelled.json()["State"] == "Cancelling"
    assert runner.cancelled == [first["Id"]]
    store.set_task_state(first["Id"], TaskState.CANCELED)
    assert client.send("POST", f"/api/tasks/{first['Id']}/cancel").json()["State"] == "Canceled"
    assert runner.cancelled == [first["Id"]]
    assert store.task_machines(first["Id"])[0].status is ActivityStatus.CANCELED
    listed = client.get("/api/tasks?states=Queued,Executing&take=10").json()
    assert [t["Id"] for t in listed["Items"]] == [second["Id"]]
    everything = client.get("/api/Spaces-1/tasks").json()
    assert [t["Id"] for t in everything["Items"]] == [second["Id"], first["Id"]]
    assert client.get("/api/tasks?active=true&states=Canceled").json()["TotalResults"] == 0
    assert client.get("/api/tasks?states=Bogus").status == 400
    assert client.get("/api/tasks/ServerTasks-999").status == 404
    assert client.get("/api/Spaces-2/tasks/" + first["Id"]).status == 404


def test_runner_that_cannot_start_fails_the_task(client: Client, runner: FakeRunner,
                                                 targets: list[Machine]) -> None:
    runner.refuse = True
    response = client.send("POST", "/api/tasks", adhoc(MachineIds=[targets[0].id]))
    assert response.status == 201
    task = response.json()
    assert task["State"] == "Failed"
    assert task["ErrorMessage"] == "The task could not be started: no polling connection"


# ----------------------------------------------------------------------------- properties

NAMES = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1,
                max_size=40).filter(lambda s: s.strip() != "")


@given(name=NAMES, roles=st.lists(NAMES, max_size=4),
       envs=st.lists(st.from_regex(r"Environments-[1-9][0-9]{0,3}", fullmatch=True),
                     min_size=1, max_size=3),
       thumb=st.from_regex(r"[0-9A-F]{40}", fullmatch=True),
       sub=st.from_regex(r"[a-z]{20}", fullmatch=True),
       disabled=st.booleans(), style=st.sampled_from(["TentacleActive", "TentaclePassive"]))
def test_machine_json_round_trip(name: str, roles: list[str], envs: list[str], thumb: str,
                                 sub: str, disabled: bool, style: str) -> None:
    when = datetime(2024, 1, 1, tzinfo=UTC)
    uri = f"poll://{sub}/" if style == "TentacleActive" else f"https://{sub}.example:10933/"
    parsed_roles = apimodel.parse_machine({**polling_body("x", [], roles)})
    machine = Machine(id="Machines-1", space_id="Spaces-1", name=name.strip(),
                      environment_ids=tuple(dict.fromkeys(envs)), roles=parsed_roles.roles,
                      communication_style=style, thumbprint=thumb, uri=uri,
                      tenanted_deployment_participation="Untenanted", tenant_ids=(),
                      tenant_tags=(), machine_policy_id="MachinePolicies-1",
                      is_disabled=disabled, health={}, created=when, modified=when)
    document = json.loads(json.dumps(apimodel.machine_resource(apimodel.LinkBuilder(), machine)))
    assert apimodel.parse_machine(document) == apimodel.machine_spec_of(machine)


@given(name=NAMES, description=st.text(max_size=30), order=st.integers(-2**31, 2**31 - 1),
       guided=st.booleans(), dynamic=st.booleans())
def test_environment_json_round_trip(name: str, description: str, order: int, guided: bool,
                                     dynamic: bool) -> None:
    env = Environment("Environments-4", "Spaces-1", name.strip(), "slug", description, order,
                      guided, dynamic)
    for render in (apimodel.environment_resource, apimodel.environment_v2_resource):
        document = json.loads(json.dumps(render(apimodel.LinkBuilder(), env)))
        assert apimodel.parse_environment(document) == apimodel.EnvironmentSpec(
            env.name, description, order, guided, dynamic)


@given(script=NAMES, syntax=st.sampled_from(["PowerShell", "Bash"]),
       machines=st.lists(st.from_regex(r"Machines-[1-9][0-9]{0,3}", fullmatch=True),
                         max_size=3),
       roles=st.lists(NAMES, max_size=3), description=NAMES)
def test_task_json_round_trip(script: str, syntax: str, machines: list[str], roles: list[str],
                              description: str) -> None:
    """A TaskResource's Name, Description and Arguments, posted back, mean the same script."""
    body = {"Name": "AdHocScript", "Description": description,
            "Arguments": {"ScriptBody": script, "Syntax": syntax, "MachineIds": machines,
                          "TargetRoles": roles, "EnvironmentIds": ["Environments-1"]}}
    first = apimodel.parse_task(body)
    when = datetime(2024, 1, 1, tzinfo=UTC)
    task = Task("ServerTasks-1", "Spaces-1", "AdHocScript", first.description, first.arguments,
                (), TaskState.QUEUED, when, None, None, when, "", False)
    document = json.loads(json.dumps(apimodel.task_resource(apimodel.LinkBuilder(), task, when,
                                                            "node")))
    assert apimodel.parse_task(document) == first


@given(st.builds(lambda d, s: (d, s), st.integers(0, 10 ** 7), st.integers(0, 59)))
def test_duration_text(values: tuple[int, int]) -> None:
    seconds = values[0]
    text = apimodel.humanize_duration(seconds)
    count, unit = text.split(" ")
    assert unit.rstrip("s") in ("second", "minute", "hour", "day")
    assert (int(count) == 1) == (not unit.endswith("s"))


SEGMENTS = st.sampled_from(["api", "Spaces-1", "spaces-2", "spaces", "users", "me", "machines",
                            "environments", "v2", "all", "tasks", "ServerTasks-1", "raw",
                            "details", "cancel", "Machines-1", "machinepolicies", "%2F", "%ff",
                            "certificates", "configuration", "certificate-global", ""])
KNOWN_PATHS = st.sampled_from([
    "/api", "/api/users/me", "/api/users/Users-1/spaces", "/api/spaces", "/api/Spaces-1",
    "/api/Spaces-1/environments", "/api/environments/v2", "/api/environments/Environments-1",
    "/api/Spaces-1/machines", "/api/machines/Machines-1", "/api/Spaces-1/machines/all",
    "/api/Spaces-1/tasks", "/api/tasks/ServerTasks-1", "/api/tasks/ServerTasks-1/details",
    "/api/tasks/ServerTasks-1/raw", "/api/tasks/ServerTasks-1/cancel",
    "/api/Spaces-1/machinepolicies", "/api/environments/Environments-1/machines"])
PATHS = st.one_of(KNOWN_PATHS, st.lists(st.one_of(SEGMENTS, st.text(max_size=8)),
                                        max_size=6).map(lambda s: "/" + "/".join(s)))
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["Name", "EnvironmentIds", "Roles", "Endpoint",
                                       "Arguments", "ScriptBody", "MachineIds", "Thumbprint",
                                       "Uri", "CommunicationStyle", "SpaceId", "Id",
                                       "TargetRoles", "Syntax"]), children, max_size=5),
    max_leaves=12)
VALID_BODIES = [polling_body("fuzz", ["Environments-1"], ["web"]),
                {"Name": "Staging", "Description": "x"},
                adhoc(MachineIds=["Machines-1"])]
MUTATED = st.builds(lambda base, changes: {**base, **changes}, st.sampled_from(VALID_BODIES),
                    st.dictionaries(st.sampled_from(sorted({k for b in VALID_BODIES for k in b})),
                                    JSON_VALUES, max_size=3))
BODIES = st.one_of(st.binary(max_size=64), JSON_VALUES.map(lambda v: json.dumps(v).encode()),
                   MUTATED.map(lambda v: json.dumps(v).encode()))


@pytest.fixture(scope="module")
def fuzz_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, str]]:
    with Store.open(tmp_path_factory.mktemp("fuzz")) as fuzz_store:
        env = fuzz_store.create_environment("Production")
        machine = fuzz_store.create_machine(MachineSpec("target", (env.id,), ("web",),
                                                        "TentacleActive", THUMB_A, SUBSCRIPTION))
        fuzz_store.create_task("AdHocScript", "x", {}, [machine.id])
        yield Api(fuzz_store, FakeRunner()), create_api_key(fuzz_store, "fuzz")[1]


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS",
                               "get", "\x00"]),
       path=PATHS,
       query=st.dictionaries(st.sampled_from(["skip", "take", "name", "ids", "states", "tail",
                                              "verbose", "isDisabled", "apikey", "x"]),
                             st.lists(st.text(max_size=12), min_size=1, max_size=2),
                             max_size=3),
       body=BODIES, authenticated=st.booleans(), override=st.sampled_from([None, "PUT", "DELETE",
                                                                           "x"]))
def test_handle_never_raises_and_answers_4xx_for_nonsense(
        fuzz_api: tuple[Api, str], method: str, path: str,
        query: dict[str, list[str]], body: bytes, authenticated: bool,
        override: str | None) -> None:
    api, key = fuzz_api
    headers = {"x-octopus-apikey": key} if authenticated else {}
    if override:
        headers["x-http-method-override"] = override
    response = api.handle(ApiRequest(method, path, query, headers, body))
    assert response.status in (200, 201) or 400 <= response.status < 500, response.body
    if response.status >= 400 and method != "HEAD":
        document = json.loads(response.body)
        assert isinstance(document["ErrorMessage"], str) and isinstance(document["Errors"], list)
