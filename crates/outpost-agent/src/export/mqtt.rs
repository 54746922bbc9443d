//! The MQTT sink: publishes export records with QoS 1 and acknowledges them in the outbox only
//! after the broker's PUBACK, so a record is delivered at least once whatever the broker, the
//! link or the agent does.
//!
//! It works in batches: read up to `batch` records within the budget, publish them all, wait
//! until the broker acknowledged every one, then commit the outbox position once. Any error
//! (connection lost or refused, no PUBACK within `ack_timeout_s`) drops the connection; the
//! next one starts from the committed position, so the unacknowledged batch is sent again (the
//! record ids let subscribers drop the duplicates). Reconnection backs off with jitter up to a
//! minute; records wait in the outbox meanwhile, however long the broker stays away.

use super::budget::Budget;
use super::config::MqttConfig;
use super::link::{Link, LinkEvent};
use super::sink::{next_batch, SinkStats};
use crate::control::client::now_ms;
use crate::control::{backoff, stopped};
use outpost_outbox::{AsyncOutbox, ConsumerName};
use std::time::Duration;
use tokio::sync::watch;

/// The outbox consumer name of the MQTT sink.
pub const CONSUMER: &str = "mqtt";
/// The topic level of compressed batches (`zstd_batches`).
pub const BATCH_SUFFIX: &str = "batch";
/// `[r1,r2,...]` from the records' JSON, zstd-compressed.
fn zstd_array(messages: &[super::sink::Message]) -> std::io::Result<Vec<u8>> {
    let payloads: Vec<&[u8]> = messages.iter().map(|m| m.payload.as_slice()).collect();
    super::sink::compressed_array(b"[", &payloads, b"]")
}

/// A running MQTT sink's parts.
pub struct MqttSink {
    /// Its configuration.
    pub cfg: MqttConfig,
    /// The device id (topics, record ids, default client id).
    pub device: String,
    /// The export outbox.
    pub outbox: AsyncOutbox,
    /// The budget it keeps.
    pub budget: Budget,
    /// Its counters.
    pub stats: SinkStats,
    /// How long a partial batch waits for more records.
    pub linger: Duration,
}

impl MqttSink {
    /// Sends until `stop` turns true; a configuration error stops it at once (logged).
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let consumer = match ConsumerName::new(CONSUMER) {
            Ok(c) => c,
            Err(e) => return tracing::error!(error = %e, "MQTT sink"),
        };
        if let Err(e) = self.outbox.add_consumer(&consumer).await {
            return tracing::error!(error = %e, "MQTT sink cannot join the export outbox");
        }
        let client_id = self.cfg.client_id.clone().unwrap_or_else(|| format!("outpost-{}", self.device));
        let mut attempt = 0u32;
        while !*stop.borrow() {
            let link = match Link::new(&self.cfg, &client_id, self.cfg.batch.max(1)) {
                Ok(link) => link,
                Err(e) => return tracing::error!(error = %e, "MQTT sink not started"),
            };
            let mut connected = false;
            let result = self.session(link, &consumer, &mut stop, &mut connected).await;
            self.stats.connected.set(0);
            match result {
                Ok(()) => return,
                Err(e) => {
                    self.stats.failures.inc();
                    if connected {
                        attempt = 0;
                    }
                    let delay = backoff(attempt, Duration::from_secs(60));
                    tracing::warn!(url = %self.cfg.url, error = %e, retry_in_ms = delay.as_millis() as u64, "MQTT export");
                    attempt = attempt.saturating_add(1);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stopped(&mut stop) => return,
                    }
                }
            }
        }
    }

    /// One connection: connect, then send batches until an error (Err) or a stop (Ok).
    async fn session(
        &mut self,
        mut link: Link,
        consumer: &ConsumerName,
        stop: &mut watch::Receiver<bool>,
        connected: &mut bool,
    ) -> Result<(), String> {
        let connect_timeout = Duration::from_secs(10);
        tokio::time::timeout(connect_timeout, async {
            loop {
                if link.poll().await? == LinkEvent::Connected {
                    return Ok::<(), String>(());
                }
            }
        })
        .await
        .map_err(|_| format!("no CONNACK from {} within {connect_timeout:?}", self.cfg.url))??;
        *connected = true;
        self.stats.connected.set(1);
        tracing::info!(url = %self.cfg.url, version = self.cfg.version, "MQTT export connected");
        let mut appended = self.outbox.subscribe();
        let prefix = format!("{}/{}/", self.cfg.topic_prefix.trim_end_matches('/'), self.device);
        // Fixed header, topic length and packet id of a QoS 1 PUBLISH: about 2 + 2 + 2 bytes.
        let wire = |suffix: &str, payload: usize| (prefix.len() + suffix.len() + payload + 6) as u64;
        let mut lingering = None;
        loop {
            let batch =
                next_batch(&self.outbox, consumer, &self.device, &self.budget, self.cfg.batch.max(1), now_ms(), wire)
                    .await
                    .map_err(|e| format!("export outbox: {e}"))?;
            self.stats.budget_blocked.set(i64::from(batch.budget_wait.is_some()));
            if batch.messages.is_empty() && batch.skipped.is_empty() {
                let nap = batch.budget_wait.unwrap_or(Duration::from_secs(5)).max(Duration::from_millis(50));
                tokio::select! {
                    r = link.poll() => { r?; }
                    _ = appended.changed() => {}
                    _ = tokio::time::sleep(nap) => {}
                    _ = stopped(stop) => {
                        link.disconnect().await;
                        return Ok(());
                    }
                }
                continue;
            }
            if let Some(wait) = batch.linger(self.cfg.batch.max(1), self.linger, &mut lingering) {
                tokio::select! {
                    r = link.poll() => { r?; }
                    _ = tokio::time::sleep(wait) => {}
                    _ = stopped(stop) => {
                        link.disconnect().await;
                        return Ok(());
                    }
                }
                continue;
            }
            let n = batch.messages.len();
            let mut bytes = 0u64;
            let publishes = if self.cfg.zstd_batches && n > 0 {
                let payload = zstd_array(&batch.messages).map_err(|e| format!("compressing a batch: {e}"))?;
                bytes += wire(BATCH_SUFFIX, payload.len());
                link.publish(&format!("{prefix}{BATCH_SUFFIX}"), payload).await?;
                1
            } else {
                for m in &batch.messages {
                    let topic = format!("{prefix}{}", m.suffix);
                    bytes += wire(&m.suffix, m.payload.len());
                    link.publish(&topic, m.payload.clone()).await?;
                }
                n
            };
            let timeout = Duration::from_secs(self.cfg.ack_timeout_s.max(1));
            let (mut acked, mut refused) = (0usize, 0u64);
            tokio::time::timeout(timeout, async {
                while acked < publishes {
                    if let LinkEvent::Acked(ok) = link.poll().await? {
                        acked += 1;
                        refused += u64::from(!ok);
                    }
                }
                Ok::<(), String>(())
            })
            .await
            .map_err(|_| format!("{} of {n} PUBACKs within {timeout:?}", acked))??;
            // A refused batch message refuses all its records.
            if publishes == 1 && self.cfg.zstd_batches {
                refused *= n as u64;
            }
            if refused > 0 {
                tracing::warn!(refused, "the broker refused some export records (MQTT 5 reason code); dropped");
            }
            let ids = batch.messages.iter().map(|m| m.id).chain(batch.skipped.iter().copied()).collect();
            self.outbox.ack_all(consumer, ids).await.map_err(|e| format!("export outbox: {e}"))?;
            if let Some(b) = batch.budget {
                self.budget = b;
            }
            self.stats.delivered(n as u64 - refused, bytes);
            self.stats.dropped.inc_by(batch.skipped.len() as u64 + refused);
        }
    }
}
