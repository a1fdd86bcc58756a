#!/usr/bin/env bash
# Load + preprocess one BraTS-size case (240 x 240 x 155, four modalities + label, .nii.gz):
# mgsd-io (Rust) against nibabel + numpy, side by side, same files, same machine.
#
#   bench/load_preprocess_vs_nibabel.sh [PYTHON] [REPEAT]
#
# PYTHON defaults to $PYTHON, then python3 (needs numpy and
# nibabel). Prints the median time of each step for both, the ratio nibabel / mgsd-io, and
# each process's peak resident memory (decoded data: 4 x 240 x 240 x 155 x 4 B = 143 MB).
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${1:-${PYTHON:-python3}}"
REPEAT="${2:-5}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# BIN may name a folder of prebuilt examples, CASE an existing case folder (e.g. both carried
# to a machine without Rust).
if [ -z "${BIN:-}" ]; then
  cargo build --release -q -p mgsd-io --example make-synthetic --example load-preprocess-bench
  BIN=${CARGO_TARGET_DIR:-target}/release/examples
fi
if [ -z "${CASE:-}" ]; then
  "$BIN/make-synthetic" --out "$WORK/data" --cases 1 --shape 240,240,155 --seed 1 --anatomy atlas --layout brats2018
  CASE="$(find "$WORK/data/HGG" -mindepth 1 -maxdepth 1 -type d | head -n 1)"
fi
ls -l "$CASE"

TIME=()
[ -x /usr/bin/time ] && TIME=(/usr/bin/time -f "whole process: max RSS %M KB, CPU user %U s + sys %S s, wall %e s")

echo "== mgsd-io (Rust, $(nproc) threads available)"
"${TIME[@]}" "$BIN/load-preprocess-bench" "$CASE" --repeat "$REPEAT" 2>&1 | tee "$WORK/rust.txt"
echo "== nibabel $("$PY" -c 'import nibabel; print(nibabel.__version__)') + numpy $("$PY" -c 'import numpy; print(numpy.__version__)')"
"${TIME[@]}" "$PY" bench/load_preprocess_vs_nibabel.py "$CASE" --repeat "$REPEAT" 2>&1 | tee "$WORK/py.txt"

echo "== ms per step: median (min) over $REPEAT repeats; ratio = nibabel+numpy / mgsd-io"
awk '
  FNR == 1 { side++ }
  $1 == "RESULT" { med[side, $2] = $3; low[side, $2] = $4 }
  $1 == "PEAK_RSS_MB" { rss[side] = $2 }
  END {
    printf "%-6s %20s %20s %14s\n", "step", "mgsd-io", "nibabel+numpy", "ratio med (min)";
    n = split("load acn rfnet total", order, " ");
    for (i = 1; i <= n; i++) { s = order[i];
      printf "%-6s %11.1f (%6.1f) %11.1f (%6.1f) %7.2fx (%.2fx)\n", s, med[1, s], low[1, s],
        med[2, s], low[2, s], med[2, s] / med[1, s], low[2, s] / low[1, s] }
    printf "peak RSS MB: mgsd-io %s, nibabel+numpy %s (decoded data 143 MB)\n", rss[1], rss[2]
  }' "$WORK/rust.txt" "$WORK/py.txt"
