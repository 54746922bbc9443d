//! The operator side of the server API: where the server is, which token to send, and one
//! blocking HTTP call per command.
//!
//! The server URL and token come from flags, then `OUTPOST_SERVER` / `OUTPOST_TOKEN`, then the
//! CLI config file (`~/.config/outpost/cli.toml` or `--cli-config`), then the defaults: the local
//! server on `http://127.0.0.1:8700` and the bootstrap admin token it wrote to
//! `outpost-data/admin.token`, so commands run next to a fresh `outpost server` just work.

use anyhow::{bail, Context, Result};
use clap::Args;
use outpost_proto::fleet::api::ErrorBody;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Flags every server-facing command shares.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// Server base URL [default: config file, else http://127.0.0.1:8700].
    #[arg(long, env = "OUTPOST_SERVER", global = true)]
    server: Option<String>,
    /// Operator API token (`opt_...`) [default: config file, else outpost-data/admin.token].
    #[arg(long, env = "OUTPOST_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// CLI config file with `server` and `token` keys [default: ~/.config/outpost/cli.toml].
    #[arg(long, env = "OUTPOST_CLI_CONFIG", global = true)]
    cli_config: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CliFile {
    server: Option<String>,
    token: Option<String>,
}

/// A resolved server connection.
pub struct Api {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
    /// Whether output should be JSON.
    pub json: bool,
}

impl Target {
    /// Resolves flags, environment, config file and defaults into a connection.
    pub fn connect(&self) -> Result<Api> {
        let file = self.read_file()?;
        let base = self
            .server
            .clone()
            .or(file.server)
            .unwrap_or_else(|| "http://127.0.0.1:8700".to_string())
            .trim_end_matches('/')
            .to_string();
        let token = match self.token.clone().or(file.token) {
            Some(t) => Some(t),
            None => std::fs::read_to_string("outpost-data/admin.token").ok().map(|t| t.trim().to_string()),
        };
        let mut api = Api::new(&base, token);
        api.json = self.json;
        Ok(api)
    }

    fn read_file(&self) -> Result<CliFile> {
        let path = match &self.cli_config {
            Some(p) => p.clone(),
            None => match std::env::var_os("HOME") {
                Some(home) => PathBuf::from(home).join(".config/outpost/cli.toml"),
                None => return Ok(CliFile::default()),
            },
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).with_context(|| format!("parsing {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.cli_config.is_none() => Ok(CliFile::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
}

impl Api {
    /// A connection to `base` with an optional bearer token (for in-process callers).
    pub fn new(base: &str, token: Option<String>) -> Api {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .http_status_as_error(false)
            .build()
            .into();
        Api { base: base.trim_end_matches('/').to_string(), token, agent, json: false }
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// GET a JSON document.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send::<(), T>("GET", path, None)
    }

    /// Sends a request with an optional JSON body and decodes the JSON answer.
    pub fn send<B: Serialize, T: DeserializeOwned>(&self, method: &str, path: &str, body: Option<&B>) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let mut req = ureq::http::Request::builder().method(method).uri(&url).header("accept", "application/json");
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let response = match body {
            Some(b) => {
                let bytes = serde_json::to_vec(b)?;
                let req = req.header("content-type", "application/json").body(bytes)?;
                self.agent.run(req)
            }
            None => self.agent.run(req.body(())?),
        };
        let (_, value) = self.answer(method, path, response)?;
        Ok(value)
    }

    /// Streams `len` bytes of `reader` as the body of a `method` request of `content_type`;
    /// the answer's status and JSON. No overall timeout (a large package takes as long as the
    /// link needs), only one on the wait for the answer after the last byte.
    pub fn send_raw<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        reader: &mut dyn std::io::Read,
        len: u64,
        content_type: &str,
    ) -> Result<(u16, T)> {
        let url = format!("{}{path}", self.base);
        let agent = long_agent();
        let mut req = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("accept", "application/json")
            .header("content-type", content_type)
            .header("content-length", len.to_string());
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req.body(ureq::SendBody::from_reader(reader))?;
        self.answer(method, path, agent.run(req))
    }

    /// GETs `path` into the file `out` (streamed, no overall timeout); fails on any status but
    /// 200.
    pub fn download(&self, path: &str, out: &std::path::Path) -> Result<u64> {
        let url = format!("{}{path}", self.base);
        let agent = long_agent();
        let mut req = ureq::http::Request::builder().method("GET").uri(&url);
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let mut response = agent.run(req.body(())?).map_err(|e| connection_error(&self.base, e))?;
        if response.status() != 200 {
            let text = response.body_mut().read_to_string().unwrap_or_default();
            bail!("GET {path} → {}: {}", response.status(), text.chars().take(300).collect::<String>());
        }
        let mut file = std::fs::File::create(out).with_context(|| out.display().to_string())?;
        let n = std::io::copy(&mut response.body_mut().with_config().limit(u64::MAX).reader(), &mut file)?;
        file.sync_all()?;
        Ok(n)
    }

    fn answer<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(u16, T)> {
        let url = format!("{}{path}", self.base);
        let mut response = response.map_err(|e| connection_error(&self.base, e))?;
        let status = response.status();
        let text = response.body_mut().read_to_string().with_context(|| format!("reading the answer from {url}"))?;
        if !status.is_success() {
            if let Ok(err) = serde_json::from_str::<ErrorBody>(&text) {
                let hint = match status.as_u16() {
                    401 if self.token.is_none() => {
                        "\nhint: pass --token, set OUTPOST_TOKEN, or run next to the server's outpost-data/admin.token"
                    }
                    403 => "\nhint: this needs a token with a higher role",
                    _ => "",
                };
                bail!("{} {} → {status} {}: {}{hint}", method, path, err.code, err.message);
            }
            bail!("{} {} → {status}: {}", method, path, text.chars().take(300).collect::<String>());
        }
        let text = if text.is_empty() { "null".to_string() } else { text };
        let value = serde_json::from_str(&text).with_context(|| format!("decoding the answer of {method} {path}"))?;
        Ok((status.as_u16(), value))
    }
}

/// An agent for requests that move a package: no overall timeout (a large package takes as long
/// as the link needs), only on connecting and on the wait for the answer.
fn long_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(600)))
        .http_status_as_error(false)
        .build()
        .into()
}

fn connection_error(base: &str, e: ureq::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot reach the outpost server at {base}: {e}\nhint: start one with `outpost server`, or pass --server URL"
    )
}

/// Percent-encodes a query parameter value.
pub fn encode(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Prints rows as aligned columns under a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(&header.iter().map(|h| h.to_uppercase()).collect::<Vec<_>>());
    for row in rows {
        line(row);
    }
}

/// Formats "how long ago" for a Unix-millisecond time.
pub fn ago(ms: Option<i64>) -> String {
    let Some(ms) = ms else { return "never".into() };
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    let s = (now - ms).max(0) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// Parses a duration like `30s`, `15m`, `24h`, `7d` (plain numbers are seconds).
pub fn parse_duration_s(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num.parse().map_err(|_| format!("{text:?} is not a duration like 30s, 15m, 24h or 7d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use s, m, h or d)")),
    };
    Ok(n * mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration_s("90"), Ok(90));
        assert_eq!(parse_duration_s("15m"), Ok(900));
        assert_eq!(parse_duration_s("24h"), Ok(86_400));
        assert_eq!(parse_duration_s("7d"), Ok(604_800));
        assert!(parse_duration_s("3w").is_err());
        assert!(parse_duration_s("h").is_err());
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode("site=berlin,line!=3"), "site%3Dberlin%2Cline%21%3D3");
    }
}
