//! The WebSocket handshake (RFC 6455 §4.2), and the stream each connection
//! reads through.
//!
//! The handshake is done here rather than by axum's extractor so that the
//! stream under the WebSocket codec is ours: [`LazyRead`] reads from the
//! socket in large chunks into a buffer on the stack, and keeps on the heap
//! only the bytes the codec has not taken yet, for as long as it has not. An
//! idle connection, which is most connections of a large fleet, then holds no
//! read buffer at all beyond the codec's small one.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::{Role, WebSocketConfig};

/// A connection's WebSocket, over [`LazyRead`].
pub(crate) type Socket = WebSocketStream<LazyRead<TokioIo<Upgraded>>>;

/// Bytes read from the socket at once, on the stack.
const CHUNK: usize = 16 * 1024;

/// A request to upgrade to a WebSocket.
pub(crate) struct Upgrade {
    on_upgrade: OnUpgrade,
    key: HeaderValue,
    /// `Origin`, sent by browsers only.
    origin: Option<HeaderValue>,
    /// `Host`, which a same-origin page's `Origin` names.
    host: Option<HeaderValue>,
}

/// Query parameters that would carry a credential: refused, since URLs end
/// up in proxy and access logs.
const CREDENTIAL_PARAMS: [&str; 5] = ["token", "access_token", "api_key", "key", "jwt"];

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Response> {
        let refuse = |why: &'static str| (StatusCode::BAD_REQUEST, why).into_response();
        if query_holds_credentials(parts.uri.query()) {
            return Err(refuse(
                "credentials in the URL are refused (URLs end up in logs): send the token in hello",
            ));
        }
        if parts.method != Method::GET {
            return Err(refuse("a WebSocket upgrade must be a GET"));
        }
        let headers = &parts.headers;
        if !has_token(headers, header::CONNECTION, "upgrade")
            || !has_token(headers, header::UPGRADE, "websocket")
        {
            return Err(refuse(
                "expected Connection: upgrade and Upgrade: websocket",
            ));
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .map(HeaderValue::as_bytes)
            != Some(b"13")
        {
            return Err(refuse("expected Sec-WebSocket-Version: 13"));
        }
        let key = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .cloned()
            .ok_or_else(|| refuse("missing Sec-WebSocket-Key"))?;
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or_else(|| refuse("this connection cannot be upgraded"))?;
        Ok(Self {
            on_upgrade,
            key,
            origin: headers.get(header::ORIGIN).cloned(),
            host: headers.get(header::HOST).cloned(),
        })
    }
}

/// Whether a query string names a credential parameter (any case).
fn query_holds_credentials(query: Option<&str>) -> bool {
    query.is_some_and(|query| {
        query.split('&').any(|pair| {
            let name = pair.split('=').next().unwrap_or_default();
            CREDENTIAL_PARAMS
                .iter()
                .any(|param| name.eq_ignore_ascii_case(param))
        })
    })
}

impl Upgrade {
    /// Whether the upgrade may go on as far as its `Origin` goes: a browser
    /// page from another origin, one whose `Origin` is neither the hub's own
    /// (`Host`) nor in `allowed`, may not. Without `Origin` (not a browser)
    /// it may.
    pub(crate) fn origin_allowed(&self, allowed: &[String]) -> bool {
        let Some(origin) = &self.origin else {
            return true;
        };
        let origin = origin.to_str().unwrap_or_default().trim_end_matches('/');
        let same_origin = origin.split_once("://").is_some_and(|(scheme, authority)| {
            matches!(scheme, "http" | "https")
                && self
                    .host
                    .as_ref()
                    .and_then(|h| h.to_str().ok())
                    .is_some_and(|host| authority.eq_ignore_ascii_case(host))
        });
        let listed = allowed
            .iter()
            .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin));
        same_origin || listed
    }

    /// Answers `101 Switching Protocols` and, once the connection has
    /// switched, spawns `serve` with its WebSocket on `tracker`.
    pub(crate) fn serve<F>(
        self,
        config: WebSocketConfig,
        tracker: &tokio_util::task::TaskTracker,
        serve: impl FnOnce(Socket) -> F + Send + 'static,
    ) -> Response
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let accept = derive_accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        // Boxed, and gone once the socket is up: the task then keeps only
        // the connection's own future.
        let connect = Box::pin(async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(e) => {
                    tracing::debug!(error = %e, "websocket upgrade failed");
                    return None;
                }
            };
            let io = LazyRead::new(TokioIo::new(upgraded));
            let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
            Some(serve(socket))
        });
        tracker.spawn(connection_task(connect));
        let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        response
    }
}

/// Connecting, boxed (to be dropped once done), then serving.
type Connecting<F> = Pin<Box<dyn Future<Output = Option<F>> + Send>>;

/// The task of one connection. It lives as long as the connection, so its
/// size counts once per connected agent or client: it keeps only the
/// connection's own future (see `task_sizes` in the tests).
async fn connection_task<F: Future<Output = ()>>(connect: Connecting<F>) {
    // Not `if let`: its scrutinee would keep a second slot the size of the
    // connection's future alive next to `serving`.
    let Some(serving) = connect.await else {
        return;
    };
    serving.await;
}

/// Whether a comma-separated header holds `token`, ignoring case.
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// A reader that reads large chunks but holds memory only while it holds
/// unread bytes: a chunk is read into a buffer on the stack, what the caller
/// takes is copied out, and only the rest is kept, on the heap, until taken.
pub(crate) struct LazyRead<T> {
    inner: T,
    /// Bytes read but not taken yet; empty (and unallocated) most of the time.
    held: Vec<u8>,
    /// How much of `held` was taken.
    taken: usize,
}

impl<T> LazyRead<T> {
    pub(crate) fn new(inner: T) -> Self {
        Self {
            inner,
            held: Vec::new(),
            taken: 0,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for LazyRead<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.taken < this.held.len() {
            let n = out.remaining().min(this.held.len() - this.taken);
            out.put_slice(&this.held[this.taken..this.taken + n]);
            this.taken += n;
            if this.taken == this.held.len() {
                this.held = Vec::new();
                this.taken = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if out.remaining() >= CHUNK {
            return Pin::new(&mut this.inner).poll_read(cx, out);
        }
        let mut chunk = [0u8; CHUNK];
        let mut read = ReadBuf::new(&mut chunk);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
        let filled = read.filled();
        let n = out.remaining().min(filled.len());
        out.put_slice(&filled[..n]);
        if n < filled.len() {
            this.held = filled[n..].to_vec();
            this.taken = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for LazyRead<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt as _;

    use super::*;

    /// The size of the task that serves one connection of the kind `serve` serves.
    fn task_size<A, B, C, D, E, F: Future<Output = ()>>(
        _: impl FnOnce(A, B, C, D, E) -> F,
    ) -> usize {
        fn output_size<X, G: Future>(_: fn(X) -> G) -> usize {
            std::mem::size_of::<G>()
        }
        output_size(connection_task::<F>)
    }

    /// An idle fleet's memory is mostly these tasks: 15,000 agents hold one
    /// each. The bounds leave some room over today's sizes (888 and 856
    /// bytes); what passes them should be boxed or kept off the loop.
    #[test]
    fn a_connection_task_stays_small() {
        let agent = task_size(crate::ws::agent::serve);
        let client = task_size(crate::ws::client::serve);
        assert!(agent <= 1_000, "an agent's task is {agent} bytes");
        assert!(client <= 950, "a client's task is {client} bytes");
    }

    #[tokio::test]
    async fn small_reads_get_every_byte_and_nothing_is_held_after() {
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let mut reader = LazyRead::new(&data[..]);
        let mut got = Vec::new();
        let mut small = [0u8; 100];
        loop {
            let n = reader.read(&mut small).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, data);
        assert_eq!(reader.held.capacity(), 0, "nothing kept once drained");
    }

    #[tokio::test]
    async fn a_large_read_goes_straight_through() {
        let data = vec![7u8; 3 * CHUNK];
        let mut reader = LazyRead::new(&data[..]);
        let mut big = vec![0u8; 2 * CHUNK];
        let n = reader.read(&mut big).await.unwrap();
        assert_eq!(n, 2 * CHUNK);
        assert_eq!(reader.held.capacity(), 0);
    }
}
