//! Storage for the control plane: one API over SQLite (the embedded default) and PostgreSQL
//! (scale-out), through sqlx's `Any` driver so that every query is written once.
//!
//! Portability rules the SQL follows: `$N` placeholders (both engines bind them by number),
//! BIGINT for ids, timestamps (Unix ms) and booleans (0/1), TEXT for strings and JSON. Only the
//! DDL differs (id generation), hence two migration directories, applied on [`Db::connect`].
//!
//! URLs: `sqlite:<path>` / `sqlite://<path>` (created when missing; WAL, synchronous=NORMAL,
//! busy_timeout 5 s, foreign keys on) and `postgres://user@host:port/db`. To put the tables in a
//! PostgreSQL schema other than `public`, use sqlx's native option syntax
//! `?options[search_path]=<schema>` (or the libpq form `?options=-c%20search_path%3D<schema>`);
//! the schema must exist.
//!
//! Every mutation an operator or device makes writes its audit entry in the same transaction,
//! so the audit log can never miss a change that happened.
//!
//! Two pools (see `pools`): `Db::pool` serves the device channel and background maintenance,
//! `Db::operator_pool` the operator API, whose statements are bounded in time.

mod audit;
mod commands;
mod devices;
pub mod drift;
mod enroll;
mod error;
pub mod fleet;
mod models;
mod nonces;
mod pools;
mod reports;
pub mod results;
pub mod rollouts;
mod select;
mod sql;
mod stats_cursor;
mod summary;
mod tokens;

pub use error::DbError;
pub use models::PackagePublish;
pub use nonces::NonceRow;
pub use pools::DbOptions;
pub(crate) use reports::failure_name;
pub use rollouts::Reader;
pub use stats_cursor::StatsCursor;
pub use tokens::{is_blank, RevokeOutcome};

use outpost_proto::fleet::api::{Command, DeviceStatus};
use outpost_proto::fleet::device::{HardwareProfile, StateReport};
use outpost_proto::fleet::selector::Labels;
use pools::{open_pool, OperatorConn};
use sqlx::any::Any;
use sqlx::{AnyPool, Transaction};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Which database engine is behind a [`Db`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    /// A SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// Heartbeat age limits that decide a device's connectivity status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Last heartbeat older than this: stale.
    pub stale_after_ms: i64,
    /// Last heartbeat older than this (or none): offline.
    pub offline_after_ms: i64,
}

/// Default spacing of stored history reports per device: 5 minutes.
pub const DEFAULT_HISTORY_INTERVAL_MS: i64 = 300_000;

/// Handle to the database; cheap to clone (shares its pools).
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
    /// An engine pool opened on another runtime than `inner`'s (see [`Db::with_own_engine_pool`]).
    engine: Option<AnyPool>,
}

struct Inner {
    /// The device channel's connections.
    pool: AnyPool,
    /// The operator API's connections (statement timeout on PostgreSQL).
    operator_pool: AnyPool,
    /// Background work's connections (the rollout engine).
    engine_pool: AnyPool,
    /// Longest an operator statement may run.
    operator_timeout: Duration,
    /// Side connections that cancel abandoned operator queries (PostgreSQL).
    canceller: Arc<pools::Canceller>,
    kind: DbKind,
    history_interval_ms: AtomicI64,
    /// Per device: hash of the model set last written to `device_models`, to skip rewrites.
    model_hashes: Mutex<HashMap<String, u64>>,
    /// Per device: `at_ms` of the newest report stored in `device_reports`.
    history_last: Mutex<HashMap<String, i64>>,
    /// The report writer's statements for this engine.
    report_sql: reports::ReportSql,
    /// The nonce batch statement for this engine.
    nonce_sql: String,
    /// Where to open more pools, and how many engine connections each has; `None` when every
    /// side shares one pool (in-memory SQLite).
    reopen: Option<(String, u32)>,
}

/// A device asking to enroll (already authenticated by its signature over the request).
#[derive(Debug, Clone)]
pub struct NewDevice {
    /// The enrollment token secret it presented (`oet_...`).
    pub token_secret: String,
    /// Device id derived from the public key.
    pub device_id: String,
    /// Ed25519 public key.
    pub public_key: [u8; 32],
    /// Human name.
    pub name: String,
    /// Agent version.
    pub agent_version: String,
    /// Hardware profile.
    pub hardware: HardwareProfile,
}

/// Result of an enrollment attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum EnrollOutcome {
    /// A new device was created with the token's labels.
    Enrolled {
        /// Device id.
        device_id: String,
        /// Its labels.
        labels: Labels,
    },
    /// This key was already enrolled; nothing changed and no token use was consumed.
    AlreadyEnrolled {
        /// Device id.
        device_id: String,
        /// Its current labels.
        labels: Labels,
    },
    /// No token has this secret.
    TokenUnknown,
    /// The token is past its expiry.
    TokenExpired,
    /// Every use of the token is taken.
    TokenUsedUp,
    /// The token was revoked.
    TokenRevoked,
    /// The device was revoked and may not come back.
    DeviceRevoked,
}

/// A device's key and revocation flag, for verifying its requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceKeyRow {
    /// Ed25519 public key.
    pub public_key: [u8; 32],
    /// Revoked devices are refused.
    pub revoked: bool,
}

/// A state report as the server received it.
#[derive(Debug, Clone)]
pub struct ReportRow {
    /// Sender.
    pub device_id: String,
    /// Server clock at receipt, Unix ms (becomes the device's `last_seen_ms`).
    pub received_ms: i64,
    /// The report.
    pub report: StateReport,
}

/// Result of a device acknowledging a command.
#[derive(Debug, Clone, PartialEq)]
pub enum AckOutcome {
    /// The result was recorded.
    Acked(Command),
    /// The device has no command with this id.
    NotFound,
    /// The command already had a result; it is left unchanged.
    AlreadyAcked(Command),
}

/// Connectivity status from the last heartbeat: revoked wins, then the age of the heartbeat.
pub fn status_of(last_seen_ms: Option<i64>, revoked: bool, now_ms: i64, th: Thresholds) -> DeviceStatus {
    if revoked {
        return DeviceStatus::Revoked;
    }
    match last_seen_ms {
        Some(seen) if seen >= now_ms - th.stale_after_ms => DeviceStatus::Online,
        Some(seen) if seen >= now_ms - th.offline_after_ms => DeviceStatus::Stale,
        _ => DeviceStatus::Offline,
    }
}

/// Adds `mode=rwc` (create when missing) unless the URL already says how to open the file.
fn sqlite_url(url: &str) -> String {
    if url.contains("mode=") || url.contains(":memory:") {
        return url.to_string();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}mode=rwc")
}

impl Db {
    /// Connects with `max_connections` for the device channel and the default operator pool
    /// (see [`DbOptions`]), applies the pragmas (SQLite) and runs the migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Db, DbError> {
        Db::connect_with(url, DbOptions { device_connections: max_connections, ..DbOptions::default() }).await
    }

    /// Connects both pools, applies the pragmas (SQLite) and runs the migrations once.
    pub async fn connect_with(url: &str, options: DbOptions) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        let kind = if url.starts_with("sqlite:") {
            DbKind::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            DbKind::Postgres
        } else {
            return Err(DbError::Invalid(format!(
                "unsupported database URL {url:?}: use sqlite:<path> or postgres://user@host/db"
            )));
        };
        let url = match kind {
            DbKind::Sqlite => sqlite_url(url),
            DbKind::Postgres => url.to_string(),
        };
        // Migrations run on the device pool, which has no statement timeout: a migration over a
        // large table may legitimately take longer than an operator query.
        let pool = open_pool(kind, &url, options.device_connections, None).await?;
        let migrated = match kind {
            DbKind::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&pool).await,
            DbKind::Postgres => sqlx::migrate!("./migrations/postgres").run(&pool).await,
        };
        if let Err(e) = migrated {
            pool.close().await;
            return Err(e.into());
        }
        // An in-memory SQLite database exists once per connection set: a second pool would see
        // an empty database, so every side shares the one pool there.
        let shared = url.contains(":memory:");
        let (operator_pool, engine_pool) = if shared {
            (pool.clone(), pool.clone())
        } else {
            let opened = async {
                let operator =
                    open_pool(kind, &url, options.operator_connections, Some(options.operator_query_timeout)).await?;
                // Lazy: the server's engine opens its own on its own thread; this one serves
                // callers on this runtime (tools, tests) when they first need it.
                match pools::open_lazy_pool(kind, &url, options.engine_connections.max(1)) {
                    Ok(engine) => Ok((operator, engine)),
                    Err(e) => {
                        operator.close().await;
                        Err(e)
                    }
                }
            };
            match opened.await {
                Ok(pools) => pools,
                Err(e) => {
                    pool.close().await;
                    return Err(e);
                }
            }
        };
        Ok(Db {
            inner: Arc::new(Inner {
                pool,
                operator_pool,
                engine_pool,
                operator_timeout: options.operator_query_timeout,
                canceller: pools::Canceller::new(&url),
                kind,
                history_interval_ms: AtomicI64::new(DEFAULT_HISTORY_INTERVAL_MS),
                model_hashes: Mutex::new(HashMap::new()),
                history_last: Mutex::new(HashMap::new()),
                report_sql: reports::ReportSql::new(kind),
                nonce_sql: nonces::record_sql(kind),
                reopen: (!shared).then(|| (url.clone(), options.engine_connections.max(1))),
            }),
            engine: None,
        })
    }

    /// Which engine this is.
    pub fn kind(&self) -> DbKind {
        self.inner.kind
    }

    /// Sets the minimum spacing of stored history reports per device.
    pub fn set_history_interval_ms(&self, ms: i64) {
        self.inner.history_interval_ms.store(ms.max(0), Ordering::Relaxed);
    }

    /// One round trip to the database (readiness probe).
    pub async fn ping(&self) -> Result<(), DbError> {
        sqlx::query("SELECT 1").execute(&self.inner.pool).await?;
        Ok(())
    }

    /// Closes every connection; later calls fail with [`DbError::Unavailable`].
    pub async fn close(&self) {
        self.inner.operator_pool.close().await;
        self.inner.engine_pool.close().await;
        self.inner.pool.close().await;
    }

    /// A handle on the same database whose engine pool is opened on the calling runtime. The
    /// rollout engine runs on a thread of its own: a connection is woken by the runtime that
    /// opened it, and the server's runtime, busy with thousands of heartbeats, answered each of
    /// the engine's statements tens of milliseconds late. Close it with
    /// [`Db::close_own_engine_pool`] on the same runtime.
    pub async fn with_own_engine_pool(&self) -> Result<Db, DbError> {
        let Some((url, connections)) = &self.inner.reopen else { return Ok(self.clone()) };
        let pool = open_pool(self.inner.kind, url, *connections, None).await?;
        Ok(Db { inner: self.inner.clone(), engine: Some(pool) })
    }

    /// Closes the pool [`Db::with_own_engine_pool`] opened (nothing otherwise).
    pub async fn close_own_engine_pool(&self) {
        if let Some(pool) = &self.engine {
            pool.close().await;
        }
    }

    /// The device channel's pool (enrollment, keys, reports, desired state, acknowledgements,
    /// maintenance). Operator requests never take connections from it.
    fn pool(&self) -> &AnyPool {
        &self.inner.pool
    }

    /// The operator API's pool; on PostgreSQL its statements time out.
    fn operator_pool(&self) -> &AnyPool {
        &self.inner.operator_pool
    }

    /// An operator connection for an expensive statement, cancelled on the server when the
    /// request is dropped before [`OperatorConn::finish`].
    async fn operator_conn(&self) -> Result<OperatorConn, DbError> {
        OperatorConn::acquire(&self.inner.operator_pool, self.inner.kind, &self.inner.canceller).await
    }

    /// Runs operator work under the operator deadline. On PostgreSQL the server's
    /// statement_timeout normally answers first (this is a backstop a second later); on SQLite
    /// this is the bound.
    async fn operator_deadline<T>(&self, work: impl Future<Output = Result<T, DbError>>) -> Result<T, DbError> {
        let limit = self.inner.operator_timeout;
        let wait = match self.inner.kind {
            DbKind::Sqlite => limit,
            DbKind::Postgres => limit + Duration::from_secs(1),
        };
        match tokio::time::timeout(wait, work).await {
            Ok(result) => result,
            Err(_) => Err(DbError::Timeout(format!("the query ran longer than {} ms", limit.as_millis()))),
        }
    }

    /// Background work's pool (the rollout engine).
    fn engine_pool(&self) -> &AnyPool {
        self.engine.as_ref().unwrap_or(&self.inner.engine_pool)
    }

    /// [`Db::begin`] on the engine's pool.
    async fn begin_engine(&self) -> Result<Transaction<'static, Any>, DbError> {
        Ok(match self.inner.kind {
            DbKind::Sqlite => self.engine_pool().begin_with("BEGIN IMMEDIATE").await?,
            DbKind::Postgres => self.engine_pool().begin().await?,
        })
    }

    /// Begins a write transaction. SQLite gets `BEGIN IMMEDIATE` so that the write lock is
    /// taken (waiting up to busy_timeout) before reading: a deferred transaction that reads
    /// first fails with "database is locked" when another writer commits in between.
    async fn begin(&self) -> Result<Transaction<'static, Any>, DbError> {
        Ok(match self.inner.kind {
            DbKind::Sqlite => self.inner.pool.begin_with("BEGIN IMMEDIATE").await?,
            DbKind::Postgres => self.inner.pool.begin().await?,
        })
    }

    /// [`Db::begin`] on the operator pool, under the operator deadline: on SQLite an operator
    /// write waits here for the write lock (up to busy_timeout otherwise). sqlx rolls back a
    /// `BEGIN` that completes after its caller gave up, so the connection stays clean.
    async fn begin_operator(&self) -> Result<Transaction<'static, Any>, DbError> {
        self.operator_deadline(async {
            Ok(match self.inner.kind {
                DbKind::Sqlite => self.inner.operator_pool.begin_with("BEGIN IMMEDIATE").await?,
                DbKind::Postgres => self.inner.operator_pool.begin().await?,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TH: Thresholds = Thresholds { stale_after_ms: 60_000, offline_after_ms: 300_000 };

    #[test]
    fn status_follows_heartbeat_age_and_revocation() {
        let now = 1_000_000;
        assert_eq!(status_of(Some(now - 60_000), false, now, TH), DeviceStatus::Online);
        assert_eq!(status_of(Some(now - 60_001), false, now, TH), DeviceStatus::Stale);
        assert_eq!(status_of(Some(now - 300_000), false, now, TH), DeviceStatus::Stale);
        assert_eq!(status_of(Some(now - 300_001), false, now, TH), DeviceStatus::Offline);
        assert_eq!(status_of(None, false, now, TH), DeviceStatus::Offline);
        assert_eq!(status_of(Some(now), true, now, TH), DeviceStatus::Revoked);
    }

    #[test]
    fn sqlite_urls_create_missing_files_unless_told_otherwise() {
        assert_eq!(sqlite_url("sqlite:/tmp/a.db"), "sqlite:/tmp/a.db?mode=rwc");
        assert_eq!(sqlite_url("sqlite:///tmp/a.db?cache=shared"), "sqlite:///tmp/a.db?cache=shared&mode=rwc");
        assert_eq!(sqlite_url("sqlite:/tmp/a.db?mode=ro"), "sqlite:/tmp/a.db?mode=ro");
    }
}
