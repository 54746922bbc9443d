//! The detector's input features: the log amplitude spectrum of each axis.
//!
//! Vibration faults announce themselves as energy at particular frequencies, and a spectrum
//! makes a shifted impact train look the same wherever it starts in the window. The logarithm
//! turns per-machine gains into offsets and keeps a loud 1x from drowning the quiet resonance
//! band. These constants are written into the ONNX graph *and* used by the fitting code, so the
//! exported model computes exactly what was fitted.

use crate::synth::{CHANNELS, WINDOW};
use nalgebra::DMatrix;
use std::f64::consts::TAU;

/// Frequency bins of a real DFT of one window (DC to Nyquist).
pub const BINS: usize = WINDOW / 2 + 1;
/// Features per window: one log amplitude per axis and bin, axis-major.
pub const FEATURES: usize = CHANNELS * BINS;
/// Added to the squared magnitude before the square root so silent bins stay finite.
pub const POWER_FLOOR: f64 = 1e-10;

/// Periodic Hann window, the usual taper for spectra of continuous signals.
pub fn hann() -> Vec<f64> {
    (0..WINDOW).map(|n| 0.5 - 0.5 * (TAU * n as f64 / WINDOW as f64).cos()).collect()
}

/// Real-DFT matrices `[WINDOW][BINS]` (cosine, sine), row-major, scaled so a sinusoid of
/// amplitude A shows a peak of about A after the Hann window.
pub fn dft_matrices() -> (Vec<f64>, Vec<f64>) {
    let coherent_gain: f64 = hann().iter().sum::<f64>() / 2.0;
    let mut cos = vec![0.0; WINDOW * BINS];
    let mut sin = vec![0.0; WINDOW * BINS];
    for n in 0..WINDOW {
        for k in 0..BINS {
            // Reduce the phase index modulo WINDOW so large n*k keep full precision.
            let angle = TAU * ((n * k) % WINDOW) as f64 / WINDOW as f64;
            cos[n * BINS + k] = angle.cos() / coherent_gain;
            sin[n * BINS + k] = -angle.sin() / coherent_gain;
        }
    }
    (cos, sin)
}

/// Bins below this are left unsmoothed (shaft harmonics and gear mesh are sharp lines there);
/// above it the smoothing half-width grows by one bin per this many bins.
pub const SMOOTHING_STEP: usize = 20;
/// Widest smoothing half-width in bins.
pub const SMOOTHING_MAX: usize = 4;

/// Frequency smoothing of the power spectrum, `[BINS][BINS]` row-major (input bin, output bin).
///
/// A one-window periodogram fluctuates by about 100% in every bin however long the machine
/// runs, and that noise would swamp the detector. Averaging neighbouring bins (a Daniell
/// estimate) trades resolution for stability, and widening the average with frequency keeps
/// the sharp low-frequency lines sharp while calming the broad resonance band, much like a mel
/// scale does for audio.
pub fn smoothing_matrix() -> Vec<f64> {
    let mut m = vec![0.0; BINS * BINS];
    for k in 0..BINS {
        let half = (k / SMOOTHING_STEP).min(SMOOTHING_MAX);
        let (lo, hi) = (k.saturating_sub(half), (k + half).min(BINS - 1));
        let weight = 1.0 / (hi - lo + 1) as f64;
        for j in lo..=hi {
            m[j * BINS + k] = weight;
        }
    }
    m
}

/// Log amplitude spectra of channels-first windows: one row per window, `FEATURES` columns.
///
/// `windows.len()` must be a multiple of `CHANNELS * WINDOW`; a trailing partial window is
/// ignored. The DFT runs as two matrix products so it uses the same optimised GEMM the graph
/// uses, which keeps training fast even in unoptimised builds.
pub fn log_spectra(windows: &[f32]) -> DMatrix<f64> {
    let count = windows.len() / (CHANNELS * WINDOW);
    let taper = hann();
    let tapered = DMatrix::from_fn(count * CHANNELS, WINDOW, |row, n| f64::from(windows[row * WINDOW + n]) * taper[n]);
    let (cos, sin) = dft_matrices();
    let re = &tapered * DMatrix::from_row_slice(WINDOW, BINS, &cos);
    let im = &tapered * DMatrix::from_row_slice(WINDOW, BINS, &sin);
    let power = re.component_mul(&re) + im.component_mul(&im);
    let smoothed = power * DMatrix::from_row_slice(BINS, BINS, &smoothing_matrix());
    DMatrix::from_fn(count, FEATURES, |w, f| {
        let (axis, k) = (f / BINS, f % BINS);
        (smoothed[(w * CHANNELS + axis, k)] + POWER_FLOOR).sqrt().ln()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sinusoid_peaks_in_its_bin_at_its_amplitude() {
        // 0.3 g at bin 10 (250 Hz, below the smoothed range) on axis 1 only.
        let mut window = vec![0.0f32; CHANNELS * WINDOW];
        for n in 0..WINDOW {
            window[WINDOW + n] = (0.3 * (TAU * 10.0 * n as f64 / WINDOW as f64 + 0.7).cos()) as f32;
        }
        let spectra = log_spectra(&window);
        assert_eq!(spectra.shape(), (1, FEATURES));
        let axis1: Vec<f64> = (0..BINS).map(|k| spectra[(0, BINS + k)]).collect();
        let peak = (0..BINS).max_by(|&a, &b| axis1[a].total_cmp(&axis1[b])).unwrap_or(0);
        assert_eq!(peak, 10);
        assert!((axis1[10].exp() - 0.3).abs() < 1e-6, "{}", axis1[10].exp());
        // Silent axes sit at the floor.
        assert!((spectra[(0, 5)] - POWER_FLOOR.sqrt().ln()).abs() < 1e-9);
    }

    #[test]
    fn smoothing_preserves_power_and_widens_with_frequency() {
        let m = smoothing_matrix();
        let taps = |k: usize| (0..BINS).filter(|&j| m[j * BINS + k] > 0.0).count();
        for k in 0..BINS {
            let column: f64 = (0..BINS).map(|j| m[j * BINS + k]).sum();
            assert!((column - 1.0).abs() < 1e-12, "bin {k} weights sum to {column}");
        }
        assert_eq!(taps(3), 1);
        assert_eq!(taps(100), 2 * SMOOTHING_MAX + 1);
    }
}
