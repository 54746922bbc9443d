//! The device side of the control-plane HTTP channel: one typed method per endpoint, every
//! request signed with the device key.
//!
//! The fleet simulator drives thousands of virtual devices through this same client, so a
//! [`DeviceClient`] is a thin handle (base URL, key, device id) over a `reqwest::Client` that
//! can be shared: build one with [`http_client`] and hand clones to every device.

use outpost_proto::fleet::api::ErrorBody;
use outpost_proto::fleet::device::{
    CommandAck, DesiredState, EnrollRequest, EnrollResponse, ReportAck, ReportBatch, StateReport,
};
use outpost_proto::fleet::signing::DeviceKey;
use outpost_tuf::remote::error_chain;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;

/// Longest wait a long-poll may ask the server for.
pub const MAX_POLL_WAIT: Duration = Duration::from_secs(30);
/// Time allowed for an ordinary request, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a whole package download may take.
pub const PACKAGE_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
/// Longest wait for a delta plan: the server builds it on the first request for a pair.
pub const DELTA_PLAN_TIMEOUT: Duration = Duration::from_secs(600);
/// How many times a request refused as a replay is sent again with a fresh nonce.
const REPLAY_RETRIES: usize = 2;

/// Why a request to the server failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached or the connection broke (retry later).
    #[error("cannot reach the server at {url}: {reason}")]
    Network {
        /// The URL asked for.
        url: String,
        /// Cause.
        reason: String,
    },
    /// The server refused the request (4xx other than revocation).
    #[error("server refused {path}: {status} {code}: {message}")]
    Rejected {
        /// The path asked for.
        path: String,
        /// HTTP status.
        status: u16,
        /// Stable error code (`bad_signature`, `stale_request`, ...).
        code: String,
        /// The server's explanation.
        message: String,
    },
    /// This device was revoked: the server refuses everything it sends.
    #[error("this device was revoked by the server: {message}")]
    Revoked {
        /// The server's explanation.
        message: String,
    },
    /// The server failed or is overloaded (5xx; retry with backoff).
    #[error("server error on {path}: {status}: {message}")]
    Server {
        /// The path asked for.
        path: String,
        /// HTTP status.
        status: u16,
        /// What the server said.
        message: String,
    },
    /// The answer was not what the protocol says.
    #[error("cannot decode the server's answer to {path}: {reason}")]
    Decode {
        /// The path asked for.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

impl ClientError {
    /// The server's error code, when it sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Rejected { code, .. } => Some(code),
            ClientError::Revoked { .. } => Some("device_revoked"),
            _ => None,
        }
    }

    /// Whether sending the same thing later may succeed (network trouble, 5xx, clock skew).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Network { .. } | ClientError::Server { .. } => true,
            ClientError::Rejected { code, status, .. } => {
                *status == 429 || code == "stale_request" || code == "replayed_request"
            }
            ClientError::Revoked { .. } | ClientError::Decode { .. } => false,
        }
    }
}

/// Builds an HTTP client suited to the device channel: rustls with the ring provider, connect
/// and request timeouts, and up to `max_idle_per_host` pooled connections (one agent needs two;
/// a simulator needs one per virtual device).
pub fn http_client(max_idle_per_host: usize) -> Result<reqwest::Client, ClientError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(max_idle_per_host)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .user_agent(concat!("outpost-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ClientError::Network { url: String::new(), reason: format!("cannot build the HTTP client: {e}") })
}

/// A fresh random nonce: 32 hex characters.
pub fn new_nonce() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Current Unix time, milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A device's connection to the control plane.
#[derive(Debug, Clone)]
pub struct DeviceClient {
    http: reqwest::Client,
    base: String,
    key: Arc<DeviceKey>,
    device_id: String,
}

impl DeviceClient {
    /// A client for `base` (e.g. `http://127.0.0.1:8700`) with its own connection pool.
    pub fn new(base: &str, key: Arc<DeviceKey>) -> Result<DeviceClient, ClientError> {
        Ok(DeviceClient::with_http(http_client(4)?, base, key))
    }

    /// A client sharing an existing `reqwest::Client` (and its connection pool). The device id
    /// starts as the key's own, which is what the server assigns at enrollment.
    pub fn with_http(http: reqwest::Client, base: &str, key: Arc<DeviceKey>) -> DeviceClient {
        let device_id = key.device_id();
        DeviceClient { http, base: base.trim_end_matches('/').to_string(), key, device_id }
    }

    /// The device id sent in the device header.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// Uses the device id the server assigned.
    pub fn set_device_id(&mut self, id: &str) {
        self.device_id = id.to_string();
    }

    /// The server base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The underlying HTTP client.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// A signed request with an explicit timestamp and nonce, for callers that need to craft
    /// one on purpose (the simulator's replay and bad-signature faults).
    pub fn signed_request(
        &self,
        method: Method,
        path_and_query: &str,
        body: Vec<u8>,
        timestamp_ms: i64,
        nonce: &str,
    ) -> reqwest::RequestBuilder {
        let headers =
            self.key.sign_request(&self.device_id, method.as_str(), path_and_query, &body, timestamp_ms, nonce);
        let mut request = self
            .http
            .request(method, format!("{}{path_and_query}", self.base))
            .header(outpost_proto::HEADER_PROTOCOL, outpost_proto::PROTOCOL_VERSION);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        if !body.is_empty() {
            request = request.header(reqwest::header::CONTENT_TYPE, "application/json").body(body);
        }
        request
    }

    /// `POST /v1/enroll`.
    pub async fn enroll(&self, request: &EnrollRequest) -> Result<EnrollResponse, ClientError> {
        let body = encode(request);
        let response = self.send(Method::POST, "/v1/enroll", body, None, &[]).await?;
        decode("/v1/enroll", response).await
    }

    /// `POST /v1/device/heartbeat`.
    pub async fn heartbeat(&self, report: &StateReport) -> Result<ReportAck, ClientError> {
        let response = self.send(Method::POST, "/v1/device/heartbeat", encode(report), None, &[]).await?;
        decode("/v1/device/heartbeat", response).await
    }

    /// `POST /v1/device/reports`: reports queued while offline, oldest first.
    pub async fn send_reports(&self, batch: &ReportBatch) -> Result<ReportAck, ClientError> {
        let response = self.send(Method::POST, "/v1/device/reports", encode(batch), None, &[]).await?;
        decode("/v1/device/reports", response).await
    }

    /// `POST /v1/device/results`: exported records, a zstd-compressed `{"records": [...]}`.
    pub async fn send_results(
        &self,
        zstd_body: Vec<u8>,
    ) -> Result<outpost_proto::fleet::results::ResultsAck, ClientError> {
        let extra = [("content-encoding", "zstd".to_string())];
        let response = self.send(Method::POST, "/v1/device/results", zstd_body, None, &extra).await?;
        decode("/v1/device/results", response).await
    }

    /// `GET /v1/device/desired-state`: the desired state, or `None` when it still matches `etag`
    /// after the server held the request for up to `wait` (capped at 30 s).
    pub async fn desired_state(&self, etag: Option<&str>, wait: Duration) -> Result<Option<DesiredState>, ClientError> {
        let wait = wait.min(MAX_POLL_WAIT);
        let path = format!("/v1/device/desired-state?wait={}", wait.as_secs());
        let if_none_match = etag.filter(|e| !e.is_empty()).map(|e| format!("\"{}\"", e.trim_matches('"')));
        let extra: Vec<(&str, String)> = if_none_match.into_iter().map(|v| ("if-none-match", v)).collect();
        let response = self.send(Method::GET, &path, Vec::new(), Some(wait + REQUEST_TIMEOUT), &extra).await?;
        if response.status() == StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        decode(&path, response).await.map(Some)
    }

    /// `POST /v1/device/commands/{id}/ack`. A command acknowledged before counts as done.
    pub async fn ack(&self, id: i64, ack: &CommandAck) -> Result<(), ClientError> {
        let path = format!("/v1/device/commands/{id}/ack");
        match self.send(Method::POST, &path, encode(ack), None, &[]).await {
            Ok(_) => Ok(()),
            Err(ClientError::Rejected { status: 409, code, .. }) if code == "already_acked" => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `GET /v1/device/packages/{name}/{version}` from byte `from` on (a resumed download asks
    /// for the rest of the object whose ETag is `sha256`): the response, to stream.
    pub async fn package(
        &self,
        name: &str,
        version: &str,
        from: u64,
        sha256: &str,
    ) -> Result<reqwest::Response, ClientError> {
        let path = format!("/v1/device/packages/{name}/{version}");
        let extra: Vec<(&str, String)> = if from > 0 {
            vec![("range", format!("bytes={from}-")), ("if-range", format!("\"{sha256}\""))]
        } else {
            Vec::new()
        };
        // The body may take long on a slow link; the fetcher bounds each read instead.
        self.send(Method::GET, &path, Vec::new(), Some(PACKAGE_TIMEOUT), &extra).await
    }

    /// The plan that rebuilds `version` of `name` from `base` (zstd-compressed JSON), at most
    /// `max` bytes. The server may build it first, hence the long timeout.
    pub async fn delta_plan(&self, name: &str, version: &str, base: &str, max: u64) -> Result<Vec<u8>, ClientError> {
        let path = format!("/v1/device/packages/{name}/{version}/delta/{base}");
        let mut response = self.send(Method::GET, &path, Vec::new(), Some(DELTA_PLAN_TIMEOUT), &[]).await?;
        let mut out = Vec::new();
        while let Some(chunk) =
            response.chunk().await.map_err(|e| ClientError::Network { url: path.clone(), reason: error_chain(&e) })?
        {
            if out.len() as u64 + chunk.len() as u64 > max {
                return Err(ClientError::Network { url: path, reason: format!("the plan is larger than {max} bytes") });
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Bytes `range` of the blob file of the plan from `base` to `version`.
    pub async fn delta_blobs(
        &self,
        name: &str,
        version: &str,
        base: &str,
        range: std::ops::Range<u64>,
    ) -> Result<reqwest::Response, ClientError> {
        let path = format!("/v1/device/packages/{name}/{version}/delta/{base}/blobs");
        let extra = [("range", format!("bytes={}-{}", range.start, range.end.saturating_sub(1)))];
        self.send(Method::GET, &path, Vec::new(), Some(PACKAGE_TIMEOUT), &extra).await
    }

    /// Sends a signed request; a fresh nonce and timestamp each attempt. Answers other than 2xx
    /// and 304 become errors.
    async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Vec<u8>,
        timeout: Option<Duration>,
        extra_headers: &[(&str, String)],
    ) -> Result<reqwest::Response, ClientError> {
        let mut attempt = 0;
        loop {
            let mut request = self.signed_request(method.clone(), path_and_query, body.clone(), now_ms(), &new_nonce());
            for (name, value) in extra_headers {
                request = request.header(*name, value);
            }
            if let Some(t) = timeout {
                request = request.timeout(t);
            }
            let response = request.send().await.map_err(|e| ClientError::Network {
                url: format!("{}{path_and_query}", self.base),
                reason: error_chain(&e),
            })?;
            let status = response.status();
            if status.is_success() || status == StatusCode::NOT_MODIFIED {
                return Ok(response);
            }
            let error = error_from(path_and_query, response).await;
            // A replay verdict for a request we never sent twice means a nonce collided with an
            // earlier one (or a proxy resent it): a new nonce fixes it.
            if error.code() == Some("replayed_request") && attempt < REPLAY_RETRIES {
                attempt += 1;
                continue;
            }
            return Err(error);
        }
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail (string keys, no custom serializers).
    serde_json::to_vec(value).unwrap_or_default()
}

async fn decode<T: DeserializeOwned>(path: &str, response: reqwest::Response) -> Result<T, ClientError> {
    let bytes =
        response.bytes().await.map_err(|e| ClientError::Network { url: path.to_string(), reason: error_chain(&e) })?;
    serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode { path: path.to_string(), reason: e.to_string() })
}

/// Turns an error answer into a [`ClientError`], reading the `ErrorBody` when there is one.
async fn error_from(path: &str, response: reqwest::Response) -> ClientError {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let (code, message) = match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => (body.code, body.message),
        Err(_) => (String::new(), text.chars().take(300).collect()),
    };
    classify(path, status, code, message)
}

/// Maps a status and error code to the error the device acts on.
pub fn classify(path: &str, status: u16, code: String, message: String) -> ClientError {
    match status {
        403 if code == "device_revoked" => ClientError::Revoked { message },
        500.. => ClientError::Server { path: path.to_string(), status, message },
        _ => ClientError::Rejected { path: path.to_string(), status, code, message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocation_server_errors_and_refusals_are_told_apart() {
        assert!(matches!(classify("/p", 403, "device_revoked".into(), "m".into()), ClientError::Revoked { .. }));
        assert!(matches!(classify("/p", 403, "forbidden".into(), "m".into()), ClientError::Rejected { .. }));
        assert!(matches!(classify("/p", 503, String::new(), "m".into()), ClientError::Server { status: 503, .. }));
        let stale = classify("/p", 401, "stale_request".into(), "m".into());
        assert!(stale.is_transient());
        assert!(!classify("/p", 401, "bad_signature".into(), "m".into()).is_transient());
    }

    #[test]
    fn every_signed_request_names_the_protocol_version() {
        let key = Arc::new(DeviceKey::from_secret([7; 32]));
        let client = DeviceClient::new("http://127.0.0.1:9", key).unwrap();
        let request =
            client.signed_request(Method::GET, "/v1/device/desired-state", Vec::new(), 1, "00").build().unwrap();
        let sent = request.headers().get(outpost_proto::HEADER_PROTOCOL).and_then(|v| v.to_str().ok());
        assert_eq!(sent, Some(outpost_proto::PROTOCOL_VERSION.to_string().as_str()));
    }

    #[test]
    fn nonces_are_fresh_32_hex_characters() {
        let (a, b) = (new_nonce(), new_nonce());
        assert_ne!(a, b);
        assert!(outpost_proto::fleet::signing::validate_nonce(&a).is_ok());
        assert_eq!(a.len(), 32);
    }
}
