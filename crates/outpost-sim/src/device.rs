//! One virtual device: a tokio task with its own Ed25519 key that enrolls, heartbeats,
//! long-polls, acknowledges commands, downloads the model versions its desired state names, may
//! go offline and catch up, and now and then sends a deliberately broken request to check the
//! server refuses it.

use crate::cache::PackageCache;
use crate::stats::{Fault, Stats};
use crate::synthetic::{self, DeviceModelState, OfflinePlan};
use crate::update::{DeviceModels, Updater};
use crate::SimConfig;
use outpost_agent::control::client::{new_nonce, now_ms, ClientError, DeviceClient};
use outpost_proto::fleet::device::{
    CommandAck, CommandStatus, DesiredModel, DesiredState, EnrollRequest, Health, ReportBatch, StateReport,
};
use outpost_proto::fleet::signing::{DeviceKey, ALGORITHM_ED25519};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify, Semaphore};

/// Reports per catch-up request (the server accepts up to 500).
const BATCH: usize = 500;
/// Enrollment attempts before a device gives up.
const ENROLL_ATTEMPTS: u32 = 8;

/// What all devices share.
#[derive(Debug)]
pub struct Shared {
    /// Run parameters.
    pub config: SimConfig,
    /// One HTTP client (and connection pool) for the whole fleet.
    pub http: reqwest::Client,
    /// Bounds enrollments in flight.
    pub enroll_gate: Semaphore,
    /// Counters.
    pub stats: Stats,
    /// When the run started.
    pub started: Instant,
    /// Verified packages, one copy each for the whole fleet.
    pub cache: Arc<PackageCache>,
    /// Bounds delta rebuilds running at once.
    pub rebuild_gate: Semaphore,
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Sleeps `d`; false when stopped first.
async fn nap(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stopped(stop) => false,
    }
}

fn retry_delay(attempt: u32, rng: &mut impl Rng) -> Duration {
    let ceiling = Duration::from_millis(250).saturating_mul(1 << attempt.min(8)).min(Duration::from_secs(30));
    ceiling.mul_f64(rng.random_range(0.5..1.0))
}

/// Runs virtual device `index` until `stop`.
pub async fn run(index: usize, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let config = &shared.config;
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let start = synthetic::start_delay(index, config.devices, config.heartbeat_interval);
    if !nap(start, &mut stop).await {
        return;
    }
    let key = Arc::new(DeviceKey::from_secret(rng.random()));
    let mut client = DeviceClient::with_http(shared.http.clone(), &config.server, key.clone());
    let Some(device_id) = enroll(index, &shared, &client, &key, &mut rng, &mut stop).await else { return };
    client.set_device_id(&device_id);
    let device = Device {
        client,
        shared: shared.clone(),
        offline: synthetic::offline_plan(config.offline_fraction, config.heartbeat_interval, config.duration, &mut rng),
        online: watch::channel(true).0,
        applied: std::sync::Mutex::new(String::new()),
        models: DeviceModels::default(),
        wanted: watch::channel(Vec::new()).0,
        report_now: Notify::new(),
        behaviour: crate::quality::Behaviour::draw(&config.quality, &mut rng),
    };
    if config.long_poll {
        tokio::join!(device.heartbeats(rng, stop.clone()), device.long_polls(stop.clone()), device.updates(stop));
    } else {
        tokio::join!(device.heartbeats(rng, stop.clone()), device.updates(stop));
    }
}

async fn enroll(
    index: usize,
    shared: &Shared,
    client: &DeviceClient,
    key: &DeviceKey,
    rng: &mut SmallRng,
    stop: &mut watch::Receiver<bool>,
) -> Option<String> {
    let request = EnrollRequest {
        token: shared.config.enroll_token.clone(),
        algorithm: ALGORITHM_ED25519.into(),
        public_key: key.public_key_base64(),
        name: format!("sim-{index:05}"),
        agent_version: synthetic::SIM_AGENT_VERSION.into(),
        hardware: synthetic::hardware(index),
    };
    for attempt in 0..ENROLL_ATTEMPTS {
        let result = {
            let _permit = shared.enroll_gate.acquire().await.ok()?;
            tokio::select! {
                r = client.enroll(&request) => r,
                _ = stopped(stop) => return None,
            }
        };
        match result {
            Ok(response) => {
                shared.stats.enrollment_done(true, shared.config.devices);
                return Some(response.device_id);
            }
            Err(e) if e.is_transient() && attempt + 1 < ENROLL_ATTEMPTS => {
                tracing::debug!(device = index, error = %e, "enrollment failed; retrying");
                if !nap(retry_delay(attempt, rng), stop).await {
                    return None;
                }
            }
            Err(e) => {
                tracing::warn!(device = index, error = %e, "virtual device could not enroll");
                break;
            }
        }
    }
    shared.stats.enrollment_done(false, shared.config.devices);
    None
}

struct Device {
    client: DeviceClient,
    shared: Arc<Shared>,
    offline: Option<OfflinePlan>,
    /// False while the device is offline, so the long-poll pauses too.
    online: watch::Sender<bool>,
    /// ETag of the desired state the device last applied (reported in every heartbeat).
    applied: std::sync::Mutex<String>,
    /// The real models it holds or fetches.
    models: DeviceModels,
    /// The models the desired state names (with a package), for the update task.
    wanted: watch::Sender<Vec<DesiredModel>>,
    /// An update ended: report now rather than at the next interval, so the server's view of
    /// the fleet measures delivery, not the heartbeat interval.
    report_now: Notify,
    /// How its models behave (faults drawn once).
    behaviour: crate::quality::Behaviour,
}

impl Device {
    async fn heartbeats(&self, mut rng: SmallRng, mut stop: watch::Receiver<bool>) {
        let config = &self.shared.config;
        let mut model = DeviceModelState::default();
        let mut queued: Vec<StateReport> = Vec::new();
        let mut acked = HashSet::new();
        let (mut seq, mut sent, mut offline_left) = (0u64, 0u32, 0u32);
        let born = Instant::now();
        loop {
            seq += 1;
            let applied = self.applied_etag();
            let mut report =
                synthetic::state_report(seq, now_ms(), born.elapsed().as_secs(), &applied, &mut model, &mut rng);
            let (mut real, missing) = self.models.reports();
            {
                let wanted = self.wanted.borrow();
                for m in real.iter_mut() {
                    let shadow = wanted.iter().find(|w| w.name == m.name).and_then(|w| w.shadow.as_ref());
                    crate::quality::fill(m, shadow, &self.behaviour, &mut rng);
                }
            }
            report.models.extend(real);
            if missing {
                report.health = Health::Degraded;
            }
            if let Some(plan) = self.offline.filter(|p| p.after == sent && offline_left == 0 && queued.is_empty()) {
                offline_left = plan.intervals;
                self.shared.stats.went_offline.fetch_add(1, Ordering::Relaxed);
                self.online.send_replace(false);
            }
            if offline_left > 0 {
                queued.push(report);
                offline_left -= 1;
            } else {
                self.online.send_replace(true);
                if !queued.is_empty() {
                    queued.push(report);
                    self.catch_up(&mut queued).await;
                } else {
                    self.heartbeat(&report, &mut acked).await;
                    self.maybe_fault(&report, &mut rng).await;
                }
            }
            sent = sent.saturating_add(1);
            let pause = synthetic::jittered(config.heartbeat_interval, config.jitter, &mut rng);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.report_now.notified() => {}
                _ = stopped(&mut stop) => return,
            }
        }
    }

    fn applied_etag(&self) -> String {
        self.applied.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_applied(&self, etag: &str) {
        *self.applied.lock().unwrap_or_else(|p| p.into_inner()) = etag.to_string();
    }

    async fn heartbeat(&self, report: &StateReport, acked: &mut HashSet<i64>) {
        let steady = self.shared.stats.all_enrolled.load(Ordering::Relaxed);
        let began = Instant::now();
        let result = self.client.heartbeat(report).await;
        self.shared.stats.heartbeat_latency(began.elapsed(), steady);
        match result {
            Ok(ack) => {
                self.shared.stats.heartbeats_ok.fetch_add(1, Ordering::Relaxed);
                if !self.shared.config.long_poll && ack.desired_etag != report.applied_etag {
                    // Without a held long-poll, a changed ETag in the ack is the cue to fetch.
                    if let Ok(Some(desired)) = self.client.desired_state(None, Duration::ZERO).await {
                        self.apply(&desired, acked).await;
                        self.set_applied(&desired.etag);
                    }
                }
            }
            Err(e) => {
                self.shared.stats.heartbeats_failed.fetch_add(1, Ordering::Relaxed);
                self.shared.stats.error("heartbeat", &e);
                tracing::debug!(device = %self.client.device_id(), error = %e, "heartbeat failed");
            }
        }
    }

    /// Sends reports queued while offline, oldest first; keeps what could not be sent.
    async fn catch_up(&self, queued: &mut Vec<StateReport>) {
        while !queued.is_empty() {
            let n = queued.len().min(BATCH);
            let batch = ReportBatch { reports: queued[..n].to_vec() };
            match self.client.send_reports(&batch).await {
                Ok(_) => {
                    self.shared.stats.reports_caught_up.fetch_add(n as u64, Ordering::Relaxed);
                    queued.drain(..n);
                }
                Err(e) => {
                    tracing::debug!(device = %self.client.device_id(), error = %e, "catch-up failed; keeping reports");
                    return;
                }
            }
        }
    }

    async fn long_polls(&self, mut stop: watch::Receiver<bool>) {
        let mut etag: Option<String> = None;
        let mut acked = HashSet::new();
        let mut online = self.online.subscribe();
        let mut failures = 0u32;
        loop {
            tokio::select! {
                r = online.wait_for(|on| *on) => if r.is_err() { return },
                _ = stopped(&mut stop) => return,
            }
            let result = tokio::select! {
                r = self.client.desired_state(etag.as_deref(), Duration::from_secs(30)) => r,
                _ = stopped(&mut stop) => return,
            };
            match result {
                Ok(answer) => {
                    failures = 0;
                    self.shared.stats.long_polls.fetch_add(1, Ordering::Relaxed);
                    if let Some(desired) = answer {
                        self.apply(&desired, &mut acked).await;
                        self.set_applied(&desired.etag);
                        etag = Some(desired.etag);
                    }
                }
                Err(e) => {
                    self.shared.stats.long_polls_failed.fetch_add(1, Ordering::Relaxed);
                    self.shared.stats.error("long-poll", &e);
                    if matches!(e, ClientError::Revoked { .. }) {
                        return;
                    }
                    failures = failures.saturating_add(1);
                    let pause = Duration::from_millis(500).saturating_mul(failures.min(60));
                    if !nap(pause, &mut stop).await {
                        return;
                    }
                }
            }
        }
    }

    /// Fetches each model version the desired state names that the device does not hold, one
    /// after another, whenever the desired state changes.
    async fn updates(&self, mut stop: watch::Receiver<bool>) {
        let mut wanted = self.wanted.subscribe();
        let updater = Updater {
            client: &self.client,
            cache: &self.shared.cache,
            stats: &self.shared.stats,
            models: &self.models,
            rebuild_gate: &self.shared.rebuild_gate,
        };
        loop {
            let models = wanted.borrow_and_update().clone();
            for m in &models {
                let Some(package) = self.models.to_fetch(m) else { continue };
                if self.behaviour.fails_updates && self.models.runs_any(&m.name) {
                    self.models.refuse(&m.name, &m.version, &package, "simulated self-test failure".into());
                    self.report_now.notify_one();
                    continue;
                }
                tokio::select! {
                    _ = updater.update(&m.name, &m.version, &package) => self.report_now.notify_one(),
                    _ = stopped(&mut stop) => return,
                }
            }
            tokio::select! {
                r = wanted.changed() => if r.is_err() { return },
                _ = stopped(&mut stop) => return,
            }
        }
    }

    /// Hands the desired models to the update task and acknowledges every command not
    /// acknowledged yet.
    async fn apply(&self, desired: &DesiredState, acked: &mut HashSet<i64>) {
        // The device builds nothing from a name that breaks the grammar, as the agent refuses it.
        let models: Vec<DesiredModel> =
            desired.models.iter().filter(|m| m.is_well_named() && m.package.is_some()).cloned().collect();
        self.wanted.send_if_modified(|current| {
            let changed = *current != models;
            if changed {
                *current = models;
            }
            changed
        });
        for command in &desired.commands {
            if acked.contains(&command.id) {
                continue;
            }
            let ack = CommandAck { status: CommandStatus::Succeeded, result: serde_json::json!({ "simulated": true }) };
            match self.client.ack(command.id, &ack).await {
                Ok(()) => {
                    acked.insert(command.id);
                    self.shared.stats.commands_acked.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => self.shared.stats.error("command ack", &e),
            }
        }
    }

    /// With the configured probabilities, sends one broken request and counts the verdict.
    async fn maybe_fault(&self, report: &StateReport, rng: &mut SmallRng) {
        let faults = &self.shared.config.faults;
        let pick = [
            (Fault::BadSignature, faults.bad_signature),
            (Fault::Replay, faults.replay),
            (Fault::GarbageJson, faults.garbage_json),
        ];
        for (kind, probability) in pick {
            if probability > 0.0 && rng.random_bool(probability.clamp(0.0, 1.0)) {
                let rejected = self.send_fault(kind, report).await;
                self.shared.stats.fault(kind, rejected);
            }
        }
    }

    /// Sends a broken heartbeat; true when the server refused it with a 4xx.
    async fn send_fault(&self, kind: Fault, report: &StateReport) -> bool {
        let path = "/v1/device/heartbeat";
        let body = serde_json::to_vec(report).unwrap_or_default();
        let request = match kind {
            // Signed over one body, sent with another: the signature no longer matches.
            Fault::BadSignature => {
                let mut forged = body.clone();
                forged.extend_from_slice(b" ");
                self.client.signed_request(Method::POST, path, body, now_ms(), &new_nonce()).body(forged)
            }
            // The original goes through (it is a valid heartbeat); the identical copy must not.
            Fault::Replay => {
                let (at, nonce) = (now_ms(), new_nonce());
                let original = self.client.signed_request(Method::POST, path, body.clone(), at, &nonce).send().await;
                if original.is_ok_and(|r| r.status().is_success()) {
                    self.shared.stats.heartbeats_ok.fetch_add(1, Ordering::Relaxed);
                }
                self.client.signed_request(Method::POST, path, body, at, &nonce)
            }
            Fault::GarbageJson => {
                let garbage = body[..body.len() / 2].to_vec();
                self.client.signed_request(Method::POST, path, garbage, now_ms(), &new_nonce())
            }
        };
        match request.send().await {
            Ok(response) => response.status().is_client_error(),
            Err(_) => false,
        }
    }
}
