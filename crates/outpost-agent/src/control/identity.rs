//! The device's identity on disk: its Ed25519 key and the record of its enrollment.
//!
//! The key is made on the device and never leaves it, so it is the one secret the agent keeps:
//! it is written with mode 0600 in one atomic step (a temporary file created 0600, fsynced,
//! renamed), and a key file that group or others can read is refused rather than silently
//! used, because someone may already have copied it. The enrollment record remembers which
//! server the device joined so a restart does not enroll again; pointing the agent at another
//! server makes it enroll there.

use outpost_proto::fleet::signing::DeviceKey;
use outpost_proto::fleet::Labels;
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// File under the data directory holding the 32 secret key bytes, hex.
pub const KEY_FILE: &str = "device.key";
/// File under the data directory recording the enrollment.
pub const ENROLLMENT_FILE: &str = "enrollment.json";

/// Why the device identity cannot be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The key file is readable or writable by group or others.
    #[error(
        "device key {} has mode {mode:03o}: it must be readable by its owner only; if nobody else \
         could have copied it run `chmod 600 {}`, otherwise delete it (the device then enrolls again \
         with a new key)",
        path.display(),
        path.display()
    )]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file does not hold 64 hex characters.
    #[error("device key {} is malformed ({reason}); delete it to make a new key", path.display())]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> IdentityError + 'a {
    move |source| IdentityError::Io { action, path: path.to_path_buf(), source }
}

/// Loads the device key from `data_dir`, creating the directory and a new random key on first
/// start.
pub fn load_or_create_key(data_dir: &Path) -> Result<DeviceKey, IdentityError> {
    let path = data_dir.join(KEY_FILE);
    match fs::metadata(&path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(IdentityError::Permissions { path, mode });
            }
            let text = fs::read_to_string(&path).map_err(io_err("read", &path))?;
            parse_key(text.trim()).map_err(|reason| IdentityError::Malformed { path, reason })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(data_dir).map_err(io_err("create", data_dir))?;
            let key = DeviceKey::from_secret(rand::random::<[u8; 32]>());
            let text = format!("{}\n", hex::encode(key.secret()));
            write_atomic(&path, text.as_bytes(), 0o600).map_err(io_err("write", &path))?;
            tracing::info!(device_key = %path.display(), device_id = %key.device_id(), "created a new device key");
            Ok(key)
        }
        Err(e) => Err(io_err("read", &path)(e)),
    }
}

fn parse_key(text: &str) -> Result<DeviceKey, String> {
    let bytes = hex::decode(text).map_err(|e| format!("not hex: {e}"))?;
    let secret: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| format!("{} bytes instead of 32", b.len()))?;
    Ok(DeviceKey::from_secret(secret))
}

/// What the device remembers about its enrollment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Enrollment {
    /// The device id the server assigned.
    pub device_id: String,
    /// The server URL the device enrolled with.
    pub server: String,
    /// Labels from the enrollment token.
    #[serde(default)]
    pub labels: Labels,
    /// When, Unix milliseconds.
    #[serde(default)]
    pub enrolled_ms: i64,
}

/// The saved enrollment for `server`, if any. A record for another server, or one that cannot be
/// read, counts as not enrolled: enrolling again is safe because the device id follows from the
/// key and the server answers `already_enrolled`.
pub fn load_enrollment(data_dir: &Path, server: &str) -> Option<Enrollment> {
    let path = data_dir.join(ENROLLMENT_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot read the enrollment record; enrolling again");
            return None;
        }
    };
    match serde_json::from_str::<Enrollment>(&text) {
        Ok(e) if same_server(&e.server, server) => Some(e),
        Ok(e) => {
            tracing::info!(old = %e.server, new = %server, "server URL changed; enrolling with the new server");
            None
        }
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "enrollment record is malformed; enrolling again");
            None
        }
    }
}

fn same_server(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// Saves the enrollment record atomically.
pub fn save_enrollment(data_dir: &Path, enrollment: &Enrollment) -> Result<(), IdentityError> {
    let path = data_dir.join(ENROLLMENT_FILE);
    let text = serde_json::to_vec_pretty(enrollment).map_err(|e| IdentityError::Io {
        action: "encode",
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    write_atomic(&path, &text, 0o600).map_err(io_err("write", &path))
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new content: write
/// a temporary file created with `mode`, fsync it, rename it over `path`, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        // `mode` only applies when the file is created; a leftover temporary keeps its old bits.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
