//! What an exported record says, as JSON (the payload schema the README documents).
//!
//! A record is stored without its id (the outbox gives the id on append) and sent with it:
//! [`with_id`] puts `"id"` first. The id is `<device>/<priority>/<seq>`, unique per device for
//! good (the outbox never gives an acknowledged sequence number again), so a consumer that
//! receives a record twice (at-least-once delivery) dedupes on it.

use outpost_outbox::RecordId;
use outpost_proto::prediction::Prediction;
use serde::Serialize;
use std::collections::BTreeMap;

/// The kinds of record, and the topic level each is published under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An inference result (`…/results/<model>`).
    Result,
    /// An agent event: update states, errors (`…/events`).
    Event,
    /// An alert: drift, a failed update (`…/events`, high priority).
    Alert,
    /// Periodic statistics (`…/telemetry`).
    Telemetry,
}

/// The fields every record has; the rest is flattened in per kind.
#[derive(Debug, Serialize)]
pub struct Envelope<'a, T: Serialize> {
    /// Which kind of record.
    pub kind: Kind,
    /// The device it comes from.
    pub device: &'a str,
    /// The model it concerns, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<&'a str>,
    /// That model's version, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<&'a str>,
    /// When it happened, Unix ms (device clock).
    pub at_ms: i64,
    /// The device's labels.
    pub labels: &'a BTreeMap<String, String>,
    /// The kind's own fields.
    #[serde(flatten)]
    pub body: T,
}

/// A result's own fields.
#[derive(Debug, Serialize)]
pub struct ResultBody<'a> {
    /// The typed predictions (pipelines) or output tensors (Open Inference Protocol).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outputs: Option<&'a serde_json::Value>,
    /// The best score among the predictions, when they have scores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f32>,
    /// Inference time in microseconds.
    pub latency_us: u64,
    /// The outputs were larger than `export.max_result_bytes` and were left out.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// An event's or an alert's own fields.
#[derive(Debug, Serialize)]
pub struct EventBody<'a> {
    /// What happened, e.g. `update.failed`, `drift`.
    pub event: &'a str,
    /// Details.
    pub details: &'a serde_json::Value,
}

/// The best score among `predictions` (top class, best box, an anomaly or event score).
pub fn confidence(predictions: &[Prediction]) -> Option<f32> {
    predictions
        .iter()
        .filter_map(|p| match p {
            Prediction::Classification { top } => top.first().map(|c| c.score),
            Prediction::Detection { boxes } => boxes.first().map(|b| b.score),
            Prediction::Anomaly { score, .. } | Prediction::Event { score, .. } => Some(*score),
            Prediction::Regression { .. } => None,
        })
        .fold(None, |best, s| Some(best.map_or(s, |b: f32| b.max(s))))
}

/// The record's id as consumers see it.
pub fn record_id(device: &str, id: RecordId) -> String {
    format!("{device}/{}/{}", id.priority, id.seq)
}

/// `payload` (a JSON object) with `"id"` as its first member.
pub fn with_id(payload: &[u8], id: &str) -> Vec<u8> {
    let quoted = serde_json::to_string(id).unwrap_or_else(|_| "\"\"".into());
    let rest = payload.strip_prefix(b"{").unwrap_or(payload);
    let mut out = Vec::with_capacity(payload.len() + quoted.len() + 8);
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(quoted.as_bytes());
    if rest.first() != Some(&b'}') {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_outbox::Priority;
    use outpost_proto::prediction::LabelScore;

    #[test]
    fn a_record_carries_its_id_first_and_stays_valid_json() {
        let labels = BTreeMap::from([("site".to_string(), "berlin".to_string())]);
        let outputs = serde_json::json!([{"kind": "anomaly", "score": 0.9, "threshold": 0.5, "anomalous": true}]);
        let body = ResultBody { outputs: Some(&outputs), confidence: Some(0.9), latency_us: 120, truncated: false };
        let env = Envelope {
            kind: Kind::Result,
            device: "d-1",
            model: Some("bearing"),
            version: Some("2"),
            at_ms: 5,
            labels: &labels,
            body,
        };
        let payload = serde_json::to_vec(&env).unwrap();
        let id = record_id("d-1", RecordId { priority: Priority::Normal, seq: 41 });
        let sent = with_id(&payload, &id);
        assert!(sent.starts_with(b"{\"id\":\"d-1/normal/41\","));
        let v: serde_json::Value = serde_json::from_slice(&sent).unwrap();
        assert_eq!(v["kind"], "result");
        assert_eq!(v["labels"]["site"], "berlin");
        assert_eq!(v["outputs"][0]["score"], 0.9);
        assert!(v.get("truncated").is_none());
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&with_id(b"{}", "x")).unwrap()["id"], "x");
    }

    #[test]
    fn confidence_is_the_best_score_and_absent_for_regressions() {
        let top = vec![LabelScore { index: 3, label: None, score: 0.7 }];
        let preds = vec![
            Prediction::Classification { top },
            Prediction::Anomaly { score: 0.2, threshold: 0.5, anomalous: false },
        ];
        assert_eq!(confidence(&preds), Some(0.7));
        assert_eq!(confidence(&[Prediction::Regression { values: vec![1.0] }]), None);
    }
}
