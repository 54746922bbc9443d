//! Rolling a model back to the version it served before: instantly when that version is still
//! in memory (a probation window failed), and by blocking the bad version so that no scan or
//! restart activates it again until the desired version changes.

use super::ModelStore;
use serde::{Deserialize, Serialize};

/// A version kept from serving, and what serves in its place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocked {
    /// The rolled-back version.
    pub version: String,
    /// The version to serve instead (the one it replaced), when known.
    pub fallback: Option<String>,
    /// Why it was rolled back.
    pub reason: String,
}

impl ModelStore {
    /// Keeps `blocked.version` of `name` from being activated until the desired version of
    /// `name` changes; the next sync serves the fallback.
    pub fn block(&self, name: &str, blocked: Blocked) {
        self.blocked.write().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), blocked);
    }

    /// The blocked versions, by model.
    pub fn blocked(&self) -> std::collections::HashMap<String, Blocked> {
        self.blocked.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Serves again the version `name` served before `version`, at once when it is still in
    /// memory, and blocks `version`. Returns the version serving afterwards.
    pub fn roll_back(&self, name: &str, version: &str, reason: &str) -> Option<String> {
        let fallback = {
            let mut slots = self.write();
            let slot = slots.get_mut(name)?;
            let fallback = slot.previous.as_ref().map(|m| m.version().to_string());
            if slot.active.as_ref().is_some_and(|m| m.version() == version) && slot.previous.is_some() {
                slot.active = slot.previous.take();
                slot.active_path = slot.previous_path.take();
            }
            fallback
        };
        if let Some(v) = &fallback {
            self.metrics.model_loaded(name, v);
        }
        tracing::warn!(model = %name, %version, serving = ?fallback, %reason, "rolled back");
        self.block(
            name,
            Blocked { version: version.to_string(), fallback: fallback.clone(), reason: reason.to_string() },
        );
        self.get(name).map(|m| m.version().to_string())
    }

    /// The new version of `name` passed its probation: the previous one is let go.
    pub fn release_previous(&self, name: &str) {
        if let Some(slot) = self.write().get_mut(name) {
            slot.previous = None;
            slot.previous_path = None;
        }
    }
}
