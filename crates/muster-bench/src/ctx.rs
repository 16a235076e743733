//! What every scenario is given: the hub, the token, the base name of its
//! sim agents and, when known, the hub's pid for CPU and memory figures.

use muster_proto::AgentName;

use crate::net::HubAddr;
use crate::resources::Meter;

/// The context of one invocation; not `Debug`, as it holds the token.
#[derive(Clone)]
pub(crate) struct Ctx {
    /// The hub, resolved.
    pub(crate) hub: HubAddr,
    /// The admin API token.
    token: String,
    /// Base name of the sim agents.
    pub(crate) agent_base: AgentName,
    /// The hub's process, for `/proc` figures.
    pub(crate) hub_pid: Option<u32>,
}

impl Ctx {
    /// A context for `hub`, authenticated by `token`.
    pub(crate) fn new(
        hub: HubAddr,
        token: &str,
        agent_base: AgentName,
        hub_pid: Option<u32>,
    ) -> Self {
        Self {
            hub,
            token: token.to_owned(),
            agent_base,
            hub_pid,
        }
    }

    /// The token, for `hello` messages only.
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// Starts measuring the hub and this process.
    pub(crate) fn meter(&self) -> Meter {
        Meter::start(self.hub_pid)
    }
}
