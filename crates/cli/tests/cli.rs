//! The `outpost` binary as a user runs it.

use std::process::Command;

#[path = "cli/pack.rs"]
mod pack;
#[path = "cli/reference.rs"]
mod reference;

fn outpost(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_outpost")).args(args).output().expect("binary runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn demo_trains_serves_and_detects_faults_offline() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, text) = outpost(&["demo", "--dir", dir.path().to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(text.contains("ROC-AUC"), "{text}");
    let line = text.lines().find(|l| l.contains("faulty windows detected")).unwrap_or_else(|| panic!("{text}"));
    // "69 windows, D/19 faulty windows detected, F false alarms on 50 normal windows"
    let detected: usize = line.split(", ").nth(1).unwrap().split('/').next().unwrap().parse().unwrap();
    assert!(detected >= 10, "{line}");
    assert!(dir.path().join("models/vibration-anomaly-1.opkg").exists());
    // The control-plane half: real agents enrolled, a command acknowledged, a fleet summarised.
    assert!(text.contains("enrolled as device d-"), "{text}");
    assert!(text.contains("reverify_models → succeeded"), "{text}");
    assert!(text.contains("models [vibration-anomaly@1 (assignment:1)]"), "{text}");
    assert!(dir.path().join("server/outpost.db").exists());
    assert!(text.contains("both agents verified v1 against the signed TUF targets"), "{text}");
    // Rollouts over the agents and the simulated fleet: v2 completes wave by wave, as deltas;
    // v3 is stopped in shadow, v4 by its error-rate gate, and the fleet returns to v2.
    let rollouts: Vec<&str> =
        text.lines().filter(|l| l.contains("s] completed:") || l.contains("s] rolled_back:")).collect();
    assert_eq!(rollouts.len(), 3, "{text}");
    assert!(rollouts[0].contains("completed"), "{text}");
    assert!(rollouts[1].contains("shadow_agreement"), "{text}");
    assert!(rollouts[2].contains("failed"), "{text}");
    let line = text.lines().find(|l| l.contains("as deltas from v1")).unwrap_or_else(|| panic!("{text}"));
    let percent: f64 = line.rsplit(", ").next().unwrap().split(" %").next().unwrap().trim().parse().unwrap();
    assert!(percent > 0.0 && percent < 100.0, "{line}");
    assert!(text.contains("v3 stopped in shadow; no device ever served it"), "{text}");
    assert!(text.contains("the fleet is back on v2"), "{text}");
    // Refused updates: v5 (corrupted) and v6 (bad self-test), and not one request failed.
    assert!(text.contains("v5 refused by the agents: hash_mismatch"), "{text}");
    assert!(text.contains("v6 refused at load: self_test"), "{text}");
    assert!(text.contains("still serving: v2, v2"), "{text}");
    assert!(text.contains("during the rollouts and updates, 0 failed"), "{text}");
    assert!(dir.path().join("agent-0/models/vibration-anomaly-2.opkg").exists());
    assert!(!dir.path().join("agent-0/models/vibration-anomaly-5.opkg").exists(), "corrupt bytes never installed");
    // Export and drift: both agents (and part of the simulated fleet) raise the drift alert.
    let ids: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split("enrolled as device ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    assert_eq!(ids.len(), 2, "{text}");
    let alert = text.lines().find(|l| l.contains("ALERT drift:")).unwrap_or_else(|| panic!("{text}"));
    assert!(ids.iter().all(|id| alert.contains(id)), "{alert}");
    assert!(text.contains("site=demo-lab: 2 devices"), "{text}");
    assert!(text.contains("of streaming the raw data"), "{text}");
    let broker = std::net::TcpStream::connect("127.0.0.1:1883").is_ok();
    if broker || std::env::var("CI").is_ok_and(|v| v == "true") {
        assert!(text.contains("subscriber <- "), "{text}");
        assert!(text.contains(": drift alert, score"), "{text}");
    }
}

#[test]
fn pack_then_inspect_round_trips_and_bad_files_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, text) = outpost(&["model", "train-demo", "--out", dir.path().to_str().unwrap()]);
    assert!(ok, "{text}");
    let opkg = dir.path().join("vibration-anomaly-1.opkg");
    let (ok, text) = outpost(&["model", "inspect", opkg.to_str().unwrap(), "--json"]);
    assert!(ok, "{text}");
    let report: serde_json::Value = serde_json::from_str(&text[text.find('{').unwrap()..]).unwrap();
    assert_eq!(report["tract_loads"]["ok"], true);
    assert_eq!(report["inputs"][0]["name"], "window");

    // Unpack the ONNX and pack it again with a partial manifest over the generated one.
    let onnx = dir.path().join("m.onnx");
    let pkg = outpost_runtime::Package::open(&opkg).unwrap();
    std::fs::write(&onnx, pkg.model_bytes()).unwrap();
    let part = dir.path().join("part.toml");
    std::fs::write(&part, "[post]\nkind = \"anomaly\"\nthreshold = 0.9\n").unwrap();
    let out = dir.path().join("again.opkg");
    let (ok, text) = outpost(&[
        "model",
        "pack",
        onnx.to_str().unwrap(),
        "--name",
        "again",
        "--version",
        "2",
        "--task",
        "anomaly",
        "--manifest",
        part.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let again = outpost_runtime::Package::open(&out).unwrap();
    assert_eq!(again.manifest.model.name, "again");
    assert!(again.manifest.symbols.is_empty(), "batch stays dynamic");
    assert!(again.manifest.ranges.contains_key("batch"));
    assert!(again.selftest().unwrap().is_some());
    assert!(again.manifest.post.is_some());

    let garbage = dir.path().join("garbage.onnx");
    std::fs::write(&garbage, b"\x08\x07garbage").unwrap();
    let (ok, text) = outpost(&["model", "inspect", garbage.to_str().unwrap()]);
    assert!(!ok);
    assert!(text.contains("garbage.onnx") || text.contains("not a valid ONNX"), "{text}");
    let (ok, text) = outpost(&["model", "bench", "/nonexistent.onnx"]);
    assert!(!ok && text.contains("/nonexistent.onnx"), "{text}");
}
