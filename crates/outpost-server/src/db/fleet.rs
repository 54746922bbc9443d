//! What the rollout engine reads about the fleet: the whole view of a rollout's devices (when
//! it starts holding a rollout, and for the operator's `show`), and afterwards only what
//! changed. Every change the engine reads (labels, revocation, enrolment, override, the model
//! rows a device reported) stamps the device in `device_changes` in the same transaction; the
//! engine reads the stamps since its last tick and reads those devices again. Heartbeats move
//! only `last_seen_ms`, which the engine reads for the devices that went quiet and for the
//! members waiting for their first report after a change.

use super::rollouts::{parse_failure, Reader};
use super::select::push_selector;
use super::sql::Sql;
use super::{Db, DbError, DbKind, Thresholds};
use crate::rollout::engine::{DeviceView, RolloutRecord};
use crate::rollout::waves::Observed;
use outpost_proto::fleet::api::DeviceOverride;
use outpost_proto::fleet::Selector;
use sqlx::{AnyConnection, Row};
use std::collections::{HashMap, HashSet};

/// A read of a rollout's fleet, with the change stamp each device had when it was read.
#[derive(Debug, Default)]
pub struct FleetRead {
    /// Devices the selector matches and the rollout's members.
    pub views: HashMap<String, DeviceView>,
    /// Their change stamps (devices never stamped have none).
    pub stamps: HashMap<String, i64>,
}

/// Appends a subquery yielding the ids of `ids` (bound as one JSON array, so the statement's
/// text does not change with their number).
fn push_id_set(q: &mut Sql, kind: DbKind, ids: &[String]) -> Result<(), DbError> {
    let json = serde_json::to_string(ids)?;
    match kind {
        DbKind::Postgres => q.push("(SELECT value FROM json_array_elements_text(CAST(").bind(json).push(" AS json)))"),
        DbKind::Sqlite => q.push("(SELECT value FROM json_each(").bind(json).push("))"),
    };
    Ok(())
}

/// The database's clock in Unix ms, as SQL. Stamps come from it rather than from the writer's
/// clock, so that replicas' clocks cannot push a stamp behind what the engine already read;
/// what remains for the engine's margin is the time from the stamp to its commit.
fn db_clock_ms(kind: DbKind) -> &'static str {
    match kind {
        // clock_timestamp(), not now(): now() is the transaction's start, before its own work.
        DbKind::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        DbKind::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
    }
}

/// Stamps `ids` as changed now (the database's clock) for the rollout engine, in the caller's
/// transaction; callers stamp last, just before they commit. A stamp never stays or goes back:
/// a second change in the same millisecond adds one, so a reader that saw the old stamp always
/// reads the device again.
pub(super) async fn stamp_devices(conn: &mut AnyConnection, kind: DbKind, ids: &[&str]) -> Result<(), DbError> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut sorted: Vec<&str> = ids.to_vec();
    // One order for every writer, so two transactions stamping the same devices cannot deadlock.
    sorted.sort_unstable();
    sorted.dedup();
    let json = serde_json::to_string(&sorted)?;
    let ids_sql = match kind {
        DbKind::Postgres => "json_array_elements_text(CAST($1 AS json)) AS j(value)",
        DbKind::Sqlite => "json_each($1) AS j",
    };
    let mut q = Sql::new(&format!(
        "INSERT INTO device_changes (device_id, changed_ms) SELECT j.value, {} FROM {ids_sql} \
         JOIN devices d ON d.id = j.value WHERE true ORDER BY j.value \
         ON CONFLICT (device_id) DO UPDATE SET changed_ms = CASE \
         WHEN device_changes.changed_ms >= excluded.changed_ms THEN device_changes.changed_ms + 1 \
         ELSE excluded.changed_ms END",
        db_clock_ms(kind)
    ));
    q.arg(json);
    q.query().execute(conn).await?;
    Ok(())
}

impl Db {
    /// Everything the engine reads about the fleet for one rollout: the devices its selector
    /// matches, its members, and for each whether it is online, pinned or busy elsewhere, and
    /// what it reported about the model. Four statements, whatever the fleet's size.
    pub async fn rollout_fleet(
        &self,
        r: &RolloutRecord,
        now_ms: i64,
        th: Thresholds,
        reader: Reader,
    ) -> Result<HashMap<String, DeviceView>, DbError> {
        Ok(self.read_fleet(r, now_ms, th, reader, None).await?.views)
    }

    /// [`Db::rollout_fleet`] with each device's change stamp, of the whole fleet or only of the
    /// devices `only` names (those of them that match or are members).
    pub async fn read_fleet(
        &self,
        r: &RolloutRecord,
        now_ms: i64,
        th: Thresholds,
        reader: Reader,
        only: Option<&[String]>,
    ) -> Result<FleetRead, DbError> {
        // Validated at creation, so a selector that no longer parses is a corrupt row; reading it
        // as the empty selector would hand the version to every device.
        let selector: &Selector = &r
            .spec
            .selector
            .parse()
            .map_err(|e| DbError::Other(format!("rollout {}: stored selector does not parse: {e}", r.id)))?;
        let model = r.spec.model.to_string();
        let kind = self.kind();
        let online_after = now_ms.saturating_sub(th.stale_after_ms);
        let mut conn = self.reader_pool(reader).acquire().await?;
        let mut read = FleetRead::default();
        let restrict = |q: &mut Sql, column: &str| -> Result<(), DbError> {
            if let Some(ids) = only {
                q.push(" AND ").push(column).push(" IN ");
                push_id_set(q, kind, ids)?;
            }
            Ok(())
        };
        let mut q = Sql::new(
            "SELECT d.id, s.last_seen_ms, c.changed_ms, CASE WHEN rd.device_id IS NULL THEN 0 ELSE 1 END AS member, \
             CASE WHEN d.revoked_ms IS NULL",
        );
        push_selector(&mut q, selector);
        q.push(
            " THEN 1 ELSE 0 END AS matches FROM devices d LEFT JOIN device_status s ON s.device_id = d.id \
                LEFT JOIN device_changes c ON c.device_id = d.id \
                LEFT JOIN rollout_devices rd ON rd.device_id = d.id AND rd.rollout_id = ",
        );
        q.bind(r.id).push(" WHERE (rd.device_id IS NOT NULL OR (d.revoked_ms IS NULL");
        push_selector(&mut q, selector);
        q.push("))");
        restrict(&mut q, "d.id")?;
        for row in q.query().fetch_all(&mut *conn).await? {
            let id: String = row.try_get("id")?;
            let last: Option<i64> = row.try_get("last_seen_ms")?;
            if let Some(stamp) = row.try_get::<Option<i64>, _>("changed_ms")? {
                read.stamps.insert(id.clone(), stamp);
            }
            read.views.insert(
                id,
                DeviceView {
                    matches: row.try_get::<i64, _>("matches")? == 1,
                    online: last.is_some_and(|t| t >= online_after),
                    last_seen_ms: last,
                    ..DeviceView::default()
                },
            );
        }
        let mut q = Sql::new("SELECT device_id, version, state, failure FROM device_models WHERE name = ");
        q.bind(&model);
        restrict(&mut q, "device_id")?;
        for row in q.query().fetch_all(&mut *conn).await? {
            let id: String = row.try_get("device_id")?;
            let Some(view) = read.views.get_mut(&id) else { continue };
            let (version, state): (String, String) = (row.try_get("version")?, row.try_get("state")?);
            let failure = parse_failure(row.try_get("failure")?);
            let o: &mut Observed = &mut view.observed;
            if let Some(s) = state.strip_prefix("update:") {
                o.update = Some((version, s.to_string(), failure));
            } else if let Some(s) = state.strip_prefix("shadow:") {
                o.shadow = Some((version, s.to_string(), failure));
            } else {
                o.serving = Some((version, state, failure));
            }
        }
        let mut q = Sql::new("SELECT device_id, body FROM device_overrides WHERE 1 = 1");
        restrict(&mut q, "device_id")?;
        for row in q.query().fetch_all(&mut *conn).await? {
            let id: String = row.try_get("device_id")?;
            let Some(view) = read.views.get_mut(&id) else { continue };
            let body: String = row.try_get("body")?;
            // An override that does not parse cannot be read as "not pinned": leaving the device
            // out of the rollout is the safe reading.
            view.pinned = match serde_json::from_str::<DeviceOverride>(&body) {
                Ok(ov) => ov.models.keys().any(|k| k.as_str() == model),
                Err(e) => {
                    tracing::warn!(device = %id, error = %e, "device override does not parse; the rollout skips it");
                    true
                }
            };
        }
        drop(conn);
        for id in self.busy_devices(r, reader).await? {
            if let Some(view) = read.views.get_mut(&id) {
                view.busy = true;
            }
        }
        Ok(read)
    }

    /// Devices in another active rollout of `r`'s model (and not reverted there): `r` skips them.
    pub async fn busy_devices(&self, r: &RolloutRecord, reader: Reader) -> Result<HashSet<String>, DbError> {
        // The other rollouts are picked first (a handful of rows) and their devices read by
        // primary-key prefix: joined the other way, PostgreSQL scanned every member of every
        // rollout ever run (about 24 ms a tick at 10,000 devices) to find, usually, none.
        let mut q = Sql::new(
            "SELECT rd.device_id FROM rollout_devices rd WHERE rd.rollout_id IN \
             (SELECT id FROM rollouts WHERE state IN ('pending', 'running', 'paused') AND model = ",
        );
        q.bind(&r.spec.model).push(" AND id <> ").bind(r.id).push(") AND rd.state <> 'reverted'");
        let rows = q.query().fetch_all(self.reader_pool(reader)).await?;
        rows.iter().map(|row| Ok(row.try_get::<String, _>("device_id")?)).collect()
    }

    /// Devices stamped as changed at or after `since_ms`, with their stamps (engine pool).
    pub async fn device_changes_since(&self, since_ms: i64) -> Result<Vec<(String, i64)>, DbError> {
        let mut q = Sql::new("SELECT device_id, changed_ms FROM device_changes WHERE changed_ms >= ");
        q.bind(since_ms);
        let rows = q.query().fetch_all(self.engine_pool()).await?;
        rows.iter().map(|row| Ok((row.try_get("device_id")?, row.try_get("changed_ms")?))).collect()
    }

    /// Devices that have reported but not since `online_after`, with when they last did
    /// (engine pool). One pass over `device_status`, which holds a row per device; a fleet
    /// that is mostly online answers with few rows.
    pub async fn quiet_devices(&self, online_after: i64) -> Result<Vec<(String, i64)>, DbError> {
        let mut q = Sql::new("SELECT device_id, last_seen_ms FROM device_status WHERE last_seen_ms < ");
        q.bind(online_after);
        let rows = q.query().fetch_all(self.engine_pool()).await?;
        rows.iter().map(|row| Ok((row.try_get("device_id")?, row.try_get("last_seen_ms")?))).collect()
    }

    /// When each of `ids` last reported; devices that never did are left out (engine pool).
    pub async fn last_seen_of(&self, ids: &[String]) -> Result<Vec<(String, i64)>, DbError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = Sql::new("SELECT device_id, last_seen_ms FROM device_status WHERE device_id IN ");
        push_id_set(&mut q, self.kind(), ids)?;
        let rows = q.query().fetch_all(self.engine_pool()).await?;
        rows.iter().map(|row| Ok((row.try_get("device_id")?, row.try_get("last_seen_ms")?))).collect()
    }
}
