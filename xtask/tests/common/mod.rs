//! Test helpers: a tiny HTTP/1.1 server on loopback (GET, `Range`, cut connections, silence)
//! and synthetic datasets packed as tar or zip archives.
#![allow(dead_code)]

use md5::{Digest, Md5};
use mgsd_io::synth::{write_dataset_as, SynthConfig};
use mgsd_io::DatasetLayout;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use xtask::download::NetOptions;

/// How the server misbehaves.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Cut the connection after this many body bytes, for the first `cuts` responses.
    pub cut_after: Option<usize>,
    /// How many responses are cut.
    pub cuts: usize,
    /// Ignore `Range` and always answer 200 with the whole file.
    pub ignore_range: bool,
    /// Accept connections and read the request, but never answer.
    pub silent: bool,
}

/// A request the server saw.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Request path.
    pub path: String,
    /// Value of the `Range` header, if any.
    pub range: Option<String>,
}

/// A loopback HTTP server serving one file at `/<name>`; other paths get 404.
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Requests seen so far.
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    pub fn start(name: &str, data: Vec<u8>, behaviour: Behaviour) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let base = format!("http://{}", listener.local_addr().expect("local addr"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let data = Arc::new(data);
        let cuts_left = Arc::new(AtomicUsize::new(behaviour.cuts));
        let path = format!("/{name}");
        {
            let seen = Arc::clone(&seen);
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    let (seen, data, cuts_left, path, behaviour) = (
                        Arc::clone(&seen),
                        Arc::clone(&data),
                        Arc::clone(&cuts_left),
                        path.clone(),
                        behaviour.clone(),
                    );
                    std::thread::spawn(move || {
                        let _ = serve(stream, &seen, &data, &cuts_left, &path, &behaviour);
                    });
                }
            });
        }
        Server { base, seen }
    }

    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

fn serve(
    stream: TcpStream,
    seen: &Mutex<Vec<Seen>>,
    data: &[u8],
    cuts_left: &AtomicUsize,
    path: &str,
    behaviour: &Behaviour,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    let requested = request_line.split_whitespace().nth(1).unwrap_or("").to_string();
    seen.lock().expect("lock").push(Seen { path: requested.clone(), range: range.clone() });
    let mut out = stream;
    if behaviour.silent {
        std::thread::sleep(Duration::from_secs(30));
        return Ok(());
    }
    if requested != path {
        out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        return Ok(());
    }
    let start = match (&range, behaviour.ignore_range) {
        (Some(r), false) => r
            .strip_prefix("bytes=")
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|s| s.parse::<usize>().ok()),
        _ => None,
    };
    let body: &[u8] = match start {
        Some(s) if s >= data.len() => {
            let head = format!(
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                data.len()
            );
            out.write_all(head.as_bytes())?;
            return Ok(());
        }
        Some(s) => {
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {s}-{}/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                data.len() - 1,
                data.len(),
                data.len() - s
            );
            out.write_all(head.as_bytes())?;
            &data[s..]
        }
        None => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                data.len()
            );
            out.write_all(head.as_bytes())?;
            data
        }
    };
    let cut = behaviour.cut_after.filter(|_| {
        cuts_left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    });
    match cut {
        Some(n) => {
            out.write_all(&body[..n.min(body.len())])?;
            out.flush()?;
            out.shutdown(Shutdown::Both)?;
        }
        None => out.write_all(body)?,
    }
    Ok(())
}

/// Quiet, fast network settings for tests.
pub fn net(retries: u32) -> NetOptions {
    NetOptions {
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(2),
        retries,
        progress: false,
    }
}

/// Small synthetic cases.
pub fn synth_config() -> SynthConfig {
    SynthConfig::new(7, [24, 24, 24])
}

/// Writes `n` synthetic cases in `layout` under `root`.
pub fn write_cases(root: &Path, layout: DatasetLayout, n: usize) -> Vec<String> {
    write_dataset_as(root, n, &synth_config(), layout).expect("synthetic dataset").case_ids
}

/// An MSD-style folder `parent/Task01_BrainTumour` with `n` cases.
pub fn msd_folder(parent: &Path, n: usize) -> PathBuf {
    let root = parent.join("Task01_BrainTumour");
    write_cases(&root, DatasetLayout::Msd, n);
    root
}

/// Packs `dir` into a tar under the top folder `top`.
pub fn tar_dir(dir: &Path, top: &str) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.append_dir_all(top, dir).expect("tar");
    builder.into_inner().expect("finish tar")
}

/// Packs `dir` into a zip under the top folder `top`.
pub fn zip_dir(dir: &Path, top: &str) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    let mut stack = vec![(dir.to_path_buf(), top.to_string())];
    while let Some((path, name)) = stack.pop() {
        writer.add_directory(format!("{name}/"), options).expect("zip dir");
        let mut entries: Vec<_> = fs::read_dir(&path).expect("read_dir").flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let child = format!("{name}/{}", entry.file_name().to_string_lossy());
            if entry.path().is_dir() {
                stack.push((entry.path(), child));
            } else {
                writer.start_file(child, options).expect("zip file");
                let mut bytes = Vec::new();
                File::open(entry.path()).expect("open").read_to_end(&mut bytes).expect("read");
                writer.write_all(&bytes).expect("zip write");
            }
        }
    }
    writer.finish().expect("zip finish").into_inner()
}

pub fn md5_hex(bytes: &[u8]) -> String {
    Md5::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Names in `dir` (sorted), hidden ones included.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// Asserts that `dest` holds no dataset, staging or leftover folder (only `.downloads`,
/// which may keep a verified archive or a resumable `.part`).
pub fn assert_nothing_installed(dest: &Path) {
    let left: Vec<String> = listing(dest).into_iter().filter(|n| n != ".downloads").collect();
    assert!(left.is_empty(), "left behind in {}: {left:?}", dest.display());
}
