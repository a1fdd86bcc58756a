//! The affine, chosen and computed exactly as nibabel does.
//!
//! * [`best_affine`] — nibabel's `get_best_affine`: the sform if `sform_code != 0`, else the
//!   qform if `qform_code != 0`, else the base affine. (nibabel tests `!= 0`, so a negative,
//!   invalid code still selects its transform; we follow nibabel, not the letter of the spec.)
//! * [`qform_affine`] — `get_qform`: quaternion → rotation, times `diag(pixdim[1..4])` with
//!   `pixdim[3]` multiplied by qfac, plus `qoffset`. The quaternion's `a` is recovered as
//!   nibabel's `fillpositive`; where nibabel would raise (`b²+c²+d²` clearly above 1) we do as
//!   `nifti_clib` and normalise `(b, c, d)` with `a = 0`.
//! * [`base_affine`] — `shape_zoom_affine(shape, zooms, x_flip=True)`: the voxel grid centred
//!   on the origin, x flipped: `diag(-zx, zy, zz)` with translation `(n - 1) / 2 · zoom`
//!   (negated for y and z).
//! * [`qform_from_affine`] — `set_qform`: zooms are the column norms, qfac the sign of the
//!   determinant, the rotation the closest orthogonal matrix (polar decomposition; shears are
//!   stripped), the quaternion with `a ≥ 0`. Used by the writer.

use super::header::NiftiInfo;
use crate::volume::Affine;

/// nibabel's `Nifti1Header.quaternion_threshold` (3 × float32 epsilon); NIfTI-2 uses a
/// negative threshold, i.e. `a` is set to 0 only when `b²+c²+d²` is exactly 1.
const QUATERNION_THRESHOLD_V1: f64 = 3.0 * f32::EPSILON as f64;

/// nibabel's `img.affine` for this header (pixdim already fixed as nibabel's `check_fix`).
pub fn best_affine(h: &NiftiInfo) -> Affine {
    if h.sform_code != 0 {
        sform_affine(&h.srow)
    } else if h.qform_code != 0 {
        qform_affine(h.version, h.quatern, h.qoffset, &h.pixdim)
    } else {
        base_affine(&h.shape, &h.pixdim)
    }
}

/// The sform rows completed with `[0, 0, 0, 1]`.
pub fn sform_affine(srow: &[[f64; 4]; 3]) -> Affine {
    [srow[0], srow[1], srow[2], [0.0, 0.0, 0.0, 1.0]]
}

/// The qform affine from quaternion `(b, c, d)`, offsets and `pixdim` (qfac in `pixdim[0]`).
pub fn qform_affine(version: u8, bcd: [f64; 3], offset: [f64; 3], pixdim: &[f64; 8]) -> Affine {
    let [mut b, mut c, mut d] = bcd;
    let n2 = b * b + c * c + d * d;
    let w2 = 1.0 - n2;
    let threshold = if version == 1 { QUATERNION_THRESHOLD_V1 } else { 0.0 };
    let a = if w2.abs() < threshold || w2 == 0.0 {
        0.0
    } else if w2 < 0.0 {
        // nibabel raises here; nifti_clib normalises (b, c, d). We cannot fail on a header
        // nibabel would only refuse lazily, so we take nifti_clib's reading.
        let n = n2.sqrt();
        b /= n;
        c /= n;
        d /= n;
        0.0
    } else {
        w2.sqrt()
    };
    let r = quat_to_mat([a, b, c, d]);
    let qfac = if pixdim[0] < 0.0 { -1.0 } else { 1.0 };
    let vox = [pixdim[1], pixdim[2], pixdim[3] * qfac];
    let mut out = [[0.0; 4]; 4];
    for (row, out_row) in out.iter_mut().take(3).enumerate() {
        for (col, v) in vox.iter().enumerate() {
            out_row[col] = r[row][col] * v;
        }
        out_row[3] = offset[row];
    }
    out[3][3] = 1.0;
    out
}

/// nibabel's `quat2mat` for `(w, x, y, z)`; a (near) zero quaternion gives the identity.
fn quat_to_mat(q: [f64; 4]) -> [[f64; 3]; 3] {
    let [w, x, y, z] = q;
    let nq = w * w + x * x + y * y + z * z;
    if nq < f64::EPSILON {
        return [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    }
    let s = 2.0 / nq;
    let (xs, ys, zs) = (x * s, y * s, z * s);
    let (wx, wy, wz) = (w * xs, w * ys, w * zs);
    let (xx, xy, xz) = (x * xs, x * ys, x * zs);
    let (yy, yz, zz) = (y * ys, y * zs, z * zs);
    [
        [1.0 - (yy + zz), xy - wz, xz + wy],
        [xy + wz, 1.0 - (xx + zz), yz - wx],
        [xz - wy, yz + wx, 1.0 - (xx + yy)],
    ]
}

/// nibabel's base affine: grid centred on the origin, x flipped, from the first three dims
/// (missing ones count as 1) and their zooms.
pub fn base_affine(shape: &[usize], pixdim: &[f64; 8]) -> Affine {
    let mut out = [[0.0; 4]; 4];
    for axis in 0..3 {
        let (n, zoom) = match shape.get(axis) {
            Some(&n) => (n as f64, pixdim[axis + 1]),
            None => (1.0, 1.0),
        };
        let zoom = if axis == 0 { -zoom } else { zoom };
        out[axis][axis] = zoom;
        out[axis][3] = -(n - 1.0) / 2.0 * zoom;
    }
    out[3][3] = 1.0;
    out
}

/// The qform parameters nibabel's `set_qform` stores for `affine`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QformParams {
    /// `quatern_b, quatern_c, quatern_d`.
    pub quatern: [f64; 3],
    /// `qoffset_x, qoffset_y, qoffset_z`.
    pub qoffset: [f64; 3],
    /// `pixdim[0]`: ±1.
    pub qfac: f64,
    /// `pixdim[1..4]`: the column norms of the affine's 3 × 3 part.
    pub zooms: [f64; 3],
}

/// Decomposes `affine` into qform parameters (see the module docs).
pub fn qform_from_affine(affine: &Affine) -> QformParams {
    let mut r = [[0.0; 3]; 3];
    let mut zooms = [0.0; 3];
    for col in 0..3 {
        let norm = (0..3).map(|row| affine[row][col].powi(2)).sum::<f64>().sqrt();
        zooms[col] = norm;
        for (row, r_row) in r.iter_mut().enumerate() {
            // A zero column has no direction: use the axis itself.
            r_row[col] = if norm > 0.0 { affine[row][col] / norm } else { f64::from(row == col) };
        }
    }
    let qfac = if det3(&r) > 0.0 { 1.0 } else { -1.0 };
    if qfac < 0.0 {
        for r_row in &mut r {
            r_row[2] = -r_row[2];
        }
    }
    let q = mat_to_quat(&polar(r));
    QformParams {
        quatern: [q[1], q[2], q[3]],
        qoffset: [affine[0][3], affine[1][3], affine[2][3]],
        qfac,
        zooms,
    }
}

fn det3(m: &[[f64; 3]; 3]) -> f64 {
    m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
}

/// Orthogonal polar factor of `m` (the closest rotation) by Newton's iteration
/// `X ← (X + X⁻ᵀ) / 2`; a singular matrix gives the identity.
fn polar(m: [[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut x = m;
    for _ in 0..100 {
        let det = det3(&x);
        if det.abs() < 1e-12 {
            return [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        }
        // Inverse transpose = cofactor matrix / det.
        let cof = |r: usize, c: usize| {
            let (r1, r2) = ((r + 1) % 3, (r + 2) % 3);
            let (c1, c2) = ((c + 1) % 3, (c + 2) % 3);
            x[r1][c1] * x[r2][c2] - x[r1][c2] * x[r2][c1]
        };
        let mut next = [[0.0; 3]; 3];
        let mut change: f64 = 0.0;
        for r in 0..3 {
            for c in 0..3 {
                next[r][c] = 0.5 * (x[r][c] + cof(r, c) / det);
                change = change.max((next[r][c] - x[r][c]).abs());
            }
        }
        x = next;
        if change < 1e-15 {
            break;
        }
    }
    x
}

/// Unit quaternion `(w, x, y, z)` with `w ≥ 0` of a rotation matrix (Shepperd's method).
fn mat_to_quat(m: &[[f64; 3]; 3]) -> [f64; 4] {
    let trace = m[0][0] + m[1][1] + m[2][2];
    let q = if trace > 0.0 {
        let s = (trace + 1.0).sqrt() * 2.0;
        [0.25 * s, (m[2][1] - m[1][2]) / s, (m[0][2] - m[2][0]) / s, (m[1][0] - m[0][1]) / s]
    } else if m[0][0] > m[1][1] && m[0][0] > m[2][2] {
        let s = (1.0 + m[0][0] - m[1][1] - m[2][2]).sqrt() * 2.0;
        [(m[2][1] - m[1][2]) / s, 0.25 * s, (m[0][1] + m[1][0]) / s, (m[0][2] + m[2][0]) / s]
    } else if m[1][1] > m[2][2] {
        let s = (1.0 + m[1][1] - m[0][0] - m[2][2]).sqrt() * 2.0;
        [(m[0][2] - m[2][0]) / s, (m[0][1] + m[1][0]) / s, 0.25 * s, (m[1][2] + m[2][1]) / s]
    } else {
        let s = (1.0 + m[2][2] - m[0][0] - m[1][1]).sqrt() * 2.0;
        [(m[1][0] - m[0][1]) / s, (m[0][2] + m[2][0]) / s, (m[1][2] + m[2][1]) / s, 0.25 * s]
    };
    if q[0] < 0.0 {
        q.map(|v| -v)
    } else {
        q
    }
}

/// numpy's `allclose(a, b)`: `|a - b| <= 1e-8 + 1e-5 |b|` everywhere.
pub fn allclose(a: &Affine, b: &Affine) -> bool {
    a.iter().flatten().zip(b.iter().flatten()).all(|(x, y)| (x - y).abs() <= 1e-8 + 1e-5 * y.abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &Affine, b: &Affine, tol: f64) -> bool {
        a.iter().flatten().zip(b.iter().flatten()).all(|(x, y)| (x - y).abs() <= tol)
    }

    #[test]
    fn base_affine_matches_nibabel_docstring() {
        // nibabel: hdr.set_data_shape((3, 5, 7)); hdr.set_zooms((3, 2, 1)).
        let mut p = [1.0; 8];
        p[1..4].copy_from_slice(&[3.0, 2.0, 1.0]);
        let a = base_affine(&[3, 5, 7], &p);
        let want = [
            [-3.0, 0.0, 0.0, 3.0],
            [0.0, 2.0, 0.0, -4.0],
            [0.0, 0.0, 1.0, -3.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        assert_eq!(a, want);
    }

    #[test]
    fn qform_round_trips_through_its_parameters() {
        // An oblique, x-flipped affine without shears (nibabel keeps it through set_qform).
        let (ca, sa) = (0.3f64.cos(), 0.3f64.sin());
        let rot = [[ca, -sa, 0.0], [sa, ca, 0.0], [0.0, 0.0, 1.0]];
        let zooms = [1.5, 2.0, 3.0];
        let flip = [-1.0, 1.0, 1.0];
        let mut aff = [[0.0; 4]; 4];
        for r in 0..3 {
            for c in 0..3 {
                aff[r][c] = rot[r][c] * zooms[c] * flip[c];
            }
        }
        aff[0][3] = 10.0;
        aff[1][3] = -20.0;
        aff[2][3] = 5.0;
        aff[3][3] = 1.0;
        let q = qform_from_affine(&aff);
        let mut pixdim = [1.0; 8];
        pixdim[0] = q.qfac;
        pixdim[1..4].copy_from_slice(&q.zooms);
        let back = qform_affine(2, q.quatern, q.qoffset, &pixdim);
        // Near a half-turn `a = sqrt(1 - b² - c² - d²)` loses half the digits (nibabel too).
        assert!(close(&back, &aff, 1e-7), "{back:?} != {aff:?}");
    }

    #[test]
    fn nibabel_new_image_qform_parameters() {
        // nibabel 5.4: Nifti1Image(data, [[-2, .1, 0, 10], [0, 2, 0, -20], [0, 0, 3, 5]]) saves
        // pixdim [-1, 2, 2.0024984, 3], quatern_b 0.012489274, quatern_c 0.999922, quatern_d 0.
        let aff = [
            [-2.0, 0.1, 0.0, 10.0],
            [0.0, 2.0, 0.0, -20.0],
            [0.0, 0.0, 3.0, 5.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let q = qform_from_affine(&aff);
        assert_eq!(q.qfac, -1.0);
        assert!((q.zooms[1] - 2.0024984).abs() < 1e-6);
        assert!((q.quatern[0] - 0.012489274).abs() < 1e-6, "{:?}", q.quatern);
        assert!((q.quatern[1] - 0.999922).abs() < 1e-6, "{:?}", q.quatern);
        assert!(q.quatern[2].abs() < 1e-9);
    }
}
