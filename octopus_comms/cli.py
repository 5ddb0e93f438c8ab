"""`octopus-comms`: the server's command line (typer), in the manner of `Octopus.Server.exe`.

Thin: each command opens the home (`--home DIR`, else $OCTOPUS_COMMS_HOME, else the per-user or
root default), calls the store/settings/auth modules and prints. Option names are
case-insensitive like Octopus.Server.exe (`--commsListenWebSocket` = `--commslistenwebsocket`),
and `--opt=value` and `--opt value` both work. Failures are one line on stderr and exit 1;
no traceback reaches the user.

Extending (the serving commands live elsewhere): add commands to `app` (or a sub-app) with the
shared `HomeOption`, open the home with `open_store(home)` / `load_settings(resolve(home))`, and
raise `CliFailure("message")` for a one-line error. `main()` is the console-script entry point.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from octopus_comms import auth
from octopus_comms.home import HomeError, ensure_home, resolve_home
from octopus_comms.settings import (ServerSettings, SettingsError, load_settings,
                                    parse_prefix_list, save_settings, validate_comms_prefix,
                                    validate_web_prefix)
from octopus_comms.store import NotFound, Store, StoreError, ValidationFailed

PROG = "octopus-comms"
T = TypeVar("T")


class CliFailure(Exception):
    """A failure to report as one line on stderr (exit status 1)."""


def _preformatted(text: str) -> str:
    """Mark every paragraph so the help prints as written (no re-wrapping)."""
    return "\n\n".join("\b\n" + block for block in text.split("\n\n"))


def _lower(token: str) -> str:
    return token.lower()


CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "token_normalize_func": _lower}

ROOT_HELP = _preformatted(
    "The Octopus comms server: polling Tentacles over WebSockets, and the REST API their\n"
    "`register-with` uses. These commands manage its home directory (comms.db, server.json).\n\n"
    "Every command takes --home DIR (else $OCTOPUS_COMMS_HOME, else\n"
    "~/.local/state/octopus-comms, or /var/lib/octopus-comms for root). Options are\n"
    "case-insensitive, as with Octopus.Server.exe.\n\n"
    "Examples:\n"
    "  octopus-comms configure --commsListenWebSocket https://+:8443/OctopusComms\n"
    "  octopus-comms environment create Production\n"
    "  octopus-comms apikey create --name register-tentacles\n"
    "  octopus-comms machine list")

app = typer.Typer(name=PROG, help=ROOT_HELP, add_completion=False, no_args_is_help=True,
                  rich_markup_mode=None, pretty_exceptions_enable=False,
                  context_settings=CONTEXT_SETTINGS)

HomeOption = Annotated[str | None, typer.Option(
    "--home", metavar="DIR",
    help="Server home directory (comms.db, server.json).", show_default=False)]


def home_dir(home: str | None) -> Path:
    """The resolved home directory, created if missing."""
    return ensure_home(resolve_home(home))


@contextmanager
def open_store(home: str | None) -> Iterator[Store]:
    store = Store.open(home_dir(home))
    try:
        yield store
    finally:
        store.close()


def run(body: Callable[[], T]) -> T:
    """Run a command body, turning every expected failure into one line on stderr, exit 1."""
    try:
        return body()
    except (CliFailure, HomeError, StoreError, SettingsError, NotFound) as exc:
        message = str(exc)
    except ValidationFailed as exc:
        message = " ".join(exc.errors)
    typer.echo(f"{PROG}: {message}", err=True)
    raise typer.Exit(1)


def _table(headings: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headings)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    typer.echo(line(headings))
    typer.echo(line(["-" * w for w in widths]))
    for row in rows:
        typer.echo(line(row))


def _sub_app(name: str, help_text: str, short: str) -> typer.Typer:
    sub = typer.Typer(help=_preformatted(help_text), no_args_is_help=True, rich_markup_mode=None,
                      context_settings=CONTEXT_SETTINGS)
    app.add_typer(sub, name=name, short_help=short)
    return sub


# ----------------------------------------------------------------------------- configure

@app.command("configure", short_help="Set the comms WebSocket and web listen prefixes.",
             help=_preformatted(
                 "Configure the server like `Octopus.Server.exe configure`. An empty\n"
                 "--commsListenWebSocket turns the polling WebSocket listener off. Without\n"
                 "options, shows the current configuration.\n\n"
                 "Examples:\n"
                 "  octopus-comms configure --commsListenWebSocket https://+:8443/OctopusComms\n"
                 "  octopus-comms configure --webListenPrefixes "
                 "https://+:8443/api/,https://+:8443/app/\n"
                 "  octopus-comms configure --commsListenWebSocket=\"\"   # listener off"))
def _configure(
        home: HomeOption = None,
        comms: Annotated[str | None, typer.Option(
            "--commsListenWebSocket", metavar="PREFIX",
            help="HTTP.sys-style prefix for polling Tentacles, e.g. "
                 "https://+:443/OctopusComms (empty: off).", show_default=False)] = None,
        web: Annotated[str | None, typer.Option(
            "--webListenPrefixes", metavar="PREFIXES",
            help="Comma-separated prefixes for the REST API and portal.",
            show_default=False)] = None) -> None:
    def body() -> None:
        directory = home_dir(home)
        settings = load_settings(directory)
        if comms is None and web is None:
            _show_settings(settings)
            return
        updated = settings
        if comms is not None:
            updated = replace(updated, comms_listen_websocket=parse_prefix_list(
                comms, validate_comms_prefix))
        if web is not None:
            updated = replace(updated, web_listen_prefixes=parse_prefix_list(
                web, validate_web_prefix))
        save_settings(directory, updated)
        if comms is not None:
            if updated.comms_listen_websocket:
                typer.echo("Polling WebSocket listener set to: "
                           + ", ".join(updated.comms_listen_websocket))
            else:
                typer.echo("Polling WebSocket listener disabled")
        if web is not None:
            typer.echo("Web listen prefixes set to: "
                       + (", ".join(updated.web_listen_prefixes) or "(none)"))
        typer.echo("These changes require a restart of the server.")
    run(body)


def _show_settings(settings: ServerSettings) -> None:
    typer.echo("Comms WebSocket listen : "
               + (", ".join(settings.comms_listen_websocket) or "(disabled)"))
    typer.echo("Web listen prefixes    : " + (", ".join(settings.web_listen_prefixes)
                                              or "(none)"))
    if settings.api_url:
        typer.echo(f"API address            : {settings.api_url}")
    if settings.api_thumbprint:
        typer.echo(f"API certificate        : {settings.api_thumbprint}")


# ----------------------------------------------------------------------------- apikey

apikey_app = _sub_app("apikey", "API keys for the REST API (X-Octopus-ApiKey).\n\n"
                      "Examples:\n"
                      "  octopus-comms apikey create --name register-tentacles\n"
                      "  octopus-comms apikey list\n"
                      "  octopus-comms apikey delete APIKeys-1",
                      "API keys: create, list, delete.")


@apikey_app.command("create", short_help="Create an API key; the key is the last line.",
                    help=_preformatted(
                        "Create an API key for a user (default: the built-in admin). The key\n"
                        "is printed once, as the last line, and never stored in clear.\n\n"
                        "Examples:\n"
                        "  octopus-comms apikey create --name register-tentacles\n"
                        "  KEY=$(octopus-comms apikey create --name ci --user ci | tail -n 1)"))
def _apikey_create(
        name: Annotated[str, typer.Option("--name", metavar="PURPOSE",
                                          help="What the key is for.")],
        user: Annotated[str | None, typer.Option(
            "--user", metavar="USERNAME", help="Owner (username or Users-N); default admin.",
            show_default=False)] = None,
        home: HomeOption = None) -> None:
    def body() -> None:
        with open_store(home) as store:
            owner_id = None
            if user is not None:
                owner = store.find_user(user)
                if owner is None:
                    raise CliFailure(f"no user named {user!r}")
                owner_id = owner.id
            record, key = auth.create_api_key(store, name, owner_id)
            owner_record = store.get_user(record.user_id)
        typer.echo(f"Created API key {record.id} ({record.name}) for user "
                   f"{owner_record.username} ({owner_record.id}).")
        typer.echo("Copy the key now; it cannot be shown again:")
        typer.echo(key)
    run(body)


@apikey_app.command("list", short_help="List API keys (never the keys themselves).",
                    help=_preformatted("List API keys: id, purpose, owner, created.\n\n"
                                       "Example:\n  octopus-comms apikey list"))
def _apikey_list(home: HomeOption = None) -> None:
    def body() -> None:
        with open_store(home) as store:
            keys = store.list_api_keys()
            users = {u.id: u.username for u in store.list_users()}
        if not keys:
            typer.echo("No API keys.")
            return
        _table(["Id", "Purpose", "User", "Created", "Starts with"],
               [[k.id, k.name, users.get(k.user_id, k.user_id),
                 f"{k.created:%Y-%m-%d %H:%M:%S}", f"API-{k.prefix}…"] for k in keys])
    run(body)


@apikey_app.command("delete", short_help="Revoke an API key.",
                    help=_preformatted("Revoke an API key; requests using it fail at once.\n\n"
                                       "Example:\n  octopus-comms apikey delete APIKeys-1"))
def _apikey_delete(key_id: Annotated[str, typer.Argument(metavar="APIKEY-ID")],
                   home: HomeOption = None) -> None:
    def body() -> None:
        with open_store(home) as store:
            record = store.delete_api_key(key_id)
        typer.echo(f"Deleted API key {record.id} ({record.name}).")
    run(body)


# ----------------------------------------------------------------------------- user

user_app = _sub_app("user", "Users of the REST API and the web portal.\n\n"
                    "Examples:\n"
                    "  printf '%s\\n' \"$PASSWORD\" | octopus-comms user create --username alice "
                    "--password-stdin\n"
                    "  octopus-comms user list",
                    "Users: create, list, set-password.")


def _read_password() -> str:
    line = sys.stdin.readline()
    password = line.rstrip("\r\n")
    if not password:
        raise CliFailure("no password on standard input")
    return password


@user_app.command("create", short_help="Create a user.", help=_preformatted(
    "Create a user; --password-stdin reads the password from the first line of stdin.\n\n"
    "Examples:\n"
    "  octopus-comms user create --username ci --display-name \"Build server\"\n"
    "  printf '%s\\n' \"$PASSWORD\" | octopus-comms user create --username alice "
    "--password-stdin --admin"))
def _user_create(
        username: Annotated[str, typer.Option("--username", metavar="NAME",
                                              help="Login name.")],
        display_name: Annotated[str | None, typer.Option(
            "--display-name", metavar="TEXT", help="Display name (default: the username).",
            show_default=False)] = None,
        password_stdin: Annotated[bool, typer.Option(
            "--password-stdin", help="Read the password from standard input.")] = False,
        admin: Annotated[bool, typer.Option("--admin", help="Make an administrator.")] = False,
        home: HomeOption = None) -> None:
    def body() -> None:
        password = _read_password() if password_stdin else None
        with open_store(home) as store:
            user = auth.create_user(store, username, display_name, password, admin)
        typer.echo(f"Created user {user.username} ({user.id}).")
    run(body)


@user_app.command("list", short_help="List users.", help=_preformatted(
    "List users.\n\nExample:\n  octopus-comms user list"))
def _user_list(home: HomeOption = None) -> None:
    def body() -> None:
        with open_store(home) as store:
            users = store.list_users()
        _table(["Id", "Username", "Display name", "Admin", "Password"],
               [[u.id, u.username, u.display_name, "Yes" if u.is_admin else "No",
                 "set" if u.password_hash else "-"] for u in users])
    run(body)


@user_app.command("set-password", short_help="Set a user's password from stdin.",
                  help=_preformatted(
                      "Set a user's password, read from the first line of standard input.\n\n"
                      "Example:\n  printf '%s\\n' \"$PASSWORD\" | octopus-comms user "
                      "set-password --username admin"))
def _user_set_password(
        username: Annotated[str, typer.Option("--username", metavar="NAME",
                                              help="Login name or Users-N.")],
        home: HomeOption = None) -> None:
    def body() -> None:
        password = _read_password()
        with open_store(home) as store:
            user = store.find_user(username)
            if user is None:
                raise CliFailure(f"no user named {username!r}")
            auth.set_password(store, user.id, password)
        typer.echo(f"Password set for {user.username} ({user.id}).")
    run(body)


# ----------------------------------------------------------------------------- environment

environment_app = _sub_app("environment", "Environments deployment targets belong to.\n\n"
                           "Examples:\n"
                           "  octopus-comms environment create Production\n"
                           "  octopus-comms environment list\n"
                           "  octopus-comms environment delete Production",
                           "Environments: create, list, delete.")


@environment_app.command("create", short_help="Create an environment.", help=_preformatted(
    "Create an environment in the default space.\n\n"
    "Examples:\n"
    "  octopus-comms environment create Production\n"
    "  octopus-comms environment create \"Test 2\" --description \"Second test\""))
def _environment_create(
        name: Annotated[str, typer.Argument(metavar="NAME")],
        description: Annotated[str, typer.Option("--description", metavar="TEXT",
                                                 help="Description.")] = "",
        home: HomeOption = None) -> None:
    def body() -> None:
        with open_store(home) as store:
            env = store.create_environment(name, description)
        typer.echo(f"Created environment {env.id} ({env.name}).")
    run(body)


@environment_app.command("list", short_help="List environments.", help=_preformatted(
    "List environments with how many deployment targets each has.\n\n"
    "Example:\n  octopus-comms environment list"))
def _environment_list(home: HomeOption = None) -> None:
    def body() -> None:
        with open_store(home) as store:
            envs = store.list_environments(None)
            machines = store.list_machines(None)
        if not envs:
            typer.echo("No environments.")
            return
        _table(["Id", "Name", "Slug", "Targets", "Description"],
               [[e.id, e.name, e.slug,
                 str(sum(1 for m in machines if e.id in m.environment_ids)), e.description]
                for e in envs])
    run(body)


@environment_app.command("delete", short_help="Delete an unused environment.",
                         help=_preformatted(
                             "Delete an environment (by name, slug or id); refused while\n"
                             "deployment targets belong to it.\n\n"
                             "Example:\n  octopus-comms environment delete Production"))
def _environment_delete(name: Annotated[str, typer.Argument(metavar="NAME|ID")],
                        home: HomeOption = None) -> None:
    def body() -> None:
        with open_store(home) as store:
            env = store.delete_environment(store.find_environment(name).id)
        typer.echo(f"Deleted environment {env.id} ({env.name}).")
    run(body)


# ----------------------------------------------------------------------------- machine

machine_app = _sub_app("machine", "Deployment targets (registered Tentacles).\n\n"
                       "Examples:\n"
                       "  octopus-comms machine list\n"
                       "  octopus-comms machine delete web01",
                       "Deployment targets: list, delete.")


@machine_app.command("list", short_help="List deployment targets.", help=_preformatted(
    "List deployment targets: id, name, environments, roles, the Tentacle's certificate\n"
    "thumbprint and its polling subscription (or listening URL).\n\n"
    "Example:\n  octopus-comms machine list"))
def _machine_list(home: HomeOption = None) -> None:
    def body() -> None:
        with open_store(home) as store:
            machines = store.list_machines(None)
            env_names = {e.id: e.name for e in store.list_environments(None)}
        if not machines:
            typer.echo("No deployment targets.")
            return
        _table(["Id", "Name", "Environments", "Roles", "Thumbprint", "Subscription"],
               [[m.id, m.name + (" (disabled)" if m.is_disabled else ""),
                 ", ".join(env_names.get(e, e) for e in m.environment_ids),
                 ", ".join(m.roles), m.thumbprint, m.uri] for m in machines])
    run(body)


@machine_app.command("delete", short_help="Delete a deployment target.", help=_preformatted(
    "Delete a deployment target by name or id; its Tentacle is no longer trusted.\n\n"
    "Examples:\n  octopus-comms machine delete web01\n  octopus-comms machine delete Machines-3"))
def _machine_delete(name: Annotated[str, typer.Argument(metavar="NAME|ID")],
                    home: HomeOption = None) -> None:
    def body() -> None:
        with open_store(home) as store:
            machine = store.delete_machine(store.find_machine(name).id)
        typer.echo(f"Deleted deployment target {machine.id} ({machine.name}).")
    run(body)


# ----------------------------------------------------------------------------- serve

@app.command("serve", short_help="Serve the comms endpoint and the REST API.",
             help=_preformatted(
                 "Register the commsListenWebSocket prefix and the web/API prefixes\n"
                 "(https://+:PORT/api/ plus webListenPrefixes) with the running front door\n"
                 "(`httpsys-emu serve`) over its control socket, and serve them until SIGTERM.\n"
                 "With --embedded, run the front door in this process instead (same state\n"
                 "directory, same rules).\n\n"
                 "A second server node (high availability) shares the home (the database)\n"
                 "and listens on its own prefix with --node and --commsListenWebSocket; each\n"
                 "node keeps its own queue and agents poll every node (tentacle poll-server).\n\n"
                 "Examples:\n"
                 "  octopus-comms serve --home /var/lib/octopus-comms\n"
                 "  octopus-comms serve --embedded --state-dir ./state --home ./home\n"
                 "  octopus-comms serve --node node2 --state-dir ./state2 \\\n"
                 "      --commsListenWebSocket https://+:8444/OctopusComms"))
def _serve(home: HomeOption = None,
           node: Annotated[str | None, typer.Option(
               "--node", metavar="NAME", help="This server node's name (default: host name).",
               show_default=False)] = None,
           comms: Annotated[str | None, typer.Option(
               "--commsListenWebSocket", metavar="PREFIX",
               help="Listen on this prefix instead of the configured one (HA nodes).",
               show_default=False)] = None,
           metrics_port: Annotated[int | None, typer.Option(
               "--metrics-port", metavar="PORT",
               help="Prometheus metrics at http://127.0.0.1:PORT/metrics (loopback only).",
               show_default=False)] = None,
           queue_timeout: Annotated[str, typer.Option(
               "--pollingRequestQueueTimeout", metavar="HH:MM:SS",
               help="How long a request waits for an agent to collect it before it fails "
                    "(safe to retry).")] = "00:02:00",
           state_dir: Annotated[str | None, typer.Option(
               "--state-dir", metavar="DIR",
               help="The front door's state directory (as httpsys-emu --state-dir).")] = None,
           embedded: Annotated[bool, typer.Option(
               "--embedded", help="Run the front door in this process.")] = False) -> None:
    from httpsys_emu.statedir import StateDirError, ensure_state_dir, resolve_state_dir
    from octopus_comms.server import ServeError, serve

    def body() -> None:
        try:
            state = ensure_state_dir(resolve_state_dir(state_dir))
        except StateDirError as exc:
            raise CliFailure(str(exc)) from None
        prefixes = (parse_prefix_list(comms, validate_comms_prefix) if comms is not None
                    else None)
        if prefixes is not None and not prefixes:
            raise CliFailure("--commsListenWebSocket needs a prefix here")
        from octopus_comms.halibut.timespan import parse_timespan
        try:
            collection = parse_timespan(queue_timeout).total_seconds()
        except ValueError:
            raise CliFailure(f"--pollingRequestQueueTimeout {queue_timeout!r} is not a "
                             "time span like 00:02:00") from None
        if collection <= 0:
            raise CliFailure("--pollingRequestQueueTimeout must be positive")
        try:
            serve(home_dir(home), state, embedded=embedded, node=node, comms_prefixes=prefixes,
                  collection_timeout=collection, metrics_port=metrics_port)
        except ServeError as exc:
            raise CliFailure(str(exc)) from None
    run(body)


# ----------------------------------------------------------------------------- script run

script_app = _sub_app("script", "Run ad hoc scripts on deployment targets (the script console).",
                      "Run ad hoc scripts on deployment targets.")


@script_app.command("run", short_help="Run a script on machines and stream its log.",
                    help=_preformatted(
                        "Create an AdHocScript task through the REST API, stream its log as it\n"
                        "runs, and exit with the script's exit code. By default the API address,\n"
                        "its certificate and a temporary API key come from the server's home;\n"
                        "--server and --apikey talk to any Octopus Server instead.\n\n"
                        "Examples:\n"
                        "  octopus-comms script run --environment Dev --role web --body 'uname -a'\n"
                        "  octopus-comms script run --machine web01 --file deploy.sh\n"
                        "  octopus-comms script run --server https://octo:8443 --apikey API-... \\\n"
                        "      --environment Production --body 'df -h'"))
def _script_run(
        environment: Annotated[list[str] | None, typer.Option(
            "--environment", metavar="NAME", help="Target environment (repeatable).")] = None,
        role: Annotated[list[str] | None, typer.Option(
            "--role", metavar="ROLE", help="Target role (repeatable).")] = None,
        machine: Annotated[list[str] | None, typer.Option(
            "--machine", metavar="NAME", help="Target machine (repeatable).")] = None,
        script_body: Annotated[str | None, typer.Option(
            "--body", metavar="TEXT", help="The script text.")] = None,
        file: Annotated[Path | None, typer.Option(
            "--file", metavar="PATH", help="Read the script from a file.")] = None,
        syntax: Annotated[str, typer.Option(
            "--syntax", metavar="Bash|PowerShell", help="Script syntax.")] = "Bash",
        server: Annotated[str | None, typer.Option(
            "--server", metavar="URL", help="Octopus Server URL (else from the home).")] = None,
        apikey: Annotated[str | None, typer.Option(
            "--apikey", metavar="API-KEY", help="API key for --server.")] = None,
        home: HomeOption = None) -> None:
    import trio as _trio

    from octopus_comms.script_run import (ScriptRequest, ScriptRunError, client_from_home,
                                          run_script)
    from tentacle import TentacleError
    from tentacle.octopus_api import OctopusClient

    def body() -> int:
        if (script_body is None) == (file is None):
            raise CliFailure("give the script with exactly one of --body or --file")
        text = script_body if script_body is not None else _read_file(file)
        if syntax.lower() not in ("bash", "powershell"):
            raise CliFailure("--syntax must be Bash or PowerShell")
        request = ScriptRequest(body=text, syntax="Bash" if syntax.lower() == "bash"
                                else "PowerShell", environments=tuple(environment or ()),
                                roles=tuple(role or ()), machines=tuple(machine or ()))
        cleanup = None
        try:
            if server:
                if not apikey:
                    raise CliFailure("--server needs --apikey")
                client = OctopusClient(server, apikey)
            else:
                client, cleanup = client_from_home(home_dir(home))
            return _trio.run(lambda: run_script(client, request,
                                                announce=lambda m: typer.echo(m, err=True)))
        except (ScriptRunError, TentacleError) as exc:
            raise CliFailure(str(exc)) from None
        finally:
            if cleanup is not None:
                cleanup()
    raise typer.Exit(run(body))


def _read_file(path: Path | None) -> str:
    assert path is not None
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CliFailure(f"cannot read {path}: {exc.strerror}") from None


# ----------------------------------------------------------------------------- entry point

def main() -> None:
    """Console-script entry point: run the app; never let a traceback reach the user."""
    from httpsys_emu.climain import run_console_app
    run_console_app(app, PROG)

if __name__ == "__main__":
    main()
