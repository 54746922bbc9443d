//! Reading the devices' latest drift windows (`device_drift`, written with the reports).

use super::sql::Sql;
use super::{Db, DbError};
use outpost_proto::fleet::drift::DriftReport;
use outpost_proto::fleet::Labels;
use sqlx::Row;
use std::collections::HashMap;

/// One device's latest drift window for one model, with the device's labels.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftEntry {
    /// The device.
    pub device_id: String,
    /// The model.
    pub model: String,
    /// The version the window is about.
    pub version: String,
    /// The device's labels.
    pub labels: Labels,
    /// Since when the device has been at the alert level for this model (server clock).
    pub alert_since_ms: Option<i64>,
    /// The window.
    pub report: DriftReport,
}

impl Db {
    /// The windows received since `fresh_since_ms`, of `model` (or every model).
    pub async fn drift_entries(&self, model: Option<&str>, fresh_since_ms: i64) -> Result<Vec<DriftEntry>, DbError> {
        let mut q = Sql::new(
            "SELECT device_id, model, version, alert_since_ms, report FROM device_drift WHERE received_ms >= ",
        );
        q.bind(fresh_since_ms);
        if let Some(m) = model {
            q.push(" AND model = ").bind(m);
        }
        q.push(" ORDER BY model, version, device_id");
        let rows = q.query().fetch_all(self.operator_pool()).await?;
        let mut q = Sql::new(
            "SELECT l.device_id, l.key, l.value FROM device_labels l WHERE l.device_id IN \
             (SELECT device_id FROM device_drift WHERE received_ms >= ",
        );
        q.bind(fresh_since_ms).push(")");
        let mut labels: HashMap<String, Labels> = HashMap::new();
        for row in q.query().fetch_all(self.operator_pool()).await? {
            labels.entry(row.try_get("device_id")?).or_default().insert(row.try_get("key")?, row.try_get("value")?);
        }
        rows.iter()
            .map(|row| {
                let device_id: String = row.try_get("device_id")?;
                let report: String = row.try_get("report")?;
                Ok(DriftEntry {
                    labels: labels.get(&device_id).cloned().unwrap_or_default(),
                    device_id,
                    model: row.try_get("model")?,
                    version: row.try_get("version")?,
                    alert_since_ms: row.try_get("alert_since_ms")?,
                    report: serde_json::from_str(&report)?,
                })
            })
            .collect()
    }

    /// Deletes windows received before `older_than_ms`; returns how many.
    pub async fn prune_drift(&self, older_than_ms: i64) -> Result<u64, DbError> {
        let mut q = Sql::new("DELETE FROM device_drift WHERE received_ms < ");
        q.bind(older_than_ms);
        Ok(q.query().execute(self.pool()).await?.rows_affected())
    }
}
