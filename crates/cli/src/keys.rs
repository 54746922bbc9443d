//! `outpost keys init|show|rotate`: the TUF keys of a server's repository, kept in files.
//!
//! By default the root and targets keys stay with the operator (`--keys-dir`, default
//! `outpost-keys/`) and only the snapshot and timestamp keys go to the server
//! (`<data-dir>/tuf/keys/`), which signs those two roles by itself. New root versions are
//! written to both places; the server picks them up within 30 s.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use outpost_tuf::operator::{newest, KeyCounts, Places, ROLES};
use std::path::PathBuf;

/// Where keys and metadata live.
#[derive(Debug, Clone, Args)]
pub struct KeyPlaces {
    /// Directory of the offline keys (root, targets) and the roots signed so far.
    #[arg(long, env = "OUTPOST_KEYS_DIR", default_value = "outpost-keys")]
    keys_dir: PathBuf,
    /// The server's data directory (its `tuf/` holds the online keys and the repository).
    #[arg(long, env = "OUTPOST_DATA_DIR", default_value = "outpost-data")]
    data_dir: PathBuf,
}

impl KeyPlaces {
    fn places(&self) -> Places {
        Places { keys_dir: self.keys_dir.clone(), repo_dir: self.data_dir.join("tuf") }
    }
}

/// `outpost keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make the role keys, sign root version 1 and an empty targets version 1.
    Init {
        #[command(flatten)]
        places: KeyPlaces,
        /// Days the root stays valid.
        #[arg(long, default_value_t = 365)]
        root_days: i64,
        /// Root keys to make (each in its own file, to hand to a different person).
        #[arg(long, default_value_t = 1)]
        root_keys: usize,
        /// How many root keys must sign a new root.
        #[arg(long, default_value_t = 1)]
        root_threshold: u32,
        /// Targets keys to make.
        #[arg(long, default_value_t = 1)]
        targets_keys: usize,
        /// How many targets keys must sign the targets.
        #[arg(long, default_value_t = 1)]
        targets_threshold: u32,
    },
    /// The newest root: version, expiry, each role's keys and threshold, which keys are here.
    Show {
        #[command(flatten)]
        places: KeyPlaces,
    },
    /// Replace one role's key: a new root version signed by the current root key (and the new
    /// one, for root); rotating targets also signs the current targets again.
    Rotate {
        #[command(flatten)]
        places: KeyPlaces,
        /// root, targets, snapshot or timestamp.
        #[arg(long)]
        role: String,
        /// Days the new root stays valid.
        #[arg(long, default_value_t = 365)]
        root_days: i64,
    },
}

/// Runs a keys subcommand.
pub fn run(cmd: KeysCommand) -> Result<()> {
    match cmd {
        KeysCommand::Init { places, root_days, root_keys, root_threshold, targets_keys, targets_threshold } => {
            let p = places.places();
            let counts = KeyCounts { root: (root_keys, root_threshold), targets: (targets_keys, targets_threshold) };
            p.init_with(root_days, counts)?;
            for role in ROLES {
                for (i, key) in p.load_all(role)?.iter().enumerate() {
                    println!("{role:<9} key {}  {}", key.key_id(), p.nth_key_path(role, i).display());
                }
            }
            println!(
                "root v1  {}  (give it to devices as their trusted root: agent --tuf-root)",
                places.keys_dir.join("1.root.json").display()
            );
            println!("the server signs snapshot and timestamp with the keys in {}", p.repo_dir.join("keys").display());
            Ok(())
        }
        KeysCommand::Show { places } => show(&places.places()),
        KeysCommand::Rotate { places, role, root_days } => {
            let key = places.places().rotate(&role, root_days)?;
            println!("{role} key rotated: {}; the server signs with the new root within 30 s", key.key_id());
            Ok(())
        }
    }
}

fn show(p: &Places) -> Result<()> {
    let (v, root) = newest(&p.repo_dir.join("metadata"), "root")
        .or_else(|| newest(&p.keys_dir, "root"))
        .context("no root found: run `outpost keys init`")?;
    let signed = &root["signed"];
    println!("root v{v}, expires {}", signed["expires"].as_str().unwrap_or("?"));
    for role in ROLES {
        let ids: Vec<&str> =
            signed["roles"][role]["keyids"].as_array().into_iter().flatten().filter_map(|k| k.as_str()).collect();
        let here = p.load_all(role).unwrap_or_default();
        let here = here.iter().filter(|k| ids.contains(&k.key_id().as_str())).count();
        let held = if here > 0 { format!("{here} held in {}", p.key_path(role).display()) } else { "not here".into() };
        println!(
            "{role:<9} threshold {} keys {}  ({held})",
            signed["roles"][role]["threshold"].as_u64().unwrap_or(1),
            ids.join(",")
        );
    }
    Ok(())
}
