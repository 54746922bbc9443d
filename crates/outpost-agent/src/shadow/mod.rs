//! Shadow evaluation: a candidate version runs beside the serving one on a sample of live
//! requests, its answers are compared with the served ones and never returned.
//!
//! The request path pays for a shadow only with a random draw, two atomic operations and, for
//! a sampled request, handing over the request body (reference-counted) and the outputs it
//! already encoded. Everything else runs on the shadow's own thread after the client's answer
//! is computed: decoding the body for the candidate, running it on its own session, comparing
//! ([`compare`]). At most one comparison per model is in flight, and a [`CpuBucket`] keeps the
//! shadow to a configured share of one core; a sampled request that finds the shadow busy or
//! out of allowance is counted as `skipped` rather than waited for. The shadow's threads run at
//! the lowest priority, so where cores are scarce the serving threads go first.
//!
//! The control channel decides which candidate runs (see `control::shadow`); this module only
//! holds them, feeds them and counts.

mod bucket;
pub mod compare;
mod evaluate;

pub use bucket::CpuBucket;
pub use evaluate::{candidate_options, CandidateModel, Sample};

use compare::Agreement;
use outpost_proto::fleet::quality::ShadowReport;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// Puts the calling thread at the lowest scheduling priority (nice 19), so that on a busy
/// device the serving threads get the CPU first; threads it starts inherit it. Linux only (there
/// the nice value is per thread; elsewhere it would slow the whole agent), best effort.
pub fn lowest_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on the calling thread's own id, no memory is passed.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, tid, 19) != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the shadow's priority");
        }
    }
}

/// What runs a candidate on one sampled request and compares it with the served answer.
pub trait Evaluate: Send + 'static {
    /// The comparison, or why the candidate could not answer or be compared.
    fn evaluate(&self, sample: Sample) -> Result<Agreement, String>;
}

/// Where a shadow candidate stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Downloading, verifying or loading.
    Loading,
    /// Loaded and fed sampled requests.
    Ready,
    /// Could not be fetched or loaded; the serving model is untouched.
    Failed(String),
}

/// Counts since the last report.
#[derive(Debug, Clone, Default, PartialEq)]
struct Tally {
    samples: u64,
    agreement: f64,
    score_diff: f64,
    skipped: u64,
    errors: u64,
}

/// What the shadow's worker thread shares with the request path.
#[derive(Debug)]
struct Shared {
    tally: Mutex<Tally>,
    busy: AtomicBool,
    bucket: Mutex<CpuBucket>,
}

impl Shared {
    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One candidate beside one model.
#[derive(Debug)]
pub struct Shadow {
    version: String,
    sample: f64,
    phase: Phase,
    shared: Arc<Shared>,
    /// The worker's queue (one slot: only the request that set `busy` sends); present once ready.
    jobs: Option<SyncSender<Sample>>,
}

/// The shadow candidates of the agent's models, by model name.
#[derive(Debug)]
pub struct Shadows {
    slots: RwLock<HashMap<String, Shadow>>,
    cpu_share: f64,
}

impl Shadows {
    /// No shadows yet; each one may use `cpu_share` (0..1) of one core.
    pub fn new(cpu_share: f64) -> Shadows {
        Shadows { slots: RwLock::new(HashMap::new()), cpu_share }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Shadow>> {
        self.slots.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Shadow>> {
        self.slots.write().unwrap_or_else(|p| p.into_inner())
    }

    /// `version` of `model` is on its way; replaces any other candidate of the model (whose
    /// worker stops once its current run ends). A known version keeps its phase and counts
    /// and only takes the new sample share.
    pub fn loading(&self, model: &str, version: &str, sample: f64) {
        let sample = if sample.is_finite() { sample.clamp(0.0, 1.0) } else { 0.0 };
        let mut slots = self.write();
        if let Some(s) = slots.get_mut(model).filter(|s| s.version == version) {
            s.sample = sample;
            return;
        }
        let shared = Arc::new(Shared {
            tally: Mutex::new(Tally::default()),
            busy: AtomicBool::new(false),
            bucket: Mutex::new(CpuBucket::new(self.cpu_share, Instant::now())),
        });
        let shadow = Shadow { version: version.to_string(), sample, phase: Phase::Loading, shared, jobs: None };
        slots.insert(model.to_string(), shadow);
    }

    /// The candidate `version` of `model` is loaded: starts its worker thread. Returns false
    /// (and drops `evaluator`) when that version is no longer the model's shadow.
    pub fn ready(&self, model: &str, version: &str, evaluator: Box<dyn Evaluate>) -> bool {
        let mut slots = self.write();
        let Some(shadow) = slots.get_mut(model).filter(|s| s.version == version) else { return false };
        let (tx, rx) = sync_channel::<Sample>(1);
        let shared = shadow.shared.clone();
        let spawned = std::thread::Builder::new().name(format!("shadow-{model}")).spawn(move || {
            lowest_priority();
            // Ends when the shadow is dropped (its sender with it); the candidate goes with it.
            while let Ok(sample) = rx.recv() {
                let started = Instant::now();
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| evaluator.evaluate(sample)))
                    .unwrap_or_else(|_| Err("the candidate panicked".into()));
                shared.bucket.lock().unwrap_or_else(|p| p.into_inner()).charge(started.elapsed(), Instant::now());
                let mut tally = shared.tally();
                match outcome {
                    Ok(a) => {
                        tally.samples += 1;
                        tally.agreement += a.agreement;
                        tally.score_diff += a.score_diff;
                    }
                    Err(reason) => {
                        tally.errors += 1;
                        tracing::debug!(%reason, "shadow comparison failed");
                    }
                }
                // Freed under the tally's lock: whoever sees this run counted also finds the
                // shadow idle, and whoever finds it idle sees the run counted.
                shared.busy.store(false, Ordering::Release);
                drop(tally);
            }
        });
        match spawned {
            Ok(_) => {
                shadow.jobs = Some(tx);
                shadow.phase = Phase::Ready;
            }
            Err(e) => shadow.phase = Phase::Failed(format!("cannot start the shadow thread: {e}")),
        }
        true
    }

    /// The candidate `version` of `model` could not be fetched or loaded.
    pub fn failed(&self, model: &str, version: &str, reason: &str) {
        if let Some(shadow) = self.write().get_mut(model).filter(|s| s.version == version) {
            shadow.phase = Phase::Failed(reason.to_string());
            shadow.jobs = None;
        }
    }

    /// The failed candidate `version` of `model` is being fetched or loaded again.
    pub fn restart(&self, model: &str, version: &str) {
        if let Some(shadow) = self.write().get_mut(model).filter(|s| s.version == version) {
            if matches!(shadow.phase, Phase::Failed(_)) {
                shadow.phase = Phase::Loading;
            }
        }
    }

    /// Drops the shadows of models `keep` refuses (given model and candidate version).
    pub fn retain(&self, keep: impl Fn(&str, &str) -> bool) {
        self.write().retain(|model, s| keep(model, &s.version));
    }

    /// The candidate version of `model` and its phase.
    pub fn phase(&self, model: &str) -> Option<(String, Phase)> {
        self.read().get(model).map(|s| (s.version.clone(), s.phase.clone()))
    }

    /// Every shadow with the counts since the previous call, which starts new counts.
    pub fn take_reports(&self) -> HashMap<String, ShadowReport> {
        self.read()
            .iter()
            .map(|(model, s)| {
                let tally = std::mem::take(&mut *s.shared.tally());
                let (state, reason) = match &s.phase {
                    Phase::Loading => ("loading", None),
                    Phase::Ready => ("ready", None),
                    Phase::Failed(why) => ("failed", Some(why.clone())),
                };
                let report = ShadowReport {
                    version: s.version.clone(),
                    state: state.into(),
                    reason,
                    samples: tally.samples,
                    agreement: tally.agreement,
                    score_diff: tally.score_diff,
                    skipped: tally.skipped,
                    errors: tally.errors,
                };
                (model.clone(), report)
            })
            .collect()
    }

    /// Called by a request to `model` once its answer is computed: when the request is drawn
    /// for the shadow and the shadow is idle and within its CPU allowance, hands `sample()` to
    /// the shadow's thread; otherwise returns at once. Never waits and never runs a model.
    pub fn offer(&self, model: &str, sample: impl FnOnce() -> Sample) {
        let slots = self.read();
        let Some(shadow) = slots.get(model) else { return };
        let Some(jobs) = &shadow.jobs else { return };
        if shadow.sample <= 0.0 || rand::random::<f64>() >= shadow.sample {
            return;
        }
        let shared = &shadow.shared;
        if shared.busy.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_err() {
            shared.tally().skipped += 1;
            return;
        }
        if !shared.bucket.lock().unwrap_or_else(|p| p.into_inner()).admit(Instant::now()) {
            shared.busy.store(false, Ordering::Release);
            shared.tally().skipped += 1;
            return;
        }
        if jobs.try_send(sample()).is_err() {
            // The worker is gone (its thread panicked outside the guard): nothing will run.
            shared.busy.store(false, Ordering::Release);
            shared.tally().skipped += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{channel, Receiver, Sender};
    use std::thread::ThreadId;

    /// A candidate that reports the thread it runs on, then waits to be let go.
    struct Gated {
        ran_on: Sender<ThreadId>,
        go: Mutex<Receiver<()>>,
    }

    impl Evaluate for Gated {
        fn evaluate(&self, _: Sample) -> Result<Agreement, String> {
            let _ = self.ran_on.send(std::thread::current().id());
            let _ = self.go.lock().unwrap().recv();
            Ok(Agreement { agreement: 1.0, score_diff: 0.25 })
        }
    }

    fn predict_sample() -> Sample {
        Sample::Predict { body: Default::default(), predictions: vec![] }
    }

    fn gated(shadows: &Shadows) -> (Receiver<ThreadId>, Sender<()>) {
        let (ran_on, ran) = channel();
        let (go, gate) = channel();
        shadows.loading("m", "2", 1.0);
        assert!(shadows.ready("m", "2", Box::new(Gated { ran_on, go: Mutex::new(gate) })));
        (ran, go)
    }

    fn wait_idle(shadows: &Shadows) {
        for _ in 0..500 {
            if !shadows.read()["m"].shared.busy.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the shadow never finished");
    }

    #[test]
    fn the_shadow_runs_on_its_own_thread_and_a_busy_shadow_skips_instead_of_waiting() {
        let shadows = Shadows::new(1.0);
        let (ran, go) = gated(&shadows);
        // The request path returns while the candidate is still running (blocked on the gate).
        shadows.offer("m", predict_sample);
        let worker = ran.recv_timeout(std::time::Duration::from_secs(10)).expect("the shadow ran");
        assert_ne!(worker, std::thread::current().id(), "never on the request's thread");
        for _ in 0..5 {
            shadows.offer("m", || panic!("a busy shadow takes no sample"));
        }
        go.send(()).unwrap();
        wait_idle(&shadows);
        let report = shadows.take_reports().remove("m").unwrap();
        assert_eq!((report.state.as_str(), report.samples, report.skipped, report.errors), ("ready", 1, 5, 0));
        assert_eq!((report.agreement, report.score_diff), (1.0, 0.25));
        let again = shadows.take_reports().remove("m").unwrap();
        assert_eq!((again.samples, again.skipped), (0, 0), "counts are deltas since the previous report");
    }

    #[test]
    fn a_shadow_without_cpu_allowance_or_sample_share_skips_or_ignores_requests() {
        let shadows = Shadows::new(0.0);
        let (_ran, _go) = gated(&shadows);
        shadows.offer("m", || panic!("no allowance: nothing is handed over"));
        assert_eq!(shadows.take_reports()["m"].skipped, 1);
        shadows.loading("m", "2", 0.0);
        shadows.offer("m", || panic!("sample 0: never drawn"));
        assert_eq!(shadows.take_reports()["m"].skipped, 0, "a request not drawn is not skipped");
    }

    #[test]
    fn failures_are_counted_and_a_replaced_candidate_is_dropped() {
        struct Failing;
        impl Evaluate for Failing {
            fn evaluate(&self, _: Sample) -> Result<Agreement, String> {
                Err("shape mismatch".into())
            }
        }
        let shadows = Shadows::new(1.0);
        shadows.loading("m", "2", 1.0);
        assert_eq!(shadows.phase("m"), Some(("2".into(), Phase::Loading)));
        assert!(!shadows.ready("m", "3", Box::new(Failing)), "not the wanted version");
        assert!(shadows.ready("m", "2", Box::new(Failing)));
        shadows.offer("m", predict_sample);
        wait_idle(&shadows);
        let report = shadows.take_reports().remove("m").unwrap();
        assert_eq!((report.samples, report.errors), (0, 1));
        shadows.failed("m", "2", "self-test");
        assert_eq!(shadows.take_reports()["m"].reason.as_deref(), Some("self-test"));
        shadows.retain(|_, v| v != "2");
        assert!(shadows.take_reports().is_empty());
    }
}
