//! Channel names, parsed and printed in one place.
//!
//! On the wire a channel is a string in `domain:resource` form (`fleet`,
//! `agent:web-1`, `run:01J…`). Everything else works with [`Channel`]: a
//! string from a peer is parsed once, at the edge, and a name is only ever
//! printed by [`Channel`]'s `Display`.

use std::fmt;
use std::str::FromStr;

use crate::ids::{AgentName, JobId, RunId};

/// A channel a client can subscribe to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// `fleet`: every agent's presence (`agent.status`, `agent.removed`).
    Fleet,
    /// `agent:<name>`: one agent's status and the events its programs publish (numbered).
    Agent(AgentName),
    /// `metrics:<name>`: one agent's metric samples.
    Metrics(AgentName),
    /// `run:<id>`: a run's status, queue position and output (numbered).
    Run(RunId),
    /// `job:<id>`: a job's progress and step events (numbered).
    Job(JobId),
    /// `session:<id>`: who attaches to and detaches from a session (not numbered).
    Session(RunId),
    /// `audit`: every entry appended to the audit log (admins only).
    Audit,
    /// `*`: every event of every channel (admins only, for debugging).
    All,
}

/// A channel name that is malformed or of an unknown kind.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no channel {0:?}")]
pub struct UnknownChannel(pub String);

impl Channel {
    /// Whether the channel carries a numbered stream that can be replayed from an offset.
    pub fn has_stream(&self) -> bool {
        matches!(self, Self::Agent(_) | Self::Run(_) | Self::Job(_))
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fleet => f.write_str("fleet"),
            Self::Agent(name) => write!(f, "agent:{name}"),
            Self::Metrics(name) => write!(f, "metrics:{name}"),
            Self::Run(id) => write!(f, "run:{id}"),
            Self::Job(id) => write!(f, "job:{id}"),
            Self::Session(id) => write!(f, "session:{id}"),
            Self::Audit => f.write_str("audit"),
            Self::All => f.write_str("*"),
        }
    }
}

impl FromStr for Channel {
    type Err = UnknownChannel;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = || UnknownChannel(s.to_owned());
        match s {
            "fleet" => return Ok(Self::Fleet),
            "*" => return Ok(Self::All),
            "audit" => return Ok(Self::Audit),
            _ => {}
        }
        let (kind, rest) = s.split_once(':').ok_or_else(unknown)?;
        match kind {
            "agent" => rest.parse().map(Self::Agent).map_err(|_| unknown()),
            "metrics" => rest.parse().map(Self::Metrics).map_err(|_| unknown()),
            "run" => rest.parse().map(Self::Run).map_err(|_| unknown()),
            "job" => rest.parse().map(Self::Job).map_err(|_| unknown()),
            "session" => rest.parse().map(Self::Session).map_err(|_| unknown()),
            _ => Err(unknown()),
        }
    }
}

impl From<Channel> for String {
    fn from(channel: Channel) -> Self {
        channel.to_string()
    }
}

impl From<Channel> for std::sync::Arc<str> {
    fn from(channel: Channel) -> Self {
        channel.to_string().into()
    }
}

impl From<RunId> for Channel {
    fn from(id: RunId) -> Self {
        Self::Run(id)
    }
}

impl From<JobId> for Channel {
    fn from(id: JobId) -> Self {
        Self::Job(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips() {
        let agent = AgentName::new("web-1").unwrap();
        for channel in [
            Channel::Fleet,
            Channel::All,
            Channel::Agent(agent.clone()),
            Channel::Metrics(agent),
            Channel::Run(RunId::generate()),
            Channel::Job(JobId::generate()),
        ] {
            let text = channel.to_string();
            assert_eq!(text.parse::<Channel>(), Ok(channel), "{text}");
        }
    }

    #[test]
    fn malformed_names_are_unknown() {
        for bad in [
            "",
            "fleets",
            "run:",
            "run:nope",
            "agent:",
            "agent:-x",
            "job:1",
            "metrics",
            "session:1",
            "agent-inbox:web-1",
        ] {
            assert!(bad.parse::<Channel>().is_err(), "{bad:?}");
        }
    }
}
