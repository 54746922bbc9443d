//! `outpost model …`: inspect, benchmark and package ONNX models.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use outpost_runtime::backend::BackendKind;
use outpost_runtime::bench::{self, BenchConfig, BenchResult};
use outpost_runtime::{inspect, Package};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::pack;

/// Model subcommands.
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Inputs/outputs, op histogram, parameters, estimated FLOPs, opset, unsupported ops.
    Inspect(InspectArgs),
    /// Latency percentiles, throughput and memory on each backend and thread count.
    Bench(BenchArgs),
    /// Bytes result export sends per 1000 inferences of an image, an audio and a sensor model,
    /// against their raw inputs (`bench/bandwidth.sh`).
    #[command(hide = true)]
    BenchExport(BenchExportArgs),
    /// Build a model package (`.opkg` or directory) from an ONNX file.
    Pack(pack::PackArgs),
    /// Compute a package's drift reference statistics from sample requests.
    Reference(crate::reference::ReferenceArgs),
    /// Train the demo vibration anomaly model and write its package.
    TrainDemo(TrainDemoArgs),
    /// Upload a package to the server's registry (name, version and task from its manifest).
    Publish(crate::fleet::models::PublishArgs),
    /// List the versions in the server's registry.
    List(crate::fleet::models::ListArgs),
    /// One model's versions on the server, with how many devices serve each.
    Show(crate::fleet::models::ShowArgs),
    /// Delta downloads on local files: make, apply, index.
    #[command(subcommand)]
    Delta(crate::delta::DeltaCommand),
}

/// `KEY=VALUE` pairs pinning symbolic dimensions.
pub fn parse_symbol(s: &str) -> Result<(String, i64), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("`{s}` is not NAME=VALUE"))?;
    let v = v.trim().parse::<i64>().map_err(|e| format!("`{s}`: {e}"))?;
    if v < 1 {
        return Err(format!("`{s}`: a dimension must be at least 1"));
    }
    Ok((k.trim().to_string(), v))
}

/// `NAME=1x3x48x192` pairs pinning whole input shapes.
pub fn parse_input_shape(s: &str) -> Result<(String, Vec<usize>), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("`{s}` is not NAME=DxDxD"))?;
    let dims = v
        .split('x')
        .map(|d| d.trim().parse::<usize>().map_err(|e| format!("`{s}`: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((k.trim().to_string(), dims))
}

/// Flags of `outpost model inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// ONNX file or model package.
    file: PathBuf,
    /// Pin a symbolic dimension for FLOP estimates, e.g. `--symbol batch=1`.
    #[arg(long = "symbol", value_parser = parse_symbol)]
    symbols: Vec<(String, i64)>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Flags of `outpost model bench-export`.
#[derive(Debug, Args)]
pub struct BenchExportArgs {
    /// Inferences per model.
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// MQTT broker (host:port) for the MQTT sink, when it answers.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: String,
    /// Publish zstd-compressed batches over MQTT instead of a message per record.
    #[arg(long)]
    zstd_batches: bool,
    /// Instead: queue this many results with the broker away, then time the catch-up.
    #[arg(long)]
    catch_up: Option<u64>,
}

/// Flags of `outpost model bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// ONNX file or model package.
    file: PathBuf,
    /// Backends to measure: tract, onnxruntime, or both.
    #[arg(long, default_value = "both")]
    backend: String,
    /// Intra-op thread counts to measure, e.g. `1,2,4`.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Timed runs per configuration.
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    /// Untimed runs first.
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// Stop a configuration after this many seconds even if iterations remain.
    #[arg(long, default_value_t = 20.0)]
    max_seconds: f64,
    /// Pin a symbolic dimension, e.g. `--symbol batch=1`.
    #[arg(long = "symbol", value_parser = parse_symbol)]
    symbols: Vec<(String, i64)>,
    /// Pin an input's whole shape, e.g. `--input x=1x3x48x192` (for unnamed `?` dimensions).
    #[arg(long = "input", value_parser = parse_input_shape)]
    input_shapes: Vec<(String, Vec<usize>)>,
    /// Directory of raw inputs (from bench/ort_bench.py --dump-inputs) instead of generated ones.
    #[arg(long)]
    inputs: Option<PathBuf>,
    /// With --inputs: keep the model's dynamic dimensions dynamic (as a package packed without
    /// pins serves them) instead of pinning them to the dump's shapes.
    #[arg(long)]
    dynamic: bool,
    /// tract, dynamic dimensions: plans specialised to a repeated request shape to keep (the
    /// agent's `shape_plans`); 0 times the dynamic plan itself.
    #[arg(long, default_value_t = outpost_runtime::backend::DEFAULT_SHAPE_PLANS)]
    shape_plans: usize,
    /// Path of libonnxruntime.so.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    ort_library: Option<PathBuf>,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
    /// Measure the local API's overhead instead: serve the package in an in-process agent and
    /// compare HTTP round trips with raw runs (FILE must be a package).
    #[arg(long)]
    http: bool,
}

/// Flags of `outpost model train-demo`.
#[derive(Debug, Args)]
pub struct TrainDemoArgs {
    /// Directory to write `vibration-anomaly-1.opkg` into.
    #[arg(long, short, default_value = "models")]
    out: PathBuf,
}

/// Runs a model subcommand.
pub fn run(cmd: ModelCommand) -> Result<()> {
    match cmd {
        ModelCommand::Inspect(a) => inspect_cmd(a),
        ModelCommand::Bench(a) => bench_cmd(a),
        ModelCommand::BenchExport(a) => match a.catch_up {
            Some(n) => crate::catch_up_bench::run(n, &a.mqtt),
            None => crate::bandwidth_bench::run(a.requests, &a.mqtt, a.zstd_batches),
        },
        ModelCommand::Pack(a) => pack::run(a),
        ModelCommand::Reference(a) => crate::reference::run(a),
        ModelCommand::TrainDemo(a) => train_demo(a),
        ModelCommand::Publish(a) => crate::fleet::models::publish(a),
        ModelCommand::List(a) => crate::fleet::models::list(a),
        ModelCommand::Show(a) => crate::fleet::models::show(a),
        ModelCommand::Delta(cmd) => crate::delta::run(cmd),
    }
}

/// ONNX bytes and manifest symbols from an `.onnx` file or a package.
fn load_model(path: &Path) -> Result<(Vec<u8>, BTreeMap<String, i64>)> {
    let is_package = path.is_dir() || path.extension().is_some_and(|e| e == "opkg");
    if is_package {
        let pkg = Package::open(path)?;
        Ok((pkg.model_bytes().to_vec(), pkg.manifest.symbols.clone()))
    } else {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Ok((bytes, BTreeMap::new()))
    }
}

fn inspect_cmd(a: InspectArgs) -> Result<()> {
    let (onnx, mut symbols) = load_model(&a.file)?;
    let given: Vec<String> = a.symbols.iter().map(|(k, _)| k.clone()).collect();
    symbols.extend(a.symbols);
    let report = inspect::inspect(&onnx, &symbols).with_context(|| format!("inspecting {}", a.file.display()))?;
    // A misspelt symbol pins nothing and changes no figure; say so rather than let it pass.
    let known: std::collections::BTreeSet<&str> = report
        .inputs
        .iter()
        .flat_map(|t| t.shape.iter().flatten())
        .filter_map(|d| match d {
            outpost_proto::manifest::Dim::Symbol(s) if s != "?" => Some(s.as_str()),
            _ => None,
        })
        .collect();
    for name in given.iter().filter(|g| !known.contains(&g.as_str())) {
        let named: Vec<&str> = known.iter().copied().collect();
        eprintln!("note: --symbol {name}: no input dimension has that name (named ones: {})", named.join(", "));
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}

fn bench_cmd(a: BenchArgs) -> Result<()> {
    if a.http {
        return crate::http_bench::run(&a.file, a.iterations, a.json);
    }
    let (onnx, mut symbols) = load_model(&a.file)?;
    symbols.extend(a.symbols);
    let backends = match a.backend.as_str() {
        "both" | "all" => vec![BackendKind::Tract, BackendKind::Onnxruntime],
        one => vec![one.parse::<BackendKind>().map_err(anyhow::Error::msg)?],
    };
    if a.threads.is_empty() || a.threads.contains(&0) {
        bail!("--threads needs counts of at least 1");
    }
    let mut input_shapes: BTreeMap<String, Vec<usize>> = a.input_shapes.into_iter().collect();
    let inputs = match &a.inputs {
        Some(dir) => {
            // The dump's index names each input, so tract can pin every dimension to it.
            let index: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("inputs.json"))?)?;
            let pins = if a.dynamic { None } else { index.as_array() };
            for entry in pins.into_iter().flatten() {
                let shape: Option<Vec<usize>> = entry["shape"]
                    .as_array()
                    .map(|d| d.iter().filter_map(|x| x.as_u64()).map(|x| x as usize).collect());
                if let (Some(name), Some(shape)) = (entry["name"].as_str(), shape) {
                    input_shapes.entry(name.to_string()).or_insert(shape);
                }
            }
            Some(bench::load_raw_inputs(dir)?)
        }
        None => None,
    };
    let cfg = BenchConfig {
        backends,
        threads: a.threads,
        warmup: a.warmup,
        iterations: a.iterations.max(1),
        duration_limit: Some(std::time::Duration::from_secs_f64(a.max_seconds.max(0.1))),
        symbols,
        ort_library: a.ort_library,
        shape_plans: a.shape_plans,
        inputs,
        input_shapes,
    };
    let results = bench::bench(&onnx, &cfg);
    if a.json {
        for r in &results {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        print_table(&a.file, &results);
    }
    if let Some(best) = bench::recommend(&results) {
        eprintln!("recommended backend: {best} (lowest single-thread p50 among backends that load the model)");
    }
    if results.iter().all(|r| r.error.is_some()) {
        bail!("no backend could run {}", a.file.display());
    }
    Ok(())
}

fn print_table(file: &Path, results: &[BenchResult]) {
    println!("{}", file.display());
    println!(
        "{:<12} {:>7} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>10}",
        "backend", "threads", "load ms", "p50 ms", "p90 ms", "p99 ms", "runs/s", "RSS MB", "peak MB"
    );
    for r in results {
        match (&r.latency, &r.error) {
            (Some(l), _) => println!(
                "{:<12} {:>7} {:>9.1} {:>9.3} {:>9.3} {:>9.3} {:>10.1} {:>9} {:>10}",
                r.backend.name(),
                r.threads,
                r.load_ms.unwrap_or_default(),
                l.p50_ms,
                l.p90_ms,
                l.p99_ms,
                l.throughput_per_s,
                r.memory.rss_after_load_mb.map_or("-".into(), |m| format!("{m:.1}")),
                r.memory.peak_rss_mb.map_or("-".into(), |m| format!("{m:.1}")),
            ),
            (None, Some(e)) => println!("{:<12} {:>7} unavailable: {e}", r.backend.name(), r.threads),
            (None, None) => println!("{:<12} {:>7} no result", r.backend.name(), r.threads),
        }
    }
}

fn train_demo(a: TrainDemoArgs) -> Result<()> {
    let trained = outpost_train::train_vibration_anomaly(&outpost_train::TrainConfig::default())?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let pkg = demo_package(&trained)?;
    let path = a.out.join(format!("{}-{}.opkg", pkg.manifest.model.name, pkg.manifest.model.version));
    pkg.write_opkg(&path)?;
    let ev = &trained.evaluation;
    println!(
        "{}: ROC-AUC {:.4} on {} held-out windows, threshold {:.4}, TPR {:.3}, FPR {:.3}",
        path.display(),
        ev.roc_auc,
        ev.test_windows,
        ev.threshold,
        ev.tpr,
        ev.fpr
    );
    Ok(())
}

/// The demo model as a package with its self-test file.
pub fn demo_package(trained: &outpost_train::TrainedModel) -> Result<Package> {
    let selftest = serde_json::to_vec_pretty(&trained.selftest)?;
    let files = vec![
        (trained.manifest.model.file.clone(), trained.onnx.clone()),
        (outpost_train::SELFTEST_FILE.to_string(), selftest),
    ];
    Ok(Package::from_parts(trained.manifest.clone(), files)?)
}
