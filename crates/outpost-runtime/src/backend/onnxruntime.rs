//! The ONNX Runtime backend, loaded from `libonnxruntime` at run time.
//!
//! The library is about 30 MB and only some devices need it, so the `ort` crate's `load-dynamic`
//! feature opens it on first use instead of linking it; a missing library is a
//! [`RuntimeError::BackendUnavailable`] that says where we looked, never a crash. ONNX Runtime can
//! be initialised only once per process: the first engine that loads it fixes the library for
//! every later one (`library_candidates` decides where to look).
//!
//! Each [`Session`] owns its own ONNX Runtime session. `ort` 2.0.0-rc.15 makes `Session::run`
//! take `&mut self`, because some ONNX Runtime internals break under concurrent `Run` calls, so a
//! session shared by the pool's workers would serialise them behind a lock. Workers therefore
//! commit their own sessions from the ONNX bytes the engine keeps; the weights ONNX Runtime
//! pre-packs (MatMul, Gemm and Conv constants) are shared between those sessions through one
//! container, but the rest of the graph is copied per session (about 1.4 times the ONNX size per
//! extra session, measured on yolov8n), and the engine's memory estimate counts it.

use super::ort_convert::{from_ort, io_spec, to_ort};
use super::{BackendKind, Engine, EngineOptions, IoSpec, MemoryEstimate, Session};
use crate::{RuntimeError, Tensor};
use ort::environment::Environment;
use ort::session::builder::{GraphOptimizationLevel, PrepackedWeights};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

const BACKEND: &str = "onnxruntime";
/// File name of the library on Linux; the `onnxruntime` wheel and our fetch script both ship it.
const LIBRARY: &str = "libonnxruntime.so";
/// What to do about a missing library, appended to every load failure.
const HINT: &str = "set ORT_DYLIB_PATH (or the engine's ort_library option) to libonnxruntime.so, \
                    or run scripts/fetch-models.sh --ort to put it in target/onnxruntime/lib";

/// The loaded library and the process-wide ONNX Runtime environment.
struct OrtRuntime {
    env: Environment,
    library: PathBuf,
}

/// Set once the library loads. Failures are not kept: a later engine (with a corrected
/// `ort_library`, or after the operator installs the library) may try again.
static RUNTIME: OnceLock<OrtRuntime> = OnceLock::new();
/// Serialises load attempts, so two engines loading at once cannot both initialise ONNX Runtime.
static LOADING: Mutex<()> = Mutex::new(());

/// Where a candidate library path came from, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// `EngineOptions::ort_library`.
    EngineOption,
    /// The `ORT_DYLIB_PATH` environment variable.
    EnvVar,
    /// Found next to the working directory or the executable.
    Search,
    /// A bare file name for the dynamic loader to find in the system's library path.
    System,
}

/// A library path to try, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    path: PathBuf,
    origin: Origin,
}

/// The libraries to try, in order.
///
/// An explicit choice (the option, else `ORT_DYLIB_PATH`) is the only candidate: silently using
/// another library than the one asked for would make version problems impossible to diagnose.
/// Without one we look for `target/onnxruntime/lib/libonnxruntime.so` under the working directory,
/// then for `onnxruntime/lib/libonnxruntime.so` in every ancestor of the executable's directory
/// (a binary in `target/release` finds `target/onnxruntime/lib`), then let the dynamic loader
/// search the system. `exists` is a parameter so the order can be tested without files.
fn library_candidates(
    option: Option<&Path>,
    env_var: Option<&OsStr>,
    cwd: Option<&Path>,
    exe: Option<&Path>,
    exists: &dyn Fn(&Path) -> bool,
) -> Vec<Candidate> {
    let explicit = option
        .map(|p| (p.to_path_buf(), Origin::EngineOption))
        .or_else(|| env_var.filter(|v| !v.is_empty()).map(|v| (PathBuf::from(v), Origin::EnvVar)));
    if let Some((path, origin)) = explicit {
        // A bare file name is for the dynamic loader; anything else relative is relative to us, not
        // to the executable as `ort` would assume.
        let path = match cwd {
            Some(cwd) if path.is_relative() && path.components().count() > 1 => cwd.join(path),
            _ => path,
        };
        return vec![Candidate { path, origin }];
    }
    let mut found: Vec<Candidate> = Vec::new();
    let searched = cwd.map(|d| d.join("target/onnxruntime/lib").join(LIBRARY)).into_iter().chain(
        exe.and_then(Path::parent)
            .into_iter()
            .flat_map(Path::ancestors)
            .map(|d| d.join("onnxruntime/lib").join(LIBRARY)),
    );
    for path in searched {
        if exists(&path) && !found.iter().any(|c| c.path == path) {
            found.push(Candidate { path, origin: Origin::Search });
        }
    }
    found.extend([LIBRARY, "libonnxruntime.so.1"].map(|name| Candidate { path: name.into(), origin: Origin::System }));
    found
}

/// The process's ONNX Runtime, loading it on first use.
fn runtime(option: Option<&Path>) -> Result<&'static OrtRuntime, RuntimeError> {
    if let Some(rt) = RUNTIME.get() {
        return already_loaded(rt, option);
    }
    let _loading = LOADING.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(rt) = RUNTIME.get() {
        return already_loaded(rt, option);
    }
    let cwd = std::env::current_dir().ok();
    let exe = std::env::current_exe().ok();
    let env_var = std::env::var_os("ORT_DYLIB_PATH");
    let candidates = library_candidates(option, env_var.as_deref(), cwd.as_deref(), exe.as_deref(), &|p| p.is_file());
    let rt =
        start(&candidates).map_err(|reason| RuntimeError::BackendUnavailable { backend: BACKEND.into(), reason })?;
    tracing::info!(library = %rt.library.display(), "loaded ONNX Runtime");
    Ok(RUNTIME.get_or_init(|| rt))
}

/// The loaded runtime; warns when the caller asked for another library, which cannot be loaded
/// next to the first.
fn already_loaded(rt: &'static OrtRuntime, option: Option<&Path>) -> Result<&'static OrtRuntime, RuntimeError> {
    if let Some(asked) = option {
        // An explicit library that does not exist is a configuration error whatever else is
        // loaded, exactly as it would be in a fresh process.
        if asked.components().count() > 1 && !asked.is_file() {
            return Err(RuntimeError::BackendUnavailable {
                backend: BACKEND.into(),
                reason: format!("{} (from the ort_library option) does not exist", asked.display()),
            });
        }
        let same = match (std::fs::canonicalize(asked), std::fs::canonicalize(&rt.library)) {
            (Ok(a), Ok(b)) => a == b,
            _ => asked == rt.library,
        };
        if !same {
            tracing::warn!(
                asked = %asked.display(),
                using = %rt.library.display(),
                "ONNX Runtime is already loaded from another library; it can be loaded only once per process"
            );
        }
    }
    Ok(rt)
}

/// Tries each candidate until one loads, and creates the environment.
fn start(candidates: &[Candidate]) -> Result<OrtRuntime, String> {
    let mut tried = Vec::new();
    for c in candidates {
        let origin = match c.origin {
            Origin::EngineOption => " (from the ort_library option)",
            Origin::EnvVar => " (from ORT_DYLIB_PATH)",
            Origin::Search | Origin::System => "",
        };
        if c.origin != Origin::System && !c.path.is_file() {
            tried.push(format!("{}{origin} does not exist", c.path.display()));
            continue;
        }
        // `ort` expects a failed dlopen to be an error, but it can panic on some paths (no current
        // executable, a library without the expected entry point); neither may take us down.
        let env = without_panics(|| {
            ort::init_from(&c.path)
                .map_err(|e| load_error_text(&e))?
                .with_name("outpost")
                .with_telemetry(false)
                .build()
                .map_err(|e| e.to_string())
        });
        match env {
            Ok(env) => return Ok(OrtRuntime { env, library: c.path.clone() }),
            Err(e) => tried.push(format!("{}{origin}: {e}", c.path.display())),
        }
    }
    Err(format!("cannot load ONNX Runtime ({}); {HINT}", tried.join("; ")))
}

/// A load error with the dynamic loader's own reason, which `ort` keeps only as the source.
fn load_error_text(e: &ort::LoadDynamicError) -> String {
    let mut text = e.to_string();
    if let ort::LoadDynamicError::Dlopen { error, .. } = e {
        let mut source = std::error::Error::source(error);
        while let Some(s) = source {
            text.push_str(&format!(": {s}"));
            source = s.source();
        }
    }
    text
}

/// Runs `f`, turning a panic inside `ort` into an error message.
fn without_panics<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = crate::error::panic_message(panic.as_ref());
        Err(format!("ort panicked: {what}"))
    })
}

/// A model compiled by ONNX Runtime.
pub struct OrtEngine {
    name: String,
    runtime: &'static OrtRuntime,
    onnx: Arc<[u8]>,
    threads: usize,
    symbols: BTreeMap<String, i64>,
    prepacked: PrepackedWeights,
    /// The session committed while loading, handed to the first caller of [`Engine::session`]
    /// so a one-session pool compiles the graph once.
    spare: Mutex<Option<ort::session::Session>>,
    inputs: Vec<IoSpec>,
    outputs: Vec<IoSpec>,
    memory: MemoryEstimate,
}

impl fmt::Debug for OrtEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OrtEngine")
            .field("name", &self.name)
            .field("library", &self.runtime.library)
            .field("onnx_bytes", &self.onnx.len())
            .field("threads", &self.threads)
            .field("symbols", &self.symbols)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .field("memory", &self.memory)
            .finish_non_exhaustive()
    }
}

impl OrtEngine {
    /// Loads ONNX Runtime if needed and compiles `onnx` with the options' threads and symbols.
    pub fn load(onnx: &[u8], opts: &EngineOptions) -> Result<OrtEngine, RuntimeError> {
        let runtime = runtime(opts.ort_library.as_deref())?;
        let model_err = |stage: &str, reason: String| RuntimeError::Model {
            model: opts.model_name.clone(),
            reason: format!("{stage}: {reason}"),
        };
        let prepacked = without_panics(|| Ok(PrepackedWeights::new()))
            .map_err(|e| model_err("cannot create the pre-packed weights container", e))?;
        let mut engine = OrtEngine {
            name: opts.model_name.clone(),
            runtime,
            onnx: Arc::from(onnx),
            threads: opts.threads.max(1),
            symbols: opts.symbols.clone(),
            prepacked,
            spare: Mutex::new(None),
            inputs: Vec::new(),
            outputs: Vec::new(),
            memory: MemoryEstimate::default(),
        };
        let first = engine.commit().map_err(|e| model_err("ONNX Runtime cannot load the graph", e))?;
        let specs = |outlets: &[ort::value::Outlet]| -> Result<Vec<IoSpec>, RuntimeError> {
            outlets.iter().map(|o| io_spec(o, &opts.symbols).map_err(|e| model_err("io", e))).collect()
        };
        engine.inputs = specs(first.inputs())?;
        engine.outputs = specs(first.outputs())?;
        engine.memory = MemoryEstimate {
            weights_bytes: onnx.len() as u64,
            activations_bytes: activation_estimate(&engine.inputs, &engine.outputs).saturating_add(onnx.len() as u64),
        };
        engine.spare = Mutex::new(Some(first));
        Ok(engine)
    }

    /// Commits a new ONNX Runtime session for this model.
    fn commit(&self) -> Result<ort::session::Session, String> {
        without_panics(|| {
            let s = |e: ort::Error<_>| e.to_string();
            let mut builder = ort::session::Session::builder(&self.runtime.env)
                .map_err(|e| e.to_string())?
                // `All` is ONNX Runtime's highest level (99, what "level 3" used to mean); in rc.15
                // `Level3` is the newer numeric level 3, which older libraries may reject.
                .with_optimization_level(GraphOptimizationLevel::All)
                .map_err(s)?
                .with_intra_threads(self.threads)
                .map_err(s)?
                .with_inter_threads(1)
                .map_err(s)?
                .with_parallel_execution(false)
                .map_err(s)?
                .with_memory_pattern(true)
                .map_err(s)?
                .with_prepacked_weights(&self.prepacked)
                .map_err(s)?;
            // Pinned symbols are not passed on as dimension overrides: measured with the same
            // inputs, overrides made the BERT-style encoders 16-25 % slower and PP-OCR rec 2 %
            // slower, and helped nothing. The specs still carry the pinned sizes, so requests of
            // other sizes are refused before they reach ONNX Runtime.
            builder.commit_from_memory(&self.onnx).map_err(|e| e.to_string())
        })
    }
}

/// A rough per-session activation estimate: ONNX Runtime does not expose its memory plan, so we
/// take four times the bytes of all inputs and outputs at pinned shapes, counting a variable
/// dimension as 1 and a string element as one `String` header. It is a floor for small inputs,
/// not a measurement.
fn activation_estimate(inputs: &[IoSpec], outputs: &[IoSpec]) -> u64 {
    let bytes = |spec: &IoSpec| -> u64 {
        let elements: u64 = spec.shape.iter().map(|d| d.unwrap_or(1) as u64).product();
        elements.saturating_mul(spec.dtype.size_of().unwrap_or(std::mem::size_of::<String>()) as u64)
    };
    inputs.iter().chain(outputs).map(bytes).fold(0u64, u64::saturating_add).saturating_mul(4)
}

impl Engine for OrtEngine {
    fn kind(&self) -> BackendKind {
        BackendKind::Onnxruntime
    }
    fn inputs(&self) -> &[IoSpec] {
        &self.inputs
    }
    fn outputs(&self) -> &[IoSpec] {
        &self.outputs
    }
    fn session(&self) -> Result<Box<dyn Session>, RuntimeError> {
        let spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner).take();
        let session = match spare {
            Some(s) => s,
            None => self.commit().map_err(|reason| RuntimeError::Model { model: self.name.clone(), reason })?,
        };
        Ok(Box::new(OrtSession { session, name: self.name.clone() }))
    }
    /// Weights are the ONNX size; each session adds a rough activation estimate plus its own copy
    /// of the graph, since ONNX Runtime shares only the weights it pre-packs.
    fn memory(&self) -> MemoryEstimate {
        self.memory
    }
}

/// One worker's ONNX Runtime session.
struct OrtSession {
    session: ort::session::Session,
    name: String,
}

impl Session for OrtSession {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RuntimeError> {
        let names: Vec<&str> = self.session.inputs().iter().map(|o| o.name()).collect();
        if inputs.len() != names.len() {
            return Err(RuntimeError::BadInput {
                tensor: names.join(","),
                reason: format!("model takes {} inputs, got {}", names.len(), inputs.len()),
            });
        }
        let values =
            inputs.iter().zip(&names).map(|(t, name)| to_ort(&self.name, name, t)).collect::<Result<Vec<_>, _>>()?;
        let outputs = self
            .session
            .run(values.as_slice())
            .map_err(|e| RuntimeError::Inference { model: self.name.clone(), reason: e.to_string() })?;
        outputs
            .iter()
            .map(|(name, value)| {
                from_ort(&value).map_err(|reason| RuntimeError::Inference {
                    model: self.name.clone(),
                    reason: format!("output `{name}`: {reason}"),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::ort_convert::test_onnx::{linear_model, ort_available};
    use super::*;
    use crate::backend::tract::TractEngine;
    use crate::tensor::values;
    use outpost_proto::DType;
    use std::time::Instant;

    fn opts(name: &str) -> EngineOptions {
        EngineOptions { model_name: name.into(), ..Default::default() }
    }

    fn assert_close(a: &Tensor, b: &Tensor) {
        assert_eq!(a.shape(), b.shape());
        let (a, b) = (values::<f32>(a).unwrap(), values::<f32>(b).unwrap());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-5, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn matmul_add_agrees_with_tract_at_every_batch_size() {
        if !ort_available() {
            return;
        }
        let onnx = linear_model();
        let ort = OrtEngine::load(&onnx, &opts("linear")).unwrap();
        let tract = TractEngine::load(&onnx, &opts("linear")).unwrap();
        assert_eq!(ort.kind(), BackendKind::Onnxruntime);
        assert_eq!(ort.inputs(), tract.inputs());
        assert_eq!(ort.outputs().iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), ["Y", "R"]);
        assert_eq!(ort.outputs()[0].shape, vec![None, Some(2)]);
        let (mut o, mut t) = (ort.session().unwrap(), tract.session().unwrap());
        for batch in [1usize, 5] {
            let data: Vec<f32> = (0..batch * 3).map(|i| i as f32 * 0.5 - 2.0).collect();
            let x = Tensor::from_shape(&[batch, 3], &data).unwrap();
            let (a, b) = (o.run(vec![x.clone()]).unwrap(), t.run(vec![x]).unwrap());
            assert_eq!(a.len(), 2);
            a.iter().zip(&b).for_each(|(a, b)| assert_close(a, b));
        }
        let err = o.run(vec![]).unwrap_err();
        assert!(matches!(err, RuntimeError::BadInput { .. }), "{err}");
    }

    #[test]
    fn pinned_symbols_fix_the_specs_and_other_sizes_are_refused_by_them() {
        if !ort_available() {
            return;
        }
        let opts = EngineOptions { symbols: BTreeMap::from([("batch".into(), 2)]), ..opts("pinned") };
        let engine = OrtEngine::load(&linear_model(), &opts).unwrap();
        assert_eq!(engine.inputs()[0].shape, vec![Some(2), Some(3)]);
        assert_eq!(engine.outputs()[1].shape, vec![Some(2), Some(2)]);
        let mut session = engine.session().unwrap();
        let ok = session.run(vec![Tensor::from_shape(&[2, 3], &[0f32; 6]).unwrap()]).unwrap();
        assert_eq!(ok[0].shape(), &[2, 2]);
        let other = vec![Tensor::from_shape(&[3, 3], &[0f32; 9]).unwrap()];
        let err = crate::backend::check_inputs(engine.inputs(), &other).unwrap_err();
        assert!(matches!(&err, RuntimeError::BadInput { tensor, .. } if tensor == "X"), "{err}");
        let memory = engine.memory();
        assert_eq!(memory.weights_bytes, linear_model().len() as u64);
        assert!(memory.activations_bytes >= 4 * (6 + 4 + 4) * 4, "{memory:?}");
    }

    #[test]
    fn sessions_run_concurrently_on_their_own_threads() {
        if !ort_available() {
            return;
        }
        let engine: Arc<dyn Engine> = Arc::new(OrtEngine::load(&linear_model(), &opts("threads")).unwrap());
        let workers: Vec<_> = (0..3)
            .map(|i| {
                let mut session = engine.session().unwrap();
                std::thread::spawn(move || {
                    let x = Tensor::from_shape(&[1, 3], &[i as f32, 1.0, 2.0]).unwrap();
                    (0..50).map(|_| session.run(vec![x.clone()]).unwrap()).last()
                })
            })
            .collect();
        let results: Vec<_> = workers.into_iter().map(|w| w.join().unwrap().unwrap()).collect();
        let tract = TractEngine::load(&linear_model(), &opts("threads")).unwrap();
        for (i, got) in results.iter().enumerate() {
            let x = Tensor::from_shape(&[1, 3], &[i as f32, 1.0, 2.0]).unwrap();
            assert_close(&got[0], &tract.session().unwrap().run(vec![x]).unwrap()[0]);
        }
    }

    /// Runs in a child process: the library can be loaded once per process, and the parent may
    /// already have loaded the real one.
    #[test]
    fn missing_library_is_backend_unavailable_with_a_hint_not_a_panic() {
        if std::env::var_os("OUTPOST_ORT_CHILD").is_none() {
            let name = format!("{}::missing_library_is_backend_unavailable_with_a_hint_not_a_panic", module_path!());
            let name = name.trim_start_matches("outpost_runtime::");
            let status = std::process::Command::new(std::env::current_exe().unwrap())
                .args([name, "--exact", "--nocapture"])
                .env("OUTPOST_ORT_CHILD", "1")
                .status()
                .unwrap();
            assert!(status.success(), "the child test failed: {status}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let not_a_library = dir.path().join(LIBRARY);
        std::fs::write(&not_a_library, b"not an ELF file").unwrap();
        for path in [dir.path().join("absent").join(LIBRARY), not_a_library] {
            let opts = EngineOptions { ort_library: Some(path.clone()), ..opts("missing") };
            match OrtEngine::load(&linear_model(), &opts) {
                Err(RuntimeError::BackendUnavailable { backend, reason }) => {
                    assert_eq!(backend, "onnxruntime");
                    assert!(reason.contains(&*path.to_string_lossy()), "{reason}");
                    assert!(reason.contains("ORT_DYLIB_PATH") && reason.contains("fetch-models.sh --ort"), "{reason}");
                }
                other => panic!("expected BackendUnavailable, got {other:?}"),
            }
        }
    }

    #[test]
    fn an_explicit_library_is_the_only_candidate() {
        let cwd = Path::new("/srv/app");
        let none = |_: &Path| -> bool { panic!("an explicit choice must not search") };
        let only = |option: Option<&Path>, env: Option<&str>| {
            library_candidates(option, env.map(OsStr::new), Some(cwd), None, &none)
        };
        let explicit = only(Some(Path::new("/opt/ort/libonnxruntime.so")), Some("/elsewhere.so"));
        assert_eq!(explicit, [Candidate { path: "/opt/ort/libonnxruntime.so".into(), origin: Origin::EngineOption }]);
        let from_env = only(None, Some("lib/libonnxruntime.so"));
        assert_eq!(from_env, [Candidate { path: "/srv/app/lib/libonnxruntime.so".into(), origin: Origin::EnvVar }]);
        let bare = only(None, Some("libonnxruntime.so.1"));
        assert_eq!(bare, [Candidate { path: "libonnxruntime.so.1".into(), origin: Origin::EnvVar }]);
    }

    #[test]
    fn without_a_choice_we_search_the_work_dir_then_the_executables_ancestors_then_the_system() {
        let present = [
            Path::new("/w/target/onnxruntime/lib/libonnxruntime.so"),
            Path::new("/opt/outpost/onnxruntime/lib/libonnxruntime.so"),
        ];
        let exists = |p: &Path| present.contains(&p);
        let exe = Path::new("/w/target/release/outpost");
        let found = library_candidates(None, Some(OsStr::new("")), Some(Path::new("/w")), Some(exe), &exists);
        let paths: Vec<&Path> = found.iter().map(|c| c.path.as_path()).collect();
        assert_eq!(paths, [present[0], Path::new("libonnxruntime.so"), Path::new("libonnxruntime.so.1")]);
        let installed = Path::new("/opt/outpost/bin/outpost");
        let found = library_candidates(None, None, Some(Path::new("/tmp")), Some(installed), &exists);
        assert_eq!(found[0], Candidate { path: present[1].into(), origin: Origin::Search });
        assert_eq!(found[1].origin, Origin::System);
    }

    #[test]
    fn activation_estimate_is_four_times_the_io_bytes() {
        let spec = |dtype, shape: &[Option<usize>]| IoSpec { name: "t".into(), dtype, shape: shape.to_vec() };
        let io = [spec(DType::F32, &[None, Some(3)]), spec(DType::U8, &[Some(2), Some(5)])];
        assert_eq!(activation_estimate(&io[..1], &io[1..]), 4 * (12 + 10));
    }

    /// Prints p50 latencies of both backends on the test model, or on `OUTPOST_BENCH_MODEL` with
    /// symbols from `OUTPOST_BENCH_SYMBOLS` (`batch=1,height=320`); variable dimensions become 1.
    #[test]
    #[ignore = "a measurement: cargo test --release -p outpost-runtime latency -- --ignored --nocapture"]
    fn latency_of_onnxruntime_and_tract() {
        if !ort_available() {
            return;
        }
        let path = std::env::var_os("OUTPOST_BENCH_MODEL");
        let onnx = path.as_ref().map(|p| std::fs::read(p).unwrap()).unwrap_or_else(linear_model);
        let symbols = std::env::var("OUTPOST_BENCH_SYMBOLS").unwrap_or_default();
        let symbols =
            symbols.split(',').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.into(), v.parse().unwrap()));
        let opts = EngineOptions { symbols: symbols.collect(), ..opts("bench") };
        for kind in [BackendKind::Tract, BackendKind::Onnxruntime] {
            let engine = match crate::backend::load_engine(kind, &onnx, &opts) {
                Ok(e) => e,
                Err(e) => {
                    println!("{kind}: cannot load: {e}");
                    continue;
                }
            };
            let inputs: Vec<Tensor> = engine
                .inputs()
                .iter()
                .map(|s| {
                    let shape: Vec<usize> = s.shape.iter().map(|d| d.unwrap_or(1)).collect();
                    Tensor::zero_dt(crate::tensor::datum_type(s.dtype), &shape).unwrap()
                })
                .collect();
            let mut session = engine.session().unwrap();
            (0..50).for_each(|_| drop(session.run(inputs.clone()).unwrap()));
            let mut times: Vec<f64> = (0..1000)
                .map(|_| {
                    let started = Instant::now();
                    session.run(inputs.clone()).unwrap();
                    started.elapsed().as_secs_f64() * 1e6
                })
                .collect();
            times.sort_by(f64::total_cmp);
            println!("{kind}: p50 {:.1} µs, p90 {:.1} µs over 1000 runs", times[500], times[900]);
        }
    }
}
