//! Live traffic for the update steps of `outpost demo`: one client per real agent sends normal
//! sensor windows to `POST /v1/models/{m}/predict` while versions change under it, and counts
//! every request that fails. There must be none. (Normal ones only: step 10 shows what drifting
//! data does to the drift windows, and this traffic must not drift before it.)

use outpost_train::{CHANNELS, WINDOW};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Clients running against the agents.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    first_error: Arc<Mutex<Option<String>>>,
    clients: Vec<JoinHandle<()>>,
}

impl Traffic {
    /// Starts one client per agent base URL, each sending about 50 requests a second.
    pub fn start(agents: &[String], model: &str) -> Traffic {
        let bodies: Vec<Vec<u8>> = outpost_train::demo_windows(11)
            .into_iter()
            .filter(|(condition, _, _)| *condition == outpost_train::Condition::Normal)
            .map(|(_, _, window)| {
                let channels: Vec<&[f32]> = window.chunks(WINDOW).take(CHANNELS).collect();
                serde_json::to_vec(&serde_json::json!({ "channels": channels })).unwrap_or_default()
            })
            .collect();
        let bodies = Arc::new(bodies);
        let (stop, sent, failed) =
            (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let first_error = Arc::new(Mutex::new(None));
        let clients = agents
            .iter()
            .map(|base| {
                let url = format!("{base}/v1/models/{model}/predict");
                let (stop, sent, failed, bodies) = (stop.clone(), sent.clone(), failed.clone(), bodies.clone());
                let first_error = first_error.clone();
                std::thread::spawn(move || {
                    for body in bodies.iter().cycle() {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let outcome = ureq::post(&url).header("content-type", "application/json").send(&body[..]);
                        sent.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = outcome {
                            failed.fetch_add(1, Ordering::Relaxed);
                            let mut first = first_error.lock().unwrap_or_else(|p| p.into_inner());
                            first.get_or_insert_with(|| format!("{url}: {e}"));
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                })
            })
            .collect();
        Traffic { stop, sent, failed, first_error, clients }
    }

    /// Stops the clients: requests sent, requests failed, and the first failure.
    pub fn stop(self) -> (usize, usize, Option<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients {
            let _ = c.join();
        }
        let first = self.first_error.lock().unwrap_or_else(|p| p.into_inner()).take();
        (self.sent.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed), first)
    }
}
