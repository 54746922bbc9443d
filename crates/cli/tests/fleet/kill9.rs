//! Kill -9 during model updates: an agent process is killed at random points while it moves
//! between two published versions (downloading, verifying, installing, loading), over and over.
//! After every kill the model directory holds only whole, verified packages; after a restart
//! the agent serves exactly the desired version and its report to the server says so.
//! `OUTPOST_KILL9_TRIALS` sets the number of kills (bench/kill9.sh runs many more).

use super::{bin, json, start_server, wait_for, Proc};
use outpost_runtime::Package;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `base` as `version`, carrying `padding` extra bytes in a listed file so that a download
/// takes long enough to be interrupted.
fn variant(base: &Package, version: &str, padding: usize, out: &Path) -> PathBuf {
    let mut manifest = base.manifest.clone();
    manifest.model.version = version.to_string();
    let mut files: Vec<(String, Vec<u8>)> =
        manifest.files.keys().map(|n| (n.clone(), base.file(n).unwrap().to_vec())).collect();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ version.len() as u64;
    let noise: Vec<u8> = (0..padding)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    files.push(("padding.bin".into(), noise));
    let pkg = Package::from_parts(manifest, files).unwrap();
    let path = out.join(format!("{}-{version}.opkg", pkg.manifest.model.name));
    pkg.write_opkg(&path).unwrap();
    path
}

fn start_agent(url: &str, token: &str, models: &Path, data: &Path, listen: &str) -> Proc {
    Proc(
        Command::new(bin())
            .args(["agent", "--listen", listen, "--server", url, "--enroll-token", token, "--model-dir"])
            .arg(models)
            .arg("--data-dir")
            .arg(data)
            .stdout(Stdio::null())
            .stderr(log(data))
            .spawn()
            .unwrap(),
    )
}

/// The agents' log, appended to by every start (read when a check fails).
fn log(data: &Path) -> Stdio {
    let path = data.parent().unwrap().join("agents.log");
    std::fs::OpenOptions::new().create(true).append(true).open(path).map(Stdio::from).unwrap_or(Stdio::null())
}

fn kill9(mut agent: Proc) {
    // SIGKILL: no destructor, no flush, no clean shutdown.
    let _ = agent.0.kill();
    let _ = agent.0.wait();
}

/// Every package the store could load (non-dot `.opkg`) is whole and verifies.
fn assert_only_verified_packages(models: &Path, trial: usize) -> Vec<String> {
    let mut versions = Vec::new();
    for entry in std::fs::read_dir(models).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(".opkg") {
            continue;
        }
        let pkg = Package::open(entry.path())
            .unwrap_or_else(|e| panic!("trial {trial}: {name} is in the model directory but does not verify: {e}"));
        versions.push(pkg.manifest.model.version.clone());
    }
    versions
}

fn set_desired(url: &str, admin: &str, device: &str, version: &str) {
    let body = serde_json::json!({"models": {"vibration-anomaly": version}, "config": {}});
    let status = ureq::put(&format!("{url}/v1/devices/{device}/override"))
        .header("authorization", format!("Bearer {admin}"))
        .send_json(&body)
        .unwrap()
        .status();
    assert!(status.is_success());
}

/// The version the agent's own API serves, when it answers.
fn served(listen: &str) -> Option<String> {
    let mut answer = ureq::get(&format!("http://{listen}/v2/models/vibration-anomaly")).call().ok()?;
    let body: serde_json::Value = answer.body_mut().read_json().ok()?;
    body["versions"][0].as_str().map(String::from)
}

/// The version the device reports serving (ready or on probation), and the model's report.
fn reported(url: &str, admin: &str, device: &str) -> Option<(String, serde_json::Value)> {
    let shown = json(url, admin, &["device", "show", device]);
    let model = shown["models"].as_array()?.iter().find(|m| m["name"] == "vibration-anomaly")?.clone();
    let serving = model["state"] == "ready" || model["state"] == "probation";
    serving.then(|| (model["version"].as_str().unwrap_or_default().to_string(), model))
}

#[test]
fn agent_killed_at_random_points_of_updates_always_comes_back_on_one_verified_version() {
    let trials: usize = std::env::var("OUTPOST_KILL9_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let (_server, url, admin) = start_server(dir.path());
    let build = dir.path().join("build");
    let (ok, out, err) = super::cli(&url, &admin, &["model", "train-demo", "--out", build.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let base = Package::open(build.join("vibration-anomaly-1.opkg")).unwrap();
    let versions = ["2", "3"];
    for v in versions {
        let path = variant(&base, v, 3 << 20, &build);
        json(&url, &admin, &["model", "publish", path.to_str().unwrap()]);
    }
    let token = json(&url, &admin, &["token", "create", "--uses", "1"]);
    let token = token["secret"].as_str().unwrap().to_string();
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    let data = dir.path().join("agent");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");

    // First start: enroll.
    let agent = start_agent(&url, &token, &models, &data, &listen);
    let mut device = String::new();
    wait_for("enrollment", || {
        let list = json(&url, &admin, &["device", "list"]);
        device = list["items"][0]["id"].as_str().unwrap_or_default().to_string();
        !device.is_empty()
    });
    kill9(agent);
    // How long a restarted agent takes to serve a version it must download: kills land from
    // its start to a little past that.
    set_desired(&url, &admin, &device, "2");
    let started = Instant::now();
    let agent = start_agent(&url, &token, &models, &data, &listen);
    wait_for("v2 served", || served(&listen).as_deref() == Some("2"));
    let update_time = started.elapsed().max(Duration::from_millis(50));
    eprintln!("start to serving a downloaded version: {update_time:?}; kills land in 0..{:?}", update_time * 6 / 5);
    kill9(agent);

    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut desired = "2";
    // Where the kills landed: before any byte of the new version, mid-download, installed.
    let mut phases = [0usize; 3];
    let mut crash_loops = 0;
    for trial in 0..trials {
        // Switch to the other version and make the agent fetch it: its package is removed
        // while the agent is down, so the update goes through download, verify and install.
        let target = if desired == "2" { "3" } else { "2" };
        let _ = std::fs::remove_file(models.join(format!("vibration-anomaly-{target}.opkg")));
        set_desired(&url, &admin, &device, target);
        desired = target;
        let agent = start_agent(&url, &token, &models, &data, &listen);
        // Kill anywhere from start-up to a little past a whole update.
        let window = update_time.as_micros() as u64 * 6 / 5;
        std::thread::sleep(Duration::from_micros(next() % window.max(1)));
        kill9(agent);
        let on_disk = assert_only_verified_packages(&models, trial);
        let partial = std::fs::read_dir(models.join(".staging")).map(|d| d.flatten().count() > 0).unwrap_or(false);
        match (on_disk.iter().any(|v| v == target), partial) {
            (true, _) => phases[2] += 1,
            (false, true) => phases[1] += 1,
            (false, false) => phases[0] += 1,
        }
        // Every 25th kill, and after the last: restart and check what it serves and reports.
        if trial % 25 == 24 || trial + 1 == trials {
            let agent = start_agent(&url, &token, &models, &data, &listen);
            // Exactly one verified version serves and the report names it: the desired one, or,
            // when the kills read as a crash loop of the desired version while it was on
            // probation, the one it replaced, with the desired version reported rolled back.
            let mut outcome = None;
            let mut last;
            let deadline = Instant::now() + Duration::from_secs(60);
            while outcome.is_none() {
                let serving = served(&listen);
                let reported = reported(&url, &admin, &device);
                if let (Some(serving), Some((version, report))) = (&serving, &reported) {
                    let rolled_back =
                        report["update"]["state"] == "rolled_back" && report["update"]["version"] == desired;
                    if version == serving && (serving == desired || rolled_back) {
                        outcome = Some((serving.clone(), report.clone()));
                    }
                }
                last = (serving, reported);
                if Instant::now() >= deadline {
                    let log = std::fs::read_to_string(dir.path().join("agents.log")).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect();
                    panic!(
                        "trial {trial}: desired v{desired}, no single version served and reported; last seen {last:?}\n{}",
                        tail.join("\n")
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let (serving, report) = outcome.unwrap();
            if serving != desired {
                assert!(
                    report["update"]["reason"].as_str().unwrap_or("").contains("crash loop"),
                    "trial {trial}: {report}"
                );
                crash_loops += 1;
            }
            let on_disk = assert_only_verified_packages(&models, trial);
            assert!(on_disk.contains(&serving), "trial {trial}: {on_disk:?}");
            kill9(agent);
        }
    }
    eprintln!(
        "{trials} kills: {} before the download, {} mid-download, {} after the install; \
         {crash_loops} checks found the desired version rolled back as a crash loop",
        phases[0], phases[1], phases[2]
    );
    assert!(trials < 50 || phases.iter().all(|n| *n > 0), "kills must land in every phase: {phases:?}");
}
