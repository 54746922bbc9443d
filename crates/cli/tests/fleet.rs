//! The fleet commands as an operator runs them: a real `outpost server` process, a real
//! `outpost agent` process that enrolls with a token, and the CLI talking to both.

#[path = "fleet/export_kill9.rs"]
mod export_kill9;
#[path = "fleet/kill9.rs"]
mod kill9;
#[path = "fleet/lossy.rs"]
mod lossy;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_outpost")
}

/// Runs the CLI against `server` with `token`; returns (success, stdout, stderr).
fn cli(server: &str, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env("OUTPOST_SERVER", server)
        .env("OUTPOST_TOKEN", token)
        .env("HOME", "/nonexistent-home")
        .output()
        .expect("binary runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn json(server: &str, token: &str, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (ok, out, err) = cli(server, token, &all);
    assert!(ok, "{args:?}: {out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"))
}

/// Starts `outpost server` on a free port; returns the process, its URL and the admin token.
fn start_server(dir: &Path) -> (Proc, String, String) {
    let mut child = Command::new(bin())
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--heartbeat-interval-s", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("server starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
    let line = lines.find(|l| l.contains("listening on")).expect("listen line");
    // Keep draining: the server prints more, and a closed pipe would end it.
    std::thread::spawn(move || lines.for_each(drop));
    let url = line.split_whitespace().find(|w| w.starts_with("http://")).unwrap().to_string();
    let token = std::fs::read_to_string(dir.join("data/admin.token")).unwrap().trim().to_string();
    (Proc(child), url, token)
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn operator_enrolls_an_agent_labels_commands_and_revokes_it_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, url, admin) = start_server(dir.path());

    // Roles: a viewer may list but not create tokens.
    let viewer = json(&url, &admin, &["token", "create", "--api-role", "viewer", "--name", "ci-viewer"]);
    let viewer = viewer["secret"].as_str().unwrap().to_string();
    let (ok, _, err) = cli(&url, &viewer, &["token", "create", "--uses", "1"]);
    assert!(!ok && err.contains("403") && err.contains("operator"), "{err}");
    let (ok, _, err) = cli(&url, "opt_forged", &["device", "list"]);
    assert!(!ok && err.contains("401"), "{err}");

    let token = json(&url, &admin, &["token", "create", "--uses", "1", "-l", "site=berlin", "-l", "line=2"]);
    let secret = token["secret"].as_str().unwrap().to_string();
    let models = dir.path().join("models");
    let (ok, out, err) = cli(&url, &admin, &["model", "train-demo", "--out", models.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let agent_data = dir.path().join("agent");
    let _agent = Proc(
        Command::new(bin())
            .args(["agent", "--listen", "127.0.0.1:0", "--server", &url, "--enroll-token", &secret, "--model-dir"])
            .arg(&models)
            .arg("--data-dir")
            .arg(&agent_data)
            .args(["--device-name", "press-7"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut device = serde_json::Value::Null;
    wait_for("the agent to enroll and report its model", || {
        device = json(&url, &admin, &["device", "list", "-s", "site=berlin"]);
        device["items"][0]["models"][0]["name"] == "vibration-anomaly"
    });
    let id = device["items"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(device["items"][0]["name"], "press-7");
    assert_eq!(device["items"][0]["status"], "online");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(agent_data.join("device.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the device key must be private");
    }

    // The used-up token enrolls nobody else.
    let (ok, _, err) = cli(&url, &admin, &["token", "list"]);
    assert!(ok, "{err}");

    // Labels and selectors.
    let (ok, out, err) = cli(&url, &admin, &["device", "label", &id, "line=3", "site-"]);
    assert!(ok && out.contains("line=3") && !out.contains("site="), "{out}{err}");
    let none = json(&url, &admin, &["device", "list", "-s", "line!=3"]);
    assert_eq!(none["items"].as_array().unwrap().len(), 0);
    let (ok, _, err) = cli(&url, &admin, &["device", "list", "-s", "line in berlin"]);
    assert!(!ok && err.contains("invalid selector"), "{err}");

    // A command round trip through the long-poll.
    let cmd =
        json(&url, &admin, &["device", "command", &id, "collect_logs", "--args", r#"{"lines": 5}"#, "--wait", "30"]);
    assert_eq!(cmd["status"], "succeeded", "{cmd}");
    assert!(cmd["result"]["lines"].as_array().is_some_and(|l| !l.is_empty()), "{cmd}");

    let summary = json(&url, &admin, &["fleet", "summary"]);
    assert_eq!(summary["devices"], 1);
    assert_eq!(summary["by_model_version"]["vibration-anomaly@1"], 1);

    // The registry: publish the package the agent serves, again (no change), then list and show.
    let opkg = models.join("vibration-anomaly-1.opkg");
    let published = json(&url, &admin, &["model", "publish", opkg.to_str().unwrap()]);
    assert_eq!(published["package"]["size_bytes"], std::fs::metadata(&opkg).unwrap().len(), "{published}");
    let (ok, out, err) = cli(&url, &admin, &["model", "publish", opkg.to_str().unwrap()]);
    assert!(ok && out.contains("already published (same bytes)"), "{out}{err}");
    let (ok, _, err) = cli(&url, &admin, &["model", "publish", models.join("absent.opkg").to_str().unwrap()]);
    assert!(!ok && err.contains("absent.opkg"), "{err}");
    let listed = json(&url, &admin, &["model", "list"]);
    assert_eq!(listed["items"][0]["task"], "anomaly", "{listed}");
    let shown = json(&url, &admin, &["model", "show", "vibration-anomaly"]);
    assert_eq!(shown[0]["devices_serving"], 1, "{shown}");
    assert_eq!(shown[0]["version"]["package"]["sha256"], published["package"]["sha256"]);

    // A rollout of the version the agent runs, through the CLI: the real agent's reports
    // complete its one wave after a one-second bake.
    let (ok, out, err) =
        cli(&url, &admin, &["rollout", "create", "vibration-anomaly@1", "--waves", "100%", "--bake", "1s"]);
    assert!(ok && out.contains("rollout 1 created"), "{out}{err}");
    let (ok, _, err) = cli(&url, &admin, &["rollout", "create", "vibration-anomaly@1", "--gate", "error_rate>1%"]);
    assert!(!ok && err.contains("error_rate takes <"), "{err}");
    wait_for("the rollout to complete", || json(&url, &admin, &["rollout", "show", "1"])["state"] == "completed");
    let (ok, out, err) = cli(&url, &admin, &["rollout", "show", "1"]);
    assert!(ok && out.contains("completed") && out.contains("every wave passed"), "{out}{err}");
    let listed = json(&url, &admin, &["rollout", "list"]);
    assert_eq!(listed[0]["waves"][0]["by_state"]["updated"], 1, "{listed}");
    let devices = json(&url, &admin, &["rollout", "devices", "1"]);
    assert_eq!((devices[0]["device_id"].as_str(), devices[0]["state"].as_str()), (Some(id.as_str()), Some("updated")));
    let (ok, _, err) = cli(&url, &admin, &["rollout", "pause", "1"]);
    assert!(!ok && err.contains("cannot pause a rollout that is completed"), "{err}");

    // Revocation: an operator may not, an admin may; the device is then refused.
    let operator = json(&url, &admin, &["token", "create", "--api-role", "operator", "--name", "ci-operator"]);
    let operator = operator["secret"].as_str().unwrap().to_string();
    let (ok, _, err) = cli(&url, &operator, &["device", "revoke", &id]);
    assert!(!ok && err.contains("403"), "{err}");
    let (ok, _, err) = cli(&url, &admin, &["device", "revoke", &id]);
    assert!(ok, "{err}");
    let shown = json(&url, &admin, &["device", "show", &id]);
    assert_eq!(shown["status"], "revoked");
    let audit: serde_json::Value = ureq::get(&format!("{url}/v1/audit?limit=100"))
        .header("authorization", format!("Bearer {admin}"))
        .call()
        .expect("audit log readable by an admin")
        .body_mut()
        .read_json()
        .unwrap();
    let actions: Vec<&str> = audit["items"].as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
    for a in ["device.enroll", "device.label", "device.revoke", "command.create", "command.ack", "api_token.create"] {
        assert!(actions.contains(&a), "audit lacks {a}: {actions:?}");
    }
}

#[test]
fn simulated_fleet_enrolls_heartbeats_and_every_injected_fault_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, url, admin) = start_server(dir.path());
    let report = json(
        &url,
        &admin,
        &[
            "sim",
            "--devices",
            "40",
            "--heartbeat-interval",
            "1s",
            "--duration",
            "4s",
            "--offline-fraction",
            "0.2",
            "--fault-bad-signature",
            "0.1",
            "--fault-replay",
            "0.1",
            "--fault-garbage-json",
            "0.1",
        ],
    );
    assert_eq!(report["enrolled"], 40, "{report}");
    assert!(report["heartbeats_ok"].as_u64().unwrap() >= 40, "{report}");
    assert_eq!(report["heartbeats_failed"], 0, "{report}");
    let faults = report["faults"].as_array().unwrap();
    let injected: u64 = faults.iter().map(|f| f["injected"].as_u64().unwrap()).sum();
    let rejected: u64 = faults.iter().map(|f| f["rejected"].as_u64().unwrap()).sum();
    assert!(injected > 0, "{report}");
    assert_eq!(injected, rejected, "every broken request must be refused: {report}");
    let summary = json(&url, &admin, &["fleet", "summary", "-s", "simulated=true"]);
    assert_eq!(summary["devices"], 40);
}

#[test]
fn revoking_the_last_admin_is_refused_and_admin_token_recovers_locally() {
    let dir = tempfile::tempdir().unwrap();
    let (server, url, admin) = start_server(dir.path());
    let tokens = json(&url, &admin, &["token", "list", "--api"]);
    let boot_id = tokens["items"][0]["id"].as_str().unwrap().to_string();
    let (ok, _, err) = cli(&url, &admin, &["token", "revoke", &boot_id]);
    assert!(!ok && err.contains("409") && err.contains("only active admin"), "{err}");

    // A second admin may revoke the first; then its secret is lost: every admin is gone.
    let second = json(&url, &admin, &["token", "create", "--api-role", "admin", "--name", "second"]);
    let second_secret = second["secret"].as_str().unwrap().to_string();
    let (ok, _, err) = cli(&url, &second_secret, &["token", "revoke", &boot_id]);
    assert!(ok, "{err}");
    drop(server);

    // Recovery works on the server's files, with the server stopped or running.
    let out = Command::new(bin())
        .args(["server", "admin-token", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let recovered = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(recovered.starts_with("opt_"), "{recovered}");

    // A restart neither mints another bootstrap token nor points at the stale file.
    let mut child = Command::new(bin())
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines().map_while(Result::ok);
    let line = lines.find(|l| l.contains("listening on")).expect("listen line");
    let server = Proc(child);
    // The rest of stdout, read until the server exits (a blocking read would wait forever).
    let rest = std::thread::spawn(move || lines.collect::<Vec<_>>());
    let url = line.split_whitespace().find(|w| w.starts_with("http://")).unwrap().to_string();
    let (ok, _, err) = cli(&url, &admin, &["device", "list"]);
    assert!(!ok && err.contains("401"), "the revoked bootstrap token still works: {err}");
    let listed = json(&url, &recovered, &["token", "list", "--api"]);
    assert!(listed["items"].as_array().unwrap().iter().any(|t| t["name"] == "recovery-admin"), "{listed}");
    drop(server);
    let printed = rest.join().unwrap();
    assert!(
        !printed.iter().any(|l| l.contains("bootstrap admin token")),
        "restart pointed at a revoked token: {printed:?}"
    );

    // No data dir, no database: a clear error instead of a new empty database.
    let out = Command::new(bin())
        .args(["server", "admin-token", "--data-dir"])
        .arg(dir.path().join("nope"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no server database"));
}
