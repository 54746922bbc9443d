//! The two connection pools, and the guard that cancels an abandoned operator query.
//!
//! Devices and operators never share a connection: the device channel (enrollment, key lookups,
//! the report writer, desired state, command acknowledgements, maintenance) has its own pool, so
//! no number of expensive operator requests can leave a heartbeat waiting for a connection.
//! Operator statements are bounded in time: on PostgreSQL every operator connection runs with
//! `statement_timeout`, so the server itself stops a runaway query (and frees its connection);
//! on SQLite, where sqlx's `Any` driver offers no progress handler, the bound is a client-side
//! deadline (`Db::operator_deadline`) plus the selector size limits that keep every
//! query small.
//!
//! When an HTTP client goes away, axum drops the handler's future; sqlx then simply hands the
//! connection back while PostgreSQL keeps executing the statement, and the next user of that
//! connection waits for it. [`OperatorConn`] closes that gap for the expensive (selector) queries:
//! dropped before it was marked finished, it keeps its connection out of the pool, asks the
//! server to cancel the statement (`pg_cancel_backend`) over a separate, short-lived connection,
//! and only then lets the connection go back (sqlx pings it on release, which waits for the
//! cancelled statement to end). Holding the connection meanwhile means the cancel can never hit
//! another request's statement (PostgreSQL ignores a cancel that reaches an idle backend), and the
//! database never sees more than the two pools plus [`CANCEL_CONNECTIONS`] connections however
//! fast clients disconnect: when every cancel slot is busy the statement is left to
//! `statement_timeout`.

use super::{DbError, DbKind};
use sqlx::any::{Any, AnyPoolOptions};
use sqlx::pool::PoolConnection;
use sqlx::{AnyConnection, AnyPool, Connection, Executor, Row};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Most side connections open at once to cancel abandoned operator statements.
pub const CANCEL_CONNECTIONS: usize = 2;

/// What it takes to cancel a PostgreSQL statement from the side.
pub(super) struct Canceller {
    url: String,
    slots: Arc<Semaphore>,
}

impl Canceller {
    /// A canceller for the database at `url`.
    pub(super) fn new(url: &str) -> Arc<Canceller> {
        Arc::new(Canceller { url: url.to_string(), slots: Arc::new(Semaphore::new(CANCEL_CONNECTIONS)) })
    }

    async fn cancel(&self, pid: i32) -> Result<(), sqlx::Error> {
        let mut c = AnyConnection::connect(&self.url).await?;
        sqlx::query("SELECT pg_cancel_backend($1)").bind(pid).execute(&mut c).await?;
        c.close().await
    }
}

/// Pool sizes and the operator statement bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbOptions {
    /// Connections for the device channel. Default 12.
    pub device_connections: u32,
    /// Connections for the operator API. Default 4.
    pub operator_connections: u32,
    /// Connections for background work (the rollout engine), so that it neither waits behind
    /// a saturated device channel nor takes from it. Default 2.
    pub engine_connections: u32,
    /// Longest an operator statement may run. Default 5 s.
    pub operator_query_timeout: Duration,
}

impl Default for DbOptions {
    fn default() -> DbOptions {
        DbOptions {
            device_connections: 12,
            operator_connections: 4,
            engine_connections: 2,
            operator_query_timeout: Duration::from_secs(5),
        }
    }
}

/// Opens one pool. `statement_timeout` is applied to every PostgreSQL connection it opens.
pub(super) async fn open_pool(
    kind: DbKind,
    url: &str,
    max_connections: u32,
    statement_timeout: Option<Duration>,
) -> Result<AnyPool, DbError> {
    Ok(pool_options(kind, max_connections, statement_timeout).connect(url).await?)
}

/// A pool that opens its connections when first asked, on the asking runtime.
pub(super) fn open_lazy_pool(kind: DbKind, url: &str, max_connections: u32) -> Result<AnyPool, DbError> {
    Ok(pool_options(kind, max_connections, None).connect_lazy(url)?)
}

fn pool_options(kind: DbKind, max_connections: u32, statement_timeout: Option<Duration>) -> AnyPoolOptions {
    // A short acquire timeout turns an unreachable database into a quick 503 instead of a
    // hung request; the pool opens fresh connections once the database is back.
    let options = AnyPoolOptions::new()
        .max_connections(max_connections.max(1))
        .acquire_timeout(Duration::from_secs(3))
        .test_before_acquire(true);
    match kind {
        DbKind::Sqlite => {
            // foreign_keys=ON and busy_timeout=5s are sqlx's SQLite defaults; the journal
            // settings are not, and cannot be given in the URL.
            options.after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    conn.execute("PRAGMA busy_timeout = 5000").await?;
                    Ok(())
                })
            })
        }
        DbKind::Postgres => match statement_timeout {
            Some(t) => {
                // At least 1 ms: 0 would mean "no limit" to PostgreSQL.
                let ms = u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1);
                let set: Arc<str> = format!("SET statement_timeout = {ms}").into();
                options.after_connect(move |conn, _meta| {
                    let set = set.clone();
                    Box::pin(async move {
                        conn.execute(sqlx::AssertSqlSafe(set.to_string())).await?;
                        Ok(())
                    })
                })
            }
            None => options,
        },
    }
}

/// An operator connection running an expensive statement; see the module docs.
pub(crate) struct OperatorConn {
    conn: Option<PoolConnection<Any>>,
    /// PostgreSQL backend to cancel when dropped unfinished; None on SQLite or once finished.
    cancel: Option<(i32, Arc<Canceller>)>,
}

impl OperatorConn {
    /// Takes a connection from `pool`; on PostgreSQL also learns its backend process id.
    pub(super) async fn acquire(
        pool: &AnyPool,
        kind: DbKind,
        canceller: &Arc<Canceller>,
    ) -> Result<OperatorConn, DbError> {
        let mut conn = pool.acquire().await?;
        let cancel = match kind {
            DbKind::Sqlite => None,
            DbKind::Postgres => {
                let row = sqlx::query("SELECT pg_backend_pid() AS pid").fetch_one(&mut *conn).await?;
                Some((row.try_get::<i32, _>("pid")?, canceller.clone()))
            }
        };
        Ok(OperatorConn { conn: Some(conn), cancel })
    }

    /// The statement completed: the connection goes back to the pool as usual.
    pub(crate) fn finish(mut self) {
        self.cancel = None;
    }
}

impl Deref for OperatorConn {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        // Only `Drop` takes the connection out.
        self.conn.as_deref().unwrap_or_else(|| unreachable!("connection present until drop"))
    }
}

impl DerefMut for OperatorConn {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        self.conn.as_deref_mut().unwrap_or_else(|| unreachable!("connection present until drop"))
    }
}

impl Drop for OperatorConn {
    fn drop(&mut self) {
        let (Some((pid, canceller)), Some(conn)) = (self.cancel.take(), self.conn.take()) else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let Ok(slot) = canceller.slots.clone().try_acquire_owned() else {
            tracing::warn!(pid, "every cancel slot is busy; the abandoned operator query ends at statement_timeout");
            return;
        };
        runtime.spawn(async move {
            match tokio::time::timeout(Duration::from_secs(3), canceller.cancel(pid)).await {
                Ok(Ok(())) => tracing::debug!(pid, "cancelled an abandoned operator query"),
                Ok(Err(e)) => tracing::warn!(pid, error = %e, "could not cancel an abandoned operator query"),
                Err(_) => tracing::warn!(pid, "cancelling an abandoned operator query timed out"),
            }
            // Back to the pool only now, so the cancel cannot reach whoever uses it next.
            drop(conn);
            drop(slot);
        });
    }
}
