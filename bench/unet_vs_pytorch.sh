#!/usr/bin/env bash
# Times our UNet3D (c = 16) against the same network in PyTorch on CPU, 2 threads each, in one
# run, and prints the ratios (ours / PyTorch; < 1 means we are faster or smaller):
#   forward + backward at 1x4x64^3, forward at 1x4x160x192x128; peak RSS of each process.
# Each measurement is a separate process so the peaks do not mix. CPU seconds (all threads)
# are printed too: on a shared machine they are steadier than wall time.
#
# usage: bench/unet_vs_pytorch.sh [python-with-torch]   (default: $PYTHON or python3)
# env:   THREADS (default 2), ITERS (default 3), WIDTH (default 16)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-${PYTHON:-python3}}
THREADS=${THREADS:-2}
ITERS=${ITERS:-3}
WIDTH=${WIDTH:-16}
export THREADS RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS

# BIN may name a prebuilt binary (e.g. carried to a machine without Rust).
if [ -z "${BIN:-}" ]; then
  cargo build --release -q -p mgsd-nn --example unet_bench
  BIN=${CARGO_TARGET_DIR:-target}/release/examples/unet_bench
fi

# The value of ` name=` (the leading space keeps `secs` from matching `cpu_secs`).
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }

run_case() {
  local mode=$1 d=$2 h=$3 w=$4
  local ours theirs
  ours=$("$BIN" "$mode" "$d" "$h" "$w" "$WIDTH" "$ITERS")
  theirs=$("$PY" bench/unet_vs_pytorch.py "$mode" "$d" "$h" "$w" "$WIDTH" "$ITERS")
  echo "candle : $ours"
  echo "pytorch: $theirs"
  awk -v a="$(echo "$ours" | field secs)" -v b="$(echo "$theirs" | field secs)" \
      -v ca="$(echo "$ours" | field cpu_secs)" -v cb="$(echo "$theirs" | field cpu_secs)" \
      -v ra="$(echo "$ours" | field peak_rss_mb)" -v rb="$(echo "$theirs" | field peak_rss_mb)" \
      -v m="$mode" -v s="${d}x${h}x${w}" \
      'BEGIN { printf "ratio  : %s %s wall %.2f, cpu %.2f, peak RSS %.2f\n", m, s, a / b, ca / cb, ra / rb }'
}

echo "threads=$THREADS iters=$ITERS width=$WIDTH ($(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg))"
run_case fwdbwd 64 64 64
run_case fwd 160 192 128
