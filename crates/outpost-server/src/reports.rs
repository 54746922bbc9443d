//! Group commit for state reports, the server's hot path.
//!
//! Each heartbeat handler hands its rows to one writer task and waits for a reply. The writer
//! takes everything that queued up (up to `report_batch_max` rows) and writes it in one
//! transaction, then answers every waiting handler. There is no timer: while one batch is being
//! written the next one accumulates, so batches grow with load and a lone heartbeat is written
//! at once. A handler answers only after its rows are durable, so an acknowledged report is
//! never lost; a full queue is answered with 503 so devices back off instead of piling up.

use crate::db::{Db, DbError, ReportRow};
use crate::error::ApiError;
use crate::metrics::Metrics;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// One handler's rows and where to send the outcome.
struct ReportJob {
    rows: Vec<ReportRow>,
    done: oneshot::Sender<Result<(), ApiError>>,
}

/// The handlers' side of the writer: cheap to clone.
#[derive(Clone)]
pub struct ReportQueue {
    tx: mpsc::Sender<ReportJob>,
}

impl ReportQueue {
    /// Queues rows and waits until they are written (or the write failed).
    pub async fn submit(&self, rows: Vec<ReportRow>) -> Result<(), ApiError> {
        if rows.is_empty() {
            return Ok(());
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
}

/// Starts the writer task; it ends when every [`ReportQueue`] clone is dropped and the queue
/// is drained.
pub fn spawn_writer(db: Db, batch_max: usize, capacity: usize, metrics: Arc<Metrics>) -> (ReportQueue, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let handle = tokio::spawn(run_writer(db, batch_max.max(1), rx, metrics));
    (ReportQueue { tx }, handle)
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
