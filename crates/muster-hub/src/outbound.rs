//! What a connection's queue carries: published frames, answers to its
//! requests and, for an agent, control messages. Answers and agent messages
//! travel typed and are encoded by the connection that sends them, so the
//! work spreads over every core; frames published to many are encoded once,
//! before they are queued.

use muster_proto::{Channel, HubToAgent, HubToClient, RequestId};

use crate::broker::Delivery;

/// One item of a connection's queue.
#[derive(Debug)]
pub enum Outbound {
    /// A frame published on a channel the connection subscribes to.
    Delivery(Delivery),
    /// An answer to one of the connection's requests.
    Reply(Box<Reply>),
    /// A message for the agent on this connection.
    Agent(Box<HubToAgent>),
}

/// An answer to a client request.
#[derive(Debug)]
pub struct Reply {
    /// The request answered.
    pub re: Option<RequestId>,
    /// The answer.
    pub msg: HubToClient,
    /// Subscribe the connection to this channel before passing the answer on.
    pub subscribe: Option<Channel>,
    /// Drop the connection's subscription to this channel.
    pub unsubscribe: Option<Channel>,
}

impl Reply {
    /// A plain answer to `re`.
    pub fn to(re: Option<RequestId>, msg: HubToClient) -> Self {
        Self {
            re,
            msg,
            subscribe: None,
            unsubscribe: None,
        }
    }
}
