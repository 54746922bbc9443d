//! Fetching metadata and targets over HTTP with a hard byte limit per file (the endless-data
//! attack): a body longer than the limit the client workflow sets is cut off and refused, never
//! read to its end.

use sigstore_tuf::transport::FetchFuture;
use sigstore_tuf::{Error, Repository};

/// A repository served over HTTP: metadata under one base URL, targets under another.
#[derive(Debug, Clone)]
pub struct HttpRemote {
    http: reqwest::Client,
    metadata: String,
    targets: String,
}

impl HttpRemote {
    /// A remote with metadata at `metadata_url` and targets at `targets_url`.
    pub fn new(http: reqwest::Client, metadata_url: &str, targets_url: &str) -> HttpRemote {
        let slash = |u: &str| format!("{}/", u.trim_end_matches('/'));
        HttpRemote { http, metadata: slash(metadata_url), targets: slash(targets_url) }
    }

    async fn get(&self, url: String, max_length: u64) -> sigstore_tuf::Result<Option<Vec<u8>>> {
        let mut response =
            self.http.get(&url).send().await.map_err(|e| Error::transport(format!("{url}: {}", error_chain(&e))))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::FORBIDDEN {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(Error::transport(format!("{url}: HTTP {status}")));
        }
        if response.content_length().is_some_and(|n| n > max_length) {
            return Err(too_long(&url, max_length));
        }
        let mut body = Vec::new();
        while let Some(chunk) =
            response.chunk().await.map_err(|e| Error::transport(format!("{url}: {}", error_chain(&e))))?
        {
            if body.len() as u64 + chunk.len() as u64 > max_length {
                return Err(too_long(&url, max_length));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Some(body))
    }
}

/// A response past its limit: refused as bad data (an endless-data attack), not a network
/// failure to retry.
fn too_long(what: &str, max_length: u64) -> Error {
    Error::IntegrityMismatch(format!("{what}: longer than the {max_length} bytes allowed"))
}

/// An error with its sources, `outer: inner: …` (reqwest hides the cause of a failed request in
/// its sources).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl Repository for HttpRemote {
    fn fetch_metadata<'a>(&'a self, name: &'a str, max_length: u64) -> FetchFuture<'a> {
        Box::pin(self.get(format!("{}{name}", self.metadata), max_length))
    }

    fn fetch_target<'a>(&'a self, path: &'a str, max_length: u64) -> FetchFuture<'a> {
        Box::pin(self.get(format!("{}{}", self.targets, encode_path(path)), max_length))
    }
}

/// A target path in a URL: each segment percent-encoded, `/` kept.
pub fn encode_path(path: &str) -> String {
    path.split('/').map(encode_name).collect::<Vec<_>>().join("/")
}

/// Undoes [`encode_name`] (a malformed escape stays as it is).
pub fn decode_name(encoded: &str) -> String {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes everything but unreserved characters (RFC 3986), as role names are in file
/// names and URLs.
pub fn encode_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for &b in name.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A repository in a local directory (`metadata/`, `targets/`): an update from removable
/// media, and the tests' repository. The same byte limits apply.
#[derive(Debug, Clone)]
pub struct DirRemote {
    dir: std::path::PathBuf,
}

impl DirRemote {
    /// The repository written in `dir`.
    pub fn new(dir: impl Into<std::path::PathBuf>) -> DirRemote {
        DirRemote { dir: dir.into() }
    }

    fn read(&self, path: std::path::PathBuf, max_length: u64) -> sigstore_tuf::Result<Option<Vec<u8>>> {
        use std::io::Read;
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::transport(format!("{}: {e}", path.display()))),
        };
        let mut bytes = Vec::new();
        file.take(max_length + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::transport(format!("{}: {e}", path.display())))?;
        if bytes.len() as u64 > max_length {
            return Err(too_long(&path.display().to_string(), max_length));
        }
        Ok(Some(bytes))
    }
}

impl Repository for DirRemote {
    fn fetch_metadata<'a>(&'a self, name: &'a str, max_length: u64) -> FetchFuture<'a> {
        Box::pin(async move { self.read(self.dir.join("metadata").join(name), max_length) })
    }

    fn fetch_target<'a>(&'a self, path: &'a str, max_length: u64) -> FetchFuture<'a> {
        Box::pin(async move {
            if path.split('/').any(|p| p == ".." || p.is_empty()) {
                return Err(Error::transport(format!("target path {path:?} leaves the repository")));
            }
            self.read(self.dir.join("targets").join(path), max_length)
        })
    }
}
