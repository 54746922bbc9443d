//! Authentication: operator bearer tokens with roles, and signed device requests.
//!
//! Device requests are checked in a fixed order, each step named by its error code:
//! headers present (`bad_signature`), timestamp inside the clock-skew window (`stale_request`),
//! nonce not used before by this device (`replayed_request`), device known (`unknown_device`),
//! Ed25519 signature over the canonical request (`bad_signature`), device not revoked
//! (`device_revoked`). The nonce is recorded only after the signature verifies, so forged
//! requests cannot burn a device's nonces. Nonces are checked in process memory first and then
//! recorded in the database, so that replay protection survives restarts and holds across
//! replicas (see [`crate::replay`]).

use crate::db::{Db, DeviceKeyRow};
use crate::error::ApiError;
use crate::replay::{replay_key, replayed, NonceStore, ReplayCache, REPLAY_CACHE_CAPACITY};
use crate::state::{now_ms, SharedState};
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use outpost_proto::fleet::api::{ApiToken, Role};
use outpost_proto::fleet::signing::{
    self, canonical_request, device_id_for_key, VerifyingKey, HEADER_DEVICE, HEADER_NONCE, HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a positive API-token lookup is trusted without asking the database.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(5);
/// How long a device key (and its revoked flag) is trusted without asking the database.
/// Revoking through this server evicts the entry at once, so this only bounds how late another
/// replica sharing the database notices; it is longer than the heartbeat interval so a
/// heartbeat normally costs no key lookup.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(300);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Positive API-token lookups, keyed by the SHA-256 of the secret (the secret is not kept).
#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<[u8; 32], (ApiToken, Instant)>>,
}

impl TokenCache {
    fn get(&self, key: &[u8; 32]) -> Option<ApiToken> {
        let entries = lock(&self.entries);
        entries.get(key).filter(|(_, at)| at.elapsed() < TOKEN_CACHE_TTL).map(|(t, _)| t.clone())
    }

    fn insert(&self, key: [u8; 32], token: ApiToken) {
        let mut entries = lock(&self.entries);
        if entries.len() >= 10_000 {
            entries.retain(|_, (_, at)| at.elapsed() < TOKEN_CACHE_TTL);
        }
        entries.insert(key, (token, Instant::now()));
    }

    /// Forgets a token (called when it is revoked through the API).
    pub fn evict(&self, token_id: &str) {
        lock(&self.entries).retain(|_, (t, _)| t.id != token_id);
    }
}

/// The authenticated operator behind a request; `MIN` is the least role the route needs
/// (0 viewer, 1 operator, 2 admin).
#[derive(Debug, Clone)]
pub struct Caller<const MIN: u8> {
    /// The token used.
    pub token: ApiToken,
}

/// Any valid operator token.
pub type Viewer = Caller<0>;
/// Operator or admin.
pub type OperatorRole = Caller<1>;
/// Admin only.
pub type Admin = Caller<2>;

impl<const MIN: u8> Caller<MIN> {
    /// The audit actor: `token:<name>`.
    pub fn actor(&self) -> String {
        format!("token:{}", self.token.name)
    }
}

fn required_role(min: u8) -> Role {
    match min {
        0 => Role::Viewer,
        1 => Role::Operator,
        _ => Role::Admin,
    }
}

/// Authenticates the bearer token in `headers`.
pub async fn authenticate_operator(state: &SharedState, headers: &HeaderMap) -> Result<ApiToken, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized("send an operator token: Authorization: Bearer opt_...".into()))?;
    let secret = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::Unauthorized("the Authorization header must be `Bearer <token>`".into()))?;
    let key: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
    let token = match state.tokens.get(&key) {
        Some(t) => t,
        None => {
            let t = state.db.api_token_by_secret(secret).await?.ok_or_else(|| {
                ApiError::Unauthorized("unknown API token; ask an admin for a token (outpost token create)".into())
            })?;
            state.tokens.insert(key, t.clone());
            t
        }
    };
    if token.revoked {
        return Err(ApiError::Unauthorized(format!(
            "API token {:?} was revoked; ask an admin for a new one",
            token.name
        )));
    }
    if token.expires_ms.is_some_and(|e| e <= now_ms()) {
        return Err(ApiError::Unauthorized(format!("API token {:?} expired; ask an admin for a new one", token.name)));
    }
    Ok(token)
}

impl<const MIN: u8> FromRequestParts<SharedState> for Caller<MIN> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &SharedState) -> Result<Self, ApiError> {
        let token = authenticate_operator(state, &parts.headers).await?;
        let needed = required_role(MIN);
        if token.role < needed {
            return Err(ApiError::Forbidden(format!(
                "this needs the {} role; token {:?} has {}",
                needed.as_str(),
                token.name,
                token.role.as_str()
            )));
        }
        Ok(Caller { token })
    }
}

/// The four signature headers of a device request.
#[derive(Debug, Clone)]
pub struct SignatureHeaders {
    /// Claimed device id.
    pub device: String,
    /// Signing time, Unix milliseconds.
    pub timestamp_ms: i64,
    /// Nonce.
    pub nonce: String,
    /// Base64 signature.
    pub signature: String,
}

impl SignatureHeaders {
    /// Reads the headers, naming the first missing or malformed one.
    pub fn parse(headers: &HeaderMap) -> Result<SignatureHeaders, ApiError> {
        let get = |name: &str| -> Result<String, ApiError> {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    ApiError::BadSignature(format!("missing or unreadable {name} header; sign every device request"))
                })
        };
        let device = get(HEADER_DEVICE)?;
        let timestamp_ms = get(HEADER_TIMESTAMP)?
            .parse::<i64>()
            .map_err(|_| ApiError::BadSignature(format!("{HEADER_TIMESTAMP} must be Unix milliseconds")))?;
        let nonce = get(HEADER_NONCE)?;
        signing::validate_nonce(&nonce).map_err(|e| ApiError::BadSignature(e.to_string()))?;
        let signature = get(HEADER_SIGNATURE)?;
        Ok(SignatureHeaders { device, timestamp_ms, nonce, signature })
    }
}

/// A device's key as verification needs it: parsed once, with its revoked flag.
#[derive(Clone)]
struct CachedKey {
    key: VerifyingKey,
    revoked: bool,
}

/// Device keys, trusted for [`KEY_CACHE_TTL`].
#[derive(Default)]
struct KeyCache {
    entries: Mutex<HashMap<String, (CachedKey, Instant)>>,
}

/// Verifies signed device requests.
pub struct DeviceAuth {
    replay: ReplayCache,
    nonces: NonceStore,
    keys: KeyCache,
    skew_ms: i64,
}

impl DeviceAuth {
    /// A verifier accepting timestamps within `skew_ms` of the server clock, recording nonces
    /// in `nonces` as well as in memory.
    pub fn new(skew_ms: i64, nonces: NonceStore) -> DeviceAuth {
        DeviceAuth { replay: ReplayCache::new(REPLAY_CACHE_CAPACITY), nonces, keys: KeyCache::default(), skew_ms }
    }

    /// The clock-skew window, milliseconds.
    pub fn skew_ms(&self) -> i64 {
        self.skew_ms
    }

    fn precheck(&self, h: &SignatureHeaders, now: i64) -> Result<[u8; 16], ApiError> {
        // `abs_diff` cannot overflow: `(t - now).abs()` wrapped for t near i64::MIN and let
        // such timestamps through.
        if h.timestamp_ms.abs_diff(now) > self.skew_ms.unsigned_abs() {
            return Err(ApiError::StaleRequest(format!(
                "request signed at {} but the server time is {now}; fix the device clock (allowed skew {} s)",
                h.timestamp_ms,
                self.skew_ms / 1000
            )));
        }
        let key = replay_key(&h.device, &h.nonce);
        if self.replay.seen(&key, now) {
            return Err(replayed());
        }
        Ok(key)
    }

    fn check_signature(
        &self,
        public_key: &VerifyingKey,
        h: &SignatureHeaders,
        method: &str,
        path_and_query: &str,
        body: &[u8],
    ) -> Result<(), ApiError> {
        let message = canonical_request(method, path_and_query, &h.device, h.timestamp_ms, &h.nonce, body);
        signing::verify_with(public_key, &message, &h.signature)
            .map_err(|_| ApiError::BadSignature("the request signature does not verify with this device's key".into()))
    }

    async fn device_key(&self, db: &Db, device: &str) -> Result<Option<CachedKey>, ApiError> {
        if let Some((cached, at)) = lock(&self.keys.entries).get(device) {
            if at.elapsed() < KEY_CACHE_TTL {
                return Ok(Some(cached.clone()));
            }
        }
        // Boxed so the (rare) database lookup does not size every request future that verifies.
        let Some(DeviceKeyRow { public_key, revoked }) = Box::pin(db.device_key(device)).await? else {
            return Ok(None);
        };
        let key = signing::verifying_key(&public_key)
            .map_err(|e| ApiError::Internal(format!("device {device:?} has an unusable stored key: {e}")))?;
        let cached = CachedKey { key, revoked };
        lock(&self.keys.entries).insert(device.to_string(), (cached.clone(), Instant::now()));
        Ok(Some(cached))
    }

    /// Verifies an enrolled device's request; returns its device id.
    pub async fn verify_device(
        &self,
        db: &Db,
        method: &str,
        path_and_query: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<String, ApiError> {
        let h = SignatureHeaders::parse(headers)?;
        let now = now_ms();
        let replay_key = self.precheck(&h, now)?;
        let row = self.device_key(db, &h.device).await?.ok_or_else(|| {
            ApiError::UnknownDevice(format!("device {:?} is not enrolled; enroll with an enrollment token", h.device))
        })?;
        self.check_signature(&row.key, &h, method, path_and_query, body)?;
        self.record_nonce(&h, replay_key, now).await?;
        if row.revoked {
            return Err(ApiError::DeviceRevoked(format!(
                "device {:?} was revoked; re-enroll it with a new key and token if it should come back",
                h.device
            )));
        }
        Ok(h.device)
    }

    /// Records a verified request's nonce: in memory (a replay to this process is refused
    /// without a round trip), then in the database shared by restarts and replicas.
    async fn record_nonce(&self, h: &SignatureHeaders, key: [u8; 16], now: i64) -> Result<(), ApiError> {
        self.replay.record(key, h.timestamp_ms.saturating_add(self.skew_ms), now)?;
        self.nonces.record(h.timestamp_ms, &key).await
    }

    /// Verifies an enrollment request signed with the key being enrolled.
    pub async fn verify_enrollment(
        &self,
        public_key: &[u8; 32],
        method: &str,
        path_and_query: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<String, ApiError> {
        let h = SignatureHeaders::parse(headers)?;
        let expected = device_id_for_key(public_key);
        if h.device != expected {
            return Err(ApiError::BadSignature(format!(
                "{HEADER_DEVICE} must be the public key's device id {expected:?} when enrolling"
            )));
        }
        let now = now_ms();
        let replay_key = self.precheck(&h, now)?;
        let key = signing::verifying_key(public_key)
            .map_err(|_| ApiError::InvalidRequest("public_key is not a valid Ed25519 point".into()))?;
        self.check_signature(&key, &h, method, path_and_query, body)?;
        self.record_nonce(&h, replay_key, now).await?;
        Ok(h.device)
    }

    /// Fails with `device_revoked` (or `unknown_device`) when the device may no longer talk to us.
    pub async fn ensure_active(&self, db: &Db, device: &str) -> Result<(), ApiError> {
        match self.device_key(db, device).await? {
            None => Err(ApiError::UnknownDevice(format!("device {device:?} is not enrolled"))),
            Some(row) if row.revoked => Err(ApiError::DeviceRevoked(format!("device {device:?} was revoked"))),
            Some(_) => Ok(()),
        }
    }

    /// Forgets a device's cached key so its revocation applies to its next request.
    pub fn evict_device(&self, device: &str) {
        lock(&self.keys.entries).remove(device);
    }

    /// Drops expired nonces and stale keys; run periodically.
    pub fn prune(&self) {
        self.replay.prune(now_ms());
        lock(&self.keys.entries).retain(|_, (_, at)| at.elapsed() < KEY_CACHE_TTL);
    }
}

/// A verified device request: the device id and the raw body it signed.
pub struct SignedDevice {
    /// Verified device id.
    pub device_id: String,
    /// Body bytes (parse them with [`crate::extract::parse_json`]).
    pub body: Bytes,
}

impl SignedDevice {
    /// The audit actor: `device:<id>`.
    pub fn actor(&self) -> String {
        format!("device:{}", self.device_id)
    }
}

/// The method and path-with-query a device signed.
pub fn signed_target(parts: &Parts) -> (String, String) {
    let pq =
        parts.uri.path_and_query().map(|pq| pq.as_str().to_string()).unwrap_or_else(|| parts.uri.path().to_string());
    (parts.method.as_str().to_string(), pq)
}

impl FromRequest<SharedState> for SignedDevice {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &SharedState) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let (method, pq) = signed_target(&parts);
        let headers = parts.headers.clone();
        let body = crate::extract::read_body(Request::from_parts(parts, body), state).await?;
        let device_id = state.devices.verify_device(&state.db, &method, &pq, &headers, &body).await?;
        Ok(SignedDevice { device_id, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_headers_are_named() {
        let e = SignatureHeaders::parse(&HeaderMap::new()).unwrap_err();
        assert_eq!(e.code(), "bad_signature");
        assert!(e.to_string().contains(HEADER_DEVICE));
    }
}
