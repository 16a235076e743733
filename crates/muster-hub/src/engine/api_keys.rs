//! API keys: minting them with a role, listing them, revoking them.

use std::sync::Arc;

use muster_proto::messages::{KeyCreate, KeyCreated, KeyInfo, KeyList, KeyRevoked};
use muster_proto::{AgentName, ErrorCode, HubToClient, RequestId, Role, UnixMillis};

use super::Engine;
use super::batch::{Effect, ReplyTo};
use super::error::ApiError;
use crate::auth::{self, Secret};
use crate::outbound::{Outbound, Reply};
use crate::store::{ApiKeyRecord, Change};

/// The role a stored key has; a role this hub does not know grants least.
pub(crate) fn role_of(record: &ApiKeyRecord) -> Role {
    record.role.parse().unwrap_or(Role::Viewer)
}

fn info(record: &ApiKeyRecord) -> KeyInfo {
    KeyInfo {
        name: record.name.clone(),
        role: role_of(record),
        key_id: record.key_id.clone(),
    }
}

impl Engine {
    /// Mints a key and records it in the batch.
    pub(super) fn insert_new_key(
        &mut self,
        name: &str,
        role: Role,
        now: UnixMillis,
    ) -> (ApiKeyRecord, Secret) {
        let minted = auth::mint();
        let record = ApiKeyRecord {
            key_id: minted.key_id,
            name: name.to_owned(),
            role: role.as_str().to_owned(),
            secret_hash: minted.secret_hash,
        };
        self.batch.change(Change::InsertApiKey(record.clone(), now));
        self.registry.insert_api_key(record.clone());
        (record, minted.token)
    }

    /// `key.create`.
    pub(super) fn create_key(
        &mut self,
        to: &ReplyTo,
        re: Option<RequestId>,
        create: KeyCreate,
        now: UnixMillis,
    ) {
        // Key names follow the rules of agent names.
        if let Err(e) = AgentName::new(&create.name) {
            let error = ApiError::new(ErrorCode::InvalidMessage, format!("key name: {e}"));
            return self.reply_error(to, re, error, None);
        }
        if self.registry.api_keys().any(|key| key.name == create.name) {
            let error = ApiError::new(
                ErrorCode::Conflict,
                format!("a key named {:?} exists; revoke it first", create.name),
            );
            return self.reply_error(to, re, error, None);
        }
        let (record, token) = self.insert_new_key(&create.name, create.role, now);
        let msg = HubToClient::KeyCreated(KeyCreated {
            key: info(&record),
            token: token.expose().to_owned(),
        });
        self.batch.reply(to, Reply::to(re, msg));
    }

    /// `key.list`: every key, by name.
    pub(super) fn list_keys(&mut self, to: &ReplyTo, re: Option<RequestId>) {
        let mut keys: Vec<_> = self.registry.api_keys().map(info).collect();
        keys.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.key_id.cmp(&b.key_id)));
        let msg = HubToClient::KeyList(KeyList { keys });
        self.batch.reply(to, Reply::to(re, msg));
    }

    /// `key.revoke`: once the removal is stored, the key's connections close.
    pub(super) fn revoke_key(&mut self, to: &ReplyTo, re: Option<RequestId>, name: String) {
        let named: Vec<_> = self
            .registry
            .api_keys()
            .filter(|key| key.name == name)
            .map(role_of)
            .collect();
        if named.is_empty() {
            let error = ApiError::new(ErrorCode::KeyNotFound, format!("no key named {name:?}"));
            return self.reply_error(to, re, error, None);
        }
        let other_admins = self
            .registry
            .api_keys()
            .any(|key| key.name != name && role_of(key) == Role::Admin);
        if named.contains(&Role::Admin) && !other_admins {
            let error = ApiError::new(
                ErrorCode::InvalidState,
                format!("{name:?} is the last admin key; create another admin key first"),
            );
            return self.reply_error(to, re, error, None);
        }
        self.registry.remove_api_keys_named(&name);
        self.batch.change(Change::DeleteApiKeysNamed(name.clone()));
        let (clients, to) = (Arc::clone(&self.clients), to.clone());
        self.batch.effect(Effect::Notify(Box::new(move || {
            let closed = clients.revoke(&name);
            let msg = HubToClient::KeyRevoked(KeyRevoked {
                name,
                closed_connections: u32::try_from(closed).unwrap_or(u32::MAX),
            });
            to.send(Outbound::Reply(Box::new(Reply::to(re, msg))));
        })));
    }
}
