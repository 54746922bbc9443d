//! Step 10 of the demo: results leave the devices as small records (over MQTT to any broker,
//! and to the server), then the sensors of part of the fleet drift (a bearing wearing in on
//! one real agent, a gain change on the other and on a share of the simulated devices) and the
//! server's drift view and alert name the devices; last, the bytes that left the devices
//! against the raw sensor data a cloud-only design would have streamed.

use crate::demo_fleet::DemoFleet;
use anyhow::{bail, Context, Result};
use outpost_agent::export::config::{ExportConfig, MqttConfig};
use outpost_agent::telemetry::DriftConfig;
use outpost_proto::fleet::drift::{Alert, DriftGroup};
use outpost_train::{Condition, VibrationSource, CHANNELS, WINDOW};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

/// Share of the simulated devices whose sensors drift in step 10.
pub const SIM_DRIFT_SHARE: f64 = 0.2;
/// Requests per drift window on the demo agents: small, so the demo sees windows in seconds.
const WINDOW_REQUESTS: u64 = 40;

/// The MQTT URL to export to, when a broker answers at `addr` (`host:port`).
pub fn probe_broker(addr: &str) -> Option<String> {
    use std::net::ToSocketAddrs;
    let target = addr.to_socket_addrs().ok()?.next()?;
    std::net::TcpStream::connect_timeout(&target, Duration::from_millis(500)).ok()?;
    Some(format!("mqtt://{addr}"))
}

/// The demo agents export the results step 10 asks for (`?export=true`), to the server and to
/// the broker when there is one, under a topic prefix of their own (the broker may be shared).
pub fn export_config(mqtt: Option<&str>) -> ExportConfig {
    ExportConfig {
        mqtt: mqtt.map(|url| MqttConfig {
            url: url.to_string(),
            topic_prefix: topic_prefix(),
            batch: 64,
            ..MqttConfig::default()
        }),
        ..ExportConfig::default()
    }
}

/// One prefix per demo process.
fn topic_prefix() -> String {
    format!("outpost-demo-{}", std::process::id())
}

/// Drift windows of [`WINDOW_REQUESTS`] requests.
pub fn drift_config() -> DriftConfig {
    DriftConfig {
        window_samples: WINDOW_REQUESTS,
        min_samples: WINDOW_REQUESTS / 2,
        window_s: 20,
        ..DriftConfig::default()
    }
}

type Inbox = Arc<Mutex<Vec<(String, serde_json::Value)>>>;

/// Subscribes to everything the demo agents publish; messages collect in the returned inbox.
fn subscribe(rt: &Runtime, url: &str) -> Result<Inbox> {
    let addr = url.trim_start_matches("mqtt://");
    let (host, port) = addr.rsplit_once(':').context("broker address host:port")?;
    let mut o = rumqttc::MqttOptions::new(format!("{}-viewer", topic_prefix()), host, port.parse()?);
    o.set_keep_alive(Duration::from_secs(30));
    let inbox: Inbox = Arc::default();
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = inbox.clone();
    let filter = format!("{}/#", topic_prefix());
    rt.spawn(async move {
        let (client, mut eventloop) = rumqttc::AsyncClient::new(o, 64);
        if client.subscribe(filter, rumqttc::QoS::AtLeastOnce).await.is_err() {
            return;
        }
        let mut ready = Some(tx);
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let json = serde_json::from_slice(&p.payload).unwrap_or(serde_json::Value::Null);
                    sink.lock().unwrap_or_else(|p| p.into_inner()).push((p.topic.to_string(), json));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(10)).context("the broker did not acknowledge the subscription")?;
    Ok(inbox)
}

/// Sends `count` sensor windows to an agent's predict endpoint; returns the raw bytes they
/// are (float32 samples, what a cloud-only design streams).
fn send(base: &str, name: &str, source: &mut VibrationSource, count: usize, fault: Fault) -> Result<u64> {
    let url = format!("{base}/v1/models/{name}/predict?export=true");
    let mut raw = 0u64;
    for i in 0..count {
        let progress = i as f32 / count.max(1) as f32;
        let mut window = match fault {
            Fault::None => source.window(Condition::Normal, 0.0),
            // The outer race wears in: the fault's severity grows over the stream.
            Fault::Wear => source.window(Condition::OuterRace, 0.2 + 0.5 * progress),
            Fault::Gain(_) => source.window(Condition::Normal, 0.0),
        };
        if let Fault::Gain(g) = fault {
            window.iter_mut().for_each(|v| *v *= g);
        }
        let channels: Vec<&[f32]> = window.chunks(WINDOW).take(CHANNELS).collect();
        let body = serde_json::to_vec(&serde_json::json!({ "channels": channels }))?;
        let resp = ureq::post(&url).header("content-type", "application/json").send(&body[..])?;
        if resp.status() != 200 {
            bail!("predict answered {}", resp.status());
        }
        raw += (CHANNELS * WINDOW * 4) as u64;
    }
    Ok(raw)
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    None,
    Wear,
    Gain(f32),
}

fn metric(base: &str, series: &str) -> f64 {
    let text = ureq::get(&format!("{base}/metrics")).call().ok().and_then(|mut r| r.body_mut().read_to_string().ok());
    text.unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Runs step 10.
pub fn run(rt: &Runtime, fleet: &DemoFleet, name: &str, seed: u64, simulated: usize) -> Result<()> {
    let inbox = match &fleet.mqtt {
        Some(url) => {
            println!("   results go over MQTT to {url} (topics {}/<device>/results/{name}, …/events, …/telemetry) and to the server", topic_prefix());
            Some(subscribe(rt, url)?)
        }
        None => {
            println!("   no MQTT broker answers at 127.0.0.1:1883 (--mqtt to name one): results go to the server only");
            None
        }
    };
    let agents: Vec<String> = fleet.agents.iter().map(|a| format!("http://{}", a.addr)).collect();
    let ids = fleet.device_ids();
    let mut sources: Vec<VibrationSource> =
        (0..agents.len()).map(|i| VibrationSource::new(seed + 100 + i as u64)).collect();
    let sent_before = (
        agents.iter().map(|a| sent_bytes(a, "mqtt")).sum::<f64>(),
        agents.iter().map(|a| sent_bytes(a, "server")).sum::<f64>(),
    );
    let mut raw = 0u64;
    for (base, source) in agents.iter().zip(sources.iter_mut()) {
        raw += send(base, name, source, WINDOW_REQUESTS as usize, Fault::None)?;
    }
    if let Some(inbox) = &inbox {
        let deadline = Instant::now() + Duration::from_secs(20);
        while inbox.lock().unwrap_or_else(|p| p.into_inner()).iter().filter(|(t, _)| t.contains("/results/")).count()
            < 3
        {
            if Instant::now() > deadline {
                bail!("no exported result reached the MQTT subscriber within 20 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let got = inbox.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (topic, v) in got.iter().filter(|(t, _)| t.contains("/results/")).take(3) {
            println!(
                "   subscriber <- {topic}: id {} v{} score {} ({} bytes)",
                v["id"].as_str().unwrap_or("?"),
                v["version"].as_str().unwrap_or("?"),
                v["outputs"][0]["score"],
                serde_json::to_vec(v).map(|b| b.len()).unwrap_or(0)
            );
        }
    }

    println!(
        "   now the sensors drift: a bearing wears in on {}, a gain change (x1.8) on {}, and on {:.0} % of the simulated devices",
        ids.first().map_or("-", String::as_str),
        ids.get(1).map_or("-", String::as_str),
        SIM_DRIFT_SHARE * 100.0
    );
    fleet.sim_drift.set(true);
    let faults = [Fault::Wear, Fault::Gain(1.8)];
    for ((base, source), fault) in agents.iter().zip(sources.iter_mut()).zip(faults) {
        raw += send(base, name, source, 2 * WINDOW_REQUESTS as usize, fault)?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let alerts = loop {
        let alerts: Vec<Alert> = fleet.api.get(&format!("/v1/alerts?model={name}"))?;
        let real = alerts.iter().flat_map(|a| &a.alerting).filter(|d| ids.contains(d)).count();
        let sim = alerts.iter().flat_map(|a| &a.alerting).count() - real;
        // Most of the drifting simulated devices report within two heartbeats.
        if real == ids.len().min(2) && sim as f64 >= 0.6 * SIM_DRIFT_SHARE * simulated as f64 {
            break alerts;
        }
        if Instant::now() > deadline {
            bail!("the drift alert did not name the drifting devices within 60 s: {alerts:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    for a in &alerts {
        let real: Vec<&String> = a.alerting.iter().filter(|d| ids.contains(d)).collect();
        println!(
            "   ALERT {}: {name}@{}: {} of {} devices at the drift alert level (value {:.2} > {}), among them the agents {}",
            a.rule,
            a.version,
            a.alerting.len(),
            a.devices,
            a.value,
            a.above,
            real.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    let groups: Vec<DriftGroup> = fleet.api.get(&format!("/v1/drift?model={name}&group_by=site"))?;
    for g in &groups {
        let top = g.features.first().map_or_else(|| "-".into(), |f| format!("{} (PSI {:.2})", f.feature, f.mean_psi));
        println!(
            "   drift {name}@{} site={}: {} devices, ok {} warn {} alert {}, mean score {:.2}, max {:.2}, moved most: {top}",
            g.version,
            g.group.as_deref().unwrap_or("-"),
            g.devices,
            g.ok,
            g.warn,
            g.alert,
            g.mean_score,
            g.max_score
        );
    }
    if let Some(inbox) = &inbox {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = inbox.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some((topic, v)) = got.iter().find(|(_, v)| v["kind"] == "alert" && v["event"] == "drift") {
                println!(
                    "   subscriber <- {topic}: drift alert, score {:.2}, worst feature {}",
                    v["details"]["score"].as_f64().unwrap_or(0.0),
                    v["details"]["features"][0]["feature"]
                );
                break;
            }
            if Instant::now() > deadline {
                bail!("the drift alert did not reach the MQTT subscriber within 20 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // The sinks send in batches: read once they have caught up (two equal readings).
    let total = |sink: &str| agents.iter().map(|a| sent_bytes(a, sink)).sum::<f64>();
    let mut last = (total("mqtt"), total("server"));
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(500));
        let now = (total("mqtt"), total("server"));
        if now == last {
            break;
        }
        last = now;
    }
    let windows = (WINDOW_REQUESTS * 3) as usize * agents.len();
    println!("   bytes that left the agents for {windows} sensor windows ({raw} bytes of raw samples), per sink:");
    for (sink, before, now, how) in [
        ("server", sent_before.1, last.1, "zstd-compressed batches to the server"),
        ("mqtt", sent_before.0, last.0, "one JSON message per record"),
    ] {
        if sink == "mqtt" && fleet.mqtt.is_none() {
            continue;
        }
        let sent = now - before;
        println!(
            "     {sink:<6} {sent:>8.0} bytes ({how}): {:.2} % of streaming the raw data",
            100.0 * sent / raw.max(1) as f64
        );
    }
    Ok(())
}

/// Bytes an agent's `sink` delivered so far.
pub fn sent_bytes(base: &str, sink: &str) -> f64 {
    metric(base, &format!("outpost_export_sent_bytes_total{{sink=\"{sink}\"}}"))
}
