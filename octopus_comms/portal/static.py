"""The portal's only two static files, served from /app/static/ so the CSP can forbid inline code.

The script is progressive enhancement: every page works without it; with it the machines table
and a task's log follow the server live by polling the JSON endpoints. It writes text with
`textContent` only (never `innerHTML`), so data from the server cannot become markup.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

CSS = """\
:root {
  --ink: #1b2733; --muted: #5f6f7f; --line: #dde3ea; --bg: #f4f6f9; --card: #ffffff;
  --brand: #0d80d8; --brand-dark: #0f2535; --good: #127a3d; --good-bg: #e3f5ea;
  --bad: #b3261e; --bad-bg: #fbe7e6; --warn: #8a5a00; --warn-bg: #fff3d6;
  --run: #0b5cad; --run-bg: #e2efff; --neutral-bg: #eceff3;
  --mono: ui-monospace, SFMono-Regular, "DejaVu Sans Mono", Menlo, Consolas, monospace;
}
* { box-sizing: border-box; }
html { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
       sans-serif; font-size: 15px; color: var(--ink); background: var(--bg); }
body { margin: 0; min-height: 100vh; display: flex; flex-direction: column; }
a { color: var(--brand); text-decoration: none; }
a:hover { text-decoration: underline; }
.top { display: flex; align-items: center; gap: 2rem; padding: 0 1.5rem; height: 3.25rem;
       background: var(--brand-dark); color: #fff; }
.brand { color: #fff; font-weight: 650; font-size: 1.05rem; display: flex; align-items: center;
         gap: .55rem; letter-spacing: .01em; }
.brand:hover { text-decoration: none; }
.logo { width: 1.2rem; height: 1.2rem; border-radius: 50%; background: var(--brand);
        box-shadow: inset 0 -.3rem 0 rgba(255,255,255,.25); }
nav { display: flex; gap: .25rem; flex: 1; }
nav a { color: #c9d6e2; padding: .45rem .8rem; border-radius: 6px; }
nav a:hover { color: #fff; background: rgba(255,255,255,.08); text-decoration: none; }
nav a.active { color: #fff; background: rgba(255,255,255,.14); }
.who { display: flex; align-items: center; gap: .75rem; color: #c9d6e2; font-size: .9rem; }
.who strong { color: #fff; font-weight: 600; }
.who form { margin: 0; }
main { width: 100%; max-width: 1200px; margin: 0 auto; padding: 1.5rem; flex: 1; }
footer { text-align: center; color: var(--muted); font-size: .8rem; padding: 1rem; }
h1 { font-size: 1.45rem; margin: 0; font-weight: 650; }
h2 { font-size: 1.05rem; margin: 0 0 .75rem; font-weight: 620; }
h3 { font-size: .9rem; margin: .25rem 0 .5rem; color: var(--muted); font-weight: 600; }
.heading { display: flex; align-items: center; justify-content: space-between; gap: 1rem;
           margin-bottom: 1rem; flex-wrap: wrap; }
.heading form { margin: 0; }
.muted { color: var(--muted); }
.small { font-size: .8rem; }
.mono, code, pre { font-family: var(--mono); }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
        padding: 1.25rem; margin-bottom: 1.25rem; box-shadow: 0 1px 2px rgba(16,24,40,.04); }
.narrow { max-width: 26rem; margin: 3rem auto; }
.card > h1 { margin-bottom: 1rem; }
.columns { display: grid; grid-template-columns: repeat(auto-fit, minmax(18rem, 1fr));
           gap: 1.25rem; }
.columns > .card { margin-bottom: 0; }
.columns + .card { margin-top: 1.25rem; }
table.grid { width: 100%; border-collapse: separate; border-spacing: 0; background: var(--card);
             border: 1px solid var(--line); border-radius: 10px; overflow: hidden; }
table.grid th { text-align: left; font-size: .75rem; text-transform: uppercase;
                letter-spacing: .04em; color: var(--muted); background: #f9fafb;
                padding: .6rem .8rem; border-bottom: 1px solid var(--line); font-weight: 600; }
table.grid td { padding: .65rem .8rem; border-bottom: 1px solid var(--line);
                vertical-align: top; }
table.grid tr:last-child td { border-bottom: 0; }
table.grid.compact td, table.grid.compact th { padding: .45rem .6rem; }
td.empty { text-align: center; color: var(--muted); padding: 2rem; }
td.thumb { max-width: 11rem; overflow-wrap: anywhere; }
.tag { display: inline-block; padding: .1rem .45rem; margin: 0 .25rem .2rem 0;
       border-radius: 4px; background: var(--neutral-bg); font-size: .8rem; }
.badge { display: inline-block; padding: .15rem .55rem; border-radius: 999px; font-size: .8rem;
         font-weight: 600; white-space: nowrap; }
.badge.good { color: var(--good); background: var(--good-bg); }
.badge.bad { color: var(--bad); background: var(--bad-bg); }
.badge.warn { color: var(--warn); background: var(--warn-bg); }
.badge.running { color: var(--run); background: var(--run-bg); }
.badge.neutral { color: var(--muted); background: var(--neutral-bg); }
.alert { padding: .7rem .9rem; border-radius: 8px; margin: 0 0 1rem; }
.alert.bad { color: var(--bad); background: var(--bad-bg); }
.alert.info { color: var(--run); background: var(--run-bg); }
.alert ul, .alert p { margin: .2rem 0; }
form.stack, .stack { display: flex; flex-direction: column; gap: .9rem; }
label { display: flex; flex-direction: column; gap: .3rem; font-weight: 550; font-size: .9rem; }
input, textarea, button, .button { font: inherit; }
input:not([type=checkbox]):not([type=radio]), textarea {
  border: 1px solid #c5ced8; border-radius: 6px; padding: .5rem .6rem; font-weight: 400;
  background: #fff; color: var(--ink); width: 100%; }
input:focus, textarea:focus { outline: 2px solid var(--brand); outline-offset: -1px; }
textarea { resize: vertical; min-height: 10rem; font-family: var(--mono); font-size: .9rem; }
fieldset { border: 0; padding: 0; margin: 0 0 .5rem; display: flex; flex-direction: column;
           gap: .6rem; }
legend { font-weight: 650; font-size: 1.02rem; margin-bottom: .4rem; }
.choices { display: flex; flex-wrap: wrap; gap: .5rem; }
.choice { flex-direction: row; align-items: center; gap: .45rem; font-weight: 450;
          border: 1px solid var(--line); border-radius: 8px; padding: .4rem .7rem;
          background: #fbfcfd; cursor: pointer; }
.choice:has(input:checked) { border-color: var(--brand); background: var(--run-bg); }
.choice.inline { display: inline-flex; }
.row { display: flex; gap: .5rem; }
.actions { display: flex; justify-content: flex-end; }
button, .button { border: 1px solid #c5ced8; background: #fff; color: var(--ink);
                  border-radius: 6px; padding: .5rem 1rem; cursor: pointer; font-weight: 550;
                  display: inline-block; }
button:hover, .button:hover { text-decoration: none; background: #f3f5f8; }
button.primary, .button.primary { background: var(--brand); border-color: var(--brand);
                                  color: #fff; }
button.primary:hover, .button.primary:hover { background: #0b6fbc; }
button.danger { color: var(--bad); border-color: #e8b4b0; }
button.link { border: 0; background: none; color: #c9d6e2; padding: 0; font-weight: 500; }
button.link:hover { color: #fff; text-decoration: underline; background: none; }
.or { display: flex; align-items: center; gap: .75rem; color: var(--muted); margin: 0;
      font-size: .85rem; }
.or::before, .or::after { content: ""; flex: 1; border-top: 1px solid var(--line); }
dl.facts { display: flex; flex-wrap: wrap; gap: .75rem 2.5rem; margin: 0 0 1.25rem; }
dl.facts dt { font-size: .75rem; text-transform: uppercase; letter-spacing: .04em;
              color: var(--muted); }
dl.facts dd { margin: .2rem 0 0; }
pre.script { margin: 0; padding: .75rem; background: #f7f8fa; border-radius: 6px;
             white-space: pre-wrap; overflow-wrap: anywhere; font-size: .85rem;
             max-height: 16rem; overflow: auto; }
.log { background: #0f1720; color: #dbe4ee; border-radius: 8px; padding: .75rem 0;
       font-family: var(--mono); font-size: .85rem; line-height: 1.45; max-height: 32rem;
       min-height: 6rem; overflow: auto; }
.log .line { display: grid; grid-template-columns: 5rem 7rem 1fr; gap: .5rem;
             padding: 0 .9rem; }
.log .line:hover { background: rgba(255,255,255,.04); }
.log .t { color: #7d8b99; }
.log .m { color: #7fb8ef; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.log .x { white-space: pre-wrap; overflow-wrap: anywhere; }
.log .cat-Error .x, .log .cat-Fatal .x { color: #ff9b94; }
.log .cat-Warning .x { color: #ffd27a; }
.log .cat-Highlight .x { color: #fff; font-weight: 600; }
.log .cat-Verbose .x { color: #9aa7b4; }
.pager { display: flex; gap: 1rem; justify-content: flex-end; }
@media (max-width: 760px) {
  .top { flex-wrap: wrap; height: auto; padding: .6rem 1rem; gap: .5rem 1rem; }
  .log .line { grid-template-columns: 4.5rem 1fr; }
  .log .m { display: none; }
}
"""

JS = """\
"use strict";
(() => {
  const getJson = async (url) => {
    const response = await fetch(url, {credentials: "same-origin", cache: "no-store",
                                       headers: {"Accept": "application/json"}});
    if (response.status === 401) {        // signed out or expired: the page sends us to sign in
      window.location.reload();
      throw new Error("signed out");
    }
    if (!response.ok) throw new Error("HTTP " + response.status);
    return response.json();
  };
  const setBadge = (el, text, kind) => {
    if (!el) return;
    el.textContent = text;
    el.className = "badge " + kind;
  };
  const setField = (root, name, text) => {
    const el = root.querySelector('[data-field="' + name + '"]');
    if (el) el.textContent = text;
  };

  const machines = document.getElementById("machines");
  if (machines) {
    const rendered = machines.dataset.ids || "";
    const every = Number(machines.dataset.refresh) || 3000;
    const summary = document.getElementById("machine-summary");
    const refresh = async () => {
      try {
        const data = await getJson(machines.dataset.source);
        if (data.machines.map((m) => m.id).join(",") !== rendered) {
          window.location.reload();          // machines were added or removed
          return;
        }
        let connected = 0;
        for (const m of data.machines) {
          if (m.connected) connected += 1;
          const row = machines.querySelector('tr[data-machine-id="' + CSS.escape(m.id) + '"]');
          if (!row) continue;
          setBadge(row.querySelector('[data-field="state"] [data-badge]'), m.state, m.state_kind);
          setField(row, "last_poll", m.last_poll || "never");
          setField(row, "last_poll_ago", m.last_poll_ago);
          setField(row, "where", m.connected ? m.node + " \\u00b7 " + m.remote : "");
        }
        if (summary) summary.textContent = connected + " of " + data.machines.length + " connected";
        machines.dataset.updated = String(Date.now());
      } catch (err) {
        // keep the last good view; try again on the next tick
      }
      setTimeout(refresh, every);
    };
    setTimeout(refresh, Math.min(every, 1000));
  }

  const log = document.getElementById("task-log");
  if (log) {
    let after = Number(log.dataset.after) || 0;
    const lineOf = (line) => {
      const row = document.createElement("div");
      row.className = "line cat-" + (/^[A-Za-z]+$/.test(line.category) ? line.category : "Info");
      row.dataset.seq = String(line.seq);
      for (const [cls, text] of [["t", line.time], ["m", line.machine], ["x", line.text]]) {
        const span = document.createElement("span");
        span.className = cls;
        span.textContent = text;
        row.appendChild(span);
      }
      return row;
    };
    const showTask = (task) => {
      setBadge(document.querySelector("#task-state [data-badge]"), task.state, task.state_kind);
      for (const [id, text] of [["task-started", task.started],
                                ["task-completed", task.completed_time],
                                ["task-duration", task.duration]]) {
        const el = document.getElementById(id);
        if (el) el.textContent = text;
      }
      const error = document.getElementById("task-error");
      if (error) {
        error.textContent = task.error;
        error.hidden = !task.error;
      }
    };
    const showActivities = (activities) => {
      for (const a of activities) {
        const row = document.querySelector('#activities tr[data-machine-id="' +
                                           CSS.escape(a.machine_id) + '"]');
        if (!row) continue;
        setBadge(row.querySelector('[data-field="status"] [data-badge]'), a.status, a.status_kind);
        setField(row, "exit_code", a.exit_code === null ? "" : String(a.exit_code));
      }
    };
    const step = async () => {
      let delay = 1000;
      let done = false;
      try {
        const data = await getJson(log.dataset.source + "?after=" + after);
        const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
        for (const line of data.lines) {
          log.appendChild(lineOf(line));
          after = line.seq;
        }
        log.dataset.after = String(after);
        if (atBottom) log.scrollTop = log.scrollHeight;
        showTask(data.task);
        showActivities(data.activities);
        if (data.more) delay = 0;
        done = data.task.completed && !data.more;
      } catch (err) {
        delay = 3000;
      }
      if (done) {
        log.dataset.completed = "true";
        const cancel = document.getElementById("cancel-form");
        if (cancel) cancel.remove();
      } else {
        setTimeout(step, delay);
      }
    };
    if (log.dataset.completed !== "true") setTimeout(step, 300);
  }
})();
"""


@dataclass(frozen=True)
class StaticFile:
    content_type: str
    body: bytes

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:32] + '"'


STATIC_FILES: dict[str, StaticFile] = {
    "portal.css": StaticFile("text/css; charset=utf-8", CSS.encode("utf-8")),
    "portal.js": StaticFile("text/javascript; charset=utf-8", JS.encode("utf-8")),
}
