//! Signing device requests in tests, exactly as an agent does.

use outpost_proto::fleet::signing::DeviceKey;
use rand::RngCore;

/// A test device: a fresh Ed25519 key and the device id derived from it.
pub struct TestDevice {
    /// The key.
    pub key: DeviceKey,
    /// Its device id.
    pub id: String,
}

/// A fresh random nonce (32 hex characters).
pub fn fresh_nonce() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Now, Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl TestDevice {
    /// A device with a new random key.
    pub fn new() -> TestDevice {
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let key = DeviceKey::from_secret(secret);
        let id = key.device_id();
        TestDevice { key, id }
    }

    /// Signature headers for a request signed now with a fresh nonce.
    pub fn headers(&self, method: &str, path_and_query: &str, body: &[u8]) -> Vec<(&'static str, String)> {
        self.headers_with(&self.id, method, path_and_query, body, now_ms(), &fresh_nonce())
    }

    /// Signature headers with every input chosen by the test.
    pub fn headers_with(
        &self,
        device: &str,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        timestamp_ms: i64,
        nonce: &str,
    ) -> Vec<(&'static str, String)> {
        self.key.sign_request(device, method, path_and_query, body, timestamp_ms, nonce).to_vec()
    }
}
