#!/usr/bin/env bash
# Runs the CUDA checks and benchmarks of a `cargo xtask gpu-bundle` on a GPU machine that has
# no Rust, from the repository root (the benchmarks' PyTorch twins live in bench/):
#
#   target-cuda/gpu-bundle/run.sh [OUT_DIR]        # default OUT_DIR: $OUT, else ./gpu-out
#
# 1. the GPU-vs-CPU parity tests of mgsd-nn (cuDNN Conv3d, composed layers, fused attention,
#    a whole UNet3D forward and backward), and the golden MGSD objective test (every loss term
#    and gradient against float64 PyTorch) on the GPU and the CPU;
# 2. one MGSD training step, ours against PyTorch eager on the same GPU, with peak memory
#    (nvidia-smi's reading for both, PyTorch's allocator peaks too); sizes from STEP_ARGS;
#    ours once more with `--recompute-norm false` (the GroupNorm outputs kept, not rebuilt);
#    then bf16 mixed precision: ours with `--precision bf16` against PyTorch under bf16
#    autocast, default layout and channels_last_3d; then both sides with cuDNN's benchmark
#    mode (algorithms measured, not picked by heuristics), f32 and bf16;
#    (unless SKIP_STEP=1);
# 3. the demo workflow of mgsd-train on the GPU (unless SKIP_DEMO=1; DEMO_TIMEOUT, 120 s);
# 3b. data parallelism (unless SKIP_NCCL=1): `launch -- check-ranks --device cuda` (rendezvous
#    and one NCCL all-reduce), then a short training run three times -- plain twice (is the
#    GPU run itself deterministic?) and as world size 1 through NCCL -- compared bit for bit
#    (every loss term of every step, every tensor of last.safetensors);
# 4. with ATTENTION=1, the attention kernels' own check against PyTorch
#    (crates/mgsd-kernels/gpu/check_attention.py, about 30 s).
# Environment: PYTHON (python3 with torch and NVIDIA's wheels), STEP_ARGS.
# To compare two builds in one GPU call, pack the second with `cargo xtask gpu-bundle --out
# target-cuda/gpu-bundle-b`, carry both folders and run both scripts (SKIP_DEMO=1).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-${OUT:-gpu-out}}"
mkdir -p "$out"
PY="${PYTHON:-python3}"
STEP_ARGS="${STEP_ARGS:---width 16 --patch 160,192,128 --warmup 1 --steps 3}"
tmp="$(mktemp -d)"
"$PY" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
  "$here/bin.tar.xz" "$tmp" || exit 1
bin="$tmp/bin"

# The CUDA libraries of the Python environment's NVIDIA wheels (PyTorch ships them).
libs=$("$PY" - <<'EOF'
import os
import nvidia
want = ("libcublas", "libcudnn.so", "libcurand", "libnvrtc", "libcudart", "libnccl.so")
dirs = {d for r in nvidia.__path__ for d, _, fs in os.walk(r) if any(f.startswith(want) for f in fs)}
print(":".join(sorted(dirs)))
EOF
)
export LD_LIBRARY_PATH="$libs:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if ldd "$bin/step-bench" | grep "not found"; then
  echo "missing CUDA libraries (LD_LIBRARY_PATH=$LD_LIBRARY_PATH)"
  exit 1
fi
status=0

echo "== parity tests"
"$bin/cuda_parity" --test-threads 1 2>&1 | tee "$out/parity.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

echo "== the MGSD objective against float64 PyTorch, on the GPU and on the CPU"
MGSD_DISTILL_FIXTURES="$PWD/crates/mgsd-distill/fixtures" "$bin/golden_mgsd" --test-threads 1 \
  --nocapture 2>&1 | tail -80 | tee "$out/golden.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

# Peak of nvidia-smi's memory.used while a command runs, in MiB, appended to its JSON line.
with_peak() {
  local log
  log="$(mktemp)"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 >"$log" &
  local smi=$!
  local line
  line="$("$@")"
  local rc=$?
  kill "$smi" 2>/dev/null
  wait "$smi" 2>/dev/null
  local peak
  peak="$(sort -n "$log" | tail -1)"
  echo "${line%\}}, \"smi_peak_mib\": ${peak:-0}}"
  return $rc
}

if [ "${SKIP_STEP:-0}" != 1 ]; then
  echo "== MGSD training step, $STEP_ARGS"
  : >"$out/step.jsonl"
  # One measured run of a step benchmark; its JSON line (with the memory peak) goes to step.jsonl.
  step() {
    local line
    line="$(with_peak "$@")" || { status=1; echo "FAILED: $*"; }
    [ -n "$line" ] && echo "$line" | tee -a "$out/step.jsonl"
  }
  # shellcheck disable=SC2086
  {
    step "$bin/step-bench" --device cuda $STEP_ARGS
    step "$PY" bench/mgsd_step_vs_pytorch.py --device cuda $STEP_ARGS
    # The same step keeping the GroupNorm outputs (no recompute): the memory/time trade.
    step "$bin/step-bench" --device cuda $STEP_ARGS --recompute-norm false
    # bf16 mixed precision, ours and PyTorch's autocast in both layouts.
    step "$bin/step-bench" --device cuda $STEP_ARGS --precision bf16
    step "$PY" bench/mgsd_step_vs_pytorch.py --device cuda $STEP_ARGS --amp bf16
    step "$PY" bench/mgsd_step_vs_pytorch.py --device cuda $STEP_ARGS --amp bf16 --channels-last
    # cuDNN's benchmark mode on both sides (nnU-Net's setting).
    step "$bin/step-bench" --device cuda $STEP_ARGS --cudnn-benchmark true
    step "$PY" bench/mgsd_step_vs_pytorch.py --device cuda $STEP_ARGS --cudnn-benchmark
    step "$bin/step-bench" --device cuda $STEP_ARGS --cudnn-benchmark true --precision bf16
    step "$PY" bench/mgsd_step_vs_pytorch.py --device cuda $STEP_ARGS --cudnn-benchmark --amp bf16
  }
  "$PY" - "$out/step.jsonl" <<'EOF' || status=1
import json, sys
rows = []
for line in open(sys.argv[1]):
    try:
        rows.append(json.loads(line))
    except ValueError:
        pass
def torch_row(amp, bench, channels_last=False):
    return next((r for r in rows if r["impl"] == "pytorch" and r.get("amp", "off") == amp
                 and r.get("channels_last", False) == channels_last
                 and r.get("cudnn_benchmark", False) == bench), None)
for x in rows:
    if x["impl"] != "candle":
        continue
    bf16 = x.get("precision", "f32") != "f32"
    bench = x.get("cudnn_benchmark", False)
    amp = "bf16" if bf16 else "off"
    for b in filter(None, (torch_row(amp, bench), bf16 and torch_row(amp, bench, True))):
        print(f"MGSD step on CUDA, width {x['width']}, patch {x['patch']}: candle precision "
              f"{x.get('precision', 'f32')}, recompute_norm {x['recompute_norm']}, cudnn benchmark "
              f"{bench}: {x['median_s']:.3f} s "
              f"vs pytorch amp {b.get('amp', 'off')}{', channels_last' if b.get('channels_last') else ''} "
              f"{b['median_s']:.3f} s, ratio {x['median_s'] / b['median_s']:.2f}; peak memory "
              f"(nvidia-smi) {x['smi_peak_mib']} vs {b['smi_peak_mib']} MiB, "
              f"ratio {x['smi_peak_mib'] / max(b['smi_peak_mib'], 1):.2f}")
EOF
fi

if [ "${SKIP_DEMO:-0}" != 1 ]; then
  echo "== mgsd-train demo on CUDA"
  timeout "${DEMO_TIMEOUT:-120}" "$bin/mgsd-train" --device cuda --quiet --run-dir "$tmp/demo" 2>&1 | tail -40 | tee "$out/demo.log"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  cp "$tmp"/demo/*.md "$out/" 2>/dev/null
fi
if [ "${SKIP_NCCL:-0}" != 1 ]; then
  echo "== data parallelism: NCCL rendezvous and all-reduce, world size 1 against the plain run"
  MGSD_RENDEZVOUS_TIMEOUT=60 timeout 120 "$bin/mgsd-train" launch --nproc-per-node 1 \
    --master-port 29531 -- check-ranks --device cuda 2>&1 | tail -5 | tee "$out/nccl-check.log"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  # A short training run; $1 names it, the rest are environment assignments for it.
  nccl_run() {
    local name="$1"
    shift
    sed "s|@DIR@|$tmp/$name|" >"$tmp/$name.toml" <<'TOML'
[data.synthetic]
train_cases = 8
val_cases = 2
test_cases = 1
shape = [48, 48, 48]
seed = 2024
[protocol]
patch = [32, 32, 32]
[model]
channels = 8
dropout = 0.2
[train]
epochs = 2
steps_per_epoch = 6
lr = 2e-3
val_every = 1
[run]
dir = "@DIR@"
device = "cuda"
checksum_every = 1
TOML
    env "$@" timeout 300 "$bin/mgsd-train" --quiet train --config "$tmp/$name.toml" \
      >"$out/nccl-$name.log" 2>&1 || { status=1; echo "FAILED: training $name"; tail -20 "$out/nccl-$name.log"; }
  }
  nccl_run plain-a
  nccl_run plain-b
  nccl_run nccl-w1 RANK=0 LOCAL_RANK=0 WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=29532
  "$PY" - "$tmp" <<'EOF' | tee "$out/nccl-compare.log"
import json, struct, sys
root = sys.argv[1]
def tensors(run):
    raw = open(f"{root}/{run}/last.safetensors", "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    return {k: raw[8 + n + v["data_offsets"][0]: 8 + n + v["data_offsets"][1]]
            for k, v in header.items() if k != "__metadata__"}
def losses(run):
    rows = [l.rstrip("\n").split(",") for l in open(f"{root}/{run}/metrics.csv")]
    return [r[1:2] + r[5:13] for r in rows if r[0] == "train"]
def compare(a, b):
    ta, tb = tensors(a), tensors(b)
    differing = sum(ta[k] != tb.get(k) for k in ta) + len(tb.keys() - ta.keys())
    return differing == 0 and losses(a) == losses(b), differing, len(losses(a))
det, nd, steps = compare("plain-a", "plain-b")
ok, n, _ = compare("plain-a", "nccl-w1")
print(f"plain vs plain: {'identical' if det else f'{nd} tensors differ'} ({steps} steps)")
print(f"NCCL world size 1 vs plain: {'identical' if ok else f'{n} tensors differ'}")
if det and not ok:
    print("FAILED: the NCCL path changes a deterministic run")
    sys.exit(1)
if not det:
    print("the plain GPU run is not deterministic here, so bit-equality cannot be required")
EOF
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if [ "${ATTENTION:-0}" = 1 ]; then
  echo "== attention kernels vs PyTorch"
  "$PY" crates/mgsd-kernels/gpu/check_attention.py --ptx crates/mgsd-kernels/gpu/ptx/ \
    --out "$out" 2>&1 | tail -60 || status=1
fi
exit $status
