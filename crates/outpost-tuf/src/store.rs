//! Trusted metadata on disk, exactly as the client workflow names it: `root.json`,
//! `timestamp.json`, `snapshot.json`, `targets.json` and `<role>.json` for a delegated role (its
//! name percent-encoded), holding the exact bytes that were verified. Nothing else in the
//! directory ends in `.json`: the versioned copies sigstore-tuf would also keep (root history,
//! `N.snapshot.json`) and its target cache are not written, since `root.json` always holds the
//! newest trusted root and targets go where the caller says.

use sigstore_tuf::{MetadataStore, Result};
use std::path::{Path, PathBuf};

/// A directory of trusted metadata.
#[derive(Debug, Clone)]
pub struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    /// The store in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> DirStore {
        DirStore { dir: dir.into() }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> Option<PathBuf> {
        // Role names arrive percent-encoded, so a name with a separator or a leading dot is not
        // one of ours.
        (!name.is_empty() && !name.contains('/') && !name.contains('\\') && !name.starts_with('.'))
            .then(|| self.dir.join(name))
    }
}

/// `N.snapshot.json` holding snapshot metadata: the versioned copy of `snapshot.json` (a
/// delegated role that happens to be named `N.snapshot` holds targets metadata instead).
fn versioned_snapshot(name: &str, bytes: &[u8]) -> bool {
    let Some(version) = name.strip_suffix(".snapshot.json") else { return false };
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    serde_json::from_slice::<serde_json::Value>(bytes).is_ok_and(|v| v["signed"]["_type"] == "snapshot")
}

/// Writes `bytes` to `path` through a temporary file and a rename, then syncs the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

impl MetadataStore for DirStore {
    fn load(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let Some(path) = self.path(name) else { return Ok(None) };
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(sigstore_tuf::Error::transport(format!("reading {}: {e}", path.display()))),
        }
    }

    fn store(&self, name: &str, bytes: &[u8]) -> Result<()> {
        if versioned_snapshot(name, bytes) {
            return Ok(());
        }
        let Some(path) = self.path(name) else { return Ok(()) };
        write_atomic(&path, bytes)
            .map_err(|e| sigstore_tuf::Error::transport(format!("writing {}: {e}", path.display())))
    }
}
