//! Request bodies under two limits: `max_body_bytes` per request and `max_inflight_body_bytes`
//! across every request in flight.
//!
//! A per-request limit alone lets N parallel uploads cost N times the limit: 32 gzip bombs of
//! 1 MB each, inflating towards 64 MiB, took the agent past 1 GB. So bodies are read here, before
//! any handler, as the decompression layer streams them (a few KiB of inflated data at a time),
//! into one buffer whose capacity is charged to a budget shared by all requests. A body is refused
//! with 413 the moment it passes its own limit and with 503 (and `Retry-After`) the moment it does
//! not fit in what the budget has left, so nothing is ever buffered beyond either. The charge is
//! released when the last reference to the body is dropped (the buffer carries it), so work that
//! outlives its response, such as a pipeline still running after its client went away, stays
//! counted.
//!
//! glibc keeps freed memory in its arenas; after a burst of large bodies the agent asks it to
//! give the memory back (`malloc_trim`), so RSS returns to its idle level instead of staying at the
//! burst's peak.

use super::{ApiError, ApiState};
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// First buffer size when the body's length is unknown (a compressed or chunked body).
const FIRST_CHUNK: usize = 16 << 10;
/// After a burst that held at least this much, freed memory is handed back to the kernel.
const TRIM_AFTER_BYTES: usize = 4 << 20;

/// Bytes of request bodies held at once, across all requests.
#[derive(Debug)]
pub struct BodyBudget {
    capacity: usize,
    used: AtomicUsize,
    /// Most bytes held since the budget was last empty, to decide whether to trim.
    burst: AtomicUsize,
    peak: AtomicUsize,
}

impl BodyBudget {
    /// A budget of `capacity` bytes.
    pub fn new(capacity: usize) -> Arc<BodyBudget> {
        Arc::new(BodyBudget {
            capacity,
            used: AtomicUsize::new(0),
            burst: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        })
    }

    /// The budget's size in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes held by bodies now.
    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Most bytes ever held at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Acquire)
    }

    /// Takes `n` bytes if they fit.
    fn charge(&self, n: usize) -> bool {
        let taken = self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            used.checked_add(n).filter(|total| *total <= self.capacity)
        });
        match taken {
            Ok(before) => {
                self.burst.fetch_max(before + n, Ordering::AcqRel);
                self.peak.fetch_max(before + n, Ordering::AcqRel);
                true
            }
            Err(_) => false,
        }
    }

    fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        if self.used.fetch_sub(n, Ordering::AcqRel) == n && self.burst.swap(0, Ordering::AcqRel) >= TRIM_AFTER_BYTES {
            give_memory_back();
        }
    }
}

/// Returns free heap memory to the kernel after a burst (glibc only; other allocators return
/// large blocks on free). It walks the arenas, so it runs off the async threads.
fn give_memory_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let trim = || {
            // SAFETY: malloc_trim only releases free pages of the allocator's own arenas.
            unsafe { libc::malloc_trim(0) };
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(handle.spawn_blocking(trim)),
            Err(_) => trim(),
        }
    }
}

/// Bytes charged to a budget until dropped.
#[derive(Debug)]
struct Charge {
    budget: Arc<BodyBudget>,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

/// A body's bytes with their charge, so the budget is released with the memory.
struct ChargedBuffer {
    data: Vec<u8>,
    _charge: Charge,
}

impl AsRef<[u8]> for ChargedBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// Why a body was not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyRefusal {
    /// Longer than the per-request limit.
    TooLarge,
    /// Does not fit in what the budget has left.
    OverBudget,
    /// The stream broke (bad gzip, client gone).
    Unreadable(String),
}

/// Reads `body` into one buffer of at most `max` bytes, charging its capacity to `budget`.
pub async fn read_body(mut body: Body, budget: &Arc<BodyBudget>, max: usize) -> Result<Bytes, BodyRefusal> {
    if let Some(exact) = body.size_hint().exact() {
        let exact = usize::try_from(exact).unwrap_or(usize::MAX);
        if exact > max {
            return Err(BodyRefusal::TooLarge);
        }
        if exact == 0 {
            return Ok(Bytes::new());
        }
    }
    let mut charge = Charge { budget: budget.clone(), bytes: 0 };
    let mut data: Vec<u8> = Vec::new();
    // A length the sender announced sizes the buffer once; it was checked against `max` above.
    let announced = body.size_hint().exact().and_then(|n| usize::try_from(n).ok());
    while let Some(frame) = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|e| BodyRefusal::Unreadable(e.to_string()))?;
        let Ok(chunk) = frame.into_data() else { continue };
        let needed = data.len().checked_add(chunk.len()).filter(|n| *n <= max).ok_or(BodyRefusal::TooLarge)?;
        if needed > data.capacity() {
            let grown = match announced {
                Some(n) if n >= needed => n,
                _ => needed.max(data.capacity() * 2).max(FIRST_CHUNK).min(max),
            };
            let extra = grown - data.capacity();
            if !budget.charge(extra) {
                return Err(BodyRefusal::OverBudget);
            }
            charge.bytes += extra;
            data.reserve_exact(grown - data.len());
        }
        data.extend_from_slice(&chunk);
    }
    if data.is_empty() {
        return Ok(Bytes::new());
    }
    Ok(Bytes::from_owner(ChargedBuffer { data, _charge: charge }))
}

/// Middleware: reads every request body under the limits before the handler runs, so handlers
/// get a complete body that the budget accounts for.
pub async fn limit_bodies(State(state): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    match read_body(body, &state.bodies, state.max_body_bytes).await {
        Ok(bytes) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
        Err(refusal) => refusal_error(refusal, &state).into_response(),
    }
}

fn refusal_error(refusal: BodyRefusal, state: &ApiState) -> ApiError {
    match refusal {
        BodyRefusal::TooLarge => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds the configured limit (max_body_bytes = {})", state.max_body_bytes),
        ),
        BodyRefusal::OverBudget => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the agent is holding its limit of request bodies in flight (max_inflight_body_bytes = {}); retry shortly",
                state.bodies.capacity()
            ),
        ),
        BodyRefusal::Unreadable(e) => ApiError::bad_request(format!("cannot read request body: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    #[test]
    fn a_body_holds_its_charge_until_its_last_reference_drops() {
        let budget = BodyBudget::new(1 << 20);
        let bytes = block_on(read_body(Body::from(vec![7u8; 1000]), &budget, 4096)).unwrap();
        assert_eq!(bytes.len(), 1000);
        assert!(budget.in_use() >= 1000);
        let part = bytes.slice(10..20);
        drop(bytes);
        assert!(budget.in_use() >= 1000, "a slice still holds the buffer");
        drop(part);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn bodies_beyond_the_limit_or_the_budget_are_refused_and_release_what_they_took() {
        let budget = BodyBudget::new(64 << 10);
        let too_large = block_on(read_body(Body::from(vec![0u8; 5000]), &budget, 4096));
        assert_eq!(too_large, Err(BodyRefusal::TooLarge));
        let held = block_on(read_body(Body::from(vec![1u8; 40 << 10]), &budget, 1 << 20)).unwrap();
        let over = block_on(read_body(Body::from(vec![2u8; 40 << 10]), &budget, 1 << 20));
        assert_eq!(over, Err(BodyRefusal::OverBudget));
        drop(held);
        assert_eq!(budget.in_use(), 0);
        assert!(budget.peak() <= budget.capacity());
    }
}
