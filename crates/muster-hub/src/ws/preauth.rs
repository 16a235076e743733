//! Every TCP connection has `preauth_timeout` from its accept to
//! authenticate: to send its HTTP request, upgrade, and have its `hello`
//! accepted. Until then its reads and writes fail once the time is up, which
//! ends it wherever it is: a request whose headers never finish (slowloris),
//! an idle keep-alive, or a WebSocket that never says `hello`. An
//! authenticated connection is not affected, and keeps nothing of this.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

/// Marks a connection authenticated: its deadline no longer applies.
#[derive(Clone, Debug, Default)]
pub(crate) struct Authenticated(Arc<AtomicBool>);

impl Authenticated {
    pub(crate) fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Who is on the other end of a connection, for its request handlers.
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    pub(crate) addr: SocketAddr,
    pub(crate) authenticated: Authenticated,
}

impl Connected<IncomingStream<'_, Listener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Listener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// Accepts TCP connections, each with its deadline.
pub(crate) struct Listener {
    inner: TcpListener,
    timeout: Duration,
}

impl Listener {
    pub(crate) fn new(inner: TcpListener, timeout: Duration) -> Self {
        Self { inner, timeout }
    }
}

impl axum::serve::Listener for Listener {
    type Io = Io;
    type Addr = Peer;

    async fn accept(&mut self) -> (Io, Peer) {
        loop {
            match self.inner.accept().await {
                Ok((tcp, addr)) => {
                    // Events are small and latency-bound; never let Nagle hold them back.
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                    }
                    let authenticated = Authenticated::default();
                    let io = Io {
                        tcp,
                        pending: Some(Pending {
                            authenticated: authenticated.clone(),
                            deadline: Box::pin(tokio::time::sleep(self.timeout)),
                        }),
                    };
                    return (
                        io,
                        Peer {
                            addr,
                            authenticated,
                        },
                    );
                }
                Err(e) => {
                    // Out of descriptors, say: waiting lets connections end.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Peer> {
        Ok(Peer {
            addr: self.inner.local_addr()?,
            authenticated: Authenticated::default(),
        })
    }
}

/// A connection's deadline, until it authenticates.
struct Pending {
    authenticated: Authenticated,
    deadline: Pin<Box<Sleep>>,
}

/// A TCP stream that fails its reads and writes once its deadline passes
/// unauthenticated.
pub(crate) struct Io {
    tcp: TcpStream,
    /// Gone, and with it the timer, once authenticated.
    pending: Option<Pending>,
}

impl Io {
    /// `Err` once the deadline has passed; polling arms it, so a connection
    /// that sends nothing more is woken and ended on time.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let Some(pending) = &mut self.pending else {
            return Ok(());
        };
        if pending.authenticated.is_set() {
            self.pending = None;
            return Ok(());
        }
        match pending.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "not authenticated within the pre-auth timeout",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}
