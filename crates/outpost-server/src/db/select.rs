//! Translation of label selectors and connectivity status into SQL conditions, so that
//! filtering happens in the database (with the `(key, value)` index) rather than in Rust.
//!
//! Conditions refer to `d` (the `devices` row) and `s` (its `device_status` row, LEFT JOINed).

use super::sql::Sql;
use super::Thresholds;
use outpost_proto::fleet::api::DeviceStatus;
use outpost_proto::fleet::selector::{Requirement, Selector};

/// The conditions one label key must meet for a device to match (positive terms only).
struct KeyCondition<'a> {
    key: &'a str,
    /// Each entry restricts the value: `value = v` or `value IN (...)`; empty for `key`.
    values: Vec<ValueCondition<'a>>,
}

enum ValueCondition<'a> {
    Equals(&'a str),
    In(&'a [String]),
}

fn push_value_condition(q: &mut Sql, alias: &str, c: &ValueCondition<'_>) {
    match c {
        ValueCondition::Equals(v) => {
            q.push(" AND ").push(alias).push(".value = ").bind(*v);
        }
        // `in ()` holds for no value; the parser never produces it, but the type allows it.
        ValueCondition::In([]) => {
            q.push(" AND 1 = 0");
        }
        ValueCondition::In(vs) => {
            q.push(" AND ").push(alias).push(".value IN ").bind_list(vs.iter());
        }
    }
}

/// Appends `AND <condition>` selecting the devices the selector matches, as one semi-join and
/// at most one anti-join however many terms there are.
///
/// A device has at most one row per key (`device_labels` is keyed by `(device_id, key)`), so the
/// positive terms (`k=v`, `k in (..)`, `k`) are grouped by key into one condition per key, and a
/// device matches them all exactly when as many of its label rows meet one of those conditions
/// as there are distinct keys: `d.id IN (SELECT device_id ... WHERE <any key condition> GROUP BY
/// device_id HAVING COUNT(*) = <keys>)`. The negative terms (`k!=v`, `k notin (..)`, `!k`) hold
/// when the device has no label row meeting any of them: one `NOT EXISTS` with their OR.
///
/// The old translation (one correlated `EXISTS` per term) made PostgreSQL plan a join per term:
/// planning alone took 1 s for 32 terms, 100 terms took seconds and 500 never finished. This
/// shape reads the label table through the `(key, value)` index once for the positive terms
/// and once per candidate device (primary key) for the negative ones.
pub(crate) fn push_selector(q: &mut Sql, selector: &Selector) {
    let mut positive: Vec<KeyCondition<'_>> = Vec::new();
    let mut negative: Vec<(&str, Option<ValueCondition<'_>>)> = Vec::new();
    for r in selector.requirements() {
        let (key, cond) = match r {
            Requirement::Equals(k, v) => (k, Some(ValueCondition::Equals(v))),
            Requirement::In(k, vs) => (k, Some(ValueCondition::In(vs))),
            Requirement::Exists(k) => (k, None),
            Requirement::NotEquals(k, v) => {
                negative.push((k, Some(ValueCondition::Equals(v))));
                continue;
            }
            Requirement::NotIn(k, vs) => {
                negative.push((k, Some(ValueCondition::In(vs))));
                continue;
            }
            Requirement::DoesNotExist(k) => {
                negative.push((k, None));
                continue;
            }
        };
        let entry = match positive.iter().position(|p| p.key == key.as_str()) {
            Some(i) => &mut positive[i],
            None => {
                positive.push(KeyCondition { key, values: Vec::new() });
                let last = positive.len() - 1;
                &mut positive[last]
            }
        };
        entry.values.extend(cond);
    }
    if !positive.is_empty() {
        q.push(" AND d.id IN (SELECT l.device_id FROM device_labels l WHERE ");
        for (i, p) in positive.iter().enumerate() {
            q.push(if i == 0 { "(l.key = " } else { " OR (l.key = " }).bind(p.key);
            for c in &p.values {
                push_value_condition(q, "l", c);
            }
            q.push(")");
        }
        // With one key every row found is a match: no grouping, which also keeps PostgreSQL's
        // row estimate right (it guesses a HAVING keeps 0.5 % of the groups and would then
        // pick nested loops over thousands of matches).
        if positive.len() > 1 {
            let keys = i64::try_from(positive.len()).unwrap_or(i64::MAX);
            q.push(" GROUP BY l.device_id HAVING COUNT(*) = ").bind(keys);
        }
        q.push(")");
    }
    if !negative.is_empty() {
        q.push(" AND NOT EXISTS (SELECT 1 FROM device_labels n WHERE n.device_id = d.id AND (");
        for (i, (key, cond)) in negative.iter().enumerate() {
            q.push(if i == 0 { "(n.key = " } else { " OR (n.key = " }).bind(*key);
            if let Some(c) = cond {
                push_value_condition(q, "n", c);
            }
            q.push(")");
        }
        q.push("))");
    }
}

/// The boundaries used by every status condition: `(stale_since, offline_since)`.
fn cutoffs(now_ms: i64, th: Thresholds) -> (i64, i64) {
    (now_ms - th.stale_after_ms, now_ms - th.offline_after_ms)
}

/// Appends `AND <condition>` selecting devices with the given status (as [`super::status_of`]).
pub(crate) fn push_status(q: &mut Sql, status: DeviceStatus, now_ms: i64, th: Thresholds) {
    let (stale_since, offline_since) = cutoffs(now_ms, th);
    match status {
        DeviceStatus::Revoked => {
            q.push(" AND d.revoked_ms IS NOT NULL");
        }
        DeviceStatus::Online => {
            q.push(" AND d.revoked_ms IS NULL AND s.last_seen_ms >= ").bind(stale_since);
        }
        DeviceStatus::Stale => {
            q.push(" AND d.revoked_ms IS NULL AND s.last_seen_ms < ").bind(stale_since);
            q.push(" AND s.last_seen_ms >= ").bind(offline_since);
        }
        DeviceStatus::Offline => {
            q.push(" AND d.revoked_ms IS NULL AND (s.last_seen_ms IS NULL OR s.last_seen_ms < ");
            q.bind(offline_since).push(")");
        }
    }
}

/// Appends a CASE expression evaluating to the status wire name.
pub(crate) fn push_status_case(q: &mut Sql, now_ms: i64, th: Thresholds) {
    let (stale_since, offline_since) = cutoffs(now_ms, th);
    q.push("CASE WHEN d.revoked_ms IS NOT NULL THEN 'revoked' WHEN s.last_seen_ms >= ").bind(stale_since);
    q.push(" THEN 'online' WHEN s.last_seen_ms >= ").bind(offline_since);
    q.push(" THEN 'stale' ELSE 'offline' END");
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_proto::fleet::selector::MAX_SELECTOR_TERMS;

    fn compiled(selector: &str) -> String {
        let mut q = Sql::new("SELECT d.id FROM devices d WHERE 1 = 1");
        push_selector(&mut q, &selector.parse().expect("selector"));
        q.text().to_string()
    }

    #[test]
    fn any_number_of_terms_compiles_to_at_most_two_subqueries() {
        let many = (0..MAX_SELECTOR_TERMS)
            .map(|i| match i % 4 {
                0 => format!("k{i}=v"),
                1 => format!("k{i} in (a|b)"),
                2 => format!("k{i}!=v"),
                _ => format!("!k{i}"),
            })
            .collect::<Vec<_>>()
            .join(",");
        let sql = compiled(&many);
        assert_eq!(sql.matches("SELECT").count(), 3, "{sql}");
        assert!(sql.contains("HAVING COUNT(*) = $"), "{sql}");
    }

    #[test]
    fn terms_on_one_key_share_one_condition() {
        let sql = compiled("site in (a|b),site in (b|c),site");
        assert_eq!(sql.matches("l.key = ").count(), 1, "{sql}");
        assert!(!sql.contains("HAVING"), "one key needs no grouping: {sql}");
        assert!(!sql.contains("NOT EXISTS"), "{sql}");
        assert_eq!(compiled(""), "SELECT d.id FROM devices d WHERE 1 = 1");
    }
}
