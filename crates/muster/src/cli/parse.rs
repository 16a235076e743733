//! Value parsers for command-line arguments: priorities, `KEY=VALUE` pairs,
//! durations and run states. Each returns a message clap shows as a usage error.

use std::time::Duration;

use muster_proto::RunState;

/// Highest priority a run may have; the lowest is its negation.
pub(crate) const MAX_PRIORITY: i32 = 100;

/// Parses `--priority`: an integer from -100 to 100, or `low`, `normal`, `high`.
pub(crate) fn priority(value: &str) -> Result<i32, String> {
    let named = match value.to_ascii_lowercase().as_str() {
        "low" => Some(-10),
        "normal" => Some(0),
        "high" => Some(10),
        _ => None,
    };
    let number = named.or_else(|| value.parse::<i32>().ok());
    match number {
        Some(p) if (-MAX_PRIORITY..=MAX_PRIORITY).contains(&p) => Ok(p),
        _ => Err(format!(
            "expected an integer from -{MAX_PRIORITY} to {MAX_PRIORITY}, or low, normal or high"
        )),
    }
}

/// Parses `KEY=VALUE` (labels, environment variables); the value may be empty
/// and may contain `=`.
pub(crate) fn key_value(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((key, val)) if !key.is_empty() => Ok((key.to_owned(), val.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {value:?}")),
    }
}

/// Parses a human duration such as `30s`, `5m` or `1h 30m`; zero is refused.
pub(crate) fn duration(value: &str) -> Result<Duration, String> {
    let parsed =
        humantime::parse_duration(value).map_err(|e| format!("{e} (try 30s, 5m or 1h)"))?;
    if parsed.is_zero() {
        return Err("the duration must be greater than zero".to_owned());
    }
    Ok(parsed)
}

/// Parses `--ttl`: a human duration; zero means "only if the agent is online now".
pub(crate) fn ttl(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value)
        .map_err(|e| format!("{e} (try 30s, 5m or 1h; 0 runs only if the agent is online now)"))
}

/// Parses a run state by its wire name (`running`, `timed_out`, …).
pub(crate) fn run_state(value: &str) -> Result<RunState, String> {
    RunState::parse(value).ok_or_else(|| {
        "expected one of queued, dispatched, running, completed, failed, timed_out, \
         cancelled, expired, lost"
            .to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_accept_numbers_and_names() {
        assert_eq!(priority("low"), Ok(-10));
        assert_eq!(priority("Normal"), Ok(0));
        assert_eq!(priority("high"), Ok(10));
        assert_eq!(priority("-100"), Ok(-100));
        assert_eq!(priority("100"), Ok(100));
        assert_eq!(priority("7"), Ok(7));
        for bad in ["101", "-101", "urgent", "", "1.5"] {
            assert!(priority(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn key_values_split_at_the_first_equals_sign() {
        assert_eq!(key_value("role=web"), Ok(("role".into(), "web".into())));
        assert_eq!(key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(key_value("empty="), Ok(("empty".into(), String::new())));
        assert!(key_value("novalue").is_err());
        assert!(key_value("=v").is_err());
    }

    #[test]
    fn durations_are_human_and_positive() {
        assert_eq!(duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(duration("0s").is_err());
        assert!(duration("soon").is_err());
    }

    #[test]
    fn ttls_may_be_zero() {
        assert_eq!(ttl("0"), Ok(Duration::ZERO));
        assert_eq!(ttl("0s"), Ok(Duration::ZERO));
        assert_eq!(ttl("2h"), Ok(Duration::from_secs(7200)));
        assert!(ttl("later").is_err());
    }

    #[test]
    fn run_states_use_wire_names() {
        assert_eq!(run_state("timed_out"), Ok(RunState::TimedOut));
        assert!(run_state("done").is_err());
    }
}
