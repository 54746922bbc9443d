//! `outpost model pack`: an ONNX file in, a verified package out.
//!
//! What the graph tells (input/output names, types, shapes with their symbolic dimensions) is
//! filled in; what it cannot tell (task, labels, pipelines) comes from flags or a partial
//! manifest, which overrides the generated one key by key. Golden self-test vectors are made by
//! running the model on seeded inputs, so a device can later prove its copy still computes the
//! same thing. With `--backend fastest` both backends are measured and the faster is recorded.

use anyhow::{bail, Context, Result};
use clap::Args;
use outpost_proto::manifest::{
    BackendChoice, Dim, GoldenCase, Manifest, ModelInfo, SelfTest, SelfTestRef, Task, TensorSpec, FORMAT_VERSION,
};
use outpost_proto::DType;
use outpost_runtime::backend::{self, BackendKind, EngineOptions};
use outpost_runtime::bench::{self, BenchConfig};
use outpost_runtime::{inspect, selftest, Package};
use std::collections::BTreeMap;
use std::path::PathBuf;

const SELFTEST_FILE: &str = "selftest.json";
const MODEL_FILE: &str = "model.onnx";

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
    /// Text file with one class label per line.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Pin a symbolic dimension, e.g. `--symbol batch=1`.
    #[arg(long = "symbol", value_parser = crate::model::parse_symbol)]
    symbols: Vec<(String, i64)>,
    /// Pin an input's whole shape in the manifest, e.g. `--input x=1x3x48x192`.
    #[arg(long = "input", value_parser = crate::model::parse_input_shape)]
    input_shapes: Vec<(String, Vec<usize>)>,
    /// auto (tract, falling back to onnxruntime), tract, onnxruntime, or fastest (measure both).
    #[arg(long, default_value = "auto")]
    backend: String,
    /// Golden self-test cases to record.
    #[arg(long, default_value_t = 2)]
    selftest_cases: usize,
    /// Path of libonnxruntime.so (for --backend fastest/onnxruntime).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    ort_library: Option<PathBuf>,
    /// Output: `NAME-VERSION.opkg` by default; a path without `.opkg` writes a directory.
    #[arg(long, short)]
    out: Option<PathBuf>,
}

/// Runs `outpost model pack`.
pub fn run(a: PackArgs) -> Result<()> {
    let onnx = std::fs::read(&a.onnx).with_context(|| format!("reading {}", a.onnx.display()))?;
    let symbols: BTreeMap<String, i64> = a.symbols.iter().cloned().collect();
    let report = inspect::inspect(&onnx, &symbols).with_context(|| format!("inspecting {}", a.onnx.display()))?;
    if !report.unsupported_ops.is_empty() {
        let lacks = inspect::unsupported::summary(&report.unsupported_ops);
        eprintln!("note: tract lacks {lacks}; the package will need the onnxruntime backend");
    }
    let name = match &a.name {
        Some(n) => n.clone(),
        None => a.onnx.file_stem().map(|s| s.to_string_lossy().to_lowercase()).unwrap_or_default(),
    };
    let task: Task = serde_json::from_value(serde_json::Value::String(a.task.clone()))
        .map_err(|_| anyhow::anyhow!("unknown task `{}`", a.task))?;
    let spec = |t: &inspect::TensorInfo| -> Result<TensorSpec> {
        let dtype: DType = t.dtype.parse().map_err(|e| anyhow::anyhow!("tensor `{}`: {e}", t.name))?;
        let shape = t.shape.clone().unwrap_or_default();
        Ok(TensorSpec { name: t.name.clone(), dtype, shape })
    };
    let mut manifest = Manifest {
        format: FORMAT_VERSION,
        model: ModelInfo {
            name,
            version: a.version.clone(),
            task,
            description: format!("packed from {}", a.onnx.file_name().map(|f| f.to_string_lossy()).unwrap_or_default()),
            file: MODEL_FILE.into(),
            backend: BackendChoice::Auto,
        },
        inputs: report.inputs.iter().map(spec).collect::<Result<_>>()?,
        outputs: report.outputs.iter().map(spec).collect::<Result<_>>()?,
        symbols: default_symbols(&report.inputs, &symbols),
        labels: match &a.labels {
            Some(p) => std::fs::read_to_string(p)
                .with_context(|| format!("reading {}", p.display()))?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect(),
            None => vec![],
        },
        pre: None,
        post: None,
        selftest: None,
        reference: None,
        files: BTreeMap::from([(MODEL_FILE.to_string(), "0".repeat(64))]),
    };
    for (name, dims) in &a.input_shapes {
        let t = manifest
            .inputs
            .iter_mut()
            .find(|t| &t.name == name)
            .with_context(|| format!("--input {name}: no such input"))?;
        t.shape = dims.iter().map(|d| Dim::Fixed(*d as i64)).collect();
    }
    if let Some(base) = &a.manifest {
        manifest =
            merge(&manifest, &std::fs::read_to_string(base).with_context(|| format!("reading {}", base.display()))?)
                .with_context(|| format!("merging {}", base.display()))?;
    }
    manifest.model.backend = choose_backend(&a, &onnx, &manifest)?;

    let mut files = vec![(MODEL_FILE.to_string(), onnx.clone())];
    if a.selftest_cases > 0 {
        let kind = match manifest.model.backend {
            BackendChoice::Onnxruntime => BackendKind::Onnxruntime,
            _ => BackendKind::Tract,
        };
        let shapes = outpost_runtime::model::pinned_input_shapes(&manifest);
        let golden = make_selftest(&onnx, &manifest.symbols, &shapes, kind, a.selftest_cases, a.ort_library.clone())?;
        files.push((SELFTEST_FILE.to_string(), serde_json::to_vec(&golden)?));
        manifest.selftest = Some(SelfTestRef { file: SELFTEST_FILE.into(), atol: 1e-4, rtol: 1e-3 });
    }
    let pkg = Package::from_parts(manifest, files)?;
    let m = &pkg.manifest;
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from(format!("{}-{}.opkg", m.model.name, m.model.version)));
    if out.extension().is_some_and(|e| e == "opkg") {
        pkg.write_opkg(&out)?;
    } else {
        pkg.write_dir(&out)?;
    }
    println!(
        "{}: {} v{} ({}, backend {:?}, {} bytes)",
        out.display(),
        m.model.name,
        m.model.version,
        m.model.task,
        m.model.backend,
        pkg.size_bytes()
    );
    Ok(())
}

/// Symbols the flags pin, plus `1` for every other symbolic input dimension: a device serves one
/// request at a time, and tract optimises best with concrete shapes.
fn default_symbols(inputs: &[inspect::TensorInfo], given: &BTreeMap<String, i64>) -> BTreeMap<String, i64> {
    let mut out = given.clone();
    for t in inputs {
        for d in t.shape.iter().flatten() {
            if let Dim::Symbol(s) = d {
                out.entry(s.clone()).or_insert(1);
            }
        }
    }
    out
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
    Ok(base.try_into()?)
}

fn choose_backend(a: &PackArgs, onnx: &[u8], manifest: &Manifest) -> Result<BackendChoice> {
    Ok(match a.backend.as_str() {
        "auto" => BackendChoice::Auto,
        "tract" => BackendChoice::Tract,
        "onnxruntime" | "ort" => BackendChoice::Onnxruntime,
        "fastest" => {
            let cfg = BenchConfig {
                threads: vec![1],
                warmup: 5,
                iterations: 50,
                duration_limit: Some(std::time::Duration::from_secs(10)),
                symbols: manifest.symbols.clone(),
                input_shapes: outpost_runtime::model::pinned_input_shapes(manifest),
                ort_library: a.ort_library.clone(),
                ..BenchConfig::default()
            };
            let results = bench::bench(onnx, &cfg);
            for r in &results {
                match (&r.latency, &r.error) {
                    (Some(l), _) => eprintln!("  {:<12} p50 {:.3} ms", r.backend.name(), l.p50_ms),
                    (_, Some(e)) => eprintln!("  {:<12} unavailable: {e}", r.backend.name()),
                    _ => {}
                }
            }
            match bench::recommend(&results) {
                Some(BackendKind::Tract) => BackendChoice::Tract,
                Some(BackendKind::Onnxruntime) => BackendChoice::Onnxruntime,
                None => bail!("neither backend can run {}", a.onnx.display()),
            }
        }
        other => bail!("unknown backend `{other}` (auto, tract, onnxruntime, fastest)"),
    })
}

fn make_selftest(
    onnx: &[u8],
    symbols: &BTreeMap<String, i64>,
    input_shapes: &BTreeMap<String, Vec<usize>>,
    kind: BackendKind,
    cases: usize,
    ort_library: Option<PathBuf>,
) -> Result<SelfTest> {
    let opts = EngineOptions {
        model_name: "pack".into(),
        symbols: symbols.clone(),
        threads: 1,
        ort_library,
        input_shapes: input_shapes.clone(),
    };
    let engine = backend::load_engine(kind, onnx, &opts).context("loading the model to record self-test vectors")?;
    let mut session = engine.session()?;
    let mut out = Vec::new();
    let ranges = outpost_runtime::indices::index_ranges(onnx);
    for seed in 0..cases as u64 {
        let inputs = bench::generate_inputs(engine.inputs(), &ranges, 1000 + seed)?;
        let outputs = session.run(inputs.clone())?;
        let named = |specs: &[backend::IoSpec], ts: &[outpost_runtime::Tensor]| -> Result<Vec<_>> {
            specs.iter().zip(ts).map(|(s, t)| Ok(selftest::to_named(&s.name, t)?)).collect()
        };
        out.push(GoldenCase { inputs: named(engine.inputs(), &inputs)?, outputs: named(engine.outputs(), &outputs)? });
    }
    Ok(SelfTest { cases: out })
}
