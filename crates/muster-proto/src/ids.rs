//! Identifier newtypes shared by every message.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::limits::{MAX_AGENT_NAME_LEN, MAX_REQUEST_ID_LEN};

/// Identifier of one command execution (a run): a ULID such as `01JD3X…`.
///
/// ULIDs sort by creation time, which keeps listings and channel names stable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RunId(pub ulid::Ulid);

impl<'de> Deserialize<'de> for RunId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(UlidVisitor).map(Self)
    }
}

/// Reads a ULID from its text without copying the text first (the `ulid`
/// crate's own `Deserialize` makes a `String` of it): every report an agent
/// sends, and every reply a client reads, names a run.
struct UlidVisitor;

impl serde::de::Visitor<'_> for UlidVisitor {
    type Value = ulid::Ulid;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a ULID, 26 characters of Crockford base 32")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
        ulid::Ulid::from_string(text).map_err(E::custom)
    }
}

/// Ids made by this process, in increasing order even within one
/// millisecond, so that sorting by id sorts by creation.
static IDS: std::sync::Mutex<ulid::Generator> = std::sync::Mutex::new(ulid::Generator::new());

/// A new ULID, greater than every one this process made before.
fn next_ulid() -> ulid::Ulid {
    let mut ids = IDS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    // Only 2^80 ids in one millisecond overflow the generator.
    ids.generate().unwrap_or_else(|_| ulid::Ulid::new())
}

impl RunId {
    /// A fresh id for a run created now, after every run this process created.
    pub fn generate() -> Self {
        Self(next_ulid())
    }

    /// The channel that carries this run's status and output.
    pub fn channel(&self) -> crate::Channel {
        crate::Channel::Run(*self)
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for RunId {
    type Err = ulid::DecodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ulid::Ulid::from_string(s).map(Self)
    }
}

/// Identifier of one job (a command, action or workflow fanned out over
/// agents): a ULID, like [`RunId`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct JobId(pub ulid::Ulid);

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(UlidVisitor).map(Self)
    }
}

impl JobId {
    /// A fresh id for a job created now, after every job this process created.
    pub fn generate() -> Self {
        Self(next_ulid())
    }

    /// The channel that carries this job's progress and step events.
    pub fn channel(&self) -> crate::Channel {
        crate::Channel::Job(*self)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for JobId {
    type Err = ulid::DecodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ulid::Ulid::from_string(s).map(Self)
    }
}

/// The unique name of an agent, such as `web-1`.
///
/// 1 to 64 characters from `[A-Za-z0-9._-]`, starting with a letter or digit.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct AgentName(String);

/// Written as its text, without the copy `#[serde(into = "String")]` makes.
impl Serialize for AgentName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl AgentName {
    /// Checks `name` against the naming rule.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidName> {
        let name = name.into();
        let valid_first = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
        let valid_rest = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if valid_first && valid_rest && name.len() <= MAX_AGENT_NAME_LEN {
            Ok(Self(name))
        } else {
            Err(InvalidName(name))
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for AgentName {
    type Error = InvalidName;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<AgentName> for String {
    fn from(value: AgentName) -> Self {
        value.0
    }
}

impl FromStr for AgentName {
    type Err = InvalidName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A name that breaks the agent naming rule.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid agent name {0:?}: use 1-64 characters from [A-Za-z0-9._-], starting with a letter or digit"
)]
pub struct InvalidName(String);

/// A request id chosen by the sender of a request and echoed in `re` on the reply.
///
/// Any string of 1 to 64 characters; clients usually count upwards.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(pub String);

impl RequestId {
    /// Whether the id respects the length limit.
    pub fn is_valid(&self) -> bool {
        !self.0.is_empty() && self.0.len() <= MAX_REQUEST_ID_LEN
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
