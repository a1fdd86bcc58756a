//! Writes a synthetic BraTS-like dataset.
//!
//! ```text
//! cargo run --release -p mgsd-io --example make-synthetic -- --out DIR --cases N \
//!     [--shape 240,240,155] [--seed S] [--anatomy atlas|procedural] \
//!     [--layout brats2018|brats2020|brats2021|brats2023|msd]
//! ```
//!
//! Prints where it wrote. Bad arguments print a message and exit with status 2.

use mgsd_io::synth::{write_dataset_as, Anatomy, SynthConfig};
use mgsd_io::DatasetLayout;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

const USAGE: &str = "usage: make-synthetic --out DIR --cases N [--shape 240,240,155] [--seed S] \
[--anatomy atlas|procedural] [--layout brats2018|brats2020|brats2021|brats2023|msd]";

struct Args {
    out: PathBuf,
    cases: usize,
    shape: [usize; 3],
    seed: u64,
    anatomy: Anatomy,
    layout: DatasetLayout,
}

fn parse_layout(s: &str) -> Result<DatasetLayout, String> {
    match s.to_ascii_lowercase().as_str() {
        "brats2018" | "brats2019" => Ok(DatasetLayout::Brats2018),
        "brats2020" => Ok(DatasetLayout::Brats2020),
        "brats2021" => Ok(DatasetLayout::Brats2021),
        "brats2023" => Ok(DatasetLayout::Brats2023),
        "msd" => Ok(DatasetLayout::Msd),
        other => Err(format!(
            "unknown layout '{other}' (expected brats2018, brats2020, brats2021, brats2023 or msd)"
        )),
    }
}

fn parse_shape(s: &str) -> Result<[usize; 3], String> {
    let parts: Vec<&str> = s.split([',', 'x']).collect();
    let bad = || format!("--shape '{s}': expected three sizes like 240,240,155");
    if parts.len() != 3 {
        return Err(bad());
    }
    let mut shape = [0; 3];
    for (d, p) in shape.iter_mut().zip(parts) {
        *d = p.trim().parse().map_err(|_| bad())?;
    }
    Ok(shape)
}

fn parse(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let (mut out, mut cases) = (None, None);
    let mut args = Args {
        out: PathBuf::new(),
        cases: 0,
        shape: [240, 240, 155],
        seed: 0,
        anatomy: Anatomy::Atlas,
        layout: DatasetLayout::Brats2018,
    };
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (flag.clone(), None),
        };
        let mut value =
            || inline.clone().or_else(|| it.next()).ok_or_else(|| format!("{name} needs a value"));
        match name.as_str() {
            "--out" => out = Some(PathBuf::from(value()?)),
            "--cases" => {
                let v = value()?;
                cases = Some(
                    v.parse::<usize>()
                        .map_err(|_| format!("--cases '{v}': expected a whole number"))?,
                );
            }
            "--shape" => args.shape = parse_shape(&value()?)?,
            "--seed" => {
                let v = value()?;
                args.seed =
                    v.parse().map_err(|_| format!("--seed '{v}': expected a whole number"))?;
            }
            "--anatomy" => args.anatomy = value()?.parse()?,
            "--layout" => args.layout = parse_layout(&value()?)?,
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    args.out = out.ok_or("--out DIR is required")?;
    args.cases = cases.ok_or("--cases N is required")?;
    if args.cases == 0 {
        return Err("--cases must be at least 1".into());
    }
    Ok(Some(args))
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("make-synthetic: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let config =
        SynthConfig { anatomy: args.anatomy.clone(), ..SynthConfig::new(args.seed, args.shape) };
    let start = Instant::now();
    match write_dataset_as(&args.out, args.cases, &config, args.layout) {
        Ok(w) => {
            println!(
                "wrote {} {:?} case(s) of {:?} ({:?} anatomy, seed {}) to {} in {:.1} s",
                w.case_ids.len(),
                args.layout,
                args.shape,
                args.anatomy,
                args.seed,
                w.root.display(),
                start.elapsed().as_secs_f64()
            );
            for id in w.case_ids.iter().take(5) {
                println!("  {id}");
            }
            if w.case_ids.len() > 5 {
                println!("  … and {} more", w.case_ids.len() - 5);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("make-synthetic: {e}");
            ExitCode::FAILURE
        }
    }
}
