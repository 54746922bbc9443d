//! A rollout as operators see it: per wave the devices by state, offline ones, failures by
//! kind and the gates against their limits.

use super::engine::{DeviceView, Member, RolloutRecord};
use outpost_proto::fleet::rollout::{DeviceRolloutState, Rollout, RolloutDevice, StateCounts, WavePhase, WaveStatus};
use std::collections::HashMap;

/// What storage knows beyond the engine's record.
#[derive(Debug, Clone)]
pub struct Meta {
    /// Who created it.
    pub created_by: String,
    /// Last change.
    pub updated_ms: i64,
}

/// The operator's view of a rollout.
pub fn rollout_view(
    r: &RolloutRecord,
    meta: &Meta,
    members: &[Member],
    fleet: &HashMap<String, DeviceView>,
) -> Rollout {
    let mut skipped = StateCounts::new();
    let mut free = 0u64;
    for (id, v) in fleet.iter().filter(|(_, v)| v.matches) {
        if members.iter().any(|m| &m.device_id == id) {
            continue;
        }
        if v.pinned {
            *skipped.entry("pinned".into()).or_default() += 1;
        } else if v.busy {
            *skipped.entry("in_another_rollout".into()).or_default() += 1;
        } else {
            free += 1;
        }
    }
    let waves = r
        .spec
        .waves
        .iter()
        .enumerate()
        .map(|(i, &percent)| {
            let record = r.waves.get(i).cloned().unwrap_or_default();
            let mut by_state = StateCounts::new();
            let mut failures = StateCounts::new();
            let (mut devices, mut offline) = (0u64, 0u64);
            for m in members.iter().filter(|m| m.wave == i) {
                devices += 1;
                *by_state.entry(m.state.as_str().into()).or_default() += 1;
                if !fleet.get(&m.device_id).is_some_and(|v| v.online) {
                    offline += 1;
                }
                if matches!(m.state, DeviceRolloutState::Failed | DeviceRolloutState::RolledBack) {
                    let kind = m.failure.map_or("other", crate::db::failure_name);
                    *failures.entry(kind.into()).or_default() += 1;
                }
            }
            WaveStatus {
                index: i,
                percent,
                phase: record.phase.unwrap_or(WavePhase::Waiting),
                devices,
                by_state,
                offline,
                failures,
                started_ms: record.started_ms,
                bake_started_ms: record.bake_started_ms,
                gates: record.gates,
            }
        })
        .collect();
    Rollout {
        id: r.id,
        spec: r.spec.clone(),
        state: r.state,
        wave: r.wave,
        reason: r.reason.clone(),
        created_by: meta.created_by.clone(),
        created_ms: r.created_ms,
        updated_ms: meta.updated_ms,
        eligible: free + members.len() as u64,
        skipped,
        waves,
    }
}

/// One member as operators see it.
pub fn device_view(m: &Member) -> RolloutDevice {
    RolloutDevice {
        device_id: m.device_id.clone(),
        wave: m.wave,
        state: m.state,
        from_version: m.from_version.clone(),
        failure: m.failure.map(|k| crate::db::failure_name(k).to_string()),
        attempts: m.attempts,
        updated_ms: m.updated_ms,
    }
}
