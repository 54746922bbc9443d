//! Storage errors, and the one place that decides how a driver error is classified: the API
//! turns [`DbError::Unavailable`] into 503 (retry later) and [`DbError::Conflict`] into 409, so
//! the mapping must be right for both engines.

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database cannot be reached right now; the pool reconnects by itself when it is back.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A uniqueness rule would be broken (the object already exists, a key differs).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A referenced object does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// An operator statement ran past the operator query timeout (or was cancelled because its
    /// client went away) and was stopped.
    #[error("query timed out: {0}")]
    Timeout(String),
    /// The request is malformed (bad label, bad selector, bad status).
    #[error("invalid: {0}")]
    Invalid(String),
    /// Anything else: a bug, corrupt data or a failed migration.
    #[error("database error: {0}")]
    Other(String),
}

/// SQLSTATE classes and codes that mean "the server is not (yet) able to serve us".
fn sqlstate_is_unavailable(code: &str) -> bool {
    // 08: connection exception, 53: insufficient resources, 57P01-57P03: admin/crash shutdown,
    // cannot connect now (server starting up).
    code.starts_with("08") || code.starts_with("53") || matches!(code, "57P01" | "57P02" | "57P03")
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> DbError {
        use sqlx::Error as E;
        match &e {
            E::Io(_) | E::PoolTimedOut | E::PoolClosed | E::Tls(_) | E::Protocol(_) | E::WorkerCrashed => {
                DbError::Unavailable(e.to_string())
            }
            E::Database(db) => {
                if db.is_unique_violation() {
                    return DbError::Conflict(db.message().to_string());
                }
                let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
                let msg = db.message();
                // SQLite reports a busy/locked database (past busy_timeout), an I/O error or a
                // file it cannot open as database errors: those are transient too. Its codes are
                // extended result codes (a number whose low byte is the primary code), while
                // PostgreSQL's are five-character SQLSTATEs.
                let sqlite_transient =
                    code.len() < 5 && code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6 | 10 | 14));
                if code == "57014" {
                    // query_canceled: statement_timeout, or our own cancel of an abandoned query.
                    DbError::Timeout(format!("{msg} (code {code})"))
                } else if sqlstate_is_unavailable(&code) || sqlite_transient {
                    DbError::Unavailable(format!("{msg} (code {code})"))
                } else if code.len() == 5 && code.starts_with("22") {
                    // SQLSTATE class 22, data exception: a value the column cannot hold (a NUL
                    // in text, a number out of range). The request is at fault, not the server.
                    DbError::Invalid(format!("{msg} (code {code})"))
                } else {
                    DbError::Other(format!("{msg} (code {code})"))
                }
            }
            E::RowNotFound => DbError::NotFound(e.to_string()),
            _ => DbError::Other(e.to_string()),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for DbError {
    fn from(e: sqlx::migrate::MigrateError) -> DbError {
        match e {
            sqlx::migrate::MigrateError::Execute(inner) => DbError::from(inner),
            other => DbError::Other(format!("migration failed: {other}")),
        }
    }
}

impl From<serde_json::Error> for DbError {
    fn from(e: serde_json::Error) -> DbError {
        DbError::Other(format!("stored JSON does not decode: {e}"))
    }
}
