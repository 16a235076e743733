//! Checks on client input beyond what the types enforce.

use muster_proto::ErrorCode;
use muster_proto::types::RunRequest;

use crate::engine::ApiError;

/// Longest idempotency key.
const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;
/// Longest timeout a run may ask for (30 days).
const MAX_TIMEOUT_MS: u64 = 30 * 24 * 3600 * 1000;

/// Validates a run request.
pub(crate) fn run_request(request: &RunRequest) -> Result<(), ApiError> {
    request.command.validate().map_err(invalid)?;
    if !(-100..=100).contains(&request.priority) {
        return Err(invalid("priority must be between -100 and 100"));
    }
    if matches!(request.timeout_ms, Some(0))
        || request.timeout_ms.is_some_and(|t| t > MAX_TIMEOUT_MS)
    {
        return Err(invalid("timeout_ms must be between 1 and 30 days"));
    }
    for (key, value) in &request.env {
        if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
            return Err(invalid(format!("invalid environment variable {key:?}")));
        }
    }
    let words: Vec<&str> = match &request.command {
        muster_proto::CommandSpec::Argv(argv) => argv.iter().map(String::as_str).collect(),
        muster_proto::CommandSpec::Shell(s) => vec![s.as_str()],
        muster_proto::CommandSpec::Action(call) => {
            action_call(call)?;
            // Refused here too, not only by the agent, so a job is refused
            // before anything starts.
            if !request.env.is_empty() || request.cwd.is_some() {
                return Err(ApiError::new(
                    ErrorCode::InvalidParams,
                    "an action run cannot set environment variables or a working directory; \
                     an action takes its declared parameters only",
                ));
            }
            Vec::new()
        }
    };
    if words
        .iter()
        .chain(request.cwd.as_deref().iter())
        .any(|w| w.contains('\0'))
    {
        return Err(invalid("command and cwd must not contain NUL bytes"));
    }
    if let Some(session) = &request.session {
        session.validate().map_err(invalid)?;
        if matches!(request.command, muster_proto::CommandSpec::Action(_)) {
            return Err(invalid("a session runs a command, not an action"));
        }
    }
    if request.ttl_ms.is_some_and(|t| t > MAX_TIMEOUT_MS) {
        return Err(invalid("ttl_ms must be at most 30 days"));
    }
    idempotency_key(request.idempotency_key.as_deref())
}

/// Checks the length of an idempotency key.
pub(crate) fn idempotency_key(key: Option<&str>) -> Result<(), ApiError> {
    if key.is_some_and(|k| k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY_LEN) {
        return Err(invalid("idempotency_key must be 1 to 128 characters"));
    }
    Ok(())
}

/// Longest job or step name.
const MAX_NAME_LEN: usize = 128;

/// Validates a job spec: its steps (each as a run request would be), names,
/// batch size, priority and TTL. The selector is parsed by the caller.
pub(crate) fn job_spec(spec: &muster_proto::jobs::JobSpec) -> Result<(), ApiError> {
    use muster_proto::jobs::MAX_JOB_STEPS;
    if spec.steps.is_empty() || spec.steps.len() > MAX_JOB_STEPS {
        return Err(invalid(format!("a job needs 1 to {MAX_JOB_STEPS} steps")));
    }
    if spec
        .name
        .as_ref()
        .is_some_and(|n| n.is_empty() || n.len() > MAX_NAME_LEN || n.chars().any(char::is_control))
    {
        return Err(invalid("job name must be 1 to 128 printable characters"));
    }
    if let Some(batch) = spec.batch {
        batch.validate().map_err(invalid)?;
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, step) in spec.steps.iter().enumerate() {
        let name_ok = !step.name.is_empty()
            && step.name.len() <= MAX_NAME_LEN
            && !step.name.chars().any(char::is_control);
        if !name_ok {
            return Err(invalid(format!(
                "step {i}: name must be 1 to 128 printable characters"
            )));
        }
        if !names.insert(step.name.as_str()) {
            return Err(invalid(format!("step name {:?} is used twice", step.name)));
        }
        let mut request = RunRequest::new(
            "validation".parse().expect("a valid agent name"),
            step.command.clone(),
        );
        request.env = step.env.clone();
        request.cwd = step.cwd.clone();
        request.timeout_ms = step.timeout_ms;
        request.priority = spec.priority;
        request.ttl_ms = spec.ttl_ms;
        run_request(&request)
            .map_err(|e| ApiError::new(e.code, format!("step {:?}: {}", step.name, e.message)))?;
    }
    Ok(())
}

/// Most parameters an action call may pass.
const MAX_ACTION_PARAMS: usize = 64;
/// Longest action parameter value; the agent applies the parameter's own rule.
const MAX_PARAM_VALUE_LEN: usize = 4096;

/// Checks an action call's shape: name and parameter names `[a-z][a-z0-9_]*`,
/// bounded values. The agent checks the values against its declared rules.
fn action_call(call: &muster_proto::actions::ActionCall) -> Result<(), ApiError> {
    let ident = |s: &str| {
        s.len() <= 64
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    if !ident(&call.name) {
        return Err(invalid(format!(
            "invalid action name {:?}: use [a-z][a-z0-9_]*",
            call.name
        )));
    }
    if call.params.len() > MAX_ACTION_PARAMS {
        return Err(invalid(format!(
            "at most {MAX_ACTION_PARAMS} action parameters"
        )));
    }
    for (key, value) in &call.params {
        if !ident(key) {
            return Err(invalid(format!(
                "invalid parameter name {key:?}: use [a-z][a-z0-9_]*"
            )));
        }
        if value.len() > MAX_PARAM_VALUE_LEN {
            return Err(invalid(format!(
                "parameter {key:?} is longer than {MAX_PARAM_VALUE_LEN} bytes"
            )));
        }
    }
    Ok(())
}

/// Longest label key and value.
const MAX_LABEL_KEY_LEN: usize = 64;
const MAX_LABEL_VALUE_LEN: usize = 256;

/// Validates labels: keys of `[A-Za-z0-9._/-]`, values without control characters.
pub(crate) fn labels(labels: &std::collections::BTreeMap<String, String>) -> Result<(), ApiError> {
    for (key, value) in labels {
        let key_ok = !key.is_empty()
            && key.len() <= MAX_LABEL_KEY_LEN
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'));
        if !key_ok {
            return Err(invalid(format!("invalid label key {key:?}")));
        }
        if value.len() > MAX_LABEL_VALUE_LEN || value.chars().any(char::is_control) {
            return Err(invalid(format!("invalid value for label {key:?}")));
        }
    }
    Ok(())
}

/// Longest `hostname` in an agent's `hello`, in bytes (a DNS name is at most 253).
pub(crate) const MAX_HELLO_HOSTNAME: usize = 255;
/// Longest `os`, `arch` and `version`, and each of the `capabilities`, in bytes.
pub(crate) const MAX_HELLO_WORD: usize = 64;
/// Most labels an agent may report, and most capabilities.
pub(crate) const MAX_HELLO_ITEMS: usize = 64;

/// Checks what an agent says of itself in `hello` against the caps above
/// (labels as everywhere). Control characters are allowed in the strings
/// (a host name is what the host says); every client escapes them on a
/// terminal.
pub(crate) fn agent_hello(hello: &muster_proto::messages::AgentHello) -> Result<(), ApiError> {
    let too_long = |field: &str, len: usize, max: usize| {
        invalid(format!(
            "hello field {field} is {len} bytes, over the limit of {max}"
        ))
    };
    if hello.hostname.len() > MAX_HELLO_HOSTNAME {
        return Err(too_long(
            "hostname",
            hello.hostname.len(),
            MAX_HELLO_HOSTNAME,
        ));
    }
    for (field, value) in [
        ("os", &hello.os),
        ("arch", &hello.arch),
        ("version", &hello.version),
    ] {
        if value.len() > MAX_HELLO_WORD {
            return Err(too_long(field, value.len(), MAX_HELLO_WORD));
        }
    }
    if hello.labels.len() > MAX_HELLO_ITEMS || hello.capabilities.len() > MAX_HELLO_ITEMS {
        return Err(invalid(format!(
            "hello holds {} labels and {} capabilities; at most {MAX_HELLO_ITEMS} of each",
            hello.labels.len(),
            hello.capabilities.len()
        )));
    }
    if let Some(cap) = hello.capabilities.iter().find(|c| c.len() > MAX_HELLO_WORD) {
        return Err(too_long("capabilities", cap.len(), MAX_HELLO_WORD));
    }
    labels(&hello.labels)
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidMessage, message)
}

#[cfg(test)]
mod tests {
    use muster_proto::messages::AgentHello;

    use super::*;

    fn hello() -> AgentHello {
        serde_json::from_value(serde_json::json!({"token": "t", "max_concurrency": 1})).unwrap()
    }

    #[test]
    fn hello_fields_up_to_their_caps_pass_and_past_them_fail() {
        let mut at_caps = hello();
        at_caps.hostname = "h".repeat(MAX_HELLO_HOSTNAME);
        at_caps.version = "v".repeat(MAX_HELLO_WORD);
        at_caps.labels = (0..MAX_HELLO_ITEMS)
            .map(|i| (format!("k{i}"), "v".into()))
            .collect();
        at_caps.hostname.replace_range(0..1, "\x1b");
        assert!(agent_hello(&at_caps).is_ok());

        let over: [fn(&mut AgentHello); 5] = [
            |h| h.hostname = "h".repeat(MAX_HELLO_HOSTNAME + 1),
            |h| h.os = "o".repeat(MAX_HELLO_WORD + 1),
            |h| h.capabilities = vec!["c".repeat(MAX_HELLO_WORD + 1)],
            |h| h.capabilities = vec!["exec".into(); MAX_HELLO_ITEMS + 1],
            |h| _ = h.labels.insert("k".into(), "\x1b[2J".into()),
        ];
        for change in over {
            let mut bad = hello();
            change(&mut bad);
            let err = agent_hello(&bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidMessage, "{}", err.message);
        }
    }
}
