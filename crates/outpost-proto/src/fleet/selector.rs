//! Label selectors: the one way to name a set of devices (`site=berlin,line!=3,gpu`).
//!
//! Grammar, comma-separated terms, all of which must hold:
//! `key=value` (label equals), `key!=value` (label absent or different), `key` (label present),
//! `!key` (label absent), `key in (a|b)` / `key notin (a|b)`. Keys and values are
//! `[A-Za-z0-9._/-]`, at most 63 characters for values and 253 for keys. The empty selector
//! matches every device.
//!
//! Selectors come from untrusted callers (any viewer token) and every term costs the database
//! work, so their size is bounded before anything is parsed: at most [`MAX_SELECTOR_BYTES`]
//! bytes, [`MAX_SELECTOR_TERMS`] terms and [`MAX_SET_VALUES`] values per `in`/`notin` list. A
//! parsed [`Selector`] therefore always respects these limits, whatever door it came through.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// A device's labels.
pub type Labels = BTreeMap<String, String>;

/// One condition of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value`
    Equals(String, String),
    /// `key!=value`
    NotEquals(String, String),
    /// `key in (a|b)`
    In(String, Vec<String>),
    /// `key notin (a|b)`
    NotIn(String, Vec<String>),
    /// `key`
    Exists(String),
    /// `!key`
    DoesNotExist(String),
}

/// A parsed label selector: all requirements must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

/// Longest accepted selector text, in bytes.
pub const MAX_SELECTOR_BYTES: usize = 4096;
/// Most terms in one selector.
pub const MAX_SELECTOR_TERMS: usize = 32;
/// Most values in one `in (...)` / `notin (...)` list.
pub const MAX_SET_VALUES: usize = 64;

/// Why a selector or label did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// One term (or label) is malformed.
    #[error("invalid selector term {term:?}: {reason}")]
    Term {
        /// The offending term.
        term: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The selector is over one of the size limits.
    #[error("selector too large: {0}")]
    TooLarge(String),
}

impl SelectorError {
    fn term(term: &str, reason: impl Into<String>) -> SelectorError {
        SelectorError::Term { term: term.to_string(), reason: reason.into() }
    }

    /// What is wrong, without the offending term.
    pub fn reason(&self) -> &str {
        match self {
            SelectorError::Term { reason, .. } => reason,
            SelectorError::TooLarge(reason) => reason,
        }
    }
}

fn valid_chars(s: &str) -> bool {
    s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
}

/// Checks a label key: non-empty, at most 253 characters of `[A-Za-z0-9._/-]`.
pub fn validate_key(key: &str) -> Result<(), SelectorError> {
    if key.is_empty() || key.len() > 253 || !valid_chars(key) {
        return Err(SelectorError::term(key, "label keys are 1-253 characters of A-Z a-z 0-9 . _ / -"));
    }
    Ok(())
}

/// Checks a label value: at most 63 characters of `[A-Za-z0-9._/-]` (may be empty).
pub fn validate_value(value: &str) -> Result<(), SelectorError> {
    if value.len() > 63 || !valid_chars(value) {
        return Err(SelectorError::term(value, "label values are 0-63 characters of A-Z a-z 0-9 . _ / -"));
    }
    Ok(())
}

/// A regular expression (ECMA-262 and Rust `regex` alike) for a subset of the selector grammar:
/// every string it matches parses, so the OpenAPI document can promise it to clients. It leaves
/// out what the parser also takes but a schema need not offer (white space other than spaces).
/// The term and list-size limits are in it; the byte limit is the schema's `maxLength`.
pub const SELECTOR_PATTERN: &str = concat!(
    "^(?:",
    r" *(?:[A-Za-z0-9._/-]{1,253} *(?:!=|==|=) *[A-Za-z0-9._/-]{0,63}",
    r"|[A-Za-z0-9._/-]{1,253} +(?:in|notin) +\( *[A-Za-z0-9._/-]{1,63} *(?:[,|] *[A-Za-z0-9._/-]{1,63} *){0,63}\)",
    r"|! *[A-Za-z0-9._/-]{1,253}|[A-Za-z0-9._/-]{1,253}) *",
    r"(?:, *(?:[A-Za-z0-9._/-]{1,253} *(?:!=|==|=) *[A-Za-z0-9._/-]{0,63}",
    r"|[A-Za-z0-9._/-]{1,253} +(?:in|notin) +\( *[A-Za-z0-9._/-]{1,63} *(?:[,|] *[A-Za-z0-9._/-]{1,63} *){0,63}\)",
    r"|! *[A-Za-z0-9._/-]{1,253}|[A-Za-z0-9._/-]{1,253}) *){0,31}",
    ")?$"
);

/// Parses `key=value` (as used by `--label` flags and enrollment tokens).
pub fn parse_label(text: &str) -> Result<(String, String), SelectorError> {
    let (k, v) = text.split_once('=').ok_or_else(|| SelectorError::term(text, "expected key=value"))?;
    let (k, v) = (k.trim(), v.trim());
    validate_key(k)?;
    validate_value(v)?;
    Ok((k.to_string(), v.to_string()))
}

impl Selector {
    /// The selector that matches every device.
    pub fn everything() -> Selector {
        Selector::default()
    }

    /// The parsed requirements, in written order.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// True when the labels satisfy every requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

fn split_terms(text: &str) -> Vec<&str> {
    // Commas inside `in (a,b)` parentheses do not separate terms.
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&text[start..]);
    terms
}

fn parse_set(term: &str, rest: &str) -> Result<Vec<String>, SelectorError> {
    let err = |reason: &str| SelectorError::term(term, reason);
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| err("expected a parenthesised list, e.g. (a|b)"))?;
    let values: Vec<String> = inner.split(['|', ',']).map(|v| v.trim().to_string()).collect();
    if values.iter().any(|v| v.is_empty()) {
        return Err(err("empty value in list"));
    }
    if values.len() > MAX_SET_VALUES {
        return Err(SelectorError::TooLarge(format!(
            "a list has {} values; at most {MAX_SET_VALUES} are allowed per in/notin term",
            values.len()
        )));
    }
    for v in &values {
        validate_value(v).map_err(|e| err(e.reason()))?;
    }
    Ok(values)
}

fn parse_term(term: &str) -> Result<Requirement, SelectorError> {
    let t = term.trim();
    let err = |reason: &str| SelectorError::term(term, reason);
    let key = |k: &str| -> Result<String, SelectorError> {
        let k = k.trim();
        validate_key(k).map_err(|e| err(e.reason()))?;
        Ok(k.to_string())
    };
    let value = |v: &str| -> Result<String, SelectorError> {
        let v = v.trim();
        validate_value(v).map_err(|e| err(e.reason()))?;
        Ok(v.to_string())
    };
    if let Some((k, v)) = t.split_once("!=") {
        return Ok(Requirement::NotEquals(key(k)?, value(v)?));
    }
    if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
        return Ok(Requirement::Equals(key(k)?, value(v)?));
    }
    if let Some((k, rest)) = t.split_once(" notin ") {
        return Ok(Requirement::NotIn(key(k)?, parse_set(term, rest)?));
    }
    if let Some((k, rest)) = t.split_once(" in ") {
        return Ok(Requirement::In(key(k)?, parse_set(term, rest)?));
    }
    if let Some(k) = t.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(key(k)?));
    }
    if t.is_empty() {
        return Err(err("empty term"));
    }
    Ok(Requirement::Exists(key(t)?))
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(text: &str) -> Result<Selector, SelectorError> {
        // The limits are checked before any per-term work, so an oversized selector costs
        // nothing but this length check and one pass over at most MAX_SELECTOR_BYTES bytes.
        if text.len() > MAX_SELECTOR_BYTES {
            return Err(SelectorError::TooLarge(format!(
                "{} bytes; at most {MAX_SELECTOR_BYTES} bytes are allowed",
                text.len()
            )));
        }
        if text.trim().is_empty() {
            return Ok(Selector::everything());
        }
        let terms = split_terms(text);
        if terms.len() > MAX_SELECTOR_TERMS {
            return Err(SelectorError::TooLarge(format!(
                "{} terms; at most {MAX_SELECTOR_TERMS} are allowed (split the query, or label the devices you mean)",
                terms.len()
            )));
        }
        let requirements = terms.into_iter().map(parse_term).collect::<Result<Vec<_>, _>>()?;
        Ok(Selector { requirements })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let terms: Vec<String> = self
            .requirements
            .iter()
            .map(|r| match r {
                Requirement::Equals(k, v) => format!("{k}={v}"),
                Requirement::NotEquals(k, v) => format!("{k}!={v}"),
                Requirement::In(k, vs) => format!("{k} in ({})", vs.join("|")),
                Requirement::NotIn(k, vs) => format!("{k} notin ({})", vs.join("|")),
                Requirement::Exists(k) => k.clone(),
                Requirement::DoesNotExist(k) => format!("!{k}"),
            })
            .collect();
        f.write_str(&terms.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_selector_the_documented_pattern_allows_parses() {
        // The counted repetitions (32 terms of up to 253 characters) compile to a large program.
        let pattern = regex::RegexBuilder::new(SELECTOR_PATTERN).size_limit(1 << 30).build().unwrap();
        let at_limits = (0..MAX_SELECTOR_TERMS).map(|i| format!("k{i} in (a,b)")).collect::<Vec<_>>().join(",");
        assert!(pattern.is_match(&at_limits) && at_limits.parse::<Selector>().is_ok());
        let over = format!("{at_limits},k=v");
        assert!(!pattern.is_match(&over) && over.parse::<Selector>().is_err(), "33 terms");
        let values = (0..MAX_SET_VALUES).map(|i| format!("v{i}")).collect::<Vec<_>>().join("|");
        let list = format!("k in ({values})");
        assert!(pattern.is_match(&list) && list.parse::<Selector>().is_ok());
        let list = format!("k in ({values}|x)");
        assert!(!pattern.is_match(&list) && list.parse::<Selector>().is_err(), "65 values");
        let written = [
            "",
            "site=berlin",
            "site = berlin , line!=3",
            "a==b",
            "a=",
            "!gpu",
            "! gpu",
            "gpu",
            "tier in (a|b)",
            "tier notin ( a , b )",
            "in in (in)",
            "a in (b),c",
            "k/x.y_z-1=v.1/2",
        ];
        for text in written {
            assert!(pattern.is_match(text), "{text:?} should match the pattern");
            assert!(text.parse::<Selector>().is_ok(), "{text:?} matches the pattern but does not parse");
        }
        // Random strings over the grammar's own characters: a match must always parse.
        let alphabet: Vec<char> = "ab=!, ()|in".chars().chain("notx".chars()).collect();
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut matched = 0;
        for _ in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 14) as usize;
            let text: String =
                (0..len).map(|i| alphabet[((state >> (i * 4 % 60)) as usize + i * 7) % alphabet.len()]).collect();
            if pattern.is_match(&text) {
                matched += 1;
                assert!(text.parse::<Selector>().is_ok(), "{text:?} matches the pattern but does not parse");
            }
        }
        assert!(matched > 1_000, "the random strings should exercise the pattern ({matched} matched)");
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn equality_and_inequality_combine() {
        let s: Selector = "site=berlin,line!=3".parse().unwrap();
        assert!(s.matches(&labels(&[("site", "berlin"), ("line", "2")])));
        assert!(s.matches(&labels(&[("site", "berlin")])));
        assert!(!s.matches(&labels(&[("site", "berlin"), ("line", "3")])));
        assert!(!s.matches(&labels(&[("site", "paris")])));
    }

    #[test]
    fn set_and_existence_terms() {
        let s: Selector = "site in (berlin|paris),gpu,!retired,tier notin (dev)".parse().unwrap();
        assert!(s.matches(&labels(&[("site", "paris"), ("gpu", "")])));
        assert!(!s.matches(&labels(&[("site", "paris")])));
        assert!(!s.matches(&labels(&[("site", "paris"), ("gpu", "x"), ("retired", "1")])));
        assert!(!s.matches(&labels(&[("site", "paris"), ("gpu", "x"), ("tier", "dev")])));
        assert_eq!(s.to_string(), "site in (berlin|paris),gpu,!retired,tier notin (dev)");
    }

    #[test]
    fn commas_inside_parentheses_do_not_split() {
        let s: Selector = "site in (berlin,paris)".parse().unwrap();
        assert_eq!(s.requirements().len(), 1);
    }

    #[test]
    fn empty_selector_matches_everything() {
        let s: Selector = " ".parse().unwrap();
        assert!(s.matches(&Labels::new()));
    }

    #[test]
    fn malformed_terms_are_named() {
        for bad in ["site=", "=x", "a b=c", "site in berlin", "site=ber lin", ",", "x in ()"] {
            let r: Result<Selector, _> = bad.parse();
            if bad == "site=" {
                // An empty value is allowed: it selects labels set to "".
                assert!(r.is_ok());
                continue;
            }
            assert!(r.is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn rejects_selector_with_too_many_terms() {
        let at_limit = (0..MAX_SELECTOR_TERMS).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(",");
        assert_eq!(at_limit.parse::<Selector>().unwrap().requirements().len(), MAX_SELECTOR_TERMS);
        for n in [MAX_SELECTOR_TERMS + 1, 100, 1000] {
            let text = (0..n).map(|_| "a").collect::<Vec<_>>().join(",");
            let err = text.parse::<Selector>().unwrap_err();
            assert!(matches!(err, SelectorError::TooLarge(_)), "{n} terms: {err}");
            assert!(err.to_string().contains(&format!("at most {MAX_SELECTOR_TERMS}")), "{err}");
        }
    }

    #[test]
    fn rejects_selector_longer_than_the_byte_limit() {
        let text = format!("k={}", "v".repeat(MAX_SELECTOR_BYTES));
        let err = text.parse::<Selector>().unwrap_err();
        assert!(err.to_string().contains(&format!("at most {MAX_SELECTOR_BYTES} bytes")), "{err}");
        // A single very long key is refused by the key rule, not accepted.
        assert!(format!("{}=v", "k".repeat(254)).parse::<Selector>().is_err());
    }

    #[test]
    fn rejects_set_with_too_many_values() {
        let list = |n: usize| (0..n).map(|i| format!("v{i}")).collect::<Vec<_>>().join("|");
        assert!(format!("k in ({})", list(MAX_SET_VALUES)).parse::<Selector>().is_ok());
        let err = format!("k notin ({})", list(MAX_SET_VALUES + 1)).parse::<Selector>().unwrap_err();
        assert!(err.to_string().contains(&format!("at most {MAX_SET_VALUES}")), "{err}");
    }
}
