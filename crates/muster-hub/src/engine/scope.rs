//! Scopes: a key confined to a label selector sees, runs on and subscribes
//! to only the agents it matches.
//!
//! Requests that name an agent, a run or a job the engine holds are checked
//! here, before they are handled ([`Engine::scope_refusal`]); listings are
//! filtered where they are made; what is answered from the store is
//! checked against the [`View`] the engine hands the read.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use muster_proto::messages::Principal;
use muster_proto::{AgentName, ErrorCode, JobId, RunId, Selector};

use super::Engine;
use super::error::ApiError;
use super::requests::Request;
use crate::store::AgentRecord;

/// The agents a scoped key sees, in name order; what the store answers
/// for it is filtered to these.
pub(crate) type View = Arc<Vec<AgentName>>;

/// The refusal of a request on `what` (an agent, a run, a job) outside `scope`.
pub(crate) fn out_of_scope(scope: &Selector, what: &str) -> ApiError {
    ApiError::new(
        ErrorCode::Forbidden,
        format!("{what} is outside this key's scope ({scope})"),
    )
}

/// An agent's labels as selectors see them: registered, overlaid by those
/// it reports.
pub(super) fn labels_of(record: &AgentRecord) -> Cow<'_, BTreeMap<String, String>> {
    match &record.facts {
        Some(facts) if !facts.labels.is_empty() => {
            let mut labels = (*record.labels).clone();
            labels.extend(facts.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
            Cow::Owned(labels)
        }
        _ => Cow::Borrowed(&record.labels),
    }
}

impl Engine {
    /// Whether `principal` may see agent `name`: any agent without a scope;
    /// with one, a registered agent it matches.
    pub(super) fn in_scope(&self, principal: &Principal, name: &AgentName) -> bool {
        let Some(scope) = &principal.scope else {
            return true;
        };
        self.registry
            .get(name)
            .is_some_and(|record| scope.matches(name.as_str(), &labels_of(record)))
    }

    /// The agents a scoped key sees; `None` without a scope.
    pub(super) fn view(&self, principal: &Principal) -> Option<View> {
        let scope = principal.scope.as_ref()?;
        let names = self
            .registry
            .after(None)
            .filter(|record| scope.matches(record.name.as_str(), &labels_of(record)))
            .map(|record| record.name.clone())
            .collect();
        Some(Arc::new(names))
    }

    /// Why `principal` may not make `request`, if its scope forbids it as
    /// far as the engine's memory tells. Agents that are not registered,
    /// and runs and jobs the engine does not hold, are left to the handler
    /// (not found) and to the read (checked against the [`View`]).
    pub(super) fn scope_refusal(
        &self,
        principal: &Principal,
        request: &Request,
    ) -> Option<ApiError> {
        let scope = principal.scope.as_ref()?;
        let agent_refused = |name: &AgentName| {
            (self.registry.contains(name) && !self.in_scope(principal, name))
                .then(|| out_of_scope(scope, &format!("agent {:?}", name.as_str())))
        };
        match request {
            Request::AgentGet(name) | Request::AgentChannel(name, _) => agent_refused(name),
            Request::MetricsQuery(query) => agent_refused(&query.agent),
            Request::RunCreate(_, create) => agent_refused(&create.request.agent),
            Request::RunGet(id)
            | Request::RunCancel(id)
            | Request::SessionDetach(id, _)
            | Request::SessionSnapshot(id) => self.run_refused(principal, scope, *id),
            Request::SessionAttach(attach) => self.run_refused(principal, scope, attach.run),
            Request::SessionInput(_, input) => self.run_refused(principal, scope, input.run),
            Request::SessionResize(resize) => self.run_refused(principal, scope, resize.run),
            Request::JobGet(id) | Request::JobCancel(id) => self.job_refused(principal, scope, *id),
            Request::JobTargets(query) => self.job_refused(principal, scope, query.job),
            Request::AgentList(_)
            | Request::JobCreate(..)
            | Request::Read(_)
            | Request::View(_)
            | Request::AgentAdd(_)
            | Request::AgentRemove(_)
            | Request::AgentLabel(_)
            | Request::AgentRotateToken(_)
            | Request::KeyCreate(_)
            | Request::KeyList
            | Request::KeyRevoke(_)
            | Request::KeyRotate(_)
            | Request::EnrollCreate(_)
            | Request::EnrollList
            | Request::EnrollRevoke(_) => None,
        }
    }

    fn run_refused(&self, principal: &Principal, scope: &Selector, id: RunId) -> Option<ApiError> {
        let agent = match self.runs.get(&id) {
            Some(run) => &run.info.agent,
            None => &self.ended.get(&id)?.agent,
        };
        (!self.in_scope(principal, agent)).then(|| out_of_scope(scope, &format!("run {id}")))
    }

    fn job_refused(&self, principal: &Principal, scope: &Selector, id: JobId) -> Option<ApiError> {
        let job = self.jobs.active.get(&id)?;
        let outside = job
            .info
            .targets
            .iter()
            .any(|t| !self.in_scope(principal, &t.agent));
        outside.then(|| out_of_scope(scope, &format!("job {id}")))
    }
}
