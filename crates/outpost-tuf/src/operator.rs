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
/// Most keys one role may have here.
pub const MAX_KEYS: usize = 16;

/// How many keys the offline roles get and how many of them must sign. The online roles
/// (snapshot, timestamp) have one key each: the server signs them alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyCounts {
    /// Root: keys, threshold.
    pub root: (usize, u32),
    /// Targets: keys, threshold.
    pub targets: (usize, u32),
}

impl Default for KeyCounts {
    fn default() -> KeyCounts {
        KeyCounts { root: (1, 1), targets: (1, 1) }
    }
}

impl KeyCounts {
    fn of(&self, role: &str) -> (usize, u32) {
        match role {
            "root" => self.root,
            "targets" => self.targets,
            _ => (1, 1),
        }
    }

    fn check(&self) -> Result<(), WriteError> {
        for role in ["root", "targets"] {
            let (n, t) = self.of(role);
            if n == 0 || n > MAX_KEYS || t == 0 || t as usize > n {
                return Err(invalid(format!(
                    "{role}: {n} keys with threshold {t}; a role needs 1 to {MAX_KEYS} keys and a threshold from 1 to its key count"
                )));
            }
        }
        Ok(())
    }
}

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

/// `n` days from now.
pub(crate) fn days(n: i64) -> Result<jiff::Timestamp, WriteError> {
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

    /// The file of `role`'s key number `i` (0-based): `ROLE.json`, then `ROLE-2.json`, ….
    pub fn nth_key_path(&self, role: &str, i: usize) -> PathBuf {
        let first = self.key_path(role);
        if i == 0 {
            return first;
        }
        first.with_file_name(format!("{role}-{}.json", i + 1))
    }

    /// The file of delegated `role`'s key number `i` (0-based): `delegated/ROLE.json`, then
    /// `delegated/ROLE-2.json`, … (the role name percent-encoded).
    pub fn role_key_path(&self, role: &str, i: usize) -> PathBuf {
        let name = crate::remote::encode_name(role);
        let file = if i == 0 { format!("{name}.json") } else { format!("{name}-{}.json", i + 1) };
        self.keys_dir.join("delegated").join(file)
    }

    /// Every key of delegated `role` held here, in order (none when the first is missing).
    pub fn load_role_keys(&self, role: &str) -> Result<Vec<RoleKey>, WriteError> {
        let mut keys = Vec::new();
        while keys.len() < MAX_KEYS {
            let path = self.role_key_path(role, keys.len());
            if !path.exists() {
                break;
            }
            keys.push(RoleKey::load(&path)?);
        }
        Ok(keys)
    }

    fn repo(&self) -> RepoDir {
        RepoDir::new(&self.repo_dir)
    }

    /// Every key of `role` held here, in order (at least the first).
    pub fn load_all(&self, role: &str) -> Result<Vec<RoleKey>, WriteError> {
        let mut keys = vec![RoleKey::load(&self.key_path(role))?];
        while keys.len() < MAX_KEYS {
            let path = self.nth_key_path(role, keys.len());
            if !path.exists() {
                break;
            }
            keys.push(RoleKey::load(&path)?);
        }
        Ok(keys)
    }

    /// Makes one key per role, root version 1 (also `1.root.json` in the keys directory: the
    /// root devices are given) and an empty targets version 1. Returns the root's bytes.
    pub fn init(&self, root_days: i64) -> Result<Vec<u8>, WriteError> {
        self.init_with(root_days, KeyCounts::default())
    }

    /// [`Places::init`] with `counts` keys and thresholds for root and targets; root version 1
    /// is signed by every root key.
    pub fn init_with(&self, root_days: i64, counts: KeyCounts) -> Result<Vec<u8>, WriteError> {
        counts.check()?;
        for role in ROLES {
            for i in 0..counts.of(role).0 {
                let path = self.nth_key_path(role, i);
                if path.exists() {
                    return Err(invalid(format!(
                        "{} exists: keys are made once; rotate a role to replace its keys",
                        path.display()
                    )));
                }
            }
        }
        if newest(&self.repo_dir.join("metadata"), "root").is_some() {
            return Err(invalid(format!("{} already holds a TUF repository", self.repo_dir.display())));
        }
        let mut specs = Vec::new();
        for role in ROLES {
            let (n, threshold) = counts.of(role);
            let keys: Vec<RoleKey> = (0..n).map(|_| RoleKey::generate()).collect();
            for (i, key) in keys.iter().enumerate() {
                key.save(&self.nth_key_path(role, i))?;
            }
            specs.push(RoleSpec { keys, threshold });
        }
        let roles = roles_of(specs);
        let root_keys: Vec<&RoleKey> = roles.root.keys.iter().collect();
        let root = sign(&root_signed(&roles, 1, days(root_days)?), &root_keys);
        let anchor = self.keys_dir.join("1.root.json");
        write_atomic(&anchor, &root).map_err(|source| WriteError::Io { path: anchor, source })?;
        let repo = self.repo();
        repo.put_metadata("1.root.json", &root)?;
        let targets_keys: Vec<&RoleKey> = roles.targets.keys.iter().collect();
        repo.put_metadata("1.targets.json", &sign(&targets_signed(1, days(TARGETS_DAYS)?, &[], None), &targets_keys))?;
        Ok(root)
    }

    /// Replaces `role`'s keys (as many as it has, same threshold): root version N+1 signed by
    /// the current root keys (and the new ones, for root); rotating targets also signs the
    /// newest targets again with the new keys, since what the old ones signed no longer
    /// verifies. Returns the first new key.
    pub fn rotate(&self, role: &str, root_days: i64) -> Result<RoleKey, WriteError> {
        if !ROLES.contains(&role) {
            return Err(invalid(format!("the role must be one of {}", ROLES.join(", "))));
        }
        let metadata = self.repo_dir.join("metadata");
        let (v, current) = newest(&metadata, "root").ok_or_else(|| invalid("no TUF repository to rotate a key of"))?;
        let old_root = self.load_all("root")?;
        let mut specs = Vec::new();
        let mut replaced = Vec::new();
        for r in ROLES {
            let held = self.load_all(r)?;
            let threshold = current["signed"]["roles"][r]["threshold"].as_u64().unwrap_or(1).max(1) as u32;
            if threshold as usize > held.len() {
                return Err(invalid(format!(
                    "{r} needs {threshold} keys to sign, {} are here; rotate where the keys are",
                    held.len()
                )));
            }
            let keys = if r == role { held.iter().map(|_| RoleKey::generate()).collect() } else { held };
            if r == role {
                replaced = keys.clone();
            }
            specs.push(RoleSpec { keys, threshold });
        }
        let roles = roles_of(specs);
        let mut signers: Vec<&RoleKey> = old_root.iter().collect();
        if role == "root" {
            signers.extend(roles.root.keys.iter());
        }
        let next = sign(&root_signed(&roles, v + 1, days(root_days)?), &signers);
        // The old key files stay beside the new ones, renamed.
        for (i, key) in replaced.iter().enumerate() {
            let path = self.nth_key_path(role, i);
            let _ = std::fs::rename(&path, path.with_extension(format!("json.v{v}")));
            key.save(&path)?;
        }
        let copy = self.keys_dir.join(format!("{}.root.json", v + 1));
        write_atomic(&copy, &next).map_err(|source| WriteError::Io { path: copy, source })?;
        let repo = self.repo();
        if role == "targets" {
            let (tv, doc) = newest(&metadata, "targets").ok_or_else(|| invalid("no targets metadata"))?;
            let mut signed = doc["signed"].clone();
            signed["version"] = serde_json::json!(tv + 1);
            signed["expires"] = serde_json::json!(expires(days(TARGETS_DAYS)?));
            let keys: Vec<&RoleKey> = replaced.iter().collect();
            repo.put_metadata(&format!("{}.targets.json", tv + 1), &sign(&signed, &keys))?;
        }
        // Written last: the server takes a new root as the signal to sign again.
        repo.put_metadata(&format!("{}.root.json", v + 1), &next)?;
        replaced.into_iter().next().ok_or_else(|| invalid("a role without keys"))
    }
}

/// The four roles from their specs in [`ROLES`] order.
fn roles_of(mut specs: Vec<RoleSpec>) -> Roles {
    let timestamp = specs.pop().unwrap_or_else(|| RoleSpec::single(RoleKey::generate()));
    let snapshot = specs.pop().unwrap_or_else(|| RoleSpec::single(RoleKey::generate()));
    let targets = specs.pop().unwrap_or_else(|| RoleSpec::single(RoleKey::generate()));
    let root = specs.pop().unwrap_or_else(|| RoleSpec::single(RoleKey::generate()));
    Roles { root, targets, snapshot, timestamp }
}

/// The next targets version after `current` (a targets `signed` part), with `path` set to
/// `entry`, signed by `key`.
pub fn sign_next_targets(current: &Value, key: &RoleKey, path: &str, entry: Value) -> Result<Vec<u8>, WriteError> {
    sign_next_targets_by(current, &[key], path, entry)
}

/// [`sign_next_targets`] signed by each of `keys` (a threshold of the targets keys, or of a
/// delegated role's keys when `current` is that role's).
pub fn sign_next_targets_by(
    current: &Value,
    keys: &[&RoleKey],
    path: &str,
    entry: Value,
) -> Result<Vec<u8>, WriteError> {
    let mut signed = next_targets(current)?;
    signed["targets"][path] = entry;
    Ok(sign(&signed, keys))
}

/// The next version of targets metadata (`current`'s `signed` part): version + 1, a fresh
/// expiry, everything else kept.
pub fn next_targets(current: &Value) -> Result<Value, WriteError> {
    let mut signed = current.clone();
    let version = signed["version"].as_u64().unwrap_or(0) + 1;
    signed["_type"] = serde_json::json!("targets");
    signed["spec_version"] = serde_json::json!(crate::writer::SPEC_VERSION);
    signed["version"] = serde_json::json!(version);
    signed["expires"] = serde_json::json!(expires(days(TARGETS_DAYS)?));
    if !signed["targets"].is_object() {
        signed["targets"] = serde_json::json!({});
    }
    Ok(signed)
}
