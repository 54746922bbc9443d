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

/// Parses a device's JSON object body into `T` (an object, as [`parse_object`]), refusing NUL characters
/// anywhere in it first: device bodies are written in batches with other devices' reports, and
/// one NUL that PostgreSQL refuses would fail the whole batch.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if has_nul_escape(bytes) {
        return Err(ApiError::InvalidRequest("the body contains a NUL character (\\u0000) in a string".into()));
    }
    check_object(bytes)?;
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::InvalidRequest(format!("the body is not the expected JSON: {e}; see /openapi.json")))
}

/// Parses a JSON object body into `T`, naming the problem when it does not fit. Every request
/// body of the API is an object; serde would also build a struct from an array of its fields in
/// order (so `[]` would read as an empty override), hence the explicit check. Operator bodies
/// may carry NUL in free-form JSON (metadata, arguments), which is stored escaped; a NUL in a
/// plain text field is refused by the database as a 400.
pub fn parse_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    check_object(bytes)?;
    // JSON Schema's `integer` includes `3.0`; serde's integers do not. Operator bodies are
    // small, so they go through a Value where integral floats become integers.
    let mut value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::InvalidRequest(format!("the body is not valid JSON: {e}")))?;
    integral_floats_to_integers(&mut value);
    serde_json::from_value(value)
        .map_err(|e| ApiError::InvalidRequest(format!("the body is not the expected JSON: {e}; see /openapi.json")))
}

fn integral_floats_to_integers(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            // 2^63 and above do not fit an i64; u64 beyond that is not needed by any field.
            if f.fract() == 0.0 && f.abs() < 9.2e18 {
                *value = Value::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_to_integers),
        Value::Object(map) => map.values_mut().for_each(integral_floats_to_integers),
        _ => {}
    }
}

fn check_object(bytes: &[u8]) -> Result<(), ApiError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        Some(_) => {
            return Err(ApiError::InvalidRequest("the body must be a JSON object; see /openapi.json".into()));
        }
        None => return Err(ApiError::InvalidRequest("the body is empty; send a JSON object".into())),
    }
    Ok(())
}

/// A JSON body; the `Content-Type` header is not required (agents behind odd proxies lose it).
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        parse_object(&bytes).map(ApiJson)
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
