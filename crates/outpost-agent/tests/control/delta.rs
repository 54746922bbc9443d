//! Delta downloads between a real server and a real agent: a fine-tuned version is rebuilt
//! from the one the device runs, a cut-off blob download resumes where it broke, and a
//! corrupted delta falls back to the whole package, which verifies.

use super::delivery::{bytes_sent, counter, cutting_proxy, publish};
use super::{agent_config, wait_until, ControlPlane};
use outpost_proto::manifest::Dim;
use outpost_train::onnx::{encode, GraphBuilder};
use std::path::Path;

/// A two-layer perceptron whose weights are `seed`'s noise, scaled by `1 + tune * noise`.
fn mlp(tune: f64) -> Vec<u8> {
    let noise = |seed: u64, n: usize| -> Vec<f64> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f64 / (1u64 << 24) as f64) * 2.0 - 1.0
            })
            .collect()
    };
    let tuned = |w: Vec<f64>, seed: u64| -> Vec<f64> {
        w.iter().zip(noise(seed, w.len())).map(|(x, d)| x * (1.0 + tune * d)).collect()
    };
    let mut g = GraphBuilder::new("mlp");
    let x = g.input_f32("x", &[Dim::Symbol("batch".into()), Dim::Fixed(64)]);
    let w1 = g.constant_f32("w1", &[64, 512], &tuned(noise(1, 64 * 512), 11));
    let w2 = g.constant_f32("w2", &[512, 16], &tuned(noise(2, 512 * 16), 12));
    let h = g.node("MatMul", &[&x, &w1], "h", vec![]);
    let r = g.node("Relu", &[&h], "r", vec![]);
    g.node("MatMul", &[&r, &w2], "y", vec![]);
    g.output_f32("y", &[Dim::Symbol("batch".into()), Dim::Fixed(16)]);
    encode(&g.finish("delta test model").expect("valid graph"))
}

fn package(dir: &Path, version: &str, tune: f64) -> Vec<u8> {
    std::fs::read(super::common::write_package(dir, "mlp", version, &mlp(tune))).unwrap()
}

async fn start_enrolled(
    plane: &ControlPlane,
    dir: &Path,
    server: &str,
    tweak: impl FnOnce(&mut outpost_agent::AgentConfig),
) -> (outpost_agent::Agent, String) {
    let token = plane.enrollment_token(1).await;
    let mut config = agent_config(dir, server, Some(token));
    tweak(&mut config);
    let agent = outpost_agent::Agent::start(config).await.unwrap();
    let status = agent.control().unwrap().clone();
    wait_until("enrollment", || status.device_id().is_some()).await;
    let device = status.device_id().unwrap();
    (agent, device)
}

async fn pin(plane: &ControlPlane, agent: &outpost_agent::Agent, device: &str, version: &str) {
    let body = serde_json::json!({"models": {"mlp": version}, "config": {}});
    plane.call(reqwest::Method::PUT, &format!("/v1/devices/{device}/override"), Some(body)).await;
    let store = agent.state.store.clone();
    let what = format!("mlp {version} serving");
    wait_until(&what, || store.get("mlp").is_some_and(|m| m.version() == version)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fine_tuned_version_arrives_as_a_delta_and_a_cut_blob_download_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let plane = ControlPlane::start(&dir.path().join("server")).await;
    let build = dir.path().join("build");
    std::fs::create_dir_all(&build).unwrap();
    let (v1, v2) = (package(&build, "1", 0.0), package(&build, "2", 1e-4));
    publish(&plane, v1.clone()).await;
    publish(&plane, v2.clone()).await;
    // The blob download is cut after 16 KiB; the retry asks for the rest with a Range.
    let (proxy, log) = cutting_proxy(plane.base.clone(), 16 << 10, "/blobs http/1.1").await;
    let (agent, device) = start_enrolled(&plane, dir.path(), &proxy, |_| {}).await;
    let models = dir.path().join("models");

    pin(&plane, &agent, &device, "1").await;
    assert_eq!(bytes_sent(&plane).await, v1.len() as u64, "the first version is a whole download");
    pin(&plane, &agent, &device, "2").await;
    assert_eq!(std::fs::read(models.join("mlp-2.opkg")).unwrap(), v2, "the rebuilt file is the published one");
    assert_eq!(bytes_sent(&plane).await, v1.len() as u64, "no whole-package bytes for v2");
    let delta = counter(&plane, "outpost_server_delta_bytes_sent_total").await;
    assert!(delta * 10 < v2.len() as u64 * 8, "a light fine-tune cost {delta} of {} bytes", v2.len());
    assert!(log.fired.load(std::sync::atomic::Ordering::SeqCst), "the proxy cut the blob download");
    let range = log.range.lock().unwrap().clone().expect("blob requests carry a range");
    let from: u64 = range.trim_start_matches("bytes=").split('-').next().unwrap().parse().unwrap();
    assert!(from > 0, "the retry resumed inside the blob file: {range}");
    let staging: Vec<_> = std::fs::read_dir(models.join(".staging")).unwrap().flatten().collect();
    assert!(staging.is_empty(), "nothing is left in staging: {staging:?}");

    // Back to v1: it is still installed, so nothing is fetched at all.
    let before = (bytes_sent(&plane).await, counter(&plane, "outpost_server_delta_bytes_sent_total").await);
    pin(&plane, &agent, &device, "1").await;
    let after = (bytes_sent(&plane).await, counter(&plane, "outpost_server_delta_bytes_sent_total").await);
    assert_eq!(before, after, "a version on disk is activated without a download");
    agent.shutdown().await.unwrap();
    plane.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_delta_is_fetched_again_then_replaced_by_the_whole_package() {
    let dir = tempfile::tempdir().unwrap();
    let server_data = dir.path().join("server");
    let plane = ControlPlane::start(&server_data).await;
    let build = dir.path().join("build");
    std::fs::create_dir_all(&build).unwrap();
    let (v1, v2) = (package(&build, "1", 0.0), package(&build, "2", 1e-2));
    publish(&plane, v1.clone()).await;
    publish(&plane, v2.clone()).await;
    // Publishing v2 builds the delta from v1 in the background; corrupt its blobs once stored.
    let deltas = server_data.join("artifacts/deltas");
    let blobs = loop {
        let found = std::fs::read_dir(&deltas).into_iter().flatten().flatten().map(|e| e.path());
        let plans: Vec<_> = found.filter(|p| p.extension().is_some_and(|e| e == "plan")).collect();
        if let Some(plan) = plans.first() {
            break plan.with_extension("blobs");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let mut bytes = std::fs::read(&blobs).unwrap();
    let at = bytes.len() * 3 / 4;
    bytes[at] ^= 0x5a;
    std::fs::write(&blobs, &bytes).unwrap();

    let (agent, device) = start_enrolled(&plane, dir.path(), &plane.base, |_| {}).await;
    pin(&plane, &agent, &device, "1").await;
    pin(&plane, &agent, &device, "2").await;
    let models = dir.path().join("models");
    assert_eq!(std::fs::read(models.join("mlp-2.opkg")).unwrap(), v2, "what is installed is the published v2");
    assert_eq!(
        bytes_sent(&plane).await,
        (v1.len() + v2.len()) as u64,
        "after the delta failed to verify twice, v2 came whole"
    );
    let delta = counter(&plane, "outpost_server_delta_bytes_sent_total").await;
    assert!(delta > bytes.len() as u64 - at as u64, "the bad piece was fetched more than once: {delta}");
    let staging: Vec<_> =
        std::fs::read_dir(models.join(".staging")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(staging.is_empty(), "the abandoned delta's blobs are gone: {staging:?}");
    agent.shutdown().await.unwrap();
    plane.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_probation_only_the_newest_older_packages_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let plane = ControlPlane::start(&dir.path().join("server")).await;
    let build = dir.path().join("build");
    std::fs::create_dir_all(&build).unwrap();
    for (v, tune) in [("1", 0.0), ("2", 1e-4), ("3", 2e-4)] {
        publish(&plane, package(&build, v, tune)).await;
    }
    let (agent, device) = start_enrolled(&plane, dir.path(), &plane.base, |c| {
        c.probation_s = 1;
        c.keep_versions = 1;
    })
    .await;
    let models = dir.path().join("models");
    for v in ["1", "2", "3"] {
        pin(&plane, &agent, &device, v).await;
    }
    let on_disk = || {
        let mut names: Vec<String> = std::fs::read_dir(&models)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.ends_with(".opkg"))
            .collect();
        names.sort();
        names
    };
    wait_until("v3 passed probation and v1 was deleted", || on_disk() == ["mlp-2.opkg", "mlp-3.opkg"]).await;
    // The device reports what is on its disk, and the server shows it.
    let mut shown = serde_json::Value::Null;
    for _ in 0..100 {
        shown = plane.call(reqwest::Method::GET, &format!("/v1/devices/{device}"), None).await;
        let model = shown["models"].as_array().and_then(|m| m.iter().find(|m| m["name"] == "mlp")).cloned();
        if model.is_some_and(|m| m["installed"] == serde_json::json!(["3", "2"])) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let model = shown["models"].as_array().and_then(|m| m.iter().find(|m| m["name"] == "mlp")).cloned();
    assert_eq!(model.map(|m| m["installed"].clone()), Some(serde_json::json!(["3", "2"])), "{shown}");
    agent.shutdown().await.unwrap();
    plane.server.shutdown().await.unwrap();
}
