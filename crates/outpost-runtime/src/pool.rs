//! A fixed set of sessions per model, each on its own OS thread, fed by a bounded queue.
//!
//! Inference is CPU-bound and must not run on async executor threads. A bounded queue gives
//! explicit backpressure: when it is full, `submit` fails at once with
//! [`RuntimeError::QueueFull`] and the API answers 429, instead of letting latency grow without
//! bound. Dropping the pool closes the queue; workers finish what is queued and exit, which is
//! what lets a model be swapped while in-flight requests complete on the old version.

use crate::backend::{Engine, Session};
use crate::{RuntimeError, Tensor};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Outcome of one queued inference.
#[derive(Debug)]
pub struct Completed {
    /// Outputs, in graph order, or the failure.
    pub result: Result<Vec<Tensor>, RuntimeError>,
    /// Time spent waiting in the queue.
    pub queued: Duration,
    /// Time spent running the model.
    pub run: Duration,
}

/// Callback receiving the outcome; called on a worker thread.
pub type Reply = Box<dyn FnOnce(Completed) + Send>;

struct Job {
    inputs: Vec<Tensor>,
    enqueued: Instant,
    reply: Reply,
}

/// Sessions of one model behind a bounded queue.
pub struct SessionPool {
    tx: SyncSender<Job>,
    capacity: usize,
    depth: Arc<AtomicUsize>,
    name: String,
}

impl std::fmt::Debug for SessionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionPool").field("name", &self.name).field("capacity", &self.capacity).finish()
    }
}

impl SessionPool {
    /// Starts `sessions` worker threads for `engine` with a queue of `capacity` waiting jobs.
    pub fn new(
        name: &str,
        engine: Arc<dyn Engine>,
        sessions: usize,
        capacity: usize,
    ) -> Result<SessionPool, RuntimeError> {
        let (tx, rx) = sync_channel::<Job>(capacity);
        let rx = Arc::new(Mutex::new(rx));
        let depth = Arc::new(AtomicUsize::new(0));
        for i in 0..sessions.max(1) {
            let session = engine.session()?;
            let (rx, depth, engine, owner) = (rx.clone(), depth.clone(), engine.clone(), name.to_string());
            std::thread::Builder::new()
                .name(format!("infer-{name}-{i}"))
                .spawn(move || worker(session, engine, rx, depth, owner))
                .map_err(|e| RuntimeError::Inference {
                    model: name.to_string(),
                    reason: format!("cannot start a worker thread: {e}"),
                })?;
        }
        Ok(SessionPool { tx, capacity, depth, name: name.to_string() })
    }

    /// Queues one inference; fails at once when the queue is full.
    pub fn submit(&self, inputs: Vec<Tensor>, reply: Reply) -> Result<(), RuntimeError> {
        let job = Job { inputs, enqueued: Instant::now(), reply };
        self.depth.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.depth.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    TrySendError::Full(_) => {
                        RuntimeError::QueueFull { model: self.name.clone(), capacity: self.capacity }
                    }
                    TrySendError::Disconnected(_) => RuntimeError::ShuttingDown { model: self.name.clone() },
                })
            }
        }
    }

    /// Runs one inference and waits for it.
    pub fn run_blocking(&self, inputs: Vec<Tensor>) -> Result<Completed, RuntimeError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.submit(inputs, Box::new(move |c| drop(tx.send(c))))?;
        rx.recv().map_err(|_| RuntimeError::ShuttingDown { model: self.name.clone() })
    }

    /// Jobs waiting or running right now.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }

    /// Queue capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

fn worker(
    mut session: Box<dyn Session>,
    engine: Arc<dyn Engine>,
    rx: Arc<Mutex<Receiver<Job>>>,
    depth: Arc<AtomicUsize>,
    name: String,
) {
    loop {
        // The lock is held only while waiting for the next job, never while running one.
        let job = match rx.lock() {
            Ok(guard) => guard.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let queued = job.enqueued.elapsed();
        let started = Instant::now();
        let result = match catch_unwind(AssertUnwindSafe(|| session.run(job.inputs))) {
            Ok(r) => r,
            Err(panic) => {
                let what = crate::error::panic_message(panic.as_ref());
                tracing::error!(model = %name, %what, "inference panicked; replacing the session");
                if let Ok(fresh) = engine.session() {
                    session = fresh;
                }
                Err(RuntimeError::Inference { model: name.clone(), reason: format!("backend panicked: {what}") })
            }
        };
        let run = started.elapsed();
        depth.fetch_sub(1, Ordering::SeqCst);
        (job.reply)(Completed { result, queued, run });
    }
}
