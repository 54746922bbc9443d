//! Spooling an upload to disk: the request body streams into a file under the data dir,
//! hashed on the way, never buffered whole, and refused the moment it passes its limit. The
//! file is removed when the spool is dropped, whatever happened.

use crate::error::ApiError;
use axum::body::{Body, HttpBody};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

/// An upload on disk, deleted on drop.
#[derive(Debug)]
pub struct Spool {
    /// The file.
    pub path: PathBuf,
    /// Lowercase hex sha256 of its bytes.
    pub sha256: String,
    /// Its length.
    pub size: u64,
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Deletes a half-written spool file unless disarmed.
struct Partial(Option<PathBuf>);

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn storage_error(e: std::io::Error) -> ApiError {
    if e.raw_os_error() == Some(libc_enospc()) {
        ApiError::InsufficientStorage(format!("the server has no room for this upload: {e}"))
    } else {
        ApiError::Internal(format!("could not spool the upload: {e}"))
    }
}

/// ENOSPC on every platform the server runs on.
const fn libc_enospc() -> i32 {
    28
}

/// Streams `body` into a new file in `dir`, at most `max_bytes`.
pub async fn spool(mut body: Body, dir: &Path, max_bytes: u64) -> Result<Spool, ApiError> {
    let too_large = || {
        ApiError::PayloadTooLarge(format!(
            "the package is larger than max_package_bytes ({max_bytes}); raise it to publish"
        ))
    };
    if body.size_hint().exact().is_some_and(|n| n > max_bytes) {
        return Err(too_large());
    }
    tokio::fs::create_dir_all(dir).await.map_err(storage_error)?;
    let path = dir.join(format!("upload-{:016x}.part", rand::random::<u64>()));
    let mut guard = Partial(Some(path.clone()));
    let mut file = tokio::fs::File::create(&path).await.map_err(storage_error)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(frame) = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|e| ApiError::InvalidRequest(format!("the upload broke off: {e}")))?;
        let Ok(chunk) = frame.into_data() else { continue };
        size = size.checked_add(chunk.len() as u64).filter(|n| *n <= max_bytes).ok_or_else(too_large)?;
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(storage_error)?;
    }
    if size == 0 {
        return Err(ApiError::InvalidPackage("the body is empty; send the .opkg file's bytes".into()));
    }
    file.flush().await.map_err(storage_error)?;
    file.sync_all().await.map_err(storage_error)?;
    guard.0 = None;
    Ok(Spool { path, sha256: hex::encode(hasher.finalize()), size })
}
