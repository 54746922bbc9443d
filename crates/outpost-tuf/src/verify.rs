//! Checks a repository makes before it accepts metadata an operator signed offline: that a
//! threshold of the keys the trusted root lists for the role signed it, over its canonical JSON.
//! (Devices run the full client workflow in [`crate::client`]; this is the server's gate.)

use serde_json::Value;
use sha2::Digest;

/// The `signed` part of `bytes` after checking that `threshold` of `keyids` (looked up in
/// `keys`, a root's or delegator's key map) signed it, and that it is of `kind`.
pub fn verify_role(bytes: &[u8], kind: &str, keys: &Value, keyids: &[String], threshold: u64) -> Result<Value, String> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON metadata: {e}"))?;
    let signed = doc.get("signed").cloned().ok_or("no `signed` part")?;
    if signed["_type"] != kind {
        return Err(format!("expected {kind} metadata, got {:?}", signed["_type"]));
    }
    let canonical = sigstore_tuf::canonical_json::to_canonical_bytes(&signed).map_err(|e| e.to_string())?;
    let mut valid = std::collections::BTreeSet::new();
    for sig in doc["signatures"].as_array().ok_or("no `signatures` list")? {
        let Some(keyid) = sig["keyid"].as_str() else { continue };
        if !keyids.iter().any(|k| k == keyid) || valid.contains(keyid) {
            continue;
        }
        let key = &keys[keyid];
        if key["keytype"] != "ed25519" || key["scheme"] != "ed25519" {
            continue;
        }
        // The key id must be the key's own hash, or a root could list one key under two ids.
        let canonical_key = sigstore_tuf::canonical_json::to_canonical_bytes(&serde_json::json!({
            "keytype": key["keytype"], "scheme": key["scheme"], "keyval": {"public": key["keyval"]["public"]}
        }))
        .map_err(|e| e.to_string())?;
        if hex::encode(sha2::Sha256::digest(canonical_key)) != keyid {
            continue;
        }
        let public: Option<[u8; 32]> =
            key["keyval"]["public"].as_str().and_then(|h| hex::decode(h).ok()).and_then(|b| b.try_into().ok());
        let signature: Option<[u8; 64]> =
            sig["sig"].as_str().and_then(|h| hex::decode(h).ok()).and_then(|b| b.try_into().ok());
        let (Some(public), Some(signature)) = (public, signature) else { continue };
        let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&public) else { continue };
        if key.verify_strict(&canonical, &ed25519_dalek::Signature::from_bytes(&signature)).is_ok() {
            valid.insert(keyid.to_string());
        }
    }
    if (valid.len() as u64) < threshold.max(1) {
        return Err(format!("{kind}: {} of {} required signatures verify", valid.len(), threshold.max(1)));
    }
    Ok(signed)
}

/// The keys and threshold a root assigns to `role`.
pub fn role_of(root_signed: &Value, role: &str) -> Result<(Vec<String>, u64), String> {
    let r = &root_signed["roles"][role];
    let ids = r["keyids"]
        .as_array()
        .ok_or_else(|| format!("the root has no {role} role"))?
        .iter()
        .filter_map(|k| k.as_str().map(String::from))
        .collect();
    Ok((ids, r["threshold"].as_u64().unwrap_or(1)))
}
