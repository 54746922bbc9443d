//! Group commit for state reports, the server's hot path.
//!
//! Each heartbeat handler hands its rows to one writer task and waits for a reply. The writer
//! takes everything that queued up (up to `report_batch_max` rows) and writes it in one
//! transaction, then answers every waiting handler. There is no timer: while one batch is being
//! written the next one accumulates, so batches grow with load and a lone heartbeat is written
//! at once. A handler answers only after its rows are durable, so an acknowledged report is
//! never lost; a full queue is answered with 503 so devices back off instead of piling up.
//!
//! Before queueing, each device pays for its reports from its rate limit
//! ([`crate::ratelimit`]; 429 when over), and each report's device time is bounded by the
//! server clock ([`ReportWindow`]): history downsampling spaces reports by that time, so a
//! device must not be able to date reports far ahead (which would suppress its later history)
//! or anywhere the history could not keep them.

use crate::db::{Db, DbError, ReportRow};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::ratelimit::DeviceRateLimit;
use outpost_proto::fleet::device::StateReport;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// One handler's rows and where to send the outcome.
struct ReportJob {
    rows: Vec<ReportRow>,
    done: oneshot::Sender<Result<(), ApiError>>,
}

/// The span of device time a report may claim, relative to the server's receive time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportWindow {
    /// How far ahead of the receive time a report may be dated (the clock-skew window).
    pub ahead_ms: i64,
    /// How far behind the receive time a report may be dated (the history retention).
    pub behind_ms: i64,
}

impl ReportWindow {
    /// Bounds `report.at_ms`: dated more than `ahead_ms` after `received_ms`, it gets the
    /// receive time (the device clock is wrong, the arrival is what is known); dated more than
    /// `behind_ms` before, it gets that edge (it is at least that old). Returns whether it changed.
    pub fn bound(&self, report: &mut StateReport, received_ms: i64) -> bool {
        let latest = received_ms.saturating_add(self.ahead_ms);
        let earliest = received_ms.saturating_sub(self.behind_ms);
        let bounded = if report.at_ms > latest {
            received_ms
        } else if report.at_ms < earliest {
            earliest
        } else {
            return false;
        };
        report.at_ms = bounded;
        true
    }
}

/// The handlers' side of the writer: cheap to clone.
#[derive(Clone)]
pub struct ReportQueue {
    tx: mpsc::Sender<ReportJob>,
    window: ReportWindow,
    limit: Arc<DeviceRateLimit>,
}

impl ReportQueue {
    /// Charges the sender's rate limit, bounds each report's time, queues the rows and waits
    /// until they are written (or the write failed). Rows come from one device.
    pub async fn submit(&self, mut rows: Vec<ReportRow>) -> Result<(), ApiError> {
        let Some(device) = rows.first().map(|r| r.device_id.clone()) else {
            return Ok(());
        };
        self.limit.take(&device, rows.len()).map_err(|wait| {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            ApiError::RateLimited(
                format!(
                    "device {device:?} sent more reports than its rate limit allows; retry in {secs} s \
                     (reports wait in the device's outbox meanwhile)"
                ),
                secs.max(1),
            )
        })?;
        let mut bounded = 0usize;
        for row in rows.iter_mut() {
            bounded += usize::from(self.window.bound(&mut row.report, row.received_ms));
        }
        if bounded > 0 {
            tracing::debug!(%device, bounded, "report times outside the accepted window were bounded");
        }
        let (done, result) = oneshot::channel();
        self.tx.try_send(ReportJob { rows, done }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                ApiError::Overloaded("the report queue is full; retry after the Retry-After delay".into())
            }
            mpsc::error::TrySendError::Closed(_) => {
                ApiError::Overloaded("the server is shutting down; retry against another replica or later".into())
            }
        })?;
        result.await.unwrap_or_else(|_| Err(ApiError::Internal("the report writer stopped before answering".into())))
    }

    /// Forgets rate-limit buckets that have refilled; run periodically.
    pub fn prune_limits(&self) {
        self.limit.prune();
    }
}

/// How the writer is set up.
pub struct WriterOptions {
    /// Most rows per transaction.
    pub batch_max: usize,
    /// Most jobs waiting.
    pub capacity: usize,
    /// Accepted report times.
    pub window: ReportWindow,
    /// Per-device rate limit.
    pub limit: Arc<DeviceRateLimit>,
}

/// Starts the writer task; it ends when every [`ReportQueue`] clone is dropped and the queue
/// is drained.
pub fn spawn_writer(db: Db, options: WriterOptions, metrics: Arc<Metrics>) -> (ReportQueue, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(options.capacity.max(1));
    let handle = tokio::spawn(run_writer(db, options.batch_max.max(1), rx, metrics));
    (ReportQueue { tx, window: options.window, limit: options.limit }, handle)
}

async fn run_writer(db: Db, batch_max: usize, mut rx: mpsc::Receiver<ReportJob>, metrics: Arc<Metrics>) {
    let mut jobs: Vec<ReportJob> = Vec::new();
    let mut rows: Vec<ReportRow> = Vec::new();
    while let Some(first) = rx.recv().await {
        jobs.push(first);
        let mut count = jobs[0].rows.len();
        while count < batch_max {
            match rx.try_recv() {
                Ok(job) => {
                    count += job.rows.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        for job in jobs.iter_mut() {
            rows.append(&mut job.rows);
        }
        let started = Instant::now();
        let result = db.write_reports(&rows).await;
        metrics.write_latency.observe(started.elapsed().as_secs_f64());
        metrics.batch_size.observe(rows.len() as f64);
        let outcome: Result<(), ApiError> = match result {
            Ok(()) => Ok(()),
            Err(DbError::Unavailable(m)) => Err(ApiError::from(DbError::Unavailable(m))),
            Err(e) => {
                tracing::error!(error = %e, rows = rows.len(), "writing a report batch failed");
                Err(ApiError::Internal(format!("writing reports failed: {e}")))
            }
        };
        for job in jobs.drain(..) {
            // The handler may have gone away (client disconnected); its rows are written anyway.
            let _ = job.done.send(outcome.clone());
        }
        rows.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: ReportWindow = ReportWindow { ahead_ms: 300_000, behind_ms: 7 * 86_400_000 };

    fn at(at_ms: i64) -> StateReport {
        StateReport { at_ms, ..StateReport::default() }
    }

    #[test]
    fn rejects_far_future_report_time_by_clamping_to_arrival() {
        let now = 1_800_000_000_000;
        let mut r = at(2_800_000_000_000); // 2058
        assert!(WINDOW.bound(&mut r, now));
        assert_eq!(r.at_ms, now);
        let mut r = at(i64::MAX);
        assert!(WINDOW.bound(&mut r, now));
        assert_eq!(r.at_ms, now);
    }

    #[test]
    fn report_times_inside_the_window_are_kept() {
        let now = 1_800_000_000_000;
        for t in [now, now + 300_000, now - 7 * 86_400_000] {
            let mut r = at(t);
            assert!(!WINDOW.bound(&mut r, now));
            assert_eq!(r.at_ms, t);
        }
    }

    #[test]
    fn report_times_older_than_retention_are_moved_to_its_edge() {
        let now = 1_800_000_000_000;
        for t in [0, i64::MIN] {
            let mut r = at(t);
            assert!(WINDOW.bound(&mut r, now));
            assert_eq!(r.at_ms, now - 7 * 86_400_000);
        }
    }
}
