//! The TUF client: sigstore-tuf's updater (which follows the specification's client workflow:
//! root chain, timestamp, snapshot, targets, delegations, each with its rollback, freeze and
//! mix-and-match checks) over a [`DirStore`] of trusted metadata and any [`Repository`]. The
//! time is a parameter, never read inside, so callers choose their clock.

use crate::store::{write_atomic, DirStore};
use sigstore_tuf::{MetadataStore, Repository, TargetFile, TrustedMetadataSet, Updater, UpdaterConfig};
use std::path::{Path, PathBuf};

/// Why a TUF operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TufError {
    /// The metadata did not verify, or the repository could not be read.
    #[error("{0}")]
    Tuf(#[from] sigstore_tuf::Error),
    /// The metadata directory holds no trusted root: run `init` first.
    #[error("no trusted root in {0}: initialise it with a root you trust")]
    NoRoot(PathBuf),
    /// No role the delegation search visited lists the target.
    #[error("no trusted targets metadata lists {0:?}")]
    UnknownTarget(String),
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

impl TufError {
    /// Whether the repository could not be reached or read (worth retrying), rather than
    /// metadata that failed verification.
    pub fn is_transport(&self) -> bool {
        matches!(self, TufError::Tuf(sigstore_tuf::Error::Transport { .. }))
    }
}

/// The byte limits and bounds the client works under.
pub fn config() -> UpdaterConfig {
    UpdaterConfig::default()
}

/// A client over one metadata directory.
pub struct TufClient {
    updater: Updater,
}

impl std::fmt::Debug for TufClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TufClient").field("updater", &self.updater).finish()
    }
}

impl TufClient {
    /// Trusts `root` (bytes of a root metadata file obtained out of band) in `dir`: it must be
    /// signed by its own threshold of root keys. Replaces any trusted metadata already there.
    pub fn init(dir: &Path, root: &[u8]) -> Result<(), TufError> {
        crate::crypto::install();
        TrustedMetadataSet::from_root(root)?;
        let io = |path: PathBuf| move |source| TufError::Io { path, source };
        std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
        for old in ["timestamp.json", "snapshot.json", "targets.json"] {
            let _ = std::fs::remove_file(dir.join(old));
        }
        let path = dir.join("root.json");
        write_atomic(&path, root).map_err(io(path.clone()))
    }

    /// A client trusting what `dir` holds, fetching from `remote`.
    pub fn open(dir: &Path, remote: impl Repository + 'static) -> Result<TufClient, TufError> {
        crate::crypto::install();
        let store = DirStore::new(dir);
        let root = store.load("root.json")?.ok_or_else(|| TufError::NoRoot(dir.to_path_buf()))?;
        let updater = Updater::new(remote, &root)?.with_config(config()).with_store(store);
        Ok(TufClient { updater })
    }

    /// Runs the client workflow's update of every top-level role as of `now`.
    pub async fn refresh(&mut self, now: jiff::Timestamp) -> Result<(), TufError> {
        Ok(self.updater.refresh(now).await?)
    }

    /// The trusted length and hashes of `target`, found by the delegation search.
    pub async fn target(&mut self, target: &str, now: jiff::Timestamp) -> Result<TargetFile, TufError> {
        self.updater.get_target_info(target, now).await?.ok_or_else(|| TufError::UnknownTarget(target.to_string()))
    }

    /// Downloads `target` after a refresh, checks its length and hashes, and writes it into
    /// `dir` under its percent-encoded name; returns that path.
    pub async fn download(&mut self, target: &str, now: jiff::Timestamp, dir: &Path) -> Result<PathBuf, TufError> {
        let info = self.target(target, now).await?;
        let bytes = self.updater.download_target(&info, target).await?;
        let path = dir.join(crate::remote::encode_name(target));
        write_atomic(&path, &bytes).map_err(|source| TufError::Io { path: path.clone(), source })?;
        Ok(path)
    }
}
