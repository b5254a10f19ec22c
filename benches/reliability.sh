#!/usr/bin/env bash
# docs/RELIABILITY.md's figures: reliable transfers through `ringblast relay` at several loss
# rates (with 2% reordering, duplication and corruption), 5 seeds each, medians of goodput,
# duration and retransmission overhead (retransmitted / datagrams in the file, as the client
# counted them at the datagram size the transfer used).
# Usage: benches/reliability.sh [SIZE_BYTES (default 65 MB)] [CLIENTS (default 1)]
set -euo pipefail
SIZE=${1:-65476500}; CLIENTS=${2:-1}
cd "$(dirname "$0")/.."
# shellcheck source=lib.sh
. benches/lib.sh
build_bin
scratch_dir
mkdir "$WORK/files"
make_file "$WORK/files/f.bin" "$SIZE"
$BIN serve --dir "$WORK/files" --bind 127.0.0.1:7200 > "$WORK/serve.log" 2>&1 &
wait_server "$WORK/serve.log" 1
echo "| loss (each way) | goodput MiB/s (median) | duration s (median) | retransmitted / file datagrams (median) | runs |"
echo "|---|---|---|---|---|"
for loss in 0 0.01 0.05 0.2; do
  rows=()
  for seed in 1 2 3 4 5; do
    $BIN relay --listen 127.0.0.1:7201 --to 127.0.0.1:7200 --loss $loss --reorder 0.02 \
      --duplicate 0.02 --corrupt 0.02 --seed $seed --duration 60 > "$WORK/relay.txt" 2>&1 &
    RELAY=$!
    sleep 0.2
    rm -f "$WORK/r.json"
    $BIN get f.bin --server 127.0.0.1:7201 --discard --clients "$CLIENTS" --timeout 20 --json "$WORK/r.json" > /dev/null || true
    kill -INT $RELAY; wait $RELAY 2>/dev/null || true
    rows+=("$(get_json "$WORK/r.json" "d['goodput_bps'] / 8 / MiB, max(x['duration_s'] for x in c), sum(x['retransmitted'] for x in c) / max(sum(x['datagrams_expected'] for x in c), 1), all(x['hash_ok'] for x in c)" || echo "0 0 0 False")")
  done
  printf '%s\n' "${rows[@]}" | python3 -c "
import sys, statistics as st
r=[l.split() for l in sys.stdin if l.strip()]
ok=all(x[3]=='True' for x in r)
print('| %s%% | %.1f | %.3f | %.1f%% | %d/%d intact |' % (float('$loss')*100, st.median(float(x[0]) for x in r), st.median(float(x[1]) for x in r), 100*st.median(float(x[2]) for x in r), sum(x[3]=='True' for x in r), len(r)))"
done
