//! One grammar for model names and versions, checked at every door.
//!
//! Names and versions end up in file names on devices (`<name>-<version>.opkg`), in URLs and in
//! database keys, so a name like `../../etc/x` must never get past the first place that reads
//! it. [`ModelName`] and [`Version`] can only hold strings that pass the grammar: serde
//! rejects anything else while parsing, so the registry, assignments, overrides and the agent's
//! desired state share one definition and none of them can forget the check.
//!
//! - a model name is 1-64 characters of `a-z 0-9 . _ -`, not starting with `.`;
//! - a version is 1-64 characters of `A-Z a-z 0-9 . _ -`, not starting with `.`.
//!
//! Neither may contain `/`, `\`, NUL, white space or anything outside ASCII, so neither can name
//! a parent directory or escape the directory it is joined to.

use serde::{Deserialize, Serialize};
use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

/// Longest model name or version, in bytes.
pub const NAME_MAX_LEN: usize = 64;
/// The model-name grammar as a regular expression (for the OpenAPI document).
pub const MODEL_NAME_PATTERN: &str = "^[a-z0-9_-][a-z0-9._-]{0,63}$";
/// The version grammar as a regular expression (for the OpenAPI document).
pub const VERSION_PATTERN: &str = "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$";

/// Why a string is not a valid model name or version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} is invalid: {rule}")]
pub struct NameError {
    /// `model name` or `version`.
    pub what: &'static str,
    /// The rejected text (cut to 80 characters).
    pub value: String,
    /// The grammar it must follow.
    pub rule: &'static str,
}

const NAME_RULE: &str = "model names are 1-64 characters of a-z 0-9 . _ - and do not start with `.`";
const VERSION_RULE: &str = "versions are 1-64 characters of A-Z a-z 0-9 . _ - and do not start with `.`";

fn check(s: &str, allow_upper: bool) -> bool {
    !s.is_empty()
        && s.len() <= NAME_MAX_LEN
        && !s.starts_with('.')
        && s.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'.' | b'_' | b'-')
                || (allow_upper && b.is_ascii_uppercase())
        })
}

fn error(what: &'static str, value: &str, rule: &'static str) -> NameError {
    NameError { what, value: value.chars().take(80).collect(), rule }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $what:literal, $upper:literal, $rule:ident, $pattern:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $ty(String);

        impl $ty {
            /// Checks `s` against the grammar.
            pub fn parse(s: &str) -> Result<$ty, NameError> {
                if check(s, $upper) {
                    Ok($ty(s.to_string()))
                } else {
                    Err(error($what, s, $rule))
                }
            }

            /// Whether `s` follows the grammar.
            pub fn is_valid(s: &str) -> bool {
                check(s, $upper)
            }

            /// The text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(s: String) -> Result<$ty, NameError> {
                if check(&s, $upper) {
                    Ok($ty(s))
                } else {
                    Err(error($what, &s, $rule))
                }
            }
        }

        impl From<$ty> for String {
            fn from(n: $ty) -> String {
                n.0
            }
        }

        impl FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<$ty, NameError> {
                $ty::parse(s)
            }
        }

        impl Deref for $ty {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $ty {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $ty {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $ty {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl utoipa::PartialSchema for $ty {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .min_length(Some(1))
                    .max_length(Some(NAME_MAX_LEN))
                    .pattern(Some($pattern))
                    .description(Some($rule))
                    .into()
            }
        }

        impl utoipa::ToSchema for $ty {}
    };
}

name_type!(
    /// A model name: `[a-z0-9_-][a-z0-9._-]{0,63}`.
    ModelName, "model name", false, NAME_RULE, MODEL_NAME_PATTERN
);
name_type!(
    /// A model version: `[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}`.
    Version, "version", true, VERSION_RULE, VERSION_PATTERN
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_path_traversal_in_model_names() {
        for bad in ["../../../../tmp/x", "..", ".hidden", "a/b", "a\\b", "", "a\0b", "A", "ä", "a b", &"x".repeat(65)]
        {
            assert!(ModelName::parse(bad).is_err(), "{bad:?} must be refused");
            assert!(serde_json::from_str::<ModelName>(&serde_json::to_string(bad).unwrap()).is_err());
        }
        for good in ["defect", "yolov8n", "vibration-anomaly", "a.b_c-1", "0", &"x".repeat(64)] {
            assert_eq!(ModelName::parse(good).unwrap().as_str(), good);
        }
    }

    #[test]
    fn rejects_path_traversal_in_versions() {
        for bad in ["../1", "..", ".1", "1/2", "", "1 2", "v\n"] {
            assert!(Version::parse(bad).is_err(), "{bad:?} must be refused");
        }
        for good in ["1", "2.0.1", "RC-1_b", "2026.11.29"] {
            assert!(Version::parse(good).is_ok());
        }
    }

    #[test]
    fn names_round_trip_through_json_as_plain_strings() {
        let n = ModelName::parse("defect").unwrap();
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"defect\"");
        let back: ModelName = serde_json::from_str("\"defect\"").unwrap();
        assert_eq!(back, n);
    }
}
