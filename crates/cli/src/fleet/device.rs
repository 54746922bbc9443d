//! `outpost device list|show|label|revoke|command` and `outpost fleet summary`.

use super::client::{ago, encode, table, Target};
use super::token::{labels_text, print_json};
use anyhow::{bail, Result};
use clap::Subcommand;
use outpost_proto::fleet::api::{Command, CreateCommand, Device, FleetSummary, LabelChange, Page};
use outpost_proto::fleet::device::CommandKind;
use outpost_proto::fleet::selector::{parse_label, Selector};

/// `outpost device ...`
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// List devices, optionally those a label selector matches.
    List {
        /// Label selector, e.g. `site=berlin,line!=3`.
        #[arg(long, short = 's', default_value = "", value_parser = parse_selector)]
        selector: String,
        /// Only devices with this status: online, stale, offline, revoked.
        #[arg(long)]
        status: Option<String>,
        /// At most this many devices.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        target: Target,
    },
    /// Show one device in full.
    Show {
        /// Device id.
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Set (`key=value`) or remove (`key-`) labels.
    Label {
        /// Device id.
        id: String,
        /// `key=value` to set, `key-` to remove.
        #[arg(required = true)]
        changes: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Revoke a device: every request it makes from now on is refused.
    Revoke {
        /// Device id.
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Send a command: reload_models, reverify_models, collect_logs, set_config, restart_agent.
    Command {
        /// Device id.
        id: String,
        /// Command kind.
        kind: String,
        /// Arguments as a JSON object, e.g. '{"lines": 50}'.
        #[arg(long, default_value = "{}")]
        args: String,
        /// Wait this many seconds for the device's acknowledgement (0: do not wait).
        #[arg(long, default_value_t = 0)]
        wait: u64,
        #[command(flatten)]
        target: Target,
    },
}

fn parse_selector(text: &str) -> Result<String, String> {
    text.parse::<Selector>().map(|_| text.to_string()).map_err(|e| e.to_string())
}

/// Runs a device command.
pub fn run(cmd: DeviceCommand) -> Result<()> {
    match cmd {
        DeviceCommand::List { selector, status, limit, target } => {
            let api = target.connect()?;
            let mut path = format!("/v1/devices?limit={limit}&selector={}", encode(&selector));
            if let Some(s) = status {
                path.push_str(&format!("&status={}", encode(&s)));
            }
            let page: Page<Device> = api.get(&path)?;
            if api.json {
                return print_json(&page);
            }
            let rows: Vec<Vec<String>> = page
                .items
                .iter()
                .map(|d| {
                    vec![
                        d.id.clone(),
                        d.name.clone(),
                        d.status.as_str().into(),
                        health(d.health).into(),
                        ago(d.last_seen_ms),
                        d.agent_version.clone(),
                        d.models.iter().map(|m| format!("{}@{}", m.name, m.version)).collect::<Vec<_>>().join(","),
                        labels_text(&d.labels),
                    ]
                })
                .collect();
            table(&["id", "name", "status", "health", "last seen", "agent", "models", "labels"], &rows);
            if page.next_cursor.is_some() {
                println!("(more devices: raise --limit or narrow --selector)");
            }
            Ok(())
        }
        DeviceCommand::Show { id, target } => {
            let api = target.connect()?;
            let d: Device = api.get(&format!("/v1/devices/{}", encode(&id)))?;
            if api.json {
                return print_json(&d);
            }
            show(&d);
            Ok(())
        }
        DeviceCommand::Label { id, changes, target } => {
            let mut change = LabelChange::default();
            for c in &changes {
                if let Some(key) = c.strip_suffix('-').filter(|_| !c.contains('=')) {
                    change.remove.push(key.to_string());
                } else {
                    let (k, v) = parse_label(c)?;
                    change.set.insert(k, v);
                }
            }
            let api = target.connect()?;
            let labels: outpost_proto::fleet::Labels =
                api.send("PATCH", &format!("/v1/devices/{}/labels", encode(&id)), Some(&change))?;
            if api.json {
                return print_json(&labels);
            }
            println!("{id}: {}", labels_text(&labels));
            Ok(())
        }
        DeviceCommand::Revoke { id, target } => {
            let api = target.connect()?;
            let _: serde_json::Value =
                api.send::<(), _>("POST", &format!("/v1/devices/{}/revoke", encode(&id)), None)?;
            println!("revoked {id}: its next request will be refused");
            Ok(())
        }
        DeviceCommand::Command { id, kind, args, wait, target } => {
            let Some(kind) = CommandKind::parse(&kind) else {
                bail!("unknown command {kind:?}: use reload_models, reverify_models, collect_logs, set_config or restart_agent");
            };
            let args: serde_json::Value =
                serde_json::from_str(&args).map_err(|e| anyhow::anyhow!("--args is not JSON: {e}"))?;
            let api = target.connect()?;
            let created: Command = api.send(
                "POST",
                &format!("/v1/devices/{}/commands", encode(&id)),
                Some(&CreateCommand { kind, args }),
            )?;
            let mut cmd = created;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait);
            while wait > 0 && cmd.acked_ms.is_none() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(250));
                let page: Page<Command> = api.get(&format!("/v1/devices/{}/commands?limit=50", encode(&id)))?;
                if let Some(c) = page.items.into_iter().find(|c| c.id == cmd.id) {
                    cmd = c;
                }
            }
            if api.json {
                return print_json(&cmd);
            }
            println!("command {} ({}) to {id}: {}", cmd.id, cmd.kind.as_str(), cmd.status.as_str());
            if cmd.acked_ms.is_some() {
                println!("{}", serde_json::to_string_pretty(&cmd.result)?);
            }
            Ok(())
        }
    }
}

fn health(h: outpost_proto::fleet::device::Health) -> &'static str {
    use outpost_proto::fleet::device::Health;
    match h {
        Health::Ok => "ok",
        Health::Degraded => "degraded",
        Health::Failing => "failing",
    }
}

fn show(d: &Device) {
    println!("device   {} ({})", d.id, d.name);
    println!("status   {} (last seen {}), health {}", d.status.as_str(), ago(d.last_seen_ms), health(d.health));
    println!("labels   {}", labels_text(&d.labels));
    println!("agent    {}", d.agent_version);
    let h = &d.hardware;
    println!(
        "hardware {} {}, {} cores [{}], RAM {} MB, disk {} GB{}",
        h.arch,
        h.os,
        h.cores,
        h.cpu_features.join(" "),
        h.ram_bytes >> 20,
        h.disk_bytes >> 30,
        if h.accelerators.is_empty() { String::new() } else { format!(", accelerators {}", h.accelerators.join(" ")) }
    );
    let s = &d.system;
    println!(
        "system   cpu {:.0}%, mem {}/{} MB, agent rss {} MB, disk free {} GB",
        s.cpu_percent,
        s.mem_used_bytes >> 20,
        s.mem_total_bytes >> 20,
        s.agent_rss_bytes >> 20,
        s.disk_free_bytes >> 30
    );
    if d.models.is_empty() {
        println!("models   none reported");
    }
    for m in &d.models {
        println!(
            "model    {}@{} {}: {} requests, {} errors, p50 {:.2} ms, p99 {:.2} ms{}",
            m.name,
            m.version,
            m.state,
            m.requests,
            m.errors,
            m.latency_p50_ms,
            m.latency_p99_ms,
            m.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
        );
        if !m.installed.is_empty() {
            println!("  installed {}", m.installed.join(", "));
        }
        if let Some(u) = &m.update {
            let kind =
                u.failure_kind.map(|k| format!(" {}", serde_json::to_value(k).unwrap_or_default())).unwrap_or_default();
            let via = u.delta_from.as_deref().map(|b| format!(" (delta from {b})")).unwrap_or_default();
            println!(
                "  update {}@{} {}{kind}: {} of {} bytes{via}{}",
                m.name,
                u.version,
                u.state,
                u.bytes_fetched,
                u.bytes_total,
                u.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
            );
        }
    }
}

/// `outpost fleet ...`
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Devices by status, health, agent version and model version.
    Summary {
        /// Label selector limiting the devices counted.
        #[arg(long, short = 's', default_value = "", value_parser = parse_selector)]
        selector: String,
        #[command(flatten)]
        target: Target,
    },
}

/// Runs a fleet command.
pub fn run_fleet(cmd: FleetCommand) -> Result<()> {
    let FleetCommand::Summary { selector, target } = cmd;
    let api = target.connect()?;
    let s: FleetSummary = api.get(&format!("/v1/fleet/summary?selector={}", encode(&selector)))?;
    if api.json {
        return print_json(&s);
    }
    println!(
        "{} devices{}",
        s.devices,
        if selector.is_empty() { String::new() } else { format!(" matching {selector}") }
    );
    for (title, counts) in [
        ("status", &s.by_status),
        ("health", &s.by_health),
        ("agent version", &s.by_agent_version),
        ("model", &s.by_model_version),
    ] {
        let rows: Vec<Vec<String>> = counts.iter().map(|(k, n)| vec![k.clone(), n.to_string()]).collect();
        println!();
        table(&[title, "devices"], &rows);
    }
    Ok(())
}
