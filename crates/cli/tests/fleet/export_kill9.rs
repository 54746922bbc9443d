//! Kill -9 during result export: an `outpost agent` process exporting every result over MQTT to
//! the Mosquitto on 127.0.0.1:1883 (`OUTPOST_MQTT` overrides; under CI=true a missing broker
//! fails the run) is killed over and over, in turn while clients' results are being appended and
//! while the sink forwards a backlog. A result counts as acknowledged once the agent's
//! `outpost_export_records_total` showed it and a group commit passed; after the last restart
//! every acknowledged result reaches the subscriber, the sequence numbers it sees have no hole
//! (a kill may cut the unacknowledged tail, never a record before it), and repeats are only
//! what at-least-once delivery allows (same id). `OUTPOST_EXPORT_KILL9_TRIALS` sets the kills.

use super::{bin, Proc};
use outpost_proto::manifest::Dim;
use outpost_train::onnx::{encode, GraphBuilder};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn broker() -> Option<String> {
    let addr = std::env::var("OUTPOST_MQTT").unwrap_or_else(|_| "127.0.0.1:1883".into());
    let target: std::net::SocketAddr = addr.parse().ok()?;
    match std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
        Ok(_) => Some(addr),
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("no MQTT broker at {addr} ({e}): this test needs Mosquitto (CI=true never skips)")
        }
        Err(_) => {
            eprintln!("skipping: no MQTT broker at {addr}");
            None
        }
    }
}

/// `y = 2x + 1` over `x: FLOAT [1, 4]`, packaged.
fn package(dir: &Path) {
    let mut g = GraphBuilder::new("affine");
    let x = g.input_f32("x", &[Dim::Fixed(1), Dim::Fixed(4)]);
    let a = g.constant_f32("a", &[1], &[2.0]);
    let b = g.constant_f32("b", &[1], &[1.0]);
    let m = g.node("Mul", &[&x, &a], "m", vec![]);
    g.node("Add", &[&m, &b], "y", vec![]);
    g.output_f32("y", &[Dim::Fixed(1), Dim::Fixed(4)]);
    let onnx = encode(&g.finish("affine").unwrap());
    let manifest = outpost_proto::Manifest::from_toml(&format!(
        "format = 1\n[model]\nname = \"affine\"\nversion = \"1\"\ntask = \"regression\"\n\
         [[inputs]]\nname = \"x\"\ndtype = \"FP32\"\nshape = [1, 4]\n\
         [[outputs]]\nname = \"y\"\ndtype = \"FP32\"\nshape = [1, 4]\n[files]\n\"model.onnx\" = \"{}\"\n",
        "0".repeat(64)
    ))
    .unwrap();
    let pkg = outpost_runtime::Package::from_parts(manifest, vec![("model.onnx".into(), onnx)]).unwrap();
    pkg.write_opkg(&dir.join("affine-1.opkg")).unwrap();
}

/// Every record the subscriber received: id → how many times.
type Seen = Arc<Mutex<HashMap<String, u32>>>;

fn subscribe(addr: &str, filter: &str) -> Seen {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let mut o = rumqttc::MqttOptions::new(format!("kill9-sub-{}", std::process::id()), host, port.parse().unwrap());
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut connection) = rumqttc::Client::new(o, 1024);
    client.subscribe(filter, rumqttc::QoS::AtLeastOnce).unwrap();
    let seen: Seen = Arc::default();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let sink = seen.clone();
    std::thread::spawn(move || {
        let _client = client;
        for event in connection.iter() {
            match event {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                    let _ = ready_tx.send(());
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let v: serde_json::Value = serde_json::from_slice(&p.payload).expect("export payloads are JSON");
                    if v["kind"] == "result" {
                        *sink.lock().unwrap().entry(v["id"].as_str().unwrap().to_string()).or_default() += 1;
                    }
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).expect("SUBACK");
    seen
}

fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn start(config: &Path, listen: &str) -> Proc {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(config.with_extension("log")).unwrap();
    Proc(
        Command::new(bin())
            .args(["agent", "--config"])
            .arg(config)
            .args(["--listen", listen])
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap(),
    )
}

fn ready(listen: &str) -> bool {
    ureq::get(&format!("http://{listen}/v2/models/affine/ready")).call().is_ok_and(|r| r.status() == 200)
}

fn exported(listen: &str) -> u64 {
    let text =
        ureq::get(&format!("http://{listen}/metrics")).call().ok().and_then(|mut r| r.body_mut().read_to_string().ok());
    let series = "outpost_export_records_total{kind=\"result\"} ";
    text.unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

const BODY: &str = r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}"#;

/// Sends requests until `stop`; counts the answered ones.
fn client(listen: String, stop: Arc<AtomicBool>, answered: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let url = format!("http://{listen}/v2/models/affine/infer");
        while !stop.load(Ordering::Relaxed) {
            if ureq::post(&url).header("content-type", "application/json").send(BODY).is_ok_and(|r| r.status() == 200) {
                answered.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

fn kill9(mut agent: Proc) {
    let _ = agent.0.kill();
    let _ = agent.0.wait();
}

#[test]
fn agent_killed_while_appending_and_forwarding_loses_no_acknowledged_result() {
    let Some(addr) = broker() else { return };
    let trials: usize = std::env::var("OUTPOST_EXPORT_KILL9_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(6);
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    package(&models);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let prefix = format!("outpost-kill9-{}-{nanos}", std::process::id());
    let seen = subscribe(&addr, &format!("{prefix}/#"));
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "model_dir = {:?}\ndata_dir = {:?}\n[export]\nmodels = [\"*\"]\nlinger_ms = 200\n\
             [export.mqtt]\nurl = \"mqtt://{addr}\"\ntopic_prefix = \"{prefix}\"\nbatch = 64\n",
            models.display().to_string(),
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let mut acknowledged = 0u64;
    let mut seed = 0x2545_f491_4f6c_dd1du64 ^ u64::from(std::process::id());
    let mut random = |below: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % below
    };
    for trial in 0..trials {
        let listen = free_port();
        let agent = start(&config, &listen);
        let started = Instant::now();
        while !ready(&listen) {
            assert!(started.elapsed() < Duration::from_secs(30), "trial {trial}: the agent did not serve");
            std::thread::sleep(Duration::from_millis(20));
        }
        let (stop, answered) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let clients: Vec<_> = (0..4).map(|_| client(listen.clone(), stop.clone(), answered.clone())).collect();
        std::thread::sleep(Duration::from_millis(100 + random(400)));
        if trial % 2 == 0 {
            // During appends: the clients are still sending. What the agent counted by the
            // kill is all that may be acknowledged; the tail may be cut.
            kill9(agent);
            stop.store(true, Ordering::Relaxed);
            clients.into_iter().for_each(|c| c.join().unwrap());
        } else {
            // During forwarding: every result is on disk, the sink is still sending the backlog.
            stop.store(true, Ordering::Relaxed);
            clients.into_iter().for_each(|c| c.join().unwrap());
            let n = answered.load(Ordering::Relaxed);
            while exported(&listen) < n {
                assert!(started.elapsed() < Duration::from_secs(60), "trial {trial}: results not queued");
                std::thread::sleep(Duration::from_millis(10));
            }
            // A group commit (a few ms) makes them durable.
            std::thread::sleep(Duration::from_millis(50));
            acknowledged += n;
            std::thread::sleep(Duration::from_millis(random(300)));
            kill9(agent);
        }
    }
    // The last start delivers what is left.
    let listen = free_port();
    let _agent = start(&config, &listen);
    let started = Instant::now();
    let mut last = (0usize, Instant::now());
    loop {
        let n = seen.lock().unwrap().len();
        if n != last.0 {
            last = (n, Instant::now());
        }
        if n as u64 >= acknowledged && last.1.elapsed() > Duration::from_secs(3) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "{n} results arrived; {acknowledged} were acknowledged");
    }
    let seen = seen.lock().unwrap().clone();
    // Sequence numbers of the results (normal priority) run from 0 without a hole.
    let mut seqs: BTreeMap<u64, u32> = BTreeMap::new();
    for (id, times) in &seen {
        let seq = id.rsplit('/').next().unwrap().parse::<u64>().unwrap();
        assert!(id.contains("/normal/"), "{id}");
        seqs.insert(seq, *times);
    }
    let (first, max) = (*seqs.keys().next().unwrap(), *seqs.keys().last().unwrap());
    assert_eq!(first, 0, "the first result never arrived");
    assert_eq!(seqs.len() as u64, max + 1, "a hole in the delivered sequence numbers (0..={max})");
    assert!(max + 1 >= acknowledged, "{} results delivered, {acknowledged} acknowledged", max + 1);
    let repeats: u32 = seqs.values().map(|t| t - 1).sum();
    eprintln!(
        "{trials} kills: {} results delivered ({acknowledged} acknowledged before kills during forwarding), \
         {repeats} delivered again after a kill (same id)",
        max + 1
    );
}
