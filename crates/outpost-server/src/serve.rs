//! The HTTP connection loop, and the request-size limits that every request meets first.
//!
//! Why not `axum::serve`: hyper answers requests that break its parser limits (a URI over
//! 64 KiB, more than 100 headers) with an empty-bodied 414 or 431 before any handler runs, and
//! `axum::serve` cannot change those limits. Here hyper's limits are set well above ours, so
//! [`limits`] sees such requests and answers with the usual JSON error body; only requests past
//! hyper's hard limits (a 64 KiB URI, [`HYPER_MAX_HEADERS`] headers, [`HYPER_MAX_BUF`] of head)
//! still get hyper's bare answer.

use crate::error::ApiError;
use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;

/// Longest accepted path and query, bytes (414 beyond).
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most accepted request headers (431 beyond).
pub const MAX_HEADERS: usize = 64;
/// Largest accepted total of header names and values, bytes (431 beyond).
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// hyper's own header-count limit, kept above [`MAX_HEADERS`] so that ours answers first.
pub const HYPER_MAX_HEADERS: usize = 512;
/// hyper's read buffer limit (the request head must fit), above [`MAX_HEADER_BYTES`] + URI.
pub const HYPER_MAX_BUF: usize = 256 * 1024;
/// A client must send its request head within this time (slow-loris guard).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `app` on `listener` until `shutdown` resolves, then waits for open requests to end.
pub async fn run(listener: TcpListener, app: Router, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .max_headers(HYPER_MAX_HEADERS)
        .max_buf_size(HYPER_MAX_BUF)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors or a connection reset before accept: wait a moment
                    // instead of spinning, the listener itself is still good.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Refuses requests whose URI or headers are too large, or whose body is compressed (the API
/// takes plain JSON only), with a JSON error body.
pub async fn limits(req: Request, next: Next) -> Response {
    let uri_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > MAX_URI_BYTES {
        return ApiError::UriTooLong(format!("the path and query are {uri_len} bytes; the limit is {MAX_URI_BYTES}"))
            .into_response();
    }
    let headers = req.headers();
    let header_bytes: usize = headers.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    if headers.len() > MAX_HEADERS || header_bytes > MAX_HEADER_BYTES {
        return ApiError::HeadersTooLarge(format!(
            "{} headers of {header_bytes} bytes; the limits are {MAX_HEADERS} headers and {MAX_HEADER_BYTES} bytes",
            headers.len()
        ))
        .into_response();
    }
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING) {
        // The one exception: a device's export batch, inflated by its handler only after the
        // signature checked out, and only up to a bound (`routes::results`).
        let zstd_results = req.uri().path() == "/v1/device/results" && encoding.as_bytes() == b"zstd";
        if !encoding.as_bytes().eq_ignore_ascii_case(b"identity") && !zstd_results {
            return ApiError::UnsupportedEncoding(
                "request bodies must not be compressed (Content-Encoding); send plain JSON".into(),
            )
            .into_response();
        }
    }
    next.run(req).await
}
