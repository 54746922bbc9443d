//! The agent's recent log lines, kept in memory so an operator can fetch them remotely
//! (`collect_logs`) from a device nobody can log into.
//!
//! [`LogRing`] is a `tracing_subscriber` layer: the binary adds [`LogRing::global`] next to its
//! normal output, and the control channel reads the same ring. It keeps a fixed number of
//! formatted lines, so its memory is bounded no matter how chatty the agent is.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// Lines the global ring keeps.
pub const DEFAULT_CAPACITY: usize = 2_000;
/// Longest line kept; longer ones are cut (a log line is not a data channel).
const MAX_LINE: usize = 2_048;

/// A bounded ring of formatted log lines; clones share the same ring.
#[derive(Debug, Clone)]
pub struct LogRing {
    lines: Arc<Mutex<VecDeque<String>>>,
    capacity: usize,
}

impl LogRing {
    /// An empty ring keeping the last `capacity` lines.
    pub fn new(capacity: usize) -> LogRing {
        LogRing { lines: Arc::new(Mutex::new(VecDeque::with_capacity(capacity.min(256)))), capacity: capacity.max(1) }
    }

    /// The process-wide ring the binary installs and `collect_logs` reads.
    pub fn global() -> &'static LogRing {
        static GLOBAL: OnceLock<LogRing> = OnceLock::new();
        GLOBAL.get_or_init(|| LogRing::new(DEFAULT_CAPACITY))
    }

    /// Adds a line, dropping the oldest when full.
    pub fn push(&self, mut line: String) {
        if line.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() == self.capacity {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The newest `n` lines, oldest first.
    pub fn last(&self, n: usize) -> Vec<String> {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines.iter().skip(lines.len().saturating_sub(n)).cloned().collect()
    }

    /// Lines held.
    pub fn len(&self) -> usize {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no line was logged yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Collects an event's message and fields as `message key=value ...`.
#[derive(Default)]
struct LineVisitor {
    message: String,
    fields: String,
}

impl Visit for LineVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for LogRing {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut visitor = LineVisitor::default();
        event.record(&mut visitor);
        let meta = event.metadata();
        self.push(format!(
            "{} {:>5} {}: {}{}",
            rfc3339_ms(super::client::now_ms()),
            meta.level(),
            meta.target(),
            visitor.message,
            visitor.fields
        ));
    }
}

/// Formats Unix milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
pub fn rfc3339_ms(ms: i64) -> String {
    let (secs, millis) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (H. Hinnant's algorithm): days since 1970-01-01 to a Gregorian date.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn timestamps_format_as_utc_rfc3339() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn ring_keeps_the_newest_lines_of_logged_events() {
        let ring = LogRing::new(3);
        let subscriber = tracing_subscriber::registry().with(ring.clone());
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..5 {
                tracing::info!(n = i, "event {i}");
            }
        });
        let lines = ring.last(10);
        assert_eq!(lines.len(), 3);
        assert!(lines[0].contains("event 2") && lines[0].contains("n=2") && lines[0].contains("INFO"), "{lines:?}");
        assert!(lines[2].contains("event 4"));
        assert_eq!(ring.last(1).len(), 1);
    }
}
