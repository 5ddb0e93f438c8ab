"""Routing benchmark (spec benchmarks.md figure 7): µs per routing decision by table size.

Shows that the indexed RouteTable costs the same with 10, 1,000 or 100,000 prefixes, and how
much a naive list scan (the obvious implementation of §2) costs next to it in the same run.
Run: `.venv/bin/python bench/routing_bench.py [--seed N] [--lookups N]`. Prints a table;
never fails on a number.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from httpsys_emu.pages import HttpSysError
from httpsys_emu.routing import RouteRequest, RouteTable
from httpsys_emu.urlprefix import Category, UrlPrefix, normalize_ip, parse_prefix

SIZES = (10, 1_000, 100_000)
NAIVE_SIZES = (10, 1_000)
WORDS = ["api", "v1", "v2", "users", "orders", "OctopusComms", "static", "hooks", "admin",
         "reports", "files", "health", "metrics", "auth", "tenants", "projects"]
PORTS = {443: "https", 8443: "https", 80: "http"}


@dataclass(frozen=True)
class Workload:
    prefixes: list[UrlPrefix]
    requests: list[RouteRequest]


def _segment(rng: random.Random) -> str:
    if rng.random() < 0.7:
        return rng.choice(WORDS)
    return f"{rng.choice(WORDS)}{rng.randint(0, 999)}"


def _random_prefix(rng: random.Random, size: int) -> UrlPrefix:
    explicit_hosts = max(2, size // 50)
    roll = rng.random()
    if roll < 0.25:
        host = "+"
    elif roll < 0.70:
        host = f"svc{rng.randrange(explicit_hosts)}.example.com"
    elif roll < 0.85:
        host = f"10.0.{rng.randrange(4)}.{rng.randrange(1, 20)}"
    else:
        host = "*"
    port = rng.choice(list(PORTS))
    depth = rng.choice([0, 1, 1, 2, 2, 2, 3, 3, 4, 5, 6])
    path = "/" + "".join(_segment(rng) + "/" for _ in range(depth))
    return parse_prefix(f"{PORTS[port]}://{host}:{port}{path}")


def make_workload(size: int, lookups: int, seed: int) -> Workload:
    rng = random.Random(seed * 1_000_003 + size)
    seen: dict[UrlPrefix, None] = {}
    while len(seen) < size:
        seen.setdefault(_random_prefix(rng, size))
    prefixes = list(seen)
    requests: list[RouteRequest] = []
    for _ in range(lookups):
        roll = rng.random()
        base = rng.choice(prefixes)
        extra = "/".join(_segment(rng) for _ in range(rng.randint(0, 3)))
        path = base.path + extra
        ip = f"10.0.{rng.randrange(4)}.{rng.randrange(1, 20)}"
        host = f"svc{rng.randrange(max(2, size // 50))}.example.com"
        if base.category is Category.EXPLICIT:
            host = base.host_key
        elif base.category is Category.IP_BOUND:
            ip = base.host_key
        if roll < 0.6:            # hits at various depths
            pass
        elif roll < 0.8:          # likely 404 or a hit higher up: unknown path under the host
            path = "/" + "/".join(f"zz{rng.randint(0, 99)}" for _ in range(rng.randint(1, 4)))
        elif roll < 0.9:          # unknown host on a known port: often 400 Invalid Hostname
            host = f"unknown{rng.randint(0, 99)}.example.net"
            ip = "192.0.2.77"
        else:                     # a port with nothing on it
            requests.append(RouteRequest("http", ip, 8080, host, path))
            continue
        requests.append(RouteRequest(base.scheme, ip, base.port, host, path))
    return Workload(prefixes, requests)


class NaiveTable:
    """§2 as a list scan over every registration: the baseline the index is compared with."""

    def __init__(self) -> None:
        self._entries: list[tuple[UrlPrefix, int]] = []

    def register(self, prefix: UrlPrefix, target: int) -> None:
        self._entries.append((prefix, target))

    def route(self, req: RouteRequest) -> tuple[UrlPrefix, int]:
        ip = normalize_ip(req.local_ip)
        path = req.path.lower()
        host = req.host.lower()
        accepted = False
        for category in Category:
            best: tuple[UrlPrefix, int] | None = None
            for prefix, target in self._entries:
                if prefix.category is not category or prefix.port != req.local_port \
                        or prefix.scheme != req.scheme:
                    continue
                key = prefix.host_key
                if category is Category.EXPLICIT and key != host:
                    continue
                if category is Category.IP_BOUND and key != ip:
                    continue
                accepted = True
                ppath = prefix.key[3]
                if path == ppath[:-1] or path.startswith(ppath):
                    if best is None or len(ppath) > len(best[0].key[3]):
                        best = (prefix, target)
            if best is not None:
                return best
        raise LookupError("404" if accepted else "400 Invalid Hostname")


def _outcome(route: Callable[[RouteRequest], object], req: RouteRequest) -> object:
    try:
        result = route(req)
    except (HttpSysError, LookupError) as exc:
        return "404" if "404" in str(exc) else "400"
    if isinstance(result, tuple):
        return result[1]
    return result.target  # type: ignore[attr-defined]


def _time_per_lookup(route: Callable[[RouteRequest], object], requests: Sequence[RouteRequest],
                     repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for req in requests:
            try:
                route(req)
            except (HttpSysError, LookupError):
                pass
        best = min(best, time.perf_counter() - start)
    return best / len(requests) * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--lookups", type=int, default=20_000)
    args = parser.parse_args(argv)

    print(f"Routing decision time (python {sys.version.split()[0]}, best of 3, "
          f"{args.lookups} lookups; 60% hits, 20% unknown paths, 10% unknown hosts, "
          f"10% empty port)")
    print(f"{'prefixes':>10} {'build s':>8} {'index µs':>9} {'naive µs':>9} {'naive/index':>12}"
          f" {'hits':>6} {'404':>6} {'400':>6}")
    for size in SIZES:
        work = make_workload(size, args.lookups, args.seed)
        started = time.perf_counter()
        table: RouteTable[int] = RouteTable()
        for number, prefix in enumerate(work.prefixes):
            table.register(prefix, number)
        built = time.perf_counter() - started
        index_us = _time_per_lookup(table.route, work.requests)
        outcomes = [_outcome(table.route, req) for req in work.requests]
        hits = sum(isinstance(o, int) for o in outcomes)
        not_found = outcomes.count("404")
        bad_host = outcomes.count("400")
        naive_text, ratio_text = "-", "-"
        if size in NAIVE_SIZES:
            naive = NaiveTable()
            for number, prefix in enumerate(work.prefixes):
                naive.register(prefix, number)
            sample = work.requests[: max(200, args.lookups * 10 // size)]
            mismatches = sum(_outcome(naive.route, r) != _outcome(table.route, r) for r in sample)
            if mismatches:
                print(f"  warning: naive and index disagree on {mismatches} requests")
            naive_us = _time_per_lookup(naive.route, sample, repeats=1 if size > 100 else 3)
            naive_text, ratio_text = f"{naive_us:9.2f}", f"{naive_us / index_us:11.1f}x"
        print(f"{size:>10,} {built:8.2f} {index_us:9.2f} {naive_text:>9} {ratio_text:>12}"
              f" {hits:>6} {not_found:>6} {bad_host:>6}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
