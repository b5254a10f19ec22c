#!/usr/bin/env bash
# docs/RELIABILITY.md's congestion-control table: reliable transfers through a bottleneck of
# RATE x RTT x random loss, each cell the median of $SEEDS seeds: goodput as % of the
# bottleneck (file bytes over the whole transfer, handshake and Startup included) and
# retransmission overhead (datagrams resent / datagrams in the file).
#
# Two kinds of bottleneck ($KIND):
#   relay  `ringblast relay --rate R --delay D/2 --loss L` on loopback (65507-byte datagrams);
#   tbf    server -> router -> client namespaces, `tc tbf rate R` on the router's egress, MTU
#          1500 (1472-byte datagrams); delay and loss from a relay in the client namespace
#          (`--delay D/2 --loss L`, no rate); iperf3 TCP in the cells without the relay
#          (RTT 0, loss 0: this kernel has no netem, and the relay only carries UDP).
# The relay's delay and loss apply in each direction (ACKs are lost too).
# Usage: benches/matrix.sh   env: KIND=relay|tbf RATES="100 1000" (Mbit/s) RTTS="0 20 100 200"
#        (ms) LOSSES="0 0.1 1 2 5" (%) SEEDS=5 PATH_MEMORY=0 (`serve --path-memory`: 0, the
#        default here, starts every run cold, the seeds independent; 10m lets each run start
#        from what the one before on the same RTT learned); prints a Markdown table, one row
#        per cell.
# Needs root, iproute2 and iperf3 for KIND=tbf.
set -euo pipefail
KIND=${KIND:-relay}
RATES=${RATES:-100 1000}
RTTS=${RTTS:-0 20 100 200}
LOSSES=${LOSSES:-0 0.1 1 2 5}
SEEDS=${SEEDS:-5}
PATH_MEMORY=${PATH_MEMORY:-0}
cd "$(dirname "$0")/.."
# shellcheck source=lib.sh
. benches/lib.sh
cargo build --release -q
BIN=$PWD/target/release/ringblast
# A file of about 2.5 s at the bottleneck: 32 MiB at 100 Mbit/s, 256 MiB at 1 Gbit/s.
size_mib() { echo $(($1 >= 1000 ? 256 : 32)); }

if [ "$KIND" = tbf ]; then
  MTU=1500 ROUTER=1 RATE=""
  # shellcheck source=netns-lib.sh
  . benches/netns-lib.sh
  IN_S="ip netns exec $S" IN_C="ip netns exec $C" SERVER=$SV4:6969
else
  WORK=$(mktemp -d)
  trap 'kill $(jobs -p) ${SERVE_PID:-} 2>/dev/null || true; rm -rf "$WORK"' EXIT
  IN_S="" IN_C="" SERVER=127.0.0.1:7610
fi
for r in $RATES; do
  f="$WORK/f$(size_mib "$r").bin"
  make_file "$f" $(($(size_mib "$r") << 20))
done
$IN_S "$BIN" serve --dir "$WORK" --bind "${SERVER/10.78.1.1/[::]}" --path-memory "$PATH_MEMORY" \
  > "$WORK/serve.log" 2>&1 &
SERVE_PID=$!
disown
wait_server "$WORK/serve.log"

echo "machine: $(nproc) cores, kernel $(uname -r); bottleneck: $KIND; $SEEDS seeds a cell; serve --path-memory $PATH_MEMORY"
echo
echo "| bottleneck | RTT | loss | goodput % of link (median) | retransmitted % (median) | runs intact | iperf3 TCP % of link |"
echo "|---|---|---|---|---|---|---|"
for rate in $RATES; do
  file=f$(size_mib "$rate").bin
  if [ "$KIND" = tbf ]; then
    ip netns exec "$R" tc qdisc replace dev "${TAG}rc" root tbf rate "${rate}mbit" burst 256kb latency 50ms
  fi
  for rtt in $RTTS; do
    for loss in $LOSSES; do
      g=() o=() ok=0 tcp="-"
      direct=$([ "$rtt" = 0 ] && [ "$loss" = 0 ] && echo 1 || true)
      for seed in $(seq "$SEEDS"); do
        to=$SERVER relay=()
        if [ "$KIND" = relay ]; then
          relay=(--rate "${rate}M")
        fi
        if [ "$KIND" = relay ] || [ -z "$direct" ]; then
          $IN_C "$BIN" relay --listen 127.0.0.1:7611 --to "$SERVER" "${relay[@]}" \
            --delay "$(python3 -c "print($rtt/2)")ms" --loss "$loss%" --seed "$seed" \
            --duration 600 > "$WORK/relay.txt" 2>&1 &
          RP=$!
          to=127.0.0.1:7611
          sleep 0.3
        fi
        $IN_C "$BIN" get "$file" --server "$to" --discard --timeout 20 --json "$WORK/r.json" \
          > /dev/null 2>&1 || true
        # (A moment for the client's last ACK, still in the relay's delay, to reach the
        # server: the session ends complete, not timed out, and its path is remembered.)
        if [ -n "${RP:-}" ]; then
          sleep 0.3
          kill -INT "$RP" 2>/dev/null || true; wait "$RP" 2>/dev/null || true; RP=
        fi
        read -r gp ov intact < <(python3 -c "
import json
try:
    d = json.load(open('$WORK/r.json')); c = d['clients'][0]
    print(c['bytes_intact'] * 8 / max(c['duration_s'], 1e-9) / ($rate * 1e6) * 100,
          c['retransmitted'] / max(c['datagrams_expected'], 1) * 100, int(d['all_intact']))
except Exception:
    print(0, 0, 0)")
        rm -f "$WORK/r.json"
        g+=("$gp"); o+=("$ov"); ok=$((ok + intact))
      done
      if [ "$KIND" = tbf ] && [ -n "$direct" ] && command -v iperf3 > /dev/null; then
        $IN_S iperf3 -s -p 5201 -1 > /dev/null 2>&1 &
        sleep 0.3
        tcp=$($IN_C iperf3 -c "$SV4" -p 5201 -R -t 3 -J | iperf3_rate | awk -v r="$rate" '{printf "%.1f", $1 * 8 / (r * 1e6) * 100}' || echo "-")
      fi
      printf '| %s Mbit/s | %s ms | %s%% | %.1f | %.2f | %s/%s | %s |\n' "$rate" "$rtt" "$loss" \
        "$(printf '%s\n' "${g[@]}" | median)" "$(printf '%s\n' "${o[@]}" | median)" "$ok" "$SEEDS" "$tcp"
    done
  done
done
