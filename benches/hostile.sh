#!/usr/bin/env bash
# Hostile peers (docs/RELIABILITY.md, "Hostile peers"): the bounds that hold against each
# attack an adversarial pass found, measured.
#   1. The truncate race that killed the server with SIGBUS: ROUNDS times, a 4 MiB file is
#      rewritten, fetched, and truncated 0-4 ms after the GET; the server must be alive after.
#   2. Every other row comes from tests/hostile.rs, run once (release build, one test at a
#      time): each test prints its measurements on lines starting "measured:".
# Usage: benches/hostile.sh [ROUNDS]   (default 500)
set -euo pipefail
ROUNDS=${1:-500}
PORT=${PORT:-6993}
cd "$(dirname "$0")/.."
# shellcheck source=lib.sh
. benches/lib.sh
cargo build --release --quiet
BIN=target/release/ringblast
WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2> /dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

mkdir -p "$WORK/files"
head -c $((4 << 20)) /dev/urandom > "$WORK/files/f"
"$BIN" serve --dir "$WORK/files" --bind "127.0.0.1:$PORT" 2> "$WORK/serve.log" &
SERVER_PID=$!
wait_server "$WORK/serve.log" 1
alive=yes
for round in $(seq "$ROUNDS"); do
  head -c $((4 << 20)) /dev/urandom > "$WORK/files/f"
  "$BIN" get f --server "127.0.0.1:$PORT" --discard --timeout 1 > /dev/null 2>&1 &
  get=$!
  sleep "0.00$((RANDOM % 5))"
  : > "$WORK/files/f"
  wait "$get" || true
  if ! kill -0 "$SERVER_PID" 2> /dev/null; then
    wait "$SERVER_PID" || echo "the server died in round $round: exit $?"
    alive=no
    break
  fi
done
echo "measured: truncate race: $ROUNDS rounds (rewrite 4 MiB, GET, truncate 0-4 ms later), server alive: $alive"
kill "$SERVER_PID" 2> /dev/null || true
wait "$SERVER_PID" 2> /dev/null || true
SERVER_PID=

cargo test --release --quiet --test hostile -- --nocapture --test-threads 1 2>&1 \
  | grep -o 'measured:.*' || true
