#!/usr/bin/env bash
# The scale benchmark: N concurrent sessions, all from one `get --clients N`, against one
# server on loopback; RUNS runs per N, each row the median:
#   copies intact; aggregate goodput; datagrams retransmitted per datagram of the files; p99
#   time for a copy to complete; peak server and client threads; peak anonymous RSS of the
#   server (and per session, above the idle server) and of the client (and per sub-client);
#   the kernel's UDP receive-buffer drops (/proc/net/snmp RcvbufErrors) during the run.
# Files: 32 MiB below 1000 sessions, 8 MiB below 5000, 1 MiB from 5000 (SIZE_MIB forces one
# size). The server
# runs with defaults except --max-sessions and --sessions-per-ip, raised to N where N passes
# their defaults (4096, 1024): every session comes from one address here.
# Usage: benches/load.sh [RUNS]   env: SESSIONS="100 1000 5000" SIZE_MIB= TIMEOUT=30s
#        SERVE_ARGS="--send-path sendmsg" (more options for the server)
set -euo pipefail
RUNS=${1:-3}
SESSIONS=${SESSIONS:-100 1000 5000}
TIMEOUT=${TIMEOUT:-30s}
SERVE_ARGS=${SERVE_ARGS:-}
PORT=${PORT:-6997}
cd "$(dirname "$0")/.."
# shellcheck source=lib.sh
. benches/lib.sh
cargo build --release -q
BIN=${BIN:-$PWD/target/release/ringblast}
WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  kill $(jobs -p) 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir "$WORK/files"
for mib in 32 8 1 ${SIZE_MIB:-}; do make_file "$WORK/files/f$mib.bin" $((mib << 20)); done

# Samples /proc/PID/status of the given processes every 20 ms until STOP exists; writes the
# peak RssAnon (KiB) and Threads of each, one line per pid.
sampler() {
  python3 - "$@" << 'EOF'
import os, sys, time
stop, out, pids = sys.argv[1], sys.argv[2], sys.argv[3:]
peak = {p: [0, 0] for p in pids}
while True:
    done = os.path.exists(stop)
    for p in pids:
        try:
            for line in open(f"/proc/{p}/status"):
                k, _, v = line.partition(":")
                if k == "RssAnon":
                    peak[p][0] = max(peak[p][0], int(v.split()[0]))
                elif k == "Threads":
                    peak[p][1] = max(peak[p][1], int(v))
        except OSError:
            pass
    if done:
        break
    time.sleep(0.02)
with open(out, "w") as f:
    for p in pids:
        f.write(f"{peak[p][0]} {peak[p][1]}\n")
EOF
}
rss_anon() { awk '/^RssAnon/ {print $2}' "/proc/$1/status"; }
rcvbuf_errors() { awk '/^Udp:/ {n++; if (n == 2) print $6}' /proc/net/snmp; }

echo "machine: $(nproc) cores, kernel $(uname -r), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); $RUNS runs per row, medians"
echo
echo "| sessions | file | copies intact | aggregate goodput MiB/s | retransmitted % | p99 copy time s | server threads | server anon RSS MiB (per session KiB) | client threads | client anon RSS MiB (per sub-client KiB) | RcvbufErrors |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for n in $SESSIONS; do
  size=${SIZE_MIB:-$( (($n >= 5000)) && echo 1 || { (($n >= 1000)) && echo 8 || echo 32; })}
  max=$((n > 4096 ? n : 4096))
  rows=()
  for run in $(seq "$RUNS"); do
    "$BIN" serve --dir "$WORK/files" --bind "127.0.0.1:$PORT" --max-sessions "$max" --sessions-per-ip "$max" $SERVE_ARGS > /dev/null 2> "$WORK/serve.log" &
    SERVER_PID=$!
    wait_server "$WORK/serve.log" "$(ls "$WORK/files" | wc -l)"
    sleep 0.3
    base=$(rss_anon "$SERVER_PID")
    drops0=$(rcvbuf_errors)
    rm -f "$WORK/stop"
    "$BIN" get "f$size.bin" --server "127.0.0.1:$PORT" --clients "$n" --discard --timeout "$TIMEOUT" \
      --quiet --json "$WORK/r.json" > /dev/null 2> "$WORK/get.log" &
    client=$!
    sampler "$WORK/stop" "$WORK/peaks" "$SERVER_PID" "$client" &
    sampler_pid=$!
    wait "$client" || true
    touch "$WORK/stop"
    wait "$sampler_pid"
    drops=$(($(rcvbuf_errors) - drops0))
    kill "$SERVER_PID"
    wait "$SERVER_PID" 2> /dev/null || true
    SERVER_PID=
    rows+=("$(python3 - "$WORK/r.json" "$WORK/peaks" "$base" "$n" "$drops" << 'EOF'
import json, sys
r, peaks, base, n, drops = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
(srss, sthr), (crss, cthr) = [tuple(map(int, l.split())) for l in open(peaks)]
try:
    d = json.load(open(r))
    c = d["clients"]
except Exception:
    c = []
ok = [x for x in c if x.get("hash_ok")]
times = sorted(x["duration_s"] for x in c) or [0]
p99 = times[min(len(times) - 1, int(0.99 * len(times)))]
goodput = sum(x["bytes_intact"] for x in ok) / max(times[-1], 1e-9) / 2**20
resent = sum(x["retransmitted"] for x in c) / max(sum(x["datagrams_expected"] for x in c), 1) * 100
print(len(ok), goodput, resent, p99, sthr, srss / 1024, (srss - base) / n, cthr, crss / 1024, crss / n, drops)
EOF
)")
  done
  col() { printf '%s\n' "${rows[@]}" | awk -v k="$1" '{print $k}' | median; }
  printf '| %s | %s MiB | %s/%s | %.0f | %.2f | %.2f | %s | %.0f (%.1f) | %s | %.0f (%.1f) | %s |\n' \
    "$n" "$size" "$(col 1)" "$n" "$(col 2)" "$(col 3)" "$(col 4)" "$(col 5)" "$(col 6)" "$(col 7)" \
    "$(col 8)" "$(col 9)" "$(col 10)" "$(col 11)"
done
