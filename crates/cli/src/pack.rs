//! `outpost model pack`: an ONNX file in, a verified package out.
//!
//! What the graph tells (input/output names, types, shapes with their symbolic dimensions) is
//! filled in; what it cannot tell (task, labels, pipelines) comes from flags or a partial
//! manifest, which overrides the generated one key by key. Symbolic dimensions stay dynamic
//! unless pinned. Every backend available here runs the model on the same inputs (real samples
//! from `--inputs`, or generated ones); onnxruntime's outputs become the golden self-test when
//! it is available, a backend that disagrees is refused, and the fastest that agrees is recorded
//! as the one devices try first (see `outpost_runtime::record`).

use anyhow::{bail, Context, Result};
use clap::Args;
use outpost_proto::manifest::{
    BackendChoice, Dim, DimRange, Manifest, ModelInfo, SelfTestRef, Task, TensorSpec, FORMAT_VERSION,
};
use outpost_proto::DType;
use outpost_runtime::backend::{BackendKind, EngineOptions};
use outpost_runtime::record::{self, RecordOptions};
use outpost_runtime::shapes::{anonymous_symbol, is_unnamed, InputRules};
use outpost_runtime::{bench, inspect, Package, Tensor};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

const SELFTEST_FILE: &str = "selftest.json";
const MODEL_FILE: &str = "model.onnx";
const ATOL: f64 = 1e-4;
const RTOL: f64 = 1e-3;

/// `NAME=1..=512` pairs bounding dynamic dimensions.
fn parse_dim(s: &str) -> Result<(String, DimRange), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("`{s}` is not NAME=MIN..=MAX"))?;
    Ok((k.trim().to_string(), v.parse()?))
}

/// Flags of `outpost model pack`.
#[derive(Debug, Args)]
pub struct PackArgs {
    /// The ONNX model.
    onnx: PathBuf,
    /// Model name (a-z 0-9 . _ -).
    #[arg(long)]
    name: Option<String>,
    /// Model version.
    #[arg(long, default_value = "1")]
    version: String,
    /// classification, detection, anomaly, audio-event or regression.
    #[arg(long, default_value = "regression")]
    task: String,
    /// Partial manifest (TOML) merged over the generated one: [pre], [post], labels, symbols…
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Text file with one class label per line (a scikit-learn classifier's are read from the
    /// model).
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Pin a symbolic dimension, e.g. `--symbol batch=1` (requests must then use that size).
    #[arg(long = "symbol", value_parser = crate::model::parse_symbol)]
    symbols: Vec<(String, i64)>,
    /// Bound a dynamic dimension, e.g. `--dim sequence=1..=512` (unbounded dimensions accept
    /// any size the request size limit allows). Unnamed dimensions are called `INPUT.AXIS`.
    #[arg(long = "dim", value_parser = parse_dim)]
    dims: Vec<(String, DimRange)>,
    /// Pin an input's whole shape in the manifest, e.g. `--input x=1x3x48x192`.
    #[arg(long = "input", value_parser = crate::model::parse_input_shape)]
    input_shapes: Vec<(String, Vec<usize>)>,
    /// Real sample inputs for the self-test: a directory as `bench/ort_bench.py --dump-inputs`
    /// writes it (`inputs.json` and raw files); repeat for more cases.
    #[arg(long = "inputs")]
    inputs: Vec<PathBuf>,
    /// auto (every backend available here is tried; devices try the fastest that matched
    /// onnxruntime first and fall back to the other), tract, onnxruntime, or fastest (record
    /// the measured fastest as the only backend).
    #[arg(long, default_value = "auto")]
    backend: String,
    /// Generated self-test cases to record when no --inputs are given (0: no self-test).
    #[arg(long, default_value_t = 2)]
    selftest_cases: usize,
    /// Path of libonnxruntime.so.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    ort_library: Option<PathBuf>,
    /// Sample requests whose statistics become the package's drift `[reference]`, as
    /// `outpost model reference --samples` takes them (files, directories, `.jsonl`).
    #[arg(long = "reference-samples")]
    reference_samples: Vec<PathBuf>,
    /// Output: `NAME-VERSION.opkg` by default; a path without `.opkg` writes a directory.
    #[arg(long, short)]
    out: Option<PathBuf>,
}

/// Runs `outpost model pack`.
pub fn run(a: PackArgs) -> Result<()> {
    let onnx = std::fs::read(&a.onnx).with_context(|| format!("reading {}", a.onnx.display()))?;
    let mut manifest = generated_manifest(&a, &onnx)?;
    if let Some(base) = &a.manifest {
        manifest =
            merge(&manifest, &std::fs::read_to_string(base).with_context(|| format!("reading {}", base.display()))?)
                .with_context(|| format!("merging {}", base.display()))?;
    }
    warn_pinned(&manifest, &a);
    let mut files = vec![(MODEL_FILE.to_string(), onnx.clone())];
    if let Some(selftest) = record_selftest(&a, &onnx, &mut manifest)? {
        files.push((SELFTEST_FILE.to_string(), selftest));
    }
    let pkg = Package::from_parts(manifest, files)?;
    let (pkg, reference) = if a.reference_samples.is_empty() {
        (pkg, None)
    } else {
        let (pkg, summary) = crate::reference::attach(pkg, &a.reference_samples, a.ort_library.clone())
            .context("computing the drift reference from --reference-samples")?;
        (pkg, Some(summary))
    };
    let m = &pkg.manifest;
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from(format!("{}-{}.opkg", m.model.name, m.model.version)));
    if out.extension().is_some_and(|e| e == "opkg") {
        pkg.write_opkg(&out)?;
    } else {
        pkg.write_dir(&out)?;
    }
    let backend = match (m.model.backend, m.model.preferred) {
        (BackendChoice::Auto, Some(p)) => format!("auto, {} first", choice_name(p)),
        (b, _) => choice_name(b).to_string(),
    };
    println!(
        "{}: {} v{} ({}, backend {backend}, {} bytes)",
        out.display(),
        m.model.name,
        m.model.version,
        m.model.task,
        pkg.size_bytes()
    );
    if let Some(summary) = reference {
        summary.print(&out);
    }
    Ok(())
}

/// Runs every backend asked for on the self-test inputs (real ones from `--inputs`, else
/// generated), sets the manifest's backend choice and self-test entry, and returns the
/// self-test file; `None` when no self-test was asked for.
fn record_selftest(a: &PackArgs, onnx: &[u8], manifest: &mut Manifest) -> Result<Option<Vec<u8>>> {
    let backends = match a.backend.as_str() {
        "auto" | "fastest" => vec![BackendKind::Tract, BackendKind::Onnxruntime],
        one => vec![one.parse::<BackendKind>().map_err(|e| anyhow::anyhow!("--backend: {e} (or auto, fastest)"))?],
    };
    let cases = a.inputs.iter().map(|dir| real_case(dir, manifest)).collect::<Result<Vec<_>>>()?;
    if a.selftest_cases == 0 && cases.is_empty() {
        if a.backend != "auto" {
            manifest.model.backend = match a.backend.as_str() {
                "fastest" => bail!("--backend fastest measures the self-test runs; it needs --selftest-cases > 0"),
                other => choice(backends_first(other)),
            };
        }
        return Ok(None);
    }
    let rules = InputRules::from_manifest(manifest);
    let engine = EngineOptions {
        model_name: manifest.model.name.clone(),
        symbols: manifest.symbols.clone(),
        threads: 1,
        ort_library: a.ort_library.clone(),
        input_shapes: rules.pinned(),
        symbol_bounds: rules.upper_bounds(),
        shape_plans: outpost_runtime::backend::DEFAULT_SHAPE_PLANS,
    };
    let opts = RecordOptions {
        backends,
        engine,
        rules,
        cases,
        generated_cases: a.selftest_cases,
        atol: ATOL,
        rtol: RTOL,
        time_budget: Duration::from_millis(700),
    };
    let rec = record::record(onnx, &opts).map_err(|e| anyhow::anyhow!("{e}{}", hint(&e.to_string(), a)))?;
    for t in &rec.trials {
        match &t.outcome {
            Ok(p50) => eprintln!("  {:<12} p50 {:.3} ms", t.backend.name(), p50.as_secs_f64() * 1e3),
            Err(e) => eprintln!("  {:<12} cannot serve it: {e}", t.backend.name()),
        }
    }
    if !rec.selftest.synthetic.is_empty() {
        eprintln!(
            "  self-test inputs are generated ({}): give real samples with --inputs DIR for a test that means more",
            rec.selftest.synthetic.join(", ")
        );
    }
    manifest.model.backend = match a.backend.as_str() {
        "fastest" => choice(rec.preferred),
        "auto" => BackendChoice::Auto,
        _ => choice(backends_first(&a.backend)),
    };
    manifest.model.preferred = (manifest.model.backend == BackendChoice::Auto).then(|| choice(rec.preferred));
    manifest.selftest = Some(SelfTestRef { file: SELFTEST_FILE.into(), atol: ATOL, rtol: RTOL });
    Ok(Some(serde_json::to_vec(&rec.selftest)?))
}

fn backends_first(name: &str) -> BackendKind {
    name.parse().unwrap_or(BackendKind::Tract)
}

fn choice(kind: BackendKind) -> BackendChoice {
    match kind {
        BackendKind::Tract => BackendChoice::Tract,
        BackendKind::Onnxruntime => BackendChoice::Onnxruntime,
    }
}

fn choice_name(c: BackendChoice) -> &'static str {
    match c {
        BackendChoice::Auto => "auto",
        BackendChoice::Tract => "tract",
        BackendChoice::Onnxruntime => "onnxruntime",
    }
}

/// The manifest the graph and the flags describe, before a partial manifest is merged over it.
fn generated_manifest(a: &PackArgs, onnx: &[u8]) -> Result<Manifest> {
    let symbols: BTreeMap<String, i64> = a.symbols.iter().cloned().collect();
    let report = inspect::inspect(onnx, &symbols).with_context(|| format!("inspecting {}", a.onnx.display()))?;
    let name = match &a.name {
        Some(n) => n.clone(),
        None => a.onnx.file_stem().map(|s| s.to_string_lossy().to_lowercase()).unwrap_or_default(),
    };
    let task: Task = serde_json::from_value(serde_json::Value::String(a.task.clone()))
        .map_err(|_| anyhow::anyhow!("unknown task `{}`", a.task))?;
    let spec = |t: &inspect::TensorInfo, input: bool| -> Result<TensorSpec> {
        let dtype: DType = t.dtype.parse().map_err(|e| {
            anyhow::anyhow!(
                "tensor `{}`: {e}; outpost serves tensors only (re-export without sequence or map types)",
                t.name
            )
        })?;
        let shape = t
            .shape
            .clone()
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(axis, d)| match d {
                // Unnamed input dimensions get a name so they can be pinned or bounded.
                Dim::Symbol(s) if input && is_unnamed(&s) => Dim::Symbol(anonymous_symbol(&t.name, axis)),
                d => d,
            })
            .collect();
        Ok(TensorSpec { name: t.name.clone(), dtype, shape })
    };
    let mut inputs: Vec<TensorSpec> = report.inputs.iter().map(|t| spec(t, true)).collect::<Result<_>>()?;
    for (name, dims) in &a.input_shapes {
        let t =
            inputs.iter_mut().find(|t| &t.name == name).with_context(|| format!("--input {name}: no such input"))?;
        t.shape = dims.iter().map(|d| Dim::Fixed(*d as i64)).collect();
    }
    let mut ranges = BTreeMap::new();
    for t in &inputs {
        for d in &t.shape {
            if let Dim::Symbol(s) = d {
                if !symbols.contains_key(s) {
                    ranges.insert(s.clone(), DimRange::default());
                }
            }
        }
    }
    for (name, range) in &a.dims {
        if !ranges.contains_key(name) {
            let known: Vec<&String> = ranges.keys().collect();
            bail!("--dim {name}: no dynamic dimension has that name (dynamic: {known:?})");
        }
        ranges.insert(name.clone(), *range);
    }
    let labels = match &a.labels {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("reading {}", p.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
        None => outpost_runtime::rewrite::zipmap_labels(onnx).unwrap_or_default(),
    };
    Ok(Manifest {
        format: FORMAT_VERSION,
        model: ModelInfo {
            name,
            version: a.version.clone(),
            task,
            description: format!("packed from {}", a.onnx.file_name().map(|f| f.to_string_lossy()).unwrap_or_default()),
            file: MODEL_FILE.into(),
            backend: BackendChoice::Auto,
            preferred: None,
        },
        inputs,
        outputs: report.outputs.iter().map(|t| spec(t, false)).collect::<Result<_>>()?,
        symbols,
        ranges,
        labels,
        pre: None,
        post: None,
        selftest: None,
        reference: None,
        files: BTreeMap::from([(MODEL_FILE.to_string(), "0".repeat(64))]),
    })
}

/// Says so when a pin fixes a dimension past the first axis (the batch): the package then
/// refuses every other size, which is rarely what a variable-length model wants.
fn warn_pinned(manifest: &Manifest, a: &PackArgs) {
    for (name, _) in &a.symbols {
        let past_batch =
            manifest.inputs.iter().any(|t| t.shape.iter().skip(1).any(|d| *d == Dim::Symbol(name.clone())));
        if past_batch {
            eprintln!(
                "note: --symbol {name}={} pins a non-batch dimension: requests must use exactly that size. \
                 Leave it out to keep `{name}` dynamic, or bound it with --dim {name}=1..=MAX",
                manifest.symbols[name]
            );
        }
    }
}

/// One case of real inputs, in the manifest's input order whatever the dump's order.
pub(crate) fn real_case(dir: &std::path::Path, manifest: &Manifest) -> Result<Vec<Tensor>> {
    let context = || format!("--inputs {}", dir.display());
    let tensors = bench::load_raw_inputs(dir).with_context(context)?;
    let index: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(dir.join("inputs.json")).with_context(context)?).with_context(context)?;
    let names: Vec<String> = index.iter().map(|e| e["name"].as_str().unwrap_or_default().to_string()).collect();
    let wanted: Vec<&str> = manifest.inputs.iter().map(|t| t.name.as_str()).collect();
    let mut by_name: BTreeMap<String, Tensor> = names.into_iter().zip(tensors).collect();
    let case = wanted
        .iter()
        .map(|name| by_name.remove(*name).with_context(|| format!("{}: no tensor for input `{name}`", context())))
        .collect::<Result<Vec<_>>>()?;
    if let Some(extra) = by_name.keys().next() {
        bail!("{}: `{extra}` is not an input of the model (inputs: {})", context(), wanted.join(", "));
    }
    Ok(case)
}

/// What to try next, appended to a failed recording.
fn hint(error: &str, a: &PackArgs) -> String {
    let mut hints = Vec::new();
    if error.contains("onnxruntime") && (error.contains("cannot load ONNX Runtime") || error.contains("unavailable")) {
        hints.push("install libonnxruntime (scripts/fetch-models.sh --ort) and set ORT_DYLIB_PATH".to_string());
    }
    let inputs_help = error.contains("no generated input runs") || error.contains("Gather") || error.contains("index");
    if inputs_help && a.inputs.is_empty() {
        hints.push("give real sample inputs with --inputs DIR".into());
    }
    if hints.is_empty() {
        String::new()
    } else {
        format!("\nhint: {}", hints.join("; "))
    }
}

/// Overlays a partial manifest on the generated one, table by table.
fn merge(generated: &Manifest, partial: &str) -> Result<Manifest> {
    fn overlay(base: &mut toml::Table, top: toml::Table) {
        for (k, v) in top {
            match (base.get_mut(&k), v) {
                (Some(toml::Value::Table(b)), toml::Value::Table(t)) if k != "pre" && k != "post" => overlay(b, t),
                (_, v) => {
                    base.insert(k, v);
                }
            }
        }
    }
    let mut base = toml::Table::try_from(generated)?;
    let top: toml::Table = toml::from_str(partial)?;
    overlay(&mut base, top);
    let mut merged: Manifest = base.try_into()?;
    // A symbol the partial manifest pins is no longer dynamic.
    let pinned: Vec<String> = merged.symbols.keys().cloned().collect();
    for s in pinned {
        merged.ranges.remove(&s);
    }
    Ok(merged)
}
