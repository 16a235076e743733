//! API keys: minting them with a role, a scope and an expiry, listing them,
//! rotating them, revoking them, and retiring them when they expire.

use std::sync::Arc;

use muster_proto::messages::{
    KeyCreate, KeyCreated, KeyInfo, KeyList, KeyRevoked, KeyRotate, KeyRotated,
};
use muster_proto::{AgentName, ErrorCode, HubToClient, RequestId, Role, Selector, UnixMillis};

use super::Engine;
use super::audit::AuditDraft;
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
        scope: record
            .scope
            .as_deref()
            .and_then(|s| Selector::parse(s).ok()),
        expires_ms: record.expires_ms,
    }
}

/// What a new key is: its role, scope and expiry.
pub(super) struct KeySpec {
    pub(super) role: Role,
    pub(super) scope: Option<Selector>,
    pub(super) expires_ms: Option<UnixMillis>,
}

impl KeySpec {
    /// A key of `role` for every agent, that never expires.
    pub(super) fn of_role(role: Role) -> Self {
        Self {
            role,
            scope: None,
            expires_ms: None,
        }
    }
}

impl Engine {
    /// Mints a key and records it in the batch.
    pub(super) fn insert_new_key(
        &mut self,
        name: &str,
        spec: KeySpec,
        now: UnixMillis,
    ) -> (ApiKeyRecord, Secret) {
        let minted = auth::mint();
        let record = ApiKeyRecord {
            key_id: minted.key_id,
            name: name.to_owned(),
            role: spec.role.as_str().to_owned(),
            secret_hash: minted.secret_hash,
            scope: spec.scope.map(String::from),
            expires_ms: spec.expires_ms,
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
        if create.scope.is_some() && create.role == Role::Admin {
            let error = ApiError::new(
                ErrorCode::InvalidMessage,
                "an admin key cannot be scoped: it manages every agent and key",
            );
            return self.reply_error(to, re, error, None);
        }
        let spec = KeySpec {
            role: create.role,
            scope: create.scope,
            expires_ms: create.expires_in_ms.map(|ms| now.saturating_add(ms)),
        };
        let (record, token) = self.insert_new_key(&create.name, spec, now);
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
            .map(|key| (key.key_id.clone(), role_of(key)))
            .collect();
        if named.is_empty() {
            let error = ApiError::new(ErrorCode::KeyNotFound, format!("no key named {name:?}"));
            return self.reply_error(to, re, error, None);
        }
        let other_admins = self
            .registry
            .api_keys()
            .any(|key| key.name != name && role_of(key) == Role::Admin);
        if named.iter().any(|(_, role)| *role == Role::Admin) && !other_admins {
            let error = ApiError::new(
                ErrorCode::InvalidState,
                format!("{name:?} is the last admin key; create another admin key first"),
            );
            return self.reply_error(to, re, error, None);
        }
        self.registry.remove_api_keys_named(&name);
        self.batch.change(Change::DeleteApiKeysNamed(name.clone()));
        let key_ids: Vec<String> = named.into_iter().map(|(key_id, _)| key_id).collect();
        let (clients, to) = (Arc::clone(&self.clients), to.clone());
        self.batch.effect(Effect::Notify(Box::new(move || {
            let closed = clients.revoke(&key_ids);
            let msg = HubToClient::KeyRevoked(KeyRevoked {
                name,
                closed_connections: u32::try_from(closed).unwrap_or(u32::MAX),
            });
            to.send(Outbound::Reply(Box::new(Reply::to(re, msg))));
        })));
    }

    /// `key.rotate`: a new token of the same name, role, scope and expiry;
    /// the old ones stop working now, or when the overlap ends.
    pub(super) fn rotate_key(
        &mut self,
        to: &ReplyTo,
        re: Option<RequestId>,
        rotate: KeyRotate,
        now: UnixMillis,
    ) {
        let old: Vec<ApiKeyRecord> = self
            .registry
            .api_keys()
            .filter(|key| key.name == rotate.name)
            .cloned()
            .collect();
        let Some(newest) = old
            .iter()
            .max_by_key(|key| key.expires_ms.unwrap_or(u64::MAX))
        else {
            let error = ApiError::new(
                ErrorCode::KeyNotFound,
                format!("no key named {:?}", rotate.name),
            );
            return self.reply_error(to, re, error, None);
        };
        let spec = KeySpec {
            role: role_of(newest),
            scope: newest
                .scope
                .as_deref()
                .and_then(|s| Selector::parse(s).ok()),
            expires_ms: newest.expires_ms,
        };
        let (record, token) = self.insert_new_key(&rotate.name, spec, now);
        let retire_at = now.saturating_add(rotate.overlap_ms);
        let mut retired_now = Vec::new();
        for key in &old {
            if rotate.overlap_ms == 0 || key.expires_ms.is_some_and(|at| at <= retire_at) {
                self.registry.remove_api_key(&key.key_id);
                self.batch.change(Change::DeleteApiKey(key.key_id.clone()));
                retired_now.push(key.key_id.clone());
            } else {
                self.registry.set_api_key_expiry(&key.key_id, retire_at);
                self.batch
                    .change(Change::SetApiKeyExpiry(key.key_id.clone(), retire_at));
            }
        }
        let (clients, to) = (Arc::clone(&self.clients), to.clone());
        let key = info(&record);
        self.batch.effect(Effect::Notify(Box::new(move || {
            let closed = clients.revoke(&retired_now);
            let msg = HubToClient::KeyRotated(KeyRotated {
                key,
                token: token.expose().to_owned(),
                old_expires_ms: retire_at,
                closed_connections: u32::try_from(closed).unwrap_or(u32::MAX),
            });
            to.send(Outbound::Reply(Box::new(Reply::to(re, msg))));
        })));
    }

    /// Retires the keys whose time is up: they are deleted, and their
    /// connections close once that is stored.
    pub(super) fn expire_keys(&mut self, now: UnixMillis) {
        let expired: Vec<ApiKeyRecord> = self
            .registry
            .api_keys()
            .filter(|key| key.expires_ms.is_some_and(|at| at <= now))
            .cloned()
            .collect();
        if expired.is_empty() {
            return;
        }
        let mut key_ids = Vec::with_capacity(expired.len());
        for key in expired {
            self.registry.remove_api_key(&key.key_id);
            self.batch.change(Change::DeleteApiKey(key.key_id.clone()));
            let draft = AuditDraft::new("-", None, "key.expire")
                .target(key.name)
                .detail(format!("key id {}", key.key_id));
            self.audit(draft, now);
            key_ids.push(key.key_id);
        }
        let clients = Arc::clone(&self.clients);
        self.batch.effect(Effect::Notify(Box::new(move || {
            clients.revoke(&key_ids);
        })));
    }
}
