#!/usr/bin/env bash
# `mgsd-train score` against the official `brats-evaluate` + `brats-parse-metrics seg`
# (BraTS 2023+ lesion-wise metrics, `gli` configuration) on the same BraTS-size cases
# (240 x 240 x 155, 1 mm), side by side on one machine, and how far their numbers differ.
#
#   bench/score_vs_brats_evaluate.sh [PYTHON] [CASES]
#
# PYTHON (default $PYTHON, then python3) must have `pip install brats-evaluation` (AGPL-3.0: it
# is run, never shipped); its brats-evaluate and brats-parse-metrics are taken from the same
# folder. BIN may name a folder holding prebuilt `mgsd-train` and `make-synthetic`.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${1:-${PYTHON:-python3}}"
CASES="${2:-10}"
PYBIN="$(dirname "$(command -v "$PY")")"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

if [ -z "${BIN:-}" ]; then
  cargo build --release -q -p mgsd-train
  cargo build --release -q -p mgsd-io --example make-synthetic
  BIN=${CARGO_TARGET_DIR:-target}/release
  MAKE="$BIN/examples/make-synthetic"
else
  MAKE="$BIN/make-synthetic"
fi
"$MAKE" --out "$WORK/data" --cases "$CASES" --shape 240,240,155 --seed 1 --anatomy atlas --layout brats2023 >/dev/null
"$PY" bench/score_vs_brats_evaluate.py prepare "$WORK/data" "$WORK/ref" "$WORK/pred"

TIME=(/usr/bin/time -f "%e s wall, %U s user + %S s sys, max RSS %M KB")
echo "== mgsd-train score ($(nproc) CPUs)"
"${TIME[@]}" -o "$WORK/ours.time" "$BIN/mgsd-train" --quiet score --pred "$WORK/pred" --truth "$WORK/ref" \
  --out "$WORK/ours.csv" >/dev/null
cat "$WORK/ours.time"
echo "== brats-evaluate + brats-parse-metrics seg (brats-evaluation $("$PY" -c 'import importlib.metadata as m; print(m.version("brats-evaluation"))'))"
"${TIME[@]}" -o "$WORK/official.time" sh -c "'$PYBIN/brats-evaluate' --config gli --ref_path '$WORK/ref' \
  --pred_path '$WORK/pred' --summary_json '$WORK/official.json' >/dev/null 2>&1 && \
  '$PYBIN/brats-parse-metrics' seg --json_path '$WORK/official.json' --output_csv_path '$WORK/official.csv' >/dev/null 2>&1"
cat "$WORK/official.time"
ours=$(cut -d' ' -f1 "$WORK/ours.time")
official=$(cut -d' ' -f1 "$WORK/official.time")
awk -v a="$ours" -v b="$official" -v n="$CASES" \
  'BEGIN { printf "%d cases: mgsd-train score %.1f s, brats-evaluate %.1f s, speed-up %.1fx\n", n, a, b, b / a }'
"$PY" bench/score_vs_brats_evaluate.py diff "$WORK/ours.csv" "$WORK/official.csv"
