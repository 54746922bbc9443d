//! Plausible device data for virtual agents: hardware profiles, state reports, schedules.
//!
//! Everything here is pure (randomness comes in as an `Rng`), so the shapes are unit-tested and
//! the server sees reports that look like a real fleet: a mix of architectures, models with
//! request counters that grow, latencies with a tail, CPU and memory that move.

use outpost_proto::fleet::device::{HardwareProfile, Health, ModelReport, StateReport, SystemReport};
use rand::Rng;
use std::time::Duration;

/// Agent version virtual devices claim.
pub const SIM_AGENT_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "-sim");

/// A hardware profile; the device index picks one of a few common edge boxes.
pub fn hardware(index: usize) -> HardwareProfile {
    let (arch, features, cores, ram_gb): (&str, &[&str], u32, u64) = match index % 3 {
        0 => ("x86_64", &["sse4.1", "avx", "avx2", "fma"], 4, 8),
        1 => ("aarch64", &["neon"], 4, 4),
        _ => ("aarch64", &["neon"], 8, 16),
    };
    HardwareProfile {
        arch: arch.into(),
        os: "linux".into(),
        cpu_features: features.iter().map(|f| f.to_string()).collect(),
        cores,
        ram_bytes: ram_gb << 30,
        disk_bytes: 64 << 30,
        accelerators: Vec::new(),
    }
}

/// What a virtual device remembers between reports.
#[derive(Debug, Clone, Default)]
pub struct DeviceModelState {
    /// Requests served so far.
    pub requests: u64,
    /// Failed requests so far.
    pub errors: u64,
}

/// The next state report of a virtual device serving one model.
pub fn state_report(
    seq: u64,
    at_ms: i64,
    uptime_s: u64,
    applied_etag: &str,
    model: &mut DeviceModelState,
    rng: &mut impl Rng,
) -> StateReport {
    let served = rng.random_range(50..500);
    model.requests += served;
    let failed = u64::from(rng.random_bool(0.05)) * rng.random_range(1..3);
    model.errors += failed;
    let p50 = rng.random_range(2.0..8.0);
    let mem_total: u64 = 8 << 30;
    StateReport {
        seq,
        at_ms,
        agent_version: SIM_AGENT_VERSION.into(),
        uptime_s,
        health: if failed > 1 { Health::Degraded } else { Health::Ok },
        models: vec![ModelReport {
            name: "sim-detector".into(),
            version: "1".into(),
            state: "ready".into(),
            reason: None,
            failure_kind: None,
            installed: vec!["1".into()],
            update: None,
            requests: model.requests,
            errors: model.errors,
            latency_p50_ms: p50,
            latency_p99_ms: p50 * rng.random_range(1.5..4.0),
            ..ModelReport::default()
        }],
        system: SystemReport {
            cpu_percent: rng.random_range(5.0..60.0),
            mem_used_bytes: rng.random_range(mem_total / 5..mem_total / 2),
            mem_total_bytes: mem_total,
            agent_rss_bytes: rng.random_range(20u64 << 20..60 << 20),
            disk_free_bytes: 40 << 30,
            disk_total_bytes: 64 << 30,
        },
        applied_etag: applied_etag.into(),
        hardware: None,
    }
}

/// `interval` shifted randomly by up to ±`fraction`.
pub fn jittered(interval: Duration, fraction: f64, rng: &mut impl Rng) -> Duration {
    let f = fraction.clamp(0.0, 1.0);
    interval.mul_f64(1.0 + f * (rng.random::<f64>() * 2.0 - 1.0))
}

/// When device `index` of `devices` starts: starts are spread evenly over the first interval so
/// the server sees a steady rate instead of a thundering herd.
pub fn start_delay(index: usize, devices: usize, interval: Duration) -> Duration {
    if devices == 0 {
        return Duration::ZERO;
    }
    interval.mul_f64(index as f64 / devices as f64)
}

/// An offline period: after how many heartbeats the device goes quiet, and for how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfflinePlan {
    /// Heartbeats sent before going offline.
    pub after: u32,
    /// Heartbeat intervals spent offline (reports are queued meanwhile).
    pub intervals: u32,
}

/// Picks an offline period for a device with probability `fraction`, sized to fit in `run`
/// (when the run has a duration): it starts after 1-3 intervals and lasts 2-6.
pub fn offline_plan(
    fraction: f64,
    interval: Duration,
    run: Option<Duration>,
    rng: &mut impl Rng,
) -> Option<OfflinePlan> {
    if !rng.random_bool(fraction.clamp(0.0, 1.0)) {
        return None;
    }
    let mut plan = OfflinePlan { after: rng.random_range(1..=3), intervals: rng.random_range(2..=6) };
    if let Some(run) = run {
        // Leave at least one interval to catch up in.
        let fits = (run.as_secs_f64() / interval.as_secs_f64().max(1e-3)).floor() as u32;
        if fits < 4 {
            return None;
        }
        plan.after = plan.after.min(fits / 4).max(1);
        plan.intervals = plan.intervals.min(fits - plan.after - 1).max(1);
    }
    Some(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    #[test]
    fn reports_grow_counters_and_stay_in_plausible_ranges() {
        let mut r = rng();
        let mut model = DeviceModelState::default();
        let a = state_report(1, 1_000, 10, "e1", &mut model, &mut r);
        let b = state_report(2, 2_000, 20, "e1", &mut model, &mut r);
        assert!(b.models[0].requests > a.models[0].requests);
        assert!(b.models[0].errors >= a.models[0].errors);
        for rep in [&a, &b] {
            assert!(rep.system.cpu_percent > 0.0 && rep.system.cpu_percent < 100.0);
            assert!(rep.system.mem_used_bytes < rep.system.mem_total_bytes);
            assert!(rep.models[0].latency_p99_ms > rep.models[0].latency_p50_ms);
        }
    }

    #[test]
    fn starts_spread_over_the_first_interval() {
        let i = Duration::from_secs(30);
        assert_eq!(start_delay(0, 10, i), Duration::ZERO);
        assert_eq!(start_delay(5, 10, i), Duration::from_secs(15));
        assert!(start_delay(9, 10, i) < i);
    }

    #[test]
    fn jitter_stays_within_the_fraction() {
        let mut r = rng();
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(10), 0.1, &mut r);
            assert!(d >= Duration::from_secs(9) && d <= Duration::from_secs(11));
        }
    }

    #[test]
    fn offline_periods_fit_in_the_run_and_respect_the_fraction() {
        let mut r = rng();
        let i = Duration::from_secs(1);
        assert_eq!(offline_plan(0.0, i, None, &mut r), None);
        for _ in 0..200 {
            let plan = offline_plan(1.0, i, Some(Duration::from_secs(8)), &mut r).unwrap();
            assert!(plan.after >= 1 && plan.intervals >= 1 && plan.after + plan.intervals < 8, "{plan:?}");
        }
        assert_eq!(offline_plan(1.0, i, Some(Duration::from_secs(2)), &mut r), None);
    }
}
