//! Credentials, the agent registry and presence transitions.

use std::collections::BTreeMap;

use muster_proto::messages::{AgentEnvelope, AgentHello, AgentLabel, Principal};
use muster_proto::{
    AgentInfo, AgentName, AgentStatus, CloseCode, ErrorCode, HubToClient, Selector,
};

use super::presence::{ConnControl, OnlineAgent};
use super::{ApiError, Core, FLEET_CHANNEL, now_ms};
use crate::auth::{self, Secret};
use crate::store::{AgentFacts, AgentRecord, ApiKeyRecord, StoreError};
use crate::validate;

/// Role of an API key that may do everything.
pub const ROLE_ADMIN: &str = "admin";

impl Core {
    /// Checks a client token and returns who it belongs to.
    pub async fn authenticate_client(&self, token: &str) -> Result<Principal, ApiError> {
        let (key_id, secret) = auth::parse(token).ok_or_else(auth_failed)?;
        let key = self.store.api_key(key_id).await?.ok_or_else(auth_failed)?;
        if !auth::verify(secret, &key.secret_hash) {
            return Err(auth_failed());
        }
        Ok(Principal {
            kind: "client".into(),
            name: key.name,
            role: Some(key.role),
        })
    }

    /// Checks an agent's `hello` and returns its registration.
    pub async fn authenticate_agent(&self, hello: &AgentHello) -> Result<AgentRecord, ApiError> {
        let (key_id, secret) = auth::parse(&hello.token).ok_or_else(auth_failed)?;
        let agent = self
            .store
            .agent_by_key(key_id)
            .await?
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

    /// Mints an API key; with `replace`, earlier keys of the same name are revoked.
    pub async fn mint_api_key(
        &self,
        name: &str,
        role: &str,
        replace: bool,
    ) -> anyhow::Result<Secret> {
        if replace {
            self.store.delete_api_keys_named(name).await?;
        }
        let minted = auth::mint();
        let record = ApiKeyRecord {
            key_id: minted.key_id,
            name: name.to_owned(),
            role: role.to_owned(),
            secret_hash: minted.secret_hash,
        };
        self.store.insert_api_key(&record, now_ms()).await?;
        Ok(minted.token)
    }

    /// Registers an agent and returns its token.
    pub async fn add_agent(
        &self,
        name: AgentName,
        labels: BTreeMap<String, String>,
    ) -> Result<(AgentInfo, Secret), ApiError> {
        if Selector::parse(name.as_str()).is_ok_and(|s| s.is_all()) {
            return Err(ApiError::new(
                ErrorCode::InvalidMessage,
                "the name \"all\" is reserved: as a target it selects every agent",
            ));
        }
        let minted = auth::mint();
        let record = AgentRecord {
            name: name.clone(),
            labels,
            key_id: minted.key_id,
            secret_hash: minted.secret_hash,
            facts: None,
            last_seen_ms: None,
        };
        match self.store.insert_agent(&record, now_ms()).await {
            Ok(()) => {}
            Err(StoreError::Conflict) => {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!("agent {:?} already exists", name.as_str()),
                ));
            }
            Err(StoreError::Other(e)) => return Err(e.into()),
        }
        let info = self.agent_info(&record);
        self.publish_agent_status(info.clone());
        Ok((info, minted.token))
    }

    /// Issues a new token for an agent (creating it if needed), revoking the old one.
    pub async fn rotate_agent_token(
        &self,
        name: &AgentName,
        labels: BTreeMap<String, String>,
    ) -> anyhow::Result<Secret> {
        if self.store.agent(name).await?.is_none() {
            return match self.add_agent(name.clone(), labels).await {
                Ok((_, token)) => Ok(token),
                Err(e) => Err(anyhow::anyhow!("{e}")),
            };
        }
        let minted = auth::mint();
        self.store
            .set_agent_credential(name, &minted.key_id, &minted.secret_hash)
            .await?;
        self.kick_agent(name, CloseCode::REVOKED, "credential rotated");
        Ok(minted.token)
    }

    /// Removes an agent, closing its connection.
    pub async fn remove_agent(&self, name: &AgentName) -> Result<(), ApiError> {
        if !self.store.delete_agent(name).await? {
            return Err(agent_not_found(name));
        }
        self.kick_agent(name, CloseCode::REVOKED, "agent removed");
        let removed =
            HubToClient::AgentRemoved(muster_proto::messages::AgentRef { name: name.clone() });
        self.publish_event(FLEET_CHANNEL, removed);
        let waiting = self
            .scheduler
            .lock()
            .expect("scheduler lock poisoned")
            .remove_agent(name);
        for run in waiting {
            self.finish_unstarted(run, muster_proto::RunState::Cancelled, "agent removed")
                .await;
        }
        Ok(())
    }

    /// One agent, with live presence.
    pub async fn agent(&self, name: &AgentName) -> Result<AgentInfo, ApiError> {
        let record = self
            .store
            .agent(name)
            .await?
            .ok_or_else(|| agent_not_found(name))?;
        Ok(self.agent_info(&record))
    }

    /// Every agent, with live presence.
    pub async fn agents(&self) -> Result<Vec<AgentInfo>, ApiError> {
        let records = self.store.agents().await?;
        Ok(records.iter().map(|r| self.agent_info(r)).collect())
    }

    /// The agents `selector` matches (on name and effective labels), sorted by name.
    pub async fn agents_matching(&self, selector: &Selector) -> Result<Vec<AgentInfo>, ApiError> {
        let mut agents = self.agents().await?;
        agents.retain(|a| selector.matches(a.name.as_str(), &a.labels));
        Ok(agents)
    }

    /// Whether an agent is connected now.
    pub fn is_online(&self, name: &AgentName) -> bool {
        self.presence
            .lock()
            .expect("presence lock poisoned")
            .get(name)
            .is_some()
    }

    /// Records a new agent connection, replacing an older one, and dispatches its queue.
    pub async fn agent_connected(
        &self,
        record: &AgentRecord,
        hello: &AgentHello,
        conn_id: u64,
        control: ConnControl,
    ) -> anyhow::Result<AgentInfo> {
        let facts = AgentFacts {
            hostname: hello.hostname.clone(),
            os: hello.os.clone(),
            arch: hello.arch.clone(),
            version: hello.version.clone(),
            labels: hello.labels.clone(),
            max_concurrency: hello.max_concurrency.max(1),
            exec: hello.exec,
            actions: hello.actions.clone(),
        };
        let now = now_ms();
        self.store
            .record_agent_seen(&record.name, Some(&facts), now)
            .await?;
        let online = OnlineAgent {
            conn_id,
            facts: facts.clone(),
            since_ms: now,
            last_seen_ms: now,
            stale: false,
            control,
        };
        let replaced = self
            .presence
            .lock()
            .expect("presence lock poisoned")
            .connect(record.name.clone(), online);
        if let Some(old) = replaced {
            old.control
                .close(CloseCode::REPLACED, "replaced by a newer connection");
        }
        self.scheduler
            .lock()
            .expect("scheduler lock poisoned")
            .set_online(&record.name, facts.max_concurrency);
        self.reconcile(&record.name, &hello.runs).await;
        let mut record = record.clone();
        record.facts = Some(facts);
        let info = self.agent_info(&record);
        self.publish_agent_status(info.clone());
        Ok(info)
    }

    /// Forgets a connection that ended; its in-flight runs are lost.
    pub async fn agent_disconnected(&self, name: &AgentName, conn_id: u64) {
        let was_current = self
            .presence
            .lock()
            .expect("presence lock poisoned")
            .disconnect(name, conn_id);
        if !was_current {
            return;
        }
        if let Err(e) = self.store.record_agent_seen(name, None, now_ms()).await {
            tracing::warn!(agent = %name, error = %e, "could not record last seen");
        }
        self.agent_left(name);
        match self.agent(name).await {
            Ok(info) => self.publish_agent_status(info),
            Err(e) => tracing::debug!(agent = %name, error = %e, "no status to publish"),
        }
    }

    /// Notes that a frame arrived from an agent; a stale agent is online again.
    pub async fn agent_seen(&self, name: &AgentName) {
        let revived = self
            .presence
            .lock()
            .expect("presence lock poisoned")
            .touch(name, now_ms());
        if revived && let Ok(info) = self.agent(name).await {
            self.publish_agent_status(info);
        }
    }

    /// Marks agents whose heartbeats are late as stale and tells the fleet.
    pub(super) async fn check_stale(&self) {
        let late = self.config.heartbeat_interval_ms * 3 / 2;
        let cutoff = now_ms().saturating_sub(late);
        let stale = self
            .presence
            .lock()
            .expect("presence lock poisoned")
            .mark_stale(cutoff);
        for name in stale {
            if let Ok(info) = self.agent(&name).await {
                self.publish_agent_status(info);
            }
        }
    }

    /// Changes an agent's registered labels and tells the fleet.
    pub async fn label_agent(&self, edit: AgentLabel) -> Result<AgentInfo, ApiError> {
        validate::labels(&edit.set)?;
        let mut record = self
            .store
            .agent(&edit.name)
            .await?
            .ok_or_else(|| agent_not_found(&edit.name))?;
        record.labels.extend(edit.set);
        for key in &edit.remove {
            record.labels.remove(key);
        }
        self.store
            .set_agent_labels(&edit.name, &record.labels)
            .await?;
        let info = self.agent_info(&record);
        self.publish_agent_status(info.clone());
        Ok(info)
    }

    /// Publishes an agent's state on `fleet` and on `agent:<name>`.
    fn publish_agent_status(&self, agent: AgentInfo) {
        let channel = format!("agent:{}", agent.name);
        let msg = HubToClient::AgentStatus(AgentEnvelope { agent });
        self.publish_event(&channel, msg.clone());
        self.publish_event(FLEET_CHANNEL, msg);
    }

    fn kick_agent(&self, name: &AgentName, code: u16, reason: &str) {
        if let Some(agent) = self
            .presence
            .lock()
            .expect("presence lock poisoned")
            .get(name)
        {
            agent.control.close(code, reason);
        }
    }

    fn agent_info(&self, record: &AgentRecord) -> AgentInfo {
        let online = self
            .presence
            .lock()
            .expect("presence lock poisoned")
            .get(&record.name)
            .cloned();
        let (queued, running) = self
            .scheduler
            .lock()
            .expect("scheduler lock poisoned")
            .counts(&record.name);
        let facts = online.as_ref().map(|o| &o.facts).or(record.facts.as_ref());
        let mut labels = record.labels.clone();
        if let Some(facts) = facts {
            labels.extend(facts.labels.clone());
        }
        let status = match &online {
            Some(agent) if agent.stale => AgentStatus::Stale,
            Some(_) => AgentStatus::Online,
            None => AgentStatus::Offline,
        };
        AgentInfo {
            name: record.name.clone(),
            status,
            hub_id: online.as_ref().map(|_| self.hub_id.clone()),
            labels,
            hostname: facts.map(|f| f.hostname.clone()),
            os: facts.map(|f| f.os.clone()),
            arch: facts.map(|f| f.arch.clone()),
            version: facts.map(|f| f.version.clone()),
            last_seen_ms: online
                .as_ref()
                .map(|o| o.last_seen_ms)
                .or(record.last_seen_ms),
            connected_since_ms: online.as_ref().map(|o| o.since_ms),
            max_concurrency: facts.map(|f| f.max_concurrency),
            running,
            queued,
            exec: facts.map(|f| f.exec).unwrap_or_default(),
            actions: facts.map(|f| f.actions.clone()).unwrap_or_default(),
        }
    }
}

fn auth_failed() -> ApiError {
    ApiError::new(ErrorCode::AuthFailed, "invalid token")
}

/// The error for an unknown agent name.
pub(super) fn agent_not_found(name: &AgentName) -> ApiError {
    ApiError::new(
        ErrorCode::AgentNotFound,
        format!("agent {:?} not found", name.as_str()),
    )
}
