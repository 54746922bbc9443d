//! Delta downloads: the version the store serves is the base; the server's plan says which
//! pieces of the new package are unchanged in it, and the device fetches only the encoded
//! pieces it holds in no installed version. Fetched blobs go to a staging file one after
//! another, so an interruption or restart resumes with a `Range` request where the file ends;
//! nothing verified is fetched again. The rebuild checks every piece's hash, then the whole
//! package's against the hash the signed metadata named, and installs it as a full download
//! would. A piece that does not verify is fetched again; a plan that cannot be used (no base on
//! the server, another base on disk, a rebuilt file with the wrong hash) falls back to the
//! whole package.

use super::{staging_path, Attempt, FetchState, Fetcher, DISK_MARGIN, STALL_TIMEOUT};
use crate::control::client::ClientError;
use crate::control::system::disk_space;
use outpost_delta::{held_pieces, DeltaError, Held, Index, Plan, Step};
use outpost_proto::fleet::api::PackageRef;
use outpost_proto::fleet::device::FailureKind;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Largest plan accepted, as sent.
pub const MAX_PLAN_BYTES: u64 = 16 << 20;
/// Pieces that fail to verify, in a row, before the whole package is fetched instead.
pub const DELTA_MISSES: u32 = 2;

enum Delta {
    /// This delta cannot work; download the whole package.
    Fallback(String),
    /// End this attempt the way a full download's would.
    Attempt(Attempt),
}

/// Worth asking again for the delta: the link or an overloaded server. Anything else (a
/// server that cannot build this delta, a 500) means the whole package instead.
pub fn delta_error_is_transient(e: &ClientError) -> bool {
    match e {
        ClientError::Server { status, .. } => matches!(status, 502..=504),
        other => other.is_transient(),
    }
}

fn io_attempt(what: &str, path: &Path, e: std::io::Error) -> Delta {
    let kind = if e.raw_os_error() == Some(libc::ENOSPC) { FailureKind::DiskFull } else { FailureKind::Io };
    Delta::Attempt(Attempt::Fatal(kind, format!("{what} {}: {e}", path.display())))
}

impl Fetcher {
    /// Installs `version` by a delta from the version the store serves. `None` when no delta
    /// applies or it fell back: the caller downloads the whole package.
    pub(super) async fn delta(&self, name: &str, version: &str, package: &PackageRef) -> Option<Result<(), Attempt>> {
        if self.jobs().get(name).is_none_or(|j| j.no_delta) {
            return None;
        }
        let slot = self.store.slot(name)?;
        let base_version = slot.active.as_ref()?.version().to_string();
        let base_path = slot.active_path.clone().filter(|p| p.is_file())?;
        if base_version == version {
            return None;
        }
        match self.delta_attempt(name, version, package, &base_version, &base_path).await {
            Ok(()) => Some(Ok(())),
            Err(Delta::Attempt(a)) => Some(Err(a)),
            Err(Delta::Fallback(reason)) => {
                tracing::warn!(model = %name, %version, base = %base_version, %reason, "delta download not possible; fetching the whole package");
                // Blobs of this target are no use to the whole download: free their space.
                let prefix = format!(".{name}-{version}-{}-from-", package.sha256.get(..16).unwrap_or_default());
                for entry in std::fs::read_dir(self.dir.join(".staging")).into_iter().flatten().flatten() {
                    if entry.file_name().to_str().is_some_and(|f| f.starts_with(&prefix) && f.ends_with(".blobs")) {
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
                self.update(name, package, |j| {
                    j.no_delta = true;
                    j.delta_from = None;
                    j.fetched = 0;
                });
                None
            }
        }
    }

    async fn delta_attempt(
        &self,
        name: &str,
        version: &str,
        package: &PackageRef,
        base_version: &str,
        base_path: &Path,
    ) -> Result<(), Delta> {
        let plan_bytes = match self.client.delta_plan(name, version, base_version, MAX_PLAN_BYTES).await {
            Ok(b) => b,
            Err(e) if delta_error_is_transient(&e) => return Err(Delta::Attempt(Attempt::Transient(e.to_string()))),
            Err(e) => return Err(Delta::Fallback(e.to_string())),
        };
        let plan = Plan::from_bytes(&plan_bytes).map_err(|e| Delta::Fallback(e.to_string()))?;
        if plan.target.sha256 != package.sha256 || plan.target.size != package.size_bytes {
            return Err(Delta::Fallback("the plan rebuilds other bytes than the desired package".into()));
        }
        let (base_index, held) = self.local_pieces(name, &plan, base_path).await?;
        if plan.base.as_ref().map(|b| &b.sha256) != Some(&base_index.sha256) {
            return Err(Delta::Fallback("the installed base is not the one the plan was made against".into()));
        }
        let fetches = plan.fetches(&held);
        let local_total: u64 = fetches.iter().map(|f| f.size).sum();
        let short = |s: &str| s.get(..16).unwrap_or(s).to_string();
        let blobs_path = self.dir.join(".staging").join(format!(
            ".{name}-{version}-{}-from-{}.blobs",
            short(&package.sha256),
            short(&base_index.sha256)
        ));
        if let Some(parent) = blobs_path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io_attempt("creating", parent, e))?;
        }
        let mut have = std::fs::metadata(&blobs_path).map(|m| m.len()).unwrap_or(0);
        if have > local_total {
            let _ = std::fs::remove_file(&blobs_path);
            have = 0;
        }
        let (free, total) = disk_space(&self.dir);
        let needed = local_total - have + package.size_bytes + DISK_MARGIN;
        if total > 0 && free < needed {
            return Err(Delta::Attempt(Attempt::Fatal(
                FailureKind::DiskFull,
                format!("{free} bytes free on the model directory's disk, the delta needs {needed} more"),
            )));
        }
        let plan_len = plan_bytes.len() as u64;
        let base = base_version.to_string();
        self.update(name, package, |j| {
            j.delta_from = Some(base);
            j.fetched = plan_len + have;
        });
        for run in Plan::fetch_runs(&fetches) {
            if run.local + run.size <= have {
                continue;
            }
            let skip = have - run.local;
            self.fetch_run(name, version, package, base_version, &blobs_path, run.at + skip..run.at + run.size).await?;
            have = run.local + run.size;
        }

        self.update(name, package, |j| j.state = FetchState::Verifying);
        let part = staging_path(&self.dir, name, version, &package.sha256);
        let (p, bp, base_file, f2) = (plan.clone(), blobs_path.clone(), base_path.to_path_buf(), fetches.clone());
        let out = part.clone();
        let applied = tokio::task::spawn_blocking(move || -> Result<outpost_delta::Applied, DeltaError> {
            let io = |e: std::io::Error| DeltaError::Io(e.to_string());
            let blobs = std::fs::File::open(&bp).map_err(io)?;
            let base = std::fs::File::open(&base_file).map_err(io)?;
            let mut w = std::io::BufWriter::with_capacity(1 << 16, std::fs::File::create(&out).map_err(io)?);
            let applied = p.apply(&blobs, &f2, Some((&base, &base_index)), &held, &mut w)?;
            w.flush().map_err(io)?;
            Ok(applied)
        })
        .await
        .map_err(|e| Delta::Fallback(format!("the rebuild panicked: {e}")))?;
        match applied {
            Ok(applied) => {
                if !self.current(name, package) {
                    return Err(Delta::Attempt(Attempt::Cancelled));
                }
                self.install(&part, name, version).map_err(Delta::Attempt)?;
                let _ = std::fs::remove_file(&blobs_path);
                tracing::info!(
                    model = %name, %version, base = %base_version, fetched = plan_len + local_total,
                    full = package.size_bytes, referenced = applied.referenced, from_other_versions = applied.from_held,
                    "package rebuilt from a delta and verified"
                );
                Ok(())
            }
            Err(DeltaError::PieceMismatch { at, .. }) => {
                let _ = std::fs::remove_file(&part);
                let from = fetches.iter().find(|f| f.at == at).map_or(0, |f| f.local);
                // Keep what verified before the bad piece; fetch from it on.
                if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&blobs_path) {
                    let _ = f.set_len(from);
                }
                let mut misses = 0;
                self.update(name, package, |j| {
                    j.delta_misses += 1;
                    misses = j.delta_misses;
                });
                if misses >= DELTA_MISSES {
                    let _ = std::fs::remove_file(&blobs_path);
                    return Err(Delta::Fallback(format!("delta pieces failed to verify {misses} times in a row")));
                }
                Err(Delta::Attempt(Attempt::Mismatch(format!("a delta piece (blob at {at}) does not match its hash"))))
            }
            Err(DeltaError::Io(reason)) => {
                let _ = std::fs::remove_file(&part);
                Err(Delta::Attempt(Attempt::Fatal(FailureKind::Io, format!("rebuilding from a delta: {reason}"))))
            }
            Err(e) => {
                let _ = std::fs::remove_file(&part);
                let _ = std::fs::remove_file(&blobs_path);
                Err(Delta::Fallback(e.to_string()))
            }
        }
    }

    /// The base's index, and the pieces of the model's other installed versions when the plan
    /// has pieces to fetch.
    async fn local_pieces(&self, name: &str, plan: &Plan, base_path: &Path) -> Result<(Index, Held), Delta> {
        let needs_held = plan.steps.iter().any(|s| matches!(s, Step::Blob(_)));
        let others: Vec<PathBuf> = if needs_held {
            let prefix = format!("{name}-");
            std::fs::read_dir(&self.dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.as_path() != base_path)
                .filter(|p| {
                    let file = p.file_name().and_then(|f| f.to_str()).unwrap_or("");
                    file.starts_with(&prefix) && file.ends_with(".opkg")
                })
                .collect()
        } else {
            Vec::new()
        };
        let base = base_path.to_path_buf();
        tokio::task::spawn_blocking(move || (Index::of_package(&base), held_pieces(&others)))
            .await
            .map_err(|e| Delta::Fallback(format!("indexing panicked: {e}")))
            .and_then(|(index, held)| {
                Ok((index.map_err(|e| Delta::Fallback(format!("indexing the base: {e}")))?, held))
            })
    }

    /// Appends the server's blob bytes `range` to `path`.
    async fn fetch_run(
        &self,
        name: &str,
        version: &str,
        package: &PackageRef,
        base_version: &str,
        path: &Path,
        range: std::ops::Range<u64>,
    ) -> Result<(), Delta> {
        let mut response = match self.client.delta_blobs(name, version, base_version, range.clone()).await {
            Ok(r) => r,
            Err(e) if delta_error_is_transient(&e) => return Err(Delta::Attempt(Attempt::Transient(e.to_string()))),
            Err(ClientError::Rejected { status: 416, .. }) => {
                let _ = std::fs::remove_file(path);
                return Err(Delta::Attempt(Attempt::Mismatch(
                    "the server's blob file is shorter than the plan".into(),
                )));
            }
            Err(e) => return Err(Delta::Fallback(e.to_string())),
        };
        if response.status() != reqwest::StatusCode::PARTIAL_CONTENT && range.start > 0 {
            return Err(Delta::Fallback("the server ignored the Range of a delta blob request".into()));
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| io_attempt("opening", path, e))?;
        let want = range.end - range.start;
        let mut got = 0u64;
        loop {
            if !self.current(name, package) {
                return Err(Delta::Attempt(Attempt::Cancelled));
            }
            let chunk = match tokio::time::timeout(STALL_TIMEOUT, response.chunk()).await {
                Err(_) => {
                    return Err(Delta::Attempt(Attempt::Transient(format!(
                        "no data for {} s",
                        STALL_TIMEOUT.as_secs()
                    ))))
                }
                Ok(Err(e)) => return Err(Delta::Attempt(Attempt::Transient(format!("the download broke off: {e}")))),
                Ok(Ok(None)) => break,
                Ok(Ok(Some(chunk))) => chunk,
            };
            // A whole-file answer to a range starting at 0: keep only the range.
            let take = (want - got).min(chunk.len() as u64) as usize;
            file.write_all(&chunk[..take]).map_err(|e| io_attempt("writing", path, e))?;
            got += take as u64;
            self.update(name, package, |j| j.fetched += take as u64);
            if got == want {
                break;
            }
        }
        if got < want {
            return Err(Delta::Attempt(Attempt::Transient(format!(
                "the blob range ended after {got} of {want} bytes"
            ))));
        }
        Ok(())
    }
}
