//! `outpost tuf-client`: the device's TUF client as a command any test harness can drive.
//!
//! `--metadata-dir D [--metadata-url U] init ROOT_JSON | refresh | download --target-name T …
//! --target-base-url B --target-dir TD`; flags go before or after the subcommand. Exit status 0
//! on success and 1 on any failure, a refused update included. The time comes from the C
//! library's clock (`clock_gettime`), so `faketime` moves it.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use outpost_tuf::{HttpRemote, TufClient};
use std::path::PathBuf;

/// Flags of `outpost tuf-client`.
#[derive(Debug, Args)]
pub struct TufClientArgs {
    /// Directory of trusted metadata (root.json, timestamp.json, snapshot.json, targets.json, ROLE.json).
    #[arg(long, global = true)]
    metadata_dir: Option<PathBuf>,
    /// Base URL of the repository's metadata.
    #[arg(long, global = true)]
    metadata_url: Option<String>,
    #[command(subcommand)]
    command: TufCommand,
}

/// What the client does.
#[derive(Debug, Subcommand)]
pub enum TufCommand {
    /// Trust ROOT_JSON (obtained out of band) as the first root.
    Init {
        /// The root metadata file.
        root_json: PathBuf,
    },
    /// Update the trusted metadata from the repository.
    Refresh,
    /// Refresh, then download each target (in order), verified, into --target-dir.
    Download {
        /// Target path as the targets metadata names it; repeat for several.
        #[arg(long = "target-name", required = true)]
        target_names: Vec<String>,
        /// Base URL of the repository's targets.
        #[arg(long)]
        target_base_url: String,
        /// Directory the targets are written to, under their percent-encoded names.
        #[arg(long)]
        target_dir: PathBuf,
    },
}

/// Now, read through the C library (`clock_gettime(CLOCK_REALTIME)`).
fn now() -> Result<jiff::Timestamp> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) } != 0 {
        bail!("clock_gettime failed: {}", std::io::Error::last_os_error());
    }
    Ok(jiff::Timestamp::new(ts.tv_sec, ts.tv_nsec as i32)?)
}

/// Runs the client command.
pub fn run(args: TufClientArgs) -> Result<()> {
    let dir = args.metadata_dir.context("--metadata-dir is required")?;
    if let TufCommand::Init { root_json } = &args.command {
        let root = std::fs::read(root_json).with_context(|| format!("reading {}", root_json.display()))?;
        return TufClient::init(&dir, &root).with_context(|| format!("trusting {}", root_json.display()));
    }
    let metadata_url = args.metadata_url.context("--metadata-url is required")?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(300))
        .build()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        match args.command {
            TufCommand::Init { .. } => Ok(()),
            TufCommand::Refresh => {
                let mut client = TufClient::open(&dir, HttpRemote::new(http, &metadata_url, &metadata_url))?;
                client.refresh(now()?).await?;
                Ok(())
            }
            TufCommand::Download { target_names, target_base_url, target_dir } => {
                let remote = HttpRemote::new(http, &metadata_url, &target_base_url);
                let mut client = TufClient::open(&dir, remote)?;
                client.refresh(now()?).await?;
                std::fs::create_dir_all(&target_dir).with_context(|| format!("creating {}", target_dir.display()))?;
                for name in &target_names {
                    client.download(name, now()?, &target_dir).await.with_context(|| format!("target {name:?}"))?;
                }
                Ok(())
            }
        }
    })
}
