//! `outpost agent`: configuration from file, `OUTPOST_*` environment and flags (in rising
//! precedence), then serve until Ctrl-C or SIGTERM.

use anyhow::{Context, Result};
use clap::Args;
use outpost_agent::{Agent, AgentConfig};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Flags of `outpost agent`; each overrides the config file.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// TOML configuration file.
    #[arg(long, short, env = "OUTPOST_CONFIG")]
    config: Option<PathBuf>,
    /// Address of the local inference API [default: 127.0.0.1:8000].
    #[arg(long, env = "OUTPOST_LISTEN")]
    listen: Option<SocketAddr>,
    /// Model directory [default: models].
    #[arg(long, env = "OUTPOST_MODEL_DIR")]
    model_dir: Option<PathBuf>,
    /// Memory budget for all models, in MB [default: 512].
    #[arg(long, env = "OUTPOST_MEMORY_BUDGET_MB")]
    memory_budget_mb: Option<u64>,
    /// Sessions per model [default: 1].
    #[arg(long, env = "OUTPOST_SESSIONS")]
    sessions: Option<usize>,
    /// Waiting requests per model before 429 [default: 64].
    #[arg(long, env = "OUTPOST_QUEUE_CAPACITY")]
    queue_capacity: Option<usize>,
    /// Intra-op threads per inference [default: 1].
    #[arg(long, env = "OUTPOST_THREADS")]
    threads: Option<usize>,
    /// tract: plans specialised to one request shape kept per dynamic model; 0 turns them off [default: 4].
    #[arg(long, env = "OUTPOST_SHAPE_PLANS")]
    shape_plans: Option<usize>,
    /// Largest request body in bytes [default: 67108864].
    #[arg(long, env = "OUTPOST_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// Bytes of request bodies held at once across all requests [default: 67108864].
    #[arg(long, env = "OUTPOST_MAX_INFLIGHT_BODY_BYTES")]
    max_inflight_body_bytes: Option<usize>,
    /// Force a backend for every model: tract or onnxruntime.
    #[arg(long, env = "OUTPOST_BACKEND")]
    backend: Option<String>,
    /// Path of libonnxruntime.so.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    ort_library: Option<PathBuf>,
    /// Model directory rescan interval in milliseconds [default: 1000].
    #[arg(long, env = "OUTPOST_POLL_INTERVAL_MS")]
    poll_interval_ms: Option<u64>,
    /// For `backend = "auto"` manifests, time both backends at load and keep the faster.
    #[arg(long, env = "OUTPOST_MEASURE_BACKENDS")]
    measure_backends: bool,
    /// Skip the golden self-test at load.
    #[arg(long)]
    no_selftest: bool,
    /// Control-plane server URL; absent: run standalone.
    #[arg(long, env = "OUTPOST_SERVER")]
    server: Option<String>,
    /// One-time enrollment token (needed until the device is enrolled).
    #[arg(long, env = "OUTPOST_ENROLL_TOKEN", hide_env_values = true)]
    enroll_token: Option<String>,
    /// Directory for the device key, enrollment record and report outbox [default: outpost-agent-data].
    #[arg(long, env = "OUTPOST_AGENT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The TUF root this device trusts (`outpost keys init` writes it as `1.root.json`): every
    /// package is then checked against the server's signed TUF metadata before it is fetched.
    #[arg(long, env = "OUTPOST_TUF_ROOT")]
    tuf_root: Option<PathBuf>,
    /// Seconds a newly activated version is watched before it is trusted [default: 60].
    #[arg(long, env = "OUTPOST_PROBATION_S")]
    probation_s: Option<u64>,
    /// Older versions of each model kept on disk once a new one passed probation [default: 2].
    #[arg(long, env = "OUTPOST_KEEP_VERSIONS")]
    keep_versions: Option<usize>,
    /// MiB those kept older versions of one model may take [default: 1024].
    #[arg(long, env = "OUTPOST_PACKAGE_BUDGET_MB")]
    package_budget_mb: Option<u64>,
    /// Share of one core (0..1) each shadow candidate may use [default: 0.25].
    #[arg(long, env = "OUTPOST_SHADOW_CPU_SHARE")]
    shadow_cpu_share: Option<f64>,
    /// Name in the fleet inventory [default: host name].
    #[arg(long, env = "OUTPOST_DEVICE_NAME")]
    device_name: Option<String>,
    /// Tokio worker threads for HTTP (inference runs on its own threads) [default: 1].
    #[arg(long, env = "OUTPOST_HTTP_THREADS", default_value_t = 1)]
    http_threads: usize,
}

impl AgentArgs {
    /// Merges file, environment and flags into one configuration.
    pub fn config(&self) -> Result<AgentConfig> {
        let mut c = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                AgentConfig::from_toml(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => AgentConfig::default(),
        };
        macro_rules! set {
            ($($f:ident),*) => {$( if let Some(v) = &self.$f { c.$f = v.clone(); } )*};
        }
        set!(
            listen,
            model_dir,
            memory_budget_mb,
            sessions,
            queue_capacity,
            threads,
            shape_plans,
            max_body_bytes,
            max_inflight_body_bytes,
            poll_interval_ms,
            data_dir,
            probation_s,
            keep_versions,
            package_budget_mb,
            shadow_cpu_share
        );
        if self.tuf_root.is_some() {
            c.tuf_root = self.tuf_root.clone();
        }
        for (flag, field) in [
            (&self.server, &mut c.server),
            (&self.enroll_token, &mut c.enroll_token),
            (&self.device_name, &mut c.device_name),
        ] {
            if flag.is_some() {
                *field = flag.clone();
            }
        }
        if self.backend.is_some() {
            c.backend = self.backend.clone();
        }
        if self.ort_library.is_some() {
            c.ort_library = self.ort_library.clone();
        }
        if self.measure_backends {
            c.measure_backends = true;
        }
        if self.no_selftest {
            c.selftest = false;
        }
        Ok(c)
    }
}

/// Runs the agent until interrupted.
pub fn run(args: AgentArgs) -> Result<()> {
    let config = args.config()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.http_threads.max(1))
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let agent = Agent::start(config).await?;
        println!("outpost agent listening on http://{}", agent.addr);
        let stop = agent.shutdown_handle();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down; finishing in-flight requests");
            let _ = stop.send(true);
        });
        agent.wait().await?;
        Ok(())
    })
}

pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return drop(ctrl_c.await),
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
