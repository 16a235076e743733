//! What clients and agents say, built as the hub receives it: `run.create`
//! with a plain command, and an agent's reports on its connection (output
//! frames encoded as an agent sends them, then decoded).

use std::sync::Arc;

use muster_proto::messages::{RunCreate, RunExited, RunOutcome, RunStarted};
use muster_proto::types::RunRequest;
use muster_proto::{AgentName, CommandSpec, OutputFrame, OutputHeader, OutputStream, RunId};

use crate::engine::{AgentLink, Input};

/// `run.create` with a plain command.
pub(super) fn create(
    agent: AgentName,
    priority: i32,
    key: Option<String>,
    ttl_ms: Option<u64>,
) -> RunCreate {
    let mut request = RunRequest::new(agent, CommandSpec::Argv(vec!["true".into()]));
    request.priority = priority;
    request.idempotency_key = key;
    request.ttl_ms = ttl_ms;
    RunCreate {
        request,
        subscribe: true,
    }
}

/// `run.started` on `link`.
pub(super) fn started(link: &Arc<AgentLink>, run: RunId) -> Input {
    Input::RunStarted(link.clone(), RunStarted { run, pid: 4242 })
}

/// An output frame of `len` bytes on `link`, raw as an agent sends it and decoded.
pub(super) fn output(link: &Arc<AgentLink>, run: RunId, seq: u64, len: usize) -> Input {
    let stream = if seq.is_multiple_of(2) {
        OutputStream::Stdout
    } else {
        OutputStream::Stderr
    };
    let header = OutputHeader {
        run,
        stream,
        seq,
        offset: seq.saturating_mul(8),
        at: None,
    };
    let raw = OutputFrame::encode(&header, &vec![b'x'; len]);
    let frame = OutputFrame::decode(raw.clone()).expect("a frame encoded here decodes");
    Input::RunOutput(link.clone(), raw, frame)
}

/// `run.exited` on `link`.
pub(super) fn exited(link: &Arc<AgentLink>, run: RunId, outcome: RunOutcome) -> Input {
    let exited = RunExited {
        run,
        outcome,
        exit_code: (outcome == RunOutcome::Completed).then_some(0),
        signal: None,
        error: None,
        error_code: None,
        output_truncated: false,
    };
    Input::RunExited(link.clone(), exited)
}
