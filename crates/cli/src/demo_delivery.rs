//! The delivery half of `outpost demo`: while a client keeps sending requests to an agent, a
//! v2 refit on more data is published and taken by every agent as a delta from v1; a v3 whose bytes were corrupted in the
//! artifact store is refused by verification; a v4 whose golden self-test does not reproduce
//! is refused at load. The request loop counts failures: there must be none.

use crate::demo_fleet::DemoFleet;
use anyhow::{bail, Context, Result};
use outpost_runtime::Package;
use outpost_train::{TrainConfig, TrainedModel};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `trained`'s package as `version`, its self-test outputs moved by `skew` (0: unchanged).
fn package(trained: &TrainedModel, version: &str, skew: f64, dir: &Path) -> Result<(PathBuf, Package)> {
    let mut selftest = trained.selftest.clone();
    if skew != 0.0 {
        for case in &mut selftest.cases {
            for output in &mut case.outputs {
                for v in &mut output.data {
                    if let Some(x) = v.as_f64() {
                        *v = serde_json::json!(x + skew);
                    }
                }
            }
        }
    }
    let mut manifest = trained.manifest.clone();
    manifest.model.version = version.to_string();
    let files = vec![
        (manifest.model.file.clone(), trained.onnx.clone()),
        (outpost_train::SELFTEST_FILE.to_string(), serde_json::to_vec_pretty(&selftest)?),
    ];
    let pkg = Package::from_parts(manifest, files)?;
    let path = dir.join(format!("{}-{version}.opkg", pkg.manifest.model.name));
    pkg.write_opkg(&path)?;
    Ok((path, pkg))
}

/// Waits until the first agent reports `version` of `name` as a failed update; its reason.
fn wait_refused(fleet: &DemoFleet, name: &str, version: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(m) = fleet.reported(name)? {
            if let Some(u) = m.update.filter(|u| u.version == version && u.state == "failed") {
                let kind = u.failure_kind.and_then(|k| serde_json::to_value(k).ok());
                let kind = kind.as_ref().and_then(|k| k.as_str()).unwrap_or("failed").to_string();
                return Ok(format!("{kind}: {}", u.reason.unwrap_or_default()));
            }
            if m.version == version && m.failure_kind.is_some() {
                return Ok(m.reason.unwrap_or_default());
            }
        }
        if Instant::now() > deadline {
            bail!("the agents did not report {name}@{version} as refused within 60 s");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The server's delivery egress so far: (whole packages, deltas), bytes.
fn egress(fleet: &DemoFleet) -> Result<(u64, u64)> {
    let text = ureq::get(&format!("{}/metrics", fleet.api.base())).call()?.body_mut().read_to_string()?;
    let counter = |name: &str| -> u64 {
        let line = text.lines().find(|l| l.split_whitespace().next() == Some(name));
        line.and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) as u64
    };
    Ok((counter("outpost_server_package_bytes_sent_total"), counter("outpost_server_delta_bytes_sent_total")))
}

/// Flips a byte of the stored package `sha` and of the delta to it that publishing builds in
/// the background (waited for first, so it is not built from the good bytes afterwards).
fn corrupt_stored(artifacts: &Path, sha: &str) -> Result<()> {
    let mine = |ext: &str| -> Vec<PathBuf> {
        let entries = std::fs::read_dir(artifacts.join("deltas")).into_iter().flatten().flatten();
        entries
            .map(|e| e.path())
            .filter(|p| p.file_name().is_some_and(|f| f.to_string_lossy().starts_with(sha)))
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while mine("plan").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let object = artifacts.join("packages").join(format!("{sha}.opkg"));
    for file in mine("blobs").into_iter().chain([object]) {
        let mut bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        let at = bytes.len() / 2;
        bytes[at] ^= 0xff;
        std::fs::write(&file, bytes).with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(())
}

/// Runs the updates; prints what happened.
pub fn run(fleet: &DemoFleet, v1: &TrainedModel, root: &Path, keys: &Path) -> Result<()> {
    let build = root.join("build");
    std::fs::create_dir_all(&build).with_context(|| format!("creating {}", build.display()))?;
    let name = v1.manifest.model.name.clone();
    // A client streaming requests at the first agent for the whole step.
    let url = format!("{}/v2/models/{name}/infer", fleet.agent_url());
    let window = outpost_train::demo_windows(3)[0].2.clone();
    let body = serde_json::json!({"inputs": [{"name": outpost_train::INPUT,
        "shape": [1, outpost_train::CHANNELS, outpost_train::WINDOW], "datatype": "FP32", "data": window}]});
    let (stop, sent, failed) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let client = {
        let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let ok = ureq::post(&url).send_json(&body).is_ok_and(|r| r.status().is_success());
                sent.fetch_add(1, Ordering::Relaxed);
                failed.fetch_add(usize::from(!ok), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let outcome = (|| -> Result<()> {
        // v2: refit with 10% more data (the first 4 000 windows are v1's), so every weight
        // moves a little, as after a fine-tune; the agents rebuild it from v1 by a delta.
        let defaults = TrainConfig::default();
        let retrained = outpost_train::train_vibration_anomaly(&TrainConfig {
            train_windows: defaults.train_windows * 11 / 10,
            ..defaults
        })?;
        let (path, _) = package(&retrained, "2", 0.0, &build)?;
        let before = egress(fleet)?;
        let published = fleet.publish_and_assign(&path, keys)?;
        let started = Instant::now();
        fleet.wait_serving(&name, "2", Duration::from_secs(60))?;
        let after = egress(fleet)?;
        let size = published.package.map(|p| p.size_bytes).unwrap_or_default();
        let agents = fleet.agents.len().max(1) as u64;
        let (whole, delta) = ((after.0 - before.0) / agents, (after.1 - before.1) / agents);
        println!(
            "   v2 serving on both agents {:.1} s after the assignment: each fetched {} bytes \
             ({delta} as a delta from v1, {whole} as whole packages) of the {size}-byte package: {:.0} %",
            started.elapsed().as_secs_f64(),
            whole + delta,
            100.0 * (whole + delta) as f64 / size.max(1) as f64
        );
        // v3: signed and published, then its bytes corrupted in the artifact store.
        let (path, _) = package(&retrained, "3", 0.0, &build)?;
        let (_, staged): (u16, outpost_proto::fleet::api::ModelVersion) =
            fleet.api.upload("/v1/model-packages", &path)?;
        let sha = staged.package.context("no package recorded")?.sha256;
        corrupt_stored(&root.join("server/artifacts"), &sha)?;
        println!("   v3: one byte flipped in the server's stored copy (and in the delta to it) after publishing");
        fleet.publish_and_assign(&path, keys)?;
        println!("   v3 refused by the agents: {}", wait_refused(fleet, &name, "3")?);
        // v4: bytes intact and signed, but its golden self-test does not reproduce.
        let (path, _) = package(&retrained, "4", 0.5, &build)?;
        fleet.publish_and_assign(&path, keys)?;
        println!("   v4 refused at load: {}", wait_refused(fleet, &name, "4")?);
        let serving: Vec<String> = fleet
            .agents
            .iter()
            .map(|a| a.state.store.get(&name).map(|m| m.version().to_string()).unwrap_or_default())
            .collect();
        println!("   still serving: v{}", serving.join(", v"));
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    let _ = client.join();
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("   {sent} requests during the updates, {failed} failed");
    outcome?;
    if failed > 0 {
        bail!("{failed} of {sent} requests failed during the updates");
    }
    Ok(())
}
