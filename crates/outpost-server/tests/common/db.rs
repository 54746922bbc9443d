//! Test databases: every storage and API test runs once per engine.
//!
//! SQLite: a fresh file in its own temporary directory. PostgreSQL: a fresh schema `t_<random>`
//! in the database at `OUTPOST_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`,
//! then the same as user `root`), selected with `?options=-c search_path=<schema>`. When
//! PostgreSQL cannot be reached the tests panic if `CI` is set, and otherwise warn loudly and
//! run on SQLite only.

use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};
use std::time::Duration;

const DEFAULT_BASES: [&str; 2] = ["postgres://postgres@127.0.0.1:5432/test", "postgres://root@127.0.0.1:5432/test"];

fn random_suffix() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A fresh SQLite file URL; the directory is left in place for post-mortems.
pub fn sqlite_url() -> String {
    let dir = tempfile::Builder::new().prefix("outpost-db-").tempdir().expect("create a temporary directory").keep();
    format!("sqlite://{}", dir.join("outpost.db").display())
}

/// A fresh PostgreSQL schema URL, or why PostgreSQL is not usable.
pub async fn postgres_url() -> Result<String, String> {
    let bases: Vec<String> = match std::env::var("OUTPOST_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => vec![url],
        _ => DEFAULT_BASES.iter().map(|s| s.to_string()).collect(),
    };
    let mut errors = Vec::new();
    for base in bases {
        let connected = tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(&base)).await;
        let mut conn = match connected {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                errors.push(format!("{base}: {e}"));
                continue;
            }
            Err(_) => {
                errors.push(format!("{base}: timed out"));
                continue;
            }
        };
        let schema = format!("t_{}", random_suffix());
        if let Err(e) = conn.execute(AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).await {
            errors.push(format!("{base}: CREATE SCHEMA failed: {e}"));
            continue;
        }
        let _ = conn.close().await;
        let sep = if base.contains('?') { '&' } else { '?' };
        return Ok(format!("{base}{sep}options=-c%20search_path%3D{schema}"));
    }
    Err(errors.join("; "))
}

/// `(label, url)` for a fresh SQLite database and, when reachable, a fresh PostgreSQL schema.
pub async fn test_databases() -> Vec<(String, String)> {
    let mut dbs = vec![("sqlite".to_string(), sqlite_url())];
    match postgres_url().await {
        Ok(url) => dbs.push(("postgres".to_string(), url)),
        Err(why) => {
            if std::env::var("CI").is_ok_and(|v| !v.is_empty()) {
                panic!("PostgreSQL is required when CI is set, but it is unreachable: {why}");
            }
            eprintln!();
            eprintln!("WARNING ******************************************************************");
            eprintln!("WARNING: PostgreSQL unreachable, running this test on SQLite ONLY: {why}");
            eprintln!("WARNING: set OUTPOST_TEST_POSTGRES_URL or start PostgreSQL on 127.0.0.1:5432");
            eprintln!("WARNING ******************************************************************");
        }
    }
    dbs
}
