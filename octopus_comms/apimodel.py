"""The REST API's JSON documents, both ways: store records → Octopus resources, bodies → specs.

Shapes follow Octopus Server 2023/2024 as OctopusClients (the library inside Tentacle's
`register-with`) reads them: PascalCase names, enums as strings, dates as ISO 8601 with an offset
(`2024-03-12T01:02:03.456+00:00`), `Links` on every resource with RFC 6570 URI templates where a
client fills in parameters (`/api/Spaces-1/machines{/id}{?skip,take,name,...}`). Readers are
Newtonsoft-like: member names match case-insensitively and unknown members are ignored. Links are
built by a `LinkBuilder`, so a server mounted below a path prefix advertises correct URLs.
Everything here is pure: no store, no clock (times are passed in).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

from octopus_comms.store import (ActivityStatus, Environment, LogCategory, Machine,
                                 MachinePolicy, MachineSpec, Space, Task, TaskLogEntry,
                                 TaskMachine, TaskState, User, ValidationFailed, slugify)

APPLICATION = "Octopus Deploy"
API_VERSION = "3.0.0"
DEFAULT_VERSION = "2024.1.0"
ALL_ITEMS = 2147483647
DEFAULT_TAKE = 30
VALIDATION_MESSAGE = "There was a problem with your request."
ADHOC_SCRIPT = "AdHocScript"
ADHOC_DEFAULT_DESCRIPTION = "Script run from management console"
SCRIPT_SYNTAXES = ("PowerShell", "Bash")

_THUMBPRINT_RE = re.compile(r"[0-9A-Fa-f]{40}")
_POLL_HOST_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}")

Json = dict[str, Any]

MACHINE_QUERY = ("skip,take,name,ids,partialName,roles,isDisabled,healthStatuses,commStyles,"
                 "tenantIds,tenantTags,environmentIds,thumbprint,deploymentId,shellNames,"
                 "deploymentTargetTypes")
ENVIRONMENT_QUERY = "name,skip,ids,take,partialName"
ENVIRONMENT_V2_QUERY = "name,skip,ids,take,partialName,type"
TASK_QUERY = "skip,active,name,running,states,take,ids,partialName,spaces"


class LinkBuilder:
    """Turns server-relative paths (`/api/...`) into the links this server advertises."""

    def __init__(self, base_path: str = "") -> None:
        self.base_path = base_path.rstrip("/")

    def __call__(self, path: str) -> str:
        return self.base_path + path

    def space_path(self, space_id: str, tail: str) -> str:
        return self(f"/api/{space_id}{tail}")


# ----------------------------------------------------------------------------- values

def iso(value: datetime | None) -> str | None:
    """Octopus's date format: milliseconds and an explicit `+00:00` offset."""
    if value is None:
        return None
    utc = value.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}+00:00"


def long_date(value: datetime) -> str:
    """The `Completed` text of a finished task: `Tuesday, 12 March 2024 1:02:03 AM +00:00`."""
    utc = value.astimezone(UTC)
    hour = utc.hour % 12 or 12
    return (f"{utc:%A}, {utc.day} {utc:%B %Y} {hour}:{utc:%M:%S} "
            f"{'AM' if utc.hour < 12 else 'PM'} +00:00")


def humanize_duration(seconds: float) -> str:
    """`1 second`, `42 seconds`, `3 minutes`, `2 hours`, `1 day`: the largest whole unit."""
    whole = max(0, int(seconds))
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if whole >= size:
            count = whole // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{whole} second{'' if whole == 1 else 's'}"


def error_document(message: str, errors: Sequence[str] = (), details: Any = None,
                   help_text: str | None = None) -> Json:
    """The body of every 4xx: `{ErrorMessage, Errors, FullException, HelpText, Details}`."""
    return {"ErrorMessage": message, "Errors": list(errors), "FullException": None,
            "HelpText": help_text, "Details": details}


# ----------------------------------------------------------------------------- documents

def root_document(link: LinkBuilder, version: str, installation_id: str,
                  space_id: str) -> Json:
    """`GET /api`: who we are and where everything is (default space inlined, as Octopus)."""
    space = f"/api/{space_id}"
    return {
        "Application": APPLICATION,
        "Version": version,
        "ApiVersion": API_VERSION,
        "InstallationId": installation_id,
        "HasLongTermSupport": False,
        "Links": {
            "Self": link("/api"),
            "CertificateConfiguration": link("/api/configuration/certificates{/id}{?skip,take}"),
            "CurrentUser": link("/api/users/me"),
            "Environments": link(f"{space}/environments{{/id}}{{?{ENVIRONMENT_QUERY}}}"),
            "MachinePolicies": link(f"{space}/machinepolicies{{/id}}{{?skip,take,ids,"
                                    "partialName}"),
            "MachineRoles": link(f"{space}/machineroles/all"),
            "Machines": link(f"{space}/machines{{/id}}{{?{MACHINE_QUERY}}}"),
            "ServerStatus": link("/api/serverstatus"),
            "SpaceHome": link("/api/{spaceId}"),
            "Spaces": link("/api/spaces{/id}{?skip,ids,take,partialName}"),
            "Tasks": link(f"/api/tasks{{/id}}{{?{TASK_QUERY}}}"),
            "Users": link("/api/users{/id}{?skip,take,ids}"),
        },
    }


def space_root(link: LinkBuilder, space_id: str) -> Json:
    """`GET /api/Spaces-1`: the space's collection links (they override the root's)."""
    space = f"/api/{space_id}"
    return {"Links": {
        "Self": link(space),
        "Environments": link(f"{space}/environments{{/id}}{{?{ENVIRONMENT_QUERY}}}"),
        "MachinePolicies": link(f"{space}/machinepolicies{{/id}}{{?skip,take,ids,partialName}}"),
        "MachineRoles": link(f"{space}/machineroles/all"),
        "Machines": link(f"{space}/machines{{/id}}{{?{MACHINE_QUERY}}}"),
        "Tasks": link(f"{space}/tasks{{/id}}{{?{TASK_QUERY}}}"),
    }}


def space_resource(link: LinkBuilder, space: Space) -> Json:
    return {
        "Id": space.id, "Name": space.name, "Slug": space.slug,
        "Description": space.description, "IsDefault": space.is_default, "IsPrivate": False,
        "TaskQueueStopped": False, "SpaceManagersTeams": [], "SpaceManagersTeamMembers": [],
        "Icon": None, "ExtensionSettings": [], "LastModifiedOn": None,
        "Links": {"Self": link(f"/api/spaces/{space.id}"), "SpaceHome": link(f"/api/{space.id}")},
    }


def user_resource(link: LinkBuilder, user: User) -> Json:
    base = f"/api/users/{user.id}"
    return {
        "Id": user.id, "Username": user.username, "DisplayName": user.display_name,
        "IsActive": user.is_active, "IsService": user.is_service,
        "EmailAddress": user.email_address, "CanPasswordBeEdited": True, "IsRequestor": True,
        "Identities": [],
        "Links": {"Self": link(base), "Spaces": link(f"{base}/spaces")},
    }


def environment_resource(link: LinkBuilder, env: Environment) -> Json:
    base = f"/api/{env.space_id}/environments/{env.id}"
    return {
        "Id": env.id, "Name": env.name, "Slug": env.slug, "Description": env.description,
        "SortOrder": env.sort_order, "UseGuidedFailure": env.use_guided_failure,
        "AllowDynamicInfrastructure": env.allow_dynamic_infrastructure,
        "SpaceId": env.space_id, "ExtensionSettings": [],
        "Links": {"Self": link(base),
                  "Machines": link(f"{base}/machines{{?skip,take,partialName,roles,isDisabled,"
                                   "healthStatuses,commStyles}")},
    }


def environment_v2_resource(link: LinkBuilder, env: Environment) -> Json:
    """The `environments/v2` shape: a static environment, with its `Type`."""
    document = environment_resource(link, env)
    document["Type"] = "Static"
    document["EnvironmentTags"] = []
    return document


def machine_policy_resource(link: LinkBuilder, policy: MachinePolicy) -> Json:
    return {
        "Id": policy.id, "Name": policy.name, "Description": policy.description,
        "IsDefault": policy.is_default, "SpaceId": policy.space_id,
        "PollingRequestQueueTimeout": "00:02:00",
        "ConnectionRetrySleepInterval": "00:00:01", "ConnectionRetryCountLimit": 5,
        "ConnectionRetryTimeLimit": "00:05:00", "ConnectionConnectTimeout": "00:01:00",
        "Links": {"Self": link(f"/api/{policy.space_id}/machinepolicies/{policy.id}")},
    }


def machine_resource(link: LinkBuilder, machine: Machine) -> Json:
    """A deployment target as Octopus 2024 returns it (live health from the `health` column)."""
    health = machine.health
    return {
        "Id": machine.id,
        "EnvironmentIds": list(machine.environment_ids),
        "Roles": list(machine.roles),
        "TenantedDeploymentParticipation": machine.tenanted_deployment_participation,
        "TenantIds": list(machine.tenant_ids),
        "TenantTags": list(machine.tenant_tags),
        "SpaceId": machine.space_id,
        "Name": machine.name,
        "Thumbprint": machine.thumbprint,
        "Uri": machine.uri,
        "IsDisabled": machine.is_disabled,
        "MachinePolicyId": machine.machine_policy_id,
        "HealthStatus": str(health.get("HealthStatus", "Unknown")),
        "HasLatestCalamari": True,
        "StatusSummary": str(health.get("StatusSummary", "This machine has not been "
                                                          "health-checked yet.")),
        "IsInProcess": False,
        "Endpoint": {
            "CommunicationStyle": machine.communication_style,
            "Uri": machine.uri,
            "Thumbprint": machine.thumbprint,
            "TentacleVersionDetails": {"UpgradeLocked": False,
                                       "Version": health.get("TentacleVersion"),
                                       "UpgradeSuggested": False, "UpgradeRequired": False,
                                       "UpgradeAvailable": False},
            "CertificateSignatureAlgorithm": None,
            "Id": None, "LastModifiedOn": None, "LastModifiedBy": None, "Links": {},
        },
        "OperatingSystem": str(health.get("OperatingSystem", "Unknown")),
        "ShellName": str(health.get("ShellName", "Unknown")),
        "ShellVersion": str(health.get("ShellVersion", "Unknown")),
        "Architecture": str(health.get("Architecture", "Unknown")),
        "Slug": slugify(machine.name),
        "SkipInitialHealthCheck": False,
        "Links": {"Self": link(f"/api/{machine.space_id}/machines/{machine.id}")},
    }


def certificate_resource(link: LinkBuilder, thumbprint: str) -> Json:
    return {"Id": "certificate-global", "Name": "Octopus Server", "Thumbprint": thumbprint,
            "SignatureAlgorithm": None,
            "Links": {"Self": link("/api/configuration/certificates/certificate-global")}}


def server_status(link: LinkBuilder, version: str) -> Json:
    return {"Id": "serverstatus", "IsDatabaseEncrypted": True, "IsMajorMinorUpgrade": False,
            "IsInMaintenanceMode": False, "IsUpgradeAvailable": False,
            "MaximumAvailableVersion": version,
            "MaximumAvailableVersionCoveredByLicense": version,
            "Links": {"Self": link("/api/serverstatus")}}


def page(link: LinkBuilder, item_type: str, items: Sequence[Json], total: int, skip: int,
         take: int, path: str, template: str, query: Mapping[str, str] | None = None) -> Json:
    """A page of a collection with Octopus's paging links; `Page.Next` only if more remain."""
    filters = {k: v for k, v in (query or {}).items() if k not in ("skip", "take")}

    def at(offset: int, size: int) -> str:
        return link(f"{path}?{urlencode({**filters, 'skip': offset, 'take': size})}")

    pages = math.ceil(total / take) if take > 0 else 0
    links = {"Self": at(skip, take), "Template": link(template),
             "Page.All": at(0, ALL_ITEMS), "Page.Current": at(skip, take),
             "Page.Last": at(max(0, pages - 1) * take, take)}
    if take > 0 and skip + take < total:
        links["Page.Next"] = at(skip + take, take)
    if skip > 0 and take > 0:
        links["Page.Prev"] = at(max(0, skip - take), take)
    return {"ItemType": item_type, "TotalResults": total, "ItemsPerPage": take,
            "NumberOfPages": pages, "LastPageNumber": max(0, pages - 1),
            "Items": list(items), "Links": links}


# ----------------------------------------------------------------------------- tasks

def task_duration(task: Task, now: datetime) -> str:
    start = task.start_time or task.queue_time
    end = task.completed_time or now
    return humanize_duration((end - start).total_seconds())


def _completed_text(task: Task) -> str:
    if task.completed_time is not None:
        return long_date(task.completed_time)
    return {TaskState.QUEUED: "Queued...", TaskState.EXECUTING: "Executing...",
            TaskState.CANCELLING: "Cancelling..."}.get(task.state, "")


def task_resource(link: LinkBuilder, task: Task, now: datetime, server_node: str) -> Json:
    base = f"/api/tasks/{task.id}"
    links = {"Self": link(base), "Raw": link(f"{base}/raw"),
             "Details": link(f"{base}/details{{?verbose,tail}}")}
    if not task.is_completed:
        links["Cancel"] = link(f"{base}/cancel")
    return {
        "Id": task.id,
        "SpaceId": task.space_id,
        "EstimatedRemainingQueueDurationSeconds": 0,
        "Name": task.name,
        "Description": task.description,
        "Arguments": dict(task.arguments),
        "State": task.state.value,
        "Completed": _completed_text(task),
        "QueueTime": iso(task.queue_time),
        "QueueTimeExpiry": None,
        "StartTime": iso(task.start_time),
        "LastUpdatedTime": iso(task.last_updated_time),
        "CompletedTime": iso(task.completed_time),
        "ServerNode": server_node if task.state is not TaskState.QUEUED else None,
        "Duration": task_duration(task, now),
        "ErrorMessage": task.error_message,
        "HasBeenPickedUpByProcessor": task.state is not TaskState.QUEUED,
        "IsCompleted": task.is_completed,
        "FinishedSuccessfully": task.state is TaskState.SUCCESS,
        "HasPendingInterruptions": False,
        "CanRerun": False,
        "HasWarningsOrErrors": task.has_warnings_or_errors,
        "UnmetPreconditions": None,
        "ProjectId": None,
        "Links": links,
    }


def task_activity_status(task: Task) -> ActivityStatus:
    if task.state is TaskState.SUCCESS:
        return (ActivityStatus.SUCCESS_WITH_WARNING if task.has_warnings_or_errors
                else ActivityStatus.SUCCESS)
    return {TaskState.QUEUED: ActivityStatus.PENDING, TaskState.EXECUTING: ActivityStatus.RUNNING,
            TaskState.CANCELLING: ActivityStatus.RUNNING, TaskState.FAILED: ActivityStatus.FAILED,
            TaskState.TIMED_OUT: ActivityStatus.FAILED,
            TaskState.CANCELED: ActivityStatus.CANCELED}[task.state]


HIDDEN_UNLESS_VERBOSE = frozenset({LogCategory.VERBOSE, LogCategory.TRACE})


def _elements(entries: Iterable[TaskLogEntry], verbose: bool, tail: int | None) -> list[Json]:
    chosen = [e for e in entries if verbose or e.category not in HIDDEN_UNLESS_VERBOSE]
    if tail is not None:
        chosen = chosen[-tail:] if tail > 0 else []
    return [{"Category": e.category.value, "OccurredAt": iso(e.occurred_at),
             "MessageText": e.text, "Detail": None} for e in chosen]


def task_progress(task: Task, machines: Sequence[TaskMachine]) -> int:
    if task.is_completed:
        return 100
    if not machines:
        return 0
    done = sum(1 for m in machines if m.status.is_finished)
    return int(100 * done / len(machines))


def task_details(link: LinkBuilder, task: Task, machines: Sequence[TaskMachine],
                 logs: Sequence[TaskLogEntry], now: datetime, server_node: str,
                 verbose: bool = False, tail: int | None = None) -> Json:
    """`GET /api/tasks/{id}/details`: the task, one activity tree (a child per machine)."""
    children = []
    for machine in machines:
        children.append({
            "Id": f"{task.id}_{machine.machine_id}",
            "Name": f"Run script on {machine.machine_name}",
            "Started": iso(machine.started), "Ended": iso(machine.ended),
            "Status": machine.status.value, "Children": [], "ShowAtSummaryLevel": True,
            "LogElements": _elements((e for e in logs if e.machine_id == machine.machine_id),
                                     verbose, tail),
            "ProgressPercentage": 100 if machine.status.is_finished else 0,
            "ProgressMessage": None,
        })
    progress = task_progress(task, machines)
    root = {
        "Id": task.id, "Name": task.description,
        "Started": iso(task.start_time), "Ended": iso(task.completed_time),
        "Status": task_activity_status(task).value, "Children": children,
        "ShowAtSummaryLevel": True,
        "LogElements": _elements((e for e in logs if e.machine_id is None), verbose, tail),
        "ProgressPercentage": progress, "ProgressMessage": None,
    }
    return {
        "Task": task_resource(link, task, now, server_node),
        "ActivityLogs": [root],
        "PhysicalLogSize": sum(len(e.text.encode("utf-8")) + 1 for e in logs),
        "Progress": {"ProgressPercentage": progress,
                     "EstimatedTimeRemaining": "" if task.is_completed else None},
        "Links": {"Self": link(f"/api/tasks/{task.id}/details")},
    }


def raw_log(task: Task, machines: Sequence[TaskMachine], logs: Sequence[TaskLogEntry],
            version: str, server_node: str) -> str:
    """The plain-text log (`/raw`): a header, then each activity's lines with time and category."""
    related = ", ".join([task.space_id, *(m.machine_id for m in machines)])
    lines = [f"Task ID:        {task.id}", f"Related IDs:    {related}",
             f"Task status:    {task.state.value}", f"Created:        {iso(task.queue_time)}",
             f"Server version: {version}", f"Server node:    {server_node}", "",
             f"{'':20}| {task_activity_status(task).value}: {task.description}"]

    def entry(e: TaskLogEntry, indent: str) -> list[str]:
        stamp = e.occurred_at.astimezone(UTC).strftime("%H:%M:%S")
        texts = e.text.splitlines() or [""]
        return [f"{stamp}   {e.category.value:<9}|{indent}{t}" for t in texts]

    for e in logs:
        if e.machine_id is None:
            lines.extend(entry(e, "   "))
    for machine in machines:
        lines.append(f"{'':20}|")
        lines.append(f"{'':20}|   {machine.status.value}: Run script on {machine.machine_name}")
        for e in logs:
            if e.machine_id == machine.machine_id:
                lines.extend(entry(e, "     "))
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- readers

class Body:
    """A JSON object read the Newtonsoft way: names match ignoring case; unknown names ignored."""

    def __init__(self, document: Any, what: str = "request body") -> None:
        if not isinstance(document, dict):
            raise ValidationFailed([f"The {what} must be a JSON object."])
        self._values = {str(k).lower(): v for k, v in document.items()}

    def has(self, name: str) -> bool:
        return name.lower() in self._values

    def get(self, name: str, default: Any = None) -> Any:
        return self._values.get(name.lower(), default)


def _string(body: Body, name: str, errors: list[str], required: bool = False,
            default: str | None = None) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            errors.append(f"Please provide a value for {name}.")
        return default
    if not isinstance(value, str):
        errors.append(f"{name} must be a string.")
        return default
    return value


def _strings(body: Body, name: str, errors: list[str]) -> tuple[str, ...]:
    value = body.get(name)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        errors.append(f"{name} must be a list of strings.")
        return ()
    seen: dict[str, str] = {}
    for item in value:
        clean = item.strip()
        if clean and clean.casefold() not in seen:
            seen[clean.casefold()] = clean
    return tuple(seen.values())


def _bool(body: Body, name: str, errors: list[str], default: bool = False) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        errors.append(f"{name} must be true or false.")
        return default
    return value


def _choice(value: str | None, choices: Sequence[str]) -> str | None:
    if value is None:
        return None
    for choice in choices:
        if choice.lower() == value.strip().lower():
            return choice
    return None


def normalize_subscription_uri(text: str) -> str | None:
    """`poll://abcdefghijklmnopqrst/` in canonical form (lower-case, trailing slash), or None."""
    try:
        parts = urlsplit(text.strip())
    except ValueError:
        return None
    if parts.scheme.lower() != "poll" or parts.path not in ("", "/") or parts.query \
            or parts.fragment or not _POLL_HOST_RE.fullmatch(parts.netloc or ""):
        return None
    return f"poll://{parts.netloc.lower()}/"


def normalize_listening_uri(text: str) -> str | None:
    """`https://host:port/` of a listening Tentacle, or None."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() != "https" or not parts.hostname:
        return None
    host = parts.hostname.lower()
    host = f"[{host}]" if ":" in host else host
    return f"https://{host}:{port or 10933}/"


def parse_machine(document: Any) -> MachineSpec:
    """A MachineResource body (POST/PUT) → MachineSpec; ValidationFailed lists every problem."""
    body = Body(document)
    errors: list[str] = []
    name = (_string(body, "Name", errors) or "").strip()
    if not name:
        errors.append("Please provide a name for the deployment target.")
    elif len(name) > 200 or any(ord(ch) < 32 for ch in name):
        errors.append("The name must be at most 200 characters, without control characters.")
    environment_ids = _strings(body, "EnvironmentIds", errors)
    roles = _strings(body, "Roles", errors)
    tenant_ids = _strings(body, "TenantIds", errors)
    tenant_tags = _strings(body, "TenantTags", errors)
    participation = _string(body, "TenantedDeploymentParticipation", errors,
                            default="Untenanted")
    participation_choice = _choice(participation, ("Untenanted", "TenantedOrUntenanted",
                                                   "Tenanted"))
    if participation_choice is None:
        errors.append("TenantedDeploymentParticipation must be Untenanted, "
                      "TenantedOrUntenanted or Tenanted.")
    policy = _string(body, "MachinePolicyId", errors)
    disabled = _bool(body, "IsDisabled", errors)
    style = thumbprint = uri = None
    endpoint_value = body.get("Endpoint")
    if endpoint_value is None:
        errors.append("Please provide an Endpoint for the deployment target.")
    elif not isinstance(endpoint_value, dict):
        errors.append("Endpoint must be a JSON object.")
    else:
        endpoint = Body(endpoint_value, "Endpoint")
        style_text = _string(endpoint, "CommunicationStyle", errors, required=True)
        style = _choice(style_text, ("TentacleActive", "TentaclePassive"))
        if style_text is not None and style is None:
            errors.append(f"The communication style '{style_text}' is not supported by this "
                          "server; use TentacleActive (polling) or TentaclePassive.")
        thumbprint_text = _string(endpoint, "Thumbprint", errors, required=True)
        if thumbprint_text is not None:
            if _THUMBPRINT_RE.fullmatch(thumbprint_text.strip()):
                thumbprint = thumbprint_text.strip().upper()
            else:
                errors.append("The Tentacle thumbprint must be 40 hexadecimal digits.")
        uri_text = _string(endpoint, "Uri", errors, required=True)
        if uri_text is not None and style is not None:
            if style == "TentacleActive":
                uri = normalize_subscription_uri(uri_text)
                if uri is None:
                    errors.append(f"The subscription Uri '{uri_text}' must look like "
                                  "poll://abcdefghijklmnopqrst/.")
            else:
                uri = normalize_listening_uri(uri_text)
                if uri is None:
                    errors.append(f"The Tentacle Uri '{uri_text}' must be an https:// URL.")
    if errors:
        raise ValidationFailed(errors)
    assert style is not None and thumbprint is not None and uri is not None
    assert participation_choice is not None
    return MachineSpec(name=name, environment_ids=environment_ids, roles=roles,
                       communication_style=style, thumbprint=thumbprint, uri=uri,
                       tenanted_deployment_participation=participation_choice,
                       tenant_ids=tenant_ids, tenant_tags=tenant_tags,
                       machine_policy_id=policy or None, is_disabled=disabled)


def machine_spec_of(machine: Machine) -> MachineSpec:
    """The writable part of a stored machine (what a PUT of its own resource would write)."""
    return MachineSpec(name=machine.name, environment_ids=machine.environment_ids,
                       roles=machine.roles, communication_style=machine.communication_style,
                       thumbprint=machine.thumbprint, uri=machine.uri,
                       tenanted_deployment_participation=machine.tenanted_deployment_participation,
                       tenant_ids=machine.tenant_ids, tenant_tags=machine.tenant_tags,
                       machine_policy_id=machine.machine_policy_id,
                       is_disabled=machine.is_disabled)


@dataclass(frozen=True)
class EnvironmentSpec:
    name: str
    description: str
    sort_order: int | None
    use_guided_failure: bool
    allow_dynamic_infrastructure: bool


def parse_environment(document: Any) -> EnvironmentSpec:
    body = Body(document)
    errors: list[str] = []
    name = (_string(body, "Name", errors) or "").strip()
    if not name:
        errors.append("Please provide a name for the environment.")
    description = _string(body, "Description", errors, default="") or ""
    sort_order = body.get("SortOrder")
    if sort_order is not None and (isinstance(sort_order, bool) or not isinstance(sort_order, int)
                                   or not -2**31 <= sort_order < 2**31):
        errors.append("SortOrder must be a 32-bit integer.")
        sort_order = None
    guided = _bool(body, "UseGuidedFailure", errors)
    dynamic = _bool(body, "AllowDynamicInfrastructure", errors, default=True)
    if errors:
        raise ValidationFailed(errors)
    return EnvironmentSpec(name, description, sort_order, guided, dynamic)


@dataclass(frozen=True)
class AdHocScript:
    """A validated `AdHocScript` task request (targets not yet resolved)."""

    description: str
    script_body: str
    syntax: str
    machine_ids: tuple[str, ...]
    environment_ids: tuple[str, ...]
    target_roles: tuple[str, ...]
    arguments: Mapping[str, Any]   # what the task echoes back as its Arguments


def parse_task(document: Any) -> AdHocScript:
    """A task creation body; only `AdHocScript` (the script console) is supported."""
    body = Body(document)
    errors: list[str] = []
    name = _string(body, "Name", errors, required=True)
    if name is not None and name.strip().lower() != ADHOC_SCRIPT.lower():
        raise ValidationFailed([f"The task type '{name}' is not supported by this server; "
                                f"only {ADHOC_SCRIPT} tasks can be created."])
    description = (_string(body, "Description", errors) or "").strip() \
        or ADHOC_DEFAULT_DESCRIPTION
    raw_arguments = body.get("Arguments")
    if raw_arguments is None:
        raise ValidationFailed([*errors, "Please provide the task Arguments."])
    arguments = Body(raw_arguments, "Arguments")
    script = _string(arguments, "ScriptBody", errors) or ""
    if not script.strip():
        errors.append("Please provide a script body (Arguments.ScriptBody).")
    syntax_text = _string(arguments, "Syntax", errors, default="PowerShell")
    syntax = _choice(syntax_text, SCRIPT_SYNTAXES)
    if syntax is None:
        errors.append(f"The script syntax '{syntax_text}' is not supported; use "
                      + " or ".join(SCRIPT_SYNTAXES) + ".")
    machine_ids = _strings(arguments, "MachineIds", errors)
    environment_ids = _strings(arguments, "EnvironmentIds", errors)
    roles = _strings(arguments, "TargetRoles", errors)
    if not (machine_ids or environment_ids or roles):
        errors.append("Please choose the deployment targets to run the script on "
                      "(MachineIds, or EnvironmentIds and/or TargetRoles).")
    if errors:
        raise ValidationFailed(errors)
    assert syntax is not None
    echoed = {"ScriptBody": script, "Syntax": syntax, "MachineIds": list(machine_ids),
              "EnvironmentIds": list(environment_ids), "TargetRoles": list(roles),
              "TenantIds": [], "TenantTags": [], "WorkerIds": [], "WorkerPoolIds": [],
              "TargetType": "Machines" if machine_ids else "EnvironmentsAndRoles"}
    return AdHocScript(description=description, script_body=script, syntax=syntax,
                       machine_ids=machine_ids, environment_ids=environment_ids,
                       target_roles=roles, arguments=echoed)


def resolve_targets(script: AdHocScript, machines: Sequence[Machine],
                    environment_ids: Iterable[str]) -> list[Machine]:
    """Which machines an ad hoc script runs on, as the Octopus script console decides.

    Explicit `MachineIds` win (every id must exist and be enabled). Otherwise the enabled
    machines in any of `EnvironmentIds` (all environments if none given) that have any of
    `TargetRoles` (any role if none given). ValidationFailed if an id is unknown or nothing
    matches.
    """
    by_id = {m.id.casefold(): m for m in machines}
    known_envs = {e.casefold(): e for e in environment_ids}
    errors: list[str] = []
    if script.machine_ids:
        chosen: list[Machine] = []
        for machine_id in script.machine_ids:
            machine = by_id.get(machine_id.casefold())
            if machine is None:
                errors.append(f"The machine '{machine_id}' does not exist.")
            elif machine.is_disabled:
                errors.append(f"The machine '{machine.name}' is disabled.")
            elif machine not in chosen:
                chosen.append(machine)
        if errors:
            raise ValidationFailed(errors)
        return chosen
    wanted_envs = set()
    for env_id in script.environment_ids:
        env = known_envs.get(env_id.casefold())
        if env is None:
            errors.append(f"The environment '{env_id}' does not exist.")
        else:
            wanted_envs.add(env)
    if errors:
        raise ValidationFailed(errors)
    roles = {r.casefold() for r in script.target_roles}
    chosen = [m for m in machines if not m.is_disabled
              and (not wanted_envs or wanted_envs.intersection(m.environment_ids))
              and (not roles or roles.intersection(r.casefold() for r in m.roles))]
    if not chosen:
        raise ValidationFailed(["No enabled deployment targets match the chosen environments "
                                "and roles."])
    return chosen

