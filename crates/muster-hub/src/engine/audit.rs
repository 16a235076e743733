//! The audit log: who did what, from where, and how it ended.
//!
//! Every request that changes something is recorded once the engine has
//! handled it, with `ok` or the code it was refused with; connections
//! report their own refusals (`FORBIDDEN` by role, `AUTH_FAILED`,
//! `RATE_LIMIT`) and logins as [`Input::Audit`](super::Input::Audit).
//! An entry is stored in the batch of the change it records and published
//! on `audit` after the commit, like everything else. Entries are numbered
//! from 1 without gaps, so a reader pages and follows by seq.

use std::net::IpAddr;

use muster_proto::messages::{AuditEntry, Principal};
use muster_proto::types::CommandSpec;
use muster_proto::{Channel, HubToClient, UnixMillis};

use super::Engine;
use super::requests::Request;
use crate::store::Change;

/// Most characters of an entry's detail that are kept.
const MAX_DETAIL_CHARS: usize = 256;

/// An entry before the engine numbers it.
#[derive(Clone, Debug)]
pub struct AuditDraft {
    /// Who: a key or agent name, `-` if nobody authenticated.
    pub actor: String,
    /// From where.
    pub source: Option<IpAddr>,
    /// What: a request type, `login`, `enroll`, …
    pub action: String,
    /// On what.
    pub target: Option<String>,
    /// `ok`, or the error code of the refusal.
    pub outcome: String,
    /// More, cut to [`MAX_DETAIL_CHARS`].
    pub detail: Option<String>,
}

impl AuditDraft {
    /// An entry of `actor` doing `action`, `ok` until told otherwise.
    pub fn new(
        actor: impl Into<String>,
        source: Option<IpAddr>,
        action: impl Into<String>,
    ) -> Self {
        Self {
            actor: actor.into(),
            source,
            action: action.into(),
            target: None,
            outcome: "ok".into(),
            detail: None,
        }
    }

    /// On `target`.
    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    /// Ended with `outcome` (an error code's wire name).
    pub fn outcome(mut self, outcome: impl Into<String>) -> Self {
        self.outcome = outcome.into();
        self
    }

    /// With `detail`.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// The entry for a client request that changes something; `None` for
    /// reads, which are not recorded unless refused.
    pub(super) fn of_request(
        principal: &Principal,
        source: Option<IpAddr>,
        request: &Request,
    ) -> Option<Self> {
        let draft = |action: &str| Self::new(&principal.name, source, action);
        Some(match request {
            Request::RunCreate(id, create) => draft("run.create")
                .target(create.request.agent.as_str())
                .detail(format!(
                    "run {id}: {}",
                    command_line(&create.request.command)
                )),
            Request::RunCancel(id) => draft("run.cancel").target(id.to_string()),
            Request::JobCreate(id, create) => draft("job.create")
                .target(create.spec.selector.clone())
                .detail(format!("job {id}")),
            Request::JobCancel(id) => draft("job.cancel").target(id.to_string()),
            Request::AgentAdd(add) => draft("agent.add").target(add.name.as_str()),
            Request::AgentRemove(name) => draft("agent.remove").target(name.as_str()),
            Request::AgentLabel(edit) => draft("agent.label").target(edit.name.as_str()),
            Request::AgentRotateToken(name) => draft("agent.rotate_token").target(name.as_str()),
            Request::KeyCreate(create) => draft("key.create")
                .target(create.name.clone())
                .detail(format!("role {}", create.role)),
            Request::KeyRevoke(name) => draft("key.revoke").target(name.clone()),
            Request::KeyRotate(rotate) => draft("key.rotate").target(rotate.name.clone()),
            Request::EnrollCreate(create) => {
                let uses = create
                    .uses
                    .unwrap_or(muster_proto::enroll::DEFAULT_ENROLL_USES);
                draft("enroll.create").detail(format!("{uses} use(s)"))
            }
            Request::EnrollRevoke(id) => draft("enroll.revoke").target(id.clone()),
            Request::AgentList(_)
            | Request::AgentGet(_)
            | Request::RunGet(_)
            | Request::JobGet(_)
            | Request::JobTargets(_)
            | Request::MetricsQuery(_)
            | Request::KeyList
            | Request::EnrollList
            | Request::AgentChannel(..)
            | Request::Read(_)
            | Request::View(_)
            | Request::SessionDetach(..)
            | Request::SessionSnapshot(_) => return None,
            // Attaching as a writer and resizing are recorded; each input is
            // in the session's own transcript, with who sent it.
            Request::SessionAttach(attach) if attach.write => draft("session.attach")
                .target(attach.run.to_string())
                .detail("writer"),
            Request::SessionAttach(_) | Request::SessionInput(..) => return None,
            Request::SessionResize(resize) => draft("session.resize")
                .target(resize.run.to_string())
                .detail(format!("{}x{}", resize.cols, resize.rows)),
        })
    }
}

/// A command as one line for the log: the argv joined, the shell string,
/// or the action's name.
fn command_line(command: &CommandSpec) -> String {
    match command {
        CommandSpec::Argv(argv) => argv.join(" "),
        CommandSpec::Shell(script) => format!("sh -c {script}"),
        CommandSpec::Action(call) => format!("action {}", call.name),
    }
}

/// `text` cut to `max` characters, marked with `…` where cut.
fn cut(text: String, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

impl Engine {
    /// Appends an entry to the audit log: stored with the current batch,
    /// published on `audit` after it commits.
    pub(super) fn audit(&mut self, draft: AuditDraft, now: UnixMillis) {
        let entry = AuditEntry {
            seq: self.next_audit_seq,
            at_ms: now,
            actor: cut(draft.actor, MAX_DETAIL_CHARS),
            source: draft.source.map(|ip| ip.to_string()),
            action: draft.action,
            target: draft.target.map(|t| cut(t, MAX_DETAIL_CHARS)),
            outcome: draft.outcome,
            detail: draft.detail.map(|d| cut(d, MAX_DETAIL_CHARS)),
        };
        self.next_audit_seq = self.next_audit_seq.saturating_add(1);
        self.batch
            .change(Change::AppendAudit(Box::new(entry.clone())));
        self.batch
            .event(Channel::Audit, HubToClient::AuditEntry(entry));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_are_cut_on_a_character_boundary() {
        assert_eq!(cut("abc".into(), 3), "abc");
        assert_eq!(cut("abcd".into(), 3), "abc…");
        assert_eq!(cut("ééé".into(), 2), "éé…");
    }
}
