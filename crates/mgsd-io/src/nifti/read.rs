//! Reading: [`read_header`], [`read_volume`], [`read_channels`].
//!
//! A file is gzip if it starts with the gzip magic (`1f 8b`), whatever its name says; it is
//! then decompressed as a stream (multi-member gzip allowed), never loaded whole. Voxel data
//! go through a two-buffer pipeline of z-slabs (about [`SLAB_BYTES`] each): while rayon
//! converts slab `s` into the output (see [`super::datatype`]), this thread decompresses slab
//! `s + 1`. Peak memory is the `f32` output plus two slabs.
//!
//! Before anything large is allocated the header is checked against the file: an uncompressed
//! file must hold `vox_offset + data bytes`, and a gzip file cannot inflate to more than
//! [`MAX_DEFLATE_RATIO`] times its size, so a lying header fails fast instead of allocating
//! gigabytes. The gzip trailer (CRC, length) is checked after the data.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use flate2::bufread::MultiGzDecoder;

use super::datatype::{decode_slab, readable, Slab, K_TILE};
use super::header::{
    parse_header, sniff_version, NiftiInfo, NIFTI1_HEADER_SIZE, NIFTI2_HEADER_SIZE,
};
use crate::error::{Error, Result};
use crate::volume::Volume;

/// Target size of one raw slab of z-slices (a multiple of [`K_TILE`] slices when that fits
/// under [`MAX_SLAB_BYTES`]).
const SLAB_BYTES: usize = 2 << 20;
/// Upper bound on a slab of [`K_TILE`] slices; beyond it slabs hold fewer slices.
const MAX_SLAB_BYTES: usize = 16 << 20;
/// Deflate cannot compress better than about 1032:1; we allow 1100:1 plus 1 MiB.
pub const MAX_DEFLATE_RATIO: u64 = 1100;

/// An open NIfTI file positioned after whatever has been consumed so far.
struct Source<'p> {
    path: &'p Path,
    reader: Box<dyn Read + Send>,
    gz: bool,
    file_len: u64,
    /// Bytes of the (decompressed) stream consumed so far.
    pos: u64,
}

impl<'p> Source<'p> {
    fn open(path: &'p Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut buf = BufReader::with_capacity(256 << 10, file);
        let head = buf.fill_buf().map_err(|e| Error::io(path, e))?;
        let gz = head.starts_with(&[0x1f, 0x8b]);
        let reader: Box<dyn Read + Send> =
            if gz { Box::new(MultiGzDecoder::new(buf)) } else { Box::new(buf) };
        Ok(Source { path, reader, gz, file_len, pos: 0 })
    }

    fn err(&self, msg: impl Into<String>) -> Error {
        Error::nifti(self.path, msg)
    }

    /// Maps a read error: corrupt gzip streams are format errors, the rest I/O errors.
    fn read_error(&self, e: io::Error) -> Error {
        match e.kind() {
            io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData if self.gz => {
                self.err(format!("corrupt gzip stream: {e}"))
            }
            io::ErrorKind::UnexpectedEof if self.gz => {
                self.err(format!("truncated gzip stream after {} decompressed bytes", self.pos))
            }
            _ => Error::io(self.path, e),
        }
    }

    /// Fills `buf` as far as the stream allows; returns the number of bytes read.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match self.reader.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => {
                    got += n;
                    self.pos += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.read_error(e)),
            }
        }
        Ok(got)
    }

    /// Skips `n` bytes; returns how many could be skipped.
    fn skip(&mut self, n: u64) -> Result<u64> {
        let skipped = io::copy(&mut (&mut self.reader).take(n), &mut io::sink())
            .map_err(|e| self.read_error(e))?;
        self.pos += skipped;
        Ok(skipped)
    }

    /// Reads and parses the header, walks the extensions and stops at `vox_offset`.
    fn header(&mut self) -> Result<NiftiInfo> {
        let mut buf = [0u8; NIFTI2_HEADER_SIZE];
        let got = self.read_full(&mut buf[..4])?;
        let size = match sniff_version([buf[0], buf[1], buf[2], buf[3]]) {
            Some((1, _)) => NIFTI1_HEADER_SIZE,
            Some(_) => NIFTI2_HEADER_SIZE,
            None => got, // parse_header reports the bad sizeof_hdr / short file
        };
        let got = got + self.read_full(&mut buf[got.min(size)..size])?;
        let mut info = parse_header(&buf[..got], self.path)?;
        info.extensions = self.extensions(info.vox_offset, info.endianness)?;
        let rest = info.vox_offset - self.pos;
        if self.skip(rest)? < rest {
            return Err(self.err(format!(
                "vox_offset {} lies beyond the end of the file ({} bytes{})",
                info.vox_offset,
                self.pos,
                if self.gz { " decompressed" } else { "" }
            )));
        }
        Ok(info)
    }

    /// Counts the header extensions before `vox_offset` (nibabel reads them only when the
    /// first extender byte is non-zero); a malformed chain ends the count, it is not an error.
    fn extensions(&mut self, vox_offset: u64, endian: super::header::Endianness) -> Result<usize> {
        let mut extender = [0u8; 4];
        if vox_offset < self.pos + 4 || self.read_full(&mut extender)? < 4 || extender[0] == 0 {
            return Ok(0);
        }
        let mut count = 0;
        while self.pos + 8 <= vox_offset {
            let mut esize = [0u8; 8];
            if self.read_full(&mut esize)? < 8 {
                break;
            }
            let raw = [esize[0], esize[1], esize[2], esize[3]];
            let size = match endian {
                super::header::Endianness::Little => i32::from_le_bytes(raw),
                super::header::Endianness::Big => i32::from_be_bytes(raw),
            };
            if size < 8 || self.pos - 8 + size as u64 > vox_offset {
                break;
            }
            count += 1;
            let body = size as u64 - 8;
            if self.skip(body)? < body {
                break;
            }
        }
        Ok(count)
    }

    /// Refuses headers whose data cannot possibly be in the file.
    fn check_size(&self, info: &NiftiInfo, data_bytes: u64) -> Result<()> {
        let need = info.vox_offset.saturating_add(data_bytes);
        if !self.gz && need > self.file_len {
            return Err(self.err(format!(
                "truncated data: the header needs {data_bytes} bytes of {} {:?} voxels from \
                 offset {}, but the file has only {} bytes",
                info.datatype, info.shape, info.vox_offset, self.file_len
            )));
        }
        let bound = self.file_len.saturating_mul(MAX_DEFLATE_RATIO).saturating_add(1 << 20);
        if self.gz && need > bound {
            return Err(self.err(format!(
                "the header claims {data_bytes} bytes of {} {:?} voxels, more than a gzip \
                 file of {} bytes can hold: header or file is corrupt",
                info.datatype, info.shape, self.file_len
            )));
        }
        Ok(())
    }

    /// Decodes one 3-D volume (`shape` = `[nx, ny, nz]`) from the stream.
    fn volume(
        &mut self,
        info: &NiftiInfo,
        shape: [usize; 3],
        scaling: Option<(f64, f64)>,
    ) -> Result<Vec<f32>> {
        let t = info.nifti_type().ok_or_else(|| self.err("unknown datatype"))?;
        let esize = t.size_of();
        let [nx, ny, nz] = shape;
        let slice = nx * ny * esize;
        let per_slab = slices_per_slab(slice, nz);
        let mut out = crate::buffer::zeroed::<f32>(nx * ny * nz);
        let mut cur = vec![0u8; per_slab * slice];
        let mut next = vec![0u8; if per_slab < nz { per_slab * slice } else { 0 }];
        let big = info.endianness == super::header::Endianness::Big;
        let total = (nx * ny * nz * esize) as u64;
        let start = self.pos;
        let truncated = |src: &Self| {
            src.err(format!(
                "truncated data: the file ends after {} of the {total} bytes of a {} {:?} volume",
                src.pos - start,
                info.datatype,
                shape
            ))
        };
        let mut kn = per_slab.min(nz);
        if self.read_full(&mut cur[..kn * slice])? < kn * slice {
            return Err(truncated(self));
        }
        let mut k0 = 0;
        loop {
            let k1 = k0 + kn;
            let kn1 = per_slab.min(nz - k1);
            let slab = Slab { shape, k0, kn };
            let (read, ()) = rayon::join(
                || self.read_full(&mut next[..kn1 * slice]),
                || decode_slab(&cur[..kn * slice], t, big, scaling, slab, &mut out),
            );
            if kn1 == 0 {
                return Ok(out);
            }
            if read? < kn1 * slice {
                return Err(truncated(self));
            }
            std::mem::swap(&mut cur, &mut next);
            (k0, kn) = (k1, kn1);
        }
    }

    /// Reads whatever follows the data, so that a gzip trailer (CRC, length) gets checked.
    fn finish(&mut self) -> Result<()> {
        if self.gz {
            self.skip(u64::MAX)?;
        }
        Ok(())
    }
}

/// z-slices per slab: whole tiles of [`K_TILE`] slices (the decode kernel writes one cache
/// line per output row and tile), about [`SLAB_BYTES`], fewer for huge slices.
fn slices_per_slab(slice_bytes: usize, nz: usize) -> usize {
    let n = if slice_bytes * K_TILE <= MAX_SLAB_BYTES {
        (SLAB_BYTES / slice_bytes / K_TILE).max(1) * K_TILE
    } else {
        (MAX_SLAB_BYTES / slice_bytes).max(1)
    };
    n.clamp(1, nz)
}

/// Reads the header of a `.nii` / `.nii.gz` file (NIfTI-1 or NIfTI-2, either byte order),
/// counting its extensions; no voxel data is read.
///
/// # Errors
/// A missing or unreadable file, or anything [`super::header::parse_header`] refuses; a
/// `vox_offset` beyond the end of the file.
pub fn read_header(path: &Path) -> Result<NiftiInfo> {
    Source::open(path)?.header()
}

/// Layout of the volumes in a file: the 3-D grid and how many volumes follow each other.
fn layout(info: &NiftiInfo, path: &Path) -> Result<([usize; 3], usize)> {
    let s = &info.shape;
    let grid = [s[0], s.get(1).copied().unwrap_or(1), s.get(2).copied().unwrap_or(1)];
    let extra: Vec<usize> = s.iter().skip(3).copied().collect();
    if extra.iter().filter(|&&d| d > 1).count() > 1 {
        return Err(Error::nifti(
            path,
            format!("shape {s:?} has more than one non-singleton dimension beyond the third"),
        ));
    }
    if readable(info.nifti_type().ok_or_else(|| Error::nifti(path, "unknown datatype"))?).is_none()
    {
        return Err(Error::nifti(
            path,
            format!(
                "datatype {} (code {}) is not supported: only scalar integer and float images \
                 (uint8 … uint64, float32, float64) can be read",
                info.datatype, info.datatype_code
            ),
        ));
    }
    Ok((grid, extra.iter().product()))
}

fn read_all(path: &Path, want_one: bool) -> Result<Vec<Volume>> {
    let mut src = Source::open(path)?;
    let info = src.header()?;
    let (grid, count) = layout(&info, path)?;
    if want_one && count > 1 {
        return Err(Error::nifti(
            path,
            format!(
                "shape {:?} holds {count} volumes, read_volume wants one: use read_channels",
                info.shape
            ),
        ));
    }
    let scaling = info.scaling(path)?;
    let esize = info.nifti_type().map_or(1, |t| t.size_of()) as u64;
    src.check_size(&info, info.voxel_count() as u64 * esize)?;
    let spacing =
        [1, 2, 3].map(|d| if d <= info.shape.len() { info.pixdim[d] as f32 } else { 1.0 });
    let source = Box::new(info.source_header());
    let mut volumes = Vec::with_capacity(count);
    for _ in 0..count {
        let data = src.volume(&info, grid, scaling)?;
        volumes.push(Volume {
            data,
            shape: grid,
            spacing,
            affine: info.affine,
            source: Some(source.clone()),
        });
    }
    src.finish()?;
    Ok(volumes)
}

/// Reads a 3-D volume: a 3-D file, or a 4-D to 7-D file whose extra dimensions are all 1
/// (1-D and 2-D files give a volume with trailing dimensions of 1). Values are scaled to `f32`
/// as nibabel's `get_fdata`; the affine is nibabel's `img.affine`; `source` keeps the header.
///
/// # Errors
/// Everything [`read_header`] refuses; a file with several volumes (use [`read_channels`]);
/// an unsupported datatype (RGB, complex, float128); data shorter than the header says; a
/// corrupt or truncated gzip stream. Every error names the file.
pub fn read_volume(path: &Path) -> Result<Volume> {
    let mut v = read_all(path, true)?;
    v.pop().ok_or_else(|| Error::nifti(path, "no volume in file"))
}

/// Reads every 3-D volume of a file, in order along its one non-singleton dimension beyond
/// the third (normally the 4th: MSD Task01 stores its four modalities that way). A 3-D file
/// gives one volume. All volumes share spacing, affine and source header.
///
/// # Errors
/// As [`read_volume`], and a file with two or more non-singleton dimensions beyond the third.
pub fn read_channels(path: &Path) -> Result<Vec<Volume>> {
    read_all(path, false)
}
