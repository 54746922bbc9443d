//! `outpost token create|list|revoke`: enrollment tokens for devices, API tokens for operators.

use super::client::{ago, parse_duration_s, table, Target};
use anyhow::Result;
use clap::{Args, Subcommand};
use outpost_proto::fleet::api::{ApiToken, CreateApiToken, CreateEnrollmentToken, EnrollmentToken, Page, Role};
use outpost_proto::fleet::selector::{parse_label, Labels};

/// `outpost token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an enrollment token (default) or, with --api-role, an operator API token.
    Create(CreateArgs),
    /// List enrollment tokens (or API tokens with --api).
    List {
        /// List operator API tokens instead of enrollment tokens.
        #[arg(long)]
        api: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Revoke a token by id (`et-...` enrollment, `at-...` API).
    Revoke {
        /// Token id.
        id: String,
        #[command(flatten)]
        target: Target,
    },
}

/// Flags of `outpost token create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// How many devices may enroll with the token.
    #[arg(long, default_value_t = 1)]
    uses: u32,
    /// Lifetime: 30m, 24h, 7d...
    #[arg(long, default_value = "24h", value_parser = parse_duration_s)]
    expires: u64,
    /// Label applied to devices that enroll with it, `key=value` (repeatable).
    #[arg(long = "label", short = 'l', value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Free-text note.
    #[arg(long, default_value = "")]
    note: String,
    /// Create an operator API token with this role instead: viewer, operator or admin.
    #[arg(long, value_parser = parse_role)]
    api_role: Option<Role>,
    /// Name of the API token's holder (with --api-role).
    #[arg(long, requires = "api_role")]
    name: Option<String>,
    #[command(flatten)]
    target: Target,
}

fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse(text).ok_or_else(|| format!("{text:?} is not a role: viewer, operator or admin"))
}

/// Runs a token command.
pub fn run(cmd: TokenCommand) -> Result<()> {
    match cmd {
        TokenCommand::Create(args) => create(args),
        TokenCommand::List { api, target } => {
            let api_client = target.connect()?;
            if api {
                let page: Page<ApiToken> = api_client.get("/v1/api-tokens?limit=1000")?;
                if api_client.json {
                    return print_json(&page);
                }
                let rows = page
                    .items
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            t.name.clone(),
                            t.role.as_str().into(),
                            t.created_by.clone(),
                            ago(Some(t.created_ms)),
                            if t.revoked { "revoked".into() } else { "active".into() },
                        ]
                    })
                    .collect::<Vec<_>>();
                table(&["id", "name", "role", "created by", "created", "state"], &rows);
            } else {
                let page: Page<EnrollmentToken> = api_client.get("/v1/enrollment-tokens?limit=1000")?;
                if api_client.json {
                    return print_json(&page);
                }
                let rows = page
                    .items
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            format!("{}/{}", t.used, t.uses),
                            labels_text(&t.labels),
                            expiry_text(t.expires_ms),
                            if t.revoked { "revoked".into() } else { "active".into() },
                            t.note.clone(),
                        ]
                    })
                    .collect::<Vec<_>>();
                table(&["id", "used", "labels", "expires", "state", "note"], &rows);
            }
            Ok(())
        }
        TokenCommand::Revoke { id, target } => {
            let api = target.connect()?;
            let path = if id.starts_with("at-") {
                format!("/v1/api-tokens/{}", super::client::encode(&id))
            } else {
                format!("/v1/enrollment-tokens/{}", super::client::encode(&id))
            };
            let _: serde_json::Value = api.send::<(), _>("DELETE", &path, None)?;
            println!("revoked {id}");
            Ok(())
        }
    }
}

fn create(args: CreateArgs) -> Result<()> {
    let api = args.target.connect()?;
    if let Some(role) = args.api_role {
        let req = CreateApiToken {
            name: args.name.unwrap_or_else(|| format!("{}-token", role.as_str())),
            role,
            expires_in_s: Some(args.expires),
        };
        let token: ApiToken = api.send("POST", "/v1/api-tokens", Some(&req))?;
        if api.json {
            return print_json(&token);
        }
        println!(
            "API token {} ({}, role {}), expires {}",
            token.id,
            token.name,
            token.role.as_str(),
            expiry_text(token.expires_ms.unwrap_or(0))
        );
        println!("{}", token.secret.unwrap_or_default());
        println!("(shown once: store it now; send it as `Authorization: Bearer <token>` or OUTPOST_TOKEN)");
        return Ok(());
    }
    let labels: Labels = args.labels.into_iter().collect();
    let req = CreateEnrollmentToken { uses: args.uses, expires_in_s: args.expires, labels, note: args.note };
    let token: EnrollmentToken = api.send("POST", "/v1/enrollment-tokens", Some(&req))?;
    if api.json {
        return print_json(&token);
    }
    println!(
        "enrollment token {}: {} use(s), expires {}, labels [{}]",
        token.id,
        token.uses,
        expiry_text(token.expires_ms),
        labels_text(&token.labels)
    );
    println!("{}", token.secret.unwrap_or_default());
    println!("(shown once) enroll a device with: outpost agent --server {} --enroll-token <token>", api.base());
    Ok(())
}

/// Prints any value as pretty JSON.
pub fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `k=v,k=v`.
pub fn labels_text(labels: &Labels) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

fn expiry_text(ms: i64) -> String {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    if ms <= now {
        return "expired".into();
    }
    let s = (ms - now) / 1000;
    match s {
        0..=3599 => format!("in {}m", s / 60),
        3600..=172_799 => format!("in {}h", s / 3600),
        _ => format!("in {}d", s / 86_400),
    }
}
