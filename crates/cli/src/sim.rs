//! `outpost sim`: a simulated fleet against a real server. Each virtual device is a light task
//! with its own key that enrolls, heartbeats, long-polls, acknowledges commands and downloads
//! the model versions assigned to it through the same client code the agent uses.

use crate::fleet::client::{parse_duration_s, Target};
use anyhow::{Context, Result};
use clap::Args;
use outpost_proto::fleet::api::{CreateEnrollmentToken, EnrollmentToken};
use outpost_proto::fleet::selector::{parse_label, Labels};
use outpost_sim::{FaultConfig, SimConfig};
use std::time::Duration;

/// Flags of `outpost sim`.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Number of virtual devices.
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Enrollment token; when absent one is created through the operator API (needs an
    /// operator token, see --token).
    #[arg(long, env = "OUTPOST_ENROLL_TOKEN", hide_env_values = true)]
    enroll_token: Option<String>,
    /// Labels for the token created when --enroll-token is absent (`key=value`, repeatable).
    #[arg(long = "label", short = 'l', value_parser = parse_label, default_values = ["simulated=true"])]
    labels: Vec<(String, String)>,
    /// Heartbeat interval: 30s, 1m...
    #[arg(long, default_value = "30s", value_parser = parse_duration_s)]
    heartbeat_interval: u64,
    /// Random spread of each interval, as a fraction (0.1 = ±10 %).
    #[arg(long, default_value_t = 0.1)]
    jitter: f64,
    /// Fraction of devices that go offline for a while and catch up afterwards.
    #[arg(long, default_value_t = 0.0)]
    offline_fraction: f64,
    /// Do not hold a desired-state long-poll per device.
    #[arg(long)]
    no_long_poll: bool,
    /// Stop after this long (e.g. 2m); runs until Ctrl-C when absent.
    #[arg(long, value_parser = parse_duration_s)]
    duration: Option<u64>,
    /// Enrollments in flight at once.
    #[arg(long, default_value_t = 64)]
    enroll_concurrency: usize,
    /// Fraction of requests sent with a forged signature (the server must refuse them).
    #[arg(long, default_value_t = 0.0)]
    fault_bad_signature: f64,
    /// Fraction of requests replayed verbatim (the server must refuse the copy).
    #[arg(long, default_value_t = 0.0)]
    fault_replay: f64,
    /// Fraction of reports sent as malformed JSON (the server must refuse them).
    #[arg(long, default_value_t = 0.0)]
    fault_garbage_json: f64,
    /// Fraction of devices whose model updates fail their self-test (rollout failures).
    #[arg(long, default_value_t = 0.0)]
    fault_update_failure: f64,
    /// Fraction of devices whose input data drifts (a sensor gain change): their drift windows
    /// reach the alert level.
    #[arg(long, default_value_t = 0.0)]
    fault_drift: f64,
    /// Fraction of devices whose error rate (20 %) and latency (× 2) climb under --regress-version.
    #[arg(long, default_value_t = 0.0, requires = "regress_version")]
    fault_regress: f64,
    /// The version that regresses on the --fault-regress devices.
    #[arg(long)]
    regress_version: Option<String>,
    /// A version whose answers agree with the serving version on only 80 % of shadowed requests.
    #[arg(long)]
    disagree_version: Option<String>,
    /// Directory for the packages the devices download and verify (one copy per distinct
    /// package) [default: a temporary directory, removed at the end].
    #[arg(long)]
    package_dir: Option<std::path::PathBuf>,
    /// Tokio worker threads [default: number of cores].
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    target: Target,
}

/// Runs the simulator until the duration passes or Ctrl-C.
pub fn run(args: SimArgs) -> Result<()> {
    let api = args.target.connect()?;
    let token = match &args.enroll_token {
        Some(t) => t.clone(),
        None => {
            let labels: Labels = args.labels.iter().cloned().collect();
            let req = CreateEnrollmentToken {
                uses: u32::try_from(args.devices).context("--devices is too large")?,
                expires_in_s: 86_400,
                labels,
                note: format!("outpost sim --devices {}", args.devices),
            };
            let created: EnrollmentToken = api
                .send("POST", "/v1/enrollment-tokens", Some(&req))
                .context("creating an enrollment token for the simulated fleet (or pass --enroll-token)")?;
            created.secret.context("the server returned no token secret")?
        }
    };
    let config = SimConfig {
        server: api.base().to_string(),
        devices: args.devices,
        enroll_token: token,
        heartbeat_interval: Duration::from_secs(args.heartbeat_interval.max(1)),
        jitter: args.jitter,
        offline_fraction: args.offline_fraction,
        long_poll: !args.no_long_poll,
        duration: args.duration.map(Duration::from_secs),
        enroll_concurrency: args.enroll_concurrency.max(1),
        faults: FaultConfig {
            bad_signature: args.fault_bad_signature,
            replay: args.fault_replay,
            garbage_json: args.fault_garbage_json,
        },
        package_dir: args.package_dir.clone(),
        quality: outpost_sim::quality::QualityFaults {
            update_failure: args.fault_update_failure,
            regress: args.fault_regress,
            regress_version: args.regress_version.clone(),
            disagree_version: args.disagree_version.clone(),
            drift: args.fault_drift,
            ..Default::default()
        },
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.enable_all().build().context("starting the async runtime")?;
    let report = rt.block_on(outpost_sim::run(config, crate::agent::shutdown_signal()))?;
    if api.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}
