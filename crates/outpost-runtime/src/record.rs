//! Packing-time trial of a model: which backends serve it, what it outputs, how fast.
//!
//! `model pack` records golden self-test vectors and decides the backend here. Every candidate
//! backend loads the model and runs the same inputs (real samples when the user gives them,
//! otherwise generated ones at sizes the model accepts); onnxruntime's outputs, the reference
//! implementation, become the golden vectors when it is available, and a backend whose outputs
//! differ from them beyond the self-test tolerance is refused. Those left are timed, and the
//! fastest is the one devices try first.

use crate::backend::{self, BackendKind, Engine, EngineOptions, IoSpec};
use crate::error::panic_message;
use crate::indices::IndexRange;
use crate::selftest;
use crate::shapes::{DimRule, InputRules};
use crate::{RuntimeError, Tensor};
use outpost_proto::manifest::{GoldenCase, SelfTest};
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Sizes tried, in order, for a dynamic dimension that is not a batch when inputs are generated:
/// models often refuse the smallest (an STFT needs a frame, a detector a multiple of its stride).
const LADDER: [usize; 12] = [8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16000];
/// Seed base of generated inputs: fixed so two packs of one model record the same vectors.
const SEED: u64 = 1000;

/// What to try.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    /// Backends to try, in order of preference when timings tie.
    pub backends: Vec<BackendKind>,
    /// Engine options (symbols, pinned shapes, onnxruntime library).
    pub engine: EngineOptions,
    /// The manifest's shape rules, for sizes of generated inputs.
    pub rules: InputRules,
    /// Real input cases in graph order; generated when empty.
    pub cases: Vec<Vec<Tensor>>,
    /// Generated cases to make when `cases` is empty.
    pub generated_cases: usize,
    /// Self-test tolerance, also used to compare backends.
    pub atol: f64,
    /// Relative tolerance.
    pub rtol: f64,
    /// Timing budget per backend.
    pub time_budget: Duration,
}

/// How one backend did.
#[derive(Debug, Clone)]
pub struct Trial {
    /// The backend.
    pub backend: BackendKind,
    /// Median run time on the first case, or why the backend cannot serve the model.
    pub outcome: Result<Duration, String>,
}

/// The outcome of [`record`].
#[derive(Debug, Clone)]
pub struct Recording {
    /// Golden vectors.
    pub selftest: SelfTest,
    /// Every backend tried.
    pub trials: Vec<Trial>,
    /// The fastest backend that served the model and matched the reference.
    pub preferred: BackendKind,
}

/// An engine, or why the backend could not load the model.
type Loaded = Result<Arc<dyn Engine>, String>;

/// Loads `onnx` on each backend, records golden vectors and times the backends that agree.
pub fn record(onnx: &[u8], opts: &RecordOptions) -> Result<Recording, RuntimeError> {
    let model = opts.engine.model_name.clone();
    let mut engines: Vec<(BackendKind, Loaded)> = opts
        .backends
        .iter()
        .map(|kind| (*kind, backend::load_engine(*kind, onnx, &opts.engine).map_err(|e| reason(&e))))
        .collect();
    let (cases, synthetic) = if opts.cases.is_empty() {
        let Some(first) = engines.iter().find_map(|(_, e)| e.as_ref().ok()).cloned() else {
            return Err(no_backend(&model, &engines.into_iter().map(|(k, e)| (k, e.err())).collect::<Vec<_>>()));
        };
        let cases = generate_cases(first.as_ref(), &opts.rules, opts.generated_cases.max(1), onnx)?;
        (cases, first.inputs().iter().map(|s| s.name.clone()).collect())
    } else {
        (opts.cases.clone(), Vec::new())
    };
    // Run every case on every backend that loaded; a failure disqualifies the backend.
    let mut outputs: BTreeMap<BackendKind, Vec<Vec<Tensor>>> = BTreeMap::new();
    for (kind, engine) in &mut engines {
        let Ok(e) = engine else { continue };
        match run_cases(e.as_ref(), &cases) {
            Ok(out) => {
                outputs.insert(*kind, out);
            }
            Err(why) => *engine = Err(why),
        }
    }
    let reference = if outputs.contains_key(&BackendKind::Onnxruntime) {
        BackendKind::Onnxruntime
    } else if let Some(kind) = outputs.keys().next() {
        *kind
    } else {
        return Err(no_backend(&model, &engines.into_iter().map(|(k, e)| (k, e.err())).collect::<Vec<_>>()));
    };
    let reference_engine = engines.iter().find(|(k, _)| *k == reference).and_then(|(_, e)| e.as_ref().ok()).cloned();
    let reference_engine = reference_engine.ok_or_else(|| RuntimeError::Model {
        model: model.clone(),
        reason: format!("{reference} ran the inputs but its engine is gone"),
    })?;
    let golden = SelfTest {
        cases: cases
            .iter()
            .zip(&outputs[&reference])
            .map(|(ins, outs)| {
                Ok(GoldenCase {
                    inputs: named(reference_engine.inputs(), ins)?,
                    outputs: named(reference_engine.outputs(), outs)?,
                })
            })
            .collect::<Result<_, RuntimeError>>()?,
        synthetic,
        recorded_with: Some(reference.name().to_string()),
    };
    let mut trials = Vec::new();
    for (kind, engine) in &engines {
        let outcome = match engine {
            Err(why) => Err(why.clone()),
            Ok(e) => selftest::run(&model, e.as_ref(), &golden, opts.atol, opts.rtol)
                .map_err(|err| format!("its outputs differ from {reference}'s: {}", reason(&err)))
                .and_then(|_| median(e.as_ref(), &cases[0], opts.time_budget)),
        };
        trials.push(Trial { backend: *kind, outcome });
    }
    let preferred = trials
        .iter()
        .filter_map(|t| t.outcome.as_ref().ok().map(|d| (t.backend, *d)))
        // Within 3 % the earlier backend (tract, no native library) keeps its place.
        .reduce(|best, next| if next.1.as_secs_f64() < best.1.as_secs_f64() * 0.97 { next } else { best })
        .map(|(k, _)| k)
        .unwrap_or(reference);
    Ok(Recording { selftest: golden, trials, preferred })
}

fn reason(e: &RuntimeError) -> String {
    match e {
        RuntimeError::Model { reason, .. }
        | RuntimeError::Unsupported { reason, .. }
        | RuntimeError::Inference { reason, .. } => reason.clone(),
        RuntimeError::SelfTest { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

fn no_backend(model: &str, tried: &[(BackendKind, Option<String>)]) -> RuntimeError {
    let why: Vec<String> =
        tried.iter().map(|(k, e)| format!("{k}: {}", e.as_deref().unwrap_or("did not run"))).collect();
    RuntimeError::Model { model: model.to_string(), reason: format!("no backend can run it ({})", why.join("; ")) }
}

fn named(specs: &[IoSpec], tensors: &[Tensor]) -> Result<Vec<outpost_proto::manifest::NamedTensor>, RuntimeError> {
    specs.iter().zip(tensors).map(|(s, t)| selftest::to_named(&s.name, t)).collect()
}

/// Runs `inputs` once on a fresh session, turning a backend panic into an error.
fn run_once(engine: &dyn Engine, inputs: &[Tensor]) -> Result<Vec<Tensor>, String> {
    let run = || -> Result<Vec<Tensor>, String> {
        let mut session = engine.session().map_err(|e| reason(&e))?;
        session.run(inputs.to_vec()).map_err(|e| reason(&e))
    };
    catch_unwind(AssertUnwindSafe(run))
        .unwrap_or_else(|p| Err(format!("backend panicked: {}", panic_message(p.as_ref()))))
}

fn run_cases(engine: &dyn Engine, cases: &[Vec<Tensor>]) -> Result<Vec<Vec<Tensor>>, String> {
    cases
        .iter()
        .enumerate()
        .map(|(i, c)| run_once(engine, c).map_err(|e| if cases.len() > 1 { format!("case {i}: {e}") } else { e }))
        .collect()
}

/// Median single-run time of `inputs` within about `budget` (at least 3 runs after one warm-up).
fn median(engine: &dyn Engine, inputs: &[Tensor], budget: Duration) -> Result<Duration, String> {
    let timed = || -> Result<Duration, String> {
        let mut session = engine.session().map_err(|e| reason(&e))?;
        // Two warm-up runs make a dynamic tract model compile a plan for this shape, as a
        // device serving repeated shapes would; time that steady state.
        for _ in 0..2 {
            session.run(inputs.to_vec()).map_err(|e| reason(&e))?;
        }
        if engine.settle(Duration::from_secs(60)) {
            session.run(inputs.to_vec()).map_err(|e| reason(&e))?;
        }
        let started = Instant::now();
        let mut times = Vec::new();
        while times.len() < 3 || (started.elapsed() < budget && times.len() < 200) {
            let batch = inputs.to_vec();
            let t = Instant::now();
            session.run(batch).map_err(|e| reason(&e))?;
            times.push(t.elapsed());
        }
        times.sort();
        Ok(times[times.len() / 2])
    };
    catch_unwind(AssertUnwindSafe(timed))
        .unwrap_or_else(|p| Err(format!("backend panicked: {}", panic_message(p.as_ref()))))
}

/// Generated input cases at sizes the model runs: batch dimensions (a dynamic first axis) at 1
/// then 2, other dynamic dimensions at the smallest size of [`LADDER`] the model accepts, then
/// at the next size it accepts, so the self-test covers two shapes.
fn generate_cases(
    engine: &dyn Engine,
    rules: &InputRules,
    count: usize,
    onnx: &[u8],
) -> Result<Vec<Vec<Tensor>>, RuntimeError> {
    let specs = engine.inputs();
    let ranges = crate::indices::index_ranges(onnx);
    let mut cases = Vec::with_capacity(count);
    let mut next_rung = 0;
    let mut last_error = String::new();
    for case in 0..count {
        let batch = if case == 0 { 1 } else { 2 };
        let mut made = None;
        let mut rung = next_rung;
        while rung < LADDER.len() && made.is_none() {
            let inputs = generated(specs, rules, batch, LADDER[rung], SEED + case as u64, &ranges)?;
            match run_once(engine, &inputs) {
                Ok(_) => made = Some(inputs),
                Err(e) => last_error = e,
            }
            // Without dynamic non-batch dimensions every rung is the same input.
            if !has_dynamic_non_batch(specs, rules) {
                break;
            }
            rung += 1;
        }
        match made {
            Some(inputs) => {
                cases.push(inputs);
                next_rung = rung.min(LADDER.len() - 1);
            }
            None if cases.is_empty() => {
                return Err(RuntimeError::Model {
                    model: "pack".into(),
                    reason: format!(
                        "no generated input runs ({last_error}); give real samples with --inputs DIR \
                         (the format `bench/ort_bench.py --dump-inputs` writes)"
                    ),
                })
            }
            // A second shape the model refuses: the first one still makes a useful test.
            None => break,
        }
    }
    Ok(cases)
}

fn has_dynamic_non_batch(specs: &[IoSpec], rules: &InputRules) -> bool {
    specs.iter().any(|s| dims(s, rules).iter().enumerate().any(|(axis, d)| axis > 0 && d.is_none()))
}

/// The spec's dimensions: fixed (by the graph or the manifest) or dynamic (`None`).
fn dims(spec: &IoSpec, rules: &InputRules) -> Vec<Option<usize>> {
    match rules.input(&spec.name).filter(|d| d.len() == spec.shape.len()) {
        Some(rule) => rule
            .iter()
            .zip(&spec.shape)
            .map(|(r, s)| match r {
                DimRule::Fixed(n) => Some(*n),
                DimRule::Dynamic { .. } => *s,
            })
            .collect(),
        None => spec.shape.clone(),
    }
}

/// One generated case: dynamic first axes at `batch`, other dynamic dimensions at `size` (both
/// clamped into the manifest's range), the same symbol the same size everywhere.
fn generated(
    specs: &[IoSpec],
    rules: &InputRules,
    batch: usize,
    size: usize,
    seed: u64,
    ranges: &BTreeMap<String, IndexRange>,
) -> Result<Vec<Tensor>, RuntimeError> {
    let concrete: Vec<IoSpec> = specs
        .iter()
        .map(|spec| {
            let rule = rules.input(&spec.name).filter(|d| d.len() == spec.shape.len());
            let shape = dims(spec, rules)
                .iter()
                .enumerate()
                .map(|(axis, d)| {
                    let wanted = if axis == 0 { batch } else { size };
                    let clamped = match rule.map(|r| &r[axis]) {
                        Some(DimRule::Dynamic { range, .. }) => {
                            (wanted as i64).clamp(range.min, range.max.unwrap_or(i64::MAX)) as usize
                        }
                        _ => wanted,
                    };
                    Some(d.unwrap_or(clamped))
                })
                .collect();
            IoSpec { shape, ..spec.clone() }
        })
        .collect();
    crate::bench::generate_inputs(&concrete, ranges, seed)
}
