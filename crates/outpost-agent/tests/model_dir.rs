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
