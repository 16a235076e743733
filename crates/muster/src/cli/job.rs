//! `muster job run FILE (-l SELECTOR | TARGET)`: run a workflow file's steps
//! on every matching agent, as a job, and follow it to its end.

use std::path::PathBuf;
use std::process::ExitCode;

use muster_proto::Selector;

use super::HubConn;
use super::job_follow::{self, JobOptions};
use super::target::{self, QueueFlags, Target, Targets};
use super::workflow;

/// The `muster job` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum JobCommand {
    /// Run a TOML workflow's steps on every agent a selector matches, in
    /// order on each agent, and follow the job: output lines are prefixed
    /// with the agent's name (blocks per step with --group), events the steps
    /// publish go to stderr, and a summary ends it. Exits 0 when every target
    /// succeeded, 1 when the job failed, 130 when it was cancelled, 255 when
    /// the hub refused it. See examples/workflow.toml for the file format.
    Run(RunArgs),
}

/// Arguments of `muster job run`.
#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    conn: HubConn,
    /// The workflow file (TOML).
    file: PathBuf,
    #[command(flatten)]
    targets: Targets,
    #[command(flatten)]
    queue: QueueFlags,
}

impl JobCommand {
    /// Runs the subcommand.
    pub(crate) async fn run(self, json: bool) -> anyhow::Result<ExitCode> {
        match self {
            Self::Run(args) => run(args, json).await,
        }
    }
}

/// Loads the workflow, builds the job from it and the flags (which win), and follows it.
async fn run(args: RunArgs, json: bool) -> anyhow::Result<ExitCode> {
    let workflow = workflow::load(&args.file)?;
    let selector = selector(&args)?;
    let flags = &args.targets.job;
    let mut spec = target::job_spec(&selector, workflow.steps, flags, &args.queue);
    spec.name = workflow.name;
    spec.batch = flags.batch.or(workflow.batch);
    spec.fail_fast = flags.fail_fast || workflow.fail_fast;
    let options = JobOptions {
        group: flags.group,
        detach: args.queue.detach,
        json,
    };
    let key = args.queue.idempotency_key.clone();
    job_follow::run_job(&args.conn, spec, options, key).await
}

/// A workflow always runs as a job, even on one agent named plainly.
fn selector(args: &RunArgs) -> anyhow::Result<Selector> {
    Ok(match args.targets.resolve()? {
        Target::Selector(selector) => selector,
        Target::Agent(agent) => target::selector(agent.as_str())?,
    })
}
