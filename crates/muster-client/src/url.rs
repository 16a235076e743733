//! Turning a hub base URL into the URL of one of its WebSocket endpoints.

use crate::error::ClientError;

/// The WebSocket URL of endpoint `path` (such as `/ws/client`) on the hub at `hub_url`.
///
/// `hub_url` is the hub's base URL: `http://host:port` or `https://host:port`,
/// optionally with a path prefix; `ws://` and `wss://` are accepted as they are.
pub fn ws_url(hub_url: &str, path: &str) -> Result<String, ClientError> {
    let invalid = |why: &str| ClientError::Connect(format!("invalid hub URL {hub_url:?}: {why}"));
    let (scheme, rest) = hub_url
        .trim()
        .split_once("://")
        .ok_or_else(|| invalid("expected http://HOST:PORT"))?;
    let ws_scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        _ => return Err(invalid("the scheme must be http, https, ws or wss")),
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.starts_with('/') {
        return Err(invalid("no host"));
    }
    if rest.contains(['?', '#']) {
        return Err(invalid("a query or fragment is not allowed"));
    }
    Ok(format!("{ws_scheme}://{rest}{path}"))
}
