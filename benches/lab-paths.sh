#!/usr/bin/env bash
# The lab's matrix (clients 1, 5, 10 x files of 100 and 250 MiB, both engines, both modes)
# across the paths `ringblast bench --path` builds on this machine, one result directory each,
# then each path set against the first (`bench --compare`): a thin caller, the bench does the
# namespaces, the shaping, the clean-up and the results.
# Usage: benches/lab-paths.sh [REPS]   env: PATHS="veth:1500 veth:9000 router:1gbit"
#        SIZES=100MiB,250MiB CLIENTS=1,5,10 OUT=lab-paths   (needs root)
set -euo pipefail
REPS=${1:-5}
PATHS=${PATHS:-veth:1500 veth:9000 router:1gbit}
SIZES=${SIZES:-100MiB,250MiB}
CLIENTS=${CLIENTS:-1,5,10}
OUT=${OUT:-lab-paths}
cd "$(dirname "$0")/.."
cargo build --release --quiet
BIN=target/release/ringblast
first=
for p in $PATHS; do
  dir="$OUT/${p//[:\/]/-}"
  echo "== $p -> $dir"
  "$BIN" bench --path "$p" --sizes "$SIZES" --clients "$CLIENTS" --reps "$REPS" --out "$dir"
  if [ -z "$first" ]; then
    first=$dir
  else
    "$BIN" bench --compare "$first" "$dir"
  fi
done
