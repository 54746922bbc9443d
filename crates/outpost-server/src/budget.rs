//! Request bodies under a byte budget shared by every request in flight.
//!
//! `max_body_bytes` bounds one body; without a bound across requests, N parallel uploads hold N
//! times that. Bodies are read here, before routing, into one buffer whose capacity is charged to
//! a budget of [`BODIES_IN_FLIGHT`] maximum-size bodies (64 MiB with the default 1 MiB limit). A
//! body is refused with 413 the moment it passes its own limit, and with 503 (`overloaded`, with
//! `Retry-After`) the moment it does not fit in what the budget has left; nothing is buffered
//! beyond either. The charge is released when the last reference to the body is dropped.
//!
//! The server accepts no `Content-Encoding`: devices and operators send small JSON, and a gzip
//! body would only let a client make the server inflate what it did not pay to send. The one
//! exception is a device's export batch (`POST /v1/device/results`, zstd), which its handler
//! inflates after the device's signature checked out, up to 8 MiB. The agent,
//! which `tritonclient` may send gzip to, keeps its own copy of this reader with decompression
//! in front (`outpost-agent/src/http/budget.rs`).

use crate::error::ApiError;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// How many maximum-size bodies the server holds at once.
pub const BODIES_IN_FLIGHT: usize = 64;
/// First buffer size when the body's length is unknown (a chunked body).
const FIRST_CHUNK: usize = 16 << 10;

/// The per-request limit and the bytes of bodies held across requests.
#[derive(Debug)]
pub struct BodyBudget {
    max_body: usize,
    capacity: usize,
    used: AtomicUsize,
    peak: AtomicUsize,
}

impl BodyBudget {
    /// Room for [`BODIES_IN_FLIGHT`] bodies of `max_body` bytes.
    pub fn for_bodies_of(max_body: usize) -> Arc<BodyBudget> {
        BodyBudget::new(max_body, max_body.saturating_mul(BODIES_IN_FLIGHT))
    }

    /// Bodies of at most `max_body` bytes, `capacity` bytes of them at once.
    pub fn new(max_body: usize, capacity: usize) -> Arc<BodyBudget> {
        Arc::new(BodyBudget { max_body, capacity, used: AtomicUsize::new(0), peak: AtomicUsize::new(0) })
    }

    /// Bytes held by bodies now.
    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Most bytes ever held at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Acquire)
    }

    fn charge(&self, n: usize) -> bool {
        let taken = self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            used.checked_add(n).filter(|total| *total <= self.capacity)
        });
        match taken {
            Ok(before) => {
                self.peak.fetch_max(before + n, Ordering::AcqRel);
                true
            }
            Err(_) => false,
        }
    }

    /// Reads `body` into one buffer, charging its capacity until the returned bytes are dropped.
    pub async fn read(self: &Arc<Self>, mut body: Body) -> Result<Bytes, ApiError> {
        let too_large =
            || ApiError::PayloadTooLarge(format!("the request body is larger than max_body_bytes ({})", self.max_body));
        let announced = body.size_hint().exact().map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        if announced.is_some_and(|n| n > self.max_body) {
            return Err(too_large());
        }
        let mut charge = Charge { budget: self.clone(), bytes: 0 };
        let mut data: Vec<u8> = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await {
            let frame = frame.map_err(|e| ApiError::InvalidRequest(format!("could not read the request body: {e}")))?;
            let Ok(chunk) = frame.into_data() else { continue };
            let needed = data.len().checked_add(chunk.len()).filter(|n| *n <= self.max_body).ok_or_else(too_large)?;
            if needed > data.capacity() {
                let grown = match announced {
                    Some(n) if n >= needed => n,
                    _ => needed.max(data.capacity() * 2).max(FIRST_CHUNK).min(self.max_body),
                };
                let extra = grown - data.capacity();
                if !self.charge(extra) {
                    return Err(ApiError::Overloaded(
                        "the server is holding its limit of request bodies in flight; retry shortly".into(),
                    ));
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
}

/// Bytes charged to a budget until dropped.
#[derive(Debug)]
struct Charge {
    budget: Arc<BodyBudget>,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
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

/// Middleware: reads every request body under the budget before routing; handlers then see a
/// complete body of known size.
pub async fn limit_bodies(State(budget): State<Arc<BodyBudget>>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    match budget.read(body).await {
        Ok(bytes) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(budget: &Arc<BodyBudget>, len: usize) -> Result<Bytes, ApiError> {
        let body = Body::from(vec![7u8; len]);
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(budget.read(body))
    }

    #[test]
    fn parallel_bodies_beyond_the_budget_get_503_and_release_their_bytes() {
        let budget = BodyBudget::new(64 << 10, 100 << 10);
        let first = read(&budget, 60 << 10).unwrap();
        assert!(matches!(read(&budget, 60 << 10), Err(ApiError::Overloaded(_))));
        assert!(matches!(read(&budget, 65 << 10), Err(ApiError::PayloadTooLarge(_))));
        let slice = first.slice(1..2);
        drop(first);
        assert!(budget.in_use() >= 60 << 10, "a slice still holds the buffer");
        drop(slice);
        assert_eq!(budget.in_use(), 0);
        assert!(read(&budget, 60 << 10).is_ok());
        assert!(budget.peak() <= 100 << 10);
    }
}
