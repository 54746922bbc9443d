//! Fixtures for agent tests: small real ONNX models built with outpost-train's graph builder,
//! packaged like production packages, and a blocking HTTP client that never treats a status as
//! an error (tests assert on statuses).

#![allow(dead_code)]

use outpost_agent::{Agent, AgentConfig};
use outpost_proto::manifest::{Dim, Manifest};
use outpost_runtime::Package;
use outpost_train::onnx::{encode, GraphBuilder};
use std::path::{Path, PathBuf};

/// `y = x * scale + 1` and `s = sum(y, axis 1)` over `x: FLOAT [batch, 4]`.
pub fn affine_onnx(scale: f64) -> Vec<u8> {
    let mut g = GraphBuilder::new("affine");
    let x = g.input_f32("x", &[Dim::Symbol("batch".into()), Dim::Fixed(4)]);
    let a = g.constant_f32("scale", &[1], &[scale]);
    let b = g.constant_f32("bias", &[1], &[1.0]);
    let axes = g.constant_i64("axes", &[1], &[1]);
    let m = g.node("Mul", &[&x, &a], "scaled", vec![]);
    let y = g.node("Add", &[&m, &b], "y", vec![]);
    g.node("ReduceSum", &[&y, &axes], "s", vec![outpost_train::onnx::attr_int("keepdims", 0)]);
    g.output_f32("y", &[Dim::Symbol("batch".into()), Dim::Fixed(4)]);
    g.output_f32("s", &[Dim::Symbol("batch".into())]);
    encode(&g.finish("test model").expect("valid graph"))
}

/// A model slow enough (tens of ms) to fill a queue: repeated 512x512 matrix products.
pub fn slow_onnx() -> Vec<u8> {
    let mut g = GraphBuilder::new("slow");
    let mut v = g.input_f32("x", &[Dim::Fixed(256), Dim::Fixed(512)]);
    let w: Vec<f64> = (0..512 * 512).map(|i| ((i % 7) as f64 - 3.0) / 512.0).collect();
    let w = g.constant_f32("w", &[512, 512], &w);
    for i in 0..12 {
        v = g.node("MatMul", &[&v, &w], &format!("h{i}"), vec![]);
    }
    g.node("Identity", &[&v], "y", vec![]);
    g.output_f32("y", &[Dim::Fixed(256), Dim::Fixed(512)]);
    encode(&g.finish("slow").expect("valid graph"))
}

/// `x: FLOAT [1, 512]` through many 512x512 matrix products: slow enough (per window of a
/// sensor series) to keep pipelines busy.
pub fn slow_window_onnx() -> Vec<u8> {
    let mut g = GraphBuilder::new("slow_window");
    let mut v = g.input_f32("x", &[Dim::Fixed(1), Dim::Fixed(512)]);
    let w: Vec<f64> = (0..512 * 512).map(|i| ((i % 7) as f64 - 3.0) / 512.0).collect();
    let w = g.constant_f32("w", &[512, 512], &w);
    for i in 0..12 {
        v = g.node("MatMul", &[&v, &w], &format!("h{i}"), vec![]);
    }
    g.node("Identity", &[&v], "y", vec![]);
    g.output_f32("y", &[Dim::Fixed(1), Dim::Fixed(512)]);
    encode(&g.finish("slow window").expect("valid graph"))
}

/// A manifest for a regression model with the given graph inputs/outputs.
pub fn manifest(name: &str, version: &str, onnx: &[u8]) -> Manifest {
    manifest_with(name, version, onnx, "")
}

/// [`manifest`] with extra TOML tables (a `[pre]` pipeline, say).
pub fn manifest_with(name: &str, version: &str, onnx: &[u8], extra: &str) -> Manifest {
    let report =
        outpost_runtime::backend::load_engine(outpost_runtime::backend::BackendKind::Tract, onnx, &Default::default())
            .expect("fixture model loads");
    let spec = |s: &outpost_runtime::backend::IoSpec| {
        let shape =
            s.shape.iter().map(|d| d.map_or(Dim::Symbol("batch".into()), |d| Dim::Fixed(d as i64))).collect::<Vec<_>>();
        format!("[[x]]\nname = \"{}\"\ndtype = \"{}\"\nshape = {}\n", s.name, s.dtype, toml_shape(&shape))
    };
    let mut text = format!("format = 1\n[model]\nname = \"{name}\"\nversion = \"{version}\"\ntask = \"regression\"\n");
    for s in report.inputs() {
        text += &spec(s).replace("[[x]]", "[[inputs]]");
    }
    for s in report.outputs() {
        text += &spec(s).replace("[[x]]", "[[outputs]]");
    }
    text += extra;
    text += "[files]\n\"model.onnx\" = \"0000000000000000000000000000000000000000000000000000000000000000\"\n";
    Manifest::from_toml(&text).expect("fixture manifest parses")
}

fn toml_shape(shape: &[Dim]) -> String {
    let parts: Vec<String> = shape
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => n.to_string(),
            Dim::Symbol(s) => format!("\"{s}\""),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// Writes `<dir>/<name>-<version>.opkg` and returns its path.
pub fn write_package(dir: &Path, name: &str, version: &str, onnx: &[u8]) -> PathBuf {
    let pkg = Package::from_parts(manifest(name, version, onnx), vec![("model.onnx".into(), onnx.to_vec())]).unwrap();
    let path = dir.join(format!("{name}-{version}.opkg"));
    pkg.write_opkg(&path).unwrap();
    path
}

/// Writes a package whose manifest carries `extra` TOML tables and returns its path.
pub fn write_package_with(dir: &Path, name: &str, version: &str, onnx: &[u8], extra: &str) -> PathBuf {
    let manifest = manifest_with(name, version, onnx, extra);
    let pkg = Package::from_parts(manifest, vec![("model.onnx".into(), onnx.to_vec())]).unwrap();
    let path = dir.join(format!("{name}-{version}.opkg"));
    pkg.write_opkg(&path).unwrap();
    path
}

/// Starts an agent on a free port over `model_dir`, with a slow poll (tests rescan by hand).
pub async fn start(model_dir: &Path, tweak: impl FnOnce(&mut AgentConfig)) -> Agent {
    let mut config = AgentConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        model_dir: model_dir.to_path_buf(),
        poll_interval_ms: 3_600_000,
        ..AgentConfig::default()
    };
    tweak(&mut config);
    Agent::start(config).await.expect("agent starts")
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Sends a request without treating error statuses as failures.
pub fn http(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Answer {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = match body {
        Some(b) => agent.run(req.body(b.to_vec()).unwrap()),
        None => agent.run(req.body(()).unwrap()),
    };
    let mut resp = resp.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let headers = resp.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string())).collect();
    let status = resp.status().as_u16();
    let body = resp.body_mut().with_config().limit(1 << 30).read_to_vec().unwrap_or_default();
    Answer { status, headers, body }
}

/// Runs a blocking HTTP call off the async runtime.
pub async fn call(
    method: &'static str,
    url: String,
    headers: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
) -> Answer {
    tokio::task::spawn_blocking(move || {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        http(method, &url, &h, body.as_deref())
    })
    .await
    .unwrap()
}

/// A size-limited filesystem (tmpfs), unmounted on drop.
pub struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    /// Mounts `bytes` of tmpfs at `dir`; `None` where mounting is not allowed (a failure under
    /// CI=true, where this fault must be tested).
    pub fn mount(dir: &Path, bytes: u64) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallDisk(dir.to_path_buf())),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                    Err(e) => e.to_string(),
                };
                assert!(std::env::var("CI").is_err(), "CI=true but a small tmpfs cannot be mounted: {why}");
                eprintln!("cannot mount a small tmpfs ({why}): full-disk test skipped");
                None
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
