//! Fetching files from the Hugging Face hub (or anything that serves its URL scheme) into the
//! shared cache ([`cache`]), with resumable, verified downloads ([`download`]).
//!
//! The hub API used:
//! - `GET {endpoint}/api/models/{repo}/revision/{rev}?blobs=true`: the commit and the file list,
//!   with each file's size and, for LFS files, its sha256;
//! - `GET {endpoint}/{repo}/resolve/{commit}/{file}`: the file, honouring `Range`.

pub(crate) mod cache;
pub(crate) mod download;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;

use self::cache::RepoCache;
use self::download::{Expected, HttpError};

/// The endpoint used when `HF_ENDPOINT` is not set.
pub(crate) const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// The project's default model; its cache can be filled without the hub (see the README).
const DEFAULT_REPO: &str = "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF";

/// A client for one hub endpoint and one cache.
#[derive(Debug)]
pub(crate) struct Hub {
    endpoint: String,
    cache_root: PathBuf,
    offline: bool,
    http: download::Http,
}

/// Which file of a repo to fetch.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Pick<'a> {
    /// This exact path in the repo.
    File(&'a str),
    /// The GGUF whose name ends in this quantization (`q4_k_m` matches `*-q4_k_m.gguf`).
    Quantization(&'a str),
    /// The only GGUF in the repo.
    OnlyGguf,
}

/// A file now in the cache.
#[derive(Debug)]
pub(crate) struct Fetched {
    /// `snapshots/<commit>/<file>`, a link to the blob.
    pub(crate) path: PathBuf,
    /// Whether it came from the cache without contacting the hub.
    pub(crate) from_cache: bool,
}

#[derive(Debug, Deserialize)]
struct RepoInfo {
    sha: String,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

#[derive(Debug, Deserialize)]
struct Sibling {
    rfilename: String,
    size: Option<u64>,
    #[serde(rename = "blobId")]
    blob_id: Option<String>,
    lfs: Option<Lfs>,
}

#[derive(Debug, Deserialize)]
struct Lfs {
    sha256: String,
    size: u64,
}

impl Sibling {
    /// The cache's name for the file's contents, and what the download must match: for LFS files
    /// the sha256 and size, otherwise the git blob id and the size.
    fn blob(&self) -> Result<(String, Expected)> {
        let (etag, expected) = match (&self.lfs, &self.blob_id) {
            (Some(lfs), _) => {
                let sha256 = lfs.sha256.to_ascii_lowercase();
                let expected = Expected {
                    size: Some(lfs.size),
                    sha256: Some(sha256.clone()),
                };
                (sha256, expected)
            }
            (None, Some(blob)) => (
                blob.clone(),
                Expected {
                    size: self.size,
                    sha256: None,
                },
            ),
            (None, None) => bail!("the hub listed no blob id or sha256"),
        };
        if etag.len() < 40 || !etag.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("the hub gave '{etag}' as the blob id; expected a hex digest");
        }
        Ok((etag, expected))
    }
}

impl Hub {
    /// A client configured from `HF_ENDPOINT`, the cache variables, `HF_HUB_OFFLINE` and
    /// `HF_TOKEN`.
    pub(crate) fn from_env() -> Self {
        let env = |name| std::env::var(name).ok().filter(|v| !v.is_empty());
        let endpoint = env("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let offline = env("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "on" | "yes" | "true")
        });
        Self {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            cache_root: cache::cache_root(),
            offline,
            http: download::Http::new(env("HF_TOKEN")),
        }
    }

    /// The endpoint in use.
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Makes one file of `repo` at `revision` available in the cache and returns where it is.
    pub(crate) fn fetch(&self, repo: &str, revision: &str, pick: Pick<'_>) -> Result<Fetched> {
        // Every name below becomes part of a path in the cache: none may climb out of it.
        for part in repo.split('/') {
            check_component("repository name", part)?;
        }
        check_component("revision", revision)?;
        if let Pick::File(file) = pick {
            check_repo_path(file)?;
        }
        let cache = RepoCache::new(&self.cache_root, repo);
        if self.offline {
            return self
                .cached(&cache, repo, revision, pick)
                .map_err(|missing| {
                    anyhow!(
                        "HF_HUB_OFFLINE is set, and {missing:#}{}",
                        self.fill_hint(repo)
                    )
                });
        }
        let info = match self.repo_info(repo, revision) {
            Ok(info) => info,
            Err(HttpError::Unreachable(cause)) => {
                return self
                    .cached(&cache, repo, revision, pick)
                    .map_err(|missing| {
                        anyhow!(
                            "cannot reach the hub at {} ({cause}), and {missing:#}{}",
                            self.endpoint,
                            self.fill_hint(repo)
                        )
                    });
            }
            Err(HttpError::Status(404)) => bail!(
                "repository {repo} (revision {revision}) was not found at {} (HTTP 404); check the \
                 name, or set HF_TOKEN for a private or gated repo",
                self.endpoint
            ),
            Err(HttpError::Status(code @ (401 | 403))) => bail!(
                "the hub refused access to {repo} (HTTP {code}); set HF_TOKEN to a token that can read it"
            ),
            Err(other) => return Err(other).context(format!("cannot list {repo}")),
        };

        let names: Vec<String> = info.siblings.iter().map(|s| s.rfilename.clone()).collect();
        check_component("commit id from the hub", &info.sha)?;
        let file = pick_file(&names, pick).with_context(|| format!("in {repo}"))?;
        check_repo_path(&file)?;
        let sibling = info
            .siblings
            .iter()
            .find(|s| s.rfilename == file)
            .ok_or_else(|| anyhow!("{file} vanished from the listing of {repo}"))?;
        let (etag, expected) = sibling
            .blob()
            .with_context(|| format!("{file} in {repo}"))?;
        let blob = cache.blob(&etag);
        if !blob.is_file() {
            let url = format!(
                "{}/{repo}/resolve/{}/{}",
                self.endpoint,
                info.sha,
                encode_path(&file)
            );
            let size = expected
                .size
                .map(|n| format!(" ({n} bytes)"))
                .unwrap_or_default();
            eprintln!("apr: downloading {file}{size} from {repo}");
            download::fetch_locked(
                &self.http,
                &url,
                &cache.incomplete(&etag),
                &cache.lock_file(&etag),
                &blob,
                &expected,
                &file,
            )?;
        }
        let path = cache.link(&info.sha, &file, &etag)?;
        if revision != info.sha {
            cache.write_ref(revision, &info.sha)?;
        }
        Ok(Fetched {
            path,
            from_cache: false,
        })
    }

    fn repo_info(&self, repo: &str, revision: &str) -> Result<RepoInfo, HttpError> {
        let url = format!(
            "{}/api/models/{repo}/revision/{revision}?blobs=true",
            self.endpoint
        );
        self.http.get_json(&url)
    }

    /// The cached file for `pick`, or a sentence saying why there is none.
    fn cached(
        &self,
        cache: &RepoCache,
        repo: &str,
        revision: &str,
        pick: Pick<'_>,
    ) -> Result<Fetched> {
        let commit = cache
            .read_ref(revision)
            .or_else(|| {
                cache
                    .snapshot(revision)
                    .is_dir()
                    .then(|| revision.to_string())
            })
            .ok_or_else(|| {
                anyhow!(
                    "{repo} (revision {revision}) is not in the cache at {}",
                    cache.dir().display()
                )
            })?;
        let files = cache.snapshot_files(&commit);
        let file = pick_file(&files, pick).with_context(|| {
            format!(
                "in the cached snapshot {}",
                cache.snapshot(&commit).display()
            )
        })?;
        Ok(Fetched {
            path: cache.snapshot(&commit).join(file),
            from_cache: true,
        })
    }

    /// The error it follows has named the cache's folder already.
    fn fill_hint(&self, repo: &str) -> String {
        let mut hint = format!(
            ". To fill the cache, run this import where {} is reachable (or point HF_ENDPOINT at \
             a mirror)",
            self.endpoint
        );
        if repo == DEFAULT_REPO {
            hint.push_str(
                ", or run scripts/fetch_model.py, which needs only the Python package index",
            );
        }
        hint
    }
}

/// Accepts one path component: letters, digits, `-`, `_`, `.`, but not `.` or `..` alone.
fn check_component(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        bail!("'{name}' is not a valid {what}");
    }
    Ok(())
}

/// Accepts a relative path inside a repo: `/`-separated, no empty, `.` or `..` segments.
fn check_repo_path(path: &str) -> Result<()> {
    let ok = !path.contains('\\')
        && path
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
    if !ok {
        bail!("'{path}' is not a valid file path inside a repository");
    }
    Ok(())
}

/// Percent-encodes a repo path for a URL, keeping `/` and the unreserved characters.
fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Chooses a file from a repo listing.
fn pick_file(files: &[String], pick: Pick<'_>) -> Result<String> {
    let ggufs: Vec<&String> = files
        .iter()
        .filter(|f| f.to_ascii_lowercase().ends_with(".gguf"))
        .collect();
    let available = || {
        if ggufs.is_empty() {
            "it has no GGUF files".to_string()
        } else {
            let quants: Vec<String> = ggufs.iter().map(|f| quantization_of(f)).collect();
            format!(
                "its GGUF files are {} ({})",
                quants.join(", "),
                join_names(&ggufs)
            )
        }
    };
    match pick {
        Pick::File(name) => files
            .iter()
            .find(|f| *f == name)
            .cloned()
            .ok_or_else(|| anyhow!("there is no file {name}; {}", available())),
        Pick::Quantization(quant) => {
            let suffix = format!("{}.gguf", quant.to_ascii_lowercase());
            let matches: Vec<&String> = ggufs
                .iter()
                .copied()
                .filter(|f| {
                    let lower = f.to_ascii_lowercase();
                    lower
                        .strip_suffix(&suffix)
                        .is_some_and(|stem| stem.is_empty() || stem.ends_with(['-', '.', '_', '/']))
                })
                .collect();
            match matches.as_slice() {
                [one] => Ok((*one).clone()),
                [] => bail!("no GGUF file matches quantization {quant}; {}", available()),
                many => bail!(
                    "quantization {quant} matches {} files: {}",
                    many.len(),
                    join_names(many)
                ),
            }
        }
        Pick::OnlyGguf => match ggufs.as_slice() {
            [one] => Ok((*one).clone()),
            [] => bail!("it has no GGUF files; name a file with hf://ORG/REPO/FILE"),
            _ => bail!(
                "choose one with --quantization or hf://ORG/REPO/FILE: {}",
                available()
            ),
        },
    }
}

/// `qwen2.5-coder-0.5b-instruct-q4_k_m.gguf` → `Q4_K_M`.
fn quantization_of(file: &str) -> String {
    let stem = file.rsplit('/').next().unwrap_or(file);
    let stem = stem.get(..stem.len().saturating_sub(5)).unwrap_or(stem);
    stem.rsplit(['-', '.'])
        .next()
        .unwrap_or(stem)
        .to_ascii_uppercase()
}

fn join_names(names: &[&String]) -> String {
    names
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// How long to wait between retries of a broken transfer.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250 * u64::from(attempt.min(8)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing() -> Vec<String> {
        [
            "README.md",
            "qwen2.5-coder-0.5b-instruct-q4_0.gguf",
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            "qwen2.5-coder-0.5b-instruct-iq4_k_m.gguf",
            "Model.Q8_0.gguf",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn quantization_matches_case_insensitively_at_a_separator() {
        let files = listing();
        assert_eq!(
            pick_file(&files, Pick::Quantization("Q4_K_M")).unwrap(),
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
        );
        assert_eq!(
            pick_file(&files, Pick::Quantization("q8_0")).unwrap(),
            "Model.Q8_0.gguf"
        );
        let err = pick_file(&files, Pick::Quantization("q5_k_m"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no GGUF file matches quantization q5_k_m"),
            "{err}"
        );
        assert!(err.contains("Q4_0, Q4_K_M, IQ4_K_M, Q8_0"), "{err}");
    }

    #[test]
    fn names_that_would_leave_the_cache_are_refused() {
        for bad in ["..", ".", "", "a/b", "a\\b", "x y"] {
            assert!(check_component("revision", bad).is_err(), "{bad:?}");
        }
        check_component("revision", "apr-wheels-0.9.0").unwrap();
        for bad in [
            "../x.gguf",
            "a/../../x",
            "/etc/passwd",
            "a//b",
            "a\\..\\b",
            ".",
        ] {
            assert!(check_repo_path(bad).is_err(), "{bad:?}");
        }
        check_repo_path("sub/dir/model-q4_k_m.gguf").unwrap();
    }

    #[test]
    fn paths_are_percent_encoded_for_urls() {
        assert_eq!(encode_path("sub/m-q4_k_m.gguf"), "sub/m-q4_k_m.gguf");
        assert_eq!(encode_path("my model #1.gguf"), "my%20model%20%231.gguf");
    }

    #[test]
    fn a_repo_with_several_ggufs_needs_a_choice() {
        let err = pick_file(&listing(), Pick::OnlyGguf)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--quantization"), "{err}");
        let one = vec!["a.gguf".to_string(), "README.md".to_string()];
        assert_eq!(pick_file(&one, Pick::OnlyGguf).unwrap(), "a.gguf");
    }
}
