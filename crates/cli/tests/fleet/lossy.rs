//! Lossy releases (`model delta lossy`, `model publish --delta-bits`): a classifier's
//! fine-tune rounded to 8 bits per weight, measured, re-tested, sent as codes that rebuild its
//! exact bytes, and published through a real server; too few bits are refused.

use super::{cli, start_server};
use outpost_proto::manifest::Dim;
use outpost_runtime::model::MemoryBudget;
use outpost_runtime::{LoadOptions, LoadedModel, Package};
use outpost_train::onnx::{encode, GraphBuilder};
use std::path::{Path, PathBuf};

const IN: usize = 256;
const CLASSES: usize = 16;

/// Deterministic values in [-1, 1).
fn noise(seed: u64, n: usize) -> Vec<f64> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f64 / (1u64 << 24) as f64) * 2.0 - 1.0
        })
        .collect()
}

/// `logits = x · W + b`.
fn classifier(w: &[f64], b: &[f64]) -> Vec<u8> {
    let mut g = GraphBuilder::new("clf");
    g.input_f32("x", &[Dim::Fixed(1), Dim::Fixed(IN as i64)]);
    g.output_f32("logits", &[Dim::Fixed(1), Dim::Fixed(CLASSES as i64)]);
    let w = g.constant_f32("w", &[IN, CLASSES], w);
    let b = g.constant_f32("b", &[CLASSES], b);
    g.node("MatMul", &["x", &w], "xw", vec![]);
    g.node("Add", &["xw", &b], "logits", vec![]);
    encode(&g.finish("classifier").unwrap())
}

/// The CLI without a server: (success, stdout + stderr).
fn outpost(args: &[&str]) -> (bool, String) {
    let (ok, out, err) = cli("http://127.0.0.1:9", "none", args);
    (ok, out + &err)
}

fn pack(dir: &Path, onnx: &[u8], version: &str) -> PathBuf {
    let file = dir.join(format!("clf-{version}.onnx"));
    std::fs::write(&file, onnx).unwrap();
    let out = dir.join(format!("clf-{version}.opkg"));
    let (ok, text) = outpost(&[
        "model",
        "pack",
        file.to_str().unwrap(),
        "--name",
        "clf",
        "--version",
        version,
        "--task",
        "classification",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    out
}

/// Eval cases `case-N/` with one input row and the trained model's class as its label.
fn eval_set(dir: &Path, w: &[f64], b: &[f64], n: usize) -> PathBuf {
    let root = dir.join("eval");
    for case in 0..n {
        let x = noise(1000 + case as u64, IN);
        let logits: Vec<f64> =
            (0..CLASSES).map(|c| b[c] + (0..IN).map(|i| x[i] * w[i * CLASSES + c]).sum::<f64>()).collect();
        let label = (0..CLASSES).max_by(|&p, &q| logits[p].total_cmp(&logits[q])).unwrap();
        let d = root.join(format!("case-{case:03}"));
        std::fs::create_dir_all(&d).unwrap();
        let raw: Vec<u8> = x.iter().flat_map(|v| (*v as f32).to_le_bytes()).collect();
        std::fs::write(d.join("x.bin"), raw).unwrap();
        let index = serde_json::json!([{"name": "x", "dtype": "float32", "shape": [1, IN], "file": "x.bin"}]);
        std::fs::write(d.join("inputs.json"), index.to_string()).unwrap();
        std::fs::write(d.join("labels.json"), format!("[{label}]")).unwrap();
    }
    root
}

#[test]
fn a_lossy_release_keeps_the_classes_passes_its_self_test_and_ships_as_codes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (w1, b1) = (noise(1, IN * CLASSES), noise(2, CLASSES));
    // A heavy fine-tune: every weight moved, by up to half the weights' range, so the trained
    // model's classes differ from the base's and rounding too coarsely shows.
    let w2: Vec<f64> = w1.iter().zip(noise(3, IN * CLASSES)).map(|(w, n)| w + 0.5 * n).collect();
    let b2: Vec<f64> = b1.iter().zip(noise(4, CLASSES)).map(|(b, n)| b + 0.5 * n).collect();
    let (v1, v2) = (pack(d, &classifier(&w1, &b1), "1"), pack(d, &classifier(&w2, &b2), "2"));
    let eval = eval_set(d, &w2, &b2, 200);
    let lossy = d.join("clf-2-q8.opkg");
    let p = |x: &Path| x.to_str().unwrap().to_string();
    let lossy_release = |bits: &str, out: &Path, extra: &[&str]| {
        let mut args = vec!["model", "delta", "lossy", "--bits", bits];
        let (v1, v2, eval, out) = (p(&v1), p(&v2), p(&eval), p(out));
        args.extend(["--base", &v1, "--new", &v2, "--eval", &eval, "-o", &out]);
        args.extend_from_slice(extra);
        outpost(&args)
    };
    let (ok, text) = lossy_release("8", &lossy, &[]);
    assert!(ok, "{text}");
    let report: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(report["cases"], 200 + 2, "the eval cases and the package's self-test cases: {report}");
    assert_eq!(report["tensors"], 2, "w and b are rounded: {report}");
    assert!(report["disagreement_pct"].as_f64().unwrap() <= 0.5, "{report}");
    let (trained, rounded) = (report["accuracy"][0].as_f64().unwrap(), report["accuracy"][1].as_f64().unwrap());
    assert_eq!(trained, 100.0, "labels are the trained model's classes");
    assert!(rounded >= 99.5, "{report}");

    // The rounded package carries its hints and a self-test recorded from the rounded model.
    let pkg = Package::open(&lossy).unwrap();
    assert!(pkg.file(outpost_delta::quant::HINTS_FILE).is_some());
    assert_ne!(pkg.model_bytes(), Package::open(&v2).unwrap().model_bytes());
    LoadedModel::load(&pkg, &LoadOptions::default(), &MemoryBudget::new(1 << 30)).expect("its self-test passes");

    // Against v1 it ships as codes, far below the lossless delta of the trained weights, and
    // the device's rebuild is the published package byte for byte.
    let delta = |new: &Path, out: &str| -> u64 {
        let (ok, text) =
            outpost(&["model", "delta", "make", "--base", &p(&v1), "--new", &p(new), "--out", &p(&d.join(out))]);
        assert!(ok, "{text}");
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["total"].as_u64().unwrap()
    };
    let (q, lossless) = (delta(&lossy, "q8"), delta(&v2, "lossless"));
    assert!(q * 4 < lossless * 3, "8-bit {q} vs lossless {lossless}");
    let plan = std::fs::read(d.join("q8/plan")).unwrap();
    let plan = outpost_delta::Plan::from_bytes(&plan).unwrap();
    assert!(plan.steps.iter().any(
        |s| matches!(s, outpost_delta::Step::Blob(b) if matches!(b.codec, outpost_delta::Codec::Quant { bits: 8, .. }))
    ));
    let rebuilt = d.join("rebuilt.opkg");
    let (ok, text) = outpost(&[
        "model",
        "delta",
        "apply",
        "--base",
        &p(&v1),
        "--plan",
        &p(&d.join("q8/plan")),
        "--blobs",
        &p(&d.join("q8/blobs")),
        "--out",
        &p(&rebuilt),
    ]);
    assert!(ok, "{text}");
    assert_eq!(std::fs::read(&rebuilt).unwrap(), std::fs::read(&lossy).unwrap());

    // Two bits per weight move classes: refused, and nothing is written.
    let refused = d.join("clf-2-q2.opkg");
    let (ok, text) = lossy_release("2", &refused, &[]);
    assert!(!ok && text.contains("refused"), "{text}");
    assert!(!refused.exists());

    // Through a server: `publish --delta-bits` fetches the base from the registry, refuses what
    // is beyond the tolerance (nothing is uploaded), and publishes the same bytes as `lossy`.
    let (_server, url, admin) = start_server(d);
    let (ok, out, err) = cli(&url, &admin, &["model", "publish", &p(&v1)]);
    assert!(ok, "{out}{err}");
    let publish = |bits: &str, extra: &[&str]| {
        let mut args = vec!["model", "publish", v2.to_str().unwrap(), "--delta-bits", bits, "--base", "1"];
        let eval = p(&eval);
        args.extend(["--eval", eval.as_str()]);
        args.extend_from_slice(extra);
        cli(&url, &admin, &args)
    };
    let (ok, out, err) = publish("2", &[]);
    assert!(!ok && err.contains("refused"), "{out}{err}");
    let (_, listed, _) = cli(&url, &admin, &["model", "show", "clf"]);
    assert!(
        listed.contains("VERSION") && !listed.lines().any(|l| l.split_whitespace().next() == Some("2")),
        "{listed}"
    );
    let (ok, out, err) = publish("8", &[]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("8-bit release against clf@1") && out.contains("2 tensors"), "{out}");
    let sha = outpost_runtime::package::sha256_hex(&std::fs::read(&lossy).unwrap());
    assert!(out.contains(&sha), "the registry holds the rounded package {sha}: {out}");
}
