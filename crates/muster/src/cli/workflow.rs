//! Workflow files for `muster job run`: a TOML list of steps every target
//! runs in order.
//!
//! ```toml
//! name = "deploy"                  # optional
//! batch = "2"                      # optional: "N" or "N%" (flags override)
//! fail_fast = false                # optional (--fail-fast overrides)
//!
//! [[steps]]
//! name = "fetch"
//! command = ["git", "pull"]        # an argv; or shell = "…"; or action = "…"
//! timeout = "2m"                   # optional
//! continue_on_failure = false      # optional
//! env = { KEY = "v" }              # optional
//! cwd = "/srv"                     # optional
//!
//! [[steps]]
//! name = "site"
//! action = "create_site"
//! params = { domain = "example.com", cache = true }
//! ```
//!
//! Unknown keys are errors. Each step has exactly one of `command` (run
//! without a shell), `shell` (run by `/bin/sh -c`) or `action` (a declared
//! action, with `params` whose values may be strings, integers or booleans and
//! are sent as strings). Every error names the file and, for a step, its
//! number (from 1) and name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::Context;
use muster_proto::CommandSpec;
use muster_proto::actions::ActionCall;
use muster_proto::jobs::{BatchSize, StepSpec};
use serde::Deserialize;

use super::parse;
use super::target::millis;

/// A workflow as its file describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Workflow {
    /// The job's name.
    pub(crate) name: Option<String>,
    /// Targets in progress at once, unless `--batch` says otherwise.
    pub(crate) batch: Option<BatchSize>,
    /// Stop starting targets after a failure (`--fail-fast` turns it on too).
    pub(crate) fail_fast: bool,
    /// The steps, in order.
    pub(crate) steps: Vec<StepSpec>,
}

/// The top level of a workflow file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    name: Option<String>,
    batch: Option<toml::Value>,
    #[serde(default)]
    fail_fast: bool,
    #[serde(default)]
    steps: Vec<toml::Table>,
}

/// One `[[steps]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    name: String,
    command: Option<Vec<String>>,
    shell: Option<String>,
    action: Option<String>,
    params: Option<BTreeMap<String, toml::Value>>,
    timeout: Option<String>,
    #[serde(default)]
    continue_on_failure: bool,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<String>,
}

/// Reads and checks the workflow file at `path`.
pub(crate) fn load(path: &Path) -> anyhow::Result<Workflow> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read workflow {}", path.display()))?;
    parse(&text, &path.display().to_string()).map_err(anyhow::Error::msg)
}

/// Parses a workflow; `file` names it in errors.
pub(crate) fn parse(text: &str, file: &str) -> Result<Workflow, String> {
    let spec: FileSpec = toml::from_str(text).map_err(|e| format!("{file}: {e}"))?;
    let batch = match &spec.batch {
        Some(value) => Some(batch(value).map_err(|e| format!("{file}: batch: {e}"))?),
        None => None,
    };
    if spec.steps.is_empty() {
        return Err(format!(
            "{file}: no steps: add at least one [[steps]] table"
        ));
    }
    let mut names = BTreeSet::new();
    let mut steps = Vec::with_capacity(spec.steps.len());
    for (i, table) in spec.steps.into_iter().enumerate() {
        let step = step(table).map_err(|(name, e)| match name {
            Some(name) => format!("{file}: step {} {name:?}: {e}", i + 1),
            None => format!("{file}: step {}: {e}", i + 1),
        })?;
        if !names.insert(step.name.clone()) {
            return Err(format!(
                "{file}: step {} {:?}: another step has this name",
                i + 1,
                step.name
            ));
        }
        steps.push(step);
    }
    Ok(Workflow {
        name: spec.name,
        batch,
        fail_fast: spec.fail_fast,
        steps,
    })
}

/// `batch = "2"`, `"25%"` or `2`.
fn batch(value: &toml::Value) -> Result<BatchSize, String> {
    match value {
        toml::Value::String(text) => text.parse(),
        toml::Value::Integer(n) => n.to_string().parse(),
        _ => Err("use a count like \"2\" or a percentage like \"25%\"".to_owned()),
    }
}

/// Checks one step table; an error comes with the step's name, if it has one.
fn step(table: toml::Table) -> Result<StepSpec, (Option<String>, String)> {
    let name = table
        .get("name")
        .and_then(toml::Value::as_str)
        .map(str::to_owned);
    let fail = |e: String| (name.clone(), e);
    let file: StepFile = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| fail(e.message().to_owned()))?;
    let timeout_ms = match &file.timeout {
        Some(text) => Some(millis(
            parse::duration(text).map_err(|e| fail(format!("timeout: {e}")))?,
        )),
        None => None,
    };
    let command = command(&file).map_err(fail)?;
    Ok(StepSpec {
        name: file.name,
        command,
        env: file.env,
        cwd: file.cwd,
        timeout_ms,
        continue_on_failure: file.continue_on_failure,
    })
}

/// The step's `command`, `shell` or `action` (exactly one).
fn command(file: &StepFile) -> Result<CommandSpec, String> {
    let command = match (&file.command, &file.shell, &file.action) {
        (Some(argv), None, None) => CommandSpec::Argv(argv.clone()),
        (None, Some(shell), None) => CommandSpec::Shell(shell.clone()),
        (None, None, Some(action)) => CommandSpec::Action(ActionCall {
            name: action.clone(),
            params: params(file.params.as_ref())?,
        }),
        _ => return Err("give exactly one of command, shell or action".to_owned()),
    };
    if file.params.is_some() && !matches!(command, CommandSpec::Action(_)) {
        return Err("params go with action".to_owned());
    }
    command.validate().map_err(str::to_owned)?;
    Ok(command)
}

/// Action parameters as the strings they travel as.
fn params(
    params: Option<&BTreeMap<String, toml::Value>>,
) -> Result<BTreeMap<String, String>, String> {
    let Some(params) = params else {
        return Ok(BTreeMap::new());
    };
    params
        .iter()
        .map(|(key, value)| {
            let text = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                _ => {
                    return Err(format!(
                        "params.{key}: use a string, an integer or a boolean"
                    ));
                }
            };
            Ok((key.clone(), text))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Result<Workflow, String> {
        parse(text, "wf.toml")
    }

    #[test]
    fn the_shipped_example_parses() {
        let example = include_str!("../../../../examples/workflow.toml");
        let workflow = parse(example, "examples/workflow.toml").unwrap();
        assert_eq!(workflow.steps.len(), 3);
    }

    #[test]
    fn every_kind_of_step_and_option_is_read() {
        let workflow = parsed(
            r#"
            name = "deploy"
            batch = "25%"
            fail_fast = true
            [[steps]]
            name = "fetch"
            command = ["git", "pull"]
            timeout = "2m"
            env = { A = "1" }
            cwd = "/srv"
            [[steps]]
            name = "build"
            shell = "make build && make test"
            continue_on_failure = true
            [[steps]]
            name = "site"
            action = "create_site"
            params = { domain = "example.com", cache = true, workers = 4 }
            "#,
        )
        .unwrap();
        assert_eq!(workflow.name.as_deref(), Some("deploy"));
        assert_eq!(workflow.batch, Some(BatchSize::Percent(25)));
        assert!(workflow.fail_fast);
        let [fetch, build, site] = &workflow.steps[..] else {
            panic!("three steps")
        };
        assert_eq!(
            fetch.command,
            CommandSpec::Argv(vec!["git".into(), "pull".into()])
        );
        assert_eq!(fetch.timeout_ms, Some(120_000));
        assert_eq!(fetch.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(fetch.cwd.as_deref(), Some("/srv"));
        assert_eq!(
            build.command,
            CommandSpec::Shell("make build && make test".into())
        );
        assert!(build.continue_on_failure && !fetch.continue_on_failure);
        let CommandSpec::Action(call) = &site.command else {
            panic!("an action")
        };
        assert_eq!(call.name, "create_site");
        let params: Vec<_> = call
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(params, ["cache=true", "domain=example.com", "workers=4"]);
    }

    #[test]
    fn batch_may_be_a_plain_integer() {
        let workflow = parsed("batch = 2\n[[steps]]\nname = \"a\"\nshell = \"true\"\n").unwrap();
        assert_eq!(workflow.batch, Some(BatchSize::Count(2)));
    }

    #[test]
    fn errors_name_the_file_and_the_step() {
        let two_kinds = "[[steps]]\nname = \"ok\"\nshell = \"true\"\n\
                         [[steps]]\nname = \"build\"\nshell = \"make\"\ncommand = [\"make\"]\n";
        assert_eq!(
            parsed(two_kinds).unwrap_err(),
            "wf.toml: step 2 \"build\": give exactly one of command, shell or action"
        );
        let unknown = "[[steps]]\nname = \"fetch\"\ncomand = [\"git\"]\n";
        let err = parsed(unknown).unwrap_err();
        assert!(
            err.starts_with("wf.toml: step 1 \"fetch\": unknown field `comand`"),
            "{err}"
        );
        let nameless = "[[steps]]\nshell = \"true\"\n";
        let err = parsed(nameless).unwrap_err();
        assert!(
            err.starts_with("wf.toml: step 1: missing field `name`"),
            "{err}"
        );
        let top = "nmae = \"x\"\n[[steps]]\nname = \"a\"\nshell = \"true\"\n";
        let err = parsed(top).unwrap_err();
        assert!(
            err.starts_with("wf.toml: ") && err.contains("unknown field `nmae`"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_are_refused() {
        let cases = [
            ("", "wf.toml: no steps: add at least one [[steps]] table"),
            (
                "batch = \"0\"\n[[steps]]\nname = \"a\"\nshell = \"true\"\n",
                "wf.toml: batch: batch must be at least 1",
            ),
            (
                "[[steps]]\nname = \"a\"\nshell = \"true\"\ntimeout = \"soon\"\n",
                "wf.toml: step 1 \"a\": timeout: ",
            ),
            (
                "[[steps]]\nname = \"a\"\nshell = \"true\"\nparams = { x = 1 }\n",
                "wf.toml: step 1 \"a\": params go with action",
            ),
            (
                "[[steps]]\nname = \"a\"\naction = \"x\"\nparams = { x = [1] }\n",
                "wf.toml: step 1 \"a\": params.x: use a string, an integer or a boolean",
            ),
            (
                "[[steps]]\nname = \"a\"\ncommand = []\n",
                "wf.toml: step 1 \"a\": argv must not be empty",
            ),
            (
                "[[steps]]\nname = \"a\"\nshell = \"x\"\n[[steps]]\nname = \"a\"\nshell = \"y\"\n",
                "wf.toml: step 2 \"a\": another step has this name",
            ),
        ];
        for (text, expected) in cases {
            let err = parsed(text).unwrap_err();
            assert!(err.starts_with(expected), "{text:?}: {err}");
        }
    }
}
