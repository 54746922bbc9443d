//! Wave sizing, the order devices join in, and reading a device's reported model state as its
//! place in a rollout.

use outpost_proto::fleet::device::FailureKind;
use outpost_proto::fleet::rollout::DeviceRolloutState;
use sha2::{Digest, Sha256};

/// Devices that should have joined once wave `wave` runs: the cumulative percentage of
/// `eligible`, rounded up (a 1 % canary of 30 devices is 1 device, not 0), and never more than
/// there are. The last wave always takes every device.
pub fn cumulative_target(percents: &[f64], wave: usize, eligible: u64) -> u64 {
    if wave + 1 >= percents.len() {
        return eligible;
    }
    let p = percents.get(wave).copied().unwrap_or(100.0).clamp(0.0, 100.0);
    let n = (p / 100.0 * eligible as f64 - 1e-9).ceil().max(0.0) as u64;
    n.clamp(u64::from(eligible > 0), eligible)
}

/// The waves of a spec, made valid: each a percentage in (0, 100], in increasing order without
/// repeats (cumulative shares, so the order they were typed in carries nothing), ending at 100.
pub fn normalise_waves(waves: &[f64]) -> Result<Vec<f64>, String> {
    let mut out = Vec::with_capacity(waves.len() + 1);
    for &w in waves {
        if !w.is_finite() || w <= 0.0 || w > 100.0 {
            return Err(format!("wave {w} is not a percentage in (0, 100]"));
        }
        out.push(w);
    }
    out.sort_by(f64::total_cmp);
    out.dedup();
    if out.len() > 20 {
        return Err("at most 20 waves".into());
    }
    if out.last() != Some(&100.0) {
        out.push(100.0);
    }
    Ok(out)
}

/// A device's place in the join order of one rollout: a hash of both ids, so the order is
/// stable across ticks, replicas and restarts, spreads a wave over sites and enrolment dates,
/// and differs between rollouts (the same devices are not always the canaries).
pub fn join_rank(rollout_id: i64, device_id: &str) -> [u8; 8] {
    let mut h = Sha256::new();
    h.update(rollout_id.to_be_bytes());
    h.update(device_id.as_bytes());
    let d = h.finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&d[..8]);
    out
}

/// What a device last reported about the rollout's model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// The version served (or failing to load) and its state: `ready`, `probation`, `loading`, `failed`.
    pub serving: Option<(String, String, Option<FailureKind>)>,
    /// A version on its way: state without the `update:` prefix, and the failure kind.
    pub update: Option<(String, String, Option<FailureKind>)>,
    /// The shadow candidate and its state: `loading`, `ready`, `failed`.
    pub shadow: Option<(String, String, Option<FailureKind>)>,
}

/// Failure kinds worth another attempt later: the cause is outside the package.
pub fn is_transient(kind: FailureKind) -> bool {
    matches!(kind, FailureKind::Download | FailureKind::Io | FailureKind::DiskFull | FailureKind::Other)
}

/// The state a device is in for `version`, live (serving it) or shadow (running it beside the
/// serving one), judged from its report; `None` when the report says nothing about the version
/// yet (the device has not seen its new desired state).
pub fn classify(observed: &Observed, version: &str, shadow: bool) -> Option<(DeviceRolloutState, Option<FailureKind>)> {
    use DeviceRolloutState::*;
    if shadow {
        let (v, state, kind) = observed.shadow.as_ref()?;
        if v != version {
            return None;
        }
        return Some(match state.as_str() {
            "ready" => (Updated, None),
            "failed" => (Failed, Some(kind.unwrap_or(FailureKind::Other))),
            _ => (Updating, None),
        });
    }
    if let Some((v, state, kind)) = &observed.update {
        if v == version && state == "failed" {
            let kind = kind.unwrap_or(FailureKind::Other);
            return Some((if kind == FailureKind::Probation { RolledBack } else { Failed }, Some(kind)));
        }
    }
    if let Some((v, state, kind)) = &observed.serving {
        if v == version {
            return Some(match state.as_str() {
                "ready" => (Updated, None),
                "probation" => (Probation, None),
                "failed" => (Failed, Some(kind.unwrap_or(FailureKind::Other))),
                _ => (Updating, None),
            });
        }
        // Serving another version with this one refused at probation: the device rolled back.
        if *kind == Some(FailureKind::Probation) && observed.update.as_ref().is_none_or(|(u, _, _)| u == version) {
            return Some((RolledBack, Some(FailureKind::Probation)));
        }
    }
    match &observed.update {
        Some((v, _, _)) if v == version => Some((Updating, None)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeviceRolloutState::*;

    #[test]
    fn waves_round_up_never_exceed_the_fleet_and_the_last_takes_all() {
        let w = [1.0, 10.0, 50.0, 100.0];
        for (n, expect) in [
            (0u64, [0u64, 0, 0, 0]),
            (1, [1, 1, 1, 1]),
            (2, [1, 1, 1, 2]),
            (3, [1, 1, 2, 3]),
            (30, [1, 3, 15, 30]),
            (10_000, [100, 1000, 5000, 10_000]),
            (10_001, [101, 1001, 5001, 10_001]),
        ] {
            let got: Vec<u64> = (0..4).map(|i| cumulative_target(&w, i, n)).collect();
            assert_eq!(got, expect, "{n} devices");
        }
    }

    #[test]
    fn wave_lists_are_checked_and_completed() {
        assert_eq!(normalise_waves(&[1.0, 10.0]).unwrap(), vec![1.0, 10.0, 100.0]);
        assert_eq!(normalise_waves(&[]).unwrap(), vec![100.0]);
        assert_eq!(normalise_waves(&[50.0, 100.0]).unwrap(), vec![50.0, 100.0]);
        assert_eq!(normalise_waves(&[10.0, 5.0, 10.0]).unwrap(), vec![5.0, 10.0, 100.0]);
        for bad in [vec![0.0], vec![101.0], vec![f64::NAN], vec![-1.0]] {
            assert!(normalise_waves(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn join_order_is_stable_and_differs_between_rollouts() {
        assert_eq!(join_rank(1, "d1"), join_rank(1, "d1"));
        let order = |id| {
            let mut d: Vec<String> = (0..50).map(|i| format!("d{i}")).collect();
            d.sort_by_key(|x| join_rank(id, x));
            d
        };
        assert_ne!(order(1), order(2));
    }

    fn obs(
        serving: Option<(&str, &str, Option<FailureKind>)>,
        update: Option<(&str, &str, Option<FailureKind>)>,
    ) -> Observed {
        let own = |t: Option<(&str, &str, Option<FailureKind>)>| t.map(|(v, s, k)| (v.to_string(), s.to_string(), k));
        Observed { serving: own(serving), update: own(update), shadow: None }
    }

    #[test]
    fn reports_read_as_rollout_states() {
        assert_eq!(classify(&obs(Some(("1", "ready", None)), None), "2", false), None);
        assert_eq!(
            classify(&obs(Some(("1", "ready", None)), Some(("2", "downloading", None))), "2", false),
            Some((Updating, None))
        );
        assert_eq!(classify(&obs(Some(("2", "probation", None)), None), "2", false), Some((Probation, None)));
        assert_eq!(classify(&obs(Some(("2", "ready", None)), None), "2", false), Some((Updated, None)));
        let dl = Some(FailureKind::Download);
        assert_eq!(
            classify(&obs(Some(("1", "ready", None)), Some(("2", "failed", dl))), "2", false),
            Some((Failed, dl))
        );
        let pb = Some(FailureKind::Probation);
        assert_eq!(
            classify(&obs(Some(("1", "ready", pb)), Some(("2", "failed", pb))), "2", false),
            Some((RolledBack, pb))
        );
        assert_eq!(classify(&obs(Some(("1", "ready", pb)), None), "2", false), Some((RolledBack, pb)));
        let st = Some(FailureKind::SelfTest);
        assert_eq!(classify(&obs(Some(("2", "failed", st)), None), "2", false), Some((Failed, st)));
        let shadow = Observed { shadow: Some(("3".into(), "ready".into(), None)), ..Observed::default() };
        assert_eq!(classify(&shadow, "3", true), Some((Updated, None)));
        assert_eq!(classify(&shadow, "3", false), None);
        assert_eq!(classify(&shadow, "4", true), None);
    }
}
