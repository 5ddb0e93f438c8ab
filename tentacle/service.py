"""`tentacle service`: run the agent in the background, under systemd when there is one.

Why two managers: the real Linux Tentacle only knows systemd (a unit in /etc/systemd/system), but
containers and minimal hosts have none, and `tentacle service --stop; … register-with …;
tentacle service --start` must work everywhere. So:
  - systemd (root with a running system manager, or a user with a user manager): `--install`
    writes `tentacle-<instance>.service` (system: /etc/systemd/system, user:
    ~/.config/systemd/user) running `<python> -m tentacle.cli agent --instance=<name>` with
    `Restart=always`; start/stop/restart/status then go through `systemctl`;
  - otherwise (or when no unit is installed): a supervised background process. `--start` spawns
    `python -m tentacle.service supervise …` in a new session; it runs
    `tentacle agent --noconsolelogging` (which writes `<home>/Logs/OctopusTentacle.txt`, as the
    real Tentacle logs there), appends its own lines and anything the agent prints (a crash) to
    that file, restarts the agent with backoff when it exits, and on SIGTERM stops it (SIGTERM,
    then SIGKILL after a deadline). Its pid is in `<home>/tentacle.pid`; a pid file whose
    process is gone or is not our supervisor (checked in /proc/PID/cmdline) is stale and ignored.
Environment: `TENTACLE_SERVICE_MANAGER` = auto (default) | systemd | none forces the choice;
`TENTACLE_AGENT_COMMAND` replaces the agent command line (tests run a trivial agent with it).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from httpsys_emu.atomic import remove_durably, write_atomic
from tentacle import TentacleError
from tentacle.config import TentacleConfig
from tentacle.instances import (
    INSTANCES_DIR_ENV,
    MACHINE_CONFIG_HOME_ENV,
    InstanceRegistry,
    is_root,
)

AGENT_COMMAND_ENV = "TENTACLE_AGENT_COMMAND"
SERVICE_MANAGER_ENV = "TENTACLE_SERVICE_MANAGER"
LOG_RELATIVE_PATH = Path("Logs") / "OctopusTentacle.txt"
PID_FILE_NAME = "tentacle.pid"
LOCK_FILE_NAME = ".tentacle-service.lock"
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
DEFAULT_STOP_TIMEOUT = 30.0
START_CHECK_SECONDS = 0.3
LOG_ROTATE_BYTES = 10 * 1024 * 1024
LOG_ARCHIVES = 3
RESTART_DELAY_FIRST = 1.0
RESTART_DELAY_MAX = 60.0
STABLE_RUN_SECONDS = 60.0
SUPERVISOR_MODULE = "tentacle.service"
SUPERVISE_VERB = "supervise"

Say = Callable[[str], None]
SystemdMode = Literal["system", "user"]

# The directory holding this `tentacle` package: the supervisor and the agent it starts import
# exactly this code, whatever their working directory and however the package was installed.
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)

# Popen objects of supervisors this process spawned, kept so that they are reaped, not warned
# about, when this process (a test, usually) outlives them.
_SPAWNED: list[subprocess.Popen[bytes]] = []


class ServiceError(TentacleError):
    """The service cannot be installed, started or stopped."""


@dataclass(frozen=True)
class ServiceStatus:
    """Whether the agent runs in the background, and under what."""

    running: bool
    manager: Literal["systemd", "supervisor", "none"]
    pid: int | None
    detail: str


# ------------------------------------------------------------------ names and the unit file

def sanitize_unit_part(name: str) -> str:
    """The real configurator's cleaning: no slashes, white space runs become dashes."""
    return "-".join(name.replace("/", "").split())


def unit_name(instance: str) -> str:
    """`tentacle-<instance>.service`: prefixed so it cannot clash with a real Tentacle's unit."""
    return f"tentacle-{sanitize_unit_part(instance)}.service"


def _systemd_quote(word: str) -> str:
    if word and all(c.isalnum() or c in "-_./=:@+," for c in word):
        return word
    escaped = word.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def exec_start_command(config: TentacleConfig) -> list[str]:
    """What systemd runs: this interpreter, the CLI module, `agent --instance=<name>` (or
    `--config=<path>` when the configuration is not the registered instance's, like the real
    configurator)."""
    try:
        record = InstanceRegistry().find(config.instance)
    except TentacleError:
        record = None
    if record is not None and os.path.abspath(record.config_path) == os.path.abspath(
            config.config_path):
        selector = f"--instance={record.name}"
    else:
        selector = f"--config={config.config_path}"
    return [sys.executable, "-m", "tentacle.cli", "agent", selector]


def render_unit(instance: str, command: Sequence[str], *, user_mode: bool,
                environment: dict[str, str] | None = None) -> str:
    """The systemd unit. Hardening options are those that do not stop deployment scripts from
    doing their job (a Tentacle's purpose is to run them with the agent's rights)."""
    lines = [
        "[Unit]",
        f"Description=Octopus Tentacle polling agent (instance {instance})",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        "ExecStart=" + " ".join(_systemd_quote(word) for word in command),
        "Restart=always",
        "RestartSec=5",
        "KillMode=mixed",
        "TimeoutStopSec=60",
        "UMask=0027",
    ]
    for key, value in sorted((environment or {}).items()):
        lines.append("Environment=" + _systemd_quote(f"{key}={value}"))
    if not user_mode:
        lines += [
            "# Hardening that leaves deployment scripts free to change the system:",
            "PrivateTmp=yes",
            "ProtectKernelModules=yes",
            "ProtectKernelLogs=yes",
            "ProtectControlGroups=yes",
            "ProtectClock=yes",
            "ProtectHostname=yes",
            "RestrictSUIDSGID=yes",
            "RestrictRealtime=yes",
            "LockPersonality=yes",
        ]
    lines += ["", "[Install]", "WantedBy=" + ("default.target" if user_mode else
                                                "multi-user.target"), ""]
    return "\n".join(lines)


def _registry_environment() -> dict[str, str]:
    """Registry relocations in force now, so the service finds the instance the same way."""
    return {key: os.environ[key] for key in (INSTANCES_DIR_ENV, MACHINE_CONFIG_HOME_ENV)
            if os.environ.get(key, "").strip()}


# ------------------------------------------------------------------ systemd

def _user_manager_running() -> bool:
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.geteuid()}"
    return Path(runtime, "systemd", "private").exists()


def systemd_mode() -> SystemdMode | None:
    """Which systemd manager this process can use, if any (see TENTACLE_SERVICE_MANAGER)."""
    choice = os.environ.get(SERVICE_MANAGER_ENV, "auto").strip().lower()
    if choice == "none":
        return None
    if shutil.which("systemctl") is None:
        return None
    if is_root():
        if Path("/run/systemd/system").is_dir() or choice == "systemd":
            return "system"
        return None
    if _user_manager_running() or choice == "systemd":
        return "user"
    return None


def unit_dir(mode: SystemdMode) -> Path:
    if mode == "system":
        return SYSTEM_UNIT_DIR
    config_home = os.environ.get("XDG_CONFIG_HOME", "").strip()
    base = Path(config_home) if config_home else Path.home() / ".config"
    return base / "systemd" / "user"


def _systemctl(mode: SystemdMode, *args: str) -> subprocess.CompletedProcess[str]:
    command = ["systemctl", *(["--user"] if mode == "user" else []), *args]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServiceError(f"systemctl {' '.join(args)} failed: {exc}") from None


def _systemctl_checked(mode: SystemdMode, *args: str) -> None:
    result = _systemctl(mode, *args)
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip()
        raise ServiceError(f"systemctl {' '.join(args)} failed: {message}")


# ------------------------------------------------------------------ the supervised process

def log_path(config: TentacleConfig) -> Path:
    return config.home / LOG_RELATIVE_PATH


def pid_path(config: TentacleConfig) -> Path:
    return config.home / PID_FILE_NAME


def agent_command(config: TentacleConfig) -> list[str]:
    """The agent's command line: `$TENTACLE_AGENT_COMMAND` (split like a shell) or the CLI."""
    override = os.environ.get(AGENT_COMMAND_ENV, "").strip()
    if override:
        return shlex.split(override)
    return [sys.executable, "-m", "tentacle.cli", "agent", "--config", str(config.config_path),
            "--noconsolelogging"]  # it writes its own log file; the console would duplicate it


def supervisor_command(config: TentacleConfig, stop_timeout: float) -> list[str]:
    return [sys.executable, "-m", SUPERVISOR_MODULE, SUPERVISE_VERB,
            "--pid-file", str(pid_path(config)), "--log-file", str(log_path(config)),
            "--stop-timeout", f"{stop_timeout:g}", "--", *agent_command(config)]


def read_cmdline(pid: int) -> list[str] | None:
    """The process's arguments, or None when it is gone (or a zombie, whose cmdline is empty)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if not raw:
        return None
    return [part.decode("utf-8", "surrogateescape") for part in raw.rstrip(b"\0").split(b"\0")]


def is_our_supervisor(pid: int, pid_file: Path) -> bool:
    """Whether `pid` is the supervisor that owns `pid_file` (guards against reused pids)."""
    arguments = read_cmdline(pid)
    if arguments is None:
        return False
    try:
        at = arguments.index(SUPERVISOR_MODULE)
    except ValueError:
        return False
    tail = arguments[at + 1:]
    return (bool(tail) and tail[0] == SUPERVISE_VERB and "--pid-file" in tail
            and tail[tail.index("--pid-file") + 1:tail.index("--pid-file") + 2] == [
                str(pid_file)])


def read_pid_file(pid_file: Path) -> int | None:
    try:
        text = pid_file.read_text("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def running_supervisor(pid_file: Path) -> int | None:
    """The pid of the live supervisor recorded in `pid_file`, or None (no file, or stale)."""
    pid = read_pid_file(pid_file)
    if pid is None:
        return None
    return pid if is_our_supervisor(pid, pid_file) else None


def _reap(pid: int) -> None:
    for process in list(_SPAWNED):
        if process.poll() is not None:
            _SPAWNED.remove(process)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _remove_stale(pid_file: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        remove_durably(pid_file)


@contextmanager
def _service_lock(home: Path) -> Iterator[None]:
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(home / LOCK_FILE_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def start_supervised(config: TentacleConfig, say: Say, *,
                     stop_timeout: float = DEFAULT_STOP_TIMEOUT) -> int:
    """Spawn the supervisor unless one runs already; its pid."""
    pid_file = pid_path(config)
    with _service_lock(config.home):
        existing = running_supervisor(pid_file)
        if existing is not None:
            say(f"The Tentacle service is already running (pid {existing}).")
            return existing
        _remove_stale(pid_file)
        log_file = log_path(config)
        log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        environment = dict(os.environ, TENTACLE_CONFIG=str(config.config_path),
                           TENTACLE_INSTANCE=config.instance)
        environment["PYTHONPATH"] = os.pathsep.join(
            p for p in (_PACKAGE_ROOT, environment.get("PYTHONPATH", "")) if p)
        with open(log_file, "ab", buffering=0) as log_handle:
            os.fchmod(log_handle.fileno(), 0o600)
            try:
                process = subprocess.Popen(
                    supervisor_command(config, stop_timeout), stdin=subprocess.DEVNULL,
                    stdout=log_handle, stderr=subprocess.STDOUT, cwd=str(config.home),
                    env=environment, start_new_session=True, close_fds=True)
            except OSError as exc:
                raise ServiceError(f"Could not start the Tentacle service: {exc}") from None
        _SPAWNED.append(process)
        write_atomic(pid_file, f"{process.pid}\n".encode("ascii"), mode=0o644)
        deadline = time.monotonic() + START_CHECK_SECONDS
        while time.monotonic() < deadline:
            if process.poll() is not None:
                _remove_stale(pid_file)
                raise ServiceError(f"The Tentacle service stopped at once (exit code "
                                   f"{process.returncode}); see {log_file}.")
            time.sleep(0.05)
        say(f"Service started: {unit_name(config.instance)} (pid {process.pid}, supervised "
            f"background process; log: {log_file})")
        return process.pid


def stop_supervised(config: TentacleConfig, say: Say, *,
                    timeout: float = DEFAULT_STOP_TIMEOUT) -> bool:
    """SIGTERM the supervisor (which stops the agent), SIGKILL its group after `timeout`.
    False when it was not running."""
    pid_file = pid_path(config)
    with _service_lock(config.home):
        pid = running_supervisor(pid_file)
        if pid is None:
            _remove_stale(pid_file)
            return False
        say(f"Stopping service: {unit_name(config.instance)} (pid {pid})")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        # The supervisor itself gives the agent `timeout` to stop; allow it a little more.
        if not _wait_gone(pid, pid_file, timeout + 5.0):
            say(f"The service did not stop within {timeout + 5.0:g} seconds; killing it.")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            _wait_gone(pid, pid_file, 5.0)
        _remove_stale(pid_file)
        say("Service stopped")
        return True


def _wait_gone(pid: int, pid_file: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        _reap(pid)
        if not is_our_supervisor(pid, pid_file):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


# ------------------------------------------------------------------ the controller

class ServiceController:
    """The `service` command's actions for one instance."""

    def __init__(self, config: TentacleConfig, say: Say, *,
                 stop_timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        self.config = config
        self.say = say
        self.stop_timeout = stop_timeout
        self.mode = systemd_mode()
        self.unit = unit_name(config.instance)

    @property
    def unit_file(self) -> Path | None:
        return unit_dir(self.mode) / self.unit if self.mode is not None else None

    def installed(self) -> bool:
        return self.unit_file is not None and self.unit_file.exists()

    def install(self) -> None:
        if self.mode is None:
            raise ServiceError(
                "systemd is not available on this machine (no running system or user manager), "
                "so the Tentacle service cannot be installed. 'tentacle service --start' runs "
                "the agent as a supervised background process without it, and 'tentacle agent' "
                "runs it in the foreground under any other supervisor.")
        assert self.unit_file is not None
        text = render_unit(self.config.instance, exec_start_command(self.config),
                           user_mode=self.mode == "user", environment=_registry_environment())
        try:
            self.unit_file.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.unit_file, text.encode("utf-8"), mode=0o644)
        except OSError as exc:
            raise ServiceError(f"Could not install the systemd service {self.unit}: "
                               f"{exc.strerror}") from None
        _systemctl_checked(self.mode, "daemon-reload")
        _systemctl_checked(self.mode, "enable", self.unit)
        self.say(f"Service installed: {self.unit} ({self.unit_file})")
        if self.mode == "user":
            self.say("To keep it running while you are logged out: loginctl enable-linger "
                     f"{os.environ.get('USER', '$USER')}")

    def uninstall(self) -> None:
        if not self.installed():
            self.say(f"The service {self.unit} is not installed.")
            return
        assert self.mode is not None and self.unit_file is not None
        self.say(f"Removing systemd service: {self.unit}")
        _systemctl(self.mode, "stop", self.unit)
        _systemctl(self.mode, "disable", self.unit)
        try:
            remove_durably(self.unit_file)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ServiceError(f"Could not remove {self.unit_file}: {exc.strerror}") from None
        _systemctl(self.mode, "daemon-reload")
        self.say("Service uninstalled")

    def start(self) -> None:
        if self.installed():
            assert self.mode is not None
            _systemctl_checked(self.mode, "start", self.unit)
            self.say(f"Service started: {self.unit}")
            return
        start_supervised(self.config, self.say, stop_timeout=self.stop_timeout)

    def stop(self) -> None:
        stopped = False
        if self.installed():
            assert self.mode is not None
            self.say(f"Stopping service: {self.unit}")
            _systemctl_checked(self.mode, "stop", self.unit)
            self.say("Service stopped")
            stopped = True
        if stop_supervised(self.config, self.say, timeout=self.stop_timeout):
            stopped = True
        if not stopped:
            self.say(f"The service {self.unit} is not running.")

    def restart(self) -> None:
        if self.installed():
            assert self.mode is not None
            self.say(f"Restarting service: {self.unit}")
            _systemctl_checked(self.mode, "restart", self.unit)
            self.say("Service has been restarted")
            return
        stop_supervised(self.config, self.say, timeout=self.stop_timeout)
        start_supervised(self.config, self.say, stop_timeout=self.stop_timeout)

    def status(self) -> ServiceStatus:
        if self.installed():
            assert self.mode is not None
            result = _systemctl(self.mode, "is-active", self.unit)
            state = (result.stdout or "").strip() or "unknown"
            return ServiceStatus(running=state == "active", manager="systemd", pid=None,
                                 detail=f"{self.unit} is {state} (systemd)")
        pid = running_supervisor(pid_path(self.config))
        if pid is not None:
            return ServiceStatus(running=True, manager="supervisor", pid=pid,
                                 detail=f"{self.unit} is running (pid {pid}, supervised "
                                        f"background process; log: {log_path(self.config)})")
        return ServiceStatus(running=False, manager="none", pid=None,
                             detail=f"{self.unit} is not running")


# ------------------------------------------------------------------ the supervisor process

def _timestamp() -> str:
    """The agent log's time format (`2024-03-12 01:02:03.456 +00:00`), so the file reads as one."""
    now = datetime.datetime.now(datetime.UTC)
    return now.strftime("%Y-%m-%d %H:%M:%S.") + f"{now.microsecond // 1000:03d} +00:00"


def _log(handle: BinaryIO, message: str) -> None:
    line = f"{_timestamp()}  INFO  [service {os.getpid()}] {message}\n"
    with contextlib.suppress(OSError):
        handle.write(line.encode("utf-8"))
        handle.flush()


def rotate_log(path: Path, max_bytes: int = LOG_ROTATE_BYTES, archives: int = LOG_ARCHIVES) -> None:
    """`OctopusTentacle.txt` → `.1.txt` → … when it has grown past `max_bytes`."""
    try:
        if path.stat().st_size < max_bytes:
            return
    except FileNotFoundError:
        return
    for index in range(archives, 0, -1):
        older = path.with_suffix(f".{index}{path.suffix}")
        newer = path.with_suffix(f".{index - 1}{path.suffix}") if index > 1 else path
        if newer.exists():
            os.replace(newer, older)


def supervise(command: Sequence[str], log_file: Path, pid_file: Path, stop_timeout: float,
              *, poll_interval: float = 0.1) -> int:
    """Run `command`, restarting it when it exits, until SIGTERM/SIGINT; 0 on a clean stop.

    The signal handlers only set a flag; the loop polls it (no exception can land between
    spawning the agent and recording it, so the agent is never orphaned).
    """
    stop = {"requested": False}

    def on_signal(_signum: int, _frame: object) -> None:
        stop["requested"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    delay = RESTART_DELAY_FIRST
    child: subprocess.Popen[bytes] | None = None
    log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    while not stop["requested"]:
        rotate_log(log_file)
        with open(log_file, "ab", buffering=0) as handle:
            try:
                child = subprocess.Popen(list(command), stdin=subprocess.DEVNULL,
                                         stdout=handle, stderr=subprocess.STDOUT)
            except OSError as exc:
                _log(handle, f"Could not start the agent ({shlex.join(command)}): {exc}")
                child = None
            else:
                _log(handle, f"Agent started (pid {child.pid})")
        started = time.monotonic()
        while child is not None and child.poll() is None and not stop["requested"]:
            time.sleep(poll_interval)
        if stop["requested"]:
            break
        code = child.returncode if child is not None else None
        if time.monotonic() - started >= STABLE_RUN_SECONDS:
            delay = RESTART_DELAY_FIRST
        with open(log_file, "ab", buffering=0) as handle:
            _log(handle, f"Agent exited with code {code}; restarting in {delay:g} s")
        child = None
        wake = time.monotonic() + delay
        while not stop["requested"] and time.monotonic() < wake:
            time.sleep(poll_interval)
        delay = min(delay * 2, RESTART_DELAY_MAX)
    with open(log_file, "ab", buffering=0) as handle:
        if child is not None and child.poll() is None:
            _log(handle, f"Stopping the agent (pid {child.pid})")
            child.terminate()
            try:
                child.wait(timeout=stop_timeout)
            except subprocess.TimeoutExpired:
                _log(handle, f"The agent did not stop within {stop_timeout:g} s; killing it")
                child.kill()
                child.wait()
        _log(handle, "Service stopped")
    if read_pid_file(pid_file) == os.getpid():
        with contextlib.suppress(OSError):
            pid_file.unlink()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tentacle.service supervise --pid-file P --log-file L -- COMMAND…`."""
    parser = argparse.ArgumentParser(prog="python -m tentacle.service")
    sub = parser.add_subparsers(dest="verb", required=True)
    run = sub.add_parser(SUPERVISE_VERB)
    run.add_argument("--pid-file", type=Path, required=True)
    run.add_argument("--log-file", type=Path, required=True)
    run.add_argument("--stop-timeout", type=float, default=DEFAULT_STOP_TIMEOUT)
    run.add_argument("command", nargs=argparse.REMAINDER)
    arguments = parser.parse_args(argv)
    command = [c for c in arguments.command]
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        parser.error("no agent command given")
    return supervise(command, arguments.log_file, arguments.pid_file, arguments.stop_timeout)


if __name__ == "__main__":
    sys.exit(main())
