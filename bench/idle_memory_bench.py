"""Idle TLS connection memory (benchmarks.md §3): the front door against nginx, same run.

One client process (this one, on CPU 1) opens N TLS 1.3 connections to a fresh server (CPU 0),
completes each handshake and then sends nothing. The figure is the server's RSS growth from a
warmed-up baseline to N idle connections, divided by N (KiB per connection). The front door runs
with its in-process `200 OK` handler (bench/frontdoor_runner.py), nginx with `return 200` (one
worker, session cache and tickets off as in §1); the same RSA-2048 certificate for both.

The front door refuses more than `max_connections_per_client` (2,000; not a stored setting) from
one address, so the client spreads its connections over several loopback source addresses
(127.0.1.1, 127.0.1.2, ... at most 1,000 each; all of 127.0.0.0/8 is loopback). Both servers get
a 600 s header-wait timer (front door `headerwaittimeout`, nginx `client_header_timeout`) so no
connection is closed for idleness while we measure. The WSS polling variant of §3 belongs to a
later issue and is not measured here.
Run: `.venv/bin/python bench/idle_memory_bench.py [--quick] [--n 2000 --n 10000]`
(`--duration` is accepted, as run_all.sh passes it to every script, and unused: nothing is timed).
Prints markdown tables; exits 0 whatever the numbers (2 when the setup fails).
"""

from __future__ import annotations

import math
import os
import resource
import socket
import ssl
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from common import (LOAD_CPU, SERVER_CPU, BenchArgs, CertFiles, CpuMeter, FrontDoorState,
                    Nginx, Processes, Server, bench_parser, bench_workdir, ensure_tools, fmt,
                    free_port, frontdoor_env, frontdoor_handler_argv, machine_description,
                    markdown_table, nginx_tls_server, nginx_worker, parse_bench_args,
                    raise_nofile_limit, ratio, rss_kib, run_main, socket_count,
                    wait_for_https, wait_for_quiet)

PER_SOURCE_ADDRESS = 1000          # below the front door's 2,000-per-client cap
IN_FLIGHT = 64                     # handshakes at once: well inside the 10 s handshake deadline
WARM_UP = 64                       # connections opened and closed before the baseline
HEADER_WAIT = 600                  # seconds


@dataclass
class Row:
    name: str
    n: int
    baseline_kib: int = 0
    loaded_kib: int = 0
    held: int = 0                  # connections the server holds (its sockets minus listeners)
    fill_seconds: float = 0.0
    fill_cpu_us: float | None = None
    failures: Counter[str] = field(default_factory=Counter)

    @property
    def per_connection_kib(self) -> float | None:
        if self.n <= 0 or self.loaded_kib <= 0:
            return None
        return (self.loaded_kib - self.baseline_kib) / self.n


def source_addresses(n: int) -> list[str]:
    count = max(1, math.ceil(n / PER_SOURCE_ADDRESS))
    return [f"127.0.1.{i}" for i in range(1, count + 1)]


def client_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


async def open_idle(port: int, n: int, sources: Sequence[str],
                    failures: Counter[str]) -> list[trio.SSLStream[trio.SocketStream]]:
    """N handshaken TLS connections from `sources` in turn; failures counted by exception type."""
    ctx = client_context()
    limiter = trio.CapacityLimiter(IN_FLIGHT)
    streams: list[trio.SSLStream[trio.SocketStream]] = []

    async def one(index: int) -> None:
        async with limiter:
            sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                with trio.fail_after(30):
                    await sock.bind((sources[index % len(sources)], 0))
                    await sock.connect(("127.0.0.1", port))
                    stream = trio.SSLStream(trio.SocketStream(sock), ctx,
                                            server_hostname="localhost", https_compatible=True)
                    await stream.do_handshake()
                    # TLS 1.3: the server completes after our Finished arrives; settle_rss waits
                streams.append(stream)
            except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
                failures[type(exc).__name__] += 1
                sock.close()

    async with trio.open_nursery() as nursery:
        for index in range(n):
            nursery.start_soon(one, index)
    return streams


async def close_all(streams: list[trio.SSLStream[trio.SocketStream]]) -> None:
    """Drop the connections without close_notify (the server sees EOF)."""
    for stream in streams:
        stream.transport_stream.socket.close()
    streams.clear()
    await trio.lowlevel.checkpoint()


def server_rss(server: Server) -> int:
    return sum(rss_kib(p) for p in server.metered_pids())


async def settle_rss(server: Server, timeout: float = 20.0) -> int:
    """RSS once it stops moving (two readings 1 s apart within 0.5 %), or after `timeout`."""
    deadline = time.monotonic() + timeout
    last = server_rss(server)
    while time.monotonic() < deadline:
        await trio.sleep(1.0)
        now = server_rss(server)
        if abs(now - last) <= max(64, last * 0.005):
            return now
        last = now
    return last


def held_connections(server: Server, listeners: int) -> int:
    return max(0, sum(socket_count(p) for p in server.metered_pids()) - listeners)


async def measure_async(server: Server, port: int, row: Row, quiet_wait: float) -> None:
    listeners = sum(socket_count(p) for p in server.metered_pids())
    warm_failures: Counter[str] = Counter()
    await close_all(await open_idle(port, WARM_UP, source_addresses(WARM_UP), warm_failures))
    await trio.sleep(1.0)
    row.baseline_kib = await settle_rss(server)
    wait_for_quiet(quiet_wait)      # the fill's CPU figure is only fair on an idle machine
    meter = CpuMeter(server.metered_pids()).start()
    started = time.monotonic()
    streams = await open_idle(port, row.n, source_addresses(row.n), row.failures)
    row.fill_seconds = time.monotonic() - started
    meter.stop()
    try:
        row.fill_cpu_us = meter.cpu / len(streams) * 1e6 if streams else None
        row.loaded_kib = await settle_rss(server)
        row.held = held_connections(server, listeners)
    finally:
        await close_all(streams)


def measure(server: Server, port: int, n: int, name: str, args: BenchArgs) -> Row:
    wait_for_https(server, port)
    row = Row(name, n)
    trio.run(measure_async, server, port, row, args.quiet_wait)
    return row


def bench_n(n: int, state: FrontDoorState, cert: CertFiles, workdir: Path,
            procs: Processes, args: BenchArgs) -> list[Row]:
    rows: list[Row] = []
    port = free_port()
    state.bind(port, cert)
    server = procs.start(f"frontdoor-{n}", frontdoor_handler_argv(state, port), cpu=SERVER_CPU,
                         env=frontdoor_env())
    try:
        rows.append(measure(server, port, n, "httpsys-emu (in-process 200)", args))
    finally:
        procs.stop(server)
        state.emu("delete", "sslcert", f"ipport=0.0.0.0:{port}")

    port = free_port()
    nginx = Nginx(workdir / f"nginx-{n}", nginx_tls_server(port, cert, 'return 200 "ok";'),
                  worker_connections=n + 1024,
                  http_extra=f"client_header_timeout {HEADER_WAIT}s;")
    server = nginx.start(procs, f"nginx-{n}", SERVER_CPU)
    try:
        nginx_worker(server)
        rows.append(measure(server, port, n, "nginx (return 200)", args))
    finally:
        procs.stop(server)
    return rows


def print_table(rows: Sequence[Row]) -> None:
    table = []
    for row in rows:
        peer = next((r for r in rows if r.n == row.n and r.name.startswith("nginx")), None)
        failures = ", ".join(f"{k} {v}" for k, v in row.failures.items()) or "none"
        table.append([f"{row.n:,}", row.name, fmt(row.baseline_kib / 1024, 1),
                      fmt(row.loaded_kib / 1024, 1), fmt(row.per_connection_kib, 1),
                      ratio(row.per_connection_kib, peer.per_connection_kib if peer else None, 1),
                      f"{row.held:,}", fmt(row.fill_seconds, 1),
                      fmt(row.n / row.fill_seconds if row.fill_seconds else None),
                      fmt(row.fill_cpu_us), failures])
    print("\n### Idle TLS connections: server RSS growth per connection\n")
    print(markdown_table(["N", "server (CPU 0)", "RSS before MiB", "RSS with N MiB",
                          "KiB/connection", "÷ nginx", "held by server", "fill s",
                          "handshakes/s during fill", "µs CPU/handshake (fill)",
                          "client failures"], table))


def main(argv: Sequence[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--n", type=int, action="append",
                        help="connections to hold (repeatable; default 2000 and 10000, "
                             "500 with --quick)")
    args = parse_bench_args(parser, argv)
    counts: list[int] = args.extra.n or ([500] if args.quick else [2000, 10000])

    def body() -> None:
        ensure_tools("nginx", "taskset")
        limit = raise_nofile_limit()
        try:
            os.sched_setaffinity(0, {LOAD_CPU})
        except OSError:
            pass
        print(f"## §3 Idle TLS connection memory\n\n{machine_description()}\n")
        print(f"Client: this process on CPU {LOAD_CPU} (Python ssl via trio, {IN_FLIGHT} "
              f"handshakes in flight, ≤{PER_SOURCE_ADDRESS} connections per source address); "
              f"servers on CPU {SERVER_CPU}, fresh for every N; TLS 1.3, RSA-2048; open-file "
              f"limit {limit} (hard {resource.getrlimit(resource.RLIMIT_NOFILE)[1]}). RSS is "
              f"VmRSS (nginx: master + worker). WSS polling variant: not measured (later issue).")
        too_big = [n for n in counts if n + 256 > limit]
        if too_big:
            print(f"\nwarning: N={too_big} is near the open-file limit {limit}; "
                  f"expect failures")
        with bench_workdir("idle-memory-bench", args.keep) as workdir, \
                Processes(workdir) as procs:
            state = FrontDoorState(workdir / "state")
            cert = state.new_cert("rsa2048", workdir / "certs")
            state.emu("add", "timeout", "timeouttype=headerwaittimeout", f"value={HEADER_WAIT}")
            rows: list[Row] = []
            for n in counts:
                rows += bench_n(n, state, cert, workdir, procs, args)
            print_table(rows)

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
