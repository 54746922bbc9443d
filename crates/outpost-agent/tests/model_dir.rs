//! The model directory: corrupt packages are reported and isolated, new versions swap in while
//! in-flight requests finish on the old one, removed packages are unloaded.

mod common;

use common::{affine_onnx, call, slow_onnx, start, write_package};
use serde_json::json;

fn body(x: f32) -> Vec<u8> {
    serde_json::to_vec(&json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [x, x, x, x]}]}))
        .unwrap()
}

fn corrupt_model_in(path: &std::path::Path) {
    // Flip bytes inside the tar where the ONNX payload sits, keeping the size: a bit-rot or a
    // tampered file, not a truncated one.
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.len() / 2;
    for b in &mut bytes[at..at + 16] {
        *b ^= 0x5a;
    }
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_package_is_unavailable_with_its_reason_while_others_serve() {
    let dir = tempfile::tempdir().unwrap();
    write_package(dir.path(), "good", "1", &affine_onnx(2.0));
    let bad = write_package(dir.path(), "broken", "1", &affine_onnx(3.0));
    corrupt_model_in(&bad);
    std::fs::write(dir.path().join("garbage.opkg"), b"this is not a tar archive").unwrap();
    let agent = start(dir.path(), |_| {}).await;
    let base = format!("http://{}", agent.addr);

    let ok = call("POST", format!("{base}/v2/models/good/infer"), vec![], Some(body(1.0))).await;
    assert_eq!(ok.status, 200);

    let meta = call("GET", format!("{base}/v2/models/broken"), vec![], None).await;
    assert_eq!(meta.status, 503);
    let reason = meta.json()["error"].as_str().unwrap().to_string();
    assert!(reason.contains("broken") && (reason.contains("sha256") || reason.contains("tar")), "{reason}");
    let ready = call("GET", format!("{base}/v2/models/broken/ready"), vec![], None).await;
    assert_eq!((ready.status, ready.json()["ready"].clone()), (400, json!(false)));
    let infer = call("POST", format!("{base}/v2/models/broken/infer"), vec![], Some(body(1.0))).await;
    assert_eq!(infer.status, 503);

    let index = call("POST", format!("{base}/v2/repository/index"), vec![], None).await.json();
    let states: Vec<(String, String)> = index
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap().to_string(), m["state"].as_str().unwrap().to_string()))
        .collect();
    assert!(states.contains(&("good".into(), "READY".into())), "{index}");
    assert!(states.contains(&("broken".into(), "UNAVAILABLE".into())), "{index}");
    assert!(states.contains(&("garbage".into(), "UNAVAILABLE".into())), "{index}");
    let garbage = index.as_array().unwrap().iter().find(|m| m["name"] == "garbage").unwrap();
    assert!(garbage["reason"].as_str().unwrap().contains("tar"), "{garbage}");

    let metrics = String::from_utf8(call("GET", format!("{base}/metrics"), vec![], None).await.body).unwrap();
    assert!(metrics.contains(r#"outpost_model_ready{model="broken"} 0"#), "{metrics}");
    assert!(metrics.contains(r#"outpost_model_ready{model="good"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"outpost_model_load_failures_total{model="broken"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"outpost_requests_total{model="good",endpoint="infer"} 1"#), "{metrics}");
    assert!(metrics.contains("outpost_models_loaded 1"), "{metrics}");
    assert!(metrics.contains(r#"outpost_inference_duration_seconds_count{model="good"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"outpost_queue_depth{model="good"} 0"#), "{metrics}");

    // Repairing the package on disk brings the model up on the next scan.
    write_package(dir.path(), "broken", "2", &affine_onnx(3.0));
    agent.rescan(dir.path().to_path_buf()).await;
    let fixed = call("POST", format!("{base}/v2/models/broken/infer"), vec![], Some(body(1.0))).await;
    assert_eq!(fixed.status, 200);
    assert_eq!(fixed.json()["model_version"], "2");
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_swaps_in_and_a_bad_one_does_not_displace_the_good() {
    let dir = tempfile::tempdir().unwrap();
    write_package(dir.path(), "affine", "1", &affine_onnx(2.0));
    let agent = start(dir.path(), |_| {}).await;
    let url = format!("http://{}/v2/models/affine/infer", agent.addr);
    let y = |a: &common::Answer| a.json()["outputs"][0]["data"][0].as_f64().unwrap();

    assert_eq!(y(&call("POST", url.clone(), vec![], Some(body(1.0))).await), 3.0);
    write_package(dir.path(), "affine", "2", &affine_onnx(10.0));
    agent.rescan(dir.path().to_path_buf()).await;
    let a = call("POST", url.clone(), vec![], Some(body(1.0))).await;
    assert_eq!((a.json()["model_version"].clone(), y(&a)), (json!("2"), 11.0));

    // A corrupt v3 is reported but v2 keeps serving.
    let v3 = write_package(dir.path(), "affine", "3", &affine_onnx(100.0));
    corrupt_model_in(&v3);
    agent.rescan(dir.path().to_path_buf()).await;
    let a = call("POST", url.clone(), vec![], Some(body(1.0))).await;
    assert_eq!((a.status, a.json()["model_version"].clone()), (200, json!("2")));
    let meta = call("GET", format!("http://{}/v2/models/affine", agent.addr), vec![], None).await.json();
    assert!(meta["parameters"]["last_load_error"].as_str().unwrap().contains("sha256"), "{meta}");

    // Removing v2 falls back to v1 (v3 is still broken); removing everything unloads the model.
    std::fs::remove_file(dir.path().join("affine-2.opkg")).unwrap();
    agent.rescan(dir.path().to_path_buf()).await;
    let a = call("POST", url.clone(), vec![], Some(body(1.0))).await;
    assert_eq!((a.json()["model_version"].clone(), y(&a)), (json!("1"), 3.0));
    for f in ["affine-1.opkg", "affine-3.opkg"] {
        std::fs::remove_file(dir.path().join(f)).unwrap();
    }
    agent.rescan(dir.path().to_path_buf()).await;
    assert_eq!(call("POST", url, vec![], Some(body(1.0))).await.status, 404);
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_finish_on_the_old_version_during_a_swap() {
    let dir = tempfile::tempdir().unwrap();
    write_package(dir.path(), "slow", "1", &slow_onnx());
    let agent = start(dir.path(), |c| c.selftest = false).await;
    let url = format!("http://{}/v2/models/slow/infer", agent.addr);
    let payload = serde_json::to_vec(&json!({
        "inputs": [{"name": "x", "shape": [256, 512], "datatype": "FP32", "data": vec![0.0f32; 256 * 512]}],
        "outputs": [{"name": "y", "parameters": {"binary_data": true}}]
    }))
    .unwrap();
    let in_flight: Vec<_> =
        (0..3).map(|_| tokio::spawn(call("POST", url.clone(), vec![], Some(payload.clone())))).collect();
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    write_package(dir.path(), "slow", "2", &slow_onnx());
    agent.rescan(dir.path().to_path_buf()).await;
    for c in in_flight {
        let a = c.await.unwrap();
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    }
    let after = call("GET", format!("http://{}/v2/models/slow", agent.addr), vec![], None).await.json();
    assert_eq!(after["versions"], json!(["2"]));
    agent.shutdown().await.unwrap();
}

/// The store alone, as the control channel drives it: `set_desired`, then a scan.
fn store() -> outpost_agent::store::ModelStore {
    use outpost_runtime::model::MemoryBudget;
    let metrics = std::sync::Arc::new(outpost_agent::metrics::Metrics::new());
    outpost_agent::store::ModelStore::new(
        outpost_runtime::LoadOptions::default(),
        MemoryBudget::new(256 << 20),
        metrics,
    )
}

fn serving(store: &outpost_agent::store::ModelStore, name: &str) -> Option<String> {
    store.get(name).map(|m| m.version().to_string())
}

fn want(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
}

#[test]
fn the_desired_version_is_activated_even_when_lower_and_a_failing_one_never_displaces_a_good() {
    use outpost_proto::fleet::device::FailureKind;
    let dir = tempfile::tempdir().unwrap();
    write_package(dir.path(), "m", "1", &affine_onnx(1.0));
    write_package(dir.path(), "m", "2", &affine_onnx(2.0));
    let store = store();
    store.sync(dir.path());
    assert_eq!(serving(&store, "m").as_deref(), Some("2"), "standalone: the highest version serves");

    // The server asks for 1: a downgrade, done on the next scan.
    assert!(store.set_desired(want(&[("m", "1")])));
    assert!(!store.set_desired(want(&[("m", "1")])), "the same desired state changes nothing");
    store.sync(dir.path());
    assert_eq!(serving(&store, "m").as_deref(), Some("1"));
    // A newer package arriving does not displace the desired version.
    write_package(dir.path(), "m", "3", &affine_onnx(3.0));
    store.sync(dir.path());
    assert_eq!(serving(&store, "m").as_deref(), Some("1"));

    // A desired version that is not on the device yet: keep serving what works.
    store.set_desired(want(&[("m", "4")]));
    store.sync(dir.path());
    assert_eq!(serving(&store, "m").as_deref(), Some("1"));
    // It arrives corrupt: refused with its kind, version 1 keeps serving, and it is not retried
    // on every scan.
    let bad = write_package(dir.path(), "m", "4", &affine_onnx(4.0));
    corrupt_model_in(&bad);
    assert!(store.sync(dir.path()));
    assert_eq!(serving(&store, "m").as_deref(), Some("1"));
    let failure = store.slot("m").unwrap().failure.unwrap();
    assert_eq!((failure.version.as_deref(), failure.kind), (Some("4"), FailureKind::HashMismatch), "{failure:?}");
    assert!(!store.sync(dir.path()), "an unchanged failed package is not tried again");

    // Back to 2, a version that served before.
    store.set_desired(want(&[("m", "2")]));
    store.sync(dir.path());
    assert_eq!(serving(&store, "m").as_deref(), Some("2"));

    // A fresh device whose desired version is broken still serves the best other one.
    let fresh = store_with_desired(&want(&[("m", "4")]));
    fresh.sync(dir.path());
    assert_eq!(serving(&fresh, "m").as_deref(), Some("3"), "never left without a working model");

    // Without a desired version again, the highest loadable one serves.
    store.set_desired(want(&[]));
    store.sync(dir.path());
    assert_eq!(serving(&store, "m").as_deref(), Some("3"));
}

fn store_with_desired(desired: &std::collections::BTreeMap<String, String>) -> outpost_agent::store::ModelStore {
    let s = store();
    s.set_desired(desired.clone());
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_version_serves_only_when_no_other_version_can() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = write_package(dir.path(), "affine", "1", &affine_onnx(1.0));
    write_package(dir.path(), "affine", "2", &affine_onnx(2.0));
    let agent = start(dir.path(), |_| {}).await;
    let store = agent.state.store.clone();
    assert_eq!(store.get("affine").unwrap().version(), "2");
    let blocked =
        outpost_agent::store::Blocked { version: "2".into(), fallback: Some("1".into()), reason: "test".into() };
    store.block("affine", blocked);
    store.set_desired([("affine".to_string(), "2".to_string())].into());
    let (s, d) = (store.clone(), dir.path().to_path_buf());
    tokio::task::spawn_blocking(move || s.sync(&d)).await.unwrap();
    assert_eq!(store.get("affine").unwrap().version(), "1", "the fallback serves in the blocked version's place");
    // A fresh start with only the blocked version on disk: better it than no model at all.
    std::fs::remove_file(v1).unwrap();
    let metrics = std::sync::Arc::new(outpost_agent::metrics::Metrics::new());
    let budget = outpost_runtime::model::MemoryBudget::new(1 << 30);
    let fresh = outpost_agent::store::ModelStore::new(outpost_runtime::LoadOptions::default(), budget, metrics);
    let blocked =
        outpost_agent::store::Blocked { version: "2".into(), fallback: Some("1".into()), reason: "test".into() };
    fresh.block("affine", blocked);
    fresh.set_desired([("affine".to_string(), "2".to_string())].into());
    fresh.sync(dir.path());
    assert_eq!(fresh.get("affine").unwrap().version(), "2", "a device is never left without a model");
    agent.shutdown().await.unwrap();
}
