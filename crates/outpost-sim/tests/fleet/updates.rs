//! Simulated devices download for real: a handful of virtual devices against a real control
//! plane in this process take a published version as whole packages, the next as deltas from
//! it, and refuse a third whose stored bytes were corrupted. What the devices say they fetched
//! must be what the server's egress counters say it sent, byte for byte, so faked downloads
//! would fail here.

use outpost_agent::control::fetch::{DELTA_MISSES, MISMATCH_ATTEMPTS};
use outpost_proto::manifest::Dim;
use outpost_sim::{FaultConfig, SimConfig};
use outpost_train::onnx::{encode, GraphBuilder};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::{Duration, Instant};

const DEVICES: usize = 4;
pub(crate) const MODEL: &str = "det";

/// A small detector-shaped model: a 128 KiB backbone and a 32 KiB head whose weights `tune`
/// moves (a head-only fine-tune leaves the backbone's bytes as they were).
fn onnx(tune: f64) -> Vec<u8> {
    let noise = |seed: u64, n: usize| -> Vec<f64> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f64 / (1u64 << 24) as f64) * 2.0 - 1.0
            })
            .collect()
    };
    let head: Vec<f64> = noise(2, 512 * 16).iter().zip(noise(7, 512 * 16)).map(|(w, d)| w * (1.0 + tune * d)).collect();
    let mut g = GraphBuilder::new("det");
    let x = g.input_f32("x", &[Dim::Fixed(1), Dim::Fixed(64)]);
    let backbone = g.constant_f32("backbone", &[64, 512], &noise(1, 64 * 512));
    let head = g.constant_f32("head", &[512, 16], &head);
    let h = g.node("MatMul", &[&x, &backbone], "h", vec![]);
    let r = g.node("Relu", &[&h], "r", vec![]);
    g.node("MatMul", &[&r, &head], "y", vec![]);
    g.output_f32("y", &[Dim::Fixed(1), Dim::Fixed(16)]);
    encode(&g.finish("sim update test model").expect("valid graph"))
}

/// A package (tar of manifest and model) of `det@version`.
pub(crate) fn package(version: &str, tune: f64) -> Vec<u8> {
    let model = onnx(tune);
    let manifest = format!(
        "format = 1\n\n[model]\nname = \"{MODEL}\"\nversion = \"{version}\"\ntask = \"detection\"\n\n\
         [[inputs]]\nname = \"x\"\ndtype = \"FP32\"\nshape = [1, 64]\n\n\
         [[outputs]]\nname = \"y\"\ndtype = \"FP32\"\nshape = [1, 16]\n\n[files]\n\"model.onnx\" = \"{}\"\n",
        hex::encode(Sha256::digest(&model))
    );
    let mut tar = tar::Builder::new(Vec::new());
    for (name, bytes) in [("manifest.toml", manifest.as_bytes()), ("model.onnx", model.as_slice())] {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, bytes).unwrap();
    }
    tar.into_inner().unwrap()
}

pub(crate) struct Plane {
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
    pub(crate) admin: String,
}

impl Plane {
    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
        json: bool,
    ) -> serde_json::Value {
        let mut request = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.admin);
        if let Some(body) = body {
            let kind = if json { "application/json" } else { "application/octet-stream" };
            request = request.header("content-type", kind).body(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }

    pub(crate) async fn post(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        self.call(reqwest::Method::POST, path, Some(body.to_string().into_bytes()), true).await
    }

    /// Publishes `bytes` and runs that version on every simulated device; the package's sha256.
    async fn publish_and_assign(&self, version: &str, bytes: Vec<u8>) -> String {
        let published = self.call(reqwest::Method::POST, "/v1/model-packages", Some(bytes), false).await;
        let selector = "fleet=updates";
        self.post("/v1/assignments", serde_json::json!({"selector": selector, "model": MODEL, "version": version}))
            .await;
        published["package"]["sha256"].as_str().unwrap().to_string()
    }

    /// A counter of the server's `/metrics`.
    async fn counter(&self, name: &str) -> u64 {
        let text = self.http.get(format!("{}/metrics", self.base)).send().await.unwrap().text().await.unwrap();
        let line = text.lines().find(|l| l.split_whitespace().next() == Some(name));
        line.and_then(|l| l.split_whitespace().nth(1)).map_or(0, |v| v.parse::<f64>().unwrap() as u64)
    }

    async fn egress(&self) -> (u64, u64) {
        (
            self.counter("outpost_server_package_bytes_sent_total").await,
            self.counter("outpost_server_delta_bytes_sent_total").await,
        )
    }

    /// Waits until every device's report of the model, as the server shows it, passes `done`.
    async fn wait_reports(&self, what: &str, done: impl Fn(&serde_json::Value) -> bool) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let page =
                self.call(reqwest::Method::GET, "/v1/devices?selector=fleet%3Dupdates&limit=100", None, true).await;
            let reports: Vec<serde_json::Value> = page["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|d| d["models"].as_array()?.iter().find(|m| m["name"] == MODEL).cloned())
                .collect();
            if reports.len() == DEVICES && reports.iter().all(&done) {
                return reports;
            }
            assert!(Instant::now() < deadline, "devices never reported {what}: {reports:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A fleet of `devices` against `plane`, enrolling with `token`, without faults.
pub(crate) fn sim_config(
    plane: &Plane,
    token: &serde_json::Value,
    devices: usize,
    interval: Duration,
    packages: std::path::PathBuf,
) -> SimConfig {
    SimConfig {
        server: plane.base.clone(),
        devices,
        enroll_token: token["secret"].as_str().unwrap().to_string(),
        heartbeat_interval: interval,
        jitter: 0.1,
        offline_fraction: 0.0,
        long_poll: true,
        duration: None,
        enroll_concurrency: devices,
        faults: FaultConfig::default(),
        quality: Default::default(),
        package_dir: Some(packages),
    }
}

/// Flips a byte of the stored package `sha` and of the delta blobs to it that publishing
/// builds in the background (waited for, so they are not built from good bytes afterwards).
async fn corrupt_stored(artifacts: &Path, sha: &str) {
    let deltas = artifacts.join("deltas");
    let mine = |ext: &str| -> Vec<std::path::PathBuf> {
        let entries = std::fs::read_dir(&deltas).into_iter().flatten().flatten().map(|e| e.path());
        entries
            .filter(|p| p.file_name().is_some_and(|f| f.to_string_lossy().starts_with(sha)))
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while mine("plan").is_empty() {
        assert!(Instant::now() < deadline, "the server never built the delta to {sha}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for file in mine("blobs").into_iter().chain([artifacts.join("packages").join(format!("{sha}.opkg"))]) {
        let mut bytes = std::fs::read(&file).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0xff;
        std::fs::write(&file, bytes).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_devices_download_verify_and_report_whole_packages_deltas_and_refuse_bad_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let config = outpost_server::ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("server"),
        ..Default::default()
    };
    let server = outpost_server::Server::start(config).await.unwrap();
    let admin = std::fs::read_to_string(server.admin_token_path.as_ref().unwrap()).unwrap().trim().to_string();
    let plane = Plane {
        http: outpost_agent::control::client::http_client(4).unwrap(),
        base: format!("http://{}", server.addr),
        admin,
    };
    let token =
        plane.post("/v1/enrollment-tokens", serde_json::json!({"uses": DEVICES, "labels": {"fleet": "updates"}})).await;
    let (v1, v2, v3) = (package("1", 0.0), package("2", 1e-3), package("3", 2e-3));
    let (v1_len, v2_len) = (v1.len() as u64, v2.len() as u64);
    plane.publish_and_assign("1", v1).await;

    let packages = dir.path().join("sim-packages");
    let sim = sim_config(&plane, &token, DEVICES, Duration::from_millis(500), packages.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let fleet = tokio::spawn(outpost_sim::run(sim, async move {
        let _ = stopped.await;
    }));

    // v1: a whole download per device, each streamed and hashed by the device itself.
    let active = |version: &'static str| {
        move |m: &serde_json::Value| m["version"] == version && m["state"] == "ready" && m["update"].is_null()
    };
    plane.wait_reports("v1 active", active("1")).await;
    assert_eq!(plane.egress().await, (DEVICES as u64 * v1_len, 0), "one whole package per device, no delta");
    let stored: Vec<_> = std::fs::read_dir(&packages).unwrap().flatten().collect();
    assert_eq!(stored.len(), 1, "one copy of v1 for the whole fleet: {stored:?}");

    // v2: a delta from v1 per device, far smaller than the package.
    plane.publish_and_assign("2", v2).await;
    let reports = plane.wait_reports("v2 active", active("2")).await;
    for m in &reports {
        assert_eq!(m["installed"], serde_json::json!(["2", "1"]), "{m}");
    }
    let (whole, delta) = plane.egress().await;
    assert_eq!(whole, DEVICES as u64 * v1_len, "v2 came as deltas only");
    assert!(delta > 0 && delta < DEVICES as u64 * v2_len / 2, "{delta} delta bytes for {DEVICES} × {v2_len}");

    // v3: its stored package and delta corrupted after publishing. Every device sees its bytes
    // fail to verify, falls back from the delta to the whole package, gives up, and keeps v2.
    let sha3 = {
        let published = plane.call(reqwest::Method::POST, "/v1/model-packages", Some(v3), false).await;
        published["package"]["sha256"].as_str().unwrap().to_string()
    };
    corrupt_stored(&dir.path().join("server/artifacts"), &sha3).await;
    plane
        .post("/v1/assignments", serde_json::json!({"selector": "fleet=updates", "model": MODEL, "version": "3"}))
        .await;
    let refused = |m: &serde_json::Value| {
        m["version"] == "2"
            && m["state"] == "ready"
            && m["update"]["version"] == "3"
            && m["update"]["state"] == "failed"
    };
    let reports = plane.wait_reports("v3 refused while v2 serves", refused).await;
    for m in &reports {
        assert_eq!(m["update"]["failure_kind"], "hash_mismatch", "{m}");
    }

    let _ = stop.send(());
    let report = fleet.await.unwrap().unwrap();
    println!("{report}");
    let u = &report.updates;
    let n = DEVICES as u64;
    assert_eq!((u.downloads_full, u.downloads_delta, u.active, u.failed), (n, n, 2 * n, n), "{report}");
    // Per device on v3: the delta's pieces fail (once when the byte hit the frame's codec, else
    // until the delta is given up), then every whole download.
    let (least, most) = (n * (1 + u64::from(MISMATCH_ATTEMPTS)), n * u64::from(DELTA_MISSES + MISMATCH_ATTEMPTS));
    assert!((least..=most).contains(&u.verify_failures), "{report}");
    assert_eq!(u.delta_fallbacks, n, "{report}");
    // What the devices received is what the server sent.
    assert_eq!((u.bytes_full, u.bytes_delta), plane.egress().await, "{report}");
    assert!(u.time_to_active_max_ms > 0.0 && u.time_to_active_p50_ms <= u.time_to_active_max_ms);
    assert!(!std::fs::read_dir(&packages)
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with(&sha3)));
    server.shutdown().await.unwrap();
}
