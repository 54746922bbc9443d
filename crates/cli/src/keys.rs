//! `outpost keys init|show|rotate`: the TUF keys of a server's repository, kept in files.
//!
//! By default the root and targets keys stay with the operator (`--keys-dir`, default
//! `outpost-keys/`) and only the snapshot and timestamp keys go to the server
//! (`<data-dir>/tuf/keys/`), which signs those two roles by itself. New root versions are
//! written to both places; the server picks them up within 30 s.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use outpost_tuf::writer::{expires, root_signed, sign, targets_signed, RepoDir, RoleKey, RoleSpec, Roles};
use serde_json::Value;
use std::path::{Path, PathBuf};

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

/// `outpost keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make the four role keys, sign root version 1 and an empty targets version 1.
    Init {
        #[command(flatten)]
        places: KeyPlaces,
        /// Days the root stays valid.
        #[arg(long, default_value_t = 365)]
        root_days: i64,
    },
    /// The newest root: version, expiry, each role's keys and threshold, which keys are here.
    Show {
        #[command(flatten)]
        places: KeyPlaces,
    },
    /// Replace one role's key: a new root version signed by the current root key (and the new
    /// one, for root itself); rotating targets also signs the current targets again.
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

const ROLES: [&str; 4] = ["root", "targets", "snapshot", "timestamp"];

impl KeyPlaces {
    fn key_path(&self, role: &str) -> PathBuf {
        match role {
            "snapshot" | "timestamp" => self.data_dir.join("tuf/keys").join(format!("{role}.json")),
            _ => self.keys_dir.join(format!("{role}.json")),
        }
    }

    fn repo(&self) -> RepoDir {
        RepoDir::new(self.data_dir.join("tuf"))
    }
}

fn days(n: i64) -> Result<jiff::Timestamp> {
    Ok(jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_hours(24 * n))?)
}

/// The newest `N.root.json` in `dir`.
fn newest_root(dir: &Path) -> Option<(u64, Value)> {
    let v = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".root.json")?.parse::<u64>().ok())
        .max()?;
    let doc: Value = serde_json::from_slice(&std::fs::read(dir.join(format!("{v}.root.json"))).ok()?).ok()?;
    Some((v, doc))
}

/// Runs a keys subcommand.
pub fn run(cmd: KeysCommand) -> Result<()> {
    match cmd {
        KeysCommand::Init { places, root_days } => init(&places, root_days),
        KeysCommand::Show { places } => show(&places),
        KeysCommand::Rotate { places, role, root_days } => rotate(&places, &role, root_days),
    }
}

fn init(places: &KeyPlaces, root_days: i64) -> Result<()> {
    for role in ROLES {
        if places.key_path(role).exists() {
            bail!(
                "{} exists: keys are made once; use `outpost keys rotate` to replace one",
                places.key_path(role).display()
            );
        }
    }
    if newest_root(&places.data_dir.join("tuf/metadata")).is_some() {
        bail!("{} already holds a TUF repository", places.data_dir.join("tuf").display());
    }
    let keys: Vec<RoleKey> = ROLES.iter().map(|_| RoleKey::generate()).collect();
    for (role, key) in ROLES.iter().zip(&keys) {
        key.save(&places.key_path(role))?;
    }
    let roles = Roles {
        root: RoleSpec::single(keys[0].clone()),
        targets: RoleSpec::single(keys[1].clone()),
        snapshot: RoleSpec::single(keys[2].clone()),
        timestamp: RoleSpec::single(keys[3].clone()),
    };
    let root = sign(&root_signed(&roles, 1, days(root_days)?), &[&keys[0]]);
    outpost_tuf::store::write_atomic(&places.keys_dir.join("1.root.json"), &root)?;
    let repo = places.repo();
    repo.put_metadata("1.root.json", &root)?;
    // An empty targets version 1, so the server can publish a complete repository at once.
    repo.put_metadata("1.targets.json", &sign(&targets_signed(1, days(TARGETS_DAYS)?, &[], None), &[&keys[1]]))?;
    for (role, key) in ROLES.iter().zip(&keys) {
        println!("{role:<9} key {}  {}", key.key_id(), places.key_path(role).display());
    }
    println!(
        "root v1  {}  (give it to devices as their trusted root: agent `tuf_root`)",
        places.keys_dir.join("1.root.json").display()
    );
    println!("the server signs snapshot and timestamp with the keys in {}", places.data_dir.join("tuf/keys").display());
    Ok(())
}

/// Days a targets version the CLI signs stays valid.
pub const TARGETS_DAYS: i64 = 90;

fn show(places: &KeyPlaces) -> Result<()> {
    let (v, root) = newest_root(&places.data_dir.join("tuf/metadata"))
        .or_else(|| newest_root(&places.keys_dir))
        .context("no root found: run `outpost keys init`")?;
    let signed = &root["signed"];
    println!("root v{v}, expires {}", signed["expires"].as_str().unwrap_or("?"));
    for role in ROLES {
        let ids: Vec<&str> =
            signed["roles"][role]["keyids"].as_array().into_iter().flatten().filter_map(|k| k.as_str()).collect();
        let here = RoleKey::load(&places.key_path(role)).ok().filter(|k| ids.contains(&k.key_id().as_str()));
        let held =
            if here.is_some() { format!("held in {}", places.key_path(role).display()) } else { "not here".into() };
        println!(
            "{role:<9} threshold {} keys {}  ({held})",
            signed["roles"][role]["threshold"].as_u64().unwrap_or(1),
            ids.join(",")
        );
    }
    Ok(())
}

fn rotate(places: &KeyPlaces, role: &str, root_days: i64) -> Result<()> {
    if !ROLES.contains(&role) {
        bail!("--role must be one of {}", ROLES.join(", "));
    }
    let (v, _) = newest_root(&places.data_dir.join("tuf/metadata")).context("no TUF repository in the data dir")?;
    let load = |r: &str| RoleKey::load(&places.key_path(r)).with_context(|| format!("the current {r} key"));
    let old_root = load("root")?;
    let mut current: Vec<RoleKey> = Vec::new();
    for r in ROLES {
        current.push(if r == role { RoleKey::generate() } else { load(r)? });
    }
    let roles = Roles {
        root: RoleSpec::single(current[0].clone()),
        targets: RoleSpec::single(current[1].clone()),
        snapshot: RoleSpec::single(current[2].clone()),
        timestamp: RoleSpec::single(current[3].clone()),
    };
    let signers: Vec<&RoleKey> = if role == "root" { vec![&old_root, &current[0]] } else { vec![&old_root] };
    let next = sign(&root_signed(&roles, v + 1, days(root_days)?), &signers);
    let new_key = &current[ROLES.iter().position(|r| *r == role).unwrap_or(0)];
    // The old key file is kept beside the new one until the new root is out.
    let path = places.key_path(role);
    let _ = std::fs::rename(&path, path.with_extension(format!("json.v{v}")));
    new_key.save(&path)?;
    outpost_tuf::store::write_atomic(&places.keys_dir.join(format!("{}.root.json", v + 1)), &next)?;
    let repo = places.repo();
    if role == "targets" {
        // What the old targets key signed no longer verifies under the new root.
        let metadata = places.data_dir.join("tuf/metadata");
        let tv = std::fs::read_dir(&metadata)?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".targets.json")?.parse::<u64>().ok())
            .max()
            .context("no targets metadata")?;
        let doc: Value = serde_json::from_slice(&std::fs::read(metadata.join(format!("{tv}.targets.json")))?)?;
        let mut signed = doc["signed"].clone();
        signed["version"] = serde_json::json!(tv + 1);
        signed["expires"] = serde_json::json!(expires(days(TARGETS_DAYS)?));
        repo.put_metadata(&format!("{}.targets.json", tv + 1), &sign(&signed, &[new_key]))?;
    }
    repo.put_metadata(&format!("{}.root.json", v + 1), &next)?;
    println!("{role} key rotated: {}  root v{} written; the server re-signs within 30 s", new_key.key_id(), v + 1);
    Ok(())
}

/// Signs the next targets version adding `path` (length, sha256, custom) with the targets key
/// in `keys_dir`, from the server's current targets.
pub fn sign_next_targets(current: &Value, keys_dir: &Path, path: &str, entry: Value) -> Result<Vec<u8>> {
    let key = RoleKey::load(&keys_dir.join("targets.json")).context("the targets key (--keys-dir)")?;
    let mut signed = current.clone();
    let version = signed["version"].as_u64().unwrap_or(0) + 1;
    signed["_type"] = serde_json::json!("targets");
    signed["spec_version"] = serde_json::json!(outpost_tuf::writer::SPEC_VERSION);
    signed["version"] = serde_json::json!(version);
    signed["expires"] = serde_json::json!(expires(days(TARGETS_DAYS)?));
    if !signed["targets"].is_object() {
        signed["targets"] = serde_json::json!({});
    }
    signed["targets"][path] = entry;
    Ok(sign(&signed, &[&key]))
}
