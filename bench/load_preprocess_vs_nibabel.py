#!/usr/bin/env python3
"""nibabel + numpy half of load_preprocess_vs_nibabel.sh.

Loads one BraTS-2018-layout case folder (<id>_{t1,t1ce,t2,flair,seg}.nii.gz) and preprocesses
it as the Python reference code does:
  * ACN / MGSD: per-volume min-max to [0, 1], centre crop 160 x 192 x 128;
  * RFNet: z-score inside the non-zero brain mask (0 outside), crop to the mask's bounding box.
Prints the same `RESULT <step> <median ms> <min ms>` lines and `PEAK_RSS_MB` as the Rust
example, so the shell script can compare them.

usage: load_preprocess_vs_nibabel.py CASE_DIR [--repeat N]
"""
import argparse
import glob
import os
import resource
import statistics
import time

import nibabel as nib
import numpy as np

ACN_ORDER = ["t1", "t2", "flair", "t1ce"]  # MGSD-SPEC section 1


def load(case_dir):
    case_id = os.path.basename(os.path.normpath(case_dir))
    imgs = [
        nib.load(os.path.join(case_dir, f"{case_id}_{m}.nii.gz")).get_fdata(dtype=np.float32)
        for m in ACN_ORDER
    ]
    seg = np.asarray(nib.load(os.path.join(case_dir, f"{case_id}_seg.nii.gz")).dataobj).astype(np.uint8)
    return np.stack(imgs), seg


def acn(x, seg, patch=(160, 192, 128)):
    mn = x.min(axis=(1, 2, 3), keepdims=True)
    mx = x.max(axis=(1, 2, 3), keepdims=True)
    x = (x - mn) / np.maximum(mx - mn, np.finfo(np.float32).tiny)
    s = [(d - p) // 2 for d, p in zip(x.shape[1:], patch)]
    sl = tuple(slice(a, a + p) for a, p in zip(s, patch))
    return np.ascontiguousarray(x[(slice(None),) + sl]), np.ascontiguousarray(seg[sl])


def rfnet(x, seg):
    mask = (x != 0).any(axis=0)
    out = np.zeros_like(x)
    for c in range(x.shape[0]):
        y = x[c][mask]
        out[c][mask] = (y - y.mean()) / max(y.std(), 1e-8)
    idx = np.nonzero(mask)
    sl = tuple(slice(i.min(), i.max() + 1) for i in idx)
    return np.ascontiguousarray(out[(slice(None),) + sl]), np.ascontiguousarray(seg[sl])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("case_dir")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    if not glob.glob(os.path.join(args.case_dir, "*_t1.nii.gz")):
        raise SystemExit(f"{args.case_dir}: no <id>_t1.nii.gz here")
    times = {"load": [], "acn": [], "rfnet": [], "total": []}
    for r in range(args.repeat):
        t0 = time.perf_counter()
        x, seg = load(args.case_dir)
        t1 = time.perf_counter()
        a, _ = acn(x, seg)
        a_shape = a.shape
        del a
        t2 = time.perf_counter()
        b, _ = rfnet(x, seg)
        t3 = time.perf_counter()
        if r == 0:
            print(f"shape {x.shape}: ACN sample {a_shape}, RFNet sample {b.shape}")
        del b, x, seg
        for k, v in zip(times, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
            times[k].append(v * 1e3)
    for k, v in times.items():
        print(f"RESULT {k} {statistics.median(v):.1f} {min(v):.1f}")
    print(f"PEAK_RSS_MB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


if __name__ == "__main__":
    main()
