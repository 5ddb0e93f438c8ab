"""What the side-by-side benchmarks (spec benchmarks.md §1–§3) share: tools, servers, meters.

Every figure is a ratio against a peer measured in the same run, so the scripts need the same
things over and over: install the peer tools, start a server pinned to a CPU in its own process
group and always stop it, read a process's CPU time and RSS from /proc, run wrk and parse it,
and print a markdown table. Nothing here fails on a number; only a broken setup raises
`SetupError`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import re
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO_ROOT / "bench"
VENV_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
EMU_CLI = REPO_ROOT / ".venv" / "bin" / "httpsys-emu"
APPID = "{00112233-4455-6677-8899-aabbccddeeff}"
SERVER_CPU = 0          # the server under test (benchmarks.md, Method)
LOAD_CPU = 1            # the load tool
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# Run the front door from another source tree (e.g. an exported commit) instead of the work tree:
# BENCH_FRONTDOOR_SRC=DIR puts DIR (holding httpsys_emu/) first on the front door's PYTHONPATH.
FRONTDOOR_SRC = os.environ.get("BENCH_FRONTDOOR_SRC") or None

# binary -> Debian package that ships it
DEBIAN_PACKAGES = {"nginx": "nginx", "wrk": "wrk", "h2load": "nghttp2-client",
                   "taskset": "util-linux", "openssl": "openssl"}


class SetupError(Exception):
    """The benchmark could not be set up (missing tool, server that did not start): exit 2."""


# ------------------------------------------------------------------------------- tools
def ensure_tools(*binaries: str) -> None:
    """Install the Debian packages of missing `binaries` when root, else say how and fail."""
    missing = [b for b in binaries if shutil.which(b) is None]
    if not missing:
        return
    packages = sorted({DEBIAN_PACKAGES.get(b, b) for b in missing})
    if os.geteuid() != 0:
        raise SetupError(f"missing {', '.join(missing)}: run "
                         f"`sudo apt-get install -y {' '.join(packages)}` and try again")
    print(f"installing {' '.join(packages)} with apt-get ...", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", *packages]
    if subprocess.run(install, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
        if subprocess.run(install, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            raise SetupError(f"apt-get install {' '.join(packages)} failed")
    still = [b for b in binaries if shutil.which(b) is None]
    if still:
        raise SetupError(f"still missing after apt-get: {', '.join(still)}")


def tool_version(argv: Sequence[str]) -> str:
    """First line of a tool's version output (stdout or stderr), or '?'."""
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "?"


def raise_nofile_limit(wanted: int = 1 << 20) -> int:
    """Raise RLIMIT_NOFILE as far as allowed (children inherit it); the soft limit in force.

    Raising the hard limit needs CAP_SYS_RESOURCE; without it the soft limit goes up to the hard.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and wanted > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            wanted = hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        return wanted
    except (ValueError, OSError):
        return soft


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def machine_description() -> str:
    """Date, cores, CPU model, kernel and the peer tools' versions, for the table's header."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from OpenSSL import SSL
        pyopenssl = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
    except Exception:                        # the venv may lack it when run with another python
        pyopenssl = "?"
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (f"{now}; nproc {os.cpu_count()}; CPU {model}; Linux {platform.release()}; "
            f"python {platform.python_version()} (front door OpenSSL: {pyopenssl}); "
            f"{tool_version(['nginx', '-v'])} ({tool_version(['openssl', 'version'])}); "
            f"{tool_version(['wrk', '--version'])}; {frontdoor_source()}")


def frontdoor_env() -> dict[str, str]:
    """The environment for front door processes (and the CLI): BENCH_FRONTDOOR_SRC honoured."""
    env = dict(os.environ)
    if FRONTDOOR_SRC:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (FRONTDOOR_SRC, env.get("PYTHONPATH"))
                                            if p)
    return env


def frontdoor_source() -> str:
    """Which front door code runs: the snapshot dir, or the work tree's commit and its edits."""
    if FRONTDOOR_SRC:
        return f"front door from {FRONTDOOR_SRC}"
    try:
        head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--",
                                "httpsys_emu"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "front door from the work tree"
    edits = len(dirty.splitlines()) if dirty else 0
    return (f"front door from the work tree at {head or '?'}"
            + (f" with {edits} uncommitted file(s) in httpsys_emu/" if edits else ""))


# --------------------------------------------------------------------------- /proc meters
def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds; 0.0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields_after_name = stat.rsplit(")", 1)[1].split()
    utime, stime = int(fields_after_name[11]), int(fields_after_name[12])
    return (utime + stime) / CLOCK_TICKS


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB (VmRSS); 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def socket_count(pid: int) -> int:
    """How many sockets a process holds open (listeners included)."""
    count = 0
    try:
        for entry in os.scandir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(entry.path).startswith("socket:"):
                    count += 1
            except OSError:
                continue
    except OSError:
        pass
    return count


def child_pids(pid: int) -> list[int]:
    """Direct children of a process (nginx's workers under its master)."""
    found: list[int] = []
    try:
        for task in os.scandir(f"/proc/{pid}/task"):
            try:
                found += [int(p) for p in Path(task.path, "children").read_text().split()]
            except OSError:
                continue
    except OSError:
        pass
    return found


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat: all but idle and iowait)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def wait_for_quiet(max_wait: float = 30.0, busy_below: float = 0.15) -> float:
    """Wait until the machine is nearly idle (under `busy_below` of one core over 0.5 s; other
    engineers' jobs share it), at most `max_wait` s; the busy share last seen."""
    deadline = time.monotonic() + max_wait
    while True:
        before = machine_busy_seconds()
        time.sleep(0.5)
        share = (machine_busy_seconds() - before) / 0.5
        if share < busy_below or time.monotonic() >= deadline:
            return share


@dataclass
class CpuMeter:
    """CPU seconds used by some processes, by the whole machine, and wall time, between
    `start()` and `stop()`; the machine figure shows when something else was running too."""

    pids: Sequence[int]
    cpu: float = 0.0
    machine_cpu: float = 0.0
    wall: float = 0.0
    _cpu0: float = 0.0
    _machine0: float = 0.0
    _wall0: float = 0.0

    def start(self) -> CpuMeter:
        self._cpu0 = sum(cpu_seconds(p) for p in self.pids)
        self._machine0 = machine_busy_seconds()
        self._wall0 = time.monotonic()
        return self

    def stop(self) -> CpuMeter:
        self.cpu = sum(cpu_seconds(p) for p in self.pids) - self._cpu0
        self.machine_cpu = machine_busy_seconds() - self._machine0
        self.wall = time.monotonic() - self._wall0
        return self

    def foreign_share(self, *accounted: float) -> float:
        """Busy CPU not explained by our processes, as a fraction of one core (kernel work for
        loopback traffic lands here too, so a few percent is normal)."""
        if self.wall <= 0:
            return 0.0
        return max(0.0, self.machine_cpu - self.cpu - sum(accounted)) / self.wall

    @property
    def utilisation(self) -> float:
        """CPU seconds per wall second (1.0 = one core busy)."""
        return self.cpu / self.wall if self.wall > 0 else 0.0


# ------------------------------------------------------------------------------ processes
@dataclass
class Server:
    """A started process: its Popen, where its output goes, and which pids to meter."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    metered: Callable[[], list[int]] | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def metered_pids(self) -> list[int]:
        """The processes whose CPU and RSS count as this server (nginx: master and worker)."""
        return self.metered() if self.metered is not None else [self.pid]

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Processes:
    """Starts processes pinned to a CPU in their own process groups and always stops them all."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._started: list[Server] = []

    def start(self, name: str, argv: Sequence[str], *, cpu: int | None,
              env: dict[str, str] | None = None, cwd: Path | None = None,
              metered: Callable[[], list[int]] | None = None) -> Server:
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu), *argv]
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     env=env, cwd=cwd)
        server = Server(name, popen, log_path, metered)
        self._started.append(server)
        return server

    def stop(self, server: Server, timeout: float = 10.0) -> None:
        """SIGTERM the server's process group, SIGKILL it after `timeout`."""
        if server in self._started:
            self._started.remove(server)
        _stop_group(server.popen, timeout)

    def stop_all(self) -> None:
        while self._started:
            self.stop(self._started[-1])

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()


def _stop_group(popen: subprocess.Popen[bytes], timeout: float) -> None:
    pgid = popen.pid          # start_new_session: the group id is the leader's pid
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        try:
            popen.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; make sure nothing else of its group lingers
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


def wait_for_https(server: Server, port: int, path: str = "/", *, tls: bool = True,
                   timeout: float = 30.0) -> None:
    """Until a GET answers `200 OK` (with the reason phrase), or SetupError with the log."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if server.popen.poll() is not None:
            raise SetupError(f"{server.name} exited with {server.popen.returncode}:\n"
                             f"{server.log_tail()}")
        try:
            status = http_get_status("127.0.0.1", port, path, tls=tls)
            if status.startswith("HTTP/1.1 200 OK"):
                return
            last = status
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.1)
    raise SetupError(f"{server.name} did not answer 200 OK on port {port} in {timeout:.0f}s "
                     f"({last}):\n{server.log_tail()}")


def http_get_status(host: str, port: int, path: str, *, tls: bool) -> str:
    """The status line of one `GET path` (certificate not verified: self-signed on purpose)."""
    raw = socket.create_connection((host, port), timeout=5)
    sock: socket.socket = raw
    try:
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            sock = ctx.wrap_socket(raw, server_hostname="localhost")
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                     .encode())
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.split(b"\r\n", 1)[0].decode("latin-1")
    finally:
        sock.close()


# ------------------------------------------------------------------------- the front door
@dataclass(frozen=True)
class CertFiles:
    """One certificate of the front door's store, exported as PEM files for the peers."""

    thumbprint: str
    key_type: str
    cert_path: Path
    key_path: Path


class FrontDoorState:
    """A state directory configured with the CLI exactly as an operator would."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def emu(self, *args: str) -> str:
        """Run `httpsys-emu --state-dir ROOT ARGS`; its stdout, or SetupError."""
        out = subprocess.run([str(EMU_CLI), "--state-dir", str(self.root), *args],
                             capture_output=True, text=True, timeout=60, env=frontdoor_env())
        if out.returncode != 0:
            raise SetupError(f"httpsys-emu {' '.join(args)} failed ({out.returncode}): "
                             f"{out.stdout.strip()} {out.stderr.strip()}")
        return out.stdout

    def new_cert(self, key_type: str, export_dir: Path) -> CertFiles:
        """`cert new` (RSA-2048 or ECDSA P-256) and the PEM files nginx will use."""
        out = self.emu("cert", "new", "--subject", "CN=localhost", "--dns", "localhost",
                       "--key", key_type)
        thumb = out.strip().splitlines()[-1].strip()
        cert_pem = self.emu("cert", "export", thumb)
        both = self.emu("cert", "export", thumb, "--key")
        match = re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----",
                          both, re.S)
        if match is None:
            raise SetupError("cert export --key printed no private key")
        export_dir.mkdir(parents=True, exist_ok=True)
        cert_path = export_dir / f"{key_type}.crt"
        key_path = export_dir / f"{key_type}.key"
        cert_path.write_text(cert_pem)
        key_path.write_text(match.group(0) + "\n")
        key_path.chmod(0o600)
        return CertFiles(thumb, key_type, cert_path, key_path)

    def bind(self, port: int, cert: CertFiles) -> None:
        self.emu("add", "sslcert", f"ipport=0.0.0.0:{port}", f"certhash={cert.thumbprint}",
                 f"appid={APPID}")

    def forward(self, port: int, target: str) -> None:
        self.emu("add", "forward", f"url=https://+:{port}/", f"target={target}")

    def setting(self, name: str, value: int) -> None:
        self.emu("add", "setting", f"setting={name}", f"value={value}")


def frontdoor_handler_argv(state: FrontDoorState, port: int) -> list[str]:
    """The front door with an in-process 200 handler (bench/frontdoor_runner.py)."""
    return [str(VENV_PYTHON), str(BENCH_DIR / "frontdoor_runner.py"),
            "--state-dir", str(state.root), "--port", str(port)]


def frontdoor_serve_argv(state: FrontDoorState) -> list[str]:
    """`httpsys-emu serve --quiet`: the daemon as shipped (forwards from the store)."""
    return [str(EMU_CLI), "--state-dir", str(state.root), "serve", "--quiet"]


# ------------------------------------------------------------------------------------ nginx
class Nginx:
    """An nginx with its own prefix and config in a temp dir: one worker, no daemon."""

    def __init__(self, prefix: Path, servers: str, *, worker_connections: int = 4096,
                 access_log: bool = True, http_extra: str = "") -> None:
        self.prefix = prefix
        prefix.mkdir(parents=True, exist_ok=True)
        (prefix / "logs").mkdir(exist_ok=True)
        user = "user root;\n" if os.geteuid() == 0 else ""
        log = (f"access_log {prefix}/logs/access.log;" if access_log else "access_log off;")
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nofile = worker_connections * 2 + 64
        if hard != resource.RLIM_INFINITY:
            nofile = min(nofile, hard)       # raising the hard limit needs CAP_SYS_RESOURCE
        (prefix / "nginx.conf").write_text(f"""{user}worker_processes 1;
worker_rlimit_nofile {nofile};
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections {worker_connections}; multi_accept on; }}
http {{
    {log}
    client_body_temp_path {prefix}/tmp_body;
    proxy_temp_path {prefix}/tmp_proxy;
    fastcgi_temp_path {prefix}/tmp_fastcgi;
    uwsgi_temp_path {prefix}/tmp_uwsgi;
    scgi_temp_path {prefix}/tmp_scgi;
    default_type text/plain;
    keepalive_requests 1000000;
    {http_extra}
{servers}
}}
""")

    def argv(self) -> list[str]:
        return ["nginx", "-p", str(self.prefix), "-c", "nginx.conf", "-g", "daemon off;"]

    def check(self) -> None:
        out = subprocess.run(["nginx", "-t", "-q", "-p", str(self.prefix), "-c", "nginx.conf"],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise SetupError(f"nginx -t failed: {out.stderr.strip()}")

    def start(self, procs: Processes, name: str, cpu: int | None) -> Server:
        self.check()
        server = procs.start(name, self.argv(), cpu=cpu)
        server.metered = lambda: [server.pid, *child_pids(server.pid)]
        return server


def nginx_tls_server(port: int, cert: CertFiles, body: str, *, full_handshakes: bool = True,
                     extra: str = "") -> str:
    """A TLS 1.3 server block; `body` is the location's content."""
    session = ("ssl_session_cache off;\n        ssl_session_tickets off;" if full_handshakes
               else "")
    return f"""    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert.cert_path};
        ssl_certificate_key {cert.key_path};
        ssl_protocols TLSv1.3;
        {session}
        {extra}
        location / {{ {body} }}
    }}"""


def nginx_worker(server: Server, timeout: float = 5.0) -> int:
    """The worker pid under an nginx master."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = child_pids(server.pid)
        if kids:
            return kids[0]
        time.sleep(0.05)
    raise SetupError(f"nginx started no worker:\n{server.log_tail()}")


# -------------------------------------------------------------------------------------- wrk
@dataclass
class WrkResult:
    """What one wrk run printed, parsed."""

    requests: int = 0
    seconds: float = 0.0
    rate: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    socket_errors: str = ""
    non_2xx: int = 0
    load_cpu_seconds: float = 0.0      # wrk's own utime+stime (RUSAGE_CHILDREN delta)
    raw: str = ""

    @property
    def load_utilisation(self) -> float:
        """wrk's CPU seconds per second of run: near 1.0 means the load tool was the limit."""
        return self.load_cpu_seconds / self.seconds if self.seconds else 0.0

    @property
    def errors_text(self) -> str:
        parts = [self.socket_errors] if self.socket_errors else []
        if self.non_2xx:
            parts.append(f"non-2xx {self.non_2xx}")
        return "; ".join(parts) or "none"


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _to_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(text)
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    result = WrkResult(raw=output)
    match = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    if match:
        result.requests = int(match.group(1))
        result.seconds = _to_ms(match.group(2) + match.group(3)) / 1000
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if match:
        result.rate = float(match.group(1))
    for pct, attr in (("50", "p50_ms"), ("99", "p99_ms")):
        match = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+(?:us|ms|s|m))\s*$", output, re.M)
        if match:
            setattr(result, attr, _to_ms(match.group(1)))
    match = re.search(r"Socket errors: (.*)", output)
    if match:
        result.socket_errors = match.group(1).strip()
    match = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if match:
        result.non_2xx = int(match.group(1))
    return result


def run_wrk(url: str, *, connections: int, duration: float, headers: Sequence[str] = (),
            latency: bool = False, cpu: int | None = LOAD_CPU) -> WrkResult:
    """One `wrk -t1` run pinned to the load CPU."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "10s"]
    for header in headers:
        argv += ["-H", header]
    if latency:
        argv.append("--latency")
    argv.append(url)
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0 and "requests in" not in out.stdout:
        raise SetupError(f"wrk failed ({out.returncode}): {out.stderr.strip()}")
    result = parse_wrk(out.stdout)
    result.load_cpu_seconds = (after.ru_utime + after.ru_stime
                               - before.ru_utime - before.ru_stime)
    return result


# ---------------------------------------------------------------------------------- py-spy
def py_spy_profile(pid: int, load: Callable[[], object], seconds: int, raw: Path,
                   top: int = 10) -> str:
    """Sample `pid` with py-spy (on the load CPU) while `load()` runs; a markdown summary of the
    trio thread's time: top functions by self time, and by total time below the run loop."""
    py_spy = shutil.which("py-spy") or str(REPO_ROOT / ".venv" / "bin" / "py-spy")
    if not Path(py_spy).exists():
        return "\n(profile: py-spy not found; `.venv/bin/pip install py-spy`)"
    spy = subprocess.Popen(["taskset", "-c", str(LOAD_CPU), py_spy, "record",
                            "--function", "--format", "raw", "--rate", "200", "-d",
                            str(seconds + 1), "-o", str(raw), "-p", str(pid)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = b""
    try:
        load()
        _out, err = spy.communicate(timeout=seconds + 30)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
    if not raw.exists():
        return f"\n(profile: py-spy wrote nothing: {err.decode(errors='replace').strip()})"
    self_samples: Counter[str] = Counter()
    total_samples: Counter[str] = Counter()
    all_samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if not any("trio/_core/_run.py" in f for f in frames):
            continue          # not the trio thread (an idle worker thread of trio's cache)
        all_samples += count
        self_samples[frames[-1]] += count
        for frame in set(frames):
            total_samples[frame] += count
    if not all_samples:
        return "\n(profile: no samples)"
    out = [f"\n### Where the front door spends its time (py-spy, {all_samples} samples of the "
           f"trio thread at 200 Hz during a {seconds}s run)\n"]
    rows = [[f"{n / all_samples * 100:.1f}", _short_frame(frame)]
            for frame, n in self_samples.most_common(top)]
    out.append(markdown_table(["self %", "function (file:first line)"], rows))
    # inclusive time, leaving out the frames that are on (nearly) every stack: the run loop
    deep = [(frame, n) for frame, n in total_samples.most_common()
            if n < 0.9 * all_samples][:top]
    rows = [[f"{n / all_samples * 100:.1f}", _short_frame(frame)] for frame, n in deep]
    out.append("")
    out.append(markdown_table(["total %", "function (file:first line), below the run loop"],
                              rows))
    out.append(f"\n(raw stacks: {raw}; kept with --keep)")
    return "\n".join(out)


def _short_frame(frame: str) -> str:
    """`name (/long/path/site-packages/trio/_x.py:12)` → `name (trio/_x.py:12)`."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    markers = ["site-packages/", str(REPO_ROOT) + "/", "/lib/python3"]
    if FRONTDOOR_SRC:
        markers.insert(0, FRONTDOOR_SRC.rstrip("/") + "/")
    for marker in markers:
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{name} ({where})" if where else name


# ---------------------------------------------------------------------------------- output
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    text = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) if text else len(h)
              for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
              for row in text]
    return "\n".join(lines)


def fmt(value: float | None, digits: int = 0) -> str:
    """A number with thousands separators, or '-' when it is missing."""
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def ratio(ours: float | None, theirs: float | None, digits: int = 2) -> str:
    if not ours or not theirs:
        return "-"
    return f"{ours / theirs:.{digits}f}"


@dataclass
class BenchArgs:
    """The options every benchmark takes."""

    duration: float
    quick: bool
    keep: bool
    repeat: int
    quiet_wait: float = 30.0                # longest wait for an idle machine before a run
    extra: argparse.Namespace = field(default_factory=argparse.Namespace)


def bench_parser(description: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds per measured run (default 5; 2 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 s runs, smaller N")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measured runs per server; the least disturbed one (lowest "
                             "'other CPU') is reported (timed benchmarks only)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temp dir (configs, logs) and print where it is")
    return parser


def parse_bench_args(parser: argparse.ArgumentParser,
                     argv: Sequence[str] | None) -> BenchArgs:
    ns = parser.parse_args(argv)
    duration = ns.duration if ns.duration is not None else (2.0 if ns.quick else 5.0)
    return BenchArgs(duration=duration, quick=ns.quick, keep=ns.keep,
                     repeat=max(1, ns.repeat), quiet_wait=5.0 if ns.quick else 30.0, extra=ns)


@contextlib.contextmanager
def bench_workdir(name: str, keep: bool) -> Iterator[Path]:
    """A temp dir for state, certificates, nginx prefixes and logs; removed unless `keep`."""
    path = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    try:
        yield path
    finally:
        if keep:
            print(f"\n(kept {path})")
        else:
            shutil.rmtree(path, ignore_errors=True)


def run_main(body: Callable[[], None]) -> int:
    """Exit 0 whatever the numbers; 2 when the setup failed; 130 on Ctrl-C."""
    try:
        body()
    except SetupError as exc:
        print(f"\nsetup failed: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
