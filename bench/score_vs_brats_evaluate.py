#!/usr/bin/env python3
"""Python half of score_vs_brats_evaluate.sh.

prepare DATA REF PRED: copies the `*-seg.nii.gz` label maps of a BraTS 2023 layout folder
(make-synthetic --layout brats2023) flat into REF, and writes into PRED a plausible prediction
of each: the reference shifted by one voxel, its enhancing tumour eroded, its oedema dilated,
plus a few false-positive specks (seeded).

diff OURS OFFICIAL: the largest absolute difference per metric family between `mgsd-train
score`'s CSV and `brats-parse-metrics seg`'s, over the WT/TC/ET columns they share.

Uses nibabel, numpy and scipy (all installed with brats-evaluation).
"""
import csv
import glob
import math
import os
import shutil
import sys

import nibabel as nib
import numpy as np
from scipy import ndimage


def prepare(data, ref, pred):
    os.makedirs(ref, exist_ok=True)
    os.makedirs(pred, exist_ok=True)
    rng = np.random.default_rng(1)
    for seg in sorted(glob.glob(os.path.join(data, "*", "*-seg.nii.gz"))):
        name = os.path.basename(seg)
        shutil.copy(seg, os.path.join(ref, name))
        img = nib.load(seg)
        lab = np.asarray(img.dataobj).astype(np.uint8)
        p = np.roll(lab, 1, axis=0)
        et = ndimage.binary_erosion(p == 3)
        p[(p == 3) & ~et] = 1
        grown = ndimage.binary_dilation(p > 0, iterations=2) & (p == 0)
        p[grown & (rng.uniform(size=p.shape) < 0.5)] = 2
        for _ in range(20):
            idx = tuple(int(rng.integers(0, s)) for s in p.shape)
            p[idx] = int(rng.choice([1, 2, 3]))
        out = nib.Nifti1Image(p, img.affine, img.header)
        nib.save(out, os.path.join(pred, name.replace("-seg.nii.gz", ".nii.gz")))


def read(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {r["subject_id"]: r for r in rows}


def num(s):
    return math.nan if s == "" else float(s)


def diff(ours, official):
    a, b = read(ours), read(official)
    worst = {}
    for sid, row in b.items():
        if sid in ("mean", "std", "median"):
            continue
        for key, val in row.items():
            if key == "subject_id" or key not in a[sid]:
                continue
            x, y = num(a[sid][key]), num(val)
            if math.isnan(x) and math.isnan(y) or x == y:
                d = 0.0
            else:
                d = abs(x - y)
            family = key.rsplit("_", 1)[0]
            worst[family] = max(worst.get(family, 0.0), d)
    for k, v in sorted(worst.items()):
        print(f"max |ours - official| {k:28s} {v:.3g}")


if __name__ == "__main__":
    if sys.argv[1] == "prepare":
        prepare(*sys.argv[2:5])
    elif sys.argv[1] == "diff":
        diff(*sys.argv[2:4])
    else:
        sys.exit(__doc__)
