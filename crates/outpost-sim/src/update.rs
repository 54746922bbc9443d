//! Model updates of a virtual device, done as the agent's fetcher does them: a version that the
//! desired state names and the device does not hold is downloaded whole (streamed, its length
//! and sha256 checked) or, when the device runs another version of the model, rebuilt from that
//! one with the server's delta plan and blobs (`outpost_delta` checks every piece's hash, then
//! the whole package's). Bytes that do not verify are fetched again a few times; a delta that
//! keeps failing falls back to the whole package; a package that never verifies is reported
//! failed with `hash_mismatch` while the version the device ran stays active. The agent's own
//! limits and client are used, so the simulator's traffic is the fleet's traffic.
//!
//! What differs from the agent, to fit a thousand devices in one process: verified bytes go to
//! the shared [`PackageCache`] (one copy per distinct package) rather than to a model directory
//! per device, a rebuild's output is hashed and dropped when the store already holds it, and
//! the new version is active as soon as it verified (nothing is loaded).

use crate::cache::{Cached, PackageCache};
use crate::stats::Stats;
use outpost_agent::control::client::{ClientError, DeviceClient};
use outpost_agent::control::fetch::{
    delta_error_is_transient, DELTA_MISSES, MAX_PLAN_BYTES, MISMATCH_ATTEMPTS, STALL_TIMEOUT,
};
use outpost_delta::{DeltaError, Held, Plan};
use outpost_proto::fleet::api::PackageRef;
use outpost_proto::fleet::device::{DesiredModel, FailureKind, ModelReport, UpdateReport};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Older versions a device lists as kept (the agent's default).
const KEEP: usize = 2;

/// A version the device holds.
#[derive(Debug, Clone, PartialEq)]
struct Installed {
    version: String,
    sha256: String,
}

#[derive(Debug, Default)]
struct Slot {
    active: Option<Installed>,
    /// Older versions still "on disk", newest first.
    kept: Vec<String>,
    /// The version on its way, as reported.
    update: Option<UpdateReport>,
    /// A package given up on; tried again only when the desired one changes.
    given_up: Option<PackageRef>,
}

/// The real models of one virtual device (beside its synthetic one), by name.
#[derive(Debug, Default)]
pub struct DeviceModels {
    slots: Mutex<BTreeMap<String, Slot>>,
}

impl DeviceModels {
    fn slots(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The package to fetch for `wanted`, when the device neither runs it nor gave up on it.
    pub fn to_fetch(&self, wanted: &DesiredModel) -> Option<PackageRef> {
        let package = wanted.package.as_ref()?;
        let slots = self.slots();
        let slot = slots.get(&wanted.name);
        let runs = slot.and_then(|s| s.active.as_ref()).is_some_and(|a| a.version == wanted.version);
        let gave_up = slot.and_then(|s| s.given_up.as_ref()) == Some(package);
        (!runs && !gave_up).then(|| package.clone())
    }

    /// Model reports for the state report, and whether a desired version is not active yet
    /// (the agent then reports itself degraded).
    pub fn reports(&self) -> (Vec<ModelReport>, bool) {
        let slots = self.slots();
        let mut missing = false;
        let reports = slots
            .iter()
            .map(|(name, slot)| {
                missing |= slot.update.is_some();
                match &slot.active {
                    Some(active) => ModelReport {
                        name: name.clone(),
                        version: active.version.clone(),
                        state: "ready".into(),
                        installed: std::iter::once(active.version.clone()).chain(slot.kept.iter().cloned()).collect(),
                        update: slot.update.clone(),
                        ..ModelReport::default()
                    },
                    // Nothing runs yet: the arriving version stands for the model, as the agent
                    // reports a desired model it does not serve.
                    None => {
                        let u = slot.update.clone().unwrap_or_default();
                        ModelReport {
                            name: name.clone(),
                            version: u.version.clone(),
                            state: u.state.clone(),
                            reason: u.reason.clone(),
                            failure_kind: u.failure_kind,
                            update: Some(u),
                            ..ModelReport::default()
                        }
                    }
                }
            })
            .collect();
        (reports, missing)
    }

    /// Starts reporting the fetch of `version`; the version it may be rebuilt from.
    fn begin(&self, name: &str, version: &str, package: &PackageRef) -> Option<Installed> {
        let mut slots = self.slots();
        let slot = slots.entry(name.to_string()).or_default();
        slot.given_up = None;
        slot.update = Some(UpdateReport {
            version: version.to_string(),
            state: "downloading".into(),
            bytes_total: package.size_bytes,
            ..UpdateReport::default()
        });
        slot.active.clone().filter(|a| a.version != version)
    }

    fn report(&self, name: &str, f: impl FnOnce(&mut UpdateReport)) {
        if let Some(u) = self.slots().get_mut(name).and_then(|s| s.update.as_mut()) {
            f(u);
        }
    }

    fn activate(&self, name: &str, installed: Installed) {
        let mut slots = self.slots();
        let slot = slots.entry(name.to_string()).or_default();
        if let Some(old) = slot.active.take() {
            slot.kept.retain(|v| v != &old.version && v != &installed.version);
            slot.kept.insert(0, old.version);
            slot.kept.truncate(KEEP);
        }
        slot.active = Some(installed);
        slot.update = None;
    }

    /// Whether some version of `name` is active (so a new one is an update, not a first install).
    pub fn runs_any(&self, name: &str) -> bool {
        self.slots().get(name).is_some_and(|s| s.active.is_some())
    }

    /// Refuses `version` as a device whose self-test fails it would: reported failed, the
    /// active version stays.
    pub fn refuse(&self, name: &str, version: &str, package: &PackageRef, reason: String) {
        self.begin(name, version, package);
        self.give_up(name, package, FailureKind::SelfTest, reason);
    }

    fn give_up(&self, name: &str, package: &PackageRef, kind: FailureKind, reason: String) {
        let mut slots = self.slots();
        let slot = slots.entry(name.to_string()).or_default();
        slot.given_up = Some(package.clone());
        if let Some(u) = slot.update.as_mut() {
            (u.state, u.failure_kind, u.reason) = ("failed".into(), Some(kind), Some(reason));
        }
    }
}

/// Why one attempt failed.
enum Failure {
    /// Worth another try after a pause (network, server, stall).
    Transient(String),
    /// The bytes did not verify.
    Mismatch(String),
    /// Give up until the desired state changes.
    Fatal(FailureKind, String),
}

/// How a delta attempt ended.
enum DeltaOutcome {
    Done,
    /// This delta cannot work; fetch the whole package.
    Fallback(String),
    Failed(Failure),
}

/// Deletes a scratch file when the attempt ends, however it ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What one device uses to fetch: its client, the fleet's store and counters.
pub struct Updater<'a> {
    /// The device's signed client.
    pub client: &'a DeviceClient,
    /// Verified packages of the whole fleet.
    pub cache: &'a Arc<PackageCache>,
    /// The fleet's counters.
    pub stats: &'a Stats,
    /// The device's models.
    pub models: &'a DeviceModels,
    /// Bounds rebuilds running at once (each is CPU work on a blocking thread).
    pub rebuild_gate: &'a Semaphore,
}

impl Updater<'_> {
    /// Brings `name` to `version`: returns once it is active or given up.
    pub async fn update(&self, name: &str, version: &str, package: &PackageRef) {
        let began = Instant::now();
        let base = self.models.begin(name, version, package);
        let mut use_delta = base.is_some();
        let (mut delta_misses, mut mismatches, mut transient) = (0u32, 0u32, 0u32);
        loop {
            let outcome = match (&base, use_delta) {
                (Some(base), true) => match self.delta(name, version, package, base).await {
                    DeltaOutcome::Done => Ok(()),
                    DeltaOutcome::Fallback(reason) => {
                        tracing::debug!(model = %name, %version, %reason, "delta not possible; fetching the whole package");
                        self.stats.delta_fallbacks.fetch_add(1, Ordering::Relaxed);
                        use_delta = false;
                        self.models.report(name, |u| u.delta_from = None);
                        continue;
                    }
                    DeltaOutcome::Failed(f) => Err(f),
                },
                _ => self.full(name, version, package).await,
            };
            match outcome {
                Ok(()) => {
                    self.models.activate(name, Installed { version: version.into(), sha256: package.sha256.clone() });
                    self.stats.updates_active.fetch_add(1, Ordering::Relaxed);
                    self.stats.time_to_active.record(began.elapsed());
                    return;
                }
                Err(Failure::Mismatch(reason)) => {
                    self.stats.verify_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(model = %name, %version, %reason, "downloaded bytes do not verify");
                    if use_delta {
                        delta_misses += 1;
                        if delta_misses >= DELTA_MISSES {
                            self.stats.delta_fallbacks.fetch_add(1, Ordering::Relaxed);
                            use_delta = false;
                        }
                    } else {
                        mismatches += 1;
                        if mismatches >= MISMATCH_ATTEMPTS {
                            let reason = format!("{reason} ({mismatches} downloads in a row)");
                            return self.fail(name, package, FailureKind::HashMismatch, reason);
                        }
                    }
                }
                Err(Failure::Fatal(kind, reason)) => return self.fail(name, package, kind, reason),
                Err(Failure::Transient(reason)) => {
                    transient = transient.saturating_add(1);
                    tracing::debug!(model = %name, %version, %reason, "download interrupted; trying again");
                    tokio::time::sleep(retry_after(transient)).await;
                }
            }
            self.models.report(name, |u| {
                (u.state, u.bytes_fetched) = ("downloading".into(), 0);
                if !use_delta {
                    u.delta_from = None;
                }
            });
        }
    }

    fn fail(&self, name: &str, package: &PackageRef, kind: FailureKind, reason: String) {
        tracing::warn!(model = %name, %reason, "virtual device gave up an update");
        self.stats.updates_failed.fetch_add(1, Ordering::Relaxed);
        self.stats.error("update", &reason);
        self.models.give_up(name, package, kind, reason);
    }

    /// Streams the whole package, hashing it; the first device to verify it files it.
    async fn full(&self, name: &str, version: &str, package: &PackageRef) -> Result<(), Failure> {
        let mut response = match self.client.package(name, version, 0, &package.sha256).await {
            Ok(r) => r,
            Err(e) if e.is_transient() => return Err(Failure::Transient(e.to_string())),
            Err(e) => return Err(Failure::Fatal(FailureKind::Download, e.to_string())),
        };
        let mut store =
            if self.cache.get(&package.sha256).is_none() { self.cache.claim(&package.sha256) } else { None };
        let (mut hasher, mut have) = (Sha256::new(), 0u64);
        while let Some(chunk) = next_chunk(&mut response).await? {
            let chunk = chunk.as_ref();
            self.stats.bytes_full.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            have += chunk.len() as u64;
            if have > package.size_bytes {
                return Err(Failure::Mismatch(format!(
                    "the server sent more than the {} bytes it published",
                    package.size_bytes
                )));
            }
            hasher.update(chunk);
            if store.as_mut().is_some_and(|w| w.write_all(chunk).is_err()) {
                store = None; // the store is a convenience; this device's check goes on
            }
            self.models.report(name, |u| u.bytes_fetched = have);
        }
        self.models.report(name, |u| u.state = "verifying".into());
        let actual = hex::encode(hasher.finalize());
        if have != package.size_bytes || actual != package.sha256 {
            return Err(Failure::Mismatch(format!(
                "got {have} bytes with sha256 {actual}, the server published {} bytes with sha256 {}",
                package.size_bytes, package.sha256
            )));
        }
        if let Some(Err(e)) = store.map(|w| w.commit()) {
            tracing::warn!(error = %e, "cannot file a verified package in the simulator's store");
        }
        self.stats.downloads_full.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Fetches the plan from `base` and the blobs it needs, rebuilds and verifies the package.
    async fn delta(&self, name: &str, version: &str, package: &PackageRef, base: &Installed) -> DeltaOutcome {
        let Some(cached) = self.cache.get(&base.sha256) else {
            return DeltaOutcome::Fallback("the base's bytes are not in the simulator's store".into());
        };
        let plan_bytes = match self.client.delta_plan(name, version, &base.version, MAX_PLAN_BYTES).await {
            Ok(b) => b,
            Err(e) if delta_error_is_transient(&e) => return DeltaOutcome::Failed(Failure::Transient(e.to_string())),
            Err(e) => return DeltaOutcome::Fallback(e.to_string()),
        };
        self.stats.bytes_delta.fetch_add(plan_bytes.len() as u64, Ordering::Relaxed);
        let plan = match Plan::from_bytes(&plan_bytes) {
            Ok(p) => p,
            Err(e) => return DeltaOutcome::Fallback(e.to_string()),
        };
        if plan.target.sha256 != package.sha256 || plan.target.size != package.size_bytes {
            return DeltaOutcome::Fallback("the plan rebuilds other bytes than the desired package".into());
        }
        if plan.base.as_ref().map(|b| b.sha256.as_str()) != Some(base.sha256.as_str()) {
            return DeltaOutcome::Fallback("the plan was made against another base".into());
        }
        let plan_len = plan_bytes.len() as u64;
        self.models.report(name, |u| {
            u.delta_from = Some(base.version.clone());
            u.bytes_fetched = plan_len;
        });
        // The device holds no other version's pieces in the simulator: only the base counts.
        let fetches = plan.fetches(&Held::new());
        let blobs = Scratch(self.cache.scratch_path("blobs"));
        if let Err(failure) = self.fetch_blobs(name, version, &base.version, &fetches, &blobs.0, plan_len).await {
            return failure;
        }
        self.models.report(name, |u| u.state = "verifying".into());
        let Ok(_permit) = self.rebuild_gate.acquire().await else {
            return DeltaOutcome::Failed(Failure::Transient("shutting down".into()));
        };
        let store = if self.cache.get(&package.sha256).is_none() { self.cache.claim(&package.sha256) } else { None };
        let blobs_path = blobs.0.clone();
        let rebuilt = tokio::task::spawn_blocking(move || rebuild(&plan, &fetches, &cached, &blobs_path, store)).await;
        match rebuilt {
            Ok(Ok(())) => {
                self.stats.downloads_delta.fetch_add(1, Ordering::Relaxed);
                DeltaOutcome::Done
            }
            Ok(Err(DeltaError::PieceMismatch { at, .. })) => {
                DeltaOutcome::Failed(Failure::Mismatch(format!("a delta piece (blob at {at}) does not match its hash")))
            }
            // The whole package's hash is wrong although every piece verified: the plan
            // itself is bad, so no retry of it can help.
            Ok(Err(DeltaError::Corrupt(reason))) => {
                self.stats.verify_failures.fetch_add(1, Ordering::Relaxed);
                DeltaOutcome::Fallback(reason)
            }
            Ok(Err(DeltaError::Io(reason))) => {
                DeltaOutcome::Failed(Failure::Fatal(FailureKind::Io, format!("rebuilding from a delta: {reason}")))
            }
            Err(e) => DeltaOutcome::Fallback(format!("the rebuild panicked: {e}")),
        }
    }

    /// Appends the plan's blobs this device needs to `path`, one `Range` request per run.
    async fn fetch_blobs(
        &self,
        name: &str,
        version: &str,
        base: &str,
        fetches: &[outpost_delta::Fetch],
        path: &std::path::Path,
        mut fetched: u64,
    ) -> Result<(), DeltaOutcome> {
        let io = |e: std::io::Error| {
            DeltaOutcome::Failed(Failure::Fatal(FailureKind::Io, format!("writing {}: {e}", path.display())))
        };
        let mut file = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
        for run in Plan::fetch_runs(fetches) {
            let range = run.at..run.at + run.size;
            let mut response = match self.client.delta_blobs(name, version, base, range.clone()).await {
                Ok(r) => r,
                Err(e) if delta_error_is_transient(&e) => {
                    return Err(DeltaOutcome::Failed(Failure::Transient(e.to_string())))
                }
                Err(ClientError::Rejected { status: 416, .. }) => {
                    return Err(DeltaOutcome::Failed(Failure::Mismatch(
                        "the server's blob file is shorter than the plan".into(),
                    )))
                }
                Err(e) => return Err(DeltaOutcome::Fallback(e.to_string())),
            };
            if response.status() != reqwest::StatusCode::PARTIAL_CONTENT && range.start > 0 {
                return Err(DeltaOutcome::Fallback("the server ignored the Range of a delta blob request".into()));
            }
            let mut got = 0u64;
            while got < run.size {
                let Some(chunk) = next_chunk(&mut response).await.map_err(DeltaOutcome::Failed)? else { break };
                let chunk = chunk.as_ref();
                self.stats.bytes_delta.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                // A whole-file answer to a range starting at 0: keep only the range.
                let take = (run.size - got).min(chunk.len() as u64) as usize;
                file.write_all(&chunk[..take]).map_err(io)?;
                got += take as u64;
                fetched += chunk.len() as u64;
                self.models.report(name, |u| u.bytes_fetched = fetched);
            }
            if got < run.size {
                let reason = format!("the blob range ended after {got} of {} bytes", run.size);
                return Err(DeltaOutcome::Failed(Failure::Transient(reason)));
            }
        }
        file.flush().map_err(io)
    }
}

/// Rebuilds the target from the cached base and the fetched blobs; every piece and the whole
/// are checked by `outpost_delta`. The output is filed in the store when `store` is given
/// (this device is the first to rebuild it), else hashed and dropped.
fn rebuild(
    plan: &Plan,
    fetches: &[outpost_delta::Fetch],
    base: &Cached,
    blobs: &std::path::Path,
    store: Option<crate::cache::PackageWriter>,
) -> Result<(), DeltaError> {
    let io = |e: std::io::Error| DeltaError::Io(e.to_string());
    let index = base.index().map_err(DeltaError::Io)?;
    let base_file = std::fs::File::open(&base.path).map_err(io)?;
    let blobs = std::fs::File::open(blobs).map_err(io)?;
    let held = Held::new();
    match store {
        Some(mut w) => {
            plan.apply(&blobs, fetches, Some((&base_file, &index)), &held, &mut w)?;
            w.commit().map_err(io)
        }
        None => plan.apply(&blobs, fetches, Some((&base_file, &index)), &held, &mut std::io::sink()).map(|_| ()),
    }
}

/// The next chunk of a body, `None` at its end; a stall or a break is transient.
async fn next_chunk(response: &mut reqwest::Response) -> Result<Option<impl AsRef<[u8]>>, Failure> {
    match tokio::time::timeout(STALL_TIMEOUT, response.chunk()).await {
        Err(_) => Err(Failure::Transient(format!("no data for {} s", STALL_TIMEOUT.as_secs()))),
        Ok(Err(e)) => Err(Failure::Transient(format!("the download broke off: {e}"))),
        Ok(Ok(chunk)) => Ok(chunk),
    }
}

/// Pause before trying again after the `attempt`-th transient failure: 0.5 s doubling to 30 s,
/// with full jitter so a fleet does not come back in lockstep.
fn retry_after(attempt: u32) -> Duration {
    let ceiling = Duration::from_millis(500).saturating_mul(1 << attempt.min(8)).min(Duration::from_secs(30));
    ceiling.mul_f64(rand::random::<f64>()).max(Duration::from_millis(100))
}
