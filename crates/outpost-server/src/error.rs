//! API errors: every failure a handler can produce, each with a stable machine code, an HTTP
//! status and a message that says what to do next. Clients branch on `code`, never on text.

use crate::db::DbError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use outpost_proto::fleet::api::ErrorBody;

/// Seconds a client should wait before retrying a 503.
pub const RETRY_AFTER_S: u32 = 5;

/// A failed API request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed.
    #[error("{0}")]
    InvalidRequest(String),
    /// 400: the client speaks a protocol version this server does not.
    #[error("{0}")]
    UnsupportedProtocol(String),
    /// 401: no or bad operator credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// 401: the device header names no enrolled device.
    #[error("{0}")]
    UnknownDevice(String),
    /// 401: signature headers missing, malformed or not verifying.
    #[error("{0}")]
    BadSignature(String),
    /// 401: the signing timestamp is outside the clock-skew window.
    #[error("{0}")]
    StaleRequest(String),
    /// 401: no such enrollment token.
    #[error("{0}")]
    InvalidEnrollmentToken(String),
    /// 401: the enrollment token expired.
    #[error("{0}")]
    EnrollmentTokenExpired(String),
    /// 403: authenticated, but the role is too low.
    #[error("{0}")]
    Forbidden(String),
    /// 403: the device was revoked.
    #[error("{0}")]
    DeviceRevoked(String),
    /// 403: the enrollment token was revoked.
    #[error("{0}")]
    EnrollmentTokenRevoked(String),
    /// 404: no such object.
    #[error("{0}")]
    NotFound(String),
    /// 409: the object already exists or the change conflicts.
    #[error("{0}")]
    Conflict(String),
    /// 409: this (device, nonce) was already used.
    #[error("{0}")]
    ReplayedRequest(String),
    /// 409: the enrollment token has no uses left.
    #[error("{0}")]
    EnrollmentTokenUsedUp(String),
    /// 409: the command was already acknowledged.
    #[error("{0}")]
    AlreadyAcked(String),
    /// 409: the change would revoke the last active admin token.
    #[error("{0}")]
    LastAdmin(String),
    /// 413: the body is larger than `max_body_bytes`.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 414: the path and query are longer than the server accepts.
    #[error("{0}")]
    UriTooLong(String),
    /// 415: the body is compressed or of a kind the route does not take.
    #[error("{0}")]
    UnsupportedEncoding(String),
    /// 431: too many or too large request headers.
    #[error("{0}")]
    HeadersTooLarge(String),
    /// 429: the device sent more reports than its rate limit allows; retry after the seconds given.
    #[error("{0}")]
    RateLimited(String, u64),
    /// 503: the database cannot be reached.
    #[error("{0}")]
    DatabaseUnavailable(String),
    /// 503: an operator query ran past `operator_query_timeout_ms` and was stopped.
    #[error("{0}")]
    QueryTimeout(String),
    /// 503: the server is saturated (report queue full, replay cache full).
    #[error("{0}")]
    Overloaded(String),
    /// 422: an uploaded model package does not verify (not a tar, bad manifest, hash mismatch).
    #[error("{0}")]
    InvalidPackage(String),
    /// 507: the server has no room to store an upload.
    #[error("{0}")]
    InsufficientStorage(String),
    /// 503: the artifact store (directory or bucket) cannot be reached.
    #[error("{0}")]
    ArtifactStoreUnavailable(String),
    /// 500: a bug or an unexpected storage failure (logged).
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            InvalidRequest(_) | UnsupportedProtocol(_) => StatusCode::BAD_REQUEST,
            Unauthorized(_)
            | UnknownDevice(_)
            | BadSignature(_)
            | StaleRequest(_)
            | InvalidEnrollmentToken(_)
            | EnrollmentTokenExpired(_) => StatusCode::UNAUTHORIZED,
            Forbidden(_) | DeviceRevoked(_) | EnrollmentTokenRevoked(_) => StatusCode::FORBIDDEN,
            NotFound(_) => StatusCode::NOT_FOUND,
            Conflict(_) | ReplayedRequest(_) | EnrollmentTokenUsedUp(_) | AlreadyAcked(_) | LastAdmin(_) => {
                StatusCode::CONFLICT
            }
            PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            UriTooLong(_) => StatusCode::URI_TOO_LONG,
            UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            RateLimited(..) => StatusCode::TOO_MANY_REQUESTS,
            InvalidPackage(_) => StatusCode::UNPROCESSABLE_ENTITY,
            InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            DatabaseUnavailable(_) | QueryTimeout(_) | Overloaded(_) | ArtifactStoreUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine code.
    pub fn code(&self) -> &'static str {
        use ApiError::*;
        match self {
            InvalidRequest(_) => "invalid_request",
            UnsupportedProtocol(_) => "unsupported_protocol",
            Unauthorized(_) => "unauthorized",
            UnknownDevice(_) => "unknown_device",
            BadSignature(_) => "bad_signature",
            StaleRequest(_) => "stale_request",
            InvalidEnrollmentToken(_) => "invalid_enrollment_token",
            EnrollmentTokenExpired(_) => "enrollment_token_expired",
            Forbidden(_) => "forbidden",
            DeviceRevoked(_) => "device_revoked",
            EnrollmentTokenRevoked(_) => "enrollment_token_revoked",
            NotFound(_) => "not_found",
            Conflict(_) => "conflict",
            ReplayedRequest(_) => "replayed_request",
            EnrollmentTokenUsedUp(_) => "enrollment_token_used_up",
            AlreadyAcked(_) => "already_acked",
            LastAdmin(_) => "last_admin",
            PayloadTooLarge(_) => "payload_too_large",
            UriTooLong(_) => "uri_too_long",
            UnsupportedEncoding(_) => "unsupported_encoding",
            HeadersTooLarge(_) => "headers_too_large",
            RateLimited(..) => "rate_limited",
            DatabaseUnavailable(_) => "database_unavailable",
            QueryTimeout(_) => "query_timeout",
            Overloaded(_) => "overloaded",
            InvalidPackage(_) => "invalid_package",
            InsufficientStorage(_) => "insufficient_storage",
            ArtifactStoreUnavailable(_) => "artifact_store_unavailable",
            Internal(_) => "internal",
        }
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody { code: self.code().to_string(), message: self.to_string() }
    }

    /// A 404 for an object kind and id.
    pub fn not_found(kind: &str, id: &str) -> ApiError {
        ApiError::NotFound(format!("no {kind} {id:?}; list them to find the right id"))
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> ApiError {
        match e {
            DbError::Unavailable(m) => ApiError::DatabaseUnavailable(format!(
                "the database is unreachable ({m}); retry after {RETRY_AFTER_S} s"
            )),
            DbError::Timeout(m) => ApiError::QueryTimeout(format!(
                "{m}; narrow the selector or page size, or raise operator_query_timeout_ms"
            )),
            DbError::Conflict(m) => ApiError::Conflict(m),
            DbError::NotFound(m) => ApiError::NotFound(m),
            DbError::Invalid(m) => ApiError::InvalidRequest(m),
            DbError::Other(m) => ApiError::Internal(format!("storage error: {m}")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self, "internal error");
        } else if status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(error = %self, "service unavailable");
        }
        let retry_after = match &self {
            ApiError::RateLimited(_, secs) => Some(*secs),
            _ if status == StatusCode::SERVICE_UNAVAILABLE => Some(u64::from(RETRY_AFTER_S)),
            _ => None,
        };
        let mut response = (status, axum::Json(self.body())).into_response();
        if let Some(secs) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_database_maps_to_503_with_stable_code() {
        let e = ApiError::from(DbError::Unavailable("connection refused".into()));
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.code(), "database_unavailable");
        let r = e.into_response();
        assert_eq!(r.headers().get(header::RETRY_AFTER).unwrap(), "5");
    }

    #[test]
    fn rate_limited_is_429_with_its_own_retry_after() {
        let r = ApiError::RateLimited("slow down".into(), 7).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers().get(header::RETRY_AFTER).unwrap(), "7");
    }

    #[test]
    fn other_storage_errors_are_internal() {
        assert_eq!(ApiError::from(DbError::Other("x".into())).status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(ApiError::from(DbError::Invalid("x".into())).code(), "invalid_request");
    }
}
