//! Staged rollouts in `outpost demo`, over the real agents and the simulated fleet together,
//! while clients keep sending requests to the agents:
//!
//! - v2, a refit on 10 % more data, goes out in waves (1 %, 10 %, 50 %, 100 %) with error-rate
//!   and latency gates, each device fetching it as a delta from v1, and completes;
//! - v3, recalibrated with a much lower alarm threshold, runs as a shadow rollout beside v2 on
//!   every device (the agents compare it with v2 on their live requests): its decisions
//!   disagree with v2's, the `shadow_agreement` gate stops it, and no device ever served it;
//! - v4's error rate climbs on part of the fleet (the simulator's fault option): the error-rate
//!   gate stops it and the devices that took it return to v2 by themselves.

use crate::demo_delivery::{egress, package};
use crate::demo_fleet::{DemoFleet, FLEET_SELECTOR, SIM_REGRESS_SHARE};
use anyhow::{bail, ensure, Context, Result};
use outpost_proto::fleet::api::FleetSummary;
use outpost_proto::fleet::rollout::{GateReading, Rollout, RolloutDevice, RolloutState, Verdict, WavePhase};
use outpost_proto::manifest::PostProcess;
use outpost_train::TrainedModel;
use std::path::Path;
use std::time::{Duration, Instant};

/// How far v3's alarm threshold is moved (a recalibration on the wrong data).
const V3_THRESHOLD_SCALE: f32 = 0.4;
/// Bake of each wave: seconds in the demo, minutes in production.
const BAKE_S: u64 = 8;

/// `trained` with its alarm threshold scaled: the same scores, other decisions.
fn recalibrated(trained: &TrainedModel, scale: f32) -> TrainedModel {
    let mut out = trained.clone();
    if let Some(PostProcess::Anomaly(post)) = &mut out.manifest.post {
        post.threshold *= scale;
    }
    out
}

fn spec(model: &str, version: &str, gates: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "model": model, "version": version, "selector": FLEET_SELECTOR,
        "waves": [1, 10, 50, 100], "bake_s": BAKE_S, "gates": gates,
        "max_failures": 2, "min_samples": 100, "wave_deadline_s": 120,
    })
}

/// Which waves held the real agents.
fn agent_waves(fleet: &DemoFleet, id: i64) -> Result<String> {
    let devices: Vec<RolloutDevice> = fleet.api.get(&format!("/v1/rollouts/{id}/devices"))?;
    let waves: Vec<String> = fleet
        .device_ids()
        .iter()
        .map(|agent| match devices.iter().find(|d| &d.device_id == agent) {
            Some(d) => format!("{agent} in wave {}", d.wave + 1),
            None => format!("{agent} in none"),
        })
        .collect();
    Ok(waves.join(", "))
}

fn gate_text(g: &GateReading) -> String {
    let fmt = |v: Option<f64>| match v {
        None => "-".to_string(),
        Some(v) if g.gate.contains("latency") => format!("{v:.2} ms"),
        Some(v) => format!("{:.2} %", v * 100.0),
    };
    let verdict = match g.verdict {
        Verdict::Pass => "pass",
        Verdict::Fail => "FAIL",
        Verdict::Waiting => "waiting",
    };
    format!("{} {} (limit {}) {verdict}", g.gate, fmt(g.value), fmt(g.limit))
}

/// Creates a rollout and follows it to its end, printing each wave as it moves.
fn follow(fleet: &DemoFleet, body: serde_json::Value) -> Result<Rollout> {
    let created: Rollout = fleet.api.send("POST", "/v1/rollouts", Some(&body))?;
    let started = Instant::now();
    println!(
        "   rollout #{} of {}@{} over `{}`: waves {:?} %, bake {} s, gates [{}]",
        created.id,
        created.spec.model,
        created.spec.version,
        created.spec.selector,
        created.spec.waves,
        created.spec.bake_s,
        created.spec.gates.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(", ")
    );
    let mut seen: Vec<WavePhase> = Vec::new();
    let deadline = started + Duration::from_secs(600);
    loop {
        let r: Rollout = fleet.api.get(&format!("/v1/rollouts/{}", created.id))?;
        for w in &r.waves {
            // A wave's devices join on the tick after it starts: no line for it before.
            if seen.get(w.index) == Some(&w.phase) || w.phase == WavePhase::Waiting || w.devices == 0 {
                continue;
            }
            let states: Vec<String> = w.by_state.iter().map(|(k, n)| format!("{n} {k}")).collect();
            let gates: Vec<String> = w.gates.iter().map(gate_text).collect();
            let phase = format!("{:?}", w.phase).to_lowercase();
            println!(
                "   [{:>5.1} s] wave {}/{} ({} %, {} devices) {phase}: {}{}",
                started.elapsed().as_secs_f64(),
                w.index + 1,
                r.waves.len(),
                w.percent,
                w.devices,
                states.join(", "),
                if gates.is_empty() || w.phase == WavePhase::Updating {
                    String::new()
                } else {
                    format!("; {}", gates.join("; "))
                }
            );
            seen.resize(seen.len().max(w.index + 1), WavePhase::Waiting);
            seen[w.index] = w.phase;
        }
        if !r.state.is_active() {
            println!("   [{:>5.1} s] {}: {}", started.elapsed().as_secs_f64(), r.state.as_str(), r.reason);
            return Ok(r);
        }
        if r.state == RolloutState::Paused {
            bail!("rollout #{} paused: {}", r.id, r.reason);
        }
        if Instant::now() > deadline {
            bail!("rollout #{} did not finish within 10 minutes: {}", r.id, r.reason);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Devices per version of `name`, as the fleet summary counts them.
fn versions(fleet: &DemoFleet, name: &str) -> Result<Vec<(String, u64)>> {
    let s: FleetSummary = fleet.api.get("/v1/fleet/summary")?;
    let prefix = format!("{name}@");
    Ok(s.by_model_version
        .into_iter()
        .filter_map(|(k, n)| k.strip_prefix(&prefix).map(|v| (v.to_string(), n)))
        .collect())
}

fn versions_text(v: &[(String, u64)]) -> String {
    v.iter().map(|(v, n)| format!("v{v} on {n}")).collect::<Vec<_>>().join(", ")
}

/// Runs the three rollouts; `v2` is the refit that becomes the fleet's version.
pub fn run(fleet: &DemoFleet, v2: &TrainedModel, root: &Path, keys: &Path) -> Result<()> {
    let build = root.join("build");
    let name = v2.manifest.model.name.clone();

    println!("   -- v2: a refit on 10 % more data, in waves, every device fetching a delta from v1");
    let (path, _) = package(v2, "2", &build)?;
    let size = fleet.publish(&path, keys)?.package.map(|p| p.size_bytes).unwrap_or_default();
    let before = egress(fleet)?;
    let r = follow(fleet, spec(&name, "2", &["error_rate<1%", "p99_latency<1.5x"]))?;
    ensure!(r.state == RolloutState::Completed, "the v2 rollout ended {}: {}", r.state.as_str(), r.reason);
    println!("   the real agents took part: {}", agent_waves(fleet, r.id)?);
    fleet.wait_serving(&name, "2", Duration::from_secs(60))?;
    let after = egress(fleet)?;
    let devices: u64 = r.waves.iter().map(|w| w.devices).sum();
    let (whole, delta) = (after.0 - before.0, after.1 - before.1);
    println!(
        "   v2 on {devices} devices: the server sent {} bytes ({delta} as deltas from v1, {whole} as whole packages), \
         {:.0} % of {devices} whole {size}-byte packages",
        whole + delta,
        100.0 * (whole + delta) as f64 / (size * devices.max(1)).max(1) as f64
    );

    println!(
        "   -- v3: the alarm threshold recalibrated to {:.0} % of v2's; a shadow rollout: every device runs it \
         beside v2 on 10 % of its requests and answers with v2",
        V3_THRESHOLD_SCALE * 100.0
    );
    let (path, _) = package(&recalibrated(v2, V3_THRESHOLD_SCALE), "3", &build)?;
    fleet.publish(&path, keys)?;
    let mut shadow = spec(&name, "3", &["shadow_agreement>97%"]);
    shadow["shadow"] = true.into();
    shadow["waves"] = serde_json::json!([100]);
    let r = follow(fleet, shadow)?;
    ensure!(r.state == RolloutState::RolledBack, "the v3 rollout ended {}: {}", r.state.as_str(), r.reason);
    let now = versions(fleet, &name)?;
    ensure!(now.iter().all(|(v, _)| v != "3"), "a device serves v3: {}", versions_text(&now));
    println!("   v3 stopped in shadow; no device ever served it: {}", versions_text(&now));

    println!(
        "   -- v4: its error rate climbs on {:.0} % of the simulated devices (the simulator's fault option)",
        SIM_REGRESS_SHARE * 100.0
    );
    let (path, _) = package(v2, "4", &build)?;
    fleet.publish(&path, keys)?;
    let r = follow(fleet, spec(&name, "4", &["error_rate<1%", "p99_latency<1.5x"]))?;
    ensure!(r.state == RolloutState::RolledBack, "the v4 rollout ended {}: {}", r.state.as_str(), r.reason);
    // Timed from the decision as the server recorded it, not from when this loop noticed it.
    let decided_ms = r.updated_ms;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let now = versions(fleet, &name)?;
        if now.iter().all(|(v, _)| v == "2") {
            let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
            println!(
                "   the fleet is back on v2 {:.1} s after the rollback decision, by itself: {}",
                (now_ms - decided_ms).max(0) as f64 / 1e3,
                versions_text(&now)
            );
            break;
        }
        if Instant::now() > deadline {
            bail!("the fleet did not return to v2 within 90 s: {}", versions_text(&now));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    fleet.wait_serving(&name, "2", Duration::from_secs(30)).context("the agents after the v4 rollback")?;
    Ok(())
}
