"""Keep-alive proxied requests per second (benchmarks.md §2): the front door against nginx.

`wrk -t1 -c50 --latency` over 50 keep-alive TLS connections, through the server under test to a
static upstream (nginx `return 200 "ok"`, plain HTTP on loopback, access_log off). The front door
runs as shipped (`httpsys-emu serve --quiet`, a forward from the store, access.log written per
request); the peer is nginx proxying to the same upstream (`proxy_http_version 1.1;
proxy_set_header Connection ""; keepalive 64`, access_log on). Same RSA-2048 certificate, TLS 1.3.

CPU layout (2 cores): the server under test alone on CPU 0; wrk *and* the upstream share CPU 1.
The upstream is cheap per request, but at nginx's rate CPU 1 can become the limit, so the table
shows CPU 1's load (wrk + upstream) next to the server's CPU; the server's µs CPU per request
does not depend on who the bottleneck was.
`--profile` samples the front door with py-spy during one more run and prints where it spends
its time (`pip install py-spy` into the venv first).
Run: `.venv/bin/python bench/proxy_bench.py [--duration S] [--quick] [--profile]`.
Prints markdown tables; exits 0 whatever the numbers (2 when the setup fails).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common import (LOAD_CPU, SERVER_CPU, BenchArgs, CertFiles, CpuMeter,
                    FrontDoorState, Nginx, Processes, Server, bench_parser, bench_workdir,
                    ensure_tools, fmt, free_port, frontdoor_env, frontdoor_serve_argv,
                    machine_description, markdown_table, nginx_tls_server, nginx_worker,
                    parse_bench_args, py_spy_profile, ratio, run_main, run_wrk, wait_for_https,
                    wait_for_quiet)

CONNECTIONS = 50
PATH = "/bench/ok"


@dataclass
class Row:
    name: str
    rate: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    cpu_us: float | None = None
    utilisation: float | None = None
    load_utilisation: float | None = None
    other: float | None = None              # busy CPU of anything else, in cores
    errors: str = "-"


def measure(server: Server, port: int, upstream: Server, args: BenchArgs) -> Row:
    """Warm up for a second, then `--repeat` measured runs; the least disturbed one is kept."""
    wait_for_https(server, port, PATH)
    url = f"https://127.0.0.1:{port}{PATH}"
    run_wrk(url, connections=CONNECTIONS, duration=1, latency=True)     # warm-up: pools, caches
    rows: list[Row] = []
    for _ in range(args.repeat):
        wait_for_quiet(args.quiet_wait)
        meter = CpuMeter(server.metered_pids()).start()
        upstream_meter = CpuMeter(upstream.metered_pids()).start()
        result = run_wrk(url, connections=CONNECTIONS, duration=args.duration, latency=True)
        meter.stop()
        upstream_meter.stop()
        load = ((result.load_cpu_seconds + upstream_meter.cpu) / meter.wall
                if meter.wall else None)
        other = meter.foreign_share(result.load_cpu_seconds, upstream_meter.cpu)
        rows.append(Row(server.name, result.rate, result.p50_ms, result.p99_ms,
                        meter.cpu / result.requests * 1e6 if result.requests else None,
                        meter.utilisation, load, other, result.errors_text))
    return min(rows, key=lambda row: row.other or 0.0)


def profile(server: Server, port: int, args: BenchArgs, workdir: Path, top: int) -> str:
    """py-spy on the front door during one more wrk run (the 50 handshakes of its new
    connections included): the top functions by self and total time."""
    seconds = max(2, round(args.duration))
    return py_spy_profile(
        server.pid, lambda: run_wrk(f"https://127.0.0.1:{port}{PATH}", connections=CONNECTIONS,
                                    duration=seconds),
        seconds, workdir / "frontdoor.pyspy.txt", top)


def bench(args: BenchArgs, workdir: Path, procs: Processes) -> tuple[list[Row], str]:
    state = FrontDoorState(workdir / "state")
    cert: CertFiles = state.new_cert("rsa2048", workdir / "certs")
    rows: list[Row] = []
    profile_text = ""

    up_port = free_port()
    upstream_nginx = Nginx(workdir / "upstream", f"""    server {{
        listen 127.0.0.1:{up_port};
        location / {{ return 200 "ok"; }}
    }}""", access_log=False)
    upstream = upstream_nginx.start(procs, "upstream", LOAD_CPU)
    nginx_worker(upstream)
    wait_for_https(upstream, up_port, PATH, tls=False)

    port = free_port()
    state.bind(port, cert)
    state.forward(port, f"http://127.0.0.1:{up_port}")
    server = procs.start("frontdoor", frontdoor_serve_argv(state), cpu=SERVER_CPU,
                         env=frontdoor_env())
    try:
        rows.append(measure(server, port, upstream, args))
        rows[-1].name = "httpsys-emu serve (forward)"
        if args.extra.profile:
            profile_text = profile(server, port, args, workdir, args.extra.top)
    finally:
        procs.stop(server)

    port = free_port()
    nginx = Nginx(workdir / "nginx-proxy", nginx_tls_server(
        port, cert, "proxy_pass http://bench_upstream; proxy_http_version 1.1; "
                    'proxy_set_header Connection "";'),
        http_extra=f"upstream bench_upstream {{ server 127.0.0.1:{up_port}; keepalive 64; }}")
    server = nginx.start(procs, "nginx-proxy", SERVER_CPU)
    try:
        nginx_worker(server)
        rows.append(measure(server, port, upstream, args))
        rows[-1].name = "nginx proxy_pass"
    finally:
        procs.stop(server)
    return rows, profile_text


def print_table(rows: Sequence[Row]) -> None:
    nginx = next((r for r in rows if r.name.startswith("nginx")), None)
    table = []
    for row in rows:
        table.append([row.name, fmt(row.rate), fmt(row.p50_ms, 2), fmt(row.p99_ms, 2),
                      fmt(row.cpu_us, 1),
                      fmt(row.utilisation * 100 if row.utilisation is not None else None),
                      fmt(row.load_utilisation * 100
                          if row.load_utilisation is not None else None),
                      fmt(row.other * 100 if row.other is not None else None),
                      ratio(row.rate, nginx.rate if nginx else None, 3),
                      ratio(row.cpu_us, nginx.cpu_us if nginx else None, 1), row.errors])
    print("\n### Keep-alive proxied requests\n")
    print(markdown_table(["server (CPU 0)", "req/s", "p50 ms", "p99 ms", "µs CPU/req",
                          "server CPU %", "CPU 1 load % (wrk+upstream)", "other CPU %",
                          "rate ÷ nginx", "CPU ÷ nginx", "wrk errors"], table))
    print("\nA CPU 1 load near 100 % means the load side, not the server, set the rate; "
          "µs CPU/req is the figure to compare then. other CPU % is busy time of everything "
          "else on the machine (kernel loopback work, other jobs).")


def main(argv: Sequence[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--profile", action="store_true",
                        help="also sample the front door with py-spy and print its top functions")
    parser.add_argument("--top", type=int, default=10, help="functions to list with --profile")
    args = parse_bench_args(parser, argv)

    def body() -> None:
        ensure_tools("nginx", "wrk", "taskset")
        print(f"## §2 Keep-alive proxied requests per second\n\n{machine_description()}\n")
        print(f"wrk -t1 -c{CONNECTIONS} -d{args.duration:g}s --latency on CPU {LOAD_CPU}; "
              f"server on CPU {SERVER_CPU}; upstream nginx `return 200` on CPU {LOAD_CPU}; "
              f"TLS 1.3, RSA-2048; request GET {PATH}; access logs on for both servers.")
        with bench_workdir("proxy-bench", args.keep) as workdir, Processes(workdir) as procs:
            rows, profile_text = bench(args, workdir, procs)
            print_table(rows)
            if profile_text:
                print(profile_text)

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
