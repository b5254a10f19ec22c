#!/usr/bin/env bash
# Profile one loopback transfer: perf record (software cpu-clock events, call graphs, all CPUs)
# while a server sends FILE to CLIENTS sub-clients, then the top symbols per thread.
# Usage: perf/profile.sh [SIZE (default 1GiB)] [CLIENTS (default 1)] [extra get args...]
# Needs perf (Debian: apt-get install linux-perf). Hardware counters are not required.
set -euo pipefail
SIZE=${1:-1GiB}; CLIENTS=${2:-1}; shift $(( $# > 2 ? 2 : $# )) || true
cd "$(dirname "$0")/.."
command -v perf >/dev/null || { apt-get update -qq && apt-get install -y -qq linux-perf; }
cargo build --release -q
BIN=target/release/ringblast
DIR=${RINGBLAST_PERF_DIR:-/tmp/ringblast-perf}
mkdir -p "$DIR"
# `demo` generates the file if it is missing (and checks the whole path works).
$BIN demo --dir "$DIR" --size "$SIZE" --clients 1 >/dev/null
NAME=$(ls "$DIR" | grep -E '^[0-9]+(MiB|B)\.bin$' | head -1)
$BIN serve --dir "$DIR" --bind 127.0.0.1:6991 >"$DIR/serve.log" 2>&1 &
SERVE=$!
trap 'kill $SERVE 2>/dev/null || true' EXIT
sleep 2
perf record -e cpu-clock -g -a -o "$DIR/perf.data" -- \
  $BIN get "$NAME" --server 127.0.0.1:6991 --clients "$CLIENTS" --discard "$@" | tail -1
echo "--- top symbols by thread (% of all CPU samples on all cores) ---"
perf report -i "$DIR/perf.data" --no-children --sort comm,sym --stdio 2>/dev/null \
  | grep -E '^ +[0-9.]+%' | head -25
echo "perf data: $DIR/perf.data (perf report -i $DIR/perf.data)"
