#!/usr/bin/env python3
"""Build tests/fixtures/nibabel/: real NIfTI files from nibabel's own test data, a few small
files written by nibabel for the cases its data lacks, and expected.json with what nibabel
reads from each of them. tests/nibabel_reader.rs compares our reader against it.

Run by hand, never in CI (needs numpy + nibabel; tested with nibabel 5.4.2, numpy 2.4):

    python3 crates/mgsd-io/scripts/nibabel_fixtures.py

With --check-written DIR it instead lets nibabel judge files written by our writer:

    MGSD_NIFTI_OUT=/tmp/ours cargo test -p mgsd-io --test nibabel_roundtrip -- --ignored
    python3 crates/mgsd-io/scripts/nibabel_fixtures.py --check-written /tmp/ours

The test writes volume t of fixture NAME as `t_NAME` (float32); nibabel must read each one and
find the same voxels (per volume t) and the same affine as expected.json says for NAME.
"""
import argparse
import gzip
import hashlib
import json
import os
import shutil
import sys

import numpy as np
import nibabel as nib
from nibabel.nifti1 import data_type_codes

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.normpath(os.path.join(HERE, "..", "tests", "fixtures", "nibabel"))
NIB_DATA = os.path.join(os.path.dirname(nib.__file__), "tests", "data")

# Real files nobody here wrote (nibabel's test data, MIT licence), and why each is here.
REAL = {
    "anatomical.nii": "NIfTI-1 big-endian int16, qform+sform, qfac -1",
    "reoriented_anat_moved.nii": "NIfTI-1 big-endian float32",
    "resampled_anat_moved.nii": "NIfTI-1 big-endian float32 with NaNs",
    "functional.nii": "NIfTI-1 int16 4-D (20 volumes) with real scaling (slope 0.0754, inter 3100.76)",
    "example4d.nii.gz": "NIfTI-1 gzip int16 4-D with 2 header extensions (vox_offset 416)",
    "example_nifti2.nii.gz": "NIfTI-2 gzip int16 4-D",
    "standard.nii.gz": "NIfTI-1 gzip uint8",
}


def raw_header(path):
    """The header as stored (nibabel's image header has scaling moved into the proxy)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        sizeof = int.from_bytes(f.read(4), "little")
        f.seek(0)
        cls = nib.Nifti2Header if sizeof in (540, 0x1C020000) else nib.Nifti1Header
        return cls.from_fileobj(f, check=False)


def write_raw(path, hdr, arr, extra=b""):
    """Header block (written by nibabel), 4 extender bytes, data in Fortran order."""
    hdr.set_data_shape(arr.shape)
    hdr.set_data_dtype(arr.dtype)
    hdr["vox_offset"] = hdr.sizeof_hdr + 4
    blob = hdr.binaryblock + b"\0\0\0\0" + extra + np.asfortranarray(arr).tobytes(order="F")
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(blob)


def generated(rng):
    """Cases nibabel's data lacks; all written through nibabel's header code."""
    aff = np.array([[-1.5, 0.2, 0.0, 30.0], [0.1, 2.0, 0.0, -12.0], [0.0, 0.0, 2.5, 4.0], [0, 0, 0, 1]])
    shape = (6, 5, 4)
    files = {}

    def img_save(name, arr, why, affine=aff, **kw):
        nib.save(nib.Nifti1Image(arr, affine, **kw), os.path.join(OUT, name))
        files[name] = why

    img_save("nib_int8.nii", rng.integers(-128, 128, shape).astype(np.int8), "int8")
    img_save("nib_uint16.nii.gz", rng.integers(0, 65536, shape).astype(np.uint16), "uint16 gzip")
    img_save("nib_uint32.nii", rng.integers(0, 2**32, shape).astype(np.uint32), "uint32")
    img_save("nib_int64.nii", rng.integers(-(2**40), 2**40, shape).astype(np.int64), "int64", dtype=np.int64)
    img_save("nib_uint64.nii", rng.integers(0, 2**50, shape).astype(np.uint64), "uint64", dtype=np.uint64)
    img_save("nib_float64.nii.gz", rng.normal(0, 100, shape), "float64 gzip")
    img_save("nib_4d_singleton.nii.gz", rng.normal(size=shape + (1,)).astype(np.float32),
             "4-D with a trailing singleton: read_volume must accept it")
    img_save("nib_5d_vector.nii.gz", rng.normal(size=(3, 4, 2, 1, 3)).astype(np.float32),
             "5-D (x, y, z, 1, 3): channels along dim 5")

    # Big-endian int32 NIfTI-1 with scaling, hand-set (nibabel's save would rescale).
    h = nib.Nifti1Header(endianness=">")
    h.set_sform(aff, code=1)
    h.set_qform(aff, code=1)
    h["scl_slope"], h["scl_inter"] = 0.25, -7.5
    write_raw(os.path.join(OUT, "nib_int32_be_scaled.nii"), h,
              rng.integers(-10**6, 10**6, shape).astype(">i4"))
    files["nib_int32_be_scaled.nii"] = "big-endian int32, slope 0.25, inter -7.5"

    # Slope 0 / NaN: nibabel applies no scaling at all (the intercept is ignored too).
    for name, slope in (("nib_slope_zero.nii", 0.0), ("nib_slope_nan.nii", np.nan)):
        h = nib.Nifti1Header()
        h.set_sform(aff, code=2)
        h["scl_slope"], h["scl_inter"] = slope, 5.0
        write_raw(os.path.join(OUT, name), h, rng.integers(-500, 500, shape).astype(np.int16))
        files[name] = f"int16, scl_slope {slope}, scl_inter 5: no scaling"

    # qform only (sform_code 0), oblique and x-flipped: the qform path, qfac -1.
    c, s = np.cos(0.4), np.sin(0.4)
    qaff = np.array([[-2 * c, -2.5 * s, 0, 11], [-2 * s, 2.5 * c, 0, -3], [0, 0, 3, 17], [0, 0, 0, 1]])
    h = nib.Nifti1Header()
    h.set_qform(qaff, code=1)
    h.set_sform(None, code=0)
    write_raw(os.path.join(OUT, "nib_qform_only.nii"), h, rng.normal(size=shape).astype(np.float32))
    files["nib_qform_only.nii"] = "qform_code 1, sform_code 0, rotated, qfac -1"

    # No transform at all: the base affine (centred grid, x flipped).
    h = nib.Nifti1Header()
    h.set_qform(None, code=0)
    h.set_sform(None, code=0)
    h.set_data_shape(shape)
    h.set_zooms((1.2, 0.8, 3.0))
    write_raw(os.path.join(OUT, "nib_no_xform.nii"), h, rng.integers(0, 200, shape).astype(np.uint8))
    files["nib_no_xform.nii"] = "qform_code 0, sform_code 0: base affine"

    # NIfTI-2 big-endian float64 with scaling and NaNs, plus an extension before the data.
    h = nib.Nifti2Header(endianness=">")
    h.set_sform(aff, code=4)
    h["scl_slope"], h["scl_inter"] = 2.0, 1.0
    arr = rng.normal(size=shape).astype(">f8")
    arr[1, 2, 3] = np.nan
    arr[0, 0, 0] = np.nan
    ext = nib.nifti1.Nifti1Extension(6, b"mgsd fixture comment, padded to 16 bytes by nibabel")
    exts = nib.nifti1.Nifti1Extensions([ext])
    h.set_data_shape(arr.shape)
    h.set_data_dtype(arr.dtype)
    h["vox_offset"] = h.sizeof_hdr + 4 + exts.get_sizeondisk()
    path = os.path.join(OUT, "nib_nifti2_be_f64_ext.nii")
    with open(path, "wb") as f:
        f.write(h.binaryblock)
        f.write(b"\x01\0\0\0")
        exts.write_to(f, byteswap=True)
        f.write(np.asfortranarray(arr).tobytes(order="F"))
    files["nib_nifti2_be_f64_ext.nii"] = "NIfTI-2 big-endian float64, slope 2 inter 1, NaNs, 1 extension"
    return files


def finite_or_none(x):
    return float(x) if np.isfinite(x) else None


def describe(path, rng):
    img = nib.load(path)
    raw = raw_header(path)
    data = np.asanyarray(img.get_fdata(dtype=np.float64))
    shape = list(img.shape)
    samples = [[0] * len(shape), [d - 1 for d in shape]]
    for _ in range(10):
        samples.append([int(rng.integers(0, d)) for d in shape])
    finite = data[~np.isnan(data)]
    n_ext = len(img.header.extensions) if hasattr(img.header, "extensions") else 0
    return {
        "version": 2 if isinstance(raw, nib.Nifti2Header) else 1,
        "endianness": "big" if raw.endianness == ">" else "little",
        "shape": shape,
        "datatype": data_type_codes.label[int(raw["datatype"])],
        "scl_slope": finite_or_none(raw["scl_slope"]),  # JSON has no NaN: null
        "scl_inter": finite_or_none(raw["scl_inter"]),
        "qform_code": int(raw["qform_code"]),
        "sform_code": int(raw["sform_code"]),
        "vox_offset": int(raw["vox_offset"]),
        "extensions": n_ext,
        "affine": img.affine.tolist(),
        "zooms": [float(z) for z in img.header.get_zooms()[:3]],
        "sum": float(finite.sum(dtype=np.float64)),
        "min": float(finite.min()) if finite.size else None,
        "max": float(finite.max()) if finite.size else None,
        "nan_count": int(np.isnan(data).sum()),
        "samples": [{"index": ix, "value": (None if np.isnan(v) else float(v))}
                    for ix in samples for v in [data[tuple(ix)]]],
    }


def check_written(folder):
    with open(os.path.join(OUT, "expected.json")) as f:
        expected = json.load(f)["files"]
    bad = checked = 0
    for name in sorted(os.listdir(folder)):
        if not name.endswith((".nii", ".nii.gz")):
            continue
        try:
            img = nib.load(os.path.join(folder, name))
            d = img.get_fdata()
            t, _, src = name.partition("_")
            ref = expected.get(src)
            if ref is None:
                print(f"{name}: read by nibabel, shape {img.shape}, {img.get_data_dtype()}, "
                      f"sform {int(img.header['sform_code'])} qform {int(img.header['qform_code'])}")
                continue
            orig = nib.load(os.path.join(OUT, src)).get_fdata()
            orig = orig.reshape(orig.shape[:3] + (-1,), order="F")[..., int(t)]
            assert d.shape == orig.shape, (d.shape, orig.shape)
            assert np.allclose(d, orig, rtol=1e-6, atol=1e-6, equal_nan=True), "voxels differ"
            assert np.allclose(img.affine, ref["affine"], rtol=1e-6, atol=1e-6), "affine differs"
            checked += 1
        except Exception as e:  # noqa: BLE001 - report and go on
            bad += 1
            print(f"error: {name}: {e}", file=sys.stderr)
    print(f"{checked} files match nibabel's reading of their source, {bad} failures")
    sys.exit(1 if bad else 0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check-written", metavar="DIR")
    args = ap.parse_args()
    if args.check_written:
        check_written(args.check_written)
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20240601)
    files = {}
    for name, why in REAL.items():
        shutil.copyfile(os.path.join(NIB_DATA, name), os.path.join(OUT, name))
        files[name] = why + " (nibabel test data)"
    files.update(generated(rng))
    expected = {
        "generator": "scripts/nibabel_fixtures.py",
        "nibabel": nib.__version__,
        "numpy": np.__version__,
        "files": {},
    }
    total = 0
    for name in sorted(files):
        path = os.path.join(OUT, name)
        entry = describe(path, rng)
        entry["why"] = files[name]
        with open(path, "rb") as f:
            entry["sha256"] = hashlib.sha256(f.read()).hexdigest()
        expected["files"][name] = entry
        total += os.path.getsize(path)
    # One line per file keeps the JSON diffable and small.
    files_json = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v, sort_keys=True, allow_nan=False)}"
                            for k, v in expected.pop("files").items())
    head = json.dumps(expected, sort_keys=True)[:-1]
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        f.write(f'{head}, "files": {{\n{files_json}\n}}}}\n')
    print(f"{len(files)} files, {total / 1e6:.2f} MB in {OUT}")
    assert total < 2e6, "fixtures must stay under 2 MB"


if __name__ == "__main__":
    main()
