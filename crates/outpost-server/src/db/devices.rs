//! The device inventory: reading devices with their last reported state, labels, per-device
//! overrides and report history.

use super::audit::{paginate, record};
use super::select::{push_selector, push_status};
use super::sql::{clamp_limit, Sql};
use super::tokens::validate_labels;
use super::{status_of, Db, DbError, Thresholds};
use outpost_proto::fleet::api::{Device, DeviceOverride, DeviceStatus, LabelChange, Page};
use outpost_proto::fleet::device::{Health, StateReport};
use outpost_proto::fleet::selector::{validate_key, Labels, Selector};
use outpost_proto::{ModelName, Version};
use sqlx::any::AnyRow;
use sqlx::Row;
use sqlx::{AnyConnection, AnyPool};
use std::collections::HashMap;

const DEVICE_SELECT: &str = "SELECT d.id, d.name, d.agent_version AS enrolled_agent_version, d.hardware, \
     d.enrolled_ms, d.revoked_ms, s.last_seen_ms, s.health, s.agent_version, s.applied_etag, s.models, s.system \
     FROM devices d LEFT JOIN device_status s ON s.device_id = d.id";

/// Parses a stored health name.
pub(crate) fn parse_health(text: &str) -> Health {
    match text {
        "degraded" => Health::Degraded,
        "failing" => Health::Failing,
        _ => Health::Ok,
    }
}

/// The wire name of a health.
pub(crate) fn health_name(h: Health) -> &'static str {
    match h {
        Health::Ok => "ok",
        Health::Degraded => "degraded",
        Health::Failing => "failing",
    }
}

fn device(row: &AnyRow, labels: Labels, now_ms: i64, th: Thresholds) -> Result<Device, DbError> {
    let last_seen_ms: Option<i64> = row.try_get("last_seen_ms")?;
    let revoked_ms: Option<i64> = row.try_get("revoked_ms")?;
    let reported_version: Option<String> = row.try_get("agent_version")?;
    let models: Option<String> = row.try_get("models")?;
    let system: Option<String> = row.try_get("system")?;
    Ok(Device {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        labels,
        status: status_of(last_seen_ms, revoked_ms.is_some(), now_ms, th),
        last_seen_ms,
        enrolled_ms: row.try_get("enrolled_ms")?,
        revoked_ms,
        agent_version: match reported_version {
            Some(v) => v,
            None => row.try_get("enrolled_agent_version")?,
        },
        health: row.try_get::<Option<String>, _>("health")?.map(|h| parse_health(&h)).unwrap_or_default(),
        hardware: serde_json::from_str(&row.try_get::<String, _>("hardware")?)?,
        models: models.map(|m| serde_json::from_str(&m)).transpose()?.unwrap_or_default(),
        system: system.map(|s| serde_json::from_str(&s)).transpose()?.unwrap_or_default(),
        applied_etag: row.try_get::<Option<String>, _>("applied_etag")?.unwrap_or_default(),
    })
}

/// The labels of one device (empty when it has none or does not exist).
pub(crate) async fn labels_of(conn: &mut AnyConnection, id: &str) -> Result<Labels, DbError> {
    let mut q = Sql::new("SELECT key, value FROM device_labels WHERE device_id = ");
    q.bind(id);
    let rows = q.query().fetch_all(conn).await?;
    rows.iter().map(|r| Ok((r.try_get("key")?, r.try_get("value")?))).collect()
}

async fn device_exists(conn: &mut AnyConnection, id: &str) -> Result<bool, DbError> {
    let mut q = Sql::new("SELECT id FROM devices WHERE id = ");
    q.bind(id);
    Ok(q.query().fetch_optional(conn).await?.is_some())
}

async fn existing_labels(pool: &AnyPool, id: &str) -> Result<Option<Labels>, DbError> {
    let mut conn = pool.acquire().await?;
    if !device_exists(&mut conn, id).await? {
        return Ok(None);
    }
    labels_of(&mut conn, id).await.map(Some)
}

async fn override_of(pool: &AnyPool, id: &str) -> Result<Option<DeviceOverride>, DbError> {
    let mut q = Sql::new("SELECT body FROM device_overrides WHERE device_id = ");
    q.bind(id);
    let Some(row) = q.query().fetch_optional(pool).await? else {
        return Ok(None);
    };
    Ok(Some(stored_override(&row.try_get::<String, _>("body")?)?))
}

impl Db {
    /// One device with its last reported state; None when unknown.
    pub async fn get_device(&self, id: &str, now_ms: i64, th: Thresholds) -> Result<Option<Device>, DbError> {
        let mut conn = self.operator_pool().acquire().await?;
        let mut q = Sql::new(DEVICE_SELECT);
        q.push(" WHERE d.id = ").bind(id);
        let Some(row) = q.query().fetch_optional(&mut *conn).await? else {
            return Ok(None);
        };
        let labels = labels_of(&mut conn, id).await?;
        device(&row, labels, now_ms, th).map(Some)
    }

    /// Devices matching a selector (and a status, when given), by id; the cursor is the last
    /// device's id.
    #[allow(clippy::too_many_arguments)]
    pub async fn list_devices(
        &self,
        selector: &Selector,
        status: Option<DeviceStatus>,
        cursor: Option<&str>,
        limit: u32,
        now_ms: i64,
        th: Thresholds,
    ) -> Result<Page<Device>, DbError> {
        let limit = clamp_limit(limit);
        let mut q = Sql::new(DEVICE_SELECT);
        q.push(" WHERE 1 = 1");
        if let Some(c) = cursor {
            q.push(" AND d.id > ").bind(c);
        }
        push_selector(&mut q, selector);
        if let Some(st) = status {
            push_status(&mut q, st, now_ms, th);
        }
        q.push(" ORDER BY d.id LIMIT ").bind(limit + 1);
        let (rows, mut labels) = self
            .operator_deadline(async {
                let mut conn = self.operator_conn().await?;
                let rows = q.query().fetch_all(&mut *conn).await?;
                let mut labels: HashMap<String, Labels> = HashMap::new();
                if !rows.is_empty() {
                    let mut q = Sql::new("SELECT device_id, key, value FROM device_labels WHERE device_id IN ");
                    q.bind_list(rows.iter().map(|r| r.try_get::<String, _>("id")).collect::<Result<Vec<_>, _>>()?);
                    for r in q.query().fetch_all(&mut *conn).await? {
                        labels
                            .entry(r.try_get("device_id")?)
                            .or_default()
                            .insert(r.try_get("key")?, r.try_get("value")?);
                    }
                }
                conn.finish();
                Ok::<_, DbError>((rows, labels))
            })
            .await?;
        let ids: Vec<String> = rows.iter().map(|r| r.try_get::<String, _>("id")).collect::<Result<_, _>>()?;
        let items = rows
            .iter()
            .zip(&ids)
            .map(|(r, id)| device(r, labels.remove(id).unwrap_or_default(), now_ms, th))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(paginate(items, limit, |d| d.id.clone()))
    }

    /// A device's labels; None when there is no such device (operator API).
    pub async fn device_labels(&self, id: &str) -> Result<Option<Labels>, DbError> {
        existing_labels(self.operator_pool(), id).await
    }

    /// [`Db::device_labels`] for the device channel (desired state), on the device pool.
    pub async fn channel_device_labels(&self, id: &str) -> Result<Option<Labels>, DbError> {
        existing_labels(self.pool(), id).await
    }

    /// Sets and removes labels; returns the new labels, None when there is no such device.
    pub async fn change_labels(
        &self,
        id: &str,
        change: &LabelChange,
        actor: &str,
        now_ms: i64,
    ) -> Result<Option<Labels>, DbError> {
        validate_labels(&change.set)?;
        for k in &change.remove {
            validate_key(k).map_err(|e| DbError::Invalid(e.to_string()))?;
        }
        let mut tx = self.begin_operator().await?;
        if !device_exists(&mut tx, id).await? {
            return Ok(None);
        }
        if !change.remove.is_empty() {
            let mut q = Sql::new("DELETE FROM device_labels WHERE device_id = ");
            q.bind(id).push(" AND key IN ").bind_list(change.remove.iter());
            q.query().execute(&mut *tx).await?;
        }
        if !change.set.is_empty() {
            let mut q = Sql::new("INSERT INTO device_labels (device_id, key, value) VALUES ");
            for (i, (k, v)) in change.set.iter().enumerate() {
                q.push(if i == 0 { "(" } else { ", (" });
                q.bind(id).push(", ").bind(k).push(", ").bind(v).push(")");
            }
            q.push(" ON CONFLICT (device_id, key) DO UPDATE SET value = excluded.value");
            q.query().execute(&mut *tx).await?;
        }
        let labels = labels_of(&mut tx, id).await?;
        let details = serde_json::json!({"set": change.set, "remove": change.remove});
        record(&mut tx, now_ms, actor, "device.label", id, details).await?;
        super::fleet::stamp_devices(&mut tx, self.kind(), &[id]).await?;
        tx.commit().await?;
        Ok(Some(labels))
    }

    /// Sets (Some) or clears (None) a device's override; false when there is no such device.
    pub async fn set_override(
        &self,
        id: &str,
        ov: Option<&DeviceOverride>,
        actor: &str,
        now_ms: i64,
    ) -> Result<bool, DbError> {
        let mut tx = self.begin_operator().await?;
        if !device_exists(&mut tx, id).await? {
            return Ok(false);
        }
        match ov {
            Some(ov) => {
                let mut q = Sql::new("INSERT INTO device_overrides (device_id, body, updated_ms) VALUES (");
                q.bind(id).push(", ").bind(serde_json::to_string(ov)?).push(", ").bind(now_ms);
                q.push(
                    ") ON CONFLICT (device_id) DO UPDATE SET body = excluded.body, updated_ms = excluded.updated_ms",
                );
                q.query().execute(&mut *tx).await?;
            }
            None => {
                let mut q = Sql::new("DELETE FROM device_overrides WHERE device_id = ");
                q.bind(id);
                q.query().execute(&mut *tx).await?;
            }
        }
        record(&mut tx, now_ms, actor, "device.override", id, serde_json::json!({"override": ov})).await?;
        super::fleet::stamp_devices(&mut tx, self.kind(), &[id]).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// A device's override, None when it has none (operator API).
    pub async fn get_override(&self, id: &str) -> Result<Option<DeviceOverride>, DbError> {
        override_of(self.operator_pool(), id).await
    }

    /// [`Db::get_override`] for the device channel (desired state), on the device pool.
    pub async fn channel_override(&self, id: &str) -> Result<Option<DeviceOverride>, DbError> {
        override_of(self.pool(), id).await
    }

    /// Stored (downsampled) reports of a device made at or after `since_ms`, oldest first.
    pub async fn device_history(&self, id: &str, since_ms: i64, limit: u32) -> Result<Vec<StateReport>, DbError> {
        let mut q = Sql::new("SELECT report FROM device_reports WHERE device_id = ");
        q.bind(id).push(" AND at_ms >= ").bind(since_ms);
        q.push(" ORDER BY at_ms, id LIMIT ").bind(clamp_limit(limit));
        let rows = q.query().fetch_all(self.operator_pool()).await?;
        rows.iter().map(|r| Ok(serde_json::from_str(&r.try_get::<String, _>("report")?)?)).collect()
    }

    /// Deletes history reports the server received before `older_than_ms` (server clock, so a
    /// device cannot date its reports out of retention); returns how many.
    pub async fn prune_history(&self, older_than_ms: i64) -> Result<u64, DbError> {
        let mut q = Sql::new("DELETE FROM device_reports WHERE received_ms < ");
        q.bind(older_than_ms);
        Ok(q.query().execute(self.pool()).await?.rows_affected())
    }
}

/// Parses a stored override. Overrides stored before model names had one grammar may name
/// models the grammar refuses (`../x`); those entries are dropped with a warning instead of
/// failing the device's desired state, so they can never reach a device.
fn stored_override(body: &str) -> Result<DeviceOverride, DbError> {
    #[derive(serde::Deserialize)]
    struct Stored {
        #[serde(default)]
        models: std::collections::BTreeMap<String, String>,
        #[serde(default)]
        config: std::collections::BTreeMap<String, serde_json::Value>,
    }
    let stored: Stored = serde_json::from_str(body)?;
    let models = stored
        .models
        .into_iter()
        .filter_map(|(name, version)| {
            let valid = (version.is_empty() || Version::is_valid(&version)).then_some(());
            match (ModelName::parse(&name), valid) {
                (Ok(name), Some(())) => Some((name, version)),
                _ => {
                    tracing::warn!(model = %name.escape_debug(), version = %version.escape_debug(), "dropping a stored override entry that breaks the model-name grammar");
                    None
                }
            }
        })
        .collect();
    Ok(DeviceOverride { models, config: stored.config })
}
