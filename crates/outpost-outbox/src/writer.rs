//! The async handle: a dedicated writer thread owns the [`Outbox`] and does group commit.
//!
//! Async callers send commands over a bounded channel and await a oneshot reply, so no tokio
//! thread ever waits on a write or an fsync. The thread takes every command that is waiting,
//! stages all appends into one group, and makes the group durable with one write and one
//! fsync per priority touched; appends that arrive during that fsync form the next group.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use crate::config::{FsyncPolicy, OutboxConfig};
use crate::consumer::ConsumerName;
use crate::error::{OutboxError, Result};
use crate::outbox::{Outbox, OutboxStats};
use crate::record::{Priority, Record, RecordId};
use crate::recovery::RecoveryReport;

/// Commands waiting for the writer before senders wait for room (backpressure).
const QUEUE: usize = 8192;

type Reply<T> = oneshot::Sender<Result<T>>;

enum Command {
    Append {
        priority: Priority,
        payload: Vec<u8>,
        reply: Reply<RecordId>,
    },
    Poll {
        consumer: ConsumerName,
        priority: Option<Priority>,
        max_records: usize,
        max_bytes: usize,
        reply: Reply<Vec<Record>>,
    },
    Ack {
        consumer: ConsumerName,
        ids: Vec<RecordId>,
        reply: Reply<()>,
    },
    Rewind {
        consumer: ConsumerName,
        reply: Reply<()>,
    },
    Pending {
        consumer: ConsumerName,
        reply: Reply<[u64; 3]>,
    },
    AddConsumer {
        consumer: ConsumerName,
        reply: Reply<bool>,
    },
    RemoveConsumer {
        consumer: ConsumerName,
        reply: Reply<bool>,
    },
    Stats {
        reply: Reply<OutboxStats>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// An [`Outbox`] for async code: cheap to clone, every operation runs on the writer thread.
#[derive(Debug, Clone)]
pub struct AsyncOutbox {
    tx: mpsc::Sender<Command>,
    recovery: Arc<RecoveryReport>,
    confirmed: watch::Receiver<u64>,
}

impl AsyncOutbox {
    /// Opens the outbox on a new writer thread (recovery runs there too).
    pub async fn open(dir: impl Into<PathBuf>, config: OutboxConfig) -> Result<AsyncOutbox> {
        let dir = dir.into();
        let (tx, rx) = mpsc::channel(QUEUE);
        let (opened_tx, opened_rx) = oneshot::channel();
        let (confirmed_tx, confirmed) = watch::channel(0u64);
        thread::Builder::new()
            .name("outbox-writer".into())
            .spawn(move || match Outbox::open(&dir, config) {
                Ok(outbox) => {
                    let _ = opened_tx.send(Ok(outbox.recovery().clone()));
                    run(outbox, rx, confirmed_tx);
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                }
            })
            .map_err(|e| OutboxError::io("spawn writer thread", "outbox-writer", e))?;
        let recovery = opened_rx.await.map_err(|_| OutboxError::Closed)??;
        Ok(AsyncOutbox { tx, recovery: Arc::new(recovery), confirmed })
    }

    /// What opening found and repaired.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// A counter of records confirmed since open; `changed()` wakes consumers waiting for more.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.confirmed.clone()
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| OutboxError::Closed)?;
        rx.await.map_err(|_| OutboxError::Closed)?
    }

    /// Appends a record; resolves once it is durable (written, under `Never`).
    pub async fn append(&self, priority: Priority, payload: impl Into<Vec<u8>>) -> Result<RecordId> {
        let payload = payload.into();
        self.call(|reply| Command::Append { priority, payload, reply }).await
    }

    /// See [`Outbox::poll`].
    pub async fn poll(&self, consumer: &ConsumerName, max_records: usize, max_bytes: usize) -> Result<Vec<Record>> {
        let consumer = consumer.clone();
        self.call(|reply| Command::Poll { consumer, priority: None, max_records, max_bytes, reply }).await
    }

    /// See [`Outbox::poll_priority`].
    pub async fn poll_priority(
        &self,
        consumer: &ConsumerName,
        priority: Priority,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>> {
        let consumer = consumer.clone();
        let priority = Some(priority);
        self.call(|reply| Command::Poll { consumer, priority, max_records, max_bytes, reply }).await
    }

    /// See [`Outbox::ack`].
    pub async fn ack(&self, consumer: &ConsumerName, id: RecordId) -> Result<()> {
        self.ack_all(consumer, vec![id]).await
    }

    /// See [`Outbox::ack_all`].
    pub async fn ack_all(&self, consumer: &ConsumerName, ids: Vec<RecordId>) -> Result<()> {
        let consumer = consumer.clone();
        self.call(|reply| Command::Ack { consumer, ids, reply }).await
    }

    /// See [`Outbox::rewind`].
    pub async fn rewind(&self, consumer: &ConsumerName) -> Result<()> {
        let consumer = consumer.clone();
        self.call(|reply| Command::Rewind { consumer, reply }).await
    }

    /// See [`Outbox::pending`].
    pub async fn pending(&self, consumer: &ConsumerName) -> Result<[u64; 3]> {
        let consumer = consumer.clone();
        self.call(|reply| Command::Pending { consumer, reply }).await
    }

    /// See [`Outbox::add_consumer`].
    pub async fn add_consumer(&self, consumer: &ConsumerName) -> Result<bool> {
        let consumer = consumer.clone();
        self.call(|reply| Command::AddConsumer { consumer, reply }).await
    }

    /// See [`Outbox::remove_consumer`].
    pub async fn remove_consumer(&self, consumer: &ConsumerName) -> Result<bool> {
        let consumer = consumer.clone();
        self.call(|reply| Command::RemoveConsumer { consumer, reply }).await
    }

    /// See [`Outbox::stats`].
    pub async fn stats(&self) -> Result<OutboxStats> {
        self.call(|reply| Command::Stats { reply }).await
    }

    /// Finishes the commands already sent, then closes the files and releases the directory
    /// lock; resolves once it is released (other clones then get [`OutboxError::Closed`]).
    pub async fn close(self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Close { reply }).await.map_err(|_| OutboxError::Closed)?;
        rx.await.map_err(|_| OutboxError::Closed)
    }
}

/// An append staged in the current group, waiting for its commit.
struct Waiting {
    id: RecordId,
    /// The log's epoch when staged; if it moved, a failure threw the record away.
    epoch: u64,
    reply: Reply<RecordId>,
}

fn run(mut outbox: Outbox, mut rx: mpsc::Receiver<Command>, confirmed: watch::Sender<u64>) {
    let interval = match outbox.config().fsync {
        FsyncPolicy::GroupCommit { interval_ms } => Duration::from_millis(interval_ms),
        FsyncPolicy::Always | FsyncPolicy::Never => Duration::ZERO,
    };
    let mut last_commit: Option<Instant> = None;
    let mut group: Vec<Waiting> = Vec::new();
    let mut close = None;
    while close.is_none() {
        let Some(first) = rx.blocking_recv() else { break };
        handle(&mut outbox, first, &mut group, &mut close);
        loop {
            while close.is_none() {
                let Ok(cmd) = rx.try_recv() else { break };
                handle(&mut outbox, cmd, &mut group, &mut close);
            }
            if group.is_empty() {
                break;
            }
            // Wait out the interval, then take what arrived meanwhile into the same group.
            if let Some(due) = last_commit.map(|t| t + interval) {
                let now = Instant::now();
                if now < due && close.is_none() {
                    thread::sleep(due - now);
                    continue;
                }
            }
            last_commit = Some(Instant::now());
            commit_group(&mut outbox, &mut group, &confirmed);
            break;
        }
    }
    drop(outbox);
    if let Some(reply) = close {
        let _ = reply.send(());
    }
}

/// Makes the staged group durable and answers every append in it.
fn commit_group(outbox: &mut Outbox, group: &mut Vec<Waiting>, confirmed: &watch::Sender<u64>) {
    let results = outbox.commit_staged();
    let mut ok = 0u64;
    for w in group.drain(..) {
        let p = w.id.priority;
        let r = match &results[p.index()] {
            Err(e) => Err(e.clone()),
            Ok(()) if outbox.epoch(p) != w.epoch => Err(outbox.discarded_by(p)),
            Ok(()) => Ok(w.id),
        };
        ok += u64::from(r.is_ok());
        let _ = w.reply.send(r);
    }
    if ok > 0 {
        confirmed.send_modify(|n| *n += ok);
    }
}

fn handle(outbox: &mut Outbox, cmd: Command, group: &mut Vec<Waiting>, close: &mut Option<oneshot::Sender<()>>) {
    match cmd {
        Command::Append { priority, payload, reply } => match outbox.stage(priority, &payload) {
            Ok(id) => group.push(Waiting { id, epoch: outbox.epoch(priority), reply }),
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        },
        Command::Poll { consumer, priority, max_records, max_bytes, reply } => {
            let polled = match priority {
                Some(p) => outbox.poll_priority(&consumer, p, max_records, max_bytes),
                None => outbox.poll(&consumer, max_records, max_bytes),
            };
            let _ = reply.send(polled);
        }
        Command::Ack { consumer, ids, reply } => {
            let _ = reply.send(outbox.ack_all(&consumer, ids));
        }
        Command::Rewind { consumer, reply } => {
            let _ = reply.send(outbox.rewind(&consumer));
        }
        Command::Pending { consumer, reply } => {
            let _ = reply.send(outbox.pending(&consumer));
        }
        Command::AddConsumer { consumer, reply } => {
            let _ = reply.send(outbox.add_consumer(&consumer));
        }
        Command::RemoveConsumer { consumer, reply } => {
            let _ = reply.send(outbox.remove_consumer(&consumer));
        }
        Command::Stats { reply } => {
            let _ = reply.send(Ok(outbox.stats()));
        }
        Command::Close { reply } => *close = Some(reply),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(outbox: &mut Outbox, group: &mut Vec<Waiting>, payload: &[u8]) -> oneshot::Receiver<Result<RecordId>> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Append { priority: Priority::Normal, payload: payload.to_vec(), reply };
        handle(outbox, cmd, group, &mut None);
        rx
    }

    #[test]
    fn an_append_whose_staged_record_was_thrown_away_is_not_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let config = OutboxConfig { segment_bytes: 100, ..OutboxConfig::default() };
        let mut outbox = Outbox::open(dir.path(), config).unwrap();
        let (confirmed, _) = watch::channel(0);
        let mut group = Vec::new();
        let mut a = append(&mut outbox, &mut group, &[1; 40]);
        // B does not fit the segment: the rotation commits A, and that write fails.
        outbox.fail_next_write(Priority::Normal);
        let mut b = append(&mut outbox, &mut group, &[2; 40]);
        assert!(b.try_recv().unwrap().unwrap_err().is_disk_full());
        // C is staged after the failure and takes A's place (and sequence number).
        let mut c = append(&mut outbox, &mut group, &[3; 10]);
        commit_group(&mut outbox, &mut group, &confirmed);
        assert!(a.try_recv().unwrap().unwrap_err().is_disk_full(), "A's record is gone: no Ok for it");
        assert_eq!(c.try_recv().unwrap().unwrap().seq, 0);
        assert_eq!(*confirmed.borrow(), 1);
    }
}
