//! A real server on a random port over a real database, and the HTTP calls tests make to it.

use super::signed::TestDevice;
use outpost_server::{Server, ServerConfig};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A running server and an admin token for it.
pub struct TestServer {
    /// Which database (`sqlite`, `postgres`), for assertion messages.
    pub label: String,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The database URL.
    pub url: String,
    /// The bootstrap admin token.
    pub admin: String,
    http: reqwest::Client,
    server: Server,
    _dir: tempfile::TempDir,
}

/// A response: status, headers and the JSON body (`Null` when empty).
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: reqwest::header::HeaderMap,
    /// Body as JSON.
    pub body: Value,
}

impl Reply {
    /// The error code of a JSON error body.
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }
}

async fn reply(resp: reqwest::Response) -> Reply {
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("read body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
    };
    Reply { status, headers, body }
}

async fn launch(label: &str, url: &str, configure: impl FnOnce(&mut ServerConfig)) -> (Server, tempfile::TempDir) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        database: Some(url.to_string()),
        max_connections: 4,
        long_poll_max_s: 10,
        ..ServerConfig::default()
    };
    configure(&mut config);
    let server = Server::start(config).await.unwrap_or_else(|e| panic!("{label}: server start: {e}"));
    (server, dir)
}

/// A server on a database that already has its admin token `admin`.
async fn attach(label: &str, url: &str, admin: &str, configure: impl FnOnce(&mut ServerConfig)) -> TestServer {
    let (server, dir) = launch(label, url, configure).await;
    assert!(server.admin_token_path.is_none(), "{label}: a used database gets no second bootstrap token");
    let base = format!("http://{}", server.addr);
    TestServer {
        label: label.to_string(),
        base,
        url: url.to_string(),
        admin: admin.to_string(),
        http: reqwest::Client::new(),
        server,
        _dir: dir,
    }
}

impl TestServer {
    /// Starts a server on `url` with a short long-poll limit.
    pub async fn start(label: &str, url: &str) -> TestServer {
        TestServer::start_with(label, url, |_| {}).await
    }

    /// Starts a server on a fresh database `url` with a short long-poll limit and the
    /// configuration changes `configure` makes.
    pub async fn start_with(label: &str, url: &str, configure: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let (server, dir) = launch(label, url, configure).await;
        let path = server.admin_token_path.clone().expect("a fresh database gets a bootstrap admin token");
        let admin = std::fs::read_to_string(&path).expect("admin token file").trim().to_string();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "admin token file must be private");
        }
        let base = format!("http://{}", server.addr);
        let url = url.to_string();
        TestServer { label: label.to_string(), base, url, admin, http: reqwest::Client::new(), server, _dir: dir }
    }

    /// Another server on this one's database (a second replica), with the same admin token.
    pub async fn replica(&self) -> TestServer {
        attach(&self.label, &self.url, &self.admin, |_| {}).await
    }

    /// Stops this server and starts a new one on the same database (a restart: nothing kept
    /// in process memory survives).
    pub async fn restart(self) -> TestServer {
        self.restart_with(|_| {}).await
    }

    /// [`TestServer::restart`] with the configuration changes `configure` makes.
    pub async fn restart_with(self, configure: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let (label, url, admin) = (self.label.clone(), self.url.clone(), self.admin.clone());
        self.stop().await;
        attach(&label, &url, &admin, configure).await
    }

    /// The HTTP client requests go through (shared connection pool).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Stops the server and waits for it.
    pub async fn stop(self) {
        self.server.shutdown().await.expect("clean shutdown");
    }

    /// An operator request with a JSON body.
    pub async fn op(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        let raw = body.map(|b| serde_json::to_vec(&b).unwrap());
        self.op_raw(method, path, token, raw).await
    }

    /// An operator request with raw body bytes.
    pub async fn op_raw(&self, method: Method, path: &str, token: Option<&str>, body: Option<Vec<u8>>) -> Reply {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        reply(req.send().await.expect("request")).await
    }

    /// A request with explicit headers and body, for signed device calls.
    pub async fn send(&self, method: Method, path: &str, headers: &[(&str, String)], body: Vec<u8>) -> Reply {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        reply(req.body(body).send().await.expect("request")).await
    }

    /// A device request signed now with a fresh nonce.
    pub async fn device(&self, dev: &TestDevice, method: Method, path: &str, body: Option<Value>) -> Reply {
        self.device_with(dev, method, path, body, &[]).await
    }

    /// A signed device request with extra headers.
    pub async fn device_with(
        &self,
        dev: &TestDevice,
        method: Method,
        path: &str,
        body: Option<Value>,
        extra: &[(&str, String)],
    ) -> Reply {
        let raw = body.map(|b| serde_json::to_vec(&b).unwrap()).unwrap_or_default();
        let mut headers: Vec<(&str, String)> = dev.headers(method.as_str(), path, &raw).into_iter().collect();
        headers.extend(extra.iter().cloned());
        self.send(method, path, &headers, raw).await
    }

    /// Creates an API token with a role; returns its secret.
    pub async fn api_token(&self, name: &str, role: &str) -> String {
        let r =
            self.op(Method::POST, "/v1/api-tokens", Some(&self.admin), Some(json!({"name": name, "role": role}))).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}: {:?}", self.label, r.body);
        r.body["secret"].as_str().expect("secret").to_string()
    }

    /// Creates an enrollment token; returns (id, secret).
    pub async fn enrollment_token(&self, body: Value) -> (String, String) {
        let r = self.op(Method::POST, "/v1/enrollment-tokens", Some(&self.admin), Some(body)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}: {:?}", self.label, r.body);
        (r.body["id"].as_str().unwrap().to_string(), r.body["secret"].as_str().unwrap().to_string())
    }

    /// Enrollment request for `dev` with `token`, signed by `dev`.
    pub async fn enroll(&self, dev: &TestDevice, token: &str) -> Reply {
        let body = json!({
            "token": token, "algorithm": "ed25519", "public_key": dev.key.public_key_base64(),
            "name": "test-device", "agent_version": "0.1.0", "hardware": {"arch": "x86_64", "cores": 2}
        });
        self.device(dev, Method::POST, "/v1/enroll", Some(body)).await
    }

    /// Enrolls a new device with a fresh single-use token and optional labels.
    pub async fn enrolled_device(&self, labels: Value) -> TestDevice {
        let (_, secret) = self.enrollment_token(json!({"uses": 1, "labels": labels})).await;
        let dev = TestDevice::new();
        let r = self.enroll(&dev, &secret).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}: {:?}", self.label, r.body);
        dev
    }
}
