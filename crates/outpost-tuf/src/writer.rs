//! Writing a TUF repository: ed25519 role keys in files, and metadata signed over its canonical
//! JSON (sigstore-tuf's encoder, the OLPC form python-tuf signs too).
//!
//! The repository uses consistent snapshots: `metadata/N.root.json`, `metadata/N.targets.json`,
//! `metadata/N.snapshot.json`, `metadata/timestamp.json`, and each target at
//! `targets/DIR/HASH.NAME`. Every write goes through a temporary file and a rename, and the
//! timestamp (what clients read first) is written last, so a reader never sees a timestamp
//! pinning a snapshot that is not there yet.

use crate::store::write_atomic;
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The specification version the metadata declares.
pub const SPEC_VERSION: &str = "1.0.31";

/// Why writing failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A key file or a metadata file is not what it should be.
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WriteError + '_ {
    move |source| WriteError::Io { path: path.to_path_buf(), source }
}

/// An ed25519 key of one role.
#[derive(Clone)]
pub struct RoleKey {
    signing: SigningKey,
}

impl std::fmt::Debug for RoleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleKey").field("keyid", &self.key_id()).finish_non_exhaustive()
    }
}

impl RoleKey {
    /// A new random key.
    pub fn generate() -> RoleKey {
        RoleKey { signing: SigningKey::from_bytes(&rand::random::<[u8; 32]>()) }
    }

    /// The key with this 32-byte seed (tests).
    pub fn from_seed(seed: [u8; 32]) -> RoleKey {
        RoleKey { signing: SigningKey::from_bytes(&seed) }
    }

    /// The public key as TUF metadata lists it.
    pub fn public(&self) -> Value {
        json!({"keytype": "ed25519", "scheme": "ed25519",
               "keyval": {"public": hex::encode(self.signing.verifying_key().to_bytes())}})
    }

    /// The key id: sha256 of the public key's canonical JSON.
    pub fn key_id(&self) -> String {
        let canonical = sigstore_tuf::canonical_json::to_canonical_bytes(&self.public()).unwrap_or_default();
        hex::encode(Sha256::digest(canonical))
    }

    /// Writes the key (public and private halves, securesystemslib's JSON form) with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), WriteError> {
        let mut doc = self.public();
        doc["keyval"]["private"] = json!(hex::encode(self.signing.to_bytes()));
        let bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
        write_atomic(path, &bytes).map_err(io(path))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io(path))?;
        }
        Ok(())
    }

    /// Reads a key written by [`RoleKey::save`].
    pub fn load(path: &Path) -> Result<RoleKey, WriteError> {
        let bytes = std::fs::read(path).map_err(io(path))?;
        let doc: Value = serde_json::from_slice(&bytes)
            .map_err(|e| WriteError::Invalid(format!("{}: not a key file: {e}", path.display())))?;
        if doc["keytype"] != "ed25519" {
            return Err(WriteError::Invalid(format!("{}: only ed25519 keys are used", path.display())));
        }
        let seed: [u8; 32] = doc["keyval"]["private"]
            .as_str()
            .and_then(|h| hex::decode(h).ok())
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| WriteError::Invalid(format!("{}: no 32-byte private key", path.display())))?;
        let key = RoleKey::from_seed(seed);
        if doc["keyval"]["public"] != key.public()["keyval"]["public"] {
            return Err(WriteError::Invalid(format!(
                "{}: the public key does not match the private one",
                path.display()
            )));
        }
        Ok(key)
    }
}

/// Signs `signed` with `keys`: the metadata file's bytes.
pub fn sign(signed: &Value, keys: &[&RoleKey]) -> Vec<u8> {
    let canonical = sigstore_tuf::canonical_json::to_canonical_bytes(signed).unwrap_or_default();
    let signatures: Vec<Value> = keys
        .iter()
        .map(|k| json!({"keyid": k.key_id(), "sig": hex::encode(k.signing.sign(&canonical).to_bytes())}))
        .collect();
    let mut out = serde_json::to_vec_pretty(&json!({"signed": signed, "signatures": signatures})).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Keys and threshold of one top-level role.
#[derive(Debug, Clone)]
pub struct RoleSpec {
    /// The role's keys.
    pub keys: Vec<RoleKey>,
    /// How many of them must sign.
    pub threshold: u32,
}

impl RoleSpec {
    /// One key, threshold one.
    pub fn single(key: RoleKey) -> RoleSpec {
        RoleSpec { keys: vec![key], threshold: 1 }
    }
}

/// The four top-level roles.
#[derive(Debug, Clone)]
pub struct Roles {
    /// Root.
    pub root: RoleSpec,
    /// Targets.
    pub targets: RoleSpec,
    /// Snapshot.
    pub snapshot: RoleSpec,
    /// Timestamp.
    pub timestamp: RoleSpec,
}

/// A time in TUF's format (`2030-01-01T00:00:00Z`).
pub fn expires(at: jiff::Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Root metadata `signed` part for `roles` at `version`.
pub fn root_signed(roles: &Roles, version: u64, expires_at: jiff::Timestamp) -> Value {
    let mut keys = Map::new();
    let mut role_map = Map::new();
    for (name, spec) in [
        ("root", &roles.root),
        ("targets", &roles.targets),
        ("snapshot", &roles.snapshot),
        ("timestamp", &roles.timestamp),
    ] {
        let ids: Vec<String> = spec.keys.iter().map(RoleKey::key_id).collect();
        for k in &spec.keys {
            keys.insert(k.key_id(), k.public());
        }
        role_map.insert(name.into(), json!({"keyids": ids, "threshold": spec.threshold}));
    }
    json!({"_type": "root", "spec_version": SPEC_VERSION, "version": version, "expires": expires(expires_at),
           "consistent_snapshot": true, "keys": keys, "roles": role_map})
}

/// What a snapshot or timestamp says about a metadata file.
pub fn meta_entry(bytes: &[u8], version: u64) -> Value {
    json!({"version": version, "length": bytes.len(), "hashes": {"sha256": hex::encode(Sha256::digest(bytes))}})
}

/// A repository directory being written.
#[derive(Debug, Clone)]
pub struct RepoDir {
    /// `metadata/` and `targets/` live here.
    pub dir: PathBuf,
}

impl RepoDir {
    /// The repository in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> RepoDir {
        RepoDir { dir: dir.into() }
    }

    /// Writes `metadata/NAME`.
    pub fn put_metadata(&self, name: &str, bytes: &[u8]) -> Result<(), WriteError> {
        let path = self.dir.join("metadata").join(name);
        write_atomic(&path, bytes).map_err(io(&path))
    }

    /// Writes a target's bytes at its consistent-snapshot path, `targets/DIR/HASH.NAME`.
    pub fn put_target(&self, name: &str, bytes: &[u8]) -> Result<(), WriteError> {
        let hash = hex::encode(Sha256::digest(bytes));
        let rel = match name.rsplit_once('/') {
            Some((dir, file)) => format!("{dir}/{hash}.{file}"),
            None => format!("{hash}.{name}"),
        };
        let path = self.dir.join("targets").join(rel);
        write_atomic(&path, bytes).map_err(io(&path))
    }

    /// Writes targets (top-level, signed by `keys`), then a snapshot pinning it and the
    /// `delegated` role files, then the timestamp pinning the snapshot: one consistent release.
    #[allow(clippy::too_many_arguments)]
    pub fn release(
        &self,
        version: u64,
        targets: &Value,
        targets_keys: &[&RoleKey],
        delegated: &[(String, Vec<u8>, u64)],
        snapshot_key: &RoleKey,
        timestamp_key: &RoleKey,
        expires_at: jiff::Timestamp,
    ) -> Result<(), WriteError> {
        let targets_bytes = sign(targets, targets_keys);
        let targets_version = targets["version"].as_u64().unwrap_or(1);
        self.put_metadata(&format!("{targets_version}.targets.json"), &targets_bytes)?;
        let mut meta = Map::new();
        meta.insert("targets.json".into(), meta_entry(&targets_bytes, targets_version));
        for (role, bytes, v) in delegated {
            self.put_metadata(&format!("{v}.{}.json", crate::remote::encode_name(role)), bytes)?;
            meta.insert(format!("{role}.json"), meta_entry(bytes, *v));
        }
        let snapshot = json!({"_type": "snapshot", "spec_version": SPEC_VERSION, "version": version,
                              "expires": expires(expires_at), "meta": meta});
        let snapshot_bytes = sign(&snapshot, &[snapshot_key]);
        self.put_metadata(&format!("{version}.snapshot.json"), &snapshot_bytes)?;
        let timestamp = json!({"_type": "timestamp", "spec_version": SPEC_VERSION, "version": version,
                               "expires": expires(expires_at),
                               "meta": {"snapshot.json": meta_entry(&snapshot_bytes, version)}});
        self.put_metadata("timestamp.json", &sign(&timestamp, &[timestamp_key]))
    }
}

/// A targets `signed` part listing `targets` (name → bytes) at `version`.
pub fn targets_signed(
    version: u64,
    expires_at: jiff::Timestamp,
    targets: &[(&str, &[u8])],
    delegations: Option<Value>,
) -> Value {
    let mut map = Map::new();
    for (name, bytes) in targets {
        map.insert(
            (*name).to_string(),
            json!({"length": bytes.len(), "hashes": {"sha256": hex::encode(Sha256::digest(bytes))}}),
        );
    }
    let mut signed = json!({"_type": "targets", "spec_version": SPEC_VERSION, "version": version,
                            "expires": expires(expires_at), "targets": map});
    if let Some(d) = delegations {
        signed["delegations"] = d;
    }
    signed
}
