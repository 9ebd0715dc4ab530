//! Resumable, verified HTTP downloads.
//!
//! A download streams into `<dest>.incomplete`. After an interruption, in this run or an earlier
//! one, it continues from that file's length with a `Range` request; a server that ignores the
//! range answers 200 and the file starts over. When the transfer is complete its size and sha256
//! are checked, and only then is it renamed into place. A mismatch deletes the partial file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

/// Retries of a transfer that breaks off, before giving up.
const MAX_RETRIES: u32 = 5;
/// The largest JSON answer accepted from the hub.
const MAX_JSON_BYTES: u64 = 64 << 20;

/// What a finished download must match.
#[derive(Debug, Clone, Default)]
pub(crate) struct Expected {
    /// Exact size in bytes.
    pub(crate) size: Option<u64>,
    /// Lower-case hex sha256.
    pub(crate) sha256: Option<String>,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    /// No answer: DNS, refused or reset connection, TLS, timeout, or a 5xx from the server.
    #[error("{0}")]
    Unreachable(String),
    /// An HTTP error status.
    #[error("HTTP {0}")]
    Status(u16),
    /// An answer that could not be understood.
    #[error("{0}")]
    Invalid(String),
}

/// A small HTTP client.
#[derive(Debug)]
pub(crate) struct Http {
    agent: ureq::Agent,
    token: Option<String>,
}

impl Http {
    pub(crate) fn new(token: Option<String>) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .user_agent(concat!("apr/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Self { agent, token }
    }

    fn get(
        &self,
        url: &str,
        range_from: u64,
    ) -> Result<ureq::http::Response<ureq::Body>, HttpError> {
        let mut request = self.agent.get(url);
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        if range_from > 0 {
            request = request.header("Range", format!("bytes={range_from}-"));
        }
        let response = request.call().map_err(|e| match e {
            ureq::Error::BadUri(_) | ureq::Error::Http(_) => HttpError::Invalid(e.to_string()),
            other => HttpError::Unreachable(other.to_string()),
        })?;
        match response.status().as_u16() {
            200..=299 => Ok(response),
            code @ 500..=599 => Err(HttpError::Unreachable(format!("HTTP {code}"))),
            code => Err(HttpError::Status(code)),
        }
    }

    /// GETs and parses a JSON document.
    pub(crate) fn get_json<T: DeserializeOwned>(&self, url: &str) -> Result<T, HttpError> {
        let mut response = self.get(url, 0)?;
        let reader = response
            .body_mut()
            .with_config()
            .limit(MAX_JSON_BYTES)
            .reader();
        serde_json::from_reader(reader)
            .map_err(|e| HttpError::Invalid(format!("unreadable answer from {url}: {e}")))
    }
}

/// Downloads `url` to `dest` under an exclusive lock on `lock`, through `part`, verifying
/// `expected`. Another process downloading the same blob is waited for.
pub(crate) fn fetch_locked(
    http: &Http,
    url: &str,
    part: &Path,
    lock: &Path,
    dest: &Path,
    expected: &Expected,
    label: &str,
) -> Result<()> {
    if let Some(dir) = lock.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let lock_file =
        File::create(lock).with_context(|| format!("cannot create the lock {}", lock.display()))?;
    lock_file
        .lock()
        .with_context(|| format!("cannot lock {}", lock.display()))?;
    // The holder of the lock before us may have finished the job.
    if dest.is_file() {
        return Ok(());
    }
    fetch(http, url, part, dest, expected, label)?;
    Ok(())
}

/// Downloads `url` to `dest` through `part` (resuming it if present) and returns the sha256.
pub(crate) fn fetch(
    http: &Http,
    url: &str,
    part: &Path,
    dest: &Path,
    expected: &Expected,
    label: &str,
) -> Result<String> {
    if let Some(dir) = part.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    transfer(http, url, part, expected.size, label)?;
    let sha256 = sha256_file(part)?;
    if let Some(want) = &expected.sha256
        && *want != sha256
    {
        remove(part);
        bail!(
            "checksum mismatch for {url}: expected sha256 {want}, got {sha256}; the download \
                 was discarded"
        );
    }
    fs::rename(part, dest)
        .with_context(|| format!("cannot move {} to {}", part.display(), dest.display()))?;
    Ok(sha256)
}

/// Fills `part` with the whole body of `url`, resuming and retrying as needed.
fn transfer(http: &Http, url: &str, part: &Path, size: Option<u64>, label: &str) -> Result<()> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(part)
        .with_context(|| format!("cannot open {}", part.display()))?;
    let mut have = file.seek(SeekFrom::End(0))?;
    let mut size = size;
    if size.is_some_and(|s| have > s) {
        have = restart(&mut file)?;
    }
    let progress = Progress::new(label, size, have);
    let mut attempt = 0;
    loop {
        if size == Some(have) {
            break;
        }
        match receive(http, url, &mut file, &mut have, &mut size, &progress) {
            Ok(()) if size.is_none_or(|s| s == have) => break,
            Ok(()) => {
                let expected = size.unwrap_or_default();
                if have > expected {
                    remove(part);
                    bail!(
                        "{url} sent {have} bytes, {expected} were expected; the download was discarded"
                    );
                }
                retry_or_fail(
                    &mut attempt,
                    url,
                    part,
                    &anyhow!("the connection closed after {have} of {expected} bytes"),
                )?;
            }
            Err(Transfer::Fatal(err)) => return Err(err),
            Err(Transfer::Retry(err)) => retry_or_fail(&mut attempt, url, part, &err)?,
        }
    }
    file.sync_all()?;
    progress.finish();
    Ok(())
}

/// How a single request of a transfer ended badly.
enum Transfer {
    /// Worth another request from where we are.
    Retry(anyhow::Error),
    /// Not.
    Fatal(anyhow::Error),
}

fn retry_or_fail(attempt: &mut u32, url: &str, part: &Path, err: &anyhow::Error) -> Result<()> {
    *attempt += 1;
    if *attempt > MAX_RETRIES {
        bail!(
            "downloading {url} failed after {MAX_RETRIES} retries: {err:#}; run the command again to \
             resume from the {} bytes kept in {}",
            fs::metadata(part).map(|m| m.len()).unwrap_or(0),
            part.display()
        );
    }
    eprintln!("apr: transfer interrupted ({err:#}); resuming (retry {attempt} of {MAX_RETRIES})");
    std::thread::sleep(super::backoff(*attempt));
    Ok(())
}

/// One request: appends what arrives to `file`.
fn receive(
    http: &Http,
    url: &str,
    file: &mut File,
    have: &mut u64,
    size: &mut Option<u64>,
    progress: &Progress,
) -> Result<(), Transfer> {
    let mut response = match http.get(url, *have) {
        Ok(r) => r,
        Err(HttpError::Unreachable(cause)) => return Err(Transfer::Retry(anyhow!(cause))),
        Err(HttpError::Status(416)) if size.is_none() => {
            // Nothing past what we have: the file is complete.
            *size = Some(*have);
            return Ok(());
        }
        Err(HttpError::Status(code)) => {
            return Err(Transfer::Fatal(anyhow!(
                "downloading {url} failed: HTTP {code}"
            )));
        }
        Err(other) => {
            return Err(Transfer::Fatal(anyhow!(
                "downloading {url} failed: {other}"
            )));
        }
    };
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let fatal = |e: io::Error| Transfer::Fatal(anyhow!(e).context("cannot write the download"));
    if response.status().as_u16() == 206 {
        // `bytes START-END/TOTAL`
        let range = header("content-range").unwrap_or_default();
        let parsed = range
            .strip_prefix("bytes ")
            .and_then(|r| r.split_once('/'))
            .and_then(|(span, total)| {
                let start = span.split('-').next()?.parse::<u64>().ok()?;
                Some((start, total.parse::<u64>().ok()))
            });
        match parsed {
            Some((start, total)) if start == *have => {
                if size.is_none() {
                    *size = total;
                }
            }
            _ => {
                return Err(Transfer::Fatal(anyhow!(
                    "{url} answered a request for bytes {have}- with Content-Range '{range}'"
                )));
            }
        }
    } else {
        // A full answer: start over.
        if *have > 0 {
            *have = restart(file).map_err(fatal)?;
            progress.set(0);
        }
        if size.is_none() {
            *size = header("content-length").and_then(|v| v.parse().ok());
        }
    }
    if let Some(total) = *size {
        progress.set_length(total);
    }
    let mut body = response.body_mut().with_config().reader();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Transfer::Retry(anyhow!(e))),
        };
        file.write_all(&buf[..n]).map_err(fatal)?;
        *have += n as u64;
        progress.set(*have);
    }
}

fn restart(file: &mut File) -> io::Result<u64> {
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))
}

fn remove(path: &Path) {
    let _ = fs::remove_file(path);
}

/// The lower-case hex sha256 of a file.
pub(crate) fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// A progress bar on stderr when it is a terminal, nothing otherwise.
struct Progress(Option<ProgressBar>);

impl Progress {
    fn new(label: &str, size: Option<u64>, have: u64) -> Self {
        if !io::stderr().is_terminal() {
            return Self(None);
        }
        let bar = size.map_or_else(ProgressBar::no_length, ProgressBar::new);
        let template = "{msg} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} {eta}";
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(label.to_string());
        bar.set_position(have);
        Self(Some(bar))
    }

    fn set(&self, position: u64) {
        if let Some(bar) = &self.0 {
            bar.set_position(position);
        }
    }

    fn set_length(&self, total: u64) {
        if let Some(bar) = &self.0 {
            bar.set_length(total);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
