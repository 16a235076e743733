//! Presenting a followed job: what a `JobFollower` delivers, written to the
//! terminal.
//!
//! Each run's output is printed line by line with its agent's name before
//! it, or held for one block per run with `--group`. A run that did not
//! simply exit gets a note saying how it ended, and so does a step that
//! failed when its target went on anyway. On a terminal a status line with
//! the job's counts is kept on stderr, cleared before anything else is
//! written there (reconnect warnings included). At the end the summary table
//! goes to stderr, or with `--json` the final `JobInfo` to stdout.

use std::collections::HashMap;
use std::io::{self, IsTerminal};
use std::process::ExitCode;

use anyhow::Context;
use muster_client::{FollowError, JobEvent, JobFollowEvent, JobFollower, StepOutput, StepRef};
use muster_proto::jobs::{JobInfo, JobProgress};
use muster_proto::{JobId, OutputStream, RunId, RunInfo, RunState};

use super::screen::Screen;
use super::tracks::{RunTrack, outcome, step_outcome};
use super::{JobOptions, job_exit};
use crate::cli::cancel::{Cancel, Interrupts, cancel_in_background};
use crate::cli::exit::EXIT_CANCELLED;
use crate::cli::{jobs, output};

/// The display of one job being followed.
pub(super) struct JobView {
    job: JobId,
    options: JobOptions,
    interrupts: Interrupts,
    /// Target counts, as the last `job.progress` gave them.
    progress: JobProgress,
    /// Output not printed yet, by run; a run's entry goes when it ends.
    runs: HashMap<RunId, RunTrack>,
    screen: Screen<tokio::io::Stdout, tokio::io::Stderr>,
}

impl JobView {
    /// The display of `job`, as `job.create` returned it (its targets give
    /// the width of the name column).
    pub(super) fn new(job: &JobInfo, options: JobOptions, interrupts: Interrupts) -> Self {
        let width = job
            .targets
            .iter()
            .map(|t| t.agent.as_str().chars().count())
            .max()
            .unwrap_or(0);
        let tty = !options.json && std::io::stderr().is_terminal();
        Self {
            job: job.id,
            options,
            interrupts,
            progress: job.progress,
            runs: HashMap::new(),
            screen: Screen::new(width, tty),
        }
    }

    /// Presents what `follower` delivers until the job is over; prints the
    /// outcome and returns the exit code.
    pub(super) async fn follow(mut self, mut follower: JobFollower) -> anyhow::Result<ExitCode> {
        if self.interrupts.count > 0 {
            cancel_in_background(follower.clients(), Cancel::Job(self.job));
        }
        loop {
            // Only the receive is raced with Ctrl-C: an event is handled to
            // the end, so no output is half written.
            let item = tokio::select! {
                item = follower.next() => item,
                count = self.interrupts.recv() => {
                    if count > 1 {
                        return self.abort().await;
                    }
                    self.on_interrupt(&follower).await?;
                    continue;
                }
            };
            let event = match item {
                Some(Ok(event)) => event,
                Some(Err(err)) => {
                    self.screen.clear_status().await?;
                    return Err(follow_error(self.job, err));
                }
                None => {
                    self.screen.clear_status().await?;
                    anyhow::bail!("stopped following job {} before it ended", self.job)
                }
            };
            match event {
                JobFollowEvent::Finished(job) => {
                    follower.close().await;
                    return self.finish(&job).await;
                }
                // Reconnect warnings follow on stderr: no status line until
                // the next event.
                JobFollowEvent::Reconnecting { .. } => self.screen.clear_status().await?,
                event => {
                    self.on_event(event).await.context("writing output")?;
                    self.show_status().await.context("writing output")?;
                }
            }
        }
    }

    /// Handles one event of the job or of a step's run.
    async fn on_event(&mut self, event: JobFollowEvent) -> io::Result<()> {
        match event {
            JobFollowEvent::Job(event) => self.on_job_event(event).await?,
            JobFollowEvent::Output(output) => self.on_output(output).await?,
            JobFollowEvent::OutputTruncated(step) => {
                let note = "output was cut at the hub's per-run cap";
                self.screen.note(step.agent.as_str(), note).await?;
            }
            JobFollowEvent::RunEnded { step, run } => self.run_over(&step, Some(&run)).await?,
            JobFollowEvent::RunUnavailable { step, reason } => {
                let note = format!("cannot follow the output of run {}: {reason}", step.run);
                self.screen.note(step.agent.as_str(), &note).await?;
                self.run_over(&step, None).await?;
            }
            JobFollowEvent::Reconnecting { .. } | JobFollowEvent::Finished(_) => {}
        }
        Ok(())
    }

    /// An event on the job's channel: counts for the status line, and what
    /// the output does not show.
    async fn on_job_event(&mut self, event: JobEvent) -> io::Result<()> {
        match event {
            JobEvent::Progress(event) => self.progress = event.progress,
            JobEvent::StepProgress(event) if !self.options.json => {
                let agent = event.agent.as_str();
                self.screen.event(agent, &event.kind, &event.data).await?;
            }
            JobEvent::StepFailed(event) if event.continued && !self.options.json => {
                // The summary shows only how the target ended: say which step
                // failed on the way.
                let note = format!(
                    "step {:?} failed ({}); continuing, as the step allows",
                    event.name,
                    step_outcome(&event)
                );
                self.screen.note(event.agent.as_str(), &note).await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// A chunk of a step's output: printed line by line (or held for its
    /// block with `--group`).
    async fn on_output(&mut self, output: StepOutput) -> io::Result<()> {
        let track = self.runs.entry(output.step.run).or_default();
        track.push(output.stream, &output.payload);
        if self.options.group {
            return Ok(());
        }
        let lines = track.take_lines(output.stream);
        let agent = output.step.agent.as_str();
        self.screen.lines(agent, output.stream, &lines).await
    }

    /// A run ended after all of its output (`info`), or its output cannot be
    /// followed (`None`): prints what is left of it, its block with
    /// `--group`, and how it ended if it did not simply exit.
    async fn run_over(&mut self, step: &StepRef, info: Option<&RunInfo>) -> io::Result<()> {
        let mut track = self.runs.remove(&step.run).unwrap_or_default();
        let out = track.take_all(OutputStream::Stdout);
        let err = track.take_all(OutputStream::Stderr);
        let agent = step.agent.as_str();
        let name = &step.name;
        let ended = info.map_or_else(|| "ended".to_owned(), outcome);
        if self.options.group {
            let header = format!("{agent} · step {name:?} · {ended}");
            return self.screen.block(&header, &out, &err).await;
        }
        self.screen.lines(agent, OutputStream::Stdout, &out).await?;
        self.screen.lines(agent, OutputStream::Stderr, &err).await?;
        if let Some(info) = info
            && info.state != RunState::Completed
        {
            let note = format!("step {name:?} {ended}");
            self.screen.note(agent, &note).await?;
        }
        Ok(())
    }

    /// First Ctrl-C: cancel the job and keep following it.
    async fn on_interrupt(&mut self, follower: &JobFollower) -> anyhow::Result<()> {
        self.screen.clear_status().await?;
        eprintln!(
            "muster: cancelling job {}; press Ctrl-C again to stop waiting",
            self.job
        );
        cancel_in_background(follower.clients(), Cancel::Job(self.job));
        Ok(())
    }

    /// Redraws the status line (on a terminal).
    async fn show_status(&mut self) -> io::Result<()> {
        let text = status_text(self.job, &self.progress);
        self.screen.status(&text).await
    }

    /// Prints the outcome — the summary, or the job as JSON — and returns the
    /// exit code.
    async fn finish(&mut self, job: &JobInfo) -> anyhow::Result<ExitCode> {
        self.screen.clear_status().await?;
        if self.options.json {
            output::print_json(job)?;
        } else {
            eprint!("{}", jobs::summary(job));
        }
        if self.interrupts.count > 0 {
            return Ok(ExitCode::from(EXIT_CANCELLED));
        }
        Ok(ExitCode::from(job_exit(job.state)))
    }

    /// A second Ctrl-C: stop now.
    async fn abort(&mut self) -> anyhow::Result<ExitCode> {
        self.screen.clear_status().await?;
        Ok(ExitCode::from(EXIT_CANCELLED))
    }
}

/// Why following stopped, as a line for stderr; an unknown job is named.
fn follow_error(job: JobId, err: FollowError) -> anyhow::Error {
    match err {
        FollowError::Client(err) => jobs::job_error(job)(err),
        other => other.into(),
    }
}

/// The live status line: `job 01J… 3/5 done · 1 running · 1 queued · 1 failed`.
fn status_text(job: JobId, progress: &JobProgress) -> String {
    format!("job {job} {}", jobs::counts(progress))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_names_only_what_is_there() {
        let job: JobId = "01JD3X0000000000000000000A".parse().unwrap();
        let progress = JobProgress {
            total: 5,
            running: 1,
            queued: 1,
            succeeded: 2,
            failed: 1,
            ..JobProgress::default()
        };
        assert_eq!(
            status_text(job, &progress),
            format!("job {job} 3/5 done · 1 running · 1 queued · 1 failed")
        );
    }
}
