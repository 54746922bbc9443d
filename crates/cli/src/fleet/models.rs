//! `outpost model publish|list|show`: the server's model registry and artifact store.

use super::client::{ago, encode, table, Api, Target};
use super::token::print_json;
use anyhow::{bail, Context, Result};
use clap::Args;
use outpost_proto::fleet::api::{FleetSummary, ModelVersion, Page};
use outpost_runtime::Package;
use std::path::PathBuf;

/// Flags of `outpost model publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The package: a `.opkg` file, or a package directory (packed to a `.opkg` first).
    package: PathBuf,
    /// The operator's TUF keys (`outpost keys init`): the package is also added to the
    /// repository, in a targets version signed here with the targets key.
    #[arg(long, env = "OUTPOST_KEYS_DIR")]
    keys_dir: Option<PathBuf>,
    /// Publish a lossy release instead of the trained weights: the published version --base
    /// plus the trained change rounded to this many bits per weight (2-8), measured against the
    /// trained model first and refused beyond the tolerance. Devices on --base then fetch about
    /// one byte per changed weight.
    #[arg(long, requires = "base")]
    delta_bits: Option<u8>,
    /// The published version a lossy release is made against (what devices run).
    #[arg(long, requires = "delta_bits")]
    base: Option<String>,
    #[command(flatten)]
    tolerance: crate::delta_lossy::Tolerance,
    #[command(flatten)]
    target: Target,
}

/// Flags of `outpost model list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// At most this many versions.
    #[arg(long, default_value_t = 100)]
    limit: u32,
    #[command(flatten)]
    target: Target,
}

/// Flags of `outpost model show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Model name.
    name: String,
    #[command(flatten)]
    target: Target,
}

/// Uploads a package; the server reads name, version and task from its manifest.
pub fn publish(a: PublishArgs) -> Result<()> {
    let api = a.target.connect()?;
    // Checked here first, so a broken package is named before any byte is sent.
    let package = Package::open(&a.package).with_context(|| format!("checking {}", a.package.display()))?;
    let packed;
    let file = if let (Some(bits), Some(base)) = (a.delta_bits, &a.base) {
        let name = &package.manifest.model.name;
        let base_file = tempfile::Builder::new().suffix(".opkg").tempfile()?;
        api.download(&format!("/v1/models/{}/{}/package", encode(name), encode(base)), base_file.path())
            .with_context(|| format!("fetching the base {name}@{base}"))?;
        let (lossy, report) = crate::delta_lossy::make(base_file.path(), base, &package, bits, &a.tolerance)?;
        print_lossy(name, base, &report);
        if let Some(why) = &report.refused {
            bail!("the {bits}-bit release is refused: {why}; publish the trained weights, or more bits");
        }
        packed = tempfile::Builder::new().suffix(".opkg").tempfile()?;
        lossy.write_opkg(packed.path())?;
        packed.path().to_path_buf()
    } else if a.package.is_dir() {
        packed = tempfile::Builder::new().suffix(".opkg").tempfile()?;
        package.write_opkg(packed.path())?;
        packed.path().to_path_buf()
    } else {
        a.package.clone()
    };
    let (status, model): (u16, ModelVersion) = api.upload("/v1/model-packages", &file)?;
    if api.json {
        return print_json(&model);
    }
    let pkg = model
        .package
        .clone()
        .unwrap_or_else(|| outpost_proto::fleet::api::PackageRef { sha256: String::new(), size_bytes: 0 });
    let what = if status == 200 { "already published (same bytes)" } else { "published" };
    println!("{}@{} {what}: {} bytes, sha256 {}", model.name, model.version, pkg.size_bytes, pkg.sha256);
    match &a.keys_dir {
        Some(keys) => {
            let by = sign_into_repository(&api, keys, &model, &pkg)?;
            println!("TUF: {by} lists {}", target_path(&model));
        }
        None => println!("(not in the TUF repository: pass --keys-dir to sign it into the targets)"),
    }
    Ok(())
}

fn print_lossy(name: &str, base: &str, r: &crate::delta_lossy::LossyReport) {
    let accuracy = match r.accuracy {
        Some((a, b)) => format!(", accuracy {b:.2} % (trained {a:.2} %)"),
        None => String::new(),
    };
    println!(
        "{}-bit release against {name}@{base}: {} tensors ({} weights) rounded, {} kept; on {} evaluation cases \
         the top class differs on {:.2} % of {} rows{accuracy}, outputs within {:.2e} relative L2",
        r.bits, r.tensors, r.weights, r.kept, r.cases, r.disagreement_pct, r.rows, r.rel_error
    );
}

/// The target path a published version has in the TUF repository.
pub fn target_path(model: &ModelVersion) -> String {
    format!("{}/{}-{}.opkg", model.name, model.name, model.version)
}

/// Adds the package to the server's TUF repository unless it already lists it: into the
/// delegated role of its namespace when the top-level targets delegate its path (signed with
/// that role's keys in `keys/delegated/`), else into the top-level targets (signed with every
/// targets key held). Returns what lists it, e.g. `targets v3` or `role vision v2`.
pub fn sign_into_repository(
    api: &Api,
    keys: &std::path::Path,
    model: &ModelVersion,
    pkg: &outpost_proto::fleet::api::PackageRef,
) -> Result<String> {
    let top: serde_json::Value = api.get("/v1/tuf/targets")?;
    let path = target_path(model);
    let entry = serde_json::json!({"length": pkg.size_bytes, "hashes": {"sha256": pkg.sha256},
        "custom": {"name": model.name, "version": model.version, "task": model.task}});
    let lists = |signed: &serde_json::Value| {
        let listed = &signed["targets"][&path];
        listed["hashes"]["sha256"] == pkg.sha256.as_str() && listed["length"] == pkg.size_bytes
    };
    let version = |signed: &serde_json::Value| signed["version"].as_u64().unwrap_or(0);
    if lists(&top) {
        return Ok(format!("targets v{}", version(&top)));
    }
    let places = outpost_tuf::operator::Places { keys_dir: keys.to_path_buf(), repo_dir: keys.join("unused") };
    if let Some(role) = outpost_tuf::delegation::role_for(&top, &path) {
        let name = role["name"].as_str().unwrap_or_default();
        let current: serde_json::Value = api.get(&format!("/v1/tuf/roles/{}", encode(name)))?;
        if lists(&current) {
            return Ok(format!("role {name} v{}", version(&current)));
        }
        let held = places.load_role_keys(name)?;
        if held.is_empty() {
            bail!(
                "{path} is in namespace {name:?}, which the targets delegate to its own keys, and they are not in {}: \
                 publish with the namespace's keys directory",
                places.role_key_path(name, 0).display()
            );
        }
        let signers: Vec<&outpost_tuf::writer::RoleKey> = held.iter().collect();
        let signed = outpost_tuf::operator::sign_next_targets_by(&current, &signers, &path, entry)?;
        let doc: serde_json::Value = serde_json::from_slice(&signed)?;
        let body = serde_json::json!({"roles": {name: doc}});
        let done: serde_json::Value = api.send("PUT", "/v1/tuf/release", Some(&body))?;
        return Ok(format!("role {name} v{}", done[name]));
    }
    // Every targets key held here signs (the root says how many must).
    let held = places.load_all("targets").context("the targets keys (--keys-dir)")?;
    let signers: Vec<&outpost_tuf::writer::RoleKey> = held.iter().collect();
    let signed = outpost_tuf::operator::sign_next_targets_by(&top, &signers, &path, entry)?;
    let mut body = signed.as_slice();
    let _: (u16, serde_json::Value) =
        api.send_raw("PUT", "/v1/tuf/targets", &mut body, signed.len() as u64, "application/json")?;
    Ok(format!("targets v{}", version(&top) + 1))
}

fn package_cells(m: &ModelVersion) -> (String, String) {
    match &m.package {
        Some(p) => (p.size_bytes.to_string(), p.sha256.chars().take(12).collect()),
        None => ("-".into(), "(metadata only)".into()),
    }
}

/// Lists registry entries.
pub fn list(a: ListArgs) -> Result<()> {
    let api = a.target.connect()?;
    let page: Page<ModelVersion> = api.get(&format!("/v1/models?limit={}", a.limit))?;
    if api.json {
        return print_json(&page);
    }
    let rows = page
        .items
        .iter()
        .map(|m| {
            let (size, sha) = package_cells(m);
            vec![
                m.name.clone(),
                m.version.clone(),
                m.task.clone().unwrap_or_default(),
                size,
                sha,
                ago(Some(m.published_ms)),
            ]
        })
        .collect::<Vec<_>>();
    table(&["NAME", "VERSION", "TASK", "BYTES", "SHA256", "PUBLISHED"], &rows);
    Ok(())
}

/// One model's versions, with how many devices serve each.
pub fn show(a: ShowArgs) -> Result<()> {
    let api = a.target.connect()?;
    let versions: Vec<ModelVersion> = api.get(&format!("/v1/models/{}", encode(&a.name)))?;
    let summary: FleetSummary = api.get("/v1/fleet/summary")?;
    let key = |m: &ModelVersion| format!("{}@{}", m.name, m.version);
    let serving = |m: &ModelVersion| summary.by_model_version.get(&key(m)).copied().unwrap_or(0);
    let updates = |m: &ModelVersion| summary.updates_by_model_version.get(&key(m)).cloned().unwrap_or_default();
    if api.json {
        let doc: Vec<_> = versions
            .iter()
            .map(|m| serde_json::json!({"version": m, "devices_serving": serving(m), "devices_updating": updates(m)}))
            .collect();
        return print_json(&doc);
    }
    let rows = versions
        .iter()
        .map(|m| {
            let (size, sha) = package_cells(m);
            let by = m.published_by.clone();
            let u = updates(m);
            let arriving: u64 = u.iter().filter(|(state, _)| state.as_str() != "failed").map(|(_, n)| n).sum();
            let failed = u.get("failed").copied().unwrap_or(0);
            vec![
                m.version.clone(),
                size,
                sha,
                serving(m).to_string(),
                arriving.to_string(),
                failed.to_string(),
                by,
                ago(Some(m.published_ms)),
            ]
        })
        .collect::<Vec<_>>();
    table(&["VERSION", "BYTES", "SHA256", "SERVING", "ARRIVING", "FAILED", "BY", "PUBLISHED"], &rows);
    Ok(())
}

impl Api {
    /// Streams `file` as an `application/octet-stream` body; the answer's status and JSON.
    pub fn upload<T: serde::de::DeserializeOwned>(&self, path: &str, file: &std::path::Path) -> Result<(u16, T)> {
        let mut f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
        let len = f.metadata()?.len();
        if len == 0 {
            bail!("{} is empty", file.display());
        }
        self.send_raw("POST", path, &mut f, len, "application/octet-stream")
    }
}
