"""`register-with` and `poll-server`: tell an Octopus Server about this agent, and trust it back.

Why it is careful: registration decides which server certificate the agent will trust from then
on. It follows the real Tentacle (RegisterMachineCommandBase, PollCommand, OctopusServerChecker,
Octopus.Client's RegisterMachineOperation) step by step (halibut.md §5):
  1. probe the comms address with an empty POST (5 tries; 200 or 400 counts) and capture the TLS
     certificate's SHA-1 thumbprint: for `wss://` that is the certificate the agent will trust;
  2. `GET /api`: an Octopus Server, version ≥ 3, API 3.0.x;
  3. the space (`--space` by name, else the user's default space) and its SpaceHome links;
  4. environments (v2 endpoint, falling back to the classic collection on 404) matched by name,
     slug, then id, ignoring case; `--policy` by name;
  5. an existing machine of the same name is an error unless `--force` (then it is updated);
  6. create (POST) or update (PUT, sent as POST + X-HTTP-Method-Override) the machine with a
     TentacleActive endpoint {Thumbprint = ours, Uri = subscription id}, then GET its Self link;
  7. save the trust entry {server thumbprint, style 2, address, subscription id}.
The REST API is pinned to the probed thumbprint when it is on the same host as the comms address
(one front door, one certificate), else verified by the system store (see `octopus_api`).
Deviation from the real Tentacle, on purpose: re-registering with a server address replaces the
old polling entry for that address even when the server's certificate changed, instead of leaving
a stale entry the agent would keep polling with.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import trio

from octopus_comms.halibut.framing import is_valid_subscription_id, new_subscription_id
from tentacle import TentacleError
from tentacle.certificate import normalize_thumbprint
from tentacle.config import (
    COMMUNICATION_STYLE_ACTIVE,
    TentacleConfig,
    TrustedServer,
    add_or_update_trusted_server,
    load_config,
    update_config,
)
from tentacle.octopus_api import (
    ApiConnectionError,
    OctopusClient,
    TlsPolicy,
    api_root_url,
    get_link,
    get_member,
    http_request,
    normalize_server_url,
    same_host,
)

DEFAULT_SERVER_COMMS_PORT = 10943
PROBE_TRIES = 5
PROBE_FIRST_DELAY = 0.5
PROBE_BACKOFF = 1.5
PROBE_TIMEOUT = 30.0
ALL_ITEMS = 2147483647
MIN_API_VERSION = (3, 0, 0)
MAX_API_VERSION = (3, 0, 99)
APPLICATION = "Octopus Deploy"
COMMS_STYLE_ACTIVE = "TentacleActive"
COMMS_STYLE_PASSIVE = "TentaclePassive"

Say = Callable[[str], None]


class RegistrationError(TentacleError):
    """Registration cannot proceed; the message is what the operator reads."""


@dataclass(frozen=True)
class ServerEndpointOptions:
    """Where the server's API and comms endpoint are (the options both commands share)."""

    server: str
    api_key: str
    server_web_socket: str | None = None
    server_comms_port: int = DEFAULT_SERVER_COMMS_PORT
    server_comms_address: str | None = None


@dataclass(frozen=True)
class RegisterOptions:
    """Everything `register-with` was told."""

    endpoint: ServerEndpointOptions
    name: str
    environments: tuple[str, ...]
    roles: tuple[str, ...]
    comms_style: str = COMMS_STYLE_ACTIVE
    subscription_id: str | None = None
    space: str | None = None
    policy: str | None = None
    force: bool = False


@dataclass(frozen=True)
class RegistrationResult:
    """What was done: the trust entry saved and the machine the server now knows."""

    server_thumbprint: str
    address: str
    subscription_id: str
    machine_id: str | None
    machine_name: str
    updated_existing: bool


# ------------------------------------------------------------------ pure decisions

def default_machine_name() -> str:
    """The real Tentacle's default: the machine name (the short host name)."""
    return socket.gethostname().split(".")[0] or socket.gethostname()


def websocket_address(text: str) -> str:
    """`--server-web-socket` as a `wss://` URL (`https://` is rewritten, like the real one)."""
    parts = urlsplit(text.strip())
    scheme = parts.scheme.lower()
    if scheme == "https":
        scheme = "wss"
    if scheme != "wss" or not parts.hostname:
        raise RegistrationError("The websocket address must start with wss://")
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, ""))


def comms_address(endpoint: ServerEndpointOptions) -> str:
    """The polling address the agent will use: the WebSocket URL, `--server-comms-address`, or
    `https://<API host>:<--server-comms-port>/` (Halibut's TCP polling)."""
    if endpoint.server_web_socket:
        return websocket_address(endpoint.server_web_socket)
    if endpoint.server_comms_address:
        parts = urlsplit(endpoint.server_comms_address.strip())
        if parts.scheme.lower() not in ("https", "wss") or not parts.hostname:
            raise RegistrationError("The server comms address must be an https:// (or wss://) "
                                    "URL, e.g. --server-comms-address=https://octopus:10943")
        if parts.scheme.lower() == "wss":
            return websocket_address(endpoint.server_comms_address)
        return f"https://{parts.netloc}/"
    host = urlsplit(normalize_server_url(endpoint.server)).hostname or ""
    if not 0 < endpoint.server_comms_port < 65536:
        raise RegistrationError(f"The server comms port {endpoint.server_comms_port} is not a "
                                "valid port number.")
    host_text = f"[{host}]" if ":" in host else host
    return f"https://{host_text}:{endpoint.server_comms_port}/"


def is_websocket(address: str) -> bool:
    return urlsplit(address).scheme.lower() == "wss"


def probe_url(address: str) -> str:
    """The HTTPS URL the real OctopusServerChecker POSTs to: the https form of a `wss://` address,
    or `/handshake` on a Halibut TCP port."""
    parts = urlsplit(address)
    if parts.scheme.lower() == "wss":
        return urlunsplit(("https", parts.netloc, parts.path or "/", parts.query, ""))
    return urlunsplit(("https", parts.netloc, "/handshake", "", ""))


def same_address(left: str | None, right: str | None) -> bool:
    if left is None or right is None:
        return False
    return left.rstrip("/").lower() == right.rstrip("/").lower()


def choose_subscription_id(config: TentacleConfig, address: str, requested: str | None) -> str:
    """`--server-subscription-id`, else the one this instance already polls `address` with,
    else a new `poll://<20 letters>/`."""
    if requested:
        candidate = requested.strip()
        if not candidate.endswith("/"):
            candidate += "/"
        if not is_valid_subscription_id(candidate, strict=False):
            raise RegistrationError(f"The subscription id '{requested}' is not of the form "
                                    "poll://abcdefghijklmnopqrst/")
        return candidate
    for server in config.trusted_servers:
        if (server.communication_style == COMMUNICATION_STYLE_ACTIVE and server.subscription_id
                and same_address(server.address, address)):
            return server.subscription_id
    return new_subscription_id()


def replace_polling_entry(servers: tuple[TrustedServer, ...],
                          entry: TrustedServer) -> tuple[TrustedServer, ...]:
    """Drop polling entries for the same address, then add or update `entry`."""
    kept = tuple(s for s in servers
                 if not (s.communication_style == COMMUNICATION_STYLE_ACTIVE
                         and same_address(s.address, entry.address)))
    return add_or_update_trusted_server(kept, entry)


def parse_version(text: str) -> tuple[int, ...] | None:
    """The leading numeric part of a semantic version (`2024.1.12345-beta` → (2024, 1, 12345))."""
    match = re.match(r"\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?", text or "")
    if match is None:
        return None
    return tuple(int(g) for g in match.groups() if g is not None)


def check_root_document(root: Any, server_url: str) -> None:
    """Step 2: an Octopus Server we can talk to. RegistrationError with the real texts."""
    if not isinstance(root, dict):
        raise RegistrationError(f"The server at {server_url} does not appear to be an Octopus "
                                "Server: GET /api did not return a JSON document.")
    application = get_member(root, "Application")
    if application is not None and application != APPLICATION:
        raise RegistrationError(f"The server at {server_url} does not appear to be an Octopus "
                                f"Server (it says it is '{application}').")
    api_version = get_member(root, "ApiVersion")
    if not isinstance(api_version, str) or not api_version.strip():
        raise RegistrationError("This Octopus Deploy server uses an older API specification than "
                                "this tool can handle. Please check for updates to the Octo tool.")
    current = parse_version(api_version)
    if current is None or not MIN_API_VERSION <= (*current, 0, 0)[:3] <= MAX_API_VERSION:
        raise RegistrationError(
            f"This Octopus Deploy server uses a newer API specification ({api_version}) than this "
            "tool can handle (3.0.0 to 3.0.99). Please check for updates to this tool.")
    version = get_member(root, "Version")
    if not isinstance(version, str) or not version.strip():
        raise RegistrationError("Unable to determine the Octopus Server version.")
    parsed = parse_version(version)
    if parsed is not None and 0 < parsed[0] < 3:
        raise RegistrationError(f"You cannot register this Tentacle with a {parsed[0]}.* "
                                "Octopus Server.")


def could_not_find(model: str, missing: Sequence[str], by_name_slug_or_id: bool) -> str:
    """Octopus.Client's CouldNotFindMessage texts."""
    if by_name_slug_or_id:
        if len(missing) == 1:
            return (f"Could not find the {model} with name, slug or Id {missing[0]} on the "
                    f"Octopus Server. Ensure the {model} exists and you have permission to "
                    "access it.")
        return (f"Could not find the {model}s with names, slugs or Ids: {', '.join(missing)} on "
                f"the Octopus Server. Ensure the {model}s exist and you have permission to "
                "access them.")
    if len(missing) == 1:
        return (f"Could not find the {model} named {missing[0]} on the Octopus Server. Ensure "
                f"the {model} exists and you have permission to access it.")
    return (f"Could not find the {model}s named: {', '.join(missing)} on the Octopus Server. "
            f"Ensure the {model}s exist and you have permission to access them.")


def match_environments(requested: Sequence[str], environments: Sequence[Any]) -> list[str]:
    """Environment ids for `requested`, each matched by name, then slug, then id (ignoring case).
    RegistrationError listing everything that matched nothing."""
    ids: list[str] = []
    missing: list[str] = []
    for wanted in requested:
        key = wanted.strip().lower()
        found = None
        for member in ("Name", "Slug", "Id"):
            found = next((e for e in environments
                          if str(get_member(e, member) or "").lower() == key), None)
            if found is not None:
                break
        if found is None:
            missing.append(wanted)
        elif (env_id := str(get_member(found, "Id"))) not in ids:
            ids.append(env_id)
    if missing:
        raise RegistrationError(could_not_find("environment", missing, by_name_slug_or_id=True))
    return ids


def polling_endpoint(tentacle_thumbprint: str, subscription_id: str) -> dict[str, Any]:
    return {"CommunicationStyle": COMMS_STYLE_ACTIVE, "Thumbprint": tentacle_thumbprint,
            "Uri": subscription_id}


def machine_document(existing: dict[str, Any] | None, *, name: str,
                     environment_ids: Sequence[str], roles: Sequence[str], space_id: str | None,
                     policy_id: str | None, tentacle_thumbprint: str,
                     subscription_id: str) -> dict[str, Any]:
    """Step 6's body: a new MachineResource, or `existing` with our fields applied (the machine
    policy is left alone unless `--policy` was given, like Octopus.Client)."""
    if existing is None:
        return {"Name": name, "EnvironmentIds": list(environment_ids), "Roles": list(roles),
                "TenantedDeploymentParticipation": "Untenanted", "TenantIds": [],
                "TenantTags": [], "SpaceId": space_id, "MachinePolicyId": policy_id,
                "IsDisabled": False,
                "Endpoint": polling_endpoint(tentacle_thumbprint, subscription_id)}
    document = dict(existing)

    def put(member: str, value: Any) -> None:
        for key in list(document):
            if key.lower() == member.lower():
                del document[key]
        document[member] = value

    put("Name", name)
    put("EnvironmentIds", list(environment_ids))
    put("Roles", list(roles))
    put("TenantIds", [])
    put("TenantTags", [])
    if policy_id is not None:
        put("MachinePolicyId", policy_id)
    put("Endpoint", polling_endpoint(tentacle_thumbprint, subscription_id))
    return document


# ------------------------------------------------------------------ I/O steps

async def probe_comms(address: str, say: Say, *, tries: int = PROBE_TRIES,
                      timeout: float = PROBE_TIMEOUT) -> str:
    """Step 1: POST nothing to the comms address; the server certificate's thumbprint."""
    if is_websocket(address):
        say(f"Checking connectivity on the server web socket address {address}...")
    else:
        say(f"Checking connectivity on the server communications port "
            f"{urlsplit(address).port}...")
    url = probe_url(address)
    delay = PROBE_FIRST_DELAY
    failure = ""
    for attempt in range(1, tries + 1):
        try:
            response = await http_request(url, "POST", policy=TlsPolicy.accept_any(),
                                          timeout=timeout, max_body=1024 * 1024)
        except ApiConnectionError as exc:
            failure = str(exc)
        else:
            if response.status in (200, 400) and response.server_thumbprint:
                say("Connected successfully")
                return response.server_thumbprint
            text = response.body[:500].decode("utf-8", "replace").strip()
            failure = (f"The service listening on {address} does not appear to be an Octopus "
                       f"Server. The response code was: {response.status}. The response was: "
                       f"{text}")
        if attempt < tries:
            await trio.sleep(delay)
            delay *= PROBE_BACKOFF
    raise RegistrationError(failure)


def api_policy(server_url: str, address: str, thumbprint: str) -> TlsPolicy:
    """Pin the REST API to the probed certificate when it is on the comms endpoint's host."""
    if urlsplit(server_url).scheme == "https" and same_host(server_url, address):
        return TlsPolicy.pinned([thumbprint])
    return TlsPolicy.system()


@dataclass(frozen=True)
class SpaceContext:
    """The root document, the chosen space (None on servers without spaces) and its links."""

    root: dict[str, Any]
    space_id: str | None
    space_root: dict[str, Any]

    def link(self, name: str) -> str | None:
        return get_link(self.space_root, name) or get_link(self.root, name)


async def load_space(client: OctopusClient, root: dict[str, Any],
                     space_name: str | None) -> SpaceContext:
    """Step 3, as the real SpaceRepositoryFactory does it."""
    if get_link(root, "Spaces") is None:
        if space_name:
            raise RegistrationError(
                f'A space with name "{space_name}" was requested, but this version of Octopus '
                "Server does not support spaces. Please upgrade Octopus Server to a version "
                'which supports spaces, or remove the "space" parameter.')
        return SpaceContext(root=root, space_id=None, space_root=root)
    me_link = get_link(root, "CurrentUser") or "/api/users/me"
    user = await client.get(me_link)
    spaces_link = get_link(user, "Spaces")
    if spaces_link is None:
        raise RegistrationError("The Octopus Server did not say which spaces this user can "
                                "access (no Spaces link on /api/users/me).")
    spaces = await client.get(spaces_link)
    if isinstance(spaces, dict):
        spaces = get_member(spaces, "Items") or []
    spaces = [s for s in spaces if isinstance(s, dict)] if isinstance(spaces, list) else []
    if space_name:
        wanted = space_name.strip().lower()
        chosen = next((s for s in spaces
                       if str(get_member(s, "Name") or "").strip().lower() == wanted), None)
        if chosen is None:
            raise RegistrationError(
                f'A space with name "{space_name}" could not be found. Ensure you have spelled '
                "the space name correctly and that the user has access to this space.")
    else:
        chosen = next((s for s in spaces if get_member(s, "IsDefault") is True), None)
        if chosen is None:
            raise RegistrationError(
                'No "space" was specified, and the default space is disabled or inaccessible to '
                'this user. Please select a space using the "space" parameter.')
    space_id = str(get_member(chosen, "Id"))
    home_link = get_link(chosen, "SpaceHome") or f"/api/{space_id}"
    space_root = await client.get(home_link, {"spaceId": space_id, "id": space_id})
    if not isinstance(space_root, dict):
        raise RegistrationError(f"The Octopus Server returned no SpaceHome for {space_id}.")
    return SpaceContext(root=root, space_id=space_id, space_root=space_root)


async def load_environments(client: OctopusClient, space: SpaceContext) -> list[Any]:
    """Step 4: the v2 environments endpoint, else the classic collection (404 on older servers)."""
    paging = {"skip": 0, "take": ALL_ITEMS}
    if space.space_id is not None:
        page = await client.get(f"~/api/{space.space_id}/environments/v2{{?skip,take}}", paging,
                                accept_status=(404,))
        if page is not None:
            items = get_member(page, "Items")
            if isinstance(items, list):
                next_link = get_link(page, "Page.Next")
                if next_link:
                    items = items + await client.get_all_pages(next_link)
                return items
    link = space.link("Environments")
    if link is None:
        raise RegistrationError("The Octopus Server did not provide an Environments link.")
    return await client.get_all_pages(link, paging)


async def find_policy_id(client: OctopusClient, space: SpaceContext, policy: str) -> str:
    link = space.link("MachinePolicies")
    if link is None:
        raise RegistrationError("The Octopus Server did not provide a MachinePolicies link.")
    policies = await client.get_all_pages(link, {"partialName": policy, "skip": 0,
                                                 "take": ALL_ITEMS})
    wanted = policy.strip().lower()
    for item in policies:
        if str(get_member(item, "Name") or "").lower() == wanted:
            return str(get_member(item, "Id"))
    raise RegistrationError(could_not_find("machine policy", [policy], by_name_slug_or_id=False))


async def find_machine(client: OctopusClient, space: SpaceContext,
                       name: str) -> dict[str, Any] | None:
    """Step 5: the machine with this name (ignoring case), by `machines?name=`."""
    link = space.link("Machines")
    if link is None:
        raise RegistrationError("The Octopus Server did not provide a Machines link.")
    machines = await client.get_all_pages(link, {"name": name, "skip": 0, "take": ALL_ITEMS})
    wanted = name.strip().lower()
    for machine in machines:
        if isinstance(machine, dict) and str(get_member(machine, "Name") or "").lower() == wanted:
            return machine
    return None


async def server_certificate_thumbprint(client: OctopusClient, root: dict[str, Any],
                                        fallback: str) -> str:
    """For Halibut TCP polling the agent trusts the server's Octopus certificate, which the API
    publishes (`/api/configuration/certificates/certificate-global`)."""
    link = get_link(root, "CertificateConfiguration")
    if link is None:
        return fallback
    document = await client.get(link, {"id": "certificate-global"})
    thumbprint = normalize_thumbprint(str(get_member(document, "Thumbprint") or ""))
    return thumbprint or fallback


def _require_certificate(config: TentacleConfig) -> str:
    if config.certificate_pem is None or not config.thumbprint:
        raise RegistrationError("No certificate has been generated for this Tentacle. Please run "
                                "the new-certificate command first.")
    return config.thumbprint


def _check_endpoint(endpoint: ServerEndpointOptions) -> str:
    if not endpoint.server or not endpoint.server.strip():
        raise RegistrationError("Please specify an Octopus Server, e.g., "
                                "--server=http://your-octopus-server")
    if not endpoint.api_key or not endpoint.api_key.strip():
        raise RegistrationError("Please specify a username and password, or an Octopus API key. "
                                "You can get an API key from the Octopus web portal. E.g., "
                                "--apiKey=ABC1234")
    return normalize_server_url(endpoint.server)


async def register_with(config_path: Path, options: RegisterOptions, say: Say, *,
                        instance: str | None = None) -> RegistrationResult:
    """The whole of `register-with`; the trust entry is saved only after the server accepted."""
    if options.comms_style.lower() == COMMS_STYLE_PASSIVE.lower():
        raise RegistrationError("This Tentacle only polls: listening (TentaclePassive) "
                                "registration is not supported. Use --comms-style=TentacleActive.")
    if options.comms_style.lower() != COMMS_STYLE_ACTIVE.lower():
        raise RegistrationError("Please specify a valid communications style, e.g. "
                                "--comms-style=TentacleActive")
    environments = [e for e in options.environments if e.strip()]
    if not environments:
        raise RegistrationError("Please specify an environment name, e.g., "
                                "--environment=Development")
    roles = [r for r in options.roles if r.strip()]
    if not roles:
        raise RegistrationError("Please specify a role name, e.g., --role=web-server")
    server_url = _check_endpoint(options.endpoint)
    address = comms_address(options.endpoint)
    config = load_config(config_path, instance=instance)
    tentacle_thumbprint = _require_certificate(config)

    probed = await probe_comms(address, say)
    say(f"Registering the tentacle with the server at {server_url}")
    client = OctopusClient(server_url, options.endpoint.api_key,
                           policy=api_policy(server_url, address, probed))
    root = await client.get(api_root_url(server_url))
    check_root_document(root, server_url)
    server_thumbprint = probed if is_websocket(address) else await server_certificate_thumbprint(
        client, root, probed)
    space = await load_space(client, root, options.space)
    environment_ids = match_environments(environments, await load_environments(client, space))
    policy_id = await find_policy_id(client, space, options.policy) if options.policy else None
    existing = await find_machine(client, space, options.name)
    if existing is not None and not options.force:
        raise RegistrationError(f"A machine named '{options.name}' already exists in the "
                                "environment. Use the 'force' parameter if you want to update "
                                "the existing machine.")
    subscription_id = choose_subscription_id(config, address, options.subscription_id)
    document = machine_document(existing, name=options.name, environment_ids=environment_ids,
                                roles=roles, space_id=space.space_id, policy_id=policy_id,
                                tentacle_thumbprint=tentacle_thumbprint,
                                subscription_id=subscription_id)
    if existing is not None:
        self_link = get_link(existing, "Self")
        if self_link is None:
            raise RegistrationError(f"The existing machine '{options.name}' has no Self link.")
        saved = await client.put(self_link, document)
    else:
        machines_link = space.link("Machines")
        assert machines_link is not None  # find_machine checked it
        saved = await client.post(machines_link, document)
    machine = saved
    saved_self = get_link(saved, "Self")
    if saved_self:
        machine = await client.get(saved_self)
    machine_id = get_member(machine, "Id") or get_member(saved, "Id")

    entry = TrustedServer(thumbprint=server_thumbprint,
                          communication_style=COMMUNICATION_STYLE_ACTIVE, address=address,
                          squid=None, subscription_id=subscription_id)
    update_config(config_path, lambda c: replace(
        c, trusted_servers=replace_polling_entry(c.trusted_servers, entry)), instance=instance)
    say("Machine registered successfully")
    return RegistrationResult(server_thumbprint=server_thumbprint, address=address,
                              subscription_id=subscription_id,
                              machine_id=str(machine_id) if machine_id else None,
                              machine_name=options.name, updated_existing=existing is not None)


def cluster_subscription_id(config: TentacleConfig, thumbprint: str,
                            requested: str | None) -> str:
    """The subscription id of the existing polling registration (HA nodes all share it)."""
    if requested:
        return choose_subscription_id(config, "", requested)
    polling = [s for s in config.trusted_servers
               if s.communication_style == COMMUNICATION_STYLE_ACTIVE and s.subscription_id]
    same_cert = {s.subscription_id for s in polling if s.thumbprint.lower() == thumbprint.lower()}
    candidates = same_cert or {s.subscription_id for s in polling}
    if not candidates:
        raise RegistrationError("This Tentacle is not registered with an Octopus Server yet: run "
                                "register-with first, then poll-server for each other node.")
    if len(candidates) > 1:
        raise RegistrationError("This Tentacle polls with more than one subscription id ("
                                + ", ".join(sorted(c for c in candidates if c)) + "): choose one "
                                "with --server-subscription-id.")
    return next(iter(candidates))  # type: ignore[return-value]


def check_node_trusted(config: TentacleConfig, thumbprint: str, address: str,
                       reuse_server_thumbprint: bool) -> None:
    """poll-server's rule: the new node's certificate must already be trusted.

    By default any trust entry counts (e.g. `configure --trust=THUMBPRINT` beforehand). With
    `--reuse-server-thumbprint` the node must present the very certificate of the existing polling
    registration (a cluster behind one certificate), so no separate trust step is needed.
    """
    lowered = thumbprint.lower()
    if reuse_server_thumbprint:
        registered = [s for s in config.trusted_servers
                      if s.communication_style == COMMUNICATION_STYLE_ACTIVE and s.subscription_id]
        if any(s.thumbprint.lower() == lowered for s in registered):
            return
        known = ", ".join(sorted({s.thumbprint for s in registered})) or "none"
        raise RegistrationError(f"The server at {address} presented the certificate {thumbprint}, "
                                "which is not the certificate of the Octopus Server this Tentacle "
                                f"is registered with ({known}).")
    if any(s.thumbprint.lower() == lowered for s in config.trusted_servers):
        return
    raise RegistrationError(f"The server at {address} presented the certificate {thumbprint}, "
                            "which this Tentacle does not trust. Trust it first with: tentacle "
                            f"configure --trust={thumbprint} (or use --reuse-server-thumbprint "
                            "if every node presents the registered server's certificate).")


async def poll_server(config_path: Path, endpoint: ServerEndpointOptions, say: Say, *,
                      reuse_server_thumbprint: bool = False, subscription_id: str | None = None,
                      instance: str | None = None) -> RegistrationResult:
    """`poll-server`: add another node of an HA Octopus Server to poll with the same
    subscription id."""
    server_url = _check_endpoint(endpoint)
    address = comms_address(endpoint)
    config = load_config(config_path, instance=instance)
    _require_certificate(config)
    probed = await probe_comms(address, say)
    say(f"Registering the tentacle with the server at {server_url}")
    client = OctopusClient(server_url, endpoint.api_key,
                           policy=api_policy(server_url, address, probed))
    root = await client.get(api_root_url(server_url))
    check_root_document(root, server_url)
    thumbprint = probed if is_websocket(address) else await server_certificate_thumbprint(
        client, root, probed)
    check_node_trusted(config, thumbprint, address, reuse_server_thumbprint)
    chosen = cluster_subscription_id(config, thumbprint, subscription_id)
    entry = TrustedServer(thumbprint=thumbprint, communication_style=COMMUNICATION_STYLE_ACTIVE,
                          address=address, squid=None, subscription_id=chosen)
    update_config(config_path, lambda c: replace(
        c, trusted_servers=replace_polling_entry(c.trusted_servers, entry)), instance=instance)
    say("Polling endpoint configured")
    return RegistrationResult(server_thumbprint=thumbprint, address=address,
                              subscription_id=chosen, machine_id=None, machine_name="",
                              updated_existing=False)
