//! Connections that have not authenticated yet, kept from locking anyone out.
//!
//! Every TCP connection has the handshake timeout, and [`CLOSE_GRACE`] more,
//! from its accept to authenticate: to send its HTTP request, upgrade, and have its `hello`
//! accepted. Until then its reads and writes fail once the time is up, which
//! ends it wherever it is: a request whose headers never finish (slowloris),
//! an idle keep-alive, or a WebSocket that never says `hello`.
//!
//! Unauthenticated connections are also capped, per source address and in
//! all. A source at its cap gets its new connections closed at once, before
//! they cost more than the accept. At the overall cap a newcomer is still let
//! in: the oldest unauthenticated connection of the source holding the most
//! is ended instead. An attacker who holds every slot thus loses one for
//! every newcomer, and a real agent or client, which authenticates in
//! milliseconds, gets in.
//!
//! An authenticated connection is not affected, and keeps nothing of this.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use futures_util::task::AtomicWaker;
use muster_tls::{ServerStream, ServerTls};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::Sleep;

/// Time past the handshake timeout in which a WebSocket that sent no `hello`
/// still gets its close (4002) before its connection is cut.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(1);

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

/// Caps on unauthenticated connections.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Caps {
    /// In all.
    pub(crate) total: usize,
    /// From one source address.
    pub(crate) per_source: usize,
}

/// Accepts TCP connections, each with its deadline and its place under the caps.
pub(crate) struct Listener {
    inner: TcpListener,
    /// Set when the hub serves TLS.
    tls: Option<Arc<ServerTls>>,
    timeout: Duration,
    gate: Arc<Gate>,
}

impl Listener {
    pub(crate) fn new(
        inner: TcpListener,
        tls: Option<Arc<ServerTls>>,
        timeout: Duration,
        caps: Caps,
    ) -> Self {
        Self {
            inner,
            tls,
            timeout: timeout + CLOSE_GRACE,
            gate: Arc::new(Gate {
                caps,
                state: Mutex::default(),
            }),
        }
    }
}

impl axum::serve::Listener for Listener {
    type Io = Io;
    type Addr = Peer;

    async fn accept(&mut self) -> (Io, Peer) {
        loop {
            match self.inner.accept().await {
                Ok((tcp, addr)) => {
                    let authenticated = Authenticated::default();
                    let source = source_of(addr.ip());
                    let Some((id, evicted)) = self.gate.admit(source) else {
                        // At its cap: closed on drop, before any task is spawned.
                        continue;
                    };
                    // Events are small and latency-bound; never let Nagle hold them back.
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                    }
                    let stream = match &self.tls {
                        // The handshake runs on the connection's own task.
                        Some(tls) => tls.accept(tcp),
                        None => ServerStream::Plain(tcp),
                    };
                    let io = Io {
                        stream,
                        pending: Some(Box::new(Pending {
                            authenticated: authenticated.clone(),
                            deadline: Box::pin(tokio::time::sleep(self.timeout)),
                            slot: Slot {
                                gate: self.gate.clone(),
                                id,
                                source,
                                evicted,
                            },
                        })),
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

/// The source a connection counts against: its address, or for IPv6 its
/// /64, which one host commonly holds whole.
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

/// A connection's deadline and slot, until it authenticates.
struct Pending {
    authenticated: Authenticated,
    deadline: Pin<Box<Sleep>>,
    slot: Slot,
}

/// Set when a newcomer takes a connection's slot.
#[derive(Default)]
struct Evicted {
    set: AtomicBool,
    waker: AtomicWaker,
}

/// The unauthenticated connections, by age and by source.
struct Gate {
    caps: Caps,
    /// A std `Mutex`: held only to admit or release one connection.
    state: Mutex<GateState>,
}

#[derive(Default)]
struct GateState {
    next_id: u64,
    /// Connections closed at accept, their source at its cap (for the log).
    refused: u64,
    evicted: HashMap<u64, Arc<Evicted>>,
    /// Ids (ascending: oldest first) of each source's connections.
    by_source: HashMap<IpAddr, BTreeSet<u64>>,
}

impl Gate {
    /// Takes a slot for a connection from `source`, ending the oldest of the
    /// heaviest source at the overall cap; `None` if `source` is at its own.
    fn admit(&self, source: IpAddr) -> Option<(u64, Arc<Evicted>)> {
        let mut state = self.state.lock().expect("gate lock poisoned");
        let own = state.by_source.get(&source).map_or(0, BTreeSet::len);
        if own >= self.caps.per_source {
            state.refused = state.refused.wrapping_add(1);
            if state.refused.is_power_of_two() {
                tracing::warn!(%source, refused = state.refused, "a source is at its cap of unauthenticated connections; closing its new ones");
            }
            return None;
        }
        if state.evicted.len() >= self.caps.total
            && let Some((victim_source, victim)) = state
                .by_source
                .iter()
                .max_by_key(|(_, ids)| ids.len())
                .and_then(|(source, ids)| Some((*source, *ids.first()?)))
            && let Some(evicted) = state.remove(victim, victim_source)
        {
            evicted.set.store(true, Ordering::Release);
            evicted.waker.wake();
            tracing::debug!(source = %victim_source, "ended an unauthenticated connection to make room");
        }
        state.next_id += 1;
        let id = state.next_id;
        let evicted = Arc::new(Evicted::default());
        state.evicted.insert(id, evicted.clone());
        state.by_source.entry(source).or_default().insert(id);
        Some((id, evicted))
    }

    fn release(&self, id: u64, source: IpAddr) {
        self.state
            .lock()
            .expect("gate lock poisoned")
            .remove(id, source);
    }
}

impl GateState {
    fn remove(&mut self, id: u64, source: IpAddr) -> Option<Arc<Evicted>> {
        let evicted = self.evicted.remove(&id)?;
        if let Some(ids) = self.by_source.get_mut(&source) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_source.remove(&source);
            }
        }
        Some(evicted)
    }
}

/// A connection's place among the unauthenticated; given back on drop.
struct Slot {
    gate: Arc<Gate>,
    id: u64,
    source: IpAddr,
    evicted: Arc<Evicted>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gate.release(self.id, self.source);
    }
}

/// A TCP or TLS stream that fails its reads and writes once its deadline
/// passes unauthenticated.
pub(crate) struct Io {
    stream: ServerStream,
    /// Gone, and with it the timer and the slot, once authenticated; boxed,
    /// so an authenticated connection keeps one pointer of it.
    pending: Option<Box<Pending>>,
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
        pending.slot.evicted.waker.register(cx.waker());
        if pending.slot.evicted.set.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "ended unauthenticated to make room for a newer connection",
            ));
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
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(total: usize, per_source: usize) -> Arc<Gate> {
        Arc::new(Gate {
            caps: Caps { total, per_source },
            state: Mutex::default(),
        })
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn is_evicted(e: &Evicted) -> bool {
        e.set.load(Ordering::Acquire)
    }

    #[test]
    fn a_source_at_its_cap_has_its_newcomers_refused_and_others_carry_on() {
        let gate = gate(100, 3);
        let held: Vec<_> = (0..3).map(|_| gate.admit(ip(9)).unwrap()).collect();
        assert!(gate.admit(ip(9)).is_none(), "the source is at its cap");
        let other = gate.admit(ip(2)).expect("other sources get in");
        assert!(held.iter().all(|(_, e)| !is_evicted(e)));
        assert!(!is_evicted(&other.1));
        gate.release(held[0].0, ip(9));
        assert!(gate.admit(ip(9)).is_some(), "a released slot is free again");
    }

    #[test]
    fn at_the_overall_cap_the_heaviest_source_loses_its_oldest() {
        let gate = gate(4, 10);
        let light = gate.admit(ip(2)).unwrap();
        let heavy: Vec<_> = (0..3).map(|_| gate.admit(ip(9)).unwrap()).collect();
        let (_, real) = gate.admit(ip(3)).unwrap();
        assert!(is_evicted(&heavy[0].1));
        assert!(
            !is_evicted(&light.1),
            "the light source keeps its connection"
        );
        assert!(!is_evicted(&real));
        assert_eq!(gate.state.lock().unwrap().evicted.len(), 4);
    }

    #[test]
    fn an_ipv6_host_counts_as_its_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2::7".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::7".parse().unwrap();
        assert_eq!(source_of(a), source_of(b));
        assert_ne!(source_of(a), source_of(c));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(source_of(mapped), "10.1.2.3".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_released_slot_is_free_again_and_releasing_twice_is_harmless() {
        let gate = gate(2, 2);
        let (a, _) = gate.admit(ip(2)).unwrap();
        let (b, evicted_b) = gate.admit(ip(2)).unwrap();
        gate.release(a, ip(2));
        gate.release(a, ip(2));
        let (_, c) = gate.admit(ip(2)).unwrap();
        assert!(!is_evicted(&evicted_b) && !is_evicted(&c));
        gate.release(b, ip(2));
        let state = gate.state.lock().unwrap();
        assert_eq!(state.evicted.len(), 1);
        assert_eq!(state.by_source[&ip(2)].len(), 1);
    }
}
