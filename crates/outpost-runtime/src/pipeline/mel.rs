//! Log-mel spectrograms, computed as librosa does by default, so a model trained on
//! `np.log(librosa.feature.melspectrogram(y=y, sr=sr, n_fft=..., hop_length=..., n_mels=...,
//! fmin=..., fmax=...) + log_offset)` sees the same numbers here:
//!
//! - centred frames: the window is zero-padded by `n_fft / 2` on each side (librosa ≥ 0.10's
//!   default `pad_mode="constant"`; reflection would need windows longer than `n_fft / 2`), giving
//!   `1 + (len + 2 · (n_fft / 2) - n_fft) / hop_length` frames;
//! - a periodic Hann window of `n_fft` samples and the power spectrum `|X|²`;
//! - the Slaney mel scale (linear below 1 kHz, logarithmic above) with Slaney area normalisation
//!   (librosa's `htk=False, norm="slaney"`), `n_mels` triangles from `f_min` to `f_max`;
//! - the natural logarithm of `mel + log_offset`.
//!
//! torchaudio's `MelSpectrogram` defaults differ (HTK scale, no normalisation); such a model needs
//! an option in the manifest that does not exist yet.

use super::{config, f32_tensor, PipelineError};
use crate::Tensor;
use outpost_proto::manifest::{AudioPre, MelLayout};
use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};
use std::sync::Arc;

/// Largest FFT accepted from a manifest.
const MAX_N_FFT: usize = 1 << 16;
/// Most mel bands accepted from a manifest.
const MAX_N_MELS: usize = 1024;

/// A log-mel feature extractor for one manifest: FFT plan, window and filterbank.
pub(super) struct LogMel {
    n_fft: usize,
    hop: usize,
    n_mels: usize,
    log_offset: f32,
    layout: MelLayout,
    fft: Arc<dyn Fft<f32>>,
    window: Vec<f32>,
    filters: Vec<MelFilter>,
}

/// One mel band: weights for the power spectrum bins `first_bin..first_bin + weights.len()`.
struct MelFilter {
    first_bin: usize,
    weights: Vec<f32>,
}

impl LogMel {
    /// Checks the manifest's log-mel settings and builds the extractor.
    pub fn new(pre: &AudioPre) -> Result<LogMel, PipelineError> {
        let sr = pre.sample_rate as f32;
        let nyquist = sr / 2.0;
        let f_max = pre.f_max.unwrap_or(nyquist);
        if !(2..=MAX_N_FFT).contains(&pre.n_fft) {
            return Err(config(format!("pre.n_fft is {}; it must be 2 to {MAX_N_FFT}", pre.n_fft)));
        }
        if pre.hop_length == 0 {
            return Err(config("pre.hop_length is 0; it must be at least 1"));
        }
        if !(1..=MAX_N_MELS).contains(&pre.n_mels) {
            return Err(config(format!("pre.n_mels is {}; it must be 1 to {MAX_N_MELS}", pre.n_mels)));
        }
        if !(pre.f_min >= 0.0 && f_max > pre.f_min && f_max.is_finite()) {
            return Err(config(format!(
                "pre.f_min {} and pre.f_max {f_max} must satisfy 0 <= f_min < f_max",
                pre.f_min
            )));
        }
        if !(pre.log_offset > 0.0 && pre.log_offset.is_finite()) {
            return Err(config(format!("pre.log_offset is {}; it must be a positive number", pre.log_offset)));
        }
        let n = pre.n_fft;
        // Periodic Hann (scipy's `get_window("hann", n, fftbins=True)`, as librosa uses).
        let window =
            (0..n).map(|i| (0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos()) as f32).collect();
        Ok(LogMel {
            n_fft: n,
            hop: pre.hop_length,
            n_mels: pre.n_mels,
            log_offset: pre.log_offset,
            layout: pre.mel_layout,
            fft: FftPlanner::new().plan_fft_forward(n),
            window,
            filters: filterbank(sr, n, pre.n_mels, pre.f_min, f_max),
        })
    }

    /// Frames in the spectrogram of `len` samples.
    pub fn frames(&self, len: usize) -> usize {
        1 + (len + 2 * (self.n_fft / 2)).saturating_sub(self.n_fft) / self.hop
    }

    /// Values in the features of `len` samples.
    pub fn values(&self, len: usize) -> usize {
        self.frames(len).saturating_mul(self.n_mels)
    }

    /// The log-mel tensor of one window: `[1, n_mels, frames]` or `[1, frames, n_mels]`.
    pub fn tensor(&self, signal: &[f32]) -> Result<Tensor, PipelineError> {
        let mels = self.compute(signal);
        let frames = self.frames(signal.len());
        match self.layout {
            MelLayout::FramesMels => f32_tensor(&[1, frames, self.n_mels], &mels),
            MelLayout::MelsFrames => {
                let mut transposed = Vec::with_capacity(mels.len());
                for m in 0..self.n_mels {
                    transposed.extend(mels.iter().skip(m).step_by(self.n_mels));
                }
                f32_tensor(&[1, self.n_mels, frames], &transposed)
            }
        }
    }

    /// Log-mel energies, frame by frame (`frames × n_mels`).
    fn compute(&self, signal: &[f32]) -> Vec<f32> {
        let pad = self.n_fft / 2;
        let mut padded = vec![0.0f32; signal.len() + 2 * pad];
        if let Some(middle) = padded.get_mut(pad..pad + signal.len()) {
            middle.copy_from_slice(signal);
        }
        let frames = self.frames(signal.len());
        let bins = self.n_fft / 2 + 1;
        let mut out = Vec::with_capacity(frames * self.n_mels);
        let mut buffer = vec![Complex::new(0.0f32, 0.0); self.n_fft];
        let mut scratch = vec![Complex::new(0.0f32, 0.0); self.fft.get_inplace_scratch_len()];
        let mut power = vec![0.0f32; bins];
        for frame in 0..frames {
            let samples = padded.iter().skip(frame * self.hop).chain(std::iter::repeat(&0.0));
            for ((b, &x), &w) in buffer.iter_mut().zip(samples).zip(&self.window) {
                *b = Complex::new(x * w, 0.0);
            }
            self.fft.process_with_scratch(&mut buffer, &mut scratch);
            for (p, c) in power.iter_mut().zip(&buffer) {
                *p = c.norm_sqr();
            }
            for filter in &self.filters {
                let energy: f32 = power.iter().skip(filter.first_bin).zip(&filter.weights).map(|(p, w)| p * w).sum();
                out.push((energy + self.log_offset).ln());
            }
        }
        out
    }
}

/// Hz to mel on the Slaney scale: linear (3 bands per 200 Hz) below 1 kHz, logarithmic above.
fn hz_to_mel(hz: f64) -> f64 {
    const LOG_STEP: f64 = 0.068_751_777_420_949_12; // ln(6.4) / 27
    if hz >= 1000.0 {
        15.0 + (hz / 1000.0).ln() / LOG_STEP
    } else {
        hz * 3.0 / 200.0
    }
}

fn mel_to_hz(mel: f64) -> f64 {
    const LOG_STEP: f64 = 0.068_751_777_420_949_12;
    if mel >= 15.0 {
        1000.0 * (LOG_STEP * (mel - 15.0)).exp()
    } else {
        mel * 200.0 / 3.0
    }
}

/// Edges of `n_mels` triangles, equally spaced in mel: `n_mels + 2` frequencies in Hz.
fn band_edges(n_mels: usize, f_min: f32, f_max: f32) -> Vec<f64> {
    let (lo, hi) = (hz_to_mel(f64::from(f_min)), hz_to_mel(f64::from(f_max)));
    (0..n_mels + 2).map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (n_mels + 1) as f64)).collect()
}

/// librosa's `filters.mel(sr, n_fft, n_mels, fmin, fmax, htk=False, norm="slaney")`, stored
/// sparsely since each band covers only a few bins.
fn filterbank(sr: f32, n_fft: usize, n_mels: usize, f_min: f32, f_max: f32) -> Vec<MelFilter> {
    let bins = n_fft / 2 + 1;
    let bin_hz = |k: usize| k as f64 * f64::from(sr) / n_fft as f64;
    let edges = band_edges(n_mels, f_min, f_max);
    edges
        .windows(3)
        .map(|e| {
            let (left, centre, right) = (e[0], e[1], e[2]);
            // Slaney normalisation: every triangle has the same area.
            let norm = 2.0 / (right - left);
            let weight = |k: usize| {
                let f = bin_hz(k);
                let rising = (f - left) / (centre - left);
                let falling = (right - f) / (right - centre);
                (rising.min(falling).max(0.0) * norm) as f32
            };
            let first_bin = (0..bins).find(|&k| weight(k) > 0.0).unwrap_or(bins);
            let last_bin = (first_bin..bins).take_while(|&k| weight(k) > 0.0).last().unwrap_or(first_bin);
            let weights = (first_bin..=last_bin).filter(|&k| k < bins).map(weight).collect();
            MelFilter { first_bin, weights }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pre(sample_rate: u32, window: usize) -> AudioPre {
        toml::from_str(&format!("sample_rate = {sample_rate}\nwindow_samples = {window}\nfeatures = \"log_mel\""))
            .unwrap()
    }

    #[test]
    fn slaney_scale_matches_librosa_reference_points() {
        // librosa.hz_to_mel(440) = 6.6, hz_to_mel(1000) = 15, hz_to_mel(4000) ≈ 35.1638
        assert!((hz_to_mel(440.0) - 6.6).abs() < 1e-9);
        assert!((hz_to_mel(1000.0) - 15.0).abs() < 1e-9);
        assert!((hz_to_mel(4000.0) - 35.163_760).abs() < 1e-5);
        for hz in [0.0, 300.0, 1000.0, 5000.0, 8000.0] {
            assert!((mel_to_hz(hz_to_mel(hz)) - hz).abs() < 1e-6);
        }
    }

    #[test]
    fn frame_count_is_centred_like_librosa() {
        let mel = LogMel::new(&pre(16_000, 16_000)).unwrap();
        // n_fft 512, hop 160: 1 + 16000 / 160 frames.
        assert_eq!(mel.frames(16_000), 101);
        assert_eq!(mel.frames(1), 1);
    }

    #[test]
    fn a_pure_tone_peaks_in_the_band_around_its_frequency() {
        let p = pre(16_000, 16_000);
        let mel = LogMel::new(&p).unwrap();
        let tone: Vec<f32> =
            (0..16_000).map(|i| (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 16_000.0).sin() * 0.5).collect();
        let out = mel.compute(&tone);
        let frame = &out[50 * 40..51 * 40];
        let peak = frame.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        let edges = band_edges(40, 0.0, 8000.0);
        let nearest = (0..40).min_by(|&a, &b| (edges[a + 1] - 1000.0).abs().total_cmp(&(edges[b + 1] - 1000.0).abs()));
        assert_eq!(Some(peak), nearest, "band centres {:?}", &edges[1..41]);
        assert!(frame[peak] > frame[peak.saturating_sub(5)] + 5.0, "{frame:?}");
    }

    #[test]
    fn silence_gives_the_log_of_the_offset() {
        let mel = LogMel::new(&pre(16_000, 1600)).unwrap();
        let t = mel.tensor(&vec![0.0; 1600]).unwrap();
        assert_eq!(t.shape(), &[1, 40, 11]);
        assert!(crate::tensor::values::<f32>(&t).unwrap().iter().all(|v| (v - 1e-6f32.ln()).abs() < 1e-4));
    }

    #[test]
    fn layouts_transpose_the_same_values() {
        let mut p = pre(16_000, 800);
        let signal: Vec<f32> = (0..800).map(|i| ((i * 37) % 100) as f32 / 100.0 - 0.5).collect();
        let a = LogMel::new(&p).unwrap().tensor(&signal).unwrap();
        p.mel_layout = MelLayout::FramesMels;
        let b = LogMel::new(&p).unwrap().tensor(&signal).unwrap();
        assert_eq!(a.shape(), &[1, 40, 6]);
        assert_eq!(b.shape(), &[1, 6, 40]);
        let (a, b) = (crate::tensor::values::<f32>(&a).unwrap(), crate::tensor::values::<f32>(&b).unwrap());
        assert_eq!(a[3 * 6 + 2], b[2 * 40 + 3]);
    }

    #[test]
    fn impossible_settings_are_config_errors() {
        let mut p = pre(16_000, 800);
        p.n_fft = 0;
        assert!(LogMel::new(&p).is_err());
        p = pre(16_000, 800);
        p.f_min = 9000.0;
        assert!(!LogMel::new(&p).err().unwrap().is_client_error());
        p = pre(16_000, 800);
        p.log_offset = 0.0;
        assert!(LogMel::new(&p).is_err());
    }
}
