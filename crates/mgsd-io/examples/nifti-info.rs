//! `nifti-info`: what a NIfTI file holds, like `nib-ls` / `fslinfo`, read by `mgsd-io`.
//!
//! ```text
//! cargo run -q -p mgsd-io --example nifti-info -- [--json] FILE...
//! ```
//! For each file: version, byte order, datatype, shape, zooms, scaling, qform/sform codes,
//! the affine nibabel would report, and NaN-aware statistics of the scaled voxels (all
//! volumes of a 4-D file together). `--json` prints one JSON object per file and line. A file
//! that cannot be read prints `error: <file>: <what>` on stderr; the others are still shown
//! and the exit status is 1.

use std::path::Path;
use std::process::ExitCode;

use mgsd_io::nifti::{read_channels, read_header, NiftiInfo};
use serde_json::json;

const USAGE: &str = "usage: nifti-info [--json] FILE...";

/// NaN-aware statistics of the scaled voxels of every volume.
struct Stats {
    sum: f64,
    min: f64,
    max: f64,
    nan_count: u64,
}

fn stats(path: &Path) -> mgsd_io::Result<Stats> {
    let mut s = Stats { sum: 0.0, min: f64::INFINITY, max: f64::NEG_INFINITY, nan_count: 0 };
    for v in read_channels(path)? {
        for &x in &v.data {
            if x.is_nan() {
                s.nan_count += 1;
            } else {
                let x = f64::from(x);
                s.sum += x;
                s.min = s.min.min(x);
                s.max = s.max.max(x);
            }
        }
    }
    Ok(s)
}

fn xform_name(code: i32) -> &'static str {
    match code {
        0 => "unknown",
        1 => "scanner",
        2 => "aligned",
        3 => "talairach",
        4 => "mni",
        5 => "template",
        _ => "invalid",
    }
}

fn zooms(h: &NiftiInfo) -> Vec<f64> {
    h.pixdim[1..=h.shape.len()].to_vec()
}

fn print_json(path: &Path, h: &NiftiInfo, s: &Stats) {
    // serde_json writes non-finite numbers (NaN slope, min of an all-NaN image) as null.
    let finite = |x: f64| if x.is_finite() { json!(x) } else { json!(null) };
    let line = json!({
        "path": path.display().to_string(),
        "version": h.version,
        "endianness": h.endianness,
        "shape": h.shape,
        "datatype": h.datatype,
        "zooms": zooms(h),
        "affine": h.affine,
        "qform_code": h.qform_code,
        "sform_code": h.sform_code,
        "scl_slope": finite(h.scl_slope),
        "scl_inter": finite(h.scl_inter),
        "vox_offset": h.vox_offset,
        "extensions": h.extensions,
        "descrip": h.descrip,
        "sum": s.sum,
        "min": finite(s.min),
        "max": finite(s.max),
        "nan_count": s.nan_count,
    });
    println!("{line}");
}

fn print_table(path: &Path, h: &NiftiInfo, s: &Stats) {
    let order = match h.endianness {
        mgsd_io::nifti::Endianness::Little => "little-endian",
        mgsd_io::nifti::Endianness::Big => "big-endian",
    };
    println!("{}", path.display());
    println!(
        "  NIfTI-{} {order}, {}, shape {:?}, zooms {:?}",
        h.version,
        h.datatype,
        h.shape,
        zooms(h)
    );
    println!(
        "  scl_slope {} scl_inter {}, vox_offset {}, {} extension(s)",
        h.scl_slope, h.scl_inter, h.vox_offset, h.extensions
    );
    println!(
        "  qform_code {} ({}), sform_code {} ({}), affine:",
        h.qform_code,
        xform_name(h.qform_code),
        h.sform_code,
        xform_name(h.sform_code)
    );
    for row in &h.affine {
        println!("    [{:>11.5} {:>11.5} {:>11.5} {:>11.5}]", row[0], row[1], row[2], row[3]);
    }
    println!("  min {} max {} sum {} NaN {}", s.min, s.max, s.sum, s.nan_count);
    if !h.descrip.is_empty() {
        println!("  descrip {:?}", h.descrip);
    }
}

fn main() -> ExitCode {
    let mut as_json = false;
    let mut files = Vec::new();
    for arg in std::env::args_os().skip(1) {
        match arg.to_str() {
            Some("--json") => as_json = true,
            Some("-h" | "--help") => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            Some(flag) if flag.starts_with("--") => {
                eprintln!("error: unknown option {flag}\n{USAGE}");
                return ExitCode::from(2);
            }
            _ => files.push(arg),
        }
    }
    if files.is_empty() {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let mut failed = false;
    for file in &files {
        let path = Path::new(file);
        match read_header(path).and_then(|h| Ok((h, stats(path)?))) {
            Ok((h, s)) if as_json => print_json(path, &h, &s),
            Ok((h, s)) => print_table(path, &h, &s),
            Err(e) => {
                failed = true;
                // Our errors already start with the file name; an I/O error does too.
                eprintln!("error: {e}");
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
