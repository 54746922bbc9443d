//! What a virtual device says about how its models behave: per-version request windows (the
//! additive counts rollout gates sum) and shadow comparisons, with the faults a rollout test
//! needs: a share of the fleet whose error rate and latency climb under one version, and a
//! candidate whose answers disagree in shadow.

use outpost_proto::fleet::device::ModelReport;
use outpost_proto::fleet::drift::{
    normals, DriftReport, DriftStatus, FeatureDrift, DEFAULT_ALERT_PSI, DEFAULT_WARN_PSI,
};
use outpost_proto::fleet::quality::{LatencyHistogram, ShadowReport, VersionWindow};
use outpost_proto::fleet::rollout::ShadowSpec;
use rand::Rng;

/// Faults of model behaviour, for the whole fleet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QualityFaults {
    /// Share of devices whose updates fail their self-test (the version is refused).
    pub update_failure: f64,
    /// Share of devices that regress under `regress_version`.
    pub regress: f64,
    /// The version that regresses (error rate 20 %, latency × 2) on those devices.
    pub regress_version: Option<String>,
    /// A version whose answers agree with the serving one on only 80 % of shadowed requests.
    pub disagree_version: Option<String>,
    /// Share of devices whose input data drifts (a sensor gain change) while `drift_on` is on:
    /// their drift windows score 0.4-1.5 and are at the alert level; the others score near the
    /// sampling noise.
    pub drift: f64,
    /// Turns the drift of those devices on and off while the fleet runs (on by default).
    pub drift_on: Switch,
}

/// A flag shared with every virtual device, to change their behaviour while they run.
#[derive(Debug, Clone)]
pub struct Switch(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Switch {
    /// A switch in the given position.
    pub fn new(on: bool) -> Switch {
        Switch(std::sync::Arc::new(std::sync::atomic::AtomicBool::new(on)))
    }

    /// Turns it on or off.
    pub fn set(&self, on: bool) {
        self.0.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether it is on.
    pub fn is_on(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Default for Switch {
    fn default() -> Switch {
        Switch::new(true)
    }
}

impl PartialEq for Switch {
    fn eq(&self, other: &Switch) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

/// How one device behaves, drawn once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Behaviour {
    /// Its updates fail.
    pub fails_updates: bool,
    /// It regresses under this version.
    pub regresses_under: Option<String>,
    /// Shadow candidates of this version disagree.
    pub disagree_version: Option<String>,
    /// Its input data drifts while the switch is on.
    pub drifts: Option<Switch>,
}

impl Behaviour {
    /// Draws a device's behaviour from the fleet's faults.
    pub fn draw(faults: &QualityFaults, rng: &mut impl Rng) -> Behaviour {
        Behaviour {
            fails_updates: faults.update_failure > 0.0 && rng.random_bool(faults.update_failure.clamp(0.0, 1.0)),
            regresses_under: faults
                .regress_version
                .clone()
                .filter(|_| faults.regress > 0.0 && rng.random_bool(faults.regress.clamp(0.0, 1.0))),
            disagree_version: faults.disagree_version.clone(),
            drifts: (faults.drift > 0.0 && rng.random_bool(faults.drift.clamp(0.0, 1.0)))
                .then(|| faults.drift_on.clone()),
        }
    }
}

/// Fills the requests a ready model answered since the last report, and its shadow candidate's
/// comparisons when the desired state names one.
pub fn fill(report: &mut ModelReport, shadow: Option<&ShadowSpec>, behaviour: &Behaviour, rng: &mut impl Rng) {
    if report.state != "ready" {
        return;
    }
    let requests: u64 = rng.random_range(50..200);
    let regressed = behaviour.regresses_under.as_deref() == Some(report.version.as_str());
    let (error_rate, slowdown) = if regressed { (0.2, 2.0) } else { (0.002, 1.0) };
    let mut errors = 0u64;
    let mut latency = LatencyHistogram::default();
    let base = rng.random_range(2.0..4.0);
    for _ in 0..requests {
        errors += u64::from(rng.random_bool(error_rate));
        // A log-normal-ish tail: most requests near the base, a few several times slower.
        let tail = if rng.random_bool(0.02) { rng.random_range(2.0..4.0) } else { rng.random_range(0.8..1.3) };
        latency.record(base * tail * slowdown);
    }
    let drifting = behaviour.drifts.as_ref().is_some_and(Switch::is_on);
    let drift = drift_window(&report.version, requests, drifting, rng);
    report.windows = vec![VersionWindow {
        version: report.version.clone(),
        requests,
        errors,
        latency,
        drift_windows: 1,
        drift_alerts: u64::from(drift.status == DriftStatus::Alert),
        drift_score: drift.score,
    }];
    report.drift = Some(drift);
    if let Some(spec) = shadow.filter(|s| s.version != report.version) {
        let samples = (requests as f64 * spec.sample.clamp(0.0, 1.0)).round() as u64;
        let agree = if behaviour.disagree_version.as_deref() == Some(spec.version.as_str()) { 0.8 } else { 0.995 };
        let agreed = (0..samples).filter(|_| rng.random_bool(agree)).count();
        report.shadow = Some(ShadowReport {
            version: spec.version.clone(),
            state: "ready".into(),
            samples,
            agreement: agreed as f64,
            ..ShadowReport::default()
        });
    }
}

/// A drift window over a report's requests: a gain change on the first axis when `drifts`.
fn drift_window(version: &str, requests: u64, drifts: bool, rng: &mut impl Rng) -> DriftReport {
    let gain: f64 = if drifts { rng.random_range(1.6..2.4) } else { rng.random_range(0.98..1.02) };
    let (psi, _) = normals(0.0, 1.0, 0.0, gain);
    let noise = rng.random_range(0.002..0.01);
    let score = psi + noise;
    let status = if score >= DEFAULT_ALERT_PSI {
        DriftStatus::Alert
    } else if score >= DEFAULT_WARN_PSI {
        DriftStatus::Warn
    } else {
        DriftStatus::Ok
    };
    let feature = |name: &str, psi: f64, std: f64| FeatureDrift {
        feature: name.into(),
        psi,
        ks: 0.0,
        mean: 0.0,
        std,
        ref_mean: 0.0,
        ref_std: 1.0,
    };
    DriftReport {
        version: version.to_string(),
        at_ms: 0,
        samples: requests,
        score,
        ks: 0.0,
        status,
        features: vec![feature("window[0]", score, gain), feature("window[1]", noise, 1.0)],
        scores: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn ready(version: &str) -> ModelReport {
        ModelReport { name: "m".into(), version: version.into(), state: "ready".into(), ..ModelReport::default() }
    }

    #[test]
    fn windows_count_requests_and_regressions_show_in_errors_and_latency() {
        let mut rng = SmallRng::seed_from_u64(1);
        let behaviour = Behaviour { regresses_under: Some("4".into()), ..Behaviour::default() };
        let (mut good, mut bad) = (ready("3"), ready("4"));
        let (mut good_err, mut bad_err, mut good_n, mut bad_n) = (0, 0, 0, 0);
        let (mut good_lat, mut bad_lat) = (LatencyHistogram::default(), LatencyHistogram::default());
        for _ in 0..50 {
            fill(&mut good, None, &behaviour, &mut rng);
            fill(&mut bad, None, &behaviour, &mut rng);
            let (g, b) = (&good.windows[0], &bad.windows[0]);
            assert_eq!(g.latency.count(), g.requests);
            (good_err, bad_err, good_n, bad_n) =
                (good_err + g.errors, bad_err + b.errors, good_n + g.requests, bad_n + b.requests);
            good_lat.merge(&g.latency);
            bad_lat.merge(&b.latency);
        }
        assert!((good_err as f64 / good_n as f64) < 0.01);
        assert!((bad_err as f64 / bad_n as f64) > 0.15);
        assert!(bad_lat.quantile(0.99).unwrap() > 1.5 * good_lat.quantile(0.99).unwrap());
    }

    #[test]
    fn drifting_devices_report_alert_windows_and_the_others_stay_ok() {
        let mut rng = SmallRng::seed_from_u64(3);
        let switch = Switch::new(false);
        for (drifts, on) in [(false, true), (true, false), (true, true)] {
            switch.set(on);
            let behaviour = Behaviour { drifts: drifts.then(|| switch.clone()), ..Behaviour::default() };
            for _ in 0..20 {
                let mut m = ready("2");
                fill(&mut m, None, &behaviour, &mut rng);
                let d = m.drift.as_ref().unwrap();
                let w = &m.windows[0];
                assert_eq!((d.version.as_str(), d.samples, w.drift_windows), ("2", w.requests, 1));
                if drifts && on {
                    assert_eq!((d.status, w.drift_alerts), (DriftStatus::Alert, 1), "{d:?}");
                } else {
                    assert_eq!((d.status, w.drift_alerts), (DriftStatus::Ok, 0), "{d:?}");
                }
            }
        }
    }

    #[test]
    fn shadow_candidates_report_agreement_and_a_disagreeing_version_less_of_it() {
        let mut rng = SmallRng::seed_from_u64(2);
        let behaviour = Behaviour { disagree_version: Some("3".into()), ..Behaviour::default() };
        let spec = |v: &str| ShadowSpec { version: v.into(), package: None, sample: 0.5 };
        let mut m = ready("2");
        fill(&mut m, Some(&spec("3")), &behaviour, &mut rng);
        let s = m.shadow.clone().unwrap();
        assert!(s.samples > 0 && s.agreement / (s.samples as f64) < 0.95, "{s:?}");
        fill(&mut m, Some(&spec("5")), &behaviour, &mut rng);
        let s = m.shadow.unwrap();
        assert!(s.agreement / (s.samples as f64) > 0.95, "{s:?}");
        let mut loading = ModelReport { state: "downloading".into(), ..ready("2") };
        fill(&mut loading, Some(&spec("3")), &behaviour, &mut rng);
        assert!(loading.windows.is_empty() && loading.shadow.is_none());
    }
}
