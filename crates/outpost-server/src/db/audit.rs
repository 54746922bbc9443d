//! The append-only audit log: written inside each mutation's transaction, read newest first.

use super::sql::{clamp_limit, Sql};
use super::{Db, DbError};
use outpost_proto::fleet::api::{AuditEntry, Page};
use sqlx::any::AnyRow;
use sqlx::AnyConnection;
use sqlx::Row;

/// Appends one entry; call with the transaction of the change it records.
pub(crate) async fn record(
    conn: &mut AnyConnection,
    now_ms: i64,
    actor: &str,
    action: &str,
    target: &str,
    details: serde_json::Value,
) -> Result<(), DbError> {
    let mut q = Sql::new("INSERT INTO audit_log (at_ms, actor, action, target, details) VALUES (");
    q.bind(now_ms).push(", ").bind(actor).push(", ").bind(action).push(", ").bind(target);
    q.push(", ").bind(details.to_string()).push(")");
    q.query().execute(conn).await?;
    Ok(())
}

fn entry(row: &AnyRow) -> Result<AuditEntry, DbError> {
    let details: String = row.try_get("details")?;
    Ok(AuditEntry {
        id: row.try_get("id")?,
        at_ms: row.try_get("at_ms")?,
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        target: row.try_get("target")?,
        details: serde_json::from_str(&details)?,
    })
}

/// Parses an integer cursor (an id).
pub(crate) fn int_cursor(cursor: Option<&str>) -> Result<Option<i64>, DbError> {
    cursor
        .map(|c| c.parse::<i64>().map_err(|_| DbError::Invalid(format!("cursor {c:?} is not a valid page cursor"))))
        .transpose()
}

impl Db {
    /// Records a change made outside the database (a TUF release written to files).
    pub async fn audit(
        &self,
        now_ms: i64,
        actor: &str,
        action: &str,
        target: &str,
        details: serde_json::Value,
    ) -> Result<(), DbError> {
        let mut tx = self.begin_operator().await?;
        record(&mut tx, now_ms, actor, action, target, details).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The audit log, newest first; the cursor is the last entry's id.
    pub async fn list_audit(&self, cursor: Option<&str>, limit: u32) -> Result<Page<AuditEntry>, DbError> {
        let limit = clamp_limit(limit);
        let mut q = Sql::new("SELECT id, at_ms, actor, action, target, details FROM audit_log");
        if let Some(c) = int_cursor(cursor)? {
            q.push(" WHERE id < ").bind(c);
        }
        q.push(" ORDER BY id DESC LIMIT ").bind(limit + 1);
        let rows = q.query().fetch_all(self.operator_pool()).await?;
        let items = rows.iter().map(entry).collect::<Result<Vec<_>, _>>()?;
        Ok(paginate(items, limit, |e| e.id.to_string()))
    }
}

/// Cuts a `limit + 1` fetch down to a page and derives the next cursor from the last item.
pub(crate) fn paginate<T>(mut items: Vec<T>, limit: i64, key: impl Fn(&T) -> String) -> Page<T> {
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let next_cursor = if more { items.last().map(key) } else { None };
    Page { items, next_cursor }
}
