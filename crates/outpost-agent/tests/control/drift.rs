//! Drift end to end: a package with reference statistics, requests like the reference and
//! then with a gain change, the device's windows in its reports, the server's drift view and
//! alerts, the exported `drift` alert and the Prometheus series on both sides.

use crate::common::{self, call};
use std::time::Duration;

/// `[reference]` of `x: [batch, 4]`: every channel N(0, 1), with the normal's quantiles for the
/// first; and of the output `s` (the sum of `x + 1` over four channels: N(4, 2)).
const REFERENCE: &str = r#"
[reference.inputs.x]
axis = 1
count = 10000
mean = [0.0, 0.0, 0.0, 0.0]
std = [1.0, 1.0, 1.0, 1.0]
min = [-4.0, -4.0, -4.0, -4.0]
max = [4.0, 4.0, 4.0, 4.0]
quantiles = [-2.326348, -1.644854, -0.67449, 0.0, 0.67449, 1.644854, 2.326348]
[reference.outputs.s]
count = 10000
mean = [4.0]
std = [2.0]
min = [-4.0]
max = [12.0]
"#;

/// Deterministic standard normals.
struct Normals(u64);

impl Normals {
    fn next(&mut self) -> f64 {
        let mut uniform = || {
            self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        let (u, v) = (uniform(), uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

async fn send(agent: &outpost_agent::Agent, rng: &mut Normals, gain: f64) {
    let data: Vec<f64> = (0..32).map(|_| rng.next() * gain).collect();
    let body = serde_json::json!({"inputs": [{"name": "x", "shape": [8, 4], "datatype": "FP32", "data": data}]});
    let url = format!("http://{}/v2/models/affine/infer", agent.addr);
    let answer =
        call("POST", url, vec![("content-type", "application/json".into())], Some(body.to_string().into())).await;
    assert_eq!(answer.status, 200);
}

async fn text(url: String, bearer: Option<&str>) -> String {
    let headers = bearer.map(|t| vec![("authorization", format!("Bearer {t}"))]).unwrap_or_default();
    String::from_utf8_lossy(&call("GET", url, headers, None).await.body).to_string()
}

/// Polls `check` every 200 ms for up to 30 s.
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..150 {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gain_change_raises_a_drift_alert_on_the_device_the_server_and_the_export() {
    let dir = tempfile::tempdir().unwrap();
    let plane = super::ControlPlane::start(&dir.path().join("server")).await;
    let token = plane.enrollment_token(1).await;
    let mut config = super::agent_config(dir.path(), &plane.base, Some(token));
    config.drift.window_samples = 40;
    config.drift.min_samples = 40;
    common::write_package_with(&config.model_dir, "affine", "1", &common::affine_onnx(1.0), REFERENCE);
    let agent = outpost_agent::Agent::start(config).await.unwrap();
    let status = agent.control().unwrap().clone();
    super::wait_until("enrolled", || status.device_id().is_some()).await;
    let device = status.device_id().unwrap();

    // Like the reference: one window, `ok`.
    let mut rng = Normals(42);
    for _ in 0..40 {
        send(&agent, &mut rng, 1.0).await;
    }
    let metrics = format!("http://{}/metrics", agent.addr);
    eventually("an ok window", async || {
        text(metrics.clone(), None)
            .await
            .contains("outpost_drift_windows_total{model=\"affine\",status=\"ok\"} 1")
            .then_some(())
    })
    .await;
    let drift = eventually("the server to hold the window", async || {
        let groups = plane.call(reqwest::Method::GET, "/v1/drift?model=affine", None).await;
        (groups[0]["devices"] == 1).then_some(groups)
    })
    .await;
    assert_eq!((drift[0]["version"].as_str(), drift[0]["ok"].as_u64()), (Some("1"), Some(1)), "{drift}");
    assert!(drift[0]["max_score"].as_f64().unwrap() < 0.1, "{drift}");
    assert_eq!(plane.call(reqwest::Method::GET, "/v1/alerts", None).await, serde_json::json!([]));

    // The gain triples: the next window is at the alert level, the worst feature an input channel.
    for _ in 0..40 {
        send(&agent, &mut rng, 3.0).await;
    }
    let alerts = eventually("a drift alert on the server", async || {
        let alerts = plane.call(reqwest::Method::GET, "/v1/alerts", None).await;
        (alerts.as_array().unwrap().len() == 1).then_some(alerts)
    })
    .await;
    let a = &alerts[0];
    assert_eq!(
        (a["rule"].as_str(), a["model"].as_str(), a["version"].as_str()),
        (Some("drift"), Some("affine"), Some("1"))
    );
    assert_eq!(a["alerting"], serde_json::json!([device]));
    assert!(a["since_ms"].as_i64().unwrap() > 0);
    let drift = plane.call(reqwest::Method::GET, "/v1/drift?model=affine&group_by=site", None).await;
    assert_eq!((drift[0]["alert"].as_u64(), drift[0]["group"].as_str()), (Some(1), Some("lab")), "{drift}");
    assert!(
        drift[0]["features"][0]["feature"].as_str().unwrap().starts_with("x[")
            || drift[0]["features"][0]["feature"] == "s"
    );
    assert!(drift[0]["max_score"].as_f64().unwrap() > 1.0, "{drift}");
    let none = plane.call(reqwest::Method::GET, "/v1/drift?selector=site%3Dparis", None).await;
    assert_eq!(none, serde_json::json!([]));

    // The device exported the alert (to its server sink) with what moved.
    let alert = eventually("the exported drift alert", async || {
        let page = plane.call(reqwest::Method::GET, &format!("/v1/results?device={device}&kind=alert"), None).await;
        page["items"].as_array().unwrap().first().cloned()
    })
    .await;
    assert_eq!(alert["record"]["event"], "drift");
    assert_eq!(alert["record"]["details"]["status"], "alert");
    assert!(alert["record"]["details"]["features"].as_array().unwrap().len() <= 3);
    let telemetry =
        plane.call(reqwest::Method::GET, &format!("/v1/results?device={device}&kind=telemetry"), None).await;
    assert!(!telemetry["items"].as_array().unwrap().is_empty());

    // Prometheus: the device's score and the server's firing alert (refreshed every 15 s).
    let device_metrics = text(metrics, None).await;
    assert!(
        device_metrics.contains("outpost_drift_windows_total{model=\"affine\",status=\"alert\"} 1"),
        "{device_metrics}"
    );
    let server_metrics = format!("{}/metrics", plane.base);
    eventually("the server's alert series", async || {
        text(server_metrics.clone(), None).await.contains("outpost_server_alerts_firing{rule=\"drift\"").then_some(())
    })
    .await;
    let series = text(server_metrics, None).await;
    assert!(
        series.contains("outpost_server_drift_devices{model=\"affine\",version=\"1\",status=\"alert\"} 1"),
        "{series}"
    );
    agent.shutdown().await.unwrap();
}
