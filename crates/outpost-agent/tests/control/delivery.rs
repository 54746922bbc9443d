//! Model delivery end to end: a package published to a real server reaches the agent through
//! the desired state, is downloaded (resumed from a staging file when one is there), verified
//! against the published length and hash, installed and served; bytes that do not verify are
//! refused with a typed reason while the previous version keeps serving.

use super::{agent_config, wait_until, ControlPlane};
use outpost_proto::fleet::device::FailureKind;
use outpost_runtime::Package;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Instant;

pub(super) async fn publish(plane: &ControlPlane, bytes: Vec<u8>) -> serde_json::Value {
    let response = plane
        .http
        .post(format!("{}/v1/model-packages", plane.base))
        .bearer_auth(&plane.admin)
        .header("content-type", "application/octet-stream")
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "publish: {status} {text}");
    serde_json::from_str(&text).unwrap()
}

fn package_bytes(dir: &Path, name: &str, version: &str, scale: f64) -> Vec<u8> {
    let path = super::common::write_package(dir, name, version, &super::common::affine_onnx(scale));
    std::fs::read(path).unwrap()
}

/// The server's delivery egress so far (its `package_bytes_sent` counter).
pub(super) async fn bytes_sent(plane: &ControlPlane) -> u64 {
    counter(plane, "outpost_server_package_bytes_sent_total").await
}

/// A counter of the server's `/metrics`.
pub(super) async fn counter(plane: &ControlPlane, name: &str) -> u64 {
    let text = plane.http.get(format!("{}/metrics", plane.base)).send().await.unwrap().text().await.unwrap();
    let line = text.lines().find(|l| l.split_whitespace().next() == Some(name)).expect("counter");
    line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() as u64
}

/// Waits until the server shows `affine`'s update on `device` in `state`; the model's report.
async fn wait_update(plane: &ControlPlane, device: &str, state: &str) -> serde_json::Value {
    for _ in 0..150 {
        let shown = plane.call(reqwest::Method::GET, &format!("/v1/devices/{device}"), None).await;
        let model = shown["models"].as_array().and_then(|m| m.iter().find(|m| m["name"] == "affine")).cloned();
        if let Some(m) = model.filter(|m| m["update"]["state"] == state) {
            return m;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the device never reported an update of affine in state {state}");
}

fn hex_sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_packages_are_downloaded_verified_installed_and_bad_bytes_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server_data = dir.path().join("server");
    let plane = ControlPlane::start(&server_data).await;
    let token = plane.enrollment_token(1).await;
    let build = dir.path().join("build");
    std::fs::create_dir_all(&build).unwrap();
    let v1 = package_bytes(&build, "affine", "1", 1.0);
    let v2 = package_bytes(&build, "affine", "2", 2.0);
    let v3 = package_bytes(&build, "affine", "3", 3.0);
    for bytes in [&v1, &v2, &v3] {
        publish(&plane, bytes.clone()).await;
    }

    let config = agent_config(dir.path(), &plane.base, Some(token));
    let models = config.model_dir.clone();
    // An interrupted earlier download of v1: its first half is in the staging area.
    let staging = models.join(".staging");
    std::fs::create_dir_all(&staging).unwrap();
    let part = staging.join(format!(".affine-1-{}.part", &hex_sha(&v1)[..16]));
    std::fs::write(&part, &v1[..v1.len() / 2]).unwrap();
    let agent = outpost_agent::Agent::start(config).await.unwrap();
    let status = agent.control().unwrap().clone();
    wait_until("enrollment", || status.device_id().is_some()).await;
    let device = status.device_id().unwrap();
    let store = agent.state.store.clone();
    let serving = move || store.get("affine").map(|m| m.version().to_string());
    assert_eq!(serving(), None, "nothing on the device yet");

    let pin = |version: &str| serde_json::json!({"models": {"affine": version}, "config": {}});
    plane.call(reqwest::Method::PUT, &format!("/v1/devices/{device}/override"), Some(pin("1"))).await;
    wait_until("v1 downloaded and serving", || serving().as_deref() == Some("1")).await;
    let installed = models.join("affine-1.opkg");
    assert_eq!(std::fs::read(&installed).unwrap(), v1, "the installed file is the published bytes");
    assert!(!part.exists(), "the staging file became the installed package");
    let resumed = (v1.len() - v1.len() / 2) as u64;
    assert_eq!(bytes_sent(&plane).await, resumed, "only the missing half was fetched (a Range request)");
    Package::open(&installed).expect("the installed package verifies");

    // v2 is rebuilt from v1 by a delta; a staging file holding wrong bytes is overwritten.
    let part2 = staging.join(format!(".affine-2-{}.part", &hex_sha(&v2)[..16]));
    std::fs::write(&part2, vec![0u8; v2.len() / 3]).unwrap();
    plane.call(reqwest::Method::PUT, &format!("/v1/devices/{device}/override"), Some(pin("2"))).await;
    wait_until("v2 downloaded and serving", || serving().as_deref() == Some("2")).await;
    assert_eq!(std::fs::read(models.join("affine-2.opkg")).unwrap(), v2);
    assert_eq!(bytes_sent(&plane).await, resumed, "v2 came as a delta, not as a whole package");
    let delta = counter(&plane, "outpost_server_delta_bytes_sent_total").await;
    assert!(delta > 0 && delta < v2.len() as u64, "delta {delta} bytes for a {} byte package", v2.len());

    // Bytes corrupted in the artifact store: no delta can be built from them, the whole
    // package is fetched, the device refuses it, v2 keeps serving, and the report says what
    // happened to v3 and why.
    corrupt_stored(&server_data, &hex_sha(&v3)).await;
    plane.call(reqwest::Method::PUT, &format!("/v1/devices/{device}/override"), Some(pin("3"))).await;
    let report = wait_update(&plane, &device, "failed").await;
    assert!(report["state"] == "ready" || report["state"] == "probation", "{report}");
    assert_eq!(report["version"], "2", "the verified version keeps serving: {report}");
    assert_eq!(report["update"]["version"], "3", "{report}");
    let kind: FailureKind = serde_json::from_value(report["update"]["failure_kind"].clone()).unwrap();
    assert_eq!(kind, FailureKind::HashMismatch, "{report}");
    assert!(report["update"]["reason"].as_str().unwrap().contains("sha256"), "{report}");
    // The fleet view counts where each version runs and where one failed to arrive.
    let summary = plane.call(reqwest::Method::GET, "/v1/fleet/summary", None).await;
    assert_eq!(summary["by_model_version"]["affine@2"], 1, "{summary}");
    assert_eq!(summary["updates_by_model_version"]["affine@3"]["failed"], 1, "{summary}");
    assert!(summary["by_model_version"].get("affine@3").is_none(), "failing to arrive is not serving: {summary}");
    assert!(!models.join("affine-3.opkg").exists(), "nothing unverified is installed");
    let leftovers: Vec<_> = std::fs::read_dir(&staging).unwrap().flatten().collect();
    assert!(leftovers.is_empty(), "refused bytes are deleted: {leftovers:?}");
    assert_eq!(serving().as_deref(), Some("2"));

    agent.shutdown().await.unwrap();
    plane.server.shutdown().await.unwrap();
}

/// Flips a byte of the stored package `sha` and of the delta to it that publishing built in
/// the background (waited for, so it cannot be rebuilt from the good bytes afterwards).
pub(super) async fn corrupt_stored(server_data: &Path, sha: &str) {
    let deltas = server_data.join("artifacts/deltas");
    let mine = |ext: &str| -> Vec<std::path::PathBuf> {
        let entries = std::fs::read_dir(&deltas).into_iter().flatten().flatten().map(|e| e.path());
        entries
            .filter(|p| {
                let file = p.file_name().unwrap().to_string_lossy().to_string();
                file.starts_with(sha) && file.ends_with(ext)
            })
            .collect()
    };
    for _ in 0..200 {
        if !mine(".plan").is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let object = server_data.join("artifacts/packages").join(format!("{sha}.opkg"));
    for file in mine(".blobs").into_iter().chain([object]) {
        let mut bytes = std::fs::read(&file).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0xff;
        std::fs::write(&file, &bytes).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_that_does_not_fit_the_disk_fails_as_disk_full_and_the_old_version_serves() {
    let dir = tempfile::tempdir().unwrap();
    let plane = ControlPlane::start(&dir.path().join("server")).await;
    let token = plane.enrollment_token(1).await;
    let config = agent_config(dir.path(), &plane.base, Some(token));
    let models = config.model_dir.clone();
    let Some(_disk) = super::common::SmallDisk::mount(&models, 1536 << 10) else { return };
    super::common::write_package(&models, "affine", "1", &super::common::affine_onnx(1.0));
    // v2 carries 1 MiB of extra listed data: with the 1 MiB the fetcher keeps free, it cannot fit.
    let build = dir.path().join("build");
    std::fs::create_dir_all(&build).unwrap();
    let onnx = super::common::affine_onnx(2.0);
    let manifest = super::common::manifest("affine", "2", &onnx);
    let files = vec![("model.onnx".to_string(), onnx), ("padding.bin".to_string(), vec![7u8; 1 << 20])];
    let big = Package::from_parts(manifest, files).unwrap();
    big.write_opkg(&build.join("affine-2.opkg")).unwrap();
    publish(&plane, std::fs::read(build.join("affine-2.opkg")).unwrap()).await;

    let agent = outpost_agent::Agent::start(config).await.unwrap();
    let status = agent.control().unwrap().clone();
    wait_until("enrollment", || status.device_id().is_some()).await;
    let device = status.device_id().unwrap();
    let pin = serde_json::json!({"models": {"affine": "2"}, "config": {}});
    plane.call(reqwest::Method::PUT, &format!("/v1/devices/{device}/override"), Some(pin)).await;
    let report = wait_update(&plane, &device, "failed").await;
    let kind: FailureKind = serde_json::from_value(report["update"]["failure_kind"].clone()).unwrap();
    assert_eq!(kind, FailureKind::DiskFull, "{report}");
    assert_eq!((report["state"].as_str(), report["version"].as_str()), (Some("ready"), Some("1")), "{report}");
    assert_eq!(report["update"]["bytes_fetched"], 0, "nothing was fetched: {report}");
    assert_eq!(bytes_sent(&plane).await, 0);
    assert_eq!(agent.state.store.get("affine").map(|m| m.version().to_string()).as_deref(), Some("1"));
    agent.shutdown().await.unwrap();
    plane.server.shutdown().await.unwrap();
}

/// Signs `name@version` (published) into the server's TUF targets with the operator's key.
async fn sign_into_tuf(plane: &ControlPlane, places: &outpost_tuf::operator::Places, name: &str, version: &str) {
    let current = plane.call(reqwest::Method::GET, "/v1/tuf/targets", None).await;
    let shown = plane.call(reqwest::Method::GET, &format!("/v1/models/{name}"), None).await;
    let entry = shown.as_array().unwrap().iter().find(|m| m["version"] == version).unwrap()["package"].clone();
    let target = serde_json::json!({"length": entry["size_bytes"], "hashes": {"sha256": entry["sha256"]}});
    let key = outpost_tuf::writer::RoleKey::load(&places.key_path("targets")).unwrap();
    let path = format!("{name}/{name}-{version}.opkg");
    let signed = outpost_tuf::operator::sign_next_targets(&current, &key, &path, target).unwrap();
    let response = plane
        .http
        .put(format!("{}/v1/tuf/targets", plane.base))
        .bearer_auth(&plane.admin)
        .body(signed)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::NO_CONTENT, "{}", response.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_tuf_root_only_packages_the_signed_targets_vouch_for_are_fetched() {
    let dir = tempfile::tempdir().unwrap();
    let server_data = dir.path().join("server");
    let places = outpost_tuf::operator::Places { keys_dir: dir.path().join("keys"), repo_dir: server_data.join("tuf") };
    places.init(365).unwrap();
    let plane = ControlPlane::start(&server_data).await;
    let token = plane.enrollment_token(1).await;
    let build = dir.path().join("build");
    std::fs::create_dir_all(&build).unwrap();
    publish(&plane, package_bytes(&build, "affine", "1", 1.0)).await;
    publish(&plane, package_bytes(&build, "affine", "2", 2.0)).await;
    sign_into_tuf(&plane, &places, "affine", "1").await;

    let mut config = agent_config(dir.path(), &plane.base, Some(token));
    config.tuf_root = Some(places.keys_dir.join("1.root.json"));
    let trusted = config.data_dir.join("tuf");
    let agent = outpost_agent::Agent::start(config).await.unwrap();
    let status = agent.control().unwrap().clone();
    wait_until("enrollment", || status.device_id().is_some()).await;
    let device = status.device_id().unwrap();
    let store = agent.state.store.clone();
    let serving = move || store.get("affine").map(|m| m.version().to_string());
    let pin = |version: &str| serde_json::json!({"models": {"affine": version}, "config": {}});
    let override_path = format!("/v1/devices/{device}/override");

    plane.call(reqwest::Method::PUT, &override_path, Some(pin("1"))).await;
    wait_until("v1, vouched for by TUF, serving", || serving().as_deref() == Some("1")).await;
    let names: Vec<String> =
        std::fs::read_dir(&trusted).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(names.contains(&"timestamp.json".to_string()), "the device keeps its trusted metadata: {names:?}");
    let sent = bytes_sent(&plane).await;

    // v2 is in the registry but no targets signature vouches for it: not a byte is fetched.
    plane.call(reqwest::Method::PUT, &override_path, Some(pin("2"))).await;
    let report = wait_update(&plane, &device, "failed").await;
    let kind: FailureKind = serde_json::from_value(report["update"]["failure_kind"].clone()).unwrap();
    assert_eq!(kind, FailureKind::Untrusted, "{report}");
    assert!(report["update"]["reason"].as_str().unwrap().contains("affine/affine-2.opkg"), "{report}");
    assert_eq!(bytes_sent(&plane).await, sent, "nothing of an unvouched package is downloaded");
    assert_eq!(serving().as_deref(), Some("1"));

    // Once the operator signs it, a new desired state brings it in.
    sign_into_tuf(&plane, &places, "affine", "2").await;
    plane.call(reqwest::Method::PUT, &override_path, Some(pin("1"))).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    plane.call(reqwest::Method::PUT, &override_path, Some(pin("2"))).await;
    wait_until("v2 serving once signed", || serving().as_deref() == Some("2")).await;
    agent.shutdown().await.unwrap();
    plane.server.shutdown().await.unwrap();
}

/// `affine`'s inputs and outputs, but dozens of milliseconds per request: a regression.
fn sluggish_affine_onnx() -> Vec<u8> {
    layered_affine_onnx(2000)
}

/// `affine`'s inputs and outputs through `layers` 512×512 MatMuls.
fn layered_affine_onnx(layers: usize) -> Vec<u8> {
    use outpost_proto::manifest::Dim;
    use outpost_train::onnx::{attr_int, encode, GraphBuilder};
    let mut g = GraphBuilder::new("affine");
    let x = g.input_f32("x", &[Dim::Symbol("batch".into()), Dim::Fixed(4)]);
    let up: Vec<f64> = (0..4 * 512).map(|i| ((i % 5) as f64 - 2.0) / 64.0).collect();
    let up = g.constant_f32("up", &[4, 512], &up);
    let w: Vec<f64> = (0..512 * 512).map(|i| ((i % 7) as f64 - 3.0) / 512.0).collect();
    let w = g.constant_f32("w", &[512, 512], &w);
    let down: Vec<f64> = (0..512 * 4).map(|i| ((i % 3) as f64 - 1.0) / 64.0).collect();
    let down = g.constant_f32("down", &[512, 4], &down);
    let axes = g.constant_i64("axes", &[1], &[1]);
    let mut v = g.node("MatMul", &[&x, &up], "h", vec![]);
    for i in 0..layers {
        v = g.node("MatMul", &[&v, &w], &format!("h{i}"), vec![]);
    }
    let y = g.node("MatMul", &[&v, &down], "y", vec![]);
    g.node("ReduceSum", &[&y, &axes], "s", vec![attr_int("keepdims", 0)]);
    g.output_f32("y", &[Dim::Symbol("batch".into()), Dim::Fixed(4)]);
    g.output_f32("s", &[Dim::Symbol("batch".into())]);
    encode(&g.finish("sluggish").expect("valid graph"))
}

async fn infer(http: &reqwest::Client, agent: &outpost_agent::Agent, n: usize) {
    let body =
        serde_json::json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]});
    for _ in 0..n {
        let r = http.post(format!("http://{}/v2/models/affine/infer", agent.addr)).json(&body).send().await.unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_regresses_on_probation_is_rolled_back_and_stays_blocked_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let plane = ControlPlane::start(&dir.path().join("server")).await;
    let token = plane.enrollment_token(1).await;
    let mut config = agent_config(dir.path(), &plane.base, Some(token));
    config.probation_s = 120;
    super::common::write_package(&config.model_dir, "affine", "1", &super::common::affine_onnx(1.0));
    super::common::write_package(&config.model_dir, "affine", "2", &sluggish_affine_onnx());
    let pin = |version: &str| serde_json::json!({"models": {"affine": version}, "config": {}});
    let http = reqwest::Client::new();

    let agent = outpost_agent::Agent::start(config.clone()).await.unwrap();
    let status = agent.control().unwrap().clone();
    wait_until("enrollment", || status.device_id().is_some()).await;
    let device = status.device_id().unwrap();
    let override_path = format!("/v1/devices/{device}/override");
    plane.call(reqwest::Method::PUT, &override_path, Some(pin("1"))).await;
    let store = agent.state.store.clone();
    wait_until("v1 serving", || store.get("affine").is_some_and(|m| m.version() == "1")).await;
    // Both windows need 100 latencies before their p99s are compared.
    infer(&http, &agent, 110).await; // the baseline

    plane.call(reqwest::Method::PUT, &override_path, Some(pin("2"))).await;
    wait_until("v2 active", || store.get("affine").is_some_and(|m| m.version() == "2")).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await; // the probation starts
    let sluggish = Instant::now();
    infer(&http, &agent, 110).await;
    eprintln!("110 requests to the regressed version took {:?}", sluggish.elapsed());
    wait_until("v2 rolled back to v1", || store.get("affine").is_some_and(|m| m.version() == "1")).await;
    let report = wait_update(&plane, &device, "rolled_back").await;
    assert_eq!((report["state"].as_str(), report["version"].as_str()), (Some("ready"), Some("1")), "{report}");
    let kind: FailureKind = serde_json::from_value(report["update"]["failure_kind"].clone()).unwrap();
    assert_eq!(kind, FailureKind::Probation, "{report}");
    let reason = report["update"]["reason"].as_str().unwrap();
    eprintln!("rolled back: {reason}");
    assert!(reason.contains("p99 latency") && reason.contains("side by side"), "{report}");
    agent.shutdown().await.unwrap();

    // After a restart the rolled-back version stays blocked although it is desired and highest.
    let agent = outpost_agent::Agent::start(config.clone()).await.unwrap();
    let store = agent.state.store.clone();
    assert_eq!(store.get("affine").unwrap().version(), "1", "the first scan already skips the blocked version");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(store.get("affine").unwrap().version(), "1", "the blocked version is not retried");
    let device = agent.control().unwrap().device_id().unwrap();
    agent.shutdown().await.unwrap();

    // A crash loop: the agent keeps dying while v2 is on probation; the third start rolls back.
    plane.call(reqwest::Method::PUT, &format!("/v1/devices/{device}/override"), Some(pin("1"))).await;
    let state =
        serde_json::json!({"probation": {"affine": {"version": "2", "previous": "1", "restarts": 2}}, "blocked": {}});
    std::fs::write(config.data_dir.join("probation.json"), state.to_string()).unwrap();
    plane.call(reqwest::Method::PUT, &format!("/v1/devices/{device}/override"), Some(pin("2"))).await;
    let agent = outpost_agent::Agent::start(config).await.unwrap();
    let store = agent.state.store.clone();
    assert_eq!(store.get("affine").unwrap().version(), "1", "the version that crash-looped is never loaded again");
    let blocked = store.blocked();
    assert!(blocked["affine"].reason.contains("crash loop"), "{blocked:?}");
    agent.shutdown().await.unwrap();
    plane.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_no_slower_on_a_busier_device_is_not_rolled_back_for_latency() {
    let dir = tempfile::tempdir().unwrap();
    let plane = ControlPlane::start(&dir.path().join("server")).await;
    let token = plane.enrollment_token(1).await;
    let mut config = agent_config(dir.path(), &plane.base, Some(token));
    config.probation_s = 8;
    // Two versions of one graph: v2 is exactly as fast as v1.
    let model = layered_affine_onnx(24);
    super::common::write_package(&config.model_dir, "affine", "1", &model);
    super::common::write_package(&config.model_dir, "affine", "2", &model);
    let pin = |version: &str| serde_json::json!({"models": {"affine": version}, "config": {}});
    let http = reqwest::Client::new();
    let agent = outpost_agent::Agent::start(config.clone()).await.unwrap();
    let status = agent.control().unwrap().clone();
    wait_until("enrollment", || status.device_id().is_some()).await;
    let override_path = format!("/v1/devices/{}/override", status.device_id().unwrap());
    plane.call(reqwest::Method::PUT, &override_path, Some(pin("1"))).await;
    let store = agent.state.store.clone();
    wait_until("v1 serving", || store.get("affine").is_some_and(|m| m.version() == "1")).await;
    infer(&http, &agent, 110).await; // the baseline: one request at a time

    plane.call(reqwest::Method::PUT, &override_path, Some(pin("2"))).await;
    wait_until("v2 active", || store.get("affine").is_some_and(|m| m.version() == "2")).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await; // the probation starts
                                                                      // The device gets busy: 16 clients at once queue for its one session, so every request
                                                                      // waits for up to 15 others and the p99 climbs far past twice the baseline's.
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let (http, agent_addr) = (http.clone(), agent.addr);
            tokio::spawn(async move {
                let body = serde_json::json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]});
                for _ in 0..10 {
                    let url = format!("http://{agent_addr}/v2/models/affine/infer");
                    let r = http.post(url).json(&body).send().await.unwrap();
                    assert!(r.status().is_success(), "{}", r.status());
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    let checks = |outcome: &str| {
        let (metrics, series) = (
            agent.state.metrics.render(),
            format!("outpost_probation_latency_checks_total{{model=\"affine\",outcome=\"{outcome}\"}} "),
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    // The request p99 tripped the check, and running both side by side cleared the version.
    wait_until("the latency check", || checks("cleared") + checks("confirmed") > 0).await;
    assert_eq!((checks("cleared"), checks("confirmed")), (1, 0), "{}", agent.state.metrics.render());
    wait_until("v2 passed probation", || store.slot("affine").is_some_and(|s| s.previous.is_none())).await;
    assert_eq!(store.get("affine").unwrap().version(), "2");
    assert!(store.blocked().is_empty(), "{:?}", store.blocked());
    agent.shutdown().await.unwrap();
    plane.server.shutdown().await.unwrap();
}

/// A TCP proxy in front of the server that breaks the connection carrying the first package
/// download once `cut_after` bytes of its answer went through: the server vanishing mid-body.
/// What the proxy saw: whether it cut, and the `Range` a resumed request asked for.
#[derive(Default)]
pub(super) struct ProxyLog {
    pub(super) fired: std::sync::atomic::AtomicBool,
    pub(super) range: std::sync::Mutex<Option<String>>,
}

/// The proxy arms on the first request whose head contains `pattern` (lowercase).
pub(super) async fn cutting_proxy(
    upstream: String,
    cut_after: u64,
    pattern: &'static str,
) -> (String, std::sync::Arc<ProxyLog>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = std::sync::Arc::new(ProxyLog::default());
    let seen = log.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let log = seen.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(upstream.trim_start_matches("http://")).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let armed = std::sync::Arc::new(AtomicBool::new(false));
                let arm = armed.clone();
                let log_up = log.clone();
                let up = tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 << 10];
                    while let Ok(n) = cr.read(&mut buf).await {
                        if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        let text = String::from_utf8_lossy(&buf[..n]).to_lowercase();
                        if text.contains(pattern) {
                            arm.store(true, Ordering::SeqCst);
                            if let Some(range) = text.lines().find_map(|l| l.strip_prefix("range: ")) {
                                *log_up.range.lock().unwrap() = Some(range.trim().to_string());
                            }
                        }
                    }
                });
                let mut buf = vec![0u8; 16 << 10];
                let mut passed = 0u64;
                while let Ok(n) = sr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if armed.load(Ordering::SeqCst) && !log.fired.load(Ordering::SeqCst) {
                        if passed + n as u64 > cut_after {
                            let keep = (cut_after - passed) as usize;
                            let _ = cw.write_all(&buf[..keep]).await;
                            log.fired.store(true, Ordering::SeqCst);
                            break; // both halves drop: the connection is gone mid-answer
                        }
                        passed += n as u64;
                    }
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                up.abort();
            });
        }
    });
    (format!("http://{addr}"), log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_cut_off_mid_body_resumes_where_it_broke_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let plane = ControlPlane::start(&dir.path().join("server")).await;
    let token = plane.enrollment_token(1).await;
    let build = dir.path().join("build");
    std::fs::create_dir_all(&build).unwrap();
    let onnx = super::common::affine_onnx(1.0);
    let noise: Vec<u8> = (0..(4u32 << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let files = vec![("model.onnx".to_string(), onnx.clone()), ("padding.bin".to_string(), noise)];
    Package::from_parts(super::common::manifest("affine", "1", &onnx), files)
        .unwrap()
        .write_opkg(&build.join("affine-1.opkg"))
        .unwrap();
    let bytes = std::fs::read(build.join("affine-1.opkg")).unwrap();
    publish(&plane, bytes.clone()).await;
    let (proxy, log) = cutting_proxy(plane.base.clone(), 1 << 20, "get /v1/device/packages/").await;

    let config = agent_config(dir.path(), &proxy, Some(token));
    let models = config.model_dir.clone();
    let agent = outpost_agent::Agent::start(config).await.unwrap();
    let status = agent.control().unwrap().clone();
    wait_until("enrollment through the proxy", || status.device_id().is_some()).await;
    let device = status.device_id().unwrap();
    let pin = serde_json::json!({"models": {"affine": "1"}, "config": {}});
    plane.call(reqwest::Method::PUT, &format!("/v1/devices/{device}/override"), Some(pin)).await;
    let store = agent.state.store.clone();
    // The first attempt breaks after about 1 MiB; the retry (backoff of at most 2 s) resumes.
    for _ in 0..100 {
        if store.get("affine").is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(store.get("affine").map(|m| m.version().to_string()).as_deref(), Some("1"));
    assert_eq!(std::fs::read(models.join("affine-1.opkg")).unwrap(), bytes, "the resumed file is the published one");
    assert!(log.fired.load(std::sync::atomic::Ordering::SeqCst), "the proxy cut the first download");
    let range = log.range.lock().unwrap().clone().expect("the retry asked for a range");
    let from: u64 = range.trim_start_matches("bytes=").trim_end_matches('-').parse().unwrap();
    assert!(from > 0 && from < bytes.len() as u64, "resumed from byte {from}, not from zero: {range}");
    agent.shutdown().await.unwrap();
    plane.server.shutdown().await.unwrap();
}
