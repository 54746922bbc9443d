//! The plan for rebuilding one package from another: made on the server, applied on the
//! device.

use crate::codec::{self, BaseBytes, Codec};
use crate::index::Index;
use crate::DeltaError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Plan format this code writes and reads.
pub const FORMAT: u32 = 1;
/// Largest plan accepted, decompressed.
pub const MAX_PLAN_BYTES: u64 = 64 << 20;
/// Largest frame accepted: it is held in memory while a package is rebuilt.
pub const MAX_FRAME_BYTES: u64 = 64 << 20;
/// A base frame longer than this is not used as a prefix (the device would hold it in memory).
const MAX_PREFIX_FRAME: u64 = 1 << 20;

/// A package: its hash and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// sha256, lowercase hex.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
}

/// One encoded piece in the plan's blob file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blob {
    /// sha256 of the decoded piece.
    pub sha256: String,
    /// Decoded bytes.
    pub len: u64,
    /// Offset of the encoded bytes in the blob file.
    pub at: u64,
    /// Encoded bytes.
    pub size: u64,
    /// How it is encoded.
    pub codec: Codec,
}

/// One stretch of the package, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// The next `len` bytes of the frame.
    #[serde(rename = "f")]
    Frame(u64),
    /// The base's bytes at `at..at+len`, unchanged.
    #[serde(rename = "r")]
    Ref {
        /// Offset in the base.
        at: u64,
        /// Bytes.
        len: u64,
    },
    /// A piece to decode from a blob (or to copy from any held version with the same hash).
    #[serde(rename = "b")]
    Blob(Blob),
}

/// How to rebuild `target` from `base` and the blob file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// [`FORMAT`].
    pub format: u32,
    /// The package this rebuilds.
    pub target: Target,
    /// The package it reads from, if any.
    pub base: Option<Target>,
    /// The frame, first in the blob file; a `Prefix` codec here reads the base's frame.
    pub frame: Blob,
    /// The package, in order.
    pub steps: Vec<Step>,
    /// Bytes of the blob file.
    pub blobs_size: u64,
}

/// What a plan saves, for logs and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Savings {
    /// Bytes rebuilt from the base without any transfer.
    pub referenced: u64,
    /// Encoded bytes of the blob file.
    pub blobs: u64,
}

fn read_ranges(file: &File, ranges: &[(u64, u64)]) -> Result<Vec<u8>, DeltaError> {
    let total: u64 = ranges.iter().map(|(_, l)| l).sum();
    let mut out = vec![0u8; usize::try_from(total).map_err(|_| DeltaError::Corrupt("frame too large".into()))?];
    let mut at = 0usize;
    for &(offset, len) in ranges {
        let len = len as usize;
        std::os::unix::fs::FileExt::read_exact_at(file, &mut out[at..at + len], offset)
            .map_err(|e| DeltaError::Io(format!("reading a package: {e}")))?;
        at += len;
    }
    Ok(out)
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The smallest encoding of `new` among `codecs`.
fn best(
    codecs: Vec<Codec>,
    new: &[u8],
    base: &dyn Fn(&Codec) -> Result<Vec<u8>, DeltaError>,
) -> Result<(Codec, Vec<u8>), DeltaError> {
    let mut best: Option<(Codec, Vec<u8>)> = None;
    for c in codecs {
        let b = base(&c)?;
        let enc = codec::encode(&c, new, &b)?;
        if best.as_ref().is_none_or(|(_, e)| enc.len() < e.len()) {
            best = Some((c, enc));
        }
    }
    best.ok_or_else(|| DeltaError::Corrupt("no codec".into()))
}

impl Plan {
    /// Makes the plan that rebuilds the package at `new_path` (indexed as `new`) from the one at
    /// `base` (or from nothing), writing the blobs to `blobs`.
    pub fn make(
        new_path: &Path,
        new: &Index,
        base: Option<(&Path, &Index)>,
        blobs: &mut dyn Write,
    ) -> Result<Plan, DeltaError> {
        let io = |e: std::io::Error| DeltaError::Io(format!("{e}"));
        let new_file = File::open(new_path).map_err(io)?;
        let base_file = base.map(|(p, _)| File::open(p)).transpose().map_err(io)?;
        let base_index = base.map(|(_, i)| i);
        let by_hash: HashMap<&str, &crate::Piece> =
            base_index.iter().flat_map(|i| i.pieces.iter()).map(|p| (p.sha256.as_str(), p)).collect();
        let by_name: HashMap<String, &crate::Piece> =
            base_index.iter().flat_map(|i| i.pieces.iter()).map(|p| (counterpart_key(&p.kind), p)).collect();
        let read_base = |at: u64, len: u64| -> Result<Vec<u8>, DeltaError> {
            match &base_file {
                Some(f) => read_ranges(f, &[(at, len)]),
                None => Ok(Vec::new()),
            }
        };
        // Scales of a lossy release made against this very base.
        let hints = match base_index {
            // Unreadable hints only cost compression: the lossless codecs still apply.
            Some(b) => crate::quant::Hints::of_package(new_path).ok().flatten().filter(|h| h.base_sha256 == b.sha256),
            None => None,
        };
        let mut written = 0u64;
        let mut put = |enc: &[u8]| -> Result<(u64, u64), DeltaError> {
            blobs.write_all(enc).map_err(io)?;
            let at = written;
            written += enc.len() as u64;
            Ok((at, enc.len() as u64))
        };

        // The frame, against the base's frame where that is small enough to hold.
        let frame = read_ranges(&new_file, &new.frame_ranges())?;
        let base_frame = match (&base_file, base_index) {
            (Some(f), Some(i)) if i.frame_len() <= MAX_PREFIX_FRAME => Some(read_ranges(f, &i.frame_ranges())?),
            _ => None,
        };
        let mut codecs = vec![Codec::Zstd];
        if let Some(b) = &base_frame {
            codecs.push(Codec::Prefix { at: 0, len: b.len() as u64 });
        }
        let (c, enc) = best(codecs, &frame, &|_| Ok(base_frame.clone().unwrap_or_default()))?;
        let (at, size) = put(&enc)?;
        let frame_blob = Blob { sha256: sha(&frame), len: frame.len() as u64, at, size, codec: c };

        let mut steps = Vec::with_capacity(new.pieces.len() * 2);
        let mut pos = 0u64;
        for piece in &new.pieces {
            if piece.offset > pos {
                steps.push(Step::Frame(piece.offset - pos));
            }
            pos = piece.offset + piece.len;
            if let Some(same) = by_hash.get(piece.sha256.as_str()).filter(|p| p.len == piece.len) {
                steps.push(Step::Ref { at: same.offset, len: same.len });
                continue;
            }
            let bytes = read_ranges(&new_file, &[(piece.offset, piece.len)])?;
            let mut codecs = vec![Codec::Zstd];
            if let Some(old) = by_name.get(&counterpart_key(&piece.kind)) {
                match &piece.kind {
                    crate::PieceKind::Tensor { elem, data_type, first_dim, .. } if old.len == piece.len => {
                        codecs = codec::candidates(old.offset, piece.len, *elem, *data_type, *first_dim);
                    }
                    crate::PieceKind::Chunk { .. } => codecs.push(Codec::Prefix { at: old.offset, len: old.len }),
                    _ => {}
                }
            }
            let (mut c, mut enc) = best(codecs, &bytes, &|c| match c {
                Codec::Zstd | Codec::Quant { .. } => Ok(Vec::new()),
                Codec::Diff { at, .. } | Codec::Scaled { at, .. } => read_base(*at, piece.len),
                Codec::Prefix { at, len } => read_base(*at, *len),
            })?;
            // A lossy release's tensor, against the base it was rounded from: its codes alone.
            if let (Some(h), crate::PieceKind::Tensor { name, data_type: 1, .. }) = (&hints, &piece.kind) {
                let old = by_name.get(&counterpart_key(&piece.kind)).filter(|o| o.len == piece.len);
                if let (Some(scales), Some(old)) = (h.scales(name), old) {
                    let old_bytes = read_base(old.offset, piece.len)?;
                    if let Some(q) = codec::encode_quant(&bytes, &old_bytes, &scales, h.bits).transpose()? {
                        if q.len() < enc.len() {
                            c = Codec::Quant { at: old.offset, channels: scales.len() as u64, bits: h.bits };
                            enc = q;
                        }
                    }
                }
            }
            let (at, size) = put(&enc)?;
            steps.push(Step::Blob(Blob { sha256: piece.sha256.clone(), len: piece.len, at, size, codec: c }));
        }
        if new.size > pos {
            steps.push(Step::Frame(new.size - pos));
        }
        let base = base_index.map(|i| Target { sha256: i.sha256.clone(), size: i.size });
        Ok(Plan {
            format: FORMAT,
            target: Target { sha256: new.sha256.clone(), size: new.size },
            base,
            frame: frame_blob,
            steps,
            blobs_size: written,
        })
    }

    /// What the plan saves against sending the whole package.
    pub fn savings(&self) -> Savings {
        let referenced = self.steps.iter().map(|s| if let Step::Ref { len, .. } = s { *len } else { 0 }).sum();
        Savings { referenced, blobs: self.blobs_size }
    }

    /// The plan as sent: zstd-compressed JSON.
    pub fn to_bytes(&self) -> Result<Vec<u8>, DeltaError> {
        let json = serde_json::to_vec(self).map_err(|e| DeltaError::Corrupt(format!("plan: {e}")))?;
        zstd::bulk::compress(&json, 19).map_err(|e| DeltaError::Io(format!("zstd: {e}")))
    }

    /// Reads a plan as sent, refusing one larger than [`MAX_PLAN_BYTES`] or inconsistent.
    pub fn from_bytes(bytes: &[u8]) -> Result<Plan, DeltaError> {
        let corrupt = |what: String| DeltaError::Corrupt(format!("plan: {what}"));
        let mut json = Vec::new();
        let d = zstd::stream::read::Decoder::new(bytes).map_err(|e| corrupt(e.to_string()))?;
        std::io::Read::read_to_end(&mut std::io::Read::take(d, MAX_PLAN_BYTES + 1), &mut json)
            .map_err(|e| corrupt(e.to_string()))?;
        if json.len() as u64 > MAX_PLAN_BYTES {
            return Err(corrupt(format!("larger than {MAX_PLAN_BYTES} bytes")));
        }
        let plan: Plan = serde_json::from_slice(&json).map_err(|e| corrupt(e.to_string()))?;
        plan.check()?;
        Ok(plan)
    }

    /// Checks that the steps add up to the target, the frame to its blob, and every blob and
    /// base read lies within its file.
    pub fn check(&self) -> Result<(), DeltaError> {
        let bad = |what: &str| Err(DeltaError::Corrupt(format!("plan: {what}")));
        if self.format != FORMAT {
            return bad(&format!("format {} (this agent reads {FORMAT})", self.format));
        }
        let base_size = self.base.as_ref().map(|b| b.size);
        let (mut total, mut frame) = (0u64, 0u64);
        let blob_ok = |b: &Blob| b.at.checked_add(b.size).is_some_and(|e| e <= self.blobs_size);
        if !blob_ok(&self.frame) || self.frame.len > MAX_FRAME_BYTES {
            return bad("the frame blob lies outside the blob file or is too large");
        }
        match &self.frame.codec {
            Codec::Zstd => {}
            Codec::Prefix { at: 0, len } if base_size.is_some() && *len <= MAX_PREFIX_FRAME => {}
            _ => return bad("the frame has a codec it cannot have"),
        }
        for step in &self.steps {
            let len = match step {
                Step::Frame(len) => {
                    frame = frame.checked_add(*len).ok_or(DeltaError::Corrupt("plan: overflow".into()))?;
                    *len
                }
                Step::Ref { at, len } => {
                    if base_size.is_none_or(|s| at.checked_add(*len).is_none_or(|e| e > s)) {
                        return bad("a reference lies outside the base");
                    }
                    *len
                }
                Step::Blob(b) => {
                    if !blob_ok(b) {
                        return bad("a blob lies outside the blob file");
                    }
                    codec::check(&b.codec, b.len, base_size)?;
                    b.len
                }
            };
            total = total.checked_add(len).ok_or(DeltaError::Corrupt("plan: overflow".into()))?;
        }
        if total != self.target.size {
            return bad(&format!("the steps make {total} bytes, the target has {}", self.target.size));
        }
        if frame != self.frame.len {
            return bad("the frame steps do not add up to the frame");
        }
        Ok(())
    }
}

/// Pieces of the base that a new piece is encoded against: same tensor name, same file part.
fn counterpart_key(kind: &crate::PieceKind) -> String {
    match kind {
        crate::PieceKind::Tensor { name, .. } => format!("t\0{name}"),
        crate::PieceKind::Chunk { file, part } => format!("c\0{file}\0{part}"),
    }
}

impl BaseBytes for &[u8] {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| std::io::ErrorKind::UnexpectedEof)?;
        let src = self.get(start..start + buf.len()).ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}
