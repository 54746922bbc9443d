use super::*;
use outpost_proto::fleet::drift::phi;
use std::collections::BTreeMap;

/// Deterministic standard normals (xorshift + Box-Muller).
struct Normals(u64);

impl Normals {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn next(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// Reference statistics of N(0, 1) per channel, with the normal's quantiles for channel 0.
fn reference(channels: usize, axis: Option<usize>) -> ReferenceStats {
    let z = [-2.326_348, -1.644_854, -0.674_49, 0.0, 0.674_49, 1.644_854, 2.326_348];
    let stats = TensorStats {
        axis,
        count: 10_000,
        mean: vec![0.0; channels],
        std: vec![1.0; channels],
        min: vec![-4.0; channels],
        max: vec![4.0; channels],
        quantiles: z.to_vec(),
    };
    let score = TensorStats {
        axis: None,
        count: 10_000,
        mean: vec![0.5],
        std: vec![0.2],
        min: vec![0.0],
        max: vec![1.0],
        quantiles: z.iter().map(|q| 0.5 + 0.2 * q).collect(),
    };
    ReferenceStats {
        inputs: BTreeMap::from([("x".to_string(), stats)]),
        outputs: BTreeMap::from([("score".to_string(), score)]),
    }
}

/// A [1, channels, 256] input whose channel `c` is N(shift, gain) when `c == moved`, else N(0, 1).
fn input(rng: &mut Normals, channels: usize, moved: usize, gain: f64, shift: f64) -> Tensor {
    let mut data = Vec::with_capacity(channels * 256);
    for c in 0..channels {
        for _ in 0..256 {
            let v = rng.next();
            data.push(if c == moved { (v * gain + shift) as f32 } else { v as f32 });
        }
    }
    tract_onnx::prelude::tract_ndarray::Array3::from_shape_vec((1, channels, 256), data).unwrap().into()
}

fn score(v: f32) -> Tensor {
    tract_onnx::prelude::tract_ndarray::arr1(&[v]).into()
}

fn run(monitor: &DriftMonitor, rng: &mut Normals, n: usize, moved: usize, gain: f64, shift: f64) {
    for _ in 0..n {
        let s = monitor.sample_inputs(&[input(rng, 3, moved, gain, shift)]);
        let sc = (0.5 + 0.2 * rng.next()) as f32;
        monitor.record(s, &[score(sc)]);
    }
}

fn monitor(version: &str, reference: Option<&ReferenceStats>, s: DriftSettings) -> DriftMonitor {
    DriftMonitor::new(version, reference, s, &["x"], &["score"])
}

fn settings(window: u64) -> DriftSettings {
    DriftSettings { window_samples: window, ..DriftSettings::default() }
}

#[test]
fn data_like_the_reference_scores_low_and_a_gain_change_alerts_on_its_channel() {
    let m = monitor("3", Some(&reference(3, Some(1))), settings(200));
    assert!(m.has_reference());
    let mut rng = Normals(7);
    run(&m, &mut rng, 200, 0, 1.0, 0.0);
    let same = m.poll();
    assert_eq!(same.len(), 1);
    let w = &same[0];
    assert_eq!((w.version.as_str(), w.samples, w.status), ("3", 200, DriftStatus::Ok));
    // Eight bins and 200 requests: sampling alone gives a PSI near 7/200.
    assert!(w.score < 0.08, "{w:?}");
    assert!(w.ks < 0.05, "{w:?}");
    assert_eq!(w.scores.iter().sum::<u64>(), 200);

    // Channel 2's gain doubles: its normal divergence is 0.5 * (4 + 1/4 - 2) = 1.125.
    run(&m, &mut rng, 200, 2, 2.0, 0.0);
    let moved = m.poll();
    let w = &moved[0];
    assert_eq!(w.status, DriftStatus::Alert, "{w:?}");
    assert_eq!(w.features[0].feature, "x[2]");
    assert!((w.features[0].psi - 1.125).abs() < 0.1, "{w:?}");
    assert!((w.features[0].std - 2.0).abs() < 0.1);
    assert!(w.ks > 0.15, "{w:?}");
}

#[test]
fn a_shift_of_the_binned_channel_is_scored_at_the_reference_quantiles() {
    let m = monitor("1", Some(&reference(3, Some(1))), settings(100));
    let mut rng = Normals(11);
    run(&m, &mut rng, 100, 0, 1.0, 1.0);
    let w = &m.poll()[0];
    let x0 = w.features.iter().find(|f| f.feature == "x[0]").unwrap();
    // One standard deviation up: the binned PSI is near 1 and the KS at the median is 0.34.
    assert!(x0.psi > 0.6, "{x0:?}");
    assert!((x0.ks - 0.34).abs() < 0.05, "{x0:?}");
    assert_eq!(w.status, DriftStatus::Alert);
}

#[test]
fn a_window_closes_on_age_only_with_enough_samples_and_without_reference_it_is_described() {
    let s = DriftSettings { window_samples: 1000, window_secs: 0, min_samples: 5, ..DriftSettings::default() };
    let m = monitor("1", None, s);
    assert!(!m.has_reference());
    let mut rng = Normals(3);
    run(&m, &mut rng, 4, 0, 1.0, 0.0);
    assert!(m.poll().is_empty());
    run(&m, &mut rng, 1, 0, 1.0, 0.0);
    let w = m.poll();
    assert_eq!(w.len(), 1);
    assert_eq!((w[0].samples, w[0].status, w[0].score), (5, DriftStatus::NoReference, 0.0));
    assert_eq!(w[0].scores.iter().sum::<u64>(), 5);
    assert!(m.poll().is_empty());
}

#[test]
fn sampling_is_bounded_and_reaches_every_channel() {
    let s = DriftSettings { max_elements: 50, window_samples: 1, ..DriftSettings::default() };
    let m = monitor("1", Some(&reference(3, Some(1))), s);
    let mut rng = Normals(5);
    let sample = m.sample_inputs(&[input(&mut rng, 3, 9, 1.0, 0.0)]);
    // 50 elements for the tensor: 16 or 17 for each of its three channels.
    for acc in sample.accs.iter().take(3) {
        assert!(acc.n > 0.0 && acc.n <= 17.0, "{acc:?}");
    }
    // A tensor of another type and a missing tensor are not errors.
    let bytes: Tensor = tract_onnx::prelude::tract_ndarray::Array3::<u8>::from_elem((1, 3, 4), 2).into();
    let s = m.sample_inputs(&[bytes]);
    assert_eq!(s.accs[1].sum, 2.0 * s.accs[1].n);
    let s = m.sample_inputs(&[]);
    assert!(s.accs.iter().all(|a| a.n == 0.0));
}

#[test]
fn equal_quantiles_merge_their_bins_and_bad_ones_are_ignored() {
    let (edges, shares) = quantile_bins(&[0.0, 0.0, 0.0, 1.0, 1.0, 2.0, 3.0]);
    assert_eq!(edges, vec![0.0, 1.0, 2.0, 3.0]);
    assert_eq!(shares.len(), 5);
    assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    assert!((shares[0] - 0.25).abs() < 1e-12);
    assert_eq!(quantile_bins(&[1.0, 0.0, 2.0, 3.0, 4.0, 5.0, 6.0]).0, Vec::<f64>::new());
    assert_eq!(quantile_bins(&[1.0, 2.0]).0, Vec::<f64>::new());
}

#[test]
fn normal_divergence_and_ks_match_closed_forms() {
    assert_eq!(normals(0.0, 1.0, 0.0, 1.0).0, 0.0);
    let (psi, ks) = normals(0.0, 1.0, 1.0, 1.0);
    assert!((psi - 1.0).abs() < 1e-9);
    // KS between N(0,1) and N(1,1) is 2Φ(0.5) - 1 = 0.3829.
    assert!((ks - 0.3829).abs() < 1e-3, "{ks}");
    assert!((phi(0.0) - 0.5).abs() < 1e-6 && (phi(1.96) - 0.975).abs() < 1e-4);
    let (psi, _) = normals(5.0, 0.0, 5.0, 0.0);
    assert!(psi.is_finite());
}
