//! A real HTTP/1.1 server on 127.0.0.1 that serves the Hugging Face hub's URL scheme:
//! `GET /api/models/{repo}/revision/{rev}?blobs=true` and `GET /{repo}/resolve/{rev}/{file}` with
//! `Range` support. It can misbehave on purpose (cut a transfer, advertise a wrong checksum) and
//! logs every request so tests can check what the client asked for.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

use sha2::{Digest, Sha256};

/// A file in a fake repo.
#[derive(Clone, Debug)]
pub struct FakeFile {
    pub name: String,
    pub content: Vec<u8>,
    /// The sha256 the listing advertises; the real one unless a test lies.
    pub advertised_sha256: String,
}

impl FakeFile {
    pub fn new(name: &str, content: Vec<u8>) -> Self {
        let advertised_sha256 = sha256_hex(&content);
        Self {
            name: name.to_string(),
            content,
            advertised_sha256,
        }
    }
}

/// How the server should misbehave.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Close the first download of each file after this many body bytes, although the headers
    /// promised the whole file.
    pub cut_first_download_at: Option<usize>,
    /// Answer every download with the whole file (200), as servers without range support do.
    pub ignore_range: bool,
}

/// One logged request.
#[derive(Clone, Debug)]
pub struct Request {
    pub path: String,
    pub range: Option<String>,
}

#[derive(Default)]
struct State {
    repos: HashMap<String, (String, Vec<FakeFile>)>,
    faults: Faults,
    log: Vec<Request>,
    downloads: HashMap<String, usize>,
}

/// The running server; it stops when the test process ends.
pub struct FakeHub {
    pub endpoint: String,
    state: Arc<Mutex<State>>,
}

impl FakeHub {
    pub fn start(faults: Faults) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            faults,
            ..State::default()
        }));
        let shared = Arc::clone(&state);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = Arc::clone(&shared);
                thread::spawn(move || serve(stream, &state));
            }
        });
        Self { endpoint, state }
    }

    /// Adds a repo at `commit` with `files`.
    pub fn add_repo(&self, repo: &str, commit: &str, files: Vec<FakeFile>) {
        self.state
            .lock()
            .unwrap()
            .repos
            .insert(repo.to_string(), (commit.to_string(), files));
    }

    /// Every request so far.
    pub fn log(&self) -> Vec<Request> {
        self.state.lock().unwrap().log.clone()
    }

    /// The requests for files (not the API).
    pub fn downloads(&self) -> Vec<Request> {
        self.log()
            .into_iter()
            .filter(|r| r.path.contains("/resolve/"))
            .collect()
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn serve(stream: TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("range")
        {
            range = Some(value.trim().to_string());
        }
    }
    let target = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    state.lock().unwrap().log.push(Request {
        path: target.clone(),
        range: range.clone(),
    });
    let path = target.split('?').next().unwrap_or("").to_string();
    let mut out = stream;

    if let Some(rest) = path.strip_prefix("/api/models/") {
        // {org}/{name}/revision/{rev}
        let parts: Vec<&str> = rest.splitn(4, '/').collect();
        let repo = parts.get(..2).map(|p| p.join("/")).unwrap_or_default();
        let listing = state.lock().unwrap().repos.get(&repo).cloned();
        match listing {
            Some((commit, files)) => {
                let siblings: Vec<serde_json::Value> = files
                    .iter()
                    .map(|f| {
                        serde_json::json!({
                            "rfilename": f.name,
                            "size": f.content.len(),
                            "blobId": format!("{:040x}", f.content.len()),
                            "lfs": {"sha256": f.advertised_sha256, "size": f.content.len(), "pointerSize": 134}
                        })
                    })
                    .collect();
                let body = serde_json::json!({"id": repo, "sha": commit, "siblings": siblings});
                respond(
                    &mut out,
                    "200 OK",
                    &[("Content-Type", "application/json")],
                    body.to_string().as_bytes(),
                );
            }
            None => not_found(&mut out),
        }
        return;
    }

    // /{org}/{name}/resolve/{rev}/{file}
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    let [org, name, "resolve", _rev, file] = parts.as_slice() else {
        return not_found(&mut out);
    };
    let repo = format!("{org}/{name}");
    let (content, cut, ignore_range) = {
        let mut st = state.lock().unwrap();
        let Some(content) = st
            .repos
            .get(&repo)
            .and_then(|(_, files)| files.iter().find(|f| f.name == *file))
            .map(|f| f.content.clone())
        else {
            drop(st);
            return not_found(&mut out);
        };
        let key = format!("{repo}/{file}");
        let count = st.downloads.entry(key).or_insert(0);
        *count += 1;
        let cut = if *count == 1 {
            st.faults.cut_first_download_at
        } else {
            None
        };
        let ignore_range = st.faults.ignore_range;
        (content, cut, ignore_range)
    };

    let start = range
        .as_deref()
        .filter(|_| !ignore_range)
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|s| s.parse::<usize>().ok());
    let total = content.len();
    let (status, body, content_range) = match start {
        Some(s) if s >= total => {
            let headers = [("Content-Range", format!("bytes */{total}"))];
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            return respond(&mut out, "416 Range Not Satisfiable", &headers, b"");
        }
        Some(s) => (
            "206 Partial Content",
            &content[s..],
            Some(format!("bytes {s}-{}/{total}", total - 1)),
        ),
        None => ("200 OK", &content[..], None),
    };
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(cr) = content_range {
        head.push_str(&format!("Content-Range: {cr}\r\n"));
    }
    head.push_str("\r\n");
    let _ = out.write_all(head.as_bytes());
    let sent = cut.map_or(body.len(), |c| c.min(body.len()));
    let _ = out.write_all(&body[..sent]);
    let _ = out.flush();
    // Dropping the stream closes the connection, cut or not.
}

fn not_found(out: &mut TcpStream) {
    respond(
        out,
        "404 Not Found",
        &[("Content-Type", "application/json")],
        br#"{"error":"Repository not found"}"#,
    );
}

fn respond(out: &mut TcpStream, status: &str, headers: &[(&str, &str)], body: &[u8]) {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = out.write_all(head.as_bytes());
    let _ = out.write_all(body);
    let _ = out.flush();
}
