//! Device enrollment and revocation: the identity half of the inventory.
//!
//! Enrollment is one transaction that checks the token, creates the device with the token's
//! labels and takes one of the token's uses. The use is taken with `UPDATE ... WHERE used < uses`, so two
//! devices racing for the last use cannot both win, on either engine.

use super::audit::record;
use super::devices::labels_of;
use super::sql::Sql;
use super::tokens::secret_hash;
use super::{Db, DbError, DeviceKeyRow, EnrollOutcome, NewDevice};
use outpost_proto::fleet::selector::Labels;
use sqlx::Row;

fn decode_key(hex_key: &str, device_id: &str) -> Result<[u8; 32], DbError> {
    hex::decode(hex_key)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .ok_or_else(|| DbError::Other(format!("stored public key of device {device_id} is not 32 hex bytes")))
}

impl Db {
    /// Enrolls a device with an enrollment token (see the module docs for the rules).
    pub async fn enroll(&self, req: &NewDevice, now_ms: i64) -> Result<EnrollOutcome, DbError> {
        let mut tx = self.begin().await?;
        let mut q =
            Sql::new("SELECT id, uses, used, expires_ms, labels, revoked FROM enrollment_tokens WHERE secret_hash = ");
        q.bind(secret_hash(&req.token_secret));
        let Some(token) = q.query().fetch_optional(&mut *tx).await? else {
            return Ok(EnrollOutcome::TokenUnknown);
        };
        if token.try_get::<i64, _>("revoked")? != 0 {
            return Ok(EnrollOutcome::TokenRevoked);
        }
        let mut q = Sql::new("SELECT public_key, revoked_ms FROM devices WHERE id = ");
        q.bind(&req.device_id);
        if let Some(device) = q.query().fetch_optional(&mut *tx).await? {
            if device.try_get::<Option<i64>, _>("revoked_ms")?.is_some() {
                return Ok(EnrollOutcome::DeviceRevoked);
            }
            let stored = decode_key(&device.try_get::<String, _>("public_key")?, &req.device_id)?;
            if stored != req.public_key {
                return Err(DbError::Conflict(format!(
                    "device {} is already enrolled with a different public key",
                    req.device_id
                )));
            }
            let labels = labels_of(&mut tx, &req.device_id).await?;
            return Ok(EnrollOutcome::AlreadyEnrolled { device_id: req.device_id.clone(), labels });
        }
        if now_ms >= token.try_get::<i64, _>("expires_ms")? {
            return Ok(EnrollOutcome::TokenExpired);
        }
        let token_id: String = token.try_get("id")?;
        let labels: Labels = serde_json::from_str(&token.try_get::<String, _>("labels")?)?;
        let mut q = Sql::new("INSERT INTO devices (id, public_key, name, agent_version, hardware, enrolled_ms, ");
        q.push("enrollment_token, revoked_ms) VALUES (").bind(&req.device_id).push(", ");
        q.bind(hex::encode(req.public_key)).push(", ").bind(&req.name).push(", ").bind(&req.agent_version);
        q.push(", ").bind(serde_json::to_string(&req.hardware)?).push(", ").bind(now_ms).push(", ");
        q.bind(&token_id).push(", NULL)");
        q.query().execute(&mut *tx).await?;
        if !labels.is_empty() {
            let mut q = Sql::new("INSERT INTO device_labels (device_id, key, value) VALUES ");
            for (i, (k, v)) in labels.iter().enumerate() {
                q.push(if i == 0 { "(" } else { ", (" });
                q.bind(&req.device_id).push(", ").bind(k).push(", ").bind(v).push(")");
            }
            q.query().execute(&mut *tx).await?;
        }
        let actor = format!("device:{}", req.device_id);
        let details = serde_json::json!({"token": token_id, "name": req.name, "labels": labels});
        record(&mut tx, now_ms, &actor, "device.enroll", &req.device_id, details).await?;
        // Taking the use last holds the token row's lock (which every enrollment with this
        // token queues on) only from here to the commit; when no use is left, returning drops
        // the transaction and with it the device written above.
        let mut q = Sql::new("UPDATE enrollment_tokens SET used = used + 1 WHERE id = ");
        q.bind(&token_id).push(" AND used < uses AND revoked = 0");
        if q.query().execute(&mut *tx).await?.rows_affected() == 0 {
            return Ok(EnrollOutcome::TokenUsedUp);
        }
        super::fleet::stamp_devices(&mut tx, self.kind(), &[req.device_id.as_str()]).await?;
        tx.commit().await?;
        Ok(EnrollOutcome::Enrolled { device_id: req.device_id.clone(), labels })
    }

    /// The device's public key and whether it is revoked; None when unknown.
    pub async fn device_key(&self, device_id: &str) -> Result<Option<DeviceKeyRow>, DbError> {
        let mut q = Sql::new("SELECT public_key, revoked_ms FROM devices WHERE id = ");
        q.bind(device_id);
        let Some(row) = q.query().fetch_optional(self.pool()).await? else {
            return Ok(None);
        };
        Ok(Some(DeviceKeyRow {
            public_key: decode_key(&row.try_get::<String, _>("public_key")?, device_id)?,
            revoked: row.try_get::<Option<i64>, _>("revoked_ms")?.is_some(),
        }))
    }

    /// Revokes a device for good; false when there is no such device. Revoking twice keeps the
    /// first revocation time and is not audited again.
    pub async fn revoke_device(&self, id: &str, actor: &str, now_ms: i64) -> Result<bool, DbError> {
        let mut tx = self.begin_operator().await?;
        let mut q = Sql::new("SELECT revoked_ms FROM devices WHERE id = ");
        q.bind(id);
        let Some(row) = q.query().fetch_optional(&mut *tx).await? else {
            return Ok(false);
        };
        if row.try_get::<Option<i64>, _>("revoked_ms")?.is_none() {
            let mut q = Sql::new("UPDATE devices SET revoked_ms = ");
            q.bind(now_ms).push(" WHERE id = ").bind(id);
            q.query().execute(&mut *tx).await?;
            record(&mut tx, now_ms, actor, "device.revoke", id, serde_json::json!({})).await?;
            super::fleet::stamp_devices(&mut tx, self.kind(), &[id]).await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}
