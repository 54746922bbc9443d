//! Probation: a newly activated version is watched for a window before it is trusted, with the
//! version it replaced kept in memory. It is rolled back, by itself, when during the window its
//! error rate or its p99 latency is far worse than the previous version's while that one served
//! (the request windows are kept per activation, see [`Metrics::probe`]), or when the agent
//! keeps restarting while it is on probation (a crash loop). A
//! rolled-back version is blocked until the desired state names another version.
//!
//! The two request windows are taken at different times: a device that got busier during the
//! update (a rollout fetching deltas, a neighbour process) shows a worse p99 under a version
//! that is no slower. So a latency regression is confirmed before anything is rolled back: both
//! versions run side by side, in alternation on the same load ([`outpost_runtime::side_by_side`]),
//! and only a version that is also slower there goes back. One that is not is not judged on
//! latency again in that probation (its error rate still is).
//!
//! What is on probation and what was rolled back is kept in `<data_dir>/probation.json`
//! (written atomically), so a crash loop is seen across restarts and a rolled-back version stays
//! blocked through them.

use crate::metrics::{Metrics, ModelWindow};
use crate::store::{Blocked, ModelSlot, ModelStore};
use outpost_proto::fleet::device::{FailureKind, UpdateReport};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// File of the persisted state, in the agent's data directory.
pub const PROBATION_FILE: &str = "probation.json";
/// Restarts during one probation that count as a crash loop.
pub const MAX_RESTARTS: u32 = 3;
/// Requests a window needs before its error rate or latency can fail it.
pub const MIN_REQUESTS: u64 = 20;
/// Latencies each window needs before their p99s are compared: below 100 the p99 is the single
/// slowest request, and one scheduling hiccup on a busy device would roll a version back.
pub const MIN_LATENCY_SAMPLES: usize = 100;
/// An error rate up to this is never a failure by itself.
pub const ERROR_RATE_FLOOR: f64 = 0.05;
/// A new version fails when its error rate or p99 is more than this times the previous one's.
pub const WORSE_FACTOR: f64 = 2.0;
/// Measured runs of each version when a latency regression is checked side by side.
pub const SIDE_BY_SIDE_RUNS: usize = 25;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Persisted {
    /// Versions on probation, by model.
    probation: BTreeMap<String, Entry>,
    /// Rolled-back versions, by model.
    blocked: BTreeMap<String, Blocked>,
    /// The last run ended with a clean stop: the next start is not a crash.
    #[serde(default)]
    clean_stop: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    version: String,
    previous: Option<String>,
    restarts: u32,
}

#[derive(Debug, Clone)]
struct Live {
    version: String,
    started: Instant,
    baseline: ModelWindow,
    /// Side by side, this version was not slower than the previous one: latency is settled.
    latency_cleared: bool,
}

/// A regression a version on probation shows against the one it replaced.
#[derive(Debug, Clone, PartialEq)]
pub enum Regression {
    /// The error rate: the version goes back as it is.
    Errors(String),
    /// Request p99: checked side by side before the version goes back.
    Latency(String),
}

impl Regression {
    /// What was seen, in words.
    pub fn reason(&self) -> &str {
        match self {
            Regression::Errors(r) | Regression::Latency(r) => r,
        }
    }
}

/// Whether a new version's latency (ms) is far worse than the previous one's: more than
/// [`WORSE_FACTOR`] times it plus a millisecond (sub-millisecond models jitter by more than 2x).
/// The one rule for request p99s and for side-by-side medians.
pub fn clearly_slower(new_ms: f64, previous_ms: f64) -> bool {
    new_ms > previous_ms * WORSE_FACTOR + 1.0
}

/// The probation of one agent's models.
#[derive(Debug)]
pub struct Probation {
    path: PathBuf,
    window: Duration,
    store: Arc<ModelStore>,
    metrics: Arc<Metrics>,
    state: Mutex<Persisted>,
    live: Mutex<HashMap<String, Live>>,
    /// The model directory and what to keep of it once a version has passed.
    retention: Mutex<Option<(PathBuf, super::prune::Retention)>>,
    latency_checks: Family<CheckLabels, Counter>,
}

/// Labels of the side-by-side latency checks.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CheckLabels {
    model: String,
    /// `confirmed` (rolled back), `cleared` (the device was busier) or `unavailable`.
    outcome: &'static str,
}

fn p99(samples: &[f64]) -> f64 {
    let mut s = samples.to_vec();
    super::report::percentile(&mut s, 0.99)
}

fn error_rate(w: &ModelWindow) -> f64 {
    if w.requests == 0 {
        0.0
    } else {
        w.errors as f64 / w.requests as f64
    }
}

/// How `now` (the new version's window) fails against `before` (the previous version's), if
/// it does; latency only when `judge_latency`.
pub fn verdict(before: &ModelWindow, now: &ModelWindow, judge_latency: bool) -> Option<Regression> {
    if now.requests < MIN_REQUESTS {
        return None;
    }
    let (was, is) = (error_rate(before), error_rate(now));
    if is > ERROR_RATE_FLOOR && is > was * WORSE_FACTOR {
        return Some(Regression::Errors(format!(
            "error rate {:.1} % over {} requests, {:.1} % before the update",
            is * 100.0,
            now.requests,
            was * 100.0
        )));
    }
    if judge_latency
        && before.latencies_ms.len() >= MIN_LATENCY_SAMPLES
        && now.latencies_ms.len() >= MIN_LATENCY_SAMPLES
    {
        let (was, is) = (p99(&before.latencies_ms), p99(&now.latencies_ms));
        if clearly_slower(is, was) {
            return Some(Regression::Latency(format!("p99 latency {is:.2} ms, {was:.2} ms before the update")));
        }
    }
    None
}

impl Probation {
    /// Loads the persisted state: counts this start as a restart of every version on
    /// probation (rolling back those that reach [`MAX_RESTARTS`]) and blocks again what was
    /// rolled back.
    pub fn start(data_dir: &Path, window: Duration, store: Arc<ModelStore>, metrics: Arc<Metrics>) -> Arc<Probation> {
        let path = data_dir.join(PROBATION_FILE);
        let mut state: Persisted = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                // Written atomically, so this is tampering or disk damage: say so rather than
                // silently forgetting what was rolled back.
                tracing::error!(path = %path.display(), error = %e, "probation state unreadable; starting without it");
                Persisted::default()
            }),
            Err(_) => Persisted::default(),
        };
        let crashed = !std::mem::take(&mut state.clean_stop);
        for (name, entry) in std::mem::take(&mut state.probation) {
            let restarts = entry.restarts + u32::from(crashed);
            if restarts >= MAX_RESTARTS {
                let reason = format!(
                    "crash loop: the agent restarted {restarts} times while {name}@{} was on probation",
                    entry.version
                );
                tracing::error!(model = %name, version = %entry.version, restarts, "rolling back after a crash loop");
                let blocked = Blocked { version: entry.version.clone(), fallback: entry.previous.clone(), reason };
                state.blocked.insert(name, blocked);
            } else {
                state.probation.insert(name, Entry { restarts, ..entry });
            }
        }
        for (name, blocked) in &state.blocked {
            store.block(name, blocked.clone());
        }
        let me = Probation {
            path,
            window,
            store,
            metrics,
            state: Mutex::new(state),
            live: Mutex::new(HashMap::new()),
            retention: Mutex::new(None),
            latency_checks: Family::default(),
        };
        me.metrics.register(
            "probation_latency_checks",
            "Latency regressions on probation checked side by side, by outcome",
            me.latency_checks.clone(),
        );
        me.save();
        Arc::new(me)
    }

    /// Deletes, after each passed probation, the model's old packages in `dir` that `retention`
    /// does not keep.
    pub fn prune_after_passing(&self, dir: PathBuf, retention: super::prune::Retention) {
        *self.retention.lock().unwrap_or_else(|p| p.into_inner()) = Some((dir, retention));
    }

    fn save(&self) {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let bytes = serde_json::to_vec_pretty(&state).unwrap_or_default();
        if let Err(e) = outpost_tuf::store::write_atomic(&self.path, &bytes) {
            tracing::error!(path = %self.path.display(), error = %e, "cannot save the probation state");
        }
    }

    /// One look at every model: starts the probation of a version that just replaced another,
    /// rolls back one that fails, and ends those whose window passed. Returns whether the store
    /// changed (a rollback).
    pub fn tick(&self) -> bool {
        let mut rolled_back = false;
        let mut dirty = false;
        {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            // The store unblocks a version when the desired state moves on; follow it.
            let blocked = self.store.blocked();
            let before = state.blocked.len();
            state.blocked.retain(|name, b| blocked.get(name) == Some(b));
            dirty |= state.blocked.len() != before;
        }
        for (name, slot) in self.store.slots() {
            let Some(active) = slot.active.as_ref().map(|m| m.version().to_string()) else { continue };
            let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            let watching = live.get(&name).is_some_and(|l| l.version == active);
            if !watching {
                live.remove(&name);
                let previous = slot.previous.as_ref().map(|m| m.version().to_string());
                if previous.is_some() && self.store.blocked().get(&name).map(|b| &b.version) == previous.as_ref() {
                    // Back on the fallback after a rollback: the blocked version is let go.
                    self.store.release_previous(&name);
                    continue;
                }
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let resumed = state.probation.get(&name).is_some_and(|e| e.version == active);
                if previous.is_none() && !resumed {
                    continue; // nothing was replaced: a first load, or a passed probation
                }
                let baseline = self.metrics.probe(&name).1.unwrap_or_default();
                let l = Live { version: active.clone(), started: Instant::now(), baseline, latency_cleared: false };
                live.insert(name.clone(), l);
                if !resumed {
                    state.probation.insert(name.clone(), Entry { version: active.clone(), previous, restarts: 0 });
                    dirty = true;
                }
                tracing::info!(model = %name, version = %active, window_s = self.window.as_secs(), "on probation");
                continue;
            }
            let Some(l) = live.get(&name).cloned() else { continue };
            // Not held through a side-by-side run: reports read it.
            drop(live);
            let reason = match verdict(&l.baseline, &self.metrics.probe(&name).0, !l.latency_cleared) {
                Some(Regression::Errors(reason)) => Some(reason),
                Some(Regression::Latency(seen)) => self.confirm_latency(&name, &slot, seen),
                None => None,
            };
            let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(reason) = reason {
                live.remove(&name);
                drop(live);
                self.store.roll_back(&name, &l.version, &reason);
                self.state.lock().unwrap_or_else(|p| p.into_inner()).probation.remove(&name);
                rolled_back = true;
                dirty = true;
            } else if l.started.elapsed() >= self.window {
                live.remove(&name);
                self.store.release_previous(&name);
                self.state.lock().unwrap_or_else(|p| p.into_inner()).probation.remove(&name);
                tracing::info!(model = %name, version = %l.version, "passed probation");
                dirty = true;
                let retention = self.retention.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if let (Some((dir, retention)), Some(active)) = (retention, slot.active_path.as_ref()) {
                    // A shadow candidate is on trial, not old: it stays.
                    let shadow = self.store.shadows().get(&name).map(|v| super::fetch::installed_path(&dir, &name, v));
                    let spared: Vec<&std::path::Path> =
                        [Some(active.as_path()), shadow.as_deref()].into_iter().flatten().collect();
                    for path in super::prune::prune(&dir, &name, &spared, retention) {
                        tracing::info!(model = %name, path = %path.display(), "old package deleted");
                    }
                }
            }
        }
        if rolled_back || dirty {
            let blocked = self.store.blocked();
            self.state.lock().unwrap_or_else(|p| p.into_inner()).blocked = blocked.into_iter().collect();
            self.save();
        }
        rolled_back
    }

    /// Runs the version on probation and the one it replaced side by side after their request
    /// p99s showed `seen`: the reason to roll back when the new one is slower there too (or
    /// when they cannot be compared), `None` after clearing its latency for this probation.
    fn confirm_latency(&self, name: &str, slot: &ModelSlot, seen: String) -> Option<String> {
        let (Some(new), Some(old)) = (slot.active.as_ref(), slot.previous.as_ref()) else {
            return Some(seen);
        };
        let count =
            |outcome| self.latency_checks.get_or_create(&CheckLabels { model: name.to_string(), outcome }).inc();
        let Some((n, o)) = outpost_runtime::side_by_side(new, old, SIDE_BY_SIDE_RUNS) else {
            count("unavailable");
            return Some(format!("{seen} (the two versions could not be run side by side to check)"));
        };
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let (n, o) = (ms(n), ms(o));
        if clearly_slower(n, o) {
            count("confirmed");
            return Some(format!("{seen}; side by side {n:.2} ms against {o:.2} ms"));
        }
        count("cleared");
        tracing::info!(
            model = %name,
            version = %new.version(),
            %seen,
            side_by_side_ms = %format!("{n:.2} against {o:.2}"),
            "not rolled back: the device got busier, the version is no slower side by side; its latency is settled for this probation"
        );
        if let Some(l) = self.live.lock().unwrap_or_else(|p| p.into_inner()).get_mut(name) {
            l.latency_cleared |= l.version == new.version();
        }
        None
    }

    /// Records a clean stop, so the next start is not counted toward a crash loop.
    pub fn stopped_cleanly(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clean_stop = true;
        self.save();
    }

    /// Models on probation now (name → version).
    pub fn on_probation(&self) -> HashMap<String, String> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(n, l)| (n.clone(), l.version.clone()))
            .collect()
    }

    /// The rolled-back versions as update reports, by model.
    pub fn reports(&self) -> HashMap<String, UpdateReport> {
        self.store
            .blocked()
            .into_iter()
            .map(|(name, b)| {
                let report = UpdateReport {
                    version: b.version,
                    state: "rolled_back".into(),
                    reason: Some(b.reason),
                    failure_kind: Some(FailureKind::Probation),
                    ..UpdateReport::default()
                };
                (name, report)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(requests: u64, errors: u64, ms: f64) -> ModelWindow {
        ModelWindow {
            requests,
            errors,
            latencies_ms: vec![ms; requests as usize],
            seen: requests,
            ..Default::default()
        }
    }

    #[test]
    fn verdicts_need_enough_requests_and_a_clear_regression() {
        let v = |before, now| verdict(&before, &now, true);
        let reason = |r: Option<Regression>| r.map(|r| r.reason().to_string()).unwrap_or_default();
        assert_eq!(v(window(100, 0, 2.0), window(10, 10, 2.0)), None, "too few requests to judge");
        assert_eq!(v(window(100, 0, 2.0), window(100, 4, 2.0)), None, "4 % is under the floor");
        let errors = v(window(100, 0, 2.0), window(100, 30, 2.0));
        assert!(matches!(errors, Some(Regression::Errors(_))) && reason(errors).contains("error rate 30.0 %"));
        assert_eq!(v(window(100, 20, 2.0), window(100, 30, 2.0)), None, "not twice as bad as before");
        let slow = v(window(100, 0, 2.0), window(100, 0, 9.0));
        assert!(matches!(slow, Some(Regression::Latency(_))) && reason(slow).contains("p99 latency 9.00 ms"));
        assert_eq!(v(window(100, 0, 0.2), window(100, 0, 0.9)), None, "within the millisecond of slack");
        assert_eq!(v(window(5, 0, 2.0), window(100, 0, 9.0)), None, "no latency baseline to compare with");
    }

    #[test]
    fn settled_latency_is_not_judged_again_but_errors_still_are() {
        assert_eq!(verdict(&window(100, 0, 2.0), &window(100, 0, 9.0), false), None);
        let errors = verdict(&window(100, 0, 2.0), &window(100, 30, 9.0), false);
        assert!(matches!(errors, Some(Regression::Errors(_))), "{errors:?}");
    }

    #[test]
    fn side_by_side_confirms_only_a_clear_slowdown() {
        assert!(clearly_slower(9.0, 2.0));
        assert!(!clearly_slower(4.5, 2.0), "within the factor and the slack");
        assert!(!clearly_slower(2.1, 2.0));
        assert!(!clearly_slower(1.3, 0.2), "a millisecond of slack");
    }
}
