//! Desired state: what one device should run, computed from the fleet's assignments, the
//! device's labels and override, its open commands and the heartbeat interval.
//!
//! Pure so the precedence rules (newest matching assignment wins per model; the override wins
//! over assignments; an override version "" removes the model) are unit-tested without a
//! database, and so the ETag is a function of exactly the fields the device receives.

use outpost_proto::fleet::api::{Assignment, DeviceOverride, PackageRef};
use outpost_proto::fleet::device::{DesiredModel, DesiredState, DeviceCommand};
use outpost_proto::fleet::rollout::ShadowSpec;
use outpost_proto::fleet::{Labels, Selector};
use outpost_proto::{ModelName, Version};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};

/// The package of every registry version published with one, by (name, version).
pub type PackageIndex = HashMap<(String, String), PackageRef>;

/// What every device's desired state reads from the registry: loaded once, cached until an
/// assignment or a publish changes it.
#[derive(Debug, Clone, Default)]
pub struct Fleetwide {
    /// All assignments, oldest first.
    pub assignments: Vec<ParsedAssignment>,
    /// The packages devices download.
    pub packages: PackageIndex,
}

/// An assignment with its selector parsed once, when the assignment list is loaded.
#[derive(Debug, Clone)]
pub struct ParsedAssignment {
    /// The stored assignment.
    pub assignment: Assignment,
    /// Its selector; `None` when the stored text no longer parses (it then matches nothing).
    pub selector: Option<Selector>,
}

impl ParsedAssignment {
    /// Parses the assignment's selector.
    pub fn new(assignment: Assignment) -> ParsedAssignment {
        let selector = assignment.selector.parse::<Selector>().ok();
        if selector.is_none() {
            tracing::warn!(id = assignment.id, selector = %assignment.selector, "assignment selector does not parse; ignored");
        }
        ParsedAssignment { assignment, selector }
    }
}

/// A rollout a device is a member of: it serves the version (or runs it in shadow) while the
/// rollout holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutTarget {
    /// Rollout id.
    pub rollout_id: i64,
    /// Model.
    pub model: String,
    /// The version.
    pub version: String,
    /// Share of requests to shadow, when the device runs the version in shadow.
    pub shadow_sample: Option<f64>,
    /// Retry counter.
    pub attempt: u32,
    /// When the rollout was created: against assignments, the newer decision wins.
    pub created_ms: i64,
}

/// Everything a device's desired state depends on.
#[derive(Debug, Clone, Copy)]
pub struct DesiredInputs<'a> {
    /// All assignments, oldest first.
    pub assignments: &'a [ParsedAssignment],
    /// Packages of published versions.
    pub packages: &'a PackageIndex,
    /// The device's labels.
    pub labels: &'a Labels,
    /// The device's override, if any.
    pub device_override: Option<&'a DeviceOverride>,
    /// Rollouts holding the device, oldest first.
    pub rollouts: &'a [RolloutTarget],
    /// Commands not yet acknowledged, oldest first.
    pub commands: &'a [DeviceCommand],
    /// Heartbeat interval, seconds.
    pub heartbeat_interval_s: u32,
}

/// The fields the ETag covers: the desired state minus the ETag itself.
#[derive(Serialize)]
struct Hashed<'a> {
    models: &'a [DesiredModel],
    config: &'a BTreeMap<String, serde_json::Value>,
    commands: &'a [DeviceCommand],
    heartbeat_interval_s: u32,
    labels: &'a Labels,
}

/// Computes the desired state and its ETag.
pub fn desired_state(inputs: DesiredInputs<'_>) -> DesiredState {
    let mut models: BTreeMap<String, DesiredModel> = BTreeMap::new();
    let mut decided_ms: BTreeMap<String, i64> = BTreeMap::new();
    for parsed in inputs.assignments {
        let matches = parsed.selector.as_ref().is_some_and(|s| s.matches(inputs.labels));
        let a = &parsed.assignment;
        // Rows written before names had a grammar may hold names it refuses: never send them.
        let named_well = ModelName::is_valid(&a.model) && Version::is_valid(&a.version);
        if matches && named_well {
            // Oldest first, so a later (newer) match overwrites an earlier one for the same model.
            decided_ms.insert(a.model.clone(), a.created_ms);
            models.insert(a.model.clone(), desired(&a.model, &a.version, format!("assignment:{}", a.id), 0));
        }
    }
    for t in inputs.rollouts.iter().filter(|t| t.shadow_sample.is_none()) {
        let well_named = ModelName::is_valid(&t.model) && Version::is_valid(&t.version);
        // An assignment made after the rollout started is the newer decision and wins.
        if well_named && decided_ms.get(&t.model).is_none_or(|&at| t.created_ms >= at) {
            decided_ms.insert(t.model.clone(), t.created_ms);
            models
                .insert(t.model.clone(), desired(&t.model, &t.version, format!("rollout:{}", t.rollout_id), t.attempt));
        }
    }
    let mut config = BTreeMap::new();
    if let Some(ov) = inputs.device_override {
        for (name, version) in &ov.models {
            if version.is_empty() {
                models.remove(name.as_str());
            } else {
                models.insert(name.to_string(), desired(name.as_str(), version, "override".into(), 0));
            }
        }
        config = ov.config.clone();
    }
    for t in inputs.rollouts {
        let Some(sample) = t.shadow_sample else { continue };
        // A shadow needs a serving version to compare with; it never replaces one.
        if let Some(m) = models.get_mut(&t.model).filter(|m| m.version != t.version && Version::is_valid(&t.version)) {
            m.shadow = Some(ShadowSpec {
                version: t.version.clone(),
                package: inputs.packages.get(&(t.model.clone(), t.version.clone())).cloned(),
                sample,
            });
        }
    }
    let models: Vec<DesiredModel> = models
        .into_values()
        .map(|mut m| {
            m.package = inputs.packages.get(&(m.name.clone(), m.version.clone())).cloned();
            m
        })
        .collect();
    let etag = etag_of(&Hashed {
        models: &models,
        config: &config,
        commands: inputs.commands,
        heartbeat_interval_s: inputs.heartbeat_interval_s,
        labels: inputs.labels,
    });
    DesiredState {
        etag,
        models,
        config,
        commands: inputs.commands.to_vec(),
        heartbeat_interval_s: inputs.heartbeat_interval_s,
        labels: inputs.labels.clone(),
    }
}

/// A desired model without its package (filled in last, for whichever entry wins).
fn desired(name: &str, version: &str, source: String, attempt: u32) -> DesiredModel {
    DesiredModel { name: name.into(), version: version.into(), source, package: None, shadow: None, attempt }
}

fn etag_of(hashed: &Hashed<'_>) -> String {
    // Serialising plain structs and BTreeMaps is deterministic, which makes this canonical.
    let bytes = serde_json::to_vec(hashed).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_proto::fleet::device::CommandKind;
    use std::sync::LazyLock;

    static NO_PACKAGES: LazyLock<PackageIndex> = LazyLock::new(PackageIndex::new);

    fn assignment(id: i64, selector: &str, model: &str, version: &str) -> ParsedAssignment {
        ParsedAssignment::new(Assignment {
            id,
            selector: selector.into(),
            model: model.into(),
            version: version.into(),
            created_by: "token:t".into(),
            created_ms: id,
        })
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn inputs<'a>(a: &'a [ParsedAssignment], l: &'a Labels, o: Option<&'a DeviceOverride>) -> DesiredInputs<'a> {
        DesiredInputs {
            assignments: a,
            packages: &NO_PACKAGES,
            labels: l,
            device_override: o,
            rollouts: &[],
            commands: &[],
            heartbeat_interval_s: 30,
        }
    }

    #[test]
    fn newest_matching_assignment_wins_per_model() {
        let a = [
            assignment(1, "site=berlin", "defect", "1"),
            assignment(2, "", "defect", "2"),
            assignment(3, "site=paris", "defect", "3"),
            assignment(4, "site=berlin", "ocr", "7"),
        ];
        let l = labels(&[("site", "berlin")]);
        let s = desired_state(inputs(&a, &l, None));
        let got: Vec<_> = s.models.iter().map(|m| (m.name.as_str(), m.version.as_str(), m.source.as_str())).collect();
        assert_eq!(got, vec![("defect", "2", "assignment:2"), ("ocr", "7", "assignment:4")]);
    }

    #[test]
    fn override_wins_and_empty_version_removes() {
        let a = [assignment(1, "", "defect", "1"), assignment(2, "", "ocr", "1")];
        let l = Labels::new();
        let mut ov = DeviceOverride::default();
        ov.models.insert(ModelName::parse("defect").unwrap(), "9".into());
        ov.models.insert(ModelName::parse("ocr").unwrap(), String::new());
        ov.config.insert("log_level".into(), serde_json::json!("debug"));
        let s = desired_state(inputs(&a, &l, Some(&ov)));
        assert_eq!(
            s.models,
            vec![DesiredModel {
                name: "defect".into(),
                version: "9".into(),
                source: "override".into(),
                package: None,
                shadow: None,
                attempt: 0
            }]
        );
        assert_eq!(s.config.get("log_level"), Some(&serde_json::json!("debug")));
    }

    #[test]
    fn etag_is_stable_and_changes_with_any_input() {
        let a = [assignment(1, "", "defect", "1")];
        let l = labels(&[("site", "berlin")]);
        let base = desired_state(inputs(&a, &l, None));
        assert_eq!(base.etag, desired_state(inputs(&a, &l, None)).etag);
        assert_eq!(base.etag.len(), 32);
        let l2 = labels(&[("site", "paris")]);
        assert_ne!(base.etag, desired_state(inputs(&a, &l2, None)).etag);
        let cmd = [DeviceCommand { id: 1, kind: CommandKind::CollectLogs, args: serde_json::json!({}), created_ms: 5 }];
        let with_cmd = desired_state(DesiredInputs { commands: &cmd, ..inputs(&a, &l, None) });
        assert_ne!(base.etag, with_cmd.etag);
        let slower = desired_state(DesiredInputs { heartbeat_interval_s: 60, ..inputs(&a, &l, None) });
        assert_ne!(base.etag, slower.etag);
    }

    #[test]
    fn desired_models_carry_their_package_and_its_changes_change_the_etag() {
        let a = [assignment(1, "", "defect", "1"), assignment(2, "", "ocr", "4")];
        let l = Labels::new();
        let mut packages = PackageIndex::new();
        let pkg = PackageRef { sha256: "ab".repeat(32), size_bytes: 1234 };
        packages.insert(("defect".into(), "1".into()), pkg.clone());
        let with = desired_state(DesiredInputs { packages: &packages, ..inputs(&a, &l, None) });
        assert_eq!(with.models[0].package.as_ref(), Some(&pkg));
        assert_eq!(with.models[1].package, None, "ocr@4 was published without a package");
        assert_ne!(with.etag, desired_state(inputs(&a, &l, None)).etag);
    }

    #[test]
    fn unparsable_selector_matches_nothing() {
        let a = [assignment(1, "a b=c", "defect", "1")];
        let l = Labels::new();
        assert!(desired_state(inputs(&a, &l, None)).models.is_empty());
    }
}
