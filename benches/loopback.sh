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
for size in 1024 250; do make_file "$DIR/files/${size}MiB.bin" $((size << 20)); done
$BIN serve --dir "$DIR/files" --bind "$SERVER" > "$DIR/serve.log" 2>&1 &
SERVE_PID=$!
trap 'kill $SERVE_PID 2>/dev/null || true' EXIT
wait_server "$DIR/serve.log" 2

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
run_case() { # label, args...
  local label=$1; shift
  local vals=()
  for _ in $(seq "$RUNS"); do
    # Start each run with no dirty pages of the last one still being written back.
    rm -rf "$OUT"; sync
    $BIN get 1024MiB.bin --server "$SERVER" --json "$DIR/get.json" "$@" > /dev/null
    vals+=("$(goodput "$DIR/get.json")")
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
    iperf3 -c 127.0.0.1 -p $((PORT + 1)) -u -b 0 -l 65507 -t 3 -J > "$DIR/iperf.json" 2> /dev/null
    vals+=("$(iperf3_rate < "$DIR/iperf.json" | awk '{print $1 / 1048576}')")
    loss=$(python3 -c "import json; print('%.1f%%' % json.load(open('$DIR/iperf.json'))['end']['sum']['lost_percent'])")
    wait $IPERF_PID
  done
  printf '%-44s median %8.1f MiB/s = %5.2f GB/s   runs: %s (last run lost %s)\n' "iperf3 -u -b 0 -l 65507, receiver" \
    "$(printf '%s\n' "${vals[@]}" | median)" "$(printf '%s\n' "${vals[@]}" | median | awk '{print $1*1048576/1e9}')" "${vals[*]}" "$loss"
else
  echo "iperf3 not installed: apt-get install iperf3"
fi

(sleep 0.5; ps -L -o comm= -p $SERVE_PID | sort | uniq -c | awk '{printf "%s x%s, ", $2, $1}' > "$DIR/threads.txt") &
PS_PID=$!
$BIN get 250MiB.bin --server "$SERVER" --discard --clients 10 --json "$DIR/get.json" > /dev/null
wait $PS_PID
echo "10 clients x 250 MiB, --discard: $(get_json "$DIR/get.json" "'%d of %d copies intact, goodput %.1f MiB/s' % (sum(x['hash_ok'] for x in c), len(c), d['goodput_bps'] / 8 / MiB)")"
echo "  server threads during the transfer: $(cat "$DIR/threads.txt")"
echo "  retransmitted per client: $(get_json "$DIR/get.json" "' '.join(str(x['retransmitted']) for x in c)")"
