//! Drift telemetry: how far the data a model version sees on a device has moved from the
//! reference statistics its package carries (the manifest's `[reference]`), per window of
//! requests. The device scores each window; the server keeps each device's latest window per
//! model, aggregates them per version and label group, and raises alerts by rule.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Population stability index at or above which a window is `warn`.
pub const DEFAULT_WARN_PSI: f64 = 0.1;
/// Population stability index at or above which a window is `alert`.
pub const DEFAULT_ALERT_PSI: f64 = 0.25;
/// Buckets of the primary score histogram: below 0, ten of width 0.1 up to 1, then 1 and above.
pub const SCORE_BUCKETS: usize = 12;

/// The bucket of a primary score (top-class confidence, anomaly score scaled to its threshold).
pub fn score_bucket(score: f64) -> usize {
    if score.is_nan() || score < 0.0 {
        0
    } else if score >= 1.0 {
        SCORE_BUCKETS - 1
    } else {
        1 + ((score * 10.0) as usize).min(9)
    }
}

/// How a window compares with the reference.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DriftStatus {
    /// The package carries no reference statistics: the window is described, not scored.
    #[default]
    NoReference,
    /// Within the warning level.
    Ok,
    /// At or past the warning level.
    Warn,
    /// At or past the alert level.
    Alert,
}

impl DriftStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            DriftStatus::NoReference => "no_reference",
            DriftStatus::Ok => "ok",
            DriftStatus::Warn => "warn",
            DriftStatus::Alert => "alert",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<DriftStatus> {
        [DriftStatus::NoReference, DriftStatus::Ok, DriftStatus::Warn, DriftStatus::Alert]
            .into_iter()
            .find(|d| d.as_str() == s)
    }
}

/// One feature's drift in a window: a channel of an input or output tensor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct FeatureDrift {
    /// `tensor` or `tensor[channel]`.
    pub feature: String,
    /// Population stability index against the reference: binned at the reference quantiles
    /// when the package has them, otherwise the divergence of normals with the two means and
    /// standard deviations (what the binned index tends to for fine bins).
    pub psi: f64,
    /// Kolmogorov-Smirnov statistic: at the reference quantiles when the package has them,
    /// otherwise between the two normals.
    pub ks: f64,
    /// Mean seen in the window.
    pub mean: f64,
    /// Standard deviation seen in the window.
    pub std: f64,
    /// Reference mean.
    pub ref_mean: f64,
    /// Reference standard deviation.
    pub ref_std: f64,
}

/// The latest closed window of one model version on one device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct DriftReport {
    /// The version whose requests these are.
    pub version: String,
    /// When the window closed, Unix milliseconds (device clock).
    pub at_ms: i64,
    /// Requests in the window.
    pub samples: u64,
    /// The drift score: the largest feature PSI.
    pub score: f64,
    /// The largest feature KS statistic.
    pub ks: f64,
    /// The score against the device's warning and alert levels.
    pub status: DriftStatus,
    /// The features that moved most, worst first (at most eight).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<FeatureDrift>,
    /// Histogram of the primary score per request ([`SCORE_BUCKETS`] buckets, see
    /// [`score_bucket`]); empty when the model has no scalar score.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scores: Vec<u64>,
}

/// One feature across a group's devices.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct FeatureSummary {
    /// `tensor` or `tensor[channel]`.
    pub feature: String,
    /// Devices whose latest window names this feature among its worst.
    pub devices: u64,
    /// Mean of their PSI for it.
    pub mean_psi: f64,
    /// The largest.
    pub max_psi: f64,
}

/// The latest drift windows of one model version's devices, in one label group.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct DriftGroup {
    /// The model.
    pub model: String,
    /// The version.
    pub version: String,
    /// The value of the `group_by` label these devices share (absent: not grouped, or the
    /// devices without that label).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Devices with a recent window.
    pub devices: u64,
    /// Of them, by status.
    pub ok: u64,
    /// At the warning level.
    pub warn: u64,
    /// At the alert level.
    pub alert: u64,
    /// Without reference statistics.
    pub no_reference: u64,
    /// Mean drift score over the scored devices.
    pub mean_score: f64,
    /// The largest drift score.
    pub max_score: f64,
    /// The features that moved most, worst first (at most five).
    pub features: Vec<FeatureSummary>,
    /// Devices at the alert level (at most 100, highest score first).
    pub alerting: Vec<String>,
}

/// What an alert rule measures over a group of devices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertMetric {
    /// Share of the group's devices at the drift alert level (0..1).
    #[default]
    DriftingDevices,
    /// Mean drift score over the group's devices.
    MeanDriftScore,
    /// Largest drift score in the group.
    MaxDriftScore,
}

/// An alert rule: fires for each model version (and label group) whose metric is above the
/// limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    /// Its name, shown with each alert.
    pub name: String,
    /// Only this model (absent: every model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Only devices matching this label selector (`site=berlin,tier!=test`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// One alert per value of this device label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by: Option<String>,
    /// What is measured.
    #[serde(default)]
    pub metric: AlertMetric,
    /// Fires when the metric is above this.
    #[serde(default)]
    pub above: f64,
    /// Fires only for groups of at least this many devices.
    #[serde(default = "one")]
    pub min_devices: u64,
}

fn one() -> u64 {
    1
}

impl AlertRule {
    /// The rule used when none is configured: any device at the drift alert level.
    pub fn default_rules() -> Vec<AlertRule> {
        vec![AlertRule {
            name: "drift".into(),
            model: None,
            selector: None,
            group_by: None,
            metric: AlertMetric::DriftingDevices,
            above: 0.0,
            min_devices: 1,
        }]
    }
}

/// A firing alert.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct Alert {
    /// The rule.
    pub rule: String,
    /// The model.
    pub model: String,
    /// The version.
    pub version: String,
    /// The label group, when the rule groups.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The measured value.
    pub value: f64,
    /// The rule's limit.
    pub above: f64,
    /// Devices in the group.
    pub devices: u64,
    /// Devices at the drift alert level that raised it (at most 100).
    pub alerting: Vec<String>,
    /// Since when (server clock, Unix ms) the longest-alerting of them has been at the alert
    /// level.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<i64>,
}

/// PSI (symmetric divergence) and KS between N(m1, s1) and N(m2, s2).
pub fn normals(m1: f64, s1: f64, m2: f64, s2: f64) -> (f64, f64) {
    // A constant feature has no spread: compare against a tiny one rather than divide by zero.
    let floor = 1e-6 * (1.0 + m1.abs().max(m2.abs()));
    let (s1, s2) = (s1.max(floor), s2.max(floor));
    let (v1, v2) = (s1 * s1, s2 * s2);
    let d2 = (m1 - m2) * (m1 - m2);
    let psi = 0.5 * (v1 / v2 + v2 / v1 - 2.0) + 0.5 * d2 * (1.0 / v1 + 1.0 / v2);
    // The largest CDF gap lies within four deviations of either mean; 400 points find it to
    // well under a percent.
    let lo = (m1 - 4.0 * s1).min(m2 - 4.0 * s2);
    let hi = (m1 + 4.0 * s1).max(m2 + 4.0 * s2);
    let mut ks = 0.0f64;
    for i in 0..=400 {
        let x = lo + (hi - lo) * i as f64 / 400.0;
        ks = ks.max((phi((x - m1) / s1) - phi((x - m2) / s2)).abs());
    }
    (psi, ks)
}

/// The standard normal CDF (Abramowitz and Stegun 7.1.26, error below 1.5e-7).
pub fn phi(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly =
        t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-x * x).exp();
    if z >= 0.0 {
        0.5 * (1.0 + erf)
    } else {
        0.5 * (1.0 - erf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_buckets_cover_every_value() {
        assert_eq!(score_bucket(-0.5), 0);
        assert_eq!(score_bucket(f64::NAN), 0);
        assert_eq!(score_bucket(0.0), 1);
        assert_eq!(score_bucket(0.05), 1);
        assert_eq!(score_bucket(0.95), 10);
        assert_eq!(score_bucket(0.999_999), 10);
        assert_eq!(score_bucket(1.0), 11);
        assert_eq!(score_bucket(f64::INFINITY), 11);
        for s in ["no_reference", "ok", "warn", "alert"] {
            assert_eq!(DriftStatus::parse(s).unwrap().as_str(), s);
        }
        assert!(DriftStatus::Alert > DriftStatus::Warn && DriftStatus::Warn > DriftStatus::Ok);
    }
}
