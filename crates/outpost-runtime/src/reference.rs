//! Reference statistics from sample data: the `[reference]` section of a package, which the
//! drift monitor ([`crate::drift`]) compares live requests with.
//!
//! Each tensor is summarised per channel along the axis a drift feature is naturally read
//! along: the second axis when it holds 2–64 channels (`[N, C, …]` images, sensor windows,
//! feature vectors, a classifier's classes), else the last when it does (`[N, H, W, C]`), else
//! all values pooled. More than 64 channels would each score a noisy PSI on a device's bounded
//! sample, so they are pooled. Quantiles are kept for the first channel, as the manifest
//! defines them, from an evenly spread sample of at most [`QUANTILE_SAMPLE`] values.

use crate::drift::QUANTILE_LEVELS;
use crate::error::RuntimeError;
use crate::tensor::{visit_numeric, AsF64, NumericVisitor};
use crate::Tensor;
use outpost_proto::manifest::{ReferenceStats, TensorStats};
use std::collections::BTreeMap;

/// Channel counts above this are pooled into one feature.
pub const MAX_CHANNELS: usize = 64;
/// Values of the first channel kept for its quantiles.
pub const QUANTILE_SAMPLE: usize = 200_000;

/// Accumulates the statistics of every input and output tensor over sample requests.
#[derive(Debug, Default)]
pub struct ReferenceBuilder {
    inputs: BTreeMap<String, TensorAcc>,
    outputs: BTreeMap<String, TensorAcc>,
}

impl ReferenceBuilder {
    /// An empty builder.
    pub fn new() -> ReferenceBuilder {
        ReferenceBuilder::default()
    }

    /// Adds one request: its named inputs and the outputs the model answered.
    pub fn add(&mut self, inputs: &[(&str, &Tensor)], outputs: &[(&str, &Tensor)]) -> Result<(), RuntimeError> {
        for (map, tensors) in [(&mut self.inputs, inputs), (&mut self.outputs, outputs)] {
            for (name, t) in tensors {
                match map.get_mut(*name) {
                    Some(acc) => acc.add(name, t)?,
                    None => {
                        let mut acc = TensorAcc::new(t.shape());
                        acc.add(name, t)?;
                        map.insert(name.to_string(), acc);
                    }
                }
            }
        }
        Ok(())
    }

    /// The statistics; tensors without a single finite value (strings, all NaN) are left out.
    pub fn finish(self) -> ReferenceStats {
        let done = |m: BTreeMap<String, TensorAcc>| -> BTreeMap<String, TensorStats> {
            m.into_iter().filter_map(|(name, acc)| acc.finish().map(|s| (name, s))).collect()
        };
        ReferenceStats { inputs: done(self.inputs), outputs: done(self.outputs) }
    }
}

/// The axis a tensor of `shape` is split into channels along, as the module documents.
pub fn channel_axis(shape: &[usize]) -> Option<usize> {
    let fits = |d: usize| (2..=MAX_CHANNELS).contains(&d);
    match shape {
        [_, c, ..] if fits(*c) => Some(1),
        [_, _, .., c] if fits(*c) => Some(shape.len() - 1),
        _ => None,
    }
}

/// Running mean and variance (Welford), extremes.
#[derive(Debug, Clone, Copy)]
struct Moments {
    n: u64,
    mean: f64,
    m2: f64,
    min: f64,
    max: f64,
}

impl Default for Moments {
    fn default() -> Moments {
        Moments { n: 0, mean: 0.0, m2: 0.0, min: f64::INFINITY, max: f64::NEG_INFINITY }
    }
}

impl Moments {
    fn add(&mut self, v: f64) {
        self.n += 1;
        let d = v - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (v - self.mean);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }
}

#[derive(Debug)]
struct TensorAcc {
    axis: Option<usize>,
    channels: Vec<Moments>,
    samples: u64,
    /// An evenly thinned sample of the first channel: every `keep_every`th value.
    first: Vec<f64>,
    keep_every: u64,
    first_seen: u64,
}

impl TensorAcc {
    fn new(shape: &[usize]) -> TensorAcc {
        let axis = channel_axis(shape);
        let channels = axis.map_or(1, |a| shape[a]);
        TensorAcc {
            axis,
            channels: vec![Moments::default(); channels],
            samples: 0,
            first: Vec::new(),
            keep_every: 1,
            first_seen: 0,
        }
    }

    fn add(&mut self, name: &str, t: &Tensor) -> Result<(), RuntimeError> {
        let shape = t.shape();
        let (inner, channels) = match self.axis {
            Some(a) => {
                if shape.len() <= a || shape[a] != self.channels.len() {
                    return Err(RuntimeError::BadInput {
                        tensor: name.to_string(),
                        reason: format!(
                            "shape {shape:?} does not have the {} channels along axis {a} the first sample had",
                            self.channels.len()
                        ),
                    });
                }
                (shape[a + 1..].iter().product::<usize>().max(1), self.channels.len())
            }
            None => (t.len().max(1), 1),
        };
        self.samples += 1;
        let mut visit = |i: usize, v: f64| {
            if !v.is_finite() {
                return;
            }
            let c = (i / inner) % channels;
            self.channels[c].add(v);
            if c == 0 {
                self.first_seen += 1;
                if self.first_seen.is_multiple_of(self.keep_every) {
                    self.first.push(v);
                    if self.first.len() >= QUANTILE_SAMPLE {
                        // Keep every other value and take half as many from now on: the sample
                        // stays spread evenly over everything seen.
                        let mut k = 0u64;
                        self.first.retain(|_| {
                            k += 1;
                            k.is_multiple_of(2)
                        });
                        self.keep_every *= 2;
                    }
                }
            }
        };
        for_each_value(t, &mut visit);
        Ok(())
    }

    fn finish(mut self) -> Option<TensorStats> {
        if self.channels.iter().all(|m| m.n == 0) {
            return None;
        }
        self.first.sort_by(f64::total_cmp);
        let quantiles = if self.first.is_empty() {
            Vec::new()
        } else {
            QUANTILE_LEVELS.iter().map(|&q| quantile(&self.first, q)).collect()
        };
        let finite = |v: f64| if v.is_finite() { v } else { 0.0 };
        Some(TensorStats {
            axis: self.axis,
            count: self.samples,
            mean: self.channels.iter().map(|m| m.mean).collect(),
            std: self.channels.iter().map(|m| (m.m2 / m.n.max(1) as f64).max(0.0).sqrt()).collect(),
            min: self.channels.iter().map(|m| finite(m.min)).collect(),
            max: self.channels.iter().map(|m| finite(m.max)).collect(),
            quantiles,
        })
    }
}

/// Linear interpolation between the closest ranks of a sorted, non-empty slice.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let at = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (at - lo as f64)
}

/// Calls `f(index, value)` for every element of a numeric tensor; other types have none.
fn for_each_value(t: &Tensor, f: &mut dyn FnMut(usize, f64)) {
    struct Each<'a>(&'a mut dyn FnMut(usize, f64));
    impl NumericVisitor for Each<'_> {
        type Out = ();
        fn visit<T: AsF64>(self, data: &[T]) {
            for (i, v) in data.iter().enumerate() {
                (self.0)(i, v.as_f64());
            }
        }
    }
    visit_numeric(t, Each(f));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::{DriftMonitor, DriftSettings};

    #[test]
    fn the_channel_axis_is_the_second_then_the_last_else_none() {
        assert_eq!(channel_axis(&[1, 3, 224, 224]), Some(1));
        assert_eq!(channel_axis(&[1, 224, 224, 3]), Some(3));
        assert_eq!(channel_axis(&[8, 4]), Some(1));
        assert_eq!(channel_axis(&[1, 1000]), None, "a thousand classes are pooled");
        assert_eq!(channel_axis(&[1, 1, 64, 96]), None);
        assert_eq!(channel_axis(&[16000]), None);
        assert_eq!(channel_axis(&[]), None);
    }

    fn normal(seed: &mut u64) -> f64 {
        // Box-Muller over a xorshift: a fixed, dependency-free stream for the test.
        let mut u = || {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            (*seed >> 11) as f64 / (1u64 << 53) as f64
        };
        let (a, b) = (u().max(1e-12), u());
        (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
    }

    /// `[1, 2, 8]` windows: channel 0 ~ N(10, 2), channel 1 ~ N(-3, 0.5) times `gain`.
    fn window(seed: &mut u64, gain: f64) -> Tensor {
        let mut v = Vec::with_capacity(16);
        for _ in 0..8 {
            v.push((10.0 + 2.0 * normal(seed)) as f32 * gain as f32);
        }
        for _ in 0..8 {
            v.push((-3.0 + 0.5 * normal(seed)) as f32 * gain as f32);
        }
        tract_onnx::prelude::tract_ndarray::Array3::from_shape_vec((1, 2, 8), v).unwrap().into()
    }

    #[test]
    fn statistics_recover_the_sampled_distributions_per_channel() {
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        let mut b = ReferenceBuilder::new();
        for _ in 0..2000 {
            let x = window(&mut seed, 1.0);
            let score: Tensor = tract_onnx::prelude::tract_ndarray::arr1(&[0.5f32]).into();
            b.add(&[("x", &x)], &[("score", &score)]).unwrap();
        }
        let r = b.finish();
        let x = &r.inputs["x"];
        assert_eq!((x.axis, x.count, x.mean.len()), (Some(1), 2000, 2));
        assert!((x.mean[0] - 10.0).abs() < 0.1 && (x.std[0] - 2.0).abs() < 0.1, "{x:?}");
        assert!((x.mean[1] + 3.0).abs() < 0.05 && (x.std[1] - 0.5).abs() < 0.05, "{x:?}");
        assert_eq!(x.quantiles.len(), QUANTILE_LEVELS.len());
        assert!((x.quantiles[3] - 10.0).abs() < 0.1, "the median of channel 0: {:?}", x.quantiles);
        assert!((x.quantiles[6] - (10.0 + 2.0 * 2.326)).abs() < 0.2, "its 99th percentile: {:?}", x.quantiles);
        assert!(x.quantiles.windows(2).all(|w| w[0] <= w[1]));
        let s = &r.outputs["score"];
        assert_eq!((s.axis, s.mean[0], s.std[0], s.quantiles[0]), (None, 0.5, 0.0, 0.5));
    }

    #[test]
    fn a_long_stream_keeps_an_even_quantile_sample() {
        let mut acc = TensorAcc::new(&[1]);
        for i in 0..(3 * QUANTILE_SAMPLE) {
            let t: Tensor = tract_onnx::prelude::tract_ndarray::arr1(&[i as f32]).into();
            acc.add("t", &t).unwrap();
        }
        assert!(acc.first.len() < QUANTILE_SAMPLE);
        let s = acc.finish().unwrap();
        let n = (3 * QUANTILE_SAMPLE) as f64;
        assert!((s.quantiles[3] / n - 0.5).abs() < 0.01, "{:?}", s.quantiles);
        assert!((s.quantiles[0] / n - 0.01).abs() < 0.01, "{:?}", s.quantiles);
    }

    #[test]
    fn a_changed_channel_count_or_non_finite_values_are_handled() {
        let mut b = ReferenceBuilder::new();
        let two: Tensor = tract_onnx::prelude::tract_ndarray::arr2(&[[1.0f32, f32::NAN]]).into();
        let three: Tensor = tract_onnx::prelude::tract_ndarray::arr2(&[[1.0f32, 2.0, 3.0]]).into();
        b.add(&[("x", &two)], &[]).unwrap();
        let err = b.add(&[("x", &three)], &[]).unwrap_err().to_string();
        assert!(err.contains("2 channels along axis 1"), "{err}");
        let r = b.finish();
        assert_eq!(r.inputs["x"].mean, vec![1.0, 0.0], "the NaN is skipped, not averaged in");
        assert_eq!(r.inputs["x"].min, vec![1.0, 0.0], "a channel without values has finite bounds");
    }

    #[test]
    fn a_monitor_on_the_built_reference_sees_the_same_data_as_ok_and_a_gain_change_as_drift() {
        let mut seed = 7;
        let mut b = ReferenceBuilder::new();
        for _ in 0..2000 {
            b.add(&[("x", &window(&mut seed, 1.0))], &[]).unwrap();
        }
        let reference = b.finish();
        let run = |gain: f64, seed: &mut u64| {
            let settings = DriftSettings { window_samples: 400, ..DriftSettings::default() };
            let monitor = DriftMonitor::new("1", Some(&reference), settings, &["x"], &[]);
            for _ in 0..400 {
                let x = window(seed, gain);
                let sample = monitor.sample_inputs(std::slice::from_ref(&x));
                monitor.record(sample, &[]);
            }
            monitor.poll().pop().expect("a window closed")
        };
        let same = run(1.0, &mut seed);
        assert_eq!(same.status, outpost_proto::fleet::drift::DriftStatus::Ok, "{same:?}");
        let moved = run(1.5, &mut seed);
        assert_eq!(moved.status, outpost_proto::fleet::drift::DriftStatus::Alert, "{moved:?}");
    }
}
