//! Attacks on the server's resources, on SQLite and PostgreSQL: many large bodies held open at
//! once, and `/metrics` read by `promtool` in the format the client asks for.

use crate::common;

use common::db::test_databases;
use common::server::TestServer;
use outpost_server::{Server, ServerConfig};
use std::io::Write;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// POSTs `body` to `/v1/enroll` and returns the status, `Retry-After` and JSON body.
async fn enroll_raw(http: &reqwest::Client, base: &str, body: Vec<u8>) -> (u16, Option<String>, serde_json::Value) {
    let resp = http
        .post(format!("{base}/v1/enroll"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let retry = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    (status, retry, resp.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_held_open_in_parallel_stay_within_the_server_budget() {
    for (label, url) in test_databases().await {
        let dir = tempfile::tempdir().unwrap();
        let max_body = 64 << 10;
        let config = ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            database: Some(url),
            max_connections: 4,
            max_body_bytes: max_body,
            ..ServerConfig::default()
        };
        let server = Server::start(config).await.unwrap_or_else(|e| panic!("{label}: {e}"));
        let base = format!("http://{}", server.addr);
        let http = reqwest::Client::new();

        let (status, _, body) = enroll_raw(&http, &base, vec![b' '; max_body + 1]).await;
        assert_eq!((status, body["code"].as_str()), (413, Some("payload_too_large")), "{label}");

        // Each slow upload announces a full-size body and sends a little of it: together they hold
        // the whole budget (64 maximum-size bodies) without finishing.
        let mut held = Vec::new();
        for _ in 0..outpost_server::budget::BODIES_IN_FLIGHT {
            let mut s = TcpStream::connect(server.addr).await.unwrap();
            let head = format!(
                "POST /v1/enroll HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {max_body}\r\n\r\n"
            );
            s.write_all(head.as_bytes()).await.unwrap();
            s.write_all(&[b' '; 1000]).await.unwrap();
            held.push(s);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let refused = loop {
            let (status, retry, body) = enroll_raw(&http, &base, br#"{"token": "x"}"#.to_vec()).await;
            if status == 503 {
                break (retry, body);
            }
            assert!(Instant::now() < deadline, "{label}: a body beyond the budget was never refused ({status})");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(refused.1["code"], "overloaded", "{label}");
        assert!(refused.0.is_some(), "{label}: 503 without Retry-After");

        // The stalled uploads go away, and with them their share of the budget.
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, _, body) = enroll_raw(&http, &base, br#"{"token": "x"}"#.to_vec()).await;
            if status != 503 {
                assert!(body["code"].is_string(), "{label}: {status} {body}");
                break;
            }
            assert!(Instant::now() < deadline, "{label}: the budget was not released");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.shutdown().await.unwrap();
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_in_the_format_the_client_asks_for() {
    for (label, url) in test_databases().await {
        let s = TestServer::start(&label, &url).await;
        let http = reqwest::Client::new();
        // A counted request first, so the counter families have samples.
        http.get(format!("{}/healthz", s.base)).send().await.unwrap();

        let plain = http.get(format!("{}/metrics", s.base)).send().await.unwrap();
        assert_eq!(plain.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8", "{label}");
        let text = plain.text().await.unwrap();
        assert!(text.contains("# TYPE outpost_server_http_requests_total counter\n"), "{label}: {text}");
        assert!(!text.contains("# EOF"), "{label}");
        if let Some(verdict) = promtool(&text) {
            verdict.unwrap_or_else(|e| panic!("{label}: promtool refuses the 0.0.4 form: {e}\n{text}"));
        }

        let om = http
            .get(format!("{}/metrics", s.base))
            .header("accept", "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3")
            .send()
            .await
            .unwrap();
        let content_type = om.headers()["content-type"].to_str().unwrap().to_string();
        assert_eq!(content_type, "application/openmetrics-text; version=1.0.0; charset=utf-8", "{label}");
        let text = om.text().await.unwrap();
        assert!(text.contains("# TYPE outpost_server_http_requests counter\n") && text.ends_with("# EOF\n"), "{label}");
        s.stop().await;
    }
}
