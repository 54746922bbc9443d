//! The control side of shadow evaluation: the desired state names, per model, a candidate to
//! run in shadow; this fetches it like an update (same fetcher, TUF check and delta included),
//! loads it like a served version (same runtime path and self-test, its own single session, see
//! [`CandidateModel::load`]) and hands it to the [`Shadows`] the inference API feeds, without touching what serves.
//!
//! The candidate versions are kept in `<data_dir>/shadows.json` and given to the store, which
//! never activates them, also after a restart; pruning spares them for the same reason. When
//! the desired state drops a candidate, it is unloaded, and its package is left to the normal
//! pruning rules.

use super::fetch::{installed_path, Fetcher};
use super::pins;
use crate::shadow::{CandidateModel, Phase, Shadows};
use crate::store::ModelStore;
use outpost_proto::fleet::device::DesiredModel;
use outpost_proto::fleet::rollout::ShadowSpec;
use outpost_runtime::Package;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// A candidate the server asked for, with the model's desired attempt (a raised one retries a
/// candidate that failed).
#[derive(Debug, Clone, PartialEq)]
pub struct WantedShadow {
    /// The candidate.
    pub spec: ShadowSpec,
    /// The model's desired `attempt`.
    pub attempt: u32,
}

/// The candidates a desired model list asks for, by model. A candidate naming the version that
/// is to serve, or breaking the version grammar (it becomes a file name), is left out.
pub fn wanted_shadows(models: &[DesiredModel]) -> BTreeMap<String, WantedShadow> {
    models
        .iter()
        .filter_map(|m| {
            let spec = m.shadow.as_ref()?;
            let usable = spec.version != m.version && outpost_proto::Version::is_valid(&spec.version);
            if !usable {
                tracing::warn!(model = %m.name, candidate = %spec.version, "ignoring a shadow candidate that is the serving version or badly named");
            }
            usable.then(|| (m.name.clone(), WantedShadow { spec: spec.clone(), attempt: m.attempt }))
        })
        .collect()
}

/// Keeps the shadow candidates in step with the desired state.
#[derive(Debug)]
pub struct ShadowControl {
    fetcher: Arc<Fetcher>,
    shadows: Arc<Shadows>,
    store: Arc<ModelStore>,
    model_dir: PathBuf,
    data_dir: PathBuf,
    wanted: Mutex<BTreeMap<String, WantedShadow>>,
    /// Loads started, by model: the version and attempt, so a load runs once per attempt.
    loads: Mutex<HashMap<String, (String, u32)>>,
}

impl ShadowControl {
    /// A controller downloading with `fetcher` (a sibling of the update fetcher).
    pub fn new(
        fetcher: Arc<Fetcher>,
        shadows: Arc<Shadows>,
        store: Arc<ModelStore>,
        model_dir: PathBuf,
        data_dir: PathBuf,
    ) -> Arc<ShadowControl> {
        Arc::new(ShadowControl {
            fetcher,
            shadows,
            store,
            model_dir,
            data_dir,
            wanted: Mutex::new(BTreeMap::new()),
            loads: Mutex::new(HashMap::new()),
        })
    }

    /// The candidates saved by the previous run, to resume before the server answers.
    pub fn saved(&self) -> BTreeMap<String, WantedShadow> {
        let saved = pins::load_shadows(&self.data_dir);
        saved.into_iter().map(|(name, spec)| (name, WantedShadow { spec, attempt: 0 })).collect()
    }

    /// Makes `wanted` the candidates: saved and handed to the store first (so none is ever
    /// activated), then the ones no longer wanted are unloaded. Call [`ShadowControl::tick`] to
    /// fetch and load.
    pub fn set(&self, wanted: BTreeMap<String, WantedShadow>) {
        let specs: BTreeMap<String, ShadowSpec> = wanted.iter().map(|(n, w)| (n.clone(), w.spec.clone())).collect();
        pins::save_shadows(&self.data_dir, &specs);
        self.store.set_shadows(specs.iter().map(|(n, s)| (n.clone(), s.version.clone())).collect());
        self.shadows.retain(|model, version| wanted.get(model).is_some_and(|w| w.spec.version == version));
        for (model, w) in &wanted {
            self.shadows.loading(model, &w.spec.version, w.spec.sample);
        }
        self.loads.lock().unwrap_or_else(|p| p.into_inner()).retain(|model, _| wanted.contains_key(model));
        *self.wanted.lock().unwrap_or_else(|p| p.into_inner()) = wanted;
    }

    /// Moves each candidate on: starts or resumes its download, loads it once its package is
    /// on disk, and records why it failed.
    pub fn tick(self: &Arc<Self>) {
        let wanted = self.wanted.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let downloads: Vec<DesiredModel> = wanted
            .iter()
            .map(|(name, w)| DesiredModel {
                name: name.clone(),
                version: w.spec.version.clone(),
                source: "shadow".into(),
                package: w.spec.package.clone(),
                shadow: None,
                attempt: w.attempt,
            })
            .collect();
        self.fetcher.want(&downloads);
        let fetches = self.fetcher.reports();
        for (name, w) in &wanted {
            let version = &w.spec.version;
            let phase = self.shadows.phase(name).filter(|(v, _)| v == version).map(|(_, p)| p);
            if phase == Some(Phase::Ready) {
                continue;
            }
            if self.store.get(name).is_some_and(|m| m.version() == version) {
                self.shadows.failed(
                    name,
                    version,
                    &format!("version {version} is the one serving; nothing to compare"),
                );
                continue;
            }
            if installed_path(&self.model_dir, name, version).exists() {
                self.load(name, version, w.attempt);
                continue;
            }
            match fetches.get(name).filter(|f| &f.version == version) {
                Some(f) if f.state == "failed" => {
                    let why = f.reason.clone().unwrap_or_else(|| "download failed".into());
                    self.shadows.failed(name, version, &format!("download: {why}"));
                }
                Some(_) => self.shadows.restart(name, version),
                None if w.spec.package.is_none() => self.shadows.failed(
                    name,
                    version,
                    "not on this device, and the server sent no package for it (published as metadata only)",
                ),
                None => {}
            }
        }
    }

    /// Loads the candidate once per attempt, off the async threads.
    fn load(self: &Arc<Self>, name: &str, version: &str, attempt: u32) {
        {
            let mut loads = self.loads.lock().unwrap_or_else(|p| p.into_inner());
            let this = (version.to_string(), attempt);
            if loads.get(name) == Some(&this) {
                return; // loading, or failed at this attempt
            }
            loads.insert(name.to_string(), this);
        }
        self.shadows.restart(name, version);
        let me = self.clone();
        let (name, version) = (name.to_string(), version.to_string());
        tokio::task::spawn_blocking(move || {
            let path = installed_path(&me.model_dir, &name, &version);
            let loaded = Package::open(&path).map_err(|e| e.to_string()).and_then(|pkg| {
                let m = &pkg.manifest.model;
                if m.name != name || m.version != version {
                    return Err(format!("{} holds {}@{}, not {name}@{version}", path.display(), m.name, m.version));
                }
                CandidateModel::load(&pkg, me.store.load_options(), me.store.budget()).map_err(|e| e.to_string())
            });
            match loaded {
                Ok(candidate) => {
                    let ms = candidate.0.load_time.as_millis() as u64;
                    tracing::info!(model = %name, candidate = %version, ms, "shadow candidate loaded");
                    if !me.shadows.ready(&name, &version, Box::new(candidate)) {
                        tracing::info!(model = %name, candidate = %version, "shadow candidate no longer wanted; unloaded");
                    }
                }
                Err(reason) => {
                    tracing::error!(model = %name, candidate = %version, %reason, "shadow candidate failed to load; the serving version is untouched");
                    me.shadows.failed(&name, &version, &reason);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(version: &str, shadow: Option<&str>, attempt: u32) -> DesiredModel {
        DesiredModel {
            name: "m".into(),
            version: version.into(),
            source: "override".into(),
            package: None,
            shadow: shadow.map(|v| ShadowSpec { version: v.into(), package: None, sample: 0.5 }),
            attempt,
        }
    }

    #[test]
    fn the_shadow_of_a_model_is_its_candidate_unless_it_is_the_serving_version_or_badly_named() {
        let wanted = wanted_shadows(&[desired("1", Some("2"), 3)]);
        assert_eq!(wanted["m"].spec.version, "2");
        assert_eq!(wanted["m"].attempt, 3);
        assert!(wanted_shadows(&[desired("1", None, 0)]).is_empty());
        assert!(wanted_shadows(&[desired("2", Some("2"), 0)]).is_empty());
        assert!(wanted_shadows(&[desired("1", Some("../2"), 0)]).is_empty());
    }
}
