//! Single hostile agent reports: what is stored, what is published, and
//! what the agent's connection hears back once the batch is committed.

use std::sync::Arc;

use muster_proto::messages::{RunAck, RunOutcome, RunReport, RunReportStatus};
use muster_proto::{ErrorCode, HubToAgent, RunId, RunState};

use super::fleet::{Fleet, Recovered, agent_name, carry_out, config, run_id};
use super::inputs::{create, exited, output, started};
use crate::engine::{AgentLink, Batch, Effect, Request};
use crate::store::Change;

/// Agent 0 online with one slot, and two runs for it: the first
/// dispatched, the second queued behind it.
fn one_slot_two_runs() -> (Fleet, Arc<AgentLink>, RunId, RunId) {
    let mut fleet = Fleet::new(config(), &[]);
    fleet.connect(0, 1, Vec::new());
    let first = create_run(&mut fleet);
    let second = create_run(&mut fleet);
    heard(&mut fleet, Batch::default());
    let link = fleet.agents[0].link.clone().expect("connected");
    (fleet, link, first, second)
}

/// A running run with frame 0 stored and acknowledged.
fn running_with_one_frame() -> (Fleet, Arc<AgentLink>, RunId) {
    let (mut fleet, link, run, _) = one_slot_two_runs();
    fleet.input(started(&link, run));
    fleet.input(output(&link, run, 0, 3));
    let batch = fleet.take_batch();
    assert_eq!(stored(&batch), [0]);
    heard(&mut fleet, batch);
    (fleet, link, run)
}

fn create_run(fleet: &mut Fleet) -> RunId {
    let id = fleet.fresh_run_id();
    let request = create(agent_name(0), 0, None, None);
    fleet.request(0, Request::RunCreate(id, request));
    id
}

/// Carries out `batch` and what is left of the current one, as the writer
/// would after committing; returns what agent 0 heard.
fn heard(fleet: &mut Fleet, batch: Batch) -> Vec<HubToAgent> {
    let rest = fleet.take_batch();
    carry_out(batch.effects);
    carry_out(rest.effects);
    fleet.agent_messages(0)
}

fn stored(batch: &Batch) -> Vec<u64> {
    let chunks = batch.changes.iter().filter_map(|change| match change {
        Change::AppendOutput(_, chunk) => Some(chunk.seq),
        _ => None,
    });
    chunks.collect()
}

fn errors(heard: &[HubToAgent]) -> Vec<ErrorCode> {
    let codes = heard.iter().filter_map(|msg| match msg {
        HubToAgent::Error(error) => Some(error.code),
        _ => None,
    });
    codes.collect()
}

fn acks(heard: &[HubToAgent]) -> Vec<RunAck> {
    let acks = heard.iter().filter_map(|msg| match msg {
        HubToAgent::RunAck(ack) => Some(*ack),
        _ => None,
    });
    acks.collect()
}

#[test]
fn exited_for_a_queued_run_is_refused_and_changes_nothing() {
    let (mut fleet, link, _, queued) = one_slot_two_runs();
    fleet.input(exited(&link, queued, RunOutcome::Completed));
    let batch = fleet.take_batch();
    assert!(batch.changes.is_empty(), "{:?}", batch.changes);
    assert!(
        matches!(batch.effects[..], [Effect::ToAgent(..)]),
        "{:?}",
        batch.effects
    );
    let heard = heard(&mut fleet, batch);
    assert_eq!(errors(&heard), [ErrorCode::InvalidState]);
    assert!(acks(&heard).is_empty(), "{heard:?}");
    assert_eq!(fleet.engine.runs[&queued].info.state, RunState::Queued);
    assert_eq!(
        fleet.engine.scheduler.positions(&agent_name(0)),
        [(queued, 1)]
    );
}

#[test]
fn completed_before_started_is_refused_and_keeps_the_slot() {
    let (mut fleet, link, dispatched, _) = one_slot_two_runs();
    fleet.input(exited(&link, dispatched, RunOutcome::Completed));
    let batch = fleet.take_batch();
    assert!(batch.changes.is_empty(), "{:?}", batch.changes);
    let heard = heard(&mut fleet, batch);
    assert_eq!(errors(&heard), [ErrorCode::InvalidState]);
    assert_eq!(
        fleet.engine.runs[&dispatched].info.state,
        RunState::Dispatched
    );
    assert_eq!(
        fleet.engine.scheduler.in_flight(&agent_name(0)),
        [dispatched]
    );
}

#[test]
fn an_output_gap_is_refused_and_not_acknowledged() {
    let (mut fleet, link, run) = running_with_one_frame();
    fleet.input(output(&link, run, 2, 3));
    let batch = fleet.take_batch();
    assert_eq!(stored(&batch), [] as [u64; 0]);
    assert_eq!(batch.frames, 0);
    let heard = heard(&mut fleet, batch);
    assert_eq!(errors(&heard), [ErrorCode::OutputGap]);
    assert!(acks(&heard).is_empty(), "a gap is acknowledged: {heard:?}");
    assert_eq!(fleet.engine.runs[&run].next_seq, 1);
}

#[test]
fn a_duplicate_frame_is_acknowledged_and_not_stored() {
    let (mut fleet, link, run) = running_with_one_frame();
    fleet.input(output(&link, run, 0, 3));
    let batch = fleet.take_batch();
    assert_eq!(stored(&batch), [] as [u64; 0]);
    assert!(!batch.effects.iter().any(|e| matches!(e, Effect::Raw(_))));
    let heard = heard(&mut fleet, batch);
    assert!(errors(&heard).is_empty(), "{heard:?}");
    let ack = RunAck {
        run,
        next_seq: 1,
        exited: false,
    };
    assert_eq!(acks(&heard), [ack]);
}

#[test]
fn no_frame_follows_seq_u64_max_and_none_wraps_around() {
    let recovered = Recovered {
        agent: 0,
        state: RunState::Running,
        next_seq: u64::MAX,
    };
    let run = run_id(1);
    let mut fleet = Fleet::new(config(), &[recovered.stored(run)]);
    let status = RunReportStatus::Running;
    fleet.connect(
        0,
        1,
        vec![RunReport {
            run,
            status,
            input_applied: None,
        }],
    );
    heard(&mut fleet, Batch::default());
    let link = fleet.agents[0].link.clone().expect("connected");
    fleet.input(output(&link, run, u64::MAX, 3));
    let batch = fleet.take_batch();
    assert_eq!(stored(&batch), [] as [u64; 0]);
    let heard = heard(&mut fleet, batch);
    assert_eq!(errors(&heard), [ErrorCode::InvalidMessage]);
    assert!(acks(&heard).is_empty(), "{heard:?}");
    assert_eq!(fleet.engine.runs[&run].next_seq, u64::MAX);
}
