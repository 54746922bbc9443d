//! Checks an uploaded package before it is published: a tar whose manifest parses and whose
//! listed files are each present once with the sha256 the manifest names. The server refuses
//! what a device would refuse, so a broken package never reaches the fleet. Files are hashed
//! as they stream from the spool; nothing is buffered but the manifest.

use outpost_proto::manifest::MANIFEST_FILE;
use outpost_proto::Manifest;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// Largest manifest read, bytes.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

fn entry_name<R: Read>(entry: &tar::Entry<'_, R>) -> Result<String, String> {
    let name = entry.path().map_err(|e| format!("bad entry name: {e}"))?;
    let name = name.to_string_lossy().trim_start_matches("./").to_string();
    if name.split('/').any(|part| part == "..") || name.starts_with('/') {
        return Err(format!("entry `{name}` escapes the package"));
    }
    Ok(name)
}

fn entries(path: &Path) -> Result<tar::Archive<File>, String> {
    File::open(path).map(tar::Archive::new).map_err(|e| format!("cannot read the upload: {e}"))
}

/// The package's manifest, after every file it lists has been found once and hashed.
pub fn verify_package(path: &Path) -> Result<Manifest, String> {
    let mut archive = entries(path)?;
    let mut manifest = None;
    for entry in archive.entries().map_err(|e| format!("not a tar archive: {e}"))? {
        let mut entry = entry.map_err(|e| format!("not a package (corrupt tar): {e}"))?;
        if entry_name(&entry)? == MANIFEST_FILE && entry.header().entry_type().is_file() {
            if manifest.is_some() {
                return Err(format!("{MANIFEST_FILE} appears twice"));
            }
            let mut text = String::new();
            (&mut entry)
                .take(MAX_MANIFEST_BYTES)
                .read_to_string(&mut text)
                .map_err(|e| format!("{MANIFEST_FILE}: {e}"))?;
            manifest = Some(Manifest::from_toml(&text).map_err(|e| format!("{MANIFEST_FILE}: {e}"))?);
        }
    }
    let manifest = manifest.ok_or_else(|| format!("not a package: no {MANIFEST_FILE}"))?;
    let mut seen = BTreeSet::new();
    let mut archive = entries(path)?;
    for entry in archive.entries().map_err(|e| format!("not a tar archive: {e}"))? {
        let mut entry = entry.map_err(|e| format!("corrupt tar: {e}"))?;
        let name = entry_name(&entry)?;
        let Some(expected) = manifest.files.get(&name) else { continue };
        if !entry.header().entry_type().is_file() {
            continue;
        }
        if !seen.insert(name.clone()) {
            return Err(format!("entry `{name}` appears twice"));
        }
        let mut hasher = Sha256::new();
        let copied = std::io::copy(&mut entry, &mut hasher).map_err(|e| format!("`{name}`: {e}"))?;
        if copied < entry.size() {
            return Err(format!("`{name}` truncated: {copied} of {} bytes", entry.size()));
        }
        let actual = hex::encode(hasher.finalize());
        if &actual != expected {
            return Err(format!("`{name}` has sha256 {actual}, the manifest says {expected}"));
        }
    }
    if let Some(missing) = manifest.files.keys().find(|n| !seen.contains(*n)) {
        return Err(format!("`{missing}` is listed in the manifest but missing"));
    }
    Ok(manifest)
}
