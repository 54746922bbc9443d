//! Agent settings the control plane may change at run time (desired-state `config` and the
//! `set_config` command), shared with the loops that use them.
//!
//! Only keys listed in [`SUPPORTED_KEYS`] are applied; anything else is reported back as
//! ignored instead of being silently dropped, so an operator sees a typo or a setting this
//! agent version does not know.

use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Keys this agent applies.
pub const SUPPORTED_KEYS: [&str; 2] = ["heartbeat_interval_s", "poll_interval_ms"];
/// Heartbeat interval until the server names one, seconds.
pub const DEFAULT_HEARTBEAT_S: u64 = 30;

/// Settings changeable at run time.
#[derive(Debug)]
pub struct Settings {
    /// Heartbeat interval set through config, seconds (0: use the server's).
    heartbeat_override_s: AtomicU64,
    /// Heartbeat interval the server asked for, seconds (0: not yet known).
    heartbeat_server_s: AtomicU64,
    /// Model directory rescan interval, milliseconds.
    poll_interval_ms: AtomicU64,
}

/// What applying a set of config keys did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigOutcome {
    /// Keys applied.
    pub applied: Vec<String>,
    /// Keys this agent does not know.
    pub ignored: Vec<String>,
    /// Known keys with unusable values, with the reason.
    pub invalid: Vec<(String, String)>,
}

impl ConfigOutcome {
    /// The outcome as a command result object.
    pub fn to_json(&self) -> Value {
        let invalid: serde_json::Map<String, Value> =
            self.invalid.iter().map(|(k, why)| (k.clone(), Value::String(why.clone()))).collect();
        serde_json::json!({ "applied": self.applied, "ignored": self.ignored, "invalid": invalid })
    }
}

impl Settings {
    /// Settings starting from the agent's configured model directory poll interval.
    pub fn new(poll_interval_ms: u64) -> Settings {
        Settings {
            heartbeat_override_s: AtomicU64::new(0),
            heartbeat_server_s: AtomicU64::new(0),
            poll_interval_ms: AtomicU64::new(poll_interval_ms),
        }
    }

    /// The model directory rescan interval (at least 50 ms).
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms.load(Ordering::Relaxed).max(50))
    }

    /// The heartbeat interval to use: a configured one, else the server's, else 30 s.
    pub fn heartbeat_interval(&self) -> Duration {
        let configured = self.heartbeat_override_s.load(Ordering::Relaxed);
        let server = self.heartbeat_server_s.load(Ordering::Relaxed);
        let secs =
            [configured, server, DEFAULT_HEARTBEAT_S].into_iter().find(|s| *s > 0).unwrap_or(DEFAULT_HEARTBEAT_S);
        Duration::from_secs(secs)
    }

    /// Records the heartbeat interval the server asks for.
    pub fn set_server_heartbeat(&self, secs: u32) {
        self.heartbeat_server_s.store(u64::from(secs), Ordering::Relaxed);
    }

    /// Applies known keys from a config object.
    pub fn apply<'a>(&self, config: impl IntoIterator<Item = (&'a String, &'a Value)>) -> ConfigOutcome {
        let mut outcome = ConfigOutcome::default();
        for (key, value) in config {
            let target = match key.as_str() {
                "heartbeat_interval_s" => Some((&self.heartbeat_override_s, 1, 86_400)),
                "poll_interval_ms" => Some((&self.poll_interval_ms, 50, 3_600_000)),
                _ => None,
            };
            let Some((slot, min, max)) = target else {
                outcome.ignored.push(key.clone());
                continue;
            };
            match value.as_u64() {
                Some(v) if (min..=max).contains(&v) => {
                    slot.store(v, Ordering::Relaxed);
                    outcome.applied.push(key.clone());
                }
                _ => outcome.invalid.push((key.clone(), format!("expected an integer in {min}..={max}, got {value}"))),
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn known_keys_apply_unknown_are_listed_bad_values_are_refused() {
        let s = Settings::new(1000);
        let config = json!({"heartbeat_interval_s": 5, "poll_interval_ms": 10, "colour": "blue"});
        let outcome = s.apply(config.as_object().unwrap());
        assert_eq!(outcome.applied, ["heartbeat_interval_s"]);
        assert_eq!(outcome.ignored, ["colour"]);
        assert_eq!(outcome.invalid.len(), 1);
        assert_eq!(s.heartbeat_interval(), Duration::from_secs(5));
        assert_eq!(s.poll_interval(), Duration::from_millis(1000));
    }

    #[test]
    fn heartbeat_interval_prefers_config_then_server_then_default() {
        let s = Settings::new(1000);
        assert_eq!(s.heartbeat_interval(), Duration::from_secs(DEFAULT_HEARTBEAT_S));
        s.set_server_heartbeat(12);
        assert_eq!(s.heartbeat_interval(), Duration::from_secs(12));
        s.apply(json!({"heartbeat_interval_s": 3}).as_object().unwrap());
        assert_eq!(s.heartbeat_interval(), Duration::from_secs(3));
    }
}
