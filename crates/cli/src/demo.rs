//! `outpost demo`: the whole story in one command, on one machine, offline, with a model the
//! project trains itself.
//!
//! 1. train the vibration anomaly detector on synthetic data and report its held-out quality;
//! 2. package it (`.opkg`, hashed manifest, golden self-test) into a fresh model directory;
//! 3. start the control plane on its embedded defaults (SQLite), two real agents that make their
//!    keys, enroll with a token and serve the model, and a simulated fleet beside them;
//! 4. publish the model in the registry and assign it to the agents by label selector;
//! 5. stream normal and faulty sensor windows to `POST /v1/models/{m}/predict`, as a machine's
//!    data logger would, and print what the agent detected against what was injected;
//! 6. call the Open Inference Protocol endpoint once, show a few metrics;
//! 7. send a remote command and show its acknowledgement, print the fleet summary;
//! 8. roll a refit out in waves with health gates, and show a version that disagrees in shadow
//!    and one whose error rate climbs stopped by their gates, the fleet returning by itself;
//! 9. show a corrupted version and one that fails its self-test refused by the agents;
//! 10. export results over MQTT (a subscriber prints a few) and to the server, make the sensors
//!     of part of the fleet drift and show the drift alert and which devices raised it, and the
//!     bytes sent against the raw data; then shut down (or keep everything running with
//!     `--keep-running`).

use anyhow::{bail, Context, Result};
use clap::Args;
use outpost_proto::prediction::{PredictResponse, Prediction};
use outpost_train::{Condition, TrainConfig, CHANNELS, WINDOW};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Flags of `outpost demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Directory for the demo's model directory (a temporary one when absent).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Seed of the sensor stream.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Print every window, not only detections.
    #[arg(long, short)]
    verbose: bool,
    /// Simulated devices beside the real agents.
    #[arg(long, default_value_t = 200)]
    simulated: usize,
    /// MQTT broker (host:port) the agents export results to, when it answers.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: String,
    /// Keep the server, agents and simulator running until Ctrl-C.
    #[arg(long)]
    keep_running: bool,
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> Result<()> {
    let tmp;
    let root = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir().context("creating a temporary directory")?;
            tmp.path().to_path_buf()
        }
    };
    let model_dir = root.join("models");
    std::fs::create_dir_all(&model_dir).with_context(|| format!("creating {}", model_dir.display()))?;
    let keys = root.join("keys");

    println!("== 1. train: vibration anomaly detector on synthetic 3-axis accelerometer data");
    let started = Instant::now();
    let trained = outpost_train::train_vibration_anomaly(&TrainConfig::default())?;
    let ev = &trained.evaluation;
    println!(
        "   fitted on {} normal windows in {:.1} s: {} principal components of the log spectrum",
        ev.train_windows,
        started.elapsed().as_secs_f64(),
        ev.components
    );
    println!(
        "   held-out ({} windows): ROC-AUC {:.3}, threshold {:.3}, detection rate {:.1}%, false alarms {:.1}%",
        ev.test_windows,
        ev.roc_auc,
        ev.threshold,
        ev.tpr * 100.0,
        ev.fpr * 100.0
    );
    for (name, auc, rate) in &ev.per_condition {
        println!("     {name:<12} ROC-AUC {auc:.3}  detected {:.1}%", rate * 100.0);
    }

    println!("== 2. package");
    let pkg = crate::model::demo_package(&trained)?;
    let name = pkg.manifest.model.name.clone();
    let opkg = model_dir.join(format!("{name}-{}.opkg", pkg.manifest.model.version));
    pkg.write_opkg(&opkg)?;
    println!("   {} ({} bytes, onnx {} bytes)", opkg.display(), std::fs::metadata(&opkg)?.len(), trained.onnx.len());

    println!("== 3. TUF keys, the control plane, two real agents (empty model directories), a simulated fleet");
    let places = outpost_tuf::operator::Places { keys_dir: keys.clone(), repo_dir: root.join("server/tuf") };
    places.init(365)?;
    println!("   keys: root and targets in {} (offline), snapshot and timestamp with the server", keys.display());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mqtt = crate::demo_drift::probe_broker(&args.mqtt);
    let fleet = crate::demo_fleet::start(&rt, &root, &keys.join("1.root.json"), 2, args.simulated, mqtt)?;
    let base = fleet.agent_url();

    println!("== 4. publish v1 through the registry and the TUF repository; the agents download it");
    fleet.publish_and_assign(&opkg, &keys, crate::demo_fleet::FLEET_SELECTOR)?;
    fleet.wait_serving(&name, &pkg.manifest.model.version, Duration::from_secs(60))?;
    let model = fleet.agents[0].state.store.get(&name).context("the agent did not load the demo model")?;
    println!(
        "   both agents verified v1 against the signed TUF targets, downloaded it, and serve it on {} \
         (loaded, verified and self-tested in {} ms)",
        model.backend(),
        model.load_time.as_millis()
    );
    drop(model);

    println!("== 5. stream sensor windows to POST /v1/models/{name}/predict");
    let outcome = stream(&base, &name, args.seed, args.verbose);

    println!("== 6. Open Inference Protocol and metrics");
    let oip = oip_check(&base, &name);
    let metrics =
        ureq::get(&format!("{base}/metrics")).call().ok().and_then(|mut r| r.body_mut().read_to_string().ok());
    if let Some(text) = metrics {
        for line in
            text.lines().filter(|l| l.starts_with("outpost_requests_total") || l.starts_with("outpost_models_loaded"))
        {
            println!("   {line}");
        }
    }
    println!("== 7. remote command and fleet view");
    let fleet_result = fleet.command_round_trip().and_then(|_| fleet.print_summary(args.simulated));
    let updates = updates(&fleet, &root, &keys);
    let drift = updates.as_ref().map_err(|_| anyhow::anyhow!("skipped after the updates failed")).and_then(|_| {
        println!("== 10. results leave the devices; the sensors of part of the fleet drift");
        crate::demo_drift::run(&rt, &fleet, &name, args.seed, args.simulated)
    });
    if args.keep_running && fleet_result.is_ok() {
        fleet.print_where_to_look();
        println!("   running until Ctrl-C");
        rt.block_on(crate::agent::shutdown_signal());
    }
    fleet.shutdown(&rt)?;
    let outcome = outcome?;
    oip?;
    fleet_result?;
    updates?;
    drift?;
    println!("== done: the agents ran the model on-device and only results and health reached the server; {}", outcome);
    Ok(())
}

/// Steps 8 and 9, while clients keep sending requests to the agents: not one may fail.
fn updates(fleet: &crate::demo_fleet::DemoFleet, root: &std::path::Path, keys: &std::path::Path) -> Result<()> {
    let agents: Vec<String> = fleet.agents.iter().map(|a| format!("http://{}", a.addr)).collect();
    let traffic = crate::demo_traffic::Traffic::start(&agents, outpost_train::MODEL_NAME);
    let outcome = (|| -> Result<()> {
        println!("== 8. staged rollouts with health gates, over the real agents and the simulated fleet");
        // v2: refit with 10% more data (the first windows are v1's), so every weight moves a
        // little, as after a fine-tune; devices rebuild it from v1 by a delta.
        let defaults = TrainConfig::default();
        let refit = outpost_train::train_vibration_anomaly(&TrainConfig {
            train_windows: defaults.train_windows * 11 / 10,
            ..defaults
        })?;
        crate::demo_rollout::run(fleet, &refit, root, keys)?;
        println!("== 9. updates the agents refuse while they keep serving");
        crate::demo_delivery::run(fleet, &refit, ("5", "6"), root, keys)
    })();
    let (sent, failed, first) = traffic.stop();
    println!("   {sent} requests to the agents during the rollouts and updates, {failed} failed");
    outcome?;
    if let Some(first) = first {
        bail!("{failed} of {sent} requests failed during the rollouts and updates; the first: {first}");
    }
    Ok(())
}

struct Tally {
    windows: usize,
    faults: usize,
    caught: usize,
    false_alarms: usize,
    latencies: Vec<Duration>,
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut l = self.latencies.clone();
        l.sort();
        let pct = |q: f64| l.get(((l.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied().unwrap_or_default();
        write!(
            f,
            "{} windows, {}/{} faulty windows detected, {} false alarms on {} normal windows; \
             request latency p50 {:.2} ms, p99 {:.2} ms",
            self.windows,
            self.caught,
            self.faults,
            self.false_alarms,
            self.windows - self.faults,
            pct(0.5).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3
        )
    }
}

fn stream(base: &str, name: &str, seed: u64, verbose: bool) -> Result<Tally> {
    let url = format!("{base}/v1/models/{name}/predict");
    let mut tally = Tally { windows: 0, faults: 0, caught: 0, false_alarms: 0, latencies: Vec::new() };
    for (i, (condition, severity, window)) in outpost_train::demo_windows(seed).into_iter().enumerate() {
        let channels: Vec<&[f32]> = window.chunks(WINDOW).take(CHANNELS).collect();
        let body = serde_json::to_vec(&serde_json::json!({ "channels": channels }))?;
        let sent = Instant::now();
        let mut resp = ureq::post(&url)
            .header("content-type", "application/json")
            .send(&body[..])
            .with_context(|| format!("window {i}: predict request failed"))?;
        let text = resp.body_mut().read_to_string()?;
        tally.latencies.push(sent.elapsed());
        let answer: PredictResponse = serde_json::from_str(&text).with_context(|| format!("window {i}: {text}"))?;
        let Some(Prediction::Anomaly { score, threshold, anomalous }) = answer.predictions.first().cloned() else {
            bail!("window {i}: unexpected answer {text}");
        };
        let faulty = condition != Condition::Normal;
        tally.windows += 1;
        tally.faults += usize::from(faulty);
        tally.caught += usize::from(faulty && anomalous);
        tally.false_alarms += usize::from(!faulty && anomalous);
        let verdict = match (faulty, anomalous) {
            (true, true) => "DETECTED",
            (true, false) => "missed",
            (false, true) => "FALSE ALARM",
            (false, false) => "ok",
        };
        if verbose || anomalous || faulty {
            println!(
                "   t={:>3}  injected {:<10} severity {:.2}  score {:>7.3} (threshold {:.3})  {verdict}",
                i,
                condition.name(),
                severity,
                score,
                threshold
            );
        }
    }
    Ok(tally)
}

fn oip_check(base: &str, name: &str) -> Result<()> {
    let window = &outpost_train::demo_windows(1)[0].2;
    let body = serde_json::json!({
        "inputs": [{ "name": outpost_train::INPUT, "shape": [1, CHANNELS, WINDOW], "datatype": "FP32", "data": window }]
    });
    let mut resp = ureq::post(&format!("{base}/v2/models/{name}/infer")).send_json(&body).context("v2 infer")?;
    let text = resp.body_mut().read_to_string()?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    println!("   POST /v2/models/{name}/infer -> outputs {}", v["outputs"]);
    Ok(())
}
