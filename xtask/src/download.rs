//! Resumable HTTP(S) download with MD5 verification.
//!
//! The bytes go to `<file>.part`; a later run continues it with an HTTP `Range` request (a
//! server that ignores the range answers 200 and the download restarts from zero). Only a
//! `.part` whose MD5 matches is renamed to its final name, so the final name always means
//! "complete and verified". A connection that drops mid-body is resumed a few times within
//! the same run. Connecting has a short timeout so an offline machine fails within seconds.

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use md5::{Digest, Md5};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::manifest::hex;

/// Network settings of a download.
#[derive(Debug, Clone)]
pub struct NetOptions {
    /// Limit for resolving the host and opening the connection.
    pub connect_timeout: Duration,
    /// Limit for the response headers, and for each read of the body (a stalled transfer).
    pub read_timeout: Duration,
    /// How many times a transfer that broke off is resumed within one run.
    pub retries: u32,
    /// Draw a progress bar (on a terminal only).
    pub progress: bool,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions {
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(60),
            retries: 3,
            progress: true,
        }
    }
}

/// The `.part` file that holds an unfinished download of `file`.
pub fn part_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

/// Downloads `url` to `file` and checks its MD5 (lowercase hex) before the final rename.
///
/// If `file` already exists it is only re-hashed. An unfinished `<file>.part` is resumed.
/// On a checksum mismatch the `.part` is deleted (resuming it could never succeed).
///
/// # Errors
/// Unreachable host or timeouts (with a hint for offline machines), HTTP errors, a checksum
/// mismatch, or a local I/O error; each names the URL or file.
pub fn download(url: &str, file: &Path, md5: &str, net: &NetOptions) -> Result<()> {
    let md5 = md5.to_ascii_lowercase();
    if file.is_file() {
        let actual = crate::manifest::md5_file(file)?;
        if actual == md5 {
            tracing::info!(file = %file.display(), "archive already downloaded and verified");
            return Ok(());
        }
        tracing::warn!(file = %file.display(), expected = %md5, %actual, "existing archive has the wrong MD5; downloading again");
        fs::remove_file(file).with_context(|| format!("removing {}", file.display()))?;
    }
    if let Some(dir) = file.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let part = part_path(file);
    let agent = agent(net);
    let mut attempt = 0;
    let digest = loop {
        match transfer(&agent, url, &part, net) {
            Ok(digest) => break digest,
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Interrupted(e)) if attempt < net.retries => {
                attempt += 1;
                tracing::warn!(error = %format!("{e:#}"), attempt, "transfer interrupted; resuming");
                std::thread::sleep(Duration::from_millis(500 * u64::from(attempt)));
            }
            Err(Failure::Interrupted(e)) => {
                return Err(e.context(format!(
                    "the download stopped; run the command again to resume from {}",
                    part.display()
                )))
            }
        }
    };
    if digest != md5 {
        let _ = fs::remove_file(&part);
        bail!(
            "MD5 mismatch for {url}: expected {md5}, got {digest}. The download was deleted and nothing was \
             unpacked. If a mirror serves a different archive on purpose, pass its checksum with --md5."
        );
    }
    fs::rename(&part, file)
        .with_context(|| format!("renaming {} to {}", part.display(), file.display()))?;
    tracing::info!(file = %file.display(), "download complete, MD5 verified");
    Ok(())
}

/// Whether a failed attempt is worth resuming.
enum Failure {
    /// The connection broke off after the transfer began: resume.
    Interrupted(anyhow::Error),
    /// Anything else (refused, timeouts before the body, HTTP errors, local I/O): stop.
    Fatal(anyhow::Error),
}

fn agent(net: &NetOptions) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_resolve(Some(net.connect_timeout))
        .timeout_connect(Some(net.connect_timeout))
        .timeout_send_request(Some(net.read_timeout))
        .timeout_recv_response(Some(net.read_timeout))
        .timeout_per_read(Some(net.read_timeout))
        .http_status_as_error(false)
        .user_agent(concat!("mgsd-xtask/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

/// One request: continues `part` from its current length and returns the MD5 of the whole
/// file once the body is complete.
fn transfer(
    agent: &ureq::Agent,
    url: &str,
    part: &Path,
    net: &NetOptions,
) -> Result<String, Failure> {
    let fatal = |e: anyhow::Error| Failure::Fatal(e);
    let have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let mut request = agent.get(url).header("Accept-Encoding", "identity");
    if have > 0 {
        request = request.header("Range", format!("bytes={have}-"));
    }
    let response = request.call().map_err(|e| fatal(explain(url, e, net)))?;
    let status = response.status().as_u16();
    let header =
        |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (start, total) = match status {
        206 => {
            let range = header("content-range").unwrap_or_default();
            let (start, total) = parse_content_range(&range).ok_or_else(|| {
                fatal(anyhow::anyhow!("{url}: unusable Content-Range '{range}' in a 206 answer"))
            })?;
            if start != have {
                return Err(fatal(anyhow::anyhow!(
                    "{url}: asked to resume at byte {have}, the server answered from byte {start}"
                )));
            }
            (start, total)
        }
        200 => {
            if have > 0 {
                tracing::info!("server does not resume downloads; starting over");
            }
            (0, header("content-length").and_then(|v| v.parse().ok()))
        }
        416 if have > 0 => {
            // Nothing left to send: the part may be complete already; its MD5 decides.
            let total = header("content-range")
                .and_then(|r| r.rsplit('/').next().and_then(|t| t.parse::<u64>().ok()));
            if total == Some(have) {
                tracing::info!("download already complete");
                return crate::manifest::md5_file(part).map_err(fatal);
            }
            let _ = fs::remove_file(part);
            return Err(Failure::Interrupted(anyhow::anyhow!(
                "{url}: the server cannot resume at byte {have}; the partial file was removed"
            )));
        }
        _ => {
            return Err(fatal(anyhow::anyhow!(
                "{url}: HTTP {status} {}",
                response.status().canonical_reason().unwrap_or("")
            )))
        }
    };

    let mut out = OpenOptions::new()
        .create(true)
        .write(true)
        .read(true)
        .truncate(false)
        .open(part)
        .with_context(|| format!("opening {}", part.display()))
        .map_err(fatal)?;
    let mut hasher = Md5::new();
    if start > 0 {
        tracing::info!(bytes = start, "resuming download");
        hash_prefix(&mut out, start, &mut hasher)
            .with_context(|| format!("reading {}", part.display()))
            .map_err(fatal)?;
    } else {
        out.set_len(0).with_context(|| format!("truncating {}", part.display())).map_err(fatal)?;
    }
    out.seek(SeekFrom::Start(start))
        .with_context(|| format!("seeking in {}", part.display()))
        .map_err(fatal)?;

    let bar = progress_bar(net.progress, total, start);
    let mut body = response.into_body().into_reader();
    let mut buf = vec![0u8; 1 << 20];
    let mut received = start;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                bar.abandon();
                let _ = out.sync_all();
                return Err(Failure::Interrupted(
                    anyhow::Error::new(e)
                        .context(format!("{url}: connection lost after {received} bytes")),
                ));
            }
        };
        out.write_all(&buf[..n])
            .with_context(|| format!("writing {}", part.display()))
            .map_err(fatal)?;
        hasher.update(&buf[..n]);
        received += n as u64;
        bar.set_position(received);
    }
    bar.finish_and_clear();
    out.sync_all().with_context(|| format!("syncing {}", part.display())).map_err(fatal)?;
    if let Some(total) = total {
        if received != total {
            return Err(Failure::Interrupted(anyhow::anyhow!(
                "{url}: the connection closed after {received} of {total} bytes"
            )));
        }
    }
    Ok(hex(&hasher.finalize()))
}

fn hash_prefix(file: &mut File, len: u64, hasher: &mut Md5) -> io::Result<()> {
    file.seek(SeekFrom::Start(0))?;
    let mut limited = file.take(len);
    let mut buf = vec![0u8; 1 << 20];
    let mut seen = 0u64;
    loop {
        let n = limited.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        seen += n as u64;
    }
    if seen != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "partial file shrank while resuming",
        ));
    }
    Ok(())
}

fn progress_bar(enabled: bool, total: Option<u64>, start: u64) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(t) => ProgressBar::new(t),
        None => ProgressBar::no_length(),
    };
    let style = ProgressStyle::with_template(
        "{spinner} {bytes}/{total_bytes} [{wide_bar}] {bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_position(start);
    bar
}

/// `bytes START-END/TOTAL` → `(START, Some(TOTAL))` (`*` total → `None`).
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let total = if total.trim() == "*" { None } else { Some(total.trim().parse().ok()?) };
    Some((start.trim().parse().ok()?, total))
}

/// Turns a ureq error into a message a user can act on.
fn explain(url: &str, error: ureq::Error, net: &NetOptions) -> anyhow::Error {
    let offline_hint =
        "Is this machine offline or behind a firewall? Download the archive elsewhere and \
                        import it with `cargo xtask fetch-brats --from PATH`.";
    let reason = match &error {
        ureq::Error::HostNotFound => "cannot resolve the host name".to_string(),
        ureq::Error::ConnectionFailed => "cannot connect".to_string(),
        ureq::Error::Timeout(what) => {
            format!(
                "timed out ({what}; limits: connect {:?}, reads {:?})",
                net.connect_timeout, net.read_timeout
            )
        }
        ureq::Error::Io(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            "connection refused".to_string()
        }
        ureq::Error::Io(e) if e.kind() == io::ErrorKind::TimedOut => {
            format!("timed out (limit {:?})", net.connect_timeout)
        }
        ureq::Error::Io(e) => format!("network error: {e}"),
        ureq::Error::BadUri(u) => return anyhow::anyhow!("{url}: not a valid URL ({u})"),
        other => format!("{other}"),
    };
    anyhow::anyhow!("cannot download {url}: {reason}. {offline_hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parses() {
        assert_eq!(parse_content_range("bytes 10-99/100"), Some((10, Some(100))));
        assert_eq!(parse_content_range("bytes 0-9/*"), Some((0, None)));
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
        assert_eq!(parse_content_range("bytes x-2/3"), None);
    }

    #[test]
    fn part_path_appends_suffix() {
        assert_eq!(part_path(Path::new("/a/b.tar")), PathBuf::from("/a/b.tar.part"));
    }
}
