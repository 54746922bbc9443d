//! Fleet drift: each device's latest drift window per model (`device_drift`, written with the
//! reports), aggregated per model version and label group, and the alert rules judged on those
//! groups. Both are computed from the stored windows when asked (`GET /v1/drift`,
//! `GET /v1/alerts`), and every 15 s for the Prometheus gauges, so they never disagree with
//! what devices last reported. Windows older than `drift_stale_s` no longer count: a device that
//! stopped serving a model does not keep its last alert for ever.

use crate::db::drift::DriftEntry;
use outpost_proto::fleet::drift::{Alert, AlertMetric, AlertRule, DriftGroup, DriftStatus, FeatureSummary};
use outpost_proto::fleet::Selector;
use std::collections::BTreeMap;

/// Devices listed per group or alert.
const LISTED: usize = 100;
/// Features listed per group.
const FEATURES: usize = 5;

/// Checks configured rules: names, selectors, limits.
pub fn check_rules(rules: &[AlertRule]) -> Result<(), String> {
    let mut names = std::collections::HashSet::new();
    for r in rules {
        if r.name.trim().is_empty() {
            return Err("an alert rule needs a name".into());
        }
        if !names.insert(r.name.as_str()) {
            return Err(format!("alert rule {:?} is defined twice", r.name));
        }
        if let Some(s) = &r.selector {
            s.parse::<Selector>().map_err(|e| format!("alert rule {:?}: selector: {e}", r.name))?;
        }
        if !r.above.is_finite() || r.above < 0.0 {
            return Err(format!("alert rule {:?}: `above` must be a finite number ≥ 0", r.name));
        }
        if r.metric == AlertMetric::DriftingDevices && r.above >= 1.0 {
            return Err(format!(
                "alert rule {:?}: drifting_devices is a share of devices (0..1); `above` {} can never fire",
                r.name, r.above
            ));
        }
    }
    Ok(())
}

/// The rules in force: the configured ones, or the default (any device at the alert level).
pub fn rules_in_force(configured: &[AlertRule]) -> Vec<AlertRule> {
    if configured.is_empty() {
        AlertRule::default_rules()
    } else {
        configured.to_vec()
    }
}

/// Groups `entries` by model, version and (with `group_by`) that label's value, after keeping
/// only those matching `selector`; sorted by model, version and group.
pub fn summarize(entries: &[DriftEntry], selector: Option<&Selector>, group_by: Option<&str>) -> Vec<DriftGroup> {
    let mut groups: BTreeMap<(String, String, Option<String>), Vec<&DriftEntry>> = BTreeMap::new();
    for e in entries.iter().filter(|e| selector.is_none_or(|s| s.matches(&e.labels))) {
        let group = group_by.and_then(|k| e.labels.get(k).cloned());
        groups.entry((e.model.clone(), e.version.clone(), group)).or_default().push(e);
    }
    groups.into_iter().map(|((model, version, group), members)| group_of(model, version, group, &members)).collect()
}

fn group_of(model: String, version: String, group: Option<String>, members: &[&DriftEntry]) -> DriftGroup {
    let mut g = DriftGroup { model, version, group, devices: members.len() as u64, ..DriftGroup::default() };
    let mut scored = 0u64;
    let mut sum = 0.0;
    let mut features: BTreeMap<&str, (u64, f64, f64)> = BTreeMap::new();
    for e in members {
        match e.report.status {
            DriftStatus::Ok => g.ok += 1,
            DriftStatus::Warn => g.warn += 1,
            DriftStatus::Alert => g.alert += 1,
            DriftStatus::NoReference => {
                g.no_reference += 1;
                continue;
            }
        }
        scored += 1;
        sum += e.report.score;
        g.max_score = g.max_score.max(e.report.score);
        for f in &e.report.features {
            let slot = features.entry(f.feature.as_str()).or_insert((0, 0.0, 0.0));
            slot.0 += 1;
            slot.1 += f.psi;
            slot.2 = slot.2.max(f.psi);
        }
    }
    g.mean_score = if scored > 0 { sum / scored as f64 } else { 0.0 };
    let mut features: Vec<FeatureSummary> = features
        .into_iter()
        .map(|(feature, (devices, total, max_psi))| FeatureSummary {
            feature: feature.to_string(),
            devices,
            mean_psi: total / devices as f64,
            max_psi,
        })
        .collect();
    features.sort_by(|a, b| b.mean_psi.total_cmp(&a.mean_psi).then_with(|| a.feature.cmp(&b.feature)));
    features.truncate(FEATURES);
    g.features = features;
    let mut alerting: Vec<&&DriftEntry> = members.iter().filter(|e| e.report.status == DriftStatus::Alert).collect();
    alerting.sort_by(|a, b| b.report.score.total_cmp(&a.report.score).then_with(|| a.device_id.cmp(&b.device_id)));
    g.alerting = alerting.iter().take(LISTED).map(|e| e.device_id.clone()).collect();
    g
}

/// The alerts `rules` raise on `entries`.
pub fn evaluate(rules: &[AlertRule], entries: &[DriftEntry]) -> Vec<Alert> {
    let mut out = Vec::new();
    for rule in rules {
        // Checked at start-up; a rule that no longer parses raises nothing rather than everything.
        let selector = match rule.selector.as_deref().map(str::parse::<Selector>) {
            Some(Ok(s)) => Some(s),
            Some(Err(_)) => continue,
            None => None,
        };
        let mine: Vec<DriftEntry> =
            entries.iter().filter(|e| rule.model.as_ref().is_none_or(|m| *m == e.model)).cloned().collect();
        for g in summarize(&mine, selector.as_ref(), rule.group_by.as_deref()) {
            if g.devices < rule.min_devices.max(1) {
                continue;
            }
            let value = match rule.metric {
                AlertMetric::DriftingDevices => g.alert as f64 / g.devices as f64,
                AlertMetric::MeanDriftScore => g.mean_score,
                AlertMetric::MaxDriftScore => g.max_score,
            };
            if value <= rule.above {
                continue;
            }
            let since_ms = mine
                .iter()
                .filter(|e| e.model == g.model && e.version == g.version && g.alerting.contains(&e.device_id))
                .filter_map(|e| e.alert_since_ms)
                .min();
            out.push(Alert {
                rule: rule.name.clone(),
                model: g.model,
                version: g.version,
                group: g.group,
                value,
                above: rule.above,
                devices: g.devices,
                alerting: g.alerting,
                since_ms,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_proto::fleet::drift::{DriftReport, FeatureDrift};

    fn entry(device: &str, version: &str, site: &str, status: DriftStatus, score: f64) -> DriftEntry {
        DriftEntry {
            device_id: device.into(),
            model: "bearing".into(),
            version: version.into(),
            labels: BTreeMap::from([("site".to_string(), site.to_string())]),
            alert_since_ms: (status == DriftStatus::Alert).then_some(1000 + score as i64),
            report: DriftReport {
                version: version.into(),
                status,
                score,
                features: vec![FeatureDrift { feature: "window[2]".into(), psi: score, ..FeatureDrift::default() }],
                ..DriftReport::default()
            },
        }
    }

    fn fleet() -> Vec<DriftEntry> {
        vec![
            entry("a", "2", "berlin", DriftStatus::Alert, 1.2),
            entry("b", "2", "berlin", DriftStatus::Alert, 0.6),
            entry("c", "2", "berlin", DriftStatus::Ok, 0.01),
            entry("d", "2", "paris", DriftStatus::Ok, 0.02),
            entry("e", "2", "paris", DriftStatus::NoReference, 0.0),
            entry("f", "1", "paris", DriftStatus::Warn, 0.15),
        ]
    }

    #[test]
    fn groups_count_statuses_and_list_the_alerting_devices_worst_first() {
        let all = summarize(&fleet(), None, None);
        assert_eq!(all.len(), 2);
        let v2 = &all[1];
        assert_eq!((v2.version.as_str(), v2.devices, v2.ok, v2.alert, v2.no_reference), ("2", 5, 2, 2, 1));
        assert!((v2.mean_score - (1.2 + 0.6 + 0.01 + 0.02) / 4.0).abs() < 1e-9);
        assert_eq!(v2.max_score, 1.2);
        assert_eq!(v2.alerting, ["a", "b"]);
        assert_eq!(v2.features[0].devices, 4);
        let by_site = summarize(&fleet(), None, Some("site"));
        let berlin = by_site.iter().find(|g| g.version == "2" && g.group.as_deref() == Some("berlin")).unwrap();
        assert_eq!((berlin.devices, berlin.alert), (3, 2));
        let paris: Selector = "site=paris".parse().unwrap();
        assert!(summarize(&fleet(), Some(&paris), None).iter().all(|g| g.alert == 0));
    }

    #[test]
    fn rules_fire_per_group_above_their_limit_and_say_since_when() {
        let alerts = evaluate(&AlertRule::default_rules(), &fleet());
        assert_eq!(alerts.len(), 1);
        assert_eq!((alerts[0].version.as_str(), alerts[0].alerting.len()), ("2", 2));
        assert_eq!(alerts[0].since_ms, Some(1000));
        let rule = AlertRule {
            name: "site".into(),
            model: Some("bearing".into()),
            selector: None,
            group_by: Some("site".into()),
            metric: AlertMetric::DriftingDevices,
            above: 0.5,
            min_devices: 2,
        };
        let alerts = evaluate(std::slice::from_ref(&rule), &fleet());
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].group.as_deref(), Some("berlin"));
        assert!((alerts[0].value - 2.0 / 3.0).abs() < 1e-9);
        let other = AlertRule { model: Some("camera".into()), ..rule.clone() };
        assert!(evaluate(&[other], &fleet()).is_empty());
        let max = AlertRule { metric: AlertMetric::MaxDriftScore, above: 0.1, group_by: None, min_devices: 1, ..rule };
        assert_eq!(evaluate(&[max], &fleet()).len(), 2);
    }

    #[test]
    fn bad_rules_are_refused_by_name() {
        let mut rule = AlertRule::default_rules().remove(0);
        assert!(check_rules(std::slice::from_ref(&rule)).is_ok());
        rule.selector = Some("=berlin".into());
        assert!(check_rules(std::slice::from_ref(&rule)).unwrap_err().contains("drift"));
        rule.selector = None;
        rule.above = 1.0;
        assert!(check_rules(std::slice::from_ref(&rule)).unwrap_err().contains("share"));
        rule.above = 0.0;
        assert!(check_rules(&[rule.clone(), rule]).unwrap_err().contains("twice"));
    }
}
