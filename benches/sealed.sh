#!/usr/bin/env bash
# What sealing costs (issue 23), in one sitting, RUNS rounds, medians; the cases alternate in
# each round so a noisy neighbour hits them all alike:
#   - loopback, 1 GiB (gen-1GiB, --discard): ringblast open vs sealed (serve --authorized,
#     get --identity), and scp -c aes128-gcm@openssh.com with key authentication (sshd on
#     127.0.0.1:$SSH_PORT, the file in /dev/shm, copied to /dev/null);
#   - two hosts (two network namespaces, a veth pair of MTU $MTU): ringblast open vs sealed,
#     and iperf3 TCP (-R, -n 1G, unencrypted);
#   - for scale, one iperf3 UDP sender on loopback (-u -b 0 -l 65507, 3 s): no protocol, no
#     encryption, and its CPU seconds per GB;
#   - the floor (examples/sealed_floor.rs, 2 s per case, each round): no protocol, one thread
#     sealing and sending, one receiving and opening; the two cores' ceiling its CPU costs
#     give (2 / the CPU seconds per GB of both), against what 8x scp asks;
# and for each ringblast case the CPU seconds per GB of the server (utime+stime of its process,
# from /proc) and of the client (bash's `time` of the get).
# Usage: benches/sealed.sh [RUNS]   (root; installs openssh-server and iperf3 if missing)
set -euo pipefail
RUNS=${1:-5}
MTU=${MTU:-1500}
ROUTER=${ROUTER:-}
RATE=${RATE:-}
SSH_PORT=${SSH_PORT:-2299}
cd "$(dirname "$0")/.."
# shellcheck source=lib.sh
. benches/lib.sh
if ! command -v iperf3 > /dev/null || [ ! -x /usr/sbin/sshd ]; then
  apt-get update -q > /dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q iperf3 openssh-server > /dev/null
fi
cargo build --release -q
cargo build --release -q --example sealed_floor
FLOOR=$PWD/target/release/examples/sealed_floor
BIN=${BIN:-$PWD/target/release/ringblast}
# shellcheck source=netns-lib.sh
. benches/netns-lib.sh
PIDS=()
stop_all() { for p in "${PIDS[@]}"; do kill "$p" 2> /dev/null || true; done; rm -f /dev/shm/ringblast-sealed-1GiB; cleanup; }
trap stop_all EXIT

# Keys: the server's, a client's, the authorized file naming it.
"$BIN" keygen --out "$WORK/server" > /dev/null
"$BIN" keygen --out "$WORK/client" > /dev/null
cp "$WORK/client.pub" "$WORK/authorized"
SEALED=(--identity "$WORK/client" --server-key "$WORK/server.pub")

declare -A V
add() { V[$1]="${V[$1]:-} $2"; }
med() { printf '%s\n' ${V[$1]} | median; }

# serve NS PORT [args]: a generated-files server in namespace NS ("" for this one); its pid
# in SERVE_PID.
serve() {
  local ns=$1 port=$2; shift 2
  local run=(); [ -n "$ns" ] && run=(ip netns exec "$ns")
  "${run[@]}" "$BIN" serve --generated --bind "[::]:$port" "$@" > /dev/null 2> "$WORK/serve-$port.log" &
  SERVE_PID=$!
  PIDS+=("$SERVE_PID")
  wait_server "$WORK/serve-$port.log" || exit 1
}

# one LABEL NS SERVER PID [get args]: one 1 GiB transfer; goodput (GB/s) under LABEL, server
# and client CPU seconds per GB under LABEL_s and LABEL_c.
one() {
  local label=$1 ns=$2 server=$3 pid=$4; shift 4
  local run=(); [ -n "$ns" ] && run=(ip netns exec "$ns")
  local before t
  before=$(cpu_ticks "$pid")
  local TIMEFORMAT='%U %S'
  t=$( { time "${run[@]}" "$BIN" get gen-1GiB --server "$server" --discard --timeout 30 --json "$WORK/g.json" "$@" > /dev/null 2>&1; } 2>&1 )
  local after; after=$(cpu_ticks "$pid")
  read -r gbps bytes ok < <(get_json "$WORK/g.json" "(d['goodput_bps'] / 8 / 1e9, sum(x['bytes_received'] for x in c), d['all_intact'])")
  [ "$ok" = True ] || echo "$label: NOT ALL COPIES INTACT" >&2
  add "$label" "$gbps"
  add "${label}_s" "$(awk -v a="$after" -v b="$before" -v hz="$HZ" -v n="$bytes" 'BEGIN {printf "%.3f", (a - b) / hz / (n / 1e9)}')"
  add "${label}_c" "$(echo "$t" | awk -v n="$bytes" '{printf "%.3f", ($1 + $2) / (n / 1e9)}')"
}

row() { # label, what
  printf '%-44s %6.2f GB/s  (runs: %s)  CPU s/GB: server %.2f, client %.2f\n' "$2" "$(med "$1")" \
    "$(printf '%.2f ' ${V[$1]})" "$(med "${1}_s")" "$(med "${1}_c")"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
echo "1 GiB (gen-1GiB, --discard), $RUNS rounds, medians"

# ---- loopback ----
serve "" 7301; OPEN_PID=$SERVE_PID
serve "" 7303 --identity "$WORK/server" --authorized "$WORK/authorized"; SEAL_PID=$SERVE_PID
# scp: sshd with a key of its own, the client's key authorized, the file in memory.
ssh-keygen -q -t ed25519 -N '' -f "$WORK/ssh_host" < /dev/null
ssh-keygen -q -t ed25519 -N '' -f "$WORK/ssh_client" < /dev/null
cp "$WORK/ssh_client.pub" "$WORK/ssh_authorized"
chmod 600 "$WORK/ssh_authorized"; chmod 755 "$WORK"
mkdir -p /run/sshd
/usr/sbin/sshd -D -p "$SSH_PORT" -h "$WORK/ssh_host" -o ListenAddress=127.0.0.1 \
  -o AuthorizedKeysFile="$WORK/ssh_authorized" -o PasswordAuthentication=no \
  -o StrictModes=no -o PermitRootLogin=prohibit-password -E "$WORK/sshd.log" &
PIDS+=($!)
head -c $((1 << 30)) /dev/zero > /dev/shm/ringblast-sealed-1GiB
SCP=(scp -O -q -c aes128-gcm@openssh.com -i "$WORK/ssh_client" -P "$SSH_PORT" -o StrictHostKeyChecking=no
  -o UserKnownHostsFile=/dev/null -o BatchMode=yes)
sleep 0.5
# Warm: the generated file made, the first contact recorded.
one warm "" "127.0.0.1:7301" $OPEN_PID
one warm "" "127.0.0.1:7303" $SEAL_PID "${SEALED[@]}"
for _ in $(seq "$RUNS"); do
  one lo_open "" "127.0.0.1:7301" $OPEN_PID
  one lo_sealed "" "127.0.0.1:7303" $SEAL_PID "${SEALED[@]}"
  s=$(date +%s.%N)
  "${SCP[@]}" "root@127.0.0.1:/dev/shm/ringblast-sealed-1GiB" /dev/null
  add scp "$(awk -v s="$s" -v e="$(date +%s.%N)" 'BEGIN {printf "%.3f", 1073741824 / 1e9 / (e - s)}')"
  # The floor: what any sealed copy between two processes must do to each byte, and no more.
  "$FLOOR" 2 > "$WORK/floor.txt"
  if read -r rate ceiling < <(sed -n 's/^sealed.*received *\([0-9.]*\) GB.*ceiling \([0-9.]*\) GB.*/\1 \2/p' "$WORK/floor.txt"); then
    add floor "$rate"; add ceiling "$ceiling"
  else
    echo "the floor printed no sealed line: $(cat "$WORK/floor.txt")" >&2
  fi
done
# No protocol at all, for scale: one iperf3 UDP sender's core blasting 65507-byte datagrams
# (what one sealed session's worker also does, before it encrypts).
iperf3 -s -p 5298 -1 > /dev/null 2>&1 &
sleep 0.5
iperf3 -c 127.0.0.1 -p 5298 -u -b 0 -l 65507 -t 3 -J > "$WORK/iperf-u.json" 2> /dev/null || true
echo "-- loopback"
row lo_open "ringblast open"
row lo_sealed "ringblast sealed (AES-128-GCM)"
printf '%-44s %6.2f GB/s  (runs: %s)\n' "scp -c aes128-gcm@openssh.com (key auth)" "$(med scp)" "$(printf '%.2f ' ${V[scp]})"
if [ -s "$WORK/iperf-u.json" ]; then
  printf '%-44s %6.2f GB/s  (one run, 3 s)  CPU s/GB: sender %.2f\n' "no protocol: iperf3 -u -b 0 -l 65507" \
    "$(iperf3_rate < "$WORK/iperf-u.json" | awk '{print $1 / 1e9}')" "$(iperf3_cpu_per_gb < "$WORK/iperf-u.json")"
fi
python3 -c "
o, s, c = $(med lo_open), $(med lo_sealed), $(med scp)
print(f'sealed / open: {s / o:.2f}x (target >= 0.5); sealed / scp: {s / c:.1f}x (target >= 8)')"
printf '%-44s %6.2f GB/s  (runs: %s)\n' "floor: sealed, no protocol (sealed_floor)" "$(med floor)" "$(printf '%.2f ' ${V[floor]})"
printf '%-44s %6.2f GB/s  (runs: %s)\n' "sealed ceiling of two cores (floor's costs)" "$(med ceiling)" "$(printf '%.2f ' ${V[ceiling]})"
python3 -c "
s, c, f, top = $(med lo_sealed), $(med scp), $(med floor), $(med ceiling)
print(f'sealed / the floor: {s / f:.2f}x; 8x scp asks {8 * c:.2f} GB/s, the ceiling is {top / c:.1f}x scp')"

# ---- two hosts ----
serve $S 7401; NOPEN_PID=$SERVE_PID
serve $S 7403 --identity "$WORK/server" --authorized "$WORK/authorized"; NSEAL_PID=$SERVE_PID
ip netns exec $S iperf3 -s -p 5299 -D --pidfile "$WORK/iperf.pid"
sleep 0.5
one warm $C "$SV4:7401" $NOPEN_PID
one warm $C "$SV4:7403" $NSEAL_PID "${SEALED[@]}"
for _ in $(seq "$RUNS"); do
  one veth_open $C "$SV4:7401" $NOPEN_PID
  one veth_sealed $C "$SV4:7403" $NSEAL_PID "${SEALED[@]}"
  add tcp "$(ip netns exec $C iperf3 -c $SV4 -p 5299 -R -n 1G -J | iperf3_rate | awk '{printf "%.3f", $1 / 1e9}')"
done
kill "$(cat "$WORK/iperf.pid")" 2> /dev/null || true
echo "-- two hosts: veth MTU $MTU"
row veth_open "ringblast open"
row veth_sealed "ringblast sealed (AES-128-GCM)"
printf '%-44s %6.2f GB/s  (runs: %s)\n' "iperf3 TCP (unencrypted)" "$(med tcp)" "$(printf '%.2f ' ${V[tcp]})"
python3 -c "
o, s, t = $(med veth_open), $(med veth_sealed), $(med tcp)
print(f'sealed / open: {s / o:.2f}x (target >= 0.6); sealed / iperf3 TCP: {s / t:.2f}x (target >= 0.8)')"
