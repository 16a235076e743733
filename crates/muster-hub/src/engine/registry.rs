//! The agent registry and the credentials, kept in memory.
//!
//! Loaded from the store at startup and changed only by the engine, so every
//! handshake and every `run.create` is answered without a database read. The
//! engine writes each change to the store in the same batch.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;

use muster_proto::messages::{AgentHello, Principal};
use muster_proto::{AgentName, ErrorCode, Selector, UnixMillis};

use super::error::ApiError;
use crate::auth;
use crate::store::{AgentFacts, AgentRecord, ApiKeyRecord, EnrollmentRecord, Labels};

/// Registered agents and every credential.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    /// By name, sorted, for listings that page by name.
    agents: BTreeMap<AgentName, AgentRecord>,
    /// Agent name by the public half of its token.
    agent_keys: HashMap<String, AgentName>,
    /// API keys by the public half of their token.
    api_keys: HashMap<String, ApiKeyRecord>,
    /// Enrollment tokens by the public half of their token.
    enrollments: BTreeMap<String, EnrollmentRecord>,
    /// One copy of each label set in use.
    label_sets: LabelSets,
}

impl Registry {
    /// The registry as stored.
    pub(crate) fn new(
        agents: Vec<AgentRecord>,
        api_keys: Vec<ApiKeyRecord>,
        enrollments: Vec<EnrollmentRecord>,
    ) -> Self {
        let mut registry = Self::default();
        for key in api_keys {
            registry.api_keys.insert(key.key_id.clone(), key);
        }
        for enrollment in enrollments {
            registry.insert_enrollment(enrollment);
        }
        for agent in agents {
            registry.insert(agent);
        }
        registry
    }

    /// Checks a client token at `now`; returns who it is and its key.
    pub(crate) fn authenticate_client(
        &self,
        token: &str,
        now: UnixMillis,
    ) -> Result<(Principal, &ApiKeyRecord), ApiError> {
        let (key_id, secret) = auth::parse(token).ok_or_else(auth_failed)?;
        let key = self.api_keys.get(key_id).ok_or_else(auth_failed)?;
        if !auth::verify(secret, &key.secret_hash) {
            return Err(auth_failed());
        }
        Self::principal_of(key, now)
    }

    /// The API key a verified browser token names, if it still works at
    /// `now` and still has that name.
    pub(crate) fn authenticate_key(
        &self,
        key_id: &str,
        name: &str,
        now: UnixMillis,
    ) -> Result<(Principal, &ApiKeyRecord), ApiError> {
        let key = self
            .api_keys
            .get(key_id)
            .filter(|key| key.name == name)
            .ok_or_else(auth_failed)?;
        Self::principal_of(key, now)
    }

    /// Who `key` is, unless it expired by `now`.
    fn principal_of(
        key: &ApiKeyRecord,
        now: UnixMillis,
    ) -> Result<(Principal, &ApiKeyRecord), ApiError> {
        if key.expires_ms.is_some_and(|at| now >= at) {
            return Err(ApiError::new(
                ErrorCode::AuthFailed,
                "this API key has expired",
            ));
        }
        let scope = key
            .scope
            .as_deref()
            .map(Selector::parse)
            .transpose()
            .map_err(|_| {
                ApiError::new(ErrorCode::AuthFailed, "this API key's scope is unreadable")
            })?;
        let principal = Principal {
            kind: "client".into(),
            name: key.name.clone(),
            role: Some(key.role.clone()),
            scope: scope.map(Box::new),
        };
        Ok((principal, key))
    }

    /// Checks an agent's `hello` and returns its registration.
    pub(crate) fn authenticate_agent(&self, hello: &AgentHello) -> Result<&AgentRecord, ApiError> {
        let (key_id, secret) = auth::parse(&hello.token).ok_or_else(auth_failed)?;
        let agent = self
            .agent_keys
            .get(key_id)
            .and_then(|name| self.agents.get(name))
            .ok_or_else(auth_failed)?;
        if !auth::verify(secret, &agent.secret_hash) {
            return Err(auth_failed());
        }
        if let Some(name) = &hello.name
            && name != &agent.name
        {
            return Err(ApiError::new(
                ErrorCode::AuthFailed,
                format!(
                    "this token belongs to agent {:?}, not {:?}",
                    agent.name.as_str(),
                    name.as_str()
                ),
            ));
        }
        Ok(agent)
    }

    /// Checks an enrollment token: it must exist, its secret match, and it
    /// must have a use left at `now`. Returns its record.
    pub(crate) fn check_enrollment(
        &self,
        token: &str,
        now: UnixMillis,
    ) -> Result<&EnrollmentRecord, ApiError> {
        let invalid = || ApiError::new(ErrorCode::AuthFailed, "invalid enrollment token");
        let (token_id, secret) =
            auth::parse_with(auth::ENROLLMENT_TOKEN_PREFIX, token).ok_or_else(invalid)?;
        let enrollment = self.enrollments.get(token_id).ok_or_else(invalid)?;
        if !auth::verify(secret, &enrollment.secret_hash) {
            return Err(invalid());
        }
        if enrollment.expires_ms <= now {
            return Err(ApiError::new(
                ErrorCode::AuthFailed,
                "this enrollment token has expired; ask an admin for a new one",
            ));
        }
        if enrollment.uses_left == 0 {
            return Err(ApiError::new(
                ErrorCode::AuthFailed,
                "this enrollment token is used up; ask an admin for a new one",
            ));
        }
        Ok(enrollment)
    }

    /// Adds an enrollment token.
    pub(crate) fn insert_enrollment(&mut self, enrollment: EnrollmentRecord) {
        self.enrollments
            .insert(enrollment.token_id.clone(), enrollment);
    }

    /// Counts one use of an enrollment token; returns the uses it has left.
    pub(crate) fn use_enrollment(&mut self, token_id: &str) -> u32 {
        match self.enrollments.get_mut(token_id) {
            Some(enrollment) => {
                enrollment.uses_left = enrollment.uses_left.saturating_sub(1);
                enrollment.uses_left
            }
            None => 0,
        }
    }

    /// Removes an enrollment token; false if there was none with that id.
    pub(crate) fn remove_enrollment(&mut self, token_id: &str) -> bool {
        self.enrollments.remove(token_id).is_some()
    }

    /// Every enrollment token, by id.
    pub(crate) fn enrollments(&self) -> impl Iterator<Item = &EnrollmentRecord> {
        self.enrollments.values()
    }

    /// How many API keys exist.
    pub(crate) fn api_key_count(&self) -> usize {
        self.api_keys.len()
    }

    /// Adds an API key.
    pub(crate) fn insert_api_key(&mut self, key: ApiKeyRecord) {
        self.api_keys.insert(key.key_id.clone(), key);
    }

    /// Every API key.
    pub(crate) fn api_keys(&self) -> impl Iterator<Item = &ApiKeyRecord> {
        self.api_keys.values()
    }

    /// Removes every API key named `name`.
    pub(crate) fn remove_api_keys_named(&mut self, name: &str) {
        self.api_keys.retain(|_, key| key.name != name);
    }

    /// Removes one API key; returns it if it was there.
    pub(crate) fn remove_api_key(&mut self, key_id: &str) -> Option<ApiKeyRecord> {
        self.api_keys.remove(key_id)
    }

    /// Sets when an API key stops working.
    pub(crate) fn set_api_key_expiry(&mut self, key_id: &str, at: UnixMillis) {
        if let Some(key) = self.api_keys.get_mut(key_id) {
            key.expires_ms = Some(at);
        }
    }

    /// One agent.
    pub(crate) fn get(&self, name: &AgentName) -> Option<&AgentRecord> {
        self.agents.get(name)
    }

    /// Whether an agent is registered.
    pub(crate) fn contains(&self, name: &AgentName) -> bool {
        self.agents.contains_key(name)
    }

    /// Registers an agent (replacing one of the same name).
    pub(crate) fn insert(&mut self, mut agent: AgentRecord) {
        agent.labels = self.label_sets.intern(agent.labels);
        if let Some(facts) = &mut agent.facts {
            facts.labels = self.label_sets.intern(facts.labels.clone());
        }
        self.agent_keys
            .insert(agent.key_id.clone(), agent.name.clone());
        if let Some(old) = self.agents.insert(agent.name.clone(), agent) {
            self.agent_keys.remove(&old.key_id);
        }
    }

    /// Unregisters an agent; false if it was not registered.
    pub(crate) fn remove(&mut self, name: &AgentName) -> bool {
        match self.agents.remove(name) {
            Some(agent) => {
                self.agent_keys.remove(&agent.key_id);
                true
            }
            None => false,
        }
    }

    /// Replaces an agent's credential; the old one stops working at once.
    pub(crate) fn set_credential(&mut self, name: &AgentName, key_id: String, hash: Vec<u8>) {
        if let Some(agent) = self.agents.get_mut(name) {
            self.agent_keys.remove(&agent.key_id);
            self.agent_keys.insert(key_id.clone(), name.clone());
            agent.key_id = key_id;
            agent.secret_hash = hash;
        }
    }

    /// Replaces an agent's registered labels.
    pub(crate) fn set_labels(&mut self, name: &AgentName, labels: Labels) {
        if let Some(agent) = self.agents.get_mut(name) {
            agent.labels = self.label_sets.intern(labels);
        }
    }

    /// Records what an agent reported and when it was last heard from.
    pub(crate) fn seen(&mut self, name: &AgentName, facts: Option<AgentFacts>, at: UnixMillis) {
        if let Some(agent) = self.agents.get_mut(name) {
            agent.last_seen_ms = Some(at);
            if let Some(mut facts) = facts {
                facts.labels = self.label_sets.intern(facts.labels);
                agent.facts = Some(facts);
            }
        }
    }

    /// The shared copy of `labels`, for facts about to be reported.
    pub(crate) fn intern_labels(&mut self, labels: BTreeMap<String, String>) -> Labels {
        self.label_sets.intern(Arc::new(labels))
    }

    /// Agents in name order, starting after `after` when given.
    pub(crate) fn after(
        &self,
        after: Option<&AgentName>,
    ) -> impl Iterator<Item = &AgentRecord> + '_ {
        let start = match after {
            Some(name) => Bound::Excluded(name.clone()),
            None => Bound::Unbounded,
        };
        self.agents
            .range((start, Bound::Unbounded))
            .map(|(_, agent)| agent)
    }
}

fn auth_failed() -> ApiError {
    ApiError::new(ErrorCode::AuthFailed, "invalid token")
}

/// The label sets agents hold, one copy of each. A fleet's agents mostly
/// report the same few sets, and each copy would otherwise cost a B-tree
/// node (about half a KiB) per agent.
#[derive(Debug, Default)]
struct LabelSets {
    sets: HashSet<Labels>,
    /// Size after the last sweep; the next sweep comes at twice that.
    swept_at: usize,
}

impl LabelSets {
    /// The shared copy of `labels`.
    fn intern(&mut self, labels: Labels) -> Labels {
        if let Some(shared) = self.sets.get(&labels) {
            return shared.clone();
        }
        if self.sets.len() >= self.swept_at.max(64) * 2 {
            // Sets no agent holds any more go; amortised over the inserts
            // since the last sweep.
            self.sets.retain(|set| Arc::strong_count(set) > 1);
            self.swept_at = self.sets.len();
        }
        self.sets.insert(labels.clone());
        labels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Arc::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn equal_label_sets_share_one_copy() {
        let mut sets = LabelSets::default();
        let a = sets.intern(labels(&[("env", "prod"), ("region", "eu")]));
        let b = sets.intern(labels(&[("env", "prod"), ("region", "eu")]));
        let c = sets.intern(labels(&[("env", "dev")]));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(sets.sets.len(), 2);
    }

    #[test]
    fn sets_nobody_holds_are_swept() {
        let mut sets = LabelSets::default();
        let kept = sets.intern(labels(&[("keep", "yes")]));
        // Sets dropped at once, as by agents that report a new one each time.
        for i in 0..10_000 {
            drop(sets.intern(labels(&[("n", &i.to_string())])));
        }
        assert!(sets.sets.len() <= 2 * 64 + 1, "held {}", sets.sets.len());
        assert!(Arc::ptr_eq(&kept, &sets.intern(labels(&[("keep", "yes")]))));
    }
}
