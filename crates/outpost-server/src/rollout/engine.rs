//! The rollout state machine: one pure step from a rollout, its devices, what the fleet
//! reported and the time, to the next state and the decisions taken, with the numbers that
//! caused them. No I/O, so every rule (wave sizing, joining, retries, gates, deadlines) is
//! tested without a database or a clock.

use super::gates::{judge, GateInput, GateWindow, Windows};
pub use super::records::{Decision, DeviceView, EngineConfig, Member, Mode, RolloutRecord, Step, WaveRecord};
use super::waves::{classify, cumulative_target, is_transient, join_rank};
use outpost_proto::fleet::rollout::{
    CreateRollout, DeviceRolloutState, GateMetric, GateReading, OnFailure, RolloutState, Verdict, WavePhase,
};
use std::collections::{BTreeMap, HashMap, HashSet};

fn has_shadow_gate(spec: &CreateRollout) -> bool {
    spec.gates.iter().any(|g| g.metric == GateMetric::ShadowAgreement)
}

/// The phase a wave starts in.
pub(super) fn first_phase(spec: &CreateRollout) -> WavePhase {
    if spec.shadow || has_shadow_gate(spec) {
        WavePhase::Shadow
    } else {
        WavePhase::Updating
    }
}

/// How long a wave may take to get its devices updated, or its gates their data.
pub fn wave_deadline_ms(spec: &CreateRollout) -> i64 {
    let s = spec.wave_deadline_s.unwrap_or_else(|| (spec.bake_s.saturating_mul(3)).max(600));
    i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX)
}

fn bake_ms(spec: &CreateRollout) -> i64 {
    i64::try_from(spec.bake_s.saturating_mul(1000)).unwrap_or(i64::MAX)
}

fn counts_as_failed(m: &Member) -> bool {
    matches!(m.state, DeviceRolloutState::Failed | DeviceRolloutState::RolledBack)
}

/// One step in the making: the rollout and members as changed so far.
pub(super) struct Ctx<'a> {
    pub(super) r: RolloutRecord,
    pub(super) members: BTreeMap<String, Member>,
    pub(super) changed: BTreeMap<String, ()>,
    pub(super) step: Step,
    pub(super) now: i64,
    pub(super) cfg: &'a EngineConfig,
}

impl<'a> Ctx<'a> {
    /// A step from `r` and its `members` at `now`.
    pub(super) fn new(r: &RolloutRecord, members: &[Member], now: i64, cfg: &'a EngineConfig) -> Ctx<'a> {
        Ctx {
            r: r.clone(),
            members: members.iter().map(|m| (m.device_id.clone(), m.clone())).collect(),
            changed: BTreeMap::new(),
            step: Step::default(),
            now,
            cfg,
        }
    }

    pub(super) fn touch(&mut self, id: &str, desired: bool) {
        self.changed.insert(id.to_string(), ());
        if desired {
            self.step.desired_changed.push(id.to_string());
        }
    }

    pub(super) fn decide(&mut self, action: &'static str, reason: String, mut details: serde_json::Value) {
        if let Some(obj) = details.as_object_mut() {
            obj.insert("reason".into(), serde_json::Value::String(reason.clone()));
            obj.insert("wave".into(), serde_json::json!(self.r.wave));
        }
        self.r.reason = reason;
        self.step.decisions.push(Decision { action, details });
    }

    pub(super) fn finish(mut self, original: &RolloutRecord) -> Step {
        self.step.changed = self.changed.keys().filter_map(|id| self.members.get(id).cloned()).collect();
        self.step.desired_changed.sort();
        self.step.desired_changed.dedup();
        if self.r != *original {
            self.step.rollout = Some(self.r);
        }
        self.step
    }

    /// Every member returns to its previous version.
    pub(super) fn revert_all(&mut self) {
        let ids: Vec<String> = self
            .members
            .values()
            .filter(|m| m.state != DeviceRolloutState::Reverted)
            .map(|m| m.device_id.clone())
            .collect();
        for id in ids {
            if let Some(m) = self.members.get_mut(&id) {
                m.state = DeviceRolloutState::Reverted;
                m.retry_ms = None;
                m.updated_ms = self.now;
            }
            self.touch(&id, true);
        }
    }

    /// Shadow members stop running the candidate (a paused or aborted rollout keeps live ones).
    pub(super) fn drop_shadows(&mut self) {
        let ids: Vec<String> = self
            .members
            .values()
            .filter(|m| m.mode == Mode::Shadow && m.state != DeviceRolloutState::Reverted)
            .map(|m| m.device_id.clone())
            .collect();
        for id in ids {
            if let Some(m) = self.members.get_mut(&id) {
                m.state = DeviceRolloutState::Reverted;
                m.updated_ms = self.now;
            }
            self.touch(&id, true);
        }
    }

    /// A gate or the failure budget failed: the rollout's own setting says what happens.
    fn fail(&mut self, reason: String, details: serde_json::Value) {
        match self.r.spec.on_failure {
            OnFailure::Pause => {
                self.r.state = RolloutState::Paused;
                self.decide("rollout.pause", reason, details);
            }
            OnFailure::Rollback => {
                self.r.state = RolloutState::RolledBack;
                self.revert_all();
                self.decide("rollout.rollback", reason, details);
            }
        }
    }

    /// Not a health failure: the wave could not finish in time. Always pauses.
    fn stall(&mut self, reason: String, details: serde_json::Value) {
        self.r.state = RolloutState::Paused;
        self.decide("rollout.pause", reason, details);
    }

    pub(super) fn wave_mut(&mut self) -> &mut WaveRecord {
        let k = self.r.wave;
        if self.r.waves.len() <= k {
            self.r.waves.resize(k + 1, WaveRecord::default());
        }
        &mut self.r.waves[k]
    }

    fn start_wave(&mut self, k: usize) {
        self.r.wave = k;
        let phase = first_phase(&self.r.spec);
        let now = self.now;
        let w = self.wave_mut();
        *w = WaveRecord { phase: Some(phase), started_ms: Some(now), bake_started_ms: None, gates: Vec::new() };
    }
}

/// Reads members' reports: progress, failures, retries.
fn observe(ctx: &mut Ctx<'_>, fleet: &HashMap<String, DeviceView>) {
    let version = ctx.r.spec.version.to_string();
    let running = ctx.r.state == RolloutState::Running;
    let (now, cfg) = (ctx.now, ctx.cfg);
    let mut touched: Vec<(String, bool)> = Vec::new();
    for (id, m) in &mut ctx.members {
        if m.state == DeviceRolloutState::Reverted {
            continue;
        }
        let view = fleet.get(id);
        // A report from before the device's last change says nothing about it.
        let fresh = view.and_then(|v| v.last_seen_ms).is_some_and(|seen| seen > m.since_ms.max(m.updated_ms));
        // Most members are where they were; they are not copied to find that out (at 10,000
        // members the copies cost more than the rest of the step).
        let settled = m.state != DeviceRolloutState::Failed
            && !(fresh && m.from_version.is_none())
            && (!fresh
                || view
                    .and_then(|v| classify(&v.observed, &version, m.mode == Mode::Shadow))
                    .is_none_or(|(state, failure)| state == m.state && failure == m.failure));
        if settled {
            continue;
        }
        let mut next = m.clone();
        if let (true, Some(view)) = (fresh, view) {
            // A device that had not reported when it joined names its previous version now
            // (the baseline of ratio gates), as long as it still serves that one.
            if next.from_version.is_none() {
                next.from_version = view.observed.serving.as_ref().map(|s| s.0.clone()).filter(|v| *v != version);
            }
            if let Some((state, failure)) = classify(&view.observed, &version, m.mode == Mode::Shadow) {
                next.state = state;
                next.failure = failure;
            }
        }
        if next.state == DeviceRolloutState::Failed {
            let transient = next.failure.is_some_and(is_transient);
            if transient && next.attempts < cfg.max_attempts && next.retry_ms.is_none() {
                let delay = cfg.retry_base_ms.saturating_mul(1i64 << next.attempts.min(20));
                next.retry_ms = Some(now.saturating_add(delay.min(cfg.retry_cap_ms)));
            }
        }
        let mut desired = false;
        if running && next.state == DeviceRolloutState::Failed && next.retry_ms.is_some_and(|t| t <= now) {
            next.attempts += 1;
            next.state = DeviceRolloutState::Targeted;
            next.failure = None;
            next.retry_ms = None;
            desired = true;
        }
        if next != *m {
            next.updated_ms = now;
            *m = next;
            touched.push((id.clone(), desired));
        }
    }
    for (id, desired) in touched {
        ctx.touch(&id, desired);
    }
}

/// Adds devices to the current wave until it holds its share of the eligible devices.
fn join(ctx: &mut Ctx<'_>, fleet: &HashMap<String, DeviceView>, phase: WavePhase) -> u64 {
    // A hash set: looking 10,000 devices up in the ordered map compared strings 140,000 times.
    let held_ids: HashSet<&str> = ctx.members.keys().map(String::as_str).collect();
    let mut free: Vec<(&String, &DeviceView)> =
        fleet.iter().filter(|(id, v)| v.matches && !v.pinned && !v.busy && !held_ids.contains(id.as_str())).collect();
    drop(held_ids);
    let held = ctx.members.len() as u64;
    let eligible = held + free.len() as u64;
    let target = cumulative_target(&ctx.r.spec.waves, ctx.r.wave, eligible);
    let need = usize::try_from(target.saturating_sub(held)).unwrap_or(usize::MAX);
    if need == 0 {
        return eligible;
    }
    let id = ctx.r.id;
    free.sort_by_cached_key(|(d, _)| join_rank(id, d));
    let mode = if phase == WavePhase::Shadow { Mode::Shadow } else { Mode::Live };
    let joining: Vec<(String, Option<String>)> = free
        .into_iter()
        .take(need)
        .map(|(d, v)| (d.clone(), v.observed.serving.as_ref().map(|s| s.0.clone())))
        .collect();
    for (device_id, from_version) in joining {
        let member = Member {
            device_id: device_id.clone(),
            wave: ctx.r.wave,
            mode,
            state: DeviceRolloutState::Targeted,
            from_version,
            failure: None,
            attempts: 0,
            retry_ms: None,
            since_ms: ctx.now,
            updated_ms: ctx.now,
        };
        ctx.members.insert(device_id.clone(), member);
        ctx.touch(&device_id, true);
    }
    eligible
}

/// Judges a phase's gates; returns the readings.
fn judge_wave(ctx: &Ctx<'_>, shadow: bool, stats: &dyn Windows, bake_started: i64) -> Vec<GateReading> {
    let spec = &ctx.r.spec;
    let members: Vec<&Member> = ctx
        .members
        .values()
        .filter(|m| m.wave == ctx.r.wave && m.state != DeviceRolloutState::Reverted)
        .filter(|m| (m.mode == Mode::Shadow) == shadow)
        .collect();
    let baseline_ms = bake_ms(spec).max(ctx.cfg.baseline_min_ms);
    let window = GateWindow { version: spec.version.as_str(), shadow, bake_started_ms: bake_started, baseline_ms };
    let (candidate, baseline) = stats.totals(&members, window, ctx.changed.is_empty());
    let input = GateInput {
        candidate,
        baseline,
        min_samples: spec.min_samples,
        final_call: ctx.now >= bake_started.saturating_add(bake_ms(spec)),
    };
    spec.gates
        .iter()
        .filter(|g| (g.metric == GateMetric::ShadowAgreement) == shadow)
        .map(|g| judge(g, &input))
        .collect()
}

/// Runs the current wave's phase.
fn advance(ctx: &mut Ctx<'_>, fleet: &HashMap<String, DeviceView>, stats: &dyn Windows) {
    let k = ctx.r.wave;
    let phase = ctx.wave_mut().phase.unwrap_or(WavePhase::Updating);
    let eligible = join(ctx, fleet, phase);
    // The failure budget counts every device the rollout touched.
    let touched: Vec<&Member> = ctx.members.values().filter(|m| m.state != DeviceRolloutState::Reverted).collect();
    let failed = touched.iter().filter(|m| counts_as_failed(m)).count() as u64;
    let total = touched.len() as u64;
    if failed > 0 && failed as f64 > ctx.r.spec.max_failures / 100.0 * total as f64 {
        let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
        for m in touched.iter().filter(|m| counts_as_failed(m)) {
            let kind = m.failure.map(|k| serde_json::to_value(k).unwrap_or_default());
            *kinds
                .entry(kind.and_then(|v| v.as_str().map(str::to_string)).unwrap_or_else(|| "other".into()))
                .or_default() += 1;
        }
        let reason = format!(
            "update failures: {failed} of {total} devices ({:.1} %) exceed max_failures {} %",
            failed as f64 * 100.0 / total as f64,
            ctx.r.spec.max_failures
        );
        ctx.fail(reason, serde_json::json!({"failed": failed, "devices": total, "by_kind": kinds}));
        return;
    }
    let wave: Vec<&Member> =
        ctx.members.values().filter(|m| m.wave == k && m.state != DeviceRolloutState::Reverted).collect();
    let size = wave.len() as u64;
    let updated = wave.iter().filter(|m| m.state == DeviceRolloutState::Updated).count() as u64;
    let need = ((ctx.r.spec.success / 100.0 * size as f64) - 1e-9).ceil().max(0.0) as u64;
    let deadline = wave_deadline_ms(&ctx.r.spec);
    let now = ctx.now;
    let w = ctx.wave_mut().clone();
    let started = w.started_ms.unwrap_or(now);
    if size == 0 {
        // A wave that adds no device (a tiny fleet) has nothing to wait for or judge.
        return next_wave(ctx, eligible);
    }
    match (phase, w.bake_started_ms) {
        (WavePhase::Shadow | WavePhase::Updating, None) => {
            if updated >= need.max(1) {
                ctx.wave_mut().bake_started_ms = Some(now);
                let what = if phase == WavePhase::Shadow { "run the candidate in shadow" } else { "run the version" };
                let reason = format!("wave {}: {updated} of {size} devices {what}; baking", k + 1);
                ctx.decide("rollout.bake", reason, serde_json::json!({"updated": updated, "devices": size}));
                if phase == WavePhase::Updating {
                    ctx.wave_mut().phase = Some(WavePhase::Baking);
                }
            } else if now > started.saturating_add(deadline) {
                // Counted only for the message: a lookup per member is most of a step's time.
                let offline = ctx
                    .members
                    .values()
                    .filter(|m| m.wave == k && m.state != DeviceRolloutState::Reverted)
                    .filter(|m| !fleet.get(&m.device_id).is_some_and(|v| v.online))
                    .count();
                let reason = format!(
                    "wave {}: only {updated} of {size} devices updated by the deadline (needed {need}; {offline} offline)",
                    k + 1
                );
                ctx.stall(
                    reason,
                    serde_json::json!({"updated": updated, "devices": size, "needed": need, "offline": offline}),
                );
            }
        }
        (_, Some(bake_started)) => {
            let shadow = phase == WavePhase::Shadow;
            let readings = judge_wave(ctx, shadow, stats, bake_started);
            ctx.wave_mut().gates = readings.clone();
            let details = serde_json::json!({"gates": readings});
            if let Some(bad) = readings.iter().find(|g| g.verdict == Verdict::Fail) {
                let reason = format!(
                    "wave {}: gate {} failed: {} against {} ({})",
                    k + 1,
                    bad.gate,
                    fmt_value(bad.value),
                    fmt_value(bad.limit),
                    bad.note
                );
                ctx.fail(reason, details);
                return;
            }
            let bake_end = bake_started.saturating_add(bake_ms(&ctx.r.spec));
            if now < bake_end {
                return;
            }
            if readings.iter().all(|g| g.verdict == Verdict::Pass) {
                if shadow && !ctx.r.spec.shadow {
                    go_live(ctx, k);
                } else {
                    next_wave(ctx, eligible);
                }
            } else if now > bake_end.saturating_add(deadline) {
                let waiting: Vec<String> = readings
                    .iter()
                    .filter(|g| g.verdict == Verdict::Waiting)
                    .map(|g| format!("{}: {}", g.gate, g.note))
                    .collect();
                let reason =
                    format!("wave {}: not enough data to judge after the bake ({})", k + 1, waiting.join("; "));
                ctx.stall(reason, details);
            }
        }
        (WavePhase::Baking, None) | (WavePhase::Waiting | WavePhase::Done, None) => {
            ctx.wave_mut().bake_started_ms = Some(now);
        }
    }
}

fn fmt_value(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.4}"))
}

/// The shadow phase passed: the wave's devices now serve the candidate.
fn go_live(ctx: &mut Ctx<'_>, k: usize) {
    let now = ctx.now;
    let ids: Vec<String> = ctx
        .members
        .values()
        .filter(|m| m.wave == k && m.mode == Mode::Shadow && m.state != DeviceRolloutState::Reverted)
        .map(|m| m.device_id.clone())
        .collect();
    for id in &ids {
        if let Some(m) = ctx.members.get_mut(id) {
            m.mode = Mode::Live;
            m.state = DeviceRolloutState::Targeted;
            m.failure = None;
            m.since_ms = now;
            m.updated_ms = now;
        }
        ctx.touch(id, true);
    }
    let gates = ctx.wave_mut().gates.clone();
    let w = ctx.wave_mut();
    w.phase = Some(WavePhase::Updating);
    w.started_ms = Some(now);
    w.bake_started_ms = None;
    let reason = format!("wave {}: shadow gates passed; {} devices switch to the version", k + 1, ids.len());
    ctx.decide("rollout.live", reason, serde_json::json!({"gates": gates, "devices": ids.len()}));
}

fn next_wave(ctx: &mut Ctx<'_>, eligible: u64) {
    let k = ctx.r.wave;
    let gates = ctx.wave_mut().gates.clone();
    ctx.wave_mut().phase = Some(WavePhase::Done);
    let devices = ctx.members.values().filter(|m| m.state != DeviceRolloutState::Reverted).count();
    if k + 1 < ctx.r.spec.waves.len() {
        ctx.start_wave(k + 1);
        let reason = format!(
            "wave {} passed; wave {} starts ({} % of {eligible} devices)",
            k + 1,
            k + 2,
            ctx.r.spec.waves[k + 1]
        );
        ctx.decide(
            "rollout.wave",
            reason,
            serde_json::json!({"gates": gates, "devices": devices, "eligible": eligible}),
        );
    } else {
        ctx.r.state = RolloutState::Completed;
        if ctx.r.spec.shadow {
            ctx.drop_shadows();
        }
        ctx.step.completed = !ctx.r.spec.shadow;
        let reason = if ctx.r.spec.shadow {
            format!("every wave passed in shadow on {devices} devices; the candidate was never served")
        } else {
            // Waves pass at their success share, so the rest are named, not counted as updated.
            let mut by_state: BTreeMap<&'static str, usize> = BTreeMap::new();
            for m in ctx.members.values().filter(|m| m.state != DeviceRolloutState::Reverted) {
                *by_state.entry(m.state.as_str()).or_default() += 1;
            }
            let updated = by_state.remove("updated").unwrap_or(0);
            let rest: String = by_state.iter().map(|(s, n)| format!(", {n} {s}")).collect();
            format!(
                "every wave passed; {updated} of {devices} devices updated{rest}; the version is now assigned to the selector"
            )
        };
        ctx.decide("rollout.complete", reason, serde_json::json!({"gates": gates, "devices": devices}));
    }
}

/// One engine tick for a rollout.
pub fn step(
    r: &RolloutRecord,
    members: &[Member],
    fleet: &HashMap<String, DeviceView>,
    stats: &dyn Windows,
    cfg: &EngineConfig,
    now: i64,
) -> Step {
    let mut ctx = Ctx::new(r, members, now, cfg);
    if !ctx.r.state.is_active() {
        return ctx.finish(r);
    }
    if ctx.r.state == RolloutState::Pending {
        ctx.r.state = RolloutState::Running;
        ctx.start_wave(0);
        let reason = format!("started: wave 1 of {}", ctx.r.spec.waves.len());
        ctx.decide("rollout.start", reason, serde_json::json!({"waves": ctx.r.spec.waves}));
    }
    observe(&mut ctx, fleet);
    if ctx.r.state == RolloutState::Running {
        advance(&mut ctx, fleet, stats);
    }
    ctx.finish(r)
}
