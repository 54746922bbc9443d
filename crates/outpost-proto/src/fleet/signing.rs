//! Device request signing: every request an enrolled device makes is signed with its Ed25519
//! key, so the server knows which device sent it, that nobody changed it on the way, and that
//! it is not a replay.
//!
//! Why signed requests and not mTLS: the signature survives TLS-terminating proxies and load
//! balancers (where mTLS client identity is lost or must be forwarded in a trusted header), needs
//! no certificate authority, no certificate renewal and no TLS stack on plain-HTTP site networks,
//! and revocation is a database flag checked on every request instead of a CRL. TLS for
//! confidentiality stays an orthogonal deployment choice (`https://` server URL).
//!
//! The signed message is [`canonical_request`]: method, path with query, device id, timestamp,
//! nonce and the SHA-256 of the body, one per line. The server accepts a timestamp within its
//! clock-skew window and each (device, nonce) only once inside that window, which is what makes
//! a captured request useless later.

use ed25519_dalek::Signer;
use sha2::{Digest, Sha256};

/// Header carrying the device id (or, at enrollment, the public key's device id).
pub const HEADER_DEVICE: &str = "x-outpost-device";
/// Header carrying the signing time, Unix milliseconds.
pub const HEADER_TIMESTAMP: &str = "x-outpost-timestamp";
/// Header carrying a fresh random nonce, 16 to 64 hex characters.
pub const HEADER_NONCE: &str = "x-outpost-nonce";
/// Header carrying the base64 (standard, padded) Ed25519 signature.
pub const HEADER_SIGNATURE: &str = "x-outpost-signature";
/// Key algorithm name used on the wire.
pub const ALGORITHM_ED25519: &str = "ed25519";

/// Why a signature or key was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    /// The public key is not 32 bytes of a valid Ed25519 point.
    #[error("public key is not a valid Ed25519 key")]
    BadPublicKey,
    /// The signature is malformed or does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// A header is missing or malformed.
    #[error("{0}")]
    BadHeader(String),
}

/// The exact bytes a device signs for one request.
pub fn canonical_request(
    method: &str,
    path_and_query: &str,
    device: &str,
    timestamp_ms: i64,
    nonce: &str,
    body: &[u8],
) -> Vec<u8> {
    let body_hash = hex::encode(Sha256::digest(body));
    format!(
        "OUTPOST-SIG-V1\n{}\n{path_and_query}\n{device}\n{timestamp_ms}\n{nonce}\n{body_hash}",
        method.to_uppercase()
    )
    .into_bytes()
}

/// The device id belonging to a public key: `d-` and the first 20 hex characters of its
/// SHA-256. Deriving the id from the key makes a retried enrollment land on the same device.
pub fn device_id_for_key(public_key: &[u8; 32]) -> String {
    format!("d-{}", &hex::encode(Sha256::digest(public_key))[..20])
}

/// A device's private key.
pub struct DeviceKey {
    key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceKey").field("device_id", &self.device_id()).finish_non_exhaustive()
    }
}

impl DeviceKey {
    /// Builds a key from 32 secret bytes (fresh random bytes for a new key).
    pub fn from_secret(secret: [u8; 32]) -> DeviceKey {
        DeviceKey { key: ed25519_dalek::SigningKey::from_bytes(&secret) }
    }

    /// The 32 secret bytes, for storing the key.
    pub fn secret(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The 32-byte public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// The public key, base64.
    pub fn public_key_base64(&self) -> String {
        base64_encode(&self.public_key())
    }

    /// The device id derived from the public key.
    pub fn device_id(&self) -> String {
        device_id_for_key(&self.public_key())
    }

    /// Signs a message; returns the base64 signature.
    pub fn sign(&self, message: &[u8]) -> String {
        base64_encode(&self.key.sign(message).to_bytes())
    }

    /// Signs a request and returns the four header (name, value) pairs to send with it.
    pub fn sign_request(
        &self,
        device: &str,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        timestamp_ms: i64,
        nonce: &str,
    ) -> [(&'static str, String); 4] {
        let message = canonical_request(method, path_and_query, device, timestamp_ms, nonce, body);
        [
            (HEADER_DEVICE, device.to_string()),
            (HEADER_TIMESTAMP, timestamp_ms.to_string()),
            (HEADER_NONCE, nonce.to_string()),
            (HEADER_SIGNATURE, self.sign(&message)),
        ]
    }
}

/// Decodes a base64 public key and checks it is a valid Ed25519 point.
pub fn parse_public_key(text: &str) -> Result<[u8; 32], SigningError> {
    let bytes = base64_decode(text).ok_or(SigningError::BadPublicKey)?;
    let key: [u8; 32] = bytes.try_into().map_err(|_| SigningError::BadPublicKey)?;
    ed25519_dalek::VerifyingKey::from_bytes(&key).map_err(|_| SigningError::BadPublicKey)?;
    Ok(key)
}

/// A decompressed Ed25519 public key, parsed once and reused for every request of a device.
pub use ed25519_dalek::VerifyingKey;

/// Parses a 32-byte Ed25519 public key (the costly point decompression happens here).
pub fn verifying_key(public_key: &[u8; 32]) -> Result<VerifyingKey, SigningError> {
    VerifyingKey::from_bytes(public_key).map_err(|_| SigningError::BadPublicKey)
}

/// Verifies a base64 signature over `message` with a 32-byte public key (strict: rejects weak
/// keys and malleable signatures).
pub fn verify(public_key: &[u8; 32], message: &[u8], signature_b64: &str) -> Result<(), SigningError> {
    verify_with(&verifying_key(public_key)?, message, signature_b64)
}

/// [`verify`] with an already parsed key. `verify_strict` is dalek's stronger check (it also
/// refuses small-order keys and non-canonical signatures), so it alone decides.
pub fn verify_with(key: &VerifyingKey, message: &[u8], signature_b64: &str) -> Result<(), SigningError> {
    let bytes = base64_decode(signature_b64).ok_or(SigningError::BadSignature)?;
    let bytes: [u8; 64] = bytes.try_into().map_err(|_| SigningError::BadSignature)?;
    let signature = ed25519_dalek::Signature::from_bytes(&bytes);
    key.verify_strict(message, &signature).map_err(|_| SigningError::BadSignature)
}

/// Checks a nonce header value: 16 to 64 hex characters.
pub fn validate_nonce(nonce: &str) -> Result<(), SigningError> {
    if (16..=64).contains(&nonce.len()) && nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(SigningError::BadHeader(format!("{HEADER_NONCE} must be 16-64 hex characters")))
    }
}

/// Standard padded base64.
pub fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes standard padded base64; `None` when malformed.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text.trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> DeviceKey {
        DeviceKey::from_secret([seed; 32])
    }

    #[test]
    fn signed_request_verifies_and_any_change_breaks_it() {
        let k = key(7);
        let id = k.device_id();
        let headers = k.sign_request(
            &id,
            "post",
            "/v1/device/heartbeat",
            b"{}",
            1_700_000_000_000,
            "00112233445566778899aabbccddeeff",
        );
        let sig = &headers[3].1;
        let msg = canonical_request(
            "POST",
            "/v1/device/heartbeat",
            &id,
            1_700_000_000_000,
            "00112233445566778899aabbccddeeff",
            b"{}",
        );
        assert!(verify(&k.public_key(), &msg, sig).is_ok());
        let changed = [
            canonical_request(
                "POST",
                "/v1/device/heartbeat",
                &id,
                1_700_000_000_000,
                "00112233445566778899aabbccddeeff",
                b"{ }",
            ),
            canonical_request(
                "GET",
                "/v1/device/heartbeat",
                &id,
                1_700_000_000_000,
                "00112233445566778899aabbccddeeff",
                b"{}",
            ),
            canonical_request(
                "POST",
                "/v1/device/heartbeat",
                &id,
                1_700_000_000_001,
                "00112233445566778899aabbccddeeff",
                b"{}",
            ),
            canonical_request(
                "POST",
                "/v1/device/heartbeat",
                &id,
                1_700_000_000_000,
                "00112233445566778899aabbccddeef0",
                b"{}",
            ),
        ];
        for m in changed {
            assert_eq!(verify(&k.public_key(), &m, sig), Err(SigningError::BadSignature));
        }
        assert_eq!(verify(&key(8).public_key(), &msg, sig), Err(SigningError::BadSignature));
    }

    #[test]
    fn device_id_is_stable_per_key() {
        assert_eq!(key(1).device_id(), key(1).device_id());
        assert_ne!(key(1).device_id(), key(2).device_id());
        assert_eq!(key(1).device_id().len(), 22);
    }

    #[test]
    fn malformed_keys_signatures_and_nonces_are_rejected() {
        assert_eq!(parse_public_key("not base64!"), Err(SigningError::BadPublicKey));
        assert_eq!(parse_public_key(&base64_encode(&[1; 31])), Err(SigningError::BadPublicKey));
        assert!(parse_public_key(&key(3).public_key_base64()).is_ok());
        assert_eq!(verify(&key(3).public_key(), b"m", "AAAA"), Err(SigningError::BadSignature));
        assert!(validate_nonce("short").is_err());
        assert!(validate_nonce("zzzzzzzzzzzzzzzzzz").is_err());
        assert!(validate_nonce("0123456789abcdef").is_ok());
    }
}
