#!/usr/bin/env bash
# The side-by-side benchmarks of benchmarks.md §1–§3, one after the other, each printing its
# markdown table: full TLS handshakes/s, keep-alive proxied requests/s, idle connection memory.
# Arguments go to every script (`--quick` for a smoke run, `--duration S`, `--keep`);
# PROXY_BENCH_ARGS adds proxy_bench-only options (e.g. PROXY_BENCH_ARGS=--profile).
# Exits 0 whatever the numbers; non-zero only when a benchmark could not be set up.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
status=0
"$PY" bench/handshake_bench.py "$@" || status=$?
echo
# shellcheck disable=SC2086  # PROXY_BENCH_ARGS is a word list on purpose
"$PY" bench/proxy_bench.py "$@" ${PROXY_BENCH_ARGS:-} || status=$?
echo
"$PY" bench/idle_memory_bench.py "$@" || status=$?
exit "$status"
