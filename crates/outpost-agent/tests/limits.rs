//! Attacks on the agent's resources, against a real agent on a real socket: compressed bodies
//! that inflate in parallel, pipeline floods, and `/metrics` read by `promtool`.

mod common;

use common::{affine_onnx, call, slow_window_onnx, start, write_package, write_package_with};
use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::json;
use std::io::Write;

/// This process's peak resident set (`VmHWM`) in MiB, on Linux.
fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kb >> 10)
}

fn affine_request() -> Vec<u8> {
    serde_json::to_vec(&json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_gzip_bombs_stay_within_the_request_budget() {
    let dir = tempfile::tempdir().unwrap();
    write_package(dir.path(), "affine", "1", &affine_onnx(2.0));
    // The documented defaults: 64 MiB per body and 64 MiB for all bodies in flight.
    let agent = start(dir.path(), |_| {}).await;
    let budget = agent.state.bodies.clone();
    let url = format!("http://{}/v2/models/affine/infer", agent.addr);

    // 128 KiB of gzip that inflates to 128 MiB of zeros, twice the per-request limit.
    let mut e = GzEncoder::new(Vec::new(), Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..128 {
        e.write_all(&zeros).unwrap();
    }
    let bomb = e.finish().unwrap();
    drop(zeros);

    let calls: Vec<_> = (0..32)
        .map(|_| tokio::spawn(call("POST", url.clone(), vec![("Content-Encoding", "gzip".into())], Some(bomb.clone()))))
        .collect();
    let mut statuses = Vec::new();
    for c in calls {
        let a = c.await.unwrap();
        assert!(a.status == 413 || a.status == 503, "{}: {}", a.status, String::from_utf8_lossy(&a.body));
        assert!(a.json()["error"].is_string());
        if a.status == 503 {
            assert_eq!(a.header("retry-after"), Some("1"));
            assert!(a.json()["error"].as_str().unwrap().contains("max_inflight_body_bytes"));
        }
        statuses.push(a.status);
    }
    assert!(budget.peak() <= budget.capacity(), "budget peak {} over {}", budget.peak(), budget.capacity());
    assert_eq!(budget.in_use(), 0, "every refused body gave its bytes back");

    let answer = call("POST", url, vec![], Some(affine_request())).await;
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    // The old agent held up to 64 MiB per bomb (over 1 GB for 32); the budget holds 64 MiB in all.
    if let Some(peak) = peak_rss_mib() {
        assert!(peak < 400, "peak RSS {peak} MiB for 32 parallel gzip bombs ({statuses:?})");
    }
    agent.shutdown().await.unwrap();
}

#[tokio::test]
async fn unknown_content_encoding_gets_a_json_415() {
    let dir = tempfile::tempdir().unwrap();
    write_package(dir.path(), "affine", "1", &affine_onnx(2.0));
    let agent = start(dir.path(), |_| {}).await;
    let url = format!("http://{}/v2/models/affine/infer", agent.addr);
    for encoding in ["br", "zstd", "gzip, br"] {
        let a = call("POST", url.clone(), vec![("Content-Encoding", encoding.into())], Some(affine_request())).await;
        assert_eq!(a.status, 415, "{encoding}");
        assert!(a.json()["error"].as_str().unwrap().contains("Content-Encoding"), "{encoding}");
    }
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn predict_flood_is_bounded_with_429() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = "[pre]\nkind = \"sensor\"\nchannels = 1\nwindow = 512\nlayout = \"flat\"\n";
    write_package_with(dir.path(), "windows", "1", &slow_window_onnx(), pipeline);
    let agent = start(dir.path(), |c| {
        c.sessions = 1;
        c.queue_capacity = 1;
        c.selftest = false;
    })
    .await;
    let url = format!("http://{}/v1/models/windows/predict", agent.addr);
    // 64 windows per request, each a dozen matrix products.
    let body = serde_json::to_vec(&json!({"channels": [vec![0.1f32; 512 * 64]]})).unwrap();
    let calls: Vec<_> = (0..12).map(|_| tokio::spawn(call("POST", url.clone(), vec![], Some(body.clone())))).collect();
    let mut statuses = Vec::new();
    for c in calls {
        let a = c.await.unwrap();
        match a.status {
            200 => assert_eq!(a.json()["predictions"].as_array().map(Vec::len), Some(64)),
            429 => {
                assert!(a.json()["error"].as_str().unwrap().contains("predict queue full"));
                assert_eq!(a.header("retry-after"), Some("1"));
            }
            other => panic!("{other}: {}", String::from_utf8_lossy(&a.body)),
        }
        statuses.push(a.status);
    }
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    agent.shutdown().await.unwrap();
}

/// Runs `promtool check metrics` on `text`: `None` when promtool is not installed (a failure
/// under `CI`, where it must be).
fn promtool(text: &str) -> Option<Result<(), String>> {
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var("CI").map_or(true, |v| v.is_empty()),
                "promtool is required when CI is set (apt-get install prometheus): {e}"
            );
            eprintln!("WARNING: promtool not installed ({e}); /metrics not checked by promtool");
            return None;
        }
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Some(if out.status.success() { Ok(()) } else { Err(said) })
}

/// OpenMetrics structure that `promtool check metrics` (a 0.0.4 parser) cannot judge: every
/// sample belongs to a family with HELP and TYPE and carries a suffix its type allows, and the
/// body ends with `# EOF`.
fn check_openmetrics(text: &str) {
    assert!(text.ends_with("# EOF\n"), "no # EOF at the end");
    let mut families = std::collections::HashMap::new();
    let mut helped = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            families.insert(name.to_string(), kind.to_string());
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.insert(rest.split_once(' ').unwrap().0.to_string());
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap();
            let found = families.iter().any(|(family, kind)| {
                let suffixes: &[&str] = match kind.as_str() {
                    "counter" => &["_total", "_created"],
                    "histogram" => &["_bucket", "_sum", "_count", "_created"],
                    _ => &[""],
                };
                suffixes.iter().any(|s| name == format!("{family}{s}"))
            });
            assert!(found, "sample `{name}` belongs to no declared family");
        }
    }
    for family in families.keys() {
        assert!(helped.contains(family), "family `{family}` has no HELP");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_in_the_format_the_client_asks_for() {
    let dir = tempfile::tempdir().unwrap();
    let reference = "[reference.inputs.x]\naxis = 1\ncount = 9\nmean = [0.0, 0.0, 0.0, 0.0]\n\
                     std = [1.0, 1.0, 1.0, 1.0]\nmin = [-1.0, -1.0, -1.0, -1.0]\nmax = [1.0, 1.0, 1.0, 1.0]\n";
    write_package_with(dir.path(), "affine", "1", &affine_onnx(2.0), reference);
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_path_buf();
    let agent = start(dir.path(), move |c| {
        // Export and drift series too: a sink that cannot connect, a window per request.
        c.data_dir = data_dir;
        c.export.models = vec!["affine".into()];
        c.export.mqtt =
            Some(outpost_agent::export::config::MqttConfig { url: "mqtt://127.0.0.1:1".into(), ..Default::default() });
        c.drift.window_samples = 1;
        c.drift.min_samples = 1;
    })
    .await;
    let base = format!("http://{}", agent.addr);
    // Series of every kind: a request, an error, latencies, gauges.
    call("POST", format!("{base}/v2/models/affine/infer"), vec![], Some(affine_request())).await;
    call("POST", format!("{base}/v2/models/affine/infer"), vec![], Some(b"{".to_vec())).await;
    // The telemetry task takes closed drift windows once a second.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;

    let plain = call("GET", format!("{base}/metrics"), vec![], None).await;
    assert_eq!(plain.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    let text = String::from_utf8(plain.body.clone()).unwrap();
    assert!(text.contains("# HELP outpost_requests_total ") && text.contains("# TYPE outpost_requests_total counter"));
    assert!(text.contains("outpost_requests_total{model=\"affine\",endpoint=\"infer\"} 2"), "{text}");
    assert!(text.contains("outpost_drift_windows_total{model=\"affine\",status=\"alert\"} 1"), "{text}");
    assert!(text.contains("outpost_drift_score{model=\"affine\"}"), "{text}");
    assert!(text.contains("outpost_export_records_total{kind=\"result\"} 1"), "{text}");
    assert!(text.contains("outpost_export_sink_connected{sink=\"mqtt\"} 0"), "{text}");
    assert!(!text.contains("# EOF"));
    if let Some(verdict) = promtool(&text) {
        verdict.unwrap_or_else(|e| panic!("promtool refuses the 0.0.4 form: {e}\n{text}"));
    }

    let accept = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
    let om = call("GET", format!("{base}/metrics"), vec![("Accept", accept.into())], None).await;
    assert_eq!(om.header("content-type"), Some("application/openmetrics-text; version=1.0.0; charset=utf-8"));
    let text = String::from_utf8(om.body.clone()).unwrap();
    assert!(text.contains("# TYPE outpost_requests counter\n"), "{text}");
    check_openmetrics(&text);
    agent.shutdown().await.unwrap();
}
