//! Helpers shared by the CLI's integration tests: running `apr` in an isolated environment, and
//! finding the real model.
#![allow(dead_code)]

pub mod fake_hub;
pub mod http;

use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use sha2::{Digest, Sha256};

pub const REAL_MODEL_REPO: &str = "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF";
pub const REAL_MODEL_FILE: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
pub const REAL_MODEL_SIZE: u64 = 491_400_064;
pub const REAL_MODEL_SHA256: &str =
    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32";

/// `apr` run in `dir` with the hub variables cleared, the user's cache kept.
pub fn apr_in(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_apr"));
    cmd.current_dir(dir);
    for var in ["HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_TOKEN"] {
        cmd.env_remove(var);
    }
    cmd
}

/// The real model in the Hugging Face cache, where `scripts/fetch_model.py` puts it.
pub fn real_model() -> PathBuf {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let hub = var("HF_HUB_CACHE")
        .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
        .unwrap_or_else(|| {
            var("XDG_CACHE_HOME")
                .unwrap_or_else(|| var("HOME").expect("HOME").join(".cache"))
                .join("huggingface/hub")
        });
    let repo = hub.join(format!("models--{}", REAL_MODEL_REPO.replace('/', "--")));
    let commit = std::fs::read_to_string(repo.join("refs/main")).unwrap_or_else(|_| {
        panic!(
            "{} has no refs/main: run scripts/fetch_model.py",
            repo.display()
        )
    });
    repo.join("snapshots")
        .join(commit.trim())
        .join(REAL_MODEL_FILE)
}

/// A tiny generated qwen2 model of weight type `ty`, written as `name` in `apr`'s folder.
pub fn tiny(apr: &Apr, name: &str, ty: apr_core::dtype::GgmlType) -> String {
    std::fs::write(
        apr.dir().join(name),
        apr_core::synth::gguf(&apr_core::synth::Config::default(), ty).unwrap(),
    )
    .unwrap();
    name.to_string()
}

/// An `http://127.0.0.1:PORT` where nothing listens.
pub fn closed_port_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// Deterministic pseudo-random bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

pub fn sha256_file(path: &Path) -> String {
    let mut file = File::open(path).unwrap();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    format!("{:x}", hasher.finalize())
}

/// `apr` with its own working folder and its own `HF_HOME`.
#[derive(Clone)]
pub struct Apr {
    dir: Arc<tempfile::TempDir>,
    hf_home: PathBuf,
    env: Vec<(String, OsString)>,
}

/// What a run printed and how it ended.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn success(&self) -> &Self {
        assert_eq!(
            self.code,
            Some(0),
            "expected success\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Exit code 1 (not 101, a panic), ending with one `error:` line.
    pub fn failure(&self) -> &Self {
        assert_eq!(
            self.code,
            Some(1),
            "expected exit 1\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        let last = self.stderr.lines().last().unwrap_or_default();
        assert!(last.starts_with("error: "), "stderr: {}", self.stderr);
        assert_eq!(
            self.stderr.matches("error: ").count(),
            1,
            "stderr: {}",
            self.stderr
        );
        assert!(!self.stderr.contains("panicked"), "stderr: {}", self.stderr);
        self
    }
}

impl Apr {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let hf_home = dir.path().join("hf");
        Self {
            dir: Arc::new(dir),
            hf_home,
            env: Vec::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn hf_home(&self) -> &Path {
        &self.hf_home
    }

    pub fn endpoint(self, endpoint: &str) -> Self {
        self.env("HF_ENDPOINT", endpoint)
    }

    pub fn env(mut self, key: &str, value: impl Into<OsString>) -> Self {
        self.env.push((key.to_string(), value.into()));
        self
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let mut cmd = apr_in(self.dir());
        cmd.env_remove("HF_HUB_CACHE")
            .env("HF_HOME", &self.hf_home)
            .args(args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}
