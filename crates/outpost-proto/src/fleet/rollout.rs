//! Rollout API messages and the gate grammar.
//!
//! A gate is text an operator types (`error_rate<1%`, `p99_latency<1.2x`,
//! `shadow_agreement>97%`), parsed here once so the CLI refuses a typo before the server sees it
//! and the server stores the canonical form.

use crate::names::{ModelName, Version};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use utoipa::ToSchema;

/// What a gate measures, over the devices of a wave and the bake window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GateMetric {
    /// Failed requests / requests on the new version.
    ErrorRate,
    /// 99th percentile request latency of the new version.
    P99Latency,
    /// Median request latency of the new version.
    P50Latency,
    /// Mean agreement of the candidate with the serving version in shadow.
    ShadowAgreement,
    /// Share of the new version's closed drift windows at the alert level.
    DriftAlerts,
    /// Mean drift score (PSI) of the new version's closed drift windows.
    DriftScore,
}

impl GateMetric {
    /// The name in gate text.
    pub fn as_str(self) -> &'static str {
        match self {
            GateMetric::ErrorRate => "error_rate",
            GateMetric::P99Latency => "p99_latency",
            GateMetric::P50Latency => "p50_latency",
            GateMetric::ShadowAgreement => "shadow_agreement",
            GateMetric::DriftAlerts => "drift_alerts",
            GateMetric::DriftScore => "drift_score",
        }
    }

    fn parse(text: &str) -> Option<GateMetric> {
        [
            GateMetric::ErrorRate,
            GateMetric::P99Latency,
            GateMetric::P50Latency,
            GateMetric::ShadowAgreement,
            GateMetric::DriftAlerts,
            GateMetric::DriftScore,
        ]
        .into_iter()
        .find(|m| m.as_str() == text)
    }
}

/// What a gate's value is compared with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    /// A fraction (typed as a percentage: `1%` is 0.01).
    Fraction(f64),
    /// Milliseconds (`25ms`).
    Millis(f64),
    /// A ratio to the previous version on the same devices (`1.2x`).
    Ratio(f64),
    /// A plain number (`0.2`), for scores without a unit.
    Value(f64),
}

/// One health gate: `metric < threshold` or `metric > threshold`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gate {
    /// What is measured.
    pub metric: GateMetric,
    /// True for `<` (the value must stay below), false for `>`.
    pub below: bool,
    /// The limit.
    pub threshold: Threshold,
}

/// A gate text that does not parse, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("gate {text:?}: {why} (examples: error_rate<1%, error_rate<1.5x, p99_latency<1.2x, p99_latency<25ms, shadow_agreement>97%, drift_alerts<5%, drift_score<0.2)")]
pub struct GateError {
    /// The text.
    pub text: String,
    /// What is wrong with it.
    pub why: String,
}

impl FromStr for Gate {
    type Err = GateError;

    fn from_str(text: &str) -> Result<Gate, GateError> {
        let err = |why: &str| GateError { text: text.to_string(), why: why.to_string() };
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let (at, below) = match (compact.find('<'), compact.find('>')) {
            (Some(i), None) => (i, true),
            (None, Some(i)) => (i, false),
            _ => return Err(err("needs exactly one of < or >")),
        };
        let (name, value) = (&compact[..at], &compact[at + 1..]);
        let metric = GateMetric::parse(name).ok_or_else(|| err("unknown metric"))?;
        let number = |s: &str| -> Result<f64, GateError> {
            let v: f64 = s.parse().map_err(|_| err("the limit is not a number"))?;
            if v.is_finite() && v >= 0.0 {
                Ok(v)
            } else {
                Err(err("the limit must be a finite number ≥ 0"))
            }
        };
        let threshold = if let Some(p) = value.strip_suffix('%') {
            let v = number(p)?;
            if v > 100.0 {
                return Err(err("a percentage is at most 100"));
            }
            Threshold::Fraction(v / 100.0)
        } else if let Some(r) = value.strip_suffix('x') {
            let v = number(r)?;
            if v <= 0.0 {
                return Err(err("a ratio must be above 0"));
            }
            Threshold::Ratio(v)
        } else if let Some(ms) = value.strip_suffix("ms") {
            Threshold::Millis(number(ms)?)
        } else if metric == GateMetric::DriftScore {
            Threshold::Value(number(value)?)
        } else {
            return Err(err("the limit needs a unit: %, x (times the previous version) or ms"));
        };
        let fits = match (metric, threshold) {
            (GateMetric::ErrorRate, Threshold::Fraction(_) | Threshold::Ratio(_)) => below,
            (GateMetric::P99Latency | GateMetric::P50Latency, Threshold::Millis(_) | Threshold::Ratio(_)) => below,
            (GateMetric::ShadowAgreement, Threshold::Fraction(_)) => !below,
            (GateMetric::DriftAlerts, Threshold::Fraction(_)) => below,
            (GateMetric::DriftScore, Threshold::Value(_) | Threshold::Ratio(_)) => below,
            _ => false,
        };
        if !fits {
            return Err(err(match metric {
                GateMetric::ErrorRate => "error_rate takes < with a % or an x limit",
                GateMetric::P99Latency | GateMetric::P50Latency => "latency takes < with an ms or an x limit",
                GateMetric::ShadowAgreement => "shadow_agreement takes > with a % limit",
                GateMetric::DriftAlerts => "drift_alerts takes < with a % limit",
                GateMetric::DriftScore => "drift_score takes < with a number or an x limit",
            }));
        }
        Ok(Gate { metric, below, threshold })
    }
}

impl fmt::Display for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = if self.below { '<' } else { '>' };
        match self.threshold {
            Threshold::Fraction(v) => write!(f, "{}{op}{}%", self.metric.as_str(), round6(v * 100.0)),
            Threshold::Millis(v) => write!(f, "{}{op}{}ms", self.metric.as_str(), round6(v)),
            Threshold::Ratio(v) => write!(f, "{}{op}{}x", self.metric.as_str(), round6(v)),
            Threshold::Value(v) => write!(f, "{}{op}{}", self.metric.as_str(), round6(v)),
        }
    }
}

/// Rounds away float noise (0.97 * 100 = 97.00000000000001) before printing.
fn round6(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

impl Serialize for Gate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Gate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Gate, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What a failed gate does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Stop where it is and wait for an operator.
    Pause,
    /// Return every device of the rollout to the version it ran before.
    #[default]
    Rollback,
}

/// Lifecycle of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Created, not yet picked up by the engine.
    Pending,
    /// Moving through its waves.
    Running,
    /// Stopped by a gate or an operator; devices keep what they have.
    Paused,
    /// Every wave passed; the version is now an assignment for the selector.
    Completed,
    /// Every device returned to its previous version.
    RolledBack,
    /// Stopped for good; devices already on the new version keep it.
    Aborted,
}

impl RolloutState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Pending => "pending",
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Completed => "completed",
            RolloutState::RolledBack => "rolled_back",
            RolloutState::Aborted => "aborted",
        }
    }

    /// Parses the wire name.
    pub fn parse(text: &str) -> Option<RolloutState> {
        use RolloutState::*;
        [Pending, Running, Paused, Completed, RolledBack, Aborted].into_iter().find(|s| s.as_str() == text)
    }

    /// Whether the engine still acts on it (its devices are held by it).
    pub fn is_active(self) -> bool {
        matches!(self, RolloutState::Pending | RolloutState::Running | RolloutState::Paused)
    }
}

/// Where a wave is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WavePhase {
    /// Not started.
    Waiting,
    /// The candidate runs in shadow on the wave's devices; the shadow gate is judged.
    Shadow,
    /// The wave's devices install the version.
    Updating,
    /// Enough devices run it; health gates are judged over the bake window.
    Baking,
    /// Passed.
    Done,
}

/// Where one device is in a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeviceRolloutState {
    /// Selected for a later wave.
    Pending,
    /// Its desired state names the version (or the shadow candidate); nothing reported yet.
    Targeted,
    /// Downloading, verifying or loading the version.
    Updating,
    /// Serving it, inside the agent's probation window.
    Probation,
    /// Serving it after probation (or, in shadow, running the candidate).
    Updated,
    /// The update failed; see the failure kind. Retried with backoff when the kind is transient.
    Failed,
    /// The device put its previous version back (probation failed).
    RolledBack,
    /// Returned to its previous version by the rollout's rollback.
    Reverted,
}

impl DeviceRolloutState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        use DeviceRolloutState::*;
        match self {
            Pending => "pending",
            Targeted => "targeted",
            Updating => "updating",
            Probation => "probation",
            Updated => "updated",
            Failed => "failed",
            RolledBack => "rolled_back",
            Reverted => "reverted",
        }
    }

    /// Parses the wire name.
    pub fn parse(text: &str) -> Option<DeviceRolloutState> {
        use DeviceRolloutState::*;
        [Pending, Targeted, Updating, Probation, Updated, Failed, RolledBack, Reverted]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

fn default_waves() -> Vec<f64> {
    vec![1.0, 10.0, 50.0, 100.0]
}
fn default_bake_s() -> u64 {
    600
}
fn default_max_failures() -> f64 {
    2.0
}
fn default_success() -> f64 {
    90.0
}
fn default_min_requests() -> u64 {
    100
}
fn default_shadow_sample() -> f64 {
    10.0
}

/// `POST /v1/rollouts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateRollout {
    /// Model name (the version must be published with a package).
    pub model: ModelName,
    /// The version to roll out.
    pub version: Version,
    /// Label selector of the devices in scope (empty: every device).
    #[serde(default)]
    pub selector: String,
    /// Cumulative share of the selected devices after each wave, percent, increasing, the last
    /// one 100 (a shorter list is completed with 100).
    #[serde(default = "default_waves")]
    pub waves: Vec<f64>,
    /// How long each wave bakes once enough of its devices run the version, seconds.
    #[serde(default = "default_bake_s")]
    pub bake_s: u64,
    /// Failed updates tolerated, percent of the devices targeted so far.
    #[serde(default = "default_max_failures")]
    pub max_failures: f64,
    /// Health gates, e.g. `error_rate<1%`, `p99_latency<1.2x`, `shadow_agreement>97%`.
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub gates: Vec<Gate>,
    /// What a failed gate does.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// A wave is complete when this percentage of its devices runs the version.
    #[serde(default = "default_success")]
    pub success: f64,
    /// How long a wave may take to reach `success` (offline devices), seconds; the rollout
    /// pauses when it runs out. Default: 3 × bake, at least 10 minutes.
    #[serde(default)]
    pub wave_deadline_s: Option<u64>,
    /// Only run the candidate in shadow beside the serving version; never activate it.
    #[serde(default)]
    pub shadow: bool,
    /// Share of live requests the shadow candidate sees, percent.
    #[serde(default = "default_shadow_sample")]
    pub shadow_sample: f64,
    /// Requests (for error and latency gates) or shadow comparisons a gate needs before it
    /// decides, summed over the wave.
    #[serde(default = "default_min_requests")]
    pub min_samples: u64,
}

/// A gate's reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Within its limit.
    Pass,
    /// Beyond its limit.
    Fail,
    /// Too little data to decide (see the note).
    Waiting,
}

/// One gate judged over a wave's bake window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GateReading {
    /// The gate text.
    pub gate: String,
    /// The new version's value (fraction, milliseconds), when there is data.
    pub value: Option<f64>,
    /// The previous version's value on the same devices, for ratio gates.
    pub baseline: Option<f64>,
    /// The limit the value is compared with (for ratio gates, baseline × ratio).
    pub limit: Option<f64>,
    /// The verdict.
    pub verdict: Verdict,
    /// Samples behind it, and what is missing when waiting.
    pub note: String,
}

/// Devices of a wave by their state in the rollout.
pub type StateCounts = BTreeMap<String, u64>;

/// Progress of one wave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WaveStatus {
    /// 0-based.
    pub index: usize,
    /// Cumulative share of the selected devices, percent.
    pub percent: f64,
    /// Where the wave is.
    pub phase: WavePhase,
    /// Devices in this wave.
    pub devices: u64,
    /// Of them, by state (`targeted`, `updating`, `probation`, `updated`, `failed`, ...).
    pub by_state: StateCounts,
    /// Of them, offline now.
    pub offline: u64,
    /// Failed devices by failure kind.
    pub failures: StateCounts,
    /// When the wave started, Unix milliseconds.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub started_ms: Option<i64>,
    /// When its bake (or shadow) window started.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub bake_started_ms: Option<i64>,
    /// The gates as last judged.
    pub gates: Vec<GateReading>,
}

/// A rollout as operators see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Rollout {
    /// Rollout id.
    pub id: i64,
    /// What was asked for.
    pub spec: CreateRollout,
    /// Lifecycle state.
    pub state: RolloutState,
    /// The wave in progress (or the last one).
    pub wave: usize,
    /// Why it is in its state (the last decision, with its numbers).
    pub reason: String,
    /// Who created it.
    pub created_by: String,
    /// When, Unix milliseconds.
    pub created_ms: i64,
    /// Last change, Unix milliseconds.
    pub updated_ms: i64,
    /// Devices the selector matches now (without pinned or busy ones).
    pub eligible: u64,
    /// Devices skipped: pinned by an override, or in another rollout of the model.
    pub skipped: StateCounts,
    /// Per-wave progress.
    pub waves: Vec<WaveStatus>,
}

/// One device's place in a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RolloutDevice {
    /// Device id.
    pub device_id: String,
    /// Its wave.
    pub wave: usize,
    /// Its state.
    pub state: DeviceRolloutState,
    /// The version it ran when it was selected (absent: none).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub from_version: Option<String>,
    /// The failure kind, when failed or rolled back.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub failure: Option<String>,
    /// Update attempts offered.
    pub attempts: u32,
    /// Last change, Unix milliseconds.
    pub updated_ms: i64,
}

/// What a device runs in shadow: a candidate package beside the serving version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ShadowSpec {
    /// The candidate version.
    pub version: String,
    /// Its package.
    pub package: Option<crate::fleet::api::PackageRef>,
    /// Share of live requests it sees, 0..1.
    pub sample: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_parse_print_canonically_and_refuse_nonsense() {
        for (text, canon) in [
            ("error_rate<1%", "error_rate<1%"),
            (" error_rate < 0.5 % ", "error_rate<0.5%"),
            ("error_rate<1.5x", "error_rate<1.5x"),
            ("p99_latency<1.2x", "p99_latency<1.2x"),
            ("p50_latency<25ms", "p50_latency<25ms"),
            ("shadow_agreement>97%", "shadow_agreement>97%"),
            ("drift_alerts<5%", "drift_alerts<5%"),
            ("drift_score < 0.2", "drift_score<0.2"),
            ("drift_score<1.5x", "drift_score<1.5x"),
        ] {
            let g: Gate = text.parse().unwrap();
            assert_eq!(g.to_string(), canon);
            assert_eq!(canon.parse::<Gate>().unwrap(), g);
        }
        let g: Gate = "shadow_agreement>97%".parse().unwrap();
        assert_eq!(g.threshold, Threshold::Fraction(0.97));
        for bad in [
            "error_rate",
            "error_rate<1",
            "error_rate>1%",
            "errors<1%",
            "p99_latency<1%",
            "shadow_agreement<97%",
            "shadow_agreement>1.1x",
            "error_rate<-1%",
            "error_rate<101%",
            "error_rate<NaN%",
            "p99_latency<0x",
            "error_rate<1%<2%",
            "drift_alerts<0.05",
            "drift_score>0.2",
            "drift_score<20ms",
        ] {
            assert!(bad.parse::<Gate>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn create_rollout_defaults_and_gate_strings_round_trip() {
        let c: CreateRollout = serde_json::from_value(serde_json::json!({
            "model": "defect", "version": "2", "gates": ["error_rate<1%"]
        }))
        .unwrap();
        assert_eq!(c.waves, vec![1.0, 10.0, 50.0, 100.0]);
        assert_eq!((c.bake_s, c.on_failure, c.success), (600, OnFailure::Rollback, 90.0));
        assert_eq!(serde_json::to_value(&c.gates).unwrap(), serde_json::json!(["error_rate<1%"]));
        let bad = serde_json::from_value::<CreateRollout>(serde_json::json!({
            "model": "defect", "version": "2", "gates": ["error_rate>1%"]
        }));
        assert!(bad.unwrap_err().to_string().contains("error_rate takes <"));
    }
}
