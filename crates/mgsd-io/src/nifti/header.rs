//! [`NiftiInfo`]: a NIfTI-1 or NIfTI-2 header decoded into one version-independent struct.
//!
//! Both versions are parsed here from the raw bytes (the `nifti` crate reads NIfTI-1 only and
//! stores `dim` unsigned, which would turn a negative dimension into a huge one). The version
//! and byte order come from `sizeof_hdr`, read both ways: 348 means NIfTI-1, 540 NIfTI-2.
//! Fields are widened (`f32` → `f64`, `i16` → `i64`) so the rest of the module has one path.
//!
//! Header sanitising follows nibabel's `check_fix` on load: `pixdim[0]` (qfac) other than ±1
//! becomes 1, negative `pixdim[1..4]` become their absolute value, zero ones become 1.

use std::path::Path;

use nifti::NiftiType;
use serde::Serialize;

use super::affine::best_affine;
use super::datatype::{datatype_name, nifti_type};
use crate::error::{Error, Result};
use crate::volume::{Affine, SourceHeader};

/// Size in bytes of a NIfTI-1 header.
pub const NIFTI1_HEADER_SIZE: usize = 348;
/// Size in bytes of a NIfTI-2 header.
pub const NIFTI2_HEADER_SIZE: usize = 540;
/// Largest voxel count we accept (2^31): beyond it the header is taken to be lying.
pub const MAX_VOXELS: u64 = 1 << 31;

/// Byte order of a NIfTI file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Endianness {
    /// Least significant byte first (x86, ARM: nearly every file written today).
    Little,
    /// Most significant byte first (old SPARC/PowerPC files, e.g. nibabel's `anatomical.nii`).
    Big,
}

/// Everything a NIfTI header says, decoded, plus the affine nibabel would report.
///
/// Raw fields are kept as stored (`scl_slope` may be 0 or NaN); the derived ones
/// ([`NiftiInfo::shape`], [`NiftiInfo::affine`], [`NiftiInfo::scaling`]) follow nibabel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NiftiInfo {
    /// 1 or 2.
    pub version: u8,
    /// Byte order of header and data.
    pub endianness: Endianness,
    /// `dim[1..=dim[0]]`, nibabel's `img.shape` (trailing singleton dims included).
    pub shape: Vec<usize>,
    /// Datatype as nibabel names it (`int16`, `float32`, `RGB`, …).
    pub datatype: &'static str,
    /// The raw `datatype` code.
    pub datatype_code: i16,
    /// `bitpix` as stored (not trusted: the datatype decides the element size).
    pub bitpix: i16,
    /// `pixdim[0..8]` after nibabel's fixes (qfac ±1, positive spatial zooms).
    pub pixdim: [f64; 8],
    /// Byte offset of the voxel data in the (decompressed) file.
    pub vox_offset: u64,
    /// `scl_slope` as stored.
    pub scl_slope: f64,
    /// `scl_inter` as stored.
    pub scl_inter: f64,
    /// `cal_min`.
    pub cal_min: f64,
    /// `cal_max`.
    pub cal_max: f64,
    /// `qform_code`.
    pub qform_code: i32,
    /// `sform_code`.
    pub sform_code: i32,
    /// `quatern_b`, `quatern_c`, `quatern_d`.
    pub quatern: [f64; 3],
    /// `qoffset_x`, `qoffset_y`, `qoffset_z`.
    pub qoffset: [f64; 3],
    /// `srow_x`, `srow_y`, `srow_z`.
    pub srow: [[f64; 4]; 3],
    /// `xyzt_units`.
    pub xyzt_units: i32,
    /// `intent_code`.
    pub intent_code: i32,
    /// `intent_name`, without trailing NULs.
    pub intent_name: String,
    /// `descrip`, without trailing NULs.
    pub descrip: String,
    /// `dim_info`.
    pub dim_info: u8,
    /// `slice_code`.
    pub slice_code: i32,
    /// `slice_start`.
    pub slice_start: i64,
    /// `slice_end`.
    pub slice_end: i64,
    /// `slice_duration`.
    pub slice_duration: f64,
    /// Number of header extensions between the header and `vox_offset` (0 when the header
    /// says it has none); filled by the reader, which walks the extension chain.
    pub extensions: usize,
    /// The voxel-to-world matrix exactly as nibabel's `img.affine` (see [`super::affine`]).
    pub affine: Affine,
}

/// Reads fixed-offset fields of a header block in a given byte order.
struct Fields<'a> {
    buf: &'a [u8],
    big: bool,
}

impl Fields<'_> {
    fn bytes<const N: usize>(&self, off: usize) -> [u8; N] {
        let mut b = [0u8; N];
        b.copy_from_slice(&self.buf[off..off + N]);
        if self.big {
            b.reverse();
        }
        b
    }
    fn i16(&self, off: usize) -> i16 {
        i16::from_le_bytes(self.bytes(off))
    }
    fn i32(&self, off: usize) -> i32 {
        i32::from_le_bytes(self.bytes(off))
    }
    fn i64(&self, off: usize) -> i64 {
        i64::from_le_bytes(self.bytes(off))
    }
    fn f32(&self, off: usize) -> f64 {
        f64::from(f32::from_le_bytes(self.bytes(off)))
    }
    fn f64(&self, off: usize) -> f64 {
        f64::from_le_bytes(self.bytes(off))
    }
    fn text(&self, off: usize, len: usize) -> String {
        let raw = &self.buf[off..off + len];
        let end = raw.iter().position(|&b| b == 0).unwrap_or(len);
        String::from_utf8_lossy(&raw[..end]).into_owned()
    }
}

/// Version and byte order from the first four bytes (`sizeof_hdr`), or `None` if they are
/// neither 348 nor 540 in either byte order.
pub fn sniff_version(first4: [u8; 4]) -> Option<(u8, Endianness)> {
    match (i32::from_le_bytes(first4), i32::from_be_bytes(first4)) {
        (348, _) => Some((1, Endianness::Little)),
        (540, _) => Some((2, Endianness::Little)),
        (_, 348) => Some((1, Endianness::Big)),
        (_, 540) => Some((2, Endianness::Big)),
        _ => None,
    }
}

/// Parses a header block (348 bytes for NIfTI-1, 540 for NIfTI-2; longer input is fine).
///
/// # Errors
/// Wrong size or magic, a `.hdr/.img` pair magic (unsupported), `dim[0]` outside 1..=7, a
/// dimension below 1, more than 2^31 voxels, an unknown datatype code, or a `vox_offset`
/// inside the header. Every message names `path`.
pub fn parse_header(buf: &[u8], path: &Path) -> Result<NiftiInfo> {
    let err = |msg: String| Error::nifti(path, msg);
    let first4: [u8; 4] = match buf.get(..4).and_then(|b| b.try_into().ok()) {
        Some(b) => b,
        None => {
            return Err(err(format!("file too short for a NIfTI header ({} bytes)", buf.len())))
        }
    };
    let (version, endianness) = sniff_version(first4).ok_or_else(|| {
        err(format!(
            "not a NIfTI file: sizeof_hdr is {} (expected 348 for NIfTI-1 or 540 for NIfTI-2)",
            i32::from_le_bytes(first4)
        ))
    })?;
    let size = if version == 1 { NIFTI1_HEADER_SIZE } else { NIFTI2_HEADER_SIZE };
    if buf.len() < size {
        return Err(err(format!(
            "truncated NIfTI-{version} header: {} of {size} bytes",
            buf.len()
        )));
    }
    let f = Fields { buf, big: endianness == Endianness::Big };
    let (mut info, magic, dim) = if version == 1 { parse_v1(&f) } else { parse_v2(&f) };
    check_magic(version, &magic).map_err(err)?;
    info.shape = checked_shape(&dim).map_err(err)?;
    if nifti_type(info.datatype_code).is_none() {
        return Err(err(format!("unknown datatype code {}", info.datatype_code)));
    }
    info.datatype = datatype_name(info.datatype_code);
    if info.vox_offset < size as u64 {
        return Err(err(format!(
            "vox_offset {} lies inside the {size}-byte header",
            info.vox_offset
        )));
    }
    fix_pixdim(&mut info.pixdim);
    info.affine = best_affine(&info);
    Ok(info)
}

/// A header of `version` with every field zeroed / empty (pixdim 1, identity affine), the
/// starting point of the parsers and of the writer.
pub(crate) fn empty_info(version: u8, endianness: Endianness) -> NiftiInfo {
    NiftiInfo {
        version,
        endianness,
        shape: Vec::new(),
        datatype: "",
        datatype_code: 0,
        bitpix: 0,
        pixdim: [1.0; 8],
        vox_offset: 0,
        scl_slope: 0.0,
        scl_inter: 0.0,
        cal_min: 0.0,
        cal_max: 0.0,
        qform_code: 0,
        sform_code: 0,
        quatern: [0.0; 3],
        qoffset: [0.0; 3],
        srow: [[0.0; 4]; 3],
        xyzt_units: 0,
        intent_code: 0,
        intent_name: String::new(),
        descrip: String::new(),
        dim_info: 0,
        slice_code: 0,
        slice_start: 0,
        slice_end: 0,
        slice_duration: 0.0,
        extensions: 0,
        affine: crate::volume::IDENTITY_AFFINE,
    }
}

/// NIfTI-1 field offsets (nifti1.h).
fn parse_v1(f: &Fields<'_>) -> (NiftiInfo, Vec<u8>, [i64; 8]) {
    let endianness = if f.big { Endianness::Big } else { Endianness::Little };
    let mut h = empty_info(1, endianness);
    let dim: [i64; 8] = std::array::from_fn(|i| i64::from(f.i16(40 + 2 * i)));
    h.dim_info = f.buf[39];
    h.intent_code = i32::from(f.i16(68));
    h.datatype_code = f.i16(70);
    h.bitpix = f.i16(72);
    h.slice_start = i64::from(f.i16(74));
    h.pixdim = std::array::from_fn(|i| f.f32(76 + 4 * i));
    let vox = f.f32(108);
    // nibabel: int(vox_offset); a NaN or negative offset is caught by the size check.
    h.vox_offset = if vox.is_finite() && vox >= 0.0 { vox as u64 } else { 0 };
    h.scl_slope = f.f32(112);
    h.scl_inter = f.f32(116);
    h.slice_end = i64::from(f.i16(120));
    h.slice_code = i32::from(f.buf[122]);
    h.xyzt_units = i32::from(f.buf[123]);
    h.cal_max = f.f32(124);
    h.cal_min = f.f32(128);
    h.slice_duration = f.f32(132);
    h.descrip = f.text(148, 80);
    h.qform_code = i32::from(f.i16(252));
    h.sform_code = i32::from(f.i16(254));
    h.quatern = std::array::from_fn(|i| f.f32(256 + 4 * i));
    h.qoffset = std::array::from_fn(|i| f.f32(268 + 4 * i));
    h.srow = std::array::from_fn(|r| std::array::from_fn(|c| f.f32(280 + 16 * r + 4 * c)));
    h.intent_name = f.text(328, 16);
    (h, f.buf[344..348].to_vec(), dim)
}

/// NIfTI-2 field offsets (nifti2.h).
fn parse_v2(f: &Fields<'_>) -> (NiftiInfo, Vec<u8>, [i64; 8]) {
    let endianness = if f.big { Endianness::Big } else { Endianness::Little };
    let mut h = empty_info(2, endianness);
    h.datatype_code = f.i16(12);
    h.bitpix = f.i16(14);
    let dim: [i64; 8] = std::array::from_fn(|i| f.i64(16 + 8 * i));
    h.pixdim = std::array::from_fn(|i| f.f64(104 + 8 * i));
    h.vox_offset = u64::try_from(f.i64(168)).unwrap_or(0);
    h.scl_slope = f.f64(176);
    h.scl_inter = f.f64(184);
    h.cal_max = f.f64(192);
    h.cal_min = f.f64(200);
    h.slice_duration = f.f64(208);
    h.slice_start = f.i64(224);
    h.slice_end = f.i64(232);
    h.descrip = f.text(240, 80);
    h.qform_code = f.i32(344);
    h.sform_code = f.i32(348);
    h.quatern = std::array::from_fn(|i| f.f64(352 + 8 * i));
    h.qoffset = std::array::from_fn(|i| f.f64(376 + 8 * i));
    h.srow = std::array::from_fn(|r| std::array::from_fn(|c| f.f64(400 + 32 * r + 8 * c)));
    h.slice_code = f.i32(496);
    h.xyzt_units = f.i32(500);
    h.intent_code = f.i32(504);
    h.intent_name = f.text(508, 16);
    h.dim_info = f.buf[524];
    (h, f.buf[4..12].to_vec(), dim)
}

fn check_magic(version: u8, magic: &[u8]) -> std::result::Result<(), String> {
    let shown = String::from_utf8_lossy(&magic[..3]).into_owned();
    match (version, &magic[..4]) {
        (1, b"n+1\0") | (2, b"n+2\0") => Ok(()),
        (1, b"ni1\0") | (2, b"ni2\0") => Err(format!(
            "magic {shown:?} marks a .hdr/.img pair, which is not supported: convert it to .nii"
        )),
        _ => Err(format!(
            "wrong magic {:?} for a NIfTI-{version} header (expected \"n+{version}\")",
            String::from_utf8_lossy(&magic[..4]).trim_end_matches('\0')
        )),
    }
}

/// `dim[1..=dim[0]]` as sizes, rejecting zero, negative and absurd dimensions before anything
/// is allocated.
fn checked_shape(dim: &[i64; 8]) -> std::result::Result<Vec<usize>, String> {
    let nd = dim[0];
    if !(1..=7).contains(&nd) {
        return Err(format!("dim[0] is {nd}: the number of dimensions must be 1 to 7"));
    }
    let mut total: u64 = 1;
    let mut shape = Vec::with_capacity(nd as usize);
    for (i, &d) in dim.iter().enumerate().skip(1).take(nd as usize) {
        if d < 1 {
            return Err(format!("dim[{i}] is {d}: every dimension must be at least 1"));
        }
        total = total.saturating_mul(d as u64);
        if total > MAX_VOXELS {
            return Err(format!(
                "dimensions {:?} give more than 2^31 voxels: header is corrupt or absurd",
                &dim[1..=nd as usize]
            ));
        }
        shape.push(d as usize);
    }
    Ok(shape)
}

/// nibabel's `_chk_qfac` and `_chk_pixdims` fixes.
fn fix_pixdim(p: &mut [f64; 8]) {
    if p[0] != 1.0 && p[0] != -1.0 {
        p[0] = 1.0;
    }
    for z in &mut p[1..4] {
        if *z == 0.0 {
            *z = 1.0;
        } else if *z < 0.0 {
            *z = -*z;
        }
    }
}

impl NiftiInfo {
    /// The header's `nifti` crate datatype, if the code is known.
    pub fn nifti_type(&self) -> Option<NiftiType> {
        nifti_type(self.datatype_code)
    }

    /// Slope and intercept to apply to the stored values, exactly as nibabel's
    /// `get_slope_inter`: a zero or non-finite slope means no scaling at all (the intercept is
    /// then ignored, whatever it is); `None` is returned for "no scaling" and for the identity.
    ///
    /// # Errors
    /// A valid slope with a non-finite intercept (nibabel raises `HeaderDataError` too).
    pub fn scaling(&self, path: &Path) -> Result<Option<(f64, f64)>> {
        let (slope, inter) = (self.scl_slope, self.scl_inter);
        if slope == 0.0 || !slope.is_finite() {
            return Ok(None);
        }
        if !inter.is_finite() {
            return Err(Error::nifti(
                path,
                format!("valid scl_slope {slope} but invalid scl_inter {inter}"),
            ));
        }
        Ok(if slope == 1.0 && inter == 0.0 { None } else { Some((slope, inter)) })
    }

    /// Number of voxels (product of `shape`; at most 2^31).
    pub fn voxel_count(&self) -> usize {
        self.shape.iter().product()
    }

    /// The header fields a writer needs to put a result back in this file's space.
    pub fn source_header(&self) -> SourceHeader {
        SourceHeader {
            version: self.version,
            pixdim: self.pixdim,
            xyzt_units: self.xyzt_units,
            qform_code: self.qform_code,
            sform_code: self.sform_code,
            quatern: self.quatern,
            qoffset: self.qoffset,
            srow: self.srow,
            descrip: self.descrip.clone(),
            intent_code: self.intent_code,
            intent_name: self.intent_name.clone(),
            slice_info: (
                self.slice_code,
                self.slice_start,
                self.slice_end,
                self.slice_duration,
                self.dim_info,
            ),
        }
    }
}
