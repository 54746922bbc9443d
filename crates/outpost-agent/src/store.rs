//! The models the agent serves, kept in step with the model directory.
//!
//! Each model name has at most one active version: the highest version among the packages in
//! the directory that verify and load. A new version is loaded next to the old one and swapped
//! in with one pointer write; requests already holding the old `Arc<LoadedModel>` finish on it,
//! and its sessions stop when the last one lets go. A package that fails (corrupt file, bad
//! manifest, unsupported op, over budget) is recorded against its model with the reason, and
//! does not disturb any other model — nor the version already serving, which was verified when
//! it was loaded and stays in memory.

use crate::metrics::Metrics;
use outpost_proto::fleet::device::FailureKind;
use outpost_runtime::model::MemoryBudget;
use outpost_runtime::{LoadOptions, LoadedModel, Package};
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

/// Why a package could not be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadFailure {
    /// Version the package declares, when its manifest was readable.
    pub version: Option<String>,
    /// The package on disk.
    pub path: PathBuf,
    /// What kind of failure, for code that branches on it.
    pub kind: FailureKind,
    /// The error, naming the file, op or tensor.
    pub reason: String,
}

/// One model name's state.
#[derive(Debug, Clone, Default)]
pub struct ModelSlot {
    /// The version serving requests.
    pub active: Option<Arc<LoadedModel>>,
    /// Where the active version was loaded from.
    pub active_path: Option<PathBuf>,
    /// The most recent package of this model that failed to load.
    pub failure: Option<LoadFailure>,
    /// The version the active one replaced, kept in memory while the new one is on probation
    /// so a rollback is instant.
    pub previous: Option<Arc<LoadedModel>>,
    /// Where the previous version was loaded from.
    pub previous_path: Option<PathBuf>,
}

impl ModelSlot {
    /// Whether a version is serving.
    pub fn is_ready(&self) -> bool {
        self.active.is_some()
    }
}

/// Size and modification time of a package (summed over a directory's files): when it changes,
/// the package is read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    bytes: u64,
    modified: Option<SystemTime>,
}

#[derive(Debug, Clone)]
struct Candidate {
    path: PathBuf,
    name: String,
    version: Option<String>,
    fingerprint: Fingerprint,
    peek_error: Option<(FailureKind, String)>,
}

/// The served models, shared by the HTTP handlers and the directory watcher.
#[derive(Debug)]
pub struct ModelStore {
    slots: RwLock<BTreeMap<String, ModelSlot>>,
    /// Packages already tried, by path, with the fingerprint they had: not retried until changed.
    tried: RwLock<HashMap<PathBuf, Fingerprint>>,
    /// Of those, the ones that loaded: a desired version may go back to one of them.
    loaded: RwLock<HashMap<PathBuf, Fingerprint>>,
    /// The version of each model the server wants served (empty when standalone).
    desired: RwLock<BTreeMap<String, String>>,
    /// What each package's manifest said, by path: a poll re-reads only packages that changed.
    peeked: RwLock<HashMap<PathBuf, Candidate>>,
    /// Versions rolled back, by model: never activated again until the desired version of the
    /// model changes; the fallback serves in their place.
    blocked: RwLock<HashMap<String, Blocked>>,
    /// Candidate versions running in shadow, by model: on disk, never activated while they are.
    shadows: RwLock<BTreeMap<String, String>>,
    budget: MemoryBudget,
    options: LoadOptions,
    metrics: Arc<Metrics>,
}

impl ModelStore {
    /// An empty store loading models with `options` inside `budget`.
    pub fn new(options: LoadOptions, budget: MemoryBudget, metrics: Arc<Metrics>) -> ModelStore {
        ModelStore {
            slots: RwLock::new(BTreeMap::new()),
            tried: RwLock::new(HashMap::new()),
            loaded: RwLock::new(HashMap::new()),
            desired: RwLock::new(BTreeMap::new()),
            peeked: RwLock::new(HashMap::new()),
            blocked: RwLock::new(HashMap::new()),
            shadows: RwLock::new(BTreeMap::new()),
            budget,
            options,
            metrics,
        }
    }

    /// The active version of `name`, if any.
    pub fn get(&self, name: &str) -> Option<Arc<LoadedModel>> {
        self.read().get(name).and_then(|s| s.active.clone())
    }

    /// The state of `name`, if the directory holds any package of it.
    pub fn slot(&self, name: &str) -> Option<ModelSlot> {
        self.read().get(name).cloned()
    }

    /// Versions of `name` whose packages are in the model directory as of the last scan (and
    /// still there: pruning deletes between scans), highest first: the active one, kept older
    /// ones, and staged ones not yet activated.
    pub fn installed(&self, name: &str) -> Vec<String> {
        let peeked = self.peeked.read().unwrap_or_else(|p| p.into_inner());
        let mut versions: Vec<String> =
            peeked.values().filter(|c| c.name == name && c.path.exists()).filter_map(|c| c.version.clone()).collect();
        versions.sort_by(|a, b| version_cmp(Some(b), Some(a)));
        versions.dedup();
        versions
    }

    /// All models, ready or not, by name.
    pub fn slots(&self) -> BTreeMap<String, ModelSlot> {
        self.read().clone()
    }

    /// Sets the version of each model the server wants served; the next [`ModelStore::sync`]
    /// activates it when its package is in the directory, also when that is a lower version. A
    /// model left out serves its highest loadable version. Returns whether anything changed;
    /// a desired package that failed before is tried again when its model's entry changes.
    pub fn set_desired(&self, models: BTreeMap<String, String>) -> bool {
        let mut desired = self.desired.write().unwrap_or_else(|p| p.into_inner());
        if *desired == models {
            return false;
        }
        let changed: Vec<&String> =
            models.keys().chain(desired.keys()).filter(|n| models.get(*n) != desired.get(*n)).collect();
        let peeked = self.peeked.read().unwrap_or_else(|p| p.into_inner());
        let slots = self.read();
        let active = |p: &PathBuf| slots.values().any(|s| s.active_path.as_ref() == Some(p));
        let retry: Vec<PathBuf> =
            peeked.iter().filter(|(p, c)| changed.contains(&&c.name) && !active(p)).map(|(p, _)| p.clone()).collect();
        drop((slots, peeked));
        let mut tried = self.tried.write().unwrap_or_else(|p| p.into_inner());
        retry.iter().for_each(|p| {
            tried.remove(p);
        });
        // A rolled-back version stays blocked only while it is still the one desired.
        self.blocked.write().unwrap_or_else(|p| p.into_inner()).retain(|name, b| models.get(name) == Some(&b.version));
        *desired = models;
        true
    }

    /// The memory budget shared by the models.
    pub fn budget(&self) -> &MemoryBudget {
        &self.budget
    }

    /// How models are loaded.
    pub fn load_options(&self) -> &LoadOptions {
        &self.options
    }

    /// Sets the candidate version of each model that runs in shadow: its package stays on disk
    /// and is never activated, also when it is the highest version or the only one that loads.
    pub fn set_shadows(&self, shadows: BTreeMap<String, String>) {
        *self.shadows.write().unwrap_or_else(|p| p.into_inner()) = shadows;
    }

    /// The candidate versions running in shadow, by model.
    pub fn shadows(&self) -> BTreeMap<String, String> {
        self.shadows.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Forgets that `name`'s packages failed, so the next sync tries them again (the server
    /// raised the desired attempt). Returns whether there was a failure to forget.
    pub fn retry_failed(&self, name: &str) -> bool {
        let peeked = self.peeked.read().unwrap_or_else(|p| p.into_inner());
        let loaded = self.loaded.read().unwrap_or_else(|p| p.into_inner());
        let mut tried = self.tried.write().unwrap_or_else(|p| p.into_inner());
        let before = tried.len();
        tried.retain(|p, _| loaded.contains_key(p) || peeked.get(p).is_none_or(|c| c.name != name));
        before != tried.len()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, ModelSlot>> {
        self.slots.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, ModelSlot>> {
        self.slots.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings the store in line with `dir`: loads new or changed packages, swaps in newer
    /// versions, drops models whose packages are gone. Blocking (models compile here); returns
    /// whether anything changed.
    pub fn sync(&self, dir: &Path) -> bool {
        let candidates = match self.scan(dir) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "cannot read the model directory");
                return false;
            }
        };
        let mut by_name: BTreeMap<String, Vec<Candidate>> = BTreeMap::new();
        for c in candidates {
            by_name.entry(c.name.clone()).or_default().push(c);
        }
        let mut changed = false;
        let gone: Vec<String> = self.read().keys().filter(|n| !by_name.contains_key(*n)).cloned().collect();
        for name in gone {
            tracing::info!(model = %name, "package removed; unloading");
            self.write().remove(&name);
            self.metrics.model_unloaded(&name);
            changed = true;
        }
        for (name, mut versions) in by_name {
            // Highest version first; unreadable manifests last.
            versions.sort_by(|a, b| version_cmp(b.version.as_deref(), a.version.as_deref()));
            changed |= self.sync_model(&name, &versions);
        }
        self.tried.write().unwrap_or_else(|p| p.into_inner()).retain(|p, _| p.exists());
        self.loaded.write().unwrap_or_else(|p| p.into_inner()).retain(|p, _| p.exists());
        changed
    }

    fn sync_model(&self, name: &str, versions: &[Candidate]) -> bool {
        let active_path = self.slot(name).and_then(|s| s.active_path);
        if active_path.is_some_and(|p| !versions.iter().any(|c| c.path == p)) {
            // The active package was deleted: reconsider every remaining one, best first.
            self.write().entry(name.to_string()).or_default().active_path = None;
            let mut tried = self.tried.write().unwrap_or_else(|p| p.into_inner());
            versions.iter().for_each(|c| {
                tried.remove(&c.path);
            });
        }
        // The version the server wants goes first, whatever its number; the others stay in
        // order as the fallback for a device that serves nothing yet.
        let mut pin = self.desired.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned();
        let blocked = self.blocked.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned();
        if let Some(b) = &blocked {
            // The desired version was rolled back here: its fallback is what is wanted now.
            if pin.is_none() || pin.as_ref() == Some(&b.version) {
                pin = b.fallback.clone();
            }
        }
        // A rolled-back version goes last: it serves only when no other version can, since a
        // device must never be left without a model.
        let is_blocked = |c: &Candidate| blocked.as_ref().is_some_and(|b| c.version.as_ref() == Some(&b.version));
        // A shadow candidate is judged, not served: it is left out whatever else happens.
        let shadow = self.shadows.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned();
        let versions: Vec<&Candidate> =
            versions.iter().filter(|c| shadow.is_none() || c.version != shadow || c.version == pin).collect();
        let mut order: Vec<&Candidate> = versions.iter().copied().filter(|c| !is_blocked(c)).collect();
        order.extend(versions.iter().copied().filter(|c| is_blocked(c)));
        if let Some(pos) = order.iter().position(|c| pin.is_some() && c.version == pin) {
            let pinned = order.remove(pos);
            order.insert(0, pinned);
        }
        let mut changed = false;
        for cand in order {
            let slot = self.slot(name).unwrap_or_default();
            let active_here = slot.active_path.as_ref() == Some(&cand.path);
            let seen = |map: &RwLock<HashMap<PathBuf, Fingerprint>>| {
                map.read().unwrap_or_else(|p| p.into_inner()).get(&cand.path) == Some(&cand.fingerprint)
            };
            let (known, good) = (seen(&self.tried), seen(&self.loaded));
            if known && active_here {
                break; // serving the package it should, unchanged
            }
            let active_version = slot.active.as_ref().map(|m| m.version().to_string());
            if pin.is_some() && cand.version == pin {
                if known && !good && slot.active.is_some() {
                    break; // the desired package failed and is unchanged: keep serving
                }
                if known && !good {
                    continue; // nothing serves: fall back to the best other version
                }
            } else {
                if pin.is_some() && slot.active.is_some() {
                    break; // with a desired version, only it replaces what serves
                }
                if known && !good {
                    continue; // failed before and unchanged: try the next lower version
                }
                if !active_here
                    && slot.active_path.is_some()
                    && version_cmp(cand.version.as_deref(), active_version.as_deref()) == Ordering::Less
                {
                    break; // never downgrade on its own while a newer version serves
                }
            }
            self.tried.write().unwrap_or_else(|p| p.into_inner()).insert(cand.path.clone(), cand.fingerprint);
            changed = true;
            match self.load(cand) {
                Ok(model) => {
                    tracing::info!(
                        model = %name, version = %model.version(), backend = %model.backend(),
                        ms = model.load_time.as_millis() as u64, path = %cand.path.display(),
                        replaced = ?active_version, desired = ?pin, "model loaded"
                    );
                    self.loaded.write().unwrap_or_else(|p| p.into_inner()).insert(cand.path.clone(), cand.fingerprint);
                    self.metrics.model_loaded(name, model.version());
                    let mut slots = self.write();
                    let slot = slots.entry(name.to_string()).or_default();
                    let replaced = slot.active.as_ref().is_some_and(|m| Some(m.version()) != cand.version.as_deref());
                    if replaced {
                        slot.previous = slot.active.take();
                        slot.previous_path = slot.active_path.take();
                    }
                    slot.active = Some(Arc::new(model));
                    slot.active_path = Some(cand.path.clone());
                    if slot.failure.as_ref().is_some_and(|f| f.path == cand.path) {
                        slot.failure = None;
                    }
                    break;
                }
                Err((kind, reason)) => {
                    tracing::error!(model = %name, path = %cand.path.display(), ?kind, %reason, "model failed to load");
                    self.loaded.write().unwrap_or_else(|p| p.into_inner()).remove(&cand.path);
                    self.metrics.model_load_failed(name);
                    let mut slots = self.write();
                    let slot = slots.entry(name.to_string()).or_default();
                    let (version, path) = (cand.version.clone(), cand.path.clone());
                    slot.failure = Some(LoadFailure { version, path, kind, reason });
                    if active_here {
                        // The served package changed on disk and no longer verifies; the copy in
                        // memory was verified when loaded and keeps serving until a good one lands.
                        break;
                    }
                }
            }
        }
        self.metrics.set_model_ready(name, self.slot(name).is_some_and(|s| s.is_ready()));
        changed
    }

    /// The packages in `dir`, with the model each belongs to. Manifests are read again only for
    /// packages whose size or modification time changed since the last poll.
    fn scan(&self, dir: &Path) -> std::io::Result<Vec<Candidate>> {
        let mut out = Vec::new();
        let mut peeked = self.peeked.write().unwrap_or_else(|p| p.into_inner());
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if !is_package(&path) {
                continue;
            }
            let fingerprint = fingerprint(&path);
            if let Some(known) = peeked.get(&path).filter(|c| c.fingerprint == fingerprint) {
                out.push(known.clone());
                continue;
            }
            let cand = match Package::peek_manifest(&path) {
                Ok(m) => Candidate {
                    name: m.model.name,
                    version: Some(m.model.version),
                    path: path.clone(),
                    fingerprint,
                    peek_error: None,
                },
                Err(e) => {
                    // Unreadable manifest: report it under the file's own name.
                    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                    Candidate {
                        name: stem,
                        version: None,
                        path: path.clone(),
                        fingerprint,
                        peek_error: Some((e.failure_kind(), e.to_string())),
                    }
                }
            };
            peeked.insert(path, cand.clone());
            out.push(cand);
        }
        peeked.retain(|p, _| out.iter().any(|c| &c.path == p));
        Ok(out)
    }

    fn load(&self, cand: &Candidate) -> Result<LoadedModel, (FailureKind, String)> {
        if let Some(e) = &cand.peek_error {
            return Err(e.clone());
        }
        let typed = |e: outpost_runtime::RuntimeError| (e.failure_kind(), e.to_string());
        let pkg = Package::open(&cand.path).map_err(typed)?;
        if pkg.manifest.model.name != cand.name {
            let why = format!("manifest changed while loading (now `{}`)", pkg.manifest.model.name);
            return Err((FailureKind::BadManifest, why));
        }
        LoadedModel::load(&pkg, &self.options, &self.budget).map_err(typed)
    }
}

#[path = "store_rollback.rs"]
mod rollback;
pub use rollback::Blocked;

/// Orders versions: numeric dot-separated parts compare as numbers (`10` > `9`, `1.10` > `1.9`),
/// anything else as text; `None` sorts lowest.
pub fn version_cmp(a: Option<&str>, b: Option<&str>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(a), Some(b)) => {
            let (pa, pb): (Vec<&str>, Vec<&str>) = (a.split('.').collect(), b.split('.').collect());
            for (x, y) in pa.iter().zip(&pb) {
                let ord = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(x), Ok(y)) => x.cmp(&y),
                    _ => x.cmp(y),
                };
                if ord != Ordering::Equal {
                    return ord;
                }
            }
            pa.len().cmp(&pb.len())
        }
    }
}

fn is_package(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    if name.starts_with('.') {
        return false; // writers stage packages under dot-names, then rename
    }
    if path.is_dir() {
        return path.join(outpost_proto::manifest::MANIFEST_FILE).exists();
    }
    path.extension().is_some_and(|e| e == outpost_runtime::package::PACKAGE_EXTENSION)
}

fn fingerprint(path: &Path) -> Fingerprint {
    let one = |p: &Path| fs::metadata(p).map(|m| (m.len(), m.modified().ok())).unwrap_or((0, None));
    if path.is_dir() {
        let mut fp = Fingerprint { bytes: 0, modified: None };
        if let Ok(entries) = fs::read_dir(path) {
            for e in entries.flatten() {
                let (len, modified) = one(&e.path());
                fp.bytes += len;
                fp.modified = fp.modified.max(modified);
            }
        }
        fp
    } else {
        let (bytes, modified) = one(path);
        Fingerprint { bytes, modified }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically_then_textually() {
        assert_eq!(version_cmp(Some("10"), Some("9")), Ordering::Greater);
        assert_eq!(version_cmp(Some("1.10"), Some("1.9")), Ordering::Greater);
        assert_eq!(version_cmp(Some("2"), Some("2")), Ordering::Equal);
        assert_eq!(version_cmp(Some("1.0"), Some("1")), Ordering::Greater);
        assert_eq!(version_cmp(Some("b"), Some("a")), Ordering::Greater);
        assert_eq!(version_cmp(None, Some("1")), Ordering::Less);
    }
}
