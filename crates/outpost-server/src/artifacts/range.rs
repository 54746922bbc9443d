//! HTTP `Range` requests on package downloads (RFC 9110 §14), so a device resumes an
//! interrupted download where it stopped instead of starting again.
//!
//! One `bytes` range is served; a header this server does not serve (several ranges, another
//! unit, a malformed one) is ignored and the whole object sent, which the RFC allows. A range
//! that starts past the end is 416.

use std::ops::Range;

/// What a request's `Range` header asks of an object of a known size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeAsk {
    /// The whole object (no header, or one this server ignores).
    Full,
    /// These bytes (end exclusive, never empty, within the object).
    Partial(Range<u64>),
    /// A range that starts at or past the end: 416 with `Content-Range: bytes */size`.
    Unsatisfiable,
}

/// Reads `header` (the `Range` value) against an object of `size` bytes.
pub fn parse(header: Option<&str>, size: u64) -> RangeAsk {
    let Some(spec) = header.map(str::trim).and_then(|h| h.strip_prefix("bytes=")) else {
        return RangeAsk::Full;
    };
    if spec.contains(',') {
        return RangeAsk::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else { return RangeAsk::Full };
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
    };
    match (first.trim().is_empty(), number(first), number(last)) {
        // `-N`: the last N bytes.
        (true, _, Some(n)) => {
            if n == 0 || size == 0 {
                RangeAsk::Unsatisfiable
            } else {
                RangeAsk::Partial(size.saturating_sub(n)..size)
            }
        }
        (false, Some(start), end) if last.trim().is_empty() || end.is_some() => {
            if end.is_some_and(|e| e < start) {
                return RangeAsk::Full;
            }
            if start >= size {
                return RangeAsk::Unsatisfiable;
            }
            let end = end.map_or(size, |e| e.saturating_add(1).min(size));
            RangeAsk::Partial(start..end)
        }
        _ => RangeAsk::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forms_a_resuming_client_sends() {
        assert_eq!(parse(None, 100), RangeAsk::Full);
        assert_eq!(parse(Some("bytes=0-9"), 100), RangeAsk::Partial(0..10));
        assert_eq!(parse(Some("bytes=90-"), 100), RangeAsk::Partial(90..100));
        assert_eq!(parse(Some("bytes=90-500"), 100), RangeAsk::Partial(90..100));
        assert_eq!(parse(Some("bytes=-10"), 100), RangeAsk::Partial(90..100));
        assert_eq!(parse(Some("bytes=-500"), 100), RangeAsk::Partial(0..100));
        assert_eq!(parse(Some("bytes=99-99"), 100), RangeAsk::Partial(99..100));
    }

    #[test]
    fn past_the_end_is_unsatisfiable_and_the_rest_is_ignored() {
        assert_eq!(parse(Some("bytes=100-"), 100), RangeAsk::Unsatisfiable);
        assert_eq!(parse(Some("bytes=-0"), 100), RangeAsk::Unsatisfiable);
        assert_eq!(parse(Some("bytes=0-"), 0), RangeAsk::Unsatisfiable);
        for ignored in ["items=0-9", "bytes=5-2", "bytes=0-1,5-9", "bytes=a-b", "bytes=-", "bytes=+1-2", "bytes"] {
            assert_eq!(parse(Some(ignored), 100), RangeAsk::Full, "{ignored}");
        }
        assert_eq!(parse(Some("bytes=99999999999999999999999-"), 100), RangeAsk::Full);
    }
}
