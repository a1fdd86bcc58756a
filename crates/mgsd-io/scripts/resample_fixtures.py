#!/usr/bin/env python3
"""Build tests/fixtures/resample/: small NIfTI volumes on assorted grids and what
nibabel.processing.resample_from_to (scipy.ndimage.affine_transform, mode="constant", cval=0)
makes of them on other grids. tests/resample_fixtures.rs resamples the same sources with
mgsd_io::resample and compares.

Run by hand, never in CI (needs numpy, scipy, nibabel; tested with nibabel 5.4.2,
scipy 1.17.1, numpy 2.4.6):

    python3 crates/mgsd-io/scripts/resample_fixtures.py

Every source and target is saved and loaded back before resampling, so that both sides use
the affines as stored (float32 sform), not the float64 ones they were built from.
"""
import json
import os

import numpy as np
import nibabel as nib
from nibabel.processing import resample_from_to

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.normpath(os.path.join(HERE, "..", "tests", "fixtures", "resample"))


def rot(axis, degrees):
    """4x4 rotation about world axis 0/1/2."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    u, v = (axis + 1) % 3, (axis + 2) % 3
    m = np.eye(4)
    m[u, u], m[u, v], m[v, u], m[v, v] = c, -s, s, c
    return m


def diag(zooms, origin):
    m = np.diag(list(zooms) + [1.0])
    m[:3, 3] = origin
    return m


def centre(shape, affine):
    return affine[:3, :3] @ ((np.array(shape) - 1) / 2) + affine[:3, 3]


def isotropic(shape, affine, mm):
    """mgsd_io::Grid::isotropic: same directions, same centre, n' = max(1, round(n s / mm))."""
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    new_shape = tuple(max(1, int(np.floor(n * z / mm + 0.5))) for n, z in zip(shape, zooms))
    out = np.eye(4)
    out[:3, :3] = affine[:3, :3] / zooms * mm
    out[:3, 3] = centre(shape, affine) - out[:3, :3] @ ((np.array(new_shape) - 1) / 2)
    return new_shape, out


def rotated_about_centre(shape, affine, axis, degrees):
    """mgsd_io::Grid::rotated."""
    c = centre(shape, affine)
    r = rot(axis, degrees)
    about = r.copy()
    about[:3, 3] = c - r[:3, :3] @ c
    return about @ affine


def head(shape, rng):
    """A smooth, skull-stripped-looking volume: an ellipsoid of structure, 0 outside."""
    g = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = sum((x / 0.85) ** 2 for x in g)
    inside = r2 < 1.0
    v = 400 + 150 * np.sin(3 * g[0]) * np.cos(2 * g[1]) + 80 * g[2] + rng.normal(0, 10, shape)
    return np.where(inside, v, 0).astype(np.float32)


def save_load(name, data, affine):
    path = os.path.join(OUT, name)
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, path)
    return nib.load(path)


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        if f.endswith(".nii.gz") or f == "expected.json":
            os.remove(os.path.join(OUT, f))
    rng = np.random.default_rng(16)
    cases = []

    def case(name, src_shape, src_aff, dst_shape, dst_aff, order, exact, why, labels=False):
        if labels:
            data = rng.choice(np.array([0, 1, 2, 4], dtype=np.uint8), size=src_shape).astype(np.float32)
        else:
            data = head(src_shape, rng)
        src = save_load(f"{name}_src.nii.gz", data, src_aff)
        dst = save_load(f"{name}_grid.nii.gz", np.zeros(dst_shape, np.float32), dst_aff)
        out = resample_from_to(src, dst, order=order, mode="constant", cval=0.0)
        res = np.asarray(out.dataobj, dtype=np.float32)
        nib.save(nib.Nifti1Image(res, dst.affine), os.path.join(OUT, f"{name}_expected.nii.gz"))
        os.remove(os.path.join(OUT, f"{name}_grid.nii.gz"))
        cases.append({
            "name": name,
            "source": f"{name}_src.nii.gz",
            "expected": f"{name}_expected.nii.gz",
            "interpolation": "nearest" if order == 0 else "linear",
            "exact": exact,
            "why": why,
        })

    # 1. LPS storage (BraTS) onto RAS storage of the same voxels: x and y flipped.
    s = (20, 18, 12)
    lps = np.array([[-1.0, 0, 0, 19], [0, -1, 0, 17], [0, 0, 1, -5], [0, 0, 0, 1]])
    case("flip_lps_to_ras", s, lps, s, diag((1, 1, 1), (0, 0, -5)), 1, True,
         "x and y flipped: exact copy")

    # 2. Axes permuted (x <-> z), y flipped, target cropped by whole voxels, 1.5 mm voxels.
    src = np.array([[1.5, 0, 0, -10], [0, 1.5, 0, 20], [0, 0, 1.5, 3], [0, 0, 0, 1]])
    dst = np.array([[0, 0, 1.5, -7], [0, -1.5, 0, 41], [1.5, 0, 0, 6], [0, 0, 0, 1]])
    case("permute_flip_crop", (16, 20, 14), src, (10, 15, 12), dst, 1, True,
         "x and z swapped, y flipped, 2-voxel crop and pad: exact copy")

    # 3. The predict test's oblique T2: 1 mm grid onto 2 mm voxels turned 20 degrees about z.
    s = (24, 22, 14)
    base = np.array([[-1.0, 0, 0, 30], [0, -1, 0, 21], [0, 0, 1, -4], [0, 0, 0, 1]])
    shape2, iso2 = isotropic(s, base, 2.0)
    case("rotated20_2mm", s, base, shape2, rotated_about_centre(shape2, iso2, 2, 20.0), 1, False,
         "2 mm grid turned 20 degrees about z (trilinear)")

    # 4. ... and the way back: the oblique 2 mm image onto the 1 mm reference grid.
    case("oblique_to_reference", shape2, rotated_about_centre(shape2, iso2, 2, 20.0), s, base, 1,
         False, "oblique 2 mm image brought onto a 1 mm reference grid (what --resample does)")

    # 5. Anisotropic 1 x 1 x 3 mm slices tilted 10 degrees about x, onto 1 mm isotropic voxels.
    s = (18, 16, 6)
    tilt = rot(0, 10.0) @ diag((1, 1, 3), (-9, -8, -7))
    shape_i, iso1 = isotropic(s, tilt, 1.0)
    case("anisotropic_to_isotropic", s, tilt, shape_i, iso1, 1, False,
         "thick tilted slices onto 1 mm voxels of the same directions (what --spacing 1 does)")

    # 6. Labels by nearest neighbour from a 0.8 mm grid onto a 1.3 mm oblique one.
    s = (15, 14, 12)
    fine = rot(1, 7.0) @ diag((0.8, 0.8, 0.8), (2, 3, 4))
    coarse = rot(2, -12.0) @ diag((1.3, 1.3, 1.3), (2.5, 3.0, 4.5))
    case("labels_nearest", s, fine, (9, 9, 8), coarse, 0, False,
         "labels 0/1/2/4 by nearest neighbour (scipy order 0)", labels=True)

    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump({"generator": "scripts/resample_fixtures.py",
                   "nibabel": nib.__version__, "cases": cases}, f, indent=1)
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {len(cases)} cases to {OUT} ({total} bytes)")


if __name__ == "__main__":
    main()
