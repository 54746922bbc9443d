//! The engine against a simulated fleet: devices that follow their desired state (or not) and
//! report windows, ticked by hand.

use super::actions::{act, Action};
use super::engine::*;
use super::gates::StatRow;
use super::sums::{MemoWindows, RowLog, Rows, SumMemo};
use super::waves::Observed;
use outpost_proto::fleet::device::FailureKind;
use outpost_proto::fleet::quality::LatencyHistogram;
use outpost_proto::fleet::rollout::{CreateRollout, DeviceRolloutState, OnFailure, RolloutState, Verdict, WavePhase};
use std::cell::RefCell;
use std::collections::HashMap;

/// How a simulated device behaves.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Good,
    Offline,
    FailsDownload,
    SelfTest,
    /// Serves the new version with this error rate.
    Errors(f64),
}

struct Sim {
    r: RolloutRecord,
    members: Vec<Member>,
    fleet: HashMap<String, DeviceView>,
    kinds: HashMap<String, Kind>,
    stats: HashMap<String, Vec<StatRow>>,
    /// The driver's memo of gate sums, checked against summing every row again on each tick.
    memo: SumMemo,
    /// The newest rows and the members' epoch, as the driver keeps them for the memo.
    row_log: RowLog,
    epoch: u64,
    row_id: i64,
    now: i64,
    cfg: EngineConfig,
    log: Vec<Decision>,
    completed: bool,
}

fn spec(waves: &[f64], gates: &[&str]) -> CreateRollout {
    CreateRollout {
        model: "defect".parse().unwrap(),
        version: "2".parse().unwrap(),
        selector: String::new(),
        waves: super::waves::normalise_waves(waves).unwrap(),
        bake_s: 60,
        max_failures: 20.0,
        gates: gates.iter().map(|g| g.parse().unwrap()).collect(),
        on_failure: OnFailure::Rollback,
        success: 90.0,
        wave_deadline_s: Some(600),
        shadow: false,
        shadow_sample: 10.0,
        min_samples: 100,
    }
}

impl Sim {
    fn new(spec: CreateRollout, devices: &[(&str, Kind)]) -> Sim {
        let mut fleet = HashMap::new();
        let mut kinds = HashMap::new();
        for (id, kind) in devices {
            fleet.insert(
                id.to_string(),
                DeviceView {
                    matches: true,
                    online: *kind != Kind::Offline,
                    last_seen_ms: Some(0),
                    observed: Observed { serving: Some(("1".into(), "ready".into(), None)), ..Observed::default() },
                    ..DeviceView::default()
                },
            );
            kinds.insert(id.to_string(), *kind);
        }
        let r = RolloutRecord {
            id: 7,
            spec,
            state: RolloutState::Pending,
            wave: 0,
            waves: Vec::new(),
            reason: String::new(),
            created_ms: 0,
        };
        let cfg =
            EngineConfig { retry_base_ms: 10_000, retry_cap_ms: 60_000, max_attempts: 3, baseline_min_ms: 60_000 };
        Sim {
            r,
            members: Vec::new(),
            fleet,
            kinds,
            stats: HashMap::new(),
            memo: SumMemo::default(),
            row_log: RowLog::default(),
            epoch: 0,
            row_id: 0,
            now: 1_000_000,
            cfg,
            log: Vec::new(),
            completed: false,
        }
    }

    fn tick(&mut self) {
        let plain = step(&self.r, &self.members, &self.fleet, &self.stats, &self.cfg, self.now);
        let rows = Rows { by_device: &self.stats, log: &self.row_log, epoch: self.epoch };
        let windows = MemoWindows { rows, memo: RefCell::new(&mut self.memo) };
        let memo = step(&self.r, &self.members, &self.fleet, &windows, &self.cfg, self.now);
        let seen = |s: &Step| (s.rollout.clone(), s.changed.clone(), s.decisions.clone(), s.desired_changed.clone());
        assert_eq!(seen(&plain), seen(&memo), "the memo of gate sums must decide exactly as summing every row");
        self.apply(plain);
    }

    fn apply(&mut self, step: Step) {
        if let Some(r) = step.rollout {
            self.r = r;
        }
        if !step.changed.is_empty() {
            self.epoch += 1;
        }
        for c in step.changed {
            match self.members.iter_mut().find(|m| m.device_id == c.device_id) {
                Some(m) => *m = c,
                None => self.members.push(c),
            }
        }
        self.log.extend(step.decisions);
        self.completed |= step.completed;
    }

    fn act(&mut self, action: Action) -> Result<(), String> {
        let step = act(&self.r, &self.members, action, "token:op", self.now)?;
        self.apply(step);
        Ok(())
    }

    /// Ten seconds pass: devices follow their desired state and report one window each.
    fn advance(&mut self, ms: i64) {
        self.now += ms;
        let version = self.r.spec.version.to_string();
        let live_rollout = matches!(self.r.state, RolloutState::Running | RolloutState::Paused | RolloutState::Aborted);
        let ids: Vec<String> = self.fleet.keys().cloned().collect();
        for id in ids {
            let kind = self.kinds[&id];
            if kind == Kind::Offline {
                continue;
            }
            let member = self.members.iter().find(|m| m.device_id == id && m.state != DeviceRolloutState::Reverted);
            let wants = member.filter(|_| live_rollout).map(|m| (m.mode, m.attempts));
            let view = self.fleet.get_mut(&id).unwrap();
            view.last_seen_ms = Some(self.now);
            let mut serving = "1".to_string();
            view.observed = Observed { serving: Some(("1".into(), "ready".into(), None)), ..Observed::default() };
            match (wants, kind) {
                (Some((Mode::Live, _)), Kind::FailsDownload) => {
                    view.observed.update = Some((version.clone(), "failed".into(), Some(FailureKind::Download)));
                }
                (Some((Mode::Live, _)), Kind::SelfTest) => {
                    view.observed.update = Some((version.clone(), "failed".into(), Some(FailureKind::SelfTest)));
                }
                (Some((Mode::Live, _)), _) => {
                    view.observed.serving = Some((version.clone(), "ready".into(), None));
                    serving = version.clone();
                }
                (Some((Mode::Shadow, _)), _) => {
                    view.observed.shadow = Some((version.clone(), "ready".into(), None));
                    let agreement = if matches!(kind, Kind::Errors(_)) { 0.5 } else { 1.0 };
                    self.row_id += 1;
                    self.row_log.push(self.row_id, &id);
                    self.stats.entry(id.clone()).or_default().push(StatRow {
                        id: self.row_id,
                        received_ms: self.now,
                        version: version.clone(),
                        shadow: true,
                        requests: 20,
                        errors: 0,
                        latency: LatencyHistogram::default(),
                        agreement: 20.0 * agreement,
                        ..StatRow::default()
                    });
                }
                (None, _) => {}
            }
            let error_rate = match kind {
                Kind::Errors(e) if serving == version => e,
                _ => 0.0,
            };
            let mut latency = LatencyHistogram::default();
            for _ in 0..50 {
                latency.record(5.0);
            }
            self.row_id += 1;
            self.row_log.push(self.row_id, &id);
            self.stats.entry(id.clone()).or_default().push(StatRow {
                id: self.row_id,
                received_ms: self.now,
                version: serving,
                shadow: false,
                requests: 50,
                errors: (50.0 * error_rate).round() as u64,
                latency,
                agreement: 0.0,
                ..StatRow::default()
            });
        }
    }

    /// Ticks every 10 s until the rollout leaves `running` or `limit` ticks pass.
    fn run(&mut self, limit: usize) {
        for _ in 0..limit {
            self.tick();
            if !matches!(self.r.state, RolloutState::Running | RolloutState::Pending) {
                return;
            }
            self.advance(10_000);
        }
    }

    fn count(&self, state: DeviceRolloutState) -> usize {
        self.members.iter().filter(|m| m.state == state).count()
    }

    fn actions(&self) -> Vec<&'static str> {
        self.log.iter().map(|d| d.action).collect()
    }
}

fn devices(n: usize, kind: Kind) -> Vec<(String, Kind)> {
    (0..n).map(|i| (format!("dev-{i:04}"), kind)).collect()
}

fn sim(spec: CreateRollout, devs: &[(String, Kind)]) -> Sim {
    let refs: Vec<(&str, Kind)> = devs.iter().map(|(d, k)| (d.as_str(), *k)).collect();
    Sim::new(spec, &refs)
}

#[test]
fn tiny_fleets_of_one_two_and_three_devices_complete_every_wave() {
    for n in 1..=3 {
        let mut s = sim(spec(&[1.0, 10.0, 50.0], &["error_rate<1%"]), &devices(n, Kind::Good));
        s.run(200);
        assert_eq!(s.r.state, RolloutState::Completed, "{n} devices: {}", s.r.reason);
        assert!(s.completed);
        assert_eq!(s.count(DeviceRolloutState::Updated), n);
        // The first wave always holds one device: a canary, never zero.
        assert_eq!(s.members.iter().filter(|m| m.wave == 0).count(), 1);
    }
}

#[test]
fn waves_take_their_share_in_a_stable_order_and_bake_before_moving_on() {
    let mut s = sim(spec(&[10.0, 50.0], &["error_rate<1%"]), &devices(40, Kind::Good));
    s.tick();
    assert_eq!(s.members.len(), 4, "10 % of 40");
    assert_eq!(s.actions(), vec!["rollout.start"]);
    s.run(200);
    assert_eq!(s.r.state, RolloutState::Completed, "{}", s.r.reason);
    let per_wave: Vec<usize> = (0..3).map(|w| s.members.iter().filter(|m| m.wave == w).count()).collect();
    assert_eq!(per_wave, vec![4, 16, 20]);
    assert_eq!(s.actions().iter().filter(|a| **a == "rollout.wave").count(), 2);
    for w in &s.r.waves {
        assert!(w.gates.iter().all(|g| g.verdict == Verdict::Pass), "{:?}", w.gates);
        let baked = w.started_ms.zip(w.bake_started_ms).map(|(a, b)| b >= a);
        assert_eq!(baked, Some(true));
    }
    // Same rollout id, same fleet: the same canaries.
    let mut again = sim(spec(&[10.0, 50.0], &["error_rate<1%"]), &devices(40, Kind::Good));
    again.tick();
    let canaries = |s: &Sim| s.members.iter().filter(|m| m.wave == 0).map(|m| m.device_id.clone()).collect::<Vec<_>>();
    let first: Vec<String> = canaries(&s);
    assert_eq!(canaries(&again), first);
}

#[test]
fn a_gate_on_too_little_data_waits_then_pauses_saying_so() {
    let mut sp = spec(&[100.0], &["error_rate<1%"]);
    sp.min_samples = 1_000_000;
    let mut s = sim(sp, &devices(3, Kind::Good));
    s.run(40);
    assert_eq!(s.r.state, RolloutState::Running);
    let g = &s.r.waves[0].gates[0];
    assert_eq!(g.verdict, Verdict::Waiting);
    assert!(g.note.contains("of 1000000 requests"), "{}", g.note);
    s.run(200);
    assert_eq!(s.r.state, RolloutState::Paused);
    assert!(s.r.reason.contains("not enough data"), "{}", s.r.reason);
}

#[test]
fn an_error_rate_regression_rolls_every_device_back() {
    let mut devs = devices(20, Kind::Good);
    for d in devs.iter_mut().take(20) {
        d.1 = Kind::Errors(0.3);
    }
    let mut s = sim(spec(&[25.0, 100.0], &["error_rate<2x"]), &devs);
    // A minute of the previous version first: the baseline a ratio gate compares with.
    for _ in 0..6 {
        s.advance(10_000);
    }
    s.run(100);
    assert_eq!(s.r.state, RolloutState::RolledBack, "{}", s.r.reason);
    assert!(s.r.reason.contains("error_rate<2x failed"), "{}", s.r.reason);
    assert_eq!(s.count(DeviceRolloutState::Reverted), s.members.len());
    let last = s.log.last().unwrap();
    assert_eq!(last.action, "rollout.rollback");
    // The audit entry carries the numbers: value, baseline, limit.
    let gate = &last.details["gates"][0];
    assert!(gate["value"].as_f64().unwrap() > 0.2 && gate["baseline"].as_f64() == Some(0.0), "{gate}");
    assert!(!s.completed);
}

#[test]
fn on_failure_pause_stops_without_reverting() {
    let mut sp = spec(&[100.0], &["error_rate<1%"]);
    sp.on_failure = OnFailure::Pause;
    let mut s = sim(sp, &devices(5, Kind::Errors(0.5)));
    s.run(100);
    assert_eq!(s.r.state, RolloutState::Paused);
    assert_eq!(s.count(DeviceRolloutState::Reverted), 0);
    // An operator rolls it back by hand.
    s.act(Action::Rollback).unwrap();
    assert_eq!(s.r.state, RolloutState::RolledBack);
    assert_eq!(s.count(DeviceRolloutState::Reverted), 5);
    assert!(s.act(Action::Resume).is_err());
}

#[test]
fn update_failures_beyond_the_budget_fail_the_rollout_with_their_kinds() {
    let mut devs = devices(10, Kind::Good);
    devs[0].1 = Kind::SelfTest;
    devs[1].1 = Kind::SelfTest;
    devs[2].1 = Kind::SelfTest;
    let mut sp = spec(&[100.0], &[]);
    sp.max_failures = 10.0;
    let mut s = sim(sp, &devs);
    s.run(50);
    assert_eq!(s.r.state, RolloutState::RolledBack, "{}", s.r.reason);
    assert!(s.r.reason.contains("update failures: 3 of 10"), "{}", s.r.reason);
    assert_eq!(s.log.last().unwrap().details["by_kind"]["self_test"], 3);
}

#[test]
fn offline_devices_do_not_block_a_wave_past_its_success_share_but_a_deadline_pauses() {
    let mut devs = devices(10, Kind::Good);
    devs[3].1 = Kind::Offline;
    let mut s = sim(spec(&[100.0], &[]), &devs);
    s.run(100);
    assert_eq!(s.r.state, RolloutState::Completed, "9 of 10 is the 90 % asked: {}", s.r.reason);
    let mut devs = devices(10, Kind::Good);
    devs[3].1 = Kind::Offline;
    devs[4].1 = Kind::Offline;
    let mut s = sim(spec(&[100.0], &[]), &devs);
    s.run(200);
    assert_eq!(s.r.state, RolloutState::Paused);
    assert!(s.r.reason.contains("only 8 of 10 devices updated by the deadline"), "{}", s.r.reason);
    assert!(s.r.reason.contains("2 offline"), "{}", s.r.reason);
    // Back online, resumed: the wave completes.
    s.kinds.insert(devs[3].0.clone(), Kind::Good);
    s.kinds.insert(devs[4].0.clone(), Kind::Good);
    s.act(Action::Resume).unwrap();
    s.advance(10_000);
    s.run(100);
    assert_eq!(s.r.state, RolloutState::Completed, "{}", s.r.reason);
}

#[test]
fn a_transient_failure_is_retried_with_backoff_then_counts() {
    let mut devs = devices(20, Kind::Good);
    devs[0].1 = Kind::FailsDownload;
    let mut sp = spec(&[100.0], &[]);
    sp.max_failures = 50.0;
    sp.bake_s = 3600;
    let mut s = sim(sp, &devs);
    s.run(30);
    let m = s.members.iter().find(|m| m.device_id == devs[0].0).unwrap();
    // Retries at +10 s, +20 s, +40 s (base 10 s, doubling), then final after max_attempts.
    assert_eq!(m.attempts, 3, "{m:?}");
    assert_eq!((m.state, m.failure), (DeviceRolloutState::Failed, Some(FailureKind::Download)));
    assert_eq!(m.retry_ms, None);
}

#[test]
fn devices_that_join_or_change_labels_mid_rollout_are_included_and_pinned_or_busy_ones_skipped() {
    let mut devs = devices(10, Kind::Good);
    devs.push(("pinned".into(), Kind::Good));
    devs.push(("busy".into(), Kind::Good));
    let mut sp = spec(&[50.0], &[]);
    sp.bake_s = 30;
    let mut s = sim(sp, &devs);
    s.fleet.get_mut("pinned").unwrap().pinned = true;
    s.fleet.get_mut("busy").unwrap().busy = true;
    s.tick();
    assert_eq!(s.members.len(), 5);
    // Five devices enrol (or gain the label) during the first wave: its share grows with them.
    for i in 0..5 {
        let id = format!("late-{i}");
        s.fleet.insert(
            id.clone(),
            DeviceView {
                matches: true,
                online: true,
                last_seen_ms: Some(s.now),
                observed: Observed { serving: Some(("1".into(), "ready".into(), None)), ..Observed::default() },
                ..DeviceView::default()
            },
        );
        s.kinds.insert(id, Kind::Good);
    }
    s.advance(10_000);
    s.tick();
    assert_eq!(s.members.len(), 8, "50 % of 15, rounded up");
    s.run(100);
    assert_eq!(s.r.state, RolloutState::Completed, "{}", s.r.reason);
    assert_eq!(s.members.len(), 15);
    assert!(!s.members.iter().any(|m| m.device_id == "pinned" || m.device_id == "busy"));
}

#[test]
fn shadow_agreement_gates_each_wave_before_its_devices_serve_the_candidate() {
    let mut s =
        sim(spec(&[50.0], &["shadow_agreement>97%", "error_rate<1%", "p99_latency<1.5x"]), &devices(4, Kind::Good));
    s.tick();
    assert!(s.members.iter().all(|m| m.mode == Mode::Shadow));
    assert_eq!(s.r.waves[0].phase, Some(WavePhase::Shadow));
    s.run(200);
    assert_eq!(s.r.state, RolloutState::Completed, "{}", s.r.reason);
    assert!(s.members.iter().all(|m| m.mode == Mode::Live && m.state == DeviceRolloutState::Updated));
    assert_eq!(s.actions().iter().filter(|a| **a == "rollout.live").count(), 2);
    // A candidate that disagrees never serves: the fleet returns to its version.
    let mut s = sim(spec(&[50.0], &["shadow_agreement>97%"]), &devices(4, Kind::Errors(0.0)));
    s.run(200);
    assert_eq!(s.r.state, RolloutState::RolledBack, "{}", s.r.reason);
    assert!(s.r.reason.contains("shadow_agreement>97% failed"), "{}", s.r.reason);
    assert!(s.members.iter().all(|m| m.mode == Mode::Shadow));
}

#[test]
fn a_shadow_only_rollout_completes_without_assigning() {
    let mut sp = spec(&[50.0], &["shadow_agreement>97%"]);
    sp.shadow = true;
    let mut s = sim(sp, &devices(4, Kind::Good));
    s.run(200);
    assert_eq!(s.r.state, RolloutState::Completed, "{}", s.r.reason);
    assert!(!s.completed, "a shadow rollout never serves the candidate");
    assert!(s.members.iter().all(|m| m.state == DeviceRolloutState::Reverted));
}

#[test]
fn operator_actions_apply_only_where_they_make_sense() {
    let mut s = sim(spec(&[10.0, 50.0], &[]), &devices(20, Kind::Good));
    s.tick();
    s.act(Action::Pause).unwrap();
    assert_eq!(s.r.state, RolloutState::Paused);
    assert!(s.act(Action::Pause).is_err());
    let before = s.members.len();
    s.advance(10_000);
    s.tick();
    assert_eq!(s.members.len(), before, "a paused rollout takes no new devices");
    s.act(Action::Resume).unwrap();
    s.act(Action::Promote).unwrap();
    assert_eq!(s.r.state, RolloutState::Completed);
    assert!(s.completed);
    assert!(s.act(Action::Abort).is_err());
    // Rolling back a completed rollout is allowed: storage deletes its assignment.
    s.act(Action::Rollback).unwrap();
    assert_eq!(s.r.state, RolloutState::RolledBack);
    let mut s = sim(spec(&[10.0, 50.0], &[]), &devices(20, Kind::Good));
    s.tick();
    s.act(Action::Abort).unwrap();
    assert_eq!(s.r.state, RolloutState::Aborted);
    assert_eq!(s.count(DeviceRolloutState::Reverted), 0, "devices on the version keep it");
    let audit: Vec<&str> = s.actions();
    assert_eq!(audit, vec!["rollout.start", "rollout.abort"]);
}

#[test]
fn a_device_that_joins_before_its_first_report_learns_its_previous_version_from_it() {
    let mut s = sim(spec(&[100.0], &["shadow_agreement>97%"]), &devices(2, Kind::Good));
    for v in s.fleet.values_mut() {
        (v.last_seen_ms, v.observed) = (None, Observed::default());
    }
    s.tick();
    assert!(s.members.iter().all(|m| m.from_version.is_none()));
    s.advance(10_000);
    s.tick();
    assert!(s.members.iter().all(|m| m.from_version.as_deref() == Some("1")), "{:?}", s.members);
}
