"""Fuzz the UrlPrefix engine's parsers: only WinError / HttpSysError may ever escape them.

Targets: urlprefix.parse_prefix, canonical.canonicalize_path, canonical.split_target and
routing.parse_host_header, plus their invariants (parse∘format identity, idempotent
canonicalisation, Host round trip). Uses atheris (coverage-guided) when it is installed,
else a bounded, seeded mutation loop that needs nothing but the standard library:

    .venv/bin/python fuzz/fuzz_urlprefix.py --iterations 200000 [--seed 7]
    .venv/bin/python fuzz/fuzz_urlprefix.py --atheris -- -max_total_time=300
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Sequence

from httpsys_emu.canonical import canonicalize_path, split_target
from httpsys_emu.pages import HttpSysError
from httpsys_emu.routing import parse_host_header
from httpsys_emu.urlprefix import parse_prefix
from httpsys_emu.winerror import ERROR_INVALID_PARAMETER, WinError

SEEDS: list[bytes] = [
    b"http://+:80/", b"https://*:443/a/b", b"http://Example.COM:8080/X",
    b"http://10.0.0.1:80/", b"https://[::1]:443/api/", b"http://[fe80::1%25eth0]:80/",
    b"http://0.0.0.0:80/", b"http://192.:80/", b"http://[]:80/", b"http://+:080/",
    b"/a%2Fb", b"/a\\b/../c", b"/%C3%A9", b"/%uD83D%uDE00", b"/%25%2525", b"/%E9", b"/%",
    b"/a/./b/../../..", b"//x//", b"*", b"http://h.com:9/p?q#f", b"example.com:443",
    b"Example.com:8443", b"[::1]:443", b"h.com.", b"u@h", b"1.2.3", b"[::ffff:1.2.3.4]",
]
TOKENS: list[bytes] = [
    b"http://", b"https://", b"HTTP://", b"+", b"*", b":", b"/", b"\\", b".", b"..", b"%",
    b"%2F", b"%5C", b"%2E", b"%25", b"%u", b"%u002F", b"%uD800", b"%uDC00", b"%C0%AF", b"%00",
    b"%C2%85", b"?", b"#", b"@", b"[", b"]", b"::", b"0", b"65535", b"65536", b"255", b"\x00",
    b"\t", b" ", b"\xc3\xa9", b"\xff", b"\xe2\x80\xa8", b"a" * 300, b"/a" * 130,
]


def check_prefix(text: str) -> None:
    try:
        prefix = parse_prefix(text)
    except WinError as exc:
        assert exc.code == ERROR_INVALID_PARAMETER, exc
        return
    shown = str(prefix)
    again = parse_prefix(shown)
    assert again == prefix and str(again) == shown, (text, shown)
    assert parse_prefix(prefix.canonical()) == prefix, text


def check_canonical(raw: str | bytes) -> None:
    try:
        once = canonicalize_path(raw)
    except HttpSysError:
        return
    assert canonicalize_path(once) == once, (raw, once)
    assert once.startswith("/") and "\\" not in once, once


def check_split(raw: str | bytes) -> None:
    try:
        path, query, authority = split_target(raw)
    except HttpSysError:
        return
    assert type(path) is type(raw) and type(query) is type(raw), raw
    assert authority is None or isinstance(authority, str)


def check_host(raw: str | bytes) -> None:
    try:
        host, port = parse_host_header(raw)
    except HttpSysError:
        return
    assert parse_host_header(host if port is None else f"{host}:{port}") == (host, port), raw


def one_input(data: bytes) -> None:
    """Run every target on `data`, as bytes and as text (UTF-8 with replacement)."""
    text = data.decode("utf-8", "replace")
    check_prefix(text)
    check_canonical(data)
    check_canonical(text)
    check_split(data)
    check_split(text)
    check_host(data)
    check_host(text)


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        pos = rng.randint(0, len(out))
        if choice < 0.35:
            out[pos:pos] = rng.choice(TOKENS)
        elif choice < 0.55 and out:
            del out[min(pos, len(out) - 1)]
        elif choice < 0.75 and out:
            out[min(pos, len(out) - 1)] = rng.randrange(256)
        elif choice < 0.9:
            out[pos:pos] = rng.choice(SEEDS)
        else:
            out[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return bytes(out[:20_000])


def run_loop(iterations: int, seed: int, seconds: float | None) -> int:
    rng = random.Random(seed)
    corpus = list(SEEDS)
    started = time.monotonic()
    done = 0
    for done in range(1, iterations + 1):
        data = mutate(rng, rng.choice(corpus))
        try:
            one_input(data)
        except Exception:
            print(f"FAILED on input {data!r}", file=sys.stderr)
            raise
        if rng.random() < 0.01 and len(corpus) < 2_000:
            corpus.append(data)
        if seconds is not None and time.monotonic() - started > seconds:
            break
    print(f"ok: {done} inputs, seed {seed}, {time.monotonic() - started:.1f} s")
    return 0


def run_atheris(extra: Sequence[str]) -> int:
    import atheris  # type: ignore[import-not-found]

    def test_one_input(data: bytes) -> None:
        one_input(data)

    atheris.instrument_all()
    atheris.Setup([sys.argv[0], *extra], test_one_input)
    atheris.Fuzz()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fuzz the UrlPrefix engine parsers.")
    parser.add_argument("--iterations", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    parser.add_argument("--atheris", action="store_true",
                        help="use atheris (error if not installed); args after -- go to libFuzzer")
    parser.add_argument("--no-atheris", action="store_true", help="never use atheris")
    args, extra = parser.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    if not args.no_atheris:
        try:
            import atheris  # type: ignore[import-not-found]  # noqa: F401
        except ImportError:
            if args.atheris:
                print("atheris is not installed: pip install atheris", file=sys.stderr)
                return 2
        else:
            return run_atheris(extra)
    return run_loop(args.iterations, args.seed, args.seconds)


if __name__ == "__main__":
    raise SystemExit(main())
