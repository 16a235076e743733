//! Declared actions as written in a TOML file, before validation.
//!
//! These types only describe the shape of `[actions.NAME]` tables, with
//! unknown keys refused; [`ActionSet::new`](super::ActionSet::new) checks the
//! content and compiles it.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

/// One `[actions.NAME]` table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionConfig {
    /// What the action does, for people.
    #[serde(default)]
    pub description: Option<String>,
    /// The argument vector template: `argv[0]` is a literal program (an
    /// absolute path or a bare name looked up in `PATH`); other elements may
    /// hold `{param}` placeholders, and `{{`/`}}` for literal braces.
    pub argv: Vec<String>,
    /// Longest the action may run (`humantime`: `90s`, `10m`), if limited.
    #[serde(default)]
    pub timeout: Option<String>,
    /// The parameters, in declaration order.
    #[serde(default, deserialize_with = "in_order")]
    pub params: Vec<(String, ParamConfig)>,
}

/// One `[actions.NAME.params.PARAM]` table.
///
/// Every key of every type is a field here; a key that does not apply to the
/// parameter's `type` is refused when the set is validated.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamConfig {
    /// The parameter's type.
    #[serde(rename = "type")]
    pub kind: ParamType,
    /// What it means, for people.
    #[serde(default)]
    pub description: Option<String>,
    /// Value used when a call omits it; a TOML string, integer or boolean.
    #[serde(default, deserialize_with = "scalar")]
    pub default: Option<String>,
    /// Whether a call must give it; only ever consistent with `default`
    /// (required without one, optional with one).
    #[serde(default)]
    pub required: Option<bool>,
    /// `string`: regular expression the whole value must match.
    #[serde(default)]
    pub pattern: Option<String>,
    /// `string`: longest value in bytes (default 256).
    #[serde(default)]
    pub max_len: Option<u32>,
    /// `string`: whether a value may start with `-`.
    #[serde(default)]
    pub allow_leading_dash: Option<bool>,
    /// `int`: smallest value.
    #[serde(default)]
    pub min: Option<i64>,
    /// `int`: largest value.
    #[serde(default)]
    pub max: Option<i64>,
    /// `enum`: the allowed values.
    #[serde(default)]
    pub values: Option<Vec<String>>,
    /// `path`: absolute directory the value must stay inside.
    #[serde(default)]
    pub root: Option<String>,
}

impl ParamConfig {
    /// The type-specific keys this table sets.
    pub(crate) fn rule_keys(&self) -> Vec<&'static str> {
        [
            ("pattern", self.pattern.is_some()),
            ("max_len", self.max_len.is_some()),
            ("allow_leading_dash", self.allow_leading_dash.is_some()),
            ("min", self.min.is_some()),
            ("max", self.max.is_some()),
            ("values", self.values.is_some()),
            ("root", self.root.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect()
    }
}

/// The type of a parameter, as written in `type = "..."`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    /// Free text, optionally matching a pattern.
    String,
    /// A decimal integer.
    Int,
    /// `true` or `false`.
    Bool,
    /// One of a list of values.
    Enum,
    /// A DNS host name.
    Hostname,
    /// A path inside a root directory.
    Path,
}

impl ParamType {
    /// The type as written in a config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Int => "int",
            Self::Bool => "bool",
            Self::Enum => "enum",
            Self::Hostname => "hostname",
            Self::Path => "path",
        }
    }

    /// The type-specific keys a parameter of this type may set.
    pub(crate) fn keys(self) -> &'static [&'static str] {
        match self {
            Self::String => &["pattern", "max_len", "allow_leading_dash"],
            Self::Int => &["min", "max"],
            Self::Enum => &["values"],
            Self::Path => &["root"],
            Self::Bool | Self::Hostname => &[],
        }
    }
}

/// Deserializes a table into its entries in document order.
fn in_order<'de, D, V>(deserializer: D) -> Result<Vec<(String, V)>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    deserializer.deserialize_map(InOrder(std::marker::PhantomData))
}

/// Visits a map into a vector of its entries.
struct InOrder<V>(std::marker::PhantomData<V>);

impl<'de, V: Deserialize<'de>> Visitor<'de> for InOrder<V> {
    type Value = Vec<(String, V)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a table of parameters")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries: Vec<(String, V)> = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, V>()? {
            if entries.iter().any(|(k, _)| *k == key) {
                return Err(de::Error::custom(format!(
                    "parameter {key:?} is declared twice"
                )));
            }
            entries.push((key, value));
        }
        Ok(entries)
    }
}

/// Deserializes a string, integer or boolean as its text.
fn scalar<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    deserializer.deserialize_any(Scalar).map(Some)
}

/// Visits a scalar into its text.
struct Scalar;

impl Visitor<'_> for Scalar {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, an integer or a boolean")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
}
