//! Lists read page by page against a fake hub that pages for real, one that
//! never ends a list, and replies that come out of order.

use muster_proto::jobs::{JobInfo, JobTarget};
use muster_proto::messages::{AgentList, JobEnvelope, JobTargets, RunList};
use muster_proto::{
    AgentInfo, ClientToHub, Envelope, HubToClient, JobId, RunId, RunInfo, RunState,
};

use super::fake_hub::{HubSide, accept_hello, close_code, fake_hub, recv, send};
use crate::{Client, ClientError, RunListQuery};

fn agent(name: &str) -> AgentInfo {
    serde_json::from_value(serde_json::json!({"name": name, "status": "online"})).unwrap()
}

fn run() -> RunInfo {
    let json = serde_json::json!({
        "id": RunId::generate(), "agent": "web-1", "command": {"argv": ["true"]},
        "priority": 0, "state": RunState::Completed, "created_ms": 1_000,
    });
    serde_json::from_value(json).unwrap()
}

fn target(name: &str) -> JobTarget {
    serde_json::from_value(serde_json::json!({"agent": name, "state": "succeeded"})).unwrap()
}

fn names(agents: &[AgentInfo]) -> Vec<&str> {
    agents.iter().map(|a| a.name.as_str()).collect()
}

fn cursor(next: Option<&str>) -> Option<String> {
    next.map(str::to_owned)
}

/// Answers the next `agent.list` with `agents` and `next`, checking it asked
/// for `cursor`; returns the request's selector.
async fn answer_agents(
    hub: &mut HubSide,
    cursor_wanted: Option<&str>,
    agents: &[&str],
    next: Option<&str>,
) -> Option<String> {
    let request = recv(hub).await;
    let ClientToHub::AgentList(query) = request.msg else {
        panic!("expected agent.list, got {:?}", request.msg)
    };
    assert_eq!(query.cursor.as_deref(), cursor_wanted);
    let list = AgentList {
        agents: agents.iter().map(|n| agent(n)).collect(),
        next_cursor: cursor(next),
    };
    send(
        hub,
        Envelope::reply(request.id, HubToClient::AgentList(list)),
    )
    .await;
    query.selector
}

#[tokio::test]
async fn every_page_of_agents_is_read_after_the_first_page_event() {
    let url = fake_hub(|mut hub| async move {
        accept_hello(&mut hub, 30_000, 60_000).await;
        // The unsolicited first page after the ack, with more to come.
        let first = AgentList {
            agents: vec![agent("a-1")],
            next_cursor: cursor(Some("p2")),
        };
        send(&mut hub, Envelope::plain(HubToClient::AgentList(first))).await;
        answer_agents(&mut hub, None, &["a-1", "a-2"], Some("p2")).await;
        answer_agents(&mut hub, Some("p2"), &["a-3"], Some("p3")).await;
        // An empty last page, as a hub paging by key may send.
        answer_agents(&mut hub, Some("p3"), &[], None).await;
        let selector = answer_agents(&mut hub, None, &["web-1"], Some("w2")).await;
        assert_eq!(selector.as_deref(), Some("role=web"));
        let selector = answer_agents(&mut hub, Some("w2"), &["web-2"], None).await;
        assert_eq!(
            selector.as_deref(),
            Some("role=web"),
            "the selector is kept"
        );
        close_code(&mut hub).await;
    })
    .await;
    let (client, mut events) = Client::connect(&url, "tok").await.unwrap();
    let event = events.recv().await;
    assert!(
        matches!(&event, Some(crate::Event::Message(e)) if matches!(e.msg, HubToClient::AgentList(_))),
        "{event:?}"
    );
    assert_eq!(
        names(&client.agents().await.unwrap()),
        ["a-1", "a-2", "a-3"]
    );
    let web = client.agents_matching("role=web").await.unwrap();
    assert_eq!(names(&web), ["web-1", "web-2"]);
    client.close().await;
}

#[tokio::test]
async fn a_run_limit_is_a_total_read_over_several_pages() {
    let url = fake_hub(|mut hub| async move {
        accept_hello(&mut hub, 30_000, 60_000).await;
        let mut asked = Vec::new();
        for (count, next) in [(3, Some("r2")), (4, Some("r3"))] {
            let request = recv(&mut hub).await;
            let ClientToHub::RunList(query) = request.msg else {
                panic!("expected run.list, got {:?}", request.msg)
            };
            assert_eq!(query.state, Some(RunState::Completed), "filters are kept");
            asked.push((query.cursor, query.limit));
            let list = RunList {
                // The second page brings more than it was asked for.
                runs: (0..count).map(|_| run()).collect(),
                next_cursor: cursor(next),
            };
            send(
                &mut hub,
                Envelope::reply(request.id, HubToClient::RunList(list)),
            )
            .await;
        }
        assert_eq!(
            asked,
            [(None, Some(5)), (Some("r2".to_owned()), Some(2))],
            "each page asks for what is still wanted"
        );
        // Five runs are in: no third request comes before the close.
        close_code(&mut hub).await;
    })
    .await;
    let (client, _events) = Client::connect(&url, "tok").await.unwrap();
    let query = RunListQuery {
        state: Some(RunState::Completed),
        limit: Some(5),
        ..RunListQuery::default()
    };
    assert_eq!(client.runs(query).await.unwrap().len(), 5);
    client.close().await;
}

#[tokio::test]
async fn a_job_is_read_with_every_page_of_its_targets() {
    let id = JobId::generate();
    let url = fake_hub(move |mut hub| async move {
        accept_hello(&mut hub, 30_000, 60_000).await;
        let request = recv(&mut hub).await;
        assert!(
            matches!(request.msg, ClientToHub::JobGet(_)),
            "{:?}",
            request.msg
        );
        let mut job = job_info(id, 5);
        job.targets = vec![target("a"), target("b")];
        job.targets_next_cursor = Some("t2".into());
        let reply = HubToClient::JobInfo(JobEnvelope { job });
        send(&mut hub, Envelope::reply(request.id, reply)).await;
        for (wanted, names, next) in [("t2", &["c", "d"][..], Some("t3")), ("t3", &["e"], None)] {
            let request = recv(&mut hub).await;
            let ClientToHub::JobTargets(query) = request.msg else {
                panic!("expected job.targets, got {:?}", request.msg)
            };
            assert_eq!((query.job, query.cursor.as_deref()), (id, Some(wanted)));
            let page = JobTargets {
                job: id,
                targets: names.iter().map(|n| target(n)).collect(),
                next_cursor: cursor(next),
            };
            send(
                &mut hub,
                Envelope::reply(request.id, HubToClient::JobTargets(page)),
            )
            .await;
        }
        close_code(&mut hub).await;
    })
    .await;
    let (client, _events) = Client::connect(&url, "tok").await.unwrap();
    let job = client.job(id).await.unwrap();
    let agents: Vec<&str> = job.targets.iter().map(|t| t.agent.as_str()).collect();
    assert_eq!(agents, ["a", "b", "c", "d", "e"]);
    assert_eq!(job.targets_next_cursor, None);
    client.close().await;
}

#[tokio::test]
async fn a_cursor_that_comes_back_ends_the_read_with_an_error() {
    let url = fake_hub(|mut hub| async move {
        accept_hello(&mut hub, 30_000, 60_000).await;
        answer_agents(&mut hub, None, &["a-1"], Some("again")).await;
        answer_agents(&mut hub, Some("again"), &["a-2"], Some("again")).await;
        // The client stops asking: the next thing it sends is its close.
        close_code(&mut hub).await;
    })
    .await;
    let (client, _events) = Client::connect(&url, "tok").await.unwrap();
    let err = client.agents().await.unwrap_err();
    assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
    assert!(
        err.to_string().contains("cursor \"again\" came back"),
        "{err}"
    );
    client.close().await;
}

#[tokio::test]
async fn replies_are_matched_by_re_not_by_arrival_order() {
    let url = fake_hub(|mut hub| async move {
        accept_hello(&mut hub, 30_000, 60_000).await;
        let first = recv(&mut hub).await;
        let second = recv(&mut hub).await;
        let reply = |name: &str| {
            HubToClient::AgentList(AgentList {
                agents: vec![agent(name)],
                next_cursor: None,
            })
        };
        // Answered in the opposite order, as a hub serving requests
        // concurrently may do.
        let (later, sooner) = match &first.msg {
            ClientToHub::AgentList(q) if q.selector.as_deref() == Some("x") => (first, second),
            _ => (second, first),
        };
        send(&mut hub, Envelope::reply(sooner.id, reply("for-y"))).await;
        send(&mut hub, Envelope::reply(later.id, reply("for-x"))).await;
        close_code(&mut hub).await;
    })
    .await;
    let (client, _events) = Client::connect(&url, "tok").await.unwrap();
    let (x, y) = tokio::join!(client.agents_matching("x"), client.agents_matching("y"));
    assert_eq!(names(&x.unwrap()), ["for-x"]);
    assert_eq!(names(&y.unwrap()), ["for-y"]);
    client.close().await;
}

fn job_info(id: JobId, total: u32) -> JobInfo {
    serde_json::from_value(serde_json::json!({
        "id": id,
        "spec": {"selector": "all", "steps": [{"name": "run", "command": {"argv": ["true"]}}]},
        "state": "succeeded",
        "progress": {"total": total, "pending": 0, "queued": 0, "running": 0,
                     "succeeded": total, "failed": 0, "skipped": 0, "cancelled": 0},
        "batch_limit": total,
        "created_ms": 1,
    }))
    .unwrap()
}
