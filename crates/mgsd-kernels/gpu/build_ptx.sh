#!/usr/bin/env bash
# Rebuilds gpu/ptx/attention.ptx with the flags build.rs uses (the PTX the crate embeds), for
# check_attention.py on a GPU machine without Rust. Use an nvcc no newer than the GPU
# machine's driver: its PTX ISA version must be one the driver knows (README: Building).
#   NVCC=/path/to/nvcc CUDA_COMPUTE_CAP=90 gpu/build_ptx.sh
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-nvcc}
CAP=${CUDA_COMPUTE_CAP:-90}
mkdir -p gpu/ptx
"$NVCC" -ptx "-arch=sm_${CAP}" -O3 -std=c++17 -o gpu/ptx/attention.ptx src/kernels/attention.cu
# The same source as a cubin, to read registers, shared memory and spills (not embedded).
"$NVCC" -cubin "-arch=sm_${CAP}" -O3 -std=c++17 -Xptxas -v -o /dev/null src/kernels/attention.cu 2>&1 \
  | grep -E 'entry|registers|spill' || true
"$NVCC" --version | tail -1
grep -m2 -E '^\.(version|target)' gpu/ptx/attention.ptx
