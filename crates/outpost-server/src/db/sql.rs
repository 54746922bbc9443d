//! A tiny builder for dynamic SQL with numbered placeholders (`$1, $2, ...`), which both
//! PostgreSQL and SQLite bind by number, so one text serves both engines. Only the portable
//! value types are offered: 64-bit integers, text and NULL.

use sqlx::any::{Any, AnyArguments};
use sqlx::query::Query;
use sqlx::AssertSqlSafe;

/// A value bound to a placeholder.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    /// BIGINT.
    Int(i64),
    /// TEXT.
    Text(String),
    /// A NULL BIGINT.
    NullInt,
}

impl From<i64> for Arg {
    fn from(v: i64) -> Arg {
        Arg::Int(v)
    }
}

impl From<Option<i64>> for Arg {
    fn from(v: Option<i64>) -> Arg {
        v.map_or(Arg::NullInt, Arg::Int)
    }
}

impl From<String> for Arg {
    fn from(v: String) -> Arg {
        Arg::Text(v)
    }
}

impl From<&str> for Arg {
    fn from(v: &str) -> Arg {
        Arg::Text(v.to_string())
    }
}

impl From<&String> for Arg {
    fn from(v: &String) -> Arg {
        Arg::Text(v.clone())
    }
}

impl From<&outpost_proto::ModelName> for Arg {
    fn from(v: &outpost_proto::ModelName) -> Arg {
        Arg::Text(v.to_string())
    }
}

impl From<&outpost_proto::Version> for Arg {
    fn from(v: &outpost_proto::Version) -> Arg {
        Arg::Text(v.to_string())
    }
}

/// SQL text plus the values for its placeholders, in order.
#[derive(Debug, Default, Clone)]
pub(crate) struct Sql {
    text: String,
    args: Vec<Arg>,
}

impl Sql {
    /// Starts with literal SQL.
    pub(crate) fn new(text: &str) -> Sql {
        Sql { text: text.to_string(), args: Vec::new() }
    }

    /// Appends literal SQL (never outside input).
    pub(crate) fn push(&mut self, text: &str) -> &mut Sql {
        self.text.push_str(text);
        self
    }

    /// Appends a placeholder for `value`.
    pub(crate) fn bind(&mut self, value: impl Into<Arg>) -> &mut Sql {
        self.args.push(value.into());
        self.text.push('$');
        self.text.push_str(&self.args.len().to_string());
        self
    }

    /// Adds the value for the next placeholder already written in the text (for fixed
    /// statements whose text names `$1`, `$2`, ... itself).
    pub(crate) fn arg(&mut self, value: impl Into<Arg>) -> &mut Sql {
        self.args.push(value.into());
        self
    }

    /// Appends `(v1, v2, ...)` placeholders for a list (which must not be empty).
    pub(crate) fn bind_list<A: Into<Arg>>(&mut self, values: impl IntoIterator<Item = A>) -> &mut Sql {
        self.push("(");
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.bind(v);
        }
        self.push(")")
    }

    /// The SQL text (for tests of the generated shape).
    #[cfg(test)]
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// The query, ready to run.
    pub(crate) fn query(&self) -> Query<'static, Any, AnyArguments> {
        let mut q = sqlx::query(AssertSqlSafe(self.text.clone()));
        for a in &self.args {
            q = match a {
                Arg::Int(v) => q.bind(*v),
                Arg::Text(v) => q.bind(v.clone()),
                Arg::NullInt => q.bind(None::<i64>),
            };
        }
        q
    }
}

/// Clamps a page size to 1..=1000.
pub(crate) fn clamp_limit(limit: u32) -> i64 {
    i64::from(limit.clamp(1, 1000))
}
