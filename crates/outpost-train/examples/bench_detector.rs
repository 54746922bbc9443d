//! Writes the ~5 MB detector bench/fleet_update.sh delivers to a simulated fleet, and its
//! head-only fine-tune.
//!
//! `cargo run --release -p outpost-train --example bench_detector -- OUT_DIR` writes
//! `OUT_DIR/v1.onnx` and `OUT_DIR/v2.onnx`. The network is shaped like a single-scale anchor
//! detector: a convolutional backbone (six 3×3 convolutions, 1.27 M weights, He-initialised
//! from a fixed seed) and a 1×1 convolution head predicting, per cell of an 8×8 grid, 3 anchors
//! × (4 box offsets + objectness + 8 classes). v2 is v1 after a head-only fine-tune as a
//! transfer-learning job does it with the backbone and its BatchNorm frozen: the backbone's
//! tensors are byte for byte v1's and the head's weights and bias moved by a small step (a
//! fixed-seed random direction of 1 % of the weights' spread; no data is trained on, the delta
//! depends only on which tensors changed and on how much).

use outpost_proto::manifest::Dim;
use outpost_train::onnx::{attr_ints, encode, GraphBuilder};
use std::error::Error;
use std::path::PathBuf;

/// Input side, pixels.
const SIDE: usize = 64;
/// Anchors × (box, objectness, classes).
const HEAD_OUT: usize = 3 * (4 + 1 + 8);

/// Deterministic uniform noise in [-1, 1).
fn noise(seed: u64, n: usize) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f64 / (1u64 << 24) as f64) * 2.0 - 1.0
        })
        .collect()
}

/// He-uniform weights for a convolution with `fan_in` inputs per output.
fn he(seed: u64, n: usize, fan_in: usize) -> Vec<f64> {
    let a = (6.0 / fan_in as f64).sqrt();
    noise(seed, n).into_iter().map(|x| x * a).collect()
}

fn detector(tune: f64) -> Result<Vec<u8>, Box<dyn Error>> {
    let mut g = GraphBuilder::new("bench-detector");
    let mut x = g.input_f32("image", &[Dim::Fixed(1), Dim::Fixed(3), Dim::Fixed(SIDE as i64), Dim::Fixed(SIDE as i64)]);
    // (in, out, stride) of each backbone convolution.
    let layers = [(3, 32, 2), (32, 64, 2), (64, 128, 2), (128, 256, 1), (256, 256, 1), (256, 128, 1)];
    for (i, (cin, cout, stride)) in layers.into_iter().enumerate() {
        let seed = i as u64 + 1;
        let w = g.constant_f32(&format!("backbone.{i}.weight"), &[cout, cin, 3, 3], &he(seed, cout * cin * 9, cin * 9));
        let b = g.constant_f32(&format!("backbone.{i}.bias"), &[cout], &noise(seed + 100, cout));
        let attrs = vec![
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("strides", &[stride, stride]),
            attr_ints("pads", &[1, 1, 1, 1]),
        ];
        let conv = g.node("Conv", &[&x, &w, &b], &format!("backbone.{i}.conv"), attrs);
        x = g.node("Relu", &[&conv], &format!("backbone.{i}.relu"), vec![]);
    }
    let cin = layers[layers.len() - 1].1;
    let moved = |base: Vec<f64>, seed: u64| -> Vec<f64> {
        let spread = (base.iter().map(|v| v * v).sum::<f64>() / base.len() as f64).sqrt();
        base.iter().zip(noise(seed, base.len())).map(|(w, d)| w + tune * spread * d).collect()
    };
    let w = g.constant_f32("head.weight", &[HEAD_OUT, cin, 1, 1], &moved(he(50, HEAD_OUT * cin, cin), 51));
    let b = g.constant_f32("head.bias", &[HEAD_OUT], &moved(noise(52, HEAD_OUT), 53));
    g.node("Conv", &[&x, &w, &b], "detections", vec![attr_ints("kernel_shape", &[1, 1])]);
    let grid = SIDE / 8;
    g.output_f32(
        "detections",
        &[Dim::Fixed(1), Dim::Fixed(HEAD_OUT as i64), Dim::Fixed(grid as i64), Dim::Fixed(grid as i64)],
    );
    Ok(encode(&g.finish("outpost bench detector")?))
}

fn main() -> Result<(), Box<dyn Error>> {
    let out = PathBuf::from(std::env::args().nth(1).ok_or("usage: bench_detector OUT_DIR")?);
    std::fs::create_dir_all(&out)?;
    for (name, tune) in [("v1.onnx", 0.0), ("v2.onnx", 0.01)] {
        let bytes = detector(tune)?;
        std::fs::write(out.join(name), &bytes)?;
        println!("{name}: {} bytes", bytes.len());
    }
    Ok(())
}
