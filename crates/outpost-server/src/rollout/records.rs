//! What the rollout engine reads and writes: a rollout's record, its members, the fleet's view
//! of each device, the engine's settings, and the outcome of one step.

use super::waves::Observed;
use outpost_proto::fleet::device::FailureKind;
use outpost_proto::fleet::rollout::{CreateRollout, DeviceRolloutState, GateReading, RolloutState, WavePhase};
use serde::{Deserialize, Serialize};

/// How a device takes part: running the candidate in shadow, or serving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Beside the serving version; never answers.
    Shadow,
    /// Serving it.
    Live,
}

/// One device of a rollout, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// Device id.
    pub device_id: String,
    /// Its wave.
    pub wave: usize,
    /// Shadow or live.
    pub mode: Mode,
    /// Where it is.
    pub state: DeviceRolloutState,
    /// The version it served when it joined.
    pub from_version: Option<String>,
    /// Why it failed.
    pub failure: Option<FailureKind>,
    /// Attempts offered after the first (raised on each retry).
    pub attempts: u32,
    /// When a failed transient update is offered again.
    pub retry_ms: Option<i64>,
    /// When it entered its current mode (the start of its new-version window).
    pub since_ms: i64,
    /// Last change.
    pub updated_ms: i64,
}

/// One wave's record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WaveRecord {
    /// Where it is.
    pub phase: Option<WavePhase>,
    /// When it (or its live part, after a shadow phase) started.
    pub started_ms: Option<i64>,
    /// When its bake (or shadow) window started.
    pub bake_started_ms: Option<i64>,
    /// The gates as last judged.
    pub gates: Vec<GateReading>,
}

/// A rollout as the engine keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutRecord {
    /// Id.
    pub id: i64,
    /// What was asked for (waves normalised).
    pub spec: CreateRollout,
    /// Lifecycle state.
    pub state: RolloutState,
    /// The current wave.
    pub wave: usize,
    /// One record per wave.
    pub waves: Vec<WaveRecord>,
    /// The last decision in words.
    pub reason: String,
    /// When it was created (its place among assignments: the newer decision wins).
    pub created_ms: i64,
}

/// What the fleet says about one device that matches the selector or is a member.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceView {
    /// The selector matches it now.
    pub matches: bool,
    /// Heard from recently.
    pub online: bool,
    /// Its override names this model: skipped.
    pub pinned: bool,
    /// It is in another active rollout of this model: skipped.
    pub busy: bool,
    /// When its last report arrived.
    pub last_seen_ms: Option<i64>,
    /// What it last reported about the model.
    pub observed: Observed,
}

/// Settings of the engine that are not per rollout.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// First retry delay of a transient failure; doubles per attempt.
    pub retry_base_ms: i64,
    /// Longest retry delay.
    pub retry_cap_ms: i64,
    /// Retries offered before a failure is final.
    pub max_attempts: u32,
    /// Shortest window of the previous version read as a baseline.
    pub baseline_min_ms: i64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { retry_base_ms: 30_000, retry_cap_ms: 3_600_000, max_attempts: 5, baseline_min_ms: 600_000 }
    }
}

/// A decision for the audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// `rollout.start`, `rollout.wave`, `rollout.pause`, `rollout.rollback`, `rollout.complete`, ...
    pub action: &'static str,
    /// The numbers behind it.
    pub details: serde_json::Value,
}

/// The outcome of a step.
#[derive(Debug, Clone, Default)]
pub struct Step {
    /// The rollout after the step (`None`: unchanged).
    pub rollout: Option<RolloutRecord>,
    /// Members added or changed.
    pub changed: Vec<Member>,
    /// Decisions, oldest first.
    pub decisions: Vec<Decision>,
    /// The rollout completed: its version becomes an assignment for its selector.
    pub completed: bool,
    /// Devices whose desired state changed.
    pub desired_changed: Vec<String>,
}
