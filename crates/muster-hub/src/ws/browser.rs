//! `POST /v1/browser-token`: a short-lived browser token for the API key in
//! the `Authorization: Bearer` header (see `crate::browser_token`). The key
//! travels in a header of a request body's exchange, never in the URL; the
//! answer is JSON, `BrowserToken` or the `ErrorData` of a refusal, and is
//! never cached.

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use muster_proto::ErrorCode;
use muster_proto::messages::ErrorData;

use super::{AppState, Peer, conn};
use crate::engine::Input;

/// Issues a browser token, or says why not.
pub(super) async fn issue(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Response {
    let source = peer.addr.ip();
    let guards = &state.guards;
    if let Some(wait) = guards.limits.auth_blocked(source) {
        let error = conn::auth_rate_limited(wait);
        let code = ErrorCode::RateLimit;
        guards.audit_refusal(
            &state.engine,
            "-",
            source,
            "browser_token",
            code,
            &error.message,
        );
        return refusal(StatusCode::TOO_MANY_REQUESTS, error);
    }
    let Some(token) = bearer(&headers) else {
        let error = ErrorData::new(
            ErrorCode::AuthFailed,
            "send the API key as the header Authorization: Bearer <key>",
        );
        return refusal(StatusCode::UNAUTHORIZED, error);
    };
    let answer = state
        .engine
        .ask(|reply| Input::BrowserToken {
            token,
            source: Some(source),
            reply,
        })
        .await;
    match answer {
        Some(Ok(issued)) => no_store((StatusCode::OK, Json(issued)).into_response()),
        Some(Err(e)) => {
            if e.code == ErrorCode::AuthFailed {
                guards.limits.auth_failed(source);
            }
            refusal(StatusCode::UNAUTHORIZED, e.to_data())
        }
        None => {
            let error = ErrorData::new(ErrorCode::Internal, "the hub is shutting down");
            refusal(StatusCode::SERVICE_UNAVAILABLE, error)
        }
    }
}

/// The token of an `Authorization: Bearer` header.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
        .filter(|token| !token.is_empty())
}

fn refusal(status: StatusCode, error: ErrorData) -> Response {
    let mut response = no_store((status, Json(&error)).into_response());
    if let Some(wait) = error.retry_after_ms {
        let secs = wait.div_ceil(1000).to_string();
        if let Ok(value) = HeaderValue::from_str(&secs) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
    }
    response
}

fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
