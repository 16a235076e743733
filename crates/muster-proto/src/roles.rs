//! Roles, and the one table of what each request needs.
//!
//! Every API key has a role. `viewer` reads, `operator` also runs commands,
//! jobs and actions, `admin` also manages agents and keys. The hub checks
//! every client request against [`required_role`] before it does anything
//! else with it, and nowhere else.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::channel::Channel;
use crate::messages::ClientToHub;

/// What an API key may do; each role may do all its predecessors may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads: agents, runs, jobs, metrics, subscriptions.
    Viewer,
    /// Also runs commands, jobs and actions, and cancels them.
    Operator,
    /// Also manages agents, API keys and enrollment tokens, and subscribes to `all`.
    Admin,
}

impl Role {
    /// Every role, least first.
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }

    /// Whether this role may send a request that needs `need`.
    pub fn allows(self, need: Role) -> bool {
        self >= need
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?}: expected viewer, operator or admin"))
    }
}

/// The role a client request needs; `None` for the messages of the
/// connection itself (`hello`, heartbeats). This match is the role table of
/// `docs/protocol.md`, and has no catch-all: a new request type must be
/// placed in it.
pub fn required_role(msg: &ClientToHub) -> Option<Role> {
    use ClientToHub as M;
    match msg {
        M::Hello(_) | M::Heartbeat(_) | M::HeartbeatAck(_) => None,
        M::AgentList(_)
        | M::AgentGet(_)
        | M::RunGet(_)
        | M::RunList(_)
        | M::MetricsQuery(_)
        | M::JobGet(_)
        | M::JobList(_)
        | M::JobTargets(_)
        | M::Unsubscribe(_)
        | M::SessionAttach(_)
        | M::SessionDetach(_)
        | M::SessionSnapshot(_) => Some(Role::Viewer),
        M::Subscribe(subscribe) => Some(match subscribe.channel.parse::<Channel>() {
            Ok(Channel::All | Channel::Audit) => Role::Admin,
            _ => Role::Viewer,
        }),
        M::RunCreate(_)
        | M::RunCancel(_)
        | M::JobCreate(_)
        | M::JobCancel(_)
        | M::SessionInput(_)
        | M::SessionResize(_) => Some(Role::Operator),
        M::AgentAdd(_)
        | M::AgentRemove(_)
        | M::AgentLabel(_)
        | M::AgentRotateToken(_)
        | M::KeyCreate(_)
        | M::KeyList(_)
        | M::KeyRevoke(_)
        | M::KeyRotate(_)
        | M::AuditList(_) => Some(Role::Admin),
        M::EnrollCreate(_) | M::EnrollList(_) | M::EnrollRevoke(_) => Some(Role::Admin),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_parse_and_print() {
        assert!(Role::Admin.allows(Role::Operator) && Role::Operator.allows(Role::Viewer));
        assert!(!Role::Viewer.allows(Role::Operator) && !Role::Operator.allows(Role::Admin));
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            assert_eq!(serde_json::to_string(&role).unwrap(), format!("\"{role}\""));
        }
        assert!("root".parse::<Role>().is_err());
    }
}
