//! Times the rollout engine's pure step on a synthetic fleet, without a database: the part of
//! an evaluation that is CPU alone. `bench/rollout.py` measures the whole evaluation against
//! PostgreSQL; this isolates the step so a profiler sees only it.
//!
//! `cargo run --release --example rollout_step -- [devices] [ticks]`

use outpost_proto::fleet::quality::LatencyHistogram;
use outpost_proto::fleet::rollout::{CreateRollout, DeviceRolloutState, OnFailure, RolloutState, WavePhase};
use outpost_server::rollout::engine::{step, DeviceView, EngineConfig, Member, Mode, RolloutRecord, WaveRecord};
use outpost_server::rollout::gates::StatRow;
use outpost_server::rollout::sums::{MemoWindows, RowLog, Rows, SumMemo};
use outpost_server::rollout::waves::Observed;
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let devices = args.first().copied().unwrap_or(10_000);
    let ticks = args.get(1).copied().unwrap_or(30);
    let now0: i64 = 10_000_000;
    let spec = CreateRollout {
        model: "defect".parse().expect("model"),
        version: "3".parse().expect("version"),
        selector: String::new(),
        waves: vec![100.0],
        bake_s: 600,
        max_failures: 2.0,
        gates: ["error_rate<1%", "p99_latency<1.2x"].iter().map(|g| g.parse().expect("gate")).collect(),
        on_failure: OnFailure::Rollback,
        success: 90.0,
        wave_deadline_s: Some(1800),
        shadow: false,
        shadow_sample: 10.0,
        min_samples: 100,
    };
    // One wave of every device, baking since five minutes ago: the benchmark's phase B.
    let since = now0 - 300_000;
    let r = RolloutRecord {
        id: 1,
        spec,
        state: RolloutState::Running,
        wave: 0,
        waves: vec![WaveRecord {
            phase: Some(WavePhase::Baking),
            started_ms: Some(since - 20_000),
            bake_started_ms: Some(since),
            gates: Vec::new(),
        }],
        reason: String::new(),
        created_ms: since - 30_000,
    };
    let ids: Vec<String> = (0..devices).map(|i| format!("sim-{i:05}")).collect();
    let members: Vec<Member> = ids
        .iter()
        .map(|id| Member {
            device_id: id.clone(),
            wave: 0,
            mode: Mode::Live,
            state: DeviceRolloutState::Updated,
            from_version: Some("2".into()),
            failure: None,
            attempts: 0,
            retry_ms: None,
            since_ms: since - 20_000,
            updated_ms: since,
        })
        .collect();
    let fleet: HashMap<String, DeviceView> = ids
        .iter()
        .map(|id| {
            let view = DeviceView {
                matches: true,
                online: true,
                last_seen_ms: Some(now0),
                observed: Observed { serving: Some(("3".into(), "ready".into(), None)), ..Observed::default() },
                ..DeviceView::default()
            };
            (id.clone(), view)
        })
        .collect();
    // Ten minutes of windows at one report per 10 s: 60 rows per device, half of each version.
    let mut rows: HashMap<String, Vec<StatRow>> = HashMap::new();
    let mut log = RowLog::default();
    let mut next_id = 0i64;
    let mut report = |rows: &mut HashMap<String, Vec<StatRow>>, log: &mut RowLog, id: &str, at: i64, version: &str| {
        next_id += 1;
        log.push(next_id, id);
        let mut latency = LatencyHistogram::default();
        for k in 0..20 {
            latency.record(2.0 + f64::from(k) * 0.3);
        }
        let row = StatRow {
            id: next_id,
            received_ms: at,
            version: version.into(),
            shadow: false,
            requests: 20,
            errors: 0,
            latency,
            agreement: 0.0,
            ..StatRow::default()
        };
        rows.entry(id.to_string()).or_default().push(row);
    };
    for k in 0..60 {
        let at = now0 - 600_000 + k * 10_000;
        for id in &ids {
            report(&mut rows, &mut log, id, at, if at < since - 20_000 { "2" } else { "3" });
        }
    }
    let cfg = EngineConfig::default();
    let mut memo = SumMemo::default();
    let mut took = Vec::new();
    for t in 0..ticks {
        let now = now0 + t as i64 * 1_000;
        // A tenth of the fleet reports on each tick.
        for id in ids.iter().skip(t % 10).step_by(10) {
            report(&mut rows, &mut log, id, now, "3");
        }
        let started = Instant::now();
        // The members never change here: one epoch throughout.
        let windows =
            MemoWindows { rows: Rows { by_device: &rows, log: &log, epoch: 1 }, memo: RefCell::new(&mut memo) };
        let s = step(&r, &members, &fleet, &windows, &cfg, now);
        took.push(started.elapsed().as_secs_f64() * 1e3);
        assert!(s.changed.is_empty() && s.decisions.is_empty(), "a baking wave with healthy devices changes nothing");
    }
    let first = took[0];
    let mut rest = took[1..].to_vec();
    rest.sort_by(f64::total_cmp);
    let median = rest.get(rest.len() / 2).copied().unwrap_or(first);
    println!("devices {devices}: first step {first:.1} ms (every row summed), then median {median:.2} ms per step");
}
