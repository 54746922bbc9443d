//! `outpost model bench PACKAGE --http`: what the local API adds on top of raw inference.
//!
//! An in-process agent serves the package on loopback; a keep-alive client sends the same JSON
//! request over and over while, interleaved, the same tensors run directly on the model's
//! session pool. The difference of the medians is the API's overhead: routing, JSON decoding and
//! encoding, queueing and the two thread hops.

use anyhow::{bail, Context, Result};
use outpost_agent::{Agent, AgentConfig};
use outpost_runtime::{bench, tensor, Package};
use serde_json::json;
use std::path::Path;
use std::time::Instant;

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1);
    sorted.get(i).copied().unwrap_or(f64::NAN)
}

/// Measures and prints one JSON line: raw and HTTP percentiles and the p50 overhead.
pub fn run(package: &Path, iterations: usize, json_out: bool) -> Result<()> {
    let pkg = Package::open(package)?;
    let name = pkg.manifest.model.name.clone();
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("models"))?;
    pkg.write_opkg(&dir.path().join("models").join("model.opkg"))?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let config = AgentConfig {
        listen: "127.0.0.1:0".parse()?,
        model_dir: dir.path().join("models"),
        backend: Some("tract".into()),
        ..AgentConfig::default()
    };
    let agent = rt.block_on(Agent::start(config))?;
    let model = agent.state.store.get(&name).context("the agent did not load the package")?;
    let ranges = outpost_runtime::indices::index_ranges(pkg.model_bytes());
    let inputs = bench::generate_inputs(model.engine.inputs(), &ranges, 7)?;
    let mut body_inputs = Vec::new();
    for (spec, t) in model.engine.inputs().iter().zip(&inputs) {
        body_inputs.push(json!({"name": spec.name, "shape": t.shape(), "datatype": spec.dtype.to_string(), "data": tensor::tensor_to_json(t)?}));
    }
    let body = serde_json::to_vec(&json!({ "inputs": body_inputs }))?;
    let url = format!("http://{}/v2/models/{name}/infer", agent.addr);
    let client: ureq::Agent = ureq::Agent::config_builder().build().into();
    let (mut raw, mut http) = (Vec::with_capacity(iterations), Vec::with_capacity(iterations));
    for i in 0..iterations + iterations / 10 {
        let started = Instant::now();
        model.infer_blocking(inputs.clone())?.result?;
        let r = started.elapsed();
        let started = Instant::now();
        let mut resp = client.post(&url).header("content-type", "application/json").send(&body[..])?;
        let _ = resp.body_mut().read_to_vec()?;
        let h = started.elapsed();
        if i >= iterations / 10 {
            raw.push(r.as_secs_f64() * 1e3);
            http.push(h.as_secs_f64() * 1e3);
        }
    }
    drop(model);
    rt.block_on(agent.shutdown())?;
    if raw.is_empty() {
        bail!("no iterations");
    }
    raw.sort_by(f64::total_cmp);
    http.sort_by(f64::total_cmp);
    let line = json!({
        "kind": "http", "model": name, "iterations": raw.len(), "request_bytes": body.len(),
        "raw_p50_ms": percentile(&raw, 0.5), "raw_p99_ms": percentile(&raw, 0.99),
        "http_p50_ms": percentile(&http, 0.5), "http_p99_ms": percentile(&http, 0.99),
        "overhead_p50_ms": percentile(&http, 0.5) - percentile(&raw, 0.5),
    });
    if json_out {
        println!("{line}");
    } else {
        println!(
            "{name}: raw p50 {:.3} ms, HTTP p50 {:.3} ms (p99 {:.3} ms): overhead p50 {:.3} ms over {} requests of {} bytes",
            line["raw_p50_ms"].as_f64().unwrap_or_default(),
            line["http_p50_ms"].as_f64().unwrap_or_default(),
            line["http_p99_ms"].as_f64().unwrap_or_default(),
            line["overhead_p50_ms"].as_f64().unwrap_or_default(),
            raw.len(),
            body.len()
        );
    }
    Ok(())
}
