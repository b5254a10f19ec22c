#!/usr/bin/env bash
# The core performance figures of README.md, "Performance", measured in one sitting:
#   1. one client, a 1 GiB random file, loopback, --discard: goodput, median of RUNS runs;
#   2. the same transfer written to a file (BLAKE3 content check, and manifest only);
#   3. iperf3 UDP with the same datagram size (-u -b 0 -l 65507), receiver rate, RUNS runs;
#   4. 10 clients x 250 MiB: every copy intact, aggregate goodput, server thread count.
# Usage: benches/loopback.sh [RUNS]   (needs iperf3: apt-get install iperf3)
set -euo pipefail
RUNS=${1:-5}
cd "$(dirname "$0")/.."
# shellcheck source=lib.sh
. benches/lib.sh
cargo build --release -q
BIN=target/release/ringblast
DIR=${RINGBLAST_BENCH_DIR:-/tmp/ringblast-bench}
OUT=$DIR/out
PORT=${PORT:-6990}
SERVER=127.0.0.1:$PORT
mkdir -p "$DIR/files"
for size in 1024 250; do
  f="$DIR/files/${size}MiB.bin"
  [ "$(stat -c %s "$f" 2>/dev/null || echo 0)" = $((size << 20)) ] || head -c $((size << 20)) /dev/urandom > "$f"
done
$BIN serve --dir "$DIR/files" --bind "$SERVER" > "$DIR/serve.log" 2>&1 &
SERVE_PID=$!
trap 'kill $SERVE_PID 2>/dev/null || true' EXIT
# Wait until both files are indexed.
for _ in $(seq 100); do [ "$(grep -c indexed "$DIR/serve.log" || true)" -ge 2 ] && break; sleep 0.1; done

# Aggregate goodput in MiB/s from the table's last line.

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
run_case() { # label, args...
  local label=$1; shift
  local vals=()
  for _ in $(seq "$RUNS"); do
    # Start each run with no dirty pages of the last one still being written back.
    rm -rf "$OUT"; sync
    vals+=("$($BIN get 1024MiB.bin --server "$SERVER" "$@" | goodput)")
  done
  printf '%-44s median %8.1f MiB/s = %5.2f GB/s   runs: %s\n' "$label" \
    "$(printf '%s\n' "${vals[@]}" | median)" \
    "$(printf '%s\n' "${vals[@]}" | median | awk '{print $1*1048576/1e9}')" "${vals[*]}"
}
run_case "1 client, 1 GiB, --discard" --discard
run_case "1 client, 1 GiB, to file, --verify content" --out "$OUT" --force
run_case "1 client, 1 GiB, to file, --verify manifest" --out "$OUT" --force --verify manifest
rm -rf "$OUT"

if command -v iperf3 >/dev/null; then
  vals=()
  for _ in $(seq "$RUNS"); do
    iperf3 -s -p $((PORT + 1)) -1 >/dev/null 2>&1 &
    IPERF_PID=$!
    sleep 0.3
    line=$(iperf3 -c 127.0.0.1 -p $((PORT + 1)) -u -b 0 -l 65507 -t 3 2>/dev/null | grep receiver)
    vals+=("$(echo "$line" | awk '{for(i=1;i<=NF;i++) if ($i ~ /bits\/sec/) {v=$(i-1); u=$i}} END {m=(u ~ /^G/)?1e9:(u ~ /^M/)?1e6:1; print v*m/8/1048576}')")
    loss=$(echo "$line" | grep -o '([0-9.]*%)')
    wait $IPERF_PID
  done
  printf '%-44s median %8.1f MiB/s = %5.2f GB/s   runs: %s (last run lost %s)\n' "iperf3 -u -b 0 -l 65507, receiver" \
    "$(printf '%s\n' "${vals[@]}" | median)" "$(printf '%s\n' "${vals[@]}" | median | awk '{print $1*1048576/1e9}')" "${vals[*]}" "$loss"
else
  echo "iperf3 not installed: apt-get install iperf3"
fi

(sleep 0.5; ps -L -o comm= -p $SERVE_PID | sort | uniq -c | awk '{printf "%s x%s, ", $2, $1}' > "$DIR/threads.txt") &
PS_PID=$!
table=$($BIN get 250MiB.bin --server "$SERVER" --discard --clients 10)
wait $PS_PID
echo "10 clients x 250 MiB, --discard: $(echo "$table" | tail -1)"
echo "  server threads during the transfer: $(cat "$DIR/threads.txt")"
echo "  retransmitted per client: $(echo "$table" | awk 'NR>2 && $1 ~ /^[0-9]+$/ {printf "%s ", $10}')"
