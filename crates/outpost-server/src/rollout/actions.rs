//! Operators' hand actions on a rollout: pause, resume, abort, roll back, promote.

use super::engine::{first_phase, Ctx, EngineConfig, Member, RolloutRecord, Step};
use outpost_proto::fleet::rollout::RolloutState;

/// What an operator asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Stop moving; keep what devices have.
    Pause,
    /// Move on from a pause.
    Resume,
    /// Stop for good; devices on the new version keep it.
    Abort,
    /// Return every device to its previous version.
    Rollback,
    /// Skip the remaining waves: the version becomes an assignment now.
    Promote,
}

impl Action {
    /// The wire name (also the audit action suffix).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Abort => "abort",
            Action::Rollback => "rollback",
            Action::Promote => "promote",
        }
    }

    /// Parses the wire name.
    pub fn parse(text: &str) -> Option<Action> {
        [Action::Pause, Action::Resume, Action::Abort, Action::Rollback, Action::Promote]
            .into_iter()
            .find(|a| a.as_str() == text)
    }
}

/// An operator's action; `Err` says why it does not apply in the rollout's state.
pub fn act(r: &RolloutRecord, members: &[Member], action: Action, actor: &str, now: i64) -> Result<Step, String> {
    let cfg = EngineConfig::default();
    let mut ctx = Ctx::new(r, members, now, &cfg);
    let state = r.state;
    let refuse = || Err(format!("cannot {} a rollout that is {}", action.as_str(), state.as_str()));
    let by = format!("by {actor}");
    match action {
        Action::Pause if state.is_active() && state != RolloutState::Paused => {
            ctx.r.state = RolloutState::Paused;
            ctx.decide("rollout.pause", format!("paused {by}"), serde_json::json!({}));
        }
        Action::Resume if state == RolloutState::Paused => {
            ctx.r.state = RolloutState::Running;
            // The deadline counts from the resume: the pause was not the devices' fault.
            let w = ctx.wave_mut();
            if w.phase.is_none() {
                w.phase = Some(first_phase(&r.spec));
            }
            w.started_ms = Some(now);
            if w.bake_started_ms.is_some() {
                w.bake_started_ms = Some(now);
            }
            ctx.decide("rollout.resume", format!("resumed {by}"), serde_json::json!({}));
        }
        Action::Abort if state.is_active() => {
            ctx.r.state = RolloutState::Aborted;
            ctx.drop_shadows();
            ctx.decide("rollout.abort", format!("aborted {by}; devices on the version keep it"), serde_json::json!({}));
        }
        Action::Rollback if state != RolloutState::RolledBack => {
            ctx.r.state = RolloutState::RolledBack;
            ctx.revert_all();
            let n = ctx.step.desired_changed.len();
            ctx.decide(
                "rollout.rollback",
                format!("rolled back {by}; {n} devices return to their previous version"),
                serde_json::json!({"devices": n}),
            );
        }
        Action::Promote if state.is_active() => {
            ctx.r.state = RolloutState::Completed;
            ctx.step.completed = true;
            ctx.drop_shadows();
            let reason = format!("promoted {by}: the version is assigned to the selector without the remaining waves");
            ctx.decide("rollout.promote", reason, serde_json::json!({"wave": r.wave}));
        }
        _ => return refuse(),
    }
    Ok(ctx.finish(r))
}
