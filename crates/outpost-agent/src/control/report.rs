//! Building the state report (heartbeat) the agent sends to the control plane.
//!
//! The report is what the server's inventory, health views and rollout gates see of a device,
//! so it states plainly what is served, what failed and why, and which desired models are not
//! on the device at all. Turning the store's slots and the metrics windows into model reports is
//! pure ([`model_reports`]) and unit-tested; [`ReportBuilder`] adds the clock, sequence number
//! and system sampling around it.

use super::system::SystemSampler;
use crate::metrics::{Metrics, ModelWindow};
use crate::shadow::Shadows;
use crate::store::ModelStore;
use outpost_proto::fleet::device::{
    DesiredModel, FailureKind, HardwareProfile, Health, ModelReport, StateReport, UpdateReport,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Agent version sent in reports and at enrollment.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// One model as the store sees it, reduced to what a report needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServedModel {
    /// Model name.
    pub name: String,
    /// Version serving, when one is.
    pub active_version: Option<String>,
    /// Version, kind and reason of the last package that failed, when one did.
    pub failure: Option<(Option<String>, FailureKind, String)>,
    /// Why the serving version runs on the backend it does, when it is not the package's first
    /// choice (e.g. onnxruntime is not installed on this device).
    pub backend_note: Option<String>,
}

/// The store's models as [`ServedModel`]s.
pub fn served_models(store: &ModelStore) -> Vec<ServedModel> {
    store
        .slots()
        .into_iter()
        .map(|(name, slot)| ServedModel {
            name,
            active_version: slot.active.as_ref().map(|m| m.version().to_string()),
            backend_note: slot
                .active
                .as_ref()
                .and_then(|m| m.fallback_reason.as_ref().map(|r| format!("serving on {}; {r}", m.backend()))),
            failure: slot.failure.map(|f| (f.version, f.kind, f.reason)),
        })
        .collect()
}

/// Nearest-rank percentile (`q` in 0..=1) of `samples`; 0 when empty. Sorts in place.
pub fn percentile(samples: &mut [f64], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let rank = (q.clamp(0.0, 1.0) * samples.len() as f64).ceil() as usize;
    samples[rank.saturating_sub(1).min(samples.len() - 1)]
}

/// Splits a desired model list into the entries the device accepts and those whose name or
/// version breaks the model-name grammar (a server must never send them; the device checks
/// anyway because it builds file paths from them).
pub fn well_named_models(desired: Vec<DesiredModel>) -> (Vec<DesiredModel>, Vec<DesiredModel>) {
    desired.into_iter().partition(DesiredModel::is_well_named)
}

/// Desired models that are not served at the desired version.
pub fn missing_models(served: &[ServedModel], desired: &[DesiredModel]) -> Vec<DesiredModel> {
    desired
        .iter()
        .filter(|d| !served.iter().any(|s| s.name == d.name && s.active_version.as_deref() == Some(d.version.as_str())))
        .cloned()
        .collect()
}

/// Model reports and overall health: degraded when any package failed or a desired model is not
/// served. A desired model absent from the device is reported as failed with the reason.
pub fn model_reports(
    served: &[ServedModel],
    windows: &HashMap<String, ModelWindow>,
    desired: &[DesiredModel],
    updates: &HashMap<String, UpdateReport>,
    drift: impl Fn(&str) -> Option<outpost_proto::fleet::drift::DriftReport>,
) -> (Vec<ModelReport>, Health) {
    let mut reports = Vec::new();
    let mut health = Health::Ok;
    for model in served {
        let mut window = windows.get(&model.name).cloned().unwrap_or_default();
        let (state, version, reason, failure_kind) = match (&model.active_version, &model.failure) {
            // Serving one version while another failed (a desired update that did not load):
            // both facts travel, so the fleet view shows what was refused and why.
            (Some(v), Some((failed, kind, why))) => {
                let refused = format!("version {} not loaded: {why}", failed.as_deref().unwrap_or("?"));
                let reason = [Some(refused), model.backend_note.clone()].into_iter().flatten().collect::<Vec<_>>();
                ("ready", v.clone(), Some(reason.join("; ")), Some(*kind))
            }
            (Some(v), None) => ("ready", v.clone(), model.backend_note.clone(), None),
            (None, Some((v, kind, reason))) => {
                ("failed", v.clone().unwrap_or_default(), Some(reason.clone()), Some(*kind))
            }
            (None, None) => ("loading", String::new(), None, None),
        };
        if model.failure.is_some() {
            health = Health::Degraded;
        }
        reports.push(ModelReport {
            name: model.name.clone(),
            version,
            state: state.to_string(),
            reason,
            failure_kind,
            installed: Vec::new(),
            update: updates.get(&model.name).filter(|u| model.active_version.as_ref() != Some(&u.version)).map(|u| {
                let mut u = u.clone();
                // Downloaded and installed, then refused at load (a self-test that does not
                // reproduce, over budget, …): the update failed for the load's reason.
                if let Some((Some(v), kind, why)) = &model.failure {
                    if *v == u.version && u.state == "installed" {
                        (u.state, u.failure_kind, u.reason) = ("failed".into(), Some(*kind), Some(why.clone()));
                    }
                }
                u
            }),
            requests: window.requests,
            errors: window.errors,
            latency_p50_ms: percentile(&mut window.latencies_ms, 0.50),
            latency_p99_ms: percentile(&mut window.latencies_ms, 0.99),
            windows: std::mem::take(&mut window.versions),
            drift: drift(&model.name).filter(|d| model.active_version.as_deref() == Some(d.version.as_str())),
            ..ModelReport::default()
        });
    }
    for missing in missing_models(served, desired) {
        health = Health::Degraded;
        if served.iter().any(|s| s.name == missing.name) {
            continue; // served at another version: its own entry shows which, and the update
        }
        let report = match updates.get(&missing.name).filter(|u| u.version == missing.version) {
            Some(u) => ModelReport {
                state: u.state.clone(),
                reason: u.reason.clone(),
                failure_kind: u.failure_kind,
                update: Some(u.clone()),
                ..ModelReport::default()
            },
            None if missing.package.is_none() => ModelReport {
                state: "failed".into(),
                reason: Some(
                    "desired but not on this device, and the server holds no package for this version \
                     (published as metadata only): install it by hand or publish a package"
                        .into(),
                ),
                ..ModelReport::default()
            },
            None => ModelReport { state: "downloading".into(), ..ModelReport::default() },
        };
        reports.push(ModelReport { name: missing.name.clone(), version: missing.version.clone(), ..report });
    }
    (reports, health)
}

/// Makes successive state reports for one agent.
#[derive(Debug)]
pub struct ReportBuilder {
    started: Instant,
    next_seq: u64,
    sampler: SystemSampler,
    data_dir: PathBuf,
    store: Arc<ModelStore>,
    metrics: Arc<Metrics>,
    /// The hardware profile last put in a report; a report carries it again only when it changed
    /// (and always first after a start, since RAM, disks and accelerators change across reboots).
    hardware_sent: Option<HardwareProfile>,
    /// Shadow candidates, whose counts each report takes.
    shadows: Option<Arc<Shadows>>,
}

impl ReportBuilder {
    /// A builder whose first report gets sequence number `first_seq`.
    pub fn new(store: Arc<ModelStore>, metrics: Arc<Metrics>, data_dir: PathBuf, first_seq: u64) -> ReportBuilder {
        ReportBuilder {
            started: Instant::now(),
            next_seq: first_seq,
            sampler: SystemSampler::new(),
            data_dir,
            store,
            metrics,
            hardware_sent: None,
            shadows: None,
        }
    }

    /// Reports also carry the shadow candidates of `shadows`, with their counts since the
    /// previous report.
    pub fn with_shadows(mut self, shadows: Arc<Shadows>) -> ReportBuilder {
        self.shadows = Some(shadows);
        self
    }

    /// The next report. Latency percentiles, per-version windows and shadow counts cover the
    /// time since the previous one: they are taken here, so a report queued while offline carries
    /// its own interval and the next report starts a new one.
    pub fn build(
        &mut self,
        desired: &[DesiredModel],
        applied_etag: &str,
        updates: &HashMap<String, UpdateReport>,
        on_probation: &HashMap<String, String>,
    ) -> StateReport {
        let served = served_models(&self.store);
        let (mut models, health) =
            model_reports(&served, &self.metrics.take_windows(), desired, updates, |m| self.metrics.latest_drift(m));
        let mut shadows = self.shadows.as_ref().map(|s| s.take_reports()).unwrap_or_default();
        for m in &mut models {
            if m.state == "ready" && on_probation.get(&m.name) == Some(&m.version) {
                m.state = "probation".into();
            }
            m.installed = self.store.installed(&m.name);
            m.shadow = shadows.remove(&m.name);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let profile = super::system::hardware_profile(&self.data_dir);
        let hardware = (self.hardware_sent.as_ref() != Some(&profile)).then(|| {
            self.hardware_sent = Some(profile.clone());
            profile
        });
        StateReport {
            seq,
            at_ms: super::client::now_ms(),
            agent_version: AGENT_VERSION.to_string(),
            uptime_s: self.started.elapsed().as_secs(),
            health,
            models,
            system: self.sampler.sample(&self.data_dir),
            applied_etag: applied_etag.to_string(),
            hardware,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(name: &str, version: Option<&str>, failure: Option<&str>) -> ServedModel {
        ServedModel {
            name: name.into(),
            active_version: version.map(String::from),
            failure: failure.map(|r| (Some("9".to_string()), FailureKind::SelfTest, r.to_string())),
            backend_note: None,
        }
    }

    #[test]
    fn desired_state_naming_a_parent_directory_is_refused_by_the_device() {
        let (ok, refused) = well_named_models(vec![
            desired("defect", "3"),
            desired("../../../../tmp/x", "1"),
            desired("ocr", "../1"),
            desired("", "1"),
        ]);
        assert_eq!(ok, vec![desired("defect", "3")]);
        assert_eq!(refused.len(), 3);
    }

    fn desired(name: &str, version: &str) -> DesiredModel {
        DesiredModel {
            name: name.into(),
            version: version.into(),
            source: "override".into(),
            package: None,
            shadow: None,
            attempt: 0,
        }
    }

    #[test]
    fn percentile_uses_nearest_rank() {
        let mut xs: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&mut xs, 0.5), 50.0);
        assert_eq!(percentile(&mut xs, 0.99), 99.0);
        assert_eq!(percentile(&mut xs, 1.0), 100.0);
        assert_eq!(percentile(&mut [], 0.5), 0.0);
    }

    #[test]
    fn all_desired_models_served_is_healthy_and_counts_come_from_the_window() {
        let mut windows = HashMap::new();
        windows.insert(
            "a".to_string(),
            ModelWindow { requests: 10, errors: 1, latencies_ms: vec![1.0, 2.0, 3.0], ..ModelWindow::default() },
        );
        let (reports, health) =
            model_reports(&[served("a", Some("2"), None)], &windows, &[desired("a", "2")], &HashMap::new(), |_| None);
        assert_eq!(health, Health::Ok);
        assert_eq!(reports.len(), 1);
        assert_eq!((reports[0].state.as_str(), reports[0].requests, reports[0].errors), ("ready", 10, 1));
        assert_eq!((reports[0].latency_p50_ms, reports[0].latency_p99_ms), (2.0, 3.0));
    }

    #[test]
    fn failed_package_or_missing_desired_model_degrades_health() {
        let (reports, health) =
            model_reports(&[served("a", None, Some("hash mismatch"))], &HashMap::new(), &[], &HashMap::new(), |_| None);
        assert_eq!(health, Health::Degraded);
        assert_eq!(reports[0].state, "failed");
        assert_eq!(reports[0].reason.as_deref(), Some("hash mismatch"));
        assert_eq!(reports[0].failure_kind, Some(FailureKind::SelfTest), "the kind travels with the reason");

        // An update that failed while the previous version keeps serving: ready, and says so.
        let (reports, health) = model_reports(
            &[served("a", Some("1"), Some("hash mismatch"))],
            &HashMap::new(),
            &[],
            &HashMap::new(),
            |_| None,
        );
        assert_eq!(health, Health::Degraded);
        assert_eq!((reports[0].state.as_str(), reports[0].version.as_str()), ("ready", "1"));
        assert_eq!(reports[0].reason.as_deref(), Some("version 9 not loaded: hash mismatch"));
        assert_eq!(reports[0].failure_kind, Some(FailureKind::SelfTest));

        let (reports, health) = model_reports(
            &[served("a", Some("1"), None)],
            &HashMap::new(),
            &[desired("a", "2"), desired("b", "1")],
            &HashMap::new(),
            |_| None,
        );
        assert_eq!(health, Health::Degraded);
        let names: Vec<_> = reports.iter().map(|r| (r.name.as_str(), r.state.as_str())).collect();
        assert_eq!(names, [("a", "ready"), ("b", "failed")]);
    }

    #[test]
    fn the_latest_drift_window_travels_only_for_the_serving_version() {
        use outpost_proto::fleet::drift::{DriftReport, DriftStatus};
        let window =
            |v: &str| Some(DriftReport { version: v.into(), status: DriftStatus::Alert, ..DriftReport::default() });
        let (reports, _) =
            model_reports(&[served("a", Some("2"), None)], &HashMap::new(), &[], &HashMap::new(), |_| window("2"));
        assert_eq!(reports[0].drift.as_ref().map(|d| d.status), Some(DriftStatus::Alert));
        let (reports, _) =
            model_reports(&[served("a", Some("2"), None)], &HashMap::new(), &[], &HashMap::new(), |_| window("1"));
        assert!(reports[0].drift.is_none());
    }

    #[test]
    fn a_model_serving_on_a_fallback_backend_says_why_in_its_report() {
        let mut m = served("encoder", Some("2"), None);
        m.backend_note = Some("serving on tract; onnxruntime: backend onnxruntime unavailable".into());
        let (reports, health) = model_reports(&[m], &HashMap::new(), &[], &HashMap::new(), |_| None);
        assert_eq!(reports[0].state, "ready");
        assert!(reports[0].reason.as_deref().is_some_and(|r| r.contains("unavailable")));
        assert_eq!(health, Health::Ok);
    }
}
