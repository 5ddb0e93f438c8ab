"""The Octopus REST API as a pure function: `Api.handle(ApiRequest) -> ApiResponse`.

No sockets and no trio: the serving process parses HTTP, builds an ApiRequest and writes the
ApiResponse back; tests call `handle` directly. The surface is what a real Tentacle's
`register-with` (OctopusClients) walks — root document, current user, spaces, space home,
environments (v2 and legacy), machines with `?name=`, create/modify/delete (PUT and DELETE also as
POST + `X-HTTP-Method-Override`) — plus ad hoc script tasks (the script console). Routes match
case-insensitively, like Octopus; every collection exists both space-scoped (`/api/Spaces-1/…`)
and unscoped (`/api/…`, the default space).

Auth: `X-Octopus-ApiKey` header, or `?apikey=`, or `Authorization: Bearer API-…`. `GET /api` is
anonymous, as on a real server. Every error is Octopus's error document with a 4xx status; an
internal failure is a 500 with the same shape, never an exception out of `handle`.

Tasks run elsewhere: `Api` stores the task and calls the injected `TaskRunner.start(task_id)`;
the runner reports progress through the Store (`set_task_state`, `set_task_machine_state`,
`append_task_log(s)`).

`handle` does SQLite I/O (writes fsync), so a trio server should call it through
`trio.to_thread.run_sync(api.handle, request)`; `TaskRunner` calls then arrive on that worker
thread (use `trio.from_thread` to reach the event loop).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import unquote

from octopus_comms import apimodel as model
from octopus_comms.apimodel import ALL_ITEMS, DEFAULT_TAKE, DEFAULT_VERSION, LinkBuilder
from octopus_comms.auth import ApiKeyAuthenticator
from octopus_comms.store import (ApiKey, Machine, NotFound, Store, StoreError, TaskQuery,
                                 TaskState, User, ValidationFailed, name_key)

log = logging.getLogger(__name__)

JSON_TYPE = "application/json; charset=utf-8"
TEXT_TYPE = "text/plain; charset=utf-8"
MAX_BODY_BYTES = 4 * 1024 * 1024
MISSING_KEY_MESSAGE = ("You must be logged in to perform this action. Please provide a valid API "
                       "key or log in again.")
INVALID_KEY_MESSAGE = ("The API key you provided was not valid. Please double-check your API key "
                       "and try again. For instructions on finding your API key, please visit: "
                       "https://oc.to/ApiKey")
NOT_FOUND_MESSAGE = "The resource you requested was not found."
_SPACE_RE = re.compile(r"spaces-[0-9]{1,9}", re.IGNORECASE)


# ----------------------------------------------------------------------------- the seam

@dataclass(frozen=True)
class ApiRequest:
    """One HTTP request, already parsed. `headers` keys are lower-case; `path` is the raw path
    (percent-encoded, no query); `query` maps each parameter to its decoded values."""

    method: str
    path: str
    query: Mapping[str, list[str]] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    client_ip: str | None = None


@dataclass(frozen=True)
class ApiResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


class TaskRunner(Protocol):
    """Runs tasks the API created; implemented by the serving process over polling connections.

    Both calls must return quickly (schedule the work, do not do it). The runner moves the task
    through the Store: `set_task_state(Executing)`, per machine `set_task_machine_state` and
    `append_task_logs`, finally `set_task_state(Success|Failed|Canceled|TimedOut)`.
    """

    def start(self, task_id: str) -> None: ...

    def cancel(self, task_id: str) -> None: ...


class ApiError(Exception):
    """An HTTP error with Octopus's error document."""

    def __init__(self, status: int, message: str, errors: Sequence[str] = (),
                 headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = list(errors)
        self.headers = list(headers)


def _json_response(status: int, document: Any,
                   headers: Sequence[tuple[str, str]] = ()) -> ApiResponse:
    body = json.dumps(document, ensure_ascii=False, indent=2).encode("utf-8")
    return ApiResponse(status, [("Content-Type", JSON_TYPE), *headers], body)


def _error_response(status: int, message: str, errors: Sequence[str] = (),
                    headers: Sequence[tuple[str, str]] = ()) -> ApiResponse:
    return _json_response(status, model.error_document(message, errors), headers)


# ----------------------------------------------------------------------------- routing

@dataclass
class Context:
    """What a handler gets: the request, path parameters, lower-cased query, the caller."""

    request: ApiRequest
    method: str
    params: dict[str, str]
    query: dict[str, list[str]]
    space_id: str
    api_key: ApiKey | None = None

    def one(self, name: str) -> str | None:
        values = self.query.get(name.lower())
        return values[-1] if values else None

    def many(self, name: str) -> list[str]:
        """A list parameter: repeated (`ids=a&ids=b`) or comma-joined (`ids=a,b`, RFC 6570)."""
        out: list[str] = []
        for value in self.query.get(name.lower(), []):
            out.extend(v.strip() for v in value.split(",") if v.strip())
        return out

    def int_param(self, name: str, default: int, minimum: int = 0,
                  maximum: int = ALL_ITEMS) -> int:
        text = self.one(name)
        if text is None or text == "":
            return default
        if not re.fullmatch(r"[0-9]{1,10}", text.strip()):
            raise ApiError(400, model.VALIDATION_MESSAGE,
                           [f"The query parameter '{name}' must be a whole number."])
        return min(max(int(text.strip()), minimum), maximum)

    def bool_param(self, name: str) -> bool | None:
        text = self.one(name)
        if text is None or text == "":
            return None
        lowered = text.strip().lower()
        if lowered not in ("true", "false"):
            raise ApiError(400, model.VALIDATION_MESSAGE,
                           [f"The query parameter '{name}' must be true or false."])
        return lowered == "true"


Handler = Callable[[Context], ApiResponse]


@dataclass(frozen=True)
class Route:
    method: str
    segments: tuple[str, ...]     # literals (lower-case) or '{name}'
    handler: Handler
    anonymous: bool = False


def _match(route: Route, segments: Sequence[str]) -> dict[str, str] | None:
    if len(route.segments) != len(segments):
        return None
    params: dict[str, str] = {}
    for pattern, actual in zip(route.segments, segments, strict=True):
        if pattern == "{space}":
            if not _SPACE_RE.fullmatch(actual):
                return None
            params["space"] = actual
        elif pattern.startswith("{"):
            if not actual:
                return None
            params[pattern[1:-1]] = actual
        elif pattern != actual.lower():
            return None
    return params


# ----------------------------------------------------------------------------- the API

class Api:
    """The REST API over a Store. Thread-safe as the Store is; `handle` never raises."""

    def __init__(self, store: Store, runner: TaskRunner, *,
                 server_thumbprint: str | None = None, version: str = DEFAULT_VERSION,
                 base_path: str = "", server_node: str = "octopus-comms",
                 clock: Callable[[], datetime] | None = None,
                 max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.store = store
        self.runner = runner
        self.server_thumbprint = server_thumbprint.upper() if server_thumbprint else None
        self.version = version
        self.link = LinkBuilder(base_path)
        self.server_node = server_node
        self._clock = clock or store.now
        self.max_body_bytes = max_body_bytes
        self.authenticator = ApiKeyAuthenticator(store)
        self._routes: list[Route] = []
        self._register_routes()

    # -- entry point

    def handle(self, request: ApiRequest) -> ApiResponse:
        try:
            response = self._dispatch(request)
        except ApiError as exc:
            response = _error_response(exc.status, exc.message, exc.errors, exc.headers)
        except ValidationFailed as exc:
            response = _error_response(400, model.VALIDATION_MESSAGE, exc.errors)
        except NotFound as exc:
            response = _error_response(404, NOT_FOUND_MESSAGE if exc.resource_id is None else
                                       f"The resource '{exc.resource_id}' was not found.")
        except StoreError as exc:
            log.error("store failure on %s %s: %s", request.method, request.path, exc)
            response = _error_response(503, "The server's database is unavailable: "
                                       f"{exc}")
        except Exception as exc:  # noqa: BLE001 - the API must answer, whatever happened
            log.exception("unhandled error on %s %s", request.method, request.path)
            response = _error_response(500, f"An unexpected error occurred: "
                                       f"{type(exc).__name__}")
        if request.method.upper() == "HEAD":
            return ApiResponse(response.status, response.headers, b"")
        return response

    def _segments(self, path: str) -> list[str]:
        base = self.link.base_path
        if base:
            if path.lower() == base.lower() or not path.lower().startswith(base.lower() + "/"):
                raise ApiError(404, NOT_FOUND_MESSAGE)
            path = path[len(base):]
        trimmed = path.strip("/")
        if not trimmed:
            return []
        return [unquote(segment, errors="replace") for segment in trimmed.split("/")]

    def _dispatch(self, request: ApiRequest) -> ApiResponse:
        method = request.method.upper()
        if method == "HEAD":
            method = "GET"
        override = request.headers.get("x-http-method-override", "").strip().upper()
        if method == "POST" and override in ("PUT", "DELETE"):
            method = override
        segments = self._segments(request.path.split("?", 1)[0])
        if not all(_is_text(s) for s in segments) or not all(
                _is_text(k) and all(_is_text(v) for v in vs) for k, vs in request.query.items()):
            raise ApiError(400, model.VALIDATION_MESSAGE,
                           ["The request URL is not valid UTF-8 text."])
        allowed: list[str] = []
        for route in self._routes:
            params = _match(route, segments)
            if params is None:
                continue
            if route.method != method:
                allowed.append(route.method)
                continue
            if len(request.body) > self.max_body_bytes:
                raise ApiError(413, f"The request body is larger than {self.max_body_bytes} "
                               "bytes.")
            query = {str(k).lower(): [str(v) for v in values]
                     for k, values in request.query.items()}
            api_key = None if route.anonymous else self._authenticate(request, query)
            context = Context(request, method, params, query, self._space(params), api_key)
            return route.handler(context)
        if allowed:
            raise ApiError(405, f"The method {method} is not allowed on this resource.",
                           headers=[("Allow", ", ".join(sorted(set(allowed))))])
        raise ApiError(404, NOT_FOUND_MESSAGE)

    def _space(self, params: Mapping[str, str]) -> str:
        if "space" not in params:
            return self.store.default_space().id
        try:
            return self.store.get_space(params["space"]).id
        except NotFound:
            raise ApiError(404, f"The space '{params['space']}' was not found.") from None

    def _authenticate(self, request: ApiRequest, query: Mapping[str, list[str]]) -> ApiKey:
        presented = request.headers.get("x-octopus-apikey")
        if not presented and query.get("apikey"):
            presented = query["apikey"][-1]
        if not presented:
            authorization = request.headers.get("authorization", "")
            if authorization[:7].lower() == "bearer ":
                presented = authorization[7:].strip()
        if not presented or not presented.strip():
            raise ApiError(401, MISSING_KEY_MESSAGE)
        key = self.authenticator.authenticate(presented)
        if key is None:
            raise ApiError(401, INVALID_KEY_MESSAGE)
        if not self.store.get_user(key.user_id).is_active:
            raise ApiError(401, "Your account has been disabled. Please contact your Octopus "
                           "administrator.")
        return key

    # -- route table

    def _add(self, method: str, pattern: str, handler: Handler, anonymous: bool = False,
             scoped: bool = False) -> None:
        patterns = [pattern]
        if scoped:   # also reachable inside a space: /api/Spaces-1/<rest>
            patterns.insert(0, "api/{space}/" + pattern.removeprefix("api/"))
        for text in patterns:
            segments = tuple(s if s.startswith("{") else s.lower() for s in text.split("/"))
            self._routes.append(Route(method, segments, handler, anonymous))

    def _register_routes(self) -> None:
        add = self._add
        add("GET", "api", self._root, anonymous=True)
        add("GET", "api/serverstatus", self._server_status)
        add("GET", "api/users/me", self._current_user)
        add("GET", "api/users", self._users)
        add("GET", "api/users/{id}", self._user)
        add("GET", "api/users/{id}/spaces", self._user_spaces)
        add("GET", "api/spaces", self._spaces)
        add("GET", "api/spaces/all", self._spaces_all)
        add("GET", "api/spaces/{id}", self._space_resource)
        add("GET", "api/{space}", self._space_home)
        for prefix in ("api/configuration/certificates", "api/certificates"):
            add("GET", prefix, self._certificates)
            add("GET", prefix + "/{id}", self._certificate)
        # environments
        add("GET", "api/environments", self._environments, scoped=True)
        add("GET", "api/environments/all", self._environments_all, scoped=True)
        add("GET", "api/environments/v2", self._environments_v2, scoped=True)
        add("GET", "api/environments/v2/{id}", self._environment_v2, scoped=True)
        add("GET", "api/environments/{id}", self._environment, scoped=True)
        add("GET", "api/environments/{id}/machines", self._environment_machines, scoped=True)
        add("POST", "api/environments", self._create_environment, scoped=True)
        add("PUT", "api/environments/{id}", self._modify_environment, scoped=True)
        add("DELETE", "api/environments/{id}", self._delete_environment, scoped=True)
        # machines (deployment targets)
        add("GET", "api/machines", self._machines, scoped=True)
        add("GET", "api/machines/all", self._machines_all, scoped=True)
        add("GET", "api/machines/{id}", self._machine, scoped=True)
        add("POST", "api/machines", self._create_machine, scoped=True)
        add("PUT", "api/machines/{id}", self._modify_machine, scoped=True)
        add("DELETE", "api/machines/{id}", self._delete_machine, scoped=True)
        add("GET", "api/machineroles/all", self._machine_roles, scoped=True)
        add("GET", "api/machinepolicies", self._machine_policies, scoped=True)
        add("GET", "api/machinepolicies/all", self._machine_policies_all, scoped=True)
        add("GET", "api/machinepolicies/{id}", self._machine_policy, scoped=True)
        # tasks
        add("GET", "api/tasks", self._tasks, scoped=True)
        add("POST", "api/tasks", self._create_task, scoped=True)
        add("GET", "api/tasks/{id}", self._task, scoped=True)
        add("GET", "api/tasks/{id}/raw", self._task_raw, scoped=True)
        add("GET", "api/tasks/{id}/details", self._task_details, scoped=True)
        add("POST", "api/tasks/{id}/cancel", self._cancel_task, scoped=True)

    # -- helpers

    def _now(self) -> datetime:
        return self._clock()

    def _body(self, context: Context) -> Any:
        raw = context.request.body
        if raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if not raw.strip():
            raise ApiError(400, model.VALIDATION_MESSAGE, ["The request body is empty."])
        try:
            document = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
            json.dumps(document, ensure_ascii=False).encode("utf-8")  # no lone surrogates
            return document
        except (UnicodeError, ValueError, RecursionError) as exc:
            raise ApiError(400, model.VALIDATION_MESSAGE,
                           [f"The request body is not valid JSON: {str(exc)[:200]}"]) from None

    def _user_of(self, context: Context) -> User:
        assert context.api_key is not None
        return self.store.get_user(context.api_key.user_id)

    def _page(self, context: Context, item_type: str, items: Sequence[Any],
              render: Callable[[Any], Any], path: str, template: str) -> ApiResponse:
        skip = context.int_param("skip", 0)
        take = context.int_param("take", DEFAULT_TAKE)
        chosen = items[skip:skip + take] if take else []
        kept = {k: ",".join(v) for k, v in context.query.items() if k != "apikey" and v}
        return _json_response(200, model.page(self.link, item_type,
                                              [render(i) for i in chosen], len(items), skip,
                                              take, path, template, kept))

    def _created(self, document: Mapping[str, Any]) -> ApiResponse:
        return _json_response(201, document, [("Location", document["Links"]["Self"])])

    def _check_space_id(self, document: Any, space_id: str) -> None:
        if isinstance(document, dict):
            value = model.Body(document).get("SpaceId")
            if value is not None and (not isinstance(value, str)
                                      or value.lower() != space_id.lower()):
                raise ValidationFailed([f"The SpaceId '{value}' does not match the space of "
                                        f"this request ({space_id})."])

    # -- system

    def _root(self, context: Context) -> ApiResponse:
        return _json_response(200, model.root_document(
            self.link, self.version, self.store.installation_id(),
            self.store.default_space().id))

    def _server_status(self, context: Context) -> ApiResponse:
        return _json_response(200, model.server_status(self.link, self.version))

    def _current_user(self, context: Context) -> ApiResponse:
        return _json_response(200, model.user_resource(self.link, self._user_of(context)))

    def _users(self, context: Context) -> ApiResponse:
        users = self.store.list_users()
        ids = {i.casefold() for i in context.many("ids")}
        if ids:
            users = [u for u in users if u.id.casefold() in ids]
        return self._page(context, "User", users,
                          lambda u: model.user_resource(self.link, u), "/api/users",
                          "/api/users{?skip,take,ids}")

    def _user(self, context: Context) -> ApiResponse:
        return _json_response(200, model.user_resource(
            self.link, self.store.get_user(context.params["id"])))

    def _user_spaces(self, context: Context) -> ApiResponse:
        user_id = context.params["id"]
        if user_id.lower() == "me":
            user_id = self._user_of(context).id
        self.store.get_user(user_id)
        return _json_response(200, [model.space_resource(self.link, s)
                                    for s in self.store.list_spaces()])

    def _spaces(self, context: Context) -> ApiResponse:
        spaces = self.store.list_spaces()
        ids = {i.casefold() for i in context.many("ids")}
        partial = (context.one("partialName") or "").casefold()
        spaces = [s for s in spaces if (not ids or s.id.casefold() in ids)
                  and partial in s.name.casefold()]
        return self._page(context, "Space", spaces,
                          lambda s: model.space_resource(self.link, s), "/api/spaces",
                          "/api/spaces{?skip,ids,take,partialName}")

    def _spaces_all(self, context: Context) -> ApiResponse:
        return _json_response(200, [model.space_resource(self.link, s)
                                    for s in self.store.list_spaces()])

    def _space_resource(self, context: Context) -> ApiResponse:
        return _json_response(200, model.space_resource(
            self.link, self.store.get_space(context.params["id"])))

    def _space_home(self, context: Context) -> ApiResponse:
        return _json_response(200, model.space_root(self.link, context.space_id))

    def _certificates(self, context: Context) -> ApiResponse:
        items = [self.server_thumbprint] if self.server_thumbprint else []
        return self._page(context, "CertificateConfiguration", items,
                          lambda t: model.certificate_resource(self.link, t),
                          "/api/configuration/certificates",
                          "/api/configuration/certificates{/id}{?skip,take}")

    def _certificate(self, context: Context) -> ApiResponse:
        if context.params["id"].lower() != "certificate-global" or not self.server_thumbprint:
            raise ApiError(404, NOT_FOUND_MESSAGE)
        return _json_response(200, model.certificate_resource(self.link,
                                                              self.server_thumbprint))

    # -- environments

    def _filtered_environments(self, context: Context) -> list[Any]:
        envs = self.store.list_environments(context.space_id)
        name = context.one("name")
        ids = {i.casefold() for i in context.many("ids")}
        partial = (context.one("partialName") or "").casefold()
        return [e for e in envs if (name is None or name_key(e.name) == name_key(name))
                and (not ids or e.id.casefold() in ids) and partial in e.name.casefold()]

    def _environments(self, context: Context) -> ApiResponse:
        path = f"/api/{context.space_id}/environments"
        return self._page(context, "Environment", self._filtered_environments(context),
                          lambda e: model.environment_resource(self.link, e), path,
                          f"{path}{{?{model.ENVIRONMENT_QUERY}}}")

    def _environments_v2(self, context: Context) -> ApiResponse:
        types = {t.lower() for t in context.many("type")}
        envs = self._filtered_environments(context) if not types or "static" in types else []
        path = f"/api/{context.space_id}/environments/v2"
        return self._page(context, "Environment", envs,
                          lambda e: model.environment_v2_resource(self.link, e), path,
                          f"{path}{{?{model.ENVIRONMENT_V2_QUERY}}}")

    def _environments_all(self, context: Context) -> ApiResponse:
        return _json_response(200, [model.environment_resource(self.link, e)
                                    for e in self.store.list_environments(context.space_id)])

    def _environment(self, context: Context) -> ApiResponse:
        env = self.store.get_environment(context.params["id"], context.space_id)
        return _json_response(200, model.environment_resource(self.link, env))

    def _environment_v2(self, context: Context) -> ApiResponse:
        env = self.store.get_environment(context.params["id"], context.space_id)
        return _json_response(200, model.environment_v2_resource(self.link, env))

    def _environment_machines(self, context: Context) -> ApiResponse:
        env = self.store.get_environment(context.params["id"], context.space_id)
        machines = [m for m in self._filtered_machines(context) if env.id in m.environment_ids]
        path = f"/api/{env.space_id}/environments/{env.id}/machines"
        return self._page(context, "DeploymentTarget", machines,
                          lambda m: model.machine_resource(self.link, m), path,
                          f"{path}{{?skip,take,partialName,roles,isDisabled,healthStatuses,"
                          "commStyles}")

    def _create_environment(self, context: Context) -> ApiResponse:
        document = self._body(context)
        self._check_space_id(document, context.space_id)
        spec = model.parse_environment(document)
        env = self.store.create_environment(spec.name, spec.description, context.space_id)
        if spec.sort_order is not None or spec.use_guided_failure \
                or not spec.allow_dynamic_infrastructure:
            env = self.store.update_environment(
                env.id, sort_order=spec.sort_order, use_guided_failure=spec.use_guided_failure,
                allow_dynamic_infrastructure=spec.allow_dynamic_infrastructure)
        return self._created(model.environment_resource(self.link, env))

    def _modify_environment(self, context: Context) -> ApiResponse:
        env = self.store.get_environment(context.params["id"], context.space_id)
        document = self._body(context)
        self._check_space_id(document, context.space_id)
        spec = model.parse_environment(document)
        env = self.store.update_environment(
            env.id, name=spec.name, description=spec.description, sort_order=spec.sort_order,
            use_guided_failure=spec.use_guided_failure,
            allow_dynamic_infrastructure=spec.allow_dynamic_infrastructure)
        return _json_response(200, model.environment_resource(self.link, env))

    def _delete_environment(self, context: Context) -> ApiResponse:
        env = self.store.get_environment(context.params["id"], context.space_id)
        self.store.delete_environment(env.id)
        return ApiResponse(200, [], b"")

    # -- machines

    def _filtered_machines(self, context: Context) -> list[Machine]:
        machines = self.store.list_machines(context.space_id)
        name = context.one("name")
        partial = (context.one("partialName") or "").casefold()
        ids = {i.casefold() for i in context.many("ids")}
        roles = {r.casefold() for r in context.many("roles")}
        envs = {e.casefold() for e in context.many("environmentIds")}
        styles = {s.casefold() for s in context.many("commStyles")}
        health = {h.casefold() for h in context.many("healthStatuses")}
        thumbprint = (context.one("thumbprint") or "").strip().upper()
        disabled = context.bool_param("isDisabled")

        def keep(m: Machine) -> bool:
            return ((name is None or name_key(m.name) == name_key(name))
                    and partial in m.name.casefold()
                    and (not ids or m.id.casefold() in ids)
                    and (not roles or bool(roles.intersection(r.casefold() for r in m.roles)))
                    and (not envs or bool(envs.intersection(e.casefold()
                                                             for e in m.environment_ids)))
                    and (not styles or m.communication_style.casefold() in styles)
                    and (not health or str(m.health.get("HealthStatus", "Unknown")).casefold()
                         in health)
                    and (not thumbprint or m.thumbprint == thumbprint)
                    and (disabled is None or m.is_disabled == disabled))
        return [m for m in machines if keep(m)]

    def _machines(self, context: Context) -> ApiResponse:
        path = f"/api/{context.space_id}/machines"
        return self._page(context, "DeploymentTarget", self._filtered_machines(context),
                          lambda m: model.machine_resource(self.link, m), path,
                          f"{path}{{?{model.MACHINE_QUERY}}}")

    def _machines_all(self, context: Context) -> ApiResponse:
        """An array; filters apply (`deregister-from` finds itself with `all?thumbprint=`)."""
        return _json_response(200, [model.machine_resource(self.link, m)
                                    for m in self._filtered_machines(context)])

    def _machine(self, context: Context) -> ApiResponse:
        machine = self.store.get_machine(context.params["id"], context.space_id)
        return _json_response(200, model.machine_resource(self.link, machine))

    def _create_machine(self, context: Context) -> ApiResponse:
        document = self._body(context)
        self._check_space_id(document, context.space_id)
        machine = self.store.create_machine(model.parse_machine(document), context.space_id)
        return self._created(model.machine_resource(self.link, machine))

    def _modify_machine(self, context: Context) -> ApiResponse:
        current = self.store.get_machine(context.params["id"], context.space_id)
        document = self._body(context)
        self._check_space_id(document, context.space_id)
        body_id = model.Body(document).get("Id")
        if body_id is not None and (not isinstance(body_id, str)
                                    or body_id.lower() != current.id.lower()):
            raise ValidationFailed([f"The Id in the body ({body_id}) does not match the "
                                    f"resource being modified ({current.id})."])
        machine = self.store.update_machine(current.id, model.parse_machine(document))
        return _json_response(200, model.machine_resource(self.link, machine))

    def _delete_machine(self, context: Context) -> ApiResponse:
        machine = self.store.get_machine(context.params["id"], context.space_id)
        self.store.delete_machine(machine.id)
        return ApiResponse(200, [], b"")

    def _machine_roles(self, context: Context) -> ApiResponse:
        roles: dict[str, str] = {}
        for machine in self.store.list_machines(context.space_id):
            for role in machine.roles:
                roles.setdefault(role.casefold(), role)
        return _json_response(200, sorted(roles.values(), key=str.casefold))

    def _machine_policies(self, context: Context) -> ApiResponse:
        path = f"/api/{context.space_id}/machinepolicies"
        return self._page(context, "MachinePolicy",
                          self.store.list_machine_policies(context.space_id),
                          lambda p: model.machine_policy_resource(self.link, p), path,
                          f"{path}{{?skip,take,ids,partialName}}")

    def _machine_policies_all(self, context: Context) -> ApiResponse:
        return _json_response(200, [model.machine_policy_resource(self.link, p) for p in
                                    self.store.list_machine_policies(context.space_id)])

    def _machine_policy(self, context: Context) -> ApiResponse:
        policy = self.store.get_machine_policy(context.params["id"], context.space_id)
        return _json_response(200, model.machine_policy_resource(self.link, policy))

    # -- tasks

    def _scoped_task_space(self, context: Context) -> str | None:
        return context.space_id if "space" in context.params else None

    def _tasks(self, context: Context) -> ApiResponse:
        states: set[TaskState] | None = None       # None: any state
        for text in context.many("states"):
            match = [s for s in TaskState if s.value.lower() == text.lower()]
            if not match:
                raise ApiError(400, model.VALIDATION_MESSAGE, [f"Unknown task state '{text}'."])
            states = (states or set()) | set(match)
        for flag, subset in (("active", {TaskState.QUEUED, TaskState.EXECUTING,
                                         TaskState.CANCELLING}),
                             ("running", {TaskState.EXECUTING, TaskState.CANCELLING})):
            if context.bool_param(flag):
                states = set(subset) if states is None else states & subset
        space = self._scoped_task_space(context)
        spaces = context.many("spaces")
        if space is None and len(spaces) == 1:
            space = spaces[0]
        query = TaskQuery(space_id=space, states=frozenset(states or ()),
                          name=context.one("name") or None, ids=frozenset(context.many("ids")))
        skip = context.int_param("skip", 0)
        take = context.int_param("take", DEFAULT_TAKE)
        partial = (context.one("partialName") or "").casefold()
        if states is not None and not states:
            tasks, total = [], 0          # the filters exclude each other
        elif partial:
            everything, _ = self.store.list_tasks(query)
            matching = [t for t in everything if partial in t.description.casefold()]
            total, tasks = len(matching), matching[skip:skip + take]
        else:
            tasks, total = self.store.list_tasks(query, skip, take)
        now = self._now()
        path = "/api/tasks" if space is None else f"/api/{space}/tasks"
        kept = {k: ",".join(v) for k, v in context.query.items() if k != "apikey" and v}
        return _json_response(200, model.page(
            self.link, "Task", [model.task_resource(self.link, t, now, self.server_node)
                                for t in tasks], total, skip, take, path,
            f"{path}{{?{model.TASK_QUERY}}}", kept))

    def _get_task(self, context: Context) -> Any:
        return self.store.get_task(context.params["id"], self._scoped_task_space(context))

    def _task(self, context: Context) -> ApiResponse:
        return _json_response(200, model.task_resource(self.link, self._get_task(context),
                                                       self._now(), self.server_node))

    def _task_raw(self, context: Context) -> ApiResponse:
        task = self._get_task(context)
        text = model.raw_log(task, self.store.task_machines(task.id),
                             self.store.task_logs(task.id), self.version, self.server_node)
        return ApiResponse(200, [("Content-Type", TEXT_TYPE)], text.encode("utf-8"))

    def _task_details(self, context: Context) -> ApiResponse:
        task = self._get_task(context)
        verbose = bool(context.bool_param("verbose"))
        tail = context.int_param("tail", -1, minimum=0) if context.one("tail") else None
        return _json_response(200, model.task_details(
            self.link, task, self.store.task_machines(task.id), self.store.task_logs(task.id),
            self._now(), self.server_node, verbose=verbose, tail=tail))

    def _create_task(self, context: Context) -> ApiResponse:
        document = self._body(context)
        self._check_space_id(document, context.space_id)
        script = model.parse_task(document)
        environments = [e.id for e in self.store.list_environments(context.space_id)]
        targets = model.resolve_targets(script, self.store.list_machines(context.space_id),
                                        environments)
        task = self.store.create_task(model.ADHOC_SCRIPT, script.description, script.arguments,
                                      [m.id for m in targets], context.space_id)
        try:
            self.runner.start(task.id)
        except Exception as exc:  # noqa: BLE001 - the task exists; record why it cannot run
            log.exception("task runner refused %s", task.id)
            task = self.store.set_task_state(task.id, TaskState.FAILED,
                                             f"The task could not be started: {exc}")
        task = self.store.get_task(task.id)
        return self._created(model.task_resource(self.link, task, self._now(),
                                                 self.server_node))

    def _cancel_task(self, context: Context) -> ApiResponse:
        task = self._get_task(context)
        if not task.is_completed and task.state is not TaskState.CANCELLING:
            task = self.store.set_task_state(task.id, TaskState.CANCELLING)
            try:
                self.runner.cancel(task.id)
            except Exception:  # noqa: BLE001 - cancellation is best effort; state says so
                log.exception("task runner failed to cancel %s", task.id)
            task = self.store.get_task(task.id)
        return _json_response(200, model.task_resource(self.link, task, self._now(),
                                                       self.server_node))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _is_text(value: object) -> bool:
    """A str that SQLite and JSON can carry (no lone surrogates, no NUL)."""
    if not isinstance(value, str) or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
