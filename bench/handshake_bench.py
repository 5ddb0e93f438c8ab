"""Full TLS handshakes per second (benchmarks.md §1): the front door against nginx, same run.

`wrk -t1 -c32 -H 'Connection: close'` makes every request a new TCP connection and a full TLS 1.3
handshake (wrk never resumes a session; nginx has its session cache and tickets off). Servers:
the front door with an in-process `200 OK` handler (bench/frontdoor_runner.py), nginx
`return 200 "ok"` (one worker, access_log on, like the front door's access.log), and a bare
trio + pyOpenSSL server (bench/ref_tls_server.py) as the floor for any Python server. All share
one RSA-2048 certificate, then one ECDSA P-256 certificate. Server on CPU 0, wrk on CPU 1;
CPU per handshake is the server's utime+stime delta over the run divided by the handshakes.
`openssl speed` (system OpenSSL, CPU 0) gives the signing ceiling.
`--profile` samples the front door with py-spy during one more run (`pip install py-spy` into
the venv first).
Run: `.venv/bin/python bench/handshake_bench.py [--duration S] [--quick] [--no-reference]
[--key rsa2048|ecdsa-p256] [--repeat N] [--profile]`.
Prints markdown tables; exits 0 whatever the numbers (2 when the setup fails).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common import (BENCH_DIR, LOAD_CPU, SERVER_CPU, VENV_PYTHON, BenchArgs, CpuMeter,
                    FrontDoorState, Nginx, Processes, Server, bench_parser, bench_workdir,
                    ensure_tools, fmt, free_port, frontdoor_env, frontdoor_handler_argv,
                    machine_description, markdown_table, nginx_tls_server, nginx_worker,
                    parse_bench_args, py_spy_profile, ratio, run_main, run_wrk, wait_for_https,
                    wait_for_quiet)

KEY_TYPES = ("rsa2048", "ecdsa-p256")
CONNECTIONS = 32


@dataclass
class Row:
    name: str
    rate: float | None = None
    cpu_us: float | None = None
    utilisation: float | None = None
    load_utilisation: float | None = None
    other: float | None = None              # busy CPU of anything else, in cores
    errors: str = "-"


def measure(server: Server, port: int, args: BenchArgs) -> Row:
    """Warm up for a second, then `--repeat` measured wrk runs with the server's CPU metered;
    the run least disturbed by other work on the machine is kept."""
    wait_for_https(server, port)
    url = f"https://127.0.0.1:{port}/"
    headers = ["Connection: close"]
    run_wrk(url, connections=CONNECTIONS, duration=1, headers=headers)
    rows: list[Row] = []
    for _ in range(args.repeat):
        wait_for_quiet(args.quiet_wait)
        meter = CpuMeter(server.metered_pids()).start()
        result = run_wrk(url, connections=CONNECTIONS, duration=args.duration, headers=headers)
        meter.stop()
        cpu_us = meter.cpu / result.requests * 1e6 if result.requests else None
        rows.append(Row(server.name, result.rate, cpu_us, meter.utilisation,
                        result.load_utilisation, meter.foreign_share(result.load_cpu_seconds),
                        result.errors_text))
    return min(rows, key=lambda row: row.other or 0.0)


def openssl_sign_rate(key_type: str, seconds: int) -> float | None:
    """Signatures per second of the system OpenSSL on the server CPU (`openssl speed`)."""
    algo = "rsa2048" if key_type == "rsa2048" else "ecdsap256"
    try:
        out = subprocess.run(["taskset", "-c", str(SERVER_CPU), "openssl", "speed", "-seconds",
                              str(seconds), algo], capture_output=True, text=True,
                             timeout=seconds * 4 + 30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    if key_type == "rsa2048":
        match = re.search(r"^rsa\s+2048 bits\s+\S+s\s+\S+s\s+([\d.]+)", out, re.M)
    else:
        match = re.search(r"^\s*256 bits ecdsa \(nistp256\)\s+\S+s\s+\S+s\s+([\d.]+)", out, re.M)
    return float(match.group(1)) if match else None


def bench_key_type(key_type: str, args: BenchArgs, workdir: Path, procs: Processes,
                   reference: bool) -> tuple[list[Row], str]:
    state = FrontDoorState(workdir / f"state-{key_type}")
    cert = state.new_cert(key_type, workdir / "certs")
    rows: list[Row] = []
    profile_text = ""

    port = free_port()
    state.bind(port, cert)
    server = procs.start(f"frontdoor-{key_type}", frontdoor_handler_argv(state, port),
                         cpu=SERVER_CPU, env=frontdoor_env())
    try:
        rows.append(measure(server, port, args))
        rows[-1].name = "httpsys-emu (in-process 200)"
        if args.extra.profile:
            seconds = max(2, round(args.duration))
            profile_text = py_spy_profile(
                server.pid, lambda: run_wrk(f"https://127.0.0.1:{port}/",
                                            connections=CONNECTIONS, duration=seconds,
                                            headers=["Connection: close"]),
                seconds, workdir / f"frontdoor-{key_type}.pyspy.txt", args.extra.top)
    finally:
        procs.stop(server)

    port = free_port()
    nginx = Nginx(workdir / f"nginx-{key_type}",
                  nginx_tls_server(port, cert, 'return 200 "ok";'))
    server = nginx.start(procs, f"nginx-{key_type}", SERVER_CPU)
    try:
        nginx_worker(server)
        rows.append(measure(server, port, args))
        rows[-1].name = "nginx (return 200)"
    finally:
        procs.stop(server)

    if reference:
        port = free_port()
        server = procs.start(f"ref-{key_type}",
                             [str(VENV_PYTHON), str(BENCH_DIR / "ref_tls_server.py"),
                              "--cert", str(cert.cert_path), "--key", str(cert.key_path),
                              "--port", str(port)], cpu=SERVER_CPU, env=frontdoor_env())
        try:
            rows.append(measure(server, port, args))
            rows[-1].name = "bare trio+pyOpenSSL"
        finally:
            procs.stop(server)
    return rows, profile_text


def print_table(key_type: str, rows: Sequence[Row], sign_rate: float | None) -> None:
    nginx = next((r for r in rows if r.name.startswith("nginx")), None)
    table = []
    for row in rows:
        table.append([row.name, fmt(row.rate), fmt(row.cpu_us),
                      fmt(row.utilisation * 100 if row.utilisation is not None else None),
                      fmt(row.load_utilisation * 100
                          if row.load_utilisation is not None else None),
                      fmt(row.other * 100 if row.other is not None else None),
                      ratio(row.rate, nginx.rate if nginx else None),
                      ratio(row.cpu_us, nginx.cpu_us if nginx else None), row.errors])
    label = "RSA-2048" if key_type == "rsa2048" else "ECDSA P-256"
    print(f"\n### Full TLS 1.3 handshakes, {label} certificate\n")
    print(markdown_table(["server (CPU 0)", "handshakes/s", "µs CPU/handshake", "server CPU %",
                          "wrk CPU %", "other CPU %", "rate ÷ nginx", "CPU ÷ nginx",
                          "wrk errors"], table))
    print("\nserver CPU % well under 100 means the server was not the bottleneck: wrk on CPU 1 was "
          "(see wrk CPU %); compare µs CPU/handshake then, not the rate. other CPU % is busy "
          "time of everything else on the machine (kernel loopback work, other jobs).")
    if sign_rate:
        print(f"\nCeiling: system OpenSSL signs {fmt(sign_rate)}/s with this key type on CPU 0 "
              f"(`openssl speed`), i.e. {fmt(1e6 / sign_rate)} µs per signature.")


def main(argv: Sequence[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the bare trio+pyOpenSSL server")
    parser.add_argument("--profile", action="store_true",
                        help="also sample the front door with py-spy and print its top functions")
    parser.add_argument("--top", type=int, default=10, help="functions to list with --profile")
    parser.add_argument("--key", choices=KEY_TYPES, action="append",
                        help="only this key type (repeatable; default both)")
    args = parse_bench_args(parser, argv)

    def body() -> None:
        ensure_tools("nginx", "wrk", "taskset", "openssl")
        print(f"## §1 Full TLS handshakes per second\n\n{machine_description()}\n")
        print(f"wrk -t1 -c{CONNECTIONS} -d{args.duration:g}s -H 'Connection: close' on CPU "
              f"{LOAD_CPU}; servers on CPU {SERVER_CPU}; TLS 1.3; nginx: worker_processes 1, "
              f"ssl_session_cache off, ssl_session_tickets off, access_log on.")
        with bench_workdir("handshake-bench", args.keep) as workdir, Processes(workdir) as procs:
            for key_type in args.extra.key or KEY_TYPES:
                rows, profile_text = bench_key_type(key_type, args, workdir, procs,
                                                    not args.extra.no_reference)
                sign = openssl_sign_rate(key_type, 1 if args.quick else 2)
                print_table(key_type, rows, sign)
                if profile_text:
                    print(profile_text)

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
