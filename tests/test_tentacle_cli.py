"""The `tentacle` command line: Tentacle's option grammar and every command, end to end."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tentacle.cli import main
from tentacle.config import TrustedServer, load_config, parse_settings_xml, save_config
from tentacle.options import OptionError, parse_options, switch, value_option

THUMB_A = "5BF1B7093DBD1EB1B7000EA9769484541E44A8A9"
THUMB_B = "0F3C5D1C8B9E0F3C5D1C8B9E0F3C5D1C8B9E0F3C"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def relocated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TENTACLE_INSTANCES_DIR", str(tmp_path / "instances"))
    monkeypatch.setenv("TentacleMachineConfigurationHomeDirectory", str(tmp_path / "machine"))
    monkeypatch.setenv("TENTACLE_SERVICE_MANAGER", "none")
    return tmp_path


def run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def ok(*args: str) -> str:
    code, out, err = run(*args)
    assert code == 0, (args, out, err)
    return out


@pytest.fixture
def instance(relocated: Path) -> Path:
    """The default instance `Tentacle`, with its configuration under tmp."""
    ok("create-instance", "--instance", "Tentacle", "--config",
       str(relocated / "Tentacle" / "tentacle-Tentacle.config"))
    return relocated / "Tentacle" / "tentacle-Tentacle.config"


# ------------------------------------------------------------------ the option grammar

SPECS = (value_option("instance"), value_option("pollingConnectionCount"),
         value_option("trust", repeatable=True), value_option("home", "homedir"),
         switch("f", "force"), switch("reset-trust"))
SWITCHES = {"force": ("f", "force"), "reset-trust": ("reset-trust",)}
VALUES = {"instance": ("instance",), "pollingConnectionCount": ("pollingConnectionCount",),
          "trust": ("trust",), "home": ("home", "homedir")}
occurrence = st.one_of(
    st.tuples(st.sampled_from(sorted(VALUES)), st.text(max_size=12)),
    st.tuples(st.sampled_from(sorted(SWITCHES)), st.booleans()))


def _spell(data: st.DataObject, name: str) -> str:
    flips = data.draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return "".join(c.upper() if f else c.lower() for c, f in zip(name, flips, strict=True))


@given(st.lists(occurrence, max_size=6), st.data())
def test_any_spelling_parses_the_same(occurrences: list[tuple[str, object]],
                                      data: st.DataObject) -> None:
    args: list[str] = []
    expected = []
    for canonical, value in occurrences:
        prefix = data.draw(st.sampled_from(["--", "-", "/"]))
        if canonical in VALUES:
            name = _spell(data, data.draw(st.sampled_from(VALUES[canonical])))
            form = data.draw(st.sampled_from(["=", ":", " "]))
            args += ([prefix + name, str(value)] if form == " "
                     else [prefix + name + form + str(value)])
            expected.append((canonical, str(value)))
        else:
            name = _spell(data, data.draw(st.sampled_from(SWITCHES[canonical])))
            word = "true" if value else "false"
            forms = ["=" + _spell(data, word), ":" + _spell(data, word), " " + word,
                     "+" if value else "-"] + ([""] if value else [])
            form = data.draw(st.sampled_from(forms))
            args += [prefix + name, form[1:]] if form.startswith(" ") else [prefix + name + form]
            expected.append((canonical, word))
    parsed = parse_options(SPECS, args)
    assert list(parsed.occurrences) == expected
    for canonical in VALUES:
        given_values = [v for c, v in expected if c == canonical]
        assert parsed.get(canonical) == (given_values[-1] if given_values else None)
    assert parsed.get_all("trust") == tuple(v for c, v in expected if c == "trust")


@pytest.mark.parametrize("args,message", [
    (["--bogus", "x"], "Unrecognized command line arguments: --bogus x"),
    (["stray"], "Unrecognized command line arguments: stray"),
    (["--instance"], "Missing required value for option '--instance'."),
    (["--force=maybe"], "The value 'maybe' of option '--force' is not true or false."),
    (["--", "--force"], "Unrecognized command line arguments: --force"),
])
def test_option_errors(args: list[str], message: str) -> None:
    with pytest.raises(OptionError) as info:
        parse_options(SPECS, args)
    assert str(info.value) == message


def test_values_may_look_like_options_and_contain_separators() -> None:
    parsed = parse_options(SPECS, ["--instance", "--force", "--home=C:/x=y", "-f", "False"])
    assert parsed.get("instance") == "--force"
    assert parsed.get("home") == "C:/x=y"
    assert parsed.flag("force") is False


# ------------------------------------------------------------------ help and dispatch

def test_help_lists_commands_and_options_with_an_example() -> None:
    for args in ([], ["help"], ["--help"], ["/help"]):
        code, out, _ = run(*args)
        assert code == (2 if not args else 0)
        assert out.startswith("Usage: tentacle <command> [<options>]")
        assert "register-with" in out and "agent, run" in out
    for args in (["help", "register-with"], ["register-with", "--help"],
                 ["REGISTER-WITH", "--HELP"]):
        out = ok(*args)
        assert out.startswith("Usage: tentacle register-with [<options>]")
        assert "--server-web-socket=VALUE" in out and "-f, --force" in out
        assert "--instance=VALUE" in out and "Example:\n  tentacle register-with" in out
    out = ok("agent", "--help")
    assert "foreground" in out
    help_json = json.loads(ok("help", "show-thumbprint", "--format", "json"))
    assert help_json["Name"] == "show-thumbprint"
    assert {o["Name"] for o in help_json["Options"]} >= {"instance", "config", "format"}


def test_unknown_command_exits_2() -> None:
    assert run("frobnicate") == (2, "See 'tentacle help'\n",
                                 "Command 'frobnicate' is not supported\n")
    assert run("help", "frobnicate")[0] == 2


def test_common_windows_switches_are_accepted(instance: Path) -> None:
    ok("list-instances", "--console", "--nologo", "--noninteractive")


# ------------------------------------------------------------------ instance commands

def test_instance_lifecycle(relocated: Path) -> None:
    out = ok("create-instance", "--instance", "Worker One", "--config",
             str(relocated / "w" / "w.config"), "--home", str(relocated / "w-home"))
    assert f"Creating empty configuration file: {relocated / 'w' / 'w.config'}" in out
    assert f"Setting home directory to: {relocated / 'w-home'}" in out
    assert "Saving instance: Worker One" in out
    assert (relocated / "instances" / "worker-one.config").exists()
    config = load_config(relocated / "w" / "w.config")
    assert config.home == relocated / "w-home" and config.instance == "Worker One"

    out = ok("create-instance")  # the default instance at the default place
    default_path = relocated / "machine" / "Tentacle" / "tentacle-Tentacle.config"
    assert f"Creating empty configuration file: {default_path}" in out
    assert ok("create-instance").count("already exists") == 1

    assert ok("list-instances").splitlines() == [
        f"Instance 'Tentacle' uses configuration '{default_path}'.",
        f"Instance 'Worker One' uses configuration '{relocated / 'w' / 'w.config'}'."]
    assert json.loads(ok("list-instances", "--format=JSON")) == [
        {"InstanceName": "Tentacle", "ConfigurationFilePath": str(default_path)},
        {"InstanceName": "Worker One",
         "ConfigurationFilePath": str(relocated / "w" / "w.config")}]

    assert "Deleted instance: Worker One" in ok("delete-instance", "--instance", "worker one")
    assert (relocated / "w" / "w.config").exists()  # like the real one: only the entry goes
    ok("delete-instance")
    assert ok("list-instances") == "No instances installed\n"
    code, _out, err = run("show-thumbprint", "--instance", "Worker One")
    assert code == 1
    assert err == ("Instance Worker One of Tentacle has not been configured on this machine. "
                   "Available instances: .\n")


def test_bad_format_is_refused(instance: Path) -> None:
    assert run("list-instances", "--format", "xml") == (
        1, "", "The format 'xml' is not supported. Try text or json.\n")


# ------------------------------------------------------------------ certificate commands

def test_new_certificate_and_show_thumbprint(instance: Path, relocated: Path) -> None:
    code, _out, err = run("show-thumbprint")
    assert code == 1 and "Please run the new-certificate command first" in err

    out = ok("new-certificate")
    thumbprint = out.splitlines()[1]
    assert out.splitlines()[0] == "A new certificate has been generated and installed. Thumbprint:"
    assert ok("new-certificate", "--if-blank") == \
        "A certificate already exists, no changes will be applied.\n"
    assert load_config(instance).thumbprint == thumbprint

    assert ok("show-thumbprint") == f"The thumbprint of this Tentacle is: {thumbprint}\n"
    assert ok("show-thumbprint", "--format", "json") == f'{{"Thumbprint":"{thumbprint}"}}\n'
    target = relocated / "thumb.txt"
    ok("show-thumbprint", "--config", str(instance), "-e", str(target))
    assert target.read_text() == f"The thumbprint of this Tentacle is: {thumbprint}"

    second = ok("new-certificate", "--config", str(instance)).splitlines()[1]
    assert second != thumbprint


def test_show_configuration_never_shows_the_private_key(instance: Path, relocated: Path) -> None:
    ok("new-certificate")
    ok("configure", "--trust", THUMB_A, "--app", str(relocated / "apps"))
    out = ok("show-configuration")
    document = json.loads(out)
    config = load_config(instance)
    assert document == {
        "Octopus": {"Home": str(relocated / "Tentacle")},
        "Tentacle": {
            "CertificateThumbprint": config.thumbprint,
            "Communication": {"PollingConnectionCount": 1, "TrustedOctopusServers": [
                {"Thumbprint": THUMB_A, "CommunicationStyle": 1, "Address": None,
                 "Squid": None, "SubscriptionId": None}]},
            "Deployment": {"ApplicationDirectory": str(relocated / "apps")},
            "Services": {"ListenIP": None, "NoListen": False, "PortNumber": 10933}}}
    assert "PRIVATE KEY" not in out and "Tentacle.Certificate\"" not in out
    settings = parse_settings_xml(instance.read_bytes())
    assert settings["Tentacle.Certificate"][:20] not in out
    target = relocated / "shown.json"
    ok("show-configuration", "--file", str(target))
    assert json.loads(target.read_text()) == document


# ------------------------------------------------------------------ configure

def test_configure_sets_everything_and_accepts_tentacle_spellings(instance: Path,
                                                                   relocated: Path) -> None:
    out = ok("configure", "--HOME", str(relocated / "h"), "/appdir:" + str(relocated / "a"),
             "-port=10940", "--noListen", "True", "--POLLINGCONNECTIONCOUNT=4",
             "--trust", THUMB_A.lower(), "--trust=" + THUMB_B, "--listenIpAddress", "127.0.0.1")
    assert out.splitlines() == [
        "Adding 2 trusted Octopus Servers", f"Home directory set to: {relocated / 'h'}",
        f"Application directory set to: {relocated / 'a'}", "Services listen port: 10940",
        "Tentacle will not listen on a port", "Polling connection count set to: 4",
        "Listen on IP address: 127.0.0.1", "These changes require a restart of the Tentacle."]
    config = load_config(instance)
    assert config.home == relocated / "h" and config.app_dir == relocated / "a"
    assert (config.listen_port, config.no_listen, config.polling_connection_count) == \
        (10940, True, 4)
    assert [(s.thumbprint, s.communication_style) for s in config.trusted_servers] == [
        (THUMB_A, 2), (THUMB_B, 2)]
    assert config.extra["Tentacle.Services.ListenIP"] == "127.0.0.1"

    ok("configure", "--pollingconnectioncount", "2", "--noListen=false", "--remove-trust",
       THUMB_A)
    config = load_config(instance)
    assert (config.polling_connection_count, config.no_listen) == (2, False)
    assert [s.thumbprint for s in config.trusted_servers] == [THUMB_B]


@pytest.mark.parametrize("args,message", [
    (["--pollingConnectionCount=0"], "The polling connection count must be greater than 0, but "
                                     "was 0."),
    (["--pollingConnectionCount=many"], "The polling connection count 'many' is not a valid "
                                        "whole number. Specify a positive integer, e.g. "
                                        "--pollingConnectionCount=5"),
    (["--port", "99999"], "The value of --port must be between 1 and 65535, but was 99999."),
    (["--trust", "not-a-thumbprint"], "'not-a-thumbprint' is not a certificate thumbprint (40 "
                                      "hexadecimal digits), given with --trust."),
    (["--noListen=perhaps"], "The value 'perhaps' of option '--noListen=perhaps' is not true or "
                             "false."),
    (["--listenIpAddress", "here"], "'here' is not an IP address."),
])
def test_configure_errors(instance: Path, args: list[str], message: str) -> None:
    before = instance.read_bytes()
    code, out, err = run("configure", *args)
    assert (code, err.strip()) == (1, message.replace("'--noListen=perhaps'", "'--noListen'"))
    assert "Traceback" not in out + err
    assert instance.read_bytes() == before


def test_reset_trust_removes_every_entry_and_its_subscription_id(instance: Path) -> None:
    config = load_config(instance)
    from dataclasses import replace
    save_config(replace(config, trusted_servers=(
        TrustedServer(THUMB_A, 2, "wss://a/OctopusComms", None, "poll://abcdefghijklmnopqrst/"),
        TrustedServer(THUMB_B, 1, None, None, None))))
    out = ok("configure", "--reset-trust")
    assert out.splitlines()[0] == "Removing all trusted Octopus Servers..."
    assert load_config(instance).trusted_servers == ()
    assert "poll://" not in instance.read_text("utf-8-sig")
    ok("configure", "--reset-trust", "--trust", THUMB_A)
    assert [s.subscription_id for s in load_config(instance).trusted_servers] == [None]


# ------------------------------------------------------------------ agent, errors, entry point

def test_agent_runs_the_runtime_with_the_loaded_config(instance: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    async def run_agent(config: object) -> None:  # stands in for tentacle.agent's runtime
        seen.append(config)

    monkeypatch.setitem(sys.modules, "tentacle.agent",
                        types.SimpleNamespace(run_agent=run_agent))
    ok("run", "--instance", "Tentacle")
    assert [c.config_path for c in seen] == [instance]
    assert seen[0].instance == "Tentacle"

    monkeypatch.setitem(sys.modules, "tentacle.agent", None)
    code, _out, err = run("agent")
    assert code == 1 and err.startswith("The agent runtime is not available")


def test_a_corrupt_configuration_is_a_message_not_a_traceback(instance: Path) -> None:
    instance.write_text("<octopus-settings><set key='Tentacle.Services.PortNumber'>x</set>")
    code, out, err = run("show-configuration")
    assert code == 1
    assert err.startswith(f"The configuration file {instance} cannot be read: not well-formed")
    assert "Traceback" not in out + err


def test_console_script_module_exit_codes(instance: Path) -> None:
    env = dict(os.environ)
    result = subprocess.run([sys.executable, "-m", "tentacle.cli", "show-thumbprint"],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert result.returncode == 1
    assert result.stderr == ("No certificate has been generated for this Tentacle. Please run "
                             "the new-certificate command first.\n")
    result = subprocess.run([sys.executable, "-m", "tentacle.cli", "configure", "--port"],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert (result.returncode, result.stderr) == (
        1, "Missing required value for option '--port'.\n")
    result = subprocess.run([sys.executable, "-m", "tentacle.cli", "version"],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert result.returncode == 0 and result.stdout.strip()
