"""`tentacle service` without systemd: a supervised background process, with a trivial agent.

`TENTACLE_AGENT_COMMAND` replaces the real agent with a sleeping Python process, so these tests
exercise the supervisor (spawn, pid file, log, restart on exit, SIGTERM then SIGKILL) and not the
agent runtime.
"""

from __future__ import annotations

import io
import os
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tentacle.cli import main
from tentacle.config import load_config
from tentacle.service import (
    ServiceController,
    exec_start_command,
    is_our_supervisor,
    pid_path,
    render_unit,
    rotate_log,
    running_supervisor,
    unit_name,
)

SLEEPER = f"{shlex.quote(sys.executable)} -c 'import time; time.sleep(600)'"
STUBBORN = (f"{shlex.quote(sys.executable)} -c 'import pathlib, signal, time; "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); pathlib.Path(\"ready\").touch(); "
            "time.sleep(600)'")  # runs in the home directory
CRASHER = f"{shlex.quote(sys.executable)} -c 'import sys; sys.exit(3)'"


def run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(predicate, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("TENTACLE_INSTANCES_DIR", str(tmp_path / "instances"))
    monkeypatch.setenv("TentacleMachineConfigurationHomeDirectory", str(tmp_path / "machine"))
    monkeypatch.setenv("TENTACLE_SERVICE_MANAGER", "none")
    monkeypatch.setenv("TENTACLE_AGENT_COMMAND", SLEEPER)
    config_path = tmp_path / "Tentacle" / "tentacle-Tentacle.config"
    assert run("create-instance", "--config", str(config_path))[0] == 0
    yield config_path
    pid = running_supervisor(pid_path(load_config(config_path)))
    if pid is not None:  # never leave a background process behind
        os.killpg(pid, signal.SIGKILL)


def test_start_status_stop(instance: Path) -> None:
    config = load_config(instance)
    assert run("service", "--status") == (3, "tentacle-Tentacle.service is not running\n", "")

    code, out, err = run("service", "--start")
    assert code == 0, err
    pid = int(pid_path(config).read_text())
    assert f"(pid {pid}, supervised background process" in out
    assert is_our_supervisor(pid, pid_path(config))
    assert wait_for(lambda: len(children(pid)) == 1)
    [agent] = children(pid)
    log = config.home / "Logs" / "OctopusTentacle.txt"
    assert wait_for(lambda: f"Agent started (pid {agent})" in log.read_text())

    code, out, _ = run("service", "--status")
    assert code == 0 and f"is running (pid {pid}" in out
    assert run("service", "--start")[1] == f"The Tentacle service is already running (pid {pid}).\n"

    code, out, _ = run("service", "--stop")
    assert code == 0
    assert out.splitlines() == [f"Stopping service: tentacle-Tentacle.service (pid {pid})",
                                "Service stopped"]
    assert wait_for(lambda: not alive(agent) and not alive(pid))
    assert not pid_path(config).exists()
    assert "Stopping the agent" in log.read_text()
    assert run("service", "--status")[0] == 3
    assert run("service", "--stop")[1] == "The service tentacle-Tentacle.service is not running.\n"


def test_a_stale_pid_file_is_ignored(instance: Path) -> None:
    config = load_config(instance)
    pid_path(config).write_text(f"{os.getpid()}\n")  # alive, but not our supervisor
    assert run("service", "--status")[0] == 3
    assert run("service", "--stop")[0] == 0
    assert not pid_path(config).exists()
    pid_path(config).write_text("999999999\n")  # no such process
    code, _out, err = run("service", "--start")
    assert code == 0, err
    assert int(pid_path(config).read_text()) != 999999999
    assert run("service", "--stop")[0] == 0


def test_restart_replaces_the_process(instance: Path) -> None:
    assert run("service", "--start")[0] == 0
    config = load_config(instance)
    first = int(pid_path(config).read_text())
    code, _out, err = run("service", "--restart")
    assert code == 0, err
    second = int(pid_path(config).read_text())
    assert second != first and alive(second)
    assert wait_for(lambda: not alive(first))
    assert run("service", "--stop", "--status")[0] == 3  # stop first, then report


def test_an_agent_that_exits_is_restarted(instance: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENTACLE_AGENT_COMMAND", CRASHER)
    config = load_config(instance)
    assert run("service", "--start")[0] == 0
    log = config.home / "Logs" / "OctopusTentacle.txt"
    assert wait_for(lambda: log.read_text().count("Agent started") >= 2, seconds=6)
    assert "Agent exited with code 3; restarting in 1 s" in log.read_text()
    assert run("service", "--status")[0] == 0  # the supervisor stays up
    assert run("service", "--stop")[0] == 0


def test_an_agent_that_ignores_sigterm_is_killed_after_the_deadline(
        instance: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENTACLE_AGENT_COMMAND", STUBBORN)
    config = load_config(instance)
    lines: list[str] = []
    controller = ServiceController(config, lines.append, stop_timeout=0.5)
    controller.start()
    pid = int(pid_path(config).read_text())
    assert wait_for(lambda: len(children(pid)) == 1)
    [agent] = children(pid)
    assert wait_for((config.home / "ready").exists)  # its SIGTERM handler is in place
    started = time.monotonic()
    controller.stop()
    assert time.monotonic() - started < 5
    assert wait_for(lambda: not alive(agent) and not alive(pid))
    assert "did not stop within 0.5 s; killing it" in (config.home / "Logs" /
                                                       "OctopusTentacle.txt").read_text()
    assert lines[-1] == "Service stopped"


def test_the_documented_reconfiguration_sequence_works_without_systemd(instance: Path) -> None:
    thumbprint = "5BF1B7093DBD1EB1B7000EA9769484541E44A8A9"
    assert run("service", "--stop")[0] == 0
    assert run("configure", "--reset-trust", "--trust", thumbprint)[0] == 0
    assert run("service", "--start")[0] == 0
    assert run("service", "--status")[0] == 0
    assert run("service", "--stop")[0] == 0


def test_install_explains_that_systemd_is_missing(instance: Path) -> None:
    code, _out, err = run("service", "--install")
    assert code == 1
    assert err.startswith("systemd is not available on this machine")
    assert "'tentacle service --start' runs the agent as a supervised background process" in err
    assert run("service")[2].startswith("Please specify what to do: --install")


def test_unit_file() -> None:
    assert unit_name("My Worker") == "tentacle-My-Worker.service"
    text = render_unit("My Worker", [sys.executable, "-m", "tentacle.cli", "agent",
                                     "--instance=My Worker"], user_mode=False,
                       environment={"TENTACLE_INSTANCES_DIR": "/srv/inst"})
    lines = text.splitlines()
    assert f"ExecStart={sys.executable} -m tentacle.cli agent \"--instance=My Worker\"" in lines
    assert "Restart=always" in lines and "WantedBy=multi-user.target" in lines
    assert "Environment=TENTACLE_INSTANCES_DIR=/srv/inst" in lines
    assert "PrivateTmp=yes" in lines and "NoNewPrivileges=yes" not in lines
    user = render_unit("T", ["/usr/bin/python3", "-m", "tentacle.cli", "agent", "--instance=T"],
                       user_mode=True)
    assert "WantedBy=default.target" in user and "PrivateTmp" not in user


def test_exec_start_names_the_instance_or_else_the_config(instance: Path, tmp_path: Path) -> None:
    config = load_config(instance)
    assert exec_start_command(config) == [sys.executable, "-m", "tentacle.cli", "agent",
                                          "--instance=Tentacle"]
    other = tmp_path / "elsewhere.config"
    other.write_bytes(instance.read_bytes())
    assert exec_start_command(load_config(other))[-1] == f"--config={other}"


def test_log_rotation(tmp_path: Path) -> None:
    log = tmp_path / "OctopusTentacle.txt"
    for generation in range(5):
        log.write_text(f"generation {generation}\n" * 10)
        rotate_log(log, max_bytes=100, archives=2)
    assert not log.exists()
    assert (tmp_path / "OctopusTentacle.1.txt").read_text().startswith("generation 4")
    assert (tmp_path / "OctopusTentacle.2.txt").read_text().startswith("generation 3")
    assert not (tmp_path / "OctopusTentacle.3.txt").exists()
