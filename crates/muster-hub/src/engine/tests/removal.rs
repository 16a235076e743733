//! An agent removed while a run is in flight on it.

use super::fleet::{Fleet, agent_name, config};
use super::inputs::create;
use crate::engine::Request;

/// Long past every deadline of the test configuration.
const DAY_MS: u64 = 24 * 3_600_000;

/// `agent.remove` ends the queued runs of the agent (`cancelled`) and its
/// runs in flight (`lost`): it can never report them, and a run must reach
/// exactly one terminal state (protocol.md §7.1).
#[test]
fn the_runs_in_flight_on_a_removed_agent_end() {
    let mut fleet = Fleet::new(config(), &[]);
    fleet.connect(0, 1, Vec::new());
    let run = fleet.fresh_run_id();
    let request = create(agent_name(0), 0, None, None);
    fleet.request(0, Request::RunCreate(run, request));
    fleet.admin_request(Request::AgentRemove(agent_name(0)));
    fleet.disconnect(0, false);
    fleet.tick(DAY_MS);
    fleet.take_batch();
    let state = fleet.engine.runs.get(&run).map(|r| r.info.state);
    assert_eq!(state, None, "run {run}, a day after its agent was removed");
}
