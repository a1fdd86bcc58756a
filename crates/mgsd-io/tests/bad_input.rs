//! Bad input gives an error that names the file — never a panic, never a huge allocation.
//!
//! Each case starts from a small valid file written by our writer and breaks one thing; the
//! proptests then break random header bytes of `.nii` and `.nii.gz` files.

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;
use mgsd_io::nifti::{read_channels, read_header, read_volume, write_volume, OutputType};
use mgsd_io::{Error, Volume};
use proptest::prelude::*;

const SHAPE: [usize; 3] = [8, 7, 6];

/// The bytes of a valid little-endian NIfTI-1 int16 file (header + 4 bytes + data).
fn valid_bytes() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.nii");
    let n: usize = SHAPE.iter().product();
    let v = Volume::new((0..n).map(|i| (i % 300) as f32).collect(), SHAPE).unwrap();
    write_volume(&path, &v, OutputType::Int16).unwrap();
    std::fs::read(path).unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn put(bytes: &mut [u8], off: usize, value: &[u8]) {
    bytes[off..off + value.len()].copy_from_slice(value);
}

fn save(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Reading must fail with a message that names the file and contains every `needle`.
#[track_caller]
fn refused(path: &Path, needles: &[&str]) {
    for result in [read_volume(path).map(|_| ()), read_channels(path).map(|_| ())] {
        let err = result.expect_err("bad input must be an error");
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "error does not name the file: {msg}");
        for n in needles {
            assert!(msg.contains(n), "error {msg:?} should mention {n:?}");
        }
    }
}

#[test]
fn the_valid_file_reads() {
    let dir = tempfile::tempdir().unwrap();
    let good = valid_bytes();
    assert_eq!(read_volume(&save(dir.path(), "a.nii", &good)).unwrap().shape, SHAPE);
    assert_eq!(read_volume(&save(dir.path(), "a.nii.gz", &gzip(&good))).unwrap().shape, SHAPE);
}

#[test]
fn missing_file_and_directory() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing_t1.nii.gz");
    let err = read_volume(&missing).unwrap_err();
    assert!(matches!(err, Error::Io { .. }) && err.to_string().contains("missing_t1.nii.gz"));
    assert!(read_header(&missing).is_err());
    assert!(read_volume(dir.path()).is_err());
}

#[test]
fn empty_and_non_nifti_files() {
    let dir = tempfile::tempdir().unwrap();
    refused(&save(dir.path(), "empty.nii", b""), &["too short"]);
    refused(
        &save(dir.path(), "text.nii", b"this is not an image at all, only some text\n"),
        &["sizeof_hdr"],
    );
    refused(&save(dir.path(), "short.nii", &valid_bytes()[..200]), &["truncated", "header"]);
    refused(&save(dir.path(), "short.nii.gz", &gzip(&valid_bytes()[..200])), &["truncated"]);
}

#[test]
fn wrong_magic_and_header_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = valid_bytes();
    put(&mut b, 344, b"abc\0");
    refused(&save(dir.path(), "magic.nii", &b), &["magic"]);
    put(&mut b, 344, b"ni1\0");
    refused(&save(dir.path(), "pair.nii", &b), &[".hdr/.img"]);
}

#[test]
fn truncated_data() {
    let dir = tempfile::tempdir().unwrap();
    let good = valid_bytes();
    let cut = &good[..good.len() - 100];
    refused(&save(dir.path(), "cut.nii", cut), &["truncated"]);
    refused(&save(dir.path(), "cut.nii.gz", &gzip(cut)), &["truncated"]);
}

#[test]
fn truncated_and_corrupt_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let gz = gzip(&valid_bytes());
    refused(&save(dir.path(), "half.nii.gz", &gz[..gz.len() / 2]), &[]);
    // Only the trailer (CRC32 + length) missing: the data are complete, the stream is not.
    refused(&save(dir.path(), "notrailer.nii.gz", &gz[..gz.len() - 8]), &[]);
    let mut bad_crc = gz.clone();
    let n = bad_crc.len();
    bad_crc[n - 6] ^= 0xff;
    refused(&save(dir.path(), "crc.nii.gz", &bad_crc), &["gzip"]);
    let mut garbage = gz[..10].to_vec();
    garbage.extend(std::iter::repeat_n(0xffu8, 400));
    refused(&save(dir.path(), "garbage.nii.gz", &garbage), &["gzip"]);
}

#[test]
fn header_lying_about_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = valid_bytes();
    put(&mut b, 46, &60i16.to_le_bytes()); // nz 6 → 60: ten times the data there is
    refused(&save(dir.path(), "lie.nii", &b), &["truncated", "file has only"]);
    refused(&save(dir.path(), "lie.nii.gz", &gzip(&b)), &["truncated"]);
    // 30000 × 30000 × 2 int16 = 3.6 GB claimed by a file of a few hundred bytes: refused
    // before allocating anything (this test would run out of memory otherwise).
    let mut huge = valid_bytes();
    put(&mut huge, 42, &30000i16.to_le_bytes());
    put(&mut huge, 44, &30000i16.to_le_bytes());
    put(&mut huge, 46, &2i16.to_le_bytes());
    refused(&save(dir.path(), "huge.nii", &huge), &["file has only"]);
    refused(&save(dir.path(), "huge.nii.gz", &gzip(&huge)), &["more than a gzip file"]);
    // vox_offset beyond the end of the file.
    let mut far = valid_bytes();
    put(&mut far, 108, &1.0e6f32.to_le_bytes());
    refused(&save(dir.path(), "far.nii", &far), &["vox_offset"]);
    refused(&save(dir.path(), "far.nii.gz", &gzip(&far)), &["vox_offset"]);
    // vox_offset inside the header.
    put(&mut far, 108, &0f32.to_le_bytes());
    refused(&save(dir.path(), "inside.nii", &far), &["vox_offset"]);
}

#[test]
fn zero_negative_and_absurd_dims() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, usize, i16, &str); 6] = [
        ("zero.nii", 42, 0, "dim[1] is 0"),
        ("negative.nii", 44, -5, "dim[2] is -5"),
        ("ndim0.nii", 40, 0, "dim[0] is 0"),
        ("ndim8.nii", 40, 8, "dim[0] is 8"),
        ("ndim_neg.nii", 40, -1, "dim[0] is -1"),
        ("big.nii", 42, 32767, "2^31"),
    ];
    for (name, off, value, needle) in cases {
        let mut b = valid_bytes();
        put(&mut b, off, &value.to_le_bytes());
        if name == "big.nii" {
            for o in [44, 46, 48] {
                put(&mut b, o, &32767i16.to_le_bytes());
            }
            put(&mut b, 40, &4i16.to_le_bytes());
        }
        refused(&save(dir.path(), name, &b), &[needle]);
        refused(&save(dir.path(), &format!("{name}.gz"), &gzip(&b)), &[needle]);
    }
}

#[test]
fn unsupported_and_unknown_datatypes() {
    let dir = tempfile::tempdir().unwrap();
    for (code, needle) in
        [(128i16, "RGB"), (32, "complex64"), (1536, "float128"), (3, "unknown datatype")]
    {
        let mut b = valid_bytes();
        put(&mut b, 70, &code.to_le_bytes());
        refused(&save(dir.path(), &format!("dt{code}.nii"), &b), &[needle]);
    }
    // A valid slope with an infinite intercept: nibabel refuses it too.
    let mut b = valid_bytes();
    put(&mut b, 112, &2f32.to_le_bytes());
    put(&mut b, 116, &f32::INFINITY.to_le_bytes());
    refused(&save(dir.path(), "inter.nii", &b), &["scl_inter"]);
}

/// Reads a possibly broken file; the result may be anything but a panic.
fn read_all_ways(path: &Path) {
    let _ = read_header(path);
    let _ = read_volume(path);
    let _ = read_channels(path);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random bytes of the 352-byte header block (and the first data bytes) replaced.
    #[test]
    fn mutated_headers_never_panic(
        edits in prop::collection::vec((0usize..360, any::<u8>()), 1..12),
        gz in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut b = valid_bytes();
        for (off, v) in edits {
            b[off] = v;
        }
        let bytes = if gz { gzip(&b) } else { b };
        read_all_ways(&save(dir.path(), if gz { "m.nii.gz" } else { "m.nii" }, &bytes));
    }

    /// Header fields that matter set to extreme values, in either byte order.
    #[test]
    fn extreme_header_fields_never_panic(
        field in prop::sample::select(vec![0usize, 40, 42, 44, 46, 48, 70, 72, 108, 112, 116, 252, 254]),
        value in any::<u32>(),
        swap in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut b = valid_bytes();
        let v = if swap { value.to_be_bytes() } else { value.to_le_bytes() };
        put(&mut b, field, &v);
        read_all_ways(&save(dir.path(), "x.nii", &b));
        read_all_ways(&save(dir.path(), "x.nii.gz", &gzip(&b)));
    }

    /// Random bytes of the compressed stream itself replaced, or the stream cut anywhere.
    #[test]
    fn mutated_gzip_never_panics(
        edits in prop::collection::vec((0usize..10_000, any::<u8>()), 0..6),
        cut in 0usize..10_000,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut gz = gzip(&valid_bytes());
        let n = gz.len();
        for (off, v) in edits {
            gz[off % n] = v;
        }
        gz.truncate(cut.max(1).min(n));
        read_all_ways(&save(dir.path(), "g.nii.gz", &gz));
    }
}
