//! The agent's config file (`muster agent --config FILE`), in TOML.
//!
//! ```toml
//! name = "web-1"
//! state_dir = "/var/lib/muster-agent"
//! max_concurrency = 4
//! exec = "actions-only"          # or "any", the default
//!
//! [labels]
//! role = "web"
//!
//! [actions.create_site]
//! argv = ["/usr/local/lib/muster/create-site.sh", "--domain={domain}"]
//! [actions.create_site.params.domain]
//! type = "hostname"
//! ```
//!
//! Every key is optional and unknown keys are errors. The declared actions are
//! validated as the file is read, so a mistake stops the agent before it
//! connects, with a one-line error naming the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::anyhow;
use muster_proto::AgentName;
use muster_proto::actions::ExecMode;
use serde::Deserialize;

use crate::actions::{ActionConfig, ActionSet};

/// What an agent config file says.
#[derive(Clone, Debug, Default)]
pub struct AgentConfig {
    /// The agent's name.
    pub name: Option<AgentName>,
    /// Labels announced in `hello`.
    pub labels: BTreeMap<String, String>,
    /// Directory for the agent's state.
    pub state_dir: Option<PathBuf>,
    /// How many runs execute at once (at least 1).
    pub max_concurrency: Option<u32>,
    /// Whether raw commands run, or declared actions only.
    pub exec: ExecMode,
    /// The declared actions, validated.
    pub actions: ActionSet,
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    name: Option<AgentName>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    state_dir: Option<PathBuf>,
    #[serde(default)]
    max_concurrency: Option<u32>,
    #[serde(default)]
    exec: ExecMode,
    #[serde(default)]
    actions: BTreeMap<String, ActionConfig>,
}

impl AgentConfig {
    /// Reads and validates a config file; the error is one line that names
    /// the file, and the line of a syntax or type error.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow!("cannot read config file {}: {e}", path.display()))?;
        Self::from_toml(&text).map_err(|e| anyhow!("config file {}: {e:#}", path.display()))
    }

    /// Parses and validates the text of a config file.
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| anyhow!(toml_error(text, &e)))?;
        if raw.max_concurrency == Some(0) {
            anyhow::bail!("max_concurrency must be at least 1");
        }
        Ok(Self {
            name: raw.name,
            labels: raw.labels,
            state_dir: raw.state_dir,
            max_concurrency: raw.max_concurrency,
            exec: raw.exec,
            actions: ActionSet::new(raw.actions)?,
        })
    }
}

/// A TOML error on one line: `line 3, column 1: unknown field ...`.
fn toml_error(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim().replace('\n', "; ");
    let Some(span) = error.span() else {
        return message;
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("line {line}, column {column}: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_read() {
        let config = AgentConfig::from_toml(
            r#"
            name = "web-1"
            state_dir = "/var/lib/muster"
            max_concurrency = 8
            exec = "actions-only"
            [labels]
            role = "web"
            [actions.restart]
            argv = ["systemctl", "restart", "nginx"]
            "#,
        )
        .unwrap();
        assert_eq!(config.name.unwrap().as_str(), "web-1");
        assert_eq!(config.state_dir.unwrap(), Path::new("/var/lib/muster"));
        assert_eq!(config.max_concurrency, Some(8));
        assert_eq!(config.exec, ExecMode::ActionsOnly);
        assert_eq!(config.labels["role"], "web");
        assert_eq!(config.actions.names().collect::<Vec<_>>(), ["restart"]);
    }

    #[test]
    fn an_empty_file_is_the_defaults() {
        let config = AgentConfig::from_toml("").unwrap();
        assert_eq!(config.exec, ExecMode::Any);
        assert!(config.actions.is_empty() && config.labels.is_empty());
        assert!(config.name.is_none() && config.max_concurrency.is_none());
    }

    #[test]
    fn errors_are_one_line_with_a_position() {
        for (text, expected) in [
            ("nme = \"x\"", "line 1, column 1: unknown field `nme`"),
            (
                "exec = \"shell\"",
                "line 1, column 8: unknown variant `shell`",
            ),
            ("name = \"-bad\"", "line 1, column 8: "),
            (
                "\n\nmax_concurrency = \"4\"",
                "line 3, column 19: invalid type",
            ),
            ("max_concurrency = 0", "max_concurrency must be at least 1"),
            (
                "[actions.a]\nargv = [\"x\"]\nbogus = 1",
                "line 3, column 1: unknown field `bogus`",
            ),
            (
                "[actions.a]\nargv = [\"x\"]\n[actions.a.params.p]\ntype = \"int\"\nmax_lenn = 3",
                "line 5, column 1: unknown field `max_lenn`",
            ),
            (
                "[actions.a]\nargv = [\"x\", \"{p}\"]\n[actions.a.params.p]\ntype = \"int\"\npattern = \"x\"",
                "action \"a\": parameter \"p\": \"pattern\" does not apply to type int",
            ),
        ] {
            let error = format!("{:#}", AgentConfig::from_toml(text).unwrap_err());
            assert!(error.contains(expected), "{text:?}: {error}");
            assert!(!error.contains('\n'), "{text:?}: {error}");
        }
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        let error = AgentConfig::from_file(&path).unwrap_err().to_string();
        assert!(error.starts_with("cannot read config file "), "{error}");
        std::fs::write(&path, "[actions.x]\nargv = []\n").unwrap();
        let error = format!("{:#}", AgentConfig::from_file(&path).unwrap_err());
        let expected = format!(
            "config file {}: action \"x\": argv is empty",
            path.display()
        );
        assert!(error.starts_with(&expected), "{error}");
    }

    #[test]
    fn the_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/agent.toml");
        let config = AgentConfig::from_file(&path).unwrap();
        assert_eq!(config.exec, ExecMode::ActionsOnly);
        assert_eq!(config.labels["role"], "web");
        let names: Vec<_> = config.actions.names().collect();
        assert_eq!(names, ["create_site", "delete_site"]);
    }
}
