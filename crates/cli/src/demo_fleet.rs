//! The control-plane half of `outpost demo`: a server on the embedded defaults, real agents that
//! enroll with a token and report, a simulated fleet beside them, a model registry entry assigned
//! by label selector, and a remote command acknowledged by a real agent.

use crate::fleet::client::{table, Api};
use anyhow::{bail, Context, Result};
use outpost_agent::{Agent, AgentConfig};
use outpost_proto::fleet::api::{
    Assignment, Command, CreateAssignment, CreateCommand, CreateEnrollmentToken, Device, EnrollmentToken, FleetSummary,
    ModelVersion, Page,
};
use outpost_proto::fleet::device::{CommandKind, DesiredState};
use outpost_server::{Server, ServerConfig};
use outpost_sim::quality::QualityFaults;
use outpost_sim::{FaultConfig, SimConfig, SimReport};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Label of the real demo agents.
pub const AGENT_SELECTOR: &str = "site=demo-lab";
/// The real agents and the simulated fleet together.
pub const FLEET_SELECTOR: &str = "site in (demo-lab|sim-plant)";
/// The version whose shadow answers disagree on the simulated devices.
pub const SIM_DISAGREES: &str = "3";
/// The version whose error rate and latency climb on part of the simulated fleet.
pub const SIM_REGRESSES: &str = "4";
/// The share of the simulated fleet on which it climbs.
pub const SIM_REGRESS_SHARE: f64 = 0.3;

/// The simulator task and the switch that stops it.
type RunningSim = (oneshot::Sender<()>, JoinHandle<Result<SimReport, outpost_sim::SimError>>);

/// Everything the demo started on the control-plane side.
pub struct DemoFleet {
    server: Server,
    /// Operator API client holding the bootstrap admin token.
    pub api: Api,
    /// The real agents, enrolled.
    pub agents: Vec<Agent>,
    device_ids: Vec<String>,
    sim: Option<RunningSim>,
    /// Where the bootstrap admin token is.
    pub token_path: PathBuf,
    /// Turns the simulated devices' sensor drift on (off at the start).
    pub sim_drift: outpost_sim::quality::Switch,
    /// The MQTT broker the agents export to, when one answers.
    pub mqtt: Option<String>,
}

pub(crate) fn enrollment_token(api: &Api, uses: usize, labels: &[(&str, &str)], note: &str) -> Result<String> {
    let req = CreateEnrollmentToken {
        uses: uses as u32,
        expires_in_s: 3600,
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        note: note.into(),
    };
    let token: EnrollmentToken = api.send("POST", "/v1/enrollment-tokens", Some(&req))?;
    token.secret.context("the server returned no token secret")
}

/// Starts the server, enrolls `agents` real agents (each with its own, empty model directory,
/// trusting the TUF root `tuf_root`), and a simulated fleet.
pub fn start(
    rt: &Runtime,
    root: &Path,
    tuf_root: &Path,
    agents: usize,
    simulated: usize,
    mqtt: Option<String>,
) -> Result<DemoFleet> {
    let data_dir = root.join("server");
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse()?,
        data_dir: data_dir.clone(),
        heartbeat_interval_s: 5,
        stale_after_s: 20,
        offline_after_s: 60,
        // Rollouts in the demo bake for seconds; the engine looks every second.
        rollout_tick_ms: 1000,
        ..ServerConfig::default()
    };
    let server = rt.block_on(Server::start(config)).context("starting the control-plane server")?;
    let base = format!("http://{}", server.addr);
    let token_path = data_dir.join("admin.token");
    let admin = std::fs::read_to_string(&token_path)
        .with_context(|| format!("reading the bootstrap admin token {}", token_path.display()))?;
    let api = Api::new(&base, Some(admin.trim().to_string()));
    println!(
        "   server {base} on SQLite {} (admin token in {})",
        data_dir.join("outpost.db").display(),
        token_path.display()
    );

    let secret = enrollment_token(&api, agents, &[("site", "demo-lab"), ("line", "1")], "outpost demo agents")?;
    let mut started = Vec::new();
    for i in 0..agents {
        let model_dir = root.join(format!("agent-{i}/models"));
        std::fs::create_dir_all(&model_dir).with_context(|| format!("creating {}", model_dir.display()))?;
        let config = AgentConfig {
            listen: "127.0.0.1:0".parse()?,
            model_dir,
            data_dir: root.join(format!("agent-{i}/data")),
            tuf_root: Some(tuf_root.to_path_buf()),
            probation_s: 10,
            server: Some(base.clone()),
            enroll_token: Some(secret.clone()),
            device_name: Some(format!("demo-agent-{i}")),
            export: crate::demo_drift::export_config(mqtt.as_deref()),
            drift: crate::demo_drift::drift_config(),
            ..AgentConfig::default()
        };
        started.push(rt.block_on(Agent::start(config)).with_context(|| format!("starting demo agent {i}"))?);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let device_ids = loop {
        let ids: Vec<String> = started.iter().filter_map(|a| a.control().and_then(|c| c.device_id())).collect();
        if ids.len() == agents {
            break ids;
        }
        if Instant::now() > deadline {
            bail!("the demo agents did not enroll within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for (agent, id) in started.iter().zip(&device_ids) {
        println!("   agent http://{} enrolled as device {id} (Ed25519 key made on first start, mode 0600)", agent.addr);
    }

    let sim_drift = outpost_sim::quality::Switch::new(false);
    let sim = if simulated > 0 {
        let token =
            enrollment_token(&api, simulated, &[("site", "sim-plant"), ("simulated", "true")], "outpost demo sim")?;
        let config = SimConfig {
            server: base.clone(),
            devices: simulated,
            enroll_token: token,
            heartbeat_interval: Duration::from_secs(3),
            jitter: 0.2,
            offline_fraction: 0.1,
            long_poll: true,
            duration: None,
            enroll_concurrency: 16,
            faults: FaultConfig::default(),
            quality: QualityFaults {
                regress: SIM_REGRESS_SHARE,
                regress_version: Some(SIM_REGRESSES.into()),
                disagree_version: Some(SIM_DISAGREES.into()),
                drift: crate::demo_drift::SIM_DRIFT_SHARE,
                drift_on: sim_drift.clone(),
                ..QualityFaults::default()
            },
            package_dir: None,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = rt.spawn(outpost_sim::run(config, async move {
            let _ = stopped.await;
        }));
        println!(
            "   simulated fleet: {simulated} virtual devices (site=sim-plant; 10 % of them drop offline for a while; \
             faults for the rollouts: v{SIM_DISAGREES} disagrees in shadow, v{SIM_REGRESSES} regresses on {:.0} % of them)",
            SIM_REGRESS_SHARE * 100.0
        );
        Some((stop, handle))
    } else {
        None
    };
    Ok(DemoFleet { server, api, agents: started, device_ids, sim, token_path, sim_drift, mqtt })
}

impl DemoFleet {
    /// Publishes the package in the registry and the TUF repository (targets signed with the
    /// operator's key in `keys`).
    pub fn publish(&self, package: &Path, keys: &Path) -> Result<ModelVersion> {
        let (_, published): (u16, ModelVersion) = self.api.upload("/v1/model-packages", package)?;
        let pkg = published.package.clone().context("the server recorded no package")?;
        let targets = crate::fleet::models::sign_into_repository(&self.api, keys, &published, &pkg)?;
        println!(
            "   published {}@{}: {} bytes, sha256 {}…; TUF {targets} signed with the operator's key",
            published.name,
            published.version,
            pkg.size_bytes,
            &pkg.sha256[..12]
        );
        Ok(published)
    }

    /// Publishes the package and assigns it to the devices `selector` matches.
    pub fn publish_and_assign(&self, package: &Path, keys: &Path, selector: &str) -> Result<ModelVersion> {
        let published = self.publish(package, keys)?;
        let model: outpost_proto::ModelName = published.name.parse()?;
        let version: outpost_proto::Version = published.version.parse()?;
        let assignment: Assignment = self.api.send(
            "POST",
            "/v1/assignments",
            Some(&CreateAssignment { selector: selector.into(), model, version }),
        )?;
        println!(
            "   assignment #{} runs {}@{} on `{}`",
            assignment.id, published.name, published.version, assignment.selector
        );
        let desired: DesiredState = self.api.get(&format!("/v1/devices/{}/desired-state", self.device_ids[0]))?;
        let models: Vec<String> =
            desired.models.iter().map(|m| format!("{}@{} ({})", m.name, m.version, m.source)).collect();
        println!("   desired state of {}: etag {}, models [{}]", self.device_ids[0], desired.etag, models.join(", "));
        Ok(published)
    }

    /// Waits until every real agent serves `name@version`.
    pub fn wait_serving(&self, name: &str, version: &str, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        while !self.agents.iter().all(|a| a.state.store.get(name).is_some_and(|m| m.version() == version)) {
            if Instant::now() > deadline {
                // What each serves, and why it refused the version if it did: a rollback's reason.
                let seen: Vec<String> = self
                    .agents
                    .iter()
                    .map(|a| {
                        let serving = a.state.store.get(name).map(|m| m.version().to_string());
                        let blocked = a
                            .state
                            .store
                            .blocked()
                            .remove(name)
                            .map(|b| format!(", refused {}: {}", b.version, b.reason));
                        format!("{:?}{}", serving, blocked.unwrap_or_default())
                    })
                    .collect();
                bail!("the agents do not serve {name}@{version} after {} s: {}", within.as_secs(), seen.join("; "));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// The real agents' device ids.
    pub fn device_ids(&self) -> &[String] {
        &self.device_ids
    }

    /// The first agent's report of `name`, as the server shows it.
    pub fn reported(&self, name: &str) -> Result<Option<outpost_proto::fleet::device::ModelReport>> {
        let device: Device = self.api.get(&format!("/v1/devices/{}", self.device_ids[0]))?;
        Ok(device.models.into_iter().find(|m| m.name == name))
    }

    /// The first real agent's inference API base URL.
    pub fn agent_url(&self) -> String {
        format!("http://{}", self.agents[0].addr)
    }

    /// Sends `reverify_models` to the first agent and waits for its acknowledgement.
    pub fn command_round_trip(&self) -> Result<()> {
        let id = &self.device_ids[0];
        let cmd = CreateCommand { kind: CommandKind::ReverifyModels, args: serde_json::json!({}) };
        let sent_at = Instant::now();
        let created: Command = self.api.send("POST", &format!("/v1/devices/{id}/commands"), Some(&cmd))?;
        let deadline = sent_at + Duration::from_secs(30);
        loop {
            let page: Page<Command> = self.api.get(&format!("/v1/devices/{id}/commands?limit=10"))?;
            if let Some(c) = page.items.into_iter().find(|c| c.id == created.id && c.acked_ms.is_some()) {
                println!(
                    "   command #{} reverify_models → {} in {} ms: {}",
                    c.id,
                    c.status.as_str(),
                    sent_at.elapsed().as_millis(),
                    serde_json::to_string(&c.result)?.chars().take(160).collect::<String>()
                );
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("device {id} did not acknowledge command #{} within 30 s", created.id);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Prints the fleet summary and the real agents as `outpost fleet summary` and
    /// `outpost device list` would.
    pub fn print_summary(&self, simulated: usize) -> Result<()> {
        // Wait (briefly) for the simulated fleet to finish enrolling and for the first agent's next
        // heartbeat, which carries the request counts and latencies of the stream above.
        let expected = (self.agents.len() + simulated) as u64;
        let deadline = Instant::now() + Duration::from_secs(15);
        let s = loop {
            let s: FleetSummary = self.api.get("/v1/fleet/summary")?;
            let first: Device = self.api.get(&format!("/v1/devices/{}", self.device_ids[0]))?;
            let reported = first.models.iter().any(|m| m.requests > 0);
            if (s.devices >= expected && reported) || Instant::now() > deadline {
                break s;
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        let counts = |c: &outpost_proto::fleet::api::Counts| {
            c.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
        };
        println!("   fleet: {} devices; status: {}; health: {}", s.devices, counts(&s.by_status), counts(&s.by_health));
        println!("   models served: {}", counts(&s.by_model_version));
        let page: Page<Device> =
            self.api.get(&format!("/v1/devices?selector={}", crate::fleet::client::encode(AGENT_SELECTOR)))?;
        let rows: Vec<Vec<String>> = page
            .items
            .iter()
            .map(|d| {
                vec![
                    d.id.clone(),
                    d.name.clone(),
                    d.status.as_str().into(),
                    d.models
                        .iter()
                        .map(|m| format!("{}@{} {} req p99 {:.2} ms", m.name, m.version, m.requests, m.latency_p99_ms))
                        .collect::<Vec<_>>()
                        .join(","),
                ]
            })
            .collect();
        table(&["id", "name", "status", "models"], &rows);
        Ok(())
    }

    /// Where to look while the demo keeps running.
    pub fn print_where_to_look(&self) {
        let base = self.api.base();
        let token = self.token_path.display();
        println!("   control plane  {base}  (OpenAPI: {base}/openapi.json, metrics: {base}/metrics)");
        println!("   agent API      {}/v2/models", self.agent_url());
        println!("   try:           outpost device list --server {base} --token $(cat {token})");
        println!("                  outpost fleet summary --server {base} --token $(cat {token})");
        println!(
            "                  outpost device command {} collect_logs --wait 10 --server {base} --token $(cat {token})",
            self.device_ids[0]
        );
    }

    /// Stops the simulator, the agents and the server.
    pub fn shutdown(self, rt: &Runtime) -> Result<()> {
        if let Some((stop, handle)) = self.sim {
            let _ = stop.send(());
            match rt.block_on(handle) {
                Ok(Ok(report)) => println!("   simulator: {}", report.to_string().lines().next().unwrap_or_default()),
                Ok(Err(e)) => println!("   simulator stopped with an error: {e}"),
                Err(e) => println!("   simulator task failed: {e}"),
            }
        }
        for agent in self.agents {
            rt.block_on(agent.shutdown())?;
        }
        rt.block_on(self.server.shutdown())?;
        Ok(())
    }
}
