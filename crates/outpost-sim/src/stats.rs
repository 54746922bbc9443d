//! Counters every virtual device adds to, and the report made from them at the end.

use crate::histogram::LatencyHistogram;
use serde::Serialize;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Kinds of deliberately broken request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A signature that does not match the request.
    BadSignature,
    /// A byte-identical copy of a request the server already accepted.
    Replay,
    /// A correctly signed body that is not valid JSON.
    GarbageJson,
}

impl Fault {
    /// All kinds, in report order.
    pub const ALL: [Fault; 3] = [Fault::BadSignature, Fault::Replay, Fault::GarbageJson];

    fn index(self) -> usize {
        self as usize
    }

    /// Name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::BadSignature => "bad_signature",
            Fault::Replay => "replay",
            Fault::GarbageJson => "garbage_json",
        }
    }
}

/// Shared counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Devices enrolled.
    pub enrolled: AtomicU64,
    /// Devices that gave up enrolling.
    pub enroll_failed: AtomicU64,
    /// Heartbeats the server accepted.
    pub heartbeats_ok: AtomicU64,
    /// Heartbeats that failed.
    pub heartbeats_failed: AtomicU64,
    /// Heartbeat latency.
    pub latency: LatencyHistogram,
    /// Latency of heartbeats sent after every device finished enrolling: the fleet at its
    /// steady rate, without the enrollment ramp competing for the server.
    pub steady_latency: LatencyHistogram,
    /// Set once every device has enrolled or given up.
    pub all_enrolled: std::sync::atomic::AtomicBool,
    /// Devices that went offline.
    pub went_offline: AtomicU64,
    /// Reports delivered late through `/v1/device/reports`.
    pub reports_caught_up: AtomicU64,
    /// Long-polls answered (with a new state or 304).
    pub long_polls: AtomicU64,
    /// Long-polls that failed.
    pub long_polls_failed: AtomicU64,
    /// The most recent request error, to tell the user what went wrong.
    pub last_error: std::sync::Mutex<Option<String>>,
    /// Commands acknowledged.
    pub commands_acked: AtomicU64,
    /// Faults sent, by kind.
    pub faults_injected: [AtomicU64; 3],
    /// Faults the server refused with a 4xx, by kind.
    pub faults_rejected: [AtomicU64; 3],
    /// Whole packages downloaded and verified.
    pub downloads_full: AtomicU64,
    /// Packages rebuilt from a delta and verified.
    pub downloads_delta: AtomicU64,
    /// Deltas given up for the whole package.
    pub delta_fallbacks: AtomicU64,
    /// Body bytes received for whole packages, every attempt counted.
    pub bytes_full: AtomicU64,
    /// Plan and blob bytes received for deltas, every attempt counted.
    pub bytes_delta: AtomicU64,
    /// Downloads or rebuilds whose bytes did not match their hash.
    pub verify_failures: AtomicU64,
    /// Updates that reached active.
    pub updates_active: AtomicU64,
    /// Updates given up (reported failed).
    pub updates_failed: AtomicU64,
    /// From a device learning of a version to that version being active on it.
    pub time_to_active: LatencyHistogram,
}

impl Stats {
    /// Remembers a request error for the report.
    pub fn error(&self, what: &str, error: &dyn std::fmt::Display) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{what}: {error}"));
    }

    /// Counts a finished enrollment attempt (`ok` or given up) of a fleet of `devices`.
    pub fn enrollment_done(&self, ok: bool, devices: usize) {
        let counter = if ok { &self.enrolled } else { &self.enroll_failed };
        counter.fetch_add(1, Ordering::SeqCst);
        let done = self.enrolled.load(Ordering::SeqCst) + self.enroll_failed.load(Ordering::SeqCst);
        if done >= devices as u64 {
            self.all_enrolled.store(true, Ordering::SeqCst);
        }
    }

    /// Records a heartbeat's latency; `began_steady` says whether the fleet had finished
    /// enrolling when it was sent.
    pub fn heartbeat_latency(&self, latency: Duration, began_steady: bool) {
        self.latency.record(latency);
        if began_steady {
            self.steady_latency.record(latency);
        }
    }

    /// Counts one broken request and whether the server refused it as it should.
    pub fn fault(&self, kind: Fault, rejected: bool) {
        self.faults_injected[kind.index()].fetch_add(1, Ordering::Relaxed);
        if rejected {
            self.faults_rejected[kind.index()].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The final report.
    pub fn report(&self, devices: usize, elapsed: Duration) -> SimReport {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let ok = get(&self.heartbeats_ok);
        SimReport {
            devices,
            enrolled: get(&self.enrolled),
            enroll_failed: get(&self.enroll_failed),
            heartbeats_ok: ok,
            heartbeats_failed: get(&self.heartbeats_failed),
            heartbeats_per_s: if elapsed.is_zero() { 0.0 } else { ok as f64 / elapsed.as_secs_f64() },
            latency_p50_ms: self.latency.quantile_ms(0.50),
            latency_p99_ms: self.latency.quantile_ms(0.99),
            latency_max_ms: self.latency.max_ms(),
            steady_heartbeats: self.steady_latency.count(),
            steady_latency_p50_ms: self.steady_latency.quantile_ms(0.50),
            steady_latency_p99_ms: self.steady_latency.quantile_ms(0.99),
            steady_latency_max_ms: self.steady_latency.max_ms(),
            went_offline: get(&self.went_offline),
            reports_caught_up: get(&self.reports_caught_up),
            long_polls_completed: get(&self.long_polls),
            long_polls_failed: get(&self.long_polls_failed),
            last_error: self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            commands_acked: get(&self.commands_acked),
            faults: Fault::ALL
                .iter()
                .map(|f| FaultCount {
                    kind: f.as_str(),
                    injected: get(&self.faults_injected[f.index()]),
                    rejected: get(&self.faults_rejected[f.index()]),
                })
                .collect(),
            updates: UpdateCounts {
                downloads_full: get(&self.downloads_full),
                downloads_delta: get(&self.downloads_delta),
                delta_fallbacks: get(&self.delta_fallbacks),
                bytes_full: get(&self.bytes_full),
                bytes_delta: get(&self.bytes_delta),
                verify_failures: get(&self.verify_failures),
                active: get(&self.updates_active),
                failed: get(&self.updates_failed),
                time_to_active_p50_ms: self.time_to_active.quantile_ms(0.50),
                time_to_active_p99_ms: self.time_to_active.quantile_ms(0.99),
                time_to_active_max_ms: self.time_to_active.max_ms(),
            },
            elapsed_s: elapsed.as_secs_f64(),
        }
    }
}

/// Model updates of the whole fleet.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UpdateCounts {
    /// Whole packages downloaded and verified.
    pub downloads_full: u64,
    /// Packages rebuilt from a delta and verified.
    pub downloads_delta: u64,
    /// Deltas given up for the whole package.
    pub delta_fallbacks: u64,
    /// Bytes received for whole packages (every attempt).
    pub bytes_full: u64,
    /// Plan and blob bytes received for deltas (every attempt).
    pub bytes_delta: u64,
    /// Downloads or rebuilds whose bytes did not verify.
    pub verify_failures: u64,
    /// Updates that reached active.
    pub active: u64,
    /// Updates given up.
    pub failed: u64,
    /// Median time from learning of a version to running it, ms.
    pub time_to_active_p50_ms: f64,
    /// 99th percentile of that, ms.
    pub time_to_active_p99_ms: f64,
    /// Slowest, ms.
    pub time_to_active_max_ms: f64,
}

/// Faults of one kind.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultCount {
    /// Which fault.
    pub kind: &'static str,
    /// Sent.
    pub injected: u64,
    /// Refused by the server with a 4xx, as expected.
    pub rejected: u64,
}

/// What a simulation run achieved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimReport {
    /// Virtual devices started.
    pub devices: usize,
    /// Devices enrolled.
    pub enrolled: u64,
    /// Devices that could not enroll.
    pub enroll_failed: u64,
    /// Heartbeats accepted.
    pub heartbeats_ok: u64,
    /// Heartbeats that failed.
    pub heartbeats_failed: u64,
    /// Accepted heartbeats per second over the run.
    pub heartbeats_per_s: f64,
    /// Median heartbeat latency, ms.
    pub latency_p50_ms: f64,
    /// 99th percentile heartbeat latency, ms.
    pub latency_p99_ms: f64,
    /// Slowest heartbeat, ms.
    pub latency_max_ms: f64,
    /// Heartbeats sent after every device had enrolled.
    pub steady_heartbeats: u64,
    /// Median latency of those, ms.
    pub steady_latency_p50_ms: f64,
    /// 99th percentile latency of those, ms.
    pub steady_latency_p99_ms: f64,
    /// Slowest of those, ms.
    pub steady_latency_max_ms: f64,
    /// Devices that went offline for a while.
    pub went_offline: u64,
    /// Reports delivered late in batches after an offline period.
    pub reports_caught_up: u64,
    /// Desired-state long-polls answered.
    pub long_polls_completed: u64,
    /// Desired-state long-polls that failed.
    pub long_polls_failed: u64,
    /// The most recent request error, if any.
    pub last_error: Option<String>,
    /// Commands acknowledged.
    pub commands_acked: u64,
    /// Deliberately broken requests, by kind.
    pub faults: Vec<FaultCount>,
    /// Model updates.
    pub updates: UpdateCounts,
    /// Run time, seconds.
    pub elapsed_s: f64,
}

impl SimReport {
    /// Faults sent in total.
    pub fn faults_injected(&self) -> u64 {
        self.faults.iter().map(|f| f.injected).sum()
    }

    /// Faults the server refused in total.
    pub fn faults_rejected(&self) -> u64 {
        self.faults.iter().map(|f| f.rejected).sum()
    }
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "simulated fleet: {} devices for {:.1} s", self.devices, self.elapsed_s)?;
        writeln!(f, "  enrolled            {:>10}   failed {}", self.enrolled, self.enroll_failed)?;
        writeln!(f, "  heartbeats ok       {:>10}   failed {}", self.heartbeats_ok, self.heartbeats_failed)?;
        writeln!(f, "  heartbeats/s        {:>10.1}", self.heartbeats_per_s)?;
        writeln!(
            f,
            "  latency ms          {:>10}   p50 {:.1}  p99 {:.1}  max {:.1}",
            "", self.latency_p50_ms, self.latency_p99_ms, self.latency_max_ms
        )?;
        writeln!(
            f,
            "  steady-state ms     {:>10}   p50 {:.1}  p99 {:.1}  max {:.1}   ({} heartbeats after enrollment)",
            "",
            self.steady_latency_p50_ms,
            self.steady_latency_p99_ms,
            self.steady_latency_max_ms,
            self.steady_heartbeats
        )?;
        writeln!(f, "  went offline        {:>10}   reports caught up {}", self.went_offline, self.reports_caught_up)?;
        writeln!(f, "  long-polls          {:>10}   failed {}", self.long_polls_completed, self.long_polls_failed)?;
        writeln!(f, "  commands acked      {:>10}", self.commands_acked)?;
        write!(f, "  faults rejected     {:>10}   of {} injected", self.faults_rejected(), self.faults_injected())?;
        for fault in self.faults.iter().filter(|c| c.injected > 0) {
            write!(f, "\n    {:<18}{:>10}   of {}", fault.kind, fault.rejected, fault.injected)?;
        }
        let u = &self.updates;
        if u.active + u.failed + u.verify_failures > 0 {
            write!(f, "\n  updates active      {:>10}   failed {}", u.active, u.failed)?;
            write!(f, "\n  verify failures     {:>10}   deltas fell back {}", u.verify_failures, u.delta_fallbacks)?;
            write!(f, "\n  whole downloads     {:>10}   {} bytes", u.downloads_full, u.bytes_full)?;
            write!(f, "\n  delta downloads     {:>10}   {} bytes", u.downloads_delta, u.bytes_delta)?;
            write!(
                f,
                "\n  time to active ms   {:>10}   p50 {:.1}  p99 {:.1}  max {:.1}",
                "", u.time_to_active_p50_ms, u.time_to_active_p99_ms, u.time_to_active_max_ms
            )?;
        }
        if let Some(error) = &self.last_error {
            write!(f, "\n  last error: {error}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_computes_rate_and_fault_totals_and_prints_them() {
        let stats = Stats::default();
        stats.heartbeats_ok.store(100, Ordering::Relaxed);
        stats.latency.record(Duration::from_millis(4));
        stats.fault(Fault::Replay, true);
        stats.fault(Fault::Replay, false);
        stats.fault(Fault::GarbageJson, true);
        let report = stats.report(10, Duration::from_secs(20));
        assert_eq!(report.heartbeats_per_s, 5.0);
        assert_eq!((report.faults_injected(), report.faults_rejected()), (3, 2));
        let text = report.to_string();
        assert!(text.contains("10 devices") && text.contains("replay") && !text.contains("bad_signature"), "{text}");
    }

    #[test]
    fn steady_state_latency_starts_when_the_last_device_finished_enrolling() {
        let stats = Stats::default();
        stats.enrollment_done(true, 3);
        stats.heartbeat_latency(Duration::from_millis(900), stats.all_enrolled.load(Ordering::Relaxed));
        stats.enrollment_done(false, 3);
        assert!(!stats.all_enrolled.load(Ordering::Relaxed), "one device is still enrolling");
        stats.enrollment_done(true, 3);
        assert!(stats.all_enrolled.load(Ordering::Relaxed));
        stats.heartbeat_latency(Duration::from_millis(2), stats.all_enrolled.load(Ordering::Relaxed));
        let report = stats.report(3, Duration::from_secs(1));
        assert_eq!((report.enrolled, report.enroll_failed, report.steady_heartbeats), (2, 1, 1));
        assert!(report.steady_latency_max_ms < 10.0, "the ramp's 900 ms heartbeat is not steady state");
        assert!(report.latency_max_ms >= 900.0);
    }
}
