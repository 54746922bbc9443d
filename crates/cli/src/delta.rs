//! `outpost model delta make|apply`: the server's and the device's halves of a delta download,
//! on local files, to see what an update would cost before publishing it and to measure it.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use outpost_delta::{Held, Index, Plan};
use std::path::PathBuf;
use std::time::Instant;

/// `outpost model delta …`.
#[derive(Debug, Subcommand)]
pub enum DeltaCommand {
    /// Make the plan and blob file that rebuild NEW from BASE (what the server sends).
    Make(MakeArgs),
    /// Rebuild a package from BASE, a plan and its blobs (what the device does), verified.
    Apply(ApplyArgs),
    /// Print a package's piece index (JSON).
    Index(IndexArgs),
    /// Make a lossy release: BASE plus NEW's change rounded to --bits per weight, measured
    /// against NEW on the evaluation inputs; refused (exit 1) beyond the tolerance.
    Lossy(LossyArgs),
}

/// Flags of `outpost model delta lossy`.
#[derive(Debug, Args)]
pub struct LossyArgs {
    /// The package devices run (what the change is rounded against).
    #[arg(long)]
    base: PathBuf,
    /// The trained package.
    #[arg(long)]
    new: PathBuf,
    /// Bits per weight change (2-8).
    #[arg(long, default_value_t = 8)]
    bits: u8,
    /// Where to write the rounded package (`.opkg`).
    #[arg(long, short)]
    out: PathBuf,
    #[command(flatten)]
    tolerance: crate::delta_lossy::Tolerance,
}

/// Flags of `outpost model delta make`.
#[derive(Debug, Args)]
pub struct MakeArgs {
    /// The package the device runs.
    #[arg(long)]
    base: PathBuf,
    /// The package it should get.
    #[arg(long)]
    new: PathBuf,
    /// Directory for `plan` and `blobs`.
    #[arg(long)]
    out: PathBuf,
}

/// Flags of `outpost model delta apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The package the device runs.
    #[arg(long)]
    base: PathBuf,
    /// The plan (from `make`).
    #[arg(long)]
    plan: PathBuf,
    /// The blob file (from `make`).
    #[arg(long)]
    blobs: PathBuf,
    /// Where to write the rebuilt package.
    #[arg(long)]
    out: PathBuf,
}

/// Flags of `outpost model delta index`.
#[derive(Debug, Args)]
pub struct IndexArgs {
    /// The package.
    package: PathBuf,
}

/// Runs a delta subcommand.
pub fn run(cmd: DeltaCommand) -> Result<()> {
    match cmd {
        DeltaCommand::Lossy(a) => {
            let trained = outpost_runtime::Package::open(&a.new).with_context(|| a.new.display().to_string())?;
            let base_version = outpost_runtime::Package::peek_manifest(&a.base)?.model.version;
            let (pkg, report) = crate::delta_lossy::make(&a.base, &base_version, &trained, a.bits, &a.tolerance)?;
            println!("{}", serde_json::to_string(&report)?);
            if let Some(why) = &report.refused {
                bail!("refused: {why}");
            }
            pkg.write_opkg(&a.out)?;
            Ok(())
        }
        DeltaCommand::Make(a) => {
            let started = Instant::now();
            let base = Index::of_package(&a.base).with_context(|| format!("indexing {}", a.base.display()))?;
            let new = Index::of_package(&a.new).with_context(|| format!("indexing {}", a.new.display()))?;
            std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
            let blobs_path = a.out.join("blobs");
            let mut blobs = std::io::BufWriter::new(std::fs::File::create(&blobs_path)?);
            let plan = Plan::make(&a.new, &new, Some((&a.base, &base)), &mut blobs)?;
            std::io::Write::flush(&mut blobs)?;
            let plan_bytes = plan.to_bytes()?;
            std::fs::write(a.out.join("plan"), &plan_bytes)?;
            let report = serde_json::json!({
                "full": new.size,
                "plan": plan_bytes.len(),
                "blobs": plan.blobs_size,
                "total": plan_bytes.len() as u64 + plan.blobs_size,
                "referenced": plan.savings().referenced,
                "pieces": new.pieces.len(),
                "ms": started.elapsed().as_millis() as u64,
            });
            println!("{report}");
            Ok(())
        }
        DeltaCommand::Apply(a) => {
            let started = Instant::now();
            let plan =
                Plan::from_bytes(&std::fs::read(&a.plan).with_context(|| format!("reading {}", a.plan.display()))?)?;
            let base_index = Index::of_package(&a.base).with_context(|| format!("indexing {}", a.base.display()))?;
            let base = std::fs::File::open(&a.base)?;
            let blobs = std::fs::File::open(&a.blobs).with_context(|| format!("opening {}", a.blobs.display()))?;
            let held = Held::new();
            // The blob file from `make` holds every blob at its own offset: fetch "everything".
            let fetches: Vec<_> =
                plan.fetches(&held).into_iter().map(|f| outpost_delta::Fetch { local: f.at, ..f }).collect();
            let tmp = a.out.with_extension("part");
            let mut out = std::io::BufWriter::with_capacity(1 << 16, std::fs::File::create(&tmp)?);
            let applied = plan.apply(&blobs, &fetches, Some((&base, &base_index)), &held, &mut out);
            std::io::Write::flush(&mut out)?;
            drop(out);
            if let Err(e) = applied {
                let _ = std::fs::remove_file(&tmp);
                bail!("the delta does not rebuild the package: {e}");
            }
            std::fs::rename(&tmp, &a.out)?;
            let report = serde_json::json!({
                "bytes": plan.target.size,
                "sha256": plan.target.sha256,
                "ms": started.elapsed().as_millis() as u64,
                "peak_rss_kib": peak_rss_kib(),
            });
            println!("{report}");
            Ok(())
        }
        DeltaCommand::Index(a) => {
            let index = Index::of_package(&a.package).with_context(|| format!("indexing {}", a.package.display()))?;
            println!("{}", serde_json::to_string_pretty(&index)?);
            Ok(())
        }
    }
}

/// This process's peak resident set (`VmHWM`), KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap_or("");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0)
}
