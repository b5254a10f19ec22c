#!/usr/bin/env bash
# Profile one loopback transfer per engine: perf record (software cpu-clock events, call
# graphs, all CPUs) while a server sends FILE to CLIENTS sub-clients with --discard, perf stat
# of the server process, a flame graph (inferno) and the top symbols per thread.
#
# Usage: perf/profile.sh [ENGINES (default: uring,threads)] [SIZE (default 1GiB)] [CLIENTS (default 1)]
# Output in perf/out/: ENGINE.svg (flame graph), ENGINE.top.txt, ENGINE.stat.txt, ENGINE.perf.data
# Installs what is missing: perf (Debian linux-perf) and inferno (cargo install inferno).
# This VM has no hardware counters: cpu-clock and software events only.
set -euo pipefail
ENGINES=${1:-uring,threads}; SIZE=${2:-1GiB}; CLIENTS=${3:-1}
cd "$(dirname "$0")/.."
command -v perf >/dev/null || { apt-get update -qq && apt-get install -y -qq linux-perf; }
command -v inferno-flamegraph >/dev/null || cargo install --locked inferno
cargo build --release -q
BIN=$PWD/target/release/ringblast
OUT=$PWD/perf/out
DIR=${RINGBLAST_PERF_DIR:-/tmp/ringblast-perf}
mkdir -p "$OUT" "$DIR"
$BIN demo --dir "$DIR" --size "$SIZE" --clients 1 >/dev/null   # generates the file if missing
NAME=$(cd "$DIR" && ls | grep -E '^[0-9]+(MiB|B)\.bin$' | head -1)
PORT=6992
for ENGINE in ${ENGINES//,/ }; do
  $BIN serve --dir "$DIR" --bind 127.0.0.1:$PORT --engine "$ENGINE" >"$OUT/$ENGINE.serve.log" 2>&1 &
  SERVE=$!
  sleep 2
  # One untimed run to warm the page cache, then the profiled ones.
  $BIN get "$NAME" --server 127.0.0.1:$PORT --clients "$CLIENTS" --discard >/dev/null
  perf stat -e task-clock,context-switches,cpu-migrations,page-faults -p $SERVE -o "$OUT/$ENGINE.stat.txt" &
  STAT=$!
  perf record -q -e cpu-clock -g -a -o "$OUT/$ENGINE.perf.data" -- \
    bash -c "for i in 1 2 3; do $BIN get $NAME --server 127.0.0.1:$PORT --clients $CLIENTS --discard | grep -o 'goodput .*'; done"
  kill -INT $STAT; wait $STAT 2>/dev/null || true
  kill $SERVE; wait $SERVE 2>/dev/null || true
  perf script -i "$OUT/$ENGINE.perf.data" 2>/dev/null | inferno-collapse-perf > "$OUT/$ENGINE.folded"
  inferno-flamegraph --title "ringblast $ENGINE, $NAME x $CLIENTS client(s), loopback" < "$OUT/$ENGINE.folded" > "$OUT/$ENGINE.svg"
  perf report -i "$OUT/$ENGINE.perf.data" --no-children --sort comm,sym --stdio 2>/dev/null \
    | grep -E '^ +[0-9.]+%' | sed -n '1,20p' > "$OUT/$ENGINE.top.txt"
  echo "== $ENGINE: top symbols (% of all samples, both CPUs) =="
  cat "$OUT/$ENGINE.top.txt"
  echo "== $ENGINE: server perf stat =="
  grep -E 'task-clock|context|migrations|faults|elapsed' "$OUT/$ENGINE.stat.txt"
  echo "flame graph: $OUT/$ENGINE.svg"
done
