//! Simulated devices take part in rollouts for real: they download each version the rollout
//! gives them, report per-version windows, and a share of them regresses under one version.
//! A good version completes wave by wave; the regressing one is stopped by its gate and the
//! fleet returns to the good version by itself.

use super::updates::{package, sim_config, Plane, MODEL};
use outpost_sim::quality::QualityFaults;
use std::time::{Duration, Instant};

const DEVICES: usize = 12;

impl Plane {
    async fn rollout_until(&self, id: i64, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.call(reqwest::Method::GET, &format!("/v1/rollouts/{id}"), None, true).await;
            if done(&r) {
                return r;
            }
            assert!(Instant::now() < deadline, "rollout {id} stuck: {r:#}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn serving(&self) -> Vec<String> {
        let page = self.call(reqwest::Method::GET, "/v1/devices?selector=fleet%3Drollouts&limit=100", None, true).await;
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|d| {
                d["models"].as_array()?.iter().find(|m| m["name"] == MODEL)?["version"].as_str().map(String::from)
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_devices_complete_a_good_rollout_and_a_regression_rolls_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = outpost_server::ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("server"),
        rollout_tick_ms: 200,
        device_reports_per_min: 100_000,
        ..Default::default()
    };
    let server = outpost_server::Server::start(config).await.unwrap();
    let admin = std::fs::read_to_string(server.admin_token_path.as_ref().unwrap()).unwrap().trim().to_string();
    let plane = Plane {
        http: outpost_agent::control::client::http_client(4).unwrap(),
        base: format!("http://{}", server.addr),
        admin,
    };
    let token = plane
        .post("/v1/enrollment-tokens", serde_json::json!({"uses": DEVICES, "labels": {"fleet": "rollouts"}}))
        .await;
    for (v, tune) in [("1", 0.0), ("2", 1e-3), ("3", 2e-3)] {
        plane.call(reqwest::Method::POST, "/v1/model-packages", Some(package(v, tune)), false).await;
    }
    plane
        .post("/v1/assignments", serde_json::json!({"selector": "fleet=rollouts", "model": MODEL, "version": "1"}))
        .await;
    let mut sim = sim_config(&plane, &token, DEVICES, Duration::from_millis(300), dir.path().join("sim-packages"));
    sim.quality = QualityFaults { regress: 0.5, regress_version: Some("3".into()), ..QualityFaults::default() };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let fleet = tokio::spawn(outpost_sim::run(sim, async move {
        let _ = stopped.await;
    }));
    let deadline = Instant::now() + Duration::from_secs(30);
    while plane.serving().await.iter().filter(|v| *v == "1").count() < DEVICES {
        assert!(Instant::now() < deadline, "the fleet never ran v1");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Some history of v1 for the ratio gates' baseline.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let spec = |version: &str| {
        serde_json::json!({
            "model": MODEL, "version": version, "selector": "fleet=rollouts", "waves": [25, 100], "bake_s": 2,
            "gates": ["error_rate<3x", "p99_latency<1.5x"], "min_samples": 200, "wave_deadline_s": 40,
        })
    };
    let id = plane.post("/v1/rollouts", spec("2")).await["id"].as_i64().unwrap();
    let done = plane.rollout_until(id, |r| !matches!(r["state"].as_str(), Some("pending" | "running"))).await;
    assert_eq!(done["state"], "completed", "{done:#}");
    assert_eq!(done["waves"][0]["devices"], 3, "{done:#}");
    assert_eq!(plane.serving().await, vec!["2"; DEVICES]);

    let id = plane.post("/v1/rollouts", spec("3")).await["id"].as_i64().unwrap();
    let done = plane.rollout_until(id, |r| !matches!(r["state"].as_str(), Some("pending" | "running"))).await;
    assert_eq!(done["state"], "rolled_back", "{done:#}");
    assert!(done["reason"].as_str().unwrap().contains("failed"), "{done:#}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while plane.serving().await != vec!["2"; DEVICES] {
        assert!(Instant::now() < deadline, "the fleet never returned to v2: {:?}", plane.serving().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop.send(());
    fleet.await.unwrap().unwrap();
    server.shutdown().await.unwrap();
}
