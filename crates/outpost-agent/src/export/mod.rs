//! Result export: inference results (never the raw inputs) and agent events leave the device as
//! records, through a crash-safe outbox (`<data_dir>/outbox/export`, see [`outpost_outbox`]),
//! to the configured sinks.
//!
//! A request's result is appended off the request path: the response does not wait for the
//! fsync, and when too many appends are already waiting the result is not exported (counted in
//! `outpost_export_dropped_records_total{reason="busy"}`), because the device's first job is to
//! answer. Events and alerts are rarer and wait for their append. Each sink is an outbox
//! consumer with its own position and bandwidth budget ([`budget`]); records it has not
//! delivered stay on disk, across restarts, until the outbox's cap drops the oldest of the
//! lowest priority (counted).
//!
//! Priorities: alerts `High`, results and events `Normal`, telemetry `Low`.

pub mod budget;
pub mod config;
pub mod events;
pub mod http;
pub mod link;
pub mod mqtt;
pub mod record;
pub mod sink;

use crate::metrics::Metrics;
use config::ExportConfig;
use outpost_outbox::{AsyncOutbox, ConsumerName, OutboxConfig, Priority};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use record::{Envelope, EventBody, Kind, ResultBody};
use sink::{stored, SinkStats};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

/// Directory under the data directory holding the export outbox.
pub const OUTBOX_DIR: &str = "outbox/export";
/// Result appends that may wait for the disk at once; more are not exported (counted).
const MAX_PENDING_APPENDS: usize = 4096;

/// Opens an outbox directory, waiting up to three seconds for its lock: an agent restarted in
/// the same process (a test, an in-process restart) may still be closing the previous one.
pub(crate) async fn open_outbox(
    dir: std::path::PathBuf,
    config: OutboxConfig,
) -> Result<AsyncOutbox, outpost_outbox::OutboxError> {
    let mut waited = 0;
    loop {
        match AsyncOutbox::open(dir.clone(), config).await {
            Err(outpost_outbox::OutboxError::Locked { .. }) if waited < 30 => {
                waited += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// Labels of per-kind export series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KindLabels {
    /// `result`, `event`, `alert` or `telemetry`.
    pub kind: &'static str,
}

/// Labels of per-sink export series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SinkLabels {
    /// `mqtt` or `server`.
    pub sink: &'static str,
}

/// Labels of dropped-record series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DropLabels {
    /// `busy` (appends backed up), `disk_full` or `error` (the append failed otherwise).
    pub reason: &'static str,
}

/// The `reason` label of a record whose append failed.
fn drop_reason(e: &outpost_outbox::OutboxError) -> &'static str {
    if e.is_disk_full() {
        "disk_full"
    } else {
        "error"
    }
}

/// The per-sink series, registered once.
#[derive(Debug, Default)]
struct SinkFamilies {
    sent_records: Family<SinkLabels, Counter>,
    sent_bytes: Family<SinkLabels, Counter>,
    dropped: Family<SinkLabels, Counter>,
    failures: Family<SinkLabels, Counter>,
    connected: Family<SinkLabels, Gauge>,
    budget_blocked: Family<SinkLabels, Gauge>,
}

impl SinkFamilies {
    fn register(&self, m: &Metrics) {
        m.register("export_sent_records", "Records a sink delivered", self.sent_records.clone());
        m.register("export_sent_bytes", "Bytes a sink delivered (topic, payload, framing)", self.sent_bytes.clone());
        m.register("export_sink_dropped_records", "Records a sink gave up on", self.dropped.clone());
        m.register("export_sink_failures", "Connections or sends of a sink that failed", self.failures.clone());
        m.register("export_sink_connected", "1 while a sink is connected", self.connected.clone());
        m.register(
            "export_sink_budget_blocked",
            "1 while a sink waits for its bandwidth budget",
            self.budget_blocked.clone(),
        );
    }

    fn stats(&self, sink: &'static str) -> SinkStats {
        let l = SinkLabels { sink };
        SinkStats {
            sent_records: self.sent_records.get_or_create(&l).clone(),
            sent_bytes: self.sent_bytes.get_or_create(&l).clone(),
            dropped: self.dropped.get_or_create(&l).clone(),
            failures: self.failures.get_or_create(&l).clone(),
            connected: self.connected.get_or_create(&l).clone(),
            budget_blocked: self.budget_blocked.get_or_create(&l).clone(),
        }
    }
}

/// Why export cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The configuration is inconsistent.
    #[error("export: {0}")]
    Config(String),
    /// The outbox cannot be opened.
    #[error("export outbox: {0}")]
    Outbox(#[from] outpost_outbox::OutboxError),
}

/// The export side of a running agent; cheap to share.
#[derive(Debug)]
pub struct Exporter {
    cfg: ExportConfig,
    device: String,
    labels: std::sync::RwLock<BTreeMap<String, String>>,
    outbox: AsyncOutbox,
    pending: Arc<Semaphore>,
    records: Family<KindLabels, Counter>,
    dropped: Family<DropLabels, Counter>,
    sinks: std::sync::Mutex<Vec<(&'static str, SinkStats)>>,
    per_sink: SinkFamilies,
    limits: [u64; 3],
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    stop: watch::Sender<bool>,
}

impl Exporter {
    /// Opens the export outbox in `data_dir` and starts the configured sinks. `labels` are the
    /// device's (from its enrollment), merged under the configured ones.
    pub async fn start(
        cfg: &ExportConfig,
        data_dir: &Path,
        device: String,
        mut labels: BTreeMap<String, String>,
        metrics: &Metrics,
    ) -> Result<Arc<Exporter>, ExportError> {
        let fsync = cfg.fsync_policy().map_err(ExportError::Config)?;
        let max_total_bytes = cfg.outbox_mb.max(1) << 20;
        let outbox_cfg =
            OutboxConfig { fsync, segment_bytes: (max_total_bytes / 8).clamp(64 << 10, 8 << 20), max_total_bytes };
        let outbox = open_outbox(data_dir.join(OUTBOX_DIR), outbox_cfg).await?;
        let recovery = outbox.recovery();
        if !recovery.is_clean() {
            tracing::warn!(
                truncated_bytes = recovery.truncated_bytes(),
                lost_records = recovery.lost_records(),
                "export outbox repaired after a crash"
            );
        }
        labels.extend(cfg.labels.clone());
        let (stop, stop_rx) = watch::channel(false);
        let b = &cfg.budget;
        let limits = [b.low_bytes_per_hour, b.normal_bytes_per_hour, b.high_bytes_per_hour];
        let records = Family::<KindLabels, Counter>::default();
        let dropped = Family::<DropLabels, Counter>::default();
        let per_sink = SinkFamilies::default();
        metrics.register("export_records", "Records appended to the export outbox", records.clone());
        metrics.register("export_dropped_records", "Records not exported, by reason", dropped.clone());
        per_sink.register(metrics);
        let mut sinks = Vec::new();
        let mut tasks = Vec::new();
        if let Some(mqtt) = &cfg.mqtt {
            // Checked here, so that a bad URL or version fails the start rather than a log line.
            link::Link::new(mqtt, "check", 1).map_err(ExportError::Config)?;
            let stats = per_sink.stats("mqtt");
            let sink = mqtt::MqttSink {
                cfg: mqtt.clone(),
                device: device.clone(),
                outbox: outbox.clone(),
                budget: budget::Budget::new(limits),
                stats: stats.clone(),
                linger: std::time::Duration::from_millis(cfg.linger_ms),
            };
            tasks.push(tokio::spawn(sink.run(stop_rx.clone())));
            sinks.push(("mqtt", stats));
        }
        let exporter = Arc::new(Exporter {
            cfg: cfg.clone(),
            device,
            labels: std::sync::RwLock::new(labels),
            outbox,
            pending: Arc::new(Semaphore::new(MAX_PENDING_APPENDS)),
            records,
            dropped,
            sinks: std::sync::Mutex::new(sinks),
            per_sink,
            limits,
            tasks: std::sync::Mutex::new(tasks),
            stop,
        });
        Ok(exporter)
    }

    /// Whether a result of `model` is exported: the request's `export` option, else the
    /// configured models.
    pub fn wants(&self, model: &str, asked: Option<bool>) -> bool {
        asked.unwrap_or_else(|| self.cfg.exports(model))
    }

    /// Queues a result for export without waiting for the disk. `outputs` are the typed
    /// predictions or the output tensors; `None` (raw binary tensors) exports the result
    /// without them, marked `truncated`.
    pub fn result(
        &self,
        model: &str,
        version: &str,
        outputs: Option<&serde_json::Value>,
        confidence: Option<f32>,
        latency_us: u64,
    ) {
        let Ok(permit) = self.pending.clone().try_acquire_owned() else {
            self.dropped.get_or_create(&DropLabels { reason: "busy" }).inc();
            return;
        };
        let mut body = ResultBody { outputs, confidence, latency_us, truncated: outputs.is_none() };
        let mut json = self.encode(Kind::Result, Some(model), Some(version), &body);
        if json.len() > self.cfg.max_result_bytes {
            body.outputs = None;
            body.truncated = true;
            json = self.encode(Kind::Result, Some(model), Some(version), &body);
        }
        let payload = stored(&format!("results/{model}"), &json);
        let (outbox, dropped) = (self.outbox.clone(), self.dropped.clone());
        self.records.get_or_create(&KindLabels { kind: "result" }).inc();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = outbox.append(Priority::Normal, payload).await {
                dropped.get_or_create(&DropLabels { reason: drop_reason(&e) }).inc();
                tracing::warn!(error = %e, "cannot queue a result for export");
            }
        });
    }

    /// Queues a model's closed drift window as telemetry (lowest priority), without waiting.
    pub fn telemetry(&self, model: &str, version: &str, window: &outpost_proto::fleet::drift::DriftReport) {
        let json = self.encode(Kind::Telemetry, Some(model), Some(version), window);
        self.records.get_or_create(&KindLabels { kind: "telemetry" }).inc();
        let (outbox, dropped) = (self.outbox.clone(), self.dropped.clone());
        tokio::spawn(async move {
            if let Err(e) = outbox.append(Priority::Low, stored("telemetry", &json)).await {
                dropped.get_or_create(&DropLabels { reason: drop_reason(&e) }).inc();
                tracing::warn!(error = %e, "cannot queue telemetry for export");
            }
        });
    }

    /// Queues an event (or, with `alert`, an alert) and waits until it is on disk.
    pub async fn event(
        &self,
        alert: bool,
        event: &str,
        model: Option<&str>,
        version: Option<&str>,
        details: &serde_json::Value,
    ) -> Result<(), outpost_outbox::OutboxError> {
        let (kind, priority, name) =
            if alert { (Kind::Alert, Priority::High, "alert") } else { (Kind::Event, Priority::Normal, "event") };
        let json = self.encode(kind, model, version, &EventBody { event, details });
        self.records.get_or_create(&KindLabels { kind: name }).inc();
        self.outbox.append(priority, stored("events", &json)).await.map(|_| ())
    }

    fn encode<T: serde::Serialize>(&self, kind: Kind, model: Option<&str>, version: Option<&str>, body: T) -> Vec<u8> {
        let labels = self.labels.read().unwrap_or_else(|p| p.into_inner());
        let env = Envelope {
            kind,
            device: &self.device,
            model,
            version,
            at_ms: crate::control::client::now_ms(),
            labels: &labels,
            body,
        };
        serde_json::to_vec(&env).unwrap_or_default()
    }

    /// Per sink: its counters.
    pub fn sink_stats(&self) -> Vec<(&'static str, SinkStats)> {
        self.sinks.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Takes the labels the server gave the device (the configured ones still win) and starts
    /// the server sink with the enrolled device's client; the control session calls this once
    /// enrolled. No sink when `export.server` is off or it runs already.
    pub fn attach_server(&self, client: crate::control::client::DeviceClient, labels: BTreeMap<String, String>) {
        {
            let mut mine = self.labels.write().unwrap_or_else(|p| p.into_inner());
            *mine = labels;
            mine.extend(self.cfg.labels.clone());
        }
        let mut sinks = self.sinks.lock().unwrap_or_else(|p| p.into_inner());
        if !self.cfg.server || sinks.iter().any(|(n, _)| *n == http::CONSUMER) {
            return;
        }
        let stats = self.per_sink.stats(http::CONSUMER);
        let sink = http::HttpSink {
            client,
            outbox: self.outbox.clone(),
            budget: budget::Budget::new(self.limits),
            stats: stats.clone(),
            linger: std::time::Duration::from_millis(self.cfg.linger_ms),
        };
        let task = tokio::spawn(sink.run(self.stop.subscribe()));
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).push(task);
        sinks.push((http::CONSUMER, stats));
    }

    /// Records a sink has not delivered yet, per priority (low, normal, high).
    pub async fn queued(&self, sink: &str) -> Result<[u64; 3], outpost_outbox::OutboxError> {
        self.outbox.pending(&ConsumerName::new(sink)?).await
    }

    /// Stops the sinks (what they have not delivered stays on disk) and closes the outbox.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
        // Waits for the appends still queued on the writer, then releases the directory.
        let _ = self.outbox.clone().close().await;
    }
}
