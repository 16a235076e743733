//! What each message means for the followed job and its runs: job events
//! taken once and in order by `seq`, output frames taken once and in order
//! per run, the ends of runs, and holes in either stream.
//!
//! A run is over when its channel says so: a terminal `run.status`, or a
//! `subscribe` reply with a terminal run followed by the end of the replay;
//! either comes after all of its output.

use std::sync::Arc;

use muster_proto::messages::StepStartedEvent;
use muster_proto::{Channel, CloseCode, Envelope, HubToClient, OutputFrame, RunId, RunInfo};

use super::task::{End, Flow, JobTask, Link, Sub};
use super::{JobEvent, JobFollowEvent, StepOutput, StepRef};
use crate::Subscribed;
use crate::client::Event;
use crate::error::ClientError;
use crate::follow::seq::{Gap, SeqTracker, Verdict};
use crate::follow::{FollowError, missing_chunks};

/// Where one subscription to a run's channel stands.
#[derive(Debug, Default)]
pub(super) struct RunSub {
    /// `stream.synced` arrived: the replay is complete.
    synced: bool,
    /// The `subscribe` reply said the run had already ended; it is over once
    /// the replay is complete.
    ended: Option<Box<RunInfo>>,
}

/// One run of the job, from its `job.step.started` on.
#[derive(Debug)]
pub(super) struct StepRun {
    /// The step it executes.
    step: Arc<StepRef>,
    /// The output frame due next; what to resubscribe `since`.
    pub(super) seq: SeqTracker,
    /// The current subscription to `run:<id>`.
    pub(super) sub: RunSub,
    /// Where the last hole in its output was: a replay with the same hole
    /// gives the run up.
    gap_at: Option<u64>,
    /// Its truncation was passed on.
    truncated: bool,
    /// It ended (or was given up) and nothing more is passed on for it.
    pub(super) done: bool,
}

impl JobTask {
    /// Handles what the connection delivered: an end, an output frame or a message.
    pub(super) async fn on_event(&mut self, event: Option<Event>, link: &mut Link) -> Flow {
        match event {
            None => Err(End::Dropped("the connection ended".to_owned())),
            Some(Event::Closed {
                code: Some(code),
                reason,
            }) if CloseCode::is_fatal(code) => {
                Err(End::Failed(FollowError::FatalClose { code, reason }))
            }
            Some(Event::Closed { code, reason }) => Err(End::Dropped(match code {
                Some(code) => format!("{reason} (close code {code})"),
                None => reason,
            })),
            Some(Event::Output(frame)) => self.on_output(frame).await,
            Some(Event::Message(envelope)) => self.on_message(envelope, link).await,
        }
    }

    /// Routes a message by its channel: the job's, a run's, or none.
    async fn on_message(&mut self, envelope: Envelope<HubToClient>, link: &mut Link) -> Flow {
        let Some(channel) = envelope.channel.as_deref() else {
            return on_unsolicited(envelope.msg);
        };
        match channel.parse() {
            Ok(Channel::Job(job)) if job == self.job => {
                self.on_job_message(envelope.msg, link).await
            }
            Ok(Channel::Run(run)) => self.on_run_message(run, envelope.msg).await,
            _ => Ok(()),
        }
    }

    /// A message on `job:<id>`: the end of a replay, or an event taken once,
    /// in order, by its `seq`.
    async fn on_job_message(&mut self, msg: HubToClient, link: &mut Link) -> Flow {
        if let HubToClient::StreamSynced(synced) = &msg {
            if synced.next_seq > self.next_seq {
                return Err(self.job_gap(synced.next_seq));
            }
            self.reconnector.connected();
            return Ok(());
        }
        let Some(event) = JobEvent::from_message(msg) else {
            return Ok(());
        };
        let seq = event.seq();
        if seq < self.next_seq {
            return Ok(());
        }
        if seq > self.next_seq {
            return Err(self.job_gap(seq));
        }
        self.next_seq += 1;
        self.gap_at = None;
        self.on_job_event(event, link).await
    }

    /// The job's events `next_seq..got` are missing: replay them on a new
    /// connection, unless the last replay stopped at the same hole.
    fn job_gap(&mut self, got: u64) -> End {
        let expected = self.next_seq;
        if self.gap_at == Some(expected) {
            let job = self.job;
            return End::Failed(FollowError::JobGap { job, expected, got });
        }
        self.gap_at = Some(expected);
        End::Dropped(format!(
            "job events {expected} to {} are missing; replaying",
            got - 1
        ))
    }

    /// Passes on the job event due next, following the output of each step
    /// it starts and noting the job's end.
    async fn on_job_event(&mut self, event: JobEvent, link: &mut Link) -> Flow {
        match &event {
            JobEvent::StepStarted(started) => self.step_started(started, link),
            JobEvent::Progress(progress) if progress.state.is_terminal() => {
                self.ended = Some(progress.state);
            }
            _ => {}
        }
        self.pass(JobFollowEvent::Job(event)).await
    }

    /// Starts following the output of a step's run.
    fn step_started(&mut self, started: &StepStartedEvent, link: &mut Link) {
        if !self.output || self.runs.contains_key(&started.run) {
            return;
        }
        let step = StepRef {
            run: started.run,
            agent: started.agent.clone(),
            step: started.step,
            name: started.name.clone(),
        };
        let run = StepRun {
            step: Arc::new(step),
            seq: SeqTracker::new(0),
            sub: RunSub::default(),
            gap_at: None,
            truncated: false,
            done: false,
        };
        self.runs.insert(started.run, run);
        link.subscribe(Sub::Run(started.run), Channel::Run(started.run), 0);
    }

    /// An output frame of a run: passed on once, in order.
    async fn on_output(&mut self, frame: OutputFrame) -> Flow {
        let header = frame.header;
        let Some(run) = self.runs.get_mut(&header.run).filter(|run| !run.done) else {
            return Ok(());
        };
        match run.seq.frame(header.seq) {
            Ok(Verdict::Deliver) => run.gap_at = None,
            Ok(Verdict::Duplicate) => return Ok(()),
            Err(gap) => return self.run_gap(header.run, gap).await,
        }
        let output = StepOutput {
            step: Arc::clone(&run.step),
            stream: header.stream,
            seq: header.seq,
            payload: frame.payload,
        };
        self.pass(JobFollowEvent::Output(output)).await
    }

    /// A run's output has a hole: replay it on a new connection, or give the
    /// run up when the last replay stopped at the same hole.
    async fn run_gap(&mut self, run: RunId, gap: Gap) -> Flow {
        let Some(step) = self.runs.get_mut(&run) else {
            return Ok(());
        };
        if step.gap_at == Some(gap.expected) {
            let what = missing_chunks(gap.expected, gap.got);
            let reason = format!("{what} missing from the hub's stream");
            return self.give_up_run(run, reason).await;
        }
        step.gap_at = Some(gap.expected);
        Err(End::Dropped(format!(
            "output of run {run} is missing from chunk {}; replaying",
            gap.expected
        )))
    }

    /// A message on `run:<id>`: its terminal status, or the end of its replay.
    async fn on_run_message(&mut self, run: RunId, msg: HubToClient) -> Flow {
        if self.runs.get(&run).is_none_or(|step| step.done) {
            return Ok(());
        }
        match msg {
            HubToClient::RunStatus(status) if status.run.state.is_terminal() => {
                self.run_over(run, Box::new(status.run)).await
            }
            HubToClient::StreamSynced(synced) => {
                self.run_synced(run, synced.next_seq, synced.truncated)
                    .await
            }
            _ => Ok(()),
        }
    }

    /// The end of a run's replay: a hole, a truncation, or the end of a run
    /// the `subscribe` reply found ended.
    async fn run_synced(&mut self, run: RunId, next_seq: u64, truncated: bool) -> Flow {
        let Some(step) = self.runs.get_mut(&run) else {
            return Ok(());
        };
        if let Err(gap) = step.seq.synced(next_seq) {
            return self.run_gap(run, gap).await;
        }
        step.sub.synced = true;
        if truncated && !step.truncated {
            step.truncated = true;
            let step = Arc::clone(&step.step);
            self.pass(JobFollowEvent::OutputTruncated(step)).await?;
        }
        match self
            .runs
            .get_mut(&run)
            .and_then(|step| step.sub.ended.take())
        {
            Some(info) => self.run_over(run, info).await,
            None => Ok(()),
        }
    }

    /// The reply to a `subscribe`. A refused job subscription ends the
    /// follower; a refused run subscription gives that run up; a hub that
    /// cannot answer now is asked again on a new connection.
    pub(super) async fn on_reply(
        &mut self,
        sub: Sub,
        reply: Result<Subscribed, ClientError>,
    ) -> Flow {
        match (sub, reply) {
            // The connection's end follows as an event, with its close code.
            (_, Err(ClientError::Closed(_))) => Ok(()),
            (_, Err(err)) if err.is_transient() => {
                Err(End::Dropped(format!("the hub could not subscribe: {err}")))
            }
            (Sub::Job, Ok(_)) => Ok(()),
            (Sub::Job, Err(err)) => Err(End::Failed(err.into())),
            (Sub::Run(run), Ok(subscribed)) => self.run_subscribed(run, subscribed.run).await,
            (Sub::Run(run), Err(err)) => self.give_up_run(run, err.to_string()).await,
        }
    }

    /// The reply to a run's subscription: if the run had already ended, it
    /// is over once the replay is complete (which may have happened already).
    async fn run_subscribed(&mut self, run: RunId, info: Option<RunInfo>) -> Flow {
        let Some(step) = self.runs.get_mut(&run).filter(|step| !step.done) else {
            return Ok(());
        };
        match info {
            Some(info) if info.state.is_terminal() && step.sub.synced => {
                self.run_over(run, Box::new(info)).await
            }
            Some(info) if info.state.is_terminal() => {
                step.sub.ended = Some(Box::new(info));
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// A run ended after all of its output.
    async fn run_over(&mut self, run: RunId, info: Box<RunInfo>) -> Flow {
        let Some(step) = self.runs.get_mut(&run).filter(|step| !step.done) else {
            return Ok(());
        };
        step.done = true;
        let step = Arc::clone(&step.step);
        self.pass(JobFollowEvent::RunEnded { step, run: info })
            .await
    }

    /// Stops following a run's output, saying why.
    async fn give_up_run(&mut self, run: RunId, reason: String) -> Flow {
        let Some(step) = self.runs.get_mut(&run).filter(|step| !step.done) else {
            return Ok(());
        };
        step.done = true;
        let step = Arc::clone(&step.step);
        self.pass(JobFollowEvent::RunUnavailable { step, reason })
            .await
    }
}

/// An `error` that answers no request: the hub could not replay a stream,
/// so replay again on a new connection.
fn on_unsolicited(msg: HubToClient) -> Flow {
    match msg {
        HubToClient::Error(error) => Err(End::Dropped(format!(
            "the hub could not replay a stream: {}",
            error.message
        ))),
        _ => Ok(()),
    }
}
