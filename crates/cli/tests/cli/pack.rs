//! `outpost model pack` with default flags on models whose dimensions vary per request.

use super::outpost;
use outpost_proto::manifest::{BackendChoice, Dim, DimRange};
use outpost_runtime::model::MemoryBudget;
use outpost_runtime::{LoadOptions, LoadedModel, Package, Tensor};
use outpost_train::onnx::{attr_int, encode, GraphBuilder};
use std::path::Path;

/// `y[b] = sum(frames[b, :]) * 2` over any number of samples that is a multiple of 64 (the
/// Reshape refuses others), like an audio front end cutting fixed frames.
fn framed_sum() -> Vec<u8> {
    let sym = |s: &str| Dim::Symbol(s.into());
    let mut g = GraphBuilder::new("framed");
    g.input_f32("samples", &[sym("batch"), sym("length")]);
    g.output_f32("energy", &[sym("batch")]);
    let frames = g.constant_i64("frame_shape", &[3], &[0, -1, 64]);
    let two = g.constant_f32("two", &[1], &[2.0]);
    let axes = g.constant_i64("axes", &[2], &[1, 2]);
    g.node("Reshape", &["samples", &frames], "frames", vec![]);
    g.node("Mul", &["frames", &two], "doubled", vec![]);
    g.node("ReduceSum", &["doubled", &axes], "energy", vec![attr_int("keepdims", 0)]);
    encode(&g.finish("framed sum").unwrap())
}

fn pack(dir: &Path, onnx: &[u8], extra: &[&str]) -> (bool, String, std::path::PathBuf) {
    let file = dir.join("framed.onnx");
    std::fs::write(&file, onnx).unwrap();
    let out = dir.join(format!("framed-{}.opkg", extra.len()));
    let mut args = vec!["model", "pack", file.to_str().unwrap(), "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (ok, text) = outpost(&args);
    (ok, text, out)
}

fn load(path: &Path) -> LoadedModel {
    let pkg = Package::open(path).unwrap();
    LoadedModel::load(&pkg, &LoadOptions::default(), &MemoryBudget::new(1 << 30)).unwrap()
}

#[test]
fn default_pack_keeps_dimensions_dynamic_and_finds_sizes_the_model_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, text, out) = pack(dir.path(), &framed_sum(), &[]);
    assert!(ok, "{text}");
    assert!(!text.contains("panicked"), "{text}");
    assert!(text.contains("self-test inputs are generated (samples)"), "{text}");
    let pkg = Package::open(&out).unwrap();
    let m = &pkg.manifest;
    assert!(m.symbols.is_empty(), "nothing pinned: {:?}", m.symbols);
    assert_eq!(m.ranges["batch"], DimRange::default());
    assert_eq!(m.ranges["length"], DimRange::default());
    assert_eq!(m.model.backend, BackendChoice::Auto);
    assert!(m.model.preferred.is_some());
    // Sizes below 64 fail in the Reshape: the recorded cases use sizes the model took, two of them.
    let golden = pkg.selftest().unwrap().unwrap();
    let shapes: Vec<&[usize]> = golden.cases.iter().map(|c| c.inputs[0].shape.as_slice()).collect();
    assert_eq!(shapes, [&[1, 64][..], &[2, 128][..]]);
    assert_eq!(golden.synthetic, ["samples"]);

    let model = load(&out);
    assert_eq!(model.inputs()[0].oip_shape(), [-1, -1]);
    for (batch, len) in [(1usize, 64usize), (3, 640), (2, 6400)] {
        let data: Vec<f32> = (0..batch * len).map(|i| (i % 7) as f32).collect();
        let x = Tensor::from_shape(&[batch, len], &data).unwrap();
        let done = model.infer_blocking(vec![x]).unwrap();
        let y = done.result.unwrap();
        let got = outpost_runtime::tensor::values::<f32>(&y[0]).unwrap().to_vec();
        let want: Vec<f32> = data.chunks(len).map(|row| row.iter().sum::<f32>() * 2.0).collect();
        assert_eq!(got, want, "batch {batch}, length {len}");
    }
}

#[test]
fn bounds_and_pins_are_enforced_as_client_errors_naming_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, text, out) = pack(dir.path(), &framed_sum(), &["--dim", "length=64..=256", "--symbol", "batch=1"]);
    assert!(ok, "{text}");
    let m = Package::open(&out).unwrap().manifest;
    assert_eq!(m.ranges["length"], DimRange { min: 64, max: Some(256) });
    assert_eq!(m.symbols["batch"], 1);
    let model = load(&out);
    assert_eq!(model.inputs()[0].oip_shape(), [1, -1]);
    let run = |shape: &[usize]| {
        let x = Tensor::zero::<f32>(shape).unwrap();
        model.infer_blocking(vec![x]).map(|d| d.result.is_ok())
    };
    assert!(run(&[1, 192]).unwrap());
    for (shape, says) in [(&[1usize, 320][..], "64..=256"), (&[2, 128][..], "must be 1")] {
        let err = run(shape).unwrap_err();
        assert!(err.is_client_error(), "{err}");
        assert!(err.to_string().contains("input `samples`") && err.to_string().contains(says), "{err}");
    }

    // Pinning the length warns and says how to keep it dynamic.
    let (ok, text, _) = pack(dir.path(), &framed_sum(), &["--symbol", "length=128"]);
    assert!(ok, "{text}");
    assert!(text.contains("pins a non-batch dimension") && text.contains("--dim length="), "{text}");
    let (ok, text, _) = pack(dir.path(), &framed_sum(), &["--dim", "nope=1..=3"]);
    assert!(!ok && text.contains("--dim nope") && text.contains("length"), "{text}");
}

#[test]
fn real_inputs_become_the_self_test() {
    let dir = tempfile::tempdir().unwrap();
    let case = dir.path().join("case");
    std::fs::create_dir_all(&case).unwrap();
    let data: Vec<f32> = (0..192).map(|i| i as f32 / 10.0).collect();
    let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(case.join("samples.bin"), raw).unwrap();
    let index = r#"[{"name": "samples", "dtype": "float32", "shape": [1, 192], "file": "samples.bin"}]"#;
    std::fs::write(case.join("inputs.json"), index).unwrap();
    let (ok, text, out) = pack(dir.path(), &framed_sum(), &["--inputs", case.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(!text.contains("generated"), "{text}");
    let golden = Package::open(&out).unwrap().selftest().unwrap().unwrap();
    assert_eq!(golden.cases.len(), 1);
    assert!(golden.synthetic.is_empty());
    assert_eq!(golden.cases[0].inputs[0].shape, [1, 192]);
    let want = data.iter().sum::<f32>() * 2.0;
    let got = golden.cases[0].outputs[0].data[0].as_f64().unwrap() as f32;
    assert!((got - want).abs() < 1e-3, "{got} vs {want}");
    load(&out);

    // A dump that does not fit the model is refused at pack time, naming the flag.
    std::fs::write(case.join("inputs.json"), index.replace("samples\",", "other\",")).unwrap();
    let (ok, text, _) = pack(dir.path(), &framed_sum(), &["--inputs", case.to_str().unwrap()]);
    assert!(!ok && text.contains("--inputs") && text.contains("no tensor for input `samples`"), "{text}");
}
