//! A client session: decodes requests and routes each one. Requests that
//! change state or need the engine's memory go to the engine and are
//! answered on the connection's queue, so a client can pipeline them;
//! listings of history are read from the store on a task of their own;
//! `subscribe` runs here, in order, because it replays history onto this
//! connection.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use muster_proto::messages::{
    ErrorData, JobCreate, Principal, RunCreate, StreamSynced, Subscribe, Subscribed,
};
use muster_proto::sessions::{MAX_SESSION_INPUT_BYTES, SessionAttach};
use muster_proto::{
    AgentName, Channel, ClientToHub, Envelope, ErrorCode, HubToClient, JobId, RequestId, Role,
    RunId, Selector,
};

use super::Guards;
use super::conn::Writer;
use crate::broker::{Delivery, Subscriber};
use crate::delivery::{History, ReplayError, SinkClosed, Subscriptions};
use crate::engine::scope::View;
use crate::engine::{ApiError, Input, Reply, Request};
use crate::outbound::Outbound;
use crate::queue::Skipped;
use crate::rate::{ConnectionLimit, RateLimits};
use crate::reads::{self, Read};
use crate::runtime::EngineHandle;

/// The state of one authenticated client connection.
pub(crate) struct Session {
    principal: Arc<Principal>,
    /// Where the connection comes from, for the audit log.
    source: IpAddr,
    /// For a scoped key: the agents it was shown on `fleet`, boxed, as
    /// every idle client carries this field.
    fleet: Option<Box<ScopedFleet>>,
    /// This connection's message rate, if limited; boxed, as every idle
    /// client carries this field.
    limit: Option<Box<ConnectionLimit>>,
    /// The sessions this connection attached to, boxed, as every idle
    /// client carries this field and few attach.
    attached: Option<Box<Attachments>>,
    engine: EngineHandle,
    history: History,
    /// This connection's queue, where answers come back.
    queue: Subscriber,
    subs: Subscriptions,
}

/// Sessions one connection may be attached to at once.
const MAX_ATTACHED: usize = 64;

/// The sessions one connection attached to.
#[derive(Default)]
struct Attachments(Vec<Attachment>);

/// A session this connection attached to.
struct Attachment {
    run: RunId,
    /// Its writer id, when it attached as a writer.
    writer: Option<String>,
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        principal: Arc<Principal>,
        view: Option<View>,
        source: IpAddr,
        limits: &RateLimits,
        engine: EngineHandle,
        history: History,
        queue: Subscriber,
        subs: Subscriptions,
    ) -> Self {
        let fleet = principal.scope.clone().map(|scope| {
            let shown = view.iter().flat_map(|v| v.iter().cloned()).collect();
            Box::new(ScopedFleet {
                scope: *scope,
                shown,
            })
        });
        Self {
            limit: limits.connection().map(Box::new),
            principal,
            source,
            fleet,
            attached: None,
            engine,
            history,
            queue,
            subs,
        }
    }

    /// The writer id this connection attached to session `run` with: an
    /// `error` if it did not attach (`INVALID_STATE`) or attached
    /// read-only (`FORBIDDEN`).
    fn writer_of(&self, run: RunId) -> Result<&str, ErrorData> {
        let attachment = self
            .attached
            .as_deref()
            .and_then(|a| a.0.iter().find(|a| a.run == run));
        match attachment {
            Some(Attachment {
                writer: Some(writer),
                ..
            }) => Ok(writer),
            Some(_) => Err(ErrorData::new(
                ErrorCode::Forbidden,
                format!("this connection attached to session {run} read-only; it cannot type"),
            )),
            None => Err(ErrorData::new(
                ErrorCode::InvalidState,
                format!(
                    "this connection is not attached to session {run}; send session.attach with write: true first"
                ),
            )),
        }
    }

    /// Records an attachment (replacing one to the same session); refused
    /// past [`MAX_ATTACHED`].
    fn attach(&mut self, attach: &SessionAttach) -> Result<(), ErrorData> {
        let attached = &mut self.attached.get_or_insert_with(Box::default).0;
        attached.retain(|a| a.run != attach.run);
        if attached.len() >= MAX_ATTACHED {
            return Err(ErrorData::new(
                ErrorCode::InvalidState,
                format!(
                    "this connection is attached to {MAX_ATTACHED} sessions, the most it may; detach from one first"
                ),
            ));
        }
        attached.push(Attachment {
            run: attach.run,
            writer: attach.write.then(|| attach.writer.clone()).flatten(),
        });
        Ok(())
    }

    /// Forgets the attachment to `run`; whether it was a writer's.
    fn detach(&mut self, run: RunId) -> bool {
        let Some(Attachments(attached)) = self.attached.as_deref_mut() else {
            return false;
        };
        let was_writer = attached.iter().any(|a| a.run == run && a.writer.is_some());
        attached.retain(|a| a.run != run);
        if attached.is_empty() {
            self.attached = None;
        }
        was_writer
    }

    /// The connection ended: every session it was attached to hears it left.
    pub(crate) async fn detach_all(&mut self) {
        let Some(attached) = self.attached.take() else {
            return;
        };
        for attachment in attached.0 {
            let request = Request::SessionDetach(attachment.run, attachment.writer.is_some());
            let input = Input::Request {
                principal: self.principal.clone(),
                source: Some(self.source),
                to: self.queue.clone(),
                re: None,
                request: Box::new(request),
            };
            if !self.engine.send(input).await {
                return;
            }
        }
    }

    /// Decodes and routes one text frame. `Err` means the socket is gone.
    pub(crate) async fn handle_text(
        &mut self,
        writer: &mut Writer,
        text: &str,
        guards: &Guards,
    ) -> Result<(), SinkClosed> {
        let limits = &guards.limits;
        let env = match Envelope::<ClientToHub>::decode(text) {
            Ok(env) => env,
            Err(e) => {
                let error = ErrorData::new(e.code(), e.to_string());
                return send_error(writer, e.request_id(), error).await;
            }
        };
        let re = env.id;
        if let Some(Err(wait)) = self.limit.as_deref().map(ConnectionLimit::check) {
            let why = "this connection sends messages faster than the hub's limit (rate_messages_per_sec); slow down";
            self.refused(guards, env.msg.kind(), ErrorCode::RateLimit, why);
            let error = ErrorData::rate_limited(why, wait);
            return send_error(writer, re, error).await;
        }
        // The one place a request's role is checked (`muster_proto::roles`).
        // An unknown role may send no request.
        let role = self
            .principal
            .role
            .as_deref()
            .and_then(|r| r.parse::<Role>().ok());
        if let Some(need) = muster_proto::required_role(&env.msg)
            && !role.is_some_and(|role| role.allows(need))
        {
            let have = role.map_or("no role", Role::as_str);
            let why = format!("this needs an {need} key or higher; this key is {have}");
            self.refused(guards, env.msg.kind(), ErrorCode::Forbidden, &why);
            let error = ErrorData::new(ErrorCode::Forbidden, why);
            return send_error(writer, re, error).await;
        }
        let request = match env.msg {
            ClientToHub::Heartbeat(beat) => {
                let ack = Envelope::reply(re, HubToClient::HeartbeatAck(beat));
                return writer.send(&ack).await.map_err(|_| SinkClosed);
            }
            ClientToHub::HeartbeatAck(_) => return Ok(()),
            ClientToHub::SessionAttach(attach) => {
                if let Err(error) = self.attach(&attach) {
                    return send_error(writer, re, error).await;
                }
                Request::SessionAttach(attach)
            }
            ClientToHub::SessionDetach(r) => {
                let was_writer = self.detach(r.run);
                Request::SessionDetach(r.run, was_writer)
            }
            ClientToHub::SessionInput(input) => {
                if input.data.len() > MAX_SESSION_INPUT_BYTES {
                    let error = ErrorData::new(
                        ErrorCode::InvalidMessage,
                        format!(
                            "session.input data is at most {MAX_SESSION_INPUT_BYTES} bytes; split it"
                        ),
                    );
                    return send_error(writer, re, error).await;
                }
                match self.writer_of(input.run) {
                    Ok(writer_id) => Request::SessionInput(writer_id.to_owned(), input),
                    Err(error) => return send_error(writer, re, error).await,
                }
            }
            ClientToHub::SessionResize(resize) => {
                if let Err(error) = self.writer_of(resize.run) {
                    return send_error(writer, re, error).await;
                }
                Request::SessionResize(resize)
            }
            ClientToHub::SessionSnapshot(r) => Request::SessionSnapshot(r.run),
            ClientToHub::Hello(_) => {
                let error = ErrorData::new(ErrorCode::InvalidMessage, "already authenticated");
                return send_error(writer, re, error).await;
            }
            ClientToHub::Subscribe(subscribe) => {
                return self
                    .subscribe(writer, re, subscribe, guards.max_subscriptions)
                    .await;
            }
            ClientToHub::Unsubscribe(c) => {
                if let Ok(channel) = c.channel.parse::<Channel>() {
                    self.subs.unsubscribe(&channel);
                }
                let ok = Envelope::reply(re, HubToClient::Ok(Default::default()));
                return writer.send(&ok).await.map_err(|_| SinkClosed);
            }
            // A scoped key's listings are confined by the engine, which
            // knows which agents it sees.
            ClientToHub::RunList(query) if self.fleet.is_some() => {
                Request::Read(Read::RunList(query))
            }
            ClientToHub::JobList(query) if self.fleet.is_some() => {
                Request::Read(Read::JobList(query))
            }
            ClientToHub::RunList(query) => return self.read(re, Read::RunList(query), guards),
            ClientToHub::JobList(query) => return self.read(re, Read::JobList(query), guards),
            ClientToHub::AuditList(query) => {
                return self.read(re, Read::AuditList(query), guards);
            }
            ClientToHub::KeyRotate(rotate) => Request::KeyRotate(rotate),
            ClientToHub::AgentList(query) => Request::AgentList(query),
            ClientToHub::AgentGet(r) => Request::AgentGet(r.name),
            ClientToHub::AgentAdd(add) => Request::AgentAdd(add),
            ClientToHub::AgentRemove(r) => Request::AgentRemove(r.name),
            ClientToHub::AgentLabel(edit) => Request::AgentLabel(edit),
            ClientToHub::MetricsQuery(query) => Request::MetricsQuery(query),
            ClientToHub::RunGet(r) => Request::RunGet(r.run),
            ClientToHub::RunCancel(r) => Request::RunCancel(r.run),
            ClientToHub::JobGet(r) => Request::JobGet(r.job),
            ClientToHub::JobTargets(query) => Request::JobTargets(query),
            ClientToHub::JobCancel(r) => Request::JobCancel(r.job),
            ClientToHub::KeyCreate(create) => Request::KeyCreate(create),
            ClientToHub::KeyList(_) => Request::KeyList,
            ClientToHub::KeyRevoke(r) => Request::KeyRevoke(r.name),
            ClientToHub::AgentRotateToken(r) => Request::AgentRotateToken(r.name),
            ClientToHub::EnrollCreate(create) => Request::EnrollCreate(create),
            ClientToHub::EnrollList(_) => Request::EnrollList,
            ClientToHub::EnrollRevoke(r) => Request::EnrollRevoke(r.id),
            ClientToHub::RunCreate(_) | ClientToHub::JobCreate(_)
                if let Err(wait) = limits.command(&self.principal.name) =>
            {
                let why = format!(
                    "this key sends commands faster than the hub's limit (rate_commands_per_min); retry in {:.1}s",
                    wait.as_secs_f64()
                );
                self.refused(guards, env.msg.kind(), ErrorCode::RateLimit, &why);
                let error = ErrorData::rate_limited(why, wait);
                return send_error(writer, re, error).await;
            }
            ClientToHub::RunCreate(RunCreate {
                subscribe: true, ..
            })
            | ClientToHub::JobCreate(JobCreate {
                subscribe: true, ..
            }) if let Err(error) = self.room_for(None, guards.max_subscriptions) => {
                return send_error(writer, re, error).await;
            }
            ClientToHub::RunCreate(create) => {
                let id = RunId::generate();
                if create.subscribe {
                    // Before the run exists, so none of its events is missed.
                    self.subs.subscribe_live(&Channel::Run(id));
                }
                Request::RunCreate(id, create)
            }
            ClientToHub::JobCreate(create) => {
                let id = JobId::generate();
                if create.subscribe {
                    self.subs.subscribe_live(&Channel::Job(id));
                }
                Request::JobCreate(id, create)
            }
        };
        self.hand_to_engine(writer, re, request).await
    }

    /// This connection's queue, where answers and published frames wait.
    pub(crate) fn queue(&self) -> &Subscriber {
        &self.queue
    }

    /// Records a refusal made here in the audit log.
    fn refused(&self, guards: &Guards, action: &'static str, code: ErrorCode, why: &str) {
        let engine = &self.engine;
        guards.audit_refusal(engine, &self.principal.name, self.source, action, code, why);
    }

    /// Whether the connection may hold one more subscription (to `channel`,
    /// which it may hold already), under `max`.
    fn room_for(&self, channel: Option<&Channel>, max: usize) -> Result<(), ErrorData> {
        if self.subs.len() < max || channel.is_some_and(|c| self.subs.is_subscribed(c)) {
            return Ok(());
        }
        Err(ErrorData::new(
            ErrorCode::InvalidState,
            format!(
                "this connection holds {max} subscriptions, the most it may (max_subscriptions_per_connection); unsubscribe from one first"
            ),
        ))
    }

    /// Hands a request to the engine, unless the store cannot take what it
    /// would change.
    async fn hand_to_engine(
        &mut self,
        writer: &mut Writer,
        re: Option<RequestId>,
        request: Request,
    ) -> Result<(), SinkClosed> {
        if needs_store(&request) && !self.engine.health().writable() {
            if let Request::RunCreate(id, _) = &request {
                self.subs.unsubscribe(&Channel::Run(*id));
            }
            if let Request::JobCreate(id, _) = &request {
                self.subs.unsubscribe(&Channel::Job(*id));
            }
            let error = ErrorData::new(
                ErrorCode::StorageUnavailable,
                "the hub cannot write to its store right now; nothing was done, retry later",
            );
            return send_error(writer, re, error).await;
        }
        let input = Input::Request {
            principal: self.principal.clone(),
            source: Some(self.source),
            to: self.queue.clone(),
            re: re.clone(),
            request: Box::new(request),
        };
        if !self.engine.send(input).await {
            let error = ErrorData::new(ErrorCode::Internal, "the hub is shutting down");
            return send_error(writer, re, error).await;
        }
        Ok(())
    }

    /// Answers from the store on a task of its own.
    fn read(&self, re: Option<RequestId>, read: Read, guards: &Guards) -> Result<(), SinkClosed> {
        let (store, queue, page_bytes) = (
            self.history.store().clone(),
            self.queue.clone(),
            guards.page_bytes,
        );
        tokio::spawn(async move {
            let msg = reads::answer(&store, read, page_bytes).await;
            queue.send(Outbound::Reply(Box::new(Reply::to(re, msg))));
        });
        Ok(())
    }

    /// Passes one item of the connection's queue on to the socket, with what
    /// its channel missed while the queue was full.
    pub(crate) async fn forward(
        &mut self,
        writer: &mut Writer,
        item: Outbound,
        skipped: Option<Skipped>,
    ) -> Result<(), SinkClosed> {
        match item {
            Outbound::Delivery(delivery)
                if self
                    .fleet
                    .as_deref_mut()
                    .is_some_and(|fleet| !fleet.shows(&delivery)) =>
            {
                Ok(())
            }
            Outbound::Delivery(delivery) => {
                self.subs
                    .deliver(writer, &self.history, delivery, skipped)
                    .await
            }
            Outbound::Reply(reply) => {
                let Reply {
                    re,
                    msg,
                    subscribe,
                    unsubscribe,
                } = *reply;
                if let Some(channel) = unsubscribe {
                    self.subs.unsubscribe(&channel);
                }
                if let Some(channel) = subscribe {
                    self.subs.subscribe_live(&channel);
                }
                let text = Envelope::reply(re, msg).encode();
                writer.feed_text(text).await.map_err(|_| SinkClosed)
            }
            Outbound::Agent(_) => Ok(()),
        }
    }

    /// Sends what a channel missed while the queue was full, once the
    /// queue is empty.
    pub(crate) async fn fill_skipped(
        &mut self,
        writer: &mut Writer,
        channel: &str,
        skipped: Skipped,
    ) -> Result<(), SinkClosed> {
        self.subs
            .catch_up(writer, &self.history, channel, skipped)
            .await
    }

    /// Subscribes, answers `subscribed`, and replays from `since` up to
    /// `stream.synced`. A run's or job's stream is paused while it replays
    /// and caught up after (see `delivery`); anything else is live first.
    async fn subscribe(
        &mut self,
        writer: &mut Writer,
        re: Option<RequestId>,
        req: Subscribe,
        max_subscriptions: usize,
    ) -> Result<(), SinkClosed> {
        let channel = match req.channel.parse::<Channel>() {
            Ok(channel) => channel,
            Err(e) => {
                let error = ErrorData::new(ErrorCode::UnknownChannel, e.to_string());
                return send_error(writer, re, error).await;
            }
        };
        if let Err(error) = self.room_for(Some(&channel), max_subscriptions) {
            return send_error(writer, re, error).await;
        }
        let since = req.since.filter(|_| channel.has_stream());
        let pause = since.is_some() && matches!(channel, Channel::Run(_) | Channel::Job(_));
        let was_subscribed = self.subs.is_subscribed(&channel);
        match pause {
            true => self.subs.subscribe_paused(&channel),
            false => self.subs.subscribe_live(&channel),
        }
        let checked = match self.check(&channel).await {
            Ok(checked) => checked,
            Err(e) => {
                match was_subscribed {
                    true => self.subs.resume(&channel),
                    false => _ = self.subs.unsubscribe(&channel),
                }
                return send_error(writer, re, e.to_data()).await;
            }
        };
        let subscribed = Subscribed {
            channel: req.channel.clone(),
            run: checked.run.clone(),
            next_seq: checked.next_seq,
        };
        let reply = Envelope::reply(re, HubToClient::Subscribed(subscribed));
        writer.send(&reply).await.map_err(|_| SinkClosed)?;
        let mut ended = checked.ended;
        if let Some(since) = since {
            let Some(next_seq) = self.replay(writer, &channel, since).await? else {
                return Ok(());
            };
            let (next_seq, truncated, now_ended) = match pause {
                true => match self.catch_up(writer, &channel, &checked, next_seq).await? {
                    Some(caught) => caught,
                    None => return Ok(()),
                },
                false => (next_seq, checked.truncated, false),
            };
            ended |= now_ended;
            self.synced(writer, &channel, next_seq, truncated).await?;
        }
        if ended {
            // Nothing will be published on an ended run's or job's channel any more.
            self.subs.unsubscribe(&channel);
        }
        Ok(())
    }

    /// Replays from `since`; `None` if the store failed (the client was told).
    async fn replay(
        &mut self,
        writer: &mut Writer,
        channel: &Channel,
        since: u64,
    ) -> Result<Option<u64>, SinkClosed> {
        match self
            .subs
            .replay(writer, &self.history, channel, since)
            .await
        {
            Ok(next_seq) => Ok(Some(next_seq)),
            Err(ReplayError::Closed) => Err(SinkClosed),
            Err(ReplayError::Store(e)) => {
                self.subs.unsubscribe(channel);
                let error = ApiError::from(e).to_data();
                send_error(writer, None, error).await.map(|()| None)
            }
        }
    }

    async fn synced(
        &mut self,
        writer: &mut Writer,
        channel: &Channel,
        next_seq: u64,
        truncated: bool,
    ) -> Result<(), SinkClosed> {
        let synced = StreamSynced {
            channel: channel.to_string(),
            next_seq,
            truncated,
        };
        let msg = Envelope::event(channel.to_string(), HubToClient::StreamSynced(synced));
        writer.send(&msg).await.map_err(|_| SinkClosed)
    }

    /// After a paused replay: resumes the live subscription and replays
    /// once more what was stored meanwhile. If the run or job ended by then,
    /// everything it will ever have is stored: it is replayed to the end, and
    /// a run's final state is sent as `run.status` (its status events were
    /// skipped while paused). Returns the next seq, whether the output was
    /// truncated, and whether the stream ended; `None` if the store failed.
    async fn catch_up(
        &mut self,
        writer: &mut Writer,
        channel: &Channel,
        before: &Checked,
        next_seq: u64,
    ) -> Result<Option<(u64, bool, bool)>, SinkClosed> {
        self.subs.resume(channel);
        let Some(mut next_seq) = self.replay(writer, channel, next_seq).await? else {
            return Ok(None);
        };
        let Ok(now) = self.check(channel).await else {
            return Ok(Some((next_seq, before.truncated, false)));
        };
        if now.ended {
            let Some(last) = self.replay(writer, channel, next_seq).await? else {
                return Ok(None);
            };
            next_seq = last;
        }
        if let (Some(run), Some(was)) = (&now.run, &before.run)
            && (run.state != was.state || run.output_truncated != was.output_truncated)
        {
            let status =
                HubToClient::RunStatus(muster_proto::messages::RunEnvelope { run: run.clone() });
            let msg = Envelope::event(channel.to_string(), status);
            writer.send(&msg).await.map_err(|_| SinkClosed)?;
        }
        Ok(Some((next_seq, now.truncated, now.ended)))
    }

    /// Whether `channel` exists, and what its answer carries.
    async fn check(&self, channel: &Channel) -> Result<Checked, ApiError> {
        let unknown = || {
            ApiError::new(
                ErrorCode::UnknownChannel,
                format!("no channel {:?}", channel.to_string()),
            )
        };
        let store = self.history.store();
        Ok(match channel {
            Channel::Fleet | Channel::Audit | Channel::All => Checked::default(),
            Channel::Session(id) => {
                let run = store
                    .run(*id)
                    .await?
                    .filter(|run| run.session.is_some())
                    .ok_or_else(unknown)?;
                if let Some(view) = self.view().await
                    && view.binary_search(&run.agent).is_err()
                {
                    return Err(self.out_of_scope(&format!("session {id}")));
                }
                Checked::default()
            }
            Channel::Agent(name) | Channel::Metrics(name) => {
                let name = name.clone();
                let next = self
                    .ask_engine(|reply| Request::AgentChannel(name, reply))
                    .await
                    .ok_or_else(unknown)??;
                Checked {
                    next_seq: matches!(channel, Channel::Agent(_)).then_some(next),
                    ..Checked::default()
                }
            }
            Channel::Run(id) => {
                let run = store.run(*id).await?.ok_or_else(unknown)?;
                if let Some(view) = self.view().await
                    && view.binary_search(&run.agent).is_err()
                {
                    return Err(self.out_of_scope(&format!("run {id}")));
                }
                Checked {
                    ended: run.state.is_terminal(),
                    truncated: run.output_truncated,
                    run: Some(run),
                    next_seq: None,
                }
            }
            Channel::Job(id) => {
                let job = store.job(*id).await?.ok_or_else(unknown)?;
                if let Some(view) = self.view().await
                    && !reads::job_in_view(store, *id, &view).await?
                {
                    return Err(self.out_of_scope(&format!("job {id}")));
                }
                Checked {
                    ended: job.state.is_terminal(),
                    ..Checked::default()
                }
            }
        })
    }
}

impl Session {
    /// The agents a scoped key sees now; `None` without a scope. When the
    /// engine cannot say (it is shutting down), a scoped key sees none.
    async fn view(&self) -> Option<View> {
        self.fleet.as_ref()?;
        let asked = self.ask_engine(Request::View).await;
        Some(asked.flatten().unwrap_or_default())
    }

    /// Asks the engine a question as this connection's principal; `None`
    /// if the engine is gone.
    async fn ask_engine<T>(
        &self,
        request: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> Request,
    ) -> Option<T> {
        self.engine
            .ask(|reply| Input::Request {
                principal: self.principal.clone(),
                source: Some(self.source),
                to: self.queue.clone(),
                re: None,
                request: Box::new(request(reply)),
            })
            .await
    }

    fn out_of_scope(&self, what: &str) -> ApiError {
        match &self.principal.scope {
            Some(scope) => crate::engine::scope::out_of_scope(scope, what),
            None => ApiError::new(ErrorCode::Internal, "no scope"),
        }
    }
}

/// What a scoped key is shown on `fleet`: the presence of the agents its
/// scope matches, and the removal of those it was shown.
pub(crate) struct ScopedFleet {
    scope: Selector,
    /// Agents in scope as far as this connection was told.
    shown: HashSet<AgentName>,
}

impl ScopedFleet {
    /// Whether `delivery` may reach the connection (anything but `fleet`
    /// may: the channels were checked when subscribed).
    fn shows(&mut self, delivery: &Delivery) -> bool {
        if &*delivery.channel != "fleet" {
            return true;
        }
        let crate::broker::Frame::Text(bytes) = &delivery.frame else {
            return false;
        };
        let text = std::str::from_utf8(bytes).unwrap_or_default();
        let Ok(Envelope { msg, .. }) = Envelope::<HubToClient>::decode(text) else {
            return false;
        };
        match msg {
            HubToClient::AgentStatus(status) => {
                let agent = status.agent;
                let matches = self.scope.matches(agent.name.as_str(), &agent.labels);
                match matches {
                    true => self.shown.insert(agent.name),
                    false => self.shown.remove(&agent.name),
                };
                matches
            }
            HubToClient::AgentRemoved(removed) => self.shown.remove(&removed.name),
            _ => false,
        }
    }
}

/// What `subscribe` learnt of a channel.
#[derive(Default)]
struct Checked {
    run: Option<muster_proto::RunInfo>,
    next_seq: Option<u64>,
    ended: bool,
    truncated: bool,
}

/// Whether a request changes what the store holds (or answers from state
/// not yet stored), and so waits for a commit.
fn needs_store(request: &Request) -> bool {
    !matches!(
        request,
        Request::AgentList(_)
            | Request::AgentGet(_)
            | Request::MetricsQuery(_)
            | Request::AgentChannel(..)
            | Request::KeyList
            | Request::EnrollList
            | Request::SessionAttach(_)
            | Request::SessionDetach(..)
            | Request::SessionResize(_)
            | Request::SessionSnapshot(_)
    )
}

async fn send_error(
    writer: &mut Writer,
    re: Option<RequestId>,
    error: ErrorData,
) -> Result<(), SinkClosed> {
    writer
        .send_error(re, error, HubToClient::Error)
        .await
        .map_err(|_| SinkClosed)
}
