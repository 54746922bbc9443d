//! Running remote commands and describing their outcome for the acknowledgement.
//!
//! Each command returns a [`CommandAck`] whose `result` is what an operator needs to act on:
//! the models served after a reload, every package's verification verdict, the log lines, the
//! settings applied and ignored. `restart_agent` only produces its ack here; the channel sends
//! it before stopping the agent, because after the restart nobody would.

use super::logs::LogRing;
use super::settings::Settings;
use crate::store::ModelStore;
use outpost_proto::fleet::device::{CommandAck, CommandKind, CommandStatus, DeviceCommand};
use outpost_runtime::{Package, RuntimeError};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Log lines returned by `collect_logs` when the command does not say.
pub const DEFAULT_LOG_LINES: usize = 200;

/// What commands act on.
#[derive(Debug, Clone)]
pub struct CommandContext {
    /// The served models.
    pub store: Arc<ModelStore>,
    /// The model directory.
    pub model_dir: PathBuf,
    /// Run-time settings.
    pub settings: Arc<Settings>,
    /// Recent log lines.
    pub logs: LogRing,
}

fn succeeded(result: Value) -> CommandAck {
    CommandAck { status: CommandStatus::Succeeded, result }
}

fn failed(reason: impl Into<String>) -> CommandAck {
    CommandAck { status: CommandStatus::Failed, result: json!({ "error": reason.into() }) }
}

/// Runs `command` (except the restart itself) and returns its acknowledgement.
pub async fn execute(ctx: &CommandContext, command: &DeviceCommand) -> CommandAck {
    tracing::info!(id = command.id, kind = command.kind.as_str(), "running remote command");
    match command.kind {
        CommandKind::ReloadModels => {
            let (store, dir) = (ctx.store.clone(), ctx.model_dir.clone());
            match tokio::task::spawn_blocking(move || store.sync(&dir)).await {
                Ok(changed) => succeeded(json!({ "changed": changed, "models": served_list(&ctx.store) })),
                Err(e) => failed(format!("model directory scan failed: {e}")),
            }
        }
        CommandKind::ReverifyModels => {
            let dir = ctx.model_dir.clone();
            match tokio::task::spawn_blocking(move || reverify(&dir)).await {
                Ok(Ok(result)) => succeeded(result),
                Ok(Err(e)) => failed(format!("cannot read the model directory {}: {e}", ctx.model_dir.display())),
                Err(e) => failed(format!("verification task failed: {e}")),
            }
        }
        CommandKind::CollectLogs => {
            let lines = match command.args.get("lines") {
                None | Some(Value::Null) => DEFAULT_LOG_LINES,
                Some(v) => match v.as_u64() {
                    Some(n) => n as usize,
                    None => return failed(format!("`lines` must be a non-negative integer, got {v}")),
                },
            };
            let lines = ctx.logs.last(lines);
            succeeded(json!({ "count": lines.len(), "lines": lines }))
        }
        CommandKind::SetConfig => match command.args.as_object() {
            Some(args) => succeeded(ctx.settings.apply(args).to_json()),
            None => failed("set_config arguments must be an object of setting to value"),
        },
        CommandKind::RestartAgent => succeeded(json!({ "restarting": true })),
    }
}

/// The models serving now, as `name` → `version`.
fn served_list(store: &ModelStore) -> Value {
    let models: serde_json::Map<String, Value> = store
        .slots()
        .into_iter()
        .filter_map(|(name, slot)| slot.active.map(|m| (name, Value::String(m.version().to_string()))))
        .collect();
    Value::Object(models)
}

/// Re-reads every package in `dir` with full hash verification: each package's verdict and
/// the number of mismatches.
pub fn reverify(dir: &Path) -> std::io::Result<Value> {
    let mut packages = Vec::new();
    let mut mismatches = 0;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for path in entries.into_iter().filter(|p| is_package(p)) {
        let verdict = match Package::open(&path) {
            Ok(pkg) => json!({
                "path": path.display().to_string(),
                "model": pkg.manifest.model.name,
                "version": pkg.manifest.model.version,
                "status": "ok",
            }),
            Err(RuntimeError::HashMismatch { file, expected, actual, .. }) => {
                mismatches += 1;
                json!({
                    "path": path.display().to_string(),
                    "status": "mismatch",
                    "file": file,
                    "expected": expected,
                    "actual": actual,
                })
            }
            Err(e) => json!({ "path": path.display().to_string(), "status": "error", "reason": e.to_string() }),
        };
        packages.push(verdict);
    }
    Ok(json!({ "packages": packages, "mismatches": mismatches }))
}

/// Same rule as the store's scan: `.opkg` files and directories with a manifest, skipping
/// dot-names (packages being staged).
fn is_package(path: &Path) -> bool {
    let hidden = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
    if hidden {
        return false;
    }
    if path.is_dir() {
        return path.join(outpost_proto::manifest::MANIFEST_FILE).exists();
    }
    path.extension().is_some_and(|e| e == outpost_runtime::package::PACKAGE_EXTENSION)
}
