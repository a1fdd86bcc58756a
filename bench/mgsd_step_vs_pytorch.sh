#!/usr/bin/env bash
# One full MGSD training step (teacher + two student passes + heads + backward + both optimiser
# steps + EMA update) on the CPU: ours (candle) vs PyTorch, same threads, same sizes, one run.
# Prints both JSON lines and the ratio candle / pytorch (goal ≤ 1.0).
#
#   bench/mgsd_step_vs_pytorch.sh [--width 8] [--patch 64,64,32] [--steps 3] [--warmup 1]
# Environment: THREADS (2), PYTHON (python3 with torch), CARGO_TARGET_DIR (as usual).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${THREADS:-2}"
PYTHON="${PYTHON:-python3}"
# BIN may name a prebuilt binary (e.g. carried to a machine without Rust).
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet -p mgsd-distill --example step-bench
  BIN="${CARGO_TARGET_DIR:-target}/release/examples/step-bench"
fi
ours=$(RAYON_NUM_THREADS="$THREADS" "$BIN" "$@")
theirs=$(OMP_NUM_THREADS="$THREADS" "$PYTHON" bench/mgsd_step_vs_pytorch.py --threads "$THREADS" "$@")
echo "$ours"
echo "$theirs"
"$PYTHON" - "$ours" "$theirs" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"mgsd step, width {a['width']}, patch {a['patch']}: candle {a['median_s']:.3f} s, "
      f"pytorch {b['median_s']:.3f} s, ratio {a['median_s'] / b['median_s']:.2f}")
PY
