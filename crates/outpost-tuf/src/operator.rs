//! What an operator does with the repository's keys, as library calls (`outpost keys` and
//! `outpost model publish --keys-dir` wrap them): make the keys and the first root, rotate one
//! role's key, and sign the next targets version.
//!
//! By default the root and targets keys stay in the operator's keys directory and only the
//! snapshot and timestamp keys go to the server's `tuf/keys/`.

use crate::store::write_atomic;
use crate::writer::{expires, root_signed, sign, targets_signed, RepoDir, RoleKey, RoleSpec, Roles, WriteError};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The four top-level roles, in root's order.
pub const ROLES: [&str; 4] = ["root", "targets", "snapshot", "timestamp"];
/// Days a targets version signed here stays valid.
pub const TARGETS_DAYS: i64 = 90;

/// Where the operator's keys and the server's repository are.
#[derive(Debug, Clone)]
pub struct Places {
    /// The operator's offline keys (root, targets) and every root signed.
    pub keys_dir: PathBuf,
    /// The server's `tuf/` directory: online keys in `keys/`, the repository in `metadata/`.
    pub repo_dir: PathBuf,
}

fn invalid(m: impl Into<String>) -> WriteError {
    WriteError::Invalid(m.into())
}

fn days(n: i64) -> Result<jiff::Timestamp, WriteError> {
    jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_hours(24 * n)).map_err(|e| invalid(e.to_string()))
}

/// The newest `N.ROLE.json` in `dir` and its version.
pub fn newest(dir: &Path, role: &str) -> Option<(u64, Value)> {
    let suffix = format!(".{role}.json");
    let v = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(&suffix)?.parse::<u64>().ok())
        .max()?;
    let doc: Value = serde_json::from_slice(&std::fs::read(dir.join(format!("{v}{suffix}"))).ok()?).ok()?;
    Some((v, doc))
}

impl Places {
    /// The key file of `role`.
    pub fn key_path(&self, role: &str) -> PathBuf {
        match role {
            "snapshot" | "timestamp" => self.repo_dir.join("keys").join(format!("{role}.json")),
            _ => self.keys_dir.join(format!("{role}.json")),
        }
    }

    fn repo(&self) -> RepoDir {
        RepoDir::new(&self.repo_dir)
    }

    fn load(&self, role: &str) -> Result<RoleKey, WriteError> {
        RoleKey::load(&self.key_path(role))
    }

    /// Makes the four keys, root version 1 (also `1.root.json` in the keys directory: the
    /// root devices are given) and an empty targets version 1. Returns the root's bytes.
    pub fn init(&self, root_days: i64) -> Result<Vec<u8>, WriteError> {
        for role in ROLES {
            if self.key_path(role).exists() {
                return Err(invalid(format!(
                    "{} exists: keys are made once; rotate one to replace it",
                    self.key_path(role).display()
                )));
            }
        }
        if newest(&self.repo_dir.join("metadata"), "root").is_some() {
            return Err(invalid(format!("{} already holds a TUF repository", self.repo_dir.display())));
        }
        let keys: Vec<RoleKey> = ROLES.iter().map(|_| RoleKey::generate()).collect();
        for (role, key) in ROLES.iter().zip(&keys) {
            key.save(&self.key_path(role))?;
        }
        let roles = Roles {
            root: RoleSpec::single(keys[0].clone()),
            targets: RoleSpec::single(keys[1].clone()),
            snapshot: RoleSpec::single(keys[2].clone()),
            timestamp: RoleSpec::single(keys[3].clone()),
        };
        let root = sign(&root_signed(&roles, 1, days(root_days)?), &[&keys[0]]);
        let anchor = self.keys_dir.join("1.root.json");
        write_atomic(&anchor, &root).map_err(|source| WriteError::Io { path: anchor, source })?;
        let repo = self.repo();
        repo.put_metadata("1.root.json", &root)?;
        repo.put_metadata("1.targets.json", &sign(&targets_signed(1, days(TARGETS_DAYS)?, &[], None), &[&keys[1]]))?;
        Ok(root)
    }

    /// Replaces `role`'s key: root version N+1 signed by the current root key (and the new
    /// one, for root); rotating targets also signs the newest targets again with the new key,
    /// since what the old key signed no longer verifies. Returns the new key.
    pub fn rotate(&self, role: &str, root_days: i64) -> Result<RoleKey, WriteError> {
        if !ROLES.contains(&role) {
            return Err(invalid(format!("the role must be one of {}", ROLES.join(", "))));
        }
        let metadata = self.repo_dir.join("metadata");
        let (v, _) = newest(&metadata, "root").ok_or_else(|| invalid("no TUF repository to rotate a key of"))?;
        let old_root = self.load("root")?;
        let mut keys = Vec::new();
        for r in ROLES {
            keys.push(if r == role { RoleKey::generate() } else { self.load(r)? });
        }
        let roles = Roles {
            root: RoleSpec::single(keys[0].clone()),
            targets: RoleSpec::single(keys[1].clone()),
            snapshot: RoleSpec::single(keys[2].clone()),
            timestamp: RoleSpec::single(keys[3].clone()),
        };
        let signers: Vec<&RoleKey> = if role == "root" { vec![&old_root, &keys[0]] } else { vec![&old_root] };
        let next = sign(&root_signed(&roles, v + 1, days(root_days)?), &signers);
        let new_key = keys[ROLES.iter().position(|r| *r == role).unwrap_or(0)].clone();
        // The old key file stays beside the new one, renamed.
        let path = self.key_path(role);
        let _ = std::fs::rename(&path, path.with_extension(format!("json.v{v}")));
        new_key.save(&path)?;
        let copy = self.keys_dir.join(format!("{}.root.json", v + 1));
        write_atomic(&copy, &next).map_err(|source| WriteError::Io { path: copy, source })?;
        let repo = self.repo();
        if role == "targets" {
            let (tv, doc) = newest(&metadata, "targets").ok_or_else(|| invalid("no targets metadata"))?;
            let mut signed = doc["signed"].clone();
            signed["version"] = serde_json::json!(tv + 1);
            signed["expires"] = serde_json::json!(expires(days(TARGETS_DAYS)?));
            repo.put_metadata(&format!("{}.targets.json", tv + 1), &sign(&signed, &[&new_key]))?;
        }
        // Written last: the server takes a new root as the signal to sign again.
        repo.put_metadata(&format!("{}.root.json", v + 1), &next)?;
        Ok(new_key)
    }
}

/// The next targets version after `current` (a targets `signed` part), with `path` set to
/// `entry`, signed by `key`.
pub fn sign_next_targets(current: &Value, key: &RoleKey, path: &str, entry: Value) -> Result<Vec<u8>, WriteError> {
    let mut signed = current.clone();
    let version = signed["version"].as_u64().unwrap_or(0) + 1;
    signed["_type"] = serde_json::json!("targets");
    signed["spec_version"] = serde_json::json!(crate::writer::SPEC_VERSION);
    signed["version"] = serde_json::json!(version);
    signed["expires"] = serde_json::json!(expires(days(TARGETS_DAYS)?));
    if !signed["targets"].is_object() {
        signed["targets"] = serde_json::json!({});
    }
    signed["targets"][path] = entry;
    Ok(sign(&signed, &[key]))
}
