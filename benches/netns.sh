#!/usr/bin/env bash
# Two hosts on one machine: ringblast against iperf3 over a real link.
#
# Creates a server and a client network namespace joined by a veth pair of MTU $MTU (with
# ROUTER=1, a router namespace between them, shaped by `tc tbf` at $RATE on its egress towards
# the client, like a switch port: the sender feels no backpressure), then measures in one
# sitting, $RUNS runs each, medians:
#   - ringblast get --discard of a $SIZE file: default (auto datagram size, GSO, GRO), and
#     with --no-gso --no-gro; also --out (written and verified) once per run;
#   - iperf3 TCP, and iperf3 UDP at the same datagram size (-u -b 0 -l SIZE);
#   - IP fragments reassembled on the client (ReasmReqds), receive calls and server
#     io_uring_enter calls per GiB.
# Removes everything it created on exit, Ctrl-C included.
#
#   - 10 sub-clients at once (aggregate, every copy intact), and IPv6.
# Usage: benches/netns.sh [RUNS]     env: MTU=1500 SIZE_MIB=1024 RATE= (e.g. 1gbit) ROUTER=
#                                         OUT=DIR (where --out writes; default a temp dir)
#                                         BIN=path (another build, e.g. the one before a change)
# Needs root, iproute2 and iperf3 (apt-get install iproute2 iperf3).
set -euo pipefail
RUNS=${1:-5}
MTU=${MTU:-1500}
SIZE_MIB=${SIZE_MIB:-1024}
RATE=${RATE:-}
ROUTER=${ROUTER:-}
cd "$(dirname "$0")/.."
# shellcheck source=lib.sh
. benches/lib.sh
cargo build --release -q
BIN=${BIN:-$PWD/target/release/ringblast}
# shellcheck source=netns-lib.sh
. benches/netns-lib.sh

make_file "$WORK/f.bin" $((SIZE_MIB << 20))
ip netns exec $S "$BIN" serve --dir "$WORK" --bind [::]:6969 --json > "$WORK/serve-6969.json" 2> "$WORK/serve.log" &
disown
# The same server without GSO, for the comparison.
ip netns exec $S "$BIN" serve --dir "$WORK" --bind [::]:6970 --json --no-gso > "$WORK/serve-6970.json" 2> "$WORK/serve-nogso.log" &
disown
snmp() { ip netns exec $C awk -v f="$1" '/^Ip:/{ if (!n) { for (i=1;i<=NF;i++) if ($i==f) c=i; n=1 } else print $c }' /proc/net/snmp; }
# Warm up: the server scans the file at this path's datagram size, the page cache fills.
for server in $SV4:6969 $SV4:6970 "[$SV6]:6969"; do
  for _ in $(seq 50); do
    ip netns exec $C "$BIN" get f.bin --server "$server" --discard --timeout 30 > /dev/null 2>&1 && break
    sleep 0.2
  done
done

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
echo "link: MTU $MTU${ROUTER:+, through a router}${RATE:+, tbf $RATE}; file ${SIZE_MIB} MiB; $RUNS runs each, medians"
ringblast_case() { # label, server address, get args...
  local label=$1 server=$2; shift 2
  local port=${server##*:}
  local g=() calls=() enters=() reasm0 reasm1 dsize
  reasm0=$(snmp ReasmReqds)
  for _ in $(seq "$RUNS"); do
    sync
    local before
    before=$(wc -l < "$WORK/serve-$port.json")
    ip netns exec $C "$BIN" get f.bin --server "$server" --json "$WORK/g.json" --timeout 30 "$@" > /dev/null || true
    sleep 0.2
    read -r gp rc ds < <(python3 -c "
import json, sys; d=json.load(open('$WORK/g.json')); c=d['clients']
if not d['all_intact']: print('NOT ALL COPIES INTACT', file=sys.stderr)
print(d['goodput_bps']/8/1e9, sum(x['recv_calls'] for x in c)*(1<<30)/max(sum(x['bytes_received'] for x in c),1), c[0]['datagram_size'])")
    g+=("$gp"); calls+=("$rc"); dsize=$ds
    enters+=("$(python3 -c "
import json
s=[json.loads(l) for l in open('$WORK/serve-$port.json').readlines()[$before:] if l.strip()]
print(sum(x['io_uring_enters'] for x in s)*(1<<30)/max(sum(x['bytes_sent'] for x in s),1))")")
  done
  reasm1=$(snmp ReasmReqds)
  printf '%-36s %6.2f GB/s   (runs: %s)  datagram %s B, %7.0f recv calls/GiB, %6.0f io_uring_enter/GiB, %s fragments\n' \
    "$label" "$(printf '%s\n' "${g[@]}" | median)" "$(printf '%.2f ' "${g[@]}")" "$dsize" \
    "$(printf '%s\n' "${calls[@]}" | median)" "$(printf '%s\n' "${enters[@]}" | median)" "$((reasm1 - reasm0))"
  RB_MEDIAN=$(printf '%s\n' "${g[@]}" | median)
}
OUT=${OUT:-$WORK/out}
ringblast_case "ringblast --discard (auto, GSO+GRO)" $SV4:6969 --discard
RB=$RB_MEDIAN
ringblast_case "ringblast --discard, no GSO, no GRO" $SV4:6970 --discard --no-gro
ringblast_case "ringblast --out $OUT (verified)" $SV4:6969 --out "$OUT" --force
rm -rf "${OUT:?}/f.bin"
ringblast_case "ringblast --discard, IPv6" "[$SV6]:6969" --discard
ringblast_case "ringblast --discard, 10 sub-clients" $SV4:6969 --discard --clients 10

if command -v iperf3 > /dev/null; then
  ip netns exec $S iperf3 -s -p 5201 -D --pidfile "$WORK/iperf.pid"
  sleep 0.5
  t=() u=()
  for _ in $(seq "$RUNS"); do
    t+=("$(ip netns exec $C iperf3 -c $SV4 -p 5201 -R -t 3 -J | iperf3_rate | awk '{print $1 / 1e9}')")
    u+=("$(ip netns exec $C iperf3 -c $SV4 -p 5201 -R -t 3 -u -b 0 -l $((MTU - 28)) -J | iperf3_rate | awk '{print $1 / 1e9}')")
  done
  TCP=$(printf '%s\n' "${t[@]}" | median)
  printf '%-36s %6.2f GB/s   (runs: %s)\n' "iperf3 TCP" "$TCP" "$(printf '%.2f ' "${t[@]}")"
  printf '%-36s %6.2f GB/s   (runs: %s) delivered\n' "iperf3 UDP -l $((MTU - 28)) -b 0" "$(printf '%s\n' "${u[@]}" | median)" "$(printf '%.2f ' "${u[@]}")"
  echo "ringblast / iperf3 TCP: $(python3 -c "print(round($RB / $TCP, 2))")x"
else
  echo "iperf3 not installed: apt-get install iperf3"
fi
