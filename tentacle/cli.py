"""`tentacle`: the command line of the real Octopus Tentacle, for this Linux polling agent.

Why hand-written dispatch: Tentacle's grammar is not POSIX (see `options`), its messages and exit
codes are part of what scripts rely on (1 for a controlled failure, 2 for an unknown command, 100
for anything unexpected), and no traceback may reach the user. Every command takes `--instance`
(default: the `Tentacle` instance, else the only one) or `--config PATH`, plus Tentacle's common
switches (`--help`; `--noconsolelogging`, which `agent` honours; and the ignored `--console`,
`--nologo`, `--noninteractive`). The work is done in `config`, `instances`, `certificate`,
`registration` and `service`; this module parses, calls and prints.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from tentacle import TentacleError, __version__
from tentacle.options import (
    OptionSpec,
    ParsedOptions,
    format_option_help,
    parse_options,
    switch,
    value_option,
)

PROG = "tentacle"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_UNKNOWN_COMMAND = 2
EXIT_NOT_RUNNING = 3
EXIT_UNEXPECTED = 100
RESTART_WARNING = "These changes require a restart of the Tentacle."


class Output:
    """Where messages go: stdout for results and progress, stderr for errors."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def error(self, text: str) -> None:
        print(text, file=self.err, flush=True)


Handler = Callable[[ParsedOptions, Output], int]


@dataclass(frozen=True)
class Command:
    name: str
    description: str
    options: tuple[OptionSpec, ...]
    example: str
    handler: Handler
    aliases: tuple[str, ...] = ()
    instance_options: bool = True


INSTANCE_OPTIONS = (
    value_option("instance", description="Name of the instance to use (default: Tentacle)"),
    value_option("config", description="Configuration file to use, instead of an instance"),
)
COMMON_OPTIONS = (
    switch("help", description="Show detailed help for this command"),
    switch("console", hidden=True),
    switch("nologo", hidden=True),
    switch("noninteractive", hidden=True),
    switch("noconsolelogging", hidden=True),
)
FORMAT_OPTION = value_option("format", description="The format of the output (text,json). "
                                                   "Defaults to text.")


def _config_path(options: ParsedOptions) -> Path:
    from tentacle.config import resolve_config
    return resolve_config(options.get("instance"), options.get("config"))


def _instance(options: ParsedOptions) -> str | None:
    """The instance name to stamp on a config loaded by `--config` (None: infer it)."""
    return options.get("instance") if not options.get("config") else None


def _format(options: ParsedOptions) -> str:
    value = (options.get("format") or "text").strip().lower()
    if value not in ("text", "json"):
        raise TentacleError(f"The format '{options.get('format')}' is not supported. Try text or "
                            "json.")
    return value


def _int_option(options: ParsedOptions, name: str, low: int, high: int) -> int | None:
    text = options.get(name)
    if text is None:
        return None
    try:
        value = int(text.strip())
    except ValueError:
        raise TentacleError(f"The value '{text}' of --{name} is not a whole number.") from None
    if not low <= value <= high:
        raise TentacleError(f"The value of --{name} must be between {low} and {high}, but was "
                            f"{value}.")
    return value


# ------------------------------------------------------------------ instance commands

def cmd_create_instance(options: ParsedOptions, output: Output) -> int:
    from tentacle.config import load_config, new_config, save_config, update_config
    from tentacle.instances import (
        DEFAULT_INSTANCE,
        InstanceRecord,
        InstanceRegistry,
        default_config_path,
        validate_instance_name,
    )
    name = validate_instance_name(options.get("instance") or DEFAULT_INSTANCE)
    given = options.get("config")
    config_path = (Path(os.path.abspath(os.path.expanduser(given))) if given
                   else default_config_path(name))
    home_text = options.get("home")
    home = Path(os.path.abspath(os.path.expanduser(home_text))) if home_text else config_path.parent
    registry = InstanceRegistry()
    existing = registry.find(name)
    if existing is not None and existing.config_path != config_path:
        output.say(f"Instance {existing.name} used the configuration {existing.config_path}; it "
                   f"now uses {config_path}.")
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not config_path.exists():
        output.say(f"Creating empty configuration file: {config_path}")
        save_config(new_config(name, config_path, home))
    else:
        output.say(f"Configuration file at {config_path} already exists.")
        load_config(config_path, instance=name, tolerate_bad_certificate=True)
    output.say(f"Setting home directory to: {home}")
    update_config(config_path, lambda c: replace(c, home=home), instance=name,
                  tolerate_bad_certificate=True)
    registry.register(InstanceRecord(name=existing.name if existing else name,
                                     config_path=config_path))
    output.say(f"Saving instance: {existing.name if existing else name}")
    return EXIT_OK


def cmd_delete_instance(options: ParsedOptions, output: Output) -> int:
    from tentacle.instances import InstanceError, InstanceRegistry
    registry = InstanceRegistry()
    config = options.get("config")
    if config and not options.get("instance"):
        record = registry.find_by_config_path(Path(os.path.abspath(os.path.expanduser(config))))
        if record is None:
            raise InstanceError(f"No instance uses the configuration file {config}.")
    else:
        record = registry.require(options.get("instance"))
    registry.delete(record.name)
    output.say(f"Deleted instance: {record.name}")
    output.say(f"The configuration file {record.config_path} and the home directory were left in "
               "place.")
    return EXIT_OK


def cmd_list_instances(options: ParsedOptions, output: Output) -> int:
    from tentacle.instances import InstanceRegistry
    chosen = _format(options)
    records = InstanceRegistry().list()
    if chosen == "json":
        output.say(json.dumps([{"InstanceName": r.name, "ConfigurationFilePath": str(r.config_path)}
                               for r in records], indent=2, ensure_ascii=False))
    elif records:
        for record in records:
            output.say(f"Instance '{record.name}' uses configuration '{record.config_path}'.")
    else:
        output.say("No instances installed")
    return EXIT_OK


# ------------------------------------------------------------------ certificate commands

def cmd_new_certificate(options: ParsedOptions, output: Output) -> int:
    from tentacle.certificate import new_certificate
    from tentacle.config import update_config
    path = _config_path(options)
    outcome: dict[str, Any] = {}

    def change(config: Any) -> Any:
        if options.flag("if-blank") and config.certificate_pem is not None:
            outcome["kept"] = True
            return config
        fresh = new_certificate()
        outcome["new"] = fresh
        outcome["registered"] = len([s for s in config.trusted_servers if s.subscription_id])
        extra = {k: v for k, v in config.extra.items() if k != "Tentacle.Certificate"}
        return replace(config, certificate_pem=fresh.cert_pem, private_key_pem=fresh.key_pem,
                       thumbprint=fresh.thumbprint, extra=extra)

    update_config(path, change, instance=_instance(options), tolerate_bad_certificate=True)
    if outcome.get("kept"):
        output.say("A certificate already exists, no changes will be applied.")
        return EXIT_OK
    output.say("A new certificate has been generated and installed. Thumbprint:")
    output.say(outcome["new"].thumbprint)
    if outcome.get("registered"):
        output.say("The Octopus Servers this Tentacle is registered with still expect the old "
                   "certificate: register it again (register-with --force) so they trust the new "
                   "one.")
    output.say(RESTART_WARNING)
    return EXIT_OK


def cmd_show_thumbprint(options: ParsedOptions, output: Output) -> int:
    from tentacle.config import load_config
    chosen = _format(options)
    config = load_config(_config_path(options), instance=_instance(options))
    if not config.thumbprint:
        raise TentacleError("No certificate has been generated for this Tentacle. Please run the "
                            "new-certificate command first.")
    if chosen == "json":
        content = json.dumps({"Thumbprint": config.thumbprint}, separators=(",", ":"))
    else:
        content = f"The thumbprint of this Tentacle is: {config.thumbprint}"
    export = options.get("export-file")
    if export:
        try:
            Path(export).write_text(content, encoding="ascii")
        except OSError as exc:
            raise TentacleError(f"Unable to write {export}: {exc.strerror}") from None
        output.say(f"The thumbprint has been written to {export}.")
    else:
        output.say(content)
    return EXIT_OK


def configuration_document(config: Any) -> dict[str, Any]:
    """show-configuration's JSON: the settings as a hierarchy (`Tentacle.Services.PortNumber` →
    Tentacle → Services → PortNumber), without the certificate itself."""
    listen_ip = config.extra.get("Tentacle.Services.ListenIP") or None
    # Keys sorted at every level of the hierarchy (a SortedDictionary in the real one); the
    # trusted server entries keep their own member order.
    return {
        "Octopus": {"Home": str(config.home)},
        "Tentacle": {
            "CertificateThumbprint": config.thumbprint,
            "Communication": {
                "PollingConnectionCount": config.polling_connection_count,
                "TrustedOctopusServers": [s.to_json() for s in config.trusted_servers],
            },
            "Deployment": {"ApplicationDirectory": str(config.app_dir)},
            "Services": {"ListenIP": listen_ip, "NoListen": config.no_listen,
                         "PortNumber": config.listen_port},
        },
    }


def cmd_show_configuration(options: ParsedOptions, output: Output) -> int:
    from tentacle.config import load_config
    config = load_config(_config_path(options), instance=_instance(options),
                         tolerate_bad_certificate=True)
    content = json.dumps(configuration_document(config), indent=2, ensure_ascii=False)
    target = options.get("file")
    if target:
        try:
            Path(target).write_text(content + "\n", encoding="utf-8")
        except OSError as exc:
            raise TentacleError(f"Unable to write {target}: {exc.strerror}") from None
        output.say(f"The configuration has been written to {target}.")
    else:
        output.say(content)
    return EXIT_OK


# ------------------------------------------------------------------ configure

def cmd_configure(options: ParsedOptions, output: Output) -> int:
    from tentacle.certificate import normalize_thumbprint
    from tentacle.config import (
        COMMUNICATION_STYLE_ACTIVE,
        COMMUNICATION_STYLE_PASSIVE,
        TrustedServer,
        add_or_update_trusted_server,
        remove_trusted_thumbprint,
        update_config,
    )
    from tentacle.options import parse_bool_word

    def thumbprints(name: str) -> list[str]:
        result = []
        for text in options.get_all(name):
            value = normalize_thumbprint(text)
            if value is None:
                raise TentacleError(f"'{text}' is not a certificate thumbprint (40 hexadecimal "
                                    f"digits), given with --{name}.")
            result.append(value)
        return result

    to_add, to_remove = thumbprints("trust"), thumbprints("remove-trust")
    port = _int_option(options, "port", 1, 65535)
    count = options.get("pollingConnectionCount")
    if count is not None:
        try:
            polling_count = int(count.strip())
        except ValueError:
            raise TentacleError(f"The polling connection count '{count}' is not a valid whole "
                                "number. Specify a positive integer, e.g. "
                                "--pollingConnectionCount=5") from None
        if polling_count < 1:
            raise TentacleError("The polling connection count must be greater than 0, but was "
                                f"{polling_count}.")
    messages: list[str] = []

    def change(config: Any) -> Any:
        servers = config.trusted_servers
        if options.flag("reset-trust"):
            messages.append("Removing all trusted Octopus Servers...")
            servers = ()
        if to_remove:
            messages.append(f"Removing {len(to_remove)} trusted Octopus Servers")
            for thumbprint in to_remove:
                servers = remove_trusted_thumbprint(servers, thumbprint)
        if to_add:
            messages.append(f"Adding {len(to_add)} trusted Octopus Servers")
            for thumbprint in to_add:
                servers = add_or_update_trusted_server(servers, TrustedServer(
                    thumbprint=thumbprint, communication_style=COMMUNICATION_STYLE_PASSIVE,
                    address=None, squid=None, subscription_id=None))
        config = replace(config, trusted_servers=servers)
        for name, value in options.occurrences:  # the rest, in the order given
            if name == "home":
                home = Path(os.path.abspath(os.path.expanduser(value)))
                home.mkdir(parents=True, exist_ok=True, mode=0o700)
                config = replace(config, home=home)
                messages.append(f"Home directory set to: {home}")
            elif name == "app":
                app = Path(os.path.abspath(os.path.expanduser(value)))
                app.mkdir(parents=True, exist_ok=True)
                config = replace(config, app_dir=app)
                messages.append(f"Application directory set to: {app}")
            elif name == "port":
                config = replace(config, listen_port=port)
                messages.append(f"Services listen port: {port}")
            elif name == "noListen":
                no_listen = parse_bool_word(value) is True
                style = COMMUNICATION_STYLE_ACTIVE if no_listen else COMMUNICATION_STYLE_PASSIVE
                config = replace(config, no_listen=no_listen, trusted_servers=tuple(
                    replace(s, communication_style=style)
                    if s.thumbprint in to_add and s.address is None else s
                    for s in config.trusted_servers))
                messages.append("Tentacle will not listen on a port" if no_listen
                                else "Tentacle will listen on a TCP port")
            elif name == "listenIpAddress":
                extra = dict(config.extra)
                if value.strip().lower() == "any":
                    extra.pop("Tentacle.Services.ListenIP", None)
                    messages.append("Listen on any IP address")
                else:
                    import ipaddress
                    try:
                        parsed = ipaddress.ip_address(value.strip())
                    except ValueError:
                        raise TentacleError(f"'{value}' is not an IP address.") from None
                    extra["Tentacle.Services.ListenIP"] = str(parsed)
                    messages.append(f"Listen on IP address: {parsed}")
                config = replace(config, extra=extra)
            elif name == "pollingConnectionCount":
                config = replace(config, polling_connection_count=polling_count)
                messages.append(f"Polling connection count set to: {polling_count}")
        return config

    update_config(_config_path(options), change, instance=_instance(options),
                  tolerate_bad_certificate=True)
    for message in messages:
        output.say(message)
    if messages:
        output.say(RESTART_WARNING)
    else:
        output.say("Nothing to change: give at least one option (see tentacle configure --help).")
    return EXIT_OK


# ------------------------------------------------------------------ registration

def _endpoint(options: ParsedOptions) -> Any:
    from tentacle.registration import DEFAULT_SERVER_COMMS_PORT, ServerEndpointOptions
    if options.get("username") or options.get("password"):
        raise TentacleError("Signing in with a username and password is not supported: use an "
                            "API key (--apiKey).")
    port = _int_option(options, "server-comms-port", 1, 65535)
    return ServerEndpointOptions(server=options.get("server") or "",
                                 api_key=options.get("apiKey") or "",
                                 server_web_socket=options.get("server-web-socket"),
                                 server_comms_port=port or DEFAULT_SERVER_COMMS_PORT,
                                 server_comms_address=options.get("server-comms-address"))


def _report(result: Any, output: Output) -> None:
    output.say(f"Trusting the Octopus Server certificate {result.server_thumbprint} at "
               f"{result.address}")
    if not result.address.lower().startswith("wss://"):
        output.say(f"Warning: this agent polls over WebSockets only and will not poll "
                   f"{result.address}; register with --server-web-socket=wss://… instead.")
    output.say(f"Subscription id: {result.subscription_id}")
    if result.machine_id:
        verb = "updated" if result.updated_existing else "registered"
        output.say(f"Machine {result.machine_name} {verb} with id: {result.machine_id}")


def _restart_if_running(path: Path, options: ParsedOptions, output: Output) -> None:
    """halibut.md §5 step 7: a running agent is restarted so that it polls with the new trust."""
    from tentacle.config import load_config
    from tentacle.service import ServiceController
    controller = ServiceController(load_config(path, instance=_instance(options)), output.say)
    if controller.status().running:
        output.say("Restarting the Tentacle service so that it uses the new configuration")
        controller.restart()


def cmd_register_with(options: ParsedOptions, output: Output) -> int:
    import trio

    from tentacle.registration import RegisterOptions, default_machine_name, register_with
    if options.get("proxy"):
        raise TentacleError("Option --proxy can only be used with --comms-style=TentaclePassive.")
    request = RegisterOptions(
        endpoint=_endpoint(options), name=options.get("name") or default_machine_name(),
        environments=options.get_all("environment"), roles=options.get_all("role"),
        comms_style=options.get("comms-style") or "TentacleActive",
        subscription_id=options.get("server-subscription-id"), space=options.get("space"),
        policy=options.get("policy"), force=options.flag("force"))
    path = _config_path(options)
    result = trio.run(functools.partial(register_with, path, request, output.say,
                                        instance=_instance(options)))
    _report(result, output)
    _restart_if_running(path, options, output)
    return EXIT_OK


def cmd_poll_server(options: ParsedOptions, output: Output) -> int:
    import trio

    from tentacle.registration import poll_server
    endpoint = _endpoint(options)
    path = _config_path(options)
    result = trio.run(functools.partial(
        poll_server, path, endpoint, output.say,
        reuse_server_thumbprint=options.flag("reuse-server-thumbprint"),
        subscription_id=options.get("server-subscription-id"), instance=_instance(options)))
    _report(result, output)
    _restart_if_running(path, options, output)
    return EXIT_OK


# ------------------------------------------------------------------ service and agent

def cmd_service(options: ParsedOptions, output: Output) -> int:
    from tentacle.config import load_config
    from tentacle.service import ServiceController
    if options.get("username") or options.get("password"):
        raise TentacleError("Running the service as another user is not supported here: install "
                            "it as that user (a systemd user service).")
    actions = [a for a in ("restart", "stop", "uninstall", "install", "reconfigure", "start",
                           "status") if options.flag(a)]
    if not actions:
        raise TentacleError("Please specify what to do: --install, --uninstall, --start, --stop, "
                            "--restart or --status.")
    config = load_config(_config_path(options), instance=_instance(options),
                         tolerate_bad_certificate=True)
    controller = ServiceController(config, output.say)
    code = EXIT_OK
    for action in actions:
        if action == "reconfigure":
            controller.uninstall()
            controller.install()
        elif action == "status":
            status = controller.status()
            output.say(status.detail)
            code = EXIT_OK if status.running else EXIT_NOT_RUNNING
        else:
            getattr(controller, action)()
    return code


def cmd_agent(options: ParsedOptions, output: Output) -> int:
    from tentacle.config import load_config
    config = load_config(_config_path(options), instance=_instance(options))
    try:
        # imported only when needed; import_module honours sys.modules (tests swap it)
        runtime = importlib.import_module("tentacle.agent")
    except ImportError as exc:
        raise TentacleError(f"The agent runtime is not available in this installation "
                            f"({exc}).") from None
    import inspect

    import trio
    run_agent = runtime.run_agent
    extra: dict[str, Any] = {}
    parameters = inspect.signature(run_agent).parameters
    if "handle_signals" in parameters:  # SIGTERM/SIGINT stop it gracefully (we are the main thread)
        extra["handle_signals"] = True
    if options.flag("noconsolelogging") and "options" in parameters and hasattr(runtime,
                                                                                "AgentOptions"):
        extra["options"] = runtime.AgentOptions(log_stream=None)  # it still logs to its file
    try:
        trio.run(functools.partial(run_agent, config, **extra))
    except KeyboardInterrupt:
        output.say("Stopped.")
    return EXIT_OK


def cmd_version(options: ParsedOptions, output: Output) -> int:
    output.say(json.dumps({"InformationalVersion": __version__, "MajorMinorPatch": __version__},
                          indent=2) if _format(options) == "json" else __version__)
    return EXIT_OK


# ------------------------------------------------------------------ the command table

ENDPOINT_OPTIONS = (
    value_option("server", description="The Octopus Server - e.g., 'https://octopus'"),
    value_option("apiKey", description="Your API key; you can get this from the Octopus web "
                                       "portal"),
    value_option("u", "username", "user", description="Not supported: use --apiKey",
                 hidden=True),
    value_option("p", "password", description="Not supported: use --apiKey", hidden=True),
    value_option("server-web-socket", description="The address of the Octopus Server's WebSocket "
                                                  "endpoint, e.g. 'wss://example.com/OctopusComms'"),
    value_option("server-comms-port", description="Without --server-web-socket: the comms port "
                                                  "on the Octopus Server; the default is 10943"),
    value_option("server-comms-address", description="Without --server-web-socket: the full "
                                                     "comms address, e.g. https://octopus:10943"),
)

COMMANDS: tuple[Command, ...] = (
    Command("agent", "Runs the polling agent in the foreground until Ctrl+C or SIGTERM "
                     "('service --start' runs it in the background); it logs to "
                     "<home>/Logs/OctopusTentacle.txt and, unless --noconsolelogging, to the "
                     "console", (),
            "tentacle agent --instance Tentacle", cmd_agent, aliases=("run",)),
    Command("configure", "Sets Tentacle settings such as the home directory and trusted "
                         "thumbprints",
            (value_option("home", "homedir", description="Home directory"),
             value_option("app", "appdir", description="Default directory to deploy "
                                                       "applications to"),
             value_option("port", description="TCP port on which Tentacle should listen to "
                                              "connections"),
             switch("noListen", description="Suppress listening on a TCP port (polling "
                                            "Tentacles): --noListen, --noListen=True or "
                                            "--noListen False"),
             value_option("listenIpAddress", description="IP address on which Tentacle should "
                                                         "listen. Default: any"),
             value_option("pollingConnectionCount",
                          description="The number of polling connections this Tentacle should "
                                      "open to each Octopus Server it polls"),
             value_option("trust", description="The thumbprint of the Octopus Server to trust",
                          repeatable=True),
             value_option("remove-trust", description="The thumbprint of the Octopus Server to "
                                                      "remove from the trusted list",
                          repeatable=True),
             switch("reset-trust", description="Removes all trusted Octopus Servers (and with "
                                               "them the subscription ids)")),
            "tentacle configure --instance Tentacle --app /srv/octopus/Applications "
            "--noListen True --reset-trust", cmd_configure),
    Command("create-instance", "Registers a new instance of the Tentacle service",
            (value_option("home", description="[Optional] Path to the home directory - defaults "
                                              "to the same directory as the config file"),),
            "tentacle create-instance --instance Tentacle --config "
            "/etc/octopus/Tentacle/tentacle-Tentacle.config", cmd_create_instance),
    Command("delete-instance", "Deletes an instance of the Tentacle service (the configuration "
                               "file stays)", (),
            "tentacle delete-instance --instance Tentacle", cmd_delete_instance),
    Command("list-instances", "Lists all installed Tentacle instances", (FORMAT_OPTION,),
            "tentacle list-instances --format json", cmd_list_instances, instance_options=False),
    Command("new-certificate", "Creates and installs a new certificate for this Tentacle",
            (switch("b", "if-blank", description="Generates a new certificate only if there is "
                                                 "none"),),
            "tentacle new-certificate --instance Tentacle --if-blank", cmd_new_certificate),
    Command("poll-server", "Configures another node of an Octopus Server (HA) that this "
                           "Tentacle will poll, with the same subscription id",
            (*ENDPOINT_OPTIONS,
             switch("reuse-server-thumbprint", description="The node presents the certificate of "
                                                           "the server this Tentacle is "
                                                           "registered with"),
             value_option("server-subscription-id", description="The subscription id to poll "
                                                                "with, if several are "
                                                                "registered")),
            "tentacle poll-server --instance Tentacle --server https://octopus2.example.com "
            "--apiKey API-XXXX --server-web-socket wss://octopus2.example.com/OctopusComms",
            cmd_poll_server),
    Command("register-with", "Registers this machine as a deployment target with an Octopus "
                             "Server and trusts that server",
            (*ENDPOINT_OPTIONS,
             value_option("name", description="Name of the machine when registered; the default "
                                              "is the hostname"),
             value_option("environment", description="The environment name, slug or Id to add "
                                                     "the machine to - e.g., 'Production'; "
                                                     "specify this argument multiple times to "
                                                     "add to multiple environments",
                          repeatable=True),
             value_option("role", description="The machine role that the machine will assume - "
                                              "e.g., 'web-server'; specify this argument "
                                              "multiple times to add multiple roles",
                          repeatable=True),
             value_option("comms-style", description="The communication style: TentacleActive "
                                                     "(polling; the only one this agent "
                                                     "supports)"),
             value_option("server-subscription-id", description="The subscription id to poll "
                                                                "with (poll://…/); default: "
                                                                "the one already used for this "
                                                                "server, else a new one"),
             value_option("space", description="The name of the space to add the machine to; "
                                               "the default space if omitted"),
             value_option("policy", description="The name of a machine policy that applies to "
                                                "this machine"),
             switch("f", "force", description="Allow overwriting of existing machines"),
             value_option("h", "publicHostName", description="Ignored for polling Tentacles",
                          hidden=True),
             value_option("proxy", description="Not supported for polling Tentacles",
                          hidden=True)),
            "tentacle register-with --instance Tentacle --server https://octopus.example.com "
            "--apiKey API-XXXX --environment Production --role web-server "
            "--comms-style TentacleActive "
            "--server-web-socket wss://octopus.example.com/OctopusComms", cmd_register_with),
    Command("service", "Start, stop, install and query the Tentacle service (systemd, or a "
                       "supervised background process where there is no systemd)",
            (switch("start", description="Start the service if it is not already running"),
             switch("stop", description="Stop the service if it is running"),
             switch("restart", description="Restart the service if it is running"),
             switch("status", description="Say whether the service is running (exit code 3 "
                                          "when it is not)"),
             switch("install", description="Install the systemd service"),
             switch("uninstall", description="Uninstall the systemd service"),
             switch("reconfigure", description="Reinstall the systemd service"),
             value_option("username", "user", "u", description="Not supported", hidden=True),
             value_option("password", "p", description="Not supported", hidden=True)),
            "tentacle service --instance Tentacle --install --start", cmd_service),
    Command("show-configuration", "Outputs the Tentacle configuration (without the private "
                                  "key)",
            (value_option("file", description="Exports the configuration to a file. If not "
                                              "specified output goes to the console"),),
            "tentacle show-configuration --instance Tentacle", cmd_show_configuration),
    Command("show-thumbprint", "Show the thumbprint of this Tentacle's certificate",
            (FORMAT_OPTION,
             value_option("e", "export-file", description="Exports the Tentacle thumbprint to "
                                                          "a file")),
            "tentacle show-thumbprint --instance Tentacle --format json", cmd_show_thumbprint),
    Command("version", "Show the Tentacle version information", (FORMAT_OPTION,),
            "tentacle version", cmd_version, instance_options=False),
)


def find_command(name: str) -> Command | None:
    wanted = name.lower()
    for command in COMMANDS:
        if command.name == wanted or wanted in command.aliases:
            return command
    return None


def command_specs(command: Command) -> tuple[OptionSpec, ...]:
    return ((*INSTANCE_OPTIONS,) if command.instance_options else ()) + command.options + \
        COMMON_OPTIONS


# ------------------------------------------------------------------ help

def general_help() -> str:
    lines = [f"Usage: {PROG} <command> [<options>]", "", "Where <command> is one of: ", ""]
    for command in sorted((*COMMANDS, HELP_COMMAND), key=lambda c: c.name):
        names = ", ".join((command.name, *command.aliases))
        lines.append("  " + names.ljust(15))
        lines.append("   " + command.description)
    lines += ["", "Or use <command> --help for more details.", "",
              "Instances are registered in $TENTACLE_INSTANCES_DIR, else /etc/octopus/Tentacle/"
              "Instances (root) or ~/.config/octopus/Tentacle/Instances."]
    return "\n".join(lines)


def command_help(command: Command) -> str:
    lines = [f"Usage: {PROG} {command.name} [<options>]", "", command.description + ".", "",
             "Where [<options>] is any of: ", "",
             format_option_help((*INSTANCE_OPTIONS, *command.options)
                                if command.instance_options else command.options) or
             "      (none)",
             "", "Or one of the common options: ", "", format_option_help(COMMON_OPTIONS), "",
             "Options are case-insensitive and take their value as --option=value, "
             "--option:value or --option value.", "", "Example:", "  " + command.example]
    return "\n".join(lines)


def cmd_help(options: ParsedOptions, output: Output) -> int:  # `_run` sends help to _show_help
    output.say(general_help())
    return EXIT_OK


HELP_COMMAND = Command("help", "Prints this help output", (FORMAT_OPTION,), "tentacle help "
                       "register-with", cmd_help, instance_options=False)


def _help_json(command: Command | None) -> str:
    if command is None:
        return json.dumps({"Commands": [{"Name": c.name, "Description": c.description,
                                         "Aliases": list(c.aliases)}
                                        for c in sorted(COMMANDS, key=lambda c: c.name)]},
                          indent=2)
    return json.dumps({"Name": command.name, "Description": command.description,
                       "Aliases": list(command.aliases),
                       "Options": [{"Name": s.name, "Description": s.description}
                                   for s in command_specs(command)
                                   if not s.hidden and s.name != "help"],
                       "CommonOptions": [{"Name": "help",
                                          "Description": "Show detailed help for this command"}]},
                      indent=2)


def _show_help(args: Sequence[str], output: Output) -> int:
    """`tentacle help [command] [--format json]`."""
    topic = next((a for a in args if a[:1].isalpha()), None)
    rest = [a for a in args if a != topic]
    parsed = parse_options((FORMAT_OPTION, *COMMON_OPTIONS), rest)
    as_json = _format(parsed) == "json"
    if topic is None:
        output.say(_help_json(None) if as_json else general_help())
        return EXIT_OK
    command = HELP_COMMAND if topic.lower() == "help" else find_command(topic)
    if command is None:
        output.error(f"Command '{topic}' is not supported")
        output.say(f"See '{PROG} help'")
        return EXIT_UNKNOWN_COMMAND
    output.say(_help_json(command) if as_json else command_help(command))
    return EXIT_OK


def _wants_help(args: Sequence[str]) -> bool:
    return any(a.lower().lstrip("-/") == "help" and a[:1] in "-/" for a in args)


# ------------------------------------------------------------------ entry point

def _run(args: list[str], output: Output) -> int:
    if not args:
        output.say(general_help())
        return EXIT_UNKNOWN_COMMAND
    name = args[0].lower().lstrip("-/")
    if name == "help":
        return _show_help(args[1:], output)
    command = find_command(name)
    if command is None:
        output.error(f"Command '{args[0]}' is not supported")
        output.say(f"See '{PROG} help'")
        return EXIT_UNKNOWN_COMMAND
    if _wants_help(args[1:]):
        output.say(command_help(command))
        return EXIT_OK
    options = parse_options(command_specs(command), args[1:])
    return command.handler(options, output)


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    """The `tentacle` console script: run one command, return its exit code."""
    output = Output(out, err)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return _run(args, output)
    except TentacleError as exc:
        output.error(str(exc))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        output.error("Interrupted.")
        return 130
    except PermissionError as exc:
        output.error(f"Permission denied: '{exc.filename}'. Run the command as a user who may "
                     "write there, or choose other paths with --config and --home.")
        return EXIT_FAILURE
    except Exception as exc:  # never a traceback: say what happened, Tentacle-style
        output.error("=" * 79)
        output.error(f"{type(exc).__name__}: {exc}")
        return EXIT_UNEXPECTED


if __name__ == "__main__":
    sys.exit(main())
