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
//! Layout (consistent snapshots): `metadata/N.root.json`, `N.targets.json`, `N.snapshot.json`,
//! `timestamp.json`; targets are served from the artifact store at `targets/NAME/HASH.FILE`.

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

    /// Accepts targets an operator signed offline: verified against the newest root, the next
    /// version, and every target's length and hash confirmed by `published(path, length,
    /// sha256)`. Then releases a snapshot and timestamp. Returns the new targets version.
    pub fn put_targets(
        &self,
        bytes: &[u8],
        published: impl Fn(&str, u64, &str) -> Result<(), String>,
        now: std::time::SystemTime,
    ) -> Result<u64, TufRepoError> {
        let mut guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let (_, root) = self.root().ok_or(TufRepoError::NotConfigured)?;
        let (ids, threshold) = role_of(&root, "targets").map_err(TufRepoError::Refused)?;
        let signed = verify_role(bytes, "targets", &root["keys"], &ids, threshold).map_err(TufRepoError::Refused)?;
        let current = self.latest("targets").unwrap_or(0);
        let version = signed["version"].as_u64().unwrap_or(0);
        if version != current + 1 {
            return Err(TufRepoError::Refused(format!(
                "targets version {version} does not follow the published version {current}: sign version {}",
                current + 1
            )));
        }
        let expiry = signed["expires"].as_str().and_then(|e| e.parse::<jiff::Timestamp>().ok());
        if expiry.is_none_or(|e| e <= ts(now)) {
            return Err(TufRepoError::Refused("the targets metadata has expired or has no valid `expires`".into()));
        }
        for (path, info) in signed["targets"].as_object().into_iter().flatten() {
            let length = info["length"].as_u64().unwrap_or(u64::MAX);
            let sha = info["hashes"]["sha256"].as_str().unwrap_or("");
            published(path, length, sha).map_err(|e| TufRepoError::Refused(format!("target {path:?}: {e}")))?;
        }
        let repo = RepoDir::new(&self.dir);
        repo.put_metadata(&format!("{version}.targets.json"), bytes).map_err(|e| TufRepoError::Io(e.to_string()))?;
        self.release(&root, now)?;
        *guard = self.latest("root");
        Ok(version)
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
