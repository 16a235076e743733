//! A fleet of 200 in-process agents: one job over all of them, in batches,
//! reports exactly one result per agent. The agents run the real agent
//! library with a trivial executor, so nothing is spawned.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use muster_agent::{AgentOptions, Executor, RunSink};
use muster_proto::jobs::{BatchSize, JobSpec, JobState, StepSpec, TargetState};
use muster_proto::messages::{RunExited, RunStart};
use muster_proto::{AgentName, CommandSpec, HubToClient, OutputStream, RunState};
use tokio_util::sync::CancellationToken;

use crate::fixture::{TestHub, WAIT, job_events, seq_of};

/// Agents in the fleet; every other one also carries `half=a`.
const AGENTS: usize = 200;

/// What every run writes before it exits 0.
const OUTPUT: &[u8] = b"done\n";

/// Completes every run at once: started, a line of output, exit code 0.
struct Done;

#[async_trait::async_trait]
impl Executor for Done {
    async fn execute(
        &self,
        start: RunStart,
        sink: RunSink,
        _cancel: CancellationToken,
    ) -> RunExited {
        sink.started(1).await;
        sink.output(OutputStream::Stdout, OUTPUT).await;
        drop(sink);
        RunExited::completed(start.run)
    }
}

/// Registers and starts [`AGENTS`] agents labelled `fleet=big` (half of them
/// `half=a` too), all at once, and waits until the hub sees every one online.
/// Cancelling the returned token stops them all.
async fn big_fleet(hub: &TestHub) -> (CancellationToken, Vec<AgentName>) {
    let stop = CancellationToken::new();
    let executor: Arc<dyn Executor> = Arc::new(Done);
    let mut names = Vec::with_capacity(AGENTS);
    for i in 0..AGENTS {
        let name = AgentName::new(format!("big-{i:03}")).unwrap();
        let token = hub.hub.agent_token(&name).await.unwrap();
        let mut labels = BTreeMap::from([("fleet".to_owned(), "big".to_owned())]);
        if i % 2 == 0 {
            labels.insert("half".to_owned(), "a".to_owned());
        }
        let options = AgentOptions {
            name: Some(name.clone()),
            labels,
            kill_grace: Duration::from_millis(500),
            spool_max_bytes: 64 * 1024,
            metrics_interval: None,
            ..AgentOptions::new(hub.url.clone(), token.expose().to_owned())
        };
        tokio::spawn(muster_agent::run_with_executor(
            options,
            executor.clone(),
            stop.child_token(),
        ));
        names.push(name);
    }
    // Agents connect while later ones register; most are online by the time
    // their turn comes here, and `wait_online` returns at once for those.
    for name in &names {
        tokio::time::timeout(WAIT, hub.hub.wait_online(name))
            .await
            .unwrap_or_else(|_| panic!("agent {name} comes online"));
    }
    (stop, names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_over_200_agents_reports_exactly_200_results() {
    let hub = TestHub::start().await;
    let (stop, names) = big_fleet(&hub).await;
    let (client, mut events) = hub.client().await;

    let half = client.agents_matching("half=a").await.unwrap();
    assert_eq!(half.len(), AGENTS / 2);
    assert_eq!(
        client.agents_matching("fleet=big").await.unwrap().len(),
        AGENTS
    );

    let spec = JobSpec {
        name: None,
        selector: "fleet=big".to_owned(),
        steps: vec![StepSpec {
            name: "done".to_owned(),
            command: CommandSpec::Argv(vec!["done".to_owned()]),
            env: Default::default(),
            cwd: None,
            timeout_ms: None,
            continue_on_failure: false,
        }],
        batch: Some(BatchSize::Percent(25)),
        fail_fast: false,
        online_only: false,
        priority: 0,
        ttl_ms: None,
    };
    let job = client.create_job(spec, true).await.unwrap();
    assert_eq!(job.targets.len(), AGENTS);
    assert_eq!(job.batch_limit as usize, AGENTS / 4);
    let seen = job_events(&mut events, job.id).await;

    // The channel is numbered 0, 1, 2, … without gaps.
    let seqs: Vec<u64> = seen.iter().map(seq_of).collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());

    // One step started on each of the 200 agents, and one completed.
    let started: Vec<&AgentName> = seen
        .iter()
        .filter_map(|m| match m {
            HubToClient::JobStepStarted(e) => Some(&e.agent),
            _ => None,
        })
        .collect();
    let distinct: HashSet<&AgentName> = started.iter().copied().collect();
    assert_eq!((started.len(), distinct.len()), (AGENTS, AGENTS));
    assert_eq!(distinct, names.iter().collect::<HashSet<_>>());
    let completed = seen
        .iter()
        .filter(|m| matches!(m, HubToClient::JobStepCompleted(e) if e.outcome.exit_code == Some(0)))
        .count();
    assert_eq!(completed, AGENTS);
    assert!(
        !seen
            .iter()
            .any(|m| matches!(m, HubToClient::JobStepFailed(_))),
        "no step fails"
    );

    // The batch held: never more than 25% of the targets on their agents.
    for msg in &seen {
        if let HubToClient::JobProgress(p) = msg {
            assert!(
                p.progress.queued + p.progress.running <= job.batch_limit,
                "{p:?}"
            );
        }
    }

    let Some(HubToClient::JobProgress(last)) = seen.last() else {
        panic!("the last event is the final job.progress");
    };
    assert_eq!(last.state, JobState::Succeeded);
    assert!(
        last.progress.total as usize == AGENTS && last.progress.succeeded as usize == AGENTS,
        "{:?}",
        last.progress
    );

    let info = client.job(job.id).await.unwrap();
    assert_eq!(info.state, JobState::Succeeded);
    assert_eq!(info.targets.len(), AGENTS);
    for target in &info.targets {
        assert_eq!(target.state, TargetState::Succeeded, "{target:?}");
        assert_eq!(target.steps.len(), 1, "{target:?}");
        let step = &target.steps[0];
        assert_eq!(
            (step.state, step.exit_code),
            (RunState::Completed, Some(0)),
            "{target:?}"
        );
    }
    let run = client.run_info(info.targets[0].steps[0].run).await.unwrap();
    assert_eq!(run.output_bytes, OUTPUT.len() as u64);

    stop.cancel();
}
