#!/usr/bin/env bash
# docs/RELIABILITY.md's long-path runs: one reliable copy per seed through `ringblast relay
# --rate RATE --delay DELAY --loss LOSS --queue QUEUE` on loopback (the delay and the loss
# apply each way), against a `serve --generated` that has made and scanned the file already
# (a GET straight to the server first: the first GET of a generated file waits for it), each
# run's goodput as a percentage of RATE (the file's bytes over the client's whole transfer,
# handshake and Startup included), datagrams resent per datagram of the file, duration, and
# whether the copy arrived intact; then the medians.
# Usage: benches/longpath.sh [SEEDS (default 5)]
#   env: RATE=1G DELAY=100ms (one way: 200 ms RTT) LOSS=1 (%) QUEUE=8MiB FILE=gen-1GiB
#        TRACE=FILE (`serve --trace FILE`: the sender's state over time, every session; plot
#        one with `ringblast trace FILE --svg OUT --session ID`)
#        PATH_MEMORY=0 (`serve --path-memory`: 0, the default here, starts every run cold,
#        the seeds independent; 10m lets each run start from what the one before learned)
# The lossy 100 ms path: DELAY=50ms benches/longpath.sh 20
set -euo pipefail
SEEDS=${1:-5}
RATE=${RATE:-1G} DELAY=${DELAY:-100ms} LOSS=${LOSS:-1} QUEUE=${QUEUE:-8MiB}
FILE=${FILE:-gen-1GiB} PORT=${PORT:-7310} PATH_MEMORY=${PATH_MEMORY:-0}
# A trace file named relative to where the script was started.
[ -n "${TRACE:-}" ] && TRACE=$(realpath -m "$TRACE")
cd "$(dirname "$0")/.."
# shellcheck source=lib.sh
. benches/lib.sh
build_bin
scratch_dir
TRACE_ARGS=()
[ -n "${TRACE:-}" ] && TRACE_ARGS=(--trace "$TRACE")
"$BIN" serve --generated --bind "127.0.0.1:$PORT" --path-memory "$PATH_MEMORY" "${TRACE_ARGS[@]}" \
  > "$WORK/serve.log" 2>&1 &
wait_server "$WORK/serve.log"
"$BIN" get "$FILE" --server "127.0.0.1:$PORT" --discard --timeout 60 > /dev/null
# RATE as bits per second: 1G, 500M, 100M, 1.5G.
link_bps=$(python3 -c "
import re; m = re.fullmatch(r'([0-9.]+)([KMG]?)', '$RATE')
print(float(m.group(1)) * {'': 1, 'K': 1e3, 'M': 1e6, 'G': 1e9}[m.group(2)])")

echo "machine: $(nproc) cores, kernel $(uname -r); relay --rate $RATE --delay $DELAY (each way)" \
  "--loss $LOSS% --queue $QUEUE; $FILE; $SEEDS seeds"
echo
echo "| seed | goodput % of link | resent % | seconds | intact |"
echo "|---|---|---|---|---|"
: > "$WORK/rows"
for seed in $(seq "$SEEDS"); do
  "$BIN" relay --listen "127.0.0.1:$((PORT + 1))" --to "127.0.0.1:$PORT" --rate "$RATE" \
    --delay "$DELAY" --loss "$LOSS%" --queue "$QUEUE" --seed "$seed" --duration 600 \
    > "$WORK/relay.txt" 2>&1 &
  relay=$!
  sleep 0.3
  rm -f "$WORK/r.json"
  "$BIN" get "$FILE" --server "127.0.0.1:$((PORT + 1))" --discard --timeout 20 \
    --json "$WORK/r.json" > "$WORK/get.txt" 2>&1 || true
  # (A moment for the client's last ACK, in the relay's delay, to reach the server.)
  sleep 0.3
  kill -INT "$relay" 2> /dev/null || true
  wait "$relay" 2> /dev/null || true
  if [ ! -s "$WORK/r.json" ]; then
    echo "| $seed | - | - | - | no result: $(tail -1 "$WORK/get.txt") |"
    continue
  fi
  read -r goodput resent secs intact < <(get_json "$WORK/r.json" "(
    '%.1f' % (c[0]['bytes_intact'] * 8 / c[0]['duration_s'] / $link_bps * 100),
    '%.2f' % (c[0]['retransmitted'] / c[0]['datagrams_expected'] * 100),
    '%.2f' % c[0]['duration_s'], 'yes' if d['all_intact'] else 'NO')")
  echo "| $seed | $goodput | $resent | $secs | $intact |"
  echo "$goodput $resent $secs" >> "$WORK/rows"
done
echo
echo "medians: goodput $(cut -d' ' -f1 "$WORK/rows" | median)% of the link," \
  "resent $(cut -d' ' -f2 "$WORK/rows" | median)%, $(cut -d' ' -f3 "$WORK/rows" | median) s"
