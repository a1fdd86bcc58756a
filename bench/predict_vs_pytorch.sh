#!/usr/bin/env bash
# `mgsd-train predict` on one BraTS-size case (240 × 240 × 155, all four sequences, the SRI24
# atlas anatomy) against the PyTorch reference U-Net's forward passes over the same windows,
# c = 16, CPU, in one run; prints the ratios (ours / PyTorch; < 1 means we are faster).
#
# Ours is the whole command, wall clock: process start, loading the checkpoint and the four
# .nii.gz files, normalisation, the brain crop, every window, Gaussian blending, labels,
# un-cropping and writing the label map. PyTorch's is only its network on the same windows
# (`predict_vs_pytorch.py forward`). Both with and without mirror TTA (`--tta`).
#
# usage: bench/predict_vs_pytorch.sh [python-with-torch-nibabel-safetensors]
# env:   THREADS (default 2), PATCH (default 160,192,128, the checkpoint-free default), OVERLAP (0.5)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-${PYTHON:-python3}}
THREADS=${THREADS:-2}
PATCH=${PATCH:-160,192,128}
OVERLAP=${OVERLAP:-0.5}
export THREADS RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS

if [ -z "${BIN:-}" ]; then
  cargo build --release -q -p mgsd-train
  cargo build --release -q -p mgsd-io --example make-synthetic
  BIN=${CARGO_TARGET_DIR:-target}/release/mgsd-train
fi
SYNTH=${SYNTH:-$(dirname "$BIN")/examples/make-synthetic}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

"$SYNTH" --out "$WORK/data" --cases 1 --shape 240,240,155 --anatomy atlas --layout brats2018 >/dev/null
CASE=$(dirname "$(find "$WORK/data" -name '*_flair.nii.gz' | head -n 1)")
rm -f "$CASE"/*_seg.nii.gz
"$PY" bench/predict_vs_pytorch.py weights "$WORK/unet.safetensors" 16

now() { date +%s.%N; }
ours() {
  local t0 t1
  t0=$(now)
  "$BIN" --quiet predict --checkpoint "$WORK/unet.safetensors" --input "$CASE" \
    --output "$WORK/seg.nii.gz" --patch "$PATCH" --overlap "$OVERLAP" "$@" >/dev/null
  t1=$(now)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}

echo "threads=$THREADS patch=$PATCH overlap=$OVERLAP ($(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg), kernels: ${MGSD_CPU_KERNELS:-auto})"
for tta in 0 1; do
  flag=(); [ "$tta" = 1 ] && flag=(--tta)
  theirs=$("$PY" bench/predict_vs_pytorch.py forward "$CASE" "$PATCH" "$OVERLAP" "$tta" 16 1)
  mine=$(ours "${flag[@]}")
  secs=$(echo "$theirs" | sed -n 's/.* secs=\([^ ]*\).*/\1/p')
  echo "pytorch forwards: $theirs"
  echo "mgsd-train predict${flag[*]:+ ${flag[*]}}: secs=$mine (everything included)"
  if [ "$tta" = 0 ]; then
    base=$secs
    awk -v a="$mine" -v b="$secs" 'BEGIN { printf "ratio  : predict / PyTorch forwards %.2f (goal ≤ 1.1)\n", a / b }'
  else
    awk -v a="$mine" -v b="$secs" 'BEGIN { printf "ratio  : predict --tta / PyTorch forwards with the 8 mirrorings %.2f\n", a / b }'
    awk -v a="$mine" -v b="$base" 'BEGIN { printf "ratio  : predict --tta / PyTorch forwards without TTA %.2f (goal ≤ 8.5)\n", a / b }'
  fi
done
