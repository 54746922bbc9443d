//! No input makes a pipeline panic, and every refusal of request bytes is a client error.
//!
//! Each pre-processing pipeline gets 2000 random byte strings of random length and 2000 valid
//! bodies with a few bytes flipped, inserted or cut off (random bytes alone seldom get past the
//! first header check). Post-processing gets outputs of random shapes holding random values,
//! NaN and infinities included. The generator is seeded so a failure reproduces.

use super::{postprocess, preprocess, ImageGeometry, ItemMeta};
use crate::pipeline::tests::manifest;
use crate::Tensor;
use ::image::{ImageBuffer, ImageFormat, Rgb, RgbImage};
use outpost_proto::manifest::{
    AnomalyPost, ClassificationPost, DetectionFormat, DetectionPost, PostProcess, PreProcess, RegressionPost,
    ThresholdPost,
};
use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};

const ITERATIONS: usize = 2000;

/// xorshift64*: tiny, seedable and good enough to pick bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// `valid` with one to four random edits.
    fn mutate(&mut self, valid: &[u8]) -> Vec<u8> {
        let mut b = valid.to_vec();
        for _ in 0..1 + self.below(4) {
            let i = self.below(b.len());
            // Truncation is rarer than the other edits: it ends most bodies' usefulness.
            match self.below(8) {
                0..=2 if i < b.len() => b[i] = self.next() as u8,
                3..=5 if i < b.len() => b[i] ^= 1 << self.below(8),
                6 => b.insert(i, self.next() as u8),
                _ => b.truncate(i),
            }
        }
        b
    }
}

/// Runs one body; true when it was accepted.
fn check(pre: &PreProcess, body: &[u8]) -> bool {
    let result = catch_unwind(AssertUnwindSafe(|| preprocess(pre, body)));
    let head = &body[..body.len().min(48)];
    match result {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            assert!(e.is_client_error(), "config error from request bytes {head:02x?}: {e}");
            false
        }
        Err(_) => panic!("preprocess panicked on {} bytes starting {head:02x?}", body.len()),
    }
}

fn fuzz(seed: u64, pre: &PreProcess, valid: &[&[u8]]) {
    let mut rng = Rng(seed);
    for _ in 0..ITERATIONS {
        let len = rng.below(600);
        check(pre, &rng.bytes(len));
    }
    let mut accepted = 0;
    for i in 0..ITERATIONS {
        let base = valid[i % valid.len()];
        accepted += usize::from(check(pre, &rng.mutate(base)));
    }
    // Some mutants must get all the way through, or the mutations only exercise header checks.
    assert!(accepted > 0, "no mutated body was accepted");
    eprintln!("{accepted} of {ITERATIONS} mutated bodies accepted");
}

fn image_body(format: ImageFormat) -> Vec<u8> {
    let img: RgbImage = ImageBuffer::from_fn(24, 16, |x, y| Rgb([(x * 10) as u8, (y * 15) as u8, 99]));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn wav_body(rate: u32, channels: u16, len: usize) -> Vec<u8> {
    let spec =
        hound::WavSpec { channels, sample_rate: rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut out = Cursor::new(Vec::new());
    let mut w = hound::WavWriter::new(&mut out, spec).unwrap();
    for i in 0..len * usize::from(channels) {
        w.write_sample(((i * 2654) % 65536) as i32 as i16).unwrap();
    }
    w.finalize().unwrap();
    out.into_inner()
}

#[test]
fn random_and_mutated_images_never_panic() {
    let pre = toml::from_str("kind = \"image\"\nwidth = 16\nheight = 12\nresize = \"letterbox\"").unwrap();
    let (png, jpeg) = (image_body(ImageFormat::Png), image_body(ImageFormat::Jpeg));
    fuzz(0x1111, &pre, &[&png, &jpeg]);
}

#[test]
fn random_and_mutated_wavs_never_panic() {
    let (mono, stereo) = (wav_body(8000, 1, 300), wav_body(8000, 2, 200));
    let waveform = toml::from_str("kind = \"audio\"\nsample_rate = 16000\nwindow_samples = 400").unwrap();
    fuzz(0x2222, &waveform, &[&mono, &stereo]);
    let log_mel = toml::from_str(
        "kind = \"audio\"\nsample_rate = 8000\nwindow_samples = 256\nfeatures = \"log_mel\"\nn_fft = 128\nhop_length = 64",
    )
    .unwrap();
    fuzz(0x3333, &log_mel, &[&mono, &stereo]);
}

#[test]
fn random_and_mutated_sensor_json_never_panics() {
    let pre = toml::from_str("kind = \"sensor\"\nchannels = 2\nwindow = 3\nstride = 1").unwrap();
    let by_channel = br#"{"channels": [[1.5, -2, 3e2, 4, 5], [0, 1, 2, 3, 4]]}"#;
    let by_step = br#"{"samples": [[1, 2], [3, 4.25], [5, -6], [7, 8]]}"#;
    fuzz(0x4444, &pre, &[by_channel, by_step]);
}

#[test]
fn random_outputs_never_panic_any_post_step() {
    let m = manifest("detection", &["a", "b"]);
    let posts = [
        PostProcess::Classification(ClassificationPost { output: None, softmax: true, top_k: 3 }),
        PostProcess::Threshold(ThresholdPost { output: None, threshold: 0.5, label: None }),
        PostProcess::Anomaly(AnomalyPost { output: None, threshold: 0.5 }),
        PostProcess::Regression(RegressionPost::default()),
        PostProcess::Detection(DetectionPost {
            output: None,
            format: DetectionFormat::Yolov8,
            score_threshold: 0.0,
            iou_threshold: 0.5,
            max_detections: 5,
        }),
        PostProcess::Detection(DetectionPost {
            output: None,
            format: DetectionFormat::Yolov5,
            score_threshold: 0.0,
            iou_threshold: 0.5,
            max_detections: 5,
        }),
    ];
    let geometry = ImageGeometry { width: 64, height: 48, scale_x: 0.5, scale_y: 0.5, offset_x: 0.0, offset_y: 4.0 };
    let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -1.0, 1e30];
    let mut rng = Rng(0x5555);
    for _ in 0..ITERATIONS {
        let rank = rng.below(5);
        let shape: Vec<usize> = (0..rank).map(|_| rng.below(12)).collect();
        let len: usize = shape.iter().product();
        let data: Vec<f32> = (0..len)
            .map(|_| match rng.below(8) {
                0 => specials[rng.below(specials.len())],
                _ => (rng.next() % 2000) as f32 / 10.0 - 50.0,
            })
            .collect();
        let t = Tensor::from_shape(&shape, &data).unwrap();
        let meta = if rng.below(2) == 0 { ItemMeta::Raw } else { ItemMeta::Image(geometry) };
        for post in &posts {
            let r = catch_unwind(AssertUnwindSafe(|| postprocess(post, &m, std::slice::from_ref(&t), &meta)));
            assert!(r.is_ok(), "{post:?} panicked on shape {shape:?}");
        }
    }
}
