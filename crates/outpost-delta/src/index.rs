//! The index of a package: its bytes cut into pieces that a new version can share with an old
//! one. Each ONNX tensor's data is a piece; so is every 1 MiB of another file in the package;
//! the rest (tar headers, the manifest, the graph structure around the tensors, small
//! tensors) is the package's frame. Pieces are hashed, so a device can tell which of them it
//! already holds in any version it has.

use crate::onnx;
use crate::DeltaError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Pieces smaller than this stay in the frame (biases, scales, shapes): a hash and a zstd
/// frame per piece would cost more than they save, and the frame is coded in one stream
/// against the base's frame.
pub const MIN_PIECE: u64 = 4096;
/// Files other than ONNX models are cut into pieces of at most this many bytes.
pub const CHUNK: u64 = 1 << 20;

/// What a piece is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum PieceKind {
    /// The data of one ONNX tensor.
    Tensor {
        /// The file it is in.
        file: String,
        /// The tensor's name.
        name: String,
        /// Bytes per element.
        elem: u8,
        /// ONNX data type.
        data_type: i32,
        /// First dimension (output channels), 0 when unknown.
        first_dim: u64,
    },
    /// Part of another file.
    Chunk {
        /// The file.
        file: String,
        /// Which part of it (0 for the first MiB).
        part: u64,
    },
}

/// One piece: a byte range of the package with its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    /// First byte, from the start of the package.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
    /// Lowercase hex sha256 of the bytes.
    pub sha256: String,
    /// What it is.
    #[serde(flatten)]
    pub kind: PieceKind,
}

/// A package cut into pieces (in order, not overlapping) and the frame around them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    /// Package bytes.
    pub size: u64,
    /// sha256 of the whole package.
    pub sha256: String,
    /// The pieces, by offset.
    pub pieces: Vec<Piece>,
}

impl Index {
    /// Indexes the package at `path`: a tar whose `.onnx` members are cut at their tensors and
    /// whose other members are cut into [`CHUNK`]s. A file that is not a tar is cut into chunks
    /// as a whole; an ONNX member that does not parse is chunked like any other file.
    pub fn of_package(path: &Path) -> Result<Index, DeltaError> {
        let io = |e: std::io::Error| DeltaError::Io(format!("{}: {e}", path.display()));
        let size = std::fs::metadata(path).map_err(io)?.len();
        let mut raw = Vec::new();
        match members(path) {
            Ok(files) => {
                for (name, start, len) in files {
                    let spans = if name.ends_with(".onnx") {
                        let mut f = File::open(path).map_err(io)?;
                        f.seek(SeekFrom::Start(start)).map_err(io)?;
                        onnx::tensor_spans(f, start, len).ok()
                    } else {
                        None
                    };
                    match spans {
                        Some(spans) => raw.extend(spans.into_iter().filter(|s| s.len >= MIN_PIECE).map(|s| {
                            let kind = PieceKind::Tensor {
                                file: name.clone(),
                                name: s.name,
                                elem: s.elem,
                                data_type: s.data_type,
                                first_dim: s.first_dim,
                            };
                            (s.offset, s.len, kind)
                        })),
                        None => raw.extend(chunks(&name, start, len)),
                    }
                }
            }
            Err(_) => raw.extend(chunks("", 0, size)),
        }
        raw.sort_by_key(|(offset, _, _)| *offset);
        // Overlaps cannot come from a well-formed file; drop any rather than trust them.
        let mut pieces: Vec<Piece> = Vec::with_capacity(raw.len());
        let mut end = 0;
        for (offset, len, kind) in raw {
            if offset < end || offset.checked_add(len).is_none_or(|e| e > size) {
                continue;
            }
            end = offset + len;
            pieces.push(Piece { offset, len, sha256: String::new(), kind });
        }
        let sha256 = hash_pieces(path, &mut pieces)?;
        Ok(Index { size, sha256, pieces })
    }

    /// The frame: the byte ranges between the pieces, in order.
    pub fn frame_ranges(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut at = 0;
        for p in &self.pieces {
            if p.offset > at {
                out.push((at, p.offset - at));
            }
            at = p.offset + p.len;
        }
        if self.size > at {
            out.push((at, self.size - at));
        }
        out
    }

    /// Bytes in the frame.
    pub fn frame_len(&self) -> u64 {
        self.frame_ranges().iter().map(|(_, l)| l).sum()
    }
}

fn chunks(file: &str, start: u64, len: u64) -> impl Iterator<Item = (u64, u64, PieceKind)> + '_ {
    let count = len.div_ceil(CHUNK);
    (0..count).filter_map(move |part| {
        let offset = start + part * CHUNK;
        let n = CHUNK.min(start + len - offset);
        (n >= MIN_PIECE).then(|| (offset, n, PieceKind::Chunk { file: file.to_string(), part }))
    })
}

/// The regular files of the tar at `path`: name, offset of the data, length.
fn members(path: &Path) -> std::io::Result<Vec<(String, u64, u64)>> {
    let mut archive = tar::Archive::new(File::open(path)?);
    let mut out = Vec::new();
    for entry in archive.entries_with_seek()? {
        let entry = entry?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path()?.to_string_lossy().trim_start_matches("./").to_string();
        out.push((name, entry.raw_file_position(), entry.size()));
    }
    Ok(out)
}

/// Hashes every piece and the whole file in one pass over it.
fn hash_pieces(path: &Path, pieces: &mut [Piece]) -> Result<String, DeltaError> {
    let io = |e: std::io::Error| DeltaError::Io(format!("{}: {e}", path.display()));
    let mut f = std::io::BufReader::with_capacity(1 << 16, File::open(path).map_err(io)?);
    let mut whole = Sha256::new();
    let mut at = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    let mut copy =
        |f: &mut dyn Read, n: u64, piece: Option<&mut Sha256>, whole: &mut Sha256| -> Result<(), DeltaError> {
            let mut left = n;
            let mut piece = piece;
            while left > 0 {
                let k = left.min(buf.len() as u64) as usize;
                f.read_exact(&mut buf[..k]).map_err(io)?;
                whole.update(&buf[..k]);
                if let Some(p) = piece.as_deref_mut() {
                    p.update(&buf[..k]);
                }
                left -= k as u64;
            }
            Ok(())
        };
    for p in pieces.iter_mut() {
        copy(&mut f, p.offset - at, None, &mut whole)?;
        let mut h = Sha256::new();
        copy(&mut f, p.len, Some(&mut h), &mut whole)?;
        p.sha256 = hex::encode(h.finalize());
        at = p.offset + p.len;
    }
    std::io::copy(&mut f, &mut whole).map_err(io)?;
    Ok(hex::encode(whole.finalize()))
}
