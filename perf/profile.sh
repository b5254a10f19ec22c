#!/usr/bin/env bash
# Profile one loopback transfer per engine: perf record (software cpu-clock events, call
# graphs, all CPUs) while a server sends FILE to CLIENTS sub-clients with --discard, perf stat
# of the server process, a flame graph (inferno) and the top symbols per thread.
#
# Usage: perf/profile.sh [VARIANTS (default: uring,threads)] [SIZE (default 1GiB)] [CLIENTS (default 1)]
#   A variant is an engine, optionally with the uring engine's send path: uring:copy,
#   uring:splice (plain `uring` is the default, auto).
#   GET="--out /tmp/x --force" profiles that instead of --discard (the write path);
#   BIN=path/to/ringblast profiles another build (e.g. the one before a change) as it is.
# Output in perf/out/: VARIANT.svg (flame graph), VARIANT.top.txt, VARIANT.stat.txt,
# VARIANT.perf.data, and the CPU seconds of each process (server, client) per GB moved.
# Installs what is missing: perf (Debian linux-perf) and inferno (cargo install inferno).
# This VM has no hardware counters: cpu-clock and software events only.
set -euo pipefail
ENGINES=${1:-uring,threads}; SIZE=${2:-1GiB}; CLIENTS=${3:-1}
cd "$(dirname "$0")/.."
# shellcheck source=../benches/lib.sh
. benches/lib.sh
command -v perf >/dev/null || { apt-get update -qq && apt-get install -y -qq linux-perf; }
command -v inferno-flamegraph >/dev/null || cargo install --locked inferno
if [ -z "${BIN:-}" ]; then cargo build --release -q; BIN=$PWD/target/release/ringblast; fi
GET=${GET:---discard}
OUT=$PWD/perf/out
DIR=${RINGBLAST_PERF_DIR:-/tmp/ringblast-perf}
mkdir -p "$OUT" "$DIR"
$BIN demo --dir "$DIR" --size "$SIZE" --clients 1 >/dev/null   # generates the file if missing
case $SIZE in  # the name demo gives the file
  *GiB) NAME=$(( ${SIZE%GiB} * 1024 ))MiB.bin ;;
  *MiB) NAME=${SIZE%MiB}MiB.bin ;;
  *) echo "SIZE in MiB or GiB, e.g. 250MiB, 1GiB" >&2; exit 2 ;;
esac
PORT=6992
for VARIANT in ${ENGINES//,/ }; do
  ENGINE=${VARIANT%%:*}
  PATHARG=(); [ "$VARIANT" != "$ENGINE" ] && PATHARG=(--send-path "${VARIANT#*:}")
  ENGINE_NAME=$VARIANT; VARIANT=${VARIANT//:/-}
  $BIN serve --dir "$DIR" --bind 127.0.0.1:$PORT --engine "$ENGINE" "${PATHARG[@]}" >"$OUT/$VARIANT.serve.log" 2>&1 &
  SERVE=$!
  wait_server "$OUT/$VARIANT.serve.log" 1
  # One untimed run to warm the page cache, then the profiled ones.
  $BIN get "$NAME" --server 127.0.0.1:$PORT --clients "$CLIENTS" $GET >/dev/null
  perf stat -e task-clock,context-switches,cpu-migrations,page-faults -p $SERVE -o "$OUT/$VARIANT.stat.txt" &
  STAT=$!
  BEFORE=$(cpu_ticks $SERVE)
  perf record -q -e cpu-clock -g -a -o "$OUT/$VARIANT.perf.data" -- \
    bash -c "TIMEFORMAT='%U %S'; for i in 1 2 3; do { time $BIN get $NAME --server 127.0.0.1:$PORT --clients $CLIENTS $GET > $OUT/get.out ; } 2>> $OUT/get.times; grep -o 'goodput .*' $OUT/get.out; done"
  SERVER_S=$(awk -v t=$(( $(cpu_ticks $SERVE) - BEFORE )) -v hz="$HZ" 'BEGIN {print t / hz}')
  CLIENT_S=$(awk '{s += $1 + $2} END {print s}' "$OUT/get.times"); rm -f "$OUT/get.times" "$OUT/get.out"
  GB=$(awk -v n="$CLIENTS" -v f="$(stat -c %s "$DIR/$NAME")" 'BEGIN {print 3 * n * f / 1e9}')
  kill -INT $STAT; wait $STAT 2>/dev/null || true
  kill $SERVE; wait $SERVE 2>/dev/null || true
  perf script -i "$OUT/$VARIANT.perf.data" 2>/dev/null | inferno-collapse-perf > "$OUT/$VARIANT.folded"
  inferno-flamegraph --title "ringblast $ENGINE_NAME, $NAME x $CLIENTS client(s), get $GET, loopback" < "$OUT/$VARIANT.folded" > "$OUT/$VARIANT.svg"
  perf report -i "$OUT/$VARIANT.perf.data" --no-children --sort comm,sym --stdio 2>/dev/null \
    | grep -E '^ +[0-9.]+%' | sed -n '1,20p' > "$OUT/$VARIANT.top.txt"
  echo "== $ENGINE_NAME: top symbols (% of all samples, both CPUs) =="
  cat "$OUT/$VARIANT.top.txt"
  echo "== $ENGINE_NAME: server perf stat =="
  grep -E 'task-clock|context|migrations|faults|elapsed' "$OUT/$VARIANT.stat.txt"
  awk -v s="$SERVER_S" -v c="$CLIENT_S" -v gb="$GB" 'BEGIN {printf "CPU seconds per GB moved: server %.3f, client %.3f (%.1f GB in 3 runs)\n", s / gb, c / gb, gb}'
  echo "flame graph: $OUT/$VARIANT.svg"
done
