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

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidMessage, message)
}
