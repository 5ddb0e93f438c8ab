"""`httpsys-emu` as a user drives it: exact netsh messages and layouts, exit codes, help texts.

Most cases run in-process through typer's CliRunner (fast); a handful run the installed console
script in a subprocess, as a user would, end to end.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from typer.testing import CliRunner, Result

from httpsys_emu import cli
from httpsys_emu.certstore import CertStore
from httpsys_emu.cli import HANDLERS, app
from httpsys_emu.store import Store

APPID = "{00112233-4455-6677-8899-aabbccddeeff}"
SCRIPT = Path(sys.executable).parent / "httpsys-emu"
NOT_FOUND = "The system cannot find the file specified.\n"
ALREADY = "Cannot create a file when that file already exists.\n"
PARAMETER = "The parameter is incorrect.\n"

Run = Callable[..., Result]


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def run(state: Path) -> Run:
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(app, ["--state-dir", str(state), *args], prog_name="httpsys-emu")
    return invoke


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A certificate made once; (thumbprint, PEM file with its key) for importing."""
    source = tmp_path_factory.mktemp("cert")
    info = CertStore(source).new_self_signed("CN=localhost", [], key_type="ecdsa-p256")
    pem = source / "both.pem"
    pem.write_text(CertStore(source).export_pem(info.thumbprint, include_key=True))
    return info.thumbprint, pem


@pytest.fixture
def thumb(run: Run, cert_files: tuple[str, Path]) -> str:
    thumbprint, pem = cert_files
    result = run("cert", "import", str(pem))
    assert result.exit_code == 0, result.output
    return thumbprint


def _ok(result: Result, stdout: str) -> None:
    assert (result.exit_code, result.stdout, result.stderr) == (0, stdout, ""), result.output


def _fails(result: Result, stdout: str) -> None:
    assert (result.exit_code, result.stdout) == (1, stdout), result.output


# --------------------------------------------------------------------------- sslcert


def test_sslcert_add_show_delete(run: Run, thumb: str) -> None:
    add = ["add", "sslcert", "ipport=0.0.0.0:8443", f"certhash={thumb}", f"appid={APPID}"]
    _ok(run(*add), "SSL Certificate successfully added\n")
    _fails(run(*add), f"SSL Certificate add failed, Error: 183\n{ALREADY}")
    shown = run("show", "sslcert")
    assert shown.exit_code == 0
    assert shown.stdout.startswith("SSL Certificate bindings:\n-------------------------\n\n"
                                   "    IP:port                      : 0.0.0.0:8443\n"
                                   f"    Certificate Hash             : {thumb.lower()}\n")
    assert shown.stdout.endswith("    Negotiate Client Certificate : Disabled\n\n")
    assert run("show", "sslcert", "ipport=0.0.0.0:8443").stdout == shown.stdout
    _ok(run("delete", "sslcert", "ipport=0.0.0.0:8443"), "SSL Certificate successfully deleted\n")
    _fails(run("delete", "sslcert", "ipport=0.0.0.0:8443"),
           f"SSL Certificate deletion failed, Error: 2\n{NOT_FOUND}")
    _fails(run("show", "sslcert", "ipport=0.0.0.0:8443"),
           f"SSL Certificate bindings:\n-------------------------\n\n{NOT_FOUND}")


def test_sslcert_every_option_and_ipv6(run: Run, thumb: str) -> None:
    spaced = " ".join(thumb[i:i + 2] for i in range(0, 40, 2)).lower()
    _ok(run("add", "sslcert", "IPPORT=[::]:443", f"CertHash={spaced}", f"AppId={APPID.upper()}",
            "certstorename=My", "verifyclientcertrevocation=disable",
            "verifyrevocationwithcachedclientcertonly=enable", "usagecheck=disable",
            "revocationfreshnesstime=60", "urlretrievaltimeout=5000", "sslctlidentifier=ctl",
            "sslctlstorename=CtlStore", "dsmapperusage=enable", "clientcertnegotiation=Enable"),
        "SSL Certificate successfully added\n")
    shown = run("sslcert", "show", "ipport=[::]:443").stdout
    for row in ("IP:port                      : [::]:443",
                f"Application ID               : {APPID}",
                "Certificate Store Name       : My",
                "Verify Client Certificate Revocation : Disabled",
                "Verify Revocation Using Cached Client Certificate Only : Enabled",
                "Usage Check                  : Disabled",
                "Revocation Freshness Time    : 60",
                "URL Retrieval Timeout        : 5000",
                "Ctl Identifier               : ctl",
                "Ctl Store Name               : CtlStore",
                "DS Mapper Usage              : Enabled",
                "Negotiate Client Certificate : Enabled"):
        assert f"    {row}\n" in shown


def test_sslcert_hostnameport(run: Run, thumb: str) -> None:
    _ok(run("sslcert", "add", "hostnameport=WWW.Contoso.com:443", f"certhash={thumb}",
            f"appid={APPID}"), "SSL Certificate successfully added\n")
    assert "    Hostname:port                : www.contoso.com:443\n" in run(
        "show", "sslcert", "hostnameport=www.contoso.com:443").stdout


@pytest.mark.parametrize("args", [
    ["ipport=0.0.0.0:443", f"appid={APPID}"],                                 # no certhash
    ["ipport=0.0.0.0:443", "certhash=abcd", f"appid={APPID}"],
    ["ipport=0.0.0.0:443", "certhash=" + "A" * 40],                           # no appid
    ["ipport=0.0.0.0:443", "certhash=" + "A" * 40, "appid=not-a-guid"],
    ["ipport=0.0.0.0:443", "certhash=" + "A" * 40, f"appid={APPID}", "bogus=1"],
    ["ipport=::1:443", "certhash=" + "A" * 40, f"appid={APPID}"],
    ["certhash=" + "A" * 40, f"appid={APPID}"],                               # no key at all
    ["ipport=0.0.0.0:443", "ccs=443", "certhash=" + "A" * 40, f"appid={APPID}"],
    ["ipport=0.0.0.0:443", "certhash=" + "A" * 40, f"appid={APPID}", "usagecheck=maybe"],
])
def test_sslcert_bad_parameters(run: Run, args: list[str]) -> None:
    _fails(run("add", "sslcert", *args), PARAMETER)


def test_sslcert_unknown_certificate_is_1312(run: Run, thumb: str) -> None:
    message = ("SSL Certificate add failed, Error: 1312\n"
               "A specified logon session does not exist. It may already have been terminated.\n")
    _fails(run("add", "sslcert", "ipport=0.0.0.0:443", "certhash=" + "A" * 40, f"appid={APPID}"),
           message)
    # the right hash in the wrong store
    _fails(run("add", "sslcert", "ipport=0.0.0.0:443", f"certhash={thumb}", f"appid={APPID}",
               "certstorename=Root"), message)


def test_sslcert_certificate_without_key_is_1312(run: Run, state: Path,
                                                 cert_files: tuple[str, Path]) -> None:
    thumbprint, pem = cert_files
    only_cert = pem.read_text().split("-----BEGIN PRIVATE KEY")[0]
    (state.parent / "c.pem").write_text(only_cert)
    assert run("cert", "import", str(state.parent / "c.pem")).exit_code == 0
    result = run("add", "sslcert", "ipport=0.0.0.0:443", f"certhash={thumbprint}",
                 f"appid={APPID}")
    assert result.exit_code == 1 and result.stdout.startswith(
        "SSL Certificate add failed, Error: 1312\n")


# --------------------------------------------------------------------------- urlacl


def test_urlacl_add_show_delete(run: Run) -> None:
    _ok(run("add", "urlacl", "url=https://+:443/OctopusComms", "user=root"),
        "URL reservation successfully added\n")
    _fails(run("add", "urlacl", "url=https://+:443/octopuscomms/", "user=root"),
           f"Url reservation add failed, Error: 183\n{ALREADY}")
    _ok(run("show", "urlacl"), """\
URL Reservations:
-----------------

    Reserved URL            : https://+:443/OctopusComms/
        User: \\root
            Listen: Yes
            Delegate: No
            SDDL: D:(A;;GX;;;S-1-22-1-0)

""")
    _ok(run("delete", "urlacl", "url=https://+:443/OCTOPUSCOMMS/"),
        "URL reservation successfully deleted\n")
    _fails(run("delete", "urlacl", "url=https://+:443/OctopusComms/"),
           f"Url reservation delete failed, Error: 2\n{NOT_FOUND}")
    _ok(run("show", "urlacl"), "URL Reservations:\n-----------------\n\n")


def test_urlacl_user_forms_and_sddl(run: Run) -> None:
    _ok(run("urlacl", "add", "URL=http://+:80/a/", "USER=uid:1000", "Listen=YES",
            "DELEGATE=yes"), "URL reservation successfully added\n")
    _ok(run("add", "urlacl", "url=http://+:80/b/", "sddl=D:(A;;GX;;;WD)"),
        "URL reservation successfully added\n")
    _ok(run("add", "urlacl", "url=http://+:80/c/", "user=\\root", "listen=no", "delegate=yes"),
        "URL reservation successfully added\n")
    _ok(run("http", "add", "urlacl", "url=http://+:80/d/", "user=Everyone"),
        "URL reservation successfully added\n")
    shown = run("urlacl", "show").stdout
    assert "SDDL: D:(A;;GA;;;S-1-22-1-1000)\n" in shown
    assert "        User: \\Everyone\n            Listen: Yes\n" in shown
    assert "SDDL: D:(A;;GW;;;S-1-22-1-0)\n" in shown
    one = run("show", "urlacl", "url=http://+:80/B").stdout
    assert one.count("Reserved URL") == 1 and "http://+:80/b/" in one


def test_urlacl_unknown_user_is_create_sddl_failed(run: Run) -> None:
    _fails(run("add", "urlacl", "url=http://+:80/x/", "user=no-such-user-here"),
           "Create SDDL failed, Error: 1332\n"
           "No mapping between account names and security IDs was done.\n")


@pytest.mark.parametrize("args, stdout", [
    (["url=http://+:80/x/"], PARAMETER),
    (["user=root"], PARAMETER),
    (["url=http://+:80/x/", "user=root", "sddl=D:(A;;GX;;;WD)"], PARAMETER),
    (["url=http://+:80/x/", "sddl=D:(A;;GX;;;WD)", "listen=yes"], PARAMETER),
    (["url=http://+:80/x/", "user=root", "listen=maybe"], PARAMETER),
    (["url=http://+:80/x/", "user=root", "listen=no"], PARAMETER),
    (["url=http://+:80/x/", "sddl=garbage"], PARAMETER),
    (["url=http://+:80", "user=root"], f"Url reservation add failed, Error: 87\n{PARAMETER}"),
    (["url=HTTP://+:80/", "user=root"], f"Url reservation add failed, Error: 87\n{PARAMETER}"),
])
def test_urlacl_bad_parameters(run: Run, args: list[str], stdout: str) -> None:
    _fails(run("add", "urlacl", *args), stdout)


# --------------------------------------------------------------------------- iplisten, timeout


def test_iplisten(run: Run) -> None:
    _ok(run("add", "iplisten", "ipaddress=192.168.33.1"), "IP address successfully added\n")
    _ok(run("iplisten", "add", "IPADDRESS=::1"), "IP address successfully added\n")
    _fails(run("add", "iplisten", "ipaddress=::1"), f"IP address add failed, Error: 183\n{ALREADY}")
    _fails(run("add", "iplisten", "ipaddress=1.2.3"), PARAMETER)
    _ok(run("show", "iplisten"), "IP addresses present in the IP listen list:\n"
        "-------------------------------------------\n\n    192.168.33.1\n    ::1\n\n")
    _ok(run("delete", "iplisten", "ipaddress=192.168.33.1"), "IP address successfully deleted\n")
    _fails(run("delete", "iplisten", "ipaddress=192.168.33.1"),
           f"IP address delete failed, Error: 2\n{NOT_FOUND}")


def test_timeouts(run: Run, state: Path) -> None:
    _ok(run("add", "timeout", "timeouttype=IdleConnectionTimeout", "value=240"),
        "Timeout successfully added\n")
    _ok(run("timeout", "show"), "Service Timeout Values:\n-----------------------\n\n"
        "    Idle Connection Timeout (secs) : 240\n"
        "    Header Wait Timeout (secs)     : 120\n\n")
    _ok(run("delete", "timeout", "timeouttype=idleconnectiontimeout"),
        "Timeout successfully deleted\n")
    _fails(run("delete", "timeout", "timeouttype=idleconnectiontimeout"),
           f"Timeout delete failed, Error: 2\n{NOT_FOUND}")
    _fails(run("add", "timeout", "timeouttype=entitybody", "value=5"), PARAMETER)
    _fails(run("add", "timeout", "timeouttype=headerwaittimeout", "value=70000"), PARAMETER)
    _fails(run("add", "timeout", "timeouttype=headerwaittimeout", "value=0"),
           f"Timeout add failed, Error: 87\n{PARAMETER}")
    with Store.open(state) as store:
        assert store.timeouts().idle_connection == 120


def test_settings(run: Run, state: Path) -> None:
    _ok(run("add", "setting", "setting=MaxFieldLength", "value=32768"),
        "Setting successfully added\n")
    assert "    maxfieldlength               : 32768 (bytes)\n" in run("show", "setting").stdout
    with Store.open(state) as store:
        assert store.limits().max_field_length == 32768
    _ok(run("setting", "delete", "setting=maxfieldlength"), "Setting successfully deleted\n")
    _fails(run("add", "setting", "setting=nosuch", "value=1"), PARAMETER)


# --------------------------------------------------------------------------- forward


def test_forward(run: Run) -> None:
    _ok(run("add", "forward", "url=https://+:8443/", "target=http://127.0.0.1:8080"),
        "Forward successfully added\n")
    _ok(run("forward", "add", "url=https://+:8443/api", "target=unix:/run/api.sock"),
        "Forward successfully added\n")
    _fails(run("add", "forward", "url=https://+:8443/API/", "target=unix:/run/other.sock"),
           f"Forward add failed, Error: 183\n{ALREADY}")
    _fails(run("add", "forward", "url=https://+:8443/x", "target=ftp://a:1"),
           f"Forward add failed, Error: 87\n{PARAMETER}")
    _ok(run("show", "forward"), """\
URL Forwards:
-------------

    Forwarded URL           : https://+:8443/
        Target: http://127.0.0.1:8080

    Forwarded URL           : https://+:8443/api/
        Target: unix:/run/api.sock

""")
    _ok(run("delete", "forward", "url=https://+:8443/api/"), "Forward successfully deleted\n")
    _fails(run("delete", "forward", "url=https://+:8443/api/"),
           f"Forward delete failed, Error: 2\n{NOT_FOUND}")


# --------------------------------------------------------------------------- dispatch


def test_unknown_commands(run: Run) -> None:
    _fails(run("add", "frobnicate"), "The following command was not found: add frobnicate.\n")
    _fails(run("urlacl", "frob"), "The following command was not found: urlacl frob.\n")
    result = run("show")
    assert result.exit_code == 1 and "show sslcert" in result.stdout


def test_verbose_explains_on_stderr(state: Path) -> None:
    result = CliRunner().invoke(app, ["--state-dir", str(state), "--verbose", "add", "urlacl",
                                      "url=http://+:80", "user=root"])
    assert result.exit_code == 1
    assert result.stdout == f"Url reservation add failed, Error: 87\n{PARAMETER}"
    assert "port" in result.stderr


def test_bad_state_dir_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    for args in (["show", "urlacl"], ["cert", "list"]):
        result = CliRunner().invoke(app, ["--state-dir", str(tmp_path / "file"), *args])
        assert result.exit_code == 1
        assert result.stdout == ""
        assert result.stderr == (f"httpsys-emu: state directory {tmp_path / 'file'} exists "
                                 "but is not a directory\n")


def test_unexpected_error_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    def explode(session: cli.CliSession, args: list[str]) -> int:
        raise RuntimeError("kaboom")
    monkeypatch.setitem(HANDLERS, ("show", "kaboom"), explode)
    monkeypatch.setattr(sys, "argv", ["httpsys-emu", "show", "kaboom"])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 1
    captured = capsys.readouterr()
    assert captured.err == "httpsys-emu: unexpected error: RuntimeError: kaboom\n"


# --------------------------------------------------------------------------- cert


def test_cert_new_list_export_delete(run: Run) -> None:
    created = run("cert", "new", "--subject", "CN=Example Website", "--dns", "example.com",
                  "--key", "ecdsa-p256", "--days", "30", "--store", "my")
    assert created.exit_code == 0, created.output
    thumbprint = created.stdout.splitlines()[-1]
    assert re.fullmatch(r"[0-9A-F]{40}", thumbprint)
    assert "Subject      : CN=Example Website\n" in created.stdout
    listing = run("cert", "list").stdout.splitlines()
    assert listing[0].split() == ["Thumbprint", "Store", "Expires", "Key", "Subject"]
    assert listing[2].startswith(f"{thumbprint}  MY ") and listing[2].endswith(
        "Yes  CN=Example Website")
    exported = run("cert", "export", thumbprint.lower())
    assert exported.stdout.startswith("-----BEGIN CERTIFICATE-----\n")
    assert "PRIVATE KEY" not in exported.stdout
    assert "-----BEGIN PRIVATE KEY-----" in run("cert", "export", thumbprint, "--key").stdout
    _ok(run("cert", "delete", thumbprint), "Certificate successfully deleted\n")
    result = run("cert", "delete", thumbprint)
    assert result.exit_code == 1 and "Error 2" in result.stderr
    assert run("cert", "list").stdout == "No certificates in any store.\n"


def test_cert_delete_refused_while_bound(run: Run, thumb: str) -> None:
    _ok(run("add", "sslcert", "ipport=0.0.0.0:443", f"certhash={thumb}", f"appid={APPID}"),
        "SSL Certificate successfully added\n")
    refused = run("cert", "delete", thumb)
    assert refused.exit_code == 1 and refused.stdout == ""
    assert "ipport=0.0.0.0:443" in refused.stderr and "--force" in refused.stderr
    _ok(run("cert", "delete", thumb, "--force"), "Certificate successfully deleted\n")


def test_cert_import_errors(run: Run, state: Path) -> None:
    result = run("cert", "import", str(state.parent / "missing.pem"))
    assert result.exit_code == 1 and result.stderr.startswith("httpsys-emu: Error 2:")
    (state.parent / "junk.pem").write_text("-----BEGIN CERTIFICATE-----\nxx\n")
    result = run("cert", "import", str(state.parent / "junk.pem"))
    assert result.exit_code == 1 and "Error 87" in result.stderr
    result = run("cert", "new", "--subject", "CN=x", "--key", "dsa")
    assert result.exit_code == 1 and "Error 87" in result.stderr


def test_cert_import_pkcs12_with_password_from_environment(run: Run, state: Path,
                                                          cert_files: tuple[str, Path]) -> None:
    thumbprint, pem = cert_files
    data = pem.read_bytes()
    pfx = pkcs12.serialize_key_and_certificates(
        None, serialization.load_pem_private_key(data, None),  # type: ignore[arg-type]
        x509.load_pem_x509_certificate(data), None,
        serialization.BestAvailableEncryption(b"hunter2"))
    (state.parent / "site.pfx").write_bytes(pfx)
    result = CliRunner().invoke(app, ["--state-dir", str(state), "cert", "import",
                                      str(state.parent / "site.pfx"), "--store", "Web"],
                                env={"HTTPSYS_EMU_CERT_PASSWORD": "hunter2"})
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == thumbprint
    assert "Imported a certificate into store WEB" in result.stdout
    wrong = run("cert", "import", str(state.parent / "site.pfx"), "--password", "nope")
    assert wrong.exit_code == 1 and "password" in wrong.stderr


# --------------------------------------------------------------------------- help

HELP_COMMANDS = [[], ["add"], ["delete"], ["show"], ["sslcert"], ["urlacl"], ["iplisten"],
                 ["timeout"], ["forward"], ["setting"], ["cert"], ["cert", "new"],
                 ["cert", "import"], ["cert", "list"], ["cert", "export"], ["cert", "delete"]]


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=lambda c: " ".join(c) or "root")
def test_help_includes_an_example(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"], prog_name="httpsys-emu")
    assert result.exit_code == 0
    assert "Example" in result.stdout
    assert "httpsys-emu " + " ".join(command) in result.stdout or command[:1] in (
        ["sslcert"], ["urlacl"], ["iplisten"], ["timeout"], ["forward"], ["setting"])
    assert re.search(r"^\s+(Example: )?httpsys-emu \S", result.stdout, re.MULTILINE)


def test_every_netsh_command_appears_in_help() -> None:
    for verb in ("add", "delete", "show"):
        text = CliRunner().invoke(app, [verb, "--help"]).stdout
        for noun in ("sslcert", "urlacl", "iplisten", "timeout", "forward", "setting"):
            assert f"Example: httpsys-emu {verb} {noun}" in text


# --------------------------------------------------------------------------- end to end


def _script(state: Path | None, *args: str, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    base = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "httpsys_emu.cli"]
    prefix = ["--state-dir", str(state)] if state is not None else []
    return subprocess.run([*base, *prefix, *args], capture_output=True, text=True, timeout=60,
                          env=env, cwd=cwd)


def test_end_to_end_binding_through_the_console_script(state: Path) -> None:
    created = _script(state, "cert", "new", "--subject", "CN=Example Website", "--key",
                      "ecdsa-p256")
    assert created.returncode == 0, created.stderr
    thumbprint = created.stdout.splitlines()[-1]
    added = _script(state, "add", "sslcert", "ipport=0.0.0.0:8443", f"certhash={thumbprint}",
                    f"appid={APPID}")
    assert (added.returncode, added.stdout) == (0, "SSL Certificate successfully added\n")
    again = _script(state, "sslcert", "add", "ipport=0.0.0.0:8443", f"certhash={thumbprint}",
                    f"appid={APPID}")
    assert (again.returncode, again.stdout) == (1, f"SSL Certificate add failed, Error: 183\n"
                                                   f"{ALREADY}")
    assert "Traceback" not in again.stderr
    with Store.open(state) as store:
        (binding,) = store.list_sslcerts()
    assert binding.certhash == thumbprint
    key_file = state / "certs" / "MY" / f"{thumbprint}.key"
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_end_to_end_environment_state_dir_and_errors(tmp_path: Path) -> None:
    env = {**os.environ, "HTTPSYS_EMU_STATE_DIR": str(tmp_path / "from-env")}
    unknown = _script(None, "add", "urlacl", "url=http://+:80/x/", "user=no-such-user-x",
                      env=env, cwd=tmp_path)
    assert (unknown.returncode, unknown.stdout) == (
        1, "Create SDDL failed, Error: 1332\n"
           "No mapping between account names and security IDs was done.\n")
    added = _script(None, "add", "urlacl", "url=http://+:80/x/", "user=root", env=env,
                    cwd=tmp_path)
    assert added.returncode == 0
    assert (tmp_path / "from-env" / "state.db").exists()
    (tmp_path / "plain-file").write_text("")
    bad = _script(tmp_path / "plain-file", "show", "sslcert")
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "not a directory" in bad.stderr


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run as another user")
def test_end_to_end_permission_denied_state_dir(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    base = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "httpsys_emu.cli"]
    result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             *base, "--state-dir", str(locked / "state"), "show", "urlacl"],
                            capture_output=True, text=True, timeout=60, cwd="/")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (f"httpsys-emu: cannot create state directory {locked / 'state'}: "
                             "permission denied\n")
