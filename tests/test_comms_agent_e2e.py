"""Server and agent together, in one trio run: real TLS, real WebSockets, real bash.

The comms server runs with its embedded front door; our tentacle's agent polls it with a
certificate the server trusts; an AdHocScript task created through the REST API runs on the
agent and its output, exit code and state come back into the store. Also: the file transfer
service through the queue, and an agent that pins the wrong server thumbprint.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from octopus_comms.api import ApiRequest
from octopus_comms.auth import create_api_key
from octopus_comms.rpc import AgentClient
from octopus_comms.server import CommsServer
from octopus_comms.store import MachineSpec, Store
from tentacle.agent import run_agent
from tentacle.config import TentacleConfig, TrustedServer
from tests.comms_fixtures import make_comms_site
from tests.certs import make_certificate

SUBSCRIPTION = "poll://qwertyuiopasdfghjklz/"


@pytest.fixture
def world(tmp_path: Path):
    site = make_comms_site(tmp_path)
    state, home, port = site.state, site.home, site.port
    agent_home = tmp_path / "agent"
    agent_home.mkdir()
    agent_cert = make_certificate("Octopus Tentacle", client=True)
    with Store.open(home) as store:
        env = store.create_environment("Dev")
        store.create_machine(MachineSpec(name="web01", environment_ids=(env.id,),
                                         roles=("web",), communication_style="TentacleActive",
                                         thumbprint=agent_cert.thumbprint, uri=SUBSCRIPTION))
        _record, key = create_api_key(store, "test")

    def agent_config(server_thumbprint: str) -> TentacleConfig:
        return TentacleConfig(
            instance="Tentacle", config_path=agent_home / "tentacle.config", home=agent_home,
            app_dir=agent_home / "Applications", certificate_pem=agent_cert.cert_pem,
            private_key_pem=agent_cert.key_pem, thumbprint=agent_cert.thumbprint,
            trusted_servers=(TrustedServer(server_thumbprint, 2,
                                           f"wss://localhost:{port}/OctopusComms", None,
                                           SUBSCRIPTION),),
            polling_connection_count=1, no_listen=True, listen_port=10933, extra={})

    return state, home, key, site.thumbprint, agent_config, agent_home


def api(server: CommsServer, key: str, method: str, path: str, body: object = None):
    assert server.api is not None
    raw = json.dumps(body).encode() if body is not None else b""
    response = server.api.handle(ApiRequest(method=method, path=path,
                                            headers={"x-octopus-apikey": key,
                                                     "content-type": "application/json"},
                                            body=raw))
    return response.status, (response.json() if response.body[:1] in (b"{", b"[") else response.body)


async def _wait_connected(server: CommsServer) -> None:
    with trio.fail_after(15):
        while server.live.count() == 0:
            await trio.sleep(0.05)


async def test_ad_hoc_script_runs_on_the_polling_agent(world) -> None:
    state, home, key, thumb, agent_config, _ = world
    server = CommsServer(home, state, keepalive=1.0, collection_timeout=15)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run_embedded)
        await nursery.start(run_agent, agent_config(thumb))
        await _wait_connected(server)
        status, task = await trio.to_thread.run_sync(lambda: api(
            server, key, "POST", "/api/Spaces-1/tasks",
            {"Name": "AdHocScript", "Description": "e2e",
             "Arguments": {"EnvironmentIds": [], "TargetRoles": ["web"], "MachineIds": [],
                           "ScriptBody": "echo hello from $0; echo oops >&2; exit 3",
                           "Syntax": "Bash"}}))
        assert status == 201, task
        with trio.fail_after(30):
            while True:
                _, current = api(server, key, "GET", f"/api/tasks/{task['Id']}")
                if current["IsCompleted"]:
                    break
                await trio.sleep(0.1)
        assert current["State"] == "Failed"
        assert current["FinishedSuccessfully"] is False
        _, raw = api(server, key, "GET", f"/api/tasks/{task['Id']}/raw")
        text = raw.decode() if isinstance(raw, bytes) else json.dumps(raw)
        assert "hello from" in text and "oops" in text and "Exit code: 3" in text
        machine = server.store.task_machines(task["Id"])[0]
        assert machine.exit_code == 3
        nursery.cancel_scope.cancel()
    server.close()


async def test_file_upload_and_download_through_the_queue(world) -> None:
    state, home, key, thumb, agent_config, agent_home = world
    server = CommsServer(home, state, keepalive=1.0, collection_timeout=15)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run_embedded)
        await nursery.start(run_agent, agent_config(thumb))
        await _wait_connected(server)
        client = AgentClient(server.queues, SUBSCRIPTION, collection_timeout=10)
        payload = bytes(range(256)) * 4096          # 1 MiB
        with trio.fail_after(30):
            result = await client.upload_file("upload/data.bin", payload)
        import hashlib
        assert result.hash == hashlib.sha1(payload).hexdigest()
        assert result.length == len(payload)
        assert Path(result.full_path).read_bytes() == payload
        with trio.fail_after(30):
            stream = await client.download_file(result.full_path)
        assert stream.data == payload
        caps = await client.get_capabilities()
        assert "IScriptServiceV2" in caps.supported_capabilities
        nursery.cancel_scope.cancel()
    server.close()


async def test_agent_refuses_a_server_with_another_thumbprint(world) -> None:
    state, home, key, thumb, agent_config, agent_home = world
    server = CommsServer(home, state, keepalive=1.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run_embedded)
        await nursery.start(run_agent, agent_config("0" * 40))
        log_file = agent_home / "Logs" / "OctopusTentacle.txt"
        with trio.fail_after(15):
            while not (log_file.exists() and "not recognised" in log_file.read_text()):
                await trio.sleep(0.1)
        assert server.live.count() == 0
        nursery.cancel_scope.cancel()
    server.close()
