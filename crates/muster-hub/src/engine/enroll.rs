//! Enrollment tokens: minting, listing and revoking them, and an agent
//! registering itself with one.
//!
//! An agent that says `hello` with an enrollment token is registered under
//! its name (its host name when it gives none) with the token's labels, and
//! the token loses one use, in the same batch. Its own token goes back to it
//! only once that batch is committed; a refusal (a token that is unknown,
//! expired or used up, a name that is taken or invalid) changes nothing and
//! is answered at once.

use std::net::IpAddr;

use muster_proto::enroll::{
    DEFAULT_ENROLL_EXPIRES_MS, DEFAULT_ENROLL_USES, EnrollCreate, EnrollCreated, EnrollList,
    EnrollRef, EnrollmentInfo, MAX_ENROLL_EXPIRES_MS, MAX_ENROLL_USES,
};
use muster_proto::messages::{AgentAdd, AgentHello};
use muster_proto::{AgentName, ErrorCode, HubToClient, RequestId, UnixMillis};
use tokio::sync::oneshot;

use super::Engine;
use super::audit::AuditDraft;
use super::batch::{Effect, Reply, ReplyTo};
use super::error::ApiError;
use crate::auth::{self, Secret};
use crate::store::{Change, EnrollmentRecord};
use crate::validate;

/// Most enrollment tokens the hub keeps, used up and expired ones included:
/// they are kept, in memory too, until revoked.
pub(crate) const MAX_ENROLLMENTS: usize = 10_000;

/// An agent registered through an enrollment token.
#[derive(Debug)]
pub struct Enrolled {
    /// The name it was registered under.
    pub name: AgentName,
    /// The public id of the enrollment token it used, for the log.
    pub enrollment: String,
    /// Its own token, to send it once.
    pub token: Secret,
}

/// An enrollment as listed.
fn info(record: &EnrollmentRecord) -> EnrollmentInfo {
    EnrollmentInfo {
        id: record.token_id.clone(),
        labels: record.labels.clone(),
        uses_left: record.uses_left,
        expires_ms: record.expires_ms,
        created_ms: record.created_ms,
        created_by: record.created_by.clone(),
    }
}

/// How many uses and how long a new enrollment gets, defaults applied;
/// either out of range is refused.
fn uses_and_lifetime(create: &EnrollCreate) -> Result<(u32, u64), ApiError> {
    let uses = create.uses.unwrap_or(DEFAULT_ENROLL_USES);
    if !(1..=MAX_ENROLL_USES).contains(&uses) {
        return Err(ApiError::new(
            ErrorCode::InvalidMessage,
            format!("uses must be between 1 and {MAX_ENROLL_USES}"),
        ));
    }
    let lifetime = create.expires_in_ms.unwrap_or(DEFAULT_ENROLL_EXPIRES_MS);
    if !(1..=MAX_ENROLL_EXPIRES_MS).contains(&lifetime) {
        return Err(ApiError::new(
            ErrorCode::InvalidMessage,
            "expires_in_ms must be between 1 ms and 365 days",
        ));
    }
    Ok((uses, lifetime))
}

/// The name an enrolling agent is registered under: the one it gives, else
/// its host name.
fn enrollee_name(hello: &AgentHello) -> Result<AgentName, ApiError> {
    if let Some(name) = &hello.name {
        return Ok(name.clone());
    }
    AgentName::new(&hello.hostname).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidMessage,
            format!(
                "the host name {:?} is not a valid agent name ({e}); give the agent a name",
                hello.hostname
            ),
        )
    })
}

impl Engine {
    /// `enroll.create`: mints an enrollment token; the answer, the only one
    /// that shows the token, follows the commit.
    pub(super) fn create_enrollment(
        &mut self,
        created_by: &str,
        to: &ReplyTo,
        re: Option<RequestId>,
        create: EnrollCreate,
        now: UnixMillis,
    ) {
        match self.new_enrollment(created_by, create, now) {
            Ok((record, token)) => {
                let msg = HubToClient::EnrollCreated(EnrollCreated {
                    enrollment: info(&record),
                    token: token.expose().to_owned(),
                });
                self.batch.reply(to, Reply::to(re, msg));
            }
            Err(e) => self.reply_error(to, re, e, None),
        }
    }

    /// Checks a new enrollment, mints its token and records it in the batch.
    fn new_enrollment(
        &mut self,
        created_by: &str,
        create: EnrollCreate,
        now: UnixMillis,
    ) -> Result<(EnrollmentRecord, Secret), ApiError> {
        validate::labels(&create.labels)?;
        let (uses, lifetime) = uses_and_lifetime(&create)?;
        if self.registry.enrollments().count() >= MAX_ENROLLMENTS {
            return Err(ApiError::new(
                ErrorCode::InvalidState,
                format!(
                    "the hub holds {MAX_ENROLLMENTS} enrollment tokens, the most it keeps; revoke some first"
                ),
            ));
        }
        let minted = auth::mint_with(auth::ENROLLMENT_TOKEN_PREFIX);
        let record = EnrollmentRecord {
            token_id: minted.key_id,
            secret_hash: minted.secret_hash,
            labels: create.labels,
            uses_left: uses,
            expires_ms: now.saturating_add(lifetime),
            created_ms: now,
            created_by: created_by.to_owned(),
        };
        self.batch
            .change(Change::InsertEnrollment(Box::new(record.clone())));
        self.registry.insert_enrollment(record.clone());
        Ok((record, minted.token))
    }

    /// `enroll.list`: every enrollment token, oldest first, never a secret.
    pub(super) fn list_enrollments(&mut self, to: &ReplyTo, re: Option<RequestId>) {
        let mut enrollments: Vec<_> = self.registry.enrollments().map(info).collect();
        enrollments.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
        let msg = HubToClient::EnrollList(EnrollList { enrollments });
        self.batch.reply(to, Reply::to(re, msg));
    }

    /// `enroll.revoke`: the token stops working at once; the answer follows
    /// the commit. Agents it enrolled keep their own tokens.
    pub(super) fn revoke_enrollment(&mut self, to: &ReplyTo, re: Option<RequestId>, id: String) {
        if !self.registry.remove_enrollment(&id) {
            let error = ApiError::new(
                ErrorCode::EnrollmentNotFound,
                format!("no enrollment token with id {id:?}"),
            );
            return self.reply_error(to, re, error, None);
        }
        self.batch.change(Change::DeleteEnrollment(id.clone()));
        let msg = HubToClient::EnrollRevoked(EnrollRef { id });
        self.batch.reply(to, Reply::to(re, msg));
    }

    /// An agent's `hello` with an enrollment token: registers it and counts
    /// the use, answering after the commit, or refuses it at once.
    pub(super) fn enroll(
        &mut self,
        hello: AgentHello,
        source: Option<IpAddr>,
        reply: oneshot::Sender<Result<Enrolled, ApiError>>,
        now: UnixMillis,
    ) {
        match self.register_enrollee(&hello, now) {
            Ok(enrolled) => {
                let name = enrolled.name.as_str();
                let draft = AuditDraft::new(name, source, "enroll")
                    .target(name)
                    .detail(format!("enrollment {}", enrolled.enrollment));
                self.audit(draft, now);
                self.batch.effect(Effect::Notify(Box::new(move || {
                    let _ = reply.send(Ok(enrolled));
                })));
            }
            Err(e) => {
                let draft = AuditDraft::new("-", source, "enroll")
                    .outcome(e.code.as_str())
                    .detail(e.message.clone());
                self.audit(draft, now);
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Checks the token and the name, registers the agent and counts one
    /// use; nothing changes unless all of it succeeds.
    fn register_enrollee(
        &mut self,
        hello: &AgentHello,
        now: UnixMillis,
    ) -> Result<Enrolled, ApiError> {
        let enrollment = self.registry.check_enrollment(&hello.token, now)?;
        let (token_id, labels) = (enrollment.token_id.clone(), enrollment.labels.clone());
        let name = enrollee_name(hello)?;
        let add = AgentAdd {
            name: name.clone(),
            labels,
        };
        let (_, token) = self.register_agent(add, now)?;
        let uses_left = self.registry.use_enrollment(&token_id);
        self.batch.change(Change::SetEnrollmentUses {
            token_id: token_id.clone(),
            uses_left,
        });
        Ok(Enrolled {
            name,
            enrollment: token_id,
            token,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use muster_proto::messages::AgentHello;

    use super::*;
    use crate::config::HubConfig;
    use crate::engine::{Batch, Input};
    use crate::store::Snapshot;

    const NOW: UnixMillis = 1_000_000;

    /// An engine holding one enrollment token with `uses`, and the token.
    fn engine_with_enrollment(uses: u32) -> (Engine, String) {
        let minted = auth::mint_with(auth::ENROLLMENT_TOKEN_PREFIX);
        let record = EnrollmentRecord {
            token_id: minted.key_id,
            secret_hash: minted.secret_hash,
            labels: [("env".to_owned(), "staging".to_owned())].into(),
            uses_left: uses,
            expires_ms: NOW + 60_000,
            created_ms: NOW,
            created_by: "admin".into(),
        };
        let snapshot = Snapshot {
            enrollments: vec![record],
            ..Snapshot::default()
        };
        let engine = Engine::new(Arc::new(HubConfig::default()), "hub".into(), snapshot, NOW);
        (engine, minted.token.expose().to_owned())
    }

    fn hello(token: &str, name: &str) -> AgentHello {
        AgentHello {
            token: token.to_owned(),
            name: Some(AgentName::new(name).unwrap()),
            hostname: "host".into(),
            os: String::new(),
            arch: String::new(),
            version: String::new(),
            labels: Default::default(),
            capabilities: Vec::new(),
            exec: Default::default(),
            actions: Vec::new(),
            max_concurrency: 1,
            runs: Vec::new(),
        }
    }

    /// Sends a `hello` with `token` as `name` at `now`; returns the answer,
    /// which comes only once the batch's effects are carried out, and the
    /// batch.
    fn enroll(
        engine: &mut Engine,
        token: &str,
        name: &str,
        now: UnixMillis,
    ) -> (Result<Enrolled, ApiError>, Batch) {
        let (reply, mut answer) = oneshot::channel();
        let hello = Box::new(hello(token, name));
        let source = None;
        engine.handle(
            Input::Enroll {
                hello,
                source,
                reply,
            },
            now,
        );
        let batch = engine.take_batch(now);
        let early = answer.try_recv();
        let mut effects = Vec::new();
        for effect in batch.effects {
            match effect {
                Effect::Notify(notify) => notify(),
                other => effects.push(other),
            }
        }
        let result = match early {
            Ok(refused) => {
                assert!(refused.is_err(), "a success answered before the commit");
                refused
            }
            Err(_) => answer.try_recv().expect("an answer after the commit"),
        };
        let batch = Batch { effects, ..batch };
        (result, batch)
    }

    fn uses_set(batch: &Batch) -> Vec<u32> {
        batch
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::SetEnrollmentUses { uses_left, .. } => Some(*uses_left),
                _ => None,
            })
            .collect()
    }

    fn code(result: &Result<Enrolled, ApiError>) -> Option<ErrorCode> {
        result.as_ref().err().map(|e| e.code)
    }

    #[test]
    fn each_enrollment_counts_one_use_and_a_taken_name_counts_none() {
        let (mut engine, token) = engine_with_enrollment(2);
        let (first, batch) = enroll(&mut engine, &token, "web-1", NOW);
        let first = first.unwrap();
        assert_eq!(first.name.as_str(), "web-1");
        assert!(
            auth::parse(first.token.expose()).is_some(),
            "an agent token"
        );
        assert_eq!(uses_set(&batch), [1]);
        let labels = &engine.registry.get(&first.name).unwrap().labels;
        assert_eq!(labels.get("env").map(String::as_str), Some("staging"));

        let (taken, batch) = enroll(&mut engine, &token, "web-1", NOW);
        assert_eq!(code(&taken), Some(ErrorCode::Conflict));
        // Only the refusal's audit entry is written.
        assert!(
            batch
                .changes
                .iter()
                .all(|c| matches!(c, Change::AppendAudit(e) if e.outcome == "CONFLICT")),
            "{:?}",
            batch.changes
        );

        let (second, batch) = enroll(&mut engine, &token, "web-2", NOW);
        assert!(second.is_ok());
        assert_eq!(uses_set(&batch), [0]);
        let (used_up, _) = enroll(&mut engine, &token, "web-3", NOW);
        assert_eq!(code(&used_up), Some(ErrorCode::AuthFailed));
        assert!(!engine.registry.contains(&AgentName::new("web-3").unwrap()));
    }

    #[test]
    fn wrong_expired_and_revoked_tokens_are_refused() {
        let (mut engine, token) = engine_with_enrollment(5);
        let wrong = format!("{}x", &token[..token.len() - 1]);
        assert_eq!(
            code(&enroll(&mut engine, &wrong, "a", NOW).0),
            Some(ErrorCode::AuthFailed)
        );
        let api_key = auth::mint();
        assert_eq!(
            code(&enroll(&mut engine, api_key.token.expose(), "a", NOW).0),
            Some(ErrorCode::AuthFailed)
        );
        assert_eq!(
            code(&enroll(&mut engine, &token, "a", NOW + 60_000).0),
            Some(ErrorCode::AuthFailed)
        );
        let (id, _) = auth::parse_with(auth::ENROLLMENT_TOKEN_PREFIX, &token).unwrap();
        assert!(engine.registry.remove_enrollment(id));
        assert_eq!(
            code(&enroll(&mut engine, &token, "a", NOW).0),
            Some(ErrorCode::AuthFailed)
        );
    }

    #[test]
    fn a_reserved_name_or_a_host_name_that_is_no_name_is_invalid() {
        let (mut engine, token) = engine_with_enrollment(5);
        assert_eq!(
            code(&enroll(&mut engine, &token, "all", NOW).0),
            Some(ErrorCode::InvalidMessage)
        );
        let mut nameless = hello(&token, "x");
        nameless.name = None;
        nameless.hostname = "not a name!".into();
        assert_eq!(
            enrollee_name(&nameless).unwrap_err().code,
            ErrorCode::InvalidMessage
        );
        nameless.hostname = "host-1".into();
        assert_eq!(enrollee_name(&nameless).unwrap().as_str(), "host-1");
    }
}
