//! `outpost model bench-export --catch-up N` (run by `bench/bandwidth.sh --catch-up`): MQTT
//! forwarding throughput and the time to catch up after an outage.
//!
//! An agent whose broker is away (its MQTT URL points at a closed port) serves the demo's
//! vibration model to four clients until `N` results wait in its export outbox (an hour at 100
//! results/s is 360,000); then it stops, and an agent on the same data directory starts with the
//! real broker, as after the link came back. The time from that start until a subscriber has
//! every record, and the outbox is empty, is the catch-up; records per second is the forwarding
//! throughput on this machine (agent, broker and subscriber sharing its cores).

use anyhow::{bail, Context, Result};
use outpost_agent::export::config::{ExportConfig, MqttConfig};
use outpost_agent::{Agent, AgentConfig};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn agent_config(dir: &std::path::Path, url: &str, prefix: &str) -> AgentConfig {
    AgentConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        model_dir: dir.join("models"),
        data_dir: dir.join("agent"),
        export: ExportConfig {
            models: vec!["*".into()],
            outbox_mb: 1024,
            mqtt: Some(MqttConfig { url: url.into(), topic_prefix: prefix.into(), ..MqttConfig::default() }),
            ..ExportConfig::default()
        },
        ..AgentConfig::default()
    }
}

/// Runs the measurement and prints the table.
pub fn run(records: u64, mqtt: &str) -> Result<()> {
    let url = crate::demo_drift::probe_broker(mqtt).with_context(|| format!("no MQTT broker answers at {mqtt}"))?;
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("models"))?;
    let trained = outpost_train::train_vibration_anomaly(&outpost_train::TrainConfig::default())?;
    let pkg = crate::model::demo_package(&trained)?;
    let name = pkg.manifest.model.name.clone();
    pkg.write_opkg(&dir.path().join("models/sensor.opkg"))?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let prefix = format!("outpost-catchup-{}", std::process::id());

    // The outage: results pile up on disk.
    let agent = rt.block_on(Agent::start(agent_config(dir.path(), "mqtt://127.0.0.1:1", &prefix)))?;
    let predict = format!("http://{}/v1/models/{name}/predict", agent.addr);
    let mut source = outpost_train::VibrationSource::new(3);
    let bodies: Vec<Vec<u8>> = (0..64)
        .map(|_| {
            let w = source.window(outpost_train::Condition::Normal, 0.0);
            let channels: Vec<&[f32]> = w.chunks(outpost_train::WINDOW).collect();
            serde_json::to_vec(&serde_json::json!({ "channels": channels })).unwrap_or_default()
        })
        .collect();
    let bodies = Arc::new(bodies);
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (bodies, sent, predict) = (bodies.clone(), sent.clone(), predict.clone());
            std::thread::spawn(move || -> Result<()> {
                let mut i = 0usize;
                while sent.fetch_add(1, Ordering::Relaxed) < records {
                    let resp =
                        ureq::post(&predict).header("content-type", "application/json").send(&bodies[i % 64][..])?;
                    if resp.status() != 200 {
                        bail!("predict answered {}", resp.status());
                    }
                    i += 1;
                }
                Ok(())
            })
        })
        .collect();
    for c in clients {
        c.join().map_err(|_| anyhow::anyhow!("a client panicked"))??;
    }
    let fill = started.elapsed();
    let export = agent.state.export.clone().context("export is not running")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let queued = loop {
        let q: u64 = rt.block_on(export.queued("mqtt"))?.iter().sum();
        if q >= records || Instant::now() > deadline {
            break q;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(export);
    rt.block_on(agent.shutdown())?;
    if queued < records {
        bail!("only {queued} of {records} results reached the outbox");
    }
    let disk: u64 = walk(&dir.path().join("agent/outbox/export"));

    // The link is back.
    let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    subscribe(&rt, &url, &format!("{prefix}/#"), seen.clone(), done.clone())?;
    let back = Instant::now();
    let agent = rt.block_on(Agent::start(agent_config(dir.path(), &url, &prefix)))?;
    let export = agent.state.export.clone().context("export is not running")?;
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let left: u64 = rt.block_on(export.queued("mqtt"))?.iter().sum();
        let got = seen.lock().unwrap_or_else(|p| p.into_inner()).len() as u64;
        if left == 0 && got >= records {
            break;
        }
        if Instant::now() > deadline {
            bail!("catch-up not done within an hour: {got} received, {left} queued");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let catch_up = back.elapsed();
    done.store(true, Ordering::Relaxed);
    drop(export);
    rt.block_on(agent.shutdown())?;
    let rate = records as f64 / catch_up.as_secs_f64();
    let hour = 360_000.0 / rate;
    println!("| measurement | value |");
    println!("|---|---:|");
    println!("| results queued during the outage | {records} (filled in {:.1} s) |", fill.as_secs_f64());
    println!(
        "| export outbox on disk | {:.1} MiB ({:.0} B per record) |",
        disk as f64 / 1048576.0,
        disk as f64 / records as f64
    );
    println!("| catch-up once the broker is back: every record at the subscriber | {:.1} s |", catch_up.as_secs_f64());
    println!("| forwarding throughput to Mosquitto (QoS 1, batches of 256) | {rate:.0} records/s |");
    println!("| catch-up of a one-hour outage at 100 results/s (360,000 records), at this rate | {hour:.0} s |");
    Ok(())
}

fn walk(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn subscribe(
    rt: &tokio::runtime::Runtime,
    url: &str,
    filter: &str,
    seen: Arc<Mutex<HashSet<String>>>,
    done: Arc<AtomicBool>,
) -> Result<()> {
    let addr = url.trim_start_matches("mqtt://");
    let (host, port) = addr.rsplit_once(':').context("host:port")?;
    let mut o = rumqttc::MqttOptions::new(format!("catchup-{}", std::process::id()), host, port.parse()?);
    o.set_keep_alive(Duration::from_secs(30));
    let (tx, rx) = std::sync::mpsc::channel();
    let filter = filter.to_string();
    rt.spawn(async move {
        let (client, mut eventloop) = rumqttc::AsyncClient::new(o, 1024);
        if client.subscribe(filter, rumqttc::QoS::AtLeastOnce).await.is_err() {
            return;
        }
        let mut ready = Some(tx);
        while !done.load(Ordering::Relaxed) {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    // The id is the first member: no need to parse the whole record.
                    let id = p.payload.split(|&b| b == b'"').nth(3).map(|s| String::from_utf8_lossy(s).into_owned());
                    if let Some(id) = id {
                        seen.lock().unwrap_or_else(|p| p.into_inner()).insert(id);
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(10)).context("the broker did not acknowledge the subscription")?;
    Ok(())
}
