# Helpers the bench scripts and perf/profile.sh share (sourced after `cd` to the repository's
# root): numbers, files, waiting for a server, and reading `get --json` and `iperf3 -J`
# (no script scrapes a table meant for people).

# The median of the numbers on stdin, one per line (the mean of the middle two for an even
# count).
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# build_bin: builds the release binary (quietly) and sets BIN to it.
build_bin() {
  cargo build --release -q
  BIN=$PWD/target/release/ringblast
}

# scratch_dir: a fresh directory in WORK, removed, and every background job of the script
# killed, when the script exits (for scripts that need no other cleanup).
scratch_dir() {
  WORK=$(mktemp -d)
  trap 'kill $(jobs -p) 2> /dev/null || true; rm -rf "$WORK"' EXIT
}

# CPU time (user + system) process $1 has used so far, in clock ticks of $HZ per second.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

# make_file PATH BYTES: PATH holds BYTES random bytes (kept if it already has that size, so
# runs can reuse a large file).
make_file() {
  [ "$(stat -c %s "$1" 2> /dev/null || echo 0)" = "$2" ] || head -c "$2" /dev/urandom > "$1"
}

# wait_server LOG [FILES]: waits (up to 30 s) until the `serve` whose log (stderr) is LOG says
# it is listening and has scanned FILES files (default 0); fails with the log's last lines.
wait_server() {
  local log=$1 files=${2:-0}
  for _ in $(seq 300); do
    if grep -q LISTENING "$log" 2> /dev/null \
      && [ "$(grep -c '\[SCAN\].* scanned' "$log" || true)" -ge "$files" ]; then
      return 0
    fi
    sleep 0.1
  done
  echo "the server never came up (log $log): $(tail -3 "$log" 2> /dev/null)" >&2
  return 1
}

# get_json FILE EXPR: evaluates the Python expression EXPR over `get --json FILE`'s result,
# with d (the whole object), c (its clients) and MiB (2**20) in scope; prints the value (a
# tuple's values separated by spaces, for `read`).
#   get_json r.json "d['goodput_bps'] / 8 / MiB"   -> the aggregate goodput in MiB/s
get_json() {
  python3 -c "
import json, sys
d = json.load(open(sys.argv[1])); c = d['clients']; MiB = 2**20
v = ($2)
print(*v) if isinstance(v, tuple) else print(v)" "$1"
}

# The aggregate goodput (MiB/s) of `get --json FILE`.
goodput() { get_json "$1" "round(d['goodput_bps'] / 8 / MiB, 1)"; }

# iperf3_rate: `iperf3 -J` on stdin -> what the receiver got, bytes/s. TCP: sum_received.
# UDP: the sender's rate less the share the receiver counted lost (every iperf3 version has
# "sum" for UDP; newer ones also a sum_received that says the same).
iperf3_rate() {
  python3 -c '
import json, sys
e = json.load(sys.stdin)["end"]
s = e["sum"] if "sum" in e else e["sum_received"]
print(s["bits_per_second"] * (1 - s.get("lost_percent", 0) / 100) / 8)'
}

# iperf3_cpu_per_gb: `iperf3 -J` on stdin -> the sending host's CPU seconds per GB it sent.
iperf3_cpu_per_gb() {
  python3 -c '
import json, sys
e = json.load(sys.stdin)["end"]
s = e["sum"] if "sum" in e else e["sum_sent"]
print(e["cpu_utilization_percent"]["host_total"] / 100 * s["seconds"] / (s["bytes"] / 1e9))'
}
