//! Times loading one BraTS case (four modalities + label, `.nii.gz`) and preprocessing it with
//! both literature protocols; the Rust half of `bench/load_preprocess_vs_nibabel.sh`.
//!
//! ```text
//! cargo run --release -p mgsd-io --example load-preprocess-bench -- CASE_DIR [--repeat N]
//! ```
//!
//! Per repeat: load (parallel decode), ACN (min-max + centre crop 160 × 192 × 128), RFNet
//! (z-score in the brain mask + crop to its bounding box). Prints one `RESULT <step> <median ms> <min ms>`
//! line per step and `PEAK_RSS_MB <mb>` (the process's high-water mark).

use mgsd_io::preprocess::{CaseView, Pipeline, Protocol};
use mgsd_io::{discover_case, ACN_CHANNEL_ORDER};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// `(median, min)` of `v`: the median is the headline; the minimum is the least disturbed
/// run on a shared machine.
fn stats(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0])
}

/// `VmHWM` (peak resident set) of this process in MiB, from `/proc/self/status` (Linux).
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn run(dir: PathBuf, repeat: usize) -> Result<(), String> {
    let files = discover_case(&dir).map_err(|e| e.to_string())?;
    let acn = Pipeline::new(Protocol::Acn, [160, 192, 128]);
    let rfnet = Pipeline::new(Protocol::Rfnet, [128, 128, 128]);
    let (mut load, mut t_acn, mut t_rf, mut total) = (vec![], vec![], vec![], vec![]);
    for r in 0..repeat {
        let t0 = Instant::now();
        let case = files.load().map_err(|e| e.to_string())?;
        let t1 = Instant::now();
        let view = CaseView::from_case(&case, &ACN_CHANNEL_ORDER).map_err(|e| e.to_string())?;
        let a = acn.eval(&view).map_err(|e| e.to_string())?;
        let a_shape = a.image.dims();
        drop(a);
        let t2 = Instant::now();
        let b = rfnet.eval(&view).map_err(|e| e.to_string())?;
        let t3 = Instant::now();
        if r == 0 {
            println!(
                "case {} shape {:?}: ACN sample {:?}, RFNet sample {:?}",
                case.id,
                case.grid().map(|g| g.shape),
                a_shape,
                b.image.dims()
            );
        }
        drop(b);
        load.push((t1 - t0).as_secs_f64() * 1e3);
        t_acn.push((t2 - t1).as_secs_f64() * 1e3);
        t_rf.push((t3 - t2).as_secs_f64() * 1e3);
        total.push((t3 - t0).as_secs_f64() * 1e3);
    }
    for (name, v) in
        [("load", &mut load), ("acn", &mut t_acn), ("rfnet", &mut t_rf), ("total", &mut total)]
    {
        let (med, min) = stats(v);
        println!("RESULT {name} {med:.1} {min:.1}");
    }
    if let Some(mb) = peak_rss_mb() {
        println!("PEAK_RSS_MB {mb:.0}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut dir = None;
    let mut repeat = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--repeat" => match args.next().and_then(|v| v.parse().ok()).filter(|&n: &usize| n > 0)
            {
                Some(n) => repeat = n,
                None => {
                    eprintln!("load-preprocess-bench: --repeat needs a positive whole number");
                    return ExitCode::from(2);
                }
            },
            "-h" | "--help" => {
                println!("usage: load-preprocess-bench CASE_DIR [--repeat N]");
                return ExitCode::SUCCESS;
            }
            _ if dir.is_none() => dir = Some(PathBuf::from(a)),
            other => {
                eprintln!("load-preprocess-bench: unexpected argument '{other}'");
                return ExitCode::from(2);
            }
        }
    }
    let Some(dir) = dir else {
        eprintln!("usage: load-preprocess-bench CASE_DIR [--repeat N]");
        return ExitCode::from(2);
    };
    match run(dir, repeat) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load-preprocess-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
