//! The state every handler shares, and the desired-state computation that needs the database
//! (the pure part lives in [`crate::desired`]).

use crate::auth::{DeviceAuth, TokenCache};
use crate::config::ServerConfig;
use crate::db::Db;
use crate::desired::{desired_state, DesiredInputs, Fleetwide, ParsedAssignment};
use crate::error::ApiError;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::reports::ReportQueue;
use outpost_proto::fleet::device::DesiredState;
use std::sync::Arc;
use tokio::sync::watch;

/// Shared handler state.
pub struct AppState {
    /// Storage.
    pub db: Db,
    /// Configuration.
    pub config: ServerConfig,
    /// Long-poll wake-ups and caches.
    pub hub: Hub,
    /// Operator token cache.
    pub tokens: TokenCache,
    /// Device request verification.
    pub devices: DeviceAuth,
    /// Group-commit report writer.
    pub reports: ReportQueue,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Model package bytes.
    pub artifacts: crate::artifacts::ArtifactStore,
    /// The TUF repository of the packages.
    pub tuf: crate::tuf::TufRepo,
    /// Delta plans between stored packages, built on first request.
    pub deltas: Arc<crate::artifacts::delta::Deltas>,
    /// Permits for package uploads received at once.
    pub uploads: Arc<tokio::sync::Semaphore>,
    /// Turns true when the server is shutting down (long-polls end early).
    pub shutdown: watch::Receiver<bool>,
}

/// The state as handlers receive it.
pub type SharedState = Arc<AppState>;

/// Now, Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl AppState {
    /// The parsed assignment list, oldest first, and the package index (cached until an
    /// assignment changes or a version is published).
    pub async fn assignments(&self) -> Result<Arc<Fleetwide>, ApiError> {
        if let Some(list) = self.hub.cached_assignments() {
            return Ok(list);
        }
        let epoch = self.hub.epoch();
        let (assignments, packages) = tokio::try_join!(self.db.channel_assignments(), self.db.channel_packages())?;
        let list =
            Arc::new(Fleetwide { assignments: assignments.into_iter().map(ParsedAssignment::new).collect(), packages });
        self.hub.store_assignments(epoch, list.clone());
        Ok(list)
    }

    /// A device's desired state, `None` when the device does not exist.
    pub async fn desired_for(&self, device_id: &str) -> Result<Option<DesiredState>, ApiError> {
        let epoch = self.hub.epoch();
        let (labels, device_override, commands, rollouts, assignments) = tokio::try_join!(
            async { self.db.channel_device_labels(device_id).await.map_err(ApiError::from) },
            async { self.db.channel_override(device_id).await.map_err(ApiError::from) },
            async { self.db.open_commands(device_id).await.map_err(ApiError::from) },
            async { self.db.channel_rollout_targets(device_id).await.map_err(ApiError::from) },
            self.assignments(),
        )?;
        let Some(labels) = labels else { return Ok(None) };
        let state = desired_state(DesiredInputs {
            assignments: &assignments.assignments,
            packages: &assignments.packages,
            labels: &labels,
            device_override: device_override.as_ref(),
            rollouts: &rollouts,
            commands: &commands,
            heartbeat_interval_s: self.config.heartbeat_interval_s,
        });
        self.hub.store_etag(epoch, device_id, &state.etag);
        Ok(Some(state))
    }

    /// The device's current desired-state ETag, from the cache when valid.
    pub async fn desired_etag(&self, device_id: &str) -> Result<String, ApiError> {
        if let Some(etag) = self.hub.cached_etag(device_id) {
            return Ok(etag);
        }
        match self.desired_for(device_id).await? {
            Some(state) => Ok(state.etag),
            None => Err(ApiError::UnknownDevice(format!("device {device_id:?} is not enrolled; enroll it first"))),
        }
    }
}
