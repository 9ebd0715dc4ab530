//! `apr import SOURCE [-o OUT] [--quantization Q]`: bring a model onto this machine.
//!
//! SOURCE is `hf://ORG/REPO[/FILE]`, an `http(s)://` URL or a local path. Hub files land in the
//! shared Hugging Face cache (see `hub`) and are then copied to OUT; a URL on the hub's
//! `/resolve/` scheme is treated as the hub file it names.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use apr_core::file::MappedFile;
use apr_core::format::Format;

use crate::args::ImportArgs;
use crate::hub::{Hub, Pick, download};
use crate::output;

/// Where a model comes from.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Source {
    Hub {
        repo: String,
        revision: String,
        file: Option<String>,
    },
    Url(String),
    Local(PathBuf),
}

impl Source {
    pub(crate) fn parse(text: &str, endpoint: &str) -> Result<Self> {
        if let Some(rest) = text.strip_prefix("hf://") {
            let mut parts = rest.splitn(3, '/');
            let (Some(org), Some(name)) = (parts.next(), parts.next()) else {
                bail!("'{text}' is not of the form hf://ORG/REPO[/FILE]");
            };
            let file = parts.next().filter(|f| !f.is_empty());
            if org.is_empty() || name.is_empty() {
                bail!("'{text}' is not of the form hf://ORG/REPO[/FILE]");
            }
            return Ok(Self::Hub {
                repo: format!("{org}/{name}"),
                revision: "main".to_string(),
                file: file.map(str::to_string),
            });
        }
        if text.starts_with("https://") || text.starts_with("http://") {
            // {endpoint}/ORG/REPO/resolve/REVISION/FILE
            let hub_path = text
                .strip_prefix(endpoint)
                .and_then(|p| p.strip_prefix('/'));
            if let Some(path) = hub_path {
                let path = path.split(['?', '#']).next().unwrap_or(path);
                let segments: Vec<&str> = path.splitn(5, '/').collect();
                if let [org, name, "resolve", revision, file] = segments.as_slice() {
                    return Ok(Self::Hub {
                        repo: format!("{org}/{name}"),
                        revision: (*revision).to_string(),
                        file: Some((*file).to_string()),
                    });
                }
            }
            return Ok(Self::Url(text.to_string()));
        }
        Ok(Self::Local(PathBuf::from(text)))
    }
}

pub(crate) fn run(args: ImportArgs) -> Result<()> {
    let hub = Hub::from_env();
    let source = Source::parse(&args.source, hub.endpoint())?;
    let quantization = args.quantization.as_deref();
    if quantization.is_some() && !matches!(source, Source::Hub { file: None, .. }) {
        bail!(
            "--quantization picks a file from a hub repo; '{}' already names one file",
            args.source
        );
    }
    let result = match source {
        Source::Hub {
            repo,
            revision,
            file,
        } => {
            let pick = match (file.as_deref(), quantization) {
                (Some(file), _) => Pick::File(file),
                (None, Some(quant)) => Pick::Quantization(quant),
                (None, None) => Pick::OnlyGguf,
            };
            let fetched = hub.fetch(&repo, &revision, pick)?;
            if fetched.from_cache {
                eprintln!("apr: using the cached {}", fetched.path.display());
            }
            match &args.output {
                Some(out) => {
                    place(&fetched.path, out)?;
                    out.clone()
                }
                None => fetched.path,
            }
        }
        Source::Url(url) => {
            let out = match &args.output {
                Some(out) => out.clone(),
                None => PathBuf::from(file_name_of(&url)?),
            };
            let part = out.with_file_name(format!(
                "{}.incomplete",
                out.file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default()
            ));
            let label = out
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            // No HF_TOKEN here: the hub's token must not travel to other hosts.
            let http = download::Http::new(None);
            let sha256 = download::fetch(&http, &url, &part, &out, &Default::default(), &label)?;
            eprintln!("apr: sha256 {sha256}");
            out
        }
        Source::Local(path) => {
            let Some(out) = &args.output else {
                bail!("importing the local file {} needs -o OUT", path.display());
            };
            check_model(&path)?;
            place(&path, out)?;
            out.clone()
        }
    };
    output::print(&format!("{}\n", result.display()))?;
    Ok(())
}

fn file_name_of(url: &str) -> Result<String> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    match path.rsplit('/').next() {
        Some(name) if !name.is_empty() && !path.ends_with("//") => Ok(name.to_string()),
        _ => bail!("cannot name a file after {url}; give -o OUT"),
    }
}

/// Refuses a local file that is not a readable model.
fn check_model(path: &Path) -> Result<()> {
    let file = MappedFile::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let format = file.format().with_context(|| path.display().to_string())?;
    if format == Format::Gguf {
        file.gguf().with_context(|| path.display().to_string())?;
    }
    Ok(())
}

/// Copies `src` to `out` atomically (a temporary file beside `out`, then a rename). Nothing
/// happens when they are already the same file.
fn place(src: &Path, out: &Path) -> Result<()> {
    if let (Ok(a), Ok(b)) = (fs::canonicalize(src), fs::canonicalize(out))
        && a == b
    {
        return Ok(());
    }
    let mut tmp = crate::atomic::temp_beside(out)?;
    let mut input =
        fs::File::open(src).with_context(|| format!("cannot open {}", src.display()))?;
    std::io::copy(&mut input, tmp.as_file_mut())
        .with_context(|| format!("cannot copy {} to {}", src.display(), out.display()))?;
    crate::atomic::commit(tmp, out, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse() {
        let ep = "https://huggingface.co";
        assert_eq!(
            Source::parse("hf://Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF", ep).unwrap(),
            Source::Hub {
                repo: "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF".into(),
                revision: "main".into(),
                file: None
            }
        );
        assert_eq!(
            Source::parse("hf://org/repo/sub/dir/m.gguf", ep).unwrap(),
            Source::Hub {
                repo: "org/repo".into(),
                revision: "main".into(),
                file: Some("sub/dir/m.gguf".into())
            }
        );
        assert_eq!(
            Source::parse(
                "https://huggingface.co/org/repo/resolve/abc123/m.gguf?download=true",
                ep
            )
            .unwrap(),
            Source::Hub {
                repo: "org/repo".into(),
                revision: "abc123".into(),
                file: Some("m.gguf".into())
            }
        );
        assert_eq!(
            Source::parse("https://example.com/m.gguf", ep).unwrap(),
            Source::Url("https://example.com/m.gguf".into())
        );
        assert_eq!(
            Source::parse("models/m.gguf", ep).unwrap(),
            Source::Local("models/m.gguf".into())
        );
        assert!(Source::parse("hf://org", ep).is_err());
        assert!(Source::parse("hf:///repo", ep).is_err());
    }
}
