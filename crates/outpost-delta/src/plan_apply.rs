//! Applying a plan on the device: which blobs to fetch, then the rebuild.

use crate::codec::{self, BaseBytes, Codec};
use crate::index::Index;
use crate::plan::{Plan, Step};
use crate::DeltaError;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// Pieces the device holds in its installed packages: sha256 → (package file, offset).
pub type Held = HashMap<String, (PathBuf, u64)>;

/// The pieces of the packages at `paths`, by hash. A package that cannot be indexed is left out.
pub fn held_pieces(paths: &[PathBuf]) -> Held {
    let mut held = Held::new();
    for path in paths {
        if let Ok(index) = Index::of_package(path) {
            for p in index.pieces {
                held.entry(p.sha256).or_insert_with(|| (path.clone(), p.offset));
            }
        }
    }
    held
}

/// One blob to fetch: where it is in the server's blob file and where it goes in the local one
/// (the fetched blobs, one after another in plan order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetch {
    /// Offset in the server's blob file.
    pub at: u64,
    /// Bytes.
    pub size: u64,
    /// Offset in the local file.
    pub local: u64,
}

/// Bytes written and their hash.
struct Hashing<'a> {
    inner: &'a mut dyn Write,
    hasher: Sha256,
    n: u64,
}

impl Write for Hashing<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// `len` bytes of a file from `offset`, as a reader.
struct Slice<'a> {
    file: &'a File,
    at: u64,
    left: u64,
}

impl Read for Slice<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = (buf.len() as u64).min(self.left) as usize;
        if k == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..k], self.at)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.at += n as u64;
        self.left -= n as u64;
        Ok(n)
    }
}

/// What a rebuild used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Applied {
    /// Bytes copied from the base unchanged.
    pub referenced: u64,
    /// Bytes copied from other installed versions.
    pub from_held: u64,
    /// Bytes decoded from fetched blobs.
    pub decoded: u64,
}

fn copy_range(from: &File, at: u64, len: u64, out: &mut dyn Write) -> Result<(), DeltaError> {
    let mut r = Slice { file: from, at, left: len };
    let n =
        std::io::copy(&mut r, out).map_err(|e| DeltaError::Io(format!("copying from an installed package: {e}")))?;
    if n != len {
        return Err(DeltaError::Io("an installed package is shorter than the plan says".into()));
    }
    Ok(())
}

impl Plan {
    /// The blobs to fetch when `held` lists what the device already has: the frame first, then
    /// every piece held nowhere, in plan order.
    pub fn fetches(&self, held: &Held) -> Vec<Fetch> {
        let mut out = vec![Fetch { at: self.frame.at, size: self.frame.size, local: 0 }];
        let mut local = self.frame.size;
        for step in &self.steps {
            if let Step::Blob(b) = step {
                if !held.contains_key(&b.sha256) {
                    out.push(Fetch { at: b.at, size: b.size, local });
                    local += b.size;
                }
            }
        }
        out
    }

    /// [`Plan::fetches`] joined into byte ranges of the server's blob file: fetches adjacent
    /// both there and in the local file become one `Range` request.
    pub fn fetch_runs(fetches: &[Fetch]) -> Vec<Fetch> {
        let mut out: Vec<Fetch> = Vec::new();
        for f in fetches {
            match out.last_mut() {
                Some(last) if last.at + last.size == f.at && last.local + last.size == f.local => last.size += f.size,
                _ => out.push(*f),
            }
        }
        out
    }

    /// Rebuilds the target into `out` from `base` (the package the plan was made against, with
    /// its index), the `held` pieces and `blobs` (the local file of [`Plan::fetches`]). Each
    /// decoded piece is checked against its hash, and the whole output against the target's.
    pub fn apply(
        &self,
        blobs: &File,
        fetches: &[Fetch],
        base: Option<(&File, &Index)>,
        held: &Held,
        out: &mut dyn Write,
    ) -> Result<Applied, DeltaError> {
        let local: HashMap<u64, u64> = fetches.iter().map(|f| (f.at, f.local)).collect();
        if self.base.is_some() != base.is_some()
            || base.is_some_and(|(_, i)| self.base.as_ref().is_some_and(|b| b.sha256 != i.sha256))
        {
            return Err(DeltaError::Corrupt("the plan was made against another base".into()));
        }
        // The frame, decoded whole (it is small: the structure around the pieces).
        let frame_local = *local.get(&self.frame.at).ok_or(DeltaError::Corrupt("frame not fetched".into()))?;
        // Grown as it decodes: a plan's claimed length reserves nothing by itself.
        let mut frame = Vec::with_capacity(self.frame.len.min(1 << 20) as usize);
        let slice = Slice { file: blobs, at: frame_local, left: self.frame.size };
        match (&self.frame.codec, base) {
            (Codec::Prefix { .. }, Some((file, index))) => {
                let base_frame = read_frame(file, index)?;
                let codec = Codec::Prefix { at: 0, len: base_frame.len() as u64 };
                codec::decode(&codec, self.frame.len, slice, &mut base_frame.as_slice(), &mut frame)?;
            }
            (Codec::Zstd, _) => codec::decode(&Codec::Zstd, self.frame.len, slice, &mut [].as_slice(), &mut frame)?,
            _ => return Err(DeltaError::Corrupt("the frame's codec needs a base".into())),
        }
        if hex::encode(Sha256::digest(&frame)) != self.frame.sha256 {
            return Err(DeltaError::PieceMismatch { step: usize::MAX, at: self.frame.at });
        }

        let mut out = Hashing { inner: out, hasher: Sha256::new(), n: 0 };
        let mut applied = Applied::default();
        let mut frame_at = 0usize;
        let mut no_base = [].as_slice();
        for (i, step) in self.steps.iter().enumerate() {
            match step {
                Step::Frame(len) => {
                    let end = frame_at + *len as usize;
                    out.write_all(&frame[frame_at..end]).map_err(|e| DeltaError::Io(format!("writing: {e}")))?;
                    frame_at = end;
                }
                Step::Ref { at, len } => {
                    let (file, _) = base.ok_or(DeltaError::Corrupt("a reference without a base".into()))?;
                    copy_range(file, *at, *len, &mut out)?;
                    applied.referenced += len;
                }
                Step::Blob(b) => {
                    let mut piece = Hashing { inner: &mut out, hasher: Sha256::new(), n: 0 };
                    if let Some((path, offset)) = held.get(&b.sha256) {
                        let file = File::open(path).map_err(|e| DeltaError::Io(format!("{}: {e}", path.display())))?;
                        copy_range(&file, *offset, b.len, &mut piece)?;
                        applied.from_held += b.len;
                    } else {
                        let at =
                            *local.get(&b.at).ok_or(DeltaError::Corrupt("a piece's blob was not fetched".into()))?;
                        let slice = Slice { file: blobs, at, left: b.size };
                        let base: &mut dyn BaseBytes = match base {
                            Some((file, _)) => &mut &*file,
                            None => &mut no_base,
                        };
                        let decoded = codec::decode(&b.codec, b.len, slice, base, &mut piece);
                        if let Err(e) = decoded {
                            if matches!(e, DeltaError::Corrupt(_)) {
                                return Err(DeltaError::PieceMismatch { step: i, at: b.at });
                            }
                            return Err(e);
                        }
                        applied.decoded += b.len;
                    }
                    if hex::encode(piece.hasher.finalize()) != b.sha256 {
                        return Err(DeltaError::PieceMismatch { step: i, at: b.at });
                    }
                }
            }
        }
        let actual = hex::encode(out.hasher.finalize());
        if out.n != self.target.size || actual != self.target.sha256 {
            return Err(DeltaError::Corrupt(format!(
                "the rebuilt package has {} bytes with sha256 {actual}, the plan's target {} bytes with sha256 {}",
                out.n, self.target.size, self.target.sha256
            )));
        }
        Ok(applied)
    }
}

impl BaseBytes for &File {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.read_exact_at(buf, offset)
    }
}

fn read_frame(file: &File, index: &Index) -> Result<Vec<u8>, DeltaError> {
    let mut out = Vec::new();
    for (at, len) in index.frame_ranges() {
        copy_range(file, at, len, &mut out)?;
    }
    Ok(out)
}
