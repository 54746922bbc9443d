//! The artifact store: model package bytes, kept by their sha256 through the `object_store`
//! crate, in a local directory (the default, under the data dir) or an S3-compatible bucket.
//!
//! Keys are content addresses (`packages/<sha256>.opkg`), so an object never changes once
//! written: a retried or concurrent upload of the same bytes writes the same object, and the
//! registry row that names a hash is written only after its object is complete, so the
//! registry never points at bytes that are not there.

pub mod delta;
pub mod range;
pub mod upload;
pub mod verify;

use crate::config::ServerConfig;
use crate::error::ApiError;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{GetOptions, GetRange, GetResult, ObjectStore, ObjectStoreExt, WriteMultipart};
use std::ops::Range;
use std::sync::Arc;
use tokio::io::AsyncReadExt;

/// Bytes read from an upload's spool file per part written to the store (S3's smallest part).
const PART_BYTES: usize = 5 << 20;

/// Where packages are kept.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    describe: String,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::ArtifactStoreUnavailable(format!("artifact store: {what}: {e}"))
}

impl ArtifactStore {
    /// Opens the store `config.artifact_store` names: `s3://bucket[/prefix]` (credentials and
    /// region from the usual `AWS_*` variables, then `artifact_store_options`), a `file://` URL
    /// or a path; by default `<data_dir>/artifacts`.
    pub fn open(config: &ServerConfig) -> Result<ArtifactStore, String> {
        let location =
            config.artifact_store.clone().unwrap_or_else(|| config.data_dir.join("artifacts").display().to_string());
        if let Some(rest) = location.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!("artifact_store {location:?} names no bucket"));
            }
            let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
            for (key, value) in &config.artifact_store_options {
                let key = key.parse().map_err(|e| format!("artifact_store_options: {key:?}: {e}"))?;
                builder = builder.with_config(key, value);
            }
            let store = builder.build().map_err(|e| format!("artifact_store {location:?}: {e}"))?;
            return Ok(ArtifactStore { store: Arc::new(store), prefix: StorePath::from(prefix), describe: location });
        }
        if !config.artifact_store_options.is_empty() {
            return Err("artifact_store_options only apply to an s3:// artifact_store".into());
        }
        let dir = std::path::PathBuf::from(location.strip_prefix("file://").unwrap_or(&location));
        std::fs::create_dir_all(&dir).map_err(|e| format!("artifact store {}: {e}", dir.display()))?;
        let store =
            LocalFileSystem::new_with_prefix(&dir).map_err(|e| format!("artifact store {}: {e}", dir.display()))?;
        Ok(ArtifactStore { store: Arc::new(store), prefix: StorePath::default(), describe: dir.display().to_string() })
    }

    /// Where the store is, for logs.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    fn key(&self, sha256: &str) -> StorePath {
        self.object("packages", &format!("{sha256}.opkg"))
    }

    fn object(&self, dir: &str, name: &str) -> StorePath {
        self.prefix.clone().join(dir).join(name)
    }

    /// The size of the stored package `sha256`, `None` when the store does not hold it.
    pub async fn size(&self, sha256: &str) -> Result<Option<u64>, ApiError> {
        match self.store.head(&self.key(sha256)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(unavailable("head", e)),
        }
    }

    /// Whether the store holds the package `sha256` with `size` bytes.
    pub async fn holds(&self, sha256: &str, size: u64) -> Result<bool, ApiError> {
        match self.store.head(&self.key(sha256)).await {
            Ok(meta) => Ok(meta.size == size),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(unavailable("head", e)),
        }
    }

    /// Copies the spooled upload `file` into the store as package `sha256`, in parts, so a
    /// large package never sits in memory whole. Skipped when the store already holds it.
    pub async fn put_file(&self, sha256: &str, size: u64, file: &std::path::Path) -> Result<(), ApiError> {
        if self.holds(sha256, size).await? {
            return Ok(());
        }
        self.put_at(self.key(sha256), file).await
    }

    async fn put_at(&self, key: StorePath, file: &std::path::Path) -> Result<(), ApiError> {
        let mut f = tokio::fs::File::open(file).await.map_err(|e| ApiError::Internal(format!("spool: {e}")))?;
        let upload = self.store.put_multipart(&key).await.map_err(|e| unavailable("upload", e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut buf = vec![0u8; PART_BYTES];
        loop {
            let n = f.read(&mut buf).await.map_err(|e| ApiError::Internal(format!("spool: {e}")))?;
            if n == 0 {
                break;
            }
            // At most two parts in flight: bounded memory whatever the package size.
            if let Err(e) = writer.wait_for_capacity(2).await {
                return Err(unavailable("upload", e));
            }
            writer.write(&buf[..n]);
        }
        writer.finish().await.map_err(|e| unavailable("upload", e))?;
        Ok(())
    }

    /// Stores `file` as `dir/name` (derived objects: delta plans and blobs, indexes).
    pub async fn put_derived(&self, dir: &str, name: &str, file: &std::path::Path) -> Result<(), ApiError> {
        self.put_at(self.object(dir, name), file).await
    }

    /// The size of the derived object `dir/name`, `None` when the store does not hold it.
    pub async fn derived_size(&self, dir: &str, name: &str) -> Result<Option<u64>, ApiError> {
        match self.store.head(&self.object(dir, name)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(unavailable("head", e)),
        }
    }

    /// The derived object `dir/name`, or the byte range of it that `range` asks for.
    pub async fn get_derived(&self, dir: &str, name: &str, range: Option<Range<u64>>) -> Result<GetResult, ApiError> {
        let options = GetOptions { range: range.map(GetRange::Bounded), ..GetOptions::default() };
        match self.store.get_opts(&self.object(dir, name), options).await {
            Ok(r) => Ok(r),
            Err(object_store::Error::NotFound { .. }) => Err(ApiError::NotFound(format!("{dir}/{name} is not stored"))),
            Err(e) => Err(unavailable("read", e)),
        }
    }

    /// Copies the package `sha256` into the local file `to`, streaming.
    pub async fn fetch_package(&self, sha256: &str, to: &std::path::Path) -> Result<(), ApiError> {
        use futures_util::StreamExt;
        use tokio::io::AsyncWriteExt;
        let got = self.get(sha256, None).await?;
        let local = |e: std::io::Error| ApiError::Internal(format!("{}: {e}", to.display()));
        let mut f = tokio::fs::File::create(to).await.map_err(local)?;
        let mut stream = got.into_stream();
        while let Some(chunk) = stream.next().await {
            f.write_all(&chunk.map_err(|e| unavailable("read", e))?).await.map_err(local)?;
        }
        f.flush().await.map_err(local)
    }

    /// The package `sha256`, or the byte range of it that `range` asks for.
    pub async fn get(&self, sha256: &str, range: Option<Range<u64>>) -> Result<GetResult, ApiError> {
        let options = GetOptions { range: range.map(GetRange::Bounded), ..GetOptions::default() };
        match self.store.get_opts(&self.key(sha256), options).await {
            Ok(r) => Ok(r),
            Err(object_store::Error::NotFound { .. }) => Err(ApiError::NotFound(format!(
                "package {sha256} is in the registry but not in the artifact store ({}); publish it again",
                self.describe
            ))),
            Err(e) => Err(unavailable("read", e)),
        }
    }
}
