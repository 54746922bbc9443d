//! Gate arithmetic: the per-version windows devices report, summed over a wave's devices and a
//! time window, and judged against a gate.
//!
//! Two rules keep a gate from deciding on noise. Below `min_samples` it says `waiting` and how
//! many samples it has. Above, during the bake it fails early only when the failure is clear
//! (the 95 % Wilson bound of a rate is past the limit, not just the point estimate); at the end
//! of the bake the point estimate decides.

use super::engine::Member;
use outpost_proto::fleet::quality::LatencyHistogram;
use outpost_proto::fleet::rollout::{Gate, GateMetric, GateReading, Threshold, Verdict};
use std::collections::HashMap;

/// One stored window: what a device reported for one version in one report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatRow {
    /// Its row id: rows of a device arrive in increasing id order.
    pub id: i64,
    /// When the server received it, Unix milliseconds (server clock: devices' clocks drift).
    pub received_ms: i64,
    /// The version it is about.
    pub version: String,
    /// True for a shadow comparison of a candidate, false for served requests.
    pub shadow: bool,
    /// Requests served (or shadow comparisons made).
    pub requests: u64,
    /// Errors among them.
    pub errors: u64,
    /// Latencies of served requests.
    pub latency: LatencyHistogram,
    /// Sum of shadow agreement.
    pub agreement: f64,
    /// Drift windows closed.
    pub drift_windows: u64,
    /// Those at the alert level.
    pub drift_alerts: u64,
    /// Sum of their drift scores.
    pub drift_score: f64,
}

/// Sums over devices and time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    /// Requests.
    pub requests: u64,
    /// Errors.
    pub errors: u64,
    /// Latencies.
    pub latency: LatencyHistogram,
    /// Shadow comparisons.
    pub shadow_samples: u64,
    /// Sum of their agreement.
    pub agreement: f64,
    /// Drift windows closed.
    pub drift_windows: u64,
    /// Those at the alert level.
    pub drift_alerts: u64,
    /// Sum of their drift scores.
    pub drift_score: f64,
}

impl Totals {
    /// Adds other sums.
    pub fn merge(&mut self, other: &Totals) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.latency.merge(&other.latency);
        self.shadow_samples += other.shadow_samples;
        self.agreement += other.agreement;
        self.drift_windows += other.drift_windows;
        self.drift_alerts += other.drift_alerts;
        self.drift_score += other.drift_score;
    }

    /// Adds one row.
    pub fn add(&mut self, row: &StatRow) {
        if row.shadow {
            self.shadow_samples += row.requests;
            self.agreement += row.agreement;
        } else {
            self.requests += row.requests;
            self.errors += row.errors;
            self.latency.merge(&row.latency);
            self.drift_windows += row.drift_windows;
            self.drift_alerts += row.drift_alerts;
            self.drift_score += row.drift_score;
        }
    }
}

/// What a gate is judged on: the new version on the wave's devices over the bake window, and
/// the previous version on the same devices before they changed.
#[derive(Debug, Clone, Default)]
pub struct GateInput {
    /// The new version (or the shadow candidate).
    pub candidate: Totals,
    /// The previous version.
    pub baseline: Totals,
    /// Samples needed to decide.
    pub min_samples: u64,
    /// True once the bake window is over: the point estimate decides.
    pub final_call: bool,
}

/// Error rates below this count as this in ratio gates, so a clean baseline (0 errors) does
/// not make any single error an infinite regression.
pub const ERROR_RATE_FLOOR: f64 = 0.001;

/// 95 % Wilson score interval of `k` successes in `n` trials.
pub fn wilson(k: f64, n: f64) -> (f64, f64) {
    if n <= 0.0 {
        return (0.0, 1.0);
    }
    let z = 1.959_964f64;
    let p = (k / n).clamp(0.0, 1.0);
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * ((p * (1.0 - p) / n) + z * z / (4.0 * n * n)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// The quantile whose rank is the lower 95 % bound of the rank of quantile `q` among `n`
/// samples (normal approximation of the binomial): a distribution-free lower bound for it.
fn lower_rank(q: f64, n: u64) -> f64 {
    let n = n.max(1) as f64;
    let z = 1.959_964f64;
    ((n * q - z * (n * q * (1.0 - q)).sqrt()) / n).clamp(0.0, 1.0)
}

fn reading(
    gate: &Gate,
    value: Option<f64>,
    baseline: Option<f64>,
    limit: Option<f64>,
    verdict: Verdict,
    note: String,
) -> GateReading {
    GateReading { gate: gate.to_string(), value, baseline, limit, verdict, note }
}

/// Judges one gate.
pub fn judge(gate: &Gate, input: &GateInput) -> GateReading {
    let c = &input.candidate;
    let b = &input.baseline;
    let min = input.min_samples.max(1);
    match gate.metric {
        GateMetric::ErrorRate => {
            if c.requests < min {
                let note = format!("waiting for data: {} of {min} requests on the new version", c.requests);
                return reading(gate, None, None, None, Verdict::Waiting, note);
            }
            let value = c.errors as f64 / c.requests as f64;
            let (limit, baseline) = match gate.threshold {
                Threshold::Fraction(f) => (f, None),
                Threshold::Ratio(r) => {
                    if b.requests < min {
                        let note =
                            format!("waiting for data: {} of {min} requests on the previous version", b.requests);
                        return reading(gate, Some(value), None, None, Verdict::Waiting, note);
                    }
                    let base = b.errors as f64 / b.requests as f64;
                    (base.max(ERROR_RATE_FLOOR) * r, Some(base))
                }
                Threshold::Millis(_) | Threshold::Value(_) => return mismatched(gate),
            };
            let verdict = rate_verdict(c.errors as f64, c.requests as f64, limit, input.final_call);
            let note = format!("{} errors in {} requests", c.errors, c.requests);
            reading(gate, Some(value), baseline, Some(limit), verdict, note)
        }
        GateMetric::P99Latency | GateMetric::P50Latency => {
            let q = if gate.metric == GateMetric::P99Latency { 0.99 } else { 0.5 };
            if c.requests < min {
                let note = format!("waiting for data: {} of {min} requests on the new version", c.requests);
                return reading(gate, None, None, None, Verdict::Waiting, note);
            }
            let value = c.latency.quantile(q);
            let (limit, baseline) = match gate.threshold {
                Threshold::Millis(ms) => (Some(ms), None),
                Threshold::Ratio(r) => {
                    if b.requests < min {
                        let note =
                            format!("waiting for data: {} of {min} requests on the previous version", b.requests);
                        return reading(gate, value, None, None, Verdict::Waiting, note);
                    }
                    let base = b.latency.quantile(q);
                    (base.map(|v| v * r), base)
                }
                Threshold::Fraction(_) | Threshold::Value(_) => return mismatched(gate),
            };
            let verdict = match (value, limit) {
                (Some(v), Some(l)) if input.final_call => {
                    if v >= l {
                        Verdict::Fail
                    } else {
                        Verdict::Pass
                    }
                }
                // Before the bake ends, a tail quantile of a few hundred requests is a handful of
                // samples: it fails early only when the quantile's lower 95 % bound is past the
                // limit, as the rate gates do with theirs.
                (Some(_), Some(l)) if c.latency.quantile(lower_rank(q, c.requests)).is_some_and(|low| low >= l) => {
                    Verdict::Fail
                }
                (Some(v), Some(l)) if v < l => Verdict::Pass,
                _ => Verdict::Waiting,
            };
            let note = format!("{} requests, {} on the previous version", c.requests, b.requests);
            reading(gate, value, baseline, limit, verdict, note)
        }
        GateMetric::ShadowAgreement => {
            let n = c.shadow_samples;
            if n < min {
                let note = format!("waiting for data: {n} of {min} shadow comparisons");
                return reading(gate, None, None, None, Verdict::Waiting, note);
            }
            let value = c.agreement / n as f64;
            let limit = match gate.threshold {
                Threshold::Fraction(f) => f,
                _ => return mismatched(gate),
            };
            let (_, high) = wilson(c.agreement, n as f64);
            let failed = if input.final_call { value <= limit } else { high <= limit };
            let verdict = match (failed, input.final_call) {
                (true, _) => Verdict::Fail,
                (false, true) => Verdict::Pass,
                (false, false) if value > limit => Verdict::Pass,
                (false, false) => Verdict::Waiting,
            };
            reading(gate, Some(value), None, Some(limit), verdict, format!("{n} shadow comparisons"))
        }
        GateMetric::DriftAlerts | GateMetric::DriftScore => judge_drift(gate, input),
    }
}

/// The verdict on a rate of `k` in `n` that must stay below `limit`: at the end of the bake the
/// rate decides; before, it fails only when its lower 95 % bound is past the limit.
fn rate_verdict(k: f64, n: f64, limit: f64, final_call: bool) -> Verdict {
    let value = k / n;
    let (low, _) = wilson(k, n);
    let failed = if final_call { value >= limit } else { low >= limit };
    match (failed, final_call) {
        (true, _) => Verdict::Fail,
        (false, true) => Verdict::Pass,
        (false, false) if value < limit => Verdict::Pass,
        (false, false) => Verdict::Waiting,
    }
}

/// Closed drift windows a drift gate needs before it decides: a window spans hundreds of
/// requests, so a few of them already say more than `min_samples` requests would.
pub const MIN_DRIFT_WINDOWS: u64 = 3;

fn judge_drift(gate: &Gate, input: &GateInput) -> GateReading {
    let (c, b) = (&input.candidate, &input.baseline);
    let n = c.drift_windows;
    if n < MIN_DRIFT_WINDOWS {
        let note = format!("waiting for data: {n} of {MIN_DRIFT_WINDOWS} drift windows on the new version");
        return reading(gate, None, None, None, Verdict::Waiting, note);
    }
    let note = format!("{n} drift windows, {} at the alert level", c.drift_alerts);
    if gate.metric == GateMetric::DriftAlerts {
        let Threshold::Fraction(limit) = gate.threshold else { return mismatched(gate) };
        let value = c.drift_alerts as f64 / n as f64;
        let verdict = rate_verdict(c.drift_alerts as f64, n as f64, limit, input.final_call);
        return reading(gate, Some(value), None, Some(limit), verdict, note);
    }
    let value = c.drift_score / n as f64;
    let (limit, baseline) = match gate.threshold {
        Threshold::Value(v) => (v, None),
        Threshold::Ratio(r) => {
            if b.drift_windows < MIN_DRIFT_WINDOWS {
                let note = format!(
                    "waiting for data: {} of {MIN_DRIFT_WINDOWS} drift windows on the previous version",
                    b.drift_windows
                );
                return reading(gate, Some(value), None, None, Verdict::Waiting, note);
            }
            let base = b.drift_score / b.drift_windows as f64;
            // A baseline that never drifted would make any score an infinite regression.
            (base.max(DRIFT_SCORE_FLOOR) * r, Some(base))
        }
        _ => return mismatched(gate),
    };
    // A mean of a few windows is noisy: only the end of the bake fails on it.
    let verdict = match (value < limit, input.final_call) {
        (true, _) => Verdict::Pass,
        (false, true) => Verdict::Fail,
        (false, false) => Verdict::Waiting,
    };
    reading(gate, Some(value), baseline, Some(limit), verdict, note)
}

/// Drift scores below this count as this in ratio gates (sampling noise alone scores about
/// 0.01 for a window of 1000 requests).
pub const DRIFT_SCORE_FLOOR: f64 = 0.02;

/// The gate parser (`outpost_proto::fleet::rollout`) refuses a metric with the wrong unit, so
/// only a hand-built gate gets here; it never decides.
fn mismatched(gate: &Gate) -> GateReading {
    reading(gate, None, None, None, Verdict::Waiting, "this metric does not take this unit".into())
}

/// Sums the wave's windows: the new version since the bake started, and each device's
/// previous version over the same length before it changed.
pub fn gate_totals(
    members: &[&Member],
    version: &str,
    shadow: bool,
    bake_started_ms: i64,
    baseline_ms: i64,
    stats: &HashMap<String, Vec<StatRow>>,
) -> (Totals, Totals) {
    let window = GateWindow { version, shadow, bake_started_ms, baseline_ms };
    let (mut candidate, mut baseline) = (Totals::default(), Totals::default());
    for m in members {
        let Some(rows) = stats.get(&m.device_id) else { continue };
        for row in rows {
            window.add(m, row, &mut candidate, &mut baseline);
        }
    }
    (candidate, baseline)
}

/// What a wave's gates sum: the version (or shadow candidate) since the bake started, and the
/// previous version over `baseline_ms` before each device changed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GateWindow<'a> {
    /// The new version.
    pub version: &'a str,
    /// Shadow comparisons rather than served requests.
    pub shadow: bool,
    /// When the bake (or shadow phase) started.
    pub bake_started_ms: i64,
    /// How far back the previous version is read.
    pub baseline_ms: i64,
}

impl GateWindow<'_> {
    /// Adds `row` of member `m` to the side it belongs to, if any.
    pub fn add(&self, m: &Member, row: &StatRow, candidate: &mut Totals, baseline: &mut Totals) {
        self.add_for(m.since_ms, m.from_version.as_deref(), row, candidate, baseline);
    }

    /// [`GateWindow::add`] for a member that changed at `since_ms` from `from_version`.
    pub fn add_for(
        &self,
        since_ms: i64,
        from_version: Option<&str>,
        row: &StatRow,
        candidate: &mut Totals,
        baseline: &mut Totals,
    ) {
        if row.version == self.version
            && row.shadow == self.shadow
            && row.received_ms >= self.bake_started_ms.max(since_ms)
        {
            candidate.add(row);
        } else if !self.shadow
            && !row.shadow
            && Some(row.version.as_str()) == from_version
            && row.received_ms < since_ms
            && row.received_ms >= since_ms.saturating_sub(self.baseline_ms)
        {
            baseline.add(row);
        }
    }
}

/// Where the engine's gates get their sums from: the windows themselves, or a memo of them.
pub trait Windows {
    /// The sums of `members`' windows in `window`: (candidate, baseline). `as_given` says the
    /// step changed no member before asking, so the members are those the step was given.
    fn totals(&self, members: &[&Member], window: GateWindow<'_>, as_given: bool) -> (Totals, Totals);
}

impl Windows for HashMap<String, Vec<StatRow>> {
    fn totals(&self, members: &[&Member], w: GateWindow<'_>, _as_given: bool) -> (Totals, Totals) {
        gate_totals(members, w.version, w.shadow, w.bake_started_ms, w.baseline_ms, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(requests: u64, errors: u64, latency_ms: f64) -> Totals {
        let mut t = Totals { requests, errors, ..Totals::default() };
        for _ in 0..requests {
            t.latency.record(latency_ms);
        }
        t
    }

    fn gate(text: &str) -> Gate {
        text.parse().unwrap()
    }

    fn drift(windows: u64, alerts: u64, mean_score: f64) -> Totals {
        Totals {
            drift_windows: windows,
            drift_alerts: alerts,
            drift_score: mean_score * windows as f64,
            ..Totals::default()
        }
    }

    #[test]
    fn drift_gates_wait_for_windows_fail_on_alerts_and_compare_scores() {
        let at = |candidate: Totals, baseline: Totals, final_call: bool| GateInput {
            candidate,
            baseline,
            min_samples: 100,
            final_call,
        };
        let r = judge(&gate("drift_alerts<5%"), &at(drift(2, 2, 1.0), Totals::default(), true));
        assert_eq!(r.verdict, Verdict::Waiting);
        assert!(r.note.contains("2 of 3"), "{}", r.note);
        // Every one of 40 windows alerting is clear before the bake ends.
        let r = judge(&gate("drift_alerts<5%"), &at(drift(40, 40, 1.0), Totals::default(), false));
        assert_eq!(r.verdict, Verdict::Fail);
        let r = judge(&gate("drift_alerts<5%"), &at(drift(40, 0, 0.01), Totals::default(), true));
        assert_eq!((r.verdict, r.value), (Verdict::Pass, Some(0.0)));
        // One alert in four windows is not yet clear, and fails at the end.
        let input = at(drift(4, 1, 0.1), Totals::default(), false);
        assert_eq!(judge(&gate("drift_alerts<5%"), &input).verdict, Verdict::Waiting);
        assert_eq!(judge(&gate("drift_alerts<5%"), &GateInput { final_call: true, ..input }).verdict, Verdict::Fail);

        let r = judge(&gate("drift_score<0.2"), &at(drift(5, 0, 0.05), Totals::default(), false));
        assert_eq!(r.verdict, Verdict::Pass);
        let r = judge(&gate("drift_score<0.2"), &at(drift(5, 0, 0.3), Totals::default(), false));
        assert_eq!(r.verdict, Verdict::Waiting);
        let r = judge(&gate("drift_score<0.2"), &at(drift(5, 0, 0.3), Totals::default(), true));
        assert_eq!(r.verdict, Verdict::Fail);
        // Against the previous version: a clean baseline counts as the floor.
        let r = judge(&gate("drift_score<2x"), &at(drift(5, 0, 0.03), drift(5, 0, 0.0), true));
        assert_eq!((r.verdict, r.limit), (Verdict::Pass, Some(2.0 * DRIFT_SCORE_FLOOR)));
        let r = judge(&gate("drift_score<2x"), &at(drift(5, 0, 0.5), drift(5, 0, 0.1), true));
        assert_eq!((r.verdict, r.baseline), (Verdict::Fail, Some(0.1)));
        let r = judge(&gate("drift_score<2x"), &at(drift(5, 0, 0.5), drift(1, 0, 0.1), true));
        assert_eq!(r.verdict, Verdict::Waiting);
    }

    #[test]
    fn too_few_samples_wait_and_say_how_many() {
        let input =
            GateInput { candidate: totals(12, 12, 5.0), min_samples: 100, final_call: true, ..GateInput::default() };
        let r = judge(&gate("error_rate<1%"), &input);
        assert_eq!(r.verdict, Verdict::Waiting);
        assert!(r.note.contains("12 of 100"), "{}", r.note);
        let r = judge(&gate("shadow_agreement>97%"), &input);
        assert_eq!(r.verdict, Verdict::Waiting);
        // Ratio gates also need the previous version's data.
        let input = GateInput {
            candidate: totals(500, 0, 5.0),
            baseline: totals(3, 0, 5.0),
            min_samples: 100,
            final_call: true,
        };
        let r = judge(&gate("p99_latency<1.2x"), &input);
        assert_eq!(r.verdict, Verdict::Waiting);
        assert!(r.note.contains("previous version"), "{}", r.note);
    }

    #[test]
    fn error_rate_fails_early_only_when_clear_and_decides_at_the_end() {
        // 2 errors in 100 against 1 %: the point estimate is over, the Wilson bound is not.
        let input = GateInput { candidate: totals(100, 2, 5.0), min_samples: 100, ..GateInput::default() };
        assert_eq!(judge(&gate("error_rate<1%"), &input).verdict, Verdict::Waiting);
        let last = GateInput { final_call: true, ..input.clone() };
        assert_eq!(judge(&gate("error_rate<1%"), &last).verdict, Verdict::Fail);
        // 20 in 100 is clear at once.
        let bad = GateInput { candidate: totals(100, 20, 5.0), min_samples: 100, ..GateInput::default() };
        let r = judge(&gate("error_rate<1%"), &bad);
        assert_eq!((r.verdict, r.value), (Verdict::Fail, Some(0.2)));
        let good = GateInput { candidate: totals(1000, 1, 5.0), min_samples: 100, ..GateInput::default() };
        assert_eq!(judge(&gate("error_rate<1%"), &good).verdict, Verdict::Pass);
    }

    #[test]
    fn ratio_gates_compare_with_the_previous_version_and_floor_a_clean_baseline() {
        let input = GateInput {
            candidate: totals(1000, 1, 5.0),
            baseline: totals(1000, 0, 5.0),
            min_samples: 100,
            final_call: true,
        };
        // 0.1 % against a clean baseline floored at 0.1 % × 2: passes.
        let r = judge(&gate("error_rate<2x"), &input);
        assert_eq!((r.verdict, r.baseline, r.limit), (Verdict::Pass, Some(0.0), Some(0.002)));
        let slow = GateInput { candidate: totals(1000, 0, 9.0), ..input.clone() };
        let r = judge(&gate("p99_latency<1.2x"), &slow);
        assert_eq!(r.verdict, Verdict::Fail, "{r:?}");
        assert!(r.value.unwrap() / r.baseline.unwrap() > 1.5);
        let same = GateInput { candidate: totals(1000, 0, 5.0), ..input };
        assert_eq!(judge(&gate("p99_latency<1.2x"), &same).verdict, Verdict::Pass);
        assert_eq!(judge(&gate("p50_latency<4ms"), &same).verdict, Verdict::Fail);
    }

    #[test]
    fn a_tail_latency_from_few_samples_fails_early_only_when_its_lower_bound_does() {
        // 203 requests at 5 ms but the slowest three at 12 ms: the p99 reads 12 ms against a limit
        // of 7.5 ms, but its lower bound (about the 98th percentile) is 5 ms.
        let mut candidate = totals(200, 0, 5.0);
        for _ in 0..3 {
            candidate.requests += 1;
            candidate.latency.record(12.0);
        }
        let baseline = totals(1000, 0, 5.0);
        let early = GateInput { candidate, baseline, min_samples: 200, final_call: false };
        let r = judge(&gate("p99_latency<1.5x"), &early);
        assert_eq!(r.verdict, Verdict::Waiting, "{r:?}");
        assert!(r.value.unwrap() > r.limit.unwrap(), "{r:?}");
        // At the end of the bake the point estimate decides.
        let r = judge(&gate("p99_latency<1.5x"), &GateInput { final_call: true, ..early.clone() });
        assert_eq!(r.verdict, Verdict::Fail, "{r:?}");
        // A version slow throughout fails at once.
        let slow = GateInput { candidate: totals(203, 0, 12.0), ..early };
        assert_eq!(judge(&gate("p99_latency<1.5x"), &slow).verdict, Verdict::Fail);
        assert!(lower_rank(0.99, 203) < 0.985 && lower_rank(0.99, 1_000_000) > 0.989);
    }

    #[test]
    fn shadow_agreement_is_the_mean_agreement() {
        let mut c = Totals { shadow_samples: 200, agreement: 190.0, ..Totals::default() };
        let input = GateInput { candidate: c.clone(), min_samples: 100, final_call: true, ..GateInput::default() };
        let r = judge(&gate("shadow_agreement>97%"), &input);
        assert_eq!((r.verdict, r.value), (Verdict::Fail, Some(0.95)));
        c.agreement = 199.0;
        let input = GateInput { candidate: c, min_samples: 100, final_call: false, ..GateInput::default() };
        assert_eq!(judge(&gate("shadow_agreement>97%"), &input).verdict, Verdict::Pass);
    }

    #[test]
    fn wilson_bounds_bracket_the_rate() {
        let (lo, hi) = wilson(2.0, 100.0);
        assert!(lo < 0.02 && hi > 0.02 && lo > 0.0 && hi < 0.08, "{lo} {hi}");
        assert_eq!(wilson(0.0, 0.0), (0.0, 1.0));
    }
}
