//! Model packages: a `.opkg` tar or a directory holding `manifest.toml`, the ONNX file and any
//! other files the manifest lists (self-test vectors, label files).
//!
//! The manifest is read first; then only the files it lists, each hashed while it streams in (an
//! unlisted entry is never buffered). Every listed file's sha256 is checked before any of it is
//! parsed, so a truncated download or a tampered file is reported as such instead of surfacing
//! as a confusing parse error (or not at all). Writers fill the hashes themselves and publish atomically (write aside, then
//! rename), so a reader never sees half a package.

use crate::RuntimeError;
use outpost_proto::manifest::{SelfTest, MANIFEST_FILE};
use outpost_proto::Manifest;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// File extension of packed packages.
pub const PACKAGE_EXTENSION: &str = "opkg";
/// Largest single file accepted inside a package.
pub const MAX_FILE_BYTES: u64 = 2 << 30;

/// A verified model package held in memory.
#[derive(Debug, Clone)]
pub struct Package {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    files: BTreeMap<String, Vec<u8>>,
}

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn package_err(path: &Path, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::Package { path: path.to_path_buf(), reason: reason.into() }
}

fn manifest_err(path: &Path, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::Manifest { path: path.to_path_buf(), reason: reason.into() }
}

impl Package {
    /// Reads and verifies a package from a directory or a `.opkg` tar.
    pub fn open(path: impl AsRef<Path>) -> Result<Package, RuntimeError> {
        let path = path.as_ref();
        // The manifest first, on its own: it says which files to read, so nothing else in the
        // package is ever buffered, and each listed file is hashed as it streams in.
        let manifest = Package::peek_manifest(path)?;
        let mut files = BTreeMap::new();
        if fs::metadata(path).map_err(|e| RuntimeError::io(path, e))?.is_dir() {
            for name in manifest.files.keys() {
                let file = path.join(name);
                let f = match fs::File::open(&file) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(package_err(path, format!("`{name}` is listed in the manifest but missing")))
                    }
                    Err(e) => return Err(RuntimeError::io(&file, e)),
                };
                files.insert(name.clone(), read_hashed(path, name, f, MAX_FILE_BYTES, &manifest)?);
            }
        } else {
            read_listed_tar_entries(path, &manifest, &mut files)?;
        }
        if let Some(name) = manifest.files.keys().find(|n| !files.contains_key(*n)) {
            return Err(package_err(path, format!("`{name}` is listed in the manifest but missing")));
        }
        Ok(Package { path: path.to_path_buf(), manifest, files })
    }

    /// Reads only the manifest, without verifying any file: enough to learn which model a
    /// broken package was meant to be, so the failure can be reported against that model.
    pub fn peek_manifest(path: impl AsRef<Path>) -> Result<Manifest, RuntimeError> {
        let path = path.as_ref();
        let meta = fs::metadata(path).map_err(|e| RuntimeError::io(path, e))?;
        let text = if meta.is_dir() { read_dir_manifest(path)? } else { read_tar_manifest(path)? };
        let text = text.ok_or_else(|| manifest_err(path, format!("no {MANIFEST_FILE}")))?;
        Manifest::from_toml(&text).map_err(|e| manifest_err(path, e.to_string()))
    }

    /// Builds a package in memory, filling the manifest's hashes.
    pub fn from_parts(mut manifest: Manifest, files: Vec<(String, Vec<u8>)>) -> Result<Package, RuntimeError> {
        manifest.files = files.iter().map(|(n, b)| (n.clone(), sha256_hex(b))).collect();
        manifest.validate().map_err(|e| manifest_err(Path::new("<memory>"), e.to_string()))?;
        Ok(Package { path: PathBuf::from("<memory>"), manifest, files: files.into_iter().collect() })
    }

    /// The same files under `manifest` (their hashes filled in again), checked as a whole.
    pub fn with_manifest(self, manifest: Manifest) -> Result<Package, RuntimeError> {
        Package::from_parts(manifest, self.files.into_iter().collect())
    }

    /// Contents of a listed file.
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        self.files.get(name).map(Vec::as_slice)
    }

    /// The ONNX model bytes.
    pub fn model_bytes(&self) -> &[u8] {
        self.file(&self.manifest.model.file).unwrap_or_default()
    }

    /// Total size of the package's files.
    pub fn size_bytes(&self) -> u64 {
        self.files.values().map(|b| b.len() as u64).sum()
    }

    /// The golden self-test vectors, when the manifest declares them.
    pub fn selftest(&self) -> Result<Option<SelfTest>, RuntimeError> {
        let Some(st) = &self.manifest.selftest else { return Ok(None) };
        let bytes = self
            .file(&st.file)
            .ok_or_else(|| package_err(&self.path, format!("self-test file `{}` missing", st.file)))?;
        serde_json::from_slice(bytes).map(Some).map_err(|e| package_err(&self.path, format!("{}: {e}", st.file)))
    }

    /// Writes the package as a directory, atomically replacing nothing: fails if `dir` exists.
    pub fn write_dir(&self, dir: &Path) -> Result<(), RuntimeError> {
        if dir.exists() {
            return Err(package_err(dir, "already exists; refusing to overwrite"));
        }
        let tmp = sibling_tmp(dir);
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(|e| RuntimeError::io(&tmp, e))?;
        write_synced(&tmp.join(MANIFEST_FILE), self.manifest.to_toml().as_bytes())?;
        for (name, bytes) in &self.files {
            write_synced(&tmp.join(name), bytes)?;
        }
        fs::rename(&tmp, dir).map_err(|e| RuntimeError::io(dir, e))?;
        sync_parent(dir);
        Ok(())
    }

    /// Writes the package as a `.opkg` tar, atomically.
    pub fn write_opkg(&self, path: &Path) -> Result<(), RuntimeError> {
        // Straight to the file: the package is not copied into a second buffer on the way.
        let tmp = sibling_tmp(path);
        let file = fs::File::create(&tmp).map_err(|e| RuntimeError::io(&tmp, e))?;
        let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
        let manifest = self.manifest.to_toml().into_bytes();
        let entries = std::iter::once((MANIFEST_FILE, manifest.as_slice()))
            .chain(self.files.iter().map(|(n, b)| (n.as_str(), b.as_slice())));
        for (name, bytes) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_cksum();
            builder.append_data(&mut header, name, bytes).map_err(|e| RuntimeError::io(&tmp, e))?;
        }
        let file = builder
            .into_inner()
            .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
            .map_err(|e| RuntimeError::io(&tmp, e))?;
        file.sync_all().map_err(|e| RuntimeError::io(&tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| RuntimeError::io(path, e))?;
        sync_parent(path);
        Ok(())
    }
}

fn sibling_tmp(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), RuntimeError> {
    let mut f = fs::File::create(path).map_err(|e| RuntimeError::io(path, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| RuntimeError::io(path, e))
}

fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent() {
        if let Ok(d) = fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
}

/// Reads `listed` (a file the manifest names) to the end, at most `limit` bytes, hashing as it
/// goes, and checks the hash against the manifest's.
fn read_hashed(
    path: &Path,
    listed: &str,
    mut reader: impl Read,
    limit: u64,
    manifest: &Manifest,
) -> Result<Vec<u8>, RuntimeError> {
    let mut hasher = Sha256::new();
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = reader.read(&mut chunk).map_err(|e| package_err(path, format!("`{listed}`: {e}")))?;
        if n == 0 {
            break;
        }
        if (bytes.len() + n) as u64 > limit {
            return Err(package_err(path, format!("`{listed}` is larger than {limit} bytes")));
        }
        hasher.update(&chunk[..n]);
        bytes.extend_from_slice(&chunk[..n]);
    }
    let actual = hex::encode(hasher.finalize());
    let expected = manifest.files.get(listed).cloned().unwrap_or_default();
    if actual != expected {
        return Err(RuntimeError::HashMismatch {
            path: path.to_path_buf(),
            file: listed.to_string(),
            expected,
            actual,
        });
    }
    Ok(bytes)
}

fn read_dir_manifest(dir: &Path) -> Result<Option<String>, RuntimeError> {
    let manifest_path = dir.join(MANIFEST_FILE);
    match fs::read(&manifest_path) {
        Ok(b) => Ok(Some(String::from_utf8(b).map_err(|_| manifest_err(&manifest_path, "not UTF-8"))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RuntimeError::io(&manifest_path, e)),
    }
}

/// An entry's name inside the package, refusing names that would escape it.
fn entry_name(path: &Path, entry: &tar::Entry<'_, fs::File>) -> Result<String, RuntimeError> {
    let name = entry.path().map_err(|e| package_err(path, format!("bad entry name: {e}")))?;
    let name = name.to_string_lossy().trim_start_matches("./").to_string();
    if name.contains("..") || name.starts_with('/') {
        return Err(package_err(path, format!("entry `{name}` escapes the package")));
    }
    Ok(name)
}

/// Only the manifest of a tar: other entries are skipped, not buffered, so watching a directory
/// of large packages costs no memory.
fn read_tar_manifest(path: &Path) -> Result<Option<String>, RuntimeError> {
    let f = fs::File::open(path).map_err(|e| RuntimeError::io(path, e))?;
    let mut archive = tar::Archive::new(f);
    let entries = archive.entries().map_err(|e| package_err(path, format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| package_err(path, format!("corrupt tar: {e}")))?;
        if entry_name(path, &entry)? == MANIFEST_FILE && entry.header().entry_type().is_file() {
            let mut text = String::new();
            (&mut entry)
                .take(1 << 20)
                .read_to_string(&mut text)
                .map_err(|e| manifest_err(path, format!("{MANIFEST_FILE}: {e}")))?;
            return Ok(Some(text));
        }
    }
    Ok(None)
}

/// The entries the manifest lists, each read once and hashed as it streams; entries it does
/// not list are skipped unread, and a listed name that appears twice is refused (which copy
/// would a reader trust?).
fn read_listed_tar_entries(
    path: &Path,
    manifest: &Manifest,
    files: &mut BTreeMap<String, Vec<u8>>,
) -> Result<(), RuntimeError> {
    let f = fs::File::open(path).map_err(|e| RuntimeError::io(path, e))?;
    // An entry cannot hold more than the archive does, whatever its header claims.
    let archive_len = f.metadata().map_err(|e| RuntimeError::io(path, e))?.len();
    let mut archive = tar::Archive::new(f);
    let entries = archive.entries().map_err(|e| package_err(path, format!("not a tar archive: {e}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| package_err(path, format!("corrupt tar: {e}")))?;
        let name = entry_name(path, &entry)?;
        if !entry.header().entry_type().is_file() || !manifest.files.contains_key(&name) {
            continue;
        }
        if files.contains_key(&name) {
            return Err(package_err(path, format!("entry `{name}` appears twice")));
        }
        let size = entry.size();
        if size > MAX_FILE_BYTES.min(archive_len) {
            return Err(package_err(path, format!("entry `{name}` claims {size} bytes, more than the package holds")));
        }
        let bytes = read_hashed(path, &name, entry.take(size), size, manifest)?;
        if (bytes.len() as u64) < size {
            return Err(package_err(path, format!("`{name}` truncated: {} of {size} bytes", bytes.len())));
        }
        files.insert(name, bytes);
    }
    Ok(())
}
