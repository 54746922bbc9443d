//! Loading models from packages, end to end: every way a package or model can be bad gives an
//! error naming the file, model, tensor or figure involved, and never a panic.

use crate::inspect::fixtures::mlp;
use crate::model::MemoryBudget;
use crate::{LoadOptions, LoadedModel, Package, RuntimeError};
use outpost_proto::fleet::device::FailureKind;
use outpost_proto::manifest::{Dim, GoldenCase, Manifest, NamedTensor, SelfTest};
use outpost_proto::DType;

fn manifest(name: &str) -> Manifest {
    let text = format!(
        r#"format = 1
[model]
name = "{name}"
version = "1"
task = "regression"
[[inputs]]
name = "x"
dtype = "FP32"
shape = ["batch", 64]
[[outputs]]
name = "y"
dtype = "FP32"
shape = ["batch", 32]
[symbols]
batch = 1
[files]
"model.onnx" = "{}"
"#,
        "0".repeat(64)
    );
    Manifest::from_toml(&text).unwrap()
}

fn package(onnx: Vec<u8>) -> Package {
    Package::from_parts(manifest("mlp"), vec![("model.onnx".into(), onnx)]).unwrap()
}

fn budget() -> MemoryBudget {
    MemoryBudget::new(256 << 20)
}

#[test]
fn a_good_package_loads_serves_and_pins_the_batch_symbol() {
    let model = LoadedModel::load(&package(mlp()), &LoadOptions::default(), &budget()).unwrap();
    assert_eq!(model.engine.inputs()[0].shape, vec![Some(1), Some(64)]);
    let x = crate::Tensor::from_shape(&[1, 64], &[0.5f32; 64]).unwrap();
    let out = model.infer_blocking(vec![x]).unwrap().result.unwrap();
    assert_eq!(out[0].shape(), &[1, 32]);
}

#[test]
fn a_tampered_file_in_a_package_directory_is_named_with_both_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mlp");
    package(mlp()).write_dir(&path).unwrap();
    let mut bytes = std::fs::read(path.join("model.onnx")).unwrap();
    bytes[100] ^= 1;
    std::fs::write(path.join("model.onnx"), bytes).unwrap();
    let err = Package::open(&path).unwrap_err();
    assert!(matches!(err, RuntimeError::HashMismatch { ref file, .. } if file == "model.onnx"), "{err}");
    assert!(err.to_string().contains("corrupt or was tampered with"));
}

#[test]
fn truncated_garbage_and_escaping_archives_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("mlp.opkg");
    package(mlp()).write_opkg(&good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    for cut in [bytes.len() / 3, bytes.len() - 700, 10] {
        let p = dir.path().join(format!("cut{cut}.opkg"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let err = Package::open(&p).unwrap_err().to_string();
        assert!(err.contains(&format!("cut{cut}.opkg")), "{err}");
    }
    let garbage = dir.path().join("garbage.opkg");
    std::fs::write(&garbage, vec![0xAB; 4096]).unwrap();
    assert!(Package::open(&garbage).is_err());

    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(3);
    header.set_mode(0o644);
    header.set_cksum();
    // `append_data` refuses `..`, so write the name into the header by hand as an attacker would.
    header.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../evil\0\0");
    header.set_cksum();
    builder.append(&header, &b"abc"[..]).unwrap();
    let evil = dir.path().join("evil.opkg");
    std::fs::write(&evil, builder.into_inner().unwrap()).unwrap();
    let err = Package::open(&evil).unwrap_err().to_string();
    assert!(err.contains("escapes the package"), "{err}");
}

#[test]
fn a_malformed_onnx_file_with_matching_hashes_is_a_model_error() {
    for onnx in [b"definitely not protobuf".to_vec(), mlp()[..mlp().len() / 2].to_vec(), Vec::new()] {
        let err = LoadedModel::load(&package(onnx), &LoadOptions::default(), &budget()).unwrap_err();
        assert_eq!(err.failure_kind(), FailureKind::InvalidModel, "{err}");
        assert!(err.to_string().contains("model `mlp@1`"), "{err}");
    }
}

#[test]
fn each_load_failure_has_a_kind_that_update_code_can_branch_on() {
    let dir = tempfile::tempdir().unwrap();
    let kind_of = |path: &std::path::Path| {
        Package::open(path).and_then(|p| LoadedModel::load(&p, &LoadOptions::default(), &budget())).unwrap_err()
    };
    let garbage = dir.path().join("garbage.opkg");
    std::fs::write(&garbage, vec![0xAB; 4096]).unwrap();
    assert_eq!(kind_of(&garbage).failure_kind(), FailureKind::BadPackage);

    let bad_manifest = dir.path().join("bad-manifest");
    std::fs::create_dir(&bad_manifest).unwrap();
    std::fs::write(bad_manifest.join("manifest.toml"), "format = [").unwrap();
    assert_eq!(kind_of(&bad_manifest).failure_kind(), FailureKind::BadManifest);
    let no_manifest = dir.path().join("no-manifest");
    std::fs::create_dir(&no_manifest).unwrap();
    assert_eq!(kind_of(&no_manifest).failure_kind(), FailureKind::BadManifest);
    assert_eq!(kind_of(&dir.path().join("absent")).failure_kind(), FailureKind::Io);

    let tampered = dir.path().join("tampered");
    package(mlp()).write_dir(&tampered).unwrap();
    let mut bytes = std::fs::read(tampered.join("model.onnx")).unwrap();
    bytes[100] ^= 1;
    std::fs::write(tampered.join("model.onnx"), bytes).unwrap();
    assert_eq!(kind_of(&tampered).failure_kind(), FailureKind::HashMismatch);

    // An operator no backend knows: unsupported, on tract alone and under auto (where
    // onnxruntime, when present, refuses it too).
    use crate::inspect::fixtures::{encode, model, node, value};
    use tract_onnx::pb::{tensor_proto::DataType, GraphProto};
    let unknown = encode(&model(GraphProto {
        node: vec![node("NoSuchOperator", &["x"], &["y"])],
        input: vec![value("x", DataType::Float, &[1, 64])],
        output: vec![value("y", DataType::Float, &[1, 32])],
        ..Default::default()
    }));
    let tract = LoadOptions { backend: Some(crate::backend::BackendKind::Tract), ..LoadOptions::default() };
    for opts in [tract, LoadOptions::default()] {
        let err = LoadedModel::load(&package(unknown.clone()), &opts, &budget()).unwrap_err();
        assert_eq!(err.failure_kind(), FailureKind::UnsupportedModel, "{err}");
        assert!(err.to_string().contains("NoSuchOperator"), "{err}");
    }

    let small = MemoryBudget::new(4 << 10);
    let err = LoadedModel::load(&package(mlp()), &LoadOptions::default(), &small).unwrap_err();
    assert_eq!(err.failure_kind(), FailureKind::MemoryBudget);
}

#[test]
fn a_model_over_the_memory_budget_is_refused_with_the_figures() {
    let small = MemoryBudget::new(4 << 10);
    let err = LoadedModel::load(&package(mlp()), &LoadOptions::default(), &small).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RuntimeError::MemoryBudget { .. }), "{msg}");
    assert!(msg.contains("needs an estimated") && msg.contains("of the 0.0 MB budget"), "{msg}");
    assert_eq!(small.used(), 0, "a refused model must not hold budget");

    let fits = budget();
    let model = LoadedModel::load(&package(mlp()), &LoadOptions::default(), &fits).unwrap();
    assert!(fits.used() > 0);
    drop(model);
    assert_eq!(fits.used(), 0, "unloading returns the budget");
}

#[test]
fn golden_vectors_that_do_not_reproduce_fail_the_load_naming_case_and_output() {
    let x = NamedTensor { name: "x".into(), dtype: DType::F32, shape: vec![1, 64], data: vec![0.5.into(); 64] };
    let y = NamedTensor { name: "y".into(), dtype: DType::F32, shape: vec![1, 32], data: vec![123.0.into(); 32] };
    let golden = SelfTest {
        cases: vec![GoldenCase { inputs: vec![x], outputs: vec![y] }],
        synthetic: vec![],
        recorded_with: None,
    };
    let mut m = manifest("mlp");
    m.selftest = Some(outpost_proto::manifest::SelfTestRef { file: "selftest.json".into(), atol: 1e-4, rtol: 1e-3 });
    let files = vec![("model.onnx".into(), mlp()), ("selftest.json".into(), serde_json::to_vec(&golden).unwrap())];
    let pkg = Package::from_parts(m, files).unwrap();
    let err = LoadedModel::load(&pkg, &LoadOptions::default(), &budget()).unwrap_err();
    assert_eq!(err.failure_kind(), FailureKind::SelfTest, "{err}");
    let err = err.to_string();
    assert!(err.contains("self-test failed") && err.contains("case 0") && err.contains("`y`"), "{err}");
    let skip = LoadOptions { run_selftest: false, ..LoadOptions::default() };
    assert!(LoadedModel::load(&pkg, &skip, &budget()).is_ok());
}

#[test]
fn wrong_tensors_are_bad_input_naming_the_tensor() {
    let model = LoadedModel::load(&package(mlp()), &LoadOptions::default(), &budget()).unwrap();
    let cases = [
        (crate::Tensor::from_shape(&[1, 63], &[0f32; 63]).unwrap(), "dimension 1 must be 64, got 63"),
        (crate::Tensor::from_shape(&[1, 64], &[0i64; 64]).unwrap(), "expected datatype FP32"),
    ];
    for (t, needle) in cases {
        let err = model.infer_blocking(vec![t]).unwrap_err();
        assert!(err.is_client_error());
        assert!(err.to_string().contains("input `x`") && err.to_string().contains(needle), "{err}");
    }
    let err = model.infer_blocking(vec![]).unwrap_err().to_string();
    assert!(err.contains("takes 1 inputs, got 0"), "{err}");
}

#[test]
fn a_declared_output_shape_that_disagrees_with_the_graph_is_ignored() {
    // Exporters sometimes leave stale output shapes; tract would refuse to unify them.
    let mut m = manifest("mlp");
    m.symbols.clear();
    let onnx = crate::inspect::fixtures::encode(&{
        use crate::inspect::fixtures::*;
        use tract_onnx::pb::tensor_proto::DataType;
        model(tract_onnx::pb::GraphProto {
            name: "stale".into(),
            node: vec![node("MatMul", &["x", "W"], &["y"])],
            initializer: vec![weights("W", &[64, 32], 0.0)],
            input: vec![value("x", DataType::Float, &[1, 64])],
            output: vec![value("y", DataType::Float, &[1, 7])],
            ..Default::default()
        })
    });
    m.inputs[0].shape = vec![Dim::Fixed(1), Dim::Fixed(64)];
    let pkg = Package::from_parts(m, vec![("model.onnx".into(), onnx)]).unwrap();
    let model = LoadedModel::load(&pkg, &LoadOptions::default(), &budget()).unwrap();
    assert_eq!(model.engine.outputs()[0].shape, vec![Some(1), Some(32)]);
}

#[test]
fn measuring_backends_keeps_one_and_says_why() {
    let opts = LoadOptions { measure_backends: true, ..LoadOptions::default() };
    let model = LoadedModel::load(&package(mlp()), &opts, &budget()).unwrap();
    let reason = model.fallback_reason.clone().unwrap_or_default();
    assert!(reason.starts_with("measured"), "{reason}");
    let x = crate::Tensor::from_shape(&[1, 64], &[0.5f32; 64]).unwrap();
    assert_eq!(model.infer_blocking(vec![x]).unwrap().result.unwrap()[0].shape(), &[1, 32]);
}

/// The process's peak virtual size in KiB (Linux).
/// A `/proc/self/status` figure in KiB (`VmPeak`, `VmHWM`).
fn proc_status_kib(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?.trim().strip_suffix("kB")?.trim().parse().ok()
}

fn vm_peak_kib() -> Option<u64> {
    proc_status_kib("VmPeak")
}

#[test]
fn tar_entry_claiming_a_huge_size_is_refused_without_reserving_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("liar.opkg");
    let mut header = tar::Header::new_gnu();
    header.set_path("model.onnx").unwrap();
    header.set_size(crate::package::MAX_FILE_BYTES - 1);
    header.set_mode(0o644);
    header.set_cksum();
    let mut bytes = header.as_bytes().to_vec();
    bytes.extend_from_slice(&[0u8; 4096]);
    std::fs::write(&path, bytes).unwrap();

    let before = vm_peak_kib();
    let err = Package::open(&path).unwrap_err();
    assert!(matches!(err, RuntimeError::Package { .. }), "{err}");
    // The old reader reserved the 2 GiB the header claims before reading a byte of it.
    if let (Some(before), Some(after)) = (before, vm_peak_kib()) {
        assert!(after.saturating_sub(before) < 1 << 20, "virtual peak grew by {} MiB", (after - before) >> 10);
    }
}

#[test]
fn auto_falls_back_when_the_preferred_backend_is_missing_and_an_explicit_choice_does_not() {
    use crate::backend::BackendKind;
    use outpost_proto::manifest::BackendChoice;
    let missing = LoadOptions { ort_library: Some("/nonexistent/libonnxruntime.so".into()), ..LoadOptions::default() };
    let mut m = manifest("mlp");
    m.model.preferred = Some(BackendChoice::Onnxruntime);
    let pkg = Package::from_parts(m.clone(), vec![("model.onnx".into(), mlp())]).unwrap();
    let model = LoadedModel::load(&pkg, &missing, &budget()).unwrap();
    assert_eq!(model.backend(), BackendKind::Tract);
    let reason = model.fallback_reason.clone().unwrap_or_default();
    assert!(reason.starts_with("onnxruntime:") && reason.contains("/nonexistent"), "{reason}");

    m.model.backend = BackendChoice::Onnxruntime;
    let pkg = Package::from_parts(m, vec![("model.onnx".into(), mlp())]).unwrap();
    let err = LoadedModel::load(&pkg, &missing, &budget()).unwrap_err();
    assert!(matches!(err, RuntimeError::BackendUnavailable { .. }), "{err}");
}

#[test]
fn a_dynamic_model_that_fits_only_without_shape_plans_loads_without_them() {
    let mut m = manifest("mlp");
    m.symbols.clear();
    let pkg = Package::from_parts(m, vec![("model.onnx".into(), mlp())]).unwrap();
    let tract = LoadOptions { backend: Some(crate::backend::BackendKind::Tract), ..LoadOptions::default() };
    let used = |opts: &LoadOptions| {
        let roomy = budget();
        let _model = LoadedModel::load(&pkg, opts, &roomy).unwrap();
        roomy.used()
    };
    let with_plans = used(&tract);
    let lean = used(&LoadOptions { shape_plans: 0, ..tract.clone() });
    assert!(with_plans > lean, "shape plans count in the estimate: {with_plans} vs {lean}");

    let tight = MemoryBudget::new(lean + (with_plans - lean) / 2);
    let model = LoadedModel::load(&pkg, &tract, &tight).unwrap();
    assert_eq!(tight.used(), lean, "loaded without the plans it has no room for");
    for _ in 0..3 {
        let x = crate::Tensor::from_shape(&[2, 64], &[0.5f32; 128]).unwrap();
        assert_eq!(model.infer_blocking(vec![x]).unwrap().result.unwrap()[0].shape(), &[2, 32]);
    }
    assert!(model.engine.settle(std::time::Duration::from_secs(10)));
    assert!(model.engine.specialised_shapes().is_empty());
}

/// A tar with the package's manifest and model, then `extra` entries written from readers.
fn tar_with(path: &std::path::Path, extra: Vec<(&str, u64, Box<dyn std::io::Read>)>) {
    let pkg = package(mlp());
    let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut append = |name: &str, size: u64, data: &mut dyn std::io::Read| {
        let mut header = tar::Header::new_gnu();
        header.set_size(size);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, data).unwrap();
    };
    let manifest = pkg.manifest.to_toml();
    append("manifest.toml", manifest.len() as u64, &mut manifest.as_bytes());
    append("model.onnx", pkg.model_bytes().len() as u64, &mut pkg.model_bytes());
    for (name, size, mut data) in extra {
        append(name, size, &mut data);
    }
    builder.finish().unwrap();
}

#[test]
fn entries_the_manifest_does_not_list_are_skipped_unread_and_a_listed_one_twice_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    use std::io::Read as _;
    let junk_bytes = 256u64 << 20;
    let with_junk = dir.path().join("junk.opkg");
    tar_with(&with_junk, vec![("junk.bin", junk_bytes, Box::new(std::io::repeat(7).take(junk_bytes)))]);
    let before = proc_status_kib("VmHWM");
    let pkg = Package::open(&with_junk).unwrap();
    assert_eq!(pkg.size_bytes(), mlp().len() as u64, "only listed files are kept");
    if let (Some(before), Some(after)) = (before, proc_status_kib("VmHWM")) {
        assert!(after.saturating_sub(before) < (junk_bytes >> 10) / 2, "peak RSS grew {} KiB", after - before);
    }

    let twice = dir.path().join("twice.opkg");
    let evil = b"not the model".to_vec();
    tar_with(&twice, vec![("model.onnx", evil.len() as u64, Box::new(std::io::Cursor::new(evil)))]);
    let err = Package::open(&twice).unwrap_err();
    assert!(err.to_string().contains("`model.onnx` appears twice"), "{err}");
    assert_eq!(err.failure_kind(), FailureKind::BadPackage);
}
