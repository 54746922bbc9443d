//! `outpost model reference` on a package a user packed from their own ONNX file: sample
//! requests (OIP bodies, or raw sensor bodies through `[pre]`) become the statistics the
//! device's drift monitor uses, and bad samples fail naming where they are.

use super::outpost;
use outpost_proto::fleet::drift::DriftStatus;
use outpost_proto::manifest::Dim;
use outpost_runtime::drift::DriftSettings;
use outpost_runtime::model::MemoryBudget;
use outpost_runtime::{LoadOptions, LoadedModel, Package};
use outpost_train::onnx::{attr_int, encode, GraphBuilder};
use std::path::{Path, PathBuf};

/// `y = 2x + 1` and `s = sum(y, axis 1)` over `x: FLOAT [batch, 4]`.
fn affine() -> Vec<u8> {
    let mut g = GraphBuilder::new("affine");
    let x = g.input_f32("x", &[Dim::Symbol("batch".into()), Dim::Fixed(4)]);
    let a = g.constant_f32("scale", &[1], &[2.0]);
    let b = g.constant_f32("bias", &[1], &[1.0]);
    let axes = g.constant_i64("axes", &[1], &[1]);
    let m = g.node("Mul", &[&x, &a], "scaled", vec![]);
    let y = g.node("Add", &[&m, &b], "y", vec![]);
    g.node("ReduceSum", &[&y, &axes], "s", vec![attr_int("keepdims", 0)]);
    g.output_f32("y", &[Dim::Symbol("batch".into()), Dim::Fixed(4)]);
    g.output_f32("s", &[Dim::Symbol("batch".into())]);
    encode(&g.finish("affine").unwrap())
}

/// A fixed stream of uniforms in [0, 1).
struct Stream(u64);

impl Stream {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Feature `c` of a row: uniform around `c` (width 1), times `gain`.
    fn row(&mut self, gain: f64) -> Vec<f32> {
        (0..4).map(|c| ((c as f64 + self.next() - 0.5) * gain) as f32).collect()
    }
}

fn oip(row: &[f32]) -> String {
    serde_json::json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": row}]}).to_string()
}

fn pack(dir: &Path, partial: Option<&str>) -> PathBuf {
    let onnx = dir.join("affine.onnx");
    std::fs::write(&onnx, affine()).unwrap();
    let out = dir.join("affine-1.opkg");
    let mut args = vec!["model", "pack", onnx.to_str().unwrap(), "--name", "affine", "-o", out.to_str().unwrap()];
    let part = dir.join("part.toml");
    if let Some(p) = partial {
        std::fs::write(&part, p).unwrap();
        args.extend(["--manifest", part.to_str().unwrap()]);
    }
    let (ok, text) = outpost(&args);
    assert!(ok, "{text}");
    out
}

#[test]
fn oip_samples_make_a_reference_the_device_scores_drift_against() {
    let dir = tempfile::tempdir().unwrap();
    let opkg = pack(dir.path(), None);
    assert!(Package::open(&opkg).unwrap().manifest.reference.is_none(), "pack alone writes none");
    let mut rows = Stream(0x2545_f491_4f6c_dd1d);
    let lines: Vec<String> = (0..600).map(|_| oip(&rows.row(1.0))).collect();
    let samples = dir.path().join("requests.jsonl");
    std::fs::write(&samples, lines.join("\n") + "\n\n").unwrap();
    let (ok, text) = outpost(&["model", "reference", opkg.to_str().unwrap(), "--samples", samples.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(text.contains("from 600 requests (600 model runs)"), "{text}");
    assert!(
        text.contains("input x: 4 channels along axis 1") && text.contains("output s: all values pooled"),
        "{text}"
    );

    let pkg = Package::open(&opkg).unwrap();
    let r = pkg.manifest.reference.clone().expect("the package now carries a reference");
    let x = &r.inputs["x"];
    assert_eq!((x.count, x.axis), (600, Some(1)));
    for c in 0..4 {
        assert!((x.mean[c] - c as f64).abs() < 0.05, "x[{c}]: {x:?}");
        assert!((x.std[c] - (1.0f64 / 12.0).sqrt()).abs() < 0.03, "uniform of width 1: {x:?}");
    }
    let y = &r.outputs["y"];
    assert!((y.mean[3] - 7.0).abs() < 0.1, "y = 2x + 1 of the model's answers: {y:?}");
    assert!((r.outputs["s"].mean[0] - 16.0).abs() < 0.2, "{:?}", r.outputs["s"]);

    // The device: the same data scores ok, a gain of 1.5 on every feature raises the alert.
    let opts = LoadOptions {
        drift: DriftSettings { window_samples: 300, ..DriftSettings::default() },
        ..LoadOptions::default()
    };
    let model = LoadedModel::load(&pkg, &opts, &MemoryBudget::new(1 << 30)).unwrap();
    assert!(model.drift().has_reference());
    let mut window = |gain: f64| {
        for _ in 0..300 {
            let row = serde_json::json!(rows.row(gain));
            let x = outpost_runtime::tensor::tensor_from_json("x", outpost_proto::DType::F32, &[1, 4], &row).unwrap();
            model.infer_blocking(vec![x]).unwrap().result.unwrap();
        }
        model.drift().poll().pop().expect("a window of 300 closed")
    };
    let same = window(1.0);
    assert_eq!(same.status, DriftStatus::Ok, "{same:?}");
    let moved = window(1.5);
    assert_eq!(moved.status, DriftStatus::Alert, "{moved:?}");
}

#[test]
fn raw_sensor_bodies_go_through_the_pipeline_and_bad_samples_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let pre = "[pre]\nkind = \"sensor\"\nchannels = 1\nwindow = 4\nlayout = \"flat\"\n";
    let opkg = pack(dir.path(), Some(pre));
    let bodies = dir.path().join("bodies");
    std::fs::create_dir_all(&bodies).unwrap();
    for i in 0..5 {
        let series: Vec<f64> = (0..8).map(|k| f64::from(i * 8 + k) / 10.0).collect();
        std::fs::write(bodies.join(format!("{i}.json")), serde_json::json!({"channels": [series]}).to_string())
            .unwrap();
    }
    std::fs::write(bodies.join(".hidden"), b"ignored").unwrap();
    let out = dir.path().join("with-reference.opkg");
    let args = ["model", "reference", opkg.to_str().unwrap(), "--samples", bodies.to_str().unwrap()];
    let (ok, text) = outpost(&[&args[..], &["-o", out.to_str().unwrap()]].concat());
    assert!(ok, "{text}");
    assert!(text.contains("from 5 requests (10 model runs)"), "two windows of 4 per body: {text}");
    assert!(text.contains("reference this small is coarse"), "{text}");
    let x = Package::open(&out).unwrap().manifest.reference.unwrap().inputs["x"].clone();
    assert!((x.mean.iter().sum::<f64>() / 4.0 - 1.95).abs() < 1e-6, "the values 0.0..3.9: {x:?}");
    assert!(Package::open(&opkg).unwrap().manifest.reference.is_none(), "--out leaves the input alone");

    // A garbage line, a tensor of the wrong shape, a body the pipeline refuses: named, nothing written.
    let cases = [
        ("bad.jsonl", format!("{}\nnot json at all\n", oip(&[1.0, 2.0, 3.0, 4.0])), "bad.jsonl:2"),
        (
            "shape.jsonl",
            r#"{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}"#.to_string(),
            "shape.jsonl:1",
        ),
        ("short.json", r#"{"channels": [[1, 2]]}"#.to_string(), "short.json"),
    ];
    for (file, body, named) in cases {
        let path = dir.path().join(file);
        std::fs::write(&path, body).unwrap();
        let failed = dir.path().join("failed.opkg");
        let (ok, text) = outpost(&[
            "model",
            "reference",
            opkg.to_str().unwrap(),
            "--samples",
            path.to_str().unwrap(),
            "-o",
            failed.to_str().unwrap(),
        ]);
        assert!(!ok, "{file}: {text}");
        assert!(text.contains(named), "{file}: {text}");
        assert!(!failed.exists(), "{file}: nothing written");
    }
    let (ok, text) = outpost(&["model", "reference", opkg.to_str().unwrap(), "--samples", "/nonexistent"]);
    assert!(!ok && text.contains("/nonexistent"), "{text}");
    // A directory package is never replaced in place.
    let as_dir = dir.path().join("affine-dir");
    Package::open(&opkg).unwrap().write_dir(&as_dir).unwrap();
    let (ok, text) = outpost(&["model", "reference", as_dir.to_str().unwrap(), "--samples", bodies.to_str().unwrap()]);
    assert!(!ok && text.contains("never overwritten"), "{text}");
}

#[test]
fn pack_takes_the_reference_samples_in_one_step() {
    let dir = tempfile::tempdir().unwrap();
    let opkg = pack(dir.path(), None);
    let mut rows = Stream(0x9e37_79b9_7f4a_7c15);
    let lines: Vec<String> = (0..200).map(|_| oip(&rows.row(1.0))).collect();
    let samples = dir.path().join("requests.jsonl");
    std::fs::write(&samples, lines.join("\n")).unwrap();
    let (ok, text) = outpost(&["model", "reference", opkg.to_str().unwrap(), "--samples", samples.to_str().unwrap()]);
    assert!(ok, "{text}");
    let two_steps = Package::open(&opkg).unwrap().manifest.reference.unwrap();

    let onnx = dir.path().join("affine.onnx");
    let one = dir.path().join("one-step.opkg");
    let pack_with = |samples: &Path, out: &Path| {
        outpost(&[
            "model",
            "pack",
            onnx.to_str().unwrap(),
            "--name",
            "affine",
            "--reference-samples",
            samples.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ])
    };
    let (ok, text) = pack_with(&samples, &one);
    assert!(ok, "{text}");
    assert!(text.contains("reference statistics from 200 requests (200 model runs)"), "{text}");
    assert_eq!(Package::open(&one).unwrap().manifest.reference.unwrap(), two_steps, "the same statistics");

    // A bad sample fails the pack, naming it, and writes no package.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, format!("{}\n{{\"inputs\": 7}}\n", lines[0])).unwrap();
    let failed = dir.path().join("failed.opkg");
    let (ok, text) = pack_with(&bad, &failed);
    assert!(!ok && text.contains("bad.jsonl:2") && text.contains("--reference-samples"), "{text}");
    assert!(!failed.exists());
}
