//! Declared actions: config validation, resolution of calls, and the path rule
//! on a real directory tree.

use std::collections::BTreeMap;

use muster_proto::ErrorCode;
use muster_proto::actions::ActionCall;

use super::{ActionSet, Refusal, Resolved};
use crate::AgentConfig;

mod config;
mod path;
mod resolve;

/// Actions of every parameter type.
const ACTIONS: &str = r#"
[actions.create_site]
description = "create a WordPress site"
argv = ["/opt/sites/create-site.sh", "--domain={domain}", "--cache={cache}"]
timeout = "10m"
[actions.create_site.params.domain]
type = "hostname"
description = "the site's domain"
[actions.create_site.params.cache]
type = "bool"
default = true

[actions.scale]
argv = ["/usr/bin/scale", "--replicas", "{replicas}"]
[actions.scale.params.replicas]
type = "int"
min = 1
max = 10

[actions.tail]
argv = ["tail", "-n", "{lines}", "--", "/var/log/{name}.log"]
[actions.tail.params.name]
type = "string"
pattern = "[a-z][a-z0-9_-]{0,30}"
max_len = 31
[actions.tail.params.lines]
type = "int"
default = 20
min = 1
max = 1000

[actions.echo]
argv = ["/bin/echo", "{text}"]
[actions.echo.params.text]
type = "string"

[actions.restart]
argv = ["systemctl", "restart", "{service}"]
[actions.restart.params.service]
type = "enum"
values = ["nginx", "php-fpm"]

[actions.backup]
argv = ["/usr/local/bin/backup", "--to", "{dir}"]
[actions.backup.params.dir]
type = "path"
root = "/srv/www"
"#;

/// The actions of `text`, which must be a valid config.
fn set(text: &str) -> ActionSet {
    AgentConfig::from_toml(text).unwrap().actions
}

/// The one-line error of an invalid config.
fn config_error(text: &str) -> String {
    let error = format!("{:#}", AgentConfig::from_toml(text).unwrap_err());
    assert!(!error.contains('\n'), "{error}");
    error
}

fn call(name: &str, params: &[(&str, &str)]) -> ActionCall {
    ActionCall {
        name: name.to_owned(),
        params: params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn resolve(set: &ActionSet, name: &str, params: &[(&str, &str)]) -> Result<Resolved, Refusal> {
    set.resolve(&call(name, params))
}

fn argv(resolved: Resolved) -> Vec<String> {
    resolved.argv
}

/// Valid values of the required parameters of the actions in [`ACTIONS`].
fn required_params(name: &str) -> Vec<(&'static str, &'static str)> {
    match name {
        "create_site" => vec![("domain", "example.com")],
        "tail" => vec![("name", "nginx")],
        _ => Vec::new(),
    }
}

/// Asserts that a call of `name` with `param` set to `value` (and valid
/// values for the other required parameters) is refused with
/// `INVALID_PARAMS` and a message naming `param`; returns the message.
fn refused(set: &ActionSet, name: &str, param: &str, value: &str) -> String {
    let mut params: Vec<_> = required_params(name)
        .into_iter()
        .filter(|(k, _)| *k != param)
        .collect();
    params.push((param, value));
    let refusal = resolve(set, name, &params).unwrap_err();
    assert_eq!(
        refusal.code,
        ErrorCode::InvalidParams,
        "{value:?}: {refusal:?}"
    );
    let prefix = format!("parameter \"{param}\": ");
    assert!(
        refusal.message.starts_with(&prefix),
        "{value:?}: {}",
        refusal.message
    );
    assert!(
        !refusal.message.chars().any(char::is_control),
        "{value:?}: the message must escape the value: {:?}",
        refusal.message
    );
    refusal.message
}
