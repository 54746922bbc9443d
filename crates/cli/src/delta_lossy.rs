//! Lossy releases (`model publish --delta-bits N --base V`, `model delta lossy`): the base
//! version plus the trained change rounded to N bits per weight, measured against the trained
//! model before anyone receives it.
//!
//! The publisher's promise is about behaviour, not bytes: the rounded model must agree with the
//! trained one on the evaluation inputs (the package's self-test inputs and any `--eval`
//! samples) within a tolerance, and keep its accuracy where labels exist; beyond that the
//! release is refused. The new package's self-test is recorded from the rounded model, so the
//! device checks what it really runs.

use anyhow::{bail, Context, Result};
use clap::Args;
use outpost_delta::quant::{quantize, Granularity, Hints, QuantStats, Rounded, HINTS_FILE, HINTS_FORMAT};
use outpost_proto::manifest::SelfTest;
use outpost_runtime::model::MemoryBudget;
use outpost_runtime::{LoadOptions, LoadedModel, Package, Tensor};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// How much a lossy release may differ from the trained model.
#[derive(Debug, Clone, Args)]
pub struct Tolerance {
    /// Evaluation samples: a directory with `inputs.json` (the `--inputs` format of `pack`),
    /// or one whose sub-directories each hold one; a `labels.json` beside `inputs.json` (a
    /// list of class ids, one per batch row) adds accuracy. Repeatable.
    #[arg(long = "eval")]
    pub eval: Vec<PathBuf>,
    /// Most rows (in percent) whose top class may differ from the trained model's. Flips
    /// happen on near-ties, so this is looser than the accuracy bar, which is what users see.
    #[arg(long, default_value_t = 1.0)]
    pub max_disagreement: f64,
    /// Most accuracy (percentage points) the rounding may cost where labels exist.
    #[arg(long, default_value_t = 0.5)]
    pub max_accuracy_drop: f64,
    /// Largest relative L2 error of the outputs, for outputs without classes.
    #[arg(long, default_value_t = 0.01)]
    pub max_rel_error: f64,
    /// Weights sharing one scale: `tensor` (smaller deltas), `channel` (finer steps), or
    /// `auto`: per tensor, per channel when that is refused.
    #[arg(long, value_enum, default_value = "auto")]
    pub delta_scale: ScaleArg,
    /// Path of libonnxruntime.so (for models served by onnxruntime).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_library: Option<PathBuf>,
}

/// `--delta-scale`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ScaleArg {
    /// Per tensor, per channel when that is refused.
    Auto,
    /// One scale per tensor.
    Tensor,
    /// One scale per output channel.
    Channel,
}

/// What the measurement found.
#[derive(Debug, Clone, Serialize)]
pub struct LossyReport {
    /// Bits per weight change.
    pub bits: u8,
    /// Weights per scale.
    pub scale: Granularity,
    /// Float tensors rounded.
    pub tensors: usize,
    /// Weights rounded.
    pub weights: u64,
    /// Float tensors left as trained.
    pub kept: usize,
    /// Largest |rounded - trained| weight.
    pub max_weight_error: f64,
    /// Evaluation cases run.
    pub cases: usize,
    /// Rows compared by top class.
    pub rows: usize,
    /// Percent of rows whose top class differs.
    pub disagreement_pct: f64,
    /// Largest relative L2 error of any output.
    pub rel_error: f64,
    /// Accuracy in percent (trained, rounded) over labelled rows.
    pub accuracy: Option<(f64, f64)>,
    /// Why the release is refused, if it is.
    pub refused: Option<String>,
}

struct EvalCase {
    inputs: Vec<Tensor>,
    labels: Option<Vec<i64>>,
}

fn eval_cases(dirs: &[PathBuf], trained: &Package, golden: Option<&SelfTest>) -> Result<Vec<EvalCase>> {
    let mut out = Vec::new();
    for dir in dirs {
        let mut case_dirs = if dir.join("inputs.json").exists() {
            vec![dir.clone()]
        } else {
            let mut subs: Vec<PathBuf> = std::fs::read_dir(dir)
                .with_context(|| format!("--eval {}", dir.display()))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.join("inputs.json").exists())
                .collect();
            subs.sort();
            subs
        };
        if case_dirs.is_empty() {
            bail!("--eval {}: no inputs.json in it or in its sub-directories", dir.display());
        }
        for case in case_dirs.drain(..) {
            let inputs = crate::pack::real_case(&case, &trained.manifest)?;
            let labels = match std::fs::read(case.join("labels.json")) {
                Ok(b) => Some(serde_json::from_slice(&b).with_context(|| format!("{}/labels.json", case.display()))?),
                Err(_) => None,
            };
            out.push(EvalCase { inputs, labels });
        }
    }
    for case in golden.map(|g| g.cases.as_slice()).unwrap_or_default() {
        let wanted = &trained.manifest.inputs;
        let inputs = wanted
            .iter()
            .map(|spec| {
                let t = case.inputs.iter().find(|t| t.name == spec.name).context("a self-test case lacks an input")?;
                Ok(outpost_runtime::selftest::to_tensor(t)?)
            })
            .collect::<Result<Vec<_>>>()?;
        out.push(EvalCase { inputs, labels: None });
    }
    Ok(out)
}

fn floats(t: &Tensor) -> Option<Vec<f32>> {
    if !t.datum_type().is_float() {
        return None;
    }
    let t = t.cast_to::<f32>().ok()?;
    outpost_runtime::tensor::values::<f32>(&t).ok().map(<[f32]>::to_vec)
}

/// Index of the largest value in each row of `shape`'s last axis (rows = all other axes).
fn argmax_rows(values: &[f32], shape: &[usize]) -> Vec<usize> {
    let width = shape.last().copied().unwrap_or(1).max(1);
    values
        .chunks(width)
        .map(|row| row.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0)
        .collect()
}

fn load(pkg: &Package, ort: &Option<PathBuf>) -> Result<LoadedModel> {
    let opts = LoadOptions { run_selftest: false, ort_library: ort.clone(), ..LoadOptions::default() };
    LoadedModel::load(pkg, &opts, &MemoryBudget::new(u64::MAX)).map_err(Into::into)
}

fn run(model: &LoadedModel, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
    Ok(model.infer_blocking(inputs.to_vec())?.result?)
}

/// Makes the lossy release of `trained` against the package `base` (its file): the rounded
/// package (hints, re-recorded self-test) and what the measurement found. Under `auto`, one
/// scale per tensor first (the smaller delta), per channel when that is refused. The package
/// is returned even when refused, so a caller can show the numbers.
pub fn make(
    base: &Path,
    base_version: &str,
    trained: &Package,
    bits: u8,
    tol: &Tolerance,
) -> Result<(Package, LossyReport)> {
    let tries: &[Granularity] = match tol.delta_scale {
        ScaleArg::Auto => &[Granularity::Tensor, Granularity::Channel],
        ScaleArg::Tensor => &[Granularity::Tensor],
        ScaleArg::Channel => &[Granularity::Channel],
    };
    let mut made = None;
    for &g in tries {
        let (pkg, report) = make_with(base, base_version, trained, bits, g, tol)?;
        let done = report.refused.is_none();
        made = Some((pkg, report));
        if done {
            break;
        }
    }
    made.context("no granularity to try")
}

fn make_with(
    base: &Path,
    base_version: &str,
    trained: &Package,
    bits: u8,
    granularity: Granularity,
    tol: &Tolerance,
) -> Result<(Package, LossyReport)> {
    let base_pkg = Package::open(base).with_context(|| format!("the base package {}", base.display()))?;
    let base_sha = outpost_runtime::package::sha256_hex(&std::fs::read(base)?);
    if base_pkg.manifest.model.name != trained.manifest.model.name {
        bail!("the base is {}, the new package {}", base_pkg.manifest.model.name, trained.manifest.model.name);
    }
    let Rounded { onnx, scales: tensors, stats } =
        quantize(base_pkg.model_bytes(), trained.model_bytes(), bits, granularity)?;
    if stats.tensors == 0 {
        bail!("no float tensor of the new model has a same-sized counterpart in the base: nothing to round");
    }
    let hints = Hints { format: HINTS_FORMAT, base_sha256: base_sha, base_version: base_version.into(), bits, tensors };
    let model_file = trained.manifest.model.file.clone();
    let golden = trained.selftest()?;
    let selftest_file = trained.manifest.selftest.as_ref().map(|s| s.file.clone());
    let files = |onnx: &[u8], selftest: Option<&SelfTest>| -> Result<Vec<(String, Vec<u8>)>> {
        let mut files: Vec<(String, Vec<u8>)> = trained
            .manifest
            .files
            .keys()
            .filter(|n| **n != model_file && Some(*n) != selftest_file.as_ref() && n.as_str() != HINTS_FILE)
            .map(|n| (n.clone(), trained.file(n).unwrap_or_default().to_vec()))
            .collect();
        files.push((model_file.clone(), onnx.to_vec()));
        files.push((HINTS_FILE.to_string(), serde_json::to_vec_pretty(&hints)?));
        if let (Some(name), Some(st)) = (&selftest_file, selftest) {
            files.push((name.clone(), serde_json::to_vec(st)?));
        }
        Ok(files)
    };
    let draft = Package::from_parts(trained.manifest.clone(), files(&onnx, golden.as_ref())?)?;
    let (trained_model, rounded) = (load(trained, &tol.ort_library)?, load(&draft, &tol.ort_library)?);

    let cases = eval_cases(&tol.eval, trained, golden.as_ref())?;
    let mut report = report_of(bits, granularity, &stats, cases.len());
    let (mut differ, mut labelled, mut right) = (0usize, 0usize, (0usize, 0usize));
    for case in &cases {
        let (a, b) = (run(&trained_model, &case.inputs)?, run(&rounded, &case.inputs)?);
        for (i, (ta, tb)) in a.iter().zip(&b).enumerate() {
            let (Some(va), Some(vb)) = (floats(ta), floats(tb)) else { continue };
            let norm = va.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
            let diff = va.iter().zip(&vb).map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2)).sum::<f64>().sqrt();
            report.rel_error = report.rel_error.max(if norm > 0.0 { diff / norm } else { diff });
            // The first output with classes decides agreement and accuracy.
            let shape = ta.shape();
            if i > 0 || shape.len() < 2 || shape.last().copied().unwrap_or(0) < 2 {
                continue;
            }
            let (ka, kb) = (argmax_rows(&va, shape), argmax_rows(&vb, shape));
            report.rows += ka.len();
            differ += ka.iter().zip(&kb).filter(|(x, y)| x != y).count();
            if let Some(labels) = case.labels.as_ref().filter(|l| l.len() == ka.len()) {
                labelled += labels.len();
                right.0 += ka.iter().zip(labels).filter(|(k, l)| **k as i64 == **l).count();
                right.1 += kb.iter().zip(labels).filter(|(k, l)| **k as i64 == **l).count();
            }
        }
    }
    if report.rows > 0 {
        report.disagreement_pct = 100.0 * differ as f64 / report.rows as f64;
    }
    if labelled > 0 {
        let pct = |n: usize| 100.0 * n as f64 / labelled as f64;
        report.accuracy = Some((pct(right.0), pct(right.1)));
    }
    report.refused = refusal(&report, tol);

    // The device's self-test checks the rounded model, so record its outputs.
    let selftest = match golden {
        Some(mut st) => {
            for case in &mut st.cases {
                let inputs: Vec<Tensor> = trained
                    .manifest
                    .inputs
                    .iter()
                    .map(|spec| {
                        let t = case
                            .inputs
                            .iter()
                            .find(|t| t.name == spec.name)
                            .context("a self-test case lacks an input")?;
                        Ok(outpost_runtime::selftest::to_tensor(t)?)
                    })
                    .collect::<Result<_>>()?;
                let outputs = run(&rounded, &inputs)?;
                case.outputs = record_outputs(&rounded, &outputs, &case.outputs)?;
            }
            Some(st)
        }
        None => None,
    };
    Ok((Package::from_parts(trained.manifest.clone(), files(&onnx, selftest.as_ref())?)?, report))
}

/// The outputs a self-test case compares (the same names as before), from `outputs`.
fn record_outputs(
    model: &LoadedModel,
    outputs: &[Tensor],
    before: &[outpost_proto::manifest::NamedTensor],
) -> Result<Vec<outpost_proto::manifest::NamedTensor>> {
    before
        .iter()
        .map(|old| {
            let ix = model.outputs().iter().position(|o| o.name == old.name).context("a self-test output is gone")?;
            Ok(outpost_runtime::selftest::to_named(&old.name, &outputs[ix])?)
        })
        .collect()
}

fn report_of(bits: u8, scale: Granularity, s: &QuantStats, cases: usize) -> LossyReport {
    LossyReport {
        bits,
        scale,
        tensors: s.tensors,
        weights: s.weights,
        kept: s.kept,
        max_weight_error: s.max_abs_error,
        cases,
        rows: 0,
        disagreement_pct: 0.0,
        rel_error: 0.0,
        accuracy: None,
        refused: None,
    }
}

fn refusal(r: &LossyReport, tol: &Tolerance) -> Option<String> {
    if r.cases == 0 {
        return Some("no evaluation inputs: the package has no self-test and no --eval was given".into());
    }
    if r.rows > 0 && r.disagreement_pct > tol.max_disagreement {
        return Some(format!(
            "the top class differs from the trained model's on {:.2} % of {} rows (at most {} %)",
            r.disagreement_pct, r.rows, tol.max_disagreement
        ));
    }
    if let Some((a, b)) = r.accuracy.filter(|(a, b)| a - b > tol.max_accuracy_drop) {
        return Some(format!(
            "accuracy {b:.2} % against the trained {a:.2} % (at most {} points less)",
            tol.max_accuracy_drop
        ));
    }
    if r.rows == 0 && r.rel_error > tol.max_rel_error {
        return Some(format!("outputs differ by {:.4} relative L2 (at most {})", r.rel_error, tol.max_rel_error));
    }
    None
}
