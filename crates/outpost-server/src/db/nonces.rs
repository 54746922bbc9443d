//! The shared nonce table behind replay protection (see `crate::replay`): one statement records
//! a whole batch of nonces and says which were new, so a replay is caught by a primary-key
//! conflict in the same round trip that records the nonce.

use super::reports::{json_rows, r_columns};
use super::sql::Sql;
use super::{Db, DbError, DbKind};
use serde::Serialize;
use sqlx::Row;
use std::collections::HashSet;

const NONCE: &[(&str, &str)] = &[("signed_ms", "BIGINT"), ("nonce_key", "TEXT")];

/// One signed request's identity: its signing time and the hex hash of (device, nonce).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct NonceRow {
    /// The request's signing timestamp, Unix ms.
    pub signed_ms: i64,
    /// Hex of the (device, nonce) hash.
    pub nonce_key: String,
}

/// `INSERT ... ON CONFLICT DO NOTHING RETURNING`: the rows returned are the new ones.
pub(super) fn record_sql(kind: DbKind) -> String {
    format!(
        "INSERT INTO device_nonces (signed_ms, nonce_key) SELECT {} FROM {} WHERE true \
         ON CONFLICT (signed_ms, nonce_key) DO NOTHING RETURNING signed_ms, nonce_key",
        r_columns(NONCE),
        json_rows(kind, NONCE)
    )
}

impl Db {
    /// Records nonces (distinct rows); returns the ones not recorded before (the others are replays).
    pub async fn record_nonces(&self, rows: &[NonceRow]) -> Result<HashSet<NonceRow>, DbError> {
        if rows.is_empty() {
            return Ok(HashSet::new());
        }
        let mut q = Sql::new(&self.inner.nonce_sql);
        q.arg(serde_json::to_string(rows)?);
        let mut fresh = HashSet::with_capacity(rows.len());
        for row in q.query().fetch_all(self.pool()).await? {
            fresh.insert(NonceRow { signed_ms: row.try_get("signed_ms")?, nonce_key: row.try_get("nonce_key")? });
        }
        Ok(fresh)
    }

    /// Forgets nonces signed before `signed_before_ms` (their requests fail the skew check now).
    pub async fn prune_nonces(&self, signed_before_ms: i64) -> Result<u64, DbError> {
        let mut q = Sql::new("DELETE FROM device_nonces WHERE signed_ms < ");
        q.bind(signed_before_ms);
        Ok(q.query().execute(self.pool()).await?.rows_affected())
    }
}
