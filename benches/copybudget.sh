#!/usr/bin/env bash
# The copy budget (issue 11), measured in one sitting on loopback, RUNS rounds, medians:
#   - 1 client, 1 GiB, --discard, against servers with --send-path auto (the default), copy
#     and splice: goodput and the server's CPU seconds per GB sent (utime+stime of the server
#     process, from /proc, before and after each transfer);
#   - iperf3 -u -b 0 -l 65507 (3 s), receiver rate, and its sender's CPU seconds per GB (from
#     iperf3's own cpu_utilization_percent);
#   - 1 client, 1 GiB written to a file and verified by content (--verify content), with
#     --write-path direct (the default) and buffered, alternating: goodput, its ratio to
#     --discard, and the client's CPU seconds per GB (the whole process: receive, writer and
#     hash threads); and what bounds it here: dd of 1 GiB of zeros into a new file in the
#     same directory, through the page cache and with oflag=direct (the disk);
#   - 10 clients x 250 MiB --discard against iperf3 -P 10, and written to files (direct and
#     buffered, alternating);
#   - uring (auto send path) vs the threads engine at 1, 5 and 10 clients x 250 MiB.
# Rounds alternate the cases, so a noisy neighbour hits them all alike.
# Usage: benches/copybudget.sh [RUNS]   (needs iperf3 and python3)
set -euo pipefail
RUNS=${1:-5}
cd "$(dirname "$0")/.."
# shellcheck source=lib.sh
. benches/lib.sh
cargo build --release -q
BIN=${BIN:-target/release/ringblast}
DIR=${RINGBLAST_BENCH_DIR:-/tmp/ringblast-bench}
OUT=$DIR/out
PORT=${PORT:-6980}
mkdir -p "$DIR/files"
for size in 1024 250; do make_file "$DIR/files/${size}MiB.bin" $((size << 20)); done
command -v iperf3 >/dev/null || { echo "iperf3 is not installed: apt-get install iperf3" >&2; exit 1; }

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$OUT"; }
trap cleanup EXIT
serve() { # port, args...
  local port=$1; shift
  $BIN serve --dir "$DIR/files" --bind "127.0.0.1:$port" "$@" > "$DIR/serve-$port.log" 2>&1 &
  PIDS+=($!)
  wait_server "$DIR/serve-$port.log" 2 || exit 1
}
serve $PORT --send-path auto;              AUTO_PID=${PIDS[-1]}
serve $((PORT + 2)) --send-path sendmsg;       COPY_PID=${PIDS[-1]}
serve $((PORT + 4)) --engine threads;       THREADS_PID=${PIDS[-1]}
serve $((PORT + 6)) --send-path splice;     SPLICE_PID=${PIDS[-1]}

declare -A V
add() { V[$1]="${V[$1]:-} $2"; }

# One ringblast transfer: records goodput (MiB/s) under $1 and, with $3, the server's CPU
# seconds per GB sent under $1_cpu.
get() { # label, port, server pid or "", args...
  local label=$1 port=$2 pid=$3; shift 3
  rm -rf "$OUT"; sync
  local before=0; [ -n "$pid" ] && before=$(cpu_ticks "$pid")
  local TIMEFORMAT='%U %S' t
  # The client's CPU (user, system) from bash's `time`, on stderr after the get's own.
  t=$( { time $BIN get "$@" --server "127.0.0.1:$port" --json "$DIR/get.json" > /dev/null 2>&1; } 2>&1 )
  add "$label" "$(goodput "$DIR/get.json")"
  local bytes; bytes=$(get_json "$DIR/get.json" "sum(x['bytes_received'] for x in c)")
  add "${label}_ccpu" "$(echo "$t" | awk -v b="$bytes" '{printf "%.3f", ($1 + $2) / (b / 1e9)}')"
  if [ -n "$pid" ]; then
    add "${label}_cpu" "$(awk -v t=$(( $(cpu_ticks "$pid") - before )) -v hz="$HZ" -v b="$bytes" 'BEGIN {printf "%.3f", t / hz / (b / 1e9)}')"
  fi
}
iperf() { # label, parallel streams
  local label=$1 streams=$2 port=$((PORT + 10))
  iperf3 -s -p $port -1 >/dev/null 2>&1 &
  local spid=$!
  sleep 0.3
  iperf3 -c 127.0.0.1 -p $port -u -b 0 -l 65507 -t 3 -P "$streams" -J > "$DIR/iperf.json" 2>/dev/null || true
  wait $spid || true
  add "$label" "$(iperf3_rate < "$DIR/iperf.json" | awk '{printf "%.1f", $1 / 1048576}')"
  add "${label}_cpu" "$(iperf3_cpu_per_gb < "$DIR/iperf.json" | awk '{printf "%.3f", $1}')"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
for r in $(seq "$RUNS"); do
  echo "round $r of $RUNS" >&2
  iperf iperf1 1
  # The three servers in a different order each round: none always follows iperf3.
  for k in 0 1 2; do
    case $(( (r + k) % 3 )) in
      0) get auto $PORT "$AUTO_PID" 1024MiB.bin --discard ;;
      1) get copy $((PORT + 2)) "$COPY_PID" 1024MiB.bin --discard ;;
      2) get splice $((PORT + 6)) "$SPLICE_PID" 1024MiB.bin --discard ;;
    esac
  done
  for k in 0 1; do
    case $(( (r + k) % 2 )) in
      0) get file $PORT "" 1024MiB.bin --out "$OUT" --force --verify content --write-path direct ;;
      1) get filebuf $PORT "" 1024MiB.bin --out "$OUT" --force --verify content --write-path buffered ;;
    esac
  done
  rm -rf "$OUT"; mkdir -p "$OUT"; sync
  add dd "$(dd if=/dev/zero of="$OUT/dd" bs=4M count=256 2>&1 | awk '/copied/ {print 1073741824 / $(NF-3) / 1048576}')"
  rm -f "$OUT/dd"
  add dddirect "$(dd if=/dev/zero of="$OUT/dd" bs=4M count=256 oflag=direct 2>&1 | awk '/copied/ {print 1073741824 / $(NF-3) / 1048576}')"
  iperf iperf10 10
  get auto10 $PORT "$AUTO_PID" 250MiB.bin --discard --clients 10
  get copy10 $((PORT + 2)) "$COPY_PID" 250MiB.bin --discard --clients 10
  for k in 0 1; do
    case $(( (r + k) % 2 )) in
      0) get file10 $PORT "" 250MiB.bin --clients 10 --out "$OUT" --force --write-path direct ;;
      1) get filebuf10 $PORT "" 250MiB.bin --clients 10 --out "$OUT" --force --write-path buffered ;;
    esac
  done
done
for n in 1 5 10; do
  for _ in $(seq "$RUNS"); do
    get "uring$n" $PORT "" 250MiB.bin --discard --clients $n
    get "threads$n" $((PORT + 4)) "" 250MiB.bin --discard --clients $n
  done
done

m() { printf '%s\n' ${V[$1]} | median; }
row() { # label, key, comparison text
  printf '%-46s %8.1f MiB/s %s   runs: %s\n' "$1" "$(m "$2")" "$3" "${V[$2]# }"
}
ratio() { awk -v a="$(m "$1")" -v b="$(m "$2")" 'BEGIN {printf "%.2fx", a / b}'; }
cpu() { printf 'server %s CPU-s/GB (runs:%s)' "$(m "${1}_cpu")" "${V[${1}_cpu]}"; }
echo
row "iperf3 -u -b 0 -l 65507, receiver" iperf1 "sender $(m iperf1_cpu) CPU-s/GB"
row "1 client --discard, auto (copies: alone)" auto "$(ratio auto iperf1) iperf3; $(cpu auto)"
row "1 client --discard, copy" copy "$(ratio copy iperf1) iperf3; $(cpu copy)"
row "1 client --discard, splice" splice "$(ratio splice iperf1) iperf3; $(cpu splice)"
ccpu() { printf 'client %s CPU-s/GB (runs:%s)' "$(m "${1}_ccpu")" "${V[${1}_ccpu]}"; }
row "1 client --discard, auto: the client" auto "$(ccpu auto)"
row "1 client to file, --verify content, direct" file "$(ratio file auto) of --discard, $(ratio file dddirect) of dd direct; $(ccpu file)"
row "1 client to file, --verify content, buffered" filebuf "$(ratio filebuf auto) of --discard, $(ratio filebuf dd) of dd; $(ccpu filebuf)"
row "dd 1 GiB of zeros to a new file there" dd ""
row "dd 1 GiB of zeros, oflag=direct" dddirect ""
row "iperf3 -P 10, receiver" iperf10 ""
row "10 clients x 250 MiB --discard, auto (splices)" auto10 "$(ratio auto10 iperf10) iperf3 -P 10; $(cpu auto10)"
row "10 clients x 250 MiB --discard, copy" copy10 "$(ratio copy10 iperf10) iperf3 -P 10; $(cpu copy10)"
row "10 clients x 250 MiB to files, direct" file10 "$(ratio file10 auto10) of --discard; $(ccpu file10)"
row "10 clients x 250 MiB to files, buffered" filebuf10 "$(ratio filebuf10 auto10) of --discard; $(ccpu filebuf10)"
for n in 1 5 10; do
  row "uring, $n x 250 MiB --discard" "uring$n" "$(ratio "uring$n" "threads$n") threads"
  row "threads, $n x 250 MiB --discard" "threads$n" ""
done
