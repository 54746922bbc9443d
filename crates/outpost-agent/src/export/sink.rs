//! What every sink shares: reading the next batch from the export outbox within the bandwidth
//! budget, and the counters it keeps.
//!
//! A stored record is `<topic suffix>\n<JSON>` (`results/<model>`, `events`, `telemetry`), so a
//! sink routes it without parsing the JSON. A batch is read from the consumer's committed
//! position each time (the previous batch was acknowledged or is to be sent again), one priority
//! at a time from `High` down, so a priority out of budget does not hide the others.

use super::budget::Budget;
use super::record::{record_id, with_id};
use outpost_outbox::{AsyncOutbox, ConsumerName, OutboxError, Priority, RecordId};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::time::Duration;

/// One record ready to send.
#[derive(Debug, Clone)]
pub struct Message {
    /// Its outbox id (acked once the sink delivered it).
    pub id: RecordId,
    /// Topic below `<prefix>/<device>/`.
    pub suffix: String,
    /// The JSON with its `"id"` first.
    pub payload: Vec<u8>,
}

/// What the next send should carry.
#[derive(Debug, Default)]
pub struct Batch {
    /// Records to send, `High` first.
    pub messages: Vec<Message>,
    /// Records that are to be acknowledged without sending: larger than an hour's budget, or
    /// not in the stored format. Counted in [`SinkStats::dropped`].
    pub skipped: Vec<RecordId>,
    /// The budget after sending `messages` (becomes the sink's once they are delivered).
    pub budget: Option<Budget>,
    /// When some priority is waiting for its budget: how long until it may send.
    pub budget_wait: Option<Duration>,
}

/// zstd level of compressed batches: JSON records compress about 5-10x at level 3 for little CPU.
const ZSTD_LEVEL: i32 = 3;

/// `open`, the payloads separated by commas, `close`, zstd-compressed: a batch of records as one
/// JSON document.
pub fn compressed_array(open: &[u8], payloads: &[&[u8]], close: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut json = Vec::with_capacity(payloads.iter().map(|p| p.len() + 1).sum::<usize>() + open.len() + close.len());
    json.extend_from_slice(open);
    for (i, p) in payloads.iter().enumerate() {
        if i > 0 {
            json.push(b',');
        }
        json.extend_from_slice(p);
    }
    json.extend_from_slice(close);
    zstd::encode_all(&json[..], ZSTD_LEVEL)
}

impl Batch {
    /// Whether to wait for more records before sending this batch: it is not full, holds no
    /// alert, and has not waited `linger` yet (`since` is when the wait began, set here). A
    /// fuller batch compresses better and costs fewer round trips; an alert never waits.
    pub fn linger(
        &self,
        max_records: usize,
        linger: Duration,
        since: &mut Option<std::time::Instant>,
    ) -> Option<Duration> {
        let alert = self.messages.iter().any(|m| m.id.priority == Priority::High);
        if linger.is_zero()
            || alert
            || self.messages.len() + self.skipped.len() >= max_records
            || self.messages.is_empty()
        {
            *since = None;
            return None;
        }
        let started = *since.get_or_insert_with(std::time::Instant::now);
        let left = linger.saturating_sub(started.elapsed());
        if left.is_zero() {
            *since = None;
            None
        } else {
            Some(left)
        }
    }
}

/// Counters of one sink: the series the agent's `/metrics` shows for it.
#[derive(Debug, Default, Clone)]
pub struct SinkStats {
    /// Records delivered (acknowledged by the other end).
    pub sent_records: Counter,
    /// Bytes of topic and payload delivered.
    pub sent_bytes: Counter,
    /// Records given up on: too large for the budget, refused by the broker, unreadable.
    pub dropped: Counter,
    /// Connection attempts or sends that failed (each retried).
    pub failures: Counter,
    /// 1 while the sink is connected.
    pub connected: Gauge,
    /// 1 while some priority waits for its budget.
    pub budget_blocked: Gauge,
}

impl SinkStats {
    /// Counts a delivered batch.
    pub fn delivered(&self, records: u64, bytes: u64) {
        self.sent_records.inc_by(records);
        self.sent_bytes.inc_by(bytes);
    }
}

/// Splits a stored record into its topic suffix and JSON.
fn split(payload: &[u8]) -> Option<(&str, &[u8])> {
    let nl = payload.iter().position(|b| *b == b'\n')?;
    let suffix = std::str::from_utf8(&payload[..nl]).ok()?;
    Some((suffix, &payload[nl + 1..])).filter(|(s, json)| !s.is_empty() && json.first() == Some(&b'{'))
}

/// The stored form of a record.
pub fn stored(suffix: &str, json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(suffix.len() + 1 + json.len());
    out.extend_from_slice(suffix.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(json);
    out
}

/// Reads up to `max_records` for `consumer`, within `budget`; `wire_bytes` says what a message
/// costs on the wire (topic and framing included).
pub async fn next_batch(
    outbox: &AsyncOutbox,
    consumer: &ConsumerName,
    device: &str,
    budget: &Budget,
    max_records: usize,
    now_ms: i64,
    wire_bytes: impl Fn(&str, usize) -> u64,
) -> Result<Batch, OutboxError> {
    outbox.rewind(consumer).await?;
    let mut trial = budget.clone();
    let mut batch = Batch::default();
    for p in Priority::ALL.into_iter().rev() {
        let room = max_records.saturating_sub(batch.messages.len() + batch.skipped.len());
        if room == 0 {
            break;
        }
        for record in outbox.poll_priority(consumer, p, room, 4 << 20).await? {
            let Some((suffix, json)) = split(&record.payload) else {
                tracing::warn!(id = %record.id, "skipping an export record that is not in the stored format");
                batch.skipped.push(record.id);
                continue;
            };
            let payload = with_id(json, &record_id(device, record.id));
            let cost = wire_bytes(suffix, payload.len());
            match trial.wait_ms(p, cost, now_ms) {
                None => {
                    tracing::warn!(id = %record.id, bytes = cost, "an export record exceeds an hour's budget; dropped");
                    batch.skipped.push(record.id);
                }
                Some(0) => {
                    trial.spend(p, cost, now_ms);
                    batch.messages.push(Message { id: record.id, suffix: suffix.to_string(), payload });
                }
                Some(ms) => {
                    let wait = Duration::from_millis(u64::try_from(ms).unwrap_or(0));
                    batch.budget_wait = Some(batch.budget_wait.map_or(wait, |w| w.min(wait)));
                    // The rest of this priority waits behind this record, in order.
                    break;
                }
            }
        }
    }
    batch.budget = Some(trial);
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_batch_lingers_once_and_an_alert_or_a_full_one_never() {
        use outpost_outbox::RecordId;
        let msg = |priority| Message { id: RecordId { priority, seq: 1 }, suffix: "events".into(), payload: vec![] };
        let linger = Duration::from_millis(200);
        let mut since = None;
        let partial = Batch { messages: vec![msg(Priority::Normal)], ..Batch::default() };
        assert!(partial.linger(10, linger, &mut since).is_some_and(|w| w <= linger));
        assert!(since.is_some());
        std::thread::sleep(linger);
        assert_eq!(partial.linger(10, linger, &mut since), None, "waited enough");
        assert_eq!(since, None);
        assert_eq!(partial.linger(1, linger, &mut since), None, "full");
        let alert = Batch { messages: vec![msg(Priority::Normal), msg(Priority::High)], ..Batch::default() };
        assert_eq!(alert.linger(10, linger, &mut since), None);
        assert_eq!(partial.linger(10, Duration::ZERO, &mut since), None);
        assert_eq!(Batch::default().linger(10, linger, &mut since), None);
    }

    #[test]
    fn stored_records_split_back_into_topic_and_json() {
        let s = stored("results/bearing", b"{\"a\":1}");
        assert_eq!(split(&s), Some(("results/bearing", &b"{\"a\":1}"[..])));
        assert_eq!(split(b"no newline"), None);
        assert_eq!(split(b"\n{}"), None);
        assert_eq!(split(b"events\nnot json"), None);
    }
}
