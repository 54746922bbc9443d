//! Agent events for export, derived from the state reports the agent builds anyway: a model's
//! served version or state changing, an update moving on (downloading, installed, failed). A
//! failure is an alert (`High`); the rest are events. The first report only sets the baseline,
//! so a restart does not repeat what was already said.

use outpost_proto::fleet::device::ModelReport;
use std::collections::HashMap;

/// One event to export.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentEvent {
    /// An alert (high priority) rather than an event.
    pub alert: bool,
    /// `model.state`, `model.failed`, `update.<state>`, `update.failed`.
    pub event: String,
    /// The model.
    pub model: String,
    /// The version concerned.
    pub version: String,
    /// Details (state, reason, failure kind).
    pub details: serde_json::Value,
}

/// What was last seen of one model.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Seen {
    serving: (String, String),
    update: Option<(String, String)>,
}

/// Tracks the models between reports.
#[derive(Debug, Default)]
pub struct EventTracker {
    seen: Option<HashMap<String, Seen>>,
}

impl EventTracker {
    /// The events `models` show since the previous call (none on the first).
    pub fn observe(&mut self, models: &[ModelReport]) -> Vec<AgentEvent> {
        let now: HashMap<String, Seen> = models
            .iter()
            .map(|m| {
                let update = m.update.as_ref().map(|u| (u.version.clone(), u.state.clone()));
                (m.name.clone(), Seen { serving: (m.version.clone(), m.state.clone()), update })
            })
            .collect();
        let Some(before) = self.seen.replace(now) else { return Vec::new() };
        let mut out = Vec::new();
        for m in models {
            let old = before.get(&m.name);
            if old.is_none_or(|o| o.serving != (m.version.clone(), m.state.clone())) {
                let failed = m.state == "failed";
                out.push(AgentEvent {
                    alert: failed,
                    event: if failed { "model.failed".into() } else { "model.state".into() },
                    model: m.name.clone(),
                    version: m.version.clone(),
                    details: serde_json::json!({
                        "state": m.state, "reason": m.reason, "failure_kind": m.failure_kind,
                        "previous": old.map(|o| &o.serving.0),
                    }),
                });
            }
            if let Some(u) = &m.update {
                let key = Some((u.version.clone(), u.state.clone()));
                if old.is_none_or(|o| o.update != key) {
                    let failed = u.state == "failed";
                    out.push(AgentEvent {
                        alert: failed,
                        event: format!("update.{}", u.state),
                        model: m.name.clone(),
                        version: u.version.clone(),
                        details: serde_json::json!({
                            "state": u.state, "reason": u.reason, "failure_kind": u.failure_kind,
                            "delta_from": u.delta_from, "bytes_fetched": u.bytes_fetched,
                        }),
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_proto::fleet::device::UpdateReport;

    fn model(version: &str, state: &str, update: Option<(&str, &str)>) -> ModelReport {
        ModelReport {
            name: "m".into(),
            version: version.into(),
            state: state.into(),
            update: update.map(|(v, s)| UpdateReport { version: v.into(), state: s.into(), ..UpdateReport::default() }),
            ..ModelReport::default()
        }
    }

    #[test]
    fn changes_become_events_and_failures_alerts_after_the_first_report() {
        let mut t = EventTracker::default();
        assert!(t.observe(&[model("1", "ready", None)]).is_empty(), "the first report is the baseline");
        assert!(t.observe(&[model("1", "ready", None)]).is_empty(), "nothing changed");
        let e = t.observe(&[model("1", "ready", Some(("2", "downloading")))]);
        assert_eq!((e.len(), e[0].event.as_str(), e[0].alert), (1, "update.downloading", false));
        let e = t.observe(&[model("1", "ready", Some(("2", "failed")))]);
        assert_eq!((e[0].event.as_str(), e[0].alert, e[0].version.as_str()), ("update.failed", true, "2"));
        let e = t.observe(&[model("2", "ready", None)]);
        assert_eq!((e[0].event.as_str(), e[0].details["previous"].as_str()), ("model.state", Some("1")));
        let e = t.observe(&[model("2", "failed", None)]);
        assert!(e[0].alert && e[0].event == "model.failed");
    }
}
