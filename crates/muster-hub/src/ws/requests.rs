//! A client session: decodes requests, calls the core, and filters deliveries
//! of stream channels so each output frame reaches the client exactly once.

use std::collections::HashMap;
use std::sync::Arc;

use muster_proto::messages::{
    AgentAdded, AgentEnvelope, AgentList, AgentListQuery, Empty, ErrorData, JobAccepted, JobCreate,
    JobEnvelope, JobList, Principal, RunAccepted, RunCreate, RunEnvelope, RunList, StreamSynced,
    Subscribe, Subscribed,
};
use muster_proto::{
    AgentName, ClientToHub, Envelope, ErrorCode, HubToClient, JobId, RunId, Selector,
};

use super::conn::Writer;
use super::streams::StreamKey;
use crate::broker::{Delivery, Subscriber, SubscriptionGuard, WILDCARD_CHANNEL};
use crate::core::{ApiError, Core, FLEET_CHANNEL};

/// Output chunks read from the store per query during a replay.
const REPLAY_PAGE: u32 = 256;

/// One subscription of this connection.
pub(crate) struct ChannelSub {
    _guard: SubscriptionGuard,
    /// For channels with stored history: which stream.
    stream: Option<StreamKey>,
    /// Next output sequence number the client should get; earlier ones are duplicates.
    next_seq: Option<u64>,
}

/// The state of one authenticated client connection.
pub(crate) struct Session {
    core: Arc<Core>,
    principal: Principal,
    subscriber: Subscriber,
    subs: HashMap<String, ChannelSub>,
}

impl Session {
    pub(crate) fn new(core: Arc<Core>, principal: Principal, subscriber: Subscriber) -> Self {
        Self {
            core,
            principal,
            subscriber,
            subs: HashMap::new(),
        }
    }

    pub(crate) fn principal(&self) -> &Principal {
        &self.principal
    }

    /// Subscribes to a channel for live events only.
    pub(crate) fn subscribe_live(&mut self, channel: &str) {
        if self.subs.contains_key(channel) {
            return;
        }
        let guard = self.core.broker.subscribe(channel, self.subscriber.clone());
        let stream = StreamKey::from_channel(channel);
        self.subs.insert(
            channel.to_owned(),
            ChannelSub {
                _guard: guard,
                stream,
                next_seq: None,
            },
        );
    }

    /// Decodes and answers one text frame. `Err` means the socket is gone.
    pub(crate) async fn handle_text(
        &mut self,
        writer: &mut Writer,
        text: &str,
    ) -> Result<(), axum::Error> {
        let env = match Envelope::<ClientToHub>::decode(text) {
            Ok(env) => env,
            Err(e) => {
                let error = ErrorData::new(e.code(), e.to_string());
                return writer
                    .send_error(e.request_id(), error, HubToClient::Error)
                    .await;
            }
        };
        let re = env.id.clone();
        let reply = match env.msg {
            ClientToHub::Heartbeat(beat) => Ok(HubToClient::HeartbeatAck(beat)),
            ClientToHub::HeartbeatAck(_) => return Ok(()),
            ClientToHub::Subscribe(subscribe) => {
                return self.subscribe(writer, re, subscribe).await;
            }
            other => self.request(other).await,
        };
        match reply {
            Ok(msg) => writer.send(&Envelope::reply(re, msg)).await,
            Err(e) => writer.send_error(re, e.to_data(), HubToClient::Error).await,
        }
    }

    async fn request(&mut self, msg: ClientToHub) -> Result<HubToClient, ApiError> {
        let core = self.core.clone();
        Ok(match msg {
            ClientToHub::Hello(_) => {
                return Err(ApiError::new(
                    ErrorCode::InvalidMessage,
                    "already authenticated",
                ));
            }
            ClientToHub::AgentList(query) => HubToClient::AgentList(AgentList {
                agents: agents(&core, query).await?,
                next_cursor: None,
            }),
            ClientToHub::AgentGet(r) => HubToClient::AgentInfo(AgentEnvelope {
                agent: core.agent(&r.name).await?,
            }),
            ClientToHub::AgentAdd(add) => {
                self.require_admin()?;
                let (agent, token) = core.add_agent(add.name, add.labels).await?;
                HubToClient::AgentAdded(AgentAdded {
                    agent,
                    token: token.expose().to_owned(),
                })
            }
            ClientToHub::AgentLabel(edit) => {
                self.require_admin()?;
                HubToClient::AgentInfo(AgentEnvelope {
                    agent: core.label_agent(edit).await?,
                })
            }
            ClientToHub::MetricsQuery(q) => {
                HubToClient::MetricsSeries(core.metrics_series(&q.agent, q.since_ms).await?)
            }
            ClientToHub::AgentRemove(r) => {
                self.require_admin()?;
                core.remove_agent(&r.name).await?;
                HubToClient::AgentRemoved(r)
            }
            ClientToHub::RunCreate(create) => self.create_run(create).await?,
            ClientToHub::RunGet(r) => HubToClient::RunInfo(RunEnvelope {
                run: core.run(r.run).await?,
            }),
            ClientToHub::RunList(q) => HubToClient::RunList(RunList {
                runs: core.runs(&q).await?,
                next_cursor: None,
            }),
            ClientToHub::RunCancel(r) => {
                core.cancel_run(r.run).await?;
                HubToClient::Ok(Empty {})
            }
            ClientToHub::JobCreate(create) => self.create_job(create).await?,
            ClientToHub::JobGet(r) => HubToClient::JobInfo(JobEnvelope {
                job: core.job(r.job).await?,
            }),
            ClientToHub::JobList(q) => HubToClient::JobList(JobList {
                jobs: core.jobs(&q).await?,
                next_cursor: None,
            }),
            ClientToHub::JobTargets(q) => {
                HubToClient::JobTargets(muster_proto::messages::JobTargets {
                    job: q.job,
                    targets: core.job(q.job).await?.targets,
                    next_cursor: None,
                })
            }
            ClientToHub::JobCancel(r) => {
                core.cancel_job(r.job).await?;
                HubToClient::Ok(Empty {})
            }
            ClientToHub::Unsubscribe(c) => {
                self.subs.remove(&c.channel);
                HubToClient::Ok(Empty {})
            }
            ClientToHub::Heartbeat(_)
            | ClientToHub::HeartbeatAck(_)
            | ClientToHub::Subscribe(_) => {
                unreachable!("handled by handle_text")
            }
        })
    }

    async fn create_run(&mut self, create: RunCreate) -> Result<HubToClient, ApiError> {
        let (run, created) = self
            .core
            .prepare_run(&self.principal, create.request)
            .await?;
        if create.subscribe {
            self.subscribe_live(&run.id.channel().to_string());
        }
        if created {
            self.core.enqueue_run(run.clone()).await?;
        }
        let run = self.core.run(run.id).await?;
        Ok(HubToClient::RunAccepted(RunAccepted { run, created }))
    }

    async fn create_job(&mut self, create: JobCreate) -> Result<HubToClient, ApiError> {
        let (job, created) = self
            .core
            .create_job(&self.principal, create.spec, create.idempotency_key)
            .await?;
        // A job found by its key is already under way; its first events went
        // elsewhere, so the client subscribes with `since` to replay them.
        if created {
            if create.subscribe {
                self.subscribe_live(&job.id.channel().to_string());
            }
            self.core.start_job(job.id);
        }
        Ok(HubToClient::JobAccepted(JobAccepted { job, created }))
    }

    fn require_admin(&self) -> Result<(), ApiError> {
        match self.principal.role.as_deref() {
            Some("admin") => Ok(()),
            _ => Err(ApiError::new(
                ErrorCode::Forbidden,
                "this needs an admin key",
            )),
        }
    }

    /// Subscribes, replays stored output from `since`, then marks the stream synced.
    async fn subscribe(
        &mut self,
        writer: &mut Writer,
        re: Option<muster_proto::RequestId>,
        req: Subscribe,
    ) -> Result<(), axum::Error> {
        if req.channel == WILDCARD_CHANNEL {
            return self.subscribe_wildcard(writer, re).await;
        }
        // Live first, then the snapshot: a run that ends in between is then
        // seen ending, never missed.
        let was_subscribed = self.subs.contains_key(&req.channel);
        if req.channel == FLEET_CHANNEL
            || req.channel.starts_with("run:")
            || req.channel.starts_with("agent:")
            || req.channel.starts_with("metrics:")
            || req.channel.starts_with("job:")
        {
            self.subscribe_live(&req.channel);
        }
        let (run, ended) = match self.check_channel(&req.channel).await {
            Ok(checked) => checked,
            Err(e) => {
                if !was_subscribed {
                    self.subs.remove(&req.channel);
                }
                return writer.send_error(re, e.to_data(), HubToClient::Error).await;
            }
        };
        // Read after the live subscription: every event numbered from here on
        // is published to it.
        let next_seq = match req
            .channel
            .strip_prefix("agent:")
            .map(str::parse::<AgentName>)
        {
            Some(Ok(agent)) => match self.core.peek_event_seq(&agent).await {
                Ok(next) => Some(next),
                Err(e) => {
                    let error = ApiError::from(e).to_data();
                    return writer.send_error(re, error, HubToClient::Error).await;
                }
            },
            _ => None,
        };
        let subscribed = Subscribed {
            channel: req.channel.clone(),
            run: run.clone(),
            next_seq,
        };
        writer
            .send(&Envelope::reply(re, HubToClient::Subscribed(subscribed)))
            .await?;
        let sent = match (StreamKey::from_channel(&req.channel), req.since) {
            (Some(stream), Some(since)) => {
                self.replay_and_sync(writer, &req.channel, stream, since)
                    .await
            }
            _ => Ok(()),
        };
        if ended {
            // Nothing will be published on an ended run's or job's channel any more.
            self.subs.remove(&req.channel);
        }
        sent
    }

    /// Subscribes an admin to every event of every channel, for debugging.
    async fn subscribe_wildcard(
        &mut self,
        writer: &mut Writer,
        re: Option<muster_proto::RequestId>,
    ) -> Result<(), axum::Error> {
        if let Err(e) = self.require_admin() {
            return writer.send_error(re, e.to_data(), HubToClient::Error).await;
        }
        self.subscribe_live(WILDCARD_CHANNEL);
        let subscribed = Subscribed {
            channel: WILDCARD_CHANNEL.to_owned(),
            run: None,
            next_seq: None,
        };
        writer
            .send(&Envelope::reply(re, HubToClient::Subscribed(subscribed)))
            .await
    }

    /// Replays stored output from `since`, then sends `stream.synced`.
    async fn replay_and_sync(
        &mut self,
        writer: &mut Writer,
        channel: &str,
        stream: StreamKey,
        since: u64,
    ) -> Result<(), axum::Error> {
        let next_seq = match self.replay(writer, &stream, since).await {
            Ok(next) => next,
            Err(e) => {
                let error = ApiError::from(e).to_data();
                return writer.send_error(None, error, HubToClient::Error).await;
            }
        };
        if let Some(sub) = self.subs.get_mut(channel) {
            sub.next_seq = Some(next_seq);
        }
        // Output past the cap was never stored or sent: say so, rather than let
        // the client wait for frames that do not exist.
        let truncated = match stream {
            StreamKey::Run(run) => self.core.run(run).await.is_ok_and(|r| r.output_truncated),
            StreamKey::Events(_) | StreamKey::Job(_) => false,
        };
        let synced = StreamSynced {
            channel: channel.to_owned(),
            next_seq,
            truncated,
        };
        writer
            .send(&Envelope::event(channel, HubToClient::StreamSynced(synced)))
            .await
    }

    /// Which channels exist: `fleet`, `agent:<name>` and `metrics:<name>` of a
    /// registered agent, `run:<id>` of an existing run and `job:<id>` of an
    /// existing job. Returns the run of a run channel, and whether the
    /// channel's stream has ended (nothing more will be published on it).
    async fn check_channel(
        &self,
        channel: &str,
    ) -> Result<(Option<muster_proto::RunInfo>, bool), ApiError> {
        if channel == FLEET_CHANNEL {
            return Ok((None, false));
        }
        let unknown =
            || ApiError::new(ErrorCode::UnknownChannel, format!("no channel {channel:?}"));
        let agent_channel = channel
            .strip_prefix("agent:")
            .or_else(|| channel.strip_prefix("metrics:"));
        if let Some(name) = agent_channel {
            let name: AgentName = name.parse().map_err(|_| unknown())?;
            return match self.core.agent(&name).await {
                Ok(_) => Ok((None, false)),
                Err(e) if e.code == ErrorCode::AgentNotFound => Err(unknown()),
                Err(e) => Err(e),
            };
        }
        if let Some(id) = channel.strip_prefix("job:") {
            let id: JobId = id.parse().map_err(|_| unknown())?;
            return match self.core.job_settled(id).await {
                Ok(settled) => Ok((None, settled)),
                Err(e) if e.code == ErrorCode::JobNotFound => Err(unknown()),
                Err(e) => Err(e),
            };
        }
        let id: RunId = channel
            .strip_prefix("run:")
            .and_then(|id| id.parse().ok())
            .ok_or_else(unknown)?;
        match self.core.run(id).await {
            Ok(run) => {
                let ended = run.state.is_terminal();
                Ok((Some(run), ended))
            }
            Err(e) if e.code == ErrorCode::RunNotFound => Err(unknown()),
            Err(e) => Err(e),
        }
    }

    /// Sends stored entries with `seq >= since`; returns the next sequence number.
    async fn replay(
        &self,
        writer: &mut Writer,
        stream: &StreamKey,
        since: u64,
    ) -> anyhow::Result<u64> {
        let mut next = since;
        loop {
            let page = stream.read(&self.core, next, REPLAY_PAGE).await?;
            for (seq, frame) in &page {
                writer.feed(frame.clone()).await?;
                next = seq + 1;
            }
            writer.flush().await?;
            if page.len() < REPLAY_PAGE as usize {
                return Ok(next);
            }
        }
    }

    /// Forwards one delivery, dropping duplicates and filling gaps from the store.
    pub(crate) async fn deliver(
        &mut self,
        writer: &mut Writer,
        delivery: Delivery,
    ) -> Result<(), axum::Error> {
        // Deliveries queued before an unsubscribe are dropped here; the
        // wildcard gets everything as it comes, without stream bookkeeping.
        let Some(sub) = self.subs.get_mut(&*delivery.channel) else {
            if self.subs.contains_key(WILDCARD_CHANNEL) {
                return writer.feed(delivery.frame).await;
            }
            return Ok(());
        };
        let Some(seq) = delivery.seq else {
            if delivery.last {
                // The run ended: free the subscription instead of keeping it for
                // the life of the connection.
                self.subs.remove(&*delivery.channel);
            }
            return writer.feed(delivery.frame).await;
        };
        let expected = sub.next_seq.unwrap_or(seq);
        if seq < expected {
            return Ok(());
        }
        sub.next_seq = Some(seq + 1);
        if seq > expected
            && let Some(stream) = sub.stream.clone()
        {
            self.fill_gap(writer, &stream, expected, seq).await?;
        }
        if delivery.last {
            // A job's final event: nothing follows on its channel.
            self.subs.remove(&*delivery.channel);
        }
        writer.feed(delivery.frame).await
    }

    async fn fill_gap(
        &self,
        writer: &mut Writer,
        stream: &StreamKey,
        from: u64,
        until: u64,
    ) -> Result<(), axum::Error> {
        let limit = (until - from).min(u64::from(u32::MAX)) as u32;
        let page = match stream.read(&self.core, from, limit).await {
            Ok(page) => page,
            Err(e) => {
                tracing::error!(stream = ?stream, error = %format!("{e:#}"), "gap fill failed");
                return Ok(());
            }
        };
        for (_, frame) in page.into_iter().filter(|(seq, _)| *seq < until) {
            writer.feed(frame).await?;
        }
        Ok(())
    }
}

/// Every agent, or those a selector matches.
async fn agents(
    core: &Core,
    query: AgentListQuery,
) -> Result<Vec<muster_proto::AgentInfo>, ApiError> {
    match query.selector {
        None => core.agents().await,
        Some(text) => {
            let selector = Selector::parse(&text)
                .map_err(|e| ApiError::new(ErrorCode::InvalidSelector, e.to_string()))?;
            core.agents_matching(&selector).await
        }
    }
}
