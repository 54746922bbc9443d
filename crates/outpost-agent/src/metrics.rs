//! Prometheus metrics of the agent, served as text at `/metrics`.

use outpost_proto::fleet::drift::{DriftReport, DriftStatus};
use outpost_proto::fleet::quality::VersionWindow;
use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Labels of per-request series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    /// Model name.
    pub model: String,
    /// `infer` (OIP v2) or `predict` (v1 pipeline).
    pub endpoint: &'static str,
}

/// Labels of error series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Model name.
    pub model: String,
    /// `infer` or `predict`.
    pub endpoint: &'static str,
    /// HTTP status returned.
    pub status: u16,
}

/// Labels naming a model.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ModelLabels {
    /// Model name.
    pub model: String,
}

/// Labels naming a model version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct VersionLabels {
    /// Model name.
    pub model: String,
    /// Version serving.
    pub version: String,
}

/// Labels of drift window series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DriftLabels {
    /// Model name.
    pub model: String,
    /// `ok`, `warn`, `alert` or `no_reference`.
    pub status: &'static str,
}

/// All agent metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    request_seconds: Family<RequestLabels, Histogram>,
    inference_seconds: Family<ModelLabels, Histogram>,
    queue_seconds: Family<ModelLabels, Histogram>,
    queue_depth: Family<ModelLabels, Gauge>,
    model_ready: Family<ModelLabels, Gauge>,
    model_info: Family<VersionLabels, Gauge>,
    load_failures: Family<ModelLabels, Counter>,
    models_loaded: Gauge,
    /// Version each `model_info` series carries, so the old one can be removed on a swap.
    versions: Mutex<HashMap<String, String>>,
    /// Per-model counters and recent latencies for the control-plane state report.
    windows: Mutex<HashMap<String, ModelWindow>>,
    /// Per model, the latest closed drift window.
    drift_latest: Mutex<HashMap<String, DriftReport>>,
    drift_score: Family<ModelLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    drift_windows: Family<DriftLabels, Counter>,
    /// Per-model requests since the serving version was activated, and those of the version
    /// before it: what a probation judges a new version by.
    probes: Mutex<HashMap<String, Probe>>,
}

/// The request windows of a model's serving version and of the one it replaced.
#[derive(Debug, Clone, Default)]
struct Probe {
    version: String,
    current: ModelWindow,
    previous: Option<ModelWindow>,
}

/// Counts one request into `window`, keeping at most [`WINDOW_SAMPLES`] latencies.
fn record(window: &mut ModelWindow, failed: bool, ms: f64) {
    window.requests += 1;
    window.errors += u64::from(failed);
    if window.latencies_ms.len() < WINDOW_SAMPLES {
        window.latencies_ms.push(ms);
    } else {
        window.latencies_ms[(window.seen % WINDOW_SAMPLES as u64) as usize] = ms;
    }
    window.seen += 1;
}

/// Latency samples kept per model between two state reports; beyond this the newest overwrite
/// the oldest, so a busy model costs fixed memory and the percentiles stay recent.
pub const WINDOW_SAMPLES: usize = 4096;

/// A model's request totals since start and its request latencies since the last report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelWindow {
    /// Requests since the agent started.
    pub requests: u64,
    /// Failed requests since the agent started.
    pub errors: u64,
    /// Request latencies since the last [`Metrics::take_windows`], milliseconds (at most
    /// [`WINDOW_SAMPLES`], unordered).
    pub latencies_ms: Vec<f64>,
    /// Samples recorded in this window, including overwritten ones.
    pub seen: u64,
    /// Requests since the last [`Metrics::take_windows`] per version that answered them
    /// (deltas, unlike the totals above); empty in probation probes.
    pub versions: Vec<VersionWindow>,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~1.6 s: edge models answer in single-digit milliseconds, and the tail matters.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.000_05, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every series.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("outpost");
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            requests: Family::default(),
            errors: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            inference_seconds: Family::new_with_constructor(latency_histogram),
            queue_seconds: Family::new_with_constructor(latency_histogram),
            queue_depth: Family::default(),
            model_ready: Family::default(),
            model_info: Family::default(),
            load_failures: Family::default(),
            models_loaded: Gauge::default(),
            versions: Mutex::new(HashMap::new()),
            windows: Mutex::new(HashMap::new()),
            probes: Mutex::new(HashMap::new()),
            drift_latest: Mutex::new(HashMap::new()),
            drift_score: Family::default(),
            drift_windows: Family::default(),
        };
        registry.register("requests", "Inference requests received", m.requests.clone());
        registry.register("request_errors", "Inference requests answered with an error", m.errors.clone());
        registry.register("request_duration_seconds", "Whole request time inside the agent", m.request_seconds.clone());
        registry.register("inference_duration_seconds", "Model run time", m.inference_seconds.clone());
        registry.register("queue_wait_seconds", "Time requests waited for a session", m.queue_seconds.clone());
        registry.register("queue_depth", "Requests waiting or running per model", m.queue_depth.clone());
        registry.register("model_ready", "1 when the model serves, 0 when it is unavailable", m.model_ready.clone());
        registry.register("model_info", "Version serving per model (value 1)", m.model_info.clone());
        registry.register("model_load_failures", "Packages that failed to verify or load", m.load_failures.clone());
        registry.register("models_loaded", "Models serving", m.models_loaded.clone());
        registry.register(
            "drift_score",
            "Drift score (largest feature PSI) of the latest window",
            m.drift_score.clone(),
        );
        registry.register("drift_windows", "Drift windows closed, by status", m.drift_windows.clone());
        *m.registry.lock().unwrap_or_else(|p| p.into_inner()) = registry;
        m
    }

    /// Registers a series kept elsewhere (export's); it is rendered with the rest.
    pub fn register(&self, name: &str, help: &str, metric: impl prometheus_client::registry::Metric) {
        self.registry.lock().unwrap_or_else(|p| p.into_inner()).register(name, help, metric);
    }

    /// Records a finished request: latency, and an error when `status` is not 2xx. `version` is
    /// the version that answered it (`None` when none could: the model is unavailable).
    pub fn request(&self, model: &str, version: Option<&str>, endpoint: &'static str, status: u16, elapsed: Duration) {
        let labels = RequestLabels { model: model.to_string(), endpoint };
        self.requests.get_or_create(&labels).inc();
        self.request_seconds.get_or_create(&labels).observe(elapsed.as_secs_f64());
        if !(200..300).contains(&status) {
            self.errors.get_or_create(&ErrorLabels { model: model.to_string(), endpoint, status }).inc();
        }
        let ms = elapsed.as_secs_f64() * 1000.0;
        let failed = !(200..300).contains(&status);
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let window = windows.entry(model.to_string()).or_default();
        record(window, failed, ms);
        if let Some(version) = version {
            let at = match window.versions.iter().position(|w| w.version == version) {
                Some(at) => at,
                None => {
                    window.versions.push(VersionWindow { version: version.to_string(), ..VersionWindow::default() });
                    window.versions.len() - 1
                }
            };
            let w = &mut window.versions[at];
            w.requests += 1;
            w.errors += u64::from(failed);
            w.latency.record(ms);
        }
        drop(windows);
        let mut probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        record(&mut probes.entry(model.to_string()).or_default().current, failed, ms);
    }

    /// Records a closed drift window: the gauges, the latest window of the model, and the counts
    /// in the version's report window (what rollout gates sum).
    pub fn drift(&self, model: &str, window: &DriftReport) {
        self.drift_score.get_or_create(&ModelLabels { model: model.to_string() }).set(window.score);
        let status = window.status.as_str();
        self.drift_windows.get_or_create(&DriftLabels { model: model.to_string(), status }).inc();
        if window.status != DriftStatus::NoReference {
            let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
            let w = windows.entry(model.to_string()).or_default();
            let at = match w.versions.iter().position(|v| v.version == window.version) {
                Some(at) => at,
                None => {
                    w.versions.push(VersionWindow { version: window.version.clone(), ..VersionWindow::default() });
                    w.versions.len() - 1
                }
            };
            let v = &mut w.versions[at];
            v.drift_windows += 1;
            v.drift_alerts += u64::from(window.status == DriftStatus::Alert);
            v.drift_score += window.score;
        }
        self.drift_latest.lock().unwrap_or_else(|p| p.into_inner()).insert(model.to_string(), window.clone());
    }

    /// `model`'s latest closed drift window, if any.
    pub fn latest_drift(&self, model: &str) -> Option<DriftReport> {
        self.drift_latest.lock().unwrap_or_else(|p| p.into_inner()).get(model).cloned()
    }

    /// `model`'s requests since its serving version was activated, and those the version
    /// before it served (none when it is the first).
    pub fn probe(&self, model: &str) -> (ModelWindow, Option<ModelWindow>) {
        let probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        probes.get(model).map(|p| (p.current.clone(), p.previous.clone())).unwrap_or_default()
    }

    /// Every model's totals and the latencies and per-version windows recorded since the
    /// previous call, which starts new ones: each request is in exactly one taken window.
    pub fn take_windows(&self) -> HashMap<String, ModelWindow> {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        windows
            .iter_mut()
            .map(|(name, w)| {
                let taken = ModelWindow {
                    requests: w.requests,
                    errors: w.errors,
                    latencies_ms: std::mem::take(&mut w.latencies_ms),
                    seen: w.seen,
                    versions: std::mem::take(&mut w.versions),
                };
                w.seen = 0;
                (name.clone(), taken)
            })
            .collect()
    }

    /// Records one model run and the time it queued.
    pub fn inference(&self, model: &str, queued: Duration, run: Duration) {
        let labels = ModelLabels { model: model.to_string() };
        self.inference_seconds.get_or_create(&labels).observe(run.as_secs_f64());
        self.queue_seconds.get_or_create(&labels).observe(queued.as_secs_f64());
    }

    /// Sets a model's current queue depth.
    pub fn queue_depth(&self, model: &str, depth: usize) {
        self.queue_depth.get_or_create(&ModelLabels { model: model.to_string() }).set(depth as i64);
    }

    /// A version of `model` is now serving.
    pub fn model_loaded(&self, model: &str, version: &str) {
        self.forget_version(model);
        let mut probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        let probe = probes.entry(model.to_string()).or_default();
        if probe.version != version {
            // A version change: what was recorded so far belongs to the version it replaces.
            let served = std::mem::take(&mut probe.current);
            probe.previous = (!probe.version.is_empty()).then_some(served);
            probe.version = version.to_string();
        }
        drop(probes);
        self.versions.lock().unwrap_or_else(|p| p.into_inner()).insert(model.into(), version.into());
        self.model_info.get_or_create(&VersionLabels { model: model.into(), version: version.into() }).set(1);
    }

    /// A package of `model` failed.
    pub fn model_load_failed(&self, model: &str) {
        self.load_failures.get_or_create(&ModelLabels { model: model.to_string() }).inc();
    }

    /// Whether `model` serves.
    pub fn set_model_ready(&self, model: &str, ready: bool) {
        self.model_ready.get_or_create(&ModelLabels { model: model.to_string() }).set(i64::from(ready));
    }

    /// `model` is gone from the directory.
    pub fn model_unloaded(&self, model: &str) {
        self.forget_version(model);
        self.model_ready.remove(&ModelLabels { model: model.to_string() });
        self.queue_depth.remove(&ModelLabels { model: model.to_string() });
    }

    fn forget_version(&self, model: &str) {
        if let Some(old) = self.versions.lock().unwrap_or_else(|p| p.into_inner()).remove(model) {
            self.model_info.remove(&VersionLabels { model: model.into(), version: old });
        }
    }

    /// Sets the number of serving models.
    pub fn models_loaded(&self, n: usize) {
        self.models_loaded.set(n as i64);
    }

    /// The OpenMetrics 1.0.0 text of every series (see `outpost_proto::exposition` for 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_windows_count_each_request_once_under_the_version_that_answered_it() {
        let m = Metrics::new();
        m.request("a", Some("1"), "infer", 200, Duration::from_millis(2));
        m.request("a", Some("1"), "predict", 500, Duration::from_millis(4));
        m.model_loaded("a", "2");
        m.request("a", Some("2"), "infer", 200, Duration::from_millis(3));
        m.request("a", None, "infer", 503, Duration::from_millis(1));
        let taken = m.take_windows().remove("a").unwrap();
        assert_eq!((taken.requests, taken.errors), (4, 2), "totals since start include unattributed requests");
        let by_version: Vec<(&str, u64, u64, u64)> =
            taken.versions.iter().map(|w| (w.version.as_str(), w.requests, w.errors, w.latency.count())).collect();
        assert_eq!(by_version, [("1", 2, 1, 2), ("2", 1, 0, 1)]);
        m.request("a", Some("2"), "infer", 200, Duration::from_millis(3));
        let next = m.take_windows().remove("a").unwrap();
        assert_eq!(next.requests, 5);
        assert_eq!(next.versions.len(), 1, "the next window starts empty");
        assert_eq!((next.versions[0].version.as_str(), next.versions[0].requests), ("2", 1));
    }
}
