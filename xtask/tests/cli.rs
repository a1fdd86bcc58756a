//! The `xtask` binary: exit codes and messages for the commands' main paths and bad input.

mod common;

use common::*;
use mgsd_io::DatasetLayout;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn xtask(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn a_brats_year_without_from_explains_registration() {
    let work = tempfile::tempdir().unwrap();
    for (year, place) in [
        ("2018", "ipp.cbica.upenn.edu"),
        ("2020", "ipp.cbica.upenn.edu"),
        ("2021", "synapse.org"),
        ("2023", "synapse.org"),
    ] {
        let out = xtask(&["fetch-brats", "--year", year, "--dest", "data"], work.path());
        let all = text(&out);
        assert!(!out.status.success(), "{all}");
        assert!(all.contains(place) && all.contains("--from"), "{all}");
        assert!(!all.contains("panicked"), "{all}");
    }
    assert!(!work.path().join("data").exists());
}

#[test]
fn fetch_then_splits_from_the_command_line() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    write_cases(&src, DatasetLayout::Brats2020, 5);
    let zip = work.path().join("brats2020.zip");
    fs::write(&zip, zip_dir(&src, "MICCAI_BraTS2020_TrainingData")).unwrap();

    let out = xtask(
        &["fetch-brats", "--from", "brats2020.zip", "--year", "2020", "--dest", "data", "--quiet"],
        work.path(),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("installed and verified"),
        "{}",
        text(&out)
    );
    let out = xtask(
        &["fetch-brats", "--from", "brats2020.zip", "--dest", "data", "--quiet"],
        work.path(),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("up to date"), "{}", text(&out));

    let manifest = "data/brats2020/manifest.json";
    let out = xtask(
        &[
            "splits",
            "--manifest",
            manifest,
            "--out",
            "data/splits/a.json",
            "--k",
            "2",
            "--seed",
            "3",
        ],
        work.path(),
    );
    assert!(out.status.success(), "{}", text(&out));
    let first = fs::read_to_string(work.path().join("data/splits/a.json")).unwrap();
    assert!(first.contains("\"kfold\""), "{first}");

    // Written once: a second run refuses; with --force it writes the same bytes.
    let out = xtask(
        &[
            "splits",
            "--manifest",
            manifest,
            "--out",
            "data/splits/a.json",
            "--k",
            "2",
            "--seed",
            "3",
        ],
        work.path(),
    );
    assert!(!out.status.success() && text(&out).contains("--force"), "{}", text(&out));
    let out = xtask(
        &[
            "splits",
            "--manifest",
            manifest,
            "--out",
            "data/splits/a.json",
            "--k",
            "2",
            "--seed",
            "3",
            "--force",
        ],
        work.path(),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(fs::read_to_string(work.path().join("data/splits/a.json")).unwrap(), first);

    // The RFNet 2020 list names 369 cases; this dataset has 5 of them.
    let out = xtask(
        &[
            "splits",
            "--manifest",
            manifest,
            "--out",
            "data/splits/b.json",
            "--list",
            "brats2020-rfnet",
        ],
        work.path(),
    );
    let all = text(&out);
    assert!(
        !out.status.success()
            && all.contains("not in the manifest")
            && all.contains("--allow-missing"),
        "{all}"
    );
    assert!(!work.path().join("data/splits/b.json").exists());
    let out = xtask(
        &[
            "splits",
            "--manifest",
            manifest,
            "--out",
            "data/splits/b.json",
            "--list",
            "brats2020-rfnet",
            "--allow-missing",
        ],
        work.path(),
    );
    assert!(out.status.success(), "{}", text(&out));
    let json = fs::read_to_string(work.path().join("data/splits/b.json")).unwrap();
    assert!(json.contains("RFNet") && json.contains("BraTS20_Training_"), "{json}");
}

#[test]
fn bad_arguments_fail_cleanly() {
    let work = tempfile::tempdir().unwrap();
    for args in [
        vec!["fetch-brats", "--from", "missing.tar", "--dest", "data"],
        vec!["fetch-brats", "--year", "2022"],
        vec!["splits", "--manifest", "missing.json", "--out", "x.json"],
        vec!["splits", "--manifest", "missing.json", "--out", "x.json", "--list", "nope"],
    ] {
        let out = xtask(&args, work.path());
        let all = text(&out);
        assert!(!out.status.success(), "{args:?}: {all}");
        assert!(!all.contains("panicked"), "{args:?}: {all}");
    }
    fs::write(work.path().join("bad.json"), "{ not json").unwrap();
    let out = xtask(&["splits", "--manifest", "bad.json", "--out", "x.json"], work.path());
    assert!(!out.status.success() && text(&out).contains("bad.json"), "{}", text(&out));
}
