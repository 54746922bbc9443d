//! The model registry (published name@version entries) and assignments (selector → model
//! version), from which the server computes each device's desired state.

use super::audit::{paginate, record};
use super::sql::{clamp_limit, Sql};
use super::{Db, DbError};
use crate::desired::PackageIndex;
use outpost_proto::fleet::api::{Assignment, CreateAssignment, ModelVersion, PackageRef, Page, PublishModel};
use outpost_proto::fleet::selector::Selector;
use sqlx::any::AnyRow;
use sqlx::Row;

/// The registry columns [`model_version`] reads.
const MODEL_COLUMNS: &str = "name, version, metadata, published_by, published_ms, package_sha256, package_size, task";

fn package_ref(row: &AnyRow) -> Result<Option<PackageRef>, DbError> {
    let sha256: Option<String> = row.try_get("package_sha256")?;
    let size: Option<i64> = row.try_get("package_size")?;
    Ok(match (sha256, size) {
        (Some(sha256), Some(size)) => Some(PackageRef { sha256, size_bytes: u64::try_from(size).unwrap_or(0) }),
        _ => None,
    })
}

fn model_version(row: &AnyRow) -> Result<ModelVersion, DbError> {
    Ok(ModelVersion {
        name: row.try_get("name")?,
        version: row.try_get("version")?,
        metadata: serde_json::from_str(&row.try_get::<String, _>("metadata")?)?,
        published_by: row.try_get("published_by")?,
        published_ms: row.try_get("published_ms")?,
        package: package_ref(row)?,
        task: row.try_get("task")?,
    })
}

/// How publishing a package went.
#[derive(Debug, Clone, PartialEq)]
pub enum PackagePublish {
    /// A new registry entry.
    Created(ModelVersion),
    /// This name@version was already published with exactly these bytes: nothing changed.
    Unchanged(ModelVersion),
}

fn assignment(row: &AnyRow) -> Result<Assignment, DbError> {
    Ok(Assignment {
        id: row.try_get("id")?,
        selector: row.try_get("selector")?,
        model: row.try_get("model")?,
        version: row.try_get("version")?,
        created_by: row.try_get("created_by")?,
        created_ms: row.try_get("created_ms")?,
    })
}

/// Model cursors are `name@version`; names are split at the first `@`.
fn model_cursor(cursor: &str) -> Result<(&str, &str), DbError> {
    cursor.split_once('@').ok_or_else(|| DbError::Invalid(format!("cursor {cursor:?} is not a valid page cursor")))
}

async fn all_assignments(pool: &sqlx::AnyPool) -> Result<Vec<Assignment>, DbError> {
    let rows = sqlx::query("SELECT id, selector, model, version, created_by, created_ms FROM assignments ORDER BY id")
        .fetch_all(pool)
        .await?;
    rows.iter().map(assignment).collect()
}

impl Db {
    /// Adds a model version to the registry; Conflict when that name@version exists.
    pub async fn publish_model(&self, m: &PublishModel, actor: &str, now_ms: i64) -> Result<ModelVersion, DbError> {
        if m.name.trim().is_empty() || m.version.trim().is_empty() {
            return Err(DbError::Invalid("a model needs a name and a version".into()));
        }
        let metadata = if m.metadata.is_null() { serde_json::json!({}) } else { m.metadata.clone() };
        let mut tx = self.begin_operator().await?;
        let mut q = Sql::new("SELECT name FROM models WHERE name = ");
        q.bind(&m.name).push(" AND version = ").bind(&m.version);
        if q.query().fetch_optional(&mut *tx).await?.is_some() {
            return Err(DbError::Conflict(format!("model {}@{} is already published", m.name, m.version)));
        }
        let mut q = Sql::new("INSERT INTO models (name, version, metadata, published_by, published_ms) VALUES (");
        q.bind(&m.name).push(", ").bind(&m.version).push(", ").bind(metadata.to_string()).push(", ");
        q.bind(actor).push(", ").bind(now_ms).push(")");
        q.query().execute(&mut *tx).await.map_err(|e| match DbError::from(e) {
            DbError::Conflict(_) => DbError::Conflict(format!("model {}@{} is already published", m.name, m.version)),
            other => other,
        })?;
        let target = format!("{}@{}", m.name, m.version);
        record(&mut tx, now_ms, actor, "model.publish", &target, serde_json::json!({"metadata": metadata})).await?;
        tx.commit().await?;
        Ok(ModelVersion {
            name: m.name.to_string(),
            version: m.version.to_string(),
            metadata,
            published_by: actor.to_string(),
            published_ms: now_ms,
            package: None,
            task: None,
        })
    }

    /// Adds a model version with its package (already in the artifact store). Publishing the
    /// same name@version again with the same bytes is [`PackagePublish::Unchanged`]; with other
    /// bytes, or over a version published without a package, it is a Conflict: a version names
    /// one set of bytes forever, or devices that verified one could be handed another.
    pub async fn publish_package(
        &self,
        entry: &ModelVersion,
        actor: &str,
        now_ms: i64,
    ) -> Result<PackagePublish, DbError> {
        let Some(package) = &entry.package else {
            return Err(DbError::Invalid("a package publish needs the package".into()));
        };
        let target = format!("{}@{}", entry.name, entry.version);
        let mut tx = self.begin_operator().await?;
        let mut q = Sql::new(&format!("SELECT {MODEL_COLUMNS} FROM models WHERE name = "));
        q.bind(&entry.name).push(" AND version = ").bind(&entry.version);
        if let Some(row) = q.query().fetch_optional(&mut *tx).await? {
            let existing = model_version(&row)?;
            return match &existing.package {
                Some(p) if p == package => Ok(PackagePublish::Unchanged(existing)),
                Some(p) => Err(DbError::Conflict(format!(
                    "model {target} is already published with other bytes (sha256 {}, {} bytes); \
                     publish the new package under a new version",
                    p.sha256, p.size_bytes
                ))),
                None => Err(DbError::Conflict(format!(
                    "model {target} is already published without a package; publish the package under a new version"
                ))),
            };
        }
        let size = i64::try_from(package.size_bytes).map_err(|_| DbError::Invalid("package too large".into()))?;
        let mut q = Sql::new(
            "INSERT INTO models (name, version, metadata, published_by, published_ms, package_sha256, package_size, task) VALUES (",
        );
        q.bind(&entry.name).push(", ").bind(&entry.version).push(", ").bind(entry.metadata.to_string()).push(", ");
        q.bind(actor).push(", ").bind(now_ms).push(", ").bind(&package.sha256).push(", ").bind(size).push(", ");
        q.bind(entry.task.clone().unwrap_or_default()).push(")");
        q.query().execute(&mut *tx).await.map_err(|e| match DbError::from(e) {
            DbError::Conflict(_) => DbError::Conflict(format!("model {target} was published at the same moment")),
            other => other,
        })?;
        let details =
            serde_json::json!({"sha256": package.sha256, "size_bytes": package.size_bytes, "task": entry.task});
        record(&mut tx, now_ms, actor, "model.publish", &target, details).await?;
        tx.commit().await?;
        Ok(PackagePublish::Created(ModelVersion {
            published_by: actor.to_string(),
            published_ms: now_ms,
            ..entry.clone()
        }))
    }

    /// One registry entry, `None` when that name@version is not published.
    pub async fn model_version(&self, name: &str, version: &str) -> Result<Option<ModelVersion>, DbError> {
        let mut q = Sql::new(&format!("SELECT {MODEL_COLUMNS} FROM models WHERE name = "));
        q.bind(name).push(" AND version = ").bind(version);
        q.query().fetch_optional(self.pool()).await?.as_ref().map(model_version).transpose()
    }

    /// Every published package by (name, version), for the device channel.
    pub async fn channel_packages(&self) -> Result<PackageIndex, DbError> {
        let rows = sqlx::query(
            "SELECT name, version, package_sha256, package_size FROM models WHERE package_sha256 IS NOT NULL",
        )
        .fetch_all(self.pool())
        .await?;
        let mut index = PackageIndex::with_capacity(rows.len());
        for row in &rows {
            if let Some(p) = package_ref(row)? {
                index.insert((row.try_get("name")?, row.try_get("version")?), p);
            }
        }
        Ok(index)
    }

    /// Registry entries ordered by name then version; the cursor is the last `name@version`.
    pub async fn list_models(&self, cursor: Option<&str>, limit: u32) -> Result<Page<ModelVersion>, DbError> {
        let limit = clamp_limit(limit);
        let mut q = Sql::new(&format!("SELECT {MODEL_COLUMNS} FROM models"));
        if let Some(c) = cursor {
            let (name, version) = model_cursor(c)?;
            q.push(" WHERE name > ").bind(name).push(" OR (name = ").bind(name);
            q.push(" AND version > ").bind(version).push(")");
        }
        q.push(" ORDER BY name, version LIMIT ").bind(limit + 1);
        let rows = q.query().fetch_all(self.operator_pool()).await?;
        let items = rows.iter().map(model_version).collect::<Result<Vec<_>, _>>()?;
        Ok(paginate(items, limit, |m| format!("{}@{}", m.name, m.version)))
    }

    /// Every version of one model, oldest published first.
    pub async fn model_versions(&self, name: &str) -> Result<Vec<ModelVersion>, DbError> {
        let mut q = Sql::new(&format!("SELECT {MODEL_COLUMNS} FROM models WHERE name = "));
        q.bind(name).push(" ORDER BY published_ms, version");
        let rows = q.query().fetch_all(self.operator_pool()).await?;
        rows.iter().map(model_version).collect()
    }

    /// Assigns a registered model version to a selector.
    pub async fn create_assignment(
        &self,
        a: &CreateAssignment,
        actor: &str,
        now_ms: i64,
    ) -> Result<Assignment, DbError> {
        let selector: Selector = a.selector.parse().map_err(|e| DbError::Invalid(format!("{e}")))?;
        // Stored in canonical form so equal selectors read the same.
        let selector = selector.to_string();
        let mut tx = self.begin_operator().await?;
        let mut q = Sql::new("SELECT name FROM models WHERE name = ");
        q.bind(&a.model).push(" AND version = ").bind(&a.version);
        if q.query().fetch_optional(&mut *tx).await?.is_none() {
            return Err(DbError::NotFound(format!("model {}@{} is not in the registry", a.model, a.version)));
        }
        let mut q = Sql::new("INSERT INTO assignments (selector, model, version, created_by, created_ms) VALUES (");
        q.bind(&selector).push(", ").bind(&a.model).push(", ").bind(&a.version).push(", ").bind(actor);
        q.push(", ").bind(now_ms).push(") RETURNING id");
        let id: i64 = q.query().fetch_one(&mut *tx).await?.try_get("id")?;
        let details = serde_json::json!({"selector": selector, "model": a.model, "version": a.version});
        record(&mut tx, now_ms, actor, "assignment.create", &id.to_string(), details).await?;
        tx.commit().await?;
        Ok(Assignment {
            id,
            selector,
            model: a.model.to_string(),
            version: a.version.to_string(),
            created_by: actor.to_string(),
            created_ms: now_ms,
        })
    }

    /// Every assignment, oldest first (operator API).
    pub async fn list_assignments(&self) -> Result<Vec<Assignment>, DbError> {
        all_assignments(self.operator_pool()).await
    }

    /// [`Db::list_assignments`] for the device channel (desired state), on the device pool.
    pub async fn channel_assignments(&self) -> Result<Vec<Assignment>, DbError> {
        all_assignments(self.pool()).await
    }

    /// Deletes an assignment; false when there is no such assignment.
    pub async fn delete_assignment(&self, id: i64, actor: &str, now_ms: i64) -> Result<bool, DbError> {
        let mut tx = self.begin_operator().await?;
        let mut q =
            Sql::new("SELECT id, selector, model, version, created_by, created_ms FROM assignments WHERE id = ");
        q.bind(id);
        let Some(row) = q.query().fetch_optional(&mut *tx).await? else {
            return Ok(false);
        };
        let old = assignment(&row)?;
        let mut q = Sql::new("DELETE FROM assignments WHERE id = ");
        q.bind(id);
        q.query().execute(&mut *tx).await?;
        let details = serde_json::json!({"selector": old.selector, "model": old.model, "version": old.version});
        record(&mut tx, now_ms, actor, "assignment.delete", &id.to_string(), details).await?;
        tx.commit().await?;
        Ok(true)
    }
}
