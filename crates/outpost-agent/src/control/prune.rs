//! Old packages on the device: once a new version has passed probation, the model keeps the
//! active version's package and, for an instant rollback or a cheap delta back, the
//! `keep_versions` most recently installed others whose sizes fit `package_budget_mb`; the
//! rest are deleted. The package of a shadow candidate is spared like the active one. Only
//! `<name>-<version>.opkg` files whose manifest names that model and version are candidates:
//! directories and other files in the model directory are the operator's.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What to keep besides the active version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Older versions kept (the previous one first).
    pub keep_versions: usize,
    /// Bytes all kept older versions of one model may take.
    pub budget_bytes: u64,
}

/// Deletes the packages of `name` in `dir` that `retention` does not keep; `spared` (the
/// active package, a shadow candidate's) are never deleted nor counted. Returns the deleted
/// files.
pub fn prune(dir: &Path, name: &str, spared: &[&Path], retention: Retention) -> Vec<PathBuf> {
    let prefix = format!("{name}-");
    let mut others: Vec<(SystemTime, u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            let file = path.file_name()?.to_str()?.to_string();
            let version = file.strip_prefix(&prefix)?.strip_suffix(".opkg")?;
            if spared.contains(&path.as_path()) {
                return None;
            }
            // `detector-v2-1.opkg` may be version 1 of `detector-v2`: the manifest says.
            let manifest = outpost_runtime::Package::peek_manifest(&path).ok()?;
            if manifest.model.name != name || manifest.model.version != version {
                return None;
            }
            let meta = e.metadata().ok().filter(|m| m.is_file())?;
            Some((meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len(), path))
        })
        .collect();
    others.sort_by_key(|o| std::cmp::Reverse(o.0));
    let (mut kept, mut used) = (0usize, 0u64);
    let mut deleted = Vec::new();
    for (_, len, path) in others {
        if kept < retention.keep_versions && used.saturating_add(len) <= retention.budget_bytes {
            kept += 1;
            used += len;
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => deleted.push(path),
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot delete an old package"),
        }
    }
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A package `file` of `len`-ish bytes, installed `age_s` seconds ago.
    fn file(dir: &Path, file: &str, len: usize, age_s: u64) -> PathBuf {
        let p = dir.join(file);
        let stem = file.trim_end_matches(".opkg");
        let (name, version) = stem.rsplit_once('-').unwrap();
        let zeros = "0".repeat(64);
        let manifest = format!(
            "format = 1\n[files]\n\"model.onnx\" = \"{zeros}\"\n[model]\nname = \"{name}\"\nversion = \"{version}\"\ntask = \"regression\"\n\
             [[inputs]]\nname = \"x\"\ndtype = \"FP32\"\nshape = [1]\n[[outputs]]\nname = \"y\"\ndtype = \"FP32\"\nshape = [1]\n"
        );
        let mut b = tar::Builder::new(Vec::new());
        for (n, bytes) in [("manifest.toml", manifest.into_bytes()), ("pad", vec![0u8; len])] {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, n, bytes.as_slice()).unwrap();
        }
        std::fs::write(&p, b.into_inner().unwrap()).unwrap();
        let t = SystemTime::now() - std::time::Duration::from_secs(age_s);
        std::fs::File::options().write(true).open(&p).unwrap().set_modified(t).unwrap();
        p
    }

    #[test]
    fn keeps_the_active_and_the_newest_others_that_fit_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let active = file(d, "m-5.opkg", 100, 0);
        let v4 = file(d, "m-4.opkg", 100, 10);
        let v3 = file(d, "m-3.opkg", 100, 20);
        let v2 = file(d, "m-2.opkg", 100, 30);
        let other_model = file(d, "m-extra-1.opkg", 100, 40);
        let not_ours = d.join("m-notes.txt");
        std::fs::write(&not_ours, b"notes").unwrap();
        let size = std::fs::metadata(&v4).unwrap().len();
        let deleted = prune(d, "m", &[&active], Retention { keep_versions: 2, budget_bytes: 100 * size });
        assert_eq!(deleted, vec![v2.clone()]);
        assert!(active.exists() && v4.exists() && v3.exists() && other_model.exists() && not_ours.exists());
        // A budget for one older package keeps only the newest.
        let deleted = prune(d, "m", &[&active], Retention { keep_versions: 2, budget_bytes: size + size / 2 });
        assert_eq!(deleted, vec![v3]);
        assert!(v4.exists());
        let candidate = file(d, "m-6.opkg", 100, 50);
        let deleted = prune(d, "m", &[&active, &candidate], Retention { keep_versions: 0, budget_bytes: 100 * size });
        assert_eq!(deleted, vec![v4]);
        assert!(active.exists());
        assert!(candidate.exists(), "a shadow candidate's package is spared");
    }
}
