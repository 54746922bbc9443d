//! Delta downloads of model packages.
//!
//! The server cuts every package into pieces ([`Index`]: each ONNX tensor, every MiB of other
//! files, and the frame around them) and, for a device that runs version B and wants version
//! N, makes a [`Plan`]: for each piece of N in order, whether B holds the same bytes (a
//! reference), or which blob encodes it and how ([`Codec`]): a compressed difference
//! against the same tensor in B where that pays, plain zstd where not. The device fetches the
//! plan, then only the blobs of pieces it does not hold in any version it has, rebuilds N
//! piece by piece with each piece's hash checked, and installs it only when the whole file's
//! hash is the one the signed metadata names.

pub mod codec;
pub mod index;
pub mod onnx;
pub mod plan;
mod plan_apply;
pub mod quant;

pub use codec::Codec;
pub use index::{Index, Piece, PieceKind};
pub use plan::{Blob, Plan, Step};
pub use plan_apply::{held_pieces, Applied, Fetch, Held};

/// Why a delta could not be made or applied.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    /// Reading or writing a file failed.
    #[error("{0}")]
    Io(String),
    /// The plan or a blob is not what it claims to be.
    #[error("{0}")]
    Corrupt(String),
    /// A piece decoded to other bytes than its hash says.
    #[error("piece {step} (blob at {at}) does not match its hash")]
    PieceMismatch {
        /// Which step of the plan.
        step: usize,
        /// Offset of its blob in the plan's blob file.
        at: u64,
    },
}

#[cfg(test)]
mod tests;
