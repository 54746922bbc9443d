//! The session's side of the control outbox: what could not be sent waits there, and is sent
//! (acknowledgements first, reports oldest first, in batches) before anything newer.

use super::super::client::ClientError;
use super::super::outbox::{Counts, Queued};
use super::{Session, BATCH};
use outpost_proto::fleet::device::{CommandAck, ReportBatch, StateReport};
use std::sync::atomic::Ordering;

impl Session {
    /// Publishes the outbox's counts in the status; false when it cannot be read.
    pub(super) async fn refresh_counts(&self) -> Option<Counts> {
        match self.outbox.counts().await {
            Ok(c) => {
                self.status.queued_reports.store(usize::try_from(c.reports).unwrap_or(usize::MAX), Ordering::Relaxed);
                self.status.dropped_reports.store(c.dropped, Ordering::Relaxed);
                Some(c)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read the control outbox");
                None
            }
        }
    }

    pub(super) async fn queue_report(&self, report: StateReport) {
        if let Err(e) = self.outbox.push_report(&report).await {
            tracing::error!(error = %e, seq = report.seq, "cannot queue a state report; it is lost");
        }
        self.refresh_counts().await;
    }

    /// Sends queued items, oldest first in batches (acknowledgements before reports). Returns
    /// whether the outbox is now empty.
    pub(super) async fn flush_outbox(&self) -> bool {
        let flushed = self.flush_batches().await;
        if !flushed {
            if let Err(e) = self.outbox.retry_later().await {
                tracing::error!(error = %e, "cannot rewind the control outbox");
            }
        }
        self.refresh_counts().await;
        flushed
    }

    async fn flush_batches(&self) -> bool {
        loop {
            let batch = match self.outbox.next_batch(BATCH).await {
                Ok(b) if b.is_empty() => return true,
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the control outbox");
                    return false;
                }
            };
            let mut done = Vec::with_capacity(batch.len());
            let mut reports = Vec::new();
            let mut report_ids = Vec::new();
            let mut sent_all = true;
            for item in batch {
                match item {
                    Queued::Ack(id, pending) => {
                        if !sent_all {
                            continue;
                        }
                        match self.client.ack(pending.id, &pending.ack).await {
                            Ok(()) => self.on_contact(None),
                            Err(e) if e.is_transient() || matches!(e, ClientError::Revoked { .. }) => {
                                self.on_error("sending a queued command acknowledgement", &e);
                                sent_all = false;
                                continue;
                            }
                            Err(e) => self.on_error(&format!("acknowledging command {} (dropping it)", pending.id), &e),
                        }
                        done.push(id);
                    }
                    Queued::Report(id, report) => {
                        reports.push(*report);
                        report_ids.push(id);
                    }
                    Queued::Unreadable(id) => done.push(id),
                }
            }
            if sent_all && !reports.is_empty() {
                let n = reports.len();
                match self.client.send_reports(&ReportBatch { reports }).await {
                    Ok(ack) => {
                        self.on_contact(Some(&ack));
                        done.extend(report_ids);
                    }
                    Err(e) if e.is_transient() || matches!(e, ClientError::Revoked { .. }) => {
                        self.on_error("sending queued reports", &e);
                        sent_all = false;
                    }
                    // The server will never take this batch; keeping it would block the queue forever.
                    Err(e) => {
                        self.on_error(&format!("sending queued reports (dropping {n})"), &e);
                        done.extend(report_ids);
                    }
                }
            }
            if let Err(e) = self.outbox.delivered(done).await {
                tracing::error!(error = %e, "cannot update the outbox after delivery; items may be sent twice");
                return false;
            }
            if !sent_all {
                return false;
            }
        }
    }

    /// Sends an acknowledgement now, or queues it durably when the server cannot take it.
    pub(super) async fn send_ack(&self, id: i64, ack: CommandAck) {
        let queued_before = self.outbox.counts().await.is_ok_and(|c| c.acks > 0);
        if !queued_before {
            match self.client.ack(id, &ack).await {
                Ok(()) => return self.on_contact(None),
                Err(e) if !e.is_transient() => return self.on_error(&format!("acknowledging command {id}"), &e),
                Err(e) => self.on_error(&format!("acknowledging command {id}"), &e),
            }
        }
        if let Err(e) = self.outbox.push_ack(id, ack).await {
            tracing::error!(error = %e, command = id, "cannot queue a command acknowledgement; it is lost");
        }
    }
}
