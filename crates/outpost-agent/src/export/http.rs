//! The server sink: sends export records to the control plane (`POST /v1/device/results`) in
//! zstd-compressed batches, signed like every device request, and acknowledges them in the
//! outbox once the server stored them. The server stores each record id once, so a batch sent
//! again after a lost answer is harmless.
//!
//! It starts once the device is enrolled (the control session hands it the signed client).
//! A transient failure (network, 5xx, 429, clock skew) backs off and resends from the committed
//! position; a batch the server refuses outright (400) is dropped and counted, because sending
//! it again cannot succeed and would block every record behind it. The budget counts each
//! record's JSON before compression, so the bytes on the wire stay below it.

use super::budget::Budget;
use super::sink::{next_batch, SinkStats};
use crate::control::client::{now_ms, ClientError, DeviceClient};
use crate::control::{backoff, stopped};
use outpost_outbox::{AsyncOutbox, ConsumerName};
use outpost_proto::fleet::results::MAX_RESULTS_PER_BATCH;
use std::time::Duration;
use tokio::sync::watch;

/// The outbox consumer name of the server sink.
pub const CONSUMER: &str = "server";
/// Records per request.
const BATCH: usize = 500;

/// A running server sink's parts.
pub struct HttpSink {
    /// The enrolled device's signed client.
    pub client: DeviceClient,
    /// The export outbox.
    pub outbox: AsyncOutbox,
    /// The budget it keeps.
    pub budget: Budget,
    /// Its counters.
    pub stats: SinkStats,
    /// How long a partial batch waits for more records.
    pub linger: Duration,
}

/// `{"records":[r1,r2,...]}` from the records' JSON, zstd-compressed.
fn body(payloads: &[&[u8]]) -> std::io::Result<Vec<u8>> {
    super::sink::compressed_array(b"{\"records\":[", payloads, b"]}")
}

impl HttpSink {
    /// Sends until `stop` turns true or the device is revoked.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let consumer = match ConsumerName::new(CONSUMER) {
            Ok(c) => c,
            Err(e) => return tracing::error!(error = %e, "server export sink"),
        };
        if let Err(e) = self.outbox.add_consumer(&consumer).await {
            return tracing::error!(error = %e, "server export sink cannot join the export outbox");
        }
        let device = self.client.device_id().to_string();
        let mut appended = self.outbox.subscribe();
        let mut attempt = 0u32;
        let wire = |_: &str, payload: usize| payload as u64 + 1;
        let mut lingering = None;
        loop {
            if *stop.borrow() {
                return;
            }
            let batch = match next_batch(&self.outbox, &consumer, &device, &self.budget, BATCH, now_ms(), wire).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "server export sink cannot read the export outbox");
                    self.stats.failures.inc();
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                        _ = stopped(&mut stop) => return,
                    }
                }
            };
            self.stats.budget_blocked.set(i64::from(batch.budget_wait.is_some()));
            if batch.messages.is_empty() && batch.skipped.is_empty() {
                let nap = batch.budget_wait.unwrap_or(Duration::from_secs(5)).max(Duration::from_millis(50));
                tokio::select! {
                    _ = appended.changed() => {}
                    _ = tokio::time::sleep(nap) => {}
                    _ = stopped(&mut stop) => return,
                }
                continue;
            }
            if let Some(wait) = batch.linger(BATCH, self.linger, &mut lingering) {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stopped(&mut stop) => return,
                }
                continue;
            }
            debug_assert!(batch.messages.len() <= MAX_RESULTS_PER_BATCH);
            let payloads: Vec<&[u8]> = batch.messages.iter().map(|m| m.payload.as_slice()).collect();
            let compressed = match body(&payloads) {
                Ok(b) => b,
                Err(e) => return tracing::error!(error = %e, "server export sink cannot compress"),
            };
            let sent_bytes = compressed.len() as u64;
            let n = batch.messages.len() as u64;
            let outcome =
                if payloads.is_empty() { Ok(None) } else { self.client.send_results(compressed).await.map(Some) };
            let dropped = match outcome {
                Ok(ack) => {
                    self.stats.connected.set(1);
                    attempt = 0;
                    let rejected = ack.as_ref().map_or(0, |a| a.rejected.len() as u64);
                    if let Some(first) = ack.as_ref().and_then(|a| a.rejected.first()) {
                        tracing::warn!(rejected, reason = %first.reason, "the server refused some export records");
                    }
                    self.stats.delivered(n - rejected, if n > 0 { sent_bytes } else { 0 });
                    rejected
                }
                Err(ClientError::Revoked { .. }) => {
                    self.stats.connected.set(0);
                    return tracing::error!("the device was revoked; the server export sink stops");
                }
                Err(e) if e.is_transient() || e.code() == Some("unknown_device") => {
                    self.stats.connected.set(0);
                    self.stats.failures.inc();
                    let delay = backoff(attempt, Duration::from_secs(60));
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "server export");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => continue,
                        _ = stopped(&mut stop) => return,
                    }
                }
                Err(e) => {
                    self.stats.failures.inc();
                    tracing::error!(error = %e, records = n, "the server refused an export batch; dropped");
                    n
                }
            };
            let ids = batch.messages.iter().map(|m| m.id).chain(batch.skipped.iter().copied()).collect();
            if let Err(e) = self.outbox.ack_all(&consumer, ids).await {
                tracing::error!(error = %e, "server export sink cannot commit its position; records may be sent twice");
                continue;
            }
            if let Some(b) = batch.budget {
                self.budget = b;
            }
            self.stats.dropped.inc_by(dropped + batch.skipped.len() as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_batch_body_is_the_records_in_an_object_compressed() {
        let body = super::body(&[b"{\"id\":\"a\"}", b"{\"id\":\"b\"}"]).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&zstd::decode_all(&body[..]).unwrap()).unwrap();
        assert_eq!(json["records"][1]["id"], "b");
    }
}
