//! Enrollment tokens (let devices join) and operator API tokens (let people and scripts in).
//! Only the SHA-256 of a secret is stored, so a leaked database does not leak working tokens.

use super::audit::{paginate, record};
use super::sql::{clamp_limit, Sql};
use super::{Db, DbError};
use base64::Engine;
use outpost_proto::fleet::api::{ApiToken, CreateApiToken, CreateEnrollmentToken, EnrollmentToken, Page, Role};
use outpost_proto::fleet::selector::{validate_key, validate_value, Labels};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::Row;

/// A new random secret: `prefix` + 32 random bytes, base64url without padding.
pub(crate) fn new_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// A short random id: `prefix` + 8 lowercase alphanumerics.
pub(crate) fn new_id(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..8).map(|_| ALPHABET[(rng.next_u32() as usize) % ALPHABET.len()] as char).collect();
    format!("{prefix}{tail}")
}

/// Hex SHA-256 of a secret: what the database stores and looks up.
pub(crate) fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Whether a name is empty or only ASCII white space (the OpenAPI document's pattern says the
/// same, so that generated clients and the server agree).
pub fn is_blank(name: &str) -> bool {
    name.chars().all(|c| matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c'))
}

/// Checks every label key and value.
pub(crate) fn validate_labels(labels: &Labels) -> Result<(), DbError> {
    for (k, v) in labels {
        validate_key(k).map_err(|e| DbError::Invalid(e.to_string()))?;
        validate_value(v).map_err(|e| DbError::Invalid(e.to_string()))?;
    }
    Ok(())
}

const ENROLLMENT_COLUMNS: &str = "id, uses, used, expires_ms, labels, note, created_by, created_ms, revoked";

fn enrollment_token(row: &AnyRow) -> Result<EnrollmentToken, DbError> {
    let labels: String = row.try_get("labels")?;
    let uses: i64 = row.try_get("uses")?;
    let used: i64 = row.try_get("used")?;
    Ok(EnrollmentToken {
        id: row.try_get("id")?,
        secret: None,
        uses: u32::try_from(uses).unwrap_or(u32::MAX),
        used: u32::try_from(used).unwrap_or(u32::MAX),
        expires_ms: row.try_get("expires_ms")?,
        labels: serde_json::from_str(&labels)?,
        note: row.try_get("note")?,
        created_by: row.try_get("created_by")?,
        created_ms: row.try_get("created_ms")?,
        revoked: row.try_get::<i64, _>("revoked")? != 0,
    })
}

const API_COLUMNS: &str = "id, name, role, expires_ms, created_by, created_ms, revoked";

fn api_token(row: &AnyRow) -> Result<ApiToken, DbError> {
    let role: String = row.try_get("role")?;
    Ok(ApiToken {
        id: row.try_get("id")?,
        secret: None,
        name: row.try_get("name")?,
        role: Role::parse(&role).ok_or_else(|| DbError::Other(format!("stored API token role {role:?} is unknown")))?,
        expires_ms: row.try_get("expires_ms")?,
        created_by: row.try_get("created_by")?,
        created_ms: row.try_get("created_ms")?,
        revoked: row.try_get::<i64, _>("revoked")? != 0,
    })
}

fn expiry(now_ms: i64, seconds: u64) -> i64 {
    now_ms.saturating_add(i64::try_from(seconds).unwrap_or(i64::MAX).saturating_mul(1000))
}

impl Db {
    /// Creates an enrollment token; the returned value carries the secret (shown once).
    pub async fn create_enrollment_token(
        &self,
        req: &CreateEnrollmentToken,
        actor: &str,
        now_ms: i64,
    ) -> Result<EnrollmentToken, DbError> {
        validate_labels(&req.labels)?;
        if req.uses == 0 {
            return Err(DbError::Invalid("an enrollment token needs at least 1 use".into()));
        }
        let secret = new_secret("oet_");
        let token = EnrollmentToken {
            id: new_id("et-"),
            secret: Some(secret.clone()),
            uses: req.uses,
            used: 0,
            expires_ms: expiry(now_ms, req.expires_in_s),
            labels: req.labels.clone(),
            note: req.note.clone(),
            created_by: actor.to_string(),
            created_ms: now_ms,
            revoked: false,
        };
        let mut tx = self.begin_operator().await?;
        let mut q = Sql::new("INSERT INTO enrollment_tokens (id, secret_hash, uses, used, expires_ms, labels, note, ");
        q.push("created_by, created_ms, revoked) VALUES (").bind(&token.id).push(", ").bind(secret_hash(&secret));
        q.push(", ").bind(i64::from(token.uses)).push(", 0, ").bind(token.expires_ms).push(", ");
        q.bind(serde_json::to_string(&token.labels)?).push(", ").bind(&token.note).push(", ").bind(actor);
        q.push(", ").bind(now_ms).push(", 0)");
        q.query().execute(&mut *tx).await?;
        let details = serde_json::json!({"uses": token.uses, "expires_ms": token.expires_ms, "labels": token.labels, "note": token.note});
        record(&mut tx, now_ms, actor, "enrollment_token.create", &token.id, details).await?;
        tx.commit().await?;
        Ok(token)
    }

    /// Enrollment tokens by id; the cursor is the last token's id.
    pub async fn list_enrollment_tokens(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<EnrollmentToken>, DbError> {
        let limit = clamp_limit(limit);
        let mut q = Sql::new(&format!("SELECT {ENROLLMENT_COLUMNS} FROM enrollment_tokens"));
        if let Some(c) = cursor {
            q.push(" WHERE id > ").bind(c);
        }
        q.push(" ORDER BY id LIMIT ").bind(limit + 1);
        let rows = q.query().fetch_all(self.operator_pool()).await?;
        let items = rows.iter().map(enrollment_token).collect::<Result<Vec<_>, _>>()?;
        Ok(paginate(items, limit, |t| t.id.clone()))
    }

    /// Revokes an enrollment token; false when there is no such token. Revoking twice is a
    /// no-op that still answers true and is not audited again.
    pub async fn revoke_enrollment_token(&self, id: &str, actor: &str, now_ms: i64) -> Result<bool, DbError> {
        self.revoke_token("enrollment_tokens", "enrollment_token.revoke", id, actor, now_ms).await
    }

    async fn revoke_token(
        &self,
        table: &str,
        action: &str,
        id: &str,
        actor: &str,
        now_ms: i64,
    ) -> Result<bool, DbError> {
        let mut tx = self.begin_operator().await?;
        let mut q = Sql::new(&format!("SELECT revoked FROM {table} WHERE id = "));
        q.bind(id);
        let Some(row) = q.query().fetch_optional(&mut *tx).await? else {
            return Ok(false);
        };
        if row.try_get::<i64, _>("revoked")? == 0 {
            let mut q = Sql::new(&format!("UPDATE {table} SET revoked = 1 WHERE id = "));
            q.bind(id);
            q.query().execute(&mut *tx).await?;
            record(&mut tx, now_ms, actor, action, id, serde_json::json!({})).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Creates an operator API token; the returned value carries the secret (shown once).
    pub async fn create_api_token(&self, req: &CreateApiToken, actor: &str, now_ms: i64) -> Result<ApiToken, DbError> {
        if is_blank(&req.name) {
            return Err(DbError::Invalid("an API token needs a name".into()));
        }
        let mut tx = self.begin_operator().await?;
        let token = insert_api_token(&mut tx, req, actor, now_ms).await?;
        let details = serde_json::json!({"name": token.name, "role": token.role, "expires_ms": token.expires_ms});
        record(&mut tx, now_ms, actor, "api_token.create", &token.id, details).await?;
        tx.commit().await?;
        Ok(token)
    }

    /// Creates the first admin token, only when no API token exists at all (first start).
    pub async fn bootstrap_admin_token(&self, now_ms: i64) -> Result<Option<ApiToken>, DbError> {
        let mut tx = self.begin().await?;
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_tokens").fetch_one(&mut *tx).await?;
        if count > 0 {
            return Ok(None);
        }
        let req = CreateApiToken { name: "bootstrap-admin".into(), role: Role::Admin, expires_in_s: None };
        let token = insert_api_token(&mut tx, &req, "server", now_ms).await?;
        let details = serde_json::json!({"name": token.name, "role": token.role, "bootstrap": true});
        record(&mut tx, now_ms, "server", "api_token.create", &token.id, details).await?;
        tx.commit().await?;
        Ok(Some(token))
    }

    /// Looks a token up by its bearer secret (the caller checks expiry and revocation).
    pub async fn api_token_by_secret(&self, secret: &str) -> Result<Option<ApiToken>, DbError> {
        let mut q = Sql::new(&format!("SELECT {API_COLUMNS} FROM api_tokens WHERE secret_hash = "));
        q.bind(secret_hash(secret));
        q.query().fetch_optional(self.operator_pool()).await?.as_ref().map(api_token).transpose()
    }

    /// API tokens by id; the cursor is the last token's id.
    pub async fn list_api_tokens(&self, cursor: Option<&str>, limit: u32) -> Result<Page<ApiToken>, DbError> {
        let limit = clamp_limit(limit);
        let mut q = Sql::new(&format!("SELECT {API_COLUMNS} FROM api_tokens"));
        if let Some(c) = cursor {
            q.push(" WHERE id > ").bind(c);
        }
        q.push(" ORDER BY id LIMIT ").bind(limit + 1);
        let rows = q.query().fetch_all(self.operator_pool()).await?;
        let items = rows.iter().map(api_token).collect::<Result<Vec<_>, _>>()?;
        Ok(paginate(items, limit, |t| t.id.clone()))
    }

    /// Revokes an API token. Refuses to revoke the last active admin token, which would lock
    /// every operator out (recovery is then only `outpost server admin-token` on the server).
    pub async fn revoke_api_token(&self, id: &str, actor: &str, now_ms: i64) -> Result<RevokeOutcome, DbError> {
        let mut tx = self.begin_operator().await?;
        // PostgreSQL: lock the active admin rows so that two admins revoking each other at the
        // same time cannot both succeed. SQLite's BEGIN IMMEDIATE already serialises writers.
        let lock = if self.kind() == super::DbKind::Postgres { " FOR UPDATE" } else { "" };
        let mut q = Sql::new("SELECT id FROM api_tokens WHERE role = 'admin' AND revoked = 0");
        q.push(" AND (expires_ms IS NULL OR expires_ms > ").bind(now_ms).push(")").push(lock);
        let admins: Vec<String> =
            q.query().fetch_all(&mut *tx).await?.iter().map(|r| r.try_get("id")).collect::<Result<_, _>>()?;
        let mut q = Sql::new("SELECT revoked FROM api_tokens WHERE id = ");
        q.bind(id);
        let Some(row) = q.query().fetch_optional(&mut *tx).await? else {
            return Ok(RevokeOutcome::NotFound);
        };
        if row.try_get::<i64, _>("revoked")? != 0 {
            return Ok(RevokeOutcome::Revoked);
        }
        if admins.len() == 1 && admins[0] == id {
            return Ok(RevokeOutcome::LastAdmin);
        }
        let mut q = Sql::new("UPDATE api_tokens SET revoked = 1 WHERE id = ");
        q.bind(id);
        q.query().execute(&mut *tx).await?;
        record(&mut tx, now_ms, actor, "api_token.revoke", id, serde_json::json!({})).await?;
        tx.commit().await?;
        Ok(RevokeOutcome::Revoked)
    }

    /// Mints a new admin token without going through the API: the local recovery path
    /// (`outpost server admin-token`) for an operator who lost every admin token.
    pub async fn recover_admin_token(&self, name: &str, actor: &str, now_ms: i64) -> Result<ApiToken, DbError> {
        if is_blank(name) || name.chars().count() > 200 {
            return Err(DbError::Invalid("an API token needs a name of 1-200 characters".into()));
        }
        let mut tx = self.begin().await?;
        let req = CreateApiToken { name: name.to_string(), role: Role::Admin, expires_in_s: None };
        let token = insert_api_token(&mut tx, &req, actor, now_ms).await?;
        let details = serde_json::json!({"name": token.name, "role": token.role, "recovery": true});
        record(&mut tx, now_ms, actor, "api_token.create", &token.id, details).await?;
        tx.commit().await?;
        Ok(token)
    }
}

/// What revoking an API token did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeOutcome {
    /// The token is revoked (now, or it already was).
    Revoked,
    /// No token has this id.
    NotFound,
    /// It is the only active admin token; revoking it would lock every operator out.
    LastAdmin,
}

async fn insert_api_token(
    conn: &mut sqlx::AnyConnection,
    req: &CreateApiToken,
    actor: &str,
    now_ms: i64,
) -> Result<ApiToken, DbError> {
    let secret = new_secret("opt_");
    let token = ApiToken {
        id: new_id("at-"),
        secret: Some(secret.clone()),
        name: req.name.clone(),
        role: req.role,
        expires_ms: req.expires_in_s.map(|s| expiry(now_ms, s)),
        created_by: actor.to_string(),
        created_ms: now_ms,
        revoked: false,
    };
    let mut q = Sql::new("INSERT INTO api_tokens (id, secret_hash, name, role, expires_ms, created_by, created_ms, ");
    q.push("revoked) VALUES (").bind(&token.id).push(", ").bind(secret_hash(&secret)).push(", ").bind(&token.name);
    q.push(", ").bind(token.role.as_str()).push(", ").bind(token.expires_ms).push(", ").bind(actor);
    q.push(", ").bind(now_ms).push(", 0)");
    q.query().execute(conn).await?;
    Ok(token)
}
