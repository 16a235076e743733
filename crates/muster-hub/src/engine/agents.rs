//! Agents: handshakes, presence, registration, labels, and how an agent is
//! shown to clients.

use std::collections::BTreeMap;
use std::sync::Arc;

use std::net::IpAddr;

use muster_proto::messages::{
    AgentAdd, AgentAdded, AgentEnvelope, AgentHello, AgentLabel, AgentList, AgentListQuery,
    AgentRef, Principal,
};
use muster_proto::{
    AgentInfo, AgentName, AgentStatus, Channel, CloseCode, ErrorCode, HubToClient, RequestId, Role,
    Selector, UnixMillis,
};
use tokio::sync::oneshot;

use super::audit::AuditDraft;
use super::batch::{Effect, Reply, ReplyTo};
use super::error::ApiError;
use super::lifecycle::RunEvent;
use super::presence::OnlineAgent;
use super::{AgentConn, ClientWelcome, Engine};
use crate::auth::{self, Secret};
use crate::browser_token;
use crate::paging::{self, Page};
use crate::store::{AgentFacts, AgentRecord, Change};
use crate::validate;

/// Agents in one page of `agent.list` at most.
pub(crate) const AGENT_PAGE: usize = 500;

impl Engine {
    /// A client's `hello`: who it is, and the first page of agents it
    /// sees. Recorded in the audit log either way.
    pub(super) fn client_hello(
        &mut self,
        token: &str,
        source: Option<IpAddr>,
        now: UnixMillis,
    ) -> Result<ClientWelcome, ApiError> {
        let (principal, key_id) = match self.authenticate_client(token, now) {
            Ok((principal, key)) => (principal, key.key_id.clone()),
            Err(e) => {
                let draft = AuditDraft::new("-", source, "login")
                    .outcome(e.code.as_str())
                    .detail(e.message.clone());
                self.audit(draft, now);
                return Err(e);
            }
        };
        let agents = self.agent_page(&principal, &AgentListQuery::default())?;
        let view = self.view(&principal);
        self.audit(AuditDraft::new(&principal.name, source, "login"), now);
        Ok(ClientWelcome {
            principal: self.shared_principal(&key_id, principal),
            key_id,
            view,
            agents,
        })
    }

    /// One `Principal` for every connection of a key: the one held, if it
    /// is still this, else `principal`, held from now on. (Each connection
    /// keeps its principal; 15,000 connections of one key share one.)
    fn shared_principal(&mut self, key_id: &str, principal: Principal) -> Arc<Principal> {
        match self.principals.get(key_id) {
            Some(held) if **held == principal => held.clone(),
            _ => {
                let shared = Arc::new(principal);
                self.principals.insert(key_id.to_owned(), shared.clone());
                shared
            }
        }
    }

    /// Lets go of the principals no connection holds any more.
    pub(super) fn prune_principals(&mut self) {
        self.principals
            .retain(|_, held| Arc::strong_count(held) > 1);
    }

    /// Checks a client's credential: an API key, or a browser token issued
    /// for one that still works.
    fn authenticate_client(
        &self,
        token: &str,
        now: UnixMillis,
    ) -> Result<(Principal, &crate::store::ApiKeyRecord), ApiError> {
        if !browser_token::looks_like(token) {
            return self.registry.authenticate_client(token, now);
        }
        let verified = self.browser.verify(token, now).ok_or_else(|| {
            ApiError::new(
                ErrorCode::AuthFailed,
                "this browser token is invalid or has expired",
            )
        })?;
        self.registry
            .authenticate_key(&verified.key_id, &verified.name, now)
    }

    /// A browser token for an API key (`POST /v1/browser-token`), recorded
    /// in the audit log either way.
    pub(super) fn browser_token(
        &mut self,
        token: &str,
        source: Option<IpAddr>,
        now: UnixMillis,
    ) -> Result<muster_proto::messages::BrowserToken, ApiError> {
        let issued = self
            .registry
            .authenticate_client(token, now)
            .and_then(|(principal, key)| {
                let ttl = self.config.browser_token_ttl_ms;
                let (token, expires_ms) =
                    self.browser
                        .issue(&key.name, &key.key_id, now, ttl, key.expires_ms)?;
                Ok(muster_proto::messages::BrowserToken {
                    token,
                    expires_ms,
                    principal,
                })
            });
        let draft = match &issued {
            Ok(issued) => AuditDraft::new(&issued.principal.name, source, "browser_token"),
            Err(e) => AuditDraft::new("-", source, "browser_token")
                .outcome(e.code.as_str())
                .detail(e.message.clone()),
        };
        self.audit(draft, now);
        issued
    }

    /// An agent's `hello`: authenticates it, takes over from an older
    /// connection, reconciles its runs and dispatches its queue.
    pub(super) fn agent_hello(
        &mut self,
        hello: AgentHello,
        conn: AgentConn,
        now: UnixMillis,
    ) -> Result<AgentName, ApiError> {
        let name = self.registry.authenticate_agent(&hello)?.name.clone();
        let sessions = hello
            .capabilities
            .iter()
            .any(|c| c == muster_proto::sessions::SESSIONS_CAPABILITY);
        let facts = AgentFacts {
            hostname: hello.hostname,
            os: hello.os,
            arch: hello.arch,
            version: hello.version,
            labels: self.registry.intern_labels(hello.labels),
            max_concurrency: hello.max_concurrency.max(1),
            exec: hello.exec,
            actions: hello.actions,
        };
        conn.last_seen.touch(now);
        let online = OnlineAgent {
            conn_id: conn.conn_id,
            tx: conn.tx.clone(),
            since_ms: now,
            last_seen: conn.last_seen,
            stale: false,
            sessions,
            control: conn.control,
        };
        if let Some(old) = self.presence.connect(name.clone(), online) {
            old.control
                .close(CloseCode::REPLACED, "replaced by a newer connection");
        }
        self.scheduler.set_online(&name, facts.max_concurrency);
        self.batch
            .change(Change::AgentSeen(name.clone(), Some(facts.clone()), now));
        self.registry.seen(&name, Some(facts), now);
        self.reconcile(&name, &conn.tx, &hello.runs, now);
        self.dispatch(&name, now);
        self.publish_positions(&name);
        self.publish_agent_status(&name);
        Ok(name)
    }

    /// An agent connection ended; if it was the current one, the agent is
    /// offline and its runs in flight wait for it a grace period.
    pub(super) fn agent_gone(&mut self, name: &AgentName, conn_id: u64, now: UnixMillis) {
        if !self.presence.disconnect(name, conn_id) {
            return;
        }
        if self.registry.contains(name) {
            self.registry.seen(name, None, now);
            self.batch
                .change(Change::AgentSeen(name.clone(), None, now));
        }
        self.agent_left(name, now);
        self.publish_agent_status(name);
    }

    /// An agent's heartbeats are late, or arrive again.
    pub(super) fn agent_stale(&mut self, name: &AgentName, conn_id: u64, stale: bool) {
        if self.presence.set_stale(name, conn_id, stale) {
            self.publish_agent_status(name);
        }
    }

    /// `agent.add`: registers an agent and answers with its token, once.
    pub(super) fn add_agent(
        &mut self,
        to: &ReplyTo,
        re: Option<RequestId>,
        add: AgentAdd,
        now: UnixMillis,
    ) {
        let added = self.register_agent(add, now);
        match added {
            Ok((agent, token)) => {
                let msg = HubToClient::AgentAdded(AgentAdded {
                    agent,
                    token: token.expose().to_owned(),
                });
                self.batch.reply(to, Reply::to(re, msg));
            }
            Err(e) => self.reply_error(to, re, e, None),
        }
    }

    /// Registers an agent with a fresh token, unless its name is reserved or
    /// taken or its labels are invalid.
    pub(super) fn register_agent(
        &mut self,
        add: AgentAdd,
        now: UnixMillis,
    ) -> Result<(AgentInfo, Secret), ApiError> {
        let name = add.name;
        if Selector::parse(name.as_str()).is_ok_and(|s| s.is_all()) {
            return Err(ApiError::new(
                ErrorCode::InvalidMessage,
                "the name \"all\" is reserved: as a target it selects every agent",
            ));
        }
        validate::labels(&add.labels)?;
        if self.registry.contains(&name) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("agent {:?} already exists", name.as_str()),
            ));
        }
        let minted = auth::mint();
        let record = AgentRecord {
            name: name.clone(),
            labels: Arc::new(add.labels),
            key_id: minted.key_id,
            secret_hash: minted.secret_hash,
            facts: None,
            last_seen_ms: None,
        };
        self.batch.change(Change::InsertAgent(record.clone(), now));
        self.registry.insert(record);
        self.publish_agent_status(&name);
        Ok((self.agent_info(&name).expect("just added"), minted.token))
    }

    /// `agent.remove`: unregisters an agent, closes its connection and
    /// cancels the runs waiting for it.
    pub(super) fn remove_agent(
        &mut self,
        to: &ReplyTo,
        re: Option<RequestId>,
        name: AgentName,
        now: UnixMillis,
    ) {
        if !self.registry.remove(&name) {
            return self.reply_error(to, re, agent_not_found(&name), None);
        }
        self.batch.change(Change::DeleteAgent(name.clone()));
        self.forget_agent(&name, now);
        let removed = HubToClient::AgentRemoved(AgentRef { name: name.clone() });
        self.batch.event(Channel::Fleet, removed.clone());
        self.batch.reply(to, Reply::to(re, removed));
    }

    /// Ends everything of an agent that was just unregistered: its waiting
    /// runs end `cancelled`, its runs in flight `lost` (it can never report
    /// them now), and its connection is closed. The connection leaves
    /// presence first, so nothing is dispatched to it on the way.
    fn forget_agent(&mut self, name: &AgentName, now: UnixMillis) {
        self.kick(name, CloseCode::REVOKED, "agent removed");
        if let Some(conn_id) = self.presence.get(name).map(|a| a.conn_id) {
            self.presence.disconnect(name, conn_id);
        }
        self.scheduler.set_offline(name);
        for run in self.scheduler.waiting(name) {
            self.end_run(run, RunEvent::Dequeued, "agent removed", now);
        }
        for run in self.scheduler.in_flight(name) {
            self.end_run(
                run,
                RunEvent::Lost,
                "agent removed while the run was in flight",
                now,
            );
        }
        self.scheduler.remove_agent(name);
    }

    /// `agent.label`: sets and removes registered labels.
    pub(super) fn label_agent(&mut self, to: &ReplyTo, re: Option<RequestId>, edit: AgentLabel) {
        let labelled = validate::labels(&edit.set).and_then(|()| {
            let record = self
                .registry
                .get(&edit.name)
                .ok_or_else(|| agent_not_found(&edit.name))?;
            let mut labels = (*record.labels).clone();
            labels.extend(edit.set);
            for key in &edit.remove {
                labels.remove(key);
            }
            Ok(Arc::new(labels))
        });
        match labelled {
            Ok(labels) => {
                self.registry.set_labels(&edit.name, labels.clone());
                self.batch
                    .change(Change::SetAgentLabels(edit.name.clone(), labels));
                self.publish_agent_status(&edit.name);
                let agent = self.agent_info(&edit.name).expect("registered");
                let msg = HubToClient::AgentInfo(AgentEnvelope { agent });
                self.batch.reply(to, Reply::to(re, msg));
            }
            Err(e) => self.reply_error(to, re, e, None),
        }
    }

    /// `agent.get`: at once (presence is live).
    pub(super) fn get_agent(&self, to: &ReplyTo, re: Option<RequestId>, name: &AgentName) {
        let msg = match self.agent_info(name) {
            Some(agent) => HubToClient::AgentInfo(AgentEnvelope { agent }),
            None => HubToClient::Error(agent_not_found(name).to_data()),
        };
        to.send(crate::outbound::Outbound::Reply(Box::new(Reply::to(
            re, msg,
        ))));
    }

    /// `agent.list`: one page, at once.
    pub(super) fn list_agents(
        &self,
        principal: &Principal,
        to: &ReplyTo,
        re: Option<RequestId>,
        query: &AgentListQuery,
    ) {
        let msg = match self.agent_page(principal, query) {
            Ok(list) => HubToClient::AgentList(list),
            Err(e) => HubToClient::Error(e.to_data()),
        };
        to.send(crate::outbound::Outbound::Reply(Box::new(Reply::to(
            re, msg,
        ))));
    }

    /// One page of agents, in name order, that the query's selector and
    /// the key's scope match.
    pub(super) fn agent_page(
        &self,
        principal: &Principal,
        query: &AgentListQuery,
    ) -> Result<AgentList, ApiError> {
        let selector = query
            .selector
            .as_deref()
            .map(Selector::parse)
            .transpose()
            .map_err(|e| ApiError::new(ErrorCode::InvalidSelector, e.to_string()))?;
        let after = paging::name_cursor(query.cursor.as_deref())?;
        let limit = paging::limit(query.limit, AGENT_PAGE, AGENT_PAGE);
        let matching = self
            .registry
            .after(after.as_ref())
            .filter_map(|record| self.info_of(record))
            .filter(|info| {
                [selector.as_ref(), principal.scope.as_deref()]
                    .into_iter()
                    .flatten()
                    .all(|s| s.matches(info.name.as_str(), &info.labels))
            });
        let Page { items, more } = paging::fill(matching, limit, self.page_bytes());
        let next_cursor = more
            .then(|| items.last().map(|a| a.name.to_string()))
            .flatten();
        Ok(AgentList {
            agents: items,
            next_cursor,
        })
    }

    /// The agents a selector and the key's scope match, in name order
    /// (for a new job).
    pub(super) fn agents_matching(
        &self,
        principal: &Principal,
        selector: &Selector,
    ) -> Vec<AgentInfo> {
        self.registry
            .after(None)
            .filter_map(|record| self.info_of(record))
            .filter(|info| {
                selector.matches(info.name.as_str(), &info.labels)
                    && principal
                        .scope
                        .as_ref()
                        .is_none_or(|s| s.matches(info.name.as_str(), &info.labels))
            })
            .collect()
    }

    /// Publishes an agent's record on `fleet` and on `agent:<name>`.
    pub(super) fn publish_agent_status(&mut self, name: &AgentName) {
        let Some(agent) = self.agent_info(name) else {
            return;
        };
        let msg = HubToClient::AgentStatus(AgentEnvelope { agent });
        self.batch.event(Channel::Agent(name.clone()), msg.clone());
        self.batch.event(Channel::Fleet, msg);
    }

    /// Closes an agent's connection, if it has one.
    pub(super) fn kick(&mut self, name: &AgentName, code: u16, reason: &str) {
        if let Some(agent) = self.presence.get(name) {
            let control = agent.control.clone();
            self.batch
                .effect(Effect::Close(control, code, reason.to_owned()));
        }
    }

    /// An agent as clients see it: registration, live presence and queue.
    pub(super) fn agent_info(&self, name: &AgentName) -> Option<AgentInfo> {
        self.registry
            .get(name)
            .and_then(|record| self.info_of(record))
    }

    fn info_of(&self, record: &AgentRecord) -> Option<AgentInfo> {
        let online = self.presence.get(&record.name);
        let (queued, running) = self.scheduler.counts(&record.name);
        // What the agent said in its last hello, kept with its registration.
        let facts = record.facts.as_ref();
        let mut labels = (*record.labels).clone();
        if let Some(facts) = facts {
            labels.extend(facts.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let status = match online {
            Some(agent) if agent.stale => AgentStatus::Stale,
            Some(_) => AgentStatus::Online,
            None => AgentStatus::Offline,
        };
        Some(AgentInfo {
            name: record.name.clone(),
            status,
            hub_id: online.map(|_| self.hub_id.clone()),
            labels,
            hostname: facts.map(|f| f.hostname.clone()),
            os: facts.map(|f| f.os.clone()),
            arch: facts.map(|f| f.arch.clone()),
            version: facts.map(|f| f.version.clone()),
            last_seen_ms: online.map(|o| o.last_seen.get()).or(record.last_seen_ms),
            connected_since_ms: online.map(|o| o.since_ms),
            max_concurrency: facts.map(|f| f.max_concurrency),
            running,
            queued,
            exec: facts.map(|f| f.exec).unwrap_or_default(),
            actions: facts.map(|f| f.actions.clone()).unwrap_or_default(),
        })
    }

    /// Mints an API key; with `replace`, earlier keys of that name are revoked.
    pub(super) fn mint_key(
        &mut self,
        name: &str,
        role: Role,
        replace: bool,
        reply: oneshot::Sender<Secret>,
        now: UnixMillis,
    ) {
        if replace {
            self.registry.remove_api_keys_named(name);
            self.batch
                .change(Change::DeleteApiKeysNamed(name.to_owned()));
        }
        let (_, token) = self.insert_new_key(name, super::api_keys::KeySpec::of_role(role), now);
        self.batch.effect(Effect::Notify(Box::new(move || {
            let _ = reply.send(token);
        })));
    }

    /// A fresh token for agent `name`, registering it if needed; an older
    /// token stops working and its connection is closed.
    pub(super) fn agent_token(
        &mut self,
        name: AgentName,
        reply: oneshot::Sender<Result<Secret, ApiError>>,
        now: UnixMillis,
    ) {
        let result = if self.registry.contains(&name) {
            let minted = auth::mint();
            self.registry
                .set_credential(&name, minted.key_id.clone(), minted.secret_hash.clone());
            self.batch.change(Change::SetAgentCredential {
                name: name.clone(),
                key_id: minted.key_id,
                secret_hash: minted.secret_hash,
            });
            self.kick(&name, CloseCode::REVOKED, "credential rotated");
            Ok(minted.token)
        } else {
            let add = AgentAdd {
                name,
                labels: BTreeMap::new(),
            };
            self.register_agent(add, now).map(|(_, token)| token)
        };
        self.batch.effect(Effect::Notify(Box::new(move || {
            let _ = reply.send(result);
        })));
    }
}

/// The error for an unknown agent name.
pub(crate) fn agent_not_found(name: &AgentName) -> ApiError {
    ApiError::new(
        ErrorCode::AgentNotFound,
        format!("agent {:?} not found", name.as_str()),
    )
}
