//! Result export to the Mosquitto on 127.0.0.1:1883 (`OUTPOST_MQTT` overrides; under CI=true a
//! missing broker fails the run): delivery with ids, the request option, MQTT 5, a broker that
//! goes away and one that refuses the client, with a restart of the agent in between.

use crate::common::{self, call};
use outpost_agent::export::config::MqttConfig;
use outpost_agent::AgentConfig;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// The broker's address, or None (outside CI) when none is running.
async fn broker() -> Option<String> {
    let addr = std::env::var("OUTPOST_MQTT").unwrap_or_else(|_| "127.0.0.1:1883".into());
    match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(&addr)).await {
        Ok(Ok(_)) => Some(addr),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("no MQTT broker at {addr}: the export tests need Mosquitto (CI=true never skips)")
        }
        _ => {
            eprintln!("skipping: no MQTT broker at {addr}");
            None
        }
    }
}

/// Subscribes to `filter` and forwards every message (topic, JSON) to the returned channel.
async fn subscribe(addr: &str, filter: &str) -> mpsc::UnboundedReceiver<(String, serde_json::Value)> {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let id = format!("test-sub-{}", rand::random::<u32>());
    let mut o = rumqttc::MqttOptions::new(id, host, port.parse().unwrap());
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(o, 64);
    client.subscribe(filter, rumqttc::QoS::AtLeastOnce).await.unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut ready = Some(ready_tx);
    tokio::spawn(async move {
        let _client = client;
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) if p.topic.ends_with("/batch") => {
                    // `zstd_batches`: one compressed array of records per message.
                    let json = zstd::decode_all(&p.payload[..]).expect("a batch is zstd");
                    let records: Vec<serde_json::Value> = serde_json::from_slice(&json).expect("a JSON array");
                    for r in records {
                        if tx.send((p.topic.clone(), r)).is_err() {
                            return;
                        }
                    }
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let json = serde_json::from_slice(&p.payload).expect("export payloads are JSON");
                    if tx.send((p.topic.clone(), json)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready_rx).await.expect("SUBACK").unwrap();
    rx
}

/// Waits for `n` messages (or fails after 30 s); returns them.
async fn receive(
    rx: &mut mpsc::UnboundedReceiver<(String, serde_json::Value)>,
    n: usize,
) -> Vec<(String, serde_json::Value)> {
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
            Ok(Some(m)) => got.push(m),
            _ => panic!("{} of {n} export messages arrived", got.len()),
        }
    }
    got
}

const REQUEST: &str = r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}"#;

async fn infer(agent: &outpost_agent::Agent, query: &str) -> u16 {
    let url = format!("http://{}/v2/models/affine/infer{query}", agent.addr);
    call("POST", url, vec![("content-type", "application/json".into())], Some(REQUEST.as_bytes().to_vec())).await.status
}

fn prefix() -> String {
    format!("outpost-test-{}", rand::random::<u32>())
}

async fn agent_with(models: &std::path::Path, data: &std::path::Path, mqtt: MqttConfig) -> outpost_agent::Agent {
    let data = data.to_path_buf();
    common::start(models, move |c: &mut AgentConfig| {
        c.data_dir = data;
        c.export.mqtt = Some(mqtt);
    })
    .await
}

/// `zstd_batches`: a batch is one compressed message whose records keep their ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_batches_carry_every_record_once_in_fewer_bytes() {
    let Some(addr) = broker().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    common::write_package(&models, "affine", "1", &common::affine_onnx(1.0));
    let topic_prefix = prefix();
    let mut rx = subscribe(&addr, &format!("{topic_prefix}/#")).await;
    let mqtt = MqttConfig {
        url: format!("mqtt://{addr}"),
        topic_prefix: topic_prefix.clone(),
        zstd_batches: true,
        ..MqttConfig::default()
    };
    let agent = agent_with(&models, &dir.path().join("data"), mqtt).await;
    for _ in 0..40 {
        assert_eq!(infer(&agent, "?export=true").await, 200);
    }
    let got = receive(&mut rx, 40).await;
    assert!(got.iter().all(|(t, v)| t.ends_with("/batch") && v["kind"] == "result" && v["model"] == "affine"));
    let ids: std::collections::HashSet<&str> = got.iter().map(|(_, v)| v["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 40);
    // The linger gathers the 40 results into few messages, far smaller than their JSON. The sink
    // counts a batch once its PUBACK is in, which may be after the subscriber has it.
    wait_for_metric(&agent, "outpost_export_sent_records_total{sink=\"mqtt\"}", 40.0).await;
    let sent = metric(&agent, "outpost_export_sent_bytes_total{sink=\"mqtt\"}").await;
    let json: usize = got.iter().map(|(_, v)| v.to_string().len()).sum();
    assert!(sent > 0.0 && sent < json as f64 / 2.0, "sent {sent} bytes for {json} bytes of records");
    agent.shutdown().await.unwrap();
}

/// A full disk under the data directory: requests are still answered, the results that do not
/// fit are counted as `disk_full`, what was stored is still delivered (its acks commit on the
/// full disk), and export resumes once there is space again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_full_disk_requests_are_answered_lost_results_are_counted_and_export_resumes() {
    let Some(addr) = broker().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    common::write_package(&models, "affine", "1", &common::affine_onnx(1.0));
    let data = dir.path().join("data");
    let Some(_disk) = common::SmallDisk::mount(&data, 4 << 20) else { return };
    let topic_prefix = prefix();
    let mut rx = subscribe(&addr, &format!("{topic_prefix}/#")).await;
    let mqtt = MqttConfig { url: format!("mqtt://{addr}"), topic_prefix, ..MqttConfig::default() };
    let agent = agent_with(&models, &data, mqtt).await;
    let sent = "outpost_export_sent_records_total{sink=\"mqtt\"}";
    let full = "outpost_export_dropped_records_total{reason=\"disk_full\"}";
    for _ in 0..10 {
        assert_eq!(infer(&agent, "?export=true").await, 200);
    }
    let mut got = receive(&mut rx, 10).await;
    wait_for_metric(&agent, sent, 10.0).await;

    let filler = data.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    while std::io::Write::write_all(&mut f, &[0; 4096]).is_ok() {}
    drop(f);
    for _ in 0..20 {
        assert_eq!(infer(&agent, "?export=true").await, 200, "a full disk does not fail the request");
    }
    // Each of the 20 is either stored and delivered, or counted as lost to the full disk.
    let mut settled = false;
    for _ in 0..100 {
        if metric(&agent, full).await + metric(&agent, sent).await == 30.0 {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lost = metric(&agent, full).await;
    assert!(settled && lost > 0.0, "{lost} lost to the full disk, {} sent", metric(&agent, sent).await);
    got.extend(receive(&mut rx, 20 - lost as usize).await);

    std::fs::remove_file(&filler).unwrap();
    for _ in 0..10 {
        assert_eq!(infer(&agent, "?export=true").await, 200);
    }
    got.extend(receive(&mut rx, 10).await);
    let ids: std::collections::HashSet<&str> = got.iter().map(|(_, v)| v["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 40 - lost as usize, "every stored result arrived, once");
    assert_eq!(metric(&agent, full).await, lost, "nothing lost once there was space");
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_results_reach_the_broker_once_each_with_their_ids_over_mqtt_3_and_5() {
    let Some(addr) = broker().await else { return };
    for version in [4u8, 5] {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        std::fs::create_dir_all(&models).unwrap();
        common::write_package(&models, "affine", "3", &common::affine_onnx(2.0));
        let topic_prefix = prefix();
        let mut rx = subscribe(&addr, &format!("{topic_prefix}/#")).await;
        let mqtt = MqttConfig {
            url: format!("mqtt://{addr}"),
            version,
            topic_prefix: topic_prefix.clone(),
            ..MqttConfig::default()
        };
        let agent = agent_with(&models, &dir.path().join("data"), mqtt).await;
        for i in 0..30 {
            let q = if i % 3 == 2 { "?export=false" } else { "?export=true" };
            assert_eq!(infer(&agent, q).await, 200);
        }
        assert_eq!(infer(&agent, "").await, 200, "not exported: the model is not in export.models");
        assert_eq!(infer(&agent, "?export=maybe").await, 400, "a bad option is refused, not guessed");
        let got = receive(&mut rx, 20).await;
        let device = got[0].1["device"].as_str().unwrap().to_string();
        for (topic, v) in &got {
            assert_eq!(topic, &format!("{topic_prefix}/{device}/results/affine"), "v{version}");
            assert_eq!(
                (v["kind"].as_str(), v["model"].as_str(), v["version"].as_str()),
                (Some("result"), Some("affine"), Some("3"))
            );
            let s = v["outputs"].as_array().unwrap().iter().find(|o| o["name"] == "s").expect("output s");
            assert_eq!(s["data"][0], 24.0, "sum of 2x + 1 over x = 1..4: {v}");
        }
        let ids: std::collections::HashSet<&str> = got.iter().map(|(_, v)| v["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), 20, "v{version}: one message per exported request, each id once");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(rx.try_recv().is_err(), "v{version}: nothing else was exported");
        // The sink counts a batch once all its PUBACKs are in, which may be after delivery.
        let sent = "outpost_export_sent_records_total{sink=\"mqtt\"}";
        wait_for_metric(&agent, sent, 20.0).await;
        assert_eq!(metric(&agent, sent).await, 20.0, "v{version}");
        assert_eq!(metric(&agent, "outpost_export_sink_connected{sink=\"mqtt\"}").await, 1.0, "v{version}");
        assert_eq!(metric(&agent, "outpost_export_records_total{kind=\"result\"}").await, 20.0, "v{version}");
        agent.shutdown().await.unwrap();
    }
}

/// A TCP stand-in for the broker: down (connections closed at once), up (forwarded to the real
/// broker) or refusing (a CONNACK "not authorized").
struct Gate {
    addr: String,
    mode: Arc<AtomicU8>,
    generation: watch::Sender<u64>,
}

const DOWN: u8 = 0;
const UP: u8 = 1;
const REFUSE: u8 = 2;
/// An HTTP server that answers 503 to everything (the control plane overloaded).
const UNAVAILABLE: u8 = 3;

impl Gate {
    async fn start(broker: String) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mode = Arc::new(AtomicU8::new(DOWN));
        let (generation, gen_rx) = watch::channel(0u64);
        let m = mode.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (broker, mut gen_rx) = (broker.clone(), gen_rx.clone());
                // Only a switch after this connection was accepted cuts it.
                gen_rx.borrow_and_update();
                match m.load(Ordering::SeqCst) {
                    UP => {
                        tokio::spawn(async move {
                            let Ok(mut upstream) = TcpStream::connect(&broker).await else { return };
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                                _ = gen_rx.changed() => {}
                            }
                        });
                    }
                    REFUSE => {
                        tokio::spawn(async move {
                            let mut buf = [0u8; 512];
                            let _ = client.read(&mut buf).await;
                            // CONNACK, MQTT 3.1.1 return code 5: not authorized.
                            let _ = client.write_all(&[0x20, 0x02, 0x00, 0x05]).await;
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        });
                    }
                    UNAVAILABLE => {
                        tokio::spawn(async move {
                            let mut buf = [0u8; 64 * 1024];
                            let _ = client.read(&mut buf).await;
                            let body = r#"{"code":"overloaded","message":"try later"}"#;
                            let head = format!(
                                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
                                 retry-after: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                                body.len()
                            );
                            let _ = client.write_all(head.as_bytes()).await;
                        });
                    }
                    _ => drop(client),
                }
            }
        });
        Gate { addr, mode, generation }
    }

    /// Switches mode and cuts every forwarded connection.
    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }
}

async fn metric(agent: &outpost_agent::Agent, series: &str) -> f64 {
    let text = call("GET", format!("http://{}/metrics", agent.addr), vec![], None).await;
    let text = String::from_utf8_lossy(&text.body).to_string();
    text.lines().find_map(|l| l.strip_prefix(series)).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
}

/// Waits up to 10 s for `series` to reach `at_least`: sinks count a batch only once it is acknowledged.
async fn wait_for_metric(agent: &outpost_agent::Agent, series: &str, at_least: f64) {
    for _ in 0..100 {
        if metric(agent, series).await >= at_least {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_wait_out_a_refusing_or_absent_broker_and_an_agent_restart_and_none_is_lost() {
    let Some(addr) = broker().await else { return };
    let gate = Gate::start(addr.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    common::write_package(&models, "affine", "1", &common::affine_onnx(1.0));
    let topic_prefix = prefix();
    let mut rx = subscribe(&addr, &format!("{topic_prefix}/#")).await;
    let mqtt = MqttConfig {
        url: format!("mqtt://{}", gate.addr),
        topic_prefix: topic_prefix.clone(),
        ack_timeout_s: 2,
        ..MqttConfig::default()
    };

    // The broker refuses the client: results queue, failures are counted.
    gate.set(REFUSE);
    let agent = agent_with(&models, &dir.path().join("data"), mqtt.clone()).await;
    for _ in 0..15 {
        assert_eq!(infer(&agent, "?export=true").await, 200);
    }
    for _ in 0..100 {
        if metric(&agent, "outpost_export_sink_failures_total{sink=\"mqtt\"}").await >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metric(&agent, "outpost_export_sink_failures_total{sink=\"mqtt\"}").await >= 1.0);
    assert_eq!(metric(&agent, "outpost_export_sink_connected{sink=\"mqtt\"}").await, 0.0);
    // Then it is gone altogether, and the agent restarts meanwhile.
    gate.set(DOWN);
    agent.shutdown().await.unwrap();
    let agent = agent_with(&models, &dir.path().join("data"), mqtt).await;
    for _ in 0..10 {
        assert_eq!(infer(&agent, "?export=true").await, 200);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rx.try_recv().is_err(), "nothing can have arrived yet");

    // The broker comes back: all 25 arrive (duplicates allowed, none lost).
    gate.set(UP);
    let mut seen: HashMap<String, serde_json::Value> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while seen.len() < 25 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some((_, v))) => {
                seen.insert(v["id"].as_str().unwrap().to_string(), v);
            }
            _ => panic!("{} of 25 results arrived after the broker came back", seen.len()),
        }
    }
    assert_eq!(seen.len(), 25);
    assert!(seen.values().all(|v| v["kind"] == "result" && v["version"] == "1"));
    agent.shutdown().await.unwrap();
}

/// The agent's server sink: results exported by a fleet agent reach `GET /v1/results` with the
/// labels of its enrollment, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_agent_exports_results_and_events_to_its_server() {
    let dir = tempfile::tempdir().unwrap();
    let plane = super::ControlPlane::start(&dir.path().join("server")).await;
    let token = plane.enrollment_token(1).await;
    let mut config = super::agent_config(dir.path(), &plane.base, Some(token));
    config.export.models = vec!["affine".into()];
    common::write_package(&config.model_dir, "affine", "1", &common::affine_onnx(1.0));
    let agent = outpost_agent::Agent::start(config).await.unwrap();
    let status = agent.control().unwrap().clone();
    super::wait_until("enrolled", || status.device_id().is_some()).await;
    let device = status.device_id().unwrap();
    for _ in 0..12 {
        assert_eq!(infer(&agent, "").await, 200, "exported: the model is in export.models");
    }
    assert_eq!(infer(&agent, "?export=false").await, 200);
    let mut items = Vec::new();
    for _ in 0..300 {
        let page = plane.call(reqwest::Method::GET, &format!("/v1/results?device={device}&kind=result"), None).await;
        items = page["items"].as_array().unwrap().clone();
        if items.len() >= 12 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(items.len(), 12, "{items:?}");
    let r = &items[0]["record"];
    assert_eq!(
        (r["model"].as_str(), r["version"].as_str(), r["labels"]["site"].as_str()),
        (Some("affine"), Some("1"), Some("lab"))
    );
    let sent = "outpost_export_sent_records_total{sink=\"server\"}";
    wait_for_metric(&agent, sent, 12.0).await;
    assert_eq!(metric(&agent, sent).await, 12.0);
    agent.shutdown().await.unwrap();
}

/// The server sink against a control plane that answers 503 for a while: results wait on the
/// device, failures are counted, and once it answers again every result arrives, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_wait_out_a_server_answering_503_and_arrive_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let plane = super::ControlPlane::start(&dir.path().join("server")).await;
    let gate = Gate::start(plane.base.trim_start_matches("http://").to_string()).await;
    gate.set(UP);
    let token = plane.enrollment_token(1).await;
    let mut config = super::agent_config(dir.path(), &format!("http://{}", gate.addr), Some(token));
    config.export.models = vec!["affine".into()];
    common::write_package(&config.model_dir, "affine", "1", &common::affine_onnx(1.0));
    let agent = outpost_agent::Agent::start(config).await.unwrap();
    let status = agent.control().unwrap().clone();
    super::wait_until("enrolled", || status.device_id().is_some()).await;
    let device = status.device_id().unwrap();
    let count = async || {
        let page = plane.call(reqwest::Method::GET, &format!("/v1/results?device={device}&kind=result"), None).await;
        page["items"].as_array().unwrap().len()
    };
    for _ in 0..5 {
        assert_eq!(infer(&agent, "").await, 200);
    }
    for _ in 0..100 {
        if count().await == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count().await, 5);

    gate.set(UNAVAILABLE);
    for _ in 0..15 {
        assert_eq!(infer(&agent, "").await, 200, "the device serves while its server is away");
    }
    let failures = "outpost_export_sink_failures_total{sink=\"server\"}";
    for _ in 0..100 {
        if metric(&agent, failures).await >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metric(&agent, failures).await >= 1.0, "the 503s are counted");
    assert_eq!(count().await, 5, "nothing got through a server answering 503");

    gate.set(UP);
    for _ in 0..300 {
        if count().await >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let page = plane.call(reqwest::Method::GET, &format!("/v1/results?device={device}&kind=result"), None).await;
    let ids: std::collections::HashSet<&str> =
        page["items"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 20, "every result once: {page}");
    agent.shutdown().await.unwrap();
}
