//! Audio: a 16-bit PCM WAV into model windows.
//!
//! The clip is mixed down to mono (the mean of its channels), converted to the model's sample rate
//! (see `resample`) and cut into windows of `window_samples` every `hop_samples` (default: back to
//! back). The last window is zero-padded, so every sample is seen and a clip shorter than one
//! window still gives one window. Each window becomes either its waveform, `[1, window_samples]`
//! in [-1, 1), or its log-mel spectrogram (see `mel`).
//!
//! Only 16-bit integer PCM is accepted: it is what microphones and most tools write, and reading
//! 8-, 24-bit or float WAVs as if they were would feed the model wrongly scaled audio. Truncated
//! files are refused rather than cut short, since a half-uploaded clip usually means a client bug.

use super::mel::LogMel;
use super::{check_request_size, client, config, f32_tensor, resample, ItemMeta, PipelineError, MAX_REQUEST_VALUES};
use crate::Tensor;
use outpost_proto::manifest::{AudioFeatures, AudioPre};
use std::io::Cursor;

/// Decodes `body` as a WAV and cuts it into model inputs as `pre` describes.
pub(super) fn prepare(pre: &AudioPre, body: &[u8]) -> Result<Vec<(Tensor, ItemMeta)>, PipelineError> {
    let plan = WindowPlan::from_pre(pre)?;
    let features = match pre.features {
        AudioFeatures::Waveform => None,
        AudioFeatures::LogMel => Some(LogMel::new(pre)?),
    };
    let clip = read_wav(body)?;
    let len = resample::output_len(clip.samples.len(), clip.sample_rate, pre.sample_rate);
    if len > MAX_REQUEST_VALUES {
        return Err(client(format!(
            "audio: the clip is {len} samples long at {} Hz, more than the limit of {MAX_REQUEST_VALUES}; send a \
             shorter clip",
            pre.sample_rate
        )));
    }
    let signal = resample::resample(&clip.samples, clip.sample_rate, pre.sample_rate);
    let windows = plan.count(signal.len());
    let per_window = features.as_ref().map_or(plan.window, |f| f.values(plan.window));
    check_request_size("audio", windows, per_window)?;

    let mut items = Vec::with_capacity(windows);
    let mut buffer = vec![0.0f32; plan.window];
    for start in (0..windows).map(|i| i * plan.hop) {
        buffer.fill(0.0);
        let available = signal.get(start..).unwrap_or_default();
        for (b, &s) in buffer.iter_mut().zip(available) {
            *b = s;
        }
        let tensor = match &features {
            None => f32_tensor(&[1, plan.window], &buffer)?,
            Some(mel) => mel.tensor(&buffer)?,
        };
        items.push((tensor, ItemMeta::AudioWindow { start_seconds: start as f64 / f64::from(pre.sample_rate) }));
    }
    Ok(items)
}

/// Window length and hop, checked against the manifest.
struct WindowPlan {
    window: usize,
    hop: usize,
}

impl WindowPlan {
    fn from_pre(pre: &AudioPre) -> Result<WindowPlan, PipelineError> {
        if pre.sample_rate == 0 {
            return Err(config("pre.sample_rate is 0; it must be the model's rate in Hz"));
        }
        if pre.window_samples == 0 || pre.window_samples > MAX_REQUEST_VALUES {
            return Err(config(format!(
                "pre.window_samples is {}; it must be 1 to {MAX_REQUEST_VALUES}",
                pre.window_samples
            )));
        }
        let hop = pre.hop_samples.unwrap_or(pre.window_samples);
        if hop == 0 {
            return Err(config("pre.hop_samples is 0; it must be at least 1 (or absent for back-to-back windows)"));
        }
        Ok(WindowPlan { window: pre.window_samples, hop })
    }

    /// Windows over `len` samples: enough for the last to reach the end, none starting past it.
    fn count(&self, len: usize) -> usize {
        if len <= self.window {
            return 1;
        }
        let to_reach_end = 1 + (len - self.window).div_ceil(self.hop);
        // With a hop longer than the window, windows skip samples; stop before one starts past the end.
        to_reach_end.min(len.div_ceil(self.hop))
    }
}

/// A decoded clip, mixed to mono.
struct Clip {
    samples: Vec<f32>,
    sample_rate: u32,
}

/// Reads a 16-bit PCM WAV and mixes it to mono in [-1, 1).
fn read_wav(body: &[u8]) -> Result<Clip, PipelineError> {
    if body.is_empty() {
        return Err(client("audio: the request body is empty; send a 16-bit PCM WAV file"));
    }
    let reader = hound::WavReader::new(Cursor::new(body))
        .map_err(|e| client(format!("audio: the body is not a readable WAV file: {e}")))?;
    let spec = reader.spec();
    if spec.sample_format != hound::SampleFormat::Int || spec.bits_per_sample != 16 {
        let kind = match spec.sample_format {
            hound::SampleFormat::Int => "integer",
            hound::SampleFormat::Float => "float",
        };
        return Err(client(format!(
            "audio: the WAV holds {}-bit {kind} samples; only 16-bit PCM is supported (convert with e.g. \
             `ffmpeg -i in.wav -c:a pcm_s16le out.wav`)",
            spec.bits_per_sample
        )));
    }
    if spec.sample_rate == 0 {
        return Err(client("audio: the WAV declares a sample rate of 0 Hz"));
    }
    let channels = usize::from(spec.channels.max(1));
    // Not preallocated from the header's length: the header is the client's word, the bytes are not.
    let mut samples = Vec::new();
    let (mut sum, mut in_frame) = (0i64, 0usize);
    for s in reader.into_samples::<i16>() {
        let s = s.map_err(|e| client(format!("audio: the WAV data is truncated or corrupt: {e}")))?;
        sum += i64::from(s);
        in_frame += 1;
        if in_frame == channels {
            samples.push(sum as f32 / (channels as f32 * 32768.0));
            (sum, in_frame) = (0, 0);
        }
    }
    if in_frame != 0 {
        return Err(client("audio: the WAV data ends in the middle of a frame"));
    }
    if samples.is_empty() {
        return Err(client("audio: the WAV holds no samples"));
    }
    Ok(Clip { samples, sample_rate: spec.sample_rate })
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_proto::manifest::MelLayout;

    fn wav(rate: u32, channels: u16, bits: u16, samples: &[i32]) -> Vec<u8> {
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: bits,
            sample_format: hound::SampleFormat::Int,
        };
        let mut out = Cursor::new(Vec::new());
        let mut w = hound::WavWriter::new(&mut out, spec).unwrap();
        for &s in samples {
            match bits {
                8 => w.write_sample(s as i8).unwrap(),
                16 => w.write_sample(s as i16).unwrap(),
                _ => w.write_sample(s).unwrap(),
            }
        }
        w.finalize().unwrap();
        out.into_inner()
    }

    fn pre(rate: u32, window: usize) -> AudioPre {
        toml::from_str(&format!("sample_rate = {rate}\nwindow_samples = {window}")).unwrap()
    }

    fn starts(items: &[(Tensor, ItemMeta)]) -> Vec<f64> {
        items
            .iter()
            .map(|(_, m)| match m {
                ItemMeta::AudioWindow { start_seconds } => *start_seconds,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn windows_are_back_to_back_and_the_last_is_zero_padded() {
        let body = wav(1000, 1, 16, &[16384; 2500]);
        let items = prepare(&pre(1000, 1000), &body).unwrap();
        assert_eq!(starts(&items), vec![0.0, 1.0, 2.0]);
        let last = crate::tensor::values::<f32>(&items[2].0).unwrap();
        assert_eq!(items[2].0.shape(), &[1, 1000]);
        assert_eq!((last[499], last[500]), (0.5, 0.0));
    }

    #[test]
    fn hop_overlaps_windows_and_short_clips_still_give_one() {
        let mut p = pre(1000, 1000);
        p.hop_samples = Some(500);
        let items = prepare(&p, &wav(1000, 1, 16, &[0; 2000])).unwrap();
        assert_eq!(starts(&items), vec![0.0, 0.5, 1.0]);
        assert_eq!(prepare(&p, &wav(1000, 1, 16, &[0; 10])).unwrap().len(), 1);
        p.hop_samples = Some(3000);
        assert_eq!(WindowPlan::from_pre(&p).unwrap().count(3500), 2);
        assert_eq!(WindowPlan::from_pre(&p).unwrap().count(3000), 1);
    }

    #[test]
    fn stereo_is_mixed_to_mono() {
        // Left full-scale positive, right silent: the mix is half scale.
        let body = wav(1000, 2, 16, &[32767, 0, 32767, 0, -32768, 0]);
        let items = prepare(&pre(1000, 3), &body).unwrap();
        let v = crate::tensor::values::<f32>(&items[0].0).unwrap();
        assert!((v[0] - 0.5).abs() < 1e-4 && (v[2] + 0.5).abs() < 1e-4, "{v:?}");
    }

    #[test]
    fn resampling_gives_the_model_rate() {
        let body = wav(48_000, 1, 16, &vec![1000; 48_000]);
        let items = prepare(&pre(16_000, 16_000), &body).unwrap();
        assert_eq!(items.len(), 1);
        let v = crate::tensor::values::<f32>(&items[0].0).unwrap();
        // A constant stays that constant away from the edges.
        assert!((v[8000] - 1000.0 / 32768.0).abs() < 1e-4, "{}", v[8000]);
    }

    #[test]
    fn log_mel_windows_have_the_configured_shape() {
        let mut p = pre(16_000, 16_000);
        p.features = AudioFeatures::LogMel;
        p.mel_layout = MelLayout::FramesMels;
        let items = prepare(&p, &wav(16_000, 1, 16, &[0; 20_000])).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].0.shape(), &[1, 101, 40]);
    }

    #[test]
    fn wrong_formats_truncation_and_emptiness_are_client_errors() {
        let eight_bit = wav(8000, 1, 8, &[1, 2, 3]);
        let err = prepare(&pre(8000, 100), &eight_bit).unwrap_err();
        assert!(err.is_client_error() && err.to_string().contains("8-bit"), "{err}");
        let good = wav(8000, 1, 16, &[1; 100]);
        let err = prepare(&pre(8000, 100), &good[..good.len() - 11]).unwrap_err();
        assert!(err.is_client_error() && err.to_string().contains("truncated"), "{err}");
        let err = prepare(&pre(8000, 100), &wav(8000, 1, 16, &[])).unwrap_err();
        assert!(err.is_client_error() && err.to_string().contains("no samples"), "{err}");
        for body in [&b""[..], b"RIFF", b"not a wav at all"] {
            assert!(prepare(&pre(8000, 100), body).unwrap_err().is_client_error());
        }
    }

    #[test]
    fn zero_window_or_hop_is_a_config_error() {
        let body = wav(8000, 1, 16, &[1; 100]);
        let mut p = pre(8000, 0);
        assert!(!prepare(&p, &body).unwrap_err().is_client_error());
        p = pre(8000, 100);
        p.hop_samples = Some(0);
        assert!(!prepare(&p, &body).unwrap_err().is_client_error());
    }
}
