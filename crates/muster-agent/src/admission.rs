//! Which `run.start` may execute: a declared action with valid parameters,
//! turned into its argument vector, or a raw command when the agent allows
//! them. Everything else is refused before the ledger or a process sees it.

use std::time::Duration;

use muster_proto::actions::ExecMode;
use muster_proto::messages::RunStart;
use muster_proto::{CommandSpec, ErrorCode};

use crate::actions::{ActionSet, Refusal};

/// The message of a raw command refused by an actions-only agent.
pub(crate) const COMMANDS_DISABLED: &str = "this agent runs declared actions only \
     (exec = \"actions-only\"); raw commands are refused";

/// The agent's execution policy.
#[derive(Clone, Debug, Default)]
pub(crate) struct Admission {
    exec: ExecMode,
    actions: ActionSet,
}

impl Admission {
    /// The policy of an agent with `exec` mode and `actions`.
    pub(crate) fn new(exec: ExecMode, actions: ActionSet) -> Self {
        Self { exec, actions }
    }

    /// Admits `start`, replacing an action by its argument vector and
    /// applying the action's time limit, or says why it must not run.
    pub(crate) fn admit(&self, start: &mut RunStart) -> Result<(), Refusal> {
        let CommandSpec::Action(call) = &start.command else {
            return match self.exec {
                ExecMode::Any => Ok(()),
                ExecMode::ActionsOnly => Err(Refusal {
                    code: ErrorCode::CommandsDisabled,
                    message: COMMANDS_DISABLED.to_owned(),
                }),
            };
        };
        no_caller_environment(start)?;
        let resolved = self.actions.resolve(call)?;
        start.command = CommandSpec::Argv(resolved.argv);
        start.timeout_ms = shorter(start.timeout_ms, resolved.timeout);
        Ok(())
    }
}

/// Refuses an action run that brings environment variables or a working
/// directory: only the declared parameters reach an action, since variables
/// such as `PATH`, `LD_PRELOAD` or `BASH_ENV` would change what it executes.
fn no_caller_environment(start: &RunStart) -> Result<(), Refusal> {
    let refuse = |what: String| Refusal {
        code: ErrorCode::InvalidParams,
        message: format!("{what}; an action takes its declared parameters only"),
    };
    if let Some(key) = start.env.keys().next() {
        return Err(refuse(format!(
            "an action run cannot set environment variables (got {key:?})"
        )));
    }
    if start.cwd.is_some() {
        return Err(refuse(
            "an action run cannot set a working directory".to_owned(),
        ));
    }
    Ok(())
}

/// The smaller of the run's timeout and the action's, in milliseconds.
fn shorter(run_ms: Option<u64>, action: Option<Duration>) -> Option<u64> {
    let action_ms = action.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
    match (run_ms, action_ms) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use muster_proto::RunId;
    use muster_proto::actions::ActionCall;

    use super::*;
    use crate::AgentConfig;

    const CONFIG: &str = r#"
        [actions.greet]
        argv = ["/bin/echo", "hello", "{who}"]
        timeout = "10s"
        [actions.greet.params.who]
        type = "string"
        pattern = "[a-z]+"
    "#;

    fn admission(exec: ExecMode) -> Admission {
        let config = AgentConfig::from_toml(CONFIG).unwrap();
        Admission::new(exec, config.actions)
    }

    fn start(command: CommandSpec, timeout_ms: Option<u64>) -> RunStart {
        RunStart {
            run: RunId::generate(),
            command,
            env: BTreeMap::new(),
            cwd: None,
            timeout_ms,
            kill_grace_ms: 500,
            output_cap_bytes: 1024,
            session: None,
        }
    }

    fn greet(who: &str) -> CommandSpec {
        CommandSpec::Action(ActionCall {
            name: "greet".into(),
            params: BTreeMap::from([("who".into(), who.into())]),
        })
    }

    #[test]
    fn an_action_becomes_its_argv_with_the_shorter_timeout() {
        let admission = admission(ExecMode::Any);
        for (run_timeout, expected) in
            [(None, 10_000), (Some(3_000), 3_000), (Some(60_000), 10_000)]
        {
            let mut start = start(greet("world"), run_timeout);
            admission.admit(&mut start).unwrap();
            let argv = ["/bin/echo", "hello", "world"].map(String::from).to_vec();
            assert_eq!(start.command, CommandSpec::Argv(argv));
            assert_eq!(start.timeout_ms, Some(expected));
        }
    }

    #[test]
    fn raw_commands_run_only_when_the_agent_allows_them() {
        let shell = CommandSpec::Shell("id".into());
        let mut allowed = start(shell.clone(), None);
        admission(ExecMode::Any).admit(&mut allowed).unwrap();
        assert_eq!(allowed.command, shell);
        for command in [shell, CommandSpec::Argv(vec!["id".into()])] {
            let refusal = admission(ExecMode::ActionsOnly)
                .admit(&mut start(command, None))
                .unwrap_err();
            assert_eq!(refusal.code, ErrorCode::CommandsDisabled);
            assert_eq!(refusal.message, COMMANDS_DISABLED);
        }
        let mut action = start(greet("world"), None);
        admission(ExecMode::ActionsOnly).admit(&mut action).unwrap();
    }

    #[test]
    fn an_action_refuses_caller_environment_and_cwd() {
        let admission = admission(ExecMode::Any);
        let mut with_env = start(greet("world"), None);
        with_env.env.insert("BASH_ENV".into(), "/tmp/x".into());
        let refusal = admission.admit(&mut with_env).unwrap_err();
        assert_eq!(refusal.code, ErrorCode::InvalidParams);
        assert!(
            refusal.message.contains("\"BASH_ENV\""),
            "{}",
            refusal.message
        );
        let mut with_cwd = start(greet("world"), None);
        with_cwd.cwd = Some("/tmp".into());
        let refusal = admission.admit(&mut with_cwd).unwrap_err();
        assert!(
            refusal.message.contains("working directory"),
            "{}",
            refusal.message
        );
    }

    #[test]
    fn a_refused_action_is_left_unresolved() {
        let mut bad = start(greet("World"), None);
        let refusal = admission(ExecMode::Any).admit(&mut bad).unwrap_err();
        assert_eq!(refusal.code, ErrorCode::InvalidParams);
        assert_eq!(bad.command, greet("World"));
    }
}
