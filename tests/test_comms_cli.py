"""`octopus-comms` as an operator drives it: options spelled any case, one-line errors, help.

Most cases run in-process with typer's CliRunner; two run the installed console script.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from octopus_comms.api import Api, ApiRequest
from octopus_comms.cli import app
from octopus_comms.store import MachineSpec, Store

SCRIPT = Path(sys.executable).parent / "octopus-comms"
THUMB = "A1B2C3D4E5F60718293A4B5C6D7E8F9012345678"
Run = Callable[..., Result]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def run(home: Path) -> Run:
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Result:
        return runner.invoke(app, [*args, "--home", str(home)], input=input,
                             prog_name="octopus-comms")
    return invoke


def no_traceback(result: Result) -> None:
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_configure_case_insensitive_options(run: Run, home: Path) -> None:
    result = run("configure", "--commsListenWebSocket", "https://+:8443/OctopusComms")
    assert result.exit_code == 0, result.output
    assert "Polling WebSocket listener set to: https://+:8443/OctopusComms/" in result.output
    result = run("CONFIGURE", "--WEBLISTENPREFIXES=https://+:8443/api/,https://+:8443/app/")
    assert result.exit_code == 0, result.output
    document = json.loads((home / "server.json").read_text())
    assert document["CommsListenWebSocket"] == ["https://+:8443/OctopusComms/"]
    assert document["WebListenPrefixes"] == ["https://+:8443/api/", "https://+:8443/app/"]
    shown = run("configure")
    assert "Comms WebSocket listen : https://+:8443/OctopusComms/" in shown.output
    off = run("configure", "--commslistenwebsocket=")
    assert off.exit_code == 0 and "Polling WebSocket listener disabled" in off.output
    assert json.loads((home / "server.json").read_text())["CommsListenWebSocket"] == []


@pytest.mark.parametrize("value, fragment", [
    ("http://+:80/OctopusComms", "the scheme must be https"),
    ("https://+/OctopusComms", "has no port"),
    ("https://+:8443/a//b", "empty segment"),
])
def test_configure_rejects_bad_prefixes(run: Run, home: Path, value: str, fragment: str) -> None:
    result = run("configure", f"--commsListenWebSocket={value}")
    assert result.exit_code == 1
    assert fragment in result.output
    assert result.output.count("\n") == 1 and result.output.startswith("octopus-comms: ")
    no_traceback(result)
    assert not (home / "server.json").exists()


def test_apikey_create_prints_the_key_last_and_it_works(run: Run, home: Path) -> None:
    result = run("apikey", "create", "--name", "register tentacles")
    assert result.exit_code == 0, result.output
    key = result.output.splitlines()[-1]
    assert re.fullmatch(r"API-[A-Z0-9]{26}", key)
    with Store.open(home) as store:
        api = Api(store, runner=None)  # type: ignore[arg-type]
        response = api.handle(ApiRequest("GET", "/api/users/me",
                                         headers={"x-octopus-apikey": key}))
        assert response.status == 200 and response.json()["Username"] == "admin"
    listed = run("apikey", "list")
    assert "APIKeys-1" in listed.output and "register tentacles" in listed.output
    assert key not in listed.output
    assert run("apikey", "delete", "APIKeys-1").exit_code == 0
    missing = run("apikey", "delete", "APIKeys-1")
    assert missing.exit_code == 1 and "not found" in missing.output


def test_users(run: Run) -> None:
    created = run("user", "create", "--username", "alice", "--password-stdin", "--admin",
                  input="s3cret pass\n")
    assert created.exit_code == 0, created.output
    assert "Created user alice (Users-2)." in created.output
    key = run("apikey", "create", "--name", "alice's", "--user", "ALICE")
    assert "for user alice (Users-2)" in key.output
    duplicate = run("user", "create", "--username", "Alice")
    assert duplicate.exit_code == 1
    assert "A user with the username 'Alice' already exists." in duplicate.output
    assert run("user", "set-password", "--username", "admin", input="\n").exit_code == 1
    assert run("user", "set-password", "--username", "admin", input="x\n").exit_code == 0
    table = run("user", "list").output
    assert re.search(r"Users-2\s+alice\s+alice\s+Yes\s+set", table)
    unknown = run("apikey", "create", "--name", "x", "--user", "bob")
    assert unknown.exit_code == 1 and "no user named 'bob'" in unknown.output


def test_environments_and_machines(run: Run, home: Path) -> None:
    assert run("environment", "list").output == "No environments.\n"
    assert run("environment", "create", "Production").output == (
        "Created environment Environments-1 (Production).\n")
    duplicate = run("environment", "create", "production")
    assert duplicate.exit_code == 1 and "already exists" in duplicate.output
    no_traceback(duplicate)
    with Store.open(home) as store:
        store.create_machine(MachineSpec("web01", ("Environments-1",), ("web", "api"),
                                         "TentacleActive", THUMB, "poll://abcdefghijklmnopqrst/"))
    table = run("machine", "list").output.splitlines()
    assert table[0].split() == ["Id", "Name", "Environments", "Roles", "Thumbprint",
                                "Subscription"]
    assert table[2].split() == ["Machines-1", "web01", "Production", "web,", "api", THUMB,
                                "poll://abcdefghijklmnopqrst/"]
    assert "1" in run("environment", "list").output.splitlines()[2]
    refused = run("environment", "delete", "Production")
    assert refused.exit_code == 1 and "used by the following deployment targets" in refused.output
    assert run("machine", "delete", "WEB01").output == (
        "Deleted deployment target Machines-1 (web01).\n")
    gone = run("machine", "delete", "web01")
    assert gone.exit_code == 1 and gone.output == "octopus-comms: Machine 'web01' not found\n"
    assert run("environment", "delete", "environments-1").exit_code == 0


def test_every_command_help_shows_an_example(run: Run) -> None:
    commands = [["configure"], ["apikey", "create"], ["apikey", "list"], ["apikey", "delete"],
                ["user", "create"], ["user", "list"], ["user", "set-password"],
                ["environment", "create"], ["environment", "list"], ["environment", "delete"],
                ["machine", "list"], ["machine", "delete"], ["apikey"], ["machine"]]
    for command in commands:
        result = CliRunner().invoke(app, [*command, "--help"], prog_name="octopus-comms")
        assert result.exit_code == 0, command
        assert "Example" in result.output and "octopus-comms " in result.output, command


def test_unusable_home_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = CliRunner().invoke(app, ["machine", "list", "--home", str(blocker / "sub")])
    assert result.exit_code == 1
    assert result.output.startswith("octopus-comms: cannot create home directory")
    no_traceback(result)


def test_console_script_end_to_end(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    top = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert top.returncode == 0 and "Examples:" in top.stdout
    created = subprocess.run([str(SCRIPT), "apikey", "create", "--Name", "ci", "--HOME", home],
                             capture_output=True, text=True, timeout=60)
    assert created.returncode == 0, created.stderr
    assert re.fullmatch(r"API-[A-Z0-9]{26}", created.stdout.splitlines()[-1])
    bad = subprocess.run([str(SCRIPT), "configure", "--home", home,
                          "--commsListenWebSocket", "wss://x:1/"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert bad.stdout == "" and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
