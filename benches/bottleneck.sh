#!/usr/bin/env bash
# A shared bottleneck: server -> router -> client namespaces, the router's egress shaped by
# `tc tbf` at $RATE (default 1gbit) with a $QUEUE (default 50ms) tail-drop queue, MTU $MTU.
# In one sitting, $RUNS runs each, medians:
#   - iperf3 TCP alone; ringblast alone (goodput, retransmissions per datagram);
#   - two ringblast transfers of the same file at once: each one's goodput and their ratio;
#   - ringblast and an iperf3 TCP flow at once: each one's share of the link.
# Usage: benches/bottleneck.sh [RUNS]   env: RATE=1gbit QUEUE=50ms MTU=1500 SIZE_MIB=512
# Needs root, iproute2 and iperf3.
set -euo pipefail
RUNS=${1:-5}
MTU=${MTU:-1500}
RATE=${RATE:-1gbit}
QUEUE=${QUEUE:-50ms}
SIZE_MIB=${SIZE_MIB:-512}
ROUTER=1
cd "$(dirname "$0")/.."
# shellcheck source=lib.sh
. benches/lib.sh
cargo build --release -q
BIN=$PWD/target/release/ringblast
# shellcheck source=netns-lib.sh
. benches/netns-lib.sh

make_file "$WORK/f.bin" $((SIZE_MIB << 20))
ip netns exec $S "$BIN" serve --dir "$WORK" --bind [::]:6969 --json > "$WORK/serve.json" 2> "$WORK/serve.log" &
disown
ip netns exec $S iperf3 -s -p 5201 -D --pidfile "$WORK/iperf.pid"
for _ in $(seq 100); do
  ip netns exec $C "$BIN" get f.bin --server $SV4:6969 --discard --timeout 60 > /dev/null 2>&1 && break
  sleep 0.2
done
# get's JSON -> "goodput_Mbit retransmitted/datagrams duration_s"
summary() { python3 -c "
import json, sys; d=json.load(open('$1')); c=d['clients'][0]
ok = 'ok' if d['all_intact'] else 'NOT INTACT'
print('%.1f %.4f %.2f %s' % (c['bytes_intact']*8/c['duration_s']/1e6, c['retransmitted']/max(c['datagrams_expected'],1), c['duration_s'], ok))"; }
tcp() { ip netns exec $C iperf3 -c $SV4 -p 5201 -R -t "$1" -J | iperf3_rate | awk '{print $1 * 8 / 1e6}'; }

echo "machine: $(nproc) cores, kernel $(uname -r); link: tbf $RATE, queue $QUEUE, MTU $MTU, via a router namespace; file ${SIZE_MIB} MiB; $RUNS runs each"
t=(); a=(); ar=(); p1=(); p2=(); pr=(); sr=(); st=()
for run in $(seq "$RUNS"); do
  t+=("$(tcp 5)")
  ip netns exec $C "$BIN" get f.bin --server $SV4:6969 --discard --json "$WORK/a.json" --timeout 30 > /dev/null || true
  read -r g r _ ok < <(summary "$WORK/a.json"); a+=("$g"); ar+=("$r")
  # Two at once.
  ip netns exec $C "$BIN" get f.bin --server $SV4:6969 --discard --json "$WORK/p1.json" --timeout 30 > /dev/null &
  P1=$!
  ip netns exec $C "$BIN" get f.bin --server $SV4:6969 --discard --json "$WORK/p2.json" --timeout 30 > /dev/null || true
  wait $P1 || true
  read -r g1 _ d1 ok1 < <(summary "$WORK/p1.json"); read -r g2 _ d2 ok2 < <(summary "$WORK/p2.json")
  # Same file, started together: how much longer the slower took.
  p1+=("$g1"); p2+=("$g2"); pr+=("$(python3 -c "print(round(max($d1,$d2)/max(min($d1,$d2),0.001),3))")")
  # With TCP: iperf3 runs for as long as the transfer, roughly.
  secs=$(python3 -c "print(max(2, int($SIZE_MIB*8/ max(float('${a[-1]}'),1) * 2 + 1)))")
  ip netns exec $C iperf3 -c $SV4 -p 5201 -R -t "$secs" -J > "$WORK/tcp.json" &
  TP=$!
  sleep 0.5
  ip netns exec $C "$BIN" get f.bin --server $SV4:6969 --discard --json "$WORK/s.json" --timeout 30 > /dev/null || true
  read -r gs _ _ oks < <(summary "$WORK/s.json"); sr+=("$gs")
  wait $TP || true
  # TCP's rate while ringblast ran: its per-second intervals overlapping the transfer.
  st+=("$(python3 -c "
import json; d=json.load(open('$WORK/tcp.json')); iv=[i['sum']['bits_per_second']/1e6 for i in d['intervals']]
dur=json.load(open('$WORK/s.json'))['clients'][0]['duration_s']
n=max(1,int(dur)); sel=iv[1:1+n] or iv; print(sum(sel)/len(sel))")")
  printf 'run %s: tcp %.0f | ringblast %s Mbit/s, %s resent (%s) | two at once %s + %s Mbit/s in %s s and %s s (%s %s) | with tcp: ringblast %s, tcp %.0f Mbit/s (%s)\n' \
    "$run" "${t[-1]}" "${a[-1]}" "${ar[-1]}" "$ok" "$g1" "$g2" "$d1" "$d2" "$ok1" "$ok2" "$gs" "${st[-1]}" "$oks"
done
med() { printf "%s\n" "$@" | median; }
mbit() { printf "%.0f" "$(med "$@")"; }
echo "medians: iperf3 TCP alone $(mbit "${t[@]}") Mbit/s; ringblast alone $(mbit "${a[@]}") Mbit/s ($(python3 -c "print(round($(med "${a[@]}")/$(med "${t[@]}"),2))")x TCP), retransmitted $(med "${ar[@]}") of datagrams"
echo "         two at once: $(mbit "${p1[@]}") and $(mbit "${p2[@]}") Mbit/s, slower/faster completion time $(med "${pr[@]}")"
echo "         with TCP: ringblast $(mbit "${sr[@]}"), TCP $(mbit "${st[@]}") Mbit/s"
