//! Enrollment tokens: what an admin mints so that a new agent can register
//! itself, and the messages that carry them.
//!
//! An enrollment token is `mse_<id>_<secret>`, the layout of every other
//! token with its own prefix. An agent presents it as the `token` of its
//! first `hello`; the hub registers the agent with the enrollment's labels,
//! counts one use, answers [`Enrolled`] with the agent's own token, and
//! closes the connection normally. The agent then reconnects with that token.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::UnixMillis;
use crate::ids::AgentName;

/// The prefix of every enrollment token; API keys and agent tokens use `mst_`.
pub const ENROLLMENT_TOKEN_PREFIX: &str = "mse_";

/// How many agents one enrollment token registers unless told otherwise.
pub const DEFAULT_ENROLL_USES: u32 = 1;

/// How long an enrollment token works unless told otherwise (24 hours).
pub const DEFAULT_ENROLL_EXPIRES_MS: u64 = 24 * 3600 * 1000;

/// Most agents one enrollment token may register.
pub const MAX_ENROLL_USES: u32 = 100_000;

/// Longest an enrollment token may work (365 days).
pub const MAX_ENROLL_EXPIRES_MS: u64 = 365 * 24 * 3600 * 1000;

/// Whether `token` has the shape of an enrollment token (its prefix only;
/// the hub checks the rest).
pub fn is_enrollment_token(token: &str) -> bool {
    token.starts_with(ENROLLMENT_TOKEN_PREFIX)
}

/// `enroll.create`: a new enrollment token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollCreate {
    /// Registered labels every agent enrolled with it gets.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// How many agents it may register, 1 to [`MAX_ENROLL_USES`];
    /// [`DEFAULT_ENROLL_USES`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses: Option<u32>,
    /// How long it works from now, 1 ms to [`MAX_ENROLL_EXPIRES_MS`];
    /// [`DEFAULT_ENROLL_EXPIRES_MS`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_ms: Option<u64>,
}

/// One enrollment token as listed: never its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentInfo {
    /// The public 12 characters of the token (`mse_<id>_…`).
    pub id: String,
    /// Registered labels of the agents it enrolls.
    pub labels: BTreeMap<String, String>,
    /// How many more agents it may register; 0 when used up.
    pub uses_left: u32,
    /// When it stops working.
    pub expires_ms: UnixMillis,
    /// When it was made.
    pub created_ms: UnixMillis,
    /// The name of the API key that made it.
    pub created_by: String,
}

/// `enroll.created`: the new token, shown this once.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollCreated {
    /// The new enrollment.
    pub enrollment: EnrollmentInfo,
    /// Its token. The hub keeps only a hash; this is the only time it is shown.
    pub token: String,
}

impl std::fmt::Debug for EnrollCreated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollCreated")
            .field("enrollment", &self.enrollment)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// `enroll.list` reply: every enrollment token, by id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollList {
    /// The enrollments, expired and used-up ones included until revoked.
    pub enrollments: Vec<EnrollmentInfo>,
}

/// A reference to an enrollment token by its id (`enroll.revoke`,
/// `enroll.revoked`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRef {
    /// The token's public id.
    pub id: String,
}

/// `enrolled`, hub → agent: the agent is registered; this is its own token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolled {
    /// The name the agent was registered under.
    pub name: AgentName,
    /// The agent's own token, shown this once: store it, then reconnect with it.
    pub token: String,
}

impl std::fmt::Debug for Enrolled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrolled")
            .field("name", &self.name)
            .field("token", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_show_in_debug_and_absent_fields_take_defaults() {
        let enrolled = Enrolled {
            name: AgentName::new("web-1").unwrap(),
            token: "mst_abcdefghijkl_secret".into(),
        };
        assert!(!format!("{enrolled:?}").contains("secret"));
        let create: EnrollCreate = serde_json::from_str("{}").unwrap();
        assert_eq!(create, EnrollCreate::default());
        assert!(is_enrollment_token("mse_abcdefghijkl_x") && !is_enrollment_token("mst_x"));
    }
}
