//! Refused updates in `outpost demo`: while the agents keep serving, a version whose bytes
//! were corrupted in the artifact store is refused by verification, and one whose golden
//! self-test does not reproduce is refused at load; the agents keep the version they run.

use crate::demo_fleet::{DemoFleet, AGENT_SELECTOR};
use anyhow::{bail, Context, Result};
use outpost_runtime::Package;
use outpost_train::TrainedModel;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `trained`'s package as `version`, written to `dir`.
pub fn package(trained: &TrainedModel, version: &str, dir: &Path) -> Result<(PathBuf, Package)> {
    let mut manifest = trained.manifest.clone();
    manifest.model.version = version.to_string();
    let files = vec![
        (manifest.model.file.clone(), trained.onnx.clone()),
        (outpost_train::SELFTEST_FILE.to_string(), serde_json::to_vec_pretty(&trained.selftest)?),
    ];
    let pkg = Package::from_parts(manifest, files)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{}-{version}.opkg", pkg.manifest.model.name));
    pkg.write_opkg(&path)?;
    Ok((path, pkg))
}

/// `trained` with its golden self-test outputs moved by `skew`: the model no longer
/// reproduces them.
fn skew_selftest(trained: &TrainedModel, skew: f64) -> TrainedModel {
    let mut out = trained.clone();
    for case in &mut out.selftest.cases {
        for output in &mut case.outputs {
            for v in &mut output.data {
                if let Some(x) = v.as_f64() {
                    *v = serde_json::json!(x + skew);
                }
            }
        }
    }
    out
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
pub fn egress(fleet: &DemoFleet) -> Result<(u64, u64)> {
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

/// Publishes a corrupted `corrupt` and a `bad_selftest` version of `serving` to the real
/// agents and shows both refused while the agents keep serving `serving`'s version.
pub fn run(
    fleet: &DemoFleet,
    serving: &TrainedModel,
    (corrupt, bad_selftest): (&str, &str),
    root: &Path,
    keys: &Path,
) -> Result<()> {
    let build = root.join("build");
    let name = serving.manifest.model.name.clone();
    // Signed and published, then its bytes corrupted in the artifact store.
    let (path, _) = package(serving, corrupt, &build)?;
    let (_, staged): (u16, outpost_proto::fleet::api::ModelVersion) = fleet.api.upload("/v1/model-packages", &path)?;
    let sha = staged.package.context("no package recorded")?.sha256;
    corrupt_stored(&root.join("server/artifacts"), &sha)?;
    println!("   v{corrupt}: one byte flipped in the server's stored copy (and in the delta to it) after publishing");
    fleet.publish_and_assign(&path, keys, AGENT_SELECTOR)?;
    println!("   v{corrupt} refused by the agents: {}", wait_refused(fleet, &name, corrupt)?);
    // Bytes intact and signed, but its golden self-test does not reproduce.
    let (path, _) = package(&skew_selftest(serving, 0.5), bad_selftest, &build)?;
    fleet.publish_and_assign(&path, keys, AGENT_SELECTOR)?;
    println!("   v{bad_selftest} refused at load: {}", wait_refused(fleet, &name, bad_selftest)?);
    let serving: Vec<String> = fleet
        .agents
        .iter()
        .map(|a| a.state.store.get(&name).map(|m| m.version().to_string()).unwrap_or_default())
        .collect();
    println!("   still serving: v{}", serving.join(", v"));
    Ok(())
}
