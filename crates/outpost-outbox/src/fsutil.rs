//! The few file-system moves durability rests on.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::error::{IoContext, Result};

/// Bytes that writers may still use and total bytes of the file system holding `path` (`None`
/// when it cannot be asked).
pub fn disk_space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we own; the path is a valid C string.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    let frsize = stat.f_frsize as u64;
    Some(((stat.f_bavail as u64).saturating_mul(frsize), (stat.f_blocks as u64).saturating_mul(frsize)))
}

/// Makes a directory's entries (creations, renames, deletions) durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).ctx("open directory", dir)?.sync_all().ctx("fsync directory", dir)
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new file, whole.
///
/// temp file + fsync + rename + fsync of the directory: without the first fsync the rename can
/// reach the disk before the data (an empty file after a crash); without the last one the rename
/// itself can be lost.
pub(crate) fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp).ctx("create", &tmp)?;
    f.write_all(bytes).ctx("write", &tmp)?;
    f.sync_all().ctx("fsync", &tmp)?;
    drop(f);
    fs::rename(&tmp, path).ctx("rename into place", path)?;
    fsync_dir(parent(path))
}

/// Overwrites the existing file `path`, of exactly `bytes.len()` bytes, without allocating: what a
/// full disk still allows. Not atomic beyond the device's sector writes; callers check a CRC.
pub(crate) fn overwrite_in_place(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new().write(true).open(path).ctx("open", path)?;
    let len = f.metadata().ctx("stat", path)?.len();
    if len != bytes.len() as u64 {
        return Err(crate::error::OutboxError::io(
            "overwrite",
            path,
            std::io::Error::other(format!("{len} bytes on disk, {} to write in place", bytes.len())),
        ));
    }
    f.write_all(bytes).ctx("write", path)?;
    f.sync_data().ctx("fsync", path)
}

/// Creates `dir` if missing, making its entry in the parent durable.
pub(crate) fn ensure_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).ctx("create directory", dir)?;
    fsync_dir(parent(dir))
}

/// The directory holding `path` (the current one for a bare name).
pub(crate) fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_the_whole_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pos");
        atomic_write(&p, b"first version, longer").unwrap();
        atomic_write(&p, b"second").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second");
        assert!(!dir.path().join("pos.tmp").exists());
    }
}
