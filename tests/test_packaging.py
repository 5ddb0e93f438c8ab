"""Packaging: the systemd units (checked by `systemd-analyze verify` and `security --offline`
where systemd-analyze exists, and always by a strict INI parse), the options their ExecStart
lines use, install.sh's staged layout, and the MemoryDenyWriteExecute choice of each unit,
checked against the kernel's own write-xor-execute rule (PR_SET_MDWE)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from octopus_comms.settings import ServerSettings, save_settings
from tentacle.service import render_unit
from tests.frontdoor_fixtures import http_request, read_response, tls_connect, wait_for
from tests.frontdoor_fixtures import front_door, site  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
UNITS = ("httpsys-emu.service", "octopus-comms.service", "octopus-comms-embedded.service")
INSTALLED_BIN = "/opt/httpsys-emu/venv/bin"
VENV_BIN = Path(sys.executable).parent
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


# ------------------------------------------------------------------ a strict unit-file parser

def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections → (key, value) in order. No continuation lines, no stray text, no key outside a
    section, no section twice: stricter than systemd, so a typo cannot hide."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        assert not line.endswith("\\"), f"line {number}: continuation lines are not used here"
        section = re.fullmatch(r"\[([A-Za-z]+)\]", stripped)
        if section:
            assert section.group(1) not in sections, f"line {number}: section repeated"
            current = sections[section.group(1)] = []
            continue
        pair = re.fullmatch(r"([A-Za-z][A-Za-z0-9]*)=(.*)", stripped)
        assert pair and current is not None, f"line {number}: not KEY=VALUE in a section: {line}"
        current.append((pair.group(1), pair.group(2)))
    return sections


def unit(name: str) -> dict[str, list[tuple[str, str]]]:
    return parse_unit((PACKAGING / "systemd" / name).read_text())


def values(parsed: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in parsed.get(section, []) if k == key]


def one(parsed: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    found = values(parsed, section, key)
    assert len(found) == 1, f"{section}.{key}: {found}"
    return found[0]


HARDENING = {
    "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
    "PrivateTmp": "yes", "PrivateDevices": "yes", "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes", "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6", "RestrictNamespaces": "yes",
    "LockPersonality": "yes", "SystemCallArchitectures": "native",
    "Restart": "on-failure", "KillSignal": "SIGTERM",
}


@pytest.mark.parametrize("name", UNITS)
def test_units_are_well_formed_and_hardened(name: str) -> None:
    parsed = unit(name)
    assert set(parsed) == {"Unit", "Service", "Install"}
    assert one(parsed, "Install", "WantedBy") == "multi-user.target"
    assert "network-online.target" in one(parsed, "Unit", "After")
    for key, value in HARDENING.items():
        assert one(parsed, "Service", key) == value, key
    assert "@system-service" in values(parsed, "Service", "SystemCallFilter")
    assert int(one(parsed, "Service", "RestartSec")) > 0
    assert int(one(parsed, "Service", "TimeoutStopSec")) >= 20     # the drain takes up to 10 s
    assert one(parsed, "Service", "ExecStart").startswith(INSTALLED_BIN + "/")
    writable = one(parsed, "Service", "ReadWritePaths").split()
    assert "/var/lib/httpsys-emu" in writable
    assert one(parsed, "Service", "User") != "root"
    mdwe = one(parsed, "Service", "MemoryDenyWriteExecute")
    assert mdwe == ("yes" if name == "octopus-comms.service" else "no")


def test_front_door_unit_binds_443_unprivileged_with_its_layout() -> None:
    parsed = unit("httpsys-emu.service")
    assert one(parsed, "Service", "User") == "httpsys"
    assert one(parsed, "Service", "AmbientCapabilities") == "CAP_NET_BIND_SERVICE"
    assert one(parsed, "Service", "CapabilityBoundingSet") == "CAP_NET_BIND_SERVICE"
    assert one(parsed, "Service", "StateDirectory") == "httpsys-emu"
    assert one(parsed, "Service", "LogsDirectory") == "httpsys-emu"
    assert one(parsed, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(parsed, "Service", "Type") == "notify"
    assert one(parsed, "Service", "EnvironmentFile") == "-/etc/default/httpsys-emu"
    argv = shlex.split(one(parsed, "Service", "ExecStart"))
    assert argv[1:] == ["--state-dir", "/var/lib/httpsys-emu", "serve", "--log-dir",
                        "/var/log/httpsys-emu", "$HTTPSYS_EMU_OPTS"]
    assert set(one(parsed, "Service", "ReadWritePaths").split()) == {
        "/var/lib/httpsys-emu", "/var/log/httpsys-emu"}


def test_comms_units_follow_the_front_door() -> None:
    registered = unit("octopus-comms.service")
    assert one(registered, "Unit", "Requires") == "httpsys-emu.service"
    assert "httpsys-emu.service" in one(registered, "Unit", "After").split()
    assert one(registered, "Service", "User") == "octopus"
    assert one(registered, "Service", "SupplementaryGroups") == "httpsys"
    assert one(registered, "Service", "CapabilityBoundingSet") == ""
    embedded = unit("octopus-comms-embedded.service")
    assert set(one(embedded, "Unit", "Conflicts").split()) == {"httpsys-emu.service",
                                                               "octopus-comms.service"}
    assert "--embedded" in shlex.split(one(embedded, "Service", "ExecStart"))
    assert one(embedded, "Service", "AmbientCapabilities") == "CAP_NET_BIND_SERVICE"


def test_tentacle_unit_is_consistent_with_ours() -> None:
    """`tentacle service --install` writes its own unit; it keeps the shared conventions."""
    parsed = parse_unit(render_unit("Tentacle", [f"{INSTALLED_BIN}/python", "-m",
                                                 "tentacle.cli", "agent", "--instance=Tentacle"],
                                    user_mode=False))
    ours = unit("httpsys-emu.service")
    for section, key in (("Install", "WantedBy"), ("Service", "RestartSec")):
        assert one(parsed, section, key) == one(ours, section, key), key
    assert "network-online.target" in one(parsed, "Unit", "After")
    assert one(parsed, "Service", "ExecStart").startswith(INSTALLED_BIN + "/")


# ------------------------------------------------------------------ systemd-analyze

def _stage_units(tmp_path: Path) -> list[Path]:
    """The units with the venv path pointing at this test run's interpreter (verify checks
    that ExecStart is executable), plus the tentacle's generated unit."""
    paths = []
    for name in UNITS:
        text = (PACKAGING / "systemd" / name).read_text().replace(INSTALLED_BIN, str(VENV_BIN))
        path = tmp_path / name
        path.write_text(text)
        paths.append(path)
    tentacle = tmp_path / "tentacle-Tentacle.service"
    tentacle.write_text(render_unit("Tentacle", [sys.executable, "-m", "tentacle.cli", "agent",
                                                 "--instance=Tentacle"], user_mode=False))
    paths.append(tentacle)
    return paths


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_reports_nothing(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", *map(str, _stage_units(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_security_rates_our_units_ok(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    for path in _stage_units(tmp_path)[:len(UNITS)]:
        result = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", str(path)],
                                capture_output=True, text=True, timeout=60)
        match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
        assert match, result.stdout + result.stderr
        assert float(match.group(1)) <= 2.0, f"{path.name}: {match.group(1)}"


# ------------------------------------------------------------------ the commands they run

@pytest.mark.parametrize("name", UNITS)
def test_exec_start_options_exist(name: str) -> None:
    argv = shlex.split(one(unit(name), "Service", "ExecStart"))
    program = VENV_BIN / Path(argv[0]).name
    args = [a for a in argv[1:] if not a.startswith("$")]
    result = subprocess.run([str(program), *args, "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr


def test_default_files_offer_options_that_exist() -> None:
    text = (PACKAGING / "default" / "httpsys-emu").read_text()
    assert re.search(r'^HTTPSYS_EMU_OPTS=""$', text, re.M)
    result = subprocess.run([str(VENV_BIN / "httpsys-emu"), "serve", "--help"],
                            capture_output=True, text=True, timeout=60)
    for option in re.findall(r"#\s+(--[a-z-]+)", text):
        assert option in result.stdout, option
    comms = (PACKAGING / "default" / "octopus-comms").read_text()
    assert re.search(r'^OCTOPUS_COMMS_OPTS=""$', comms, re.M)
    result = subprocess.run([str(VENV_BIN / "octopus-comms"), "serve", "--help"],
                            capture_output=True, text=True, timeout=60)
    for option in re.findall(r"#\s+(--[a-z-]+)", comms):
        assert option in result.stdout, option


# ------------------------------------------------------------------ install.sh

def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_install_sh_stages_the_layout_and_says_what_it_skipped(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    env = dict(os.environ, DESTDIR=str(stage))
    command = ["sh", str(PACKAGING / "install.sh"), "--no-users", "--no-venv"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for skipped in ("creating users", "creating /opt/httpsys-emu/venv",
                    "systemctl daemon-reload"):
        assert f"skipped: {skipped}" in result.stdout, skipped
    expected_dirs = {"var/lib/httpsys-emu": 0o771, "var/log/httpsys-emu": 0o750,
                     "var/lib/octopus-comms": 0o711, "etc/octopus": 0o755}
    for relative, mode in expected_dirs.items():
        assert (stage / relative).is_dir() and _mode(stage / relative) == mode, relative
    for name in UNITS:
        installed = stage / "etc/systemd/system" / name
        assert installed.read_bytes() == (PACKAGING / "systemd" / name).read_bytes()
        assert _mode(installed) == 0o644
    for name in ("httpsys-emu", "octopus-comms"):
        assert (stage / "etc/default" / name).read_bytes() == \
            (PACKAGING / "default" / name).read_bytes()
        wrapper = stage / "usr/local/bin" / name
        assert _mode(wrapper) == 0o755
        assert subprocess.run(["sh", "-n", str(wrapper)]).returncode == 0
    assert os.readlink(stage / "usr/local/bin/tentacle") == "/opt/httpsys-emu/venv/bin/tentacle"
    assert (stage / "etc/logrotate.d/httpsys-emu").is_file()

    # A second run keeps the operator's /etc/default files.
    (stage / "etc/default/httpsys-emu").write_text('HTTPSYS_EMU_OPTS="--metrics-port 9464"\n')
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "kept" in again.stdout
    assert "9464" in (stage / "etc/default/httpsys-emu").read_text()


def test_install_sh_refuses_unknown_options_and_shows_help(tmp_path: Path) -> None:
    env = dict(os.environ, DESTDIR=str(tmp_path))
    bad = subprocess.run(["sh", str(PACKAGING / "install.sh"), "--bogus"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "unknown option --bogus" in bad.stderr
    assert not any(tmp_path.iterdir())
    helped = subprocess.run(["sh", str(PACKAGING / "install.sh"), "--help"],
                            capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "--no-users" in helped.stdout
    assert "set -eu" not in helped.stdout


# ------------------------------------------------------------------ MemoryDenyWriteExecute

PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
MDWE_EXEC = ("import ctypes, os, sys\n"
             "libc = ctypes.CDLL(None, use_errno=True)\n"
             f"if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0):\n"
             "    sys.exit('PR_SET_MDWE: errno %d' % ctypes.get_errno())\n"
             "os.execv(sys.argv[1], sys.argv[1:])\n")


def _kernel_has_mdwe() -> bool:
    result = subprocess.run([sys.executable, "-c", MDWE_EXEC, "/bin/true"],
                            capture_output=True, timeout=30)
    return result.returncode == 0


needs_mdwe = pytest.mark.skipif(not _kernel_has_mdwe(),
                                reason="the kernel has no PR_SET_MDWE (Linux < 6.3)")


@needs_mdwe
def test_front_door_tls_needs_write_execute_memory() -> None:
    """Why httpsys-emu.service says MemoryDenyWriteExecute=no: building the front door's TLS
    context makes pyOpenSSL callbacks (cffi closures), which need W+X memory. When this test
    starts failing, a cffi/pyOpenSSL upgrade fixed it: turn the setting on."""
    code = ("from httpsys_emu.tlsconfig import switching_context\n"
            "switching_context(lambda sni, ip, port: None)\n")
    result = subprocess.run([sys.executable, "-c", MDWE_EXEC, sys.executable, "-c", code],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "Cannot allocate write+execute memory for ffi.callback()" in result.stderr


@needs_mdwe
async def test_registered_comms_server_runs_without_write_execute_memory(site, front_door,
                                                                         tmp_path) -> None:
    """octopus-comms.service says MemoryDenyWriteExecute=yes: run `octopus-comms serve` under
    the kernel's MDWE behind a real front door and use its API through the shared port."""
    home = tmp_path / "home"
    home.mkdir()
    save_settings(home, ServerSettings(
        comms_listen_websocket=(f"https://+:{site.port}/OctopusComms/",)))
    log_path = tmp_path / "comms.log"
    with open(log_path, "wb") as log:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-c", MDWE_EXEC, str(VENV_BIN / "octopus-comms"), "serve",
             "--home", str(home), "--state-dir", str(site.state_dir)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        await wait_for(lambda: len(front_door.registrations()) >= 2 or process.poll() is not None,
                       timeout=20)
        assert process.poll() is None, log_path.read_text()
        stream = await tls_connect(site.port)
        async with stream:
            await stream.send_all(http_request("/api"))
            response = await read_response(stream)
        assert response.status == 200 and b"Octopus Deploy" in response.body
    finally:
        process.terminate()
        with trio.move_on_after(15):
            await process.wait()
        if process.poll() is None:
            process.kill()
            await process.wait()
    assert "write+execute" not in log_path.read_text()
