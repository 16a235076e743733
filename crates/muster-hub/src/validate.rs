//! Checks on client input beyond what the types enforce.

use muster_proto::ErrorCode;
use muster_proto::types::RunRequest;

use crate::core::ApiError;

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
    if request
        .idempotency_key
        .as_ref()
        .is_some_and(|k| k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY_LEN)
    {
        return Err(invalid("idempotency_key must be 1 to 128 characters"));
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
