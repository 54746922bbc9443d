//! The engine's background task: every tick it takes or renews the lease of each active
//! rollout, brings its view of the fleet and the per-version windows up to date, runs one
//! [`engine::step`] and stores the result, then wakes the devices whose desired state changed.
//!
//! Leases make replicas safe: a rollout is acted on by the replica holding its lease, and a
//! step is stored only if that replica still holds it and no operator changed the rollout since
//! it was read. Everything is read incrementally into memory: windows by row id per model, the
//! fleet and the members per rollout (`super::cache`), so a tick costs a few statements and
//! what changed, not the fleet's size. A rollout this replica stops holding, or whose
//! evaluation failed, is read whole again the next time.

use super::cache::RolloutCache;
use super::engine::{self, EngineConfig, Step};
use super::gates::StatRow;
use super::sums::{MemoWindows, RowLog, Rows};
use crate::db::rollouts::StoredRollout;
use crate::db::Db;
use crate::metrics::{DecisionLabels, RolloutLabels};
use crate::state::{now_ms, SharedState};
use outpost_proto::fleet::rollout::RolloutState;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Per-version windows of one model held in memory, read incrementally.
#[derive(Debug, Default)]
struct StatsCache {
    cursor: crate::db::StatsCursor,
    by_device: HashMap<String, Vec<StatRow>>,
    /// The newest rows, for the memos of gate sums.
    log: RowLog,
}

/// The engine of one server process.
pub struct Driver {
    state: SharedState,
    /// The engine's own handle (pool opened on the engine's runtime; see [`spawn`]).
    db: Db,
    owner: String,
    cfg: EngineConfig,
    stats: Mutex<HashMap<String, StatsCache>>,
    rollouts: Mutex<HashMap<i64, RolloutCache>>,
    seen: Mutex<Seen>,
}

/// What this replica last saw of changes any replica made (see [`Driver::sync_caches`]).
#[derive(Debug, Default)]
struct Seen {
    /// Per device, the newest member change already invalidated.
    devices: HashMap<String, i64>,
    /// The assignment fingerprint.
    assignments: Option<(i64, i64)>,
}

/// Replicas' clocks differ: changes are read back this far.
const CLOCK_MARGIN_MS: i64 = 10_000;

/// How far back windows are kept in memory for a rollout: its bake, the baseline before each
/// device changed, and the time a wave may take.
fn window_ms(r: &engine::RolloutRecord, cfg: &EngineConfig) -> i64 {
    let bake = i64::try_from(r.spec.bake_s.saturating_mul(1000)).unwrap_or(i64::MAX);
    bake.saturating_mul(2)
        .saturating_add(bake.max(cfg.baseline_min_ms))
        .saturating_add(engine::wave_deadline_ms(&r.spec))
}

impl Driver {
    /// An engine acting as `owner` (unique per process), reading and writing through `db`.
    pub fn new(state: SharedState, db: Db, owner: String) -> Driver {
        let cfg = EngineConfig {
            retry_base_ms: i64::try_from(state.config.rollout_retry_s.saturating_mul(1000)).unwrap_or(30_000),
            ..EngineConfig::default()
        };
        Driver {
            state,
            db,
            owner,
            cfg,
            stats: Mutex::new(HashMap::new()),
            rollouts: Mutex::new(HashMap::new()),
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Runs until shutdown, then gives up its leases.
    pub async fn run(self) {
        let period = Duration::from_millis(self.state.config.rollout_tick_ms.max(50));
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop = self.state.shutdown.clone();
        loop {
            tokio::select! {
                _ = ticker.tick() => self.tick().await,
                _ = stop.changed() => break,
            }
        }
        if let Err(e) = self.db.release_rollouts(&self.owner).await {
            tracing::warn!(error = %e, "could not release rollout leases; another replica takes over when they expire");
        }
    }

    /// Drops the cached ETags of devices whose rollout membership another replica changed, and
    /// the assignment cache when another replica's rollout completed or was rolled back: the
    /// hub's caches are per process, the engine runs on one replica, devices poll any.
    async fn sync_caches(&self, now: i64) {
        let started = Instant::now();
        let (changed, fingerprint) = match self.db.rollout_changes(now.saturating_sub(CLOCK_MARGIN_MS)).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read rollout changes; cached desired states may lag");
                return;
            }
        };
        self.state.metrics.rollout_statements.inc_by(2);
        let mut seen = self.seen.lock().await;
        for (device, at) in changed {
            if seen.devices.get(&device).is_none_or(|&s| at > s) {
                self.state.hub.device_changed(&device);
                seen.devices.insert(device, at);
            }
        }
        let horizon = now.saturating_sub(2 * CLOCK_MARGIN_MS);
        seen.devices.retain(|_, at| *at >= horizon);
        if seen.assignments.is_some_and(|f| f != fingerprint) {
            self.state.hub.assignments_changed();
        }
        seen.assignments = Some(fingerprint);
        self.state.metrics.engine_part("sync", started);
    }

    /// One pass over every rollout this replica holds.
    pub async fn tick(&self) {
        let now = now_ms();
        self.sync_caches(now).await;
        let ttl = i64::try_from(self.state.config.rollout_lease_ms).unwrap_or(15_000);
        let started = Instant::now();
        let held = match self.db.claim_rollouts(&self.owner, now, ttl).await {
            Ok(h) => {
                self.state.metrics.rollout_statements.inc_by(2);
                self.state.metrics.engine_part("claim", started);
                h
            }
            Err(e) => {
                tracing::warn!(error = %e, "rollout engine cannot read its rollouts; will retry");
                return;
            }
        };
        let mut caches = self.rollouts.lock().await;
        caches.retain(|id, _| held.iter().any(|s| s.record.id == *id));
        for stored in held {
            let started = Instant::now();
            if let Err(e) = self.evaluate(&stored, &mut caches).await {
                caches.remove(&stored.record.id);
                tracing::warn!(rollout = stored.record.id, error = %e, "rollout evaluation failed; will retry");
            }
            self.state.metrics.rollout_evaluation.observe(started.elapsed().as_secs_f64());
        }
    }

    /// Reads the model's new windows into its cache and drops the ones too old to matter.
    async fn refresh_windows(
        &self,
        caches: &mut HashMap<String, StatsCache>,
        stored: &StoredRollout,
        now: i64,
    ) -> Result<(), crate::db::DbError> {
        let model = stored.record.spec.model.to_string();
        let keep_from = now.saturating_sub(window_ms(&stored.record, &self.cfg));
        let cache = caches.entry(model.clone()).or_default();
        let rows = self.db.version_stats_next(&mut cache.cursor, &model, keep_from).await?;
        for (device, row) in rows {
            cache.log.push(row.id, &device);
            cache.by_device.entry(device).or_default().push(row);
        }
        cache.by_device.retain(|_, rows| {
            rows.retain(|r| r.received_ms >= keep_from);
            !rows.is_empty()
        });
        Ok(())
    }

    async fn evaluate(
        &self,
        stored: &StoredRollout,
        caches: &mut HashMap<i64, RolloutCache>,
    ) -> Result<(), crate::db::DbError> {
        let now = now_ms();
        let r = &stored.record;
        let (db, m, th) = (&self.db, &self.state.metrics, self.state.config.thresholds());
        let mut statements = 0;
        let cache = match caches.entry(r.id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let started = Instant::now();
                let loaded = RolloutCache::load(db, stored, now, th).await?;
                m.engine_part("load", started);
                statements += 5;
                e.insert(loaded)
            }
        };
        statements += cache.refresh(db, stored, now, th, m).await?;
        let mut windows = self.stats.lock().await;
        if r.state == RolloutState::Running {
            let started = Instant::now();
            self.refresh_windows(&mut windows, stored, now).await?;
            m.engine_part("windows", started);
            statements += 1;
        }
        let empty = StatsCache::default();
        let stats = windows.get(r.spec.model.as_str()).unwrap_or(&empty);
        let started = Instant::now();
        let (members, fleet, sums, epoch) = cache.step_inputs();
        let rows = Rows { by_device: &stats.by_device, log: &stats.log, epoch };
        let memo = MemoWindows { rows, memo: std::cell::RefCell::new(sums) };
        let step = engine::step(r, members, fleet, &memo, &self.cfg, now);
        m.rollout_step.observe(started.elapsed().as_secs_f64());
        drop(windows);
        m.rollout_evaluations.inc();
        self.publish_metrics(r, cache.members(), &step);
        if step.rollout.is_none() && step.changed.is_empty() && step.decisions.is_empty() {
            m.rollout_statements.inc_by(statements);
            return Ok(());
        }
        let started = Instant::now();
        let saved = db.save_rollout_step(&self.owner, stored, &step, now).await?;
        m.engine_part("save", started);
        // The save's transaction adds BEGIN and COMMIT (or ROLLBACK after a refused update).
        m.rollout_statements.inc_by(statements + 2 + saved.map_or(1, |(n, _)| n));
        let Some((_, revision)) = saved else {
            cache.forget_members();
            tracing::info!(
                rollout = r.id,
                "rollout changed or lease lost since it was read; the next tick reads it again"
            );
            return Ok(());
        };
        cache.apply(&step, revision);
        apply_effects(&self.state, &step);
        Ok(())
    }

    fn publish_metrics(&self, r: &engine::RolloutRecord, members: &[engine::Member], step: &Step) {
        let m = &self.state.metrics;
        let id = r.id.to_string();
        let after = step.rollout.as_ref().unwrap_or(r);
        let mut by_state: HashMap<&'static str, i64> = HashMap::new();
        let changed: HashMap<&str, &engine::Member> = step.changed.iter().map(|c| (c.device_id.as_str(), c)).collect();
        for member in members.iter().map(|x| changed.get(x.device_id.as_str()).copied().unwrap_or(x)) {
            *by_state.entry(member.state.as_str()).or_default() += 1;
        }
        let known: std::collections::HashSet<&str> = members.iter().map(|x| x.device_id.as_str()).collect();
        for c in step.changed.iter().filter(|c| !known.contains(c.device_id.as_str())) {
            *by_state.entry(c.state.as_str()).or_default() += 1;
        }
        for (state, n) in by_state {
            m.rollout_devices.get_or_create(&RolloutLabels { rollout: id.clone(), key: state.into() }).set(n);
        }
        for s in ["pending", "running", "paused", "completed", "rolled_back", "aborted"] {
            let v = i64::from(after.state.as_str() == s);
            m.rollout_state.get_or_create(&RolloutLabels { rollout: id.clone(), key: s.into() }).set(v);
        }
        if let Some(w) = after.waves.get(after.wave) {
            for g in &w.gates {
                if let Some(v) = g.value {
                    m.rollout_gate_value
                        .get_or_create(&RolloutLabels { rollout: id.clone(), key: g.gate.clone() })
                        .set(v);
                }
            }
        }
    }
}

/// Runs the engine as `owner` on a thread of its own, with a single-threaded runtime and its
/// own database connections, until shutdown. Heartbeats from 10,000 devices keep the server's
/// runtime busy; on it, each of the engine's statements waited its turn behind them (about
/// 20 ms each under the 10,000-device benchmark). The returned task ends when the thread does.
pub fn spawn(state: SharedState, owner: String) -> tokio::task::JoinHandle<()> {
    let run = move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the rollout engine's runtime; rollouts do not advance");
                return;
            }
        };
        runtime.block_on(async move {
            let db = match state.db.with_own_engine_pool().await {
                Ok(db) => db,
                Err(e) => {
                    tracing::warn!(error = %e, "the rollout engine cannot open its own connections; it shares the server's");
                    state.db.clone()
                }
            };
            Driver::new(state, db.clone(), owner).run().await;
            db.close_own_engine_pool().await;
        });
    };
    tokio::task::spawn_blocking(move || match std::thread::Builder::new().name("rollout-engine".into()).spawn(run) {
        Ok(thread) => {
            let _ = thread.join();
        }
        Err(e) => tracing::error!(error = %e, "cannot start the rollout engine's thread; rollouts do not advance"),
    })
}

/// After a step or an action is stored: count its decisions and wake the devices it changed.
pub fn apply_effects(state: &SharedState, step: &Step) {
    for d in &step.decisions {
        state.metrics.rollout_decisions.get_or_create(&DecisionLabels { action: d.action.to_string() }).inc();
        tracing::info!(action = d.action, details = %d.details, "rollout decision");
    }
    // A completion creates an assignment; a rollback may delete the one a completion made.
    if step.completed || step.decisions.iter().any(|d| d.action == "rollout.rollback") {
        state.hub.assignments_changed();
    }
    for device in &step.desired_changed {
        state.hub.device_changed(device);
    }
}
