//! The versions the server last asked for, kept in `<data_dir>/desired.json`: written with one
//! atomic step (temporary file, rename, directory sync) before the store switches, read before
//! the first scan after a start, so a restarted agent serves the same versions, also while the
//! server is out of reach, instead of the highest ones on disk. The shadow candidates are kept
//! beside them in `<data_dir>/shadows.json`, so a restart keeps each one a shadow.

use outpost_proto::fleet::rollout::ShadowSpec;
use std::collections::BTreeMap;
use std::path::Path;

/// File name in the agent's data directory.
pub const PINS_FILE: &str = "desired.json";

/// The saved pins, when there are any readable ones.
pub fn load(data_dir: &Path) -> Option<BTreeMap<String, String>> {
    let bytes = std::fs::read(data_dir.join(PINS_FILE)).ok()?;
    let pins: BTreeMap<String, String> = serde_json::from_slice(&bytes).ok()?;
    // Names become file names: the grammar is checked again on the way back in.
    let valid = pins.iter().all(|(n, v)| outpost_proto::ModelName::is_valid(n) && outpost_proto::Version::is_valid(v));
    valid.then_some(pins)
}

/// Saves `pins` atomically (when they changed).
pub fn save(data_dir: &Path, pins: &BTreeMap<String, String>) {
    if load(data_dir).as_ref() == Some(pins) {
        return;
    }
    let bytes = serde_json::to_vec_pretty(pins).unwrap_or_default();
    if let Err(e) = outpost_tuf::store::write_atomic(&data_dir.join(PINS_FILE), &bytes) {
        tracing::error!(error = %e, "cannot save the desired versions; a restart serves the highest ones until the server answers");
    }
}

/// File of the shadow candidates, in the agent's data directory.
pub const SHADOWS_FILE: &str = "shadows.json";

/// The shadow candidates the server last named, by model (empty when none or unreadable).
/// Read before the first scan so a restart never activates a candidate, and to resume the
/// shadow before the server answers.
pub fn load_shadows(data_dir: &Path) -> BTreeMap<String, ShadowSpec> {
    let Ok(bytes) = std::fs::read(data_dir.join(SHADOWS_FILE)) else { return BTreeMap::new() };
    let shadows: BTreeMap<String, ShadowSpec> = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        tracing::error!(error = %e, "unreadable {SHADOWS_FILE}; no shadow candidate until the server names one");
        BTreeMap::new()
    });
    shadows
        .into_iter()
        .filter(|(n, s)| outpost_proto::ModelName::is_valid(n) && outpost_proto::Version::is_valid(&s.version))
        .collect()
}

/// Saves the shadow candidates atomically (when they changed); written before the pins, so a
/// crash between the two never leaves a newly named candidate unguarded.
pub fn save_shadows(data_dir: &Path, shadows: &BTreeMap<String, ShadowSpec>) {
    if load_shadows(data_dir) == *shadows {
        return;
    }
    let bytes = serde_json::to_vec_pretty(shadows).unwrap_or_default();
    if let Err(e) = outpost_tuf::store::write_atomic(&data_dir.join(SHADOWS_FILE), &bytes) {
        tracing::error!(error = %e, "cannot save the shadow candidates; a restart may serve one before the server answers");
    }
}
