//! Turning a hub base URL into the URL of one of its WebSocket endpoints.

use crate::error::{ClientError, unreachable_hub};

/// The WebSocket URL of endpoint `path` (such as `/ws/client`) on the hub at `hub_url`.
///
/// `hub_url` is the hub's base URL: `http://host:port`, optionally with a path
/// prefix; `ws://` is accepted as-is. `https://` and `wss://` are refused until
/// the client supports TLS.
pub fn ws_url(hub_url: &str, path: &str) -> Result<String, ClientError> {
    let invalid = |why: &str| ClientError::Connect(format!("invalid hub URL {hub_url:?}: {why}"));
    let (scheme, rest) = hub_url
        .trim()
        .split_once("://")
        .ok_or_else(|| invalid("expected http://HOST:PORT"))?;
    let ws_scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => "ws",
        "https" | "wss" => {
            return Err(unreachable_hub(
                hub_url,
                "TLS is not supported yet (use http:// or ws://)",
            ));
        }
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
