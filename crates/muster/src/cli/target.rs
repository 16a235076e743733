//! Where a command goes: one agent by name, or every agent a selector matches
//! (a job), and the flags that shape a job.
//!
//! A selector is parsed here, before the hub is contacted, so a typo is shown
//! with a caret under the offending column and never costs a round trip.

use std::time::Duration;

use muster_proto::jobs::{BatchSize, JobSpec, StepSpec};
use muster_proto::{AgentName, Selector};

use super::parse;

/// The targets of a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// One agent, named plainly: a single run.
    Agent(AgentName),
    /// Every agent the selector matches: a job.
    Selector(Selector),
}

/// Parses a selector given with `-l`, or reports it with its caret rendering:
/// `invalid selector at column 5: …` and two lines showing where.
pub(crate) fn selector(text: &str) -> anyhow::Result<Selector> {
    Selector::parse(text).map_err(|err| anyhow::anyhow!("{err}\n{}", err.caret()))
}

/// A positional TARGET: a plain agent name runs once on that agent; anything
/// else the selector grammar accepts (`web-*`, `role=web`, `all`, `a,b`) is a job.
pub(crate) fn target(text: &str) -> anyhow::Result<Target> {
    let selector = selector(text)?;
    match selector.single_name() {
        Some(name) => Ok(Target::Agent(AgentName::new(name)?)),
        None => Ok(Target::Selector(selector)),
    }
}

/// A TARGET or `-l SELECTOR` (clap makes sure exactly one is given); `-l`
/// always makes a job, even for one name.
pub(crate) fn resolve(positional: Option<&str>, flags: &JobFlags) -> anyhow::Result<Target> {
    match (positional, flags.selector.as_deref()) {
        (_, Some(text)) => Ok(Target::Selector(selector(text)?)),
        (Some(text), None) => target(text),
        (None, None) => anyhow::bail!("give a TARGET or -l SELECTOR"),
    }
}

/// A positional TARGET or `-l SELECTOR`, and the flags of a job; shared by
/// `run` and `job run`.
#[derive(Debug, clap::Args)]
pub(crate) struct Targets {
    /// Where: a plain agent name, or a selector — a glob (web-*), a list
    /// (a,b), labels (role=web) or all — for every matching agent, as a job.
    #[arg(required_unless_present = "selector", conflicts_with = "selector")]
    pub(crate) target: Option<String>,
    #[command(flatten)]
    pub(crate) job: JobFlags,
}

impl Targets {
    /// The target the arguments name.
    pub(crate) fn resolve(&self) -> anyhow::Result<Target> {
        resolve(self.target.as_deref(), &self.job)
    }
}

/// Flags that pick a job's agents and pace it; shared by `run`, `action` and
/// `job run`.
#[derive(Debug, Default, clap::Args)]
pub(crate) struct JobFlags {
    /// Run on every agent this selector matches, as a job: labels
    /// (role=web,env!=prod), name globs (web-*), lists (a,b), or all.
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    pub(crate) selector: Option<String>,
    /// Jobs: at most this many agents in progress at once, as a count (2) or
    /// a percentage of the targets (25%); all at once when absent.
    #[arg(long, value_name = "N|N%")]
    pub(crate) batch: Option<BatchSize>,
    /// Jobs: after the first failed agent, start no other (they end skipped).
    #[arg(long)]
    pub(crate) fail_fast: bool,
    /// Jobs: skip agents that are offline now instead of waiting for them.
    #[arg(long)]
    pub(crate) online_only: bool,
    /// Jobs: print each agent's output as one block when its step ends,
    /// instead of line by line as it comes.
    #[arg(long)]
    pub(crate) group: bool,
}

impl JobFlags {
    /// The first job-only flag given, to refuse it for a single run.
    pub(crate) fn job_only_flag(&self) -> Option<&'static str> {
        [
            (self.batch.is_some(), "--batch"),
            (self.fail_fast, "--fail-fast"),
            (self.online_only, "--online-only"),
            (self.group, "--group"),
        ]
        .into_iter()
        .find_map(|(given, flag)| given.then_some(flag))
    }
}

/// Flags about how a command's runs wait and whether to wait for them;
/// shared by `run`, `action` and `job run`.
#[derive(Debug, clap::Args)]
pub(crate) struct QueueFlags {
    /// How long a run may wait for its agent (offline or busy) before it
    /// expires; 0 runs it only if the agent is online now. The hub's default when absent.
    #[arg(long, value_name = "DURATION", value_parser = parse::ttl)]
    pub(crate) ttl: Option<Duration>,
    /// Queue priority: an integer from -100 to 100, or low, normal, high.
    #[arg(long, value_name = "P", value_parser = parse::priority, default_value = "normal",
          allow_negative_numbers = true)]
    pub(crate) priority: i32,
    /// Print the run id (or, for a job, the job id) and exit without waiting.
    #[arg(long)]
    pub(crate) detach: bool,
    /// Repeating a request with the same key creates nothing new: it follows
    /// the run (or job) the first one created. A random key is used when absent.
    #[arg(long, value_name = "KEY")]
    pub(crate) idempotency_key: Option<String>,
}

/// A job over `selector` running `steps`, paced by `flags` and queued by `queue`.
pub(crate) fn job_spec(
    selector: &Selector,
    steps: Vec<StepSpec>,
    flags: &JobFlags,
    queue: &QueueFlags,
) -> JobSpec {
    JobSpec {
        name: None,
        selector: selector.as_str().to_owned(),
        steps,
        batch: flags.batch,
        fail_fast: flags.fail_fast,
        online_only: flags.online_only,
        priority: queue.priority,
        ttl_ms: queue.ttl.map(millis),
    }
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Exits with a usage error (status 2) when a job-only flag was given for a
/// single run.
pub(crate) fn refuse_job_flags(flags: &JobFlags) {
    if let Some(flag) = flags.job_only_flag() {
        usage_error(&format!(
            "{flag} applies to jobs: give -l SELECTOR, or a TARGET that is a selector"
        ));
    }
}

/// Prints `message` as a clap usage error and exits with status 2.
pub(crate) fn usage_error(message: &str) -> ! {
    clap::Error::raw(
        clap::error::ErrorKind::ArgumentConflict,
        format!("{message}\n"),
    )
    .exit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_single_runs_and_the_rest_are_jobs() {
        assert_eq!(
            target("web-1").unwrap(),
            Target::Agent(AgentName::new("web-1").unwrap())
        );
        for text in ["web-*", "role=web", "all", "a,b", "env in (prod,dev)"] {
            assert!(
                matches!(target(text).unwrap(), Target::Selector(_)),
                "{text}"
            );
        }
    }

    #[test]
    fn a_bad_selector_names_its_column_with_a_caret() {
        let err = selector("role~web").unwrap_err().to_string();
        let mut lines = err.lines();
        assert!(
            lines
                .next()
                .unwrap()
                .starts_with("invalid selector at column 5: "),
            "{err}"
        );
        assert_eq!(lines.next(), Some("  role~web"));
        assert_eq!(lines.next(), Some("      ^"));
    }

    #[test]
    fn the_selector_flag_always_makes_a_job() {
        let flags = JobFlags {
            selector: Some("web-1".into()),
            ..JobFlags::default()
        };
        assert!(matches!(
            resolve(None, &flags).unwrap(),
            Target::Selector(_)
        ));
        assert!(matches!(
            resolve(Some("web-1"), &JobFlags::default()).unwrap(),
            Target::Agent(_)
        ));
    }

    #[test]
    fn job_only_flags_are_named() {
        let mut flags = JobFlags::default();
        assert_eq!(flags.job_only_flag(), None);
        flags.group = true;
        assert_eq!(flags.job_only_flag(), Some("--group"));
        flags.batch = Some(BatchSize::Percent(10));
        assert_eq!(flags.job_only_flag(), Some("--batch"));
    }
}
