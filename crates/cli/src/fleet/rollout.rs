//! `outpost rollout create|list|show|devices|pause|resume|abort|rollback|promote`.

use super::client::{ago, encode, table, Target};
use super::token::print_json;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use outpost_proto::fleet::rollout::{CreateRollout, Gate, OnFailure, Rollout, RolloutDevice, Verdict};
use std::time::Duration;

/// Rollout subcommands.
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Start a rollout: `outpost rollout create defect@3 --selector site=berlin --waves 1%,10%,50%,100%`.
    Create(CreateArgs),
    /// Rollouts, newest first.
    List(ListArgs),
    /// One rollout per wave: devices by state, failures by kind, gates against their limits.
    Show(ShowArgs),
    /// The devices of a rollout and where each is.
    Devices(IdArgs),
    /// Stop moving; devices keep what they have.
    Pause(IdArgs),
    /// Move on from a pause.
    Resume(IdArgs),
    /// Stop for good; devices already on the version keep it.
    Abort(IdArgs),
    /// Return every device of the rollout to its previous version.
    Rollback(IdArgs),
    /// Skip the remaining waves: assign the version to the selector now.
    Promote(IdArgs),
}

fn percent(text: &str) -> Result<f64, String> {
    let t = text.trim().trim_end_matches('%');
    t.parse::<f64>().map_err(|_| format!("{text:?} is not a percentage"))
}

fn duration_s(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num.parse().map_err(|_| format!("{text:?} is not a duration like 90s, 10m, 2h"))?;
    let mul = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: use s, m, h or d")),
    };
    Ok(n.saturating_mul(mul))
}

/// Flags of `outpost rollout create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// MODEL@VERSION (published with a package).
    target: String,
    /// Label selector of the devices in scope (default: every device).
    #[arg(long, default_value = "")]
    selector: String,
    /// Cumulative share after each wave, e.g. `1%,10%,50%,100%`.
    #[arg(long, value_delimiter = ',', value_parser = percent, default_value = "1,10,50,100")]
    waves: Vec<f64>,
    /// How long each wave bakes once its devices run the version (90s, 10m, 1h).
    #[arg(long, value_parser = duration_s, default_value = "10m")]
    bake: u64,
    /// Failed updates tolerated, percent of the devices targeted so far.
    #[arg(long, value_parser = percent, default_value = "2")]
    max_failures: f64,
    /// A health gate; repeat for more: `error_rate<1%`, `p99_latency<1.2x`, `shadow_agreement>97%`,
    /// `drift_alerts<5%`, `drift_score<0.2`.
    #[arg(long = "gate")]
    gates: Vec<Gate>,
    /// What a failed gate does.
    #[arg(long, value_enum, default_value = "rollback")]
    on_failure: OnFailureArg,
    /// A wave is complete when this share of its devices runs the version.
    #[arg(long, value_parser = percent, default_value = "90")]
    success: f64,
    /// How long a wave may take to reach --success (offline devices) [default: 3 × bake, ≥ 10m].
    #[arg(long, value_parser = duration_s)]
    wave_deadline: Option<u64>,
    /// Only run the candidate in shadow beside the serving version; never serve it.
    #[arg(long)]
    shadow: bool,
    /// Share of live requests the shadow candidate sees.
    #[arg(long, value_parser = percent, default_value = "10")]
    shadow_sample: f64,
    /// Requests (or shadow comparisons) a gate needs per wave before it decides.
    #[arg(long, default_value_t = 100)]
    min_samples: u64,
    #[command(flatten)]
    target_server: Target,
}

/// `--on-failure` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum OnFailureArg {
    /// Stop and wait for an operator.
    Pause,
    /// Return every device to its previous version.
    Rollback,
}

/// Flags of `outpost rollout list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only rollouts of this model.
    #[arg(long)]
    model: Option<String>,
    #[command(flatten)]
    target: Target,
}

/// Flags of `outpost rollout show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Rollout id.
    id: i64,
    /// Refresh every 2 s until the rollout ends.
    #[arg(long)]
    watch: bool,
    #[command(flatten)]
    target: Target,
}

/// A rollout id.
#[derive(Debug, Args)]
pub struct IdArgs {
    /// Rollout id.
    id: i64,
    #[command(flatten)]
    target: Target,
}

/// Runs a rollout subcommand.
pub fn run(cmd: RolloutCommand) -> Result<()> {
    match cmd {
        RolloutCommand::Create(a) => create(a),
        RolloutCommand::List(a) => list(a),
        RolloutCommand::Show(a) => show(a),
        RolloutCommand::Devices(a) => devices(a),
        RolloutCommand::Pause(a) => action(a, "pause"),
        RolloutCommand::Resume(a) => action(a, "resume"),
        RolloutCommand::Abort(a) => action(a, "abort"),
        RolloutCommand::Rollback(a) => action(a, "rollback"),
        RolloutCommand::Promote(a) => action(a, "promote"),
    }
}

fn create(a: CreateArgs) -> Result<()> {
    let api = a.target_server.connect()?;
    let Some((model, version)) = a.target.split_once('@') else { bail!("name the version as MODEL@VERSION") };
    let spec = CreateRollout {
        model: model.parse().context("model name")?,
        version: version.parse().context("version")?,
        selector: a.selector,
        waves: a.waves,
        bake_s: a.bake,
        max_failures: a.max_failures,
        gates: a.gates,
        on_failure: match a.on_failure {
            OnFailureArg::Pause => OnFailure::Pause,
            OnFailureArg::Rollback => OnFailure::Rollback,
        },
        success: a.success,
        wave_deadline_s: a.wave_deadline,
        shadow: a.shadow,
        shadow_sample: a.shadow_sample,
        min_samples: a.min_samples,
    };
    let r: Rollout = api.send("POST", "/v1/rollouts", Some(&spec))?;
    if api.json {
        return print_json(&r);
    }
    println!(
        "rollout {} created: {}@{} over {} devices; follow it with `outpost rollout show {} --watch`",
        r.id, model, version, r.eligible, r.id
    );
    Ok(())
}

fn list(a: ListArgs) -> Result<()> {
    let api = a.target.connect()?;
    let path = match &a.model {
        Some(m) => format!("/v1/rollouts?model={}", encode(m)),
        None => "/v1/rollouts".to_string(),
    };
    let rollouts: Vec<Rollout> = api.get(&path)?;
    if api.json {
        return print_json(&rollouts);
    }
    let rows = rollouts
        .iter()
        .map(|r| {
            let updated: u64 = r.waves.iter().map(|w| w.by_state.get("updated").copied().unwrap_or(0)).sum();
            vec![
                r.id.to_string(),
                format!("{}@{}", r.spec.model, r.spec.version),
                r.state.as_str().to_string(),
                format!("{}/{}", r.wave + 1, r.spec.waves.len()),
                format!("{updated}/{}", r.eligible),
                ago(Some(r.updated_ms)),
                r.reason.clone(),
            ]
        })
        .collect::<Vec<_>>();
    table(&["ID", "MODEL", "STATE", "WAVE", "UPDATED", "CHANGED", "REASON"], &rows);
    Ok(())
}

fn fmt_gate_value(gate: &str, v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if gate.contains("latency") => format!("{v:.2}ms"),
        Some(v) if gate.starts_with("drift_score") => format!("{v:.3}"),
        Some(v) => format!("{:.2}%", v * 100.0),
    }
}

/// Prints one rollout.
fn print(r: &Rollout) {
    println!(
        "rollout {}: {}@{} over '{}'  {}  wave {}/{}",
        r.id,
        r.spec.model,
        r.spec.version,
        r.spec.selector,
        r.state.as_str(),
        r.wave + 1,
        r.spec.waves.len()
    );
    println!("  {}", r.reason);
    let skipped: Vec<String> = r.skipped.iter().map(|(k, n)| format!("{n} {k}")).collect();
    println!(
        "  {} eligible devices{}",
        r.eligible,
        if skipped.is_empty() { String::new() } else { format!("; skipped: {}", skipped.join(", ")) }
    );
    for w in &r.waves {
        let states: Vec<String> = w.by_state.iter().map(|(k, n)| format!("{k} {n}")).collect();
        println!(
            "  wave {} ({}%): {:?}, {} devices [{}], offline {}",
            w.index + 1,
            w.percent,
            w.phase,
            w.devices,
            states.join(", "),
            w.offline
        );
        if !w.failures.is_empty() {
            let f: Vec<String> = w.failures.iter().map(|(k, n)| format!("{k} {n}")).collect();
            println!("    failures: {}", f.join(", "));
        }
        for g in &w.gates {
            let mark = match g.verdict {
                Verdict::Pass => "pass",
                Verdict::Fail => "FAIL",
                Verdict::Waiting => "wait",
            };
            let baseline =
                g.baseline.map(|b| format!(" (previous {})", fmt_gate_value(&g.gate, Some(b)))).unwrap_or_default();
            println!(
                "    {mark} {}: {} vs limit {}{baseline}; {}",
                g.gate,
                fmt_gate_value(&g.gate, g.value),
                fmt_gate_value(&g.gate, g.limit),
                g.note
            );
        }
    }
}

fn show(a: ShowArgs) -> Result<()> {
    let api = a.target.connect()?;
    loop {
        let r: Rollout = api.get(&format!("/v1/rollouts/{}", a.id))?;
        if api.json {
            print_json(&r)?;
        } else {
            if a.watch {
                // Clear the screen and home the cursor, like `watch`.
                print!("\x1b[2J\x1b[H");
            }
            print(&r);
        }
        if !a.watch || !r.state.is_active() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn devices(a: IdArgs) -> Result<()> {
    let api = a.target.connect()?;
    let devices: Vec<RolloutDevice> = api.get(&format!("/v1/rollouts/{}/devices", a.id))?;
    if api.json {
        return print_json(&devices);
    }
    let rows = devices
        .iter()
        .map(|d| {
            vec![
                d.device_id.clone(),
                (d.wave + 1).to_string(),
                d.state.as_str().to_string(),
                d.from_version.clone().unwrap_or_else(|| "-".into()),
                d.failure.clone().unwrap_or_default(),
                d.attempts.to_string(),
                ago(Some(d.updated_ms)),
            ]
        })
        .collect::<Vec<_>>();
    table(&["DEVICE", "WAVE", "STATE", "FROM", "FAILURE", "RETRIES", "CHANGED"], &rows);
    Ok(())
}

fn action(a: IdArgs, what: &str) -> Result<()> {
    let api = a.target.connect()?;
    let r: Rollout = api.send::<(), _>("POST", &format!("/v1/rollouts/{}/{what}", a.id), None)?;
    if api.json {
        return print_json(&r);
    }
    print(&r);
    Ok(())
}
