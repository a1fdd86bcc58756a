#!/usr/bin/env python3
"""PyTorch side of bench/predict_vs_pytorch.sh.

usage:
  predict_vs_pytorch.py weights OUT.safetensors [width]
      Saves the reference U-Net's state_dict (deterministic, name-derived parameters of
      crates/mgsd-nn/fixtures/gen_conv_unet.py) as a weights-only safetensors file, the form a
      PyTorch user hands to `mgsd-train predict`.
  predict_vs_pytorch.py forward CASE_DIR D,H,W OVERLAP TTA [width] [iters]
      Times the reference U-Net's forward passes over exactly the windows `mgsd-train predict`
      runs on that case by default: the non-zero bounding box of the four sequences, padded to
      at least the patch, windows at 0, s, 2s, … and the far border (s = floor(patch·(1−overlap))),
      8 mirrorings each with TTA = 1. Only the network is timed (no loading, normalisation,
      blending or writing). Prints `windows=.. forwards=.. secs=<median of iters> cpu_secs=..`.
"""

import glob
import importlib.util
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location(
    "gen", os.path.join(HERE, "..", "crates", "mgsd-nn", "fixtures", "gen_conv_unet.py"))
gen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen)


def starts(n, p, stride):
    if n <= p:
        return [0]
    v = list(range(0, n - p + 1, stride))
    if v[-1] != n - p:
        v.append(n - p)
    return v


def windows(case_dir, patch, overlap):
    import nibabel as nib

    vols = [np.asanyarray(nib.load(f).dataobj, dtype=np.float32)
            for f in sorted(glob.glob(os.path.join(case_dir, "*.nii*"))) if "seg" not in os.path.basename(f)]
    brain = np.any([v != 0 for v in vols], axis=0)
    idx = np.nonzero(brain)
    box = [int(i.max() - i.min() + 1) for i in idx]
    shape = [max(b, p) for b, p in zip(box, patch)]
    stride = [max(int(p * (1 - overlap)), 1) for p in patch]
    per_axis = [starts(n, p, s) for n, p, s in zip(shape, patch, stride)]
    return shape, [(a, b, c) for a in per_axis[0] for b in per_axis[1] for c in per_axis[2]]


def main():
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    mode = sys.argv[1]
    if mode == "weights":
        width = int(sys.argv[3]) if len(sys.argv) > 3 else 16
        net = gen.UNet3D(c=width)
        gen.load_det(net)
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, sys.argv[2])
        return
    case_dir, patch, overlap, tta = sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5] == "1"
    patch = [int(p) for p in patch.split(",")]
    width = int(sys.argv[6]) if len(sys.argv) > 6 else 16
    iters = int(sys.argv[7]) if len(sys.argv) > 7 else 1
    shape, origins = windows(case_dir, patch, overlap)
    net = gen.UNet3D(c=width).eval()
    gen.load_det(net)
    x = torch.rand(1, 4, *shape)
    flips = [[2 + a for a in range(3) if (m >> a) & 1] for m in range(8)] if tta else [[]]
    times, cpu = [], []
    with torch.no_grad():
        for _ in range(iters):
            t, c = time.perf_counter(), time.process_time()
            for (a, b, cc) in origins:
                w = x[:, :, a:a + patch[0], b:b + patch[1], cc:cc + patch[2]]
                for dims in flips:
                    out = net(torch.flip(w, dims) if dims else w)[0]
                    del out
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    times.sort()
    print(f"windows={len(origins)} forwards={len(origins) * len(flips)} image={'x'.join(map(str, shape))} "
          f"secs={times[len(times) // 2]:.3f} cpu_secs={sorted(cpu)[len(cpu) // 2]:.3f}")


if __name__ == "__main__":
    main()
