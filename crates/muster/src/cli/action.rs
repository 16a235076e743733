//! `muster action TARGET NAME [KEY=VALUE…]`: invoke an action an agent
//! declares, with its parameters. On one plainly named agent it behaves like
//! `muster run` (output streamed, the exit code passed on, 126 when the agent
//! rejects the call); on a selector (or with `-l SELECTOR`) it is a job.

use std::collections::BTreeMap;
use std::process::ExitCode;

use muster_proto::CommandSpec;
use muster_proto::actions::ActionCall;

use super::run::{Invocation, RunFlags};
use super::target::{self, JobFlags, QueueFlags, Target};
use super::{HubConn, parse};

/// Arguments of `muster action`.
#[derive(Debug, clap::Args)]
pub(crate) struct ActionArgs {
    #[command(flatten)]
    conn: HubConn,
    #[command(flatten)]
    job: JobFlags,
    #[command(flatten)]
    queue: QueueFlags,
    #[command(flatten)]
    run: RunFlags,
    /// TARGET (a plain agent name, or a selector for a job; left out with
    /// -l), then the action's NAME, then its parameters as KEY=VALUE.
    #[arg(required = true, value_name = "WORDS")]
    words: Vec<String>,
}

/// Runs `muster action`.
pub(crate) async fn action(args: ActionArgs, json: bool) -> anyhow::Result<ExitCode> {
    let (target, call) = args.call()?;
    let invocation = Invocation {
        conn: &args.conn,
        job: &args.job,
        queue: &args.queue,
        run: &args.run,
        step_name: call.name.clone(),
        command: CommandSpec::Action(call),
        env: BTreeMap::new(),
        cwd: None,
    };
    invocation.execute(target, json).await
}

impl ActionArgs {
    /// Splits the words into the target, the action's name and its parameters.
    fn call(&self) -> anyhow::Result<(Target, ActionCall)> {
        let mut words = self.words.iter();
        let target = match &self.job.selector {
            Some(text) => Target::Selector(target::selector(text)?),
            None => target::target(words.next().map_or("", String::as_str))?,
        };
        let name = match words.next() {
            Some(name) if !name.contains('=') => name.clone(),
            _ => target::usage_error("give the action's NAME before its KEY=VALUE parameters"),
        };
        let mut params = BTreeMap::new();
        for word in words {
            let (key, value) = parse::key_value(word).unwrap_or_else(|e| target::usage_error(&e));
            if params.insert(key.clone(), value).is_some() {
                target::usage_error(&format!("parameter {key:?} is given twice"));
            }
        }
        Ok((target, ActionCall { name, params }))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Harness {
        #[command(flatten)]
        action: ActionArgs,
    }

    fn call(words: &[&str]) -> (Target, ActionCall) {
        let base = ["muster-action", "--hub", "http://h:1", "--token", "t"];
        let args = Harness::try_parse_from(base.iter().chain(words))
            .unwrap()
            .action;
        args.call().unwrap()
    }

    #[test]
    fn the_first_word_is_the_target_unless_a_selector_is_given() {
        let (target, action) = call(&["web-1", "create_site", "domain=example.com", "cache=true"]);
        assert!(matches!(target, Target::Agent(a) if a.as_str() == "web-1"));
        assert_eq!(action.name, "create_site");
        assert_eq!(
            action.display(),
            "create_site cache=true domain=example.com"
        );
        let (target, action) = call(&["-l", "role=web", "create_site", "domain=a.b"]);
        assert!(matches!(target, Target::Selector(s) if s.as_str() == "role=web"));
        assert_eq!(action.params.len(), 1);
        let (target, _) = call(&["web-*", "restart"]);
        assert!(matches!(target, Target::Selector(_)));
    }
}
