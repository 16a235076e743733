//! The hub's agent registry and job records, as the fleet scenarios use them:
//! paged listing (`next_cursor`), pipelined registration, removal of stale sim
//! agents, and paged job targets (`job.targets`).
//!
//! A hub that does not page answers without `next_cursor`, which is simply the
//! last page. A request the hub refuses with `RATE_LIMIT` is sent again after
//! a short, growing wait. Only agents labelled `sim=true` are ever removed or
//! replaced.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{StreamExt, TryStreamExt, stream};
use muster_proto::jobs::{JobInfo, JobTarget};
use muster_proto::messages::{AgentAdd, AgentListQuery, AgentRef, JobTargetsQuery};
use muster_proto::{AgentInfo, AgentName, ClientToHub, ErrorCode, HubToClient};

use crate::control::{Control, RequestError};

use crate::raw::Identity;
use crate::sim_agent::{SIM_LABEL, is_sim};

/// Registrations (or removals) in flight at once on the control connection:
/// enough to hide the round trip, few enough to stay far from any rate limit.
const PIPELINE_DEPTH: usize = 128;

/// Retries of one request the hub refused with `RATE_LIMIT`.
const RATE_LIMIT_RETRIES: u32 = 30;

/// First wait after a `RATE_LIMIT`; it doubles up to [`RATE_LIMIT_MAX_WAIT`].
const RATE_LIMIT_FIRST_WAIT: Duration = Duration::from_millis(50);

/// Longest wait between retries after a `RATE_LIMIT`.
const RATE_LIMIT_MAX_WAIT: Duration = Duration::from_secs(1);

/// Most pages followed for one list: 10,000 pages of the smallest useful
/// size is far beyond any fleet here, and stops a hub that loops its cursor.
const MAX_PAGES: usize = 10_000;

/// Sends `msg`, again after a wait each time the hub answers `RATE_LIMIT`.
async fn request(control: &Control, msg: ClientToHub) -> Result<HubToClient, RequestError> {
    let mut wait = RATE_LIMIT_FIRST_WAIT;
    for _ in 0..RATE_LIMIT_RETRIES {
        match control.request(msg.clone()).await {
            Err(RequestError::Hub(error)) if error.code == ErrorCode::RateLimit => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RATE_LIMIT_MAX_WAIT);
            }
            other => return other,
        }
    }
    control.request(msg).await
}

/// Every agent `selector` matches, following `next_cursor` page by page.
pub(crate) async fn list_agents(
    control: &Control,
    selector: &str,
) -> anyhow::Result<Vec<AgentInfo>> {
    let mut agents = Vec::new();
    let mut cursor = None;
    for _ in 0..MAX_PAGES {
        let query = AgentListQuery {
            selector: Some(selector.to_owned()),
            cursor: cursor.take(),
            limit: None,
        };
        let page = match request(control, ClientToHub::AgentList(query)).await? {
            HubToClient::AgentList(page) => page,
            other => bail!("expected agent.list, got {other:?}"),
        };
        agents.extend(page.agents);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(agents),
        }
    }
    bail!("agent.list for {selector:?} did not end within {MAX_PAGES} pages")
}

/// Every target of `job`: those it carries, then the `job.targets` pages
/// after its `targets_next_cursor`.
pub(crate) async fn job_targets(
    control: &Control,
    job: &JobInfo,
) -> anyhow::Result<Vec<JobTarget>> {
    let mut targets = job.targets.clone();
    let mut cursor = job.targets_next_cursor.clone();
    for _ in 0..MAX_PAGES {
        let Some(next) = cursor.take() else {
            return Ok(targets);
        };
        let query = JobTargetsQuery {
            job: job.id,
            cursor: Some(next),
            limit: None,
        };
        match request(control, ClientToHub::JobTargets(query)).await? {
            HubToClient::JobTargets(page) => {
                targets.extend(page.targets);
                cursor = page.next_cursor;
            }
            other => bail!("expected job.targets, got {other:?}"),
        }
    }
    bail!(
        "job.targets of job {} did not end within {MAX_PAGES} pages",
        job.id
    )
}

/// Registers every one of `names` with `labels` (which must hold the sim
/// label), [`PIPELINE_DEPTH`] at a time, replacing earlier sim agents of the
/// same names; their identities, in order.
pub(crate) async fn register_all(
    control: &Control,
    names: &[AgentName],
    labels: &BTreeMap<String, String>,
) -> anyhow::Result<Vec<Identity>> {
    stream::iter(names)
        .map(|name| register(control, name, labels))
        .buffered(PIPELINE_DEPTH)
        .try_collect()
        .await
}

/// Registers `name`, replacing an earlier sim agent of that name.
async fn register(
    control: &Control,
    name: &AgentName,
    labels: &BTreeMap<String, String>,
) -> anyhow::Result<Identity> {
    let add = || {
        let add = ClientToHub::AgentAdd(AgentAdd {
            name: name.clone(),
            labels: labels.clone(),
        });
        request(control, add)
    };
    let reply = match add().await {
        Err(RequestError::Hub(error)) if error.code == ErrorCode::Conflict => {
            replace(control, name).await?;
            add().await
        }
        other => other,
    };
    match reply.with_context(|| format!("registering sim agent {name}"))? {
        HubToClient::AgentAdded(added) => Ok(Identity {
            name: name.clone(),
            token: added.token,
        }),
        other => bail!("expected agent.added, got {other:?}"),
    }
}

/// Removes the existing agent `name` if it is a sim agent; fails otherwise.
async fn replace(control: &Control, name: &AgentName) -> anyhow::Result<()> {
    let get = ClientToHub::AgentGet(AgentRef { name: name.clone() });
    let existing = match request(control, get).await? {
        HubToClient::AgentInfo(info) => info.agent,
        other => bail!("expected agent.info, got {other:?}"),
    };
    if !is_sim(&existing.labels) {
        let (key, value) = SIM_LABEL;
        bail!(
            "agent {name} already exists and is not a sim agent (no {key}={value} label); \
             pick another --agent-name"
        );
    }
    remove(control, name).await
}

async fn remove(control: &Control, name: &AgentName) -> anyhow::Result<()> {
    let remove = ClientToHub::AgentRemove(AgentRef { name: name.clone() });
    request(control, remove)
        .await
        .with_context(|| format!("removing the sim agent {name}"))?;
    Ok(())
}

/// Removes the sim agents `selector` matches that are not in `keep`, so a
/// scenario's selector matches exactly its own agents; refuses to go on if an
/// agent that is not a sim agent matches. Returns how many were removed.
pub(crate) async fn prune(
    control: &Control,
    selector: &str,
    keep: &[AgentName],
) -> anyhow::Result<usize> {
    let keep: HashSet<&AgentName> = keep.iter().collect();
    let stale: Vec<AgentInfo> = list_agents(control, selector)
        .await
        .with_context(|| format!("listing the agents {selector} matches"))?
        .into_iter()
        .filter(|agent| !keep.contains(&agent.name))
        .collect();
    if let Some(foreign) = stale.iter().find(|agent| !is_sim(&agent.labels)) {
        let (key, value) = SIM_LABEL;
        bail!(
            "agent {} matches {selector} but is not a sim agent (no {key}={value} label); \
             the scenario would use it, so the bench stops here",
            foreign.name
        );
    }
    stream::iter(&stale)
        .map(|agent| remove(control, &agent.name))
        .buffer_unordered(PIPELINE_DEPTH)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(stale.len())
}

/// The labels of a scenario's agents: the sim label and `bench=<scenario>`.
pub(crate) fn scenario_labels(scenario: &str) -> BTreeMap<String, String> {
    let (key, value) = SIM_LABEL;
    BTreeMap::from([
        (key.to_owned(), value.to_owned()),
        ("bench".to_owned(), scenario.to_owned()),
    ])
}

/// The selector of a scenario's agents: `bench=<scenario>`.
pub(crate) fn scenario_selector(scenario: &str) -> String {
    format!("bench={scenario}")
}

/// Agent names `<base>-00000`, `<base>-00001`, … (five digits, so a fleet of
/// up to 100,000 sorts by number).
pub(crate) fn agent_names(base: &AgentName, count: usize) -> anyhow::Result<Vec<AgentName>> {
    (0..count)
        .map(|i| {
            let name = format!("{base}-{i:05}");
            AgentName::new(name.clone()).map_err(|_| {
                anyhow::anyhow!("--agent-name {base} is too long: {name} is not a valid agent name")
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_numbered_and_checked() {
        let base = AgentName::new("bench-sim").unwrap();
        let names = agent_names(&base, 3).unwrap();
        let names: Vec<&str> = names.iter().map(AgentName::as_str).collect();
        assert_eq!(
            names,
            ["bench-sim-00000", "bench-sim-00001", "bench-sim-00002"]
        );
        let long = AgentName::new("a".repeat(muster_proto::limits::MAX_AGENT_NAME_LEN)).unwrap();
        let err = agent_names(&long, 1).unwrap_err().to_string();
        assert!(err.contains("too long"), "{err}");
    }

    #[test]
    fn scenario_selectors_match_their_labels() {
        let selector = muster_proto::Selector::parse(&scenario_selector("storm")).unwrap();
        assert!(selector.matches("x", &scenario_labels("storm")));
        assert!(!selector.matches("x", &scenario_labels("idle")));
        assert!(is_sim(&scenario_labels("idle")));
    }
}
