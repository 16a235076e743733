//! Declared actions: the operations this agent's owner allows, each a fixed
//! argument vector template with typed parameters.
//!
//! The agent is the trust boundary. A caller names an action and gives
//! parameter values as strings; [`ActionSet::resolve`] refuses an unknown
//! action, an unknown or missing parameter, and any value that breaks its
//! parameter's rule, and otherwise substitutes the checked values into the
//! template, element by element, without a shell: a value with spaces or `;`
//! stays one argument. No value ever contains a control character.
//!
//! An [`ActionSet`] is built from [`ActionConfig`]s (the `[actions.NAME]`
//! tables of the agent's config file) by [`ActionSet::new`], which checks the
//! whole declaration up front: names, the template's placeholders and braces,
//! patterns, bounds, roots and defaults.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{anyhow, bail};
use muster_proto::ErrorCode;
use muster_proto::actions::{ActionCall, ActionInfo, ParamInfo};

pub use self::config::{ActionConfig, ParamConfig, ParamType};
pub use self::rules::DEFAULT_MAX_LEN;
use self::rules::Rule;
use self::template::Template;

mod config;
mod path;
mod rules;
mod template;
#[cfg(test)]
mod tests;

/// How many characters of a refused value a message repeats.
const SHOWN_VALUE_CHARS: usize = 64;

/// The actions an agent declares; empty by default.
#[derive(Clone, Debug, Default)]
pub struct ActionSet {
    actions: BTreeMap<String, Action>,
}

/// An action call turned into what to execute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The argument vector, `argv[0]` being the program.
    pub argv: Vec<String>,
    /// The action's own time limit, if it has one.
    pub timeout: Option<Duration>,
}

/// Why a call was refused: nothing runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// `UNKNOWN_ACTION`, `INVALID_PARAMS` or `COMMANDS_DISABLED`.
    pub code: ErrorCode,
    /// Names the action or parameter and the rule broken; values are
    /// shortened and escaped.
    pub message: String,
}

impl Refusal {
    /// A refusal for a parameter problem.
    fn invalid(message: String) -> Self {
        Self {
            code: ErrorCode::InvalidParams,
            message,
        }
    }
}

/// One validated action.
#[derive(Clone, Debug)]
struct Action {
    name: String,
    description: Option<String>,
    params: Vec<Param>,
    template: Template,
    timeout: Option<Duration>,
}

/// One validated parameter.
#[derive(Clone, Debug)]
struct Param {
    name: String,
    description: Option<String>,
    rule: Rule,
    default: Option<String>,
}

impl ActionSet {
    /// Validates and compiles declared actions; the error names the action
    /// (and parameter) and what is wrong with it.
    pub fn new(configs: BTreeMap<String, ActionConfig>) -> anyhow::Result<Self> {
        let actions = configs
            .into_iter()
            .map(|(name, config)| {
                let action =
                    Action::compile(&name, config).map_err(|e| anyhow!("action {name:?}: {e}"))?;
                Ok((name, action))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { actions })
    }

    /// Whether no action is declared.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// The declared names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.actions.keys().map(String::as_str)
    }

    /// The actions as advertised in `hello`, sorted by name.
    pub fn info(&self) -> Vec<ActionInfo> {
        self.actions.values().map(Action::info).collect()
    }

    /// Checks `call` against its action and builds the argument vector.
    pub fn resolve(&self, call: &ActionCall) -> Result<Resolved, Refusal> {
        let Some(action) = self.actions.get(&call.name) else {
            return Err(self.unknown(&call.name));
        };
        action.resolve(call)
    }

    /// The refusal of a call of an undeclared action.
    fn unknown(&self, name: &str) -> Refusal {
        let declared = match self.is_empty() {
            true => "none".to_owned(),
            false => self.names().collect::<Vec<_>>().join(", "),
        };
        Refusal {
            code: ErrorCode::UnknownAction,
            message: format!(
                "no action {} on this agent; it declares: {declared}",
                shown(name)
            ),
        }
    }
}

impl Action {
    /// Validates one declared action.
    fn compile(name: &str, config: ActionConfig) -> anyhow::Result<Self> {
        if !is_name(name) {
            bail!("invalid action name: use [a-z][a-z0-9_]*");
        }
        let params = config
            .params
            .into_iter()
            .map(|(name, config)| {
                Param::compile(&name, config).map_err(|e| anyhow!("parameter {name:?}: {e}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let template = Template::parse(&config.argv).map_err(|e| anyhow!(e))?;
        check_argv(&config.argv, &template, &params)?;
        Ok(Self {
            name: name.to_owned(),
            description: config.description,
            params,
            template,
            timeout: config.timeout.as_deref().map(parse_timeout).transpose()?,
        })
    }

    /// The action as advertised in `hello`.
    fn info(&self) -> ActionInfo {
        ActionInfo {
            name: self.name.clone(),
            description: self.description.clone(),
            params: self.params.iter().map(Param::info).collect(),
            timeout_ms: self
                .timeout
                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        }
    }

    /// Checks the call's parameters and renders the template.
    fn resolve(&self, call: &ActionCall) -> Result<Resolved, Refusal> {
        if let Some(unknown) = call.params.keys().find(|key| !self.declares(key)) {
            return Err(Refusal::invalid(format!(
                "unknown parameter {} ({} takes: {})",
                shown(unknown),
                self.name,
                self.param_names()
            )));
        }
        let values = self
            .params
            .iter()
            .map(|param| {
                Ok((
                    param.name.as_str(),
                    param.value(call.params.get(&param.name))?,
                ))
            })
            .collect::<Result<HashMap<_, _>, Refusal>>()?;
        Ok(Resolved {
            argv: self.template.render(&values),
            timeout: self.timeout,
        })
    }

    /// Whether the action has a parameter `name`.
    fn declares(&self, name: &str) -> bool {
        self.params.iter().any(|p| p.name == name)
    }

    /// The parameter names in declaration order, for messages.
    fn param_names(&self) -> String {
        match self.params.is_empty() {
            true => "no parameters".to_owned(),
            false => self
                .params
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

impl Param {
    /// Validates one declared parameter, its default included.
    fn compile(name: &str, config: ParamConfig) -> Result<Self, String> {
        if !is_name(name) {
            return Err("invalid parameter name: use [a-z][a-z0-9_]*".into());
        }
        let rule = Rule::compile(&config)?;
        match (config.required, &config.default) {
            (Some(true), Some(_)) => {
                return Err("has a default, so it cannot be required".into());
            }
            (Some(false), None) => {
                return Err("is optional (required = false) but has no default".into());
            }
            (_, Some(default)) => {
                rule.check(default)
                    .map_err(|e| format!("default {} {e}", shown(default)))?;
            }
            _ => {}
        }
        Ok(Self {
            name: name.to_owned(),
            description: config.description,
            rule,
            default: config.default,
        })
    }

    /// The parameter as advertised in `hello`.
    fn info(&self) -> ParamInfo {
        ParamInfo {
            name: self.name.clone(),
            kind: self.rule.kind(),
            required: self.default.is_none(),
            default: self.default.clone(),
            description: self.description.clone(),
        }
    }

    /// The checked argument text for the value a call gave, or the default.
    fn value(&self, given: Option<&String>) -> Result<String, Refusal> {
        let Some(value) = given.or(self.default.as_ref()) else {
            return Err(Refusal::invalid(format!(
                "parameter {:?} is required ({})",
                self.name,
                self.rule.kind().describe()
            )));
        };
        self.rule.check(value).map_err(|problem| {
            Refusal::invalid(format!(
                "parameter {:?}: {} {problem}",
                self.name,
                shown(value)
            ))
        })
    }
}

/// Checks the template against the parameters: `argv[0]` a literal program,
/// every placeholder declared, every parameter used.
fn check_argv(argv: &[String], template: &Template, params: &[Param]) -> anyhow::Result<()> {
    let Some(program) = argv.first() else {
        bail!("argv is empty: it needs at least the program");
    };
    if template.params_of(0).next().is_some() || program.contains(['{', '}']) {
        bail!("argv[0] must be a literal program, without placeholders or braces");
    }
    if program.is_empty() || (program.contains('/') && !program.starts_with('/')) {
        bail!("argv[0] {program:?} must be an absolute path or a bare program name");
    }
    for i in 1..template.len() {
        if let Some(name) = template
            .params_of(i)
            .find(|n| !params.iter().any(|p| p.name == *n))
        {
            bail!("argv[{i}] refers to {{{name}}}, which is not a declared parameter");
        }
    }
    let used = |name: &str| (1..template.len()).any(|i| template.params_of(i).any(|n| n == name));
    if let Some(unused) = params.iter().find(|p| !used(&p.name)) {
        bail!("parameter {:?} is not used in argv", unused.name);
    }
    Ok(())
}

/// An action's `timeout`: a `humantime` duration above zero.
fn parse_timeout(text: &str) -> anyhow::Result<Duration> {
    let timeout = humantime::parse_duration(text)
        .map_err(|e| anyhow!("timeout {text:?} is not a duration (such as 90s or 10m): {e}"))?;
    if timeout.is_zero() {
        bail!("timeout must be more than zero");
    }
    Ok(timeout)
}

/// Whether `name` is a valid action or parameter name: `[a-z][a-z0-9_]*`.
pub(crate) fn is_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A value for a message: at most [`SHOWN_VALUE_CHARS`] characters, quoted
/// and escaped.
fn shown(value: &str) -> String {
    match value.char_indices().nth(SHOWN_VALUE_CHARS) {
        Some((end, _)) => format!("{:?}", format!("{}…", &value[..end])),
        None => format!("{value:?}"),
    }
}
