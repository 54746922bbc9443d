//! Prometheus metrics for `/metrics`: request counts and latency per route, heartbeats, report
//! batch sizes and write latency, and long-polls waiting.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Instant;

/// Labels of one request: the route template (not the raw path, to bound cardinality).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Route template, e.g. `/v1/devices/{id}`.
    pub route: String,
    /// HTTP method.
    pub method: String,
    /// Response status code.
    pub status: u16,
}

/// Labels of a latency sample.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    /// Route template.
    pub route: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~65 s: long-polls sit at the top.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Labels of per-rollout series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RolloutLabels {
    /// Rollout id.
    pub rollout: String,
    /// A device state, a gate or a lifecycle state, depending on the series.
    pub key: String,
}

/// Labels of per-version drift series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DriftLabels {
    /// Model name.
    pub model: String,
    /// Version.
    pub version: String,
    /// Drift status (`ok`, `warn`, `alert`, `no_reference`); empty on score series.
    pub status: String,
}

/// Labels of alert series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AlertLabels {
    /// The rule.
    pub rule: String,
    /// Model name.
    pub model: String,
    /// Version.
    pub version: String,
    /// The label group (empty when the rule does not group).
    pub group: String,
}

/// Labels of the rollout decision counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `rollout.start`, `rollout.wave`, `rollout.rollback`, ...
    pub action: String,
}

/// Labels of the engine's per-part timing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PartLabels {
    /// `claim`, `sync`, `load`, `members`, `changes`, `online`, `busy`, `windows` or `save`.
    pub part: String,
}

fn engine_part_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// The server's metrics and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    /// Requests by route, method and status.
    pub requests: Family<RouteLabels, Counter>,
    /// Request latency by route, seconds.
    pub latency: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    /// State reports received (heartbeats and batched reports).
    pub reports_received: Counter,
    /// Reports per database write.
    pub batch_size: Histogram,
    /// Report write latency, seconds.
    pub write_latency: Histogram,
    /// Desired-state long-polls currently waiting.
    pub long_polls_waiting: Gauge,
    /// Package bytes sent (downloads by devices and operators): the server's delivery egress.
    pub package_bytes_sent: Counter,
    /// Delta plan and blob bytes sent to devices (egress of delta downloads).
    pub delta_bytes_sent: Counter,
    /// Time of one engine evaluation of one rollout (reads, step, write), seconds.
    pub rollout_evaluation: Histogram,
    /// Time of the engine's pure step in one evaluation (gates, waves, members), seconds.
    pub rollout_step: Histogram,
    /// Time of each part of an engine tick (reads, the save), seconds.
    pub rollout_part: Family<PartLabels, Histogram, fn() -> Histogram>,
    /// Database statements the engine ran (reads and writes of its evaluations and ticks).
    pub rollout_statements: Counter,
    /// Rollout evaluations run.
    pub rollout_evaluations: Counter,
    /// Rollout decisions taken (by the engine and by operators).
    pub rollout_decisions: Family<DecisionLabels, Counter>,
    /// Devices of each rollout this replica holds, by state in the rollout.
    pub rollout_devices: Family<RolloutLabels, Gauge>,
    /// The last reading of each gate of each rollout this replica holds.
    pub rollout_gate_value: Family<RolloutLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// 1 for the lifecycle state of each rollout this replica holds.
    pub rollout_state: Family<RolloutLabels, Gauge>,
    /// Devices per model version by drift status (their latest window).
    pub drift_devices: Family<DriftLabels, Gauge>,
    /// The largest drift score per model version.
    pub drift_score_max: Family<DriftLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// The value of each firing alert.
    pub alerts_firing: Family<AlertLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// Records the time since `started` as engine part `part`.
    pub fn engine_part(&self, part: &str, started: Instant) {
        self.rollout_part.get_or_create(&PartLabels { part: part.into() }).observe(started.elapsed().as_secs_f64());
    }

    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("outpost_server");
        let requests = Family::<RouteLabels, Counter>::default();
        let latency = Family::<LatencyLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let reports_received = Counter::default();
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        let write_latency = Histogram::new(exponential_buckets(0.0005, 2.0, 15));
        let long_polls_waiting = Gauge::default();
        let package_bytes_sent = Counter::default();
        registry.register(
            "package_bytes_sent",
            "Model package bytes sent to devices and operators",
            package_bytes_sent.clone(),
        );
        let delta_bytes_sent = Counter::default();
        registry.register("delta_bytes_sent", "Delta plan and blob bytes sent to devices", delta_bytes_sent.clone());
        registry.register("http_requests", "HTTP requests by route, method and status", requests.clone());
        registry.register("http_request_duration_seconds", "HTTP request latency by route", latency.clone());
        registry.register("reports_received", "State reports received from devices", reports_received.clone());
        registry.register("report_batch_size", "Reports written per database transaction", batch_size.clone());
        registry.register("report_write_duration_seconds", "Latency of one report batch write", write_latency.clone());
        registry.register(
            "long_polls_waiting",
            "Desired-state long-polls currently waiting",
            long_polls_waiting.clone(),
        );
        let rollout_evaluation = Histogram::new(exponential_buckets(0.0005, 2.0, 15));
        registry.register(
            "rollout_evaluation_duration_seconds",
            "One rollout engine evaluation: fleet read, gates, step and write",
            rollout_evaluation.clone(),
        );
        let rollout_step = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        registry.register(
            "rollout_step_duration_seconds",
            "The engine's pure step of one rollout evaluation",
            rollout_step.clone(),
        );
        let rollout_part =
            Family::<PartLabels, Histogram, fn() -> Histogram>::new_with_constructor(engine_part_histogram);
        registry.register(
            "rollout_part_duration_seconds",
            "One part of a rollout engine tick (part: claim, sync, load, members, changes, online, busy, windows, save)",
            rollout_part.clone(),
        );
        let rollout_statements = Counter::default();
        registry.register(
            "rollout_db_statements",
            "Database statements run by the rollout engine",
            rollout_statements.clone(),
        );
        let rollout_evaluations = Counter::default();
        registry.register("rollout_evaluations", "Rollout evaluations run", rollout_evaluations.clone());
        let rollout_decisions = Family::<DecisionLabels, Counter>::default();
        registry.register("rollout_decisions", "Rollout decisions by action", rollout_decisions.clone());
        let rollout_devices = Family::<RolloutLabels, Gauge>::default();
        registry.register("rollout_devices", "Devices of a rollout by state (key)", rollout_devices.clone());
        let rollout_gate_value = Family::<RolloutLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "rollout_gate_value",
            "Last value of a rollout gate (key: the gate)",
            rollout_gate_value.clone(),
        );
        let rollout_state = Family::<RolloutLabels, Gauge>::default();
        registry.register("rollout_state", "1 for a rollout's lifecycle state (key)", rollout_state.clone());
        let drift_devices = Family::<DriftLabels, Gauge>::default();
        registry.register(
            "drift_devices",
            "Devices per model version by the status of their latest drift window",
            drift_devices.clone(),
        );
        let drift_score_max = Family::<DriftLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register("drift_score_max", "Largest drift score (PSI) per model version", drift_score_max.clone());
        let alerts_firing = Family::<AlertLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register("alerts_firing", "Firing alerts, valued by the rule's measurement", alerts_firing.clone());
        Metrics {
            drift_devices,
            drift_score_max,
            alerts_firing,
            registry,
            rollout_evaluation,
            rollout_step,
            rollout_part,
            rollout_statements,
            rollout_evaluations,
            rollout_decisions,
            rollout_devices,
            rollout_gate_value,
            rollout_state,
            requests,
            latency,
            reports_received,
            batch_size,
            write_latency,
            long_polls_waiting,
            package_bytes_sent,
            delta_bytes_sent,
        }
    }

    /// Replaces the drift and alert series with these groups and alerts.
    pub fn set_drift(
        &self,
        groups: &[outpost_proto::fleet::drift::DriftGroup],
        alerts: &[outpost_proto::fleet::drift::Alert],
    ) {
        self.drift_devices.clear();
        self.drift_score_max.clear();
        self.alerts_firing.clear();
        for g in groups {
            for (status, n) in [("ok", g.ok), ("warn", g.warn), ("alert", g.alert), ("no_reference", g.no_reference)] {
                let l = DriftLabels { model: g.model.clone(), version: g.version.clone(), status: status.into() };
                self.drift_devices.get_or_create(&l).set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            let l = DriftLabels { model: g.model.clone(), version: g.version.clone(), status: String::new() };
            self.drift_score_max.get_or_create(&l).set(g.max_score);
        }
        for a in alerts {
            let l = AlertLabels {
                rule: a.rule.clone(),
                model: a.model.clone(),
                version: a.version.clone(),
                group: a.group.clone().unwrap_or_default(),
            };
            self.alerts_firing.get_or_create(&l).set(a.value);
        }
    }

    /// OpenMetrics 1.0.0 text of every metric (`outpost_proto::exposition` gives 0.0.4).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// Middleware counting and timing every request under its route template.
pub async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let method = req.method().as_str().to_string();
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16();
    metrics.latency.get_or_create(&LatencyLabels { route: route.clone() }).observe(started.elapsed().as_secs_f64());
    metrics.requests.get_or_create(&RouteLabels { route, method, status }).inc();
    response
}
