//! Lossy releases: publishing the base version plus the trained change rounded to a few bits
//! per weight, instead of the trained weights themselves.
//!
//! After a fine-tune every float weight has moved by a little, and its lossless difference is
//! mostly noise in the low mantissa bits. Rounding each output channel's change to `bits` bits
//! (a per-channel scale, `q` in ±(2^(bits-1) - 1)) keeps what training changed and drops the
//! noise: the new weight is defined as `old + (q as f32) * scale`, one IEEE multiply and one
//! add in that order, never fused, so the device rebuilds exactly the bytes that were
//! published and the package's signed hash still verifies. The package carries the scales in
//! [`HINTS_FILE`], which the server reads to encode such tensors as `q` alone.

use crate::onnx::tensor_spans;
use crate::DeltaError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// The package file naming the base and each quantised tensor's scales.
pub const HINTS_FILE: &str = "delta-quant.json";
/// Largest hints file read.
const MAX_HINTS_BYTES: u64 = 32 << 20;
/// Format of [`Hints`].
pub const HINTS_FORMAT: u32 = 1;

/// What a lossy release was made from: written by the publisher, read by the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hints {
    /// [`HINTS_FORMAT`].
    pub format: u32,
    /// sha256 of the base package the change was rounded against.
    pub base_sha256: String,
    /// The base's version (for people).
    pub base_version: String,
    /// Bits per weight change.
    pub bits: u8,
    /// Tensor name → its per-channel scales: hex of little-endian f32s.
    pub tensors: BTreeMap<String, String>,
}

impl Hints {
    /// The scales of tensor `name`.
    pub fn scales(&self, name: &str) -> Option<Vec<f32>> {
        let bytes = hex::decode(self.tensors.get(name)?).ok()?;
        (!bytes.is_empty() && bytes.len().is_multiple_of(4))
            .then(|| bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }

    /// Reads the hints of the `.opkg` at `path`, if it has any.
    pub fn of_package(path: &Path) -> Result<Option<Hints>, DeltaError> {
        let io = |e: std::io::Error| DeltaError::Io(format!("{}: {e}", path.display()));
        let mut archive = tar::Archive::new(std::fs::File::open(path).map_err(io)?);
        let Ok(entries) = archive.entries() else { return Ok(None) };
        for entry in entries {
            let Ok(entry) = entry else { return Ok(None) };
            let is_hints = entry.path().is_ok_and(|p| p.to_string_lossy().trim_start_matches("./") == HINTS_FILE);
            if !is_hints {
                continue;
            }
            if entry.size() > MAX_HINTS_BYTES {
                return Err(DeltaError::Corrupt(format!("{HINTS_FILE} is over {MAX_HINTS_BYTES} bytes")));
            }
            let mut text = Vec::new();
            entry.take(MAX_HINTS_BYTES).read_to_end(&mut text).map_err(io)?;
            let hints: Hints =
                serde_json::from_slice(&text).map_err(|e| DeltaError::Corrupt(format!("{HINTS_FILE}: {e}")))?;
            if hints.format != HINTS_FORMAT || !(1..=8).contains(&hints.bits) {
                return Err(DeltaError::Corrupt(format!("{HINTS_FILE}: format {} bits {}", hints.format, hints.bits)));
            }
            return Ok(Some(hints));
        }
        Ok(None)
    }
}

/// Largest |q| for `bits`.
pub fn q_max(bits: u8) -> i32 {
    (1i32 << (bits.clamp(1, 8) - 1)) - 1
}

/// The weight a lossy release defines: `old + q × scale`, multiply then add, each rounded.
#[inline]
pub fn rebuild(old: f32, q: i8, scale: f32) -> f32 {
    // Two separate IEEE operations: Rust never contracts them into a fused multiply-add.
    let step = f32::from(q) * scale;
    old + step
}

/// The `q` that best rounds `new - old` for `scale`.
fn round_q(new: f32, old: f32, scale: f32, max: i32) -> i8 {
    if scale == 0.0 || !scale.is_finite() {
        return 0;
    }
    let q = ((f64::from(new) - f64::from(old)) / f64::from(scale)).round();
    q.clamp(-f64::from(max), f64::from(max)) as i8
}

/// The q codes that rebuild `new` from `old` exactly under `scales` (per channel of `per`
/// elements), or `None` when some weight is not `old + q × scale` for any allowed q: then the
/// piece is not this lossy release's, and another codec encodes it.
pub fn codes(new: &[u8], old: &[u8], scales: &[f32], bits: u8) -> Option<Vec<u8>> {
    let n = new.len() / 4;
    if new.len() != old.len() || !new.len().is_multiple_of(4) || scales.is_empty() || !n.is_multiple_of(scales.len()) {
        return None;
    }
    let per = n / scales.len();
    let max = q_max(bits);
    let mut out = Vec::with_capacity(n);
    for (k, (nb, ob)) in new.chunks_exact(4).zip(old.chunks_exact(4)).enumerate() {
        let (nv, ov) =
            (f32::from_le_bytes([nb[0], nb[1], nb[2], nb[3]]), f32::from_le_bytes([ob[0], ob[1], ob[2], ob[3]]));
        let s = scales[k / per];
        let q = round_q(nv, ov, s, max);
        // Rounding `old + q × scale` can land a neighbour's q on the same float.
        let q = [q, q.saturating_sub(1), q.saturating_add(1)]
            .into_iter()
            .find(|&q| i32::from(q).abs() <= max && rebuild(ov, q, s).to_bits() == nv.to_bits())?;
        out.push(q as u8);
    }
    Some(out)
}

/// How many weights share one scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// One scale per tensor: the step follows the largest change, so most codes are small and
    /// compress well.
    #[default]
    Tensor,
    /// One scale per output channel (the first dimension): finer steps, larger codes.
    Channel,
}

/// What [`quantize`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuantStats {
    /// Float tensors rounded.
    pub tensors: usize,
    /// Their weights.
    pub weights: u64,
    /// Float tensors left as trained (no counterpart of the same size, or not finite).
    pub kept: usize,
    /// Largest |published - trained| of any weight.
    pub max_abs_error: f64,
}

/// A lossy model: its ONNX bytes, the scales of each rounded tensor (for [`Hints::tensors`])
/// and what was done.
#[derive(Debug, Clone)]
pub struct Rounded {
    /// The ONNX file: the trained one's bytes but for the rounded weights.
    pub onnx: Vec<u8>,
    /// Tensor name → hex of its little-endian f32 scales.
    pub scales: BTreeMap<String, String>,
    /// Counts and the largest weight error.
    pub stats: QuantStats,
}

/// Rounds every float tensor's change from `base_onnx` to `new_onnx` to `bits` bits per weight,
/// with one scale per tensor or per output channel (the first dimension; 1-D tensors per tensor).
pub fn quantize(base_onnx: &[u8], new_onnx: &[u8], bits: u8, granularity: Granularity) -> Result<Rounded, DeltaError> {
    if !(2..=8).contains(&bits) {
        return Err(DeltaError::Corrupt(format!("--delta-bits {bits}: 2 to 8 bits per weight")));
    }
    let spans = |bytes: &[u8]| {
        tensor_spans(std::io::Cursor::new(bytes), 0, bytes.len() as u64)
            .map_err(|e| DeltaError::Corrupt(format!("not an ONNX model: {e}")))
    };
    let base: BTreeMap<String, crate::onnx::TensorSpan> =
        spans(base_onnx)?.into_iter().filter(|s| !s.name.is_empty()).map(|s| (s.name.clone(), s)).collect();
    let mut out = new_onnx.to_vec();
    let mut scales_out = BTreeMap::new();
    let mut stats = QuantStats::default();
    let max = q_max(bits);
    for span in spans(new_onnx)? {
        if span.data_type != 1 || span.name.is_empty() || scales_out.contains_key(&span.name) {
            continue;
        }
        let Some(old) = base.get(&span.name).filter(|o| o.len == span.len && o.data_type == 1) else {
            stats.kept += 1;
            continue;
        };
        let (at, len) = (span.offset as usize, span.len as usize);
        let new = &new_onnx[at..at + len];
        let oldb = &base_onnx[old.offset as usize..old.offset as usize + len];
        if new == oldb {
            continue;
        }
        let floats = |b: &[u8]| -> Vec<f32> {
            b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        };
        let (nv, ov) = (floats(new), floats(oldb));
        if nv.iter().chain(&ov).any(|v| !v.is_finite()) {
            stats.kept += 1;
            continue;
        }
        let n = nv.len();
        let channels = match (granularity, span.first_dim) {
            (Granularity::Channel, c) if c >= 2 && (n as u64).is_multiple_of(c) => c as usize,
            _ => 1,
        };
        let per = n / channels;
        let scales: Vec<f32> = (0..channels)
            .map(|c| {
                let m =
                    (c * per..(c + 1) * per).map(|k| (f64::from(nv[k]) - f64::from(ov[k])).abs()).fold(0.0, f64::max);
                (m / f64::from(max)) as f32
            })
            .collect();
        let mut error = 0f64;
        for k in 0..n {
            let s = scales[k / per];
            let v = rebuild(ov[k], round_q(nv[k], ov[k], s, max), s);
            error = error.max((f64::from(v) - f64::from(nv[k])).abs());
            out[at + k * 4..at + k * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        // What the server's encoder will find: if it could not, the tensor stays as trained.
        if codes(&out[at..at + len], oldb, &scales, bits).is_none() {
            out[at..at + len].copy_from_slice(new);
            stats.kept += 1;
            continue;
        }
        stats.max_abs_error = stats.max_abs_error.max(error);
        stats.tensors += 1;
        stats.weights += n as u64;
        scales_out
            .insert(span.name.clone(), hex::encode(scales.iter().flat_map(|s| s.to_le_bytes()).collect::<Vec<u8>>()));
    }
    Ok(Rounded { onnx: out, scales: scales_out, stats })
}
