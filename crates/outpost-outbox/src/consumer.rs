//! Named consumers and their committed positions, one small file each.
//!
//! A position file holds, per priority, the first sequence number the consumer has not acked.
//! It is replaced whole (temp + fsync + rename + fsync dir) on every ack, so a crash leaves the
//! old or the new position and the consumer never skips a record it did not ack. On a full disk
//! it is overwritten in place instead, so that acks, and the deletions that free space, go on.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, OutboxError, Result};
use crate::fsutil;
use crate::record::Priority;

/// Name of a consumer ("server", "mqtt"): 1–64 characters of `[A-Za-z0-9_-]`, a file name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConsumerName(String);

impl ConsumerName {
    /// Checks `name` and wraps it.
    pub fn new(name: impl Into<String>) -> Result<ConsumerName> {
        let name = name.into();
        let ok =
            (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(ConsumerName(name))
        } else {
            Err(OutboxError::InvalidConsumerName(name))
        }
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConsumerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

const POSITION_MAGIC: [u8; 4] = *b"OPOC";
const POSITION_VERSION: u8 = 1;
/// magic 4 + version 1 + reserved 3 + one u64 per priority + crc 4.
const POSITION_LEN: usize = 8 + 8 * Priority::ALL.len() + 4;

/// Per priority, the first sequence number not acked.
pub(crate) type Positions = [u64; 3];

pub(crate) fn encode_positions(positions: &Positions) -> Vec<u8> {
    let mut out = Vec::with_capacity(POSITION_LEN);
    out.extend_from_slice(&POSITION_MAGIC);
    out.extend_from_slice(&[POSITION_VERSION, 0, 0, 0]);
    for p in positions {
        out.extend_from_slice(&p.to_le_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The positions in `bytes`, or `None` if they are not a whole, checked position file.
pub(crate) fn decode_positions(bytes: &[u8]) -> Option<Positions> {
    if bytes.len() != POSITION_LEN || bytes[0..4] != POSITION_MAGIC || bytes[4] != POSITION_VERSION {
        return None;
    }
    let (body, crc) = bytes.split_at(POSITION_LEN - 4);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return None;
    }
    let mut positions = [0u64; 3];
    for (i, p) in positions.iter_mut().enumerate() {
        let at = 8 + 8 * i;
        *p = u64::from_le_bytes(body[at..at + 8].try_into().ok()?);
    }
    Some(positions)
}

/// The directory of position files and how to read and write them.
#[derive(Debug)]
pub(crate) struct PositionStore {
    dir: PathBuf,
}

/// What loading the position files found.
pub(crate) struct Loaded {
    /// Consumers whose files checked.
    pub good: Vec<(ConsumerName, Positions)>,
    /// Consumers whose files did not, with the file.
    pub damaged: Vec<(ConsumerName, PathBuf)>,
    /// Temp files of interrupted writes, removed.
    pub removed_temp: Vec<PathBuf>,
}

impl PositionStore {
    pub(crate) fn open(root: &Path) -> Result<PositionStore> {
        let dir = root.join("consumers");
        fsutil::ensure_dir(&dir)?;
        Ok(PositionStore { dir })
    }

    fn path(&self, name: &ConsumerName) -> PathBuf {
        self.dir.join(format!("{name}.pos"))
    }

    pub(crate) fn load(&self) -> Result<Loaded> {
        let mut loaded = Loaded { good: Vec::new(), damaged: Vec::new(), removed_temp: Vec::new() };
        for entry in fs::read_dir(&self.dir).ctx("list", &self.dir)? {
            let path = entry.ctx("list", &self.dir)?.path();
            let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
            if file_name.ends_with(".tmp") {
                fs::remove_file(&path).ctx("remove temp file", &path)?;
                loaded.removed_temp.push(path);
                continue;
            }
            let Some(name) = file_name.strip_suffix(".pos").and_then(|n| ConsumerName::new(n).ok()) else {
                tracing::warn!("outbox: ignoring {} (not a consumer position file)", path.display());
                continue;
            };
            let bytes = fs::read(&path).ctx("read", &path)?;
            match decode_positions(&bytes) {
                Some(positions) => loaded.good.push((name, positions)),
                None => loaded.damaged.push((name, path)),
            }
        }
        loaded.good.sort();
        Ok(loaded)
    }

    pub(crate) fn save(&self, name: &ConsumerName, positions: &Positions) -> Result<()> {
        let path = self.path(name);
        let bytes = encode_positions(positions);
        match fsutil::atomic_write(&path, &bytes) {
            Err(e) if e.is_disk_full() => {
                // The temp file needs a block the full disk does not have, so acks would stop, the
                // consumed segments would never be deleted and the outbox could not free the very
                // space it filled. Overwriting the existing file needs no new block; a record is 40
                // bytes, within one sector, and a torn one fails its CRC and resets the consumer to
                // redeliver (duplicates, never a skipped record).
                fsutil::overwrite_in_place(&path, &bytes).map_err(|_| e)
            }
            other => other,
        }
    }

    pub(crate) fn remove(&self, name: &ConsumerName) -> Result<()> {
        let path = self.path(name);
        fs::remove_file(&path).ctx("remove", &path)?;
        fsutil::fsync_dir(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_names_that_could_escape_the_directory_are_refused() {
        for bad in ["", "../x", "a/b", "a.pos", "with space", &"x".repeat(65)] {
            assert!(ConsumerName::new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(ConsumerName::new("mqtt-1_a").unwrap().as_str(), "mqtt-1_a");
    }

    #[test]
    fn positions_round_trip_and_any_damage_is_detected() {
        let p = [1, u64::MAX, 42];
        let bytes = encode_positions(&p);
        assert_eq!(decode_positions(&bytes), Some(p));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert_eq!(decode_positions(&bad), None, "byte {i}");
        }
        assert_eq!(decode_positions(&bytes[..bytes.len() - 1]), None);
    }

    #[test]
    fn store_saves_loads_and_reports_damaged_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = PositionStore::open(dir.path()).unwrap();
        let server = ConsumerName::new("server").unwrap();
        store.save(&server, &[1, 2, 3]).unwrap();
        fs::write(dir.path().join("consumers/mqtt.pos"), b"garbage").unwrap();
        fs::write(dir.path().join("consumers/server.tmp"), b"half").unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.good, vec![(server, [1, 2, 3])]);
        assert_eq!(loaded.damaged.len(), 1);
        assert_eq!(loaded.removed_temp.len(), 1);
    }
}
