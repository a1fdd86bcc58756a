//! `fetch-brats` against a real HTTP server on loopback and synthetic archives. Each case
//! either succeeds with a correct manifest or fails with a clear error and leaves no dataset.

mod common;

use common::*;
use mgsd_io::{DatasetLayout, LabelScheme, Modality, MSD_CHANNEL_ORDER};
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};
use xtask::fetch::{fetch, FetchOptions, FetchSource, Outcome, Year};
use xtask::manifest::{md5_file, ManifestImages, SourceKind};
use xtask::{Manifest, MANIFEST_FILE};

const ARCHIVE: &str = "Task01_BrainTumour.tar";

fn url_options(dest: &Path, url: String, md5: String, retries: u32) -> FetchOptions {
    FetchOptions {
        dest: dest.to_path_buf(),
        source: FetchSource::Url { url, md5 },
        year: None,
        name: None,
        keep_archive: false,
        force: false,
        net: net(retries),
    }
}

fn local_options(dest: &Path, path: &Path, year: Option<Year>) -> FetchOptions {
    FetchOptions {
        dest: dest.to_path_buf(),
        source: FetchSource::Local { path: path.to_path_buf(), md5: None, link: false },
        year,
        name: None,
        keep_archive: false,
        force: false,
        net: net(0),
    }
}

/// A synthetic MSD tar with 3 cases of 24³.
fn msd_tar(work: &Path) -> Vec<u8> {
    let root = msd_folder(&work.join("src"), 3);
    tar_dir(&root, "Task01_BrainTumour")
}

fn check_manifest_files(manifest: &Manifest, root: &Path) {
    for file in manifest.files() {
        let path = root.join(&file.path);
        assert_eq!(fs::metadata(&path).unwrap().len(), file.size, "{}", file.path);
        assert_eq!(md5_file(&path).unwrap(), file.md5, "{}", file.path);
    }
}

#[test]
fn full_download_installs_a_verified_manifest_and_reruns_are_free() {
    let work = tempfile::tempdir().unwrap();
    let data = msd_tar(work.path());
    let md5 = md5_hex(&data);
    let server = Server::start(ARCHIVE, data, Behaviour::default());
    let dest = work.path().join("data");
    let opts = url_options(&dest, server.url(ARCHIVE), md5.clone(), 0);

    let report = fetch(&opts).unwrap();
    assert_eq!(report.outcome, Outcome::Installed);
    assert_eq!(report.cases, 3);
    assert_eq!(report.manifest, dest.join("Task01_BrainTumour").join(MANIFEST_FILE));
    let manifest = Manifest::load(&report.manifest).unwrap();
    assert_eq!(manifest.name, "Task01_BrainTumour");
    assert_eq!(manifest.layout, DatasetLayout::Msd);
    assert_eq!(manifest.label_scheme, LabelScheme::Msd);
    assert_eq!(manifest.root, None);
    assert_eq!(manifest.source.kind, SourceKind::Url);
    assert_eq!(manifest.source.md5.as_deref(), Some(md5.as_str()));
    assert_eq!(manifest.case_ids(), ["BRATS_001", "BRATS_002", "BRATS_003"]);
    for case in &manifest.cases {
        assert_eq!(case.modalities, Modality::ALL.to_vec());
        assert_eq!(case.shape, [24, 24, 24]);
        assert!(case.spacing.iter().all(|s| *s > 0.0));
        match &case.images {
            ManifestImages::Stacked { file, order } => {
                assert_eq!(file.path, format!("imagesTr/{}.nii.gz", case.id));
                assert_eq!(order, &MSD_CHANNEL_ORDER.to_vec());
            }
            other => panic!("MSD images should be stacked: {other:?}"),
        }
        assert_eq!(case.label.as_ref().unwrap().path, format!("labelsTr/{}.nii.gz", case.id));
    }
    let root = manifest.dataset_root(&report.manifest);
    check_manifest_files(&manifest, &root);
    assert!(root.join("dataset.json").is_file());
    // The manifest's cases load through mgsd-io.
    for case in manifest.case_files(&root) {
        let loaded = case.load().unwrap();
        assert_eq!(loaded.modalities(), mgsd_io::ModalitySet::FULL);
        assert!(loaded.label.is_some());
    }
    // Only the dataset is left: no archive (not kept), no staging folder.
    assert_eq!(listing(&dest), ["Task01_BrainTumour"]);

    // Re-run: nothing downloaded, nothing read.
    let requests = server.requests().len();
    let again = fetch(&opts).unwrap();
    assert_eq!(again.outcome, Outcome::UpToDate);
    assert_eq!(server.requests().len(), requests);

    // A file with a new time but the same content: re-hashed, still up to date.
    let label = root.join("labelsTr/BRATS_002.nii.gz");
    let bytes = fs::read(&label).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    fs::write(&label, &bytes).unwrap();
    assert_eq!(fetch(&opts).unwrap().outcome, Outcome::UpToDate);
    assert_eq!(server.requests().len(), requests);

    // Changed content: downloaded and installed again, replacing the broken copy.
    fs::write(&label, b"broken").unwrap();
    let redo = fetch(&opts).unwrap();
    assert_eq!(redo.outcome, Outcome::Installed);
    assert!(server.requests().len() > requests);
    let manifest = Manifest::load(&redo.manifest).unwrap();
    check_manifest_files(&manifest, &manifest.dataset_root(&redo.manifest));
    assert_eq!(listing(&dest), ["Task01_BrainTumour"]);
}

#[test]
fn an_interrupted_download_resumes_with_a_range_request() {
    let work = tempfile::tempdir().unwrap();
    let data = msd_tar(work.path());
    let md5 = md5_hex(&data);
    let cut = data.len() / 3;
    let server = Server::start(
        ARCHIVE,
        data.clone(),
        Behaviour { cut_after: Some(cut), cuts: 1, ..Default::default() },
    );
    let dest = work.path().join("data");
    let opts = url_options(&dest, server.url(ARCHIVE), md5, 0);

    let err = format!("{:#}", fetch(&opts).unwrap_err());
    assert!(err.contains("run the command again to resume"), "{err}");
    assert_nothing_installed(&dest);
    let part = dest.join(".downloads").join(format!("{ARCHIVE}.part"));
    let have = fs::metadata(&part).unwrap().len();
    assert!(have > 0 && have <= cut as u64, "partial file holds {have} bytes");
    assert_eq!(fs::read(&part).unwrap(), data[..have as usize]);

    let report = fetch(&opts).unwrap();
    assert_eq!(report.outcome, Outcome::Installed);
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].range.as_deref(), Some(format!("bytes={have}-").as_str()));
    assert!(!part.exists());
    assert_eq!(Manifest::load(&report.manifest).unwrap().cases.len(), 3);
}

#[test]
fn a_dropped_connection_is_resumed_within_one_run() {
    let work = tempfile::tempdir().unwrap();
    let data = msd_tar(work.path());
    let md5 = md5_hex(&data);
    let server = Server::start(
        ARCHIVE,
        data.clone(),
        Behaviour { cut_after: Some(data.len() / 4), cuts: 2, ..Default::default() },
    );
    let dest = work.path().join("data");
    let report = fetch(&url_options(&dest, server.url(ARCHIVE), md5, 3)).unwrap();
    assert_eq!(report.outcome, Outcome::Installed);
    let ranges: Vec<Option<String>> = server.requests().into_iter().map(|r| r.range).collect();
    assert_eq!(ranges.len(), 3);
    assert!(ranges[0].is_none() && ranges[1].is_some() && ranges[2].is_some(), "{ranges:?}");
}

#[test]
fn a_server_without_range_support_restarts_the_download() {
    let work = tempfile::tempdir().unwrap();
    let data = msd_tar(work.path());
    let md5 = md5_hex(&data);
    let server = Server::start(
        ARCHIVE,
        data.clone(),
        Behaviour {
            cut_after: Some(data.len() / 2),
            cuts: 1,
            ignore_range: true,
            ..Default::default()
        },
    );
    let dest = work.path().join("data");
    let opts = url_options(&dest, server.url(ARCHIVE), md5, 0);
    assert!(fetch(&opts).is_err());
    let report = fetch(&opts).unwrap();
    assert_eq!(report.outcome, Outcome::Installed);
    assert_eq!(Manifest::load(&report.manifest).unwrap().cases.len(), 3);
}

#[test]
fn a_wrong_checksum_unpacks_nothing() {
    let work = tempfile::tempdir().unwrap();
    let data = msd_tar(work.path());
    let server = Server::start(ARCHIVE, data, Behaviour::default());
    let dest = work.path().join("data");
    let err = format!(
        "{:#}",
        fetch(&url_options(&dest, server.url(ARCHIVE), "0".repeat(32), 0)).unwrap_err()
    );
    assert!(err.contains("MD5 mismatch") && err.contains("nothing was"), "{err}");
    assert_nothing_installed(&dest);
    assert!(listing(&dest.join(".downloads")).is_empty(), "the bad download is deleted");
}

#[test]
fn a_truncated_archive_leaves_no_dataset() {
    let work = tempfile::tempdir().unwrap();
    let data = msd_tar(work.path());
    // Cut at a block boundary (the tar looks complete to a naive reader) and mid-block.
    for len in [(data.len() / 2) / 512 * 512, data.len() / 2 + 100] {
        let truncated = data[..len].to_vec();
        let md5 = md5_hex(&truncated); // the download itself succeeds
        let server = Server::start(ARCHIVE, truncated, Behaviour::default());
        let dest = work.path().join(format!("data-{len}"));
        let err =
            format!("{:#}", fetch(&url_options(&dest, server.url(ARCHIVE), md5, 0)).unwrap_err());
        assert!(err.contains("truncated"), "{err}");
        assert_nothing_installed(&dest);
    }
}

/// An MSD tar with one extra raw entry appended before the end marker.
fn tar_with_extra_entry(work: &Path, extra: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let root = msd_folder(&work.join("src"), 2);
    let mut builder = tar::Builder::new(Vec::new());
    builder.append_dir_all("Task01_BrainTumour", &root).unwrap();
    extra(&mut builder);
    builder.into_inner().unwrap()
}

fn raw_header(name: &[u8], kind: tar::EntryType, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(0o644);
    header.set_cksum();
    header
}

#[test]
fn entries_escaping_the_destination_are_refused() {
    type AddEntry = Box<dyn FnOnce(&mut tar::Builder<Vec<u8>>)>;
    let cases: Vec<(&str, AddEntry, &str)> = vec![
        (
            "dotdot",
            Box::new(|b| {
                let h =
                    raw_header(b"Task01_BrainTumour/../../evil.txt", tar::EntryType::Regular, 4);
                b.append(&h, &b"evil"[..]).unwrap();
            }),
            "contains '..'",
        ),
        (
            "absolute",
            Box::new(|b| {
                let h = raw_header(b"/tmp/evil.txt", tar::EntryType::Regular, 4);
                b.append(&h, &b"evil"[..]).unwrap();
            }),
            "absolute path",
        ),
        (
            "symlink",
            Box::new(|b| {
                let mut h = raw_header(b"Task01_BrainTumour/link", tar::EntryType::Symlink, 0);
                h.set_link_name("../../outside").unwrap();
                h.set_cksum();
                b.append(&h, std::io::empty()).unwrap();
            }),
            "outside the destination",
        ),
        (
            "hardlink",
            Box::new(|b| {
                let mut h = raw_header(b"Task01_BrainTumour/hard", tar::EntryType::Link, 0);
                h.set_link_name("/etc/passwd").unwrap();
                h.set_cksum();
                b.append(&h, std::io::empty()).unwrap();
            }),
            "absolute path",
        ),
    ];
    for (label, extra, expected) in cases {
        let work = tempfile::tempdir().unwrap();
        let data = tar_with_extra_entry(work.path(), extra);
        let md5 = md5_hex(&data);
        let server = Server::start(ARCHIVE, data, Behaviour::default());
        let dest = work.path().join("a").join("data");
        let err =
            format!("{:#}", fetch(&url_options(&dest, server.url(ARCHIVE), md5, 0)).unwrap_err());
        assert!(err.contains(expected) && err.contains("refused"), "{label}: {err}");
        assert_nothing_installed(&dest);
        assert!(
            !work.path().join("evil.txt").exists() && !work.path().join("a/evil.txt").exists(),
            "{label}"
        );
    }
}

#[test]
fn a_case_with_a_missing_modality_fails_naming_it() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let ids = write_cases(&src, DatasetLayout::Brats2018, 3);
    let broken = &ids[1];
    let t2 = src.join("HGG").join(broken).join(format!("{broken}_t2.nii.gz"));
    fs::remove_file(&t2).unwrap();
    let zip = work.path().join("MICCAI_BraTS_2018_Data_Training.zip");
    fs::write(&zip, zip_dir(&src, "MICCAI_BraTS_2018_Data_Training")).unwrap();
    let dest = work.path().join("data");
    let err = format!("{:#}", fetch(&local_options(&dest, &zip, Some(Year::Y2018))).unwrap_err());
    assert!(err.contains("1 of 3 cases failed"), "{err}");
    assert!(
        err.contains(&format!("case {broken}")) && err.contains("missing modality T2"),
        "{err}"
    );
    assert!(!err.contains(".staging"), "messages name the archive, not the staging folder: {err}");
    assert_nothing_installed(&dest);
}

#[test]
fn an_unreadable_image_fails_naming_the_file() {
    let work = tempfile::tempdir().unwrap();
    let root = msd_folder(&work.path().join("src"), 2);
    fs::write(root.join("imagesTr/BRATS_002.nii.gz"), b"not a nifti file").unwrap();
    let tar = work.path().join("t.tar");
    fs::write(&tar, tar_dir(&root, "Task01_BrainTumour")).unwrap();
    let dest = work.path().join("data");
    let err = format!("{:#}", fetch(&local_options(&dest, &tar, None)).unwrap_err());
    assert!(err.contains("case BRATS_002") && err.contains("imagesTr/BRATS_002.nii.gz"), "{err}");
    assert_nothing_installed(&dest);
}

#[test]
fn a_brats2018_zip_imports_with_a_manifest() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let ids = write_cases(&src, DatasetLayout::Brats2018, 4);
    // A case without a label (as in validation sets) is accepted and recorded as such.
    let unlabelled = &ids[2];
    fs::remove_file(src.join("HGG").join(unlabelled).join(format!("{unlabelled}_seg.nii.gz")))
        .unwrap();
    let zip = work.path().join("MICCAI_BraTS_2018_Data_Training.zip");
    fs::write(&zip, zip_dir(&src, "MICCAI_BraTS_2018_Data_Training")).unwrap();
    let dest = work.path().join("data");

    // The wrong year is caught before anything is installed.
    let err = format!("{:#}", fetch(&local_options(&dest, &zip, Some(Year::Y2021))).unwrap_err());
    assert!(err.contains("--year 2021"), "{err}");
    assert_nothing_installed(&dest);

    let report = fetch(&local_options(&dest, &zip, Some(Year::Y2018))).unwrap();
    assert_eq!(report.outcome, Outcome::Installed);
    assert_eq!(report.manifest, dest.join("brats2018").join(MANIFEST_FILE));
    let manifest = Manifest::load(&report.manifest).unwrap();
    assert_eq!(manifest.layout, DatasetLayout::Brats2018);
    assert_eq!(manifest.label_scheme, LabelScheme::Brats2018);
    assert_eq!(manifest.source.kind, SourceKind::Archive);
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(manifest.case_ids(), sorted.iter().map(String::as_str).collect::<Vec<_>>());
    for case in &manifest.cases {
        let ManifestImages::PerModality(files) = &case.images else {
            panic!("per-modality expected")
        };
        assert_eq!(files.keys().copied().collect::<Vec<_>>(), Modality::ALL.to_vec());
        let grade = if files[&Modality::T1].path.starts_with("HGG/") { "HGG" } else { "LGG" };
        assert_eq!(files[&Modality::Flair].path, format!("{grade}/{0}/{0}_flair.nii.gz", case.id));
        assert_eq!(case.label.is_some(), &case.id != unlabelled, "{}", case.id);
    }
    assert_eq!(manifest.labelled_case_ids().len(), 3);
    assert_eq!(manifest.warnings.len(), 1, "{:?}", manifest.warnings);
    let warning = &manifest.warnings[0];
    assert!(
        warning.contains(unlabelled) && warning.contains(&format!("(HGG/{unlabelled})")),
        "{warning}"
    );
    check_manifest_files(&manifest, &manifest.dataset_root(&report.manifest));
    assert_eq!(listing(&dest), ["brats2018"]);

    // Unchanged archive: up to date without unpacking.
    assert_eq!(
        fetch(&local_options(&dest, &zip, Some(Year::Y2018))).unwrap().outcome,
        Outcome::UpToDate
    );
    // Also found without --year (by its recorded source).
    assert_eq!(fetch(&local_options(&dest, &zip, None)).unwrap().outcome, Outcome::UpToDate);
}

#[test]
fn a_tar_gz_and_a_folder_import_too() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    write_cases(&src, DatasetLayout::Brats2021, 2);
    // .tar.gz with the cases at the top (entries `.`, `BraTS2021_00000/…`, as `tar -C dir .` makes)
    let tgz = work.path().join("BraTS2021.tar.gz");
    {
        let file = fs::File::create(&tgz).unwrap();
        let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar_dir(&src, ".")).unwrap();
        gz.finish().unwrap();
    }
    let dest = work.path().join("data");
    let report = fetch(&local_options(&dest, &tgz, Some(Year::Y2021))).unwrap();
    assert_eq!(Manifest::load(&report.manifest).unwrap().layout, DatasetLayout::Brats2021);

    // Folder, copied.
    let mut opts = local_options(&dest, &src, None);
    opts.name = Some("copied".into());
    let report = fetch(&opts).unwrap();
    let manifest = Manifest::load(&report.manifest).unwrap();
    assert_eq!(manifest.root, None);
    assert_eq!(manifest.source.kind, SourceKind::Folder);
    check_manifest_files(&manifest, &dest.join("copied"));

    // Folder, linked: only the manifest is written; it points at the source.
    let mut opts = local_options(&dest, &src, None);
    opts.name = Some("linked".into());
    opts.source = FetchSource::Local { path: src.clone(), md5: None, link: true };
    let report = fetch(&opts).unwrap();
    assert_eq!(listing(&dest.join("linked")), [MANIFEST_FILE]);
    let manifest = Manifest::load(&report.manifest).unwrap();
    assert_eq!(manifest.root.as_deref(), Some(fs::canonicalize(&src).unwrap().as_path()));
    check_manifest_files(&manifest, &manifest.dataset_root(&report.manifest));
    assert_eq!(fetch(&opts).unwrap().outcome, Outcome::UpToDate);
}

#[test]
fn a_foreign_folder_is_never_replaced() {
    let work = tempfile::tempdir().unwrap();
    let data = msd_tar(work.path());
    let md5 = md5_hex(&data);
    let server = Server::start(ARCHIVE, data, Behaviour::default());
    let dest = work.path().join("data");
    fs::create_dir_all(dest.join("Task01_BrainTumour")).unwrap();
    fs::write(dest.join("Task01_BrainTumour/mine.txt"), b"precious").unwrap();
    let err = format!("{:#}", fetch(&url_options(&dest, server.url(ARCHIVE), md5, 0)).unwrap_err());
    assert!(err.contains("was not made by"), "{err}");
    assert!(server.requests().is_empty(), "refused before downloading");
    assert_eq!(fs::read(dest.join("Task01_BrainTumour/mine.txt")).unwrap(), b"precious");
}

#[test]
fn an_unreachable_host_fails_within_seconds() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }; // closed again: connections are refused
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("data");
    let started = Instant::now();
    let err = format!(
        "{:#}",
        fetch(&url_options(&dest, format!("http://127.0.0.1:{port}/{ARCHIVE}"), "0".repeat(32), 3))
            .unwrap_err()
    );
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(err.contains("cannot download") && err.contains("--from"), "{err}");
    assert_nothing_installed(&dest);
}

#[test]
fn a_silent_server_times_out() {
    let server =
        Server::start(ARCHIVE, Vec::new(), Behaviour { silent: true, ..Default::default() });
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("data");
    let started = Instant::now();
    let err = format!(
        "{:#}",
        fetch(&url_options(&dest, server.url(ARCHIVE), "0".repeat(32), 3)).unwrap_err()
    );
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    assert!(err.contains("timed out"), "{err}");
    assert_nothing_installed(&dest);
}

#[test]
fn http_errors_are_reported() {
    let server = Server::start(ARCHIVE, b"x".to_vec(), Behaviour::default());
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("data");
    let err = format!(
        "{:#}",
        fetch(&url_options(&dest, server.url("other.tar"), "0".repeat(32), 0)).unwrap_err()
    );
    assert!(err.contains("HTTP 404"), "{err}");
    assert_nothing_installed(&dest);
}

#[test]
fn bad_local_input_is_an_error_not_a_panic() {
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("data");
    let missing = work.path().join("nope.zip");
    let err = format!("{:#}", fetch(&local_options(&dest, &missing, None)).unwrap_err());
    assert!(err.contains("nope.zip"), "{err}");
    let junk = work.path().join("junk.zip");
    fs::write(&junk, b"PK\x03\x04 this is not really a zip").unwrap();
    let err = format!("{:#}", fetch(&local_options(&dest, &junk, None)).unwrap_err());
    assert!(err.contains("junk.zip"), "{err}");
    let text = work.path().join("notes.txt");
    fs::write(&text, b"hello").unwrap();
    let err = format!("{:#}", fetch(&local_options(&dest, &text, None)).unwrap_err());
    assert!(err.contains("not a .tar, .tar.gz or .zip"), "{err}");
    let empty = work.path().join("empty");
    fs::create_dir(&empty).unwrap();
    assert!(fetch(&local_options(&dest, &empty, None)).is_err());
    assert_nothing_installed(&dest);
}

#[test]
fn a_zip_symlink_escaping_the_destination_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    writer.add_symlink("top/escape", "../../../etc", options).unwrap();
    let bytes = writer.finish().unwrap().into_inner();
    let zip = work.path().join("evil.zip");
    fs::write(&zip, bytes).unwrap();
    let dest = work.path().join("data");
    let err = format!("{:#}", fetch(&local_options(&dest, &zip, None)).unwrap_err());
    assert!(err.contains("top/escape") && err.contains("refused"), "{err}");
    assert_nothing_installed(&dest);
}
