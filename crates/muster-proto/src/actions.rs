//! Named actions: operations an agent's owner declares, with typed parameters
//! and an argument-vector template, so callers can run exactly those and
//! nothing else.
//!
//! The agent advertises its actions in `hello`; the hub shows them in
//! `AgentInfo`; a client invokes one with [`CommandSpec::Action`]. The agent,
//! where the trust boundary is, validates every parameter before anything runs.
//!
//! [`CommandSpec::Action`]: crate::CommandSpec::Action

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Whether an agent executes raw commands, or its declared actions only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExecMode {
    /// Raw commands (`argv`, `shell`) and declared actions.
    #[default]
    #[serde(rename = "any")]
    Any,
    /// Declared actions only; a raw command is refused with `COMMANDS_DISABLED`.
    #[serde(rename = "actions-only")]
    ActionsOnly,
}

impl ExecMode {
    /// The mode as it appears on the wire and in config files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::ActionsOnly => "actions-only",
        }
    }

    /// Whether the mode is the default, for skipping it when serializing.
    pub fn is_any(&self) -> bool {
        *self == Self::Any
    }
}

/// A call of a declared action: its name and parameter values.
///
/// Values travel as strings, whatever the parameter's type: the agent parses
/// each one by its declared type, so `count=3` from a command line and
/// `"count": "3"` from a program mean the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionCall {
    /// Action name, as declared on the agent.
    pub name: String,
    /// Parameter values by name.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

impl ActionCall {
    /// A one-line human rendering: `create_site domain=example.com`.
    pub fn display(&self) -> String {
        let mut line = self.name.clone();
        for (key, value) in &self.params {
            line.push(' ');
            line.push_str(key);
            line.push('=');
            line.push_str(value);
        }
        line
    }
}

/// An action as an agent advertises it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionInfo {
    /// Name: `[a-z0-9_]`, starting with a letter.
    pub name: String,
    /// What it does, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its parameters, in declaration order.
    #[serde(default)]
    pub params: Vec<ParamInfo>,
    /// Longest the action may run before it is killed, if limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// One declared parameter of an action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamInfo {
    /// Name: `[a-z0-9_]`, starting with a letter.
    pub name: String,
    /// Type and the rule a value must follow.
    #[serde(flatten)]
    pub kind: ParamKind,
    /// Whether a call must give it (false when it has a default).
    pub required: bool,
    /// Value used when a call omits it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// What it means, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A parameter's type and rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ParamKind {
    /// Text matching `pattern` (a regular expression the whole value must
    /// match), at most `max_len` bytes, never containing NUL or a control
    /// character, and not starting with `-` unless `allow_leading_dash`.
    String {
        /// Regular expression for the whole value.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pattern: Option<String>,
        /// Longest value in bytes (default 256).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_len: Option<u32>,
        /// Whether a value may start with `-` (and so look like an option).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        allow_leading_dash: bool,
    },
    /// A decimal integer within `min..=max`.
    Int {
        /// Smallest value allowed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<i64>,
        /// Largest value allowed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<i64>,
    },
    /// `true` or `false`.
    Bool,
    /// One of `values`.
    Enum {
        /// The allowed values.
        values: Vec<String>,
    },
    /// A DNS host name (RFC 1123): dot-separated labels of letters, digits and
    /// inner hyphens, 1–63 characters each, at most 253 in all.
    Hostname,
    /// A path inside `root`: relative to it (or absolute and under it), with
    /// no `..` component; it is passed as the absolute path, and must not
    /// leave the root through a symbolic link.
    Path {
        /// Absolute directory the path must stay inside.
        root: String,
    },
}

impl ParamKind {
    /// A short human rendering of the rule: `string matching ^[a-z]+$`,
    /// `int 1..=10`, `one of a, b`, `path under /srv`.
    pub fn describe(&self) -> String {
        match self {
            Self::String { pattern, .. } => match pattern {
                Some(p) => format!("string matching {p}"),
                None => "string".to_owned(),
            },
            Self::Int { min, max } => match (min, max) {
                (Some(a), Some(b)) => format!("int {a}..={b}"),
                (Some(a), None) => format!("int >= {a}"),
                (None, Some(b)) => format!("int <= {b}"),
                (None, None) => "int".to_owned(),
            },
            Self::Bool => "bool".to_owned(),
            Self::Enum { values } => format!("one of {}", values.join(", ")),
            Self::Hostname => "hostname".to_owned(),
            Self::Path { root } => format!("path under {root}"),
        }
    }
}
