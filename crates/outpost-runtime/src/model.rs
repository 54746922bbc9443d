//! A model in service: verified package + compiled engine + session pool + pipelines, inside a
//! memory budget.

use crate::backend::{self, BackendKind, Engine, EngineOptions, IoSpec};
use crate::indices::IndexRange;
use crate::pipeline::{self, PipelineError};
use crate::pool::{Completed, Reply, SessionPool};
use crate::selftest::{self, SelfTestReport};
use crate::{Package, RuntimeError, Tensor};
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
    /// Run the golden self-test before serving.
    pub run_selftest: bool,
    /// Under the manifest's `auto`, load both backends, time a few runs of each, and keep the
    /// faster. Off by default: it costs load time and maps the ONNX Runtime library.
    pub measure_backends: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            backend: None,
            sessions: 1,
            queue_capacity: 64,
            threads: 1,
            ort_library: None,
            run_selftest: true,
            measure_backends: false,
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
    _reservation: Reservation,
}

impl LoadedModel {
    /// Compiles, budgets, self-tests and starts the sessions of a verified package.
    pub fn load(pkg: &Package, opts: &LoadOptions, budget: &MemoryBudget) -> Result<LoadedModel, RuntimeError> {
        let started = Instant::now();
        let manifest = pkg.manifest.clone();
        let name = manifest.model.name.clone();
        let engine_opts = EngineOptions {
            model_name: format!("{}@{}", name, manifest.model.version),
            symbols: manifest.symbols.clone(),
            threads: opts.threads,
            ort_library: opts.ort_library.clone(),
            input_shapes: pinned_input_shapes(&manifest),
        };
        let (engine, fallback_reason) = compile(pkg.model_bytes(), &manifest, opts, &engine_opts)?;
        let needed = engine.memory().total(opts.sessions.max(1));
        let reservation = budget.reserve(&engine_opts.model_name, needed)?;
        let selftest = match pkg.selftest()? {
            Some(test) if opts.run_selftest => {
                let st = manifest.selftest.as_ref().map(|s| (s.atol, s.rtol)).unwrap_or((1e-4, 1e-3));
                Some(selftest::run(&engine_opts.model_name, engine.as_ref(), &test, st.0, st.1)?)
            }
            _ => None,
        };
        let post = match &manifest.post {
            Some(p) => Some(p.clone()),
            None => pipeline::default_post(&manifest).ok(),
        };
        let pool = SessionPool::new(&engine_opts.model_name, engine.clone(), opts.sessions, opts.queue_capacity)?;
        Ok(LoadedModel {
            model_sha256: manifest.files.get(&manifest.model.file).cloned().unwrap_or_default(),
            manifest,
            engine,
            selftest,
            load_time: started.elapsed(),
            fallback_reason,
            pool,
            post,
            _reservation: reservation,
        })
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
        backend::check_inputs(self.engine.inputs(), &inputs)?;
        self.pool.submit(inputs, reply)
    }

    /// Runs one inference and waits for it.
    pub fn infer_blocking(&self, inputs: Vec<Tensor>) -> Result<Completed, RuntimeError> {
        backend::check_inputs(self.engine.inputs(), &inputs)?;
        self.pool.run_blocking(inputs)
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

/// Input shapes the manifest fixes completely (every dimension a number or a pinned symbol).
pub fn pinned_input_shapes(manifest: &Manifest) -> std::collections::BTreeMap<String, Vec<usize>> {
    use outpost_proto::manifest::Dim;
    manifest
        .inputs
        .iter()
        .filter_map(|t| {
            let dims: Option<Vec<usize>> = t
                .shape
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => usize::try_from(*n).ok(),
                    Dim::Symbol(s) => manifest.symbols.get(s).and_then(|v| usize::try_from(*v).ok()),
                })
                .collect();
            dims.map(|d| (t.name.clone(), d))
        })
        .collect()
}

/// Compiles on the chosen backend; under `auto`, falls back to the other backend when the first
/// cannot load the model, and says why.
fn compile(
    onnx: &[u8],
    manifest: &Manifest,
    opts: &LoadOptions,
    engine_opts: &EngineOptions,
) -> Result<(Arc<dyn Engine>, Option<String>), RuntimeError> {
    let preferred = opts.backend.or(match manifest.model.backend {
        BackendChoice::Tract => Some(BackendKind::Tract),
        BackendChoice::Onnxruntime => Some(BackendKind::Onnxruntime),
        BackendChoice::Auto => None,
    });
    if let Some(kind) = preferred {
        return backend::load_engine(kind, onnx, engine_opts).map(|e| (e, None));
    }
    match backend::load_engine(BackendKind::Tract, onnx, engine_opts) {
        Ok(tract) if opts.measure_backends => match backend::load_engine(BackendKind::Onnxruntime, onnx, engine_opts) {
            Ok(ort) => Ok(faster(tract, ort, &crate::indices::index_ranges(onnx), &engine_opts.model_name)),
            Err(e) => Ok((tract, Some(format!("measured: onnxruntime unavailable ({e})")))),
        },
        Ok(e) => Ok((e, None)),
        Err(tract_err @ RuntimeError::Model { .. }) => {
            match backend::load_engine(BackendKind::Onnxruntime, onnx, engine_opts) {
                Ok(e) => {
                    tracing::warn!(model = %engine_opts.model_name, error = %tract_err, "tract cannot load the model; using onnxruntime");
                    Ok((e, Some(tract_err.to_string())))
                }
                Err(_) => Err(tract_err),
            }
        }
        Err(other) => Err(other),
    }
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
    times.sort();
    times.get(times.len() / 2).copied()
}

/// Keeps the engine with the lower median latency on this device.
fn faster(
    tract: Arc<dyn Engine>,
    ort: Arc<dyn Engine>,
    ranges: &IndexRanges,
    model: &str,
) -> (Arc<dyn Engine>, Option<String>) {
    let specs = tract.inputs().to_vec();
    let (t, o) = (median_run(tract.as_ref(), &specs, ranges), median_run(ort.as_ref(), &specs, ranges));
    let reason = format!("measured p50: tract {t:?}, onnxruntime {o:?}");
    tracing::info!(%model, %reason, "picked the faster backend");
    match (t, o) {
        (Some(t), Some(o)) if o < t => (ort, Some(reason)),
        (None, Some(_)) => (ort, Some(reason)),
        _ => (tract, Some(reason)),
    }
}
