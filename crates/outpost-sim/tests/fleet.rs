//! The simulator against a real control plane in this process: a small fleet enrolls,
//! heartbeats, goes offline and catches up, acknowledges commands, and every broken request is
//! refused.

#[path = "fleet/rollouts.rs"]
mod rollouts;
#[path = "fleet/updates.rs"]
mod updates;

use outpost_sim::{FaultConfig, SimConfig};
use std::time::Duration;

async fn operator(
    http: &reqwest::Client,
    base: &str,
    admin: &str,
    path: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    let response = http
        .post(format!("{base}{path}"))
        .bearer_auth(admin)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "{path}: {status} {text}");
    serde_json::from_str(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_fleet_enrolls_heartbeats_catches_up_and_sees_every_fault_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = outpost_server::ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    let server = outpost_server::Server::start(config).await.unwrap();
    let base = format!("http://{}", server.addr);
    let admin = std::fs::read_to_string(server.admin_token_path.as_ref().unwrap()).unwrap().trim().to_string();
    let http = outpost_agent::control::client::http_client(4).unwrap();
    let token = operator(&http, &base, &admin, "/v1/enrollment-tokens", serde_json::json!({"uses": 20})).await;

    let sim = SimConfig {
        server: base.clone(),
        devices: 20,
        enroll_token: token["secret"].as_str().unwrap().to_string(),
        heartbeat_interval: Duration::from_millis(300),
        jitter: 0.1,
        offline_fraction: 0.3,
        long_poll: true,
        duration: Some(Duration::from_secs(5)),
        enroll_concurrency: 8,
        faults: FaultConfig { bad_signature: 0.2, replay: 0.2, garbage_json: 0.2 },
        quality: Default::default(),
        package_dir: None,
    };
    // Send a command to every simulated device once the fleet is up.
    let commander = {
        let (http, base, admin) = (http.clone(), base.clone(), admin.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let page: serde_json::Value = serde_json::from_str(
                &http.get(format!("{base}/v1/devices")).bearer_auth(&admin).send().await.unwrap().text().await.unwrap(),
            )
            .unwrap();
            for device in page["items"].as_array().unwrap() {
                let path = format!("/v1/devices/{}/commands", device["id"].as_str().unwrap());
                operator(&http, &base, &admin, &path, serde_json::json!({"kind": "collect_logs"})).await;
            }
        })
    };
    let report = outpost_sim::run(sim, std::future::pending()).await.unwrap();
    commander.await.unwrap();
    println!("{report}");
    assert_eq!(report.enrolled, 20);
    assert!(report.heartbeats_ok >= 20, "{report}");
    assert_eq!(report.heartbeats_failed, 0, "{report}");
    assert!(report.long_polls_completed >= 20, "{report}");
    // Devices offline when the commands arrive acknowledge them once back.
    assert!(report.commands_acked >= 15, "{report}");
    assert!(report.faults_injected() > 0, "{report}");
    assert_eq!(report.faults_rejected(), report.faults_injected(), "{report}");
    if report.went_offline > 0 {
        assert!(report.reports_caught_up > 0, "{report}");
    }
    server.shutdown().await.unwrap();
}
