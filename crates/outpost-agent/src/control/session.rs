//! One connection life of the control channel: enroll, then heartbeat and long-poll until
//! stopped or revoked.
//!
//! Ordering rules that matter: queued reports are delivered before a new heartbeat (the server
//! sees reports in sequence order), a command is run at most once per agent life even if the
//! server hands it out again before its acknowledgement arrives, and `restart_agent` is
//! acknowledged (or queued durably) before the agent stops.

use super::client::{ClientError, DeviceClient};
use super::commands::{self, CommandContext};
use super::fetch::Fetcher;
use super::identity::{self, Enrollment};
use super::outbox::{Backlog, ControlOutbox};
use super::probation::Probation;
use super::report::{self, ReportBuilder};
use super::settings::Settings;
use super::shadow::{self, ShadowControl};
use super::{ControlOptions, ControlStatus};
use crate::metrics::Metrics;
use crate::shadow::Shadows;
use crate::store::ModelStore;
use outpost_proto::fleet::device::{CommandKind, DesiredState, EnrollRequest, ReportAck, StateReport};
use outpost_proto::fleet::signing::{DeviceKey, ALGORITHM_ED25519};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Reports per `/v1/device/reports` request (the server accepts up to 500).
const BATCH: usize = 500;

#[path = "session_outbox.rs"]
mod queue;
/// Clock difference from the server worth a warning.
const SKEW_WARN_MS: i64 = 60_000;

/// Everything a session needs, handed over by `ControlChannel::start`.
pub(super) struct Parts {
    pub options: ControlOptions,
    pub key: Arc<DeviceKey>,
    pub http: reqwest::Client,
    pub outbox: ControlOutbox,
    /// What the outbox held when it was opened.
    pub backlog: Backlog,
    /// Result export, whose server sink starts once the device is enrolled.
    pub export: Option<Arc<crate::export::Exporter>>,
    pub store: Arc<ModelStore>,
    pub metrics: Arc<Metrics>,
    pub shadows: Arc<Shadows>,
    pub settings: Arc<Settings>,
    pub status: Arc<ControlStatus>,
    pub agent_shutdown: watch::Sender<bool>,
    pub stop: watch::Sender<bool>,
}

/// Exponential backoff with full jitter: a random delay up to `min(cap, 1 s · 2^attempt)`, at
/// least 100 ms, so a fleet coming back after an outage does not hit the server in lockstep.
pub fn backoff(attempt: u32, cap: Duration) -> Duration {
    let ceiling = Duration::from_secs(1).saturating_mul(1 << attempt.min(16)).min(cap);
    ceiling.mul_f64(rand::random::<f64>()).max(Duration::from_millis(100))
}

/// `interval` shifted randomly by up to ±`fraction`.
pub fn jittered(interval: Duration, fraction: f64) -> Duration {
    let factor = 1.0 + fraction * (rand::random::<f64>() * 2.0 - 1.0);
    interval.mul_f64(factor.max(0.0))
}

/// Waits until `stop` turns true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Sleeps `d`; returns false when stopped first.
async fn sleep_unless_stopped(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stopped(stop) => false,
    }
}

struct Session {
    client: DeviceClient,
    options: ControlOptions,
    outbox: ControlOutbox,
    builder: Mutex<ReportBuilder>,
    /// Downloads of desired versions the device does not hold.
    fetcher: Arc<Fetcher>,
    /// Watches newly activated versions and rolls back those that fail.
    probation: Arc<Probation>,
    /// Fetches and loads the shadow candidates the desired state names.
    shadow: Arc<ShadowControl>,
    ctx: CommandContext,
    settings: Arc<Settings>,
    status: Arc<ControlStatus>,
    executed: Mutex<HashSet<i64>>,
    /// Result export (events derived from the reports go there too).
    export: Option<Arc<crate::export::Exporter>>,
    events: Mutex<crate::export::events::EventTracker>,
    agent_shutdown: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    /// Wakes the poll loop early when a heartbeat shows the desired state changed.
    poll_now: Notify,
}

/// Runs the channel until stopped or revoked.
pub(super) async fn run(parts: Parts, mut stop: watch::Receiver<bool>) {
    let mut client = DeviceClient::with_http(parts.http, &parts.options.server, parts.key.clone());
    let enrolled = tokio::select! {
        e = enroll(&parts.options, &parts.key, &client, &parts.settings, &parts.status) => e,
        _ = stopped(&mut stop) => None,
    };
    let Some(device_id) = enrolled else {
        close_outbox(parts.outbox).await;
        return;
    };
    client.set_device_id(&device_id);
    if let Some(export) = &parts.export {
        let labels = identity::load_enrollment(&parts.options.data_dir, &parts.options.server)
            .map(|e| e.labels.into_iter().collect())
            .unwrap_or_default();
        export.attach_server(client.clone(), labels);
    }
    *parts.status.device_id.lock().unwrap_or_else(|p| p.into_inner()) = Some(device_id);

    let first_seq = parts.backlog.max_seq.map_or(1, |s| s + 1);
    let executed: HashSet<i64> = parts.backlog.acked_ids;
    let tuf = trusted_tuf_dir(&parts.options);
    let fetcher = Fetcher::new(client.clone(), parts.options.model_dir.clone(), parts.store.clone(), tuf);
    let probation = parts.options.probation_state.clone().unwrap_or_else(|| {
        Probation::start(&parts.options.data_dir, parts.options.probation, parts.store.clone(), parts.metrics.clone())
    });
    let shadow = ShadowControl::new(
        fetcher.sibling(),
        parts.shadows.clone(),
        parts.store.clone(),
        parts.options.model_dir.clone(),
        parts.options.data_dir.clone(),
    );
    // The candidates of the previous run resume from disk before the server answers.
    shadow.set(shadow.saved());
    shadow.tick();
    let session = Arc::new(Session {
        client,
        fetcher,
        probation,
        shadow,
        builder: Mutex::new(
            ReportBuilder::new(parts.store.clone(), parts.metrics, parts.options.data_dir.clone(), first_seq)
                .with_shadows(parts.shadows),
        ),
        ctx: CommandContext {
            store: parts.store,
            model_dir: parts.options.model_dir.clone(),
            settings: parts.settings.clone(),
            logs: parts.options.logs.clone(),
        },
        options: parts.options,
        outbox: parts.outbox,
        settings: parts.settings,
        status: parts.status,
        executed: Mutex::new(executed),
        export: parts.export.clone(),
        events: Mutex::new(Default::default()),
        agent_shutdown: parts.agent_shutdown,
        stop: parts.stop,
        poll_now: Notify::new(),
    });
    tokio::join!(
        session.clone().heartbeat_loop(stop.clone()),
        session.clone().probation_loop(stop.clone()),
        session.clone().shadow_loop(stop.clone()),
        session.clone().poll_loop(stop)
    );
    // Only a stop that gets here is clean; a crash or kill -9 never does.
    session.probation.stopped_cleanly();
    close_outbox(session.outbox.clone()).await;
}

/// Waits for the outbox's pending writes and its release, so that an agent started next in this
/// process can open it.
async fn close_outbox(outbox: ControlOutbox) {
    if let Err(e) = outbox.close().await {
        tracing::warn!(error = %e, "closing the control outbox");
    }
}

/// The trusted TUF metadata directory (`<data_dir>/tuf`), seeded with the configured root the
/// first time; `None` without a TUF root. A root already there is kept: it may be newer than
/// the configured one, which only bootstraps trust.
fn trusted_tuf_dir(options: &ControlOptions) -> Option<std::path::PathBuf> {
    let root = options.tuf_root.as_ref()?;
    let dir = options.data_dir.join("tuf");
    if !dir.join("root.json").exists() {
        let seeded = std::fs::read(root)
            .map_err(|e| e.to_string())
            .and_then(|bytes| outpost_tuf::TufClient::init(&dir, &bytes).map_err(|e| e.to_string()));
        if let Err(e) = seeded {
            // Every package is then refused as untrusted: never fall back to trusting the server.
            tracing::error!(root = %root.display(), error = %e, "cannot trust the configured TUF root");
        }
    }
    Some(dir)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// Enrolls unless already enrolled with this server; retries until it works. `None` when the
/// device is revoked or cannot ever enroll (no token).
async fn enroll(
    options: &ControlOptions,
    key: &DeviceKey,
    client: &DeviceClient,
    settings: &Settings,
    status: &ControlStatus,
) -> Option<String> {
    if let Some(saved) = identity::load_enrollment(&options.data_dir, &options.server) {
        tracing::info!(device_id = %saved.device_id, server = %saved.server, "enrolled before; resuming");
        return Some(saved.device_id);
    }
    let Some(token) = options.enroll_token.clone().filter(|t| !t.is_empty()) else {
        tracing::error!(
            server = %options.server,
            "this device is not enrolled with the server and has no enrollment token; set `enroll_token` \
             (or --enroll-token) to join the fleet. Models keep serving locally."
        );
        return None;
    };
    let request = EnrollRequest {
        token,
        algorithm: ALGORITHM_ED25519.to_string(),
        public_key: key.public_key_base64(),
        name: options.device_name.clone().unwrap_or_else(host_name),
        agent_version: report::AGENT_VERSION.to_string(),
        hardware: super::system::hardware_profile(&options.data_dir),
    };
    let mut attempt = 0;
    loop {
        match client.enroll(&request).await {
            Ok(response) => {
                settings.set_server_heartbeat(response.heartbeat_interval_s);
                status.last_contact_ms.store(super::client::now_ms(), Ordering::Relaxed);
                let record = Enrollment {
                    device_id: response.device_id.clone(),
                    server: options.server.clone(),
                    labels: response.labels.clone(),
                    enrolled_ms: super::client::now_ms(),
                };
                if let Err(e) = identity::save_enrollment(&options.data_dir, &record) {
                    tracing::error!(error = %e, "enrolled, but cannot save the enrollment record; the next start enrolls again");
                }
                tracing::info!(
                    device_id = %response.device_id, labels = ?response.labels,
                    already_enrolled = response.already_enrolled, "enrolled with the control plane"
                );
                return Some(response.device_id);
            }
            Err(ClientError::Revoked { message }) => {
                report_revoked(status, &message);
                return None;
            }
            Err(e) => {
                // A refused token may be fixed by an operator (new uses, clock): keep trying, slowly.
                let cap = if e.is_transient() { Duration::from_secs(60) } else { Duration::from_secs(300) };
                let delay = backoff(attempt, cap);
                if e.is_transient() {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "enrollment failed; retrying");
                } else {
                    tracing::error!(error = %e, retry_in_ms = delay.as_millis() as u64, "enrollment refused; retrying");
                }
                tokio::time::sleep(delay).await;
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

fn report_revoked(status: &ControlStatus, message: &str) {
    status.revoked.store(true, Ordering::Relaxed);
    tracing::error!(
        %message,
        "THIS DEVICE WAS REVOKED by the control plane: the control channel stops; models keep serving \
         locally. Re-enroll with a new key and token to rejoin."
    );
}

impl Session {
    /// Logs an error in the way it deserves and stops the channel on revocation.
    fn on_error(&self, what: &str, e: &ClientError) {
        match e {
            ClientError::Revoked { message } => {
                report_revoked(&self.status, message);
                let _ = self.stop.send(true);
            }
            ClientError::Rejected { code, .. } if code == "stale_request" => tracing::warn!(
                error = %e,
                "{what}: the server finds our clock skewed; fix the device clock (NTP). Retrying."
            ),
            ClientError::Rejected { code, .. } if code == "unknown_device" => tracing::error!(
                error = %e,
                "{what}: the server does not know this device; delete {} and restart with a new \
                 enrollment token to enroll again",
                self.options.data_dir.join(identity::ENROLLMENT_FILE).display()
            ),
            e if e.is_transient() => tracing::warn!(error = %e, "{what} failed; will retry"),
            e => tracing::error!(error = %e, "{what} failed"),
        }
    }

    fn on_contact(&self, ack: Option<&ReportAck>) {
        let now = super::client::now_ms();
        self.status.last_contact_ms.store(now, Ordering::Relaxed);
        let Some(ack) = ack else { return };
        // Checked: the server's time comes from outside, and `(a - b).abs()` overflows.
        if ack.server_time_ms != 0 && ack.server_time_ms.abs_diff(now) > SKEW_WARN_MS.unsigned_abs() {
            let skew_ms = ack.server_time_ms.saturating_sub(now);
            tracing::warn!(skew_ms, "device clock differs from the server's; check NTP");
        }
        if !ack.desired_etag.is_empty() && ack.desired_etag != self.status.applied_etag() {
            self.poll_now.notify_one();
        }
    }

    /// Delivers one report: directly when nothing is queued before it, else through the outbox.
    async fn deliver(&self, report: StateReport) {
        let queued = self.refresh_counts().await.is_none_or(|c| c.reports + c.acks > 0);
        if queued && !self.flush_outbox().await {
            self.queue_report(report).await;
            return;
        }
        match self.client.heartbeat(&report).await {
            Ok(ack) => {
                self.status.heartbeats_sent.fetch_add(1, Ordering::Relaxed);
                self.on_contact(Some(&ack));
            }
            Err(e) => {
                self.on_error("heartbeat", &e);
                if e.is_transient() {
                    self.queue_report(report).await;
                }
            }
        }
    }

    /// Looks at every model once a second: starts, passes or fails probations; after a
    /// rollback the directory is scanned so a fallback not in memory is loaded.
    async fn probation_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            if !sleep_unless_stopped(Duration::from_secs(1), &mut stop).await {
                return;
            }
            let probation = self.probation.clone();
            let rolled_back = match tokio::task::spawn_blocking(move || probation.tick()).await {
                Ok(rolled_back) => rolled_back,
                Err(e) => {
                    tracing::error!(error = %e, "probation check panicked; it runs again in a second");
                    false
                }
            };
            if rolled_back {
                let (store, dir) = (self.ctx.store.clone(), self.ctx.model_dir.clone());
                let _ = tokio::task::spawn_blocking(move || store.sync(&dir)).await;
            }
        }
    }

    /// Moves the shadow candidates on once a second: a finished download is loaded, a failed
    /// one reported, a retry started when its time comes.
    async fn shadow_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        while sleep_unless_stopped(Duration::from_secs(1), &mut stop).await {
            self.shadow.tick();
        }
    }

    async fn heartbeat_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            let report = {
                let desired = self.status.desired_models();
                // Also retries failed downloads once their wait is over, and fetches again a
                // package deleted from the directory.
                self.fetcher.want(&report::missing_models(&report::served_models(&self.ctx.store), &desired));
                let etag = self.status.applied_etag();
                let mut updates = self.fetcher.reports();
                // A rollback says more than the download that brought the version.
                updates.extend(self.probation.reports());
                let on_probation = self.probation.on_probation();
                self.builder.lock().unwrap_or_else(|p| p.into_inner()).build(&desired, &etag, &updates, &on_probation)
            };
            self.export_events(&report).await;
            tokio::select! {
                _ = self.deliver(report) => {}
                _ = stopped(&mut stop) => return,
            }
            if !sleep_unless_stopped(jittered(self.settings.heartbeat_interval(), 0.1), &mut stop).await {
                return;
            }
        }
    }

    /// Exports what changed in the models since the previous report (events, and alerts for
    /// failures).
    async fn export_events(&self, report: &StateReport) {
        let Some(export) = &self.export else { return };
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner()).observe(&report.models);
        for e in events {
            if let Err(err) = export.event(e.alert, &e.event, Some(&e.model), Some(&e.version), &e.details).await {
                tracing::warn!(error = %err, event = %e.event, "cannot queue an event for export");
            }
        }
    }

    async fn poll_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut etag: Option<String> = None;
        let mut attempt = 0;
        loop {
            let result = tokio::select! {
                r = self.client.desired_state(etag.as_deref(), self.options.poll_wait) => r,
                _ = stopped(&mut stop) => return,
            };
            match result {
                Ok(Some(desired)) => {
                    attempt = 0;
                    self.on_contact(None);
                    let new_etag = desired.etag.clone();
                    if !self.apply(desired).await {
                        return; // restarting
                    }
                    etag = Some(new_etag);
                }
                Ok(None) => {
                    attempt = 0;
                    self.on_contact(None);
                }
                Err(e) => {
                    self.on_error("desired-state poll", &e);
                    if matches!(e, ClientError::Revoked { .. }) {
                        return;
                    }
                    let delay = backoff(attempt, Duration::from_secs(60));
                    attempt = attempt.saturating_add(1);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.poll_now.notified() => {}
                        _ = stopped(&mut stop) => return,
                    }
                }
            }
        }
    }

    /// Applies a desired state: settings, desired models, then new commands in order. Returns
    /// false when a restart was requested (the channel is stopping).
    async fn apply(&self, desired: DesiredState) -> bool {
        self.settings.set_server_heartbeat(desired.heartbeat_interval_s);
        let outcome = self.settings.apply(&desired.config);
        if !outcome.ignored.is_empty() || !outcome.invalid.is_empty() {
            tracing::warn!(ignored = ?outcome.ignored, invalid = ?outcome.invalid, "desired config has settings this agent does not apply");
        }
        let (models, refused) = report::well_named_models(desired.models);
        if !refused.is_empty() {
            let names: Vec<String> = refused.iter().map(|m| format!("{:?}@{:?}", m.name, m.version)).collect();
            tracing::error!(models = ?names, "refusing desired models whose name or version breaks the model-name grammar");
        }
        // Candidates first: the store must know them as shadows before any scan could see one.
        self.shadow.set(shadow::wanted_shadows(&models));
        self.shadow.tick();
        // The store activates these versions, also when one is lower than what serves (a
        // rollback the operator asked for): scan now rather than at the next poll.
        let pins: std::collections::BTreeMap<String, String> =
            models.iter().map(|m| (m.name.clone(), m.version.clone())).collect();
        // The switch itself: the pins are written (temporary file, rename, directory sync)
        // before the store acts on them, so a restart resumes from exactly this choice.
        super::pins::save(&self.options.data_dir, &pins);
        // A raised attempt retries at once a version that was refused at load (the fetcher
        // retries a failed download the same way, see `fetch`).
        let before = self.status.desired_models();
        let mut retried = false;
        for m in &models {
            let raised = before.iter().any(|b| b.name == m.name && b.version == m.version && m.attempt > b.attempt);
            retried |= raised && self.ctx.store.retry_failed(&m.name);
        }
        if self.ctx.store.set_desired(pins) | retried {
            let (store, dir) = (self.ctx.store.clone(), self.ctx.model_dir.clone());
            if let Err(e) = tokio::task::spawn_blocking(move || store.sync(&dir)).await {
                tracing::error!(error = %e, "model directory scan after a desired-state change failed");
            }
        }
        // What is still not served at its desired version is downloaded, when it has a package.
        let missing = report::missing_models(&report::served_models(&self.ctx.store), &models);
        if !missing.is_empty() {
            let names: Vec<String> = missing.iter().map(|m| format!("{}@{}", m.name, m.version)).collect();
            tracing::info!(models = ?names, "desired models not served yet");
        }
        self.fetcher.want(&missing);
        *self.status.desired.lock().unwrap_or_else(|p| p.into_inner()) = models;
        for command in &desired.commands {
            if !self.executed.lock().unwrap_or_else(|p| p.into_inner()).insert(command.id) {
                continue; // already run; its ack is on the way
            }
            let ack = commands::execute(&self.ctx, command).await;
            self.status.commands_executed.fetch_add(1, Ordering::Relaxed);
            self.send_ack(command.id, ack).await;
            if command.kind == CommandKind::RestartAgent {
                self.status.restart_requested.store(true, Ordering::Relaxed);
                let _ = self.stop.send(true);
                let _ = self.agent_shutdown.send(true);
                return false;
            }
        }
        *self.status.applied_etag.lock().unwrap_or_else(|p| p.into_inner()) = desired.etag;
        true
    }
}
