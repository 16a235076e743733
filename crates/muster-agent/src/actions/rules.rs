//! Parameter rules: compiled from a [`ParamConfig`], they decide whether a
//! value is acceptable and what text it becomes in the argument vector.
//!
//! A rule's error is the end of a sentence about the value, such as
//! `is not a valid hostname`; the caller names the parameter and the value.

use std::path::PathBuf;

use muster_proto::actions::ParamKind;
use regex::Regex;

use super::config::{ParamConfig, ParamType};
use super::path;

/// Longest `string` value unless the parameter sets `max_len`.
pub const DEFAULT_MAX_LEN: u32 = 256;

/// Longest DNS host name, without a trailing dot.
const MAX_HOSTNAME_LEN: usize = 253;

/// Longest label of a DNS host name.
const MAX_LABEL_LEN: usize = 63;

/// What a value of one parameter must be.
#[derive(Clone, Debug)]
pub(crate) enum Rule {
    /// Free text, optionally matching a pattern.
    String {
        /// The pattern as written, for messages and `hello`.
        pattern: Option<String>,
        /// The pattern anchored at both ends.
        regex: Option<Regex>,
        /// Longest value in bytes, when set ([`DEFAULT_MAX_LEN`] otherwise).
        max_len: Option<u32>,
        /// Whether a value may start with `-`.
        allow_leading_dash: bool,
    },
    /// A decimal integer within optional bounds.
    Int {
        /// Smallest value.
        min: Option<i64>,
        /// Largest value.
        max: Option<i64>,
    },
    /// `true` or `false`.
    Bool,
    /// One of the values.
    Enum {
        /// The allowed values.
        values: Vec<String>,
    },
    /// An RFC 1123 host name.
    Hostname,
    /// A path strictly inside a root directory.
    Path {
        /// Absolute and lexically normal.
        root: PathBuf,
    },
}

impl Rule {
    /// Compiles a parameter's rule; the error says which key is wrong.
    pub(crate) fn compile(config: &ParamConfig) -> Result<Self, String> {
        check_keys(config)?;
        Ok(match config.kind {
            ParamType::String => string_rule(config)?,
            ParamType::Int => int_rule(config.min, config.max)?,
            ParamType::Bool => Self::Bool,
            ParamType::Enum => enum_rule(config.values.clone().unwrap_or_default())?,
            ParamType::Hostname => Self::Hostname,
            ParamType::Path => Self::Path {
                root: path::root(config.root.as_deref())?,
            },
        })
    }

    /// The rule as advertised in `hello`.
    pub(crate) fn kind(&self) -> ParamKind {
        match self {
            Self::String {
                pattern,
                max_len,
                allow_leading_dash,
                ..
            } => ParamKind::String {
                pattern: pattern.clone(),
                max_len: *max_len,
                allow_leading_dash: *allow_leading_dash,
            },
            Self::Int { min, max } => ParamKind::Int {
                min: *min,
                max: *max,
            },
            Self::Bool => ParamKind::Bool,
            Self::Enum { values } => ParamKind::Enum {
                values: values.clone(),
            },
            Self::Hostname => ParamKind::Hostname,
            Self::Path { root } => ParamKind::Path {
                root: root.to_string_lossy().into_owned(),
            },
        }
    }

    /// The argument text for `value`, or why it is refused.
    pub(crate) fn check(&self, value: &str) -> Result<String, String> {
        if value.chars().any(char::is_control) {
            return Err("contains a control character".into());
        }
        match self {
            Self::String {
                pattern,
                regex,
                max_len,
                allow_leading_dash,
            } => {
                let max_len = max_len.unwrap_or(DEFAULT_MAX_LEN);
                check_string(value, pattern, regex, max_len, *allow_leading_dash)
            }
            Self::Int { min, max } => check_int(value, *min, *max, &self.kind()),
            Self::Bool => match value {
                "true" | "false" => Ok(value.to_owned()),
                _ => Err("is not true or false".into()),
            },
            Self::Enum { values } => match values.iter().any(|v| v == value) {
                true => Ok(value.to_owned()),
                false => Err(format!("is not one of {}", values.join(", "))),
            },
            Self::Hostname => match is_hostname(value) {
                true => Ok(value.to_owned()),
                false => Err("is not a valid hostname".into()),
            },
            Self::Path { root } => path::check(root, value),
        }
    }
}

/// Refuses keys that belong to another type.
fn check_keys(config: &ParamConfig) -> Result<(), String> {
    let allowed = config.kind.keys();
    match config
        .rule_keys()
        .into_iter()
        .find(|k| !allowed.contains(k))
    {
        Some(key) => Err(format!(
            "{key:?} does not apply to type {}",
            config.kind.as_str()
        )),
        None => Ok(()),
    }
}

/// A `string` rule: `max_len` at least 1, and a pattern that compiles.
fn string_rule(config: &ParamConfig) -> Result<Rule, String> {
    if config.max_len == Some(0) {
        return Err("max_len must be at least 1".into());
    }
    let regex = match &config.pattern {
        Some(pattern) => Some(compile_pattern(pattern)?),
        None => None,
    };
    Ok(Rule::String {
        pattern: config.pattern.clone(),
        regex,
        max_len: config.max_len,
        allow_leading_dash: config.allow_leading_dash.unwrap_or(false),
    })
}

/// Compiles `pattern` so that it must match a whole value.
fn compile_pattern(pattern: &str) -> Result<Regex, String> {
    let invalid =
        |e: regex::Error| format!("pattern {pattern:?} does not compile: {}", one_line(&e));
    Regex::new(pattern).map_err(invalid)?;
    Regex::new(&format!("^(?:{pattern})$")).map_err(invalid)
}

/// The gist of a regex error, which spans several lines.
fn one_line(error: &regex::Error) -> String {
    let text = error.to_string();
    match text.rsplit_once("error: ") {
        Some((_, gist)) => gist.trim().to_owned(),
        None => text.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// An `int` rule whose bounds are in order.
fn int_rule(min: Option<i64>, max: Option<i64>) -> Result<Rule, String> {
    if let (Some(min), Some(max)) = (min, max)
        && min > max
    {
        return Err(format!("min ({min}) is greater than max ({max})"));
    }
    Ok(Rule::Int { min, max })
}

/// An `enum` rule with at least one value, none with a control character.
fn enum_rule(values: Vec<String>) -> Result<Rule, String> {
    if values.is_empty() {
        return Err("an enum needs at least one value in \"values\"".into());
    }
    if let Some(bad) = values.iter().find(|v| v.chars().any(char::is_control)) {
        return Err(format!("enum value {bad:?} contains a control character"));
    }
    Ok(Rule::Enum { values })
}

/// A `string` value within its length, dash and pattern rules.
fn check_string(
    value: &str,
    pattern: &Option<String>,
    regex: &Option<Regex>,
    max_len: u32,
    allow_leading_dash: bool,
) -> Result<String, String> {
    if value.len() > max_len as usize {
        return Err(format!("is longer than {max_len} bytes"));
    }
    if !allow_leading_dash && value.starts_with('-') {
        return Err("starts with \"-\" and could be taken for an option".into());
    }
    if let (Some(pattern), Some(regex)) = (pattern, regex)
        && !regex.is_match(value)
    {
        return Err(format!("does not match {pattern}"));
    }
    Ok(value.to_owned())
}

/// A decimal integer, written `-?[0-9]+`, within the bounds; normalised
/// (`007` becomes `7`).
fn check_int(
    value: &str,
    min: Option<i64>,
    max: Option<i64>,
    kind: &ParamKind,
) -> Result<String, String> {
    let digits = value.strip_prefix('-').unwrap_or(value);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("is not a decimal integer".into());
    }
    let Ok(n) = value.parse::<i64>() else {
        return Err("is out of range for a 64-bit integer".into());
    };
    if min.is_some_and(|min| n < min) || max.is_some_and(|max| n > max) {
        return Err(format!("is out of range ({})", kind.describe()));
    }
    Ok(n.to_string())
}

/// Whether `name` is an RFC 1123 host name: dot-separated labels of ASCII
/// letters, digits and inner hyphens, 1 to 63 each, at most 253 in all, and
/// no trailing dot.
pub(crate) fn is_hostname(name: &str) -> bool {
    name.len() <= MAX_HOSTNAME_LEN && name.split('.').all(is_label)
}

/// Whether `label` is one RFC 1123 label.
fn is_label(label: &str) -> bool {
    (1..=MAX_LABEL_LEN).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}
