//! Drift telemetry on the device: the configuration of drift windows, and the task that takes
//! the windows every serving model closed (see [`outpost_runtime::drift`]), counts them into the
//! per-version report windows the server's rollout gates sum, keeps the latest per model for the
//! state report, exports each as a telemetry record, and raises a `drift` alert when a model's
//! status reaches `alert` (a `drift.cleared` event when it leaves it).

use crate::export::Exporter;
use crate::metrics::Metrics;
use crate::store::ModelStore;
use outpost_proto::fleet::drift::{DriftReport, DriftStatus, DEFAULT_ALERT_PSI, DEFAULT_WARN_PSI};
use outpost_runtime::drift::DriftSettings;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// `[drift]`: how drift windows are cut and judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DriftConfig {
    /// Requests after which a window closes. Default 1000.
    pub window_samples: u64,
    /// Seconds after which a window with at least `min_samples` requests closes. Default 300.
    pub window_s: u64,
    /// Requests a window needs to close on age. Default 100.
    pub min_samples: u64,
    /// Elements sampled per tensor per request. Default 4096.
    pub max_elements: usize,
    /// Drift score (PSI) at which a window is `warn`. Default 0.1.
    pub warn_psi: f64,
    /// Drift score (PSI) at which a window is `alert`. Default 0.25.
    pub alert_psi: f64,
}

impl Default for DriftConfig {
    fn default() -> Self {
        let d = DriftSettings::default();
        DriftConfig {
            window_samples: d.window_samples,
            window_s: d.window_secs,
            min_samples: d.min_samples,
            max_elements: d.max_elements,
            warn_psi: DEFAULT_WARN_PSI,
            alert_psi: DEFAULT_ALERT_PSI,
        }
    }
}

impl DriftConfig {
    /// The runtime's settings, or why these make no sense.
    pub fn settings(&self) -> Result<DriftSettings, String> {
        if self.window_samples == 0 || self.min_samples == 0 || self.max_elements == 0 {
            return Err("drift: window_samples, min_samples and max_elements must be at least 1".into());
        }
        if !(self.warn_psi.is_finite() && self.alert_psi.is_finite() && 0.0 < self.warn_psi)
            || self.warn_psi > self.alert_psi
        {
            return Err(format!(
                "drift: warn_psi ({}) must be above 0 and at most alert_psi ({})",
                self.warn_psi, self.alert_psi
            ));
        }
        Ok(DriftSettings {
            window_samples: self.window_samples,
            window_secs: self.window_s,
            min_samples: self.min_samples.min(self.window_samples),
            max_elements: self.max_elements,
            warn_psi: self.warn_psi,
            alert_psi: self.alert_psi,
        })
    }
}

/// How often serving models are asked for closed windows.
const POLL: Duration = Duration::from_secs(1);

/// Runs until `stop` turns true.
pub async fn run(
    store: Arc<ModelStore>,
    metrics: Arc<Metrics>,
    export: Option<Arc<Exporter>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut alerting: HashMap<String, bool> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.changed() => return,
        }
        for (name, slot) in store.slots() {
            let Some(model) = slot.active else { continue };
            for window in model.drift().poll() {
                metrics.drift(&name, &window);
                let now = window.status == DriftStatus::Alert;
                let before = alerting.insert(name.clone(), now).unwrap_or(false);
                if now && !before {
                    tracing::warn!(model = %name, version = %window.version, score = window.score, "drift alert");
                }
                let Some(export) = &export else { continue };
                export.telemetry(&name, &window.version, &window);
                if now != before {
                    let (alert, event) = if now { (true, "drift") } else { (false, "drift.cleared") };
                    let details = details(&window);
                    if let Err(e) = export.event(alert, event, Some(&name), Some(&window.version), &details).await {
                        tracing::warn!(error = %e, model = %name, "cannot queue a drift alert for export");
                    }
                }
            }
        }
    }
}

/// What a drift alert says: the score, the levels, and the features that moved most.
fn details(w: &DriftReport) -> serde_json::Value {
    let top: Vec<_> = w
        .features
        .iter()
        .take(3)
        .map(|f| serde_json::json!({"feature": f.feature, "psi": f.psi, "ks": f.ks, "mean": f.mean, "ref_mean": f.ref_mean, "std": f.std, "ref_std": f.ref_std}))
        .collect();
    serde_json::json!({"status": w.status, "score": w.score, "ks": w.ks, "samples": w.samples, "features": top})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_inconsistent_levels_are_refused() {
        let s = DriftConfig::default().settings().unwrap();
        assert_eq!(s, DriftSettings::default());
        let bad = DriftConfig { warn_psi: 0.5, alert_psi: 0.2, ..DriftConfig::default() };
        assert!(bad.settings().unwrap_err().contains("warn_psi"));
        let bad = DriftConfig { window_samples: 0, ..DriftConfig::default() };
        assert!(bad.settings().is_err());
        let small = DriftConfig { window_samples: 10, ..DriftConfig::default() }.settings().unwrap();
        assert_eq!(small.min_samples, 10);
    }
}
