//! Latency of one model on each backend and thread count: the engine of `outpost model bench`,
//! and the evidence behind [`recommend`], which picks the faster backend for a model.
//!
//! The method is kept comparable with `bench/ort_bench.py` (the reference measurement with the
//! onnxruntime Python wheel): same default warm-up and iteration counts, similar generated inputs
//! (floats uniform in [-1, 1), random bools, variable dims set to 1), and byte-identical inputs
//! when the script's `--dump-inputs` directory is read with [`load_raw_inputs`]. Three differences
//! are deliberate: percentiles here are nearest-rank (an observed sample, never an interpolation
//! between two); integers are drawn from the input's [index range](crate::indices) and are 0 when
//! it has none, where the script draws from [0, 10) (which overruns a two-row token-type table);
//! and the seeded generator is ours, so generated values differ from numpy's — use a dump when
//! exact inputs matter.
//!
//! A backend that cannot load the model is a result with `error` set, not a failed bench: "ONNX
//! Runtime is not installed here" is a useful answer for a device.

use crate::backend::{self, check_inputs, BackendKind, Engine, EngineOptions, IoSpec};
use crate::indices::{index_ranges, IndexRange};
use crate::inspect::fenced;
use crate::tensor::{shape_to_usize, tensor_from_bytes};
use crate::{RuntimeError, Tensor};
use outpost_proto::DType;
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod generate;
pub use generate::{generate_inputs, generate_inputs_in};

/// What to measure and how long.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Backends to try, in order.
    pub backends: Vec<BackendKind>,
    /// Intra-op thread counts to try on each backend.
    pub threads: Vec<usize>,
    /// Untimed runs before measuring (caches, lazy allocations, thread pools).
    pub warmup: usize,
    /// Timed runs (at least one is always made).
    pub iterations: usize,
    /// Stops warm-up and then timing early once this much time has passed in each.
    pub duration_limit: Option<Duration>,
    /// Values for symbolic dimensions (`batch = 1`).
    pub symbols: BTreeMap<String, i64>,
    /// Path of `libonnxruntime.so`; searched in the usual places when absent.
    pub ort_library: Option<PathBuf>,
    /// Inputs in graph order (e.g. from [`load_raw_inputs`]); generated from the specs when absent.
    pub inputs: Option<Vec<Tensor>>,
    /// Concrete input shapes by name, for dimensions symbols cannot pin (unnamed `?`).
    pub input_shapes: BTreeMap<String, Vec<usize>>,
    /// tract: plans specialised to a repeated request shape (see [`EngineOptions::shape_plans`]).
    pub shape_plans: usize,
}

impl Default for BenchConfig {
    /// tract then onnxruntime, one thread, 10 warm-up and 100 timed runs, as `ort_bench.py`.
    fn default() -> Self {
        BenchConfig {
            backends: vec![BackendKind::Tract, BackendKind::Onnxruntime],
            threads: vec![1],
            warmup: 10,
            iterations: 100,
            duration_limit: None,
            symbols: BTreeMap::new(),
            ort_library: None,
            inputs: None,
            input_shapes: BTreeMap::new(),
            shape_plans: crate::backend::DEFAULT_SHAPE_PLANS,
        }
    }
}

/// The measurement of one backend at one thread count.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchResult {
    /// Backend measured.
    #[serde(serialize_with = "backend_name")]
    pub backend: BackendKind,
    /// Intra-op threads.
    pub threads: usize,
    /// Time to parse, optimise and plan the model; `None` when loading failed.
    pub load_ms: Option<f64>,
    /// Latency figures; `None` when the model did not load or run.
    #[serde(flatten)]
    pub latency: Option<Latency>,
    /// Resident memory around this measurement.
    #[serde(flatten)]
    pub memory: MemoryUse,
    /// Why the backend could not load or run the model.
    pub error: Option<String>,
}

/// Latency of single-stream inference: one request at a time, timed around `Session::run`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    /// Median (nearest-rank).
    pub p50_ms: f64,
    /// 90th percentile (nearest-rank).
    pub p90_ms: f64,
    /// 99th percentile (nearest-rank).
    pub p99_ms: f64,
    /// Arithmetic mean.
    pub mean_ms: f64,
    /// Fastest run.
    pub min_ms: f64,
    /// Slowest run.
    pub max_ms: f64,
    /// Inferences per second of one stream, `1000 / mean_ms`.
    pub throughput_per_s: f64,
    /// Timed runs.
    pub iterations: usize,
}

/// Resident set size read from `/proc/self/status` (Linux; `None` elsewhere).
///
/// The kernel's peak (`VmHWM`) is process-wide and only grows, so it is reset just before each
/// load where the kernel allows it (`peak_rss_reset`); otherwise `peak_rss_mb` is the peak of the
/// whole process so far. The model's own cost is best read as `rss_after_load_mb - rss_before_load_mb`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct MemoryUse {
    /// RSS just before loading.
    pub rss_before_load_mb: Option<f64>,
    /// RSS just after loading.
    pub rss_after_load_mb: Option<f64>,
    /// Peak RSS after the timed runs (see `peak_rss_reset` for its scope).
    pub peak_rss_mb: Option<f64>,
    /// Whether the peak was reset before loading, making it this measurement's own peak.
    pub peak_rss_reset: bool,
}

fn backend_name<S: Serializer>(kind: &BackendKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(kind.name())
}

/// Measures `onnx` on every configured backend and thread count, in that order.
pub fn bench(onnx: &[u8], cfg: &BenchConfig) -> Vec<BenchResult> {
    let mut results = Vec::with_capacity(cfg.backends.len() * cfg.threads.len());
    let ranges = index_ranges(onnx);
    for &backend in &cfg.backends {
        for &threads in &cfg.threads {
            results.push(bench_one(onnx, cfg, &ranges, backend, threads.max(1)));
        }
    }
    results
}

fn bench_one(
    onnx: &[u8],
    cfg: &BenchConfig,
    ranges: &BTreeMap<String, IndexRange>,
    backend: BackendKind,
    threads: usize,
) -> BenchResult {
    let mut result =
        BenchResult { backend, threads, load_ms: None, latency: None, memory: MemoryUse::default(), error: None };
    result.memory.peak_rss_reset = reset_peak_rss();
    result.memory.rss_before_load_mb = proc_status_mb("VmRSS");
    let opts = EngineOptions {
        model_name: "bench".into(),
        symbols: cfg.symbols.clone(),
        threads,
        ort_library: cfg.ort_library.clone(),
        input_shapes: cfg.input_shapes.iter().map(|(k, v)| (k.clone(), v.iter().map(|d| Some(*d)).collect())).collect(),
        symbol_bounds: BTreeMap::new(),
        shape_plans: cfg.shape_plans,
    };
    let started = Instant::now();
    let engine = match fenced(|| backend::load_engine(backend, onnx, &opts).map_err(|e| e.to_string())) {
        Ok(engine) => engine,
        Err(e) => {
            result.error = Some(e);
            return result;
        }
    };
    result.load_ms = Some(millis(started.elapsed()));
    result.memory.rss_after_load_mb = proc_status_mb("VmRSS");
    let inputs = match &cfg.inputs {
        Some(given) => check_inputs(engine.inputs(), given).map(|()| given.clone()),
        None => {
            // Shapes pinned by name win over the engine's view, which may leave `?` dims open.
            let specs: Vec<IoSpec> = engine
                .inputs()
                .iter()
                .map(|s| match cfg.input_shapes.get(&s.name) {
                    Some(dims) => IoSpec { shape: dims.iter().map(|d| Some(*d)).collect(), ..s.clone() },
                    None => s.clone(),
                })
                .collect();
            generate_inputs(&specs, ranges, SEED)
        }
    };
    let samples = inputs.map_err(|e| e.to_string()).and_then(|inputs| fenced(|| time_runs(&*engine, &inputs, cfg)));
    match samples {
        Ok(samples) => result.latency = Latency::from_samples(samples),
        Err(e) => result.error = Some(e),
    }
    result.memory.peak_rss_mb = proc_status_mb("VmHWM");
    result
}

/// Seed of the generated inputs: fixed, so two runs (and two devices) time the same work.
const SEED: u64 = 0x6f75_7470_6f73_7421;

/// Warm-up, then timed runs; returns each timed run's latency in milliseconds.
fn time_runs(engine: &dyn Engine, inputs: &[Tensor], cfg: &BenchConfig) -> Result<Vec<f64>, String> {
    let mut session = engine.session().map_err(|e| e.to_string())?;
    let over = |since: Instant| cfg.duration_limit.is_some_and(|limit| since.elapsed() >= limit);
    let warmup_started = Instant::now();
    for _ in 0..cfg.warmup {
        session.run(inputs.to_vec()).map_err(|e| e.to_string())?;
        if over(warmup_started) {
            break;
        }
    }
    // Time the steady state: a dynamic tract model compiles a plan for a repeated shape in the
    // background, and the first run after that builds the session's state for it.
    if cfg.warmup > 0 && !engine.settle(Duration::from_secs(120)) {
        return Err("a background plan compile did not finish in 120 s".into());
    }
    if cfg.warmup > 0 {
        session.run(inputs.to_vec()).map_err(|e| e.to_string())?;
    }
    let mut samples = Vec::with_capacity(cfg.iterations.clamp(1, 1 << 16));
    let timing_started = Instant::now();
    while samples.len() < cfg.iterations.max(1) {
        // The clone is outside the timed span: sessions consume their inputs.
        let batch = inputs.to_vec();
        let t = Instant::now();
        session.run(batch).map_err(|e| e.to_string())?;
        samples.push(millis(t.elapsed()));
        if over(timing_started) {
            break;
        }
    }
    Ok(samples)
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Latency {
    /// Summary of per-run latencies in milliseconds; `None` when there are none.
    pub fn from_samples(mut samples: Vec<f64>) -> Option<Latency> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_by(f64::total_cmp);
        let n = samples.len();
        // Nearest rank: the smallest sample with at least p% of the samples at or below it.
        let rank = |p: f64| samples[((p / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1];
        let mean_ms = samples.iter().sum::<f64>() / n as f64;
        Some(Latency {
            p50_ms: rank(50.0),
            p90_ms: rank(90.0),
            p99_ms: rank(99.0),
            mean_ms,
            min_ms: samples[0],
            max_ms: samples[n - 1],
            throughput_per_s: if mean_ms > 0.0 { 1e3 / mean_ms } else { f64::INFINITY },
            iterations: n,
        })
    }
}

/// The backend with the lowest single-thread median among those that loaded and ran.
///
/// Single-thread because that is how a device runs a model by default and because thread
/// scaling differs between backends; when no single-thread figure exists, all are compared.
/// Ties go to the backend listed first.
pub fn recommend(results: &[BenchResult]) -> Option<BackendKind> {
    let ran: Vec<(&BenchResult, &Latency)> =
        results.iter().filter(|r| r.error.is_none()).filter_map(|r| r.latency.as_ref().map(|l| (r, l))).collect();
    let single: Vec<_> = ran.iter().copied().filter(|(r, _)| r.threads == 1).collect();
    let pool = if single.is_empty() { ran } else { single };
    pool.into_iter()
        .reduce(|best, next| if next.1.p50_ms < best.1.p50_ms { next } else { best })
        .map(|(r, _)| r.backend)
}

/// One entry of a dump index (`inputs.json`, `outputs.json`).
#[derive(Debug, Deserialize)]
struct DumpedTensor {
    name: String,
    /// numpy dtype name: `float32`, `int64`, `bool`, ..., or `str` for strings.
    dtype: String,
    shape: Vec<i64>,
    /// Raw little-endian C-order data, a file name inside the dump directory.
    file: String,
}

/// Reads inputs dumped by `bench/ort_bench.py --dump-inputs DIR`, in the model's input order.
///
/// The dump is `DIR/inputs.json` in the layout [`load_dump`] reads. Per-input `DIR/<name>.json`
/// files are also written by the script but not needed here.
pub fn load_raw_inputs(dir: &Path) -> Result<Vec<Tensor>, RuntimeError> {
    Ok(load_dump(dir, "inputs.json")?.into_iter().map(|(_, t)| t).collect())
}

/// Reads the named tensors of a dump, in index order.
///
/// `DIR/<index>` is a JSON list of `{"name", "dtype", "shape", "file"}` (`dtype` a numpy name such
/// as `float32` or `int64`), and for each entry `DIR/<file>` holds the raw little-endian, C-order
/// elements (`bool` as one byte each; `str` in the Open Inference Protocol BYTES layout, a 4-byte
/// little-endian length before each element). `bench/ort_bench.py --dump-inputs` writes
/// `inputs.json`; `scripts/test-models/sklearn.py` writes `inputs.json` and `outputs.json`.
pub fn load_dump(dir: &Path, index: &str) -> Result<Vec<(String, Tensor)>, RuntimeError> {
    let index_path = dir.join(index);
    let bytes = std::fs::read(&index_path).map_err(|e| RuntimeError::io(&index_path, e))?;
    let entries: Vec<DumpedTensor> =
        serde_json::from_slice(&bytes).map_err(|e| RuntimeError::io(&index_path, std::io::Error::from(e)))?;
    let mut tensors = Vec::with_capacity(entries.len());
    for entry in entries {
        let bad = |reason: String| RuntimeError::BadInput {
            tensor: entry.name.clone(),
            reason: format!("{}: {reason}", index_path.display()),
        };
        let dtype = numpy_dtype(&entry.dtype)
            .ok_or_else(|| bad(format!("numpy dtype `{}` has no Open Inference Protocol equivalent", entry.dtype)))?;
        // The index is outside data: a `file` of `../../x` must not read outside the dump.
        if Path::new(&entry.file).file_name().is_none_or(|f| f != entry.file.as_str()) {
            return Err(bad(format!("file `{}` is not a plain file name inside the dump directory", entry.file)));
        }
        let shape = shape_to_usize(&entry.name, &entry.shape)?;
        let data_path = dir.join(&entry.file);
        let bytes = std::fs::read(&data_path).map_err(|e| RuntimeError::io(&data_path, e))?;
        let tensor = tensor_from_bytes(&entry.name, dtype, &shape, &bytes)?;
        tensors.push((entry.name, tensor));
    }
    Ok(tensors)
}

fn numpy_dtype(name: &str) -> Option<DType> {
    Some(match name {
        "bool" => DType::Bool,
        "uint8" => DType::U8,
        "uint16" => DType::U16,
        "uint32" => DType::U32,
        "uint64" => DType::U64,
        "int8" => DType::I8,
        "int16" => DType::I16,
        "int32" => DType::I32,
        "int64" => DType::I64,
        "float16" => DType::F16,
        "float32" => DType::F32,
        "float64" => DType::F64,
        "str" => DType::Bytes,
        _ => return None,
    })
}

/// A `/proc/self/status` field such as `VmRSS:   1234 kB`, in MB.
fn proc_status_mb(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?;
    let kb: f64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kb / 1024.0)
}

/// Resets the kernel's peak-RSS counter of this process (Linux ≥ 4.0; `5` touches nothing else).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::fixtures::mlp;

    fn quick(backends: Vec<BackendKind>, threads: Vec<usize>) -> BenchConfig {
        BenchConfig { backends, threads, warmup: 2, iterations: 30, ..BenchConfig::default() }
    }

    #[test]
    fn tract_on_one_and_two_threads_gives_ordered_percentiles() {
        let results = bench(&mlp(), &quick(vec![BackendKind::Tract], vec![1, 2]));
        assert_eq!(results.iter().map(|r| r.threads).collect::<Vec<_>>(), [1, 2]);
        for r in &results {
            assert_eq!(r.error, None);
            let l = r.latency.unwrap();
            assert_eq!(l.iterations, 30);
            assert!(l.min_ms > 0.0 && l.min_ms <= l.p50_ms && l.p50_ms <= l.p90_ms && l.p90_ms <= l.p99_ms, "{l:?}");
            assert!(l.p99_ms <= l.max_ms && l.min_ms <= l.mean_ms && l.mean_ms <= l.max_ms);
            assert!((l.throughput_per_s - 1e3 / l.mean_ms).abs() < 1e-6);
            assert!(r.load_ms.is_some_and(|ms| ms > 0.0));
            if cfg!(target_os = "linux") {
                assert!(r.memory.rss_after_load_mb.is_some() && r.memory.peak_rss_mb.is_some());
            }
        }
        assert_eq!(recommend(&results), Some(BackendKind::Tract));
    }

    #[test]
    fn onnxruntime_without_its_library_is_an_entry_error_not_a_failed_bench() {
        let cfg = BenchConfig {
            ort_library: Some("/nonexistent/libonnxruntime.so".into()),
            ..quick(vec![BackendKind::Onnxruntime, BackendKind::Tract], vec![1])
        };
        let results = bench(&mlp(), &cfg);
        assert_eq!(results.len(), 2);
        let ort = &results[0];
        assert_eq!(ort.backend, BackendKind::Onnxruntime);
        assert!(ort.error.is_some() && ort.latency.is_none() && ort.load_ms.is_none(), "{ort:?}");
        assert!(results[1].error.is_none());
        assert_eq!(recommend(&results), Some(BackendKind::Tract));
        let json = serde_json::to_value(&results).unwrap();
        assert_eq!(json[0]["backend"], "onnxruntime");
        assert!(json[0]["error"].is_string() && json[0].get("p50_ms").is_none());
        assert!(json[1]["p50_ms"].is_number() && json[1]["error"].is_null());
    }

    #[test]
    fn duration_limit_stops_timing_early_but_keeps_at_least_one_run() {
        let cfg = BenchConfig {
            iterations: 1_000_000,
            duration_limit: Some(Duration::from_millis(50)),
            ..quick(vec![BackendKind::Tract], vec![1])
        };
        let l = bench(&mlp(), &cfg)[0].latency.unwrap();
        assert!((1..1_000_000).contains(&l.iterations));
    }

    #[test]
    fn given_inputs_that_do_not_fit_the_model_are_an_entry_error() {
        let wrong = Tensor::from_shape::<f32>(&[1, 3], &[0.0; 3]).unwrap();
        let cfg = BenchConfig { inputs: Some(vec![wrong]), ..quick(vec![BackendKind::Tract], vec![1]) };
        let r = &bench(&mlp(), &cfg)[0];
        assert!(r.load_ms.is_some() && r.error.as_ref().is_some_and(|e| e.contains("shape")), "{r:?}");
    }

    #[test]
    fn percentiles_are_nearest_rank_samples() {
        let l = Latency::from_samples((1..=100).rev().map(f64::from).collect()).unwrap();
        assert_eq!((l.p50_ms, l.p90_ms, l.p99_ms, l.min_ms, l.max_ms), (50.0, 90.0, 99.0, 1.0, 100.0));
        let one = Latency::from_samples(vec![7.0]).unwrap();
        assert_eq!((one.p50_ms, one.p99_ms, one.iterations), (7.0, 7.0, 1));
        assert!(Latency::from_samples(vec![]).is_none());
    }

    fn result(backend: BackendKind, threads: usize, p50: Option<f64>) -> BenchResult {
        BenchResult {
            backend,
            threads,
            load_ms: Some(1.0),
            latency: p50.and_then(|p| Latency::from_samples(vec![p])),
            memory: MemoryUse::default(),
            error: p50.is_none().then(|| "did not load".into()),
        }
    }

    #[test]
    fn recommend_picks_the_lowest_single_thread_median_among_backends_that_ran() {
        use BackendKind::*;
        let r = [result(Tract, 1, Some(3.0)), result(Onnxruntime, 1, Some(2.0)), result(Tract, 4, Some(0.5))];
        assert_eq!(recommend(&r), Some(Onnxruntime));
        let r = [result(Tract, 1, Some(3.0)), result(Onnxruntime, 1, None)];
        assert_eq!(recommend(&r), Some(Tract));
        assert_eq!(recommend(&[result(Tract, 2, Some(3.0)), result(Onnxruntime, 4, Some(1.0))]), Some(Onnxruntime));
        assert_eq!(recommend(&[result(Onnxruntime, 1, None)]), None);
    }

    /// One dumped input: name, numpy dtype, shape, data file name, data.
    type Dumped<'a> = (&'a str, &'a str, &'a [i64], &'a str, &'a [u8]);

    /// Writes a dump the way `bench/ort_bench.py --dump-inputs` does.
    fn write_dump(dir: &Path, entries: &[Dumped]) {
        write_index(dir, "inputs.json", entries);
    }

    fn write_index(dir: &Path, index_name: &str, entries: &[Dumped]) {
        let mut index = Vec::new();
        for (name, dtype, shape, file, data) in entries {
            std::fs::write(dir.join(file), data).unwrap();
            index.push(serde_json::json!({"name": name, "dtype": dtype, "shape": shape, "file": file}));
        }
        std::fs::write(dir.join(index_name), serde_json::to_vec(&index).unwrap()).unwrap();
    }

    #[test]
    fn a_dump_of_outputs_loads_named_tensors_strings_included() {
        let dir = tempfile::tempdir().unwrap();
        let labels: Vec<u8> =
            ["cat", "dog"].iter().flat_map(|s| [&(s.len() as u32).to_le_bytes()[..], s.as_bytes()].concat()).collect();
        let p: Vec<u8> = [0.25f32, 0.75].iter().flat_map(|v| v.to_le_bytes()).collect();
        write_index(
            dir.path(),
            "outputs.json",
            &[("label", "str", &[2], "l.bin", &labels), ("p", "float32", &[1, 2], "p.bin", &p)],
        );
        let t = load_dump(dir.path(), "outputs.json").unwrap();
        assert_eq!((t[0].0.as_str(), t[1].0.as_str()), ("label", "p"));
        assert_eq!(crate::tensor::values::<String>(&t[0].1).unwrap(), ["cat", "dog"]);
        assert_eq!(crate::tensor::values::<f32>(&t[1].1).unwrap(), [0.25, 0.75]);
    }

    #[test]
    fn raw_inputs_from_an_ort_bench_dump_load_in_model_order() {
        let dir = tempfile::tempdir().unwrap();
        let x: Vec<u8> = [0.5f32, -1.0, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let sr = 16000i64.to_le_bytes();
        write_dump(
            dir.path(),
            &[("input/x", "float32", &[1, 3], "input_x.bin", &x), ("sr", "int64", &[], "sr.bin", &sr)],
        );
        let t = load_raw_inputs(dir.path()).unwrap();
        assert_eq!(crate::tensor::values::<f32>(&t[0]).unwrap(), &[0.5, -1.0, 2.0]);
        assert_eq!((t[0].shape(), t[1].shape()), (&[1, 3][..], &[][..]));
        assert_eq!(crate::tensor::values::<i64>(&t[1]).unwrap(), &[16000]);
    }

    #[test]
    fn raw_inputs_refuse_escaping_paths_short_data_and_unknown_dtypes() {
        let dir = tempfile::tempdir().unwrap();
        let err = |entries: &[Dumped]| {
            write_dump(dir.path(), entries);
            load_raw_inputs(dir.path()).unwrap_err().to_string()
        };
        assert!(err(&[("x", "float32", &[1], "../x.bin", &[0; 4])]).contains("plain file name"));
        assert!(err(&[("x", "float32", &[2], "x.bin", &[0; 4])]).contains("8 bytes"));
        assert!(err(&[("x", "complex64", &[1], "x.bin", &[0; 8])]).contains("complex64"));
        std::fs::write(dir.path().join("inputs.json"), b"{not json").unwrap();
        assert!(load_raw_inputs(dir.path()).unwrap_err().to_string().contains("inputs.json"));
        let empty = tempfile::tempdir().unwrap();
        assert!(load_raw_inputs(empty.path()).unwrap_err().to_string().contains("inputs.json"));
    }
}
