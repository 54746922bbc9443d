//! How one piece is encoded against the piece it replaces.
//!
//! A retrained float tensor keeps its sign and exponent and most high mantissa bits, so the
//! integer difference of the two bit patterns is small: zigzag-coded (small negative numbers
//! become small positive ones), with the bytes of each element spread into planes (all low
//! bytes, then all next bytes, …) so that zstd sees the long runs of zero high bytes. A
//! convolution whose folded BatchNorm moved is, per output channel, nearly the old one times a
//! factor: that factor is sent per channel and only the difference from the prediction. Every
//! step is integer arithmetic on bit patterns or one IEEE multiply, so the device rebuilds the
//! exact bytes the publisher had, whatever its FPU. Data is processed in blocks, so applying a
//! piece never holds more than a block of it.

use crate::DeltaError;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};

/// Bytes processed at a time (a multiple of every element size).
pub const BLOCK: usize = 1 << 16;
/// zstd level: encoding happens once per version pair on the server, decoding on the device.
const LEVEL: i32 = 19;
/// Window of every frame but a prefix delta's: bounds what a device allocates to decode.
const WINDOW_LOG: u32 = 20;
/// A prefix delta must reach back over the whole old piece.
const PREFIX_WINDOW_LOG: u32 = 21;
/// Most output channels a scaled delta may name.
pub const MAX_CHANNELS: u64 = 1 << 20;

/// How a piece's bytes are encoded in its blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "c")]
pub enum Codec {
    /// zstd of the bytes.
    Zstd,
    /// zstd of the zigzag integer difference, byte planes, against the base's bytes at `at`.
    Diff {
        /// Offset of the same-sized piece in the base package.
        at: u64,
        /// Bytes per element (1, 2, 4 or 8).
        elem: u8,
    },
    /// f32 only: per-channel factors, then the difference from base × factor, as in `Diff`.
    Scaled {
        /// Offset of the same-sized piece in the base package.
        at: u64,
        /// Output channels (the first dimension).
        channels: u64,
    },
    /// f32 only, a lossy release's tensor ([`crate::quant`]): per-channel scales, then one
    /// code `q` per weight; the weight is `base + q × scale`.
    Quant {
        /// Offset of the same-sized piece in the base package.
        at: u64,
        /// Channels (one scale each).
        channels: u64,
        /// Bits of each code.
        bits: u8,
    },
    /// zstd with the base's bytes at `at..at+len` as prefix (a generic delta).
    Prefix {
        /// Offset in the base package.
        at: u64,
        /// Bytes of the base used.
        len: u64,
    },
}

fn zigzag(d: u64, bits: u32) -> u64 {
    let s = ((d << (64 - bits)) as i64) >> (64 - bits);
    let z = ((s << 1) ^ (s >> 63)) as u64;
    if bits == 64 {
        z
    } else {
        z & ((1u64 << bits) - 1)
    }
}

fn unzigzag(z: u64, bits: u32) -> u64 {
    let s = ((z >> 1) as i64) ^ -((z & 1) as i64);
    if bits == 64 {
        s as u64
    } else {
        (s as u64) & ((1u64 << bits) - 1)
    }
}

fn load(b: &[u8]) -> u64 {
    let mut v = [0u8; 8];
    v[..b.len()].copy_from_slice(b);
    u64::from_le_bytes(v)
}

/// One block's zigzag differences in byte planes: `new[i] - pred[i]` per element.
fn diff_block(new: &[u8], pred: &[u8], elem: usize, out: &mut Vec<u8>) {
    let n = new.len() / elem;
    let bits = (elem * 8) as u32;
    let start = out.len();
    out.resize(start + new.len(), 0);
    let planes = &mut out[start..];
    for i in 0..n {
        let d = load(&new[i * elem..(i + 1) * elem]).wrapping_sub(load(&pred[i * elem..(i + 1) * elem]));
        let z = zigzag(d, bits).to_le_bytes();
        for b in 0..elem {
            planes[b * n + i] = z[b];
        }
    }
}

/// Undoes [`diff_block`]: `pred` becomes the new bytes.
fn undiff_block(planes: &[u8], pred: &mut [u8], elem: usize) {
    let n = planes.len() / elem;
    let bits = (elem * 8) as u32;
    let mut z = [0u8; 8];
    for i in 0..n {
        for b in 0..elem {
            z[b] = planes[b * n + i];
        }
        let d = unzigzag(u64::from_le_bytes(z), bits);
        let v = load(&pred[i * elem..(i + 1) * elem]).wrapping_add(d).to_le_bytes();
        pred[i * elem..(i + 1) * elem].copy_from_slice(&v[..elem]);
    }
}

/// Old value times its channel's factor: one IEEE single-precision multiply, no fusing.
fn predict_scaled(old: &[u8], first: usize, per_channel: usize, scales: &[f32], out: &mut [u8]) {
    for (k, (o, p)) in old.chunks_exact(4).zip(out.chunks_exact_mut(4)).enumerate() {
        let c = (first + k) / per_channel;
        let v = f32::from_le_bytes([o[0], o[1], o[2], o[3]]) * scales[c];
        p.copy_from_slice(&v.to_le_bytes());
    }
}

/// The per-channel least-squares factors that map `old` to `new`.
fn fit_scales(new: &[u8], old: &[u8], channels: usize) -> Vec<f32> {
    let per = new.len() / 4 / channels;
    (0..channels)
        .map(|c| {
            let (mut no, mut oo) = (0f64, 0f64);
            for k in c * per..(c + 1) * per {
                let n = f32::from_le_bytes(new[k * 4..k * 4 + 4].try_into().unwrap_or_default()) as f64;
                let o = f32::from_le_bytes(old[k * 4..k * 4 + 4].try_into().unwrap_or_default()) as f64;
                if n.is_finite() && o.is_finite() {
                    no += n * o;
                    oo += o * o;
                }
            }
            let s = if oo > 0.0 { (no / oo) as f32 } else { 1.0 };
            if s.is_finite() {
                s
            } else {
                1.0
            }
        })
        .collect()
}

fn compress(raw: &[u8], prefix: Option<&[u8]>) -> Result<Vec<u8>, DeltaError> {
    compress_parts(&[raw], prefix)
}

/// zstd of the concatenated `parts`, each ended with a flush: a flush ends a zstd block, and
/// each block has its own entropy tables, so byte planes of very different statistics (noisy
/// low mantissa bytes, nearly constant exponent bytes) are each coded with their own, while
/// matches still reach across them. The decoder sees one ordinary frame.
fn compress_parts(parts: &[&[u8]], prefix: Option<&[u8]>) -> Result<Vec<u8>, DeltaError> {
    let err = |e: std::io::Error| DeltaError::Io(format!("zstd: {e}"));
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let out = Vec::with_capacity(total / 2);
    let mut e = match prefix {
        Some(p) => zstd::stream::write::Encoder::with_ref_prefix(out, LEVEL, p).map_err(err)?,
        None => zstd::stream::write::Encoder::new(out, LEVEL).map_err(err)?,
    };
    e.window_log(if prefix.is_some() { PREFIX_WINDOW_LOG } else { WINDOW_LOG }).map_err(err)?;
    e.include_checksum(false).map_err(err)?;
    // The size in the frame header lets the device's decoder size its buffer to the piece.
    e.set_pledged_src_size(Some(total as u64)).map_err(err)?;
    for part in parts {
        e.write_all(part).map_err(err)?;
        if parts.len() > 1 {
            e.flush().map_err(err)?;
        }
    }
    e.finish().map_err(err)
}

/// The byte planes of `raw` (made of blocks of [`BLOCK`] bytes, each `elem` planes), as parts.
fn planes(raw: &[u8], elem: usize, head: usize) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    if head > 0 {
        parts.push(&raw[..head]);
    }
    for block in raw[head..].chunks(BLOCK) {
        let n = block.len() / elem;
        parts.extend((0..elem).map(|b| &block[b * n..(b + 1) * n]));
    }
    parts
}

/// Encodes `new` with `codec`, `base` being the whole base package's piece the codec names.
pub fn encode(codec: &Codec, new: &[u8], base: &[u8]) -> Result<Vec<u8>, DeltaError> {
    match codec {
        Codec::Zstd => compress(new, None),
        Codec::Prefix { .. } => compress(new, Some(base)),
        Codec::Diff { elem, .. } => {
            let elem = usize::from(*elem);
            let mut raw = Vec::with_capacity(new.len());
            for (n, o) in new.chunks(BLOCK).zip(base.chunks(BLOCK)) {
                diff_block(n, o, elem, &mut raw);
            }
            compress_parts(&planes(&raw, elem, 0), None)
        }
        Codec::Quant { .. } => Err(DeltaError::Corrupt("a quantised piece needs its scales: encode_quant".into())),
        Codec::Scaled { channels, .. } => {
            let channels = *channels as usize;
            let scales = fit_scales(new, base, channels);
            let per = new.len() / 4 / channels;
            let mut raw: Vec<u8> = scales.iter().flat_map(|s| s.to_le_bytes()).collect();
            let mut pred = vec![0u8; BLOCK];
            for (b, (n, o)) in new.chunks(BLOCK).zip(base.chunks(BLOCK)).enumerate() {
                let p = &mut pred[..n.len()];
                predict_scaled(o, b * BLOCK / 4, per, &scales, p);
                diff_block(n, p, 4, &mut raw);
            }
            compress_parts(&planes(&raw, 4, channels * 4), None)
        }
    }
}

/// Encodes a lossy release's tensor `new` against `base` as [`Codec::Quant`] codes, or `None`
/// when `new` is not `base + q × scale` under `scales`.
pub fn encode_quant(new: &[u8], base: &[u8], scales: &[f32], bits: u8) -> Option<Result<Vec<u8>, DeltaError>> {
    let codes = crate::quant::codes(new, base, scales, bits)?;
    let head: Vec<u8> = scales.iter().flat_map(|s| s.to_le_bytes()).collect();
    Some(compress_parts(&[&head, &codes], None))
}

/// The codecs worth trying for a `len`-byte piece whose counterpart in the base is at `at`.
pub fn candidates(at: u64, len: u64, elem: u8, data_type: i32, first_dim: u64) -> Vec<Codec> {
    let mut out = vec![Codec::Zstd];
    let elem = if matches!(elem, 1 | 2 | 4 | 8) && len.is_multiple_of(u64::from(elem)) { elem } else { 1 };
    out.push(Codec::Diff { at, elem });
    if data_type == 1
        && (2..=MAX_CHANNELS).contains(&first_dim)
        && (len / 4).is_multiple_of(first_dim)
        && len.is_multiple_of(4)
    {
        out.push(Codec::Scaled { at, channels: first_dim });
    }
    out
}

/// Where a decoder reads the base's bytes from.
pub trait BaseBytes {
    /// Fills `buf` with the base package's bytes at `offset`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
}

/// Decodes a `len`-byte piece from `blob` (its encoded bytes) into `out`, reading the base
/// through `base`. Memory: a few blocks and the zstd window, whatever `len` is.
pub fn decode(
    codec: &Codec,
    len: u64,
    blob: impl Read,
    base: &mut dyn BaseBytes,
    out: &mut dyn Write,
) -> Result<(), DeltaError> {
    let corrupt = |e: std::io::Error| DeltaError::Corrupt(format!("piece data: {e}"));
    let write = |e: std::io::Error| DeltaError::Io(format!("writing: {e}"));
    match codec {
        Codec::Prefix { at, len: base_len } => {
            let mut prefix = vec![0u8; usize::try_from(*base_len).map_err(|_| DeltaError::Corrupt("prefix".into()))?];
            base.read_at(*at, &mut prefix).map_err(|e| DeltaError::Io(format!("reading the base: {e}")))?;
            let mut d = zstd::stream::read::Decoder::with_ref_prefix(std::io::BufReader::new(blob), &prefix)
                .map_err(corrupt)?;
            d.window_log_max(PREFIX_WINDOW_LOG).map_err(corrupt)?;
            copy_exact(&mut d, len, out)
        }
        Codec::Zstd => {
            let mut d = zstd::stream::read::Decoder::new(blob).map_err(corrupt)?;
            d.window_log_max(WINDOW_LOG).map_err(corrupt)?;
            copy_exact(&mut d, len, out)
        }
        Codec::Diff { at, elem } => {
            let elem = usize::from(*elem);
            let mut d = zstd::stream::read::Decoder::new(blob).map_err(corrupt)?;
            d.window_log_max(WINDOW_LOG).map_err(corrupt)?;
            let (mut planes, mut cur) = (vec![0u8; BLOCK], vec![0u8; BLOCK]);
            let mut done = 0u64;
            while done < len {
                let k = (len - done).min(BLOCK as u64) as usize;
                d.read_exact(&mut planes[..k]).map_err(corrupt)?;
                base.read_at(at + done, &mut cur[..k]).map_err(|e| DeltaError::Io(format!("reading the base: {e}")))?;
                undiff_block(&planes[..k], &mut cur[..k], elem);
                out.write_all(&cur[..k]).map_err(write)?;
                done += k as u64;
            }
            expect_end(&mut d)
        }
        Codec::Quant { at, channels, .. } => {
            let channels = *channels as usize;
            let per = (len / 4) as usize / channels;
            let mut d = zstd::stream::read::Decoder::new(blob).map_err(corrupt)?;
            d.window_log_max(WINDOW_LOG).map_err(corrupt)?;
            let scales = read_scales(&mut d, channels)?;
            let (mut q, mut cur) = (vec![0u8; BLOCK / 4], vec![0u8; BLOCK]);
            let mut done = 0u64;
            while done < len {
                let k = (len - done).min(BLOCK as u64) as usize;
                d.read_exact(&mut q[..k / 4]).map_err(corrupt)?;
                base.read_at(at + done, &mut cur[..k]).map_err(|e| DeltaError::Io(format!("reading the base: {e}")))?;
                let first = (done / 4) as usize;
                for (i, w) in cur[..k].chunks_exact_mut(4).enumerate() {
                    let old = f32::from_le_bytes([w[0], w[1], w[2], w[3]]);
                    let v = crate::quant::rebuild(old, q[i] as i8, scales[(first + i) / per]);
                    w.copy_from_slice(&v.to_le_bytes());
                }
                out.write_all(&cur[..k]).map_err(write)?;
                done += k as u64;
            }
            expect_end(&mut d)
        }
        Codec::Scaled { at, channels } => {
            let channels = *channels as usize;
            let per = (len / 4) as usize / channels;
            let mut d = zstd::stream::read::Decoder::new(blob).map_err(corrupt)?;
            d.window_log_max(WINDOW_LOG).map_err(corrupt)?;
            let scales = read_scales(&mut d, channels)?;
            let (mut planes, mut old, mut cur) = (vec![0u8; BLOCK], vec![0u8; BLOCK], vec![0u8; BLOCK]);
            let mut done = 0u64;
            while done < len {
                let k = (len - done).min(BLOCK as u64) as usize;
                d.read_exact(&mut planes[..k]).map_err(corrupt)?;
                base.read_at(at + done, &mut old[..k]).map_err(|e| DeltaError::Io(format!("reading the base: {e}")))?;
                predict_scaled(&old[..k], (done / 4) as usize, per, &scales, &mut cur[..k]);
                undiff_block(&planes[..k], &mut cur[..k], 4);
                out.write_all(&cur[..k]).map_err(write)?;
                done += k as u64;
            }
            expect_end(&mut d)
        }
    }
}

/// The `channels` little-endian f32 factors a scaled or quantised piece starts with.
fn read_scales(d: &mut impl Read, channels: usize) -> Result<Vec<f32>, DeltaError> {
    let mut raw = vec![0u8; channels * 4];
    d.read_exact(&mut raw).map_err(|e| DeltaError::Corrupt(format!("piece data: {e}")))?;
    Ok(raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

fn copy_exact(d: &mut impl Read, len: u64, out: &mut dyn Write) -> Result<(), DeltaError> {
    let copied = std::io::copy(&mut d.take(len), out).map_err(|e| DeltaError::Corrupt(format!("piece data: {e}")))?;
    if copied != len {
        return Err(DeltaError::Corrupt(format!("piece data ends after {copied} of {len} bytes")));
    }
    expect_end(d)
}

/// A blob must decode to exactly the piece: more bytes mean it is not the blob the plan names.
fn expect_end(d: &mut impl Read) -> Result<(), DeltaError> {
    let mut one = [0u8; 1];
    match d.read(&mut one) {
        Ok(0) => Ok(()),
        Ok(_) => Err(DeltaError::Corrupt("piece data longer than the plan says".into())),
        Err(e) => Err(DeltaError::Corrupt(format!("piece data: {e}"))),
    }
}

/// Checks a codec's numbers against the piece it is for and the base it reads.
pub fn check(codec: &Codec, len: u64, base_size: Option<u64>) -> Result<(), DeltaError> {
    let bad = |what: &str| Err(DeltaError::Corrupt(format!("plan: {what}")));
    let within = |at: u64, n: u64| base_size.is_some_and(|s| at.checked_add(n).is_some_and(|e| e <= s));
    match codec {
        Codec::Zstd => Ok(()),
        Codec::Diff { at, elem } => {
            if !matches!(elem, 1 | 2 | 4 | 8) || !len.is_multiple_of(u64::from(*elem)) {
                return bad("element size does not divide the piece");
            }
            if !within(*at, len) {
                return bad("a delta reads outside the base");
            }
            Ok(())
        }
        Codec::Scaled { at, channels } | Codec::Quant { at, channels, .. } => {
            if !(1..=MAX_CHANNELS).contains(channels) || !len.is_multiple_of(4) || !(len / 4).is_multiple_of(*channels)
            {
                return bad("channels do not divide the piece");
            }
            if matches!(codec, Codec::Quant { bits, .. } if !(1..=8).contains(bits)) {
                return bad("a quantised piece has 1 to 8 bits per code");
            }
            if !within(*at, len) {
                return bad("a delta reads outside the base");
            }
            Ok(())
        }
        Codec::Prefix { at, len: n } => {
            if *n > 1 << PREFIX_WINDOW_LOG >> 1 || !within(*at, *n) {
                return bad("a prefix is too long or outside the base");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zigzag_round_trips_every_width() {
        for bits in [8u32, 16, 32, 64] {
            let mask = if bits == 64 { u64::MAX } else { (1u64 << bits) - 1 };
            for d in [0u64, 1, 2, mask, mask - 1, mask >> 1, (mask >> 1) + 1, 12345 & mask] {
                assert_eq!(unzigzag(zigzag(d, bits), bits), d, "bits {bits} d {d}");
            }
            assert_eq!(zigzag(mask, bits), 1, "-1 is 1");
            assert_eq!(zigzag(1, bits), 2);
        }
    }
}
