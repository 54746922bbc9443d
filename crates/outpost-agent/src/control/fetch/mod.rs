//! Downloads the packages of desired model versions the device does not hold.
//!
//! A package is written under a dot-name in the model directory's `.staging/` (the store never
//! reads dot-names), checked against the length and sha256 the server published, synced, and
//! renamed to `<name>-<version>.opkg` in one step, then the directory is synced: a crash or
//! power cut leaves either no package or the whole verified one, never half of one the store
//! could load. An interrupted download resumes with an HTTP `Range` request from what the
//! staging file holds (hashed again on resume: the hasher's state is not on disk). A download
//! that does not match is deleted and tried again a few times; a disk without room for it
//! fails at once, before a byte is fetched. Failures are reported with a typed kind and tried
//! again when the desired version changes, when the server raises the desired `attempt` above
//! the one the failed download was started under (an operator's retry), or after
//! [`RETRY_FAILED_AFTER`].

mod delta;

pub use delta::{delta_error_is_transient, DELTA_MISSES, MAX_PLAN_BYTES};

use super::client::{ClientError, DeviceClient};
use super::system::disk_space;
use crate::store::ModelStore;
use outpost_proto::fleet::api::PackageRef;
use outpost_proto::fleet::device::{DesiredModel, FailureKind, UpdateReport};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A download whose bytes do not hash right is tried again from zero this many times.
pub const MISMATCH_ATTEMPTS: u32 = 3;
/// Longest wait for the next bytes of a download before it counts as broken off.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// A failed version is tried again after this long even when the desired state is unchanged.
pub const RETRY_FAILED_AFTER: Duration = Duration::from_secs(600);
/// Room left free on the disk beyond the package itself.
const DISK_MARGIN: u64 = 1 << 20;

/// Where one wanted version stands.
#[derive(Debug, Clone, PartialEq)]
pub enum FetchState {
    /// Bytes are arriving.
    Downloading,
    /// All bytes are in; checking length and hash.
    Verifying,
    /// Verified and renamed into the model directory; the store loads it from there.
    Installed,
    /// Given up until the desired state changes, the desired attempt rises or the retry time
    /// passes.
    Failed {
        /// What kind of failure.
        kind: FailureKind,
        /// In words.
        reason: String,
        /// When.
        at: Instant,
    },
}

#[derive(Debug, Clone)]
struct Job {
    version: String,
    package: PackageRef,
    state: FetchState,
    fetched: u64,
    /// The version a delta is being rebuilt from.
    delta_from: Option<String>,
    /// A delta failed in a way a whole download may not: fetch the whole package.
    no_delta: bool,
    /// Delta pieces that did not verify, in a row.
    delta_misses: u32,
    /// The desired `attempt` this job was started under.
    attempt: u32,
}

/// The downloads of one agent.
#[derive(Debug)]
pub struct Fetcher {
    client: DeviceClient,
    dir: PathBuf,
    store: Arc<ModelStore>,
    jobs: Mutex<HashMap<String, Job>>,
    /// Trusted TUF metadata (`<data_dir>/tuf`), when the device has a TUF root; one refresh at
    /// a time.
    tuf: Option<Arc<(PathBuf, tokio::sync::Mutex<()>)>>,
}

/// Why one attempt failed.
enum Attempt {
    /// Worth another try soon (network, server, stall).
    Transient(String),
    /// The bytes were wrong (length or hash): the staging file is gone, start from zero.
    Mismatch(String),
    /// Give up until the desired state changes.
    Fatal(FailureKind, String),
    /// The desired version changed meanwhile.
    Cancelled,
}

/// Whether `wanted` needs a new download given the model's current `job`: none yet, another
/// package, a failure the server asks to retry (a higher attempt) or old enough to try again,
/// or an installed package deleted from disk since.
fn starts_again(job: Option<&Job>, wanted: &DesiredModel, package: &PackageRef) -> bool {
    match job {
        None => true,
        Some(job) if &job.package != package => true,
        Some(Job { state: FetchState::Failed { at, .. }, attempt, .. }) => {
            wanted.attempt > *attempt || at.elapsed() >= RETRY_FAILED_AFTER
        }
        Some(Job { state: FetchState::Installed, .. }) => true,
        Some(_) => false,
    }
}

/// The file a version is installed as.
pub fn installed_path(dir: &Path, name: &str, version: &str) -> PathBuf {
    dir.join(format!("{name}-{version}.opkg"))
}

fn staging_path(dir: &Path, name: &str, version: &str, sha256: &str) -> PathBuf {
    let short = sha256.get(..16).unwrap_or(sha256);
    dir.join(".staging").join(format!(".{name}-{version}-{short}.part"))
}

impl Fetcher {
    /// A fetcher installing into `dir` and telling `store` when a package arrived. With
    /// `tuf`, the trusted-metadata directory (already holding a root), every package must be
    /// vouched for by the server's TUF repository before a byte of it is fetched.
    pub fn new(client: DeviceClient, dir: PathBuf, store: Arc<ModelStore>, tuf: Option<PathBuf>) -> Arc<Fetcher> {
        let tuf = tuf.map(|d| Arc::new((d, tokio::sync::Mutex::new(()))));
        Arc::new(Fetcher { client, dir, store, jobs: Mutex::new(HashMap::new()), tuf })
    }

    /// A fetcher with its own jobs (one per model name, like this one's) and the same client,
    /// directory and trusted metadata, whose refreshes it takes turns with: shadow candidates
    /// download through one beside the desired versions' downloads.
    pub fn sibling(&self) -> Arc<Fetcher> {
        Arc::new(Fetcher {
            client: self.client.clone(),
            dir: self.dir.clone(),
            store: self.store.clone(),
            jobs: Mutex::new(HashMap::new()),
            tuf: self.tuf.clone(),
        })
    }

    /// Checks `package` against the signed TUF targets (`NAME/NAME-VERSION.opkg`) after a
    /// refresh of the trusted metadata; a no-op without a TUF root.
    async fn vouch(&self, name: &str, version: &str, package: &PackageRef) -> Result<(), Attempt> {
        let Some((dir, lock)) = self.tuf.as_deref() else { return Ok(()) };
        let _one_at_a_time = lock.lock().await;
        let base = self.client.base();
        let remote = outpost_tuf::HttpRemote::new(
            self.client.http().clone(),
            &format!("{base}/tuf/metadata"),
            &format!("{base}/tuf/targets"),
        );
        let untrusted = |e: outpost_tuf::TufError| {
            if e.is_transport() {
                Attempt::Transient(format!("TUF metadata: {e}"))
            } else {
                Attempt::Fatal(FailureKind::Untrusted, format!("TUF: {e}"))
            }
        };
        let mut client = outpost_tuf::TufClient::open(dir, remote).map_err(untrusted)?;
        let now = jiff::Timestamp::now();
        client.refresh(now).await.map_err(untrusted)?;
        let path = format!("{name}/{name}-{version}.opkg");
        let info = client.target(&path, now).await.map_err(untrusted)?;
        let sha = info.hashes.get("sha256").map(String::as_str).unwrap_or("");
        if info.length != package.size_bytes || sha != package.sha256 {
            return Err(Attempt::Fatal(
                FailureKind::Untrusted,
                format!(
                    "TUF targets list {path} as {} bytes with sha256 {sha}, the desired state names {} bytes with sha256 {}",
                    info.length, package.size_bytes, package.sha256
                ),
            ));
        }
        Ok(())
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Job>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts downloads for `missing` (desired versions the store does not serve) that have a
    /// package and are not on disk yet; forgets jobs for models no longer missing.
    pub fn want(self: &Arc<Self>, missing: &[DesiredModel]) {
        let mut jobs = self.jobs();
        jobs.retain(|name, job| missing.iter().any(|m| &m.name == name && m.version == job.version));
        for m in missing {
            let Some(package) = &m.package else { continue };
            if installed_path(&self.dir, &m.name, &m.version).exists() {
                continue; // on disk: loading it (or why it does not load) is the store's to report
            }
            if starts_again(jobs.get(&m.name), m, package) {
                let job = Job {
                    version: m.version.clone(),
                    package: package.clone(),
                    state: FetchState::Downloading,
                    fetched: 0,
                    delta_from: None,
                    no_delta: false,
                    delta_misses: 0,
                    attempt: m.attempt,
                };
                jobs.insert(m.name.clone(), job);
                let me = self.clone();
                let (name, version, package) = (m.name.clone(), m.version.clone(), package.clone());
                tokio::spawn(async move { me.run(name, version, package).await });
            }
        }
    }

    /// What each model's pending version is doing, for the state report.
    pub fn reports(&self) -> HashMap<String, UpdateReport> {
        self.jobs()
            .iter()
            .map(|(name, job)| {
                let (state, reason, failure_kind) = match &job.state {
                    FetchState::Downloading => ("downloading", None, None),
                    FetchState::Verifying => ("verifying", None, None),
                    FetchState::Installed => ("installed", None, None),
                    FetchState::Failed { kind, reason, .. } => ("failed", Some(reason.clone()), Some(*kind)),
                };
                let report = UpdateReport {
                    version: job.version.clone(),
                    state: state.into(),
                    reason,
                    failure_kind,
                    bytes_fetched: job.fetched,
                    bytes_total: job.package.size_bytes,
                    delta_from: job.delta_from.clone(),
                };
                (name.clone(), report)
            })
            .collect()
    }

    /// Whether `name` still wants exactly this package (the job was not replaced or dropped).
    fn current(&self, name: &str, package: &PackageRef) -> bool {
        self.jobs().get(name).is_some_and(|j| &j.package == package)
    }

    fn update(&self, name: &str, package: &PackageRef, f: impl FnOnce(&mut Job)) {
        if let Some(job) = self.jobs().get_mut(name).filter(|j| &j.package == package) {
            f(job);
        }
    }

    async fn run(self: Arc<Self>, name: String, version: String, package: PackageRef) {
        let mut transient = 0u32;
        let mut mismatches = 0u32;
        loop {
            let outcome = self.attempt(&name, &version, &package).await;
            let failed = |kind, reason: String| FetchState::Failed { kind, reason, at: Instant::now() };
            match outcome {
                Ok(()) => {
                    self.update(&name, &package, |j| j.state = FetchState::Installed);
                    tracing::info!(model = %name, %version, bytes = package.size_bytes, "package downloaded and verified");
                    let (store, dir) = (self.store.clone(), self.dir.clone());
                    if let Err(e) = tokio::task::spawn_blocking(move || store.sync(&dir)).await {
                        tracing::error!(error = %e, "model directory scan after a download failed");
                    }
                    return;
                }
                Err(Attempt::Cancelled) => return,
                Err(Attempt::Fatal(kind, reason)) => {
                    tracing::error!(model = %name, %version, %reason, "package download failed");
                    self.update(&name, &package, |j| j.state = failed(kind, reason));
                    return;
                }
                Err(Attempt::Mismatch(reason)) => {
                    mismatches += 1;
                    tracing::warn!(model = %name, %version, %reason, attempt = mismatches, "downloaded package does not verify");
                    if mismatches >= MISMATCH_ATTEMPTS {
                        let reason = format!("{reason} ({mismatches} downloads in a row)");
                        self.update(&name, &package, |j| j.state = failed(FailureKind::HashMismatch, reason));
                        return;
                    }
                }
                Err(Attempt::Transient(reason)) => {
                    transient = transient.saturating_add(1);
                    tracing::warn!(model = %name, %version, %reason, "package download interrupted; resuming later");
                    tokio::time::sleep(super::session::backoff(transient, Duration::from_secs(60))).await;
                }
            }
            if !self.current(&name, &package) {
                return;
            }
            self.update(&name, &package, |j| j.state = FetchState::Downloading);
        }
    }

    async fn attempt(&self, name: &str, version: &str, package: &PackageRef) -> Result<(), Attempt> {
        let part = staging_path(&self.dir, name, version, &package.sha256);
        let io = |what: &str, e: std::io::Error| {
            if e.raw_os_error() == Some(libc::ENOSPC) {
                Attempt::Fatal(FailureKind::DiskFull, format!("{what} {}: {e}", part.display()))
            } else {
                Attempt::Fatal(FailureKind::Io, format!("{what} {}: {e}", part.display()))
            }
        };
        // Nothing is fetched that the signed metadata does not vouch for.
        self.vouch(name, version, package).await?;
        if let Some(outcome) = self.delta(name, version, package).await {
            return outcome;
        }
        if let Some(parent) = part.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io("creating", e))?;
        }
        // What an earlier attempt left: hashed again, then continued from its end.
        let mut hasher = Sha256::new();
        let mut have = match std::fs::File::open(&part) {
            Ok(mut f) => std::io::copy(&mut f, &mut hasher).map_err(|e| io("reading", e))?,
            Err(_) => 0,
        };
        if have > package.size_bytes {
            let _ = std::fs::remove_file(&part);
            hasher = Sha256::new();
            have = 0;
        }
        let (free, total) = disk_space(part.parent().unwrap_or(&self.dir));
        let needed = package.size_bytes - have + DISK_MARGIN;
        // A filesystem that does not answer (total 0) is not taken for a full one.
        if total > 0 && free < needed {
            return Err(Attempt::Fatal(
                FailureKind::DiskFull,
                format!("{} bytes free on the model directory's disk, the package needs {needed} more", free),
            ));
        }
        self.update(name, package, |j| j.fetched = have);
        if have < package.size_bytes {
            self.download(name, version, package, &part, &mut hasher, &mut have).await?;
        }
        self.update(name, package, |j| j.state = FetchState::Verifying);
        let actual = hex::encode(hasher.finalize());
        if have != package.size_bytes || actual != package.sha256 {
            let _ = std::fs::remove_file(&part);
            return Err(Attempt::Mismatch(format!(
                "got {have} bytes with sha256 {actual}, the server published {} bytes with sha256 {}",
                package.size_bytes, package.sha256
            )));
        }
        if !self.current(name, package) {
            return Err(Attempt::Cancelled);
        }
        self.install(&part, name, version)
    }

    /// Moves the verified `part` into the model directory in one step: synced first, then
    /// renamed, then the directory synced.
    fn install(&self, part: &Path, name: &str, version: &str) -> Result<(), Attempt> {
        let io = |what: &str, e: std::io::Error| {
            let kind = if e.raw_os_error() == Some(libc::ENOSPC) { FailureKind::DiskFull } else { FailureKind::Io };
            Attempt::Fatal(kind, format!("{what} {}: {e}", part.display()))
        };
        let target = installed_path(&self.dir, name, version);
        std::fs::File::open(part).and_then(|f| f.sync_all()).map_err(|e| io("syncing", e))?;
        std::fs::rename(part, &target).map_err(|e| io("installing", e))?;
        std::fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| io("syncing the directory of", e))?;
        Ok(())
    }

    /// Appends the rest of the package to `part`, hashing as it goes.
    async fn download(
        &self,
        name: &str,
        version: &str,
        package: &PackageRef,
        part: &Path,
        hasher: &mut Sha256,
        have: &mut u64,
    ) -> Result<(), Attempt> {
        let mut response = match self.client.package(name, version, *have, &package.sha256).await {
            Ok(r) => r,
            Err(e) if e.is_transient() => return Err(Attempt::Transient(e.to_string())),
            Err(ClientError::Rejected { status: 416, .. }) => {
                let _ = std::fs::remove_file(part);
                return Err(Attempt::Mismatch("the server has fewer bytes than the staging file".into()));
            }
            Err(e) => return Err(Attempt::Fatal(FailureKind::Download, e.to_string())),
        };
        let resumed = response.status() == reqwest::StatusCode::PARTIAL_CONTENT;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(resumed)
            .write(true)
            .truncate(!resumed)
            .open(part)
            .map_err(|e| Attempt::Fatal(FailureKind::Io, format!("opening {}: {e}", part.display())))?;
        if !resumed {
            // The server sent the whole object (no range support, or another object).
            *hasher = Sha256::new();
            *have = 0;
        }
        loop {
            if !self.current(name, package) {
                return Err(Attempt::Cancelled);
            }
            let chunk = match tokio::time::timeout(STALL_TIMEOUT, response.chunk()).await {
                Err(_) => return Err(Attempt::Transient(format!("no data for {} s", STALL_TIMEOUT.as_secs()))),
                Ok(Err(e)) => return Err(Attempt::Transient(format!("the download broke off: {e}"))),
                Ok(Ok(None)) => return Ok(()),
                Ok(Ok(Some(chunk))) => chunk,
            };
            if *have + chunk.len() as u64 > package.size_bytes {
                drop(file);
                let _ = std::fs::remove_file(part);
                return Err(Attempt::Mismatch(format!(
                    "the server sent more than the {} bytes it published",
                    package.size_bytes
                )));
            }
            file.write_all(&chunk).map_err(|e| {
                let kind = if e.raw_os_error() == Some(libc::ENOSPC) { FailureKind::DiskFull } else { FailureKind::Io };
                Attempt::Fatal(kind, format!("writing {}: {e}", part.display()))
            })?;
            hasher.update(&chunk);
            *have += chunk.len() as u64;
            let fetched = *have;
            self.update(name, package, |j| j.fetched = fetched);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(state: FetchState, attempt: u32) -> Job {
        Job {
            version: "2".into(),
            package: PackageRef { sha256: "ab".into(), size_bytes: 1 },
            state,
            fetched: 0,
            delta_from: None,
            no_delta: false,
            delta_misses: 0,
            attempt,
        }
    }

    fn wanted(attempt: u32) -> DesiredModel {
        DesiredModel {
            name: "m".into(),
            version: "2".into(),
            source: "override".into(),
            package: Some(PackageRef { sha256: "ab".into(), size_bytes: 1 }),
            shadow: None,
            attempt,
        }
    }

    #[test]
    fn a_failed_download_starts_again_at_once_when_the_desired_attempt_rises() {
        let package = wanted(0).package.unwrap();
        let failed = |attempt| {
            job(FetchState::Failed { kind: FailureKind::HashMismatch, reason: "x".into(), at: Instant::now() }, attempt)
        };
        assert!(!starts_again(Some(&failed(1)), &wanted(1), &package), "same attempt: wait for the retry time");
        assert!(starts_again(Some(&failed(1)), &wanted(2), &package), "a raised attempt retries now");
        assert!(!starts_again(Some(&failed(2)), &wanted(1), &package), "a lower attempt is not a retry");
        assert!(!starts_again(Some(&job(FetchState::Downloading, 0)), &wanted(5), &package), "one download at a time");
        let other = PackageRef { sha256: "cd".into(), size_bytes: 1 };
        assert!(starts_again(Some(&failed(1)), &wanted(1), &other), "another package starts over");
        assert!(starts_again(None, &wanted(0), &package));
    }
}
