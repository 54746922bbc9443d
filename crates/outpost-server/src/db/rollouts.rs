//! Rollouts, their devices and leases; what the engine reads about the fleet each tick.
//!
//! The engine (`crate::rollout`) decides; this module loads its inputs and stores its step in
//! one transaction that also checks the lease, so a replica that lost its lease (paused by GC,
//! cut off from the database) cannot overwrite the holder's decisions.

use super::audit::record;
use super::reports::{json_rows, r_columns};
use super::sql::Sql;
use super::{Db, DbError};
use crate::desired::RolloutTarget;
use crate::rollout::engine::{Member, Mode, RolloutRecord, Step, WaveRecord};
use outpost_proto::fleet::device::FailureKind;
use outpost_proto::fleet::rollout::{CreateRollout, DeviceRolloutState, RolloutState};
use outpost_proto::fleet::Selector;
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

const ROLLOUT_COLUMNS: &str = "id, spec, state, wave, waves, reason, created_ms, assignment_id";
const MEMBER_COLUMNS: &str =
    "device_id, wave, mode, state, from_version, failure, attempts, retry_ms, since_ms, updated_ms";

/// A rollout with what only storage knows.
#[derive(Debug, Clone)]
pub struct StoredRollout {
    /// The engine's view.
    pub record: RolloutRecord,
    /// The assignment its completion created.
    pub assignment_id: Option<i64>,
    /// Who created it.
    pub created_by: String,
    /// Last change.
    pub updated_ms: i64,
}

pub(super) fn parse_failure(text: Option<String>) -> Option<FailureKind> {
    text.and_then(|t| serde_json::from_value(serde_json::Value::String(t)).ok())
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Shadow => "shadow",
        Mode::Live => "live",
    }
}

fn stored_rollout(row: &AnyRow) -> Result<StoredRollout, DbError> {
    let state: String = row.try_get("state")?;
    let spec: CreateRollout = serde_json::from_str(&row.try_get::<String, _>("spec")?)?;
    let waves: Vec<WaveRecord> = serde_json::from_str(&row.try_get::<String, _>("waves")?)?;
    Ok(StoredRollout {
        record: RolloutRecord {
            id: row.try_get("id")?,
            spec,
            state: RolloutState::parse(&state)
                .ok_or_else(|| DbError::Other(format!("unknown rollout state {state:?}")))?,
            wave: usize::try_from(row.try_get::<i64, _>("wave")?).unwrap_or(0),
            waves,
            reason: row.try_get("reason")?,
            created_ms: row.try_get("created_ms")?,
        },
        assignment_id: row.try_get("assignment_id")?,
        created_by: row.try_get("created_by")?,
        updated_ms: row.try_get("updated_ms")?,
    })
}

fn member(row: &AnyRow) -> Result<Member, DbError> {
    let state: String = row.try_get("state")?;
    let mode: String = row.try_get("mode")?;
    Ok(Member {
        device_id: row.try_get("device_id")?,
        wave: usize::try_from(row.try_get::<i64, _>("wave")?).unwrap_or(0),
        mode: if mode == "shadow" { Mode::Shadow } else { Mode::Live },
        state: DeviceRolloutState::parse(&state).unwrap_or(DeviceRolloutState::Targeted),
        from_version: row.try_get("from_version")?,
        failure: parse_failure(row.try_get("failure")?),
        attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(0),
        retry_ms: row.try_get("retry_ms")?,
        since_ms: row.try_get("since_ms")?,
        updated_ms: row.try_get("updated_ms")?,
    })
}

const MEMBER_JSON: &[(&str, &str)] = &[
    ("rollout_id", "BIGINT"),
    ("device_id", "TEXT"),
    ("model", "TEXT"),
    ("wave", "BIGINT"),
    ("mode", "TEXT"),
    ("state", "TEXT"),
    ("from_version", "TEXT"),
    ("failure", "TEXT"),
    ("attempts", "BIGINT"),
    ("retry_ms", "BIGINT"),
    ("since_ms", "BIGINT"),
    ("updated_ms", "BIGINT"),
];

#[derive(Serialize)]
struct MemberRow<'a> {
    rollout_id: i64,
    device_id: &'a str,
    model: &'a str,
    wave: i64,
    mode: &'static str,
    state: &'static str,
    from_version: Option<&'a str>,
    failure: Option<&'static str>,
    attempts: i64,
    retry_ms: Option<i64>,
    since_ms: i64,
    updated_ms: i64,
}

async fn upsert_members(
    conn: &mut AnyConnection,
    kind: super::DbKind,
    r: &RolloutRecord,
    members: &[Member],
) -> Result<u64, DbError> {
    if members.is_empty() {
        return Ok(0);
    }
    let model = r.spec.model.to_string();
    let rows: Vec<MemberRow<'_>> = members
        .iter()
        .map(|m| MemberRow {
            rollout_id: r.id,
            device_id: &m.device_id,
            model: &model,
            wave: i64::try_from(m.wave).unwrap_or(0),
            mode: mode_name(m.mode),
            state: m.state.as_str(),
            from_version: m.from_version.as_deref(),
            failure: m.failure.map(super::reports::failure_name),
            attempts: i64::from(m.attempts),
            retry_ms: m.retry_ms,
            since_ms: m.since_ms,
            updated_ms: m.updated_ms,
        })
        .collect();
    let sql = format!(
        "INSERT INTO rollout_devices (rollout_id, device_id, model, wave, mode, state, from_version, failure, attempts, \
         retry_ms, since_ms, updated_ms) SELECT {} FROM {} JOIN devices d ON d.id = r.device_id WHERE true \
         ON CONFLICT (rollout_id, device_id) DO UPDATE SET wave = excluded.wave, mode = excluded.mode, \
         state = excluded.state, from_version = excluded.from_version, failure = excluded.failure, \
         attempts = excluded.attempts, retry_ms = excluded.retry_ms, since_ms = excluded.since_ms, \
         updated_ms = excluded.updated_ms",
        r_columns(MEMBER_JSON),
        json_rows(kind, MEMBER_JSON)
    );
    let mut q = Sql::new(&sql);
    q.arg(serde_json::to_string(&rows)?);
    q.query().execute(conn).await?;
    Ok(1)
}

/// The `updated_ms` a write after `before` stores: the time, and always past `before`'s, so an
/// engine that cached the rollout's members as of `before` sees that someone wrote since, even
/// a replica whose clock is behind or a write in the same millisecond.
fn next_revision(before: &StoredRollout, now_ms: i64) -> i64 {
    now_ms.max(before.updated_ms.saturating_add(1))
}

/// Writes the rollout row with `updated_ms = revision`; `guard` adds the condition that makes it
/// safe (lease or state).
async fn update_rollout(
    conn: &mut AnyConnection,
    r: &RolloutRecord,
    revision: i64,
    guard: impl FnOnce(&mut Sql),
) -> Result<bool, DbError> {
    let mut q = Sql::new("UPDATE rollouts SET state = ");
    q.bind(r.state.as_str()).push(", wave = ").bind(i64::try_from(r.wave).unwrap_or(0));
    q.push(", waves = ").bind(serde_json::to_string(&r.waves)?).push(", reason = ").bind(&r.reason);
    q.push(", updated_ms = ").bind(revision).push(" WHERE id = ").bind(r.id);
    q.push(" AND ");
    guard(&mut q);
    Ok(q.query().execute(conn).await?.rows_affected() == 1)
}

/// Who reads a rollout's fleet: the engine or the operator API, each on its own pool, so a
/// device channel saturated by heartbeats starves neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// The background engine.
    Engine,
    /// An operator request.
    Operator,
}

impl Db {
    pub(super) fn reader_pool(&self, reader: Reader) -> &sqlx::AnyPool {
        match reader {
            Reader::Engine => self.engine_pool(),
            Reader::Operator => self.operator_pool(),
        }
    }

    /// Stores a new rollout (state `pending`); the engine picks it up on its next tick.
    pub async fn create_rollout(
        &self,
        spec: &CreateRollout,
        actor: &str,
        now_ms: i64,
    ) -> Result<StoredRollout, DbError> {
        let mut tx = self.begin_operator().await?;
        let mut q = Sql::new("SELECT package_sha256 FROM models WHERE name = ");
        q.bind(&spec.model).push(" AND version = ").bind(&spec.version);
        let Some(row) = q.query().fetch_optional(&mut *tx).await? else {
            return Err(DbError::NotFound(format!("model {}@{} is not in the registry", spec.model, spec.version)));
        };
        if row.try_get::<Option<String>, _>("package_sha256")?.is_none() {
            return Err(DbError::NotFound(format!(
                "model {}@{} has no package (published as metadata only); devices could not download it",
                spec.model, spec.version
            )));
        }
        let mut q = Sql::new(
            "INSERT INTO rollouts (model, version, spec, state, wave, waves, reason, created_by, created_ms, updated_ms) VALUES (",
        );
        q.bind(&spec.model).push(", ").bind(&spec.version).push(", ").bind(serde_json::to_string(spec)?);
        q.push(", 'pending', 0, '[]', 'waiting for the engine', ").bind(actor).push(", ").bind(now_ms);
        q.push(", ").bind(now_ms).push(") RETURNING id");
        let id: i64 = q.query().fetch_one(&mut *tx).await?.try_get("id")?;
        record(&mut tx, now_ms, actor, "rollout.create", &id.to_string(), serde_json::to_value(spec)?).await?;
        tx.commit().await?;
        Ok(StoredRollout {
            record: RolloutRecord {
                id,
                spec: spec.clone(),
                state: RolloutState::Pending,
                wave: 0,
                waves: Vec::new(),
                reason: "waiting for the engine".into(),
                created_ms: now_ms,
            },
            assignment_id: None,
            created_by: actor.to_string(),
            updated_ms: now_ms,
        })
    }

    /// One rollout.
    pub async fn get_rollout(&self, id: i64) -> Result<Option<StoredRollout>, DbError> {
        let mut q = Sql::new(&format!("SELECT {ROLLOUT_COLUMNS}, created_by, updated_ms FROM rollouts WHERE id = "));
        q.bind(id);
        q.query().fetch_optional(self.operator_pool()).await?.as_ref().map(stored_rollout).transpose()
    }

    /// Rollouts, newest first, optionally of one model.
    pub async fn list_rollouts(&self, model: Option<&str>, limit: i64) -> Result<Vec<StoredRollout>, DbError> {
        let mut q = Sql::new(&format!("SELECT {ROLLOUT_COLUMNS}, created_by, updated_ms FROM rollouts WHERE 1 = 1"));
        if let Some(m) = model {
            q.push(" AND model = ").bind(m);
        }
        q.push(" ORDER BY id DESC LIMIT ").bind(limit.clamp(1, 1000));
        let rows = q.query().fetch_all(self.operator_pool()).await?;
        rows.iter().map(stored_rollout).collect()
    }

    /// A rollout's devices.
    pub async fn rollout_members(&self, id: i64, reader: Reader) -> Result<Vec<Member>, DbError> {
        let mut q = Sql::new(&format!("SELECT {MEMBER_COLUMNS} FROM rollout_devices WHERE rollout_id = "));
        q.bind(id).push(" ORDER BY device_id");
        let rows = q.query().fetch_all(self.reader_pool(reader)).await?;
        rows.iter().map(member).collect()
    }

    /// Takes or renews the lease of every rollout the engine acts on (pending, running, paused)
    /// whose lease is free, expired or already `owner`'s; returns the ones `owner` holds.
    pub async fn claim_rollouts(&self, owner: &str, now_ms: i64, ttl_ms: i64) -> Result<Vec<StoredRollout>, DbError> {
        let mut q = Sql::new("UPDATE rollouts SET lease_owner = ");
        q.bind(owner).push(", lease_until_ms = ").bind(now_ms.saturating_add(ttl_ms));
        q.push(" WHERE state IN ('pending', 'running', 'paused') AND (lease_owner = ").bind(owner);
        q.push(" OR lease_owner IS NULL OR lease_until_ms < ").bind(now_ms).push(")");
        q.query().execute(self.engine_pool()).await?;
        let mut q =
            Sql::new(&format!("SELECT {ROLLOUT_COLUMNS}, created_by, updated_ms FROM rollouts WHERE lease_owner = "));
        q.bind(owner).push(" AND state IN ('pending', 'running', 'paused') ORDER BY id");
        let rows = q.query().fetch_all(self.engine_pool()).await?;
        rows.iter().map(stored_rollout).collect()
    }

    /// Members changed at or after `since_ms` (by any replica), with when; and a fingerprint of
    /// the assignments (count, highest id, newest rollout change). Replicas compare these to
    /// drop the cached ETags of devices another replica changed.
    pub async fn rollout_changes(&self, since_ms: i64) -> Result<(Vec<(String, i64)>, (i64, i64)), DbError> {
        let mut q = Sql::new("SELECT device_id, updated_ms FROM rollout_devices WHERE updated_ms >= ");
        q.bind(since_ms);
        let mut conn = self.engine_pool().acquire().await?;
        let rows = q.query().fetch_all(&mut *conn).await?;
        let changed = rows
            .iter()
            .map(|r| Ok((r.try_get::<String, _>("device_id")?, r.try_get::<i64, _>("updated_ms")?)))
            .collect::<Result<Vec<_>, DbError>>()?;
        let row = sqlx::query("SELECT COUNT(*) AS n, COALESCE(MAX(id), 0) AS top FROM assignments")
            .fetch_one(&mut *conn)
            .await?;
        Ok((changed, (row.try_get("n")?, row.try_get("top")?)))
    }

    /// Gives up `owner`'s leases (orderly shutdown: another replica takes over at once).
    pub async fn release_rollouts(&self, owner: &str) -> Result<(), DbError> {
        let mut q = Sql::new("UPDATE rollouts SET lease_owner = NULL, lease_until_ms = 0 WHERE lease_owner = ");
        q.bind(owner);
        q.query().execute(self.engine_pool()).await?;
        Ok(())
    }

    /// Stores an engine step if `owner` still holds the lease and nobody changed the rollout
    /// since it was read; returns the statements run and the rollout's new `updated_ms`, `None`
    /// when it was not stored. A completion creates the assignment in the same transaction.
    pub async fn save_rollout_step(
        &self,
        owner: &str,
        before: &StoredRollout,
        step: &Step,
        now_ms: i64,
    ) -> Result<Option<(u64, i64)>, DbError> {
        let mut tx = self.begin_engine().await?;
        let revision = next_revision(before, now_ms);
        let record_after = step.rollout.as_ref().unwrap_or(&before.record);
        // The lease, and no operator action since the engine read the rollout.
        let guard = |q: &mut Sql| {
            q.push("lease_owner = ").bind(owner).push(" AND lease_until_ms >= ").bind(now_ms);
            q.push(" AND updated_ms = ").bind(before.updated_ms);
        };
        if !update_rollout(&mut tx, record_after, revision, guard).await? {
            return Ok(None);
        }
        let statements = 1 + self.finish_step(&mut tx, record_after, step, "server", now_ms).await?;
        tx.commit().await?;
        Ok(Some((statements, revision)))
    }

    /// Stores an operator's action, if the rollout did not change since it was read (Conflict
    /// otherwise: read it again).
    pub async fn save_rollout_action(
        &self,
        before: &StoredRollout,
        step: &Step,
        actor: &str,
        now_ms: i64,
    ) -> Result<(), DbError> {
        let mut tx = self.begin_operator().await?;
        let after = step.rollout.as_ref().unwrap_or(&before.record);
        let guard = |q: &mut Sql| {
            q.push("state = ").bind(before.record.state.as_str()).push(" AND updated_ms = ").bind(before.updated_ms);
        };
        if !update_rollout(&mut tx, after, next_revision(before, now_ms), guard).await? {
            return Err(DbError::Conflict(format!("rollout {} changed meanwhile; read it again", after.id)));
        }
        if after.state == RolloutState::RolledBack {
            if let Some(assignment) = before.assignment_id {
                let mut q = Sql::new("DELETE FROM assignments WHERE id = ");
                q.bind(assignment);
                q.query().execute(&mut *tx).await?;
            }
        }
        self.finish_step(&mut tx, after, step, actor, now_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Members, audit entries and a completion's assignment; returns the statements run.
    async fn finish_step(
        &self,
        tx: &mut AnyConnection,
        r: &RolloutRecord,
        step: &Step,
        actor: &str,
        now_ms: i64,
    ) -> Result<u64, DbError> {
        let mut statements = upsert_members(&mut *tx, self.kind(), r, &step.changed).await?;
        let target = r.id.to_string();
        for d in &step.decisions {
            record(&mut *tx, now_ms, actor, d.action, &target, d.details.clone()).await?;
            statements += 1;
        }
        if step.completed {
            let selector: Selector = r.spec.selector.parse().map_err(|e| DbError::Invalid(format!("{e}")))?;
            let mut q = Sql::new("INSERT INTO assignments (selector, model, version, created_by, created_ms) VALUES (");
            q.bind(selector.to_string()).push(", ").bind(&r.spec.model).push(", ").bind(&r.spec.version);
            q.push(", ").bind(format!("rollout:{}", r.id)).push(", ").bind(now_ms).push(") RETURNING id");
            let id: i64 = q.query().fetch_one(&mut *tx).await?.try_get("id")?;
            let mut q = Sql::new("UPDATE rollouts SET assignment_id = ");
            q.bind(id).push(" WHERE id = ").bind(r.id);
            q.query().execute(&mut *tx).await?;
            let details = serde_json::json!({"selector": r.spec.selector, "model": r.spec.model, "version": r.spec.version, "rollout": r.id});
            record(&mut *tx, now_ms, actor, "assignment.create", &id.to_string(), details).await?;
            statements += 3;
        }
        Ok(statements)
    }

    /// The rollouts a device's desired state follows: it is a member, not reverted, of a
    /// rollout that is running, paused or aborted (an aborted rollout's devices keep the version).
    pub async fn channel_rollout_targets(&self, device_id: &str) -> Result<Vec<RolloutTarget>, DbError> {
        let mut q = Sql::new(
            "SELECT r.id, r.model, r.version, r.spec, r.created_ms, rd.mode, rd.attempts FROM rollout_devices rd \
             JOIN rollouts r ON r.id = rd.rollout_id WHERE rd.device_id = ",
        );
        q.bind(device_id)
            .push(" AND rd.state <> 'reverted' AND r.state IN ('running', 'paused', 'aborted') ORDER BY r.id");
        let rows = q.query().fetch_all(self.pool()).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let spec: CreateRollout = serde_json::from_str(&row.try_get::<String, _>("spec")?)?;
            let shadow = row.try_get::<String, _>("mode")? == "shadow";
            out.push(RolloutTarget {
                rollout_id: row.try_get("id")?,
                model: row.try_get("model")?,
                version: row.try_get("version")?,
                shadow_sample: shadow.then_some((spec.shadow_sample / 100.0).clamp(0.0, 1.0)),
                attempt: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(0),
                created_ms: row.try_get("created_ms")?,
            });
        }
        Ok(out)
    }
}
