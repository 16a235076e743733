//! Rotating a connected agent's token over its connection: the hub sends the
//! new token, the agent stores it and says so, and only then does the hub
//! store it, void the old one and close the connection (4012) so the agent
//! comes back with the new one. An agent that does not answer in time keeps
//! its old token.

use muster_proto::messages::{AgentRef, CredentialRotate, CredentialStored};
use muster_proto::{
    AgentName, CloseCode, ErrorCode, HubToAgent, HubToClient, RequestId, UnixMillis,
};

use super::Engine;
use super::batch::{Reply, ReplyTo};
use super::error::ApiError;
use super::reports::AgentLink;
use crate::auth;
use crate::store::Change;

/// How long an agent has to store its new token.
const ANSWER_WITHIN_MS: u64 = 10_000;

/// A rotation sent to an agent, waiting for its answer.
#[derive(Debug)]
pub(crate) struct Rotation {
    conn_id: u64,
    key_id: String,
    secret_hash: Vec<u8>,
    to: ReplyTo,
    re: Option<RequestId>,
    deadline_ms: UnixMillis,
}

impl Engine {
    /// `agent.rotate_token`.
    pub(super) fn rotate_token(
        &mut self,
        to: &ReplyTo,
        re: Option<RequestId>,
        name: AgentName,
        now: UnixMillis,
    ) {
        if !self.registry.contains(&name) {
            return self.reply_error(to, re, super::agents::agent_not_found(&name), None);
        }
        let Some(online) = self.presence.get(&name) else {
            let error = ApiError::new(
                ErrorCode::AgentOffline,
                format!(
                    "agent {:?} is not connected; its token is rotated over its connection",
                    name.as_str()
                ),
            );
            return self.reply_error(to, re, error, None);
        };
        if self.rotations.contains_key(&name) {
            let error = ApiError::new(
                ErrorCode::InvalidState,
                "a rotation of this agent's token is under way",
            );
            return self.reply_error(to, re, error, None);
        }
        let (conn_id, tx) = (online.conn_id, online.tx.clone());
        let minted = auth::mint();
        let msg = HubToAgent::CredentialRotate(CredentialRotate {
            token: minted.token.expose().to_owned(),
        });
        self.batch.send_agent(&tx, msg);
        self.rotations.insert(
            name,
            Rotation {
                conn_id,
                key_id: minted.key_id,
                secret_hash: minted.secret_hash,
                to: to.clone(),
                re,
                deadline_ms: now.saturating_add(ANSWER_WITHIN_MS),
            },
        );
    }

    /// The agent's `credential.stored`.
    pub(super) fn credential_stored(&mut self, link: &AgentLink, stored: CredentialStored) {
        let Some(rotation) = self
            .rotations
            .remove(&link.name)
            .filter(|r| r.conn_id == link.conn_id)
        else {
            return;
        };
        if !stored.stored {
            let reason = stored
                .reason
                .unwrap_or_else(|| "no reason given".to_owned());
            let error = ApiError::new(
                ErrorCode::InvalidState,
                format!(
                    "agent {:?} could not store its new token ({reason}); the old one still works",
                    link.name.as_str()
                ),
            );
            return self.reply_error(&rotation.to, rotation.re, error, None);
        }
        self.registry.set_credential(
            &link.name,
            rotation.key_id.clone(),
            rotation.secret_hash.clone(),
        );
        self.batch.change(Change::SetAgentCredential {
            name: link.name.clone(),
            key_id: rotation.key_id,
            secret_hash: rotation.secret_hash,
        });
        self.kick(
            &link.name,
            CloseCode::CREDENTIAL_ROTATED,
            "credential rotated: reconnect with the new one",
        );
        let msg = HubToClient::AgentTokenRotated(AgentRef {
            name: link.name.clone(),
        });
        self.batch.reply(&rotation.to, Reply::to(rotation.re, msg));
    }

    /// Ends rotations whose agent did not answer in time, or left.
    pub(super) fn expire_rotations(&mut self, now: UnixMillis) {
        let expired: Vec<_> = self
            .rotations
            .iter()
            .filter(|(name, r)| {
                r.deadline_ms <= now
                    || self
                        .presence
                        .get(name)
                        .is_none_or(|online| online.conn_id != r.conn_id)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in expired {
            let Some(rotation) = self.rotations.remove(&name) else {
                continue;
            };
            let error = ApiError::new(
                ErrorCode::InvalidState,
                format!(
                    "agent {:?} did not confirm its new token (disconnected, or too old to rotate); the old one still works",
                    name.as_str()
                ),
            );
            self.reply_error(&rotation.to, rotation.re, error, None);
        }
    }
}
