//! The outbox's vocabulary: priorities, record ids and records.

use std::fmt;

/// How urgent a record is; the cap drops `Low` first and consumers are served `High` first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Bulk telemetry: the first to go when the disk cap is reached.
    Low,
    /// Ordinary results and events.
    Normal,
    /// Alerts and escalations: kept longest, delivered first.
    High,
}

impl Priority {
    /// Every priority, lowest first (the order in which the cap drops them).
    pub const ALL: [Priority; 3] = [Priority::Low, Priority::Normal, Priority::High];

    /// Position in [`Priority::ALL`]; also the byte stored in segment headers.
    pub fn index(self) -> usize {
        match self {
            Priority::Low => 0,
            Priority::Normal => 1,
            Priority::High => 2,
        }
    }

    /// The priority stored as `byte` in a segment header, if it is one.
    pub fn from_index(byte: u8) -> Option<Priority> {
        Priority::ALL.get(usize::from(byte)).copied()
    }

    /// Name of the priority's directory inside the outbox directory.
    pub fn dir_name(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.dir_name())
    }
}

/// Stable id of a record: its priority and its sequence number within that priority.
///
/// Sequence numbers only grow, never repeat for acknowledged records (not even after every
/// segment was deleted or after a crash), so a receiver can deduplicate at-least-once deliveries
/// by keeping the highest `seq` seen per priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordId {
    /// The priority log the record lives in.
    pub priority: Priority,
    /// Position in that log, starting at 0.
    pub seq: u64,
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.priority, self.seq)
    }
}

/// One record as a consumer receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its stable id.
    pub id: RecordId,
    /// The bytes that were appended, unchanged.
    pub payload: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_index_round_trips_and_rejects_unknown_bytes() {
        for p in Priority::ALL {
            assert_eq!(Priority::from_index(p.index() as u8), Some(p));
        }
        assert_eq!(Priority::from_index(3), None);
        assert!(Priority::Low < Priority::High);
    }
}
