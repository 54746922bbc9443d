//! The TUF repository the server publishes for its packages, under `<data_dir>/tuf/`.
//!
//! Who holds which key: `outpost keys init` leaves the root and targets keys with the operator
//! and puts only the snapshot and timestamp keys here (`tuf/keys/`), with the first root in
//! `tuf/metadata/1.root.json`. The server never signs targets: an operator's tool signs a new
//! targets version offline and sends it ([`TufRepo::put_targets`]); the server checks it
//! against the trusted root (threshold of targets keys, the next version, every listed
//! package published in the registry with that length and hash), then releases a snapshot and
//! a timestamp with its online keys. It signs those again before they expire, and when a newer
//! root appears (a key rotation), so devices never see a frozen repository from an honest server.
//!
//! Delegated roles (one per model namespace, `outpost keys delegate`) are signed offline too,
//! by the namespace's keys, and checked against the delegation the top-level targets make.
//!
//! Layout (consistent snapshots): `metadata/N.root.json`, `N.targets.json`, `N.ROLE.json` (the
//! role name percent-encoded), `N.snapshot.json`, `timestamp.json`; targets are served from the
//! artifact store at `targets/NAME/HASH.FILE`.

use outpost_tuf::delegation::{check_role_name, role_covers, RESERVED};
use outpost_tuf::remote::{decode_name, encode_name};
use outpost_tuf::verify::{role_of, verify_role};
use outpost_tuf::writer::{expires, sign, RepoDir, RoleKey};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// How long a timestamp the server signs is valid.
pub const TIMESTAMP_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// How long a snapshot the server signs is valid.
pub const SNAPSHOT_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// Why the repository refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum TufRepoError {
    /// No root yet: the operator has not run `outpost keys init` for this server.
    #[error("this server has no TUF repository: run `outpost keys init --data-dir <the server's data dir>`")]
    NotConfigured,
    /// The metadata does not verify or does not follow the last version.
    #[error("{0}")]
    Refused(String),
    /// The server lacks an online key the root names.
    #[error("{0}")]
    MissingKey(String),
    /// A file could not be read or written.
    #[error("{0}")]
    Io(String),
}

/// What an operator sends in one release: a top-level targets version, delegated roles'
/// versions (role name, metadata bytes), or both.
#[derive(Debug, Clone, Default)]
pub struct Release {
    /// The next top-level targets.
    pub targets: Option<Vec<u8>>,
    /// The next version of each of these delegated roles.
    pub roles: Vec<(String, Vec<u8>)>,
}

/// That every target `signed` lists is inside `entry`'s paths (for a delegated role) and a
/// published package.
fn check_listed(
    signed: &Value,
    entry: Option<&Value>,
    published: &impl Fn(&str, u64, &str) -> Result<(), String>,
) -> Result<(), TufRepoError> {
    for (path, info) in signed["targets"].as_object().into_iter().flatten() {
        if let Some(entry) = entry.filter(|e| !role_covers(e, path)) {
            return Err(TufRepoError::Refused(format!(
                "role {} lists {path:?}, outside its paths {}: clients would ignore it",
                entry["name"], entry["paths"]
            )));
        }
        let length = info["length"].as_u64().unwrap_or(u64::MAX);
        let sha = info["hashes"]["sha256"].as_str().unwrap_or("");
        published(path, length, sha).map_err(|e| TufRepoError::Refused(format!("target {path:?}: {e}")))?;
    }
    Ok(())
}

/// The repository.
#[derive(Debug)]
pub struct TufRepo {
    dir: PathBuf,
    /// Serialises writers; readers read files, which are replaced atomically.
    write: Mutex<Option<u64>>,
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_slice::<Value>(&std::fs::read(path).ok()?).ok()
}

fn ts(at: std::time::SystemTime) -> jiff::Timestamp {
    let secs = at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    jiff::Timestamp::from_second(i64::try_from(secs).unwrap_or(i64::MAX)).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

impl TufRepo {
    /// The repository under `data_dir/tuf` (it may not exist yet).
    pub fn open(data_dir: &Path) -> TufRepo {
        TufRepo { dir: data_dir.join("tuf"), write: Mutex::new(None) }
    }

    fn metadata_dir(&self) -> PathBuf {
        self.dir.join("metadata")
    }

    /// The highest `N` of `N.ROLE.json`.
    fn latest(&self, role: &str) -> Option<u64> {
        let suffix = format!(".{role}.json");
        std::fs::read_dir(self.metadata_dir())
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(&suffix)?.parse::<u64>().ok())
            .max()
    }

    /// The newest root's `signed` part and version.
    pub fn root(&self) -> Option<(u64, Value)> {
        let v = self.latest("root")?;
        let doc = read_json(&self.metadata_dir().join(format!("{v}.root.json")))?;
        Some((v, doc["signed"].clone()))
    }

    /// Whether the operator set the repository up.
    pub fn is_configured(&self) -> bool {
        self.latest("root").is_some()
    }

    /// A metadata file as published (`N.root.json`, `timestamp.json`, …); `None` for any
    /// other name.
    pub fn metadata_file(&self, name: &str) -> Option<Vec<u8>> {
        let ok = name.ends_with(".json") && !name.starts_with('.') && !name.contains(['/', '\\']);
        ok.then(|| std::fs::read(self.metadata_dir().join(name)).ok()).flatten()
    }

    /// The current top-level targets `signed` part (an empty version 0 before the first).
    pub fn targets(&self) -> Result<Value, TufRepoError> {
        if !self.is_configured() {
            return Err(TufRepoError::NotConfigured);
        }
        Ok(match self.latest("targets") {
            Some(v) => read_json(&self.metadata_dir().join(format!("{v}.targets.json")))
                .map(|d| d["signed"].clone())
                .ok_or_else(|| TufRepoError::Io(format!("{v}.targets.json is unreadable")))?,
            None => json!({"_type": "targets", "version": 0, "targets": {}}),
        })
    }

    fn online_key(&self, role: &str, root: &Value) -> Result<RoleKey, TufRepoError> {
        let path = self.dir.join("keys").join(format!("{role}.json"));
        let key = RoleKey::load(&path).map_err(|e| TufRepoError::MissingKey(format!("{role} key: {e}")))?;
        let (ids, _) = role_of(root, role).map_err(TufRepoError::Refused)?;
        if !ids.contains(&key.key_id()) {
            return Err(TufRepoError::MissingKey(format!(
                "the root names other {role} keys than {} (rotated?): put the new {role} key there",
                path.display()
            )));
        }
        Ok(key)
    }

    /// The current `signed` part of delegated role `role` (an empty version 0 before its first).
    pub fn role(&self, role: &str) -> Result<Value, TufRepoError> {
        if !self.is_configured() {
            return Err(TufRepoError::NotConfigured);
        }
        check_role_name(role).map_err(TufRepoError::Refused)?;
        Ok(match self.latest(&encode_name(role)) {
            Some(v) => read_json(&self.metadata_dir().join(format!("{v}.{}.json", encode_name(role))))
                .map(|d| d["signed"].clone())
                .ok_or_else(|| TufRepoError::Io(format!("{v}.{role}.json is unreadable")))?,
            None => json!({"_type": "targets", "version": 0, "targets": {}}),
        })
    }

    /// Accepts targets an operator signed offline: [`TufRepo::put_release`] of the top-level
    /// targets alone. Returns the new targets version.
    pub fn put_targets(
        &self,
        bytes: &[u8],
        published: impl Fn(&str, u64, &str) -> Result<(), String>,
        now: std::time::SystemTime,
    ) -> Result<u64, TufRepoError> {
        let release = Release { targets: Some(bytes.to_vec()), roles: Vec::new() };
        let out = self.put_release(&release, published, now)?;
        Ok(out.first().map(|(_, v)| *v).unwrap_or(0))
    }

    /// Accepts one release signed offline: a new top-level targets version (verified against
    /// the newest root) and/or new versions of delegated roles (each verified against the
    /// delegation the top-level targets make: its keys and threshold, every target inside its
    /// paths). Each is the next version of its role, unexpired, and lists only packages the
    /// registry holds with that length and sha256 (`published(path, length, sha256)`). Every
    /// role the top-level targets delegate to must then have metadata that verifies. Then
    /// releases a snapshot and timestamp. Returns each role published with its version.
    pub fn put_release(
        &self,
        release: &Release,
        published: impl Fn(&str, u64, &str) -> Result<(), String>,
        now: std::time::SystemTime,
    ) -> Result<Vec<(String, u64)>, TufRepoError> {
        let mut guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let (_, root) = self.root().ok_or(TufRepoError::NotConfigured)?;
        let refused = TufRepoError::Refused;
        let mut out = Vec::new();
        let top = match &release.targets {
            Some(bytes) => {
                let (ids, threshold) = role_of(&root, "targets").map_err(refused)?;
                let signed = verify_role(bytes, "targets", &root["keys"], &ids, threshold).map_err(refused)?;
                let version = self.check_next("targets", &signed, now)?;
                check_listed(&signed, None, &published)?;
                out.push(("targets".to_string(), version));
                signed
            }
            None => match self.latest("targets") {
                Some(_) => self.targets()?,
                None => return Err(refused("no targets metadata yet: send the top-level targets first".into())),
            },
        };
        let delegations = &top["delegations"];
        let entries: Vec<&Value> = delegations["roles"].as_array().map(|r| r.iter().collect()).unwrap_or_default();
        let entry_of = |role: &str| entries.iter().copied().find(|e| e["name"] == role);
        let verify_delegated = |role: &str, bytes: &[u8]| -> Result<Value, TufRepoError> {
            let entry = entry_of(role)
                .ok_or_else(|| refused(format!("the top-level targets delegate no role named {role:?}")))?;
            let ids: Vec<String> =
                entry["keyids"].as_array().into_iter().flatten().filter_map(|k| k.as_str().map(String::from)).collect();
            let threshold = entry["threshold"].as_u64().unwrap_or(1);
            verify_role(bytes, "targets", &delegations["keys"], &ids, threshold)
                .map_err(|e| refused(format!("role {role:?}: {e}")))
        };
        let mut seen = std::collections::BTreeSet::new();
        for (role, bytes) in &release.roles {
            check_role_name(role).map_err(refused)?;
            if !seen.insert(role.as_str()) {
                return Err(refused(format!("role {role:?} appears twice in one release")));
            }
            let signed = verify_delegated(role, bytes)?;
            let version = self.check_next(&encode_name(role), &signed, now)?;
            if signed["delegations"]["roles"].as_array().is_some_and(|r| !r.is_empty()) {
                return Err(refused(format!(
                    "role {role:?} delegates further: this server releases one level of delegation"
                )));
            }
            check_listed(&signed, entry_of(role), &published)?;
            out.push((role.clone(), version));
        }
        // A new top-level targets must not strand a delegated role clients can no longer verify.
        if release.targets.is_some() {
            for entry in &entries {
                let role = entry["name"].as_str().unwrap_or_default();
                check_role_name(role).map_err(refused)?;
                if seen.contains(role) {
                    continue;
                }
                let stored = self.latest(&encode_name(role)).and_then(|v| {
                    std::fs::read(self.metadata_dir().join(format!("{v}.{}.json", encode_name(role)))).ok()
                });
                let Some(stored) = stored else {
                    return Err(refused(format!(
                        "role {role:?} is delegated but has no metadata: send its first version in the same release"
                    )));
                };
                verify_delegated(role, &stored).map_err(|e| {
                    refused(format!(
                        "{e}; a re-keyed role needs a new version signed by its new keys in the same release"
                    ))
                })?;
            }
        }
        let repo = RepoDir::new(&self.dir);
        let io = |e: outpost_tuf::writer::WriteError| TufRepoError::Io(e.to_string());
        // Roles first, the top-level targets next, snapshot and timestamp last: nothing a
        // client can reach pins a file that is not there yet.
        for ((role, bytes), (_, version)) in
            release.roles.iter().zip(out.iter().skip(release.targets.is_some() as usize))
        {
            repo.put_metadata(&format!("{version}.{}.json", encode_name(role)), bytes).map_err(io)?;
        }
        if let (Some(bytes), Some((_, version))) = (&release.targets, out.first()) {
            repo.put_metadata(&format!("{version}.targets.json"), bytes).map_err(io)?;
        }
        self.release(&root, now)?;
        *guard = self.latest("root");
        Ok(out)
    }

    /// That `signed` is the next version after the stored `N.FILE.json` and unexpired.
    fn check_next(&self, file: &str, signed: &Value, now: std::time::SystemTime) -> Result<u64, TufRepoError> {
        let current = self.latest(file).unwrap_or(0);
        let version = signed["version"].as_u64().unwrap_or(0);
        if version != current + 1 {
            return Err(TufRepoError::Refused(format!(
                "{file} version {version} does not follow the published version {current}: sign version {}",
                current + 1
            )));
        }
        let expiry = signed["expires"].as_str().and_then(|e| e.parse::<jiff::Timestamp>().ok());
        if expiry.is_none_or(|e| e <= ts(now)) {
            return Err(TufRepoError::Refused(format!("the {file} metadata has expired or has no valid `expires`")));
        }
        Ok(version)
    }

    /// The delegated roles that have metadata here: encoded file name → newest version.
    fn delegated_files(&self) -> std::collections::BTreeMap<String, u64> {
        let mut out = std::collections::BTreeMap::new();
        for entry in std::fs::read_dir(self.metadata_dir()).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((v, role)) = name.strip_suffix(".json").and_then(|n| n.split_once('.')) else { continue };
            let Ok(v) = v.parse::<u64>() else { continue };
            if RESERVED.contains(&role) {
                continue;
            }
            let best = out.entry(role.to_string()).or_insert(v);
            *best = (*best).max(v);
        }
        out
    }

    /// Signs a new snapshot (pinning the current targets) and timestamp with the online keys.
    fn release(&self, root: &Value, now: std::time::SystemTime) -> Result<(), TufRepoError> {
        let snapshot_key = self.online_key("snapshot", root)?;
        let timestamp_key = self.online_key("timestamp", root)?;
        let next = self.latest("snapshot").unwrap_or(0) + 1;
        let mut meta = serde_json::Map::new();
        if let Some(v) = self.latest("targets") {
            let bytes = std::fs::read(self.metadata_dir().join(format!("{v}.targets.json")))
                .map_err(|e| TufRepoError::Io(e.to_string()))?;
            meta.insert("targets.json".into(), outpost_tuf::writer::meta_entry(&bytes, v));
            // Every delegated role stays listed: a client refuses a snapshot that drops one.
            for (file, rv) in self.delegated_files() {
                let bytes = std::fs::read(self.metadata_dir().join(format!("{rv}.{file}.json")))
                    .map_err(|e| TufRepoError::Io(e.to_string()))?;
                meta.insert(format!("{}.json", decode_name(&file)), outpost_tuf::writer::meta_entry(&bytes, rv));
            }
        } else {
            // Clients need a targets role even before the first package: an empty one signed
            // offline is required, so until then only the root is served.
            return Ok(());
        }
        let snapshot = json!({"_type": "snapshot", "spec_version": outpost_tuf::writer::SPEC_VERSION, "version": next,
            "expires": expires(ts(now + SNAPSHOT_LIFETIME)), "meta": meta});
        let snapshot_bytes = sign(&snapshot, &[&snapshot_key]);
        let repo = RepoDir::new(&self.dir);
        let io = |e: outpost_tuf::writer::WriteError| TufRepoError::Io(e.to_string());
        repo.put_metadata(&format!("{next}.snapshot.json"), &snapshot_bytes).map_err(io)?;
        let timestamp_version = read_json(&self.metadata_dir().join("timestamp.json"))
            .and_then(|d| d["signed"]["version"].as_u64())
            .unwrap_or(0)
            + 1;
        let timestamp = json!({"_type": "timestamp", "spec_version": outpost_tuf::writer::SPEC_VERSION,
            "version": timestamp_version, "expires": expires(ts(now + TIMESTAMP_LIFETIME)),
            "meta": {"snapshot.json": outpost_tuf::writer::meta_entry(&snapshot_bytes, next)}});
        repo.put_metadata("timestamp.json", &sign(&timestamp, &[&timestamp_key])).map_err(io)?;
        tracing::info!(snapshot = next, timestamp = timestamp_version, "TUF snapshot and timestamp signed");
        Ok(())
    }

    /// Signs snapshot and timestamp again when the timestamp is past half its life or gone,
    /// or when the root changed since the last release. Returns whether it signed.
    pub fn refresh_online(&self, now: std::time::SystemTime) -> Result<bool, TufRepoError> {
        let mut guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let Some((root_version, root)) = self.root() else { return Ok(false) };
        if self.latest("targets").is_none() {
            return Ok(false);
        }
        let expiry = read_json(&self.metadata_dir().join("timestamp.json"))
            .and_then(|d| d["signed"]["expires"].as_str()?.parse::<jiff::Timestamp>().ok());
        let half_life = ts(now + TIMESTAMP_LIFETIME / 2);
        let due = expiry.is_none_or(|e| e <= half_life) || *guard != Some(root_version);
        if !due {
            return Ok(false);
        }
        self.release(&root, now)?;
        *guard = Some(root_version);
        Ok(true)
    }
}

#[cfg(test)]
#[path = "tuf_tests.rs"]
mod tests;
