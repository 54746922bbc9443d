//! Remote commands: created by operators, handed to the device with its desired state,
//! acknowledged once with a result, or expired when the device never answers.

use super::audit::{int_cursor, paginate, record};
use super::sql::{clamp_limit, Sql};
use super::{AckOutcome, Db, DbError};
use outpost_proto::fleet::api::{Command, CreateCommand, Page};
use outpost_proto::fleet::device::{CommandAck, CommandKind, CommandStatus, DeviceCommand};
use sqlx::any::AnyRow;
use sqlx::Row;

const COLUMNS: &str = "id, device_id, kind, args, status, result, created_by, created_ms, acked_ms";

fn command(row: &AnyRow) -> Result<Command, DbError> {
    let kind: String = row.try_get("kind")?;
    let status: String = row.try_get("status")?;
    Ok(Command {
        id: row.try_get("id")?,
        device_id: row.try_get("device_id")?,
        kind: CommandKind::parse(&kind)
            .ok_or_else(|| DbError::Other(format!("stored command kind {kind:?} is unknown")))?,
        args: serde_json::from_str(&row.try_get::<String, _>("args")?)?,
        status: CommandStatus::parse(&status)
            .ok_or_else(|| DbError::Other(format!("stored command status {status:?} is unknown")))?,
        result: serde_json::from_str(&row.try_get::<String, _>("result")?)?,
        created_by: row.try_get("created_by")?,
        created_ms: row.try_get("created_ms")?,
        acked_ms: row.try_get("acked_ms")?,
    })
}

impl Db {
    /// Queues a command for a device; None when there is no such device.
    pub async fn create_command(
        &self,
        device_id: &str,
        c: &CreateCommand,
        actor: &str,
        now_ms: i64,
    ) -> Result<Option<Command>, DbError> {
        let args = if c.args.is_null() { serde_json::json!({}) } else { c.args.clone() };
        if !args.is_object() {
            return Err(DbError::Invalid("command args must be a JSON object".into()));
        }
        let mut tx = self.begin_operator().await?;
        let mut q = Sql::new("SELECT id FROM devices WHERE id = ");
        q.bind(device_id);
        if q.query().fetch_optional(&mut *tx).await?.is_none() {
            return Ok(None);
        }
        let mut q = Sql::new("INSERT INTO commands (device_id, kind, args, status, result, created_by, created_ms, ");
        q.push("delivered_ms, acked_ms) VALUES (").bind(device_id).push(", ").bind(c.kind.as_str()).push(", ");
        q.bind(args.to_string()).push(", 'pending', 'null', ").bind(actor).push(", ").bind(now_ms);
        q.push(", NULL, NULL) RETURNING id");
        let id: i64 = q.query().fetch_one(&mut *tx).await?.try_get("id")?;
        let details = serde_json::json!({"command": id, "kind": c.kind, "args": args});
        record(&mut tx, now_ms, actor, "command.create", device_id, details).await?;
        tx.commit().await?;
        Ok(Some(Command {
            id,
            device_id: device_id.to_string(),
            kind: c.kind,
            args,
            status: CommandStatus::Pending,
            result: serde_json::Value::Null,
            created_by: actor.to_string(),
            created_ms: now_ms,
            acked_ms: None,
        }))
    }

    /// Commands the device has not acknowledged yet (pending or delivered), oldest first.
    pub async fn open_commands(&self, device_id: &str) -> Result<Vec<DeviceCommand>, DbError> {
        let mut q = Sql::new(&format!("SELECT {COLUMNS} FROM commands WHERE device_id = "));
        q.bind(device_id).push(" AND status IN ('pending', 'delivered') ORDER BY id");
        let rows = q.query().fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| {
                let c = command(r)?;
                Ok(DeviceCommand { id: c.id, kind: c.kind, args: c.args, created_ms: c.created_ms })
            })
            .collect()
    }

    /// Marks pending commands as handed to their device.
    pub async fn mark_delivered(&self, ids: &[i64], now_ms: i64) -> Result<(), DbError> {
        for chunk in ids.chunks(1000) {
            let mut q = Sql::new("UPDATE commands SET status = 'delivered', delivered_ms = ");
            q.bind(now_ms).push(" WHERE status = 'pending' AND id IN ").bind_list(chunk.iter().copied());
            q.query().execute(self.pool()).await?;
        }
        Ok(())
    }

    /// Records a device's result for one of its commands (only the first result counts).
    pub async fn ack_command(
        &self,
        device_id: &str,
        id: i64,
        ack: &CommandAck,
        now_ms: i64,
    ) -> Result<AckOutcome, DbError> {
        if !matches!(ack.status, CommandStatus::Succeeded | CommandStatus::Failed) {
            return Err(DbError::Invalid(format!(
                "a command acknowledgement must say succeeded or failed, not {}",
                ack.status.as_str()
            )));
        }
        let mut tx = self.begin().await?;
        let mut q = Sql::new(&format!("SELECT {COLUMNS} FROM commands WHERE id = "));
        q.bind(id).push(" AND device_id = ").bind(device_id);
        let Some(row) = q.query().fetch_optional(&mut *tx).await? else {
            return Ok(AckOutcome::NotFound);
        };
        let mut cmd = command(&row)?;
        if matches!(cmd.status, CommandStatus::Succeeded | CommandStatus::Failed) {
            return Ok(AckOutcome::AlreadyAcked(cmd));
        }
        // A late answer to an expired command is still recorded: the device did run it.
        let mut q = Sql::new("UPDATE commands SET status = ");
        q.bind(ack.status.as_str()).push(", result = ").bind(ack.result.to_string());
        q.push(", acked_ms = ").bind(now_ms).push(" WHERE id = ").bind(id);
        q.query().execute(&mut *tx).await?;
        let actor = format!("device:{device_id}");
        let details = serde_json::json!({"command": id, "status": ack.status});
        record(&mut tx, now_ms, &actor, "command.ack", device_id, details).await?;
        tx.commit().await?;
        cmd.status = ack.status;
        cmd.result = ack.result.clone();
        cmd.acked_ms = Some(now_ms);
        Ok(AckOutcome::Acked(cmd))
    }

    /// A device's commands, newest first; the cursor is the last command's id.
    pub async fn list_commands(
        &self,
        device_id: &str,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Command>, DbError> {
        let limit = clamp_limit(limit);
        let mut q = Sql::new(&format!("SELECT {COLUMNS} FROM commands WHERE device_id = "));
        q.bind(device_id);
        if let Some(c) = int_cursor(cursor)? {
            q.push(" AND id < ").bind(c);
        }
        q.push(" ORDER BY id DESC LIMIT ").bind(limit + 1);
        let rows = q.query().fetch_all(self.operator_pool()).await?;
        let items = rows.iter().map(command).collect::<Result<Vec<_>, _>>()?;
        Ok(paginate(items, limit, |c| c.id.to_string()))
    }

    /// Expires unacknowledged commands created before `older_than_ms`; returns how many.
    pub async fn expire_commands(&self, older_than_ms: i64) -> Result<u64, DbError> {
        let mut q = Sql::new("UPDATE commands SET status = 'expired' WHERE status IN ('pending', 'delivered') ");
        q.push("AND created_ms < ").bind(older_than_ms);
        Ok(q.query().execute(self.pool()).await?.rows_affected())
    }
}
