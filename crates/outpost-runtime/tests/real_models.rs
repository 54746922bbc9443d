//! The models users bring (issue #10), on both backends, against onnxruntime's own answers.
//!
//! `scripts/make-test-models.sh` writes one directory per model under
//! `$OUTPOST_TEST_MODELS` (default `target/models/generated` in the workspace): `model.onnx` and
//! `case0/`, `case1/`, ... whose `inputs.json` / `outputs.json` index raw little-endian tensors,
//! the outputs recorded from onnxruntime (Python, one thread). Every model is loaded the way a
//! device loads a package that pins nothing (default `EngineOptions`: dynamic dimensions stay
//! dynamic) and every case must fit the engine's declared inputs and reproduce the recorded
//! outputs within rtol 1e-3 / atol 1e-4 (integers exactly), in four rounds: the repeats make
//! tract compile plans specialised to the case shapes, and the last round runs on them.
//!
//! onnxruntime must load and match every model. tract may refuse a model only because the graph
//! uses operators it lacks (com.microsoft contrib ops, say), and must then say "unsupported";
//! any other load error, a run failure, a panic or a wrong answer is a failure. All models are
//! checked before the test fails, and a table of what loaded where is printed either way.

use outpost_runtime::backend::{self, BackendKind, EngineOptions};
use outpost_runtime::bench::{self, load_raw_inputs};
use outpost_runtime::tensor::{dtype_of, values};
use outpost_runtime::{RuntimeError, Tensor};
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

const RTOL: f64 = 1e-3;
const ATOL: f64 = 1e-4;

/// Models the generation scripts in this repository write; each must be present.
const EXPECTED: &[&str] = &[
    "encoder",
    "encoder-ortopt",
    "encoder-int8",
    "ocr-lstm",
    "ocr-lstm-int8",
    "oww-melspec",
    "oww-embedding",
    "ppocr-cls",
    "ppocr-rec",
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The generated-models directory, or `None` (after saying why) when it is missing outside CI.
fn models_root() -> Option<PathBuf> {
    let root = match std::env::var_os("OUTPOST_TEST_MODELS") {
        // Relative paths are taken from the workspace root, where scripts/test.sh runs.
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target/models/generated"),
    };
    if root.is_dir() {
        return Some(root);
    }
    let why = format!("{} does not exist: run scripts/make-test-models.sh", root.display());
    assert!(std::env::var("CI").as_deref() != Ok("true"), "CI needs the generated test models: {why}");
    eprintln!("note: skipping the real-model tests: {why}");
    None
}

fn model_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.onnx").is_file())
        .collect();
    dirs.sort();
    dirs
}

fn case_dirs(model_dir: &Path) -> Vec<PathBuf> {
    (0..).map(|i| model_dir.join(format!("case{i}"))).take_while(|d| d.is_dir()).collect()
}

/// One entry of `outputs.json`.
/// The recorded outputs of a case, by name, in graph order.
fn load_outputs(case: &Path) -> Result<Vec<(String, Tensor)>, String> {
    bench::load_dump(case, "outputs.json").map_err(|e| e.to_string())
}

/// Why `got` differs from `want` beyond the tolerance, or `None`; also returns the max |Δ|.
fn compare(name: &str, got: &Tensor, want: &Tensor) -> (Option<String>, f64) {
    if got.shape() != want.shape() {
        return (Some(format!("output `{name}`: shape {:?}, onnxruntime gave {:?}", got.shape(), want.shape())), 0.0);
    }
    let (g, w) = (dtype_of(got.datum_type()), dtype_of(want.datum_type()));
    if g != w {
        return (Some(format!("output `{name}`: type {g:?}, onnxruntime gave {w:?}")), 0.0);
    }
    if !want.datum_type().is_float() {
        // Integers, booleans and strings: exactly equal.
        let why = (got != want).then(|| format!("output `{name}`: values differ from onnxruntime's"));
        return (why, 0.0);
    }
    let (Ok(a), Ok(b)) = (got.cast_to::<f64>(), want.cast_to::<f64>()) else {
        return (Some(format!("output `{name}`: cannot read as numbers")), 0.0);
    };
    let (a, b) = (values::<f64>(&a).unwrap_or(&[]), values::<f64>(&b).unwrap_or(&[]));
    let mut worst: Option<(usize, f64, f64)> = None;
    let mut max_abs = 0.0f64;
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let d = (x - y).abs();
        if d.is_nan() || d > ATOL + RTOL * y.abs() {
            worst.get_or_insert((i, *x, *y));
        }
        if d.is_finite() {
            max_abs = max_abs.max(d);
        } else if x != y {
            max_abs = f64::INFINITY;
        }
    }
    let why = worst.map(|(i, x, y)| {
        format!("output `{name}`: element {i} is {x}, onnxruntime gave {y} (max abs Δ {max_abs:.3e}, rtol {RTOL}, atol {ATOL})")
    });
    (why, max_abs)
}

/// What happened to one model on one backend.
enum Outcome {
    /// Every case matched; the largest absolute difference seen.
    Matched { cases: usize, max_abs: f64, specialised: usize },
    /// tract refused a graph that uses operators it lacks (allowed).
    Unsupported(String),
    /// tract types the graph only with the inputs pinned to each case's shapes (allowed).
    PinnedOnly { cases: usize, max_abs: f64 },
    /// The backend is not installed here (outside CI only).
    Unavailable(String),
    /// Anything else.
    Failed(String),
}

impl Outcome {
    fn cell(&self) -> String {
        match self {
            Outcome::Matched { cases, max_abs, specialised: 0 } => {
                format!("ok: {cases} cases, max abs Δ {max_abs:.1e}")
            }
            Outcome::Matched { cases, max_abs, specialised } => {
                format!("ok: {cases} cases, max abs Δ {max_abs:.1e}, {specialised} shape plans")
            }
            Outcome::Unsupported(e) => format!("unsupported (allowed): {}", short(e)),
            Outcome::PinnedOnly { cases, max_abs } => {
                format!("ok pinned only: {cases} cases, max abs Δ {max_abs:.1e}")
            }
            Outcome::Unavailable(e) => format!("skipped: {}", short(e)),
            Outcome::Failed(e) => format!("FAIL: {}", short(e)),
        }
    }
}

fn short(s: &str) -> String {
    let one_line = s.replace('\n', " ");
    match one_line.char_indices().nth(110) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
}

fn check(kind: BackendKind, dir: &Path) -> Outcome {
    let id = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let onnx = match std::fs::read(dir.join("model.onnx")) {
        Ok(b) => b,
        Err(e) => return Outcome::Failed(format!("reading model.onnx: {e}")),
    };
    let cases = case_dirs(dir);
    if cases.is_empty() {
        return Outcome::Failed("no case0/ directory".into());
    }
    let opts = EngineOptions { model_name: id.clone(), ..EngineOptions::default() };
    let engine = match backend::load_engine(kind, &onnx, &opts) {
        Ok(e) => e,
        Err(e @ RuntimeError::BackendUnavailable { .. }) if std::env::var("CI").as_deref() != Ok("true") => {
            return Outcome::Unavailable(e.to_string())
        }
        Err(e) if kind == BackendKind::Tract && e.to_string().to_lowercase().contains("unsupported") => {
            return Outcome::Unsupported(e.to_string())
        }
        // Some graphs (Paddle's shape arithmetic) type only at concrete sizes on tract: allowed
        // when every case then loads pinned to its shapes and matches (a package pins them with
        // --input; under auto, onnxruntime serves them dynamically).
        Err(e) if kind == BackendKind::Tract => return pinned_only(&onnx, &id, &cases, &e.to_string()),
        Err(e) => return Outcome::Failed(format!("load: {e}")),
    };
    // Each case twice, as a client repeating a shape: tract then compiles a plan specialised to
    // it in the background (one at a time, so a due shape starts on its next sighting). Every
    // case then runs again once its plan is ready, and must still match onnxruntime.
    let mut max_abs = 0.0f64;
    for round in 0..4 {
        for case in &cases {
            if round >= 2 && !engine.settle(std::time::Duration::from_secs(300)) {
                return Outcome::Failed("a specialised plan did not compile within 300 s".into());
            }
            match run_case(engine.as_ref(), case) {
                Ok(d) => max_abs = max_abs.max(d),
                Err(e) => return Outcome::Failed(format!("round {round}: {e}")),
            }
        }
    }
    Outcome::Matched { cases: cases.len(), max_abs, specialised: engine.specialised_shapes().len() }
}

fn pinned_only(onnx: &[u8], id: &str, cases: &[PathBuf], dynamic_error: &str) -> Outcome {
    let mut max_abs = 0.0f64;
    for case in cases {
        let inputs = match bench::load_dump(case, "inputs.json") {
            Ok(i) => i,
            Err(e) => return Outcome::Failed(format!("reading inputs: {e}")),
        };
        let input_shapes =
            inputs.iter().map(|(n, t)| (n.clone(), t.shape().iter().map(|d| Some(*d)).collect())).collect();
        let opts = EngineOptions { model_name: id.to_string(), input_shapes, ..EngineOptions::default() };
        let engine = match backend::load_engine(BackendKind::Tract, onnx, &opts) {
            Ok(e) => e,
            Err(e) => return Outcome::Failed(format!("load (dynamic: {dynamic_error}; pinned: {e})")),
        };
        match run_case(engine.as_ref(), case) {
            Ok(d) => max_abs = max_abs.max(d),
            Err(e) => return Outcome::Failed(e),
        }
    }
    Outcome::PinnedOnly { cases: cases.len(), max_abs }
}

/// Runs one case and compares with onnxruntime's recorded outputs; the largest difference.
fn run_case(engine: &dyn backend::Engine, case: &Path) -> Result<f64, String> {
    let cname = case.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let inputs = load_raw_inputs(case).map_err(|e| format!("{cname}: reading inputs: {e}"))?;
    let want = load_outputs(case).map_err(|e| format!("{cname}: reading outputs: {e}"))?;
    // What the agent checks before running: dynamic dims must stay open in the engine's specs.
    backend::check_inputs(engine.inputs(), &inputs)
        .map_err(|e| format!("{cname}: the engine's declared inputs reject the case: {e}"))?;
    let run = catch_unwind(AssertUnwindSafe(|| engine.session().and_then(|mut s| s.run(inputs))));
    let got = match run {
        Ok(Ok(got)) => got,
        Ok(Err(e)) => return Err(format!("{cname}: run: {e}")),
        Err(p) => return Err(format!("{cname}: run panicked: {}", panic_text(p))),
    };
    if got.len() != want.len() {
        return Err(format!("{cname}: {} outputs, onnxruntime gave {}", got.len(), want.len()));
    }
    let mut max_abs = 0.0f64;
    for (i, ((name, w), g)) in want.iter().zip(&got).enumerate() {
        let declared = engine.outputs().get(i).map(|s| s.name.as_str());
        if declared != Some(name.as_str()) {
            return Err(format!("{cname}: output {i} is named {declared:?}, the graph says `{name}`"));
        }
        let (why, d) = compare(name, g, w);
        if let Some(why) = why {
            return Err(format!("{cname}: {why}"));
        }
        max_abs = max_abs.max(d);
    }
    Ok(max_abs)
}

#[test]
fn every_generated_model_matches_onnxruntime_on_both_backends() {
    let Some(root) = models_root() else { return };
    let dirs = model_dirs(&root);
    assert!(!dirs.is_empty(), "{} holds no model directories: run scripts/make-test-models.sh", root.display());
    let mut table = String::from("| model | tract | onnxruntime |\n|---|---|---|\n");
    let mut failures = Vec::new();
    for dir in &dirs {
        let id = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tract = check(BackendKind::Tract, dir);
        let ort = check(BackendKind::Onnxruntime, dir);
        let _ = writeln!(table, "| {id} | {} | {} |", tract.cell(), ort.cell());
        for (kind, outcome) in [(BackendKind::Tract, &tract), (BackendKind::Onnxruntime, &ort)] {
            if let Outcome::Failed(why) = outcome {
                failures.push(format!("{id} on {kind}: {why}"));
            }
        }
    }
    println!("real models under {}:\n{table}", root.display());
    assert!(
        failures.is_empty(),
        "{} of {} model/backend pairs failed:\n{}\n\n{table}",
        failures.len(),
        2 * dirs.len(),
        failures.join("\n")
    );
}

#[test]
fn generated_models_cover_every_kind_issue_10_names() {
    let Some(root) = models_root() else { return };
    let missing: Vec<&str> =
        EXPECTED.iter().copied().filter(|id| !root.join(id).join("model.onnx").is_file()).collect();
    assert!(missing.is_empty(), "{} lacks {missing:?}: re-run scripts/make-test-models.sh", root.display());
    // The scikit-learn models come from their own script; once it is in the tree they must be here.
    if workspace_root().join("scripts/test-models/sklearn.py").is_file() {
        let sklearn = model_dirs(&root)
            .iter()
            .filter(|d| d.file_name().is_some_and(|n| n.to_string_lossy().starts_with("sklearn-")))
            .count();
        assert!(sklearn > 0, "scripts/test-models/sklearn.py exists but {} holds no sklearn-* model", root.display());
    }
    for id in EXPECTED {
        let cases = case_dirs(&root.join(id));
        assert!(cases.len() >= 2, "{id}: {} cases; every model needs at least two sizes", cases.len());
    }
}
