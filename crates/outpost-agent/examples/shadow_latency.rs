//! Serving latency with a shadow candidate off and on: one agent, one model (a stack of
//! 256x256 matrix products, a few milliseconds per request), sequential OIP v2 requests; then a
//! candidate of the same size sampling every request (sample 1.0) under the configured CPU
//! share, in alternating rounds. Prints p50/p99 of both sides and their ratio, and what the
//! shadow compared or skipped.
//!
//!     cargo run --release -p outpost-agent --example shadow_latency -- [requests] [cpu_share]

use outpost_agent::shadow::CandidateModel;
use outpost_agent::{Agent, AgentConfig};
use outpost_proto::manifest::Dim;
use outpost_proto::Manifest;
use outpost_runtime::Package;
use outpost_train::onnx::{encode, GraphBuilder};
use std::path::Path;
use std::time::Instant;

const WIDTH: usize = 256;
const ROUNDS: usize = 10;

fn model(layers: usize) -> Vec<u8> {
    let mut g = GraphBuilder::new("bench");
    let mut v = g.input_f32("x", &[Dim::Fixed(1), Dim::Fixed(WIDTH as i64)]);
    let w: Vec<f64> = (0..WIDTH * WIDTH).map(|i| ((i % 7) as f64 - 3.0) / WIDTH as f64).collect();
    let w = g.constant_f32("w", &[WIDTH, WIDTH], &w);
    for i in 0..layers {
        v = g.node("MatMul", &[&v, &w], &format!("h{i}"), vec![]);
    }
    g.node("Identity", &[&v], "y", vec![]);
    g.output_f32("y", &[Dim::Fixed(1), Dim::Fixed(WIDTH as i64)]);
    encode(&g.finish("shadow bench").expect("valid graph"))
}

fn write(dir: &Path, version: &str, onnx: &[u8]) -> std::path::PathBuf {
    let text = format!(
        "format = 1\n[model]\nname = \"bench\"\nversion = \"{version}\"\ntask = \"regression\"\n\
         [[inputs]]\nname = \"x\"\ndtype = \"FP32\"\nshape = [1, {WIDTH}]\n\
         [[outputs]]\nname = \"y\"\ndtype = \"FP32\"\nshape = [1, {WIDTH}]\n\
         [files]\n\"model.onnx\" = \"{}\"\n",
        "0".repeat(64)
    );
    let manifest = Manifest::from_toml(&text).expect("manifest");
    let pkg = Package::from_parts(manifest, vec![("model.onnx".into(), onnx.to_vec())]).expect("package");
    let path = dir.join(format!("bench-{version}.opkg"));
    pkg.write_opkg(&path).expect("write");
    path
}

/// Sequential requests; latencies in ms, sorted.
fn run(url: &str, n: usize) -> Vec<f64> {
    let body = serde_json::to_vec(&serde_json::json!({
        "inputs": [{"name": "x", "shape": [1, WIDTH], "datatype": "FP32", "data": vec![0.5f32; WIDTH]}]
    }))
    .expect("body");
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut ms = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let mut resp = agent.post(url).header("content-type", "application/json").send(&body[..]).expect("request");
        let _ = resp.body_mut().read_to_vec();
        assert_eq!(resp.status().as_u16(), 200);
        ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    ms
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(400);
    let share: f64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(AgentConfig::default().shadow_cpu_share);
    let dir = tempfile::tempdir().expect("tempdir");
    let (models, candidates) = (dir.path().join("models"), dir.path().join("candidates"));
    std::fs::create_dir_all(&models).expect("dir");
    std::fs::create_dir_all(&candidates).expect("dir");
    let onnx = model(24);
    write(&models, "1", &onnx);
    let candidate = write(&candidates, "2", &onnx);
    let config = AgentConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        model_dir: models,
        poll_interval_ms: 3_600_000,
        selftest: false,
        shadow_cpu_share: share,
        ..AgentConfig::default()
    };
    let agent = Agent::start(config).await.expect("agent");
    let url = format!("http://{}/v2/models/bench/infer", agent.addr);

    let store = agent.state.store.clone();
    let pkg = Package::open(&candidate).expect("candidate package");
    let loaded = CandidateModel::load(&pkg, store.load_options(), store.budget()).expect("load");
    let shadows = agent.state.shadows.clone();
    shadows.loading("bench", "2", 0.0);
    assert!(shadows.ready("bench", "2", Box::new(loaded)));
    // Off and on alternate in rounds, so a drift in machine load (another build) hits both.
    let (mut off, mut on) = (Vec::new(), Vec::new());
    let u = url.clone();
    tokio::task::spawn_blocking(move || run(&u, n / 4)).await.expect("warm-up");
    for _ in 0..ROUNDS {
        shadows.loading("bench", "2", 0.0);
        let u = url.clone();
        off.extend(tokio::task::spawn_blocking(move || run(&u, n / ROUNDS)).await.expect("run"));
        shadows.loading("bench", "2", 1.0);
        let u = url.clone();
        on.extend(tokio::task::spawn_blocking(move || run(&u, n / ROUNDS)).await.expect("run"));
    }
    off.sort_by(f64::total_cmp);
    on.sort_by(f64::total_cmp);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let shadow = shadows.take_reports().remove("bench").expect("shadow report");

    let (p50_off, p99_off, p50_on, p99_on) =
        (quantile(&off, 0.5), quantile(&off, 0.99), quantile(&on, 0.5), quantile(&on, 0.99));
    println!(
        "{n} sequential requests per side in {ROUNDS} alternating rounds, shadow at sample 1.0, cpu share {share}"
    );
    println!("{:<12} {:>10} {:>10}", "", "p50 ms", "p99 ms");
    println!("{:<12} {:>10.3} {:>10.3}", "shadow off", p50_off, p99_off);
    println!("{:<12} {:>10.3} {:>10.3}", "shadow on", p50_on, p99_on);
    println!("{:<12} {:>9.2}x {:>9.2}x", "on / off", p50_on / p50_off, p99_on / p99_off);
    println!(
        "shadow: {} compared (agreement {:.3}), {} skipped, {} errors",
        shadow.samples,
        if shadow.samples > 0 { shadow.agreement / shadow.samples as f64 } else { 0.0 },
        shadow.skipped,
        shadow.errors
    );
    agent.shutdown().await.expect("shutdown");
}
