//! Delta plans between two stored packages, made the first time a device asks for one and
//! kept in the artifact store beside the packages (`deltas/<new>-<base>.plan` and `.blobs`;
//! the plan is written last, so its presence means the pair is complete). Building is
//! CPU-heavy (every changed tensor compressed a few ways), so one pair is built at a time, and
//! a thousand devices asking for the same pair wait for one build instead of starting a
//! thousand.

use super::ArtifactStore;
use crate::error::ApiError;
use outpost_delta::{Index, Plan};
use outpost_proto::fleet::api::PackageRef;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Store directory of plans and blobs.
pub const DIR: &str = "deltas";

/// Builds and finds delta plans.
#[derive(Debug)]
pub struct Deltas {
    work: PathBuf,
    pairs: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    builds: tokio::sync::Semaphore,
}

/// A stored plan: its object names and sizes.
#[derive(Debug, Clone)]
pub struct StoredDelta {
    /// The plan object's name under [`DIR`].
    pub plan: String,
    /// The plan's bytes.
    pub plan_size: u64,
    /// The blob object's name under [`DIR`].
    pub blobs: String,
    /// The blob file's bytes.
    pub blobs_size: u64,
}

/// Removes the files it names when dropped.
struct Scratch(Vec<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn names(new: &PackageRef, base: &PackageRef) -> (String, String) {
    let stem = format!("{}-{}", new.sha256, base.sha256);
    (format!("{stem}.plan"), format!("{stem}.blobs"))
}

impl Deltas {
    /// Builds in `work` (a scratch directory under the data dir, emptied at start).
    pub fn new(work: PathBuf) -> Deltas {
        let _ = std::fs::remove_dir_all(&work);
        Deltas { work, pairs: Mutex::new(HashMap::new()), builds: tokio::sync::Semaphore::new(1) }
    }

    async fn find(
        &self,
        store: &ArtifactStore,
        new: &PackageRef,
        base: &PackageRef,
    ) -> Result<Option<StoredDelta>, ApiError> {
        let (plan, blobs) = names(new, base);
        let Some(plan_size) = store.derived_size(DIR, &plan).await? else { return Ok(None) };
        let Some(blobs_size) = store.derived_size(DIR, &blobs).await? else { return Ok(None) };
        Ok(Some(StoredDelta { plan, plan_size, blobs, blobs_size }))
    }

    /// The plan that rebuilds `new` from `base`, built now if the store does not hold it.
    pub async fn get_or_build(
        &self,
        store: &ArtifactStore,
        new: &PackageRef,
        base: &PackageRef,
    ) -> Result<StoredDelta, ApiError> {
        if let Some(found) = self.find(store, new, base).await? {
            return Ok(found);
        }
        let (plan_name, blobs_name) = names(new, base);
        let pair = {
            let mut pairs = self.pairs.lock().unwrap_or_else(|p| p.into_inner());
            pairs.entry(plan_name.clone()).or_default().clone()
        };
        let _this_pair = pair.lock().await;
        if let Some(found) = self.find(store, new, base).await? {
            return Ok(found);
        }
        let _one_build = self.builds.acquire().await.map_err(|e| ApiError::Internal(e.to_string()))?;
        std::fs::create_dir_all(&self.work).map_err(|e| ApiError::Internal(format!("{}: {e}", self.work.display())))?;
        let tag = format!("{:016x}", rand::random::<u64>());
        let file = |what: &str| self.work.join(format!("{tag}.{what}"));
        let (new_path, base_path, plan_path, blobs_path) = (file("new"), file("base"), file("plan"), file("blobs"));
        let _scratch = Scratch(vec![new_path.clone(), base_path.clone(), plan_path.clone(), blobs_path.clone()]);
        store.fetch_package(&new.sha256, &new_path).await?;
        store.fetch_package(&base.sha256, &base_path).await?;
        let started = std::time::Instant::now();
        let (np, bp, pp, blp) = (new_path.clone(), base_path.clone(), plan_path.clone(), blobs_path.clone());
        let plan = tokio::task::spawn_blocking(move || build(&np, &bp, &pp, &blp))
            .await
            .map_err(|e| ApiError::Internal(format!("delta build panicked: {e}")))??;
        let plan_size = std::fs::metadata(&plan_path).map(|m| m.len()).unwrap_or(0);
        tracing::info!(
            new = %new.sha256, base = %base.sha256, full = new.size_bytes, plan = plan_size,
            blobs = plan.blobs_size, referenced = plan.savings().referenced,
            ms = started.elapsed().as_millis() as u64, "delta built"
        );
        if plan.target.sha256 != new.sha256 || plan.target.size != new.size_bytes {
            return Err(ApiError::Internal(format!(
                "the stored package {} does not hash to its name; the artifact store is corrupt",
                new.sha256
            )));
        }
        store.put_derived(DIR, &blobs_name, &blobs_path).await?;
        store.put_derived(DIR, &plan_name, &plan_path).await?;
        self.pairs.lock().unwrap_or_else(|p| p.into_inner()).remove(&plan_name);
        Ok(StoredDelta { plan: plan_name, plan_size, blobs: blobs_name, blobs_size: plan.blobs_size })
    }
}

impl Deltas {
    /// The piece index of `package`, kept as `indexes/<sha256>.json` after the first request.
    pub async fn index(&self, store: &ArtifactStore, package: &PackageRef) -> Result<Index, ApiError> {
        let name = format!("{}.json", package.sha256);
        if store.derived_size("indexes", &name).await?.is_some() {
            let bytes = store.get_derived("indexes", &name, None).await?.bytes().await;
            let bytes = bytes.map_err(|e| ApiError::ArtifactStoreUnavailable(format!("artifact store: read: {e}")))?;
            if let Ok(index) = serde_json::from_slice(&bytes) {
                return Ok(index);
            }
        }
        std::fs::create_dir_all(&self.work).map_err(|e| ApiError::Internal(format!("{}: {e}", self.work.display())))?;
        let tag = format!("{:016x}", rand::random::<u64>());
        let (path, json) = (self.work.join(format!("{tag}.pkg")), self.work.join(format!("{tag}.json")));
        let _scratch = Scratch(vec![path.clone(), json.clone()]);
        store.fetch_package(&package.sha256, &path).await?;
        let p = path.clone();
        let index = tokio::task::spawn_blocking(move || Index::of_package(&p))
            .await
            .map_err(|e| ApiError::Internal(format!("indexing panicked: {e}")))?
            .map_err(|e| ApiError::Internal(format!("indexing: {e}")))?;
        let text = serde_json::to_vec(&index).map_err(|e| ApiError::Internal(e.to_string()))?;
        std::fs::write(&json, text).map_err(|e| ApiError::Internal(format!("{}: {e}", json.display())))?;
        store.put_derived("indexes", &name, &json).await?;
        Ok(index)
    }
}

fn build(new: &Path, base: &Path, plan_path: &Path, blobs_path: &Path) -> Result<Plan, ApiError> {
    let err = |e: outpost_delta::DeltaError| ApiError::Internal(format!("delta build: {e}"));
    let (ni, bi) = (Index::of_package(new).map_err(err)?, Index::of_package(base).map_err(err)?);
    let mut blobs = std::io::BufWriter::new(
        std::fs::File::create(blobs_path).map_err(|e| ApiError::Internal(format!("delta build: {e}")))?,
    );
    let plan = Plan::make(new, &ni, Some((base, &bi)), &mut blobs).map_err(err)?;
    std::io::Write::flush(&mut blobs).map_err(|e| ApiError::Internal(format!("delta build: {e}")))?;
    std::fs::write(plan_path, plan.to_bytes().map_err(err)?)
        .map_err(|e| ApiError::Internal(format!("delta build: {e}")))?;
    Ok(plan)
}
