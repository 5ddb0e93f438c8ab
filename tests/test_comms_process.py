"""`httpsys-emu serve` and `octopus-comms serve` as real processes, polled by independent clients.

The agent here is the `websockets` library carrying our protocol core's bytes (see
test_comms_polling.Agent); it answers the IScriptServiceV2 calls of a real AdHocScript task
created through the REST API with curl. Also: the friendly page to curl, an untrusted certificate
that never sees an identity line, `--embedded`, and our real tentacle agent reconnecting with
back-off after the server is killed mid-poll.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from octopus_comms.auth import create_api_key
from octopus_comms.halibut import contracts as c
from octopus_comms.store import MachineSpec, Store
from tests.comms_fixtures import make_comms_site
from tests.certs import make_certificate
from tests.test_comms_polling import SUBSCRIPTION, Agent

BIN = Path(sys.executable).parent


def wait_until(check, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sk", *args], capture_output=True, text=True, timeout=30)


class Processes:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log: Path, env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def site(tmp_path: Path):
    site = make_comms_site(tmp_path)
    state, home, port = site.state, site.home, site.port
    agent_cert = make_certificate("websockets agent", client=True)
    agent_cert.write(tmp_path, "agent")
    with Store.open(home) as store:
        env = store.create_environment("Dev")
        store.create_machine(MachineSpec(name="ws01", environment_ids=(env.id,), roles=("web",),
                                         communication_style="TentacleActive",
                                         thumbprint=agent_cert.thumbprint, uri=SUBSCRIPTION))
        _rec, key = create_api_key(store, "test")
    procs = Processes()
    yield state, home, port, key, procs
    procs.stop_all()


def start_servers(state: Path, home: Path, port: int, procs: Processes, tmp: Path,
                  embedded: bool = False) -> subprocess.Popen[bytes]:
    if not embedded:
        procs.start([str(BIN / "httpsys-emu"), "--state-dir", str(state), "serve"],
                    tmp / "frontdoor.log")
        wait_until(lambda: (state / "control.sock").exists(), what="the front door")
    comms = procs.start([str(BIN / "octopus-comms"), "serve", "--home", str(home),
                         "--state-dir", str(state), *(["--embedded"] if embedded else [])],
                        tmp / "comms.log")
    wait_until(lambda: curl("-o", "/dev/null", "-w", "%{http_code}",
                            f"https://localhost:{port}/api").stdout == "200",
               what="the REST API")
    return comms


def script_answers(request) -> object:
    """A fake Tentacle's IScriptServiceV2: every script completes at once with one line."""
    method = request.method.lower().removesuffix("async")
    command = request.params[0]
    if method == "completescript":
        return None
    return c.ScriptStatusResponseV2(
        ticket=command.script_ticket if method == "startscript" else command.ticket,
        logs=[c.ProcessOutput(source=c.ProcessOutputSource.StdOut,
                              occurred=dt.datetime.now(dt.timezone.utc),
                              text="hi from the websockets agent")] if method == "startscript"
        else [],
        next_log_sequence=1, state=c.ProcessState.Complete, exit_code=0)


def test_processes_serve_the_page_poll_and_run_a_task(site, tmp_path: Path) -> None:
    state, home, port, key, procs = site
    start_servers(state, home, port, procs, tmp_path)
    page = curl("-i", f"https://localhost:{port}/OctopusComms")
    assert page.stdout.startswith("HTTP/1.1 200 OK")
    assert "<title>Octopus Server configured successfully</title>" in page.stdout

    # An untrusted certificate: closed after MX, no identity line, nothing dequeued.
    stranger = make_certificate("stranger", client=True)
    (tmp_path / "stranger").mkdir()
    stranger.write(tmp_path / "stranger", "agent")
    untrusted = Agent(f"wss://localhost:{port}/OctopusComms", tmp_path / "stranger", polls=1)
    untrusted.start()
    untrusted.join(30)
    assert untrusted.received_bytes == b"" and untrusted.close_code == 1000

    # The trusted agent polls; a task created through the API reaches it and completes.
    agent = Agent(f"wss://localhost:{port}/OctopusComms", tmp_path, polls=2,
                  respond=script_answers)
    agent.start()
    body = json.dumps({"Name": "AdHocScript", "Arguments": {
        "MachineIds": ["Machines-1"], "ScriptBody": "echo hi", "Syntax": "Bash"}})
    created = curl("-X", "POST", "-H", f"X-Octopus-ApiKey: {key}", "-H",
                   "Content-Type: application/json", "--data", body,
                   f"https://localhost:{port}/api/Spaces-1/tasks")
    task = json.loads(created.stdout)
    assert task["State"] in ("Queued", "Executing"), created.stdout

    def finished() -> bool:
        current = json.loads(curl("-H", f"X-Octopus-ApiKey: {key}",
                                  f"https://localhost:{port}/api/tasks/{task['Id']}").stdout)
        return bool(current["IsCompleted"])
    wait_until(finished, 30, "the task")
    raw = curl("-H", f"X-Octopus-ApiKey: {key}",
               f"https://localhost:{port}/api/tasks/{task['Id']}/raw").stdout
    assert "hi from the websockets agent" in raw
    agent.join(30)
    assert agent.error is None, agent.error
    services = [(e.request.service, e.request.method) for e in agent.events
                if getattr(e, "request", None) is not None]
    assert ("IScriptServiceV2", "StartScript") in services
    assert ("IScriptServiceV2", "CompleteScript") in services


def test_embedded_mode_serves_the_same_prefixes(site, tmp_path: Path) -> None:
    state, home, port, key, procs = site
    start_servers(state, home, port, procs, tmp_path, embedded=True)
    assert "<title>Octopus Server configured successfully</title>" in \
        curl(f"https://localhost:{port}/OctopusComms/").stdout
    assert curl("-o", "/dev/null", "-w", "%{http_code}",
                f"https://localhost:{port}/api/users/me").stdout == "401"


def test_tentacle_reconnects_with_back_off_after_the_server_dies(site, tmp_path: Path) -> None:
    state, home, port, key, procs = site
    comms = start_servers(state, home, port, procs, tmp_path)
    # our real agent, configured through its CLI against this server
    env = dict(os.environ, TENTACLE_INSTANCES_DIR=str(tmp_path / "instances"),
               TENTACLE_SERVICE_MANAGER="none")
    tent = tmp_path / "tentacle"

    def tentacle(*args: str) -> str:
        result = subprocess.run([str(BIN / "tentacle"), *args, "--instance", "T"],
                                capture_output=True, text=True, env=env, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout
    tentacle("create-instance", "--config", str(tent / "t.config"), "--home", str(tent))
    tentacle("new-certificate")
    tentacle("register-with", "--server", f"https://localhost:{port}", "--apiKey", key,
             "--server-web-socket", f"wss://localhost:{port}/OctopusComms",
             "--comms-style", "TentacleActive", "--environment", "Dev", "--role", "web",
             "--name", "agent01")
    log = tent / "Logs" / "OctopusTentacle.txt"
    procs.start([str(BIN / "tentacle"), "agent", "--instance", "T"], tmp_path / "agent.log",
                env=env)
    wait_until(lambda: log.exists() and "the server identified itself" in log.read_text(),
               what="the first poll")
    # `script run` streams the output and exits with the script's own exit code
    run = subprocess.run([str(BIN / "octopus-comms"), "script", "run", "--home", str(home),
                          "--machine", "agent01", "--body", "echo to stdout; echo to stderr >&2; exit 7"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 7, run.stdout + run.stderr
    assert "to stdout" in run.stdout and "to stderr" in run.stderr
    comms.send_signal(signal.SIGKILL)                     # mid-poll
    comms.wait(10)
    wait_until(lambda: "attempt 3 of 5" in log.read_text(), 30, "fast retries")
    wait_until(lambda: "trying again in" in log.read_text(), 30, "the back-off")
    start_servers(state, home, port, procs, tmp_path)
    wait_until(lambda: log.read_text().count("the server identified itself") >= 2, 150,
               "the reconnect")
