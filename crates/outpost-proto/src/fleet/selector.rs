//! Label selectors: the one way to name a set of devices (`site=berlin,line!=3,gpu`).
//!
//! Grammar, comma-separated terms, all of which must hold:
//! `key=value` (label equals), `key!=value` (label absent or different), `key` (label present),
//! `!key` (label absent), `key in (a|b)` / `key notin (a|b)`. Keys and values are
//! `[A-Za-z0-9._/-]`, at most 63 characters for values and 253 for keys. The empty selector
//! matches every device.

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

/// Why a selector or label did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector term {term:?}: {reason}")]
pub struct SelectorError {
    /// The offending term.
    pub term: String,
    /// What is wrong with it.
    pub reason: String,
}

fn valid_chars(s: &str) -> bool {
    s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
}

/// Checks a label key: non-empty, at most 253 characters of `[A-Za-z0-9._/-]`.
pub fn validate_key(key: &str) -> Result<(), SelectorError> {
    if key.is_empty() || key.len() > 253 || !valid_chars(key) {
        return Err(SelectorError {
            term: key.to_string(),
            reason: "label keys are 1-253 characters of A-Z a-z 0-9 . _ / -".into(),
        });
    }
    Ok(())
}

/// Checks a label value: at most 63 characters of `[A-Za-z0-9._/-]` (may be empty).
pub fn validate_value(value: &str) -> Result<(), SelectorError> {
    if value.len() > 63 || !valid_chars(value) {
        return Err(SelectorError {
            term: value.to_string(),
            reason: "label values are 0-63 characters of A-Z a-z 0-9 . _ / -".into(),
        });
    }
    Ok(())
}

/// A regular expression (ECMA-262 and Rust `regex` alike) for a subset of the selector grammar:
/// every string it matches parses, so the OpenAPI document can promise it to clients. It leaves
/// out what the parser also takes but a schema need not offer (white space other than spaces).
pub const SELECTOR_PATTERN: &str = concat!(
    "^(?:",
    r" *(?:[A-Za-z0-9._/-]{1,253} *(?:!=|==|=) *[A-Za-z0-9._/-]{0,63}",
    r"|[A-Za-z0-9._/-]{1,253} +(?:in|notin) +\( *[A-Za-z0-9._/-]{1,63} *(?:[,|] *[A-Za-z0-9._/-]{1,63} *)*\)",
    r"|! *[A-Za-z0-9._/-]{1,253}|[A-Za-z0-9._/-]{1,253}) *",
    r"(?:, *(?:[A-Za-z0-9._/-]{1,253} *(?:!=|==|=) *[A-Za-z0-9._/-]{0,63}",
    r"|[A-Za-z0-9._/-]{1,253} +(?:in|notin) +\( *[A-Za-z0-9._/-]{1,63} *(?:[,|] *[A-Za-z0-9._/-]{1,63} *)*\)",
    r"|! *[A-Za-z0-9._/-]{1,253}|[A-Za-z0-9._/-]{1,253}) *)*",
    ")?$"
);

/// Parses `key=value` (as used by `--label` flags and enrollment tokens).
pub fn parse_label(text: &str) -> Result<(String, String), SelectorError> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| SelectorError { term: text.to_string(), reason: "expected key=value".into() })?;
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
    let err = |reason: &str| SelectorError { term: term.to_string(), reason: reason.into() };
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| err("expected a parenthesised list, e.g. (a|b)"))?;
    let values: Vec<String> = inner.split(['|', ',']).map(|v| v.trim().to_string()).collect();
    if values.iter().any(|v| v.is_empty()) {
        return Err(err("empty value in list"));
    }
    for v in &values {
        validate_value(v).map_err(|e| err(&e.reason))?;
    }
    Ok(values)
}

fn parse_term(term: &str) -> Result<Requirement, SelectorError> {
    let t = term.trim();
    let err = |reason: &str| SelectorError { term: term.to_string(), reason: reason.into() };
    let key = |k: &str| -> Result<String, SelectorError> {
        let k = k.trim();
        validate_key(k).map_err(|e| err(&e.reason))?;
        Ok(k.to_string())
    };
    let value = |v: &str| -> Result<String, SelectorError> {
        let v = v.trim();
        validate_value(v).map_err(|e| err(&e.reason))?;
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
        if text.trim().is_empty() {
            return Ok(Selector::everything());
        }
        let requirements = split_terms(text).into_iter().map(parse_term).collect::<Result<Vec<_>, _>>()?;
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
        let pattern = regex::Regex::new(SELECTOR_PATTERN).unwrap();
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
}
