//! The local inference API against a real agent on a real socket with real packages on disk.

mod common;

use common::{affine_onnx, call, slow_onnx, start, write_package};
use flate2::write::{GzEncoder, ZlibEncoder};
use flate2::Compression;
use serde_json::json;
use std::io::Write;

fn infer_body(values: &[f32]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": "req-1",
        "inputs": [{ "name": "x", "shape": [values.len() / 4, 4], "datatype": "FP32", "data": values }]
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metadata_and_json_inference_follow_the_protocol() {
    let dir = tempfile::tempdir().unwrap();
    write_package(dir.path(), "affine", "1", &affine_onnx(2.0));
    let agent = start(dir.path(), |_| {}).await;
    let base = format!("http://{}", agent.addr);

    let live = call("GET", format!("{base}/v2/health/live"), vec![], None).await;
    assert_eq!((live.status, live.json()), (200, json!({"live": true})));
    let ready = call("GET", format!("{base}/v2/health/ready"), vec![], None).await;
    assert_eq!((ready.status, ready.json()), (200, json!({"ready": true})));
    let server = call("GET", format!("{base}/v2"), vec![], None).await.json();
    assert_eq!(server["name"], "outpost");
    assert!(server["extensions"].as_array().unwrap().contains(&json!("binary_tensor_data")));

    let meta = call("GET", format!("{base}/v2/models/affine"), vec![], None).await;
    assert_eq!(meta.status, 200);
    let meta = meta.json();
    assert_eq!(meta["versions"], json!(["1"]));
    assert_eq!(meta["platform"], "onnx_tract");
    assert_eq!(meta["inputs"], json!([{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]));
    assert_eq!(meta["outputs"][1], json!({"name": "s", "datatype": "FP32", "shape": [-1]}));
    let meta_v = call("GET", format!("{base}/v2/models/affine/versions/1"), vec![], None).await;
    assert_eq!(meta_v.status, 200);
    let ready = call("GET", format!("{base}/v2/models/affine/ready"), vec![], None).await;
    assert_eq!((ready.status, ready.json()), (200, json!({"name": "affine", "ready": true})));

    let answer =
        call("POST", format!("{base}/v2/models/affine/infer"), vec![], Some(infer_body(&[1., 2., 3., 4.]))).await;
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    let out = answer.json();
    assert_eq!(out["model_name"], "affine");
    assert_eq!(out["model_version"], "1");
    assert_eq!(out["id"], "req-1");
    assert_eq!(
        out["outputs"][0],
        json!({"name": "y", "shape": [1, 4], "datatype": "FP32", "data": [3.0, 5.0, 7.0, 9.0]})
    );
    assert_eq!(out["outputs"][1]["data"], json!([24.0]));

    let versioned =
        call("POST", format!("{base}/v2/models/affine/versions/1/infer"), vec![], Some(infer_body(&[0.; 8]))).await;
    assert_eq!(versioned.json()["outputs"][1]["shape"], json!([2]));
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_tensors_and_compressed_bodies_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    write_package(dir.path(), "affine", "1", &affine_onnx(2.0));
    let agent = start(dir.path(), |_| {}).await;
    let url = format!("http://{}/v2/models/affine/infer", agent.addr);

    let header = json!({
        "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}],
        "outputs": [{"name": "s", "parameters": {"binary_data": true}}, {"name": "y", "parameters": {"binary_data": false}}]
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    for v in [1f32, 1., 1., 1.] {
        body.extend_from_slice(&v.to_le_bytes());
    }
    let len = header.len().to_string();
    let answer =
        call("POST", url.clone(), vec![("Inference-Header-Content-Length", len.clone())], Some(body.clone())).await;
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    let n: usize = answer.header("inference-header-content-length").expect("binary response header").parse().unwrap();
    let head: serde_json::Value = serde_json::from_slice(&answer.body[..n]).unwrap();
    assert_eq!(head["outputs"][0]["name"], "s");
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 4);
    assert_eq!(head["outputs"][1]["data"], json!([3.0, 3.0, 3.0, 3.0]));
    assert_eq!(f32::from_le_bytes(answer.body[n..n + 4].try_into().unwrap()), 12.0);

    for encoding in ["gzip", "deflate"] {
        let compressed = match encoding {
            "gzip" => {
                let mut e = GzEncoder::new(Vec::new(), Compression::default());
                e.write_all(&body).unwrap();
                e.finish().unwrap()
            }
            _ => {
                // HTTP "deflate" is the zlib format (RFC 9110), which is what tritonclient sends.
                let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
                e.write_all(&body).unwrap();
                e.finish().unwrap()
            }
        };
        let headers =
            vec![("Inference-Header-Content-Length", len.clone()), ("Content-Encoding", encoding.to_string())];
        let answer = call("POST", url.clone(), headers, Some(compressed)).await;
        assert_eq!(answer.status, 200, "{encoding}: {}", String::from_utf8_lossy(&answer.body));
    }
    let garbage = call("POST", url, vec![("Content-Encoding", "gzip".into())], Some(b"not gzip at all".to_vec())).await;
    assert_eq!(garbage.status, 400, "{}", String::from_utf8_lossy(&garbage.body));
    assert!(garbage.json()["error"].is_string());
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_json_errors_with_the_right_status() {
    let dir = tempfile::tempdir().unwrap();
    write_package(dir.path(), "affine", "1", &affine_onnx(2.0));
    let agent = start(dir.path(), |c| c.max_body_bytes = 4096).await;
    let base = format!("http://{}", agent.addr);
    let infer = format!("{base}/v2/models/affine/infer");
    let post = |url: String, body: Vec<u8>| call("POST", url, vec![], Some(body));

    let cases: Vec<(serde_json::Value, &str)> = vec![
        (json!({"inputs": [{"name": "q", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}), "input `q`"),
        (
            json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "INT64", "data": [1, 2, 3, 4]}]}),
            "input `x`: expected datatype FP32",
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [1, 5], "datatype": "FP32", "data": [1, 2, 3, 4, 5]}]}),
            "input `x`: expected shape",
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3]}]}),
            "input `x`: shape [1, 4] needs 4 elements",
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, "a"]}]}),
            "input `x`: element 3",
        ),
        (json!({"inputs": []}), "input `x`: missing"),
    ];
    for (body, needle) in cases {
        let a = post(infer.clone(), serde_json::to_vec(&body).unwrap()).await;
        assert_eq!(a.status, 400, "{body}");
        let msg = a.json()["error"].as_str().unwrap().to_string();
        assert!(msg.contains(needle), "`{needle}` not in `{msg}`");
    }
    let a = post(infer.clone(), b"{\"inputs\": [".to_vec()).await;
    assert_eq!(a.status, 400);
    assert!(a.json()["error"].as_str().unwrap().contains("invalid inference request JSON"));

    let a = post(format!("{base}/v2/models/nope/infer"), infer_body(&[0.; 4])).await;
    assert_eq!(a.status, 404);
    assert!(a.json()["error"].as_str().unwrap().contains("unknown model `nope`"));
    let a = post(format!("{base}/v2/models/affine/versions/7/infer"), infer_body(&[0.; 4])).await;
    assert_eq!(a.status, 404);
    assert!(a.json()["error"].as_str().unwrap().contains("no version `7`"));
    assert_eq!(call("GET", format!("{base}/v2/models/nope"), vec![], None).await.status, 404);
    assert_eq!(call("GET", format!("{base}/v2/models/nope/ready"), vec![], None).await.status, 404);
    assert_eq!(call("GET", format!("{base}/v2/nothing/here"), vec![], None).await.status, 404);

    let big = post(infer.clone(), infer_body(&vec![0.5; 4 * 400])).await;
    assert_eq!(big.status, 413);
    assert!(big.json()["error"].as_str().unwrap().contains("limit"));

    // A small gzip body that inflates past the limit is refused too: the limit is on decoded bytes.
    let mut e = GzEncoder::new(Vec::new(), Compression::best());
    e.write_all(&infer_body(&vec![0.0; 4 * 2000])).unwrap();
    let bomb = call("POST", infer, vec![("Content-Encoding", "gzip".into())], Some(e.finish().unwrap())).await;
    assert_eq!(bomb.status, 413, "{}", String::from_utf8_lossy(&bomb.body));
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_answers_429_instead_of_waiting() {
    let dir = tempfile::tempdir().unwrap();
    write_package(dir.path(), "slow", "1", &slow_onnx());
    let agent = start(dir.path(), |c| {
        c.queue_capacity = 1;
        c.selftest = false;
        // This test is about the inference queue, not the request-body budget.
        c.max_inflight_body_bytes = 1 << 30;
    })
    .await;
    let url = format!("http://{}/v2/models/slow/infer", agent.addr);
    let body = serde_json::to_vec(&json!({
        "inputs": [{"name": "x", "shape": [256, 512], "datatype": "FP32", "data": vec![0.1f32; 256 * 512]}]
    }))
    .unwrap();
    // Enough callers that some arrive while one runs and one waits, even when a loaded machine
    // spreads their arrivals out (12 were sometimes served one after another in CI).
    let calls: Vec<_> = (0..32).map(|_| tokio::spawn(call("POST", url.clone(), vec![], Some(body.clone())))).collect();
    let mut statuses = Vec::new();
    for c in calls {
        let a = c.await.unwrap();
        if a.status == 429 {
            assert!(a.json()["error"].as_str().unwrap().contains("queue full"));
            assert_eq!(a.header("retry-after"), Some("1"));
        }
        statuses.push(a.status);
    }
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
    agent.shutdown().await.unwrap();
}
