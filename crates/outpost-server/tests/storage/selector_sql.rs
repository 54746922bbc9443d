//! Property: the SQL a selector compiles to selects exactly the devices `Selector::matches`
//! selects in Rust. Assignments are matched in Rust (desired state) and listings in SQL, so a
//! difference would send a model to devices an operator's listing does not show.
//!
//! Random fleets and selectors from a seeded generator (`OUTPOST_SELECTOR_SEED` replays one run;
//! the seed of every run is printed). Small alphabets make keys and values collide often, which
//! is where the translations could differ (several terms on one key, `in` lists overlapping,
//! empty values, absent labels).

use crate::test_db;

use outpost_proto::fleet::api::CreateEnrollmentToken;
use outpost_proto::fleet::api::LabelChange;
use outpost_proto::fleet::device::HardwareProfile;
use outpost_proto::fleet::selector::{Labels, Selector};
use outpost_server::db::{Db, EnrollOutcome, NewDevice, Thresholds};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;

const NOW: i64 = 1_700_000_000_000;
const TH: Thresholds = Thresholds { stale_after_ms: 60_000, offline_after_ms: 300_000 };
const KEYS: [&str; 4] = ["site", "line", "gpu", "tier"];
const VALUES: [&str; 4] = ["a", "b", "c", ""];
const DEVICES: u32 = 40;
const SELECTORS: usize = 400;

fn random_labels(rng: &mut StdRng) -> Labels {
    let mut labels = Labels::new();
    for k in KEYS {
        if rng.random_bool(0.6) {
            labels.insert(k.to_string(), VALUES[rng.random_range(0..VALUES.len())].to_string());
        }
    }
    labels
}

fn random_list(rng: &mut StdRng) -> String {
    let n = rng.random_range(1..=3);
    // No empty values in lists: the grammar does not allow them.
    (0..n).map(|_| VALUES[rng.random_range(0..3)]).collect::<Vec<_>>().join("|")
}

fn random_selector(rng: &mut StdRng) -> String {
    let n = rng.random_range(0..=6);
    (0..n)
        .map(|_| {
            let k = KEYS[rng.random_range(0..KEYS.len())];
            let v = VALUES[rng.random_range(0..VALUES.len())];
            match rng.random_range(0..6) {
                0 => format!("{k}={v}"),
                1 => format!("{k}!={v}"),
                2 => format!("{k} in ({})", random_list(rng)),
                3 => format!("{k} notin ({})", random_list(rng)),
                4 => k.to_string(),
                _ => format!("!{k}"),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

async fn random_fleet(db: &Db, rng: &mut StdRng) -> Vec<(String, Labels)> {
    let req = CreateEnrollmentToken { uses: DEVICES, expires_in_s: 3600, labels: Labels::new(), note: "prop".into() };
    let secret = db.create_enrollment_token(&req, "token:ops", NOW).await.expect("token").secret.expect("secret");
    let mut fleet = Vec::new();
    for n in 0..DEVICES {
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(&n.to_be_bytes());
        let id = format!("dev-{n:05}");
        let new = NewDevice {
            token_secret: secret.clone(),
            device_id: id.clone(),
            public_key: key,
            name: id.clone(),
            agent_version: "0.1.0".into(),
            hardware: HardwareProfile::default(),
        };
        assert!(matches!(db.enroll(&new, NOW).await.expect("enroll"), EnrollOutcome::Enrolled { .. }));
        let labels = random_labels(rng);
        let change = LabelChange { set: labels.clone(), remove: Vec::new() };
        db.change_labels(&id, &change, "token:ops", NOW).await.expect("labels").expect("device exists");
        fleet.push((id, labels));
    }
    fleet
}

#[tokio::test]
async fn selector_sql_selects_exactly_what_rust_matches() {
    let seed =
        std::env::var("OUTPOST_SELECTOR_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random::<u64>);
    eprintln!("selector property seed: {seed} (replay with OUTPOST_SELECTOR_SEED={seed})");
    for (label, url) in test_db::test_databases().await {
        let db = Db::connect(&url, 4).await.unwrap_or_else(|e| panic!("[{label}] connect: {e}"));
        let mut rng = StdRng::seed_from_u64(seed);
        let fleet = random_fleet(&db, &mut rng).await;
        for _ in 0..SELECTORS {
            let text = random_selector(&mut rng);
            let selector: Selector = text.parse().unwrap_or_else(|e| panic!("generated {text:?}: {e}"));
            let expected: BTreeSet<&str> =
                fleet.iter().filter(|(_, l)| selector.matches(l)).map(|(id, _)| id.as_str()).collect();
            let page = db.list_devices(&selector, None, None, 1000, NOW, TH).await.expect("list");
            let listed: BTreeSet<&str> = page.items.iter().map(|d| d.id.as_str()).collect();
            assert_eq!(listed, expected, "[{label}] seed {seed}, selector {text:?}");
            let summary = db.fleet_summary(&selector, NOW, TH).await.expect("summary");
            assert_eq!(summary.devices, expected.len() as u64, "[{label}] seed {seed}, summary of {text:?}");
        }
        db.close().await;
    }
}
