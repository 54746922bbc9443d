//! `outpost keys init|show|rotate`: the TUF keys of a server's repository, kept in files.
//!
//! By default the root and targets keys stay with the operator (`--keys-dir`, default
//! `outpost-keys/`) and only the snapshot and timestamp keys go to the server
//! (`<data-dir>/tuf/keys/`), which signs those two roles by itself. New root versions are
//! written to both places; the server picks them up within 30 s.

use anyhow::{bail, Context, Result};
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
    /// Delegate a model namespace to its own keys: a targets version (signed with the targets
    /// keys held here) naming the new keys for the namespace's models, and the namespace's
    /// role metadata signed by them, sent to the server as one release. Again on a delegated
    /// namespace, it replaces the namespace's keys.
    Delegate {
        /// The namespace: the delegated role's name.
        namespace: String,
        /// Model-name globs the namespace covers [default: NAMESPACE and NAMESPACE.*].
        #[arg(long = "models")]
        models: Vec<String>,
        /// Keys to make for the namespace.
        #[arg(long, default_value_t = 1)]
        keys: usize,
        /// How many of them must sign.
        #[arg(long, default_value_t = 1)]
        threshold: u32,
        /// Directory of the offline keys; the namespace's go to `delegated/` in it.
        #[arg(long, env = "OUTPOST_KEYS_DIR", default_value = "outpost-keys")]
        keys_dir: PathBuf,
        #[command(flatten)]
        target: crate::fleet::client::Target,
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
        KeysCommand::Delegate { namespace, models, keys, threshold, keys_dir, target } => {
            delegate(&namespace, &models, (keys, threshold), &keys_dir, &target)
        }
        KeysCommand::Rotate { places, role, root_days } => {
            let key = places.places().rotate(&role, root_days)?;
            println!("{role} key rotated: {}; the server signs with the new root within 30 s", key.key_id());
            Ok(())
        }
    }
}

fn delegate(
    namespace: &str,
    models: &[String],
    (count, threshold): (usize, u32),
    keys_dir: &std::path::Path,
    target: &crate::fleet::client::Target,
) -> Result<()> {
    use outpost_tuf::delegation::{delegate, namespace_paths, Delegation};
    if outpost_proto::ModelName::parse(namespace).is_err() {
        bail!("namespace {namespace:?}: a namespace follows the model-name grammar (a-z 0-9 . _ -)");
    }
    if count == 0 || count > outpost_tuf::operator::MAX_KEYS || threshold == 0 || threshold as usize > count {
        bail!(
            "{count} keys with threshold {threshold}: 1 to {} keys, a threshold from 1 to the key count",
            outpost_tuf::operator::MAX_KEYS
        );
    }
    let globs = if models.is_empty() { vec![namespace.to_string(), format!("{namespace}.*")] } else { models.to_vec() };
    let places = Places { keys_dir: keys_dir.to_path_buf(), repo_dir: keys_dir.join("unused") };
    let top_keys = places.load_all("targets").context("the targets keys (--keys-dir)")?;
    let api = target.connect()?;
    let top: serde_json::Value = api.get("/v1/tuf/targets")?;
    let current: serde_json::Value = api.get(&format!("/v1/tuf/roles/{}", crate::fleet::client::encode(namespace)))?;
    let d = Delegation {
        role: namespace.to_string(),
        keys: (0..count).map(|_| outpost_tuf::writer::RoleKey::generate()).collect(),
        threshold,
        paths: namespace_paths(&globs)?,
    };
    let signers: Vec<&outpost_tuf::writer::RoleKey> = top_keys.iter().collect();
    let (top_bytes, role_bytes) = delegate(&top, &signers, Some(&current), &d)?;
    // The keys are saved before the release, so a release that lands is never without them;
    // keys replaced by a re-delegation stay beside the new ones, renamed.
    let old = current["version"].as_u64().unwrap_or(0);
    for (i, key) in d.keys.iter().enumerate() {
        let path = places.role_key_path(namespace, i);
        if path.exists() {
            std::fs::rename(&path, path.with_extension(format!("json.v{old}")))?;
        }
        key.save(&path)?;
    }
    let body = serde_json::json!({"targets": serde_json::from_slice::<serde_json::Value>(&top_bytes)?,
        "roles": {namespace: serde_json::from_slice::<serde_json::Value>(&role_bytes)?}});
    let done: serde_json::Value = api.send("PUT", "/v1/tuf/release", Some(&body))?;
    for (i, key) in d.keys.iter().enumerate() {
        println!("{namespace} key {}  {}", key.key_id(), places.role_key_path(namespace, i).display());
    }
    println!(
        "targets v{} delegates {} (threshold {threshold}) to these keys; role {namespace} v{}",
        done["targets"],
        d.paths.join(" "),
        done[namespace]
    );
    Ok(())
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
    if let Some((tv, targets)) = newest(&p.repo_dir.join("metadata"), "targets") {
        for role in targets["signed"]["delegations"]["roles"].as_array().into_iter().flatten() {
            let name = role["name"].as_str().unwrap_or("?");
            let ids: Vec<String> =
                role["keyids"].as_array().into_iter().flatten().filter_map(|k| k.as_str().map(String::from)).collect();
            let here = p.load_role_keys(name).unwrap_or_default().iter().filter(|k| ids.contains(&k.key_id())).count();
            let held = if here > 0 {
                format!("{here} held in {}", p.role_key_path(name, 0).display())
            } else {
                "not here".into()
            };
            println!(
                "delegated {name} (targets v{tv}) paths {} threshold {} keys {}  ({held})",
                role["paths"],
                role["threshold"].as_u64().unwrap_or(1),
                ids.join(",")
            );
        }
    }
    Ok(())
}
