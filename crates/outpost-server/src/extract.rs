//! Request extractors that fail with our JSON [`ApiError`] instead of axum's plain-text
//! rejections, so every 4xx a client sees has the same `{code, message}` shape.

use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

/// Reads the whole body, honouring the router's body limit (413 beyond it).
pub async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge("the request body is larger than the server's max_body_bytes; send less".into())
        } else {
            ApiError::InvalidRequest(format!("could not read the request body: {}", rejection.body_text()))
        }
    })
}

/// True when the JSON text holds a `\u0000` escape (an unescaped backslash before it): a NUL
/// character, which PostgreSQL text cannot store and no label, name or id needs.
pub fn has_nul_escape(bytes: &[u8]) -> bool {
    bytes.windows(6).enumerate().any(|(i, w)| {
        w[0] == b'\\'
            && w[1] == b'u'
            && w[2..].iter().all(|&b| b == b'0')
            && bytes[..i].iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 0
    })
}

fn reject_nul_in_uri(parts: &Parts) -> Result<(), ApiError> {
    if parts.uri.path_and_query().is_some_and(|pq| pq.as_str().contains("%00")) {
        return Err(ApiError::InvalidRequest("the path or query contains a NUL character (%00)".into()));
    }
    Ok(())
}

/// Parses JSON bytes into `T`, naming the problem when it does not fit.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if has_nul_escape(bytes) {
        return Err(ApiError::InvalidRequest("the body contains a NUL character (\\u0000) in a string".into()));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::InvalidRequest(format!("the body is not the expected JSON: {e}; see /openapi.json")))
}

/// A JSON body; the `Content-Type` header is not required (agents behind odd proxies lose it).
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Query-string parameters.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        reject_nul_in_uri(parts)?;
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| ApiError::InvalidRequest(format!("bad query string: {}", e.body_text())))
    }
}

/// Path parameters.
#[derive(Debug, Clone)]
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        reject_nul_in_uri(parts)?;
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| ApiPath(p))
            .map_err(|e| ApiError::InvalidRequest(format!("bad path parameter: {}", e.body_text())))
    }
}

#[cfg(test)]
mod tests {
    use super::has_nul_escape;

    #[test]
    fn nul_escapes_are_found_but_escaped_backslashes_are_not_mistaken_for_them() {
        assert!(has_nul_escape(br#"{"model": "a\u0000b"}"#));
        assert!(has_nul_escape(br#"{"model": "\\\u0000"}"#));
        assert!(!has_nul_escape(br#"{"model": "\\u0000"}"#));
        assert!(!has_nul_escape(br#"{"model": "\u0001"}"#));
    }
}
