//! Fleet summary: device counts by status, health, agent version and served model, computed by
//! the database with GROUP BY so it stays cheap for large fleets.

use super::select::{push_selector, push_status_case};
use super::sql::Sql;
use super::{Db, DbError, Thresholds};
use outpost_proto::fleet::api::FleetSummary;
use outpost_proto::fleet::selector::Selector;
use sqlx::Row;

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl Db {
    /// Counts of the devices a selector matches. Devices that never reported count under
    /// health `unknown`; `by_model_version` counts devices per `name@version` in their last
    /// report, whatever the model's state; `updates_by_model_version` counts devices per
    /// version on its way to them, by update state.
    pub async fn fleet_summary(
        &self,
        selector: &Selector,
        now_ms: i64,
        th: Thresholds,
    ) -> Result<FleetSummary, DbError> {
        // One grouping over the three per-device attributes; the combinations are few.
        let mut q = Sql::new("SELECT ");
        push_status_case(&mut q, now_ms, th);
        q.push(
            " AS st, COALESCE(s.health, 'unknown') AS health, COALESCE(s.agent_version, d.agent_version) AS version, \
             COUNT(*) AS n FROM devices d LEFT JOIN device_status s ON s.device_id = d.id WHERE 1 = 1",
        );
        push_selector(&mut q, selector);
        q.push(" GROUP BY 1, 2, 3");
        let mut models = Sql::new(
            "SELECT m.name, m.version, COUNT(DISTINCT m.device_id) AS n FROM device_models m \
             JOIN devices d ON d.id = m.device_id WHERE m.state NOT LIKE 'update:%' AND m.state NOT LIKE 'shadow:%'",
        );
        push_selector(&mut models, selector);
        models.push(" GROUP BY m.name, m.version");
        let mut updates = Sql::new(
            "SELECT m.name, m.version, m.state, COUNT(DISTINCT m.device_id) AS n FROM device_models m \
             JOIN devices d ON d.id = m.device_id WHERE m.state LIKE 'update:%'",
        );
        push_selector(&mut updates, selector);
        updates.push(" GROUP BY m.name, m.version, m.state");
        let (groups, model_rows, update_rows) = self
            .operator_deadline(async {
                let mut conn = self.operator_conn().await?;
                let groups = q.query().fetch_all(&mut *conn).await?;
                let model_rows = models.query().fetch_all(&mut *conn).await?;
                let update_rows = updates.query().fetch_all(&mut *conn).await?;
                conn.finish();
                Ok::<_, DbError>((groups, model_rows, update_rows))
            })
            .await?;
        let mut summary = FleetSummary::default();
        for row in groups {
            let n = count(row.try_get("n")?);
            summary.devices += n;
            *summary.by_status.entry(row.try_get("st")?).or_default() += n;
            *summary.by_health.entry(row.try_get("health")?).or_default() += n;
            *summary.by_agent_version.entry(row.try_get("version")?).or_default() += n;
        }
        for row in model_rows {
            let key = format!("{}@{}", row.try_get::<String, _>("name")?, row.try_get::<String, _>("version")?);
            summary.by_model_version.insert(key, count(row.try_get("n")?));
        }
        for row in update_rows {
            let key = format!("{}@{}", row.try_get::<String, _>("name")?, row.try_get::<String, _>("version")?);
            let state: String = row.try_get("state")?;
            let state = state.trim_start_matches("update:").to_string();
            summary.updates_by_model_version.entry(key).or_default().insert(state, count(row.try_get("n")?));
        }
        Ok(summary)
    }
}
