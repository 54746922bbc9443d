//! `outpost alert list` and `outpost drift`: the alerts the server's rules raise, and the drift
//! of the data each model version sees, per label group.

use super::client::{ago, encode, table, Target};
use super::token::print_json;
use anyhow::Result;
use clap::{Args, Subcommand};
use outpost_proto::fleet::drift::{Alert, DriftGroup};

/// Alert subcommands.
#[derive(Debug, Subcommand)]
pub enum AlertCommand {
    /// Firing alerts: rule, model version, group, value, the devices that raised them.
    List(AlertListArgs),
}

/// Flags of `outpost alert list`.
#[derive(Debug, Args)]
pub struct AlertListArgs {
    /// Only alerts about this model.
    #[arg(long)]
    model: Option<String>,
    #[command(flatten)]
    target: Target,
}

/// Flags of `outpost drift`.
#[derive(Debug, Args)]
pub struct DriftArgs {
    /// Only this model.
    #[arg(long)]
    model: Option<String>,
    /// Only this version.
    #[arg(long)]
    version: Option<String>,
    /// Only devices matching this label selector.
    #[arg(long, default_value = "")]
    selector: String,
    /// One row per value of this device label.
    #[arg(long)]
    group_by: Option<String>,
    #[command(flatten)]
    target: Target,
}

/// Runs an alert subcommand.
pub fn run(cmd: AlertCommand) -> Result<()> {
    match cmd {
        AlertCommand::List(a) => list(a),
    }
}

fn devices_text(alerting: &[String], total: u64) -> String {
    let shown: Vec<&str> = alerting.iter().take(5).map(String::as_str).collect();
    let more = alerting.len().saturating_sub(shown.len());
    let mut text = format!("{}/{total}", alerting.len());
    if !shown.is_empty() {
        text += &format!(" {}", shown.join(","));
    }
    if more > 0 {
        text += &format!(" +{more}");
    }
    text
}

fn list(a: AlertListArgs) -> Result<()> {
    let api = a.target.connect()?;
    let path = match &a.model {
        Some(m) => format!("/v1/alerts?model={}", encode(m)),
        None => "/v1/alerts".to_string(),
    };
    let alerts: Vec<Alert> = api.get(&path)?;
    if api.json {
        return print_json(&alerts);
    }
    if alerts.is_empty() {
        println!("no alerts firing");
        return Ok(());
    }
    let rows = alerts
        .iter()
        .map(|a| {
            vec![
                a.rule.clone(),
                format!("{}@{}", a.model, a.version),
                a.group.clone().unwrap_or_else(|| "-".into()),
                format!("{:.3} > {}", a.value, a.above),
                devices_text(&a.alerting, a.devices),
                a.since_ms.map_or_else(|| "-".into(), |ms| ago(Some(ms))),
            ]
        })
        .collect::<Vec<_>>();
    table(&["RULE", "MODEL", "GROUP", "VALUE", "ALERTING DEVICES", "SINCE"], &rows);
    Ok(())
}

/// Runs `outpost drift`.
pub fn drift(a: DriftArgs) -> Result<()> {
    let api = a.target.connect()?;
    let mut query = vec![];
    for (key, value) in [("model", &a.model), ("version", &a.version), ("group_by", &a.group_by)] {
        if let Some(v) = value {
            query.push(format!("{key}={}", encode(v)));
        }
    }
    if !a.selector.is_empty() {
        query.push(format!("selector={}", encode(&a.selector)));
    }
    let path = if query.is_empty() { "/v1/drift".to_string() } else { format!("/v1/drift?{}", query.join("&")) };
    let groups: Vec<DriftGroup> = api.get(&path)?;
    if api.json {
        return print_json(&groups);
    }
    if groups.is_empty() {
        println!("no drift windows reported recently");
        return Ok(());
    }
    let rows = groups
        .iter()
        .map(|g| {
            let top = g.features.first().map_or_else(|| "-".into(), |f| format!("{} ({:.2})", f.feature, f.mean_psi));
            vec![
                format!("{}@{}", g.model, g.version),
                g.group.clone().unwrap_or_else(|| "-".into()),
                g.devices.to_string(),
                format!("{}/{}/{}/{}", g.ok, g.warn, g.alert, g.no_reference),
                format!("{:.3}", g.mean_score),
                format!("{:.3}", g.max_score),
                top,
                devices_text(&g.alerting, g.devices),
            ]
        })
        .collect::<Vec<_>>();
    table(&["MODEL", "GROUP", "DEVICES", "OK/WARN/ALERT/NOREF", "MEAN", "MAX", "TOP FEATURE", "ALERTING"], &rows);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerting_devices_are_counted_and_the_first_few_named() {
        let ids: Vec<String> = (0..8).map(|i| format!("d{i}")).collect();
        assert_eq!(devices_text(&ids, 20), "8/20 d0,d1,d2,d3,d4 +3");
        assert_eq!(devices_text(&[], 4), "0/4");
    }
}
