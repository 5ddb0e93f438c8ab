"""The portal's HTML, rendered on the server from plain rows; every value goes through `e()`.

No template engine and no inline script or style: pages link /app/static/portal.css and
portal.js (the Content-Security-Policy allows nothing else), and the script finds what it needs in
`data-` attributes. Rows are small frozen records built from store records here, so app.py only
fetches and the JSON endpoints serve the very same fields the pages show.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from octopus_comms.store import Task, TaskLogEntry, TaskMachine

PRODUCT = "Octopus comms"
SYNTAXES = ("Bash", "PowerShell")
_BADGE_CLASSES = {
    "queued": "neutral", "executing": "running", "cancelling": "running", "running": "running",
    "pending": "neutral", "success": "good", "successwithwarning": "warn", "failed": "bad",
    "timedout": "bad", "canceled": "neutral", "skipped": "neutral", "connected": "good",
    "offline": "neutral", "disabled": "warn",
}


def e(value: object) -> str:
    """HTML-escape any value for text and double- or single-quoted attribute contexts."""
    return html.escape("" if value is None else str(value), quote=True)


def fmt_time(value: datetime | None) -> str:
    """`2024-05-01 12:00:03` in UTC, or '' for None."""
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def fmt_epoch(value: float | None) -> str:
    return "" if value is None else fmt_time(datetime.fromtimestamp(value, UTC))


def fmt_ago(seconds: float | None) -> str:
    """`4 s ago`, `3 min ago`, `2 h ago`, `5 d ago`; '' for None."""
    if seconds is None:
        return ""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s ago"
    if s < 3600:
        return f"{s // 60} min ago"
    if s < 86400:
        return f"{s // 3600} h ago"
    return f"{s // 86400} d ago"


def fmt_duration(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def badge_kind(text: str) -> str:
    """The CSS class of a state's badge (good, bad, warn, running, neutral)."""
    return _BADGE_CLASSES.get(text.lower(), "neutral")


def badge(text: str) -> str:
    kind = badge_kind(text)
    return f'<span class="badge {kind}" data-badge>{e(text)}</span>'


# ----------------------------------------------------------------------------- rows

@dataclass(frozen=True)
class MachineRow:
    """One deployment target and its live polling state on this node."""

    id: str
    name: str
    environments: tuple[str, ...]
    roles: tuple[str, ...]
    thumbprint: str
    communication_style: str
    disabled: bool
    connected: bool
    connections: int
    last_poll: str          # UTC text, '' if never seen by this node
    last_poll_ago: str
    node: str
    remote: str

    @property
    def state(self) -> str:
        if self.connected:
            return "Connected"
        return "Disabled" if self.disabled else "Offline"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "environments": list(self.environments),
                "roles": list(self.roles), "thumbprint": self.thumbprint,
                "communication_style": self.communication_style, "disabled": self.disabled,
                "connected": self.connected, "connections": self.connections,
                "state": self.state, "state_kind": badge_kind(self.state),
                "last_poll": self.last_poll,
                "last_poll_ago": self.last_poll_ago, "node": self.node, "remote": self.remote}


@dataclass(frozen=True)
class TaskRow:
    id: str
    description: str
    state: str
    is_completed: bool
    queued: str
    started: str
    completed: str
    duration: str
    error: str
    has_warnings: bool

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "description": self.description, "state": self.state,
                "state_kind": badge_kind(self.state), "completed": self.is_completed,
                "queued": self.queued, "started": self.started,
                "completed_time": self.completed, "duration": self.duration,
                "error": self.error, "has_warnings": self.has_warnings}


@dataclass(frozen=True)
class ActivityRow:
    machine_id: str
    machine_name: str
    status: str
    exit_code: int | None
    started: str
    ended: str

    def to_json(self) -> dict[str, Any]:
        return {"machine_id": self.machine_id, "machine_name": self.machine_name,
                "status": self.status, "status_kind": badge_kind(self.status),
                "exit_code": self.exit_code, "started": self.started,
                "ended": self.ended}


@dataclass(frozen=True)
class LogLineRow:
    sequence: int
    time: str
    machine: str
    category: str
    text: str

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.sequence, "time": self.time, "machine": self.machine,
                "category": self.category, "text": self.text}


@dataclass(frozen=True)
class Choice:
    """One checkbox on the script form."""

    value: str
    label: str
    hint: str = ""


@dataclass(frozen=True)
class ScriptForm:
    """What the user typed on the script form, kept to show it again after an error."""

    machine_ids: tuple[str, ...] = ()
    environment_ids: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    syntax: str = "Bash"
    script: str = ""
    description: str = ""


@dataclass(frozen=True)
class Viewer:
    """Who is looking, for the header: their name and the token the sign-out form carries."""

    display_name: str
    csrf_token: str = field(repr=False)


def task_row(task: Task, now: datetime) -> TaskRow:
    end = task.completed_time or now
    start = task.start_time or task.queue_time
    return TaskRow(id=task.id, description=task.description, state=task.state.value,
                   is_completed=task.is_completed, queued=fmt_time(task.queue_time),
                   started=fmt_time(task.start_time), completed=fmt_time(task.completed_time),
                   duration=fmt_duration((end - start).total_seconds()),
                   error=task.error_message, has_warnings=task.has_warnings_or_errors)


def activity_row(machine: TaskMachine) -> ActivityRow:
    return ActivityRow(machine_id=machine.machine_id, machine_name=machine.machine_name,
                       status=machine.status.value, exit_code=machine.exit_code,
                       started=fmt_time(machine.started), ended=fmt_time(machine.ended))


def log_rows(entries: Iterable[TaskLogEntry], machine_names: dict[str, str]) -> list[LogLineRow]:
    return [LogLineRow(sequence=entry.sequence,
                       time=entry.occurred_at.astimezone(UTC).strftime("%H:%M:%S"),
                       machine=machine_names.get(entry.machine_id or "", entry.machine_id or ""),
                       category=entry.category.value, text=entry.text) for entry in entries]


# ----------------------------------------------------------------------------- pages

def layout(base: str, title: str, content: str, *, viewer: Viewer | None = None,
           active: str = "", node: str = "", body_attrs: str = "") -> str:
    """The whole document around `content` (already-escaped HTML)."""
    nav = ""
    who = ""
    if viewer is not None:
        links = [("machines", f"{base}/machines", "Machines"), ("tasks", f"{base}/tasks", "Tasks"),
                 ("script", f"{base}/script", "Run a script")]
        current = ' class="active" aria-current="page"'
        nav = "<nav>" + "".join(
            f'<a href="{e(href)}"{current if key == active else ""}>{e(label)}</a>'
            for key, href, label in links) + "</nav>"
        who = (f'<div class="who"><span>Signed in as <strong>{e(viewer.display_name)}</strong>'
               f'</span><form method="post" action="{e(base)}/logout">'
               f'<input type="hidden" name="csrf_token" value="{e(viewer.csrf_token)}">'
               '<button type="submit" class="link">Sign out</button></form></div>')
    footer = ""            # the node's name only for those signed in
    if node and viewer is not None:
        footer = f'<footer>{e(PRODUCT)} · server node <span class="mono">{e(node)}</span></footer>'
    return ("<!DOCTYPE html>\n"
            '<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{e(title)} · {e(PRODUCT)}</title>"
            f'<link rel="stylesheet" href="{e(base)}/static/portal.css">'
            f'<script src="{e(base)}/static/portal.js" defer></script>'
            f"</head><body{body_attrs}>"
            f'<header class="top"><a class="brand" href="{e(base)}/">'
            f'<span class="logo" aria-hidden="true"></span>{e(PRODUCT)}</a>{nav}{who}</header>'
            f'<main>{content}</main>{footer}</body></html>\n')


def login_page(base: str, *, login_token: str, next_url: str = "", username: str = "",
               error: str = "", notice: str = "", node: str = "") -> str:
    alert = f'<p class="alert bad" role="alert">{e(error)}</p>' if error else ""
    info = f'<p class="alert info">{e(notice)}</p>' if notice else ""
    content = (
        '<section class="card narrow">'
        "<h1>Sign in</h1>"
        f"{alert}{info}"
        f'<form method="post" action="{e(base)}/login" class="stack" id="login-form">'
        f'<input type="hidden" name="login_token" value="{e(login_token)}">'
        f'<input type="hidden" name="next" value="{e(next_url)}">'
        '<label>Username<input name="username" id="username" autocomplete="username" '
        f'value="{e(username)}" autofocus></label>'
        '<label>Password<input name="password" id="password" type="password" '
        'autocomplete="current-password"></label>'
        '<p class="or"><span>or</span></p>'
        '<label>API key<input name="api_key" id="api_key" type="password" autocomplete="off" '
        'placeholder="API-…" spellcheck="false"></label>'
        '<button type="submit" class="primary" id="sign-in">Sign in</button>'
        "</form></section>")
    return layout(base, "Sign in", content, node=node)


def machines_page(base: str, rows: Sequence[MachineRow], *, viewer: Viewer, node: str,
                  refresh_seconds: int = 3) -> str:
    if rows:
        body = "".join(_machine_tr(row) for row in rows)
    else:
        body = ('<tr><td colspan="7" class="empty">No deployment targets yet. Register one with '
                '<code>tentacle register-with</code>.</td></tr>')
    connected = sum(1 for r in rows if r.connected)
    content = (
        '<div class="heading"><h1>Machines</h1>'
        f'<p class="muted"><span id="machine-summary">{connected} of {len(rows)} connected'
        '</span> · updates live</p></div>'
        f'<table class="grid" id="machines" data-source="{e(base)}/api/machines" '
        f'data-refresh="{int(refresh_seconds * 1000)}" '
        f'data-ids="{e(",".join(r.id for r in rows))}">'
        "<thead><tr><th>Machine</th><th>Environments</th><th>Roles</th><th>Connection</th>"
        "<th>Last poll (UTC)</th><th>Node · remote</th><th>Thumbprint</th></tr></thead>"
        f"<tbody>{body}</tbody></table>")
    return layout(base, "Machines", content, viewer=viewer, active="machines", node=node)


def _machine_tr(row: MachineRow) -> str:
    envs = ", ".join(row.environments) or "—"
    roles = "".join(f'<span class="tag">{e(r)}</span>' for r in row.roles) or "—"
    where = f"{row.node} · {row.remote}" if row.connected else ""
    return (f'<tr data-machine-id="{e(row.id)}">'
            f'<td><strong>{e(row.name)}</strong><div class="muted small mono">{e(row.id)}'
            f"</div></td><td>{e(envs)}</td><td>{roles}</td>"
            f'<td data-field="state">{badge(row.state)}</td>'
            f'<td><span data-field="last_poll">{e(row.last_poll or "never")}</span>'
            f'<div class="muted small" data-field="last_poll_ago">{e(row.last_poll_ago)}</div>'
            f'</td><td data-field="where" class="mono small">{e(where)}</td>'
            f'<td class="mono small thumb">{e(row.thumbprint)}</td></tr>')


def tasks_page(base: str, rows: Sequence[TaskRow], *, viewer: Viewer, node: str, total: int,
               skip: int, take: int) -> str:
    if rows:
        body = "".join(
            f'<tr><td><a href="{e(base)}/tasks/{e(quote(r.id))}">{e(r.id)}</a></td>'
            f"<td>{e(r.description)}</td><td>{badge(r.state)}</td><td>{e(r.queued)}</td>"
            f"<td>{e(r.started)}</td><td>{e(r.completed)}</td><td>{e(r.duration)}</td></tr>"
            for r in rows)
    else:
        body = ('<tr><td colspan="7" class="empty">No tasks yet. '
                f'<a href="{e(base)}/script">Run a script</a>.</td></tr>')
    pager = []
    if skip > 0:
        pager.append(f'<a href="{e(base)}/tasks?skip={max(0, skip - take)}">← Newer</a>')
    if skip + take < total:
        pager.append(f'<a href="{e(base)}/tasks?skip={skip + take}">Older →</a>')
    content = (
        '<div class="heading"><h1>Tasks</h1>'
        f'<a class="button primary" href="{e(base)}/script">Run a script</a></div>'
        '<table class="grid" id="tasks"><thead><tr><th>Task</th><th>Description</th>'
        "<th>State</th><th>Queued (UTC)</th><th>Started</th><th>Completed</th><th>Duration</th>"
        f"</tr></thead><tbody>{body}</tbody></table>"
        f'<p class="pager">{" ".join(pager)}</p>')
    return layout(base, "Tasks", content, viewer=viewer, active="tasks", node=node)


def task_page(base: str, task: TaskRow, activities: Sequence[ActivityRow],
              lines: Sequence[LogLineRow], *, viewer: Viewer, node: str, script: str,
              syntax: str, truncated: bool = False) -> str:
    after = lines[-1].sequence if lines else 0
    steps = "".join(
        f'<tr data-machine-id="{e(a.machine_id)}"><td>{e(a.machine_name)}</td>'
        f'<td data-field="status">{badge(a.status)}</td>'
        f'<td data-field="exit_code" class="mono">{e("" if a.exit_code is None else a.exit_code)}'
        "</td></tr>" for a in activities)
    cancel = ""
    if not task.is_completed:
        cancel = (f'<form method="post" action="{e(base)}/tasks/{e(quote(task.id))}/cancel" '
                  'id="cancel-form">'
                  f'<input type="hidden" name="csrf_token" value="{e(viewer.csrf_token)}">'
                  '<button type="submit" class="danger">Cancel</button></form>')
    note = ('<div class="line cat-Info"><span class="x">(earlier lines not shown)</span></div>'
            if truncated else "")
    content = (
        f'<div class="heading"><h1>{e(task.description)}</h1>{cancel}</div>'
        '<dl class="facts">'
        f'<div><dt>Task</dt><dd class="mono">{e(task.id)}</dd></div>'
        f'<div><dt>State</dt><dd id="task-state">{badge(task.state)}</dd></div>'
        f'<div><dt>Queued</dt><dd>{e(task.queued)}</dd></div>'
        f'<div><dt>Started</dt><dd id="task-started">{e(task.started)}</dd></div>'
        f'<div><dt>Completed</dt><dd id="task-completed">{e(task.completed)}</dd></div>'
        f'<div><dt>Duration</dt><dd id="task-duration">{e(task.duration)}</dd></div>'
        "</dl>"
        f'<p class="alert bad" id="task-error"{"" if task.error else " hidden"}>'
        f"{e(task.error)}</p>"
        '<div class="columns"><section class="card"><h2>Targets</h2>'
        '<table class="grid compact" id="activities"><thead><tr><th>Machine</th><th>Status</th>'
        f"<th>Exit code</th></tr></thead><tbody>{steps}</tbody></table></section>"
        f'<section class="card"><h2>Script <span class="muted small">{e(syntax)}</span></h2>'
        f'<pre class="script">{e(script)}</pre></section></div>'
        '<section class="card"><h2>Log</h2>'
        f'<div id="task-log" class="log" data-source="{e(base)}/api/tasks/{e(quote(task.id))}/log"'
        f' data-after="{after}" data-completed="{"true" if task.is_completed else "false"}"'
        ' aria-live="polite">'
        f'{note}{"".join(log_line(line) for line in lines)}</div></section>')
    return layout(base, task.id, content, viewer=viewer, active="tasks", node=node)


def log_line(line: LogLineRow) -> str:
    category = line.category if line.category.isalnum() else "Info"
    return (f'<div class="line cat-{e(category)}" data-seq="{int(line.sequence)}">'
            f'<span class="t">{e(line.time)}</span><span class="m">{e(line.machine)}</span>'
            f'<span class="x">{e(line.text)}</span></div>')


def script_page(base: str, *, viewer: Viewer, node: str, machines: Sequence[Choice],
                environments: Sequence[Choice], roles: Sequence[Choice], form: ScriptForm,
                errors: Sequence[str] = ()) -> str:
    alert = ""
    if errors:
        alert = ('<div class="alert bad" role="alert"><p>The script was not started:</p><ul>'
                 + "".join(f"<li>{e(x)}</li>" for x in errors) + "</ul></div>")

    def boxes(name: str, choices: Sequence[Choice], chosen: Sequence[str], empty: str) -> str:
        if not choices:
            return f'<p class="muted">{e(empty)}</p>'
        picked = {c.casefold() for c in chosen}
        return '<div class="choices">' + "".join(
            f'<label class="choice"><input type="checkbox" name="{e(name)}" value="{e(c.value)}"'
            f'{" checked" if c.value.casefold() in picked else ""}>'
            f"<span>{e(c.label)}</span>"
            + (f'<span class="muted small">{e(c.hint)}</span>' if c.hint else "")
            + "</label>" for c in choices) + "</div>"

    syntax_radios = "".join(
        f'<label class="choice inline"><input type="radio" name="syntax" value="{e(s)}"'
        f'{" checked" if s == form.syntax else ""}><span>{e(s)}</span></label>' for s in SYNTAXES)
    content = (
        '<div class="heading"><h1>Run a script</h1></div>'
        f"{alert}"
        f'<form method="post" action="{e(base)}/script" class="card stack" id="script-form">'
        f'<input type="hidden" name="csrf_token" value="{e(viewer.csrf_token)}">'
        '<fieldset><legend>Machines</legend>'
        + boxes("machine", machines, form.machine_ids, "No deployment targets.")
        + '</fieldset><fieldset><legend>…or environments and roles</legend>'
        '<p class="muted small">Used when no machine is ticked: every enabled machine in any '
        "ticked environment (all if none) with any ticked role (any if none).</p>"
        '<div class="columns">'
        + '<div><h3>Environments</h3>'
        + boxes("environment", environments, form.environment_ids, "No environments.")
        + '</div><div><h3>Roles</h3>'
        + boxes("role", roles, form.roles, "No roles.")
        + "</div></div></fieldset>"
        f'<fieldset><legend>Script</legend><div class="row">{syntax_radios}</div>'
        '<label>Description<input name="description" id="description" '
        f'placeholder="Script run from the portal" value="{e(form.description)}"></label>'
        '<label>Script body<textarea name="script" id="script" rows="10" spellcheck="false" '
        f'class="mono">{e(form.script)}</textarea></label></fieldset>'
        '<div class="actions"><button type="submit" class="primary" id="run">Run</button></div>'
        "</form>")
    return layout(base, "Run a script", content, viewer=viewer, active="script", node=node)


def message_page(base: str, title: str, message: str, *, viewer: Viewer | None = None,
                 node: str = "", link: tuple[str, str] | None = None) -> str:
    after = f'<p><a href="{e(link[0])}">{e(link[1])}</a></p>' if link else ""
    content = (f'<section class="card narrow"><h1>{e(title)}</h1><p>{e(message)}</p>{after}'
               "</section>")
    return layout(base, title, content, viewer=viewer, node=node)
