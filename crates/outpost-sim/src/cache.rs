//! The simulator's store of verified packages, shared by every virtual device.
//!
//! A thousand devices each keeping their own copy of a 5 MB model would need 5 GB; here each
//! distinct package is kept once, as a file named by its sha256, and a device holds a version
//! by holding its hash. Every device still downloads and verifies its own bytes (the server's
//! egress is real per device): the first device whose bytes verify writes them here, the others
//! only hash theirs. A device that later rebuilds a delta reads its base from here, as an agent
//! reads the package in its model directory; the bytes are the same, since the hash is.

use outpost_delta::Index;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// One verified package.
#[derive(Debug)]
pub struct Cached {
    /// Where its bytes are.
    pub path: PathBuf,
    /// Its piece index, made once for every device that rebuilds a delta from it.
    index: OnceLock<Result<Arc<Index>, String>>,
}

impl Cached {
    /// The piece index (blocking: reads and hashes the package the first time).
    pub fn index(&self) -> Result<Arc<Index>, String> {
        self.index.get_or_init(|| Index::of_package(&self.path).map(Arc::new).map_err(|e| e.to_string())).clone()
    }
}

#[derive(Debug)]
enum Entry {
    /// A device is writing these bytes; nobody else needs to.
    Writing,
    Ready(Arc<Cached>),
}

/// Verified packages by sha256.
#[derive(Debug)]
pub struct PackageCache {
    dir: PathBuf,
    /// Removes the directory at the end when the simulator made it.
    _made: Option<tempfile::TempDir>,
    entries: Mutex<HashMap<String, Entry>>,
    scratch: AtomicU64,
}

impl PackageCache {
    /// A store in `dir`, or in a fresh temporary directory removed when the store is dropped.
    pub fn new(dir: Option<&Path>) -> io::Result<Arc<PackageCache>> {
        let (dir, made) = match dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                (d.to_path_buf(), None)
            }
            None => {
                let t = tempfile::Builder::new().prefix("outpost-sim-packages-").tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        Ok(Arc::new(PackageCache { dir, _made: made, entries: Mutex::new(HashMap::new()), scratch: AtomicU64::new(0) }))
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The verified package with this sha256, when a device has written it.
    pub fn get(&self, sha256: &str) -> Option<Arc<Cached>> {
        match self.entries().get(sha256) {
            Some(Entry::Ready(c)) => Some(c.clone()),
            _ => None,
        }
    }

    /// A writer for `sha256` when no device holds or is writing it; `None` otherwise (the
    /// caller only verifies its bytes).
    pub fn claim(self: &Arc<Self>, sha256: &str) -> Option<PackageWriter> {
        if !is_hex_sha(sha256) {
            return None; // never a path built from what the server said
        }
        {
            let mut entries = self.entries();
            if entries.contains_key(sha256) {
                return None;
            }
            entries.insert(sha256.to_string(), Entry::Writing);
        }
        let path = self.scratch_path("part");
        match File::create(&path) {
            Ok(file) => Some(PackageWriter {
                cache: self.clone(),
                sha256: sha256.to_string(),
                file: Some(io::BufWriter::with_capacity(1 << 16, file)),
                path,
            }),
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "cannot write to the simulator's package store");
                self.entries().remove(sha256);
                None
            }
        }
    }

    /// A fresh path for one device's temporary file (delta blobs, a package being written).
    pub fn scratch_path(&self, what: &str) -> PathBuf {
        let n = self.scratch.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!(".{n}.{what}"))
    }
}

fn is_hex_sha(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Bytes of one package on their way into the store; dropped without [`PackageWriter::commit`],
/// they are deleted and the package is free to be claimed again.
#[derive(Debug)]
pub struct PackageWriter {
    cache: Arc<PackageCache>,
    sha256: String,
    file: Option<io::BufWriter<File>>,
    path: PathBuf,
}

impl Write for PackageWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.file {
            Some(f) => f.write(buf),
            None => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().map_or(Ok(()), |f| f.flush())
    }
}

impl PackageWriter {
    /// Files the bytes under their hash. Call only once they verified.
    pub fn commit(mut self) -> io::Result<()> {
        let file = self.file.take().ok_or(io::ErrorKind::BrokenPipe)?;
        file.into_inner().map_err(|e| e.into_error())?;
        let target = self.cache.dir.join(format!("{}.opkg", self.sha256));
        std::fs::rename(&self.path, &target)?;
        let cached = Arc::new(Cached { path: target, index: OnceLock::new() });
        self.cache.entries().insert(self.sha256.clone(), Entry::Ready(cached));
        Ok(())
    }
}

impl Drop for PackageWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
            let mut entries = self.cache.entries();
            if matches!(entries.get(&self.sha256), Some(Entry::Writing)) {
                entries.remove(&self.sha256);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "ab00000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn one_device_writes_a_package_and_the_rest_read_it() {
        let cache = PackageCache::new(None).unwrap();
        let mut writer = cache.claim(SHA).unwrap();
        assert!(cache.claim(SHA).is_none(), "a second writer while the first writes");
        assert!(cache.get(SHA).is_none(), "not readable before it is committed");
        writer.write_all(b"package bytes").unwrap();
        writer.commit().unwrap();
        let cached = cache.get(SHA).unwrap();
        assert_eq!(std::fs::read(&cached.path).unwrap(), b"package bytes");
        assert!(cache.claim(SHA).is_none());
    }

    #[test]
    fn bytes_that_did_not_verify_leave_nothing_behind() {
        let cache = PackageCache::new(None).unwrap();
        let mut writer = cache.claim(SHA).unwrap();
        writer.write_all(b"wrong bytes").unwrap();
        drop(writer);
        assert!(cache.get(SHA).is_none());
        let files = std::fs::read_dir(&cache.dir).unwrap().count();
        assert_eq!(files, 0, "the partial file is deleted");
        assert!(cache.claim(SHA).is_some(), "another device may write it now");
    }

    #[test]
    fn a_hash_that_is_not_hex_is_never_a_file_name() {
        let cache = PackageCache::new(None).unwrap();
        assert!(cache.claim("../../etc/passwd").is_none());
        assert!(cache.claim(&"a".repeat(63)).is_none());
    }
}
