//! A model in service: verified package + compiled engine + session pool + pipelines, inside a
//! memory budget.

use crate::backend::{self, BackendKind, Engine, EngineOptions, IoSpec};
use crate::drift::DriftMonitor;
use crate::indices::IndexRange;
use crate::pipeline::{self, PipelineError};
use crate::pool::{Completed, Reply, SessionPool};
use crate::selftest::{self, SelfTestReport};
use crate::shapes::InputRules;
use crate::{Package, RuntimeError, Tensor};
use outpost_proto::fleet::device::FailureKind;
use outpost_proto::manifest::{BackendChoice, PostProcess};
use outpost_proto::prediction::{PredictResponse, StageTimings};
use outpost_proto::Manifest;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How to load models.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Force a backend; otherwise the manifest's choice (auto: tract, falling back to onnxruntime).
    pub backend: Option<BackendKind>,
    /// Sessions (worker threads) per model.
    pub sessions: usize,
    /// Requests that may wait per model before new ones are refused.
    pub queue_capacity: usize,
    /// Intra-op threads per inference.
    pub threads: usize,
    /// Path of `libonnxruntime.so`.
    pub ort_library: Option<PathBuf>,
    /// tract: plans specialised to one request shape kept for a model with dynamic inputs.
    pub shape_plans: usize,
    /// Run the golden self-test before serving.
    pub run_selftest: bool,
    /// Under the manifest's `auto`, load both backends, time a few runs of each, and keep the
    /// faster. Off by default: it costs load time and maps the ONNX Runtime library.
    pub measure_backends: bool,
    /// How drift windows are cut and judged.
    pub drift: crate::drift::DriftSettings,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            backend: None,
            sessions: 1,
            queue_capacity: 64,
            threads: 1,
            ort_library: None,
            shape_plans: crate::backend::DEFAULT_SHAPE_PLANS,
            run_selftest: true,
            measure_backends: false,
            drift: crate::drift::DriftSettings::default(),
        }
    }
}

/// Bytes of model memory the device may use, shared by all loaded models.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    limit: u64,
    used: Arc<Mutex<u64>>,
}

/// Bytes held against a [`MemoryBudget`]; released when dropped.
#[derive(Debug)]
pub struct Reservation {
    bytes: u64,
    used: Arc<Mutex<u64>>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Ok(mut used) = self.used.lock() {
            *used = used.saturating_sub(self.bytes);
        }
    }
}

const MB: f64 = 1024.0 * 1024.0;

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> MemoryBudget {
        MemoryBudget { limit, used: Arc::new(Mutex::new(0)) }
    }

    /// Reserves `bytes` for `model`, or explains with figures why it does not fit.
    pub fn reserve(&self, model: &str, bytes: u64) -> Result<Reservation, RuntimeError> {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let available = self.limit.saturating_sub(*used);
        if bytes > available {
            return Err(RuntimeError::MemoryBudget {
                model: model.to_string(),
                needed_mb: bytes as f64 / MB,
                available_mb: available as f64 / MB,
                budget_mb: self.limit as f64 / MB,
            });
        }
        *used += bytes;
        Ok(Reservation { bytes, used: self.used.clone() })
    }

    /// Bytes currently reserved.
    pub fn used(&self) -> u64 {
        *self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The whole budget in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }
}

/// A loaded, self-tested model ready to serve.
#[derive(Debug)]
pub struct LoadedModel {
    /// The package manifest.
    pub manifest: Manifest,
    /// The compiled model.
    pub engine: Arc<dyn Engine>,
    /// Self-test outcome at load, when the package has golden vectors.
    pub selftest: Option<SelfTestReport>,
    /// Time taken to load, verify and self-test.
    pub load_time: Duration,
    /// sha256 of the ONNX file.
    pub model_sha256: String,
    /// Why this backend serves, when it was not simply the configured one (a fallback or a
    /// measurement).
    pub fallback_reason: Option<String>,
    pool: SessionPool,
    post: Option<PostProcess>,
    rules: InputRules,
    inputs: Vec<IoSpec>,
    index_ranges: IndexRanges,
    drift: Arc<DriftMonitor>,
    _reservation: Reservation,
}

impl LoadedModel {
    /// Compiles, budgets, self-tests and starts the sessions of a verified package.
    ///
    /// Under `backend = "auto"` each backend is tried in turn (the one `pack` measured faster
    /// first): one that cannot load the model, does not fit the budget or fails the self-test
    /// gives way to the next, and the reasons are kept in `fallback_reason`.
    pub fn load(pkg: &Package, opts: &LoadOptions, budget: &MemoryBudget) -> Result<LoadedModel, RuntimeError> {
        let started = Instant::now();
        let manifest = pkg.manifest.clone();
        let name = manifest.model.name.clone();
        let rules = InputRules::from_manifest(&manifest);
        let engine_opts = EngineOptions {
            model_name: format!("{}@{}", name, manifest.model.version),
            symbols: manifest.symbols.clone(),
            threads: opts.threads,
            ort_library: opts.ort_library.clone(),
            input_shapes: rules.pinned(),
            symbol_bounds: rules.upper_bounds(),
            shape_plans: opts.shape_plans,
        };
        let golden = if opts.run_selftest { pkg.selftest()? } else { None };
        // Requests' integer indices are checked against the tables they index, so a token id
        // past the vocabulary is the client's error, not a backend panic.
        let index_ranges = crate::indices::index_ranges(pkg.model_bytes());
        let tolerance = manifest.selftest.as_ref().map(|s| (s.atol, s.rtol)).unwrap_or((1e-4, 1e-3));
        let candidates = candidates(&manifest, opts);
        let mut refused: Vec<String> = Vec::new();
        let mut kinds: Vec<FailureKind> = Vec::new();
        let mut chosen = None;
        for (i, kind) in candidates.iter().enumerate() {
            let last = i + 1 == candidates.len();
            match try_backend(*kind, pkg.model_bytes(), &engine_opts, opts, budget, golden.as_ref(), tolerance) {
                Ok(ok) => {
                    chosen = Some(ok);
                    break;
                }
                // Only a model-level problem justifies another backend; a budget or I/O error
                // would fail the same way there.
                Err(e) if !last && falls_back(&e) => {
                    kinds.push(e.failure_kind());
                    refused.push(format!("{kind}: {e}"));
                }
                Err(e) if refused.is_empty() => return Err(e),
                Err(e) => {
                    kinds.push(e.failure_kind());
                    refused.push(format!("{kind}: {e}"));
                    // A missing library says least about the package: name another cause if any.
                    let telling = kinds.iter().copied().find(|k| *k != FailureKind::BackendUnavailable);
                    return Err(RuntimeError::NoBackend {
                        model: engine_opts.model_name.clone(),
                        reason: refused.join("; "),
                        kind: telling.unwrap_or(FailureKind::BackendUnavailable),
                    });
                }
            }
        }
        let (engine, reservation, selftest) = chosen.ok_or_else(|| RuntimeError::Model {
            model: engine_opts.model_name.clone(),
            reason: "no backend to try".into(),
        })?;
        let mut fallback_reason = (!refused.is_empty()).then(|| refused.join("; "));
        if let Some(r) = &fallback_reason {
            tracing::warn!(model = %engine_opts.model_name, backend = %engine.kind(), reason = %r, "serving on a fallback backend");
        }
        let engine = if opts.measure_backends && opts.backend.is_none() && manifest.model.backend == BackendChoice::Auto
        {
            let other = candidates.iter().copied().find(|k| *k != engine.kind());
            match other.map(|k| backend::load_engine(k, pkg.model_bytes(), &engine_opts)) {
                Some(Ok(second)) => {
                    let (faster, why) = faster(engine, second, &index_ranges, &engine_opts.model_name);
                    fallback_reason = Some(why);
                    faster
                }
                Some(Err(e)) => {
                    fallback_reason = Some(format!("measured: the other backend is unavailable ({e})"));
                    engine
                }
                None => engine,
            }
        } else {
            engine
        };
        let post = match &manifest.post {
            Some(p) => Some(p.clone()),
            None => pipeline::default_post(&manifest).ok(),
        };
        let pool = SessionPool::new(&engine_opts.model_name, engine.clone(), opts.sessions, opts.queue_capacity)?;
        let inputs = rules.refine(engine.inputs());
        let drift = Arc::new(DriftMonitor::new(
            &manifest.model.version,
            manifest.reference.as_ref(),
            opts.drift,
            &engine.inputs().iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            &engine.outputs().iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ));
        Ok(LoadedModel {
            model_sha256: manifest.files.get(&manifest.model.file).cloned().unwrap_or_default(),
            manifest,
            engine,
            selftest,
            load_time: started.elapsed(),
            fallback_reason,
            pool,
            post,
            rules,
            inputs,
            index_ranges,
            drift,
            _reservation: reservation,
        })
    }

    /// Graph inputs as requests must send them: the engine's specs with the dimensions the
    /// manifest pins filled in (`None` where a size varies per request).
    pub fn inputs(&self) -> &[IoSpec] {
        &self.inputs
    }

    /// Graph outputs.
    pub fn outputs(&self) -> &[IoSpec] {
        self.engine.outputs()
    }

    /// The post-processing that turns this model's outputs into typed predictions: the
    /// manifest's `[post]`, or the one its task implies (none when the task needs settings).
    pub fn post(&self) -> Option<&PostProcess> {
        self.post.as_ref()
    }

    /// The manifest's rules for input shapes.
    pub fn rules(&self) -> &InputRules {
        &self.rules
    }

    /// Model name.
    pub fn name(&self) -> &str {
        &self.manifest.model.name
    }

    /// Model version.
    pub fn version(&self) -> &str {
        &self.manifest.model.version
    }

    /// Backend in use.
    pub fn backend(&self) -> BackendKind {
        self.engine.kind()
    }

    /// Requests waiting or running.
    pub fn queue_depth(&self) -> usize {
        self.pool.depth()
    }

    /// Checks inputs and queues one inference; `reply` is called on a worker thread.
    pub fn infer(&self, inputs: Vec<Tensor>, reply: Reply) -> Result<(), RuntimeError> {
        self.check(&inputs)?;
        let (sample, drift) = (self.drift.sample_inputs(&inputs), self.drift.clone());
        self.pool.submit(
            inputs,
            Box::new(move |done: Completed| {
                if let Ok(outputs) = &done.result {
                    drift.record(sample, outputs);
                }
                reply(done)
            }),
        )
    }

    /// Runs one inference and waits for it.
    pub fn infer_blocking(&self, inputs: Vec<Tensor>) -> Result<Completed, RuntimeError> {
        self.check(&inputs)?;
        let sample = self.drift.sample_inputs(&inputs);
        let done = self.pool.run_blocking(inputs)?;
        if let Ok(outputs) = &done.result {
            self.drift.record(sample, outputs);
        }
        Ok(done)
    }

    /// The drift monitor of this version's requests.
    pub fn drift(&self) -> &DriftMonitor {
        &self.drift
    }

    /// The manifest's sizes and bounds (the more telling message), then count, dtype and shape
    /// as the engine sees them.
    fn check(&self, inputs: &[Tensor]) -> Result<(), RuntimeError> {
        if inputs.len() == self.inputs.len() {
            self.rules.check(&self.inputs, inputs)?;
        }
        backend::check_inputs(&self.inputs, inputs)?;
        if !self.index_ranges.is_empty() {
            let named: Vec<(&str, &Tensor)> = self.inputs.iter().map(|s| s.name.as_str()).zip(inputs).collect();
            crate::indices::check_indices(&self.index_ranges, &named)?;
        }
        Ok(())
    }

    /// Runs the manifest's pipeline on raw data (image, WAV, sensor JSON): pre-process, infer
    /// each item, post-process. Blocks; call it off async threads.
    pub fn predict_blocking(&self, body: &[u8]) -> Result<PredictResponse, RuntimeError> {
        let pre = self.manifest.pre.as_ref().ok_or_else(|| {
            PipelineError::from_config(format!(
                "model `{}` declares no [pre] pipeline; use the v2 infer API",
                self.name()
            ))
        })?;
        let post = self.post.as_ref().ok_or_else(|| {
            PipelineError::from_config(format!("model `{}` declares no [post] pipeline", self.name()))
        })?;
        if self.engine.inputs().len() != 1 {
            return Err(PipelineError::from_config(format!(
                "model `{}` takes {} inputs; predict feeds only one",
                self.name(),
                self.engine.inputs().len()
            ))
            .into());
        }
        let mut timings = StageTimings::default();
        let t = Instant::now();
        let prepared = pipeline::preprocess(pre, body)?;
        timings.pre_us = t.elapsed().as_micros() as u64;
        let input_spec = &self.engine.inputs()[0];
        let mut predictions = Vec::with_capacity(prepared.items.len());
        for (tensor, meta) in prepared.items {
            let tensor = crate::tensor::cast(&input_spec.name, tensor, input_spec.dtype)?;
            let done = self.infer_blocking(vec![tensor])?;
            timings.infer_us += done.run.as_micros() as u64;
            let outputs = done.result?;
            let t = Instant::now();
            predictions.push(pipeline::postprocess(post, &self.manifest, &outputs, &meta)?);
            timings.post_us += t.elapsed().as_micros() as u64;
        }
        Ok(PredictResponse {
            model_name: self.name().to_string(),
            model_version: self.version().to_string(),
            predictions,
            timings,
        })
    }

    /// Re-runs the golden self-test on the loaded engine (tamper and health check).
    pub fn reverify(&self, pkg: &Package) -> Result<Option<SelfTestReport>, RuntimeError> {
        let Some(test) = pkg.selftest()? else { return Ok(None) };
        let (atol, rtol) = self.manifest.selftest.as_ref().map(|s| (s.atol, s.rtol)).unwrap_or((1e-4, 1e-3));
        selftest::run(self.name(), self.engine.as_ref(), &test, atol, rtol).map(Some)
    }
}

/// Backends to try, in order: a forced or explicit choice alone; under `auto` the one `pack`
/// preferred (tract when it said nothing), then the other.
fn candidates(manifest: &Manifest, opts: &LoadOptions) -> Vec<BackendKind> {
    if let Some(kind) = opts.backend {
        return vec![kind];
    }
    match (manifest.model.backend, manifest.model.preferred) {
        (BackendChoice::Tract, _) => vec![BackendKind::Tract],
        (BackendChoice::Onnxruntime, _) => vec![BackendKind::Onnxruntime],
        (BackendChoice::Auto, Some(BackendChoice::Onnxruntime)) => vec![BackendKind::Onnxruntime, BackendKind::Tract],
        (BackendChoice::Auto, _) => vec![BackendKind::Tract, BackendKind::Onnxruntime],
    }
}

/// Whether another backend might succeed where this error happened.
fn falls_back(e: &RuntimeError) -> bool {
    matches!(
        e,
        RuntimeError::Model { .. }
            | RuntimeError::Unsupported { .. }
            | RuntimeError::BackendUnavailable { .. }
            | RuntimeError::SelfTest { .. }
            | RuntimeError::Inference { .. }
    )
}

type Trial = (Arc<dyn Engine>, Reservation, Option<SelfTestReport>);

/// Compiles on one backend, reserves its memory and runs the self-test.
fn try_backend(
    kind: BackendKind,
    onnx: &[u8],
    engine_opts: &EngineOptions,
    opts: &LoadOptions,
    budget: &MemoryBudget,
    golden: Option<&outpost_proto::manifest::SelfTest>,
    (atol, rtol): (f64, f64),
) -> Result<Trial, RuntimeError> {
    let engine = backend::load_engine(kind, onnx, engine_opts)?;
    let needed = engine.memory().total(opts.sessions.max(1));
    let reservation = match budget.reserve(&engine_opts.model_name, needed) {
        Ok(r) => r,
        // Specialised plans only speed up repeated shapes: a model that fits without them
        // serves without them rather than not at all.
        Err(full) if engine.drop_shape_plans() => {
            let lean = engine.memory().total(opts.sessions.max(1));
            let r = budget.reserve(&engine_opts.model_name, lean).map_err(|_| full)?;
            tracing::info!(model = %engine_opts.model_name, "no room for shape-specialised plans in the memory budget; every shape runs on the dynamic plan");
            r
        }
        Err(full) => return Err(full),
    };
    let report = match golden {
        Some(test) => Some(selftest::run(&engine_opts.model_name, engine.as_ref(), test, atol, rtol)?),
        None => None,
    };
    Ok((engine, reservation, report))
}

type IndexRanges = std::collections::BTreeMap<String, IndexRange>;

/// Median single-run time of `engine` on generated inputs, or `None` when it cannot run them.
fn median_run(engine: &dyn Engine, input_shapes: &[IoSpec], ranges: &IndexRanges) -> Option<Duration> {
    let inputs = crate::bench::generate_inputs(input_shapes, ranges, 11).ok()?;
    let mut session = engine.session().ok()?;
    let mut times = Vec::with_capacity(25);
    for i in 0..28 {
        let started = Instant::now();
        session.run(inputs.clone()).ok()?;
        if i >= 3 {
            times.push(started.elapsed());
        }
    }
    median(times)
}

fn median(mut times: Vec<Duration>) -> Option<Duration> {
    times.sort();
    times.get(times.len() / 2).copied()
}

/// Median single-run times of `a` and `b`, each on inputs generated for its own graph, run in
/// alternation (3 warm-up runs each, then `runs` each) so that whatever else loads the device
/// weighs on both alike; `None` when either cannot run.
///
/// Request latencies of two versions are taken at different times, under different load; this
/// is the comparison that tells a slower model from a busier device. The runs go through each
/// model's own session pool (no extra session, so no memory beyond the budget, and the
/// intra-op threads it serves with) and count only the run, not the wait for a session; they
/// are not recorded as requests or in the drift windows.
pub fn side_by_side(a: &LoadedModel, b: &LoadedModel, runs: usize) -> Option<(Duration, Duration)> {
    let ia = crate::bench::generate_inputs(&a.inputs, &a.index_ranges, 11).ok()?;
    let ib = crate::bench::generate_inputs(&b.inputs, &b.index_ranges, 11).ok()?;
    let (mut ta, mut tb) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for i in 0..runs + 3 {
        // Alternating which goes first cancels a bias toward whichever runs on a warm cache.
        for first in [i % 2 == 0, i % 2 == 1] {
            let (model, inputs, times) = if first { (a, &ia, &mut ta) } else { (b, &ib, &mut tb) };
            let run = model.timed_run(inputs)?;
            if i >= 3 {
                times.push(run);
            }
        }
    }
    Some((median(ta)?, median(tb)?))
}

impl LoadedModel {
    /// Time one run of `inputs` takes on a session of the pool, waiting (a bounded while) for a
    /// place in a full queue; `None` when it fails or never finds one.
    fn timed_run(&self, inputs: &[Tensor]) -> Option<Duration> {
        for _ in 0..200 {
            match self.pool.run_blocking(inputs.to_vec()) {
                Ok(done) => return done.result.ok().map(|_| done.run),
                Err(RuntimeError::QueueFull { .. }) => std::thread::sleep(Duration::from_millis(10)),
                Err(_) => return None,
            }
        }
        None
    }
}

/// Keeps the engine with the lower median latency on this device, and says what was measured.
fn faster(a: Arc<dyn Engine>, b: Arc<dyn Engine>, ranges: &IndexRanges, model: &str) -> (Arc<dyn Engine>, String) {
    let specs = a.inputs().to_vec();
    let (ta, tb) = (median_run(a.as_ref(), &specs, ranges), median_run(b.as_ref(), &specs, ranges));
    let reason = format!("measured p50: {} {ta:?}, {} {tb:?}", a.kind(), b.kind());
    tracing::info!(%model, %reason, "picked the faster backend");
    match (ta, tb) {
        (Some(ta), Some(tb)) if tb < ta => (b, reason),
        (None, Some(_)) => (b, reason),
        _ => (a, reason),
    }
}
