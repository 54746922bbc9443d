//! Rollout support on the device, end to end against a real server: per-version request
//! windows, shadow candidates (fetched, loaded, compared, reported, kept through a restart,
//! dropped) and the desired `attempt` that retries a failed update at once.
//!
//! The server's rollout engine is not what is under test here, so a [`Steer`] proxy stands
//! between agent and server: it forwards every request untouched, records the state reports,
//! and edits the desired state on its way to the agent (adds a shadow candidate, raises an
//! attempt), the way the engine will.

use super::delivery::publish;
use super::{agent_config, wait_until, ControlPlane};
use outpost_agent::control::report::ReportBuilder;
use outpost_agent::shadow::Phase;
use outpost_proto::fleet::api::PackageRef;
use outpost_proto::fleet::device::{DesiredState, ReportBatch, StateReport};
use outpost_proto::fleet::rollout::ShadowSpec;
use outpost_proto::manifest::{GoldenCase, NamedTensor, SelfTest, SelfTestRef};
use outpost_runtime::Package;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Edit = Box<dyn Fn(&mut DesiredState) + Send + Sync>;

/// A proxy in front of the server that edits desired states and records reports.
struct Steer {
    base: String,
    edit: Mutex<Edit>,
    generation: AtomicU64,
    reports: Mutex<Vec<StateReport>>,
}

impl Steer {
    async fn start(upstream: String) -> Arc<Steer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let steer = Arc::new(Steer {
            base: format!("http://{}", listener.local_addr().unwrap()),
            edit: Mutex::new(Box::new(|_| {})),
            generation: AtomicU64::new(0),
            reports: Mutex::new(Vec::new()),
        });
        let http = reqwest::Client::new();
        let me = steer.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let (me, http, upstream) = (me.clone(), http.clone(), upstream.clone());
            async move { me.forward(&http, &upstream, req).await }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        steer
    }

    /// From now on every desired state reaches the agent through `edit`.
    fn steer(&self, edit: impl Fn(&mut DesiredState) + Send + Sync + 'static) {
        *self.edit.lock().unwrap() = Box::new(edit);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn reports(&self) -> Vec<StateReport> {
        self.reports.lock().unwrap().clone()
    }

    async fn forward(
        &self,
        http: &reqwest::Client,
        upstream: &str,
        req: axum::extract::Request,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        let path = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
        if parts.method == reqwest::Method::POST && path == "/v1/device/heartbeat" {
            self.reports.lock().unwrap().push(serde_json::from_slice(&body).unwrap());
        }
        if parts.method == reqwest::Method::POST && path == "/v1/device/reports" {
            let batch: ReportBatch = serde_json::from_slice(&body).unwrap();
            self.reports.lock().unwrap().extend(batch.reports);
        }
        let desired = path.starts_with("/v1/device/desired-state");
        let mut request = http.request(parts.method.clone(), format!("{upstream}{path}"));
        for (name, value) in &parts.headers {
            // The agent's ETag is ours, not the server's: the server answers in full and the
            // proxy decides whether anything changed.
            if name != reqwest::header::HOST && !(desired && name == reqwest::header::IF_NONE_MATCH) {
                request = request.header(name, value);
            }
        }
        let response = request.body(body).send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.unwrap();
        if desired && status.is_success() {
            let mut state: DesiredState = serde_json::from_slice(&bytes).unwrap();
            (self.edit.lock().unwrap())(&mut state);
            state.etag = format!("{}-{}", state.etag, self.generation.load(Ordering::SeqCst));
            let known = parts.headers.get(reqwest::header::IF_NONE_MATCH).and_then(|v| v.to_str().ok());
            if known.map(|k| k.trim_matches('"')) == Some(state.etag.as_str()) {
                // A long-poll with nothing new: held briefly, then "not modified".
                tokio::time::sleep(Duration::from_millis(200)).await;
                return reqwest::StatusCode::NOT_MODIFIED.into_response();
            }
            return axum::Json(state).into_response();
        }
        let mut answer = (status, bytes).into_response();
        for (name, value) in &headers {
            if name != reqwest::header::CONTENT_LENGTH && name != reqwest::header::TRANSFER_ENCODING {
                answer.headers_mut().insert(name, value.clone());
            }
        }
        answer
    }
}

fn package_ref(bytes: &[u8]) -> PackageRef {
    PackageRef { sha256: hex::encode(Sha256::digest(bytes)), size_bytes: bytes.len() as u64 }
}

/// A shadow `candidate` of `affine`, sampling every request.
fn shadow_of_affine(candidate: &str, bytes: &[u8]) -> impl Fn(&mut DesiredState) + Send + Sync + 'static {
    let spec = ShadowSpec { version: candidate.to_string(), package: Some(package_ref(bytes)), sample: 1.0 };
    move |state: &mut DesiredState| {
        for m in state.models.iter_mut().filter(|m| m.name == "affine") {
            m.shadow = Some(spec.clone());
        }
    }
}

fn affine_bytes(dir: &Path, version: &str, scale: f64) -> Vec<u8> {
    std::fs::read(super::common::write_package(dir, "affine", version, &super::common::affine_onnx(scale))).unwrap()
}

/// `affine` whose golden self-test expects outputs the model does not produce.
fn failing_selftest_bytes(dir: &Path, version: &str) -> Vec<u8> {
    let onnx = super::common::affine_onnx(1.0);
    let mut manifest = super::common::manifest("affine", version, &onnx);
    manifest.selftest = Some(SelfTestRef { file: "selftest.json".into(), atol: 1e-4, rtol: 1e-3 });
    let tensor = |name: &str, v: f64| NamedTensor {
        name: name.into(),
        dtype: outpost_proto::DType::F32,
        shape: vec![1, 4],
        data: vec![serde_json::json!(v); 4],
    };
    let golden = SelfTest {
        cases: vec![GoldenCase { inputs: vec![tensor("x", 1.0)], outputs: vec![tensor("y", 99.0)] }],
        synthetic: vec![],
        recorded_with: None,
    };
    let files = vec![("model.onnx".into(), onnx), ("selftest.json".into(), serde_json::to_vec(&golden).unwrap())];
    let path = dir.join(format!("affine-{version}.opkg"));
    Package::from_parts(manifest, files).unwrap().write_opkg(&path).unwrap();
    std::fs::read(path).unwrap()
}

fn infer_body(x: f32) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [x, x, x, x]}]
    }))
    .unwrap()
}

/// Sends `n` inference requests to `affine` (x = 1, 2, …: no input where scales agree); every
/// answer comes from `version` (y = x + 1 for the scale-1 models used here).
async fn infer_n(addr: std::net::SocketAddr, n: usize, version: &str) {
    for i in 0..n {
        let url = format!("http://{addr}/v2/models/affine/infer");
        let x = i as f32 + 1.0;
        let a = super::common::call("POST", url, vec![], Some(infer_body(x))).await;
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        let answer = a.json();
        assert_eq!(answer["model_version"], version, "{answer}");
        assert_eq!(answer["outputs"][0]["data"][0].as_f64(), Some(f64::from(x) + 1.0), "{answer}");
    }
}

/// Sums of the shadow counts `affine` reported for `candidate`: (samples, agreement,
/// score_diff, skipped, errors).
fn shadow_totals(reports: &[StateReport], candidate: &str) -> (u64, f64, f64, u64, u64) {
    let mut t = (0, 0.0, 0.0, 0, 0);
    for s in reports.iter().flat_map(|r| &r.models).filter_map(|m| m.shadow.as_ref()).filter(|s| s.version == candidate)
    {
        t = (t.0 + s.samples, t.1 + s.agreement, t.2 + s.score_diff, t.3 + s.skipped, t.4 + s.errors);
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_windows_across_a_hot_swap_add_up_to_the_requests_made() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    affine_bytes(&models, "1", 1.0);
    let agent = super::common::start(&models, |_| {}).await;
    let mut builder =
        ReportBuilder::new(agent.state.store.clone(), agent.state.metrics.clone(), dir.path().to_path_buf(), 1);
    infer_n(agent.addr, 7, "1").await;
    affine_bytes(&models, "2", 1.0);
    agent.rescan(models.clone()).await;
    infer_n(agent.addr, 5, "2").await;
    let report = builder.build(&[], "", &Default::default(), &Default::default());
    let affine = report.models.iter().find(|m| m.name == "affine").unwrap();
    let windows: Vec<(&str, u64, u64, u64)> =
        affine.windows.iter().map(|w| (w.version.as_str(), w.requests, w.errors, w.latency.count())).collect();
    assert_eq!(windows, [("1", 7, 0, 7), ("2", 5, 0, 5)], "one window per version that answered");
    assert_eq!(affine.requests, 12, "the totals since start stay as they were");
    infer_n(agent.addr, 2, "2").await;
    let next = builder.build(&[], "", &Default::default(), &Default::default());
    let affine = next.models.iter().find(|m| m.name == "affine").unwrap();
    assert_eq!(affine.windows.len(), 1);
    assert_eq!((affine.windows[0].version.as_str(), affine.windows[0].requests), ("2", 2), "each request once");
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_candidate_is_fetched_compared_on_samples_never_answers_survives_a_restart_and_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let plane = ControlPlane::start(&dir.path().join("server")).await;
    let token = plane.enrollment_token(1).await;
    let build = dir.path().join("build");
    std::fs::create_dir_all(&build).unwrap();
    let v1 = affine_bytes(&build, "1", 1.0);
    // The candidate computes the same function, so it must agree on every sample.
    let v2 = affine_bytes(&build, "2", 1.0);
    publish(&plane, v1).await;
    publish(&plane, v2.clone()).await;
    let steer = Steer::start(plane.base.clone()).await;
    let mut config = agent_config(dir.path(), &steer.base, Some(token));
    config.shadow_cpu_share = 1.0;
    let models = config.model_dir.clone();
    let agent = outpost_agent::Agent::start(config.clone()).await.unwrap();
    let status = agent.control().unwrap().clone();
    wait_until("enrollment", || status.device_id().is_some()).await;
    let device = status.device_id().unwrap();
    steer.steer(shadow_of_affine("2", &v2));
    let pin = serde_json::json!({"models": {"affine": "1"}, "config": {}});
    plane.call(reqwest::Method::PUT, &format!("/v1/devices/{device}/override"), Some(pin)).await;

    let (store, shadows) = (agent.state.store.clone(), agent.state.shadows.clone());
    let ready = move || shadows.phase("affine") == Some(("2".into(), Phase::Ready));
    wait_until("the candidate downloaded and loaded beside v1", ready.clone()).await;
    assert_eq!(store.get("affine").map(|m| m.version().to_string()).as_deref(), Some("1"));
    assert!(models.join("affine-2.opkg").exists(), "the candidate is installed like an update");
    assert_eq!(store.installed("affine"), ["2", "1"]);

    infer_n(agent.addr, 20, "1").await;
    wait_until("every sampled request compared and reported", || {
        let (samples, _, _, skipped, errors) = shadow_totals(&steer.reports(), "2");
        samples + skipped + errors == 20
    })
    .await;
    let (samples, agreement, score_diff, skipped, errors) = shadow_totals(&steer.reports(), "2");
    assert!(samples >= 1, "samples {samples}, skipped {skipped}");
    assert_eq!((agreement, score_diff, errors), (samples as f64, 0.0, 0), "the same function agrees on every sample");
    let last = steer.reports().last().cloned().unwrap();
    let affine = last.models.iter().find(|m| m.name == "affine").unwrap();
    assert_eq!((affine.state.as_str(), affine.version.as_str()), ("ready", "1"), "{affine:?}");
    assert_eq!(affine.shadow.as_ref().map(|s| s.state.as_str()), Some("ready"));

    // A restart: the candidate is not what serves, and it comes back as the shadow.
    agent.shutdown().await.unwrap();
    let agent = outpost_agent::Agent::start(agent_config(dir.path(), &steer.base, None)).await.unwrap();
    let (store, shadows) = (agent.state.store.clone(), agent.state.shadows.clone());
    assert_eq!(store.get("affine").map(|m| m.version().to_string()).as_deref(), Some("1"), "v1 serves after a restart");
    let ready = move || shadows.phase("affine") == Some(("2".into(), Phase::Ready));
    wait_until("the candidate back in shadow after the restart", ready).await;
    infer_n(agent.addr, 3, "1").await;

    // The desired state drops the shadow: the candidate is unloaded; its package stays for now.
    steer.steer(|_| {});
    let shadows = agent.state.shadows.clone();
    wait_until("the candidate unloaded", move || shadows.phase("affine").is_none()).await;
    assert!(agent.state.store.shadows().is_empty());
    assert_eq!(agent.state.store.get("affine").map(|m| m.version().to_string()).as_deref(), Some("1"));
    // (A restarted agent's next heartbeat may be its default interval away: build one here.)
    let state = &agent.state;
    let report = ReportBuilder::new(state.store.clone(), state.metrics.clone(), dir.path().to_path_buf(), 1)
        .with_shadows(state.shadows.clone())
        .build(&[], "", &Default::default(), &Default::default());
    assert!(report.models.iter().all(|m| m.shadow.is_none()), "reports no longer carry the shadow");
    agent.shutdown().await.unwrap();
    plane.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_candidate_that_fails_to_load_is_reported_failed_and_the_serving_version_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let plane = ControlPlane::start(&dir.path().join("server")).await;
    let token = plane.enrollment_token(1).await;
    let build = dir.path().join("build");
    std::fs::create_dir_all(&build).unwrap();
    let v1 = affine_bytes(&build, "1", 1.0);
    let v2 = failing_selftest_bytes(&build, "2");
    publish(&plane, v1).await;
    publish(&plane, v2.clone()).await;
    let steer = Steer::start(plane.base.clone()).await;
    let agent = outpost_agent::Agent::start(agent_config(dir.path(), &steer.base, Some(token))).await.unwrap();
    let status = agent.control().unwrap().clone();
    wait_until("enrollment", || status.device_id().is_some()).await;
    let device = status.device_id().unwrap();
    steer.steer(shadow_of_affine("2", &v2));
    let pin = serde_json::json!({"models": {"affine": "1"}, "config": {}});
    plane.call(reqwest::Method::PUT, &format!("/v1/devices/{device}/override"), Some(pin)).await;

    wait_until("a report of the failed candidate", || {
        steer.reports().iter().flat_map(|r| &r.models).any(|m| m.shadow.as_ref().is_some_and(|s| s.state == "failed"))
    })
    .await;
    let reports = steer.reports();
    let failed = reports.iter().flat_map(|r| &r.models).find_map(|m| m.shadow.as_ref().filter(|s| s.state == "failed"));
    let reason = failed.and_then(|s| s.reason.clone()).unwrap_or_default();
    assert!(reason.to_lowercase().contains("self-test"), "the reason says why: {reason}");
    let store = agent.state.store.clone();
    assert_eq!(store.get("affine").map(|m| m.version().to_string()).as_deref(), Some("1"));
    assert!(store.slot("affine").unwrap().failure.is_none(), "the candidate's failure is not the model's");
    infer_n(agent.addr, 3, "1").await;
    agent.shutdown().await.unwrap();
    plane.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_attempt_retries_a_failed_update_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server_data = dir.path().join("server");
    let plane = ControlPlane::start(&server_data).await;
    let token = plane.enrollment_token(1).await;
    let build = dir.path().join("build");
    std::fs::create_dir_all(&build).unwrap();
    let v2 = affine_bytes(&build, "2", 1.0);
    publish(&plane, v2.clone()).await;
    // The stored bytes go bad: every download of v2 fails its hash check.
    let stored = server_data.join("artifacts/packages").join(format!("{}.opkg", package_ref(&v2).sha256));
    let mut bad = v2.clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 0xff;
    std::fs::write(&stored, &bad).unwrap();

    let steer = Steer::start(plane.base.clone()).await;
    let agent = outpost_agent::Agent::start(agent_config(dir.path(), &steer.base, Some(token))).await.unwrap();
    let status = agent.control().unwrap().clone();
    wait_until("enrollment", || status.device_id().is_some()).await;
    let device = status.device_id().unwrap();
    let pin = serde_json::json!({"models": {"affine": "2"}, "config": {}});
    plane.call(reqwest::Method::PUT, &format!("/v1/devices/{device}/override"), Some(pin)).await;
    let failed = || {
        steer.reports().iter().flat_map(|r| &r.models).any(|m| m.update.as_ref().is_some_and(|u| u.state == "failed"))
    };
    wait_until("the update to fail", failed).await;

    // Repaired on the server; without a raised attempt the device would wait ten minutes.
    std::fs::write(&stored, &v2).unwrap();
    steer.steer(|state| state.models.iter_mut().for_each(|m| m.attempt = 1));
    let store = agent.state.store.clone();
    wait_until("v2 retried at once and serving", move || store.get("affine").is_some_and(|m| m.version() == "2")).await;
    agent.shutdown().await.unwrap();
    plane.server.shutdown().await.unwrap();
}

fn store() -> (outpost_agent::store::ModelStore, Arc<outpost_agent::metrics::Metrics>) {
    let metrics = Arc::new(outpost_agent::metrics::Metrics::new());
    let budget = outpost_runtime::model::MemoryBudget::new(256 << 20);
    (outpost_agent::store::ModelStore::new(outpost_runtime::LoadOptions::default(), budget, metrics.clone()), metrics)
}

fn serving(store: &outpost_agent::store::ModelStore) -> Option<String> {
    store.get("affine").map(|m| m.version().to_string())
}

#[test]
fn a_shadow_candidate_is_never_activated_by_a_scan_even_as_the_highest_version() {
    let dir = tempfile::tempdir().unwrap();
    affine_bytes(dir.path(), "1", 1.0);
    affine_bytes(dir.path(), "2", 1.0);
    let (store, _) = store();
    store.set_shadows([("affine".to_string(), "2".to_string())].into());
    store.sync(dir.path());
    assert_eq!(serving(&store).as_deref(), Some("1"), "no desired version, yet the candidate is left out");
    store.sync(dir.path());
    assert_eq!(serving(&store).as_deref(), Some("1"));
    store.set_shadows(Default::default());
    store.sync(dir.path());
    assert_eq!(serving(&store).as_deref(), Some("2"), "once no longer a shadow it is an ordinary package");
}

#[test]
fn a_version_refused_at_load_is_tried_again_only_when_its_failures_are_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    affine_bytes(dir.path(), "1", 1.0);
    failing_selftest_bytes(dir.path(), "2");
    let (store, metrics) = store();
    store.set_desired([("affine".to_string(), "2".to_string())].into());
    let failures = || {
        let text = metrics.render();
        let line = text.lines().find(|l| l.starts_with("outpost_model_load_failures_total")).unwrap_or_default();
        line.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0)
    };
    store.sync(dir.path());
    assert_eq!((serving(&store).as_deref(), failures()), (Some("1"), 1));
    store.sync(dir.path());
    assert_eq!(failures(), 1, "an unchanged package that failed is not loaded again");
    assert!(store.retry_failed("affine"));
    store.sync(dir.path());
    assert_eq!((serving(&store).as_deref(), failures()), (Some("1"), 2), "tried again, refused again, v1 serves");
}

/// Adds the shadow counts of `affine` into `totals` until `due` requests are accounted for.
async fn settle(shadows: &outpost_agent::shadow::Shadows, totals: &mut (u64, f64, f64, u64, u64), due: u64) {
    for _ in 0..500 {
        let r = shadows.take_reports().remove("affine").unwrap();
        *totals = (
            totals.0 + r.samples,
            totals.1 + r.agreement,
            totals.2 + r.score_diff,
            totals.3 + r.skipped,
            totals.4 + r.errors,
        );
        if totals.0 + totals.3 + totals.4 == due {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the shadow did not account for {due} requests: {totals:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_and_predict_requests_feed_the_shadow_which_sees_a_different_function_disagree() {
    let dir = tempfile::tempdir().unwrap();
    let (models, candidates) = (dir.path().join("models"), dir.path().join("candidates"));
    std::fs::create_dir_all(&models).unwrap();
    std::fs::create_dir_all(&candidates).unwrap();
    let pipeline = "[pre]\nkind = \"sensor\"\nchannels = 1\nwindow = 4\nlayout = \"flat\"\n";
    let onnx = |scale| super::common::affine_onnx(scale);
    super::common::write_package_with(&models, "affine", "1", &onnx(1.0), pipeline);
    let candidate = super::common::write_package_with(&candidates, "affine", "2", &onnx(2.0), pipeline);
    let agent = super::common::start(&models, |c| c.shadow_cpu_share = 1.0).await;
    let store = agent.state.store.clone();
    let pkg = Package::open(&candidate).unwrap();
    let loaded = outpost_agent::shadow::CandidateModel::load(&pkg, store.load_options(), store.budget()).unwrap();
    let shadows = agent.state.shadows.clone();
    shadows.loading("affine", "2", 1.0);
    assert!(shadows.ready("affine", "2", Box::new(loaded)));

    // One request at a time, each compared before the next: every one finds the shadow idle.
    let mut totals = (0, 0.0, 0.0, 0, 0);
    for i in 0..3 {
        infer_n(agent.addr, 1, "1").await;
        settle(&shadows, &mut totals, i + 1).await;
    }
    let url = format!("http://{}/v1/models/affine/predict", agent.addr);
    for i in 0..3 {
        let body = serde_json::to_vec(&serde_json::json!({"channels": [[1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0]]}));
        let a = super::common::call("POST", url.clone(), vec![], Some(body.unwrap())).await;
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        let answer = a.json();
        assert_eq!(answer["model_version"], "1");
        assert_eq!(answer["predictions"][1]["values"][0], 3.0, "the serving version answers: {answer}");
        settle(&shadows, &mut totals, 4 + i).await;
    }
    let (samples, agreement, score_diff, skipped, errors) = totals;
    // The allowance charges the shadow's wall time, so on a loaded machine the starved
    // lowest-priority thread can overdraw it and the next request is skipped: counted, not lost.
    assert!(samples >= 1 && samples + skipped == 6 && errors == 0, "{totals:?}");
    assert_eq!(agreement, 0.0, "y = 2x + 1 is not within the tolerance of y = x + 1: {totals:?}");
    assert!(score_diff > 0.0, "{totals:?}");
    agent.shutdown().await.unwrap();
}
