//! outpost-sim: a fleet simulator. Many light virtual agents speak the real device protocol to
//! a real server, so the control plane can be load-tested and its security checks exercised
//! without thousands of boxes.
//!
//! Each virtual device is one tokio task with its own Ed25519 key, driving the same
//! `DeviceClient` the agent uses: it enrolls, heartbeats with plausible state reports,
//! long-polls its desired state and acknowledges commands. When the desired state names a model
//! version the device does not hold, it downloads it for real as the agent would (the whole
//! package, or a delta from the version it runs), verifies it and reports each step until the
//! version is active (the `update` module says how). Some devices go offline and catch up
//! through the batch report endpoint; some requests are deliberately broken (forged signature,
//! replay, malformed JSON) and the simulator counts whether the server refused them. All devices
//! share one HTTP client and connection pool, and their starts are spread over the first
//! heartbeat interval, so 10,000 devices fit in one process.
//!
//! The simulator never fakes the server side: every number in the [`SimReport`] is a real
//! request's outcome.

mod cache;
mod device;
pub mod histogram;
pub mod quality;
mod stats;
pub mod synthetic;
mod update;

pub use stats::{FaultCount, SimReport, UpdateCounts};

use device::Shared;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};

/// Probabilities of deliberately broken requests, per heartbeat.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultConfig {
    /// Heartbeats sent with a signature that does not match the body.
    pub bad_signature: f64,
    /// Heartbeats sent twice byte for byte (the copy must be refused).
    pub replay: f64,
    /// Heartbeats whose correctly signed body is truncated JSON.
    pub garbage_json: f64,
}

/// Simulation parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Server base URL, e.g. `http://127.0.0.1:8700`.
    pub server: String,
    /// Virtual devices to run.
    pub devices: usize,
    /// Enrollment token with at least `devices` uses.
    pub enroll_token: String,
    /// Heartbeat interval of every device.
    pub heartbeat_interval: Duration,
    /// Random spread of each interval (0.1 = ±10 %).
    pub jitter: f64,
    /// Fraction of devices that go offline for a while and catch up afterwards.
    pub offline_fraction: f64,
    /// Hold a desired-state long-poll per device.
    pub long_poll: bool,
    /// Stop after this long; run until `stop` when absent.
    pub duration: Option<Duration>,
    /// Enrollments in flight at once.
    pub enroll_concurrency: usize,
    /// Broken requests to send.
    pub faults: FaultConfig,
    /// How models misbehave on part of the fleet (rollout tests).
    pub quality: quality::QualityFaults,
    /// Where verified packages are kept, one copy per distinct package for the whole fleet;
    /// a temporary directory removed at the end when absent.
    pub package_dir: Option<PathBuf>,
}

/// Why the simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A parameter is out of range.
    #[error("invalid simulation parameter: {0}")]
    Config(String),
    /// The shared HTTP client cannot be built.
    #[error(transparent)]
    Client(#[from] outpost_agent::control::client::ClientError),
    /// The directory for verified packages cannot be made.
    #[error("cannot create the simulator's package directory: {0}")]
    PackageDir(#[source] std::io::Error),
}

fn validate(config: &SimConfig) -> Result<(), SimError> {
    let fraction = |name: &str, v: f64| {
        if (0.0..=1.0).contains(&v) {
            Ok(())
        } else {
            Err(SimError::Config(format!("{name} must be between 0 and 1, got {v}")))
        }
    };
    if config.devices == 0 {
        return Err(SimError::Config("devices must be at least 1".into()));
    }
    if config.heartbeat_interval.is_zero() {
        return Err(SimError::Config("heartbeat_interval must be positive".into()));
    }
    if !config.server.starts_with("http://") && !config.server.starts_with("https://") {
        return Err(SimError::Config(format!("server must be an http(s) URL, got {:?}", config.server)));
    }
    fraction("jitter", config.jitter)?;
    fraction("offline_fraction", config.offline_fraction)?;
    fraction("faults.bad_signature", config.faults.bad_signature)?;
    fraction("faults.replay", config.faults.replay)?;
    fraction("faults.garbage_json", config.faults.garbage_json)?;
    fraction("quality.update_failure", config.quality.update_failure)?;
    fraction("quality.regress", config.quality.regress)?;
    fraction("quality.drift", config.quality.drift)
}

/// Raises the open-file limit to its hard maximum: each virtual device holds up to two
/// connections. Returns the limit now in force.
fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit read and write a struct we own.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur as u64;
            }
        }
        limit.rlim_cur as u64
    }
}

/// Runs the simulated fleet until `config.duration` passes or `stop` completes, then reports.
pub async fn run(config: SimConfig, stop: impl Future<Output = ()>) -> Result<SimReport, SimError> {
    validate(&config)?;
    let fds = raise_fd_limit();
    let needed = config.devices as u64 * if config.long_poll { 2 } else { 1 } + 64;
    if fds != 0 && fds < needed {
        tracing::warn!(
            open_file_limit = fds,
            needed,
            "the open-file limit is below what this many devices need; raise it (ulimit -n) or expect connection errors"
        );
    }
    let http = outpost_agent::control::client::http_client(config.devices.saturating_mul(2) + 16)?;
    let cache = cache::PackageCache::new(config.package_dir.as_deref()).map_err(SimError::PackageDir)?;
    // Rebuilds are CPU work on blocking threads; more at once than cores only adds threads.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let shared = Arc::new(Shared {
        cache,
        rebuild_gate: Semaphore::new(cores),
        enroll_gate: Semaphore::new(config.enroll_concurrency.max(1)),
        config: config.clone(),
        http,
        stats: stats::Stats::default(),
        started: Instant::now(),
    });
    let (halt, halted) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..config.devices {
        tasks.spawn(device::run(index, shared.clone(), halted.clone()));
    }
    tracing::info!(devices = config.devices, server = %config.server, "simulated fleet started");
    let until = async {
        match config.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = stop => {}
        _ = until => {}
    }
    let elapsed = shared.started.elapsed();
    let _ = halt.send(true);
    // Devices stop at their next await point; give in-flight requests a moment, then cut.
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain).await.is_err() {
        tasks.abort_all();
    }
    Ok(shared.stats.report(config.devices, elapsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SimConfig {
        SimConfig {
            server: "http://127.0.0.1:1".into(),
            devices: 1,
            enroll_token: "oet_x".into(),
            heartbeat_interval: Duration::from_secs(1),
            jitter: 0.1,
            offline_fraction: 0.0,
            long_poll: true,
            duration: Some(Duration::from_millis(200)),
            enroll_concurrency: 4,
            faults: FaultConfig::default(),
            quality: quality::QualityFaults::default(),
            package_dir: None,
        }
    }

    #[test]
    fn out_of_range_parameters_are_refused_by_name() {
        let mut c = config();
        c.faults.replay = 1.5;
        assert!(validate(&c).unwrap_err().to_string().contains("faults.replay"));
        let mut c = config();
        c.devices = 0;
        assert!(validate(&c).is_err());
        let mut c = config();
        c.server = "127.0.0.1:8700".into();
        assert!(validate(&c).unwrap_err().to_string().contains("http"));
        assert!(validate(&config()).is_ok());
    }

    #[tokio::test]
    async fn an_unreachable_server_yields_a_report_with_no_enrollments() {
        let report = run(config(), std::future::pending()).await.unwrap();
        assert_eq!((report.devices, report.enrolled, report.heartbeats_ok), (1, 0, 0));
    }
}
