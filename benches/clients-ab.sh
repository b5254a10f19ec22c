#!/usr/bin/env bash
# Client builds side by side over a real link: one server (this build, or SERVER_BIN) in a
# namespace, a veth pair of MTU $MTU, and each client binary in CLIENTS fetching the same
# $SIZE_MIB file with --discard in turn, $RUNS rounds; prints each run and each client's
# median goodput. For a before/after of a client change (build the old commit elsewhere and
# name its binary), where the server must stay the same.
# Usage: CLIENTS="/path/old/ringblast target/release/ringblast" benches/clients-ab.sh [RUNS]
#        env: MTU=1500 SIZE_MIB=1024 SERVER_BIN=   Needs root and iproute2.
set -euo pipefail
RUNS=${1:-10}
MTU=${MTU:-1500}
SIZE_MIB=${SIZE_MIB:-1024}
: "${CLIENTS:?name the client binaries to compare: CLIENTS=\"a b\"}"
cd "$(dirname "$0")/.."
# shellcheck source=lib.sh
. benches/lib.sh
cargo build --release -q
SERVER_BIN=${SERVER_BIN:-$PWD/target/release/ringblast}
ROUTER='' RATE=''
# shellcheck source=netns-lib.sh
. benches/netns-lib.sh

make_file "$WORK/f.bin" $((SIZE_MIB << 20))
ip netns exec "$S" "$SERVER_BIN" serve --dir "$WORK" --bind "[::]:6969" 2> "$WORK/serve.log" > /dev/null &
disown
wait_server "$WORK/serve.log" 1
# Warm up: the file scanned at this path's datagram size, the page cache full.
ip netns exec "$C" "$SERVER_BIN" get f.bin --server "$SV4:6969" --discard --timeout 30 > /dev/null

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
echo "link: veth MTU $MTU; file $SIZE_MIB MiB; server $SERVER_BIN; $RUNS rounds"
declare -A V
for round in $(seq "$RUNS"); do
  i=0
  for bin in $CLIENTS; do
    i=$((i + 1))
    rm -f "$WORK/g.json"
    ip netns exec "$C" "$bin" get f.bin --server "$SV4:6969" --discard --json "$WORK/g.json" > /dev/null 2>&1 || true
    g=$(get_json "$WORK/g.json" "round(d['goodput_bps'] / 8e9, 3)" 2> /dev/null || echo 0)
    echo "round $round, client $i ($bin): $g GB/s"
    V[$i]="${V[$i]:-} $g"
  done
done
i=0
for bin in $CLIENTS; do
  i=$((i + 1))
  # shellcheck disable=SC2086
  printf 'client %s: median %s GB/s  (%s)  runs:%s\n' "$i" "$(printf '%s\n' ${V[$i]} | median)" "$bin" "${V[$i]}"
done
